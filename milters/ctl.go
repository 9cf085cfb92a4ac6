package main

import (
	"context"
	"io"
	"os/signal"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/geomilter/geomilter/shared/ctl"
)

// ctlCommand runs `geomilter ctl …` (shared/ctl).
func ctlCommand(args []string, stdout, stderr io.Writer) int {
	// go-redis logs failed dials to stderr by itself; ctl reports an
	// unreachable instance in its own words.
	redis.SetLogger(quietRedisLogger{})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return ctl.Run(ctx, args, stdout, stderr)
}

type quietRedisLogger struct{}

func (quietRedisLogger) Printf(context.Context, string, ...any) {}
