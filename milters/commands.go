package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/geomilter/geomilter/shared/config"
	"github.com/geomilter/geomilter/shared/milterload"
	"github.com/geomilter/geomilter/shared/service"
)

func runMilter(name string, f service.Factory, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/geomilter/geomilter.yaml", "config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if err := service.Run(name, *cfgPath, f, stderr); err != nil {
		fmt.Fprintf(stderr, "geomilter %s: %v\n", name, err)
		return 1
	}
	return 0
}

func checkConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/geomilter/geomilter.yaml", "config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	return config.CheckConfig(*cfgPath, stdout)
}

func bench(args []string, stdout, stderr io.Writer) int {
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
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	network, addr, err := config.ParseListen(*sock)
	if err != nil {
		fmt.Fprintf(stderr, "bench milter: --socket: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	res, err := milterload.Run(ctx, milterload.Options{
		Network: network, Address: addr, Transactions: *n, Concurrency: *c,
		MessageBytes: *size, Rcpts: *rcpts, TxnPerSession: *perSession, Timeout: *timeout,
	})
	if err != nil {
		fmt.Fprintf(stderr, "bench milter: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, res.String())
	return 0
}
