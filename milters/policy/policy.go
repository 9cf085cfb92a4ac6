// Package policy is the spam and policy milter: SPF, DKIM, DMARC, DNSBL,
// greylisting, content rules, scoring and DKIM signing.
//
// Status: the runtime, trail and configuration are in place; the milter's own
// checks are not built yet, so every transaction is let through and recorded.
package policy

import (
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/service"
)

// Name is the milter's name in config (milters.policy) and in trail events.
const Name = "policy"

// Milter is the policy milter.
type Milter struct{}

var (
	_ milterrt.Milter  = (*Milter)(nil)
	_ milterrt.Decider = (*Milter)(nil)
)

// New builds the policy milter from the process environment.
func New(env *service.Env) (milterrt.Milter, error) { return &Milter{}, nil }

// Name implements milterrt.Milter.
func (*Milter) Name() string { return Name }

// Stages implements milterrt.Milter.
func (*Milter) Stages() milterrt.Stages { return milterrt.AllStages }

// Modifications implements milterrt.Milter.
func (*Milter) Modifications() milterrt.Modifications {
	return milterrt.MayAddHeader | milterrt.MayChangeHeader | milterrt.MayQuarantine
}

// DecidesAt implements milterrt.Decider: DNSBL checks answer at connect, SPF
// at MAIL and greylisting per recipient; HELO is only observed.
func (*Milter) DecidesAt() milterrt.Stages {
	return milterrt.StageConnect | milterrt.StageMail | milterrt.StageRcpt
}

// NewSession implements milterrt.Milter.
func (*Milter) NewSession(*milterrt.State) milterrt.Session { return milterrt.BaseSession{} }
