#!/usr/bin/env bash
# Installs cargo-deny (pinned, from crates.io) for the supply-chain check in .ci/run
# (`cargo deny check licenses bans sources`, configured in deny.toml).
# Idempotent: does nothing when the pinned version is already installed.
set -euo pipefail

CARGO_DENY_VERSION=0.20.2

if have=$(cargo deny --version 2>/dev/null) && [ "$have" = "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "install-deny: $have present"
    exit 0
fi
echo "install-deny: cargo install cargo-deny --locked --version $CARGO_DENY_VERSION"
cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION"
