#!/usr/bin/env bash
# Builds the Debian package into target/debian/ (arguments go to `cargo deb`, e.g. `-o DIR`):
#   1. cargo build (release; PROFILE=dev packages the debug build),
#   2. the binary writes its man pages and bash/zsh/fish completions, generated from its own
#      clap definitions, into target/assets/ (`splicegate generate`, a hidden subcommand),
#   3. cargo deb --no-build packages the binary and those files (Cargo.toml's
#      [package.metadata.deb] assets).
# `cargo deb` alone cannot run step 2 between its build and its packaging, so it fails on the
# missing target/assets files: use this script. Needs cargo-deb (`cargo install cargo-deb`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile="${PROFILE:-release}"
case "$profile" in
    dev) dir=debug ;;
    *) dir="$profile" ;;
esac

cargo build --profile "$profile" --bin splicegate
rm -rf target/assets
"${CARGO_TARGET_DIR:-target}/$dir/splicegate" generate target/assets >/dev/null
cargo deb --profile "$profile" --no-build "$@"
