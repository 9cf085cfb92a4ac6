package target

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/milters/archive/journal"
	"github.com/geomilter/geomilter/shared/spool"
)

// HTTPTarget POSTs each record to a URL as multipart/mixed (RFC 2046
// §5.1.3): an application/json part (the journal header, envelope
// included), then the original as message/rfc822, streamed through a pipe
// so memory does not depend on the message size. The journal id is also in
// the X-Geomilter-Journal-Id header, for a receiver to deduplicate. 2xx
// acknowledges the record; 408, 429, 5xx, redirects and network errors are
// temporary; any other 4xx refuses the record for good (dead letter).
type HTTPTarget struct {
	name    string
	url     string
	headers map[string]string
	timeout time.Duration
	client  *http.Client
	dead    *DeadLetters
	log     zerolog.Logger
}

func newHTTP(c Config, dead *DeadLetters, log zerolog.Logger) *HTTPTarget {
	t := &HTTPTarget{name: c.Name, url: c.URL, headers: map[string]string{}, timeout: c.Timeout,
		dead: dead, log: log}
	for k, v := range c.Headers {
		t.headers[k] = v
	}
	if t.timeout == 0 {
		t.timeout = DefaultHTTPTimeout
	}
	t.client = &http.Client{
		Transport: http.DefaultTransport.(*http.Transport).Clone(),
		// A 301/302/303 would turn the POST into a GET without body, whose
		// 200 would then "acknowledge" a record that was never sent.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return t
}

// Name implements drain.Sink.
func (t *HTTPTarget) Name() string { return t.name }

// Close implements drain.Sink: idle keep-alive connections are closed.
func (t *HTTPTarget) Close() error {
	t.client.CloseIdleConnections()
	return nil
}

// Send implements drain.Sink.
func (t *HTTPTarget) Send(ctx context.Context, batch []spool.Record) error {
	return sendEach(ctx, t.name, batch, t.dead, t.one)
}

func (t *HTTPTarget) one(ctx context.Context, rec spool.Record) error {
	return forTarget(t.name, rec, func(h *journal.Header, msg io.Reader) error { return t.post(ctx, h, msg) })
}

func (t *HTTPTarget) post(ctx context.Context, h *journal.Header, msg io.Reader) error {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()

	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	src := &srcReader{r: msg}
	done := make(chan struct{})
	go func() {
		defer close(done)
		pw.CloseWithError(writeParts(mw, h, src))
	}()
	defer func() {
		// Stop the writer (if the server answered before reading it all)
		// and wait for it: it reads rc, closed after this.
		pr.CloseWithError(errors.New("request finished"))
		<-done
	}()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, pr)
	if err != nil {
		return fmt.Errorf("record %s: %w", h.ID, err)
	}
	for k, v := range t.headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", mime.FormatMediaType("multipart/mixed", map[string]string{"boundary": mw.Boundary()}))
	req.Header.Set("X-Geomilter-Journal-Id", h.ID)
	resp, err := t.client.Do(req)
	if err != nil {
		pr.CloseWithError(err)
		<-done
		if src.err != nil {
			return fmt.Errorf("record %s: %w", h.ID, src.err)
		}
		return fmt.Errorf("record %s: POST %s: %w", h.ID, t.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		// Read a bounded amount so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	err = fmt.Errorf("record %s: POST %s: status %s: %q", h.ID, t.url, resp.Status, snippet)
	switch c := resp.StatusCode; {
	case c == http.StatusRequestTimeout, c == http.StatusTooManyRequests, c/100 != 4:
		return err
	default:
		return permanent(err)
	}
}

// writeParts writes the two parts and the closing boundary.
func writeParts(mw *multipart.Writer, h any, msg io.Reader) error {
	p, err := mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"application/json"}})
	if err != nil {
		return err
	}
	if err := json.NewEncoder(p).Encode(h); err != nil {
		return err
	}
	p, err = mw.CreatePart(textproto.MIMEHeader{"Content-Type": {"message/rfc822"}})
	if err != nil {
		return err
	}
	if _, err := io.Copy(p, msg); err != nil {
		return err
	}
	return mw.Close()
}
