package service

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/trail"
)

// TestEventSection: the milter's typed section in milterrt.State goes into
// the event under its milter's key; a value that is not a trail section is
// ignored.
func TestEventSection(t *testing.T) {
	sec := &trail.AccessSection{Direction: "inbound"}
	st := &milterrt.State{Milter: "access", Section: sec}
	if ev := eventFromState(st, time.Now()); ev.Access != sec || ev.Policy != nil {
		t.Errorf("access section not attached: %+v", ev)
	}
	st = &milterrt.State{Milter: "policy", Section: "free text"}
	if ev := eventFromState(st, time.Now()); ev.Access != nil || ev.Policy != nil || ev.Archive != nil || ev.Encrypt != nil {
		t.Errorf("a non-section value was attached: %+v", ev)
	}
}

// TestNewEnv: the parts a milter may rely on are never nil.
func TestNewEnv(t *testing.T) {
	env := NewEnv("access", nil, zerolog.Nop(), nil)
	if env.Store == nil || !env.Store.InMemory() || env.Clock == nil || env.Resolver != nil {
		t.Errorf("env %+v: want an in-memory store, a clock and no resolver", env)
	}
}
