package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/milterload"
)

// runMilter runs a milter process (one milter, or the suite) in the
// foreground: run gets the config path and returns when the process ends.
func runMilter(name string, args []string, stderr io.Writer, run func(cfgPath string) error) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/geomilter/geomilter.yaml", "config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// GEOMILTER_CPUPROFILE=DIR writes a CPU profile of the whole run to
	// DIR/<milter>-<pid>.prof (suite-<pid>.prof for the suite): for measuring under real Postfix load
	// (BENCHMARKS.md), not for production.
	if dir := os.Getenv("GEOMILTER_CPUPROFILE"); dir != "" {
		stop, err := startProfile(filepath.Join(dir, fmt.Sprintf("%s-%d.prof", name, os.Getpid())))
		if err != nil {
			fmt.Fprintf(stderr, "geomilter %s: GEOMILTER_CPUPROFILE: %v\n", name, err)
			return 1
		}
		defer stop()
	}
	if err := run(*cfgPath); err != nil {
		fmt.Fprintf(stderr, "geomilter %s: %v\n", name, err)
		return 1
	}
	return 0
}

func checkConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/geomilter/geomilter.yaml", "host config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		// Else `check-config FILE` would check the default file instead.
		fmt.Fprintf(stderr, "check-config: unexpected argument %q (the file goes after --config)\n", fs.Arg(0))
		return 2
	}
	return config.CheckConfig(*cfgPath, stdout)
}

func bench(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "noop" {
		return benchNoop(args[1:], stderr) // hidden: the floor for bench-compare (bench_noop.go)
	}
	if len(args) == 0 || args[0] != "milter" {
		fmt.Fprintln(stderr, "usage: geomilter bench milter --socket unix:/path|inet:host:port [flags]")
		return 2
	}
	fs := flag.NewFlagSet("bench milter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("socket", "", "milter socket in Postfix notation (unix:/path or inet:host:port)")
	n := fs.Int("n", 5000, "transactions")
	c := fs.Int("c", 8, "concurrent milter sessions")
	size := fs.Int("size", 2048, "message body bytes")
	rcpts := fs.Int("rcpts", 1, "recipients per message")
	perSession := fs.Int("txn-per-session", 1, "transactions per milter connection")
	timeout := fs.Duration("timeout", 5*time.Minute, "bound on the whole run")
	warmup := fs.Int("warmup", 0, "transactions run first and left out of the figures (first-use costs: caches, key loading)")
	msgFile := fs.String("message", "", "send this message (headers, empty line, body) in every transaction instead of generated ones; -size is then unused")
	asJSON := fs.Bool("json", false, "print the result as one JSON object")
	v2 := fs.Bool("v2", false, "offer only milter protocol 2 (no \"no reply\" flags): for go-milter servers, or to measure what those flags save")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	network, addr, err := config.ParseListen(*sock)
	if err != nil {
		fmt.Fprintf(stderr, "bench milter: --socket: %v\n", err)
		return 2
	}
	var msg *milterload.Message
	if *msgFile != "" {
		raw, err := os.ReadFile(*msgFile)
		if err != nil {
			fmt.Fprintf(stderr, "bench milter: --message: %v\n", err)
			return 2
		}
		if msg, err = milterload.ParseMessage(raw); err != nil {
			fmt.Fprintf(stderr, "bench milter: --message %s: %v\n", *msgFile, err)
			return 2
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	opts := milterload.Options{
		Network: network, Address: addr, Transactions: *n, Concurrency: *c,
		MessageBytes: *size, Rcpts: *rcpts, TxnPerSession: *perSession, Timeout: *timeout, Message: msg, V2: *v2,
	}
	if *warmup > 0 {
		wo := opts
		wo.Transactions = *warmup
		res, err := milterload.Run(ctx, wo)
		if err == nil && res.Errors > 0 {
			err = fmt.Errorf("%d of %d transactions failed", res.Errors, *warmup)
		}
		if err != nil {
			fmt.Fprintf(stderr, "bench milter: warmup: %v\n", err)
			return 1
		}
	}
	res, err := milterload.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "bench milter: %v\n", err)
		return 1
	}
	if *asJSON {
		us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
		out, _ := json.Marshal(struct {
			Transactions int            `json:"transactions"`
			Errors       int            `json:"errors"`
			Warmup       int            `json:"warmup"`
			ElapsedSec   float64        `json:"elapsed_s"`
			PerSecond    float64        `json:"per_second"`
			P50us        float64        `json:"p50_us"`
			P99us        float64        `json:"p99_us"`
			MaxUs        float64        `json:"max_us"`
			Actions      map[string]int `json:"actions"`
		}{res.Transactions, res.Errors, max(*warmup, 0), res.Elapsed.Seconds(), res.PerSecond,
			us(res.P50), us(res.P99), us(res.Max), res.Actions})
		fmt.Fprintln(stdout, string(out))
	} else {
		fmt.Fprintln(stdout, res.String())
	}
	if res.Errors > 0 {
		fmt.Fprintf(stderr, "bench milter: %d of %d transactions failed at the protocol level\n", res.Errors, res.Transactions+res.Errors)
		return 1
	}
	return 0
}
