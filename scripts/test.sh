#!/usr/bin/env bash
# The one test command: test tools, build, unit + integration tests on io_uring, then the
# integration tests again on epoll, then, alone, the one test that needs a machine-wide sysctl
# (kernel.io_uring_disabled=2, scripts/test-io-uring-disabled.sh). Runs every test phase even if
# an earlier one fails and exits non-zero if any failed.
#
# TEST_THREADS (default 2) sets --test-threads; heavy tests in tests/scale.rs serialise
# themselves with a lock, so 2 threads are safe on a 2-core machine.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TEST_THREADS="${TEST_THREADS:-2}"
failed=()

phase() {
    echo
    echo "=================================================================="
    echo "== $*"
    echo "=================================================================="
}

phase "1/6 test dependencies (scripts/install-test-deps.sh)"
if ! bash scripts/install-test-deps.sh; then
    echo "test.sh: installing test dependencies failed" >&2
    exit 1
fi

phase "2/6 cargo build --all-targets"
if ! cargo build --all-targets; then
    echo "test.sh: build failed" >&2
    exit 1
fi

phase "3/6 cargo test (unit + integration + doc), engine uring"
if ! SPLICEGATE_TEST_ENGINE=uring cargo test --no-fail-fast -- --test-threads="$TEST_THREADS"; then
    failed+=("cargo test (uring)")
fi

phase "4/6 the Debian package test (slow; #[ignore]d in plain cargo test)"
if ! cargo test --test package -- --ignored --test-threads=1; then
    failed+=("package test")
fi

phase "5/6 integration tests again, engine epoll"
if ! SPLICEGATE_TEST_ENGINE=epoll cargo test --no-fail-fast --test '*' -- --test-threads="$TEST_THREADS"; then
    failed+=("integration tests (epoll)")
fi

phase "6/6 engine fallback under kernel.io_uring_disabled=2 (machine-wide: alone, after the suites)"
if ! bash scripts/test-io-uring-disabled.sh; then
    failed+=("io_uring_disabled test")
fi

echo
if [ "${#failed[@]}" -ne 0 ]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all phases passed"
