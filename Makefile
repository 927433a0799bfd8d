# chunkbridge. `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := all
MAKEFLAGS += --warn-undefined-variables --no-builtin-rules --no-print-directory

# Tools are built from source into the repository, pinned here, and named
# by version so that bumping a pin rebuilds exactly that tool.
BIN := .tmp/bin
BUF_VERSION := v1.75.0
MINIO_VERSION := v0.0.0-20260212201848-7aac2a2c5b7c
BUF := $(BIN)/buf-$(BUF_VERSION)
MINIO := $(BIN)/minio-$(MINIO_VERSION)

IMAGE ?= chunkbridge:dev
MINIO_IMAGE ?= chunkbridge-minio:dev
# Debian's docker client (20.10) matches the engine .ci/run installs; the
# legacy builder needs nothing from a registry for FROM scratch.
DOCKER ?= $(shell test -x /usr/bin/docker && echo /usr/bin/docker || echo docker)

# What `chunkbridge version` and the build_info metric report. Set by the
# linker, since a build with -buildvcs=false (GOFLAGS) has no VCS stamp.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell c=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD -- || c=$$c-dirty; echo $$c; })
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# make install: the binary and the casync shim links. The default prefix
# needs no root; DESTDIR stages a package.
PREFIX ?= $(HOME)/.local
DESTDIR ?=

# The e2e suite's images get a tag of their own per run, so that runs
# sharing a Docker engine never test each other's build (E2E_TAG=... to
# choose it).
ifndef E2E_TAG
E2E_TAG := e2e-$(shell date -u +%Y%m%d%H%M%S)-$(shell od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
endif

GO_TEST_FLAGS ?=
BENCH_TIME ?= 2s

.PHONY: help
help: ## Describe the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "%-14s %s\n", $$1, $$2}'

.PHONY: all
all: generate lint build test ## Generate, lint, build and test

.PHONY: build
build: ## Build bin/chunkbridge (static)
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/chunkbridge ./cmd/chunkbridge

.PHONY: images
images: build $(MINIO) ## Build the chunkbridge and MinIO images (FROM scratch, no registry)
	rm -rf .tmp/images && mkdir -p .tmp/images/chunkbridge/tmp .tmp/images/minio
	cp bin/chunkbridge deployments/passwd deployments/group /etc/ssl/certs/ca-certificates.crt .tmp/images/chunkbridge/
	chmod 1777 .tmp/images/chunkbridge/tmp
	DOCKER_BUILDKIT=0 $(DOCKER) build -q -f deployments/Dockerfile -t $(IMAGE) .tmp/images/chunkbridge
	ln -f $(MINIO) .tmp/images/minio/minio
	DOCKER_BUILDKIT=0 $(DOCKER) build -q -f deployments/minio.Dockerfile -t $(MINIO_IMAGE) .tmp/images/minio

.PHONY: install
install: build ## Install bin/chunkbridge and the casync shims (chunkbridge-casync-ssh, -remote) in PREFIX/bin (default ~/.local: no root)
	install -d "$(DESTDIR)$(PREFIX)/bin"
	install -m 0755 bin/chunkbridge "$(DESTDIR)$(PREFIX)/bin/chunkbridge"
	ln -sf chunkbridge "$(DESTDIR)$(PREFIX)/bin/chunkbridge-casync-ssh"
	ln -sf chunkbridge "$(DESTDIR)$(PREFIX)/bin/chunkbridge-casync-remote"
	@case ":$$PATH:" in *":$(PREFIX)/bin:"*) ;; *) echo "note: $(PREFIX)/bin is not on PATH; add it there (casync finds the shims through PATH)";; esac

.PHONY: run
run: build ## Run every service in one process on ./data (gRPC 127.0.0.1:9090, HTTP 127.0.0.1:8080)
	./bin/chunkbridge serve all --log-format text

