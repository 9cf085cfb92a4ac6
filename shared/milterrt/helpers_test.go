package milterrt_test

import (
	"testing"

	. "github.com/geomilter/geomilter/shared/milterrt"
	"github.com/geomilter/geomilter/shared/milterrt/miltertest"
)

// funcSession lets each test supply only the stages it cares about.
type funcSession struct {
	BaseSession
	connect func(*State) Decision
	helo    func(*State) Decision
	mail    func(*State) Decision
	rcpt    func(*State, *Recipient) Decision
	header  func(*State, HeaderField) Decision
	eoh     func(*State) Decision
	body    func(*State, []byte) Decision
	eom     func(*State, Modifier) Decision
	abort   func(*State)
	close   func(*State)
}

func (f *funcSession) Connect(st *State) Decision { return call(f.connect, st) }
func (f *funcSession) Helo(st *State) Decision    { return call(f.helo, st) }
func (f *funcSession) MailFrom(st *State) Decision {
	return call(f.mail, st)
}
func (f *funcSession) RcptTo(st *State, r *Recipient) Decision {
	if f.rcpt == nil {
		return Continue()
	}
	return f.rcpt(st, r)
}
func (f *funcSession) Header(st *State, h HeaderField) Decision {
	if f.header == nil {
		return Continue()
	}
	return f.header(st, h)
}
func (f *funcSession) EndOfHeaders(st *State) Decision { return call(f.eoh, st) }
func (f *funcSession) BodyChunk(st *State, b []byte) Decision {
	if f.body == nil {
		return Continue()
	}
	return f.body(st, b)
}
func (f *funcSession) EndOfMessage(st *State, m Modifier) Decision {
	if f.eom == nil {
		return Continue()
	}
	return f.eom(st, m)
}
func (f *funcSession) Abort(st *State) {
	if f.abort != nil {
		f.abort(st)
	}
}
func (f *funcSession) Close(st *State) {
	if f.close != nil {
		f.close(st)
	}
}

func call(fn func(*State) Decision, st *State) Decision {
	if fn == nil {
		return Continue()
	}
	return fn(st)
}

type testMilter struct {
	stages  Stages
	actions Modifications
	mk      func() *funcSession
}

func (m *testMilter) Name() string { return "test" }
func (m *testMilter) Stages() Stages {
	if m.stages == 0 {
		return AllStages
	}
	return m.stages
}
func (m *testMilter) Modifications() Modifications { return m.actions }
func (m *testMilter) NewSession(*State) Session {
	if m.mk == nil {
		return &funcSession{}
	}
	return m.mk()
}

// start serves m (on TCP when tcp is set) for the test; see miltertest.Serve.
func start(t testing.TB, m Milter, opts Options, tcp bool) *miltertest.Server {
	t.Helper()
	if tcp {
		return miltertest.ServeTCP(t, m, opts)
	}
	return miltertest.Serve(t, m, opts)
}
