# Custos — build, test and generate. `make help` lists the targets.

SHELL := /usr/bin/env bash
GO    ?= go
# Tests that build a binary (the real custos, local-kms) use the same go.
export GO
TOOLS := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(PATH)

# Pinned tool versions, installed from source by `go install` into .tools/bin.
# An environment variable of the same name does not replace a pin (make
# VAR=… on the command line does), and a changed pin reinstalls the tool
# (each tool depends on a stamp named after its version).
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION        := v0.8.2
GRPCURL_VERSION            := v1.9.4

DEV_ADDR ?= 127.0.0.1:8443

.PHONY: help
help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}' | \
	  sed -e 's|$$(DEV_ADDR)|$(DEV_ADDR)|g' -e 's|$$(BENCH_ROUNDS)|$(BENCH_ROUNDS)|g'

.PHONY: build
build: ## build the custos binary into bin/
	$(GO) build -o bin/custos ./cmd/custos

.PHONY: run
run: ## start `custos dev`: the embedded default on $(DEV_ADDR)
	$(GO) run ./cmd/custos dev --listen $(DEV_ADDR)

.PHONY: test
# The tests run while a `custos dev` holds the default ports (as when
# `make run` is going in another terminal), so none may depend on them.
test: tools test-deps lint generate-check ## lint (vet, staticcheck, buf, tidy), check generated code, run every test with -race beside a custos dev, then the real-Vault and local-kms tests
	GO='$(GO)' bash scripts/with-dev-server.sh $(GO) test -race -count=1 ./...
	$(MAKE) --no-print-directory test-vault
	$(MAKE) --no-print-directory test-localkms

# The nested modules run in Go's read-only module mode: a go.mod or go.sum that
# lacks what they import fails here (run go mod tidy in the module) rather
# than being rewritten by the run.
#
# The real-Vault tests live in a nested module (test/vault) so Vault's large
# dependency tree stays out of the main go.mod. A cold build compiles most of
# Vault: minutes on two cores; warm, about half a minute.
.PHONY: test-vault
test-vault: ## real-Vault tests of the vault root and keystore (nested module test/vault)
	cd test/vault && $(GO) vet ./... && $(GO) test -count=1 ./...

# The awskms root against local-kms, a third-party AWS KMS emulator built from
# its Go module by the test (nested module test/localkms, so its dependencies
# stay out of the main go.mod).
.PHONY: test-localkms
test-localkms: ## the awskms root against a local-kms process (nested module test/localkms)
	cd test/localkms && $(GO) vet ./... && $(GO) test -count=1 ./...

