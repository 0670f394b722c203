#!/usr/bin/env bash
# Issue 17: splicegate before and after beside the floor relay (loadtest/src/bin/floor-relay.rs)
# and Squid, in one run, targets interleaved in every round, each target a fresh process per
# round; then a syscall pass (`strace -c -f -p PID` for a fixed window) per upload and per tunnel.
#
#   BEFORE=<release splicegate before> AFTER=<release splicegate after> ROUNDS=3 \
#     OUT=loadtest/results/issue17 bash loadtest/issue17.sh
#
# Scenarios (the issue's set-up: TLS inspection on, the target name in a hosts file, default log
# level, JSON lines to a file):
#   storm    - `connect`: 5,000 tunnels, 32 at a time (TCP connect, CONNECT, 200, close)
#   stream64 - 64 TLS tunnels (the sender encrypts, the sink decrypts: inspection passes them)
#              streaming for STREAM_SECONDS
#   agents   - 1,000 agents, 200 KB every 0.6 s over TLS (SNI sink.test), AGENT_SECONDS schedule
# splicegate and Squid get `CONNECT sink.test:PORT`, the name only in a hosts file
# (`resolver.hosts_file`, Squid's `hosts_file`); the floor has no resolver and gets
# `CONNECT 127.0.0.1:PORT`. Loopback only; every run is bounded in count and time.
# Results: $OUT/results.jsonl, $OUT/syscalls.jsonl, $OUT/strace/*, summary: $OUT/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
STREAM_SECONDS=${STREAM_SECONDS:-4}
AGENT_SECONDS=${AGENT_SECONDS:-10}
AGENTS=${AGENTS:-1000}
STORM=${STORM:-5000}
STRACE_WINDOW=${STRACE_WINDOW:-4}
STRACE_STORM=${STRACE_STORM:-2000}
TARGETS=${TARGETS:-"direct floor before-uring after-uring before-epoll after-epoll squid"}
SYSCALL_TARGETS=${SYSCALL_TARGETS:-"floor before-uring after-uring before-epoll after-epoll"}
: "${BEFORE:?path of the splicegate binary before the change}" "${AFTER:?path of the binary after it}"
OUT=${OUT:-loadtest/results/issue17}
mkdir -p "$OUT/strace"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/results.jsonl"; : > "$OUT/syscalls.jsonl"

