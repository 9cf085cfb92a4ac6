// Package encrypt is the encryption milter: it detects encryption triggers and
// routes the message to the encryption path.
//
// Status: the runtime, trail and configuration are in place; the milter's own
// checks are not built yet, so every transaction is let through and recorded.
package encrypt

import (
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/service"
)

// Name is the milter's name in config (milters.encrypt) and in trail events.
const Name = "encrypt"

// Milter is the encrypt milter. It keeps what it will use from the
// environment: the rules (encrypt, skip) and the clock.
type Milter struct {
	rules service.RulesView
	clock func() time.Time
}

var (
	_ milterrt.Milter  = (*Milter)(nil)
	_ milterrt.Decider = (*Milter)(nil)
)

// New builds the encrypt milter from the process environment.
func New(env *service.Env) (milterrt.Milter, error) {
	return &Milter{rules: env.Rules, clock: env.Clock}, nil
}

// Name implements milterrt.Milter.
func (*Milter) Name() string { return Name }

// Stages implements milterrt.Milter.
func (*Milter) Stages() milterrt.Stages { return milterrt.AllStages }

// Modifications implements milterrt.Milter.
func (*Milter) Modifications() milterrt.Modifications { return milterrt.MayAddHeader }

// DecidesAt implements milterrt.Decider: the encryption route is chosen from
// the whole message, at end of message, so Postfix never waits at the
// envelope.
func (*Milter) DecidesAt() milterrt.Stages { return milterrt.StageEOM }

// NewSession implements milterrt.Milter.
func (*Milter) NewSession(*milterrt.State) milterrt.Session { return milterrt.BaseSession{} }
