// Package policy is the spam and policy milter: SPF, DKIM, DMARC, DNSBL,
// greylisting, content rules, scoring and DKIM signing.
//
// Status: the runtime, trail and configuration are in place; the milter's own
// checks are not built yet, so every transaction is let through and recorded.
package policy

import (
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/resolver"
	"github.com/geomilter/geomilter/shared/service"
	"github.com/geomilter/geomilter/shared/state"
)

// Name is the milter's name in config (milters.policy) and in trail events.
const Name = "policy"

// Milter is the policy milter. It keeps what its checks will use from the
// environment: rules, the state (greylist triplets, counters), DNS and the
// clock.
type Milter struct {
	rules    service.RulesView
	store    state.Backend
	resolver resolver.Resolver // nil: the checks that need DNS bring the default
	clock    func() time.Time
}

var (
	_ milterrt.Milter  = (*Milter)(nil)
	_ milterrt.Decider = (*Milter)(nil)
)

// New builds the policy milter from the process environment.
func New(env *service.Env) (milterrt.Milter, error) {
	return &Milter{rules: env.Rules, store: env.Store, resolver: env.Resolver, clock: env.Clock}, nil
}

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
