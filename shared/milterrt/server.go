package milterrt

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	milter "github.com/emersion/go-milter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/message"
)

// Options configures a Server. The zero value works (no logging, no metrics).
type Options struct {
	Logger     zerolog.Logger
	Registerer prometheus.Registerer // nil: metrics are kept but not exported
	// MaxSessions bounds concurrent milter connections (default 512). Past it a
	// connection is accepted and closed at once, so Postfix applies its
	// milter_default_action immediately instead of waiting for a timeout.
	MaxSessions int
	// IdleTimeout closes a connection that sends nothing for this long
	// (default 10m); it also bounds each write to Postfix.
	IdleTimeout time.Duration
	// OnTransaction is called exactly once per transaction when it ends, on the
	// session goroutine, with State.Final set: after the end-of-message reply
	// was written, when a decision ends it early (the reply was written), at
	// ABORT or on a lost connection. A connection rejected, tempfailed or
	// accepted at connect or helo is reported too, as a transaction without
	// sender. st is reused afterwards: copy what you keep.
	OnTransaction func(st *State)
	// Clock returns the time (default time.Now).
	Clock func() time.Time
	// MessageDir holds the files of messages larger than MessageMemory, for
	// a MessageUser milter ("" = the system's temporary directory). New
	// removes the files a crashed process left there.
	MessageDir string
	// MessageMemory is how much of one message is kept in memory before the
	// rest goes to a file (0 = message.DefaultMemoryLimit, 256 KiB).
	MessageMemory int64
}

const (
	defaultMaxSessions = 512
	defaultIdleTimeout = 10 * time.Minute
	// forceGrace is how long Shutdown waits for session goroutines after it
	// has closed their connections; only a Session method that never returns
	// can exceed it.
	forceGrace = 5 * time.Second
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("milterrt: server closed")

// Server runs one Milter on any number of listeners.
type Server struct {
	m       Milter
	opts    Options
	log     zerolog.Logger
	met     *metrics
	actions Modifications
	stages  Stages // negotiated with the MTA
	listed  Stages // called on the Session: Milter.Stages() and end of message
	// usesMessage: the milter is a MessageUser that wants State.Message.
	usesMessage bool
	protocol    milter.OptProtocol
	now         func() time.Time

	idBase uint64
	idSeq  atomic.Uint64

	mu        sync.Mutex
	closing   bool
	done      chan struct{} // closed by Shutdown
	listeners map[*listener]struct{}
	sessions  map[*connection]struct{}
	wg        sync.WaitGroup // one per session goroutine
}

// New returns a Server for m. Metrics are registered on opts.Registerer with
// the label milter=m.Name().
func New(m Milter, opts Options) *Server {
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = defaultMaxSessions
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = defaultIdleTimeout
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	var seed [8]byte
	_, _ = rand.Read(seed[:]) // never fails on Linux; a zero seed would still give unique ids in-process
	s := &Server{
		m:         m,
		opts:      opts,
		log:       opts.Logger.With().Str("milter", m.Name()).Logger(),
		met:       newMetrics(opts.Registerer, m.Name()),
		actions:   m.Modifications(),
		stages:    m.Stages() | StageEOM,
		listed:    m.Stages() | StageEOM,
		now:       opts.Clock,
		idBase:    binary.BigEndian.Uint64(seed[:]),
		done:      make(chan struct{}),
		listeners: make(map[*listener]struct{}),
		sessions:  make(map[*connection]struct{}),
	}
	if mu, ok := m.(MessageUser); ok && mu.UsesMessage() {
		s.usesMessage = true
		s.stages |= StageHeaders | StageEOH | StageBody
		if opts.MessageDir != "" {
			// Files of a process that crashed; a live message of another
			// process sharing the directory keeps working (see message.CleanDir).
			n, err := message.CleanDir(opts.MessageDir)
			if err != nil {
				s.log.Warn().Err(err).Str("dir", opts.MessageDir).Msg("message files left by an earlier run not all removed")
			} else if n > 0 {
				s.log.Info().Int("removed", n).Str("dir", opts.MessageDir).Msg("message files left by an earlier run removed")
			}
		}
	}
	s.protocol = s.stages.protocol(envelopeStages)
	return s
}

// protocolFor returns the protocol flags to ask for on a new connection: a
// Decider is asked where it decides at each negotiation, so that what it says
// can follow its rules.
func (s *Server) protocolFor() milter.OptProtocol {
	if d, ok := s.m.(Decider); ok {
		return s.stages.protocol(d.DecidesAt() & envelopeStages)
	}
	return s.protocol
}

// Serve accepts milter connections on ln until Shutdown (then it returns
// ErrServerClosed) or until ln fails permanently. Temporary accept errors
// (e.g. too many open files) are logged and retried with a backoff instead of
// ending the listener. Serve may be called for several listeners.
func (s *Server) Serve(ln net.Listener) error {
	l := &listener{Listener: ln, srv: s}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	for {
		c, err := l.accept()
		if err != nil {
			if s.isClosing() {
				return ErrServerClosed
			}
			return fmt.Errorf("milterrt: serve %s: %w", ln.Addr(), err)
		}
		go c.serve()
	}
}

// Shutdown stops accepting, closes connections that are between transactions,
// lets the ones inside a transaction finish it (they are closed right after),
// and when ctx is done closes the rest. It returns when every session
// goroutine has ended — nil if all ended on their own, else an error wrapping
// ctx.Err(). Should a Session method never return, Shutdown gives up a few
// seconds after the forced close and says so.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		close(s.done)
	}
	lns := make([]*listener, 0, len(s.listeners))
	for l := range s.listeners {
		lns = append(lns, l)
	}
	sess := s.snapshot()
	s.mu.Unlock()

	for _, l := range lns {
		l.Close()
	}
	for _, c := range sess {
		c.beginClosing()
	}

	all := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(all)
	}()
	select {
	case <-all:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	sess = s.snapshot()
	s.mu.Unlock()
	for _, c := range sess {
		c.forceClose()
	}
	t := time.NewTimer(forceGrace)
	defer t.Stop()
	select {
	case <-all:
		return fmt.Errorf("milterrt: shutdown: closed %d sessions still in a transaction: %w", len(sess), ctx.Err())
	case <-t.C:
		return fmt.Errorf("milterrt: shutdown: %d sessions still running after close: %w", s.ActiveSessions(), ctx.Err())
	}
}

