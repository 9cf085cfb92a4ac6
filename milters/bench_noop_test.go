package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/geomilter/geomilter/shared/milterrt"
)

// startNoop serves the no-op floor on a unix socket until the test ends.
func startNoop(t *testing.T, stages milterrt.Stages) string {
	return startFloor(t, serveNoop, stages)
}

type floorFunc func(context.Context, string, milterrt.Stages, string, io.Writer) error

func startFloor(t *testing.T, serve floorFunc, stages milterrt.Stages) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "gmnoop") // short: unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "noop.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, "unix:"+sock, stages, "", &bytes.Buffer{}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serveNoop: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("serveNoop did not stop within 10s")
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatal("noop socket did not appear")
		}
	}
}

func TestBenchMilterAgainstNoop(t *testing.T) {
	msg := filepath.Join(t.TempDir(), "m.eml")
	if err := os.WriteFile(msg, []byte("From: <a@load.example>\nSubject: x\n\nbody\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		serve  floorFunc
		stages milterrt.Stages
		args   []string
	}{
		{"all stages, generated message", serveNoop, milterrt.AllStages, nil},
		{"envelope only, fixed message", serveNoop, milterrt.StageConnect | milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt, []string{"--message", msg}},
		{"protocol 2 offer", serveNoop, milterrt.AllStages, []string{"--v2"}},
		// go-milter's server answers version 2: the load falls back to a
		// version 2 offer, as Postfix does.
		{"go-milter server, all stages", serveGoMilterNoop, milterrt.AllStages, []string{"--message", msg}},
		{"go-milter server, envelope only", serveGoMilterNoop, milterrt.StageConnect | milterrt.StageMail, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := startFloor(t, tc.serve, tc.stages)
			var out, errb bytes.Buffer
			args := append([]string{"milter", "--socket", "unix:" + sock, "-n", "40", "-c", "4", "--warmup", "7", "--json"}, tc.args...)
			if code := bench(args, &out, &errb); code != 0 {
				t.Fatalf("exit %d: %s", code, errb.String())
			}
			var res struct {
				Transactions, Errors, Warmup int
				PerSecond                    float64 `json:"per_second"`
				P50                          float64 `json:"p50_us"`
				P99                          float64 `json:"p99_us"`
				Actions                      map[string]int
			}
			if err := json.Unmarshal(out.Bytes(), &res); err != nil {
				t.Fatalf("output is not one JSON object: %v: %q", err, out.String())
			}
			if res.Transactions != 40 || res.Errors != 0 || res.Warmup != 7 || res.Actions["accept"] != 40 || len(res.Actions) != 1 {
				t.Errorf("result %+v", res)
			}
			if !(res.PerSecond > 0 && res.P50 > 0 && res.P50 <= res.P99) {
				t.Errorf("figures %+v", res)
			}
		})
	}
}

func TestBenchCommandErrors(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.eml")
	if err := os.WriteFile(bad, []byte("not a header line\n\nbody\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"noop without listen", []string{"noop"}, "--listen is required"},
		{"noop bad impl", []string{"noop", "--listen", "unix:/nonexistent/x.sock", "--impl", "c"}, `--impl "c"`},
		{"noop bad stages", []string{"noop", "--listen", "unix:/nonexistent/x.sock", "--stages", "some"}, `--stages "some"`},
		{"message not a message", []string{"milter", "--socket", "unix:/nonexistent/x.sock", "--message", bad}, "not a header field"},
		{"message missing", []string{"milter", "--socket", "unix:/nonexistent/x.sock", "--message", bad + ".none"}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			if code := bench(tc.args, &out, &errb); code != 2 || !strings.Contains(errb.String(), tc.want) {
				t.Errorf("exit %d, stderr %q; want 2 and %q", code, errb.String(), tc.want)
			}
		})
	}
}
