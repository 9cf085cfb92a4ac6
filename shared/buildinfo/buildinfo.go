// Package buildinfo holds the version stamped into the binary at link time.
package buildinfo

// Version is set by the Makefile with -ldflags; "dev" for plain `go build`.
var Version = "dev"