func (s *Server) snapshot() []*connection {
	out := make([]*connection, 0, len(s.sessions))
	for c := range s.sessions {
		out = append(out, c)
	}
	return out
}

// ActiveSessions returns the number of open milter connections.
func (s *Server) ActiveSessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// register admits a new connection, or reports why not.
func (s *Server) register(raw net.Conn) (*connection, error) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return nil, ErrServerClosed
	}
	if len(s.sessions) >= s.opts.MaxSessions {
		s.mu.Unlock()
		return nil, errTooMany
	}
	c := newConnection(s, raw)
	s.sessions[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.met.active.Inc()
	s.met.sessions.Inc()
	return c, nil
}

var errTooMany = errors.New("too many sessions")

func (s *Server) release(c *connection) {
	s.mu.Lock()
	delete(s.sessions, c)
	s.mu.Unlock()
	s.met.active.Dec()
	s.wg.Done()
}

// newID returns 12 hex characters: a random per-process base plus a counter,
// so ids never repeat within a process and rarely across processes.
func (s *Server) newID() string {
	const hexdigits = "0123456789abcdef"
	v := (s.idBase + s.idSeq.Add(1)) & (1<<48 - 1)
	var b [12]byte
	for i := 11; i >= 0; i-- {
		b[i] = hexdigits[v&0xf]
		v >>= 4
	}
	return string(b[:])
}

// listener accepts milter connections for a Server.
type listener struct {
	net.Listener
	srv *Server
}

// accept returns the next admitted connection. Temporary errors are retried
// with a backoff; past MaxSessions a connection is closed at once.
func (l *listener) accept() (*connection, error) {
	var backoff time.Duration
	for {
		raw, err := l.Listener.Accept()
		if err != nil {
			if l.srv.isClosing() || errors.Is(err, net.ErrClosed) {
				return nil, err
			}
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff *= 2; backoff > time.Second {
				backoff = time.Second
			}
			l.srv.log.Error().Err(err).Dur("retry_in", backoff).Msg("accept failed")
			select {
			case <-time.After(backoff):
			case <-l.srv.done:
			}
			continue
		}
		backoff = 0
		c, err := l.srv.register(raw)
		if err != nil {
			if err == errTooMany {
				l.srv.met.refused.Inc()
				l.srv.log.Warn().Int("max_sessions", l.srv.opts.MaxSessions).Msg("milter connection refused: too many sessions")
			}
			raw.Close()
			continue
		}
		return c, nil
	}
}
