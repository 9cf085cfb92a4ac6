// Package encrypt is the encryption milter: it detects encryption triggers and
// routes the message to the encryption path.
//
// Status: the runtime, trail and configuration are in place; the milter's own
// checks are not built yet, so every transaction is let through and recorded.
package encrypt

import (
	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/service"
)

// Name is the milter's name in config (milters.encrypt) and in trail events.
const Name = "encrypt"

// Milter is the encrypt milter.
type Milter struct{}

var (
	_ milterrt.Milter  = (*Milter)(nil)
	_ milterrt.Decider = (*Milter)(nil)
)

// New builds the encrypt milter from the process environment.
func New(env *service.Env) (milterrt.Milter, error) { return &Milter{}, nil }

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
