package drain

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"

	"github.com/geomilter/geomilter/shared/spool"
)

// HTTPSink POSTs each batch as NDJSON (one record per line) to a URL. Any 2xx
// answer acknowledges the whole batch; anything else, or the deadline, fails
// it and the whole batch is sent again later.
type HTTPSink struct {
	name    string
	url     string
	headers map[string]string
	client  *http.Client
}

// NewHTTPSink returns a sink posting to url with the extra headers (e.g.
// Authorization). If client is nil a dedicated one is used. The deadline of
// each request is the Send context's; a client-wide Timeout is unnecessary.
func NewHTTPSink(name, url string, headers map[string]string, client *http.Client) *HTTPSink {
	if client == nil {
		client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	h := make(map[string]string, len(headers))
	for k, v := range headers {
		h[k] = v
	}
	return &HTTPSink{name: name, url: url, headers: h, client: client}
}

// Name implements Sink.
func (s *HTTPSink) Name() string { return s.name }

// Close implements Sink: idle keep-alive connections are closed.
func (s *HTTPSink) Close() error {
	s.client.CloseIdleConnections()
	return nil
}

// Send implements Sink.
func (s *HTTPSink) Send(ctx context.Context, batch []spool.Record) error {
	n := 0
	for _, r := range batch {
		n += len(r.Data) + 1
	}
	body := make([]byte, 0, n)
	for _, r := range batch {
		start := len(body)
		body = append(body, r.Data...)
		// Encoded JSON has no raw line breaks except as insignificant
		// whitespace; blank them so one record is always one line.
		for i := start; i < len(body); i++ {
			if body[i] == '\n' || body[i] == '\r' {
				body[i] = ' '
			}
		}
		body = append(body, '\n')
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("http sink %s: %w", s.name, err)
	}
	req.Header.Set("Content-Type", "application/x-ndjson")
	for k, v := range s.headers {
		req.Header.Set(k, v)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("http sink %s: POST %d records: %w", s.name, len(batch), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 2 {
		// Read a bounded amount so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil
	}
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
	return fmt.Errorf("http sink %s: POST %s: %d records: status %s: %q",
		s.name, s.url, len(batch), resp.Status, snippet)
}
