package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/geomilter/geomilter/shared/milterrt"
)

// benchNoop runs `geomilter bench noop`: a milter that accepts everything,
// served by the same runtime as the real milters but with no checks, no trail
// and no config. It is the floor that scripts/bench-compare.sh measures the
// milters and their peers against: whatever a milter costs above it is the
// milter's own work. Hidden from the usage text; it serves until SIGTERM or
// SIGINT.
func benchNoop(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("bench noop", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "socket in Postfix notation (unix:/path or inet:host:port)")
	stagesFlag := fs.String("stages", "all", "stages negotiated: all, envelope (connect, helo, mail, rcpt: what the access milter asks for) or eom (end of message only)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the serving process to this file when it stops")
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
	if *listen == "" {
		fmt.Fprintln(stderr, "bench noop: --listen is required")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := serveNoop(ctx, *listen, stages, *cpuprofile, stderr); err != nil {
		fmt.Fprintf(stderr, "bench noop: %v\n", err)
		return 1
	}
	return 0
}

// serveNoop serves until ctx is done, then shuts down gracefully.
func serveNoop(ctx context.Context, listen string, stages milterrt.Stages, cpuprofile string, stderr io.Writer) error {
	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return fmt.Errorf("cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpuprofile %s: %w", cpuprofile, err)
		}
		defer pprof.StopCPUProfile()
	}
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
