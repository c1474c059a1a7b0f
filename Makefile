# Conveyor: `make run` starts a demo, `make test` runs the whole suite.
# Both first install the Debian packages they need (see DEPS below).
SHELL   := /bin/bash
GO      ?= go
BIN     := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/conveyor-ci/conveyor/core/version.Version=$(VERSION)
MODULES := agent bench core docker plugins/docker-provisioner plugins/kafka-launcher plugins/ssh-launcher sdk tools
PKGS    := $(addprefix ./,$(addsuffix /...,$(MODULES)))
# Execution counts, not durations: a -fuzztime duration races Go's fuzz
# coordinator (golang/go#75804, fixed in Go 1.27) and fails with a bare
# "context deadline exceeded" on a busy machine.
FUZZ_DECODE ?= 400000x
FUZZ_LOAD   ?= 20000x
PROTOC  ?= protoc

# The Debian packages each target needs are listed once, in
# scripts/debian-packages; scripts/deps installs those missing (apt-get, as
# root or through sudo) and does nothing when all are there. `make deps`
# installs them all; `make test DEPS=` (or run, bench, proto) installs nothing.
DEPS ?= scripts/deps
# Under make (test, bench) a test whose real component (sshd, chromium...)
# is missing fails, saying how to install it (sdk/testenv);
# CONVEYOR_TEST_REQUIRE=0 lets such tests skip instead.
export CONVEYOR_TEST_REQUIRE ?= 1

.PHONY: all build run test fuzz bench proto lint clean docker-up docker-down deps deps-test deps-run deps-bench deps-proto

all: build

deps:
	$(if $(strip $(DEPS)),$(DEPS),@echo "DEPS is empty: installing nothing")

deps-test deps-run deps-bench deps-proto: deps-%:
	$(if $(strip $(DEPS)),@$(DEPS) $*,@echo "DEPS is empty: not installing the packages that make $* needs (scripts/debian-packages)")

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/conveyor ./core/cmd/conveyor
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/conveyor-agent ./agent/cmd/conveyor-agent
	$(GO) build -ldflags "-X github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkalauncher.Version=$(VERSION)" -o $(BIN)/conveyor-launcher-kafka ./plugins/kafka-launcher/cmd/conveyor-launcher-kafka
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/conveyor-launcher-ssh ./plugins/ssh-launcher/cmd/conveyor-launcher-ssh
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/conveyor-launcher-local ./sdk/examples/local-launcher
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/conveyor-provisioner-docker ./plugins/docker-provisioner/cmd/conveyor-provisioner-docker

# The demo: master + embedded Kafka broker + an agent per Kafka node + the
# jobs of examples/config.hcl. Ctrl-C stops everything.
run: deps-run build
	examples/run.sh

# The Docker demo (docker/): a real Kafka broker with SSL and SASL/SCRAM,
# the master, two Kafka agents and an SSH agent; needs Docker with compose.
COMPOSE ?= docker compose -f docker/docker-compose.yml

docker-up:
	$(COMPOSE) up -d --build
	@echo
	@echo "Conveyor: http://127.0.0.1:8080   Kafka UI: http://127.0.0.1:9000"
	@echo "  export CONVEYOR_ADDR=http://127.0.0.1:8080"
	@echo "  export CONVEYOR_TOKEN=\$$($(COMPOSE) run --rm -T --no-deps --entrypoint cat setup /var/lib/conveyor/api-token)"
	@echo "  ./bin/conveyor nodes; ./bin/conveyor build -follow over-kafka   # make build first"
	@echo "or inside the master's container:"
	@echo "  $(COMPOSE) exec conveyor conveyor nodes -token-file /var/lib/conveyor/api-token -address http://127.0.0.1:8080"
	@echo "Logs: $(COMPOSE) logs -f conveyor.  Stop: make docker-down (keeps the volumes)."

docker-down:
	$(COMPOSE) down

# The suite prints a line per package, the output of what failed, and at
# the end every skipped test with its reason (tools/testsummary). The short
# fuzz runs come first, so that summary ends the output.
test: deps-test lint fuzz
	@mkdir -p $(BIN)
	@$(GO) build -o $(BIN)/testsummary ./tools/testsummary
	set -o pipefail; $(GO) test -json -count=1 -timeout 15m $(PKGS) | $(BIN)/testsummary

# Short fuzz runs; the committed seeds under testdata/fuzz run with every `go test`.
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZ_DECODE) ./sdk/wire
	$(GO) test -run='^$$' -fuzz='^FuzzLoad$$' -fuzztime=$(FUZZ_LOAD) ./core/config

# The Go micro-benchmarks, then conveyor-bench: Kafka, SSH and local side by
# side with kcat and ssh cat, PASS/FAIL per target, written to
# docs/PERFORMANCE.md. A quick smoke run:
#   make bench BENCH_FLAGS="-size 16MiB -runs 100 -agents 100"
BENCH_FLAGS ?=
bench: deps-bench build
	$(GO) test -run='^$$' -bench=. -benchmem $(PKGS)
	$(GO) build -o $(BIN)/conveyor-bench ./bench/cmd/conveyor-bench
	$(BIN)/conveyor-bench -bin $(BIN) -out docs/PERFORMANCE.md $(BENCH_FLAGS)

# Regenerates the committed gRPC code (needs protoc from Debian's
# protobuf-compiler; the Go generators are installed on demand).
proto: deps-proto
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
	cd sdk && PATH="$$($(GO) env GOPATH)/bin:$$PATH" $(PROTOC) -I . \
		--go_out=paths=source_relative:. --go-grpc_out=paths=source_relative:. \
		hclspec/hclspec.proto launcher/proto/launcher.proto provisioner/proto/v1/provisioner.proto

lint:
	@out=$$(gofmt -l $(MODULES) | grep -v /testdata/ || true); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

clean:
	rm -rf $(BIN)
