// Package access is the access milter: who may send and relay, per tenant, with
// rate limits shared across sites. It decides at CONNECT, HELO, MAIL and RCPT
// and negotiates the header and body stages away, so Postfix never sends it the
// message content.
//
// Status: the runtime, trail and configuration are in place; the rules engine
// (issue 4) is not wired yet, so every transaction is let through and recorded.
package access

import (
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/service"
)

// Name is the milter's name in config (milters.access) and in trail events.
const Name = "access"

// Milter is the access milter.
type Milter struct{}

// New builds the access milter from the process environment.
func New(env *service.Env) (milterrt.Milter, error) { return &Milter{}, nil }

// Name implements milterrt.Milter.
func (*Milter) Name() string { return Name }

// Stages implements milterrt.Milter: envelope stages only.
func (*Milter) Stages() milterrt.Stages {
	return milterrt.StageConnect | milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt
}

// Actions implements milterrt.Milter: access changes nothing in messages.
func (*Milter) Actions() milterrt.Actions { return 0 }

// NewSession implements milterrt.Milter.
func (*Milter) NewSession(*milterrt.State) milterrt.Session { return milterrt.BaseSession{} }
