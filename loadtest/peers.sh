#!/usr/bin/env bash
# Side-by-side benchmark: no proxy, splicegate (io_uring), splicegate (epoll), Squid, tinyproxy.
# Every scenario runs against every target inside one round, targets interleaved, ROUNDS rounds;
# then a scale pass (9,000 agents, ~9,900 idle tunnels) and a short profile. Loopback only; every
# run is bounded by count and time. Results: $OUT/results.jsonl, summary: $OUT/summary.md.
#
#   bash loadtest/peers.sh                 # ROUNDS=3 by default
#   ROUNDS=1 AGENT_SECONDS=10 bash loadtest/peers.sh
#
# Installs squid and tinyproxy from Debian if missing, keeps their system services stopped and
# disabled, and runs private instances from a temp dir on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
STREAM_SECONDS=${STREAM_SECONDS:-5}
AGENT_SECONDS=${AGENT_SECONDS:-20}
AGENTS=${AGENTS:-5000}
SCALE_AGENTS=${SCALE_AGENTS:-9000}
SCALE_IDLE=${SCALE_IDLE:-9900}
CONNECTS=${CONNECTS:-5000}
TARGETS=${TARGETS:-"direct uring epoll squid tinyproxy"}
SCALE=${SCALE:-1}
SCALE_SCENARIOS=${SCALE_SCENARIOS:-"agents9000 idle9900"}
PROFILE=${PROFILE:-1}
OUT=${OUT:-loadtest/results/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# --- peers: install if missing, never leave the Debian services running ----------------------
if ! command -v squid >/dev/null || ! command -v tinyproxy >/dev/null; then
  # Keep postinst from starting the services at all while installing.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q squid tinyproxy
  rm -f /usr/sbin/policy-rc.d
fi
for svc in squid tinyproxy; do
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl stop "$svc" 2>/dev/null || true; systemctl disable "$svc" 2>/dev/null || true
  else
    service "$svc" stop >/dev/null 2>&1 || true; update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done

# GW=/path/to/splicegate benchmarks a given binary (e.g. one built from a clean `git archive HEAD`,
# so that edits in progress in src/ neither break nor change the run); otherwise build this tree.
if [ -z "${GW:-}" ]; then cargo build --release --quiet; GW=$PWD/target/release/splicegate; fi
cargo build --release --quiet --manifest-path loadtest/Cargo.toml
LOAD=$PWD/loadtest/target/release/splicegate-load
work=$(mktemp -d /tmp/splicegate-peers.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/peer" && chown proxy:proxy "$work/peer" 2>/dev/null || chmod 777 "$work/peer"
PEERPID=""
cleanup() {
  [ -n "$PEERPID" ] && kill "$PEERPID" 2>/dev/null && wait "$PEERPID" 2>/dev/null || true
  [ -n "${SINKPID:-}" ] && kill "$SINKPID" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

source loadtest/lib.sh   # free_port, squid_connect_head, squid_common_conf (the cwd is the repository)

$LOAD sink --tls --listen 127.0.0.1:0 --seconds 7200 --cert-out "$work/ca.pem" > "$work/sink.out" &
SINKPID=$!
for _ in $(seq 50); do grep -q listening "$work/sink.out" 2>/dev/null && break; sleep 0.1; done
SINK=$(awk '/listening/ {print $2}' "$work/sink.out")
P=${SINK##*:}
TARGET="127.0.0.1:$P"   # the same IP-literal target on every proxy: no name resolution anywhere

start_target() { # name -> PROXY, PEERPID
  PROXY=""; PEERPID=""
  case $1 in
    direct) return ;;
    uring|epoll)
      cat > "$work/gw.yaml" <<YAML
listen: ["127.0.0.1:0"]
metrics_listen: null
workers: 0
engine: $1
data_path: splice
allowed_ports: [$P]
allowed_hosts: ["127.0.0.1", "sink.test"]
hosts: { sink.test: ["127.0.0.1"] }
allowed_destination_networks: ["127.0.0.0/8"]
# Plain-byte stream scenarios and IP-literal targets (no SNI): measure the tunnel itself;
# the inspector's own cost is in benches/tls.rs.
tls: { inspect: ${TLS_INSPECT:-false} }
YAML
      $GW run --config "$work/gw.yaml" --log-format json 2> "$work/gw.log" &
      PEERPID=$!
      for _ in $(seq 100); do grep -q '"event_id":101' "$work/gw.log" 2>/dev/null && break; sleep 0.05; done
      PROXY=$(grep '"event_id":101' "$work/gw.log" | sed 's/.*"listen":"\([^"]*\)".*/\1/') ;;
    squid)
      local port; port=$(free_port)
      {
        squid_connect_head "$port" "$P"
        squid_common_conf "$work"
      } > "$work/squid.conf"
      squid -N -f "$work/squid.conf" > "$work/peer/squid.out" 2>&1 &
      PEERPID=$!; PROXY=127.0.0.1:$port ;;
    tinyproxy)
      local port; port=$(free_port)
      cat > "$work/tinyproxy.conf" <<CONF
User nobody
Group nogroup
Port $port
Listen 127.0.0.1
Timeout 600
LogFile "$work/peer/tinyproxy.log"
LogLevel Error
PidFile "$work/peer/tinyproxy.pid"
MaxClients 10000
Allow 127.0.0.0/8
ConnectPort $P
DisableViaHeader Yes
CONF
      chmod 777 "$work/peer"
      tinyproxy -d -c "$work/tinyproxy.conf" > "$work/peer/tinyproxy.out" 2>&1 &
      PEERPID=$!; PROXY=127.0.0.1:$port ;;
  esac
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/${PROXY%:*}/${PROXY##*:}") 2>/dev/null && break; sleep 0.1
  done
}

stop_target() {
  if [ -n "$PEERPID" ]; then kill -TERM "$PEERPID" 2>/dev/null || true; wait "$PEERPID" 2>/dev/null || true; fi
  PEERPID=""
}

run() { # round target scenario args...
  local round=$1 target=$2 scen=$3; shift 3
  local net=(--target "$TARGET" --ca "$work/ca.pem" --json --quiet)
  if [ "$target" = direct ]; then net+=(--direct --sink "$SINK"); else net+=(--proxy "$PROXY" --gateway-pid "$PEERPID"); fi
  local line
  if line=$(timeout 180 "$LOAD" "$@" "${net[@]}" 2> "$work/err"); then :; else
    line="{\"failed\":true,\"stderr\":$(tail -c 400 "$work/err" | python3 -c 'import json,sys;print(json.dumps(sys.stdin.read()))')}"
  fi
  echo "{\"round\":$round,\"target\":\"$target\",\"scenario\":\"$scen\",\"result\":$line}" >> "$OUT/results.jsonl"
  printf '%-9s %-10s %-14s %s\n' "r$round" "$target" "$scen" "$(echo "$line" | head -c 260)"
}

{ echo "nproc: $(nproc)"; echo "uname -r: $(uname -r)"; grep -m1 'model name' /proc/cpuinfo;
  squid -v | head -1; tinyproxy -v; git rev-parse --short HEAD; date -u; } > "$OUT/machine.txt"
cat "$OUT/machine.txt"

for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  for t in $TARGETS; do
    start_target "$t"
    run "$r" "$t" idle1000      idle --tunnels 1000 --seconds 2 --sources 4
    run "$r" "$t" connect       connect --count "$CONNECTS" --concurrency 32 --seconds 20
    run "$r" "$t" stream1       stream --tunnels 1 --seconds "$STREAM_SECONDS"
    run "$r" "$t" stream64      stream --tunnels 64 --seconds "$STREAM_SECONDS"
    run "$r" "$t" stream1tls    stream --tunnels 1 --seconds "$STREAM_SECONDS" --tls
    run "$r" "$t" agents5000    agent --agents "$AGENTS" --time-scale 2 --seconds "$AGENT_SECONDS" --sources 4
    stop_target
  done
done

if [ "$SCALE" = 1 ]; then
  echo "== scale"
  for t in $TARGETS; do
    if [[ " $SCALE_SCENARIOS " == *" agents9000 "* ]]; then
      start_target "$t"
      run 1 "$t" agents9000 agent --agents "$SCALE_AGENTS" --time-scale 1 --seconds "$AGENT_SECONDS" --sources 4
      stop_target
    fi
    # On a fresh process, so that memory left over from earlier runs does not hide the cost.
    if [[ " $SCALE_SCENARIOS " == *" idle9900 "* && $t != direct ]]; then
      start_target "$t"
      run 1 "$t" idle9900 idle --tunnels "$SCALE_IDLE" --seconds 3 --sources 4
      stop_target
    fi
  done
fi

if [ "$PROFILE" = 1 ]; then
  echo "== profile (splicegate io_uring, 1-tunnel stream)"
  start_target uring
  "$LOAD" stream --proxy "$PROXY" --target "$TARGET" --tunnels 1 --seconds 8 --quiet > "$OUT/profile-stream.txt" &
  sp=$!
  sleep 2
  timeout 10 strace -c -f -p "$PEERPID" -o "$OUT/strace.txt" & st=$!
  sleep 3; kill -INT "$st" 2>/dev/null || true; wait "$st" 2>/dev/null || true
  perf record -q -e cpu-clock -g -p "$PEERPID" -o "$work/perf.data" -- sleep 2 >/dev/null 2>&1 || true
  wait "$sp" || true
  perf report -i "$work/perf.data" --no-children --stdio --percent-limit 1.5 --sort sym 2>/dev/null \
    | grep -v '^$' | grep -E '^ +[0-9]' | head -30 > "$OUT/perf.txt" || true
  stop_target
fi

python3 "$(dirname "$0")/summarize.py" "$OUT/results.jsonl" | tee "$OUT/summary.md"
echo "results in $OUT"
