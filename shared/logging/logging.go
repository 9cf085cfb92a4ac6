// Package logging builds the process logger: zerolog to stderr, structured, one
// event per decision. systemd captures stderr, so there is no log file to manage.
package logging

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/rs/zerolog"
)

// New returns a logger writing to w (stderr when nil) at level ("debug", "info",
// "warn", "error"; "" means info) in format "json" (default) or "console".
func New(w io.Writer, level, format string) (zerolog.Logger, error) {
	if w == nil {
		w = os.Stderr
	}
	lvl := zerolog.InfoLevel
	if level != "" {
		var err error
		lvl, err = zerolog.ParseLevel(level)
		if err != nil {
			return zerolog.Nop(), fmt.Errorf("log level %q: %w", level, err)
		}
	}
	switch format {
	case "", "json":
	case "console":
		w = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	default:
		return zerolog.Nop(), fmt.Errorf("log format %q: want json or console", format)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}
