# Conveyor: `make run` starts a demo, `make test` runs the whole suite.
GO      ?= go
BIN     := $(CURDIR)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/conveyor-ci/conveyor/core/version.Version=$(VERSION)
MODULES := agent bench core docker plugins/kafka-launcher plugins/ssh-launcher sdk
PKGS    := $(addprefix ./,$(addsuffix /...,$(MODULES)))
# Execution counts, not durations: a -fuzztime duration races Go's fuzz
# coordinator (golang/go#75804, fixed in Go 1.27) and fails with a bare
# "context deadline exceeded" on a busy machine.
FUZZ_DECODE ?= 400000x
FUZZ_LOAD   ?= 20000x
PROTOC  ?= protoc

.PHONY: all build run test fuzz bench proto lint clean docker-up docker-down

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/conveyor ./core/cmd/conveyor
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/conveyor-agent ./agent/cmd/conveyor-agent
	$(GO) build -ldflags "-X github.com/conveyor-ci/conveyor/plugins/kafka-launcher/kafkalauncher.Version=$(VERSION)" -o $(BIN)/conveyor-launcher-kafka ./plugins/kafka-launcher/cmd/conveyor-launcher-kafka
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/conveyor-launcher-ssh ./plugins/ssh-launcher/cmd/conveyor-launcher-ssh
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/conveyor-launcher-local ./sdk/examples/local-launcher

# The demo: master + embedded Kafka broker + an agent per Kafka node + the
# jobs of examples/config.hcl. Ctrl-C stops everything.
run: build
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

test: lint
	$(GO) test -count=1 -timeout 15m $(PKGS)
	$(MAKE) fuzz

# Short fuzz runs; the committed seeds under testdata/fuzz run with every `go test`.
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZ_DECODE) ./sdk/wire
	$(GO) test -run='^$$' -fuzz='^FuzzLoad$$' -fuzztime=$(FUZZ_LOAD) ./core/config

# The Go micro-benchmarks, then conveyor-bench: Kafka, SSH and local side by
# side with kcat and ssh cat, PASS/FAIL per target, written to
# docs/PERFORMANCE.md. A quick smoke run:
#   make bench BENCH_FLAGS="-size 16MiB -runs 100 -agents 100"
BENCH_FLAGS ?=
bench: build
	@command -v kcat >/dev/null || apt-get install -y kcat || (apt-get update && apt-get install -y kcat)
	@{ test -x /usr/sbin/sshd && command -v ssh >/dev/null; } || apt-get install -y openssh-server openssh-client || \
		(apt-get update && apt-get install -y openssh-server openssh-client)
	$(GO) test -run='^$$' -bench=. -benchmem $(PKGS)
	$(GO) build -o $(BIN)/conveyor-bench ./bench/cmd/conveyor-bench
	$(BIN)/conveyor-bench -bin $(BIN) -out docs/PERFORMANCE.md $(BENCH_FLAGS)

# Regenerates the committed gRPC code (needs protoc from Debian's
# protobuf-compiler; the Go generators are installed on demand).
proto:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
	cd sdk && PATH="$$($(GO) env GOPATH)/bin:$$PATH" $(PROTOC) -I . \
		--go_out=paths=source_relative:. --go-grpc_out=paths=source_relative:. \
		hclspec/hclspec.proto launcher/proto/launcher.proto

lint:
	@out=$$(gofmt -l $(MODULES) | grep -v /testdata/ || true); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

clean:
	rm -rf $(BIN)
