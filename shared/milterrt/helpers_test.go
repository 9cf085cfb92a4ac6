package milterrt

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	milter "github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
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

// txnRecord is a copy of a State as OnTransaction saw it.
type txnRecord struct {
	SessionID, TxnID, Sender, Helo, Family string
	ClientAddr                             net.IP
	Final                                  Decision
	FinalStage                             Stages
	Aborted                                bool
	Rcpts                                  []Recipient
	Headers                                []HeaderField
	Macros                                 map[string]string
}

type recorder struct {
	mu   sync.Mutex
	txns []txnRecord
}

func (r *recorder) on(st *State) {
	rec := txnRecord{SessionID: st.SessionID, TxnID: st.TxnID, Sender: st.Sender, Helo: st.Helo, Family: st.Family,
		ClientAddr: st.ClientAddr, Final: st.Final, FinalStage: st.FinalStage, Aborted: st.Aborted,
		Headers: append([]HeaderField(nil), st.Headers...), Macros: map[string]string{}}
	for _, x := range st.Rcpts {
		rec.Rcpts = append(rec.Rcpts, *x)
	}
	for k, v := range st.Macros {
		rec.Macros[k] = v
	}
	r.mu.Lock()
	r.txns = append(r.txns, rec)
	r.mu.Unlock()
}

func (r *recorder) all() []txnRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]txnRecord(nil), r.txns...)
}

// wait polls until n transactions were reported, then lets a little time pass
// to catch duplicates.
func (r *recorder) wait(t *testing.T, n int) []txnRecord {
	t.Helper()
	waitFor(t, "transactions reported", func() bool { return len(r.all()) >= n })
	time.Sleep(50 * time.Millisecond)
	got := r.all()
	if len(got) != n {
		t.Fatalf("got %d transactions reported, want %d: %+v", len(got), n, got)
	}
	return got
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// socketDir returns a short directory: unix socket paths are limited to 108
// bytes, which t.TempDir() can exceed.
func socketDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "mrt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type testServer struct {
	srv     *Server
	network string
	addr    string
	reg     *prometheus.Registry
	rec     *recorder
}

// start runs m on a unix socket (or TCP when tcp is set) and shuts it down at
// the end of the test.
func start(t testing.TB, m Milter, opts Options, tcp bool) *testServer {
	t.Helper()
	ts := &testServer{reg: prometheus.NewRegistry(), rec: &recorder{}}
	if opts.Registerer == nil {
		opts.Registerer = ts.reg
	}
	if opts.OnTransaction == nil {
		opts.OnTransaction = ts.rec.on
	}
	spec := "unix:" + filepath.Join(socketDir(t), "m.sock")
	if tcp {
		spec = "inet:127.0.0.1:0"
	}
	ln, err := Listen(spec)
	if err != nil {
		t.Fatal(err)
	}
	ts.network, ts.addr = ln.Addr().Network(), ln.Addr().String()
	ts.srv = New(m, opts)
	served := make(chan error, 1)
	go func() { served <- ts.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		ts.srv.Shutdown(ctx)
		if err := <-served; err != ErrServerClosed {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return ts
}

// client is a go-milter client session plus its raw connection.
type client struct {
	*milter.ClientSession
	conn net.Conn
}

type recDialer struct{ conn net.Conn }

func (d *recDialer) Dial(network, addr string) (net.Conn, error) {
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	d.conn = c
	return c, err
}

// A protocol 2 offer: every event gets a reply (no "no reply" flags offered).
const (
	allActionMask   = milter.OptAddHeader | milter.OptChangeBody | milter.OptAddRcpt | milter.OptRemoveRcpt | milter.OptChangeHeader | milter.OptQuarantine
	allProtocolMask = milter.OptNoConnect | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoRcptTo | milter.OptNoBody | milter.OptNoHeaders | milter.OptNoEOH
)

func (ts *testServer) dial(t testing.TB) (*client, error) {
	return ts.dialOffer(allActionMask, allProtocolMask)
}

// dialOffer opens a client session that offers these actions and protocol
// flags at negotiation.
func (ts *testServer) dialOffer(actions milter.OptAction, proto milter.OptProtocol) (*client, error) {
	d := &recDialer{}
	cl := milter.NewClientWithOptions(ts.network, ts.addr, milter.ClientOptions{
		Dialer: d, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second,
		ActionMask: actions, ProtocolMask: proto,
	})
	s, err := cl.Session()
	if err != nil {
		if d.conn != nil {
			d.conn.Close()
		}
		return nil, err
	}
	return &client{ClientSession: s, conn: d.conn}, nil
}

func (ts *testServer) mustDial(t testing.TB) *client {
	t.Helper()
	c, err := ts.dial(t)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.conn.Close() })
	return c
}

// expect returns a checker for a client call's (action, error):
// expect(t, "rcpt", milter.ActReplyCode, 550, "5.1.1 No such user")(c.Rcpt(...)).
func expect(t testing.TB, what string, code milter.ActionCode, smtp int, text string) func(*milter.Action, error) {
	return func(act *milter.Action, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if act.Code != code || act.SMTPCode != smtp || act.SMTPText != text {
			t.Fatalf("%s: got %c %d %q, want %c %d %q", what, act.Code, act.SMTPCode, act.SMTPText, code, smtp, text)
		}
	}
}

func cont(t testing.TB, what string) func(*milter.Action, error) {
	return expect(t, what, milter.ActContinue, 0, "")
}

// end sends end of message and checks the final action.
func (c *client) end(t testing.TB, code milter.ActionCode, smtp int, text string) []milter.ModifyAction {
	t.Helper()
	mods, act, err := c.End()
	expect(t, "eom", code, smtp, text)(act, err)
	return mods
}

// envelope sends CONNECT (tcp4 192.0.2.10:40000), HELO, MAIL and one RCPT,
// all expected to continue.
func (c *client) envelope(t testing.TB, sender, rcpt string) {
	t.Helper()
	cont(t, "conn")(c.Conn("client.example", milter.FamilyInet, 40000, "192.0.2.10"))
	cont(t, "helo")(c.Helo("helo.example"))
	c.txn(t, sender, rcpt)
}

// txn sends MAIL and one RCPT, expected to continue.
func (c *client) txn(t testing.TB, sender, rcpt string) {
	t.Helper()
	cont(t, "mail")(c.Mail(sender, nil))
	cont(t, "rcpt")(c.Rcpt(rcpt, nil))
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return -1
	}
	return m.GetCounter().GetValue()
}
