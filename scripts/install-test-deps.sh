#!/usr/bin/env bash
# Installs the tools the integration tests run: curl, openssl, ip (iproute2), ps (procps),
# prlimit (util-linux), squid, htpasswd (apache2-utils) and stunnel (stunnel4) for the
# relay-proxy tests, systemd-analyze (systemd) to verify the unit file, promtool (prometheus)
# to check the alerting rules, haproxy, keepalived and
# nft (nftables) for the HA tests in network namespaces (tests/ha.rs, loadtest/ha.sh, the
# deploy/ examples); libseccomp's Python bindings (python3-seccomp, for Debian's /usr/bin/python3)
# for tests/support/seccomp_exec.py, which runs the gateway under a seccomp filter in
# tests/engine_fallback.rs; and cargo-deb from crates.io for the package test.
# Idempotent: does nothing when every tool is present; otherwise runs `apt-get update` once and
# installs only the missing packages. Needs root (or sudo) only when something is missing.
set -euo pipefail

# command -> Debian/Ubuntu package
declare -A PKG=([curl]=curl [openssl]=openssl [ip]=iproute2 [ps]=procps [prlimit]=util-linux [squid]=squid [htpasswd]=apache2-utils [stunnel]=stunnel4 [systemd-analyze]=systemd [promtool]=prometheus [haproxy]=haproxy [keepalived]=keepalived [nft]=nftables)

missing=()
for cmd in curl openssl ip ps prlimit squid htpasswd stunnel systemd-analyze promtool haproxy keepalived nft; do
    if command -v "$cmd" >/dev/null 2>&1; then
        echo "install-test-deps: $cmd present ($(command -v "$cmd"))"
    else
        echo "install-test-deps: $cmd missing (package ${PKG[$cmd]})"
        missing+=("${PKG[$cmd]}")
    fi
done

# Python modules (for /usr/bin/python3, Debian's) -> Debian/Ubuntu package
declare -A PYMOD=([seccomp]=python3-seccomp)
for mod in "${!PYMOD[@]}"; do
    if /usr/bin/python3 -c "import $mod" >/dev/null 2>&1; then
        echo "install-test-deps: python module $mod present"
    else
        echo "install-test-deps: python module $mod missing (package ${PYMOD[$mod]})"
        missing+=("${PYMOD[$mod]}")
    fi
done

# cargo-deb builds the Debian package in tests/package.rs (from crates.io, pinned).
if command -v cargo-deb >/dev/null 2>&1; then
    echo "install-test-deps: cargo-deb present ($(command -v cargo-deb))"
else
    echo "install-test-deps: cargo install cargo-deb --locked --version 3.8.0"
    cargo install cargo-deb --locked --version 3.8.0
fi

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-test-deps: nothing to install"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install-test-deps: need root or sudo to install: ${missing[*]}" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: no apt-get on this machine; install manually: ${missing[*]}" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-test-deps: apt-get update"
"${SUDO[@]}" apt-get update
echo "install-test-deps: apt-get install -y ${missing[*]}"
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"

for cmd in curl openssl ip ps prlimit squid htpasswd stunnel systemd-analyze promtool haproxy keepalived nft; do
    command -v "$cmd" >/dev/null 2>&1 || {
        echo "install-test-deps: $cmd still missing after install" >&2
        exit 1
    }
done
for mod in "${!PYMOD[@]}"; do
    /usr/bin/python3 -c "import $mod" >/dev/null 2>&1 || {
        echo "install-test-deps: python module $mod still missing after install" >&2
        exit 1
    }
done
echo "install-test-deps: installed ${missing[*]}"