# Each fuzz target runs for FUZZTIME; go test -fuzz takes one target at a time.
# The targets are found in the test files (every func FuzzX of the main
# module), so a new one cannot be left out.
FUZZTIME ?= 20s
FUZZ_TARGETS = $(shell grep -rl --include='*_test.go' '^func Fuzz' . | grep -v '^./test/' | sort | \
	while read -r f; do d=$$(dirname "$$f"); grep -h '^func Fuzz' "$$f" | sed -e 's/^func \(Fuzz[A-Za-z0-9_]*\).*/\1/' -e "s|^|$$d:|"; done)

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME (default 20s) each
	@set -e; targets="$(FUZZ_TARGETS)"; [ -n "$$targets" ] || { echo "fuzz: no targets found" >&2; exit 1; }; \
	for t in $$targets; do \
	  pkg=$${t%%:*}; fn=$${t##*:}; \
	  echo "fuzz $$pkg $$fn ($(FUZZTIME))"; \
	  $(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# The standard load-tool run (docs/performance.md): custos dev and the
# baseline each in a process of its own, rounds alternating, every figure a
# ratio to the baseline of the same run, medians of BENCH_ROUNDS paired
# rounds (7: medians of 5 still moved by several percent from run to run).
# About 11 minutes on two cores.
BENCH_ROUNDS ?= 7
.PHONY: bench
bench: build ## the standard custos bench run: single calls, batches, hashing contention (BENCH_ROUNDS, default 7)
	bin/custos bench --spawn-dev --rounds $(BENCH_ROUNDS) --ops encrypt,decrypt,blind-index --concurrency 1,64
	bin/custos bench --spawn-dev --rounds $(BENCH_ROUNDS) --ops encrypt-batch,decrypt-batch,rewrap-batch --concurrency 64 --batch 100 --contention

# The audit trail's cost (docs/performance.md, docs/audit.md): on bbolt,
# custos bench against a second custos dev with --audit=false; on PostgreSQL
# (fsync on), two custos serve processes on one database; then storage per
# event and audit verify's time for AUDIT_EVENTS events, and the journal's
# sync floor on this disk (CUSTOS_SYNC_DIR). About 6 minutes with
# BENCH_ROUNDS at 7.
AUDIT_EVENTS ?= 1000000
# Where the sync floor is measured: by default this checkout's disk, where
# custos dev keeps its journal.
CUSTOS_SYNC_DIR ?= $(CURDIR)
.PHONY: bench-audit
bench-audit: build test-deps ## the audit trail's cost: audit on over off (bbolt, PostgreSQL), bytes per event, verify time for AUDIT_EVENTS
	bin/custos bench --spawn-dev --baseline audit-off --rounds $(BENCH_ROUNDS) --ops encrypt --concurrency 64,1
	CUSTOS_AUDIT_EVENTS=$(AUDIT_EVENTS) CUSTOS_SYNC_DIR=$(CUSTOS_SYNC_DIR) $(GO) test -tags scale -run 'TestAudit' -timeout 30m -count=1 -v ./internal/bench/

# The soak profile (docs/operations.md): a mixed load held at SOAK_FRACTION of
# the measured peak for SOAK_DURATION against a custos dev of its own.
SOAK_DURATION ?= 8m
SOAK_FRACTION ?= 0.7
.PHONY: soak
soak: build ## hold a mixed load at SOAK_FRACTION of peak for SOAK_DURATION: errors, RSS, goroutines, latency drift
	bin/custos bench soak --spawn-dev --fraction $(SOAK_FRACTION) --duration $(SOAK_DURATION) --sample 30s

# Backup and restore at scale (docs/backup.md): BACKUP_TENANTS tenants with
# two keys each, PostgreSQL → bbolt → PostgreSQL, each step a process of its
# own with its time and peak RSS. About 5 minutes for 100,000.
BACKUP_TENANTS ?= 100000
.PHONY: bench-backup
bench-backup: test-deps ## backup and restore of BACKUP_TENANTS tenants × 2 keys across backends: times and peak RSS
	CUSTOS_BACKUP_TENANTS=$(BACKUP_TENANTS) $(GO) test -tags scale -run TestBackupAndRestoreAtScale -timeout 60m -count=1 -v ./internal/bench/

# The scale measurement (docs/performance.md): a throwaway PostgreSQL seeded
# with SCALE_TENANTS tenants (and, to compare, 1,000), each served by a
# custos serve process. About 6 minutes for a million on two cores.
SCALE_TENANTS ?= 1000000
SCALE_SERVER_GOGC ?=
.PHONY: bench-scale
bench-scale: test-deps ## idle CPU, due rotations, hot-set p99 and cold first calls with SCALE_TENANTS tenants in PostgreSQL (SCALE_SERVER_GOGC overrides the servers' gc_percent)
	CUSTOS_SCALE_TENANTS=$(SCALE_TENANTS) CUSTOS_SCALE_SERVER_GOGC=$(SCALE_SERVER_GOGC) $(GO) test -tags scale -run TestScale -timeout 60m -count=1 -v ./internal/bench/

.PHONY: test-deps
test-deps: ## install from Debian packages what the tests need and this machine lacks: PostgreSQL, SoftHSM2, gcc, procps, Node and npm, python3-grpcio
	bash scripts/test-deps.sh

.PHONY: vet
vet: ## go vet, also of the measurement code behind -tags scale (make bench-scale and co.)
	$(GO) vet ./...
	$(GO) vet -tags scale ./internal/bench/

.PHONY: lint
# staticcheck of test/vault compiles most of Vault (about 15 minutes cold on
# two cores): only with LINT_VAULT=1.
LINT_VAULT ?=
# buf breaking compares the protos with this git ref (default: the previous
# commit; a release would compare with its last tag).
BREAKING_AGAINST ?= HEAD~1
lint: tools vet ## buf lint and breaking (against BREAKING_AGAINST, default HEAD~1), go vet, staticcheck, go mod tidy check (LINT_VAULT=1 adds test/vault, ~15 min cold)
	$(TOOLS)/buf lint
	@if git rev-parse --verify -q '$(BREAKING_AGAINST)^{commit}' >/dev/null; then \
	  $(TOOLS)/buf breaking --against '.git#ref=$(BREAKING_AGAINST)'; \
	else echo "lint: buf breaking skipped ($(BREAKING_AGAINST) is not in this clone: a shallow or one-commit clone)"; fi
	$(TOOLS)/staticcheck ./...
	$(GO) mod tidy -diff
	@if [ -n "$(LINT_VAULT)" ]; then cd test/vault && $(TOOLS)/staticcheck ./...; \
	  else echo "lint: test/vault skipped (LINT_VAULT=1 to include it: it compiles most of Vault)"; fi

.PHONY: descriptor
descriptor: tools ## write bin/custos.binpb: a FileDescriptorSet of every proto, for tools that want one
	@mkdir -p bin
	$(TOOLS)/buf build -o bin/custos.binpb
	@echo "descriptor: bin/custos.binpb"

.PHONY: generate
generate: tools ## regenerate the .pb.go files from proto/
	$(TOOLS)/buf generate

.PHONY: generate-check
generate-check: tools ## regenerate into a temp dir and fail if the checked-in code differs
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	  $(TOOLS)/buf generate -o "$$tmp" && \
	  diff -r -x '*.proto' -x reasons.go -x reasons_test.go -x limits.go -x limits_test.go "$$tmp/proto/custos" proto/custos && \
	  echo "generate-check: generated code is up to date"

.PHONY: tools
tools: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc $(TOOLS)/staticcheck $(TOOLS)/grpcurl ## install pinned tools into .tools/bin (grpcurl: the tour's test)

# A tool's stamp for another version goes, so that a pin changed back
# reinstalls the tool too.
.PRECIOUS: $(TOOLS)/.version-%
$(TOOLS)/.version-%:
	@mkdir -p $(TOOLS) && t='$*' && rm -f $(TOOLS)/.version-$${t%-v*}-v* && touch $@
$(TOOLS)/buf: $(TOOLS)/.version-buf-$(BUF_VERSION)
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go: $(TOOLS)/.version-protoc-gen-go-$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc: $(TOOLS)/.version-protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(TOOLS)/staticcheck: $(TOOLS)/.version-staticcheck-$(STATICCHECK_VERSION)
	GOBIN=$(TOOLS) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(TOOLS)/grpcurl: $(TOOLS)/.version-grpcurl-$(GRPCURL_VERSION)
	GOBIN=$(TOOLS) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

.PHONY: grpcurl
grpcurl: $(TOOLS)/grpcurl ## install grpcurl into .tools/bin for the walkthrough

.PHONY: clean
clean: ## remove build outputs (keeps .custos-dev)
	rm -rf bin
