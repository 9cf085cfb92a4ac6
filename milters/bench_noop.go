package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	milter "github.com/emersion/go-milter"
	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/milterrt"
)

// benchNoop runs `geomilter bench noop`: a milter that accepts everything,
// with no checks, no trail and no config. It is the floor that
// scripts/bench-compare.sh measures the milters and their peers against.
// --impl go-milter serves it with go-milter's own server (the library floor:
// what a Go milter built on go-milter v0.5.0 costs at the least); --impl
// runtime (the default) with geomilter's runtime, so that whatever a milter
// costs above it is the milter's own work. Hidden from the usage text; it
// serves until SIGTERM or SIGINT.
func benchNoop(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench noop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "socket in Postfix notation (unix:/path or inet:host:port)")
	stagesFlag := fs.String("stages", "all", "stages negotiated: all, envelope (connect, helo, mail, rcpt: what the access milter asks for) or eom (end of message only)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the serving process to this file when it stops")
	impl := fs.String("impl", "runtime", "runtime (geomilter's milter runtime) or go-milter (go-milter v0.5.0's server)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	stages, ok := map[string]milterrt.Stages{
		"all":      milterrt.AllStages,
		"envelope": milterrt.StageConnect | milterrt.StageHelo | milterrt.StageMail | milterrt.StageRcpt,
		"eom":      0,
	}[*stagesFlag]
	if !ok {
		fmt.Fprintf(stderr, "bench noop: --stages %q: want all, envelope or eom\n", *stagesFlag)
		return 2
	}
	if *impl != "runtime" && *impl != "go-milter" {
		fmt.Fprintf(stderr, "bench noop: --impl %q: want runtime or go-milter\n", *impl)
		return 2
	}
	if *listen == "" {
		fmt.Fprintln(stderr, "bench noop: --listen is required")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	serve := serveNoop
	if *impl == "go-milter" {
		serve = serveGoMilterNoop
	}
	if err := serve(ctx, *listen, stages, *cpuprofile, stderr); err != nil {
		fmt.Fprintf(stderr, "bench noop: %v\n", err)
		return 1
	}
	return 0
}

// startProfile starts a CPU profile into path ("" for none); the returned
// function stops it.
func startProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpuprofile %s: %w", path, err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// serveNoop serves until ctx is done, then shuts down gracefully.
func serveNoop(ctx context.Context, listen string, stages milterrt.Stages, cpuprofile string, stderr io.Writer) error {
	stopProfile, err := startProfile(cpuprofile)
	if err != nil {
		return err
	}
	defer stopProfile()
	log := zerolog.New(stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	srv := milterrt.New(milterrt.NoopMilter{Want: stages}, milterrt.Options{Logger: log})
	ln, err := milterrt.Listen(listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", listen, err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(stderr, "bench noop: serving on %s, stages %s\n", listen, stages)

	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("serve %s: %w", listen, err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-served; err != nil && !errors.Is(err, milterrt.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", listen, err)
	}
	return nil
}

// serveGoMilterNoop serves the floor with go-milter v0.5.0's server: it
// answers protocol version 2, replies to every event it is sent, and skips
// the stages not in stages.
func serveGoMilterNoop(ctx context.Context, listen string, stages milterrt.Stages, cpuprofile string, stderr io.Writer) error {
	stopProfile, err := startProfile(cpuprofile)
	if err != nil {
		return err
	}
	defer stopProfile()
	ln, err := milterrt.Listen(listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", listen, err)
	}
	srv := &milter.Server{NewMilter: func() milter.Milter { return goMilterNoop{} }, Protocol: stages.SkipFlags()}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(stderr, "bench noop: go-milter server on %s, stages %s\n", listen, stages)
	select {
	case <-ctx.Done():
		srv.Close() // go-milter has no graceful shutdown; the floor keeps no state
		<-served
		return nil
	case err := <-served:
		return fmt.Errorf("serve %s: %w", listen, err)
	}
}

// goMilterNoop continues at every event and accepts at end of message.
type goMilterNoop struct{}

func (goMilterNoop) Connect(string, string, uint16, net.IP, *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (goMilterNoop) Helo(string, *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (goMilterNoop) MailFrom(string, *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (goMilterNoop) RcptTo(string, *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (goMilterNoop) Header(string, string, *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (goMilterNoop) Headers(textproto.MIMEHeader, *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (goMilterNoop) BodyChunk([]byte, *milter.Modifier) (milter.Response, error) {
	return milter.RespContinue, nil
}
func (goMilterNoop) Body(*milter.Modifier) (milter.Response, error) { return milter.RespAccept, nil }
func (goMilterNoop) Abort(*milter.Modifier) error                   { return nil }
