// Package milterload drives a milter with synthetic mail over the milter
// protocol, as Postfix would, and measures it: the engine behind
// `geomilter bench milter` and the milter benchmarks.
//
// Each transaction sends CONNECT and HELO (on a new milter connection), MAIL,
// one RCPT per recipient, the headers (Message-ID, Date, From, To, Subject, and
// any extra ones), end of headers, the body in chunks, and end of message; its
// latency runs from the start of the connection (or of MAIL, when the
// connection is reused) to the end-of-message reply. A run is bounded in count
// (Transactions) and in time (Timeout, and the context).
package milterload

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	milter "github.com/emersion/go-milter"
	"github.com/geomilter/geomilter/shared/milterrt"
)

// Options describes a load run. Only Network and Address are required.
type Options struct {
	Network, Address string        // as for net.Dial: "unix", "/run/geomilter/access.sock"; see milterrt.ParseSpec
	Transactions     int           // total transactions (default 1000)
	Concurrency      int           // parallel milter connections (default 1)
	MessageBytes     int           // body size (default 2048)
	Rcpts            int           // recipients per transaction (default 1)
	TxnPerSession    int           // transactions per milter connection (default 1, as for most SMTP sessions)
	Timeout          time.Duration // bound on the whole run (default 1m); also each read/write's bound

	Sender   func(i int) string                 // envelope sender of transaction i (default "sender<i>@load.example")
	Rcpt     func(i, j int) string              // recipient j of transaction i (default "rcpt<i>-<j>@load.example")
	ClientIP func(i int) net.IP                 // client of the connection whose first transaction is i (default 198.18.0.0/15, the benchmarking range)
	Header   func(i int) []milterrt.HeaderField // extra headers, after the standard ones (optional)

	// Message, when set, is sent by every transaction instead of the
	// generated headers and body (MessageBytes and Header are then unused):
	// a fixed message, such as one carrying a DKIM signature that peers must
	// verify. Build it with ParseMessage.
	Message *Message

	// V2 offers only what milter protocol version 2 knows (no "no reply"
	// flags): for milters that announce version 2, and to measure what the
	// no-reply flags save.
	V2 bool
}

// Message is a fixed message: headers in order, then the body with CRLF line
// ends, as Postfix sends them to a milter.
type Message struct {
	Headers []milterrt.HeaderField
	Body    []byte
}

// Result of a run. Transactions counts those that got an answer (whatever it
// was); Errors those that failed at the protocol level (connection refused or
// lost, timeout, malformed reply).
type Result struct {
	Transactions int
	Errors       int
	Elapsed      time.Duration
	PerSecond    float64 // Transactions / Elapsed
	P50, P99     time.Duration
	Max          time.Duration
	// Actions counts the final answer per transaction: accept, reject,
	// tempfail, discard, replycode-4xx, replycode-5xx (continue: a milter that
	// answered end of message with continue).
	Actions map[string]int
}

// String is a one-line summary.
func (r Result) String() string {
	keys := make([]string, 0, len(r.Actions))
	for k := range r.Actions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var acts []string
	for _, k := range keys {
		acts = append(acts, k+"="+strconv.Itoa(r.Actions[k]))
	}
	return fmt.Sprintf("%d transactions in %s (%.0f/s), latency p50 %s p99 %s max %s, %d errors, actions: %s",
		r.Transactions, r.Elapsed.Round(time.Millisecond), r.PerSecond,
		roundDur(r.P50), roundDur(r.P99), roundDur(r.Max), r.Errors, strings.Join(acts, " "))
}

func roundDur(d time.Duration) time.Duration {
	switch {
	case d >= 100*time.Millisecond:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	default:
		return d.Round(time.Microsecond)
	}
}

