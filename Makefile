# pyffi: `make test` is the parity suite (what .ci/run runs).

CARGO      ?= cargo
PYTHON     ?= python3
CC         ?= cc
GO         ?= go
CBINDGEN_VERSION := 0.29.2

RELEASE    := rust/target/release
LIB        := $(RELEASE)/libpyffi.so
CFLAGS_EX  := -std=c11 -Wall -Wextra -Werror -Iinclude
LDFLAGS_EX := -L$(RELEASE) -lpyffi -Wl,-rpath,$(abspath $(RELEASE))

export PYFFI_LIBRARY := $(abspath $(LIB))

.PHONY: all build native header check-header examples test test-rust test-aarch64 test-c test-go test-python bench bench-quick clean

all: build

build:
	$(CARGO) build --release --locked --manifest-path rust/Cargo.toml

# The compiled Python bindings (pyffi/_native*.so, cffi's API mode) for
# this checkout; without them `import pyffi` falls back to ABI mode.
native:
	$(PYTHON) pyffi/_cffi_build.py include/pyffi.h pyffi

# Regenerate the committed C header from rust/src/ffi.
header:
	cd rust && cbindgen --config cbindgen.toml --crate pyffi --output ../include/pyffi.h

examples: build
	$(CC) $(CFLAGS_EX) examples/c/pyffi_example.c $(LDFLAGS_EX) -o examples/c/pyffi_example
	$(CC) $(CFLAGS_EX) tests/c/test_errors.c $(LDFLAGS_EX) -o tests/c/test_errors
	cd examples/go && $(GO) build -o pyffi-example .

test-rust:
	$(CARGO) test --release --locked --manifest-path rust/Cargo.toml

# Off x86_64 the engine runs its plain Rust kernels: cross-compiled for
# aarch64, the Rust tests (parity against the fixtures included) run under
# qemu-user. Needs the rustup target, gcc-aarch64-linux-gnu and qemu-user
# (.ci/run installs them).
AARCH64 := aarch64-unknown-linux-gnu
test-aarch64:
	CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
	$(CARGO) test --locked --target $(AARCH64) --manifest-path rust/Cargo.toml

test-go: examples
	cd examples/go && PYFFI_TEST_MODEL=$(abspath $(or $(PYFFI_FIXTURES),../shared/fixtures))/models/stories260K PYFFI_TEST_TEXT_MODEL=$(abspath fixtures/demo) $(GO) test ./...

# PYFFI_BINDINGS=native: the suite runs on the compiled bindings (one test
# runs the ABI mode fallback in a subprocess).
test-python: examples native
	PYFFI_BINDINGS=native $(PYTHON) -m pytest tests -q -p no:cacheprovider

# .ci/run empties TEST_AARCH64 where rustup cannot fetch the aarch64 target
# (from outside the package registries), and says so.
TEST_AARCH64 ?= test-aarch64
test: test-rust $(TEST_AARCH64) test-go test-python

# Speed against llama.cpp (python -m pyffi bench --help). Models, helpers and
# llama-cpp-python come on first use; models are cached in $(PYFFI_BENCH_CACHE)
# or ~/.cache/pyffi/bench. BENCH_ARGS passes options, e.g. BENCH_ARGS="--json bench.json".
bench: build native
	$(PYTHON) -m pyffi bench $(BENCH_ARGS)

bench-quick: build native
	$(PYTHON) -m pyffi bench --quick $(BENCH_ARGS)

clean:
	$(CARGO) clean --manifest-path rust/Cargo.toml
	rm -f examples/c/pyffi_example tests/c/test_errors examples/go/pyffi-example pyffi/_native*.so
