#!/usr/bin/env bash
# The long fuzz run (issue 16: "each target for a documented hour"): every target for
# FUZZ_SECONDS of wall time, FUZZ_JOBS targets at a time, then a summary table with each
# target's wall and CPU time, executions, coverage, corpus and findings. Run it by hand or
# nightly; CI runs the short smoke (scripts/fuzz-smoke.sh), not this.
#
#   FUZZ_SECONDS=3600 FUZZ_JOBS=2 OUT=fuzz/long bash scripts/fuzz-long.sh
#
# FUZZ_SECONDS   wall time per target (default 3600)
# FUZZ_JOBS      targets at once (default: the number of CPUs; more than that only shares them)
# FUZZ_FORK      processes per target, libFuzzer's -fork=N (default 1: one process). With
#                FUZZ_JOBS=1 FUZZ_FORK=$(nproc) each target in turn gets every core, so targets
#                finish one after another instead of all at the end
# FUZZ_NICE      niceness of the fuzzers (default 0; the CPU column says what each really got)
# FUZZ_TIMEOUT   libFuzzer's per-input timeout in seconds (default 25: it is wall time, and a
#                fuzzer that waits for a CPU must not report a slow input)
# FUZZ_RSS_MB    libFuzzer's RSS limit (default 512)
# FUZZ_TARGETS   space-separated targets (default: every target)
# OUT            where logs, new inputs, findings and summary.md go (default fuzz/long)
# FUZZ_RESUME    space-separated OUT directories of earlier runs: their new inputs are read as
#                corpus too, so an hour can be run in parts (each part's table says what it got)
#
# New inputs stay in $OUT/<target>/new; fold them into fuzz/corpus/<target> with
# `cargo +nightly fuzz run <target> fuzz/corpus/<target> $OUT/<target>/new -- -merge=1`.
# A finding is left in $OUT/<target>/art/ and makes the script exit 1; docs/testing.md
# ("Fuzzing") says how to keep it as a regression file.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-3600}"
FUZZ_JOBS="${FUZZ_JOBS:-$(nproc)}"
FUZZ_FORK="${FUZZ_FORK:-1}"
FUZZ_NICE="${FUZZ_NICE:-0}"
FUZZ_TIMEOUT="${FUZZ_TIMEOUT:-25}"
FUZZ_RSS_MB="${FUZZ_RSS_MB:-512}"
OUT="${OUT:-fuzz/long}"

bash scripts/install-fuzz.sh
status=$?
if [ "$status" -eq 2 ]; then
    echo "fuzz-long: no nightly toolchain, so no fuzzing" >&2
    exit 1
elif [ "$status" -ne 0 ]; then
    echo "fuzz-long: installing cargo-fuzz failed" >&2
    exit 1
fi

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd fuzz
if ! cargo +nightly fuzz build; then
    echo "fuzz-long: building the fuzz targets failed" >&2
    exit 1
fi
bindir=target/$(rustc -vV | awk '/^host:/ {print $2}')/release
if [ -n "${FUZZ_TARGETS:-}" ]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

# One target: its own copy of the binary (a rebuild meanwhile cannot change it), wall and CPU
# time from bash's `time`, libFuzzer's output in `log`.
run_one() {
    local target=$1 d="$OUT/$1"
    rm -rf "$d" && mkdir -p "$d/new" "$d/art"
    cp "$bindir/$target" "$d/bin"
    local dirs=("$d/new" "corpus/$target")
    [ -d "regressions/$target" ] && dirs+=("regressions/$target")
    local earlier
    for earlier in ${FUZZ_RESUME:-}; do
        [ -d "$earlier/$target/new" ] && dirs+=("$earlier/$target/new")
    done
    local fork=()
    [ "$FUZZ_FORK" -gt 1 ] && fork=(-fork="$FUZZ_FORK")
    local TIMEFORMAT='%R %U %S'
    { time nice -n "$FUZZ_NICE" "$d/bin" "${dirs[@]}" "${fork[@]}" -max_total_time="$FUZZ_SECONDS" \
        -timeout="$FUZZ_TIMEOUT" -rss_limit_mb="$FUZZ_RSS_MB" -print_final_stats=1 \
        -artifact_prefix="$d/art/" >"$d/log" 2>&1; } 2>"$d/time"
    echo $? >"$d/rc"
}

echo "fuzz-long: ${#targets[@]} targets, ${FUZZ_SECONDS} s each, ${FUZZ_JOBS} at a time, ${FUZZ_FORK} process(es) each, in $OUT"
started=$(date -u +%FT%TZ)
running=0
for target in "${targets[@]}"; do
    if [ "$running" -ge "$FUZZ_JOBS" ]; then
        wait -n
        running=$((running - 1))
    fi
    echo "== fuzz-long: $target ($(date -u +%T))"
    run_one "$target" &
    running=$((running + 1))
done
wait

{
    echo "Fuzzing, started $started, ${FUZZ_SECONDS} s per target, ${FUZZ_JOBS} at a time, ${FUZZ_FORK} process(es) each, on $(nproc) CPUs, nice ${FUZZ_NICE}, $(uname -r)"
    echo
    echo "| target | wall s | CPU s | executions | exec/s of CPU | cov | ft | corpus | findings |"
    echo "|---|---|---|---|---|---|---|---|---|"
} >"$OUT/summary.md"
found=0
for target in "${targets[@]}"; do
    d="$OUT/$target"
    read -r wall user sys <"$d/time" || true
    cpu=$(awk -v u="${user:-0}" -v s="${sys:-0}" 'BEGIN {printf "%.0f", u + s}')
    if [ "$FUZZ_FORK" -gt 1 ]; then
        # -fork=N's parent prints no final stats (a child that crashes prints its own, into
        # the same log); the parent's progress lines ("#N: cov: ...") count every child's
        # executions.
        last=$(grep -a '^#[0-9]*:' "$d/log" | tail -1)
        execs=$(sed -n 's/^#\([0-9]*\):.*/\1/p' <<<"$last")
    else
        last=$(grep -a '^#[0-9]' "$d/log" | tail -1)
        execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$d/log")
    fi
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\(\/[0-9A-Za-z]*\)\{0,1\}\).*/\1/p' <<<"$last")
    findings=$(find "$d/art" -type f | wc -l)
    [ "$findings" -ne 0 ] && found=1
    rate=$(awk -v e="${execs:-0}" -v c="$cpu" 'BEGIN {if (c > 0) printf "%.0f", e / c; else print "-"}')
    echo "| \`$target\` | ${wall%.*} | $cpu | ${execs:-?} | $rate | ${cov:-?} | ${ft:-?} | ${corp:-?} | $findings |" >>"$OUT/summary.md"
done
cat "$OUT/summary.md"
if [ "$found" -ne 0 ]; then
    echo "fuzz-long: FINDINGS: see $OUT/*/art/" >&2
    exit 1
fi
echo "fuzz-long: no finding"