.PHONY: test
test: $(BIN)/minio ## All tests: unit, integration on real MinIO and casync, manifests, and the container e2e suite
	go test -race -count=1 -timeout 20m $(GO_TEST_FLAGS) ./...
	cd deployments/kubernetes && go test -count=1 -timeout 10m $(GO_TEST_FLAGS) ./...
	$(MAKE) e2e

.PHONY: e2e
e2e: ## The end-to-end suite: every service as its own container, images tagged E2E_TAG (unique per run; needs Docker and casync)
	$(MAKE) images IMAGE=chunkbridge:$(E2E_TAG) MINIO_IMAGE=chunkbridge-minio:$(E2E_TAG)
	status=0; (cd e2e && CHUNKBRIDGE_IMAGE=chunkbridge:$(E2E_TAG) CHUNKBRIDGE_MINIO_IMAGE=chunkbridge-minio:$(E2E_TAG) \
	  go test -count=1 -timeout 20m $(GO_TEST_FLAGS) ./...) || status=$$?; \
	$(DOCKER) rmi chunkbridge:$(E2E_TAG) chunkbridge-minio:$(E2E_TAG) >/dev/null 2>&1 || true; exit $$status

.PHONY: test-short
test-short: ## Quick tests (-short): skips those that run the binary, casync or Docker; MinIO-backed cases still run if make tools built MinIO
	go test -short -count=1 ./...

.PHONY: bench
bench: $(BIN)/minio ## Chunk service MB/s vs the SHA-256+zstd limit; casync and the casync HTTP store through the gateways vs casync, nginx and a plain PUT server (needs casync, nginx)
	go test -run '^$$' -bench . -benchtime $(BENCH_TIME) -count 1 ./services/chunk/ | tee .tmp/bench.txt
	go test -run '^$$' -bench 'Casync|PMX|HTTPChunks' -benchtime 1x -timeout 60m ./cmd/chunkbridge/ | tee -a .tmp/bench.txt

.PHONY: fuzz
fuzz: ## Fuzz every decoder for FUZZ_TIME each (default 30s)
	@for pkg in $$(go list ./...); do \
	  for f in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f"; go test -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZ_TIME:-30s} $$pkg; \
	  done; done

.PHONY: generate
generate: $(BUF) ## Regenerate api/ from proto/ (offline: local plugins from go.mod)
	find api -name '*.pb.go' -o -name '*.pb.gw.go' -o -name '*.swagger.json' | xargs rm -f
	$(BUF) generate

.PHONY: checkgenerate
checkgenerate: generate ## Fail when the committed generated code is stale
	@if [ -n "$$(git status --porcelain -- api proto)" ]; then \
	  git status --porcelain -- api proto; echo "generated code is stale: run make generate and commit" >&2; exit 1; fi

.PHONY: lint
lint: $(BUF) ## go vet, gofmt, buf lint and buf format
	go vet ./...
	cd deployments/kubernetes && go vet ./...
	cd e2e && go vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' | grep -v '^api/') | tee /dev/stderr)" || { echo "gofmt: files above need formatting" >&2; exit 1; }
	$(BUF) lint
	$(BUF) format -d --exit-code

.PHONY: tools
tools: $(BUF) $(BIN)/minio ## Build the pinned tools into .tmp/bin

$(BUF):
	@mkdir -p $(BIN)/build
	GOBIN=$(abspath $(BIN))/build go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	mv $(BIN)/build/buf $@

$(MINIO):
	@mkdir -p $(BIN)/build
	@echo "building MinIO $(MINIO_VERSION) (a few minutes, once)"
	CGO_ENABLED=0 GOBIN=$(abspath $(BIN))/build go install github.com/minio/minio@$(MINIO_VERSION)
	mv $(BIN)/build/minio $@

$(BIN)/minio: $(MINIO)
	ln -sf $(notdir $(MINIO)) $@

.PHONY: clean
clean: ## Remove build outputs (keeps the pinned tools)
	rm -rf bin .tmp/bench.txt
