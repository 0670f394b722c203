#!/usr/bin/env bash
# Issue 17: splicegate before and after beside the floor relay (loadtest/src/bin/floor-relay.rs),
# Squid and no proxy at all, in one run, targets interleaved in every round, each target a fresh
# process per round; then a syscall pass (`strace -c -f -p PID` for a fixed window) per upload and
# per tunnel; then loadtest/issue17_summary.py's tables and goal table ($OUT/summary.md).
#
#   BEFORE=<release splicegate before> AFTER=<release splicegate after> ROUNDS=3 \
#     OUT=loadtest/results/issue17 bash loadtest/issue17.sh
#
# Scenarios (the issue's set-up: TLS inspection on, default log level, JSON lines to a file):
#   storm    - `connect --tls`: STORM tunnels, 32 at a time, each TCP connect, CONNECT, 200, a
#              full TLS handshake (SNI sink.test, no resumption) with the sink through the
#              tunnel, one application-data round trip (the handshake done at both ends),
#              close_notify, close
#   stream64 - 64 TLS tunnels (the sender encrypts, the sink decrypts: inspection passes them)
#              streaming for STREAM_SECONDS
#   agents   - AGENTS agents, 200 KB every 0.6 s over TLS (SNI sink.test), AGENT_SECONDS schedule
# Targets (TARGETS, in this order in every round):
#   direct            no proxy: the latency baselines (storm connect/handshake p99, upload p99)
#   floor             the floor relay, `CONNECT 127.0.0.1:PORT`: an IP literal on purpose, the
#                     floor is the minimum, no resolver at all
#   before-E, after-E BEFORE/AFTER on engine E (uring, epoll), `CONNECT sink.test:PORT` with the
#                     name only in a hosts file (`resolver.hosts_file`), as a Private Link
#                     deployment pins it
#   after-map-E       AFTER with the name in the config's `hosts:` map instead (its hosts file
#                     does not list it): the issue asks the hosts-file path to cost what this costs
#   squid             Squid, the name only in its `hosts_file`
# Loopback only; every run is bounded in count and time. A default run (ROUNDS=3, 9 targets)
# takes about 13-15 minutes on a quiet 2-core machine: measurement ~10-11, syscall pass ~3
# (plus the loadtest build if it is not built yet).
#
# PAUSE_PIDS="PID..." holds those processes (and their descendants) off the CPUs for the whole
# run and releases them at the end, on errors and on INT/TERM too; PAUSE_HOW=stop (SIGSTOP, the
# default) or idle (SCHED_IDLE; the one to use for libFuzzer, see loadtest/lib.sh).
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
TARGETS=${TARGETS:-"direct floor before-uring after-uring after-map-uring before-epoll after-epoll after-map-epoll squid"}
SYSCALL_TARGETS=${SYSCALL_TARGETS:-"floor before-uring after-uring after-map-uring before-epoll after-epoll"}
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
source loadtest/lib.sh   # free_port, squid_*, pause_* (the cwd is the repository)
cleanup() {
  # Only the script itself cleans up (a background subshell interrupted by kill -INT runs the
  # EXIT trap too).
  [ "$BASHPID" = "$$" ] || return 0
  pause_end   # first: nothing below may keep the paused processes waiting
  [ -n "$PEERPID" ] && kill "$PEERPID" 2>/dev/null && wait "$PEERPID" 2>/dev/null || true
  [ -n "$SINKPID" ] && kill "$SINKPID" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT; trap 'exit 143' TERM; trap 'exit 129' HUP   # so that cleanup runs
rm -f "$OUT/paused.txt"; pause_begin "$OUT/paused.txt"

$LOAD sink --tls --listen 127.0.0.1:0 --seconds 7200 --cert-out "$work/ca.pem" > "$work/sink.out" &
SINKPID=$!
for _ in $(seq 50); do grep -q listening "$work/sink.out" 2>/dev/null && break; sleep 0.1; done
SINK=$(awk '/listening/ {print $2}' "$work/sink.out")
P=${SINK##*:}
printf '127.0.0.1 sink.test\n' > "$work/hosts"
printf '127.0.0.1 localhost\n' > "$work/hosts-without"   # the after-map targets' hosts file

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
      local names="resolver: { hosts_file: \"$work/hosts\" }"
      [[ $1 == after-map-* ]] && names="hosts: { \"sink.test\": [\"127.0.0.1\"] }
resolver: { hosts_file: \"$work/hosts-without\" }"
      cat > "$work/gw.yaml" <<YAML
listen: ["127.0.0.1:0"]
metrics_listen: null
workers: 0
engine: ${1##*-}
data_path: splice
allowed_ports: [$P]
allowed_hosts: ["sink.test"]
allowed_destination_networks: ["127.0.0.0/8"]
$names
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
  squid -v | head -1; echo "before: $BEFORE"; echo "after: $AFTER"; date -u
  echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "paused: $(cat "$OUT/paused.txt" 2>/dev/null || echo nothing)"; } > "$OUT/machine.txt"
cat "$OUT/machine.txt"

for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  for t in $TARGETS; do
    start_target "$t"
    run "$r" "$t" storm    connect --tls --count "$STORM" --concurrency 32 --seconds 60
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
  # Storm: the whole run of STRACE_STORM tunnels (TLS inside, as in the rounds).
  traced "$OUT/strace/$t-storm.txt" 0.3 0 \
    "$LOAD" connect --tls --count "$STRACE_STORM" --concurrency 32 --seconds 60 "${NET[@]}"
  echo "{\"target\":\"$t\",\"agents_window_s\":$STRACE_WINDOW,\"uploads_per_s\":$(python3 -c "print($AGENTS/0.6)"),\"storm_tunnels\":$STRACE_STORM,\"storm_ok\":$(python3 -c 'import json,sys;print(json.load(open(sys.argv[1])).get("ok",0))' "$work/traced.out" 2>/dev/null || echo 0)}" >> "$OUT/syscalls.jsonl"
  stop_target
done

python3 "$(dirname "$0")/issue17_summary.py" "$OUT" | tee "$OUT/summary.md"
echo "results in $OUT"
