package target

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// benchMsg is a 16 MiB message: B/op far below it shows that a target
// streams the message rather than holding it.
var benchMsg = testMsg8 + strings.Repeat(strings.Repeat("x", 78)+"\r\n", 16<<20/80)

func benchSend(b *testing.B, c Config) {
	dead, _ := newDead(b)
	ts := newTestSpool(b)
	ts.add(b, testHeader("lax-1", benchMsg), benchMsg)
	batch := ts.batch(b, 1)
	tg := newTarget(b, c, dead)
	b.SetBytes(int64(len(benchMsg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := tg.Send(ctx, batch); err != nil {
			b.Fatal(err)
		}
		cancel()
	}
}

func BenchmarkDirTarget16MiB(b *testing.B) {
	benchSend(b, Config{Name: "files", Type: TypeDir, Path: filepath.Join(b.TempDir(), "a")})
}

func BenchmarkHTTPTarget16MiB(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	benchSend(b, Config{Name: "ingest", Type: TypeHTTP, URL: srv.URL})
}

func BenchmarkSMTPTarget16MiB(b *testing.B) {
	sink := startSMTPSinkDump(b, false)
	benchSend(b, smtpConfig(sink.addr))
}
