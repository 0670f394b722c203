#!/usr/bin/env bash
# Catalogue E6 (b): the gateway under `kernel.io_uring_disabled=2`. The sysctl is machine-wide
# (every process on the host loses io_uring while it is set), so this runs alone, never beside
# other tests: scripts/test.sh calls it after the suites. It builds the test first, then sets the
# sysctl, runs the one #[ignore]d test in tests/engine_fallback.rs (one gateway start, one
# CONNECT, one refused `engine: uring` start: about a second), and restores the previous value on
# any exit (a trap: also on failure or Ctrl-C).
#
# Skips (exit 0, with the reason) when the sysctl does not exist (kernels before 6.6) or cannot
# be written (not root, or a read-only /proc/sys in a container). Exits non-zero if the test
# fails or the previous value cannot be restored.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SYSCTL=/proc/sys/kernel/io_uring_disabled
TEST=io_uring_disabled_2_starts_on_epoll

if [ ! -e "$SYSCTL" ]; then
    echo "test-io-uring-disabled: SKIP: $SYSCTL does not exist (kernel $(uname -r), older than 6.6)"
    exit 0
fi
if ! prev=$(cat "$SYSCTL" 2>/dev/null); then
    echo "test-io-uring-disabled: SKIP: $SYSCTL cannot be read"
    exit 0
fi
# Writing the value it already has proves the file is writable without changing anything.
if ! { echo "$prev" >"$SYSCTL"; } 2>/dev/null; then
    echo "test-io-uring-disabled: SKIP: $SYSCTL cannot be written (needs root, and a writable /proc/sys)"
    exit 0
fi

# Build before the sysctl is set, and run the test binary itself: the window where io_uring is
# off on this host stays as short as the test (about 0.2 s).
build_log=$(mktemp)
if ! cargo test --test engine_fallback --no-run 2>&1 | tee "$build_log" >&2; then
    echo "test-io-uring-disabled: build failed" >&2
    rm -f "$build_log"
    exit 1
fi
exe=$(sed -n 's/^ *Executable tests\/engine_fallback.rs (\(.*\))$/\1/p' "$build_log" | tail -n 1)
rm -f "$build_log"
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
    echo "test-io-uring-disabled: cannot find the engine_fallback test binary in cargo's output" >&2
    exit 1
fi

restore() {
    if { echo "$prev" >"$SYSCTL"; } 2>/dev/null && [ "$(cat "$SYSCTL")" = "$prev" ]; then
        echo "test-io-uring-disabled: kernel.io_uring_disabled restored to $prev"
    else
        echo "test-io-uring-disabled: FAILED to restore kernel.io_uring_disabled to $prev" >&2
        return 1
    fi
}
# On every exit, the test's failure and a signal included: restore, and fail if that fails.
on_exit() {
    local rc=$?
    restore || rc=1
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM HUP

echo "test-io-uring-disabled: kernel.io_uring_disabled $prev -> 2"
echo 2 >"$SYSCTL"
"$exe" "$TEST" --ignored --exact --test-threads=1 --nocapture
