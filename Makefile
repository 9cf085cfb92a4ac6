# geomilter — build, test, benchmark.
# `make test` is what CI runs (unit + integration, real redis-server);
# `make bench` and `make drill` print figures and fail when a target is missed (run by hand).
# Go: from PATH, else /usr/local/go (sudo's secure_path drops /usr/local/go/bin).
# Its directory is appended to PATH for the scripts and tests make runs (they call `go`).
ifeq ($(origin GO),undefined)
GO := $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
endif
GODIR   := $(patsubst %/,%,$(dir $(filter /%,$(GO))))
export PATH := $(PATH)$(if $(GODIR),:$(GODIR))
BIN     := bin/geomilter
PKGS    := ./...
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/geomilter/geomilter/shared/buildinfo.Version=$(VERSION)

.PHONY: all build test unit integration fuzz bench drill demo vet fmt deps gocheck fresh-check clean package

all: build

gocheck:
	@test -x "$(GO)" || command -v "$(GO)" >/dev/null || { echo "make: Go not found (looked in PATH and /usr/local/go/bin); install Go or run make GO=/path/to/go" >&2; exit 1; }

build: gocheck
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./milters

# Installs what the tests, demo and drill need on a fresh Debian machine (idempotent;
# needs root only when something is missing, and says which packages otherwise).
# test, demo and drill run it first.
deps:
	scripts/install-deps.sh

vet: gocheck
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l milters shared integration deploy packaging 2>/dev/null)" || { gofmt -l milters shared integration deploy packaging; echo "gofmt needed"; exit 1; }
	cd packaging && $(GO) vet .

unit:
	GEOMILTER_REQUIRE_REDIS=1 $(GO) test -count=1 -timeout 15m $$($(GO) list ./... | grep -v /integration)
	cd packaging && $(GO) test -count=1 .

# Then the Postfix tests again with the milters hosted as one `geomilter suite` per site
# (GEOMILTER_TEST_SUITE=1, integration/postfix/suitemode_test.go): the same test cases,
# separate processes and suite. Skipped there: the tests with no geomilter milter in
# Postfix's chain (macro recorders, the demo script) and the drill (make drill).
SUITE_SKIP := ^Test(PostfixMacrosAndEncryptRoute|DemoBrokenPostfixFails|Drill)$$
integration: build
	GEOMILTER_REQUIRE_REDIS=1 GEOMILTER_REQUIRE_POSTFIX=$${GEOMILTER_REQUIRE_POSTFIX:-1} GEOMILTER_BIN=$(CURDIR)/$(BIN) $(GO) test -p 1 -count=1 -timeout 20m ./integration/...
	GEOMILTER_TEST_SUITE=1 GEOMILTER_REQUIRE_REDIS=1 GEOMILTER_REQUIRE_POSTFIX=$${GEOMILTER_REQUIRE_POSTFIX:-1} GEOMILTER_BIN=$(CURDIR)/$(BIN) $(GO) test -p 1 -count=1 -timeout 20m -skip '$(SUITE_SKIP)' ./integration/postfix/

# Each fuzz target briefly (FUZZTIME per target); the committed corpora also run in `unit`.
fuzz:
	scripts/fuzz-short.sh $${FUZZTIME:-10s}

test: deps vet unit integration fuzz

bench: build
	scripts/bench.sh

# make drill [SITES=3] [KILL=1]: the outage drill (scripts/drill.sh, docs/drill.md).
drill: deps build
	GEOMILTER_SKIP_DEPS=1 GEOMILTER_DRILL_SITES=$(SITES) GEOMILTER_DRILL_KILL=$(KILL) scripts/drill.sh

demo: deps build
	GEOMILTER_SKIP_DEPS=1 scripts/demo.sh

# The README's commands in a fresh Debian 12 root file system (debootstrap; root; slow).
fresh-check:
	scripts/fresh-check.sh

# dist/geomilter_<version>_amd64.deb and dist/geomilter-<version>.x86_64.rpm (nfpm; packaging/,
# docs/install.md). Version from git describe, Debian-valid; VERSION=... overrides it.
# integration/pkg installs, upgrades and purges the .deb (root; in `make integration`).
package: gocheck
	GO=$(GO) $(if $(filter command line environment,$(origin VERSION)),VERSION=$(VERSION)) scripts/package.sh

fmt:
	gofmt -w milters shared integration deploy packaging

clean:
	rm -rf bin
