#!/usr/bin/env bash
# Installs cargo-fuzz (pinned, from crates.io) for the fuzz smoke (scripts/fuzz-smoke.sh) when a
# nightly toolchain is present: cargo-fuzz builds with nightly-only sanitizer flags.
# Idempotent: does nothing when the pinned version is already installed.
# Exit status: 0 when cargo-fuzz is ready, 2 when there is no nightly toolchain (the caller skips
# fuzzing and says so), anything else when the install failed.
set -euo pipefail

CARGO_FUZZ_VERSION=0.13.2

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "install-fuzz: no nightly toolchain (rustup toolchain install nightly): cargo-fuzz not installed"
    exit 2
fi
echo "install-fuzz: $(cargo +nightly --version)"

if have=$(cargo fuzz --version 2>/dev/null) && [ "$have" = "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
    echo "install-fuzz: $have present"
    exit 0
fi
echo "install-fuzz: cargo install cargo-fuzz --locked --version $CARGO_FUZZ_VERSION"
cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
