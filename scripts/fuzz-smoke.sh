#!/usr/bin/env bash
# A short run of every fuzz target (CI runs it from .ci/run, after the tests). Builds the fuzz
# crate once (nightly, AddressSanitizer, debug assertions and overflow checks on), then runs the
# targets one at a time, each from its seeds and kept regressions, and exits non-zero if any
# target crashed or broke an invariant. New corpus entries go to a temporary directory, never
# into fuzz/corpus/.
#
# FUZZ_SECONDS   seconds per target (default 30)
# FUZZ_TARGETS   space-separated targets to run (default: all of `cargo fuzz list`)
# FUZZ_RSS_MB    libFuzzer's -rss_limit_mb (default 512: the committed corpora of the long run, up to
#                1.4 MB and 850 entries, already take `tls_follow` to 202 MB in 30 s with ASan)
# FUZZ_WORK      directory for the corpus entries the run adds, one subdirectory per target,
#                kept afterwards (default: a temporary directory, removed at exit)
# CARGO_BUILD_JOBS  as for any cargo build: jobs for building the fuzz crate
#
# Where there is no nightly toolchain it prints "SKIP:" with the reason and exits 0. A crash
# leaves its input in fuzz/artifacts/<target>/; docs/testing.md ("Fuzzing") says how to keep it
# as a named regression file.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-30}"
FUZZ_RSS_MB="${FUZZ_RSS_MB:-512}"

bash scripts/install-fuzz.sh
status=$?
if [ "$status" -eq 2 ]; then
    echo "fuzz-smoke: SKIP: no nightly toolchain, so no fuzz smoke (the corpus replay in cargo test still runs)"
    exit 0
elif [ "$status" -ne 0 ]; then
    echo "fuzz-smoke: installing cargo-fuzz failed" >&2
    exit 1
fi

cd fuzz
start=$SECONDS
if ! cargo +nightly fuzz build; then
    echo "fuzz-smoke: building the fuzz targets failed" >&2
    exit 1
fi
echo "fuzz-smoke: built in $((SECONDS - start)) s"

if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz-smoke: no fuzz targets found" >&2
    exit 1
fi

if [ -n "${FUZZ_WORK:-}" ]; then
    mkdir -p "$FUZZ_WORK"
    work=$(cd "$FUZZ_WORK" && pwd)
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/splicegate-fuzz.XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi

failed=()
for target in "${targets[@]}"; do
    dirs=("$work/$target")
    mkdir -p "$work/$target"
    for d in "corpus/$target" "regressions/$target"; do
        [ -d "$d" ] && dirs+=("$d")
    done
    echo "== fuzz-smoke: $target for ${FUZZ_SECONDS} s"
    if ! cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb="$FUZZ_RSS_MB" -timeout=1 -print_final_stats=1; then
        echo "fuzz-smoke: $target FAILED; its input is in fuzz/artifacts/$target/" >&2
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -ne 0 ]; then
    echo "fuzz-smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: ${#targets[@]} targets, ${FUZZ_SECONDS} s each, no crash"