cargo build --release --quiet --manifest-path loadtest/Cargo.toml
LOAD=$PWD/loadtest/target/release/splicegate-load
FLOOR=$PWD/loadtest/target/release/floor-relay
work=$(mktemp -d /tmp/issue17.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/peer" && chown proxy:proxy "$work/peer" 2>/dev/null || chmod 777 "$work/peer"
PEERPID=""; SINKPID=""
cleanup() {
  # Only the script itself cleans up (a background subshell interrupted by kill -INT runs the
  # EXIT trap too).
  [ "$BASHPID" = "$$" ] || return 0
  [ -n "$PEERPID" ] && kill "$PEERPID" 2>/dev/null && wait "$PEERPID" 2>/dev/null || true
  [ -n "$SINKPID" ] && kill "$SINKPID" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
source loadtest/lib.sh   # free_port, squid_connect_head, squid_common_conf (the cwd is the repository)

$LOAD sink --tls --listen 127.0.0.1:0 --seconds 7200 --cert-out "$work/ca.pem" > "$work/sink.out" &
SINKPID=$!
for _ in $(seq 50); do grep -q listening "$work/sink.out" 2>/dev/null && break; sleep 0.1; done
SINK=$(awk '/listening/ {print $2}' "$work/sink.out")
P=${SINK##*:}
printf '127.0.0.1 sink.test\n' > "$work/hosts"

start_target() { # target -> PROXY, PEERPID, NAME (the CONNECT host)
  PROXY=""; PEERPID=""; NAME=sink.test
  case $1 in
    direct) return ;;
    floor)
      "$FLOOR" --listen 127.0.0.1:0 --seconds 3600 > "$work/floor.out" &
      PEERPID=$!; NAME=127.0.0.1
      for _ in $(seq 100); do grep -q listening "$work/floor.out" 2>/dev/null && break; sleep 0.05; done
      PROXY=$(awk '/listening/ {print $2}' "$work/floor.out") ;;
    before-*|after-*)
      local bin=$AFTER; [[ $1 == before-* ]] && bin=$BEFORE
      cat > "$work/gw.yaml" <<YAML
listen: ["127.0.0.1:0"]
metrics_listen: null
workers: 0
engine: ${1##*-}
data_path: splice
allowed_ports: [$P]
allowed_hosts: ["sink.test"]
allowed_destination_networks: ["127.0.0.0/8"]
resolver: { hosts_file: "$work/hosts" }
tls: { inspect: true }
YAML
      "$bin" run --config "$work/gw.yaml" --log-format json 2> "$work/gw.log" &
      PEERPID=$!
      for _ in $(seq 200); do grep -q '"event_id":101' "$work/gw.log" 2>/dev/null && break; sleep 0.05; done
      PROXY=$(grep '"event_id":101' "$work/gw.log" | sed 's/.*"listen":"\([^"]*\)".*/\1/') ;;
    squid)
      local port; port=$(free_port)
      {
        squid_connect_head "$port" "$P"
        cat <<CONF
hosts_file $work/hosts
CONF
        squid_common_conf "$work"
      } > "$work/squid.conf"
      squid -N -f "$work/squid.conf" > "$work/peer/squid.out" 2>&1 &
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

net_args() { # target
  NET=(--target "$NAME:$P" --ca "$work/ca.pem" --json --quiet)
  if [ "$1" = direct ]; then NET+=(--direct --sink "$SINK"); else NET+=(--proxy "$PROXY" --gateway-pid "$PEERPID"); fi
}

run() { # round target scenario args...
  local round=$1 target=$2 scen=$3; shift 3
  net_args "$target"
  local line
  if line=$(timeout 180 "$LOAD" "$@" "${NET[@]}" 2> "$work/err"); then :; else
    line="{\"failed\":true,\"stderr\":$(tail -c 400 "$work/err" | python3 -c 'import json,sys;print(json.dumps(sys.stdin.read()))')}"
  fi
  echo "{\"round\":$round,\"target\":\"$target\",\"scenario\":\"$scen\",\"load\":\"$(cut -d' ' -f1-3 /proc/loadavg)\",\"result\":$line}" >> "$OUT/results.jsonl"
  printf '%-4s %-13s %-9s %s\n' "r$round" "$target" "$scen" "$(echo "$line" | head -c 220)"
}

# strace -c of the whole gateway process (all threads): WINDOW seconds starting DELAY seconds
# into `cmd...`, or (WINDOW 0) the whole of `cmd...`, attached before it starts.
traced() { # file delay window cmd...
  local file=$1 delay=$2 window=$3 cp="" st; shift 3
  if [ "$window" = 0 ]; then
    strace -c -f -p "$PEERPID" -o "$file" 2> /dev/null & st=$!
    sleep 1
    "$@" > "$work/traced.out" 2> /dev/null || true
  else
    "$@" > "$work/traced.out" 2> /dev/null & cp=$!
    sleep "$delay"
    strace -c -f -p "$PEERPID" -o "$file" 2> /dev/null & st=$!
    sleep "$window"
  fi
  kill -INT "$st" 2>/dev/null || true; wait "$st" 2>/dev/null || true
  if [ -n "$cp" ]; then wait "$cp" 2>/dev/null || true; fi
}

{ echo "nproc: $(nproc)"; echo "uname -r: $(uname -r)"; grep -m1 'model name' /proc/cpuinfo;
  squid -v | head -1; echo "before: $BEFORE"; echo "after: $AFTER"; date -u; } > "$OUT/machine.txt"
cat "$OUT/machine.txt"

for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  for t in $TARGETS; do
    start_target "$t"
    run "$r" "$t" storm    connect --count "$STORM" --concurrency 32 --seconds 30
    run "$r" "$t" stream64 stream --tunnels 64 --seconds "$STREAM_SECONDS" --tls
    run "$r" "$t" agents   agent --agents "$AGENTS" --interval 0.6 --seconds "$AGENT_SECONDS" --sources 4
    stop_target
  done
done

echo "== syscalls (strace -c -f, all threads of the gateway)"
for t in $SYSCALL_TARGETS; do
  start_target "$t"; net_args "$t"
  # Agents: after set-up, a fixed window of the upload schedule (AGENTS / 0.6 uploads per second).
  traced "$OUT/strace/$t-agents.txt" 4 "$STRACE_WINDOW" \
    "$LOAD" agent --agents "$AGENTS" --interval 0.6 --seconds $((STRACE_WINDOW + 8)) --sources 4 "${NET[@]}"
  # Storm: the whole run of STRACE_STORM tunnels.
  traced "$OUT/strace/$t-storm.txt" 0.3 0 \
    "$LOAD" connect --count "$STRACE_STORM" --concurrency 32 --seconds 60 "${NET[@]}"
  echo "{\"target\":\"$t\",\"agents_window_s\":$STRACE_WINDOW,\"uploads_per_s\":$(python3 -c "print($AGENTS/0.6)"),\"storm_tunnels\":$STRACE_STORM,\"storm_ok\":$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1])).get("ok",0))' "$work/traced.out" 2>/dev/null || echo 0)}" >> "$OUT/syscalls.jsonl"
  stop_target
done

python3 "$(dirname "$0")/issue17_summary.py" "$OUT" | tee "$OUT/summary.md"
echo "results in $OUT"
