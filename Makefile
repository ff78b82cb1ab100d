# ping_auth: proxy-wasm filter for Kong Gateway 3.9 / 3.10 (see README.md).
#
#   make build        dist/ping_auth.wasm (+ meta.json, SHA256SUMS)
#   make test         lint + all tests (+ docker-compose file check)
#   make lint         rustfmt, clippy (native and wasm32), generated schemas up to date
#   make bench        benchmarks
#   make fuzz         coverage-guided fuzzing, FUZZ_SECONDS per target (or FUZZ_RUNS executions;
#                     FUZZ_TARGETS to choose; FUZZ_MERGE=1 keeps new inputs in fuzz/corpus)
#   make demo         Docker demo (Kong 3.9.3), in the background: waits until Kong is ready,
#                     prints the walkthrough; make demo-down stops it
#   make demo-local   the same demo without Docker (kong-emu)
#   make clean

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

CARGO   ?= cargo
COMPOSE ?= docker-compose
TARGET  := wasm32-wasip1
WASM    := target/$(TARGET)/release/ping_auth.wasm
DEMO    := examples/docker-compose.yml

FUZZ_SECONDS ?= 300
FUZZ_RUNS    ?=
FUZZ_TARGETS ?=
FUZZ_MERGE   ?=

.PHONY: build test lint bench fuzz fuzz-smoke demo demo-down demo-local clean

build:
	$(CARGO) build --release -p ping-auth --target $(TARGET)
	mkdir -p dist
	@if command -v wasm-opt >/dev/null 2>&1; then \
		echo "wasm-opt -Oz $(WASM) -> dist/ping_auth.wasm"; \
		wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
			--enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types --enable-simd \
			$(WASM) -o dist/ping_auth.wasm; \
	else \
		echo "wasm-opt not found (Debian: binaryen): copying the unoptimised module"; \
		cp $(WASM) dist/ping_auth.wasm; \
	fi
	cp schema/ping_auth.meta.json dist/ping_auth.meta.json
	cd dist && sha256sum ping_auth.wasm ping_auth.meta.json > SHA256SUMS
	@ls -l dist

test: lint
	mkdir -p target
	$(CARGO) test --workspace 2>&1 | tee target/test.log
	$(MAKE) --no-print-directory fuzz-smoke 2>&1 | tee target/fuzz-smoke.log
	@if command -v $(COMPOSE) >/dev/null 2>&1; then \
		$(COMPOSE) -f $(DEMO) config -q && echo "$(DEMO): valid"; \
	else \
		echo "$(COMPOSE) not found: $(DEMO) not checked"; \
	fi
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "total: %d passed, %d failed\n", p, f }' target/test.log

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p ping-auth --target $(TARGET) -- -D warnings
	$(CARGO) run --quiet -p ping-auth-harness --bin gen-schema -- --check
	cd fuzz && $(CARGO) fmt --check

# Every fuzz target for a few seconds, after replaying its committed reproducers.
fuzz-smoke:
	scripts/fuzz.sh --seconds 5

fuzz:
	scripts/fuzz.sh $(if $(FUZZ_RUNS),--runs $(FUZZ_RUNS),--seconds $(FUZZ_SECONDS)) \
		$(if $(FUZZ_MERGE),--merge) $(FUZZ_TARGETS)

bench:
	$(CARGO) run --profile bench-host -p ping-auth-harness --bin bench

# scripts/demo-docker.sh: docker-compose up -d --build (with BuildKit, so that
# examples/Dockerfile.dockerignore keeps target/ out of the build context), then waits for
# Kong's GET /status/ready before printing the walkthrough.
demo: build
	COMPOSE=$(COMPOSE) scripts/demo-docker.sh

demo-down:
	$(COMPOSE) -f $(DEMO) down

demo-local: build
	scripts/demo-local.sh

clean:
	$(CARGO) clean
	rm -rf fuzz/target fuzz/artifacts
	rm -rf dist