func (o *Options) defaults() error {
	if o.Network == "" || o.Address == "" {
		return errors.New("milterload: Network and Address are required")
	}
	if o.Transactions <= 0 {
		o.Transactions = 1000
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.Concurrency > o.Transactions {
		o.Concurrency = o.Transactions
	}
	if o.MessageBytes < 0 {
		return errors.New("milterload: MessageBytes must not be negative")
	}
	if o.MessageBytes == 0 {
		o.MessageBytes = 2048
	}
	if o.Rcpts <= 0 {
		o.Rcpts = 1
	}
	if o.TxnPerSession <= 0 {
		o.TxnPerSession = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Minute
	}
	if o.Sender == nil {
		o.Sender = func(i int) string { return "sender" + strconv.Itoa(i) + "@load.example" }
	}
	if o.Rcpt == nil {
		o.Rcpt = func(i, j int) string { return "rcpt" + strconv.Itoa(i) + "-" + strconv.Itoa(j) + "@load.example" }
	}
	if o.ClientIP == nil {
		o.ClientIP = func(i int) net.IP {
			n := uint32(i) % (1 << 17) // 198.18.0.0/15
			return net.IPv4(198, 18+byte(n>>16), byte(n>>8), byte(n)).To4()
		}
	}
	return nil
}

// The load offers what Postfix 3.7 offers (protocol 6: every action, every
// protocol flag including the no-reply ones) but SMFIP_SKIP, whose reply
// go-milter's client cannot read, so that a milter negotiates with it almost
// as with Postfix. A milter that announces version 2 (go-milter's server)
// makes go-milter's client refuse masks beyond 0x3f and 0x7f: Options.V2
// offers only those.
const (
	actionMask     = milter.OptAction(0x1ff)
	protocolMask   = milter.OptProtocol(0x1fffff) &^ milter.OptSkip
	actionMaskV2   = milter.OptAddHeader | milter.OptChangeBody | milter.OptAddRcpt | milter.OptRemoveRcpt | milter.OptChangeHeader | milter.OptQuarantine
	protocolMaskV2 = milter.OptNoConnect | milter.OptNoHelo | milter.OptNoMailFrom | milter.OptNoRcptTo | milter.OptNoBody | milter.OptNoHeaders | milter.OptNoEOH
)

// Run performs the load. The Result is valid even when err is not nil: err
// reports invalid options, or that the run was cut short by the timeout or ctx
// (with how far it got).
func Run(ctx context.Context, o Options) (Result, error) {
	if err := o.defaults(); err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()

	r := &runner{o: o, ctx: ctx, conns: map[net.Conn]struct{}{}}
	if o.Message != nil {
		r.body = o.Message.Body
	} else {
		r.body = makeBody(o.MessageBytes)
	}
	r.deadline, _ = ctx.Deadline()
	r.dialer = &trackingDialer{r: r}
	client := func(v2 bool) *milter.Client {
		am, pm := actionMask, protocolMask
		if v2 {
			am, pm = actionMaskV2, protocolMaskV2
		}
		return milter.NewClientWithOptions(o.Network, o.Address, milter.ClientOptions{
			Dialer: r.dialer, ReadTimeout: o.Timeout, WriteTimeout: o.Timeout,
			ActionMask: am, ProtocolMask: pm,
		})
	}
	r.client.Store(client(o.V2))
	r.clientV2 = client(true)
	// When time is up, close every connection so that no worker stays blocked
	// on a milter that does not answer.
	stop := context.AfterFunc(ctx, r.closeAll)
	defer stop()

	start := time.Now()
	var wg sync.WaitGroup
	results := make([]workerResult, o.Concurrency)
	for w := 0; w < o.Concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			results[w] = r.work()
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := Result{Elapsed: elapsed, Actions: map[string]int{}}
	var lat []time.Duration
	for _, wr := range results {
		res.Errors += wr.errors
		lat = append(lat, wr.latencies...)
		for k, v := range wr.actions {
			res.Actions[k] += v
		}
	}
	res.Transactions = len(lat)
	if elapsed > 0 {
		res.PerSecond = float64(res.Transactions) / elapsed.Seconds()
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		res.P50 = lat[len(lat)*50/100]
		res.P99 = lat[min(len(lat)-1, len(lat)*99/100)]
		res.Max = lat[len(lat)-1]
	}
	if r.expired() && res.Transactions+res.Errors < o.Transactions {
		err := ctx.Err()
		if err == nil {
			err = context.DeadlineExceeded
		}
		return res, fmt.Errorf("milterload: stopped after %s with %d of %d transactions: %w",
			elapsed.Round(time.Millisecond), res.Transactions+res.Errors, o.Transactions, err)
	}
	return res, nil
}

type runner struct {
	o        Options
	ctx      context.Context
	deadline time.Time
	body     []byte
	client   atomic.Pointer[milter.Client]
	// clientV2 replaces client when the milter answers protocol 2: Postfix
	// offers 6 and takes a version 2 answer, but go-milter's client refuses
	// one to the full offer.
	clientV2 *milter.Client
	dialer   *trackingDialer
	next     atomic.Int64 // next transaction index to claim

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// expired reports whether the run is out of time. The deadline is checked
// directly: a read or dial can fail on it before the context's timer has run.
func (r *runner) expired() bool {
	return r.ctx.Err() != nil || !time.Now().Before(r.deadline)
}

type workerResult struct {
	latencies []time.Duration
	errors    int
	actions   map[string]int
}

// claim reserves up to n transaction indexes; it returns the first and count.
func (r *runner) claim(n int) (int, int) {
	for {
		cur := r.next.Load()
		left := int64(r.o.Transactions) - cur
		if left <= 0 {
			return 0, 0
		}
		take := min(int64(n), left)
		if r.next.CompareAndSwap(cur, cur+take) {
			return int(cur), int(take)
		}
	}
}

func (r *runner) work() workerResult {
	wr := workerResult{actions: map[string]int{}}
	for !r.expired() {
		first, n := r.claim(r.o.TxnPerSession)
		if n == 0 {
			break
		}
		r.session(first, n, &wr)
	}
	return wr
}

// session runs transactions first … first+n-1 on one milter connection.
func (r *runner) session(first, n int, wr *workerResult) {
	t0 := time.Now()
	fail := func(done int) {
		if !r.expired() { // transactions cut by the deadline are not errors
			wr.errors += n - done
		}
	}
	s, err := r.client.Load().Session()
	if errors.Is(err, milter.ErrUnsupportedMilterVersion) {
		r.client.Store(r.clientV2)
		s, err = r.clientV2.Session()
	}
	if err != nil {
		fail(0)
		return
	}
	defer s.Close()

	ip := r.o.ClientIP(first)
	fam := milter.FamilyInet
	if ip.To4() == nil {
		fam = milter.FamilyInet6
	}
	act, err := s.Conn("client"+strconv.Itoa(first)+".load.example", fam, uint16(30000+first%30000), ip.String())
	if err == nil && act.Code == milter.ActContinue {
		act, err = s.Helo("client" + strconv.Itoa(first) + ".load.example")
	}
	if err != nil {
		fail(0)
		return
	}
	if act.Code != milter.ActContinue {
		// The connection itself was refused: every transaction gets that answer.
		lat := time.Since(t0)
		for k := 0; k < n; k++ {
			wr.latencies = append(wr.latencies, lat)
			wr.actions[actionName(act)]++
		}
		return
	}
	for k := 0; k < n; k++ {
		if k > 0 {
			t0 = time.Now()
		}
		act, err := r.txn(s, first+k)
		if err != nil {
			fail(k)
			return
		}
		wr.latencies = append(wr.latencies, time.Since(t0))
		wr.actions[actionName(act)]++
	}
}

// txn sends one transaction and returns its final answer.
func (r *runner) txn(s *milter.ClientSession, i int) (*milter.Action, error) {
	act, err := s.Mail(r.o.Sender(i), nil)
	if err != nil || act.Code != milter.ActContinue {
		return act, err
	}
	accepted := 0
	var last *milter.Action
	for j := 0; j < r.o.Rcpts; j++ {
		act, err := s.Rcpt(r.o.Rcpt(i, j), nil)
		if err != nil {
			return nil, err
		}
		switch {
		case act.Code == milter.ActContinue:
			accepted++
		case act.Code == milter.ActReplyCode || act.Code == milter.ActReject || act.Code == milter.ActTempFail:
			last = act // this recipient only, as Postfix does
		default:
			return act, nil // accept or discard: the message is decided
		}
	}
	if accepted == 0 {
		// Postfix ends a transaction without valid recipients with ABORT.
		return last, s.Abort()
	}
	for _, h := range r.headers(i) {
		act, err := s.HeaderField(h.Name, h.Value)
		if err != nil || act.Code != milter.ActContinue {
			return act, err
		}
	}
	if act, err := s.HeaderEnd(); err != nil || act.Code != milter.ActContinue {
		return act, err
	}
	for b := r.body; len(b) > 0; {
		n := min(len(b), milter.MaxBodyChunk)
		act, err := s.BodyChunk(b[:n])
		if err != nil || (act.Code != milter.ActContinue && act.Code != milter.ActSkip) {
			return act, err
		}
		if act.Code == milter.ActSkip {
			break
		}
		b = b[n:]
	}
	_, act, err = s.End()
	return act, err
}

func (r *runner) headers(i int) []milterrt.HeaderField {
	if r.o.Message != nil {
		return r.o.Message.Headers
	}
	hs := []milterrt.HeaderField{
		{Name: "Message-ID", Value: "<" + strconv.Itoa(i) + "." + strconv.FormatInt(time.Now().UnixNano(), 36) + "@load.example>"},
		{Name: "Date", Value: time.Now().Format(time.RFC1123Z)},
		{Name: "From", Value: "<" + r.o.Sender(i) + ">"},
		{Name: "To", Value: "<" + r.o.Rcpt(i, 0) + ">"},
		{Name: "Subject", Value: "geomilter load test message " + strconv.Itoa(i)},
	}
	if r.o.Header != nil {
		hs = append(hs, r.o.Header(i)...)
	}
	return hs
}

// ParseMessage reads a message as stored in a file (RFC 5322: header lines,
// an empty line, the body; LF or CRLF line ends) into what Postfix would send
// to a milter: each header's name and its value without the whitespace after
// the colon, folded lines joined by "\n" (Postfix's own line end), and the
// body with CRLF line ends. A file without an empty line is all headers.
func ParseMessage(raw []byte) (*Message, error) {
	text := strings.ReplaceAll(string(raw), "\r\n", "\n")
	head, body, _ := strings.Cut(text, "\n\n")
	if strings.HasPrefix(text, "\n") {
		head, body = "", text[1:]
	}
	m := &Message{}
	for n, line := range strings.Split(head, "\n") {
		if line == "" {
			continue // only the last line of a header block without a body
		}
		if line[0] == ' ' || line[0] == '\t' {
			if len(m.Headers) == 0 {
				return nil, fmt.Errorf("message line %d: continuation line before any header", n+1)
			}
			m.Headers[len(m.Headers)-1].Value += "\n" + line
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("message line %d: not a header field (want Name: value): %.40q", n+1, line)
		}
		m.Headers = append(m.Headers, milterrt.HeaderField{Name: name, Value: strings.TrimLeft(value, " \t")})
	}
	if len(m.Headers) == 0 {
		return nil, errors.New("message: no header fields")
	}
	if body != "" && !strings.HasSuffix(body, "\n") {
		body += "\n"
	}
	m.Body = []byte(strings.ReplaceAll(body, "\n", "\r\n"))
	return m, nil
}

// makeBody returns n bytes of CRLF-terminated text lines.
func makeBody(n int) []byte {
	const line = "The quick brown fox jumps over the lazy dog, geomilter load test line.\r\n"
	b := make([]byte, 0, n)
	for len(b) < n {
		b = append(b, line[:min(len(line), n-len(b))]...)
	}
	if n >= 2 {
		b[n-2], b[n-1] = '\r', '\n'
	}
	return b
}

func actionName(a *milter.Action) string {
	if a == nil {
		return "none"
	}
	switch a.Code {
	case milter.ActAccept:
		return "accept"
	case milter.ActReject:
		return "reject"
	case milter.ActTempFail:
		return "tempfail"
	case milter.ActDiscard:
		return "discard"
	case milter.ActContinue:
		return "continue"
	case milter.ActReplyCode:
		if a.SMTPCode >= 500 {
			return "replycode-5xx"
		}
		return "replycode-4xx"
	}
	return "other"
}

// trackingDialer remembers open connections so that Run can close them all
// when its time is up.
type trackingDialer struct{ r *runner }

func (d *trackingDialer) Dial(network, addr string) (net.Conn, error) {
	var nd net.Dialer
	c, err := nd.DialContext(d.r.ctx, network, addr)
	if err != nil {
		return nil, err
	}
	d.r.mu.Lock()
	defer d.r.mu.Unlock()
	if d.r.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, r: d.r}
	d.r.conns[tc] = struct{}{}
	return tc, nil
}

func (r *runner) closeAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	for c := range r.conns {
		c.(*trackedConn).Conn.Close()
	}
}

type trackedConn struct {
	net.Conn
	r *runner
}

func (c *trackedConn) Close() error {
	c.r.mu.Lock()
	delete(c.r.conns, c)
	c.r.mu.Unlock()
	return c.Conn.Close()
}
