# geomilter — build, test, benchmark.
# `make test` is what CI runs (unit + integration, real redis-server);
# `make bench` and `make drill` print figures and fail when a target is missed (run by hand).
GO      ?= go
BIN     := bin/geomilter
PKGS    := ./...
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/geomilter/geomilter/shared/buildinfo.Version=$(VERSION)

.PHONY: all build test unit integration fuzz bench drill demo vet fmt deps clean

all: build

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./milters

# Installs what the tests need on a fresh Debian machine (idempotent; needs root).
deps:
	scripts/install-deps.sh

vet:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l milters shared integration 2>/dev/null)" || { gofmt -l milters shared integration; echo "gofmt needed"; exit 1; }

unit:
	GEOMILTER_REQUIRE_REDIS=1 $(GO) test -count=1 -timeout 15m $$($(GO) list ./... | grep -v /integration)

integration: build
	GEOMILTER_REQUIRE_REDIS=1 GEOMILTER_REQUIRE_POSTFIX=$${GEOMILTER_REQUIRE_POSTFIX:-1} GEOMILTER_BIN=$(CURDIR)/$(BIN) $(GO) test -p 1 -count=1 -timeout 20m ./integration/...

# Each fuzz target briefly (FUZZTIME per target); the committed corpora also run in `unit`.
fuzz:
	scripts/fuzz-short.sh $${FUZZTIME:-10s}

test: vet unit integration fuzz

bench: build
	scripts/bench.sh

drill: build
	scripts/drill.sh

demo: build
	scripts/demo.sh

fmt:
	gofmt -w milters shared integration

clean:
	rm -rf bin
