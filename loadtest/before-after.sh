#!/usr/bin/env bash
# Before/after side by side in one run: two release binaries (BEFORE and AFTER, e.g. one built from
# `git archive <base>`), both engines, interleaved rounds; set-up storm, 64-tunnel stream, 2,000
# agents. Loopback only; every run is bounded by count and time.
#   BEFORE=/tmp/splicegate-before AFTER=target/release/splicegate bash loadtest/before-after.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
: "${BEFORE:?path of the binary before the change}" "${AFTER:?path of the binary after it}"
OUT=${OUT:-loadtest/results/issue12}
mkdir -p "$OUT"; : > "$OUT/results.jsonl"
LOAD=$PWD/loadtest/target/release/splicegate-load
work=$(mktemp -d /tmp/g-bench.XXXXXX)
SINKPID=""; GWPID=""
cleanup() { [ -n "$GWPID" ] && kill "$GWPID" 2>/dev/null || true; [ -n "$SINKPID" ] && kill "$SINKPID" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
$LOAD sink --tls --listen 127.0.0.1:0 --seconds 3600 --cert-out "$work/ca.pem" > "$work/sink.out" &
SINKPID=$!
for _ in $(seq 50); do grep -q listening "$work/sink.out" 2>/dev/null && break; sleep 0.1; done
SINK=$(awk '/listening/ {print $2}' "$work/sink.out"); P=${SINK##*:}; TARGET="127.0.0.1:$P"
start() { # bin engine
  cat > "$work/gw.yaml" <<YAML
listen: ["127.0.0.1:0"]
metrics_listen: null
workers: 0
engine: $2
data_path: splice
allowed_ports: [$P]
allowed_hosts: ["127.0.0.1", "sink.test"]
hosts: { sink.test: ["127.0.0.1"] }
allowed_destination_networks: ["127.0.0.0/8"]
tls: { inspect: false }
YAML
  "$1" run --config "$work/gw.yaml" --log-format json 2> "$work/gw.log" &
  GWPID=$!
  for _ in $(seq 100); do grep -q '"event_id":101' "$work/gw.log" 2>/dev/null && break; sleep 0.05; done
  PROXY=$(grep '"event_id":101' "$work/gw.log" | sed 's/.*"listen":"\([^"]*\)".*/\1/')
}
stop() { kill -TERM "$GWPID" 2>/dev/null || true; wait "$GWPID" 2>/dev/null || true; GWPID=""; }
run() { # round target scen args
  local round=$1 target=$2 scen=$3; shift 3
  local line
  if line=$(timeout 120 "$LOAD" "$@" --target "$TARGET" --ca "$work/ca.pem" --json --quiet --proxy "$PROXY" --gateway-pid "$GWPID" 2> "$work/err"); then :; else
    line="{\"failed\":true}"; fi
  echo "{\"round\":$round,\"target\":\"$target\",\"scenario\":\"$scen\",\"result\":$line}" >> "$OUT/results.jsonl"
  printf '%-4s %-13s %-10s %s\n' "r$round" "$target" "$scen" "$(echo "$line" | head -c 200)"
}
for r in $(seq "$ROUNDS"); do
  for t in before-uring after-uring before-epoll after-epoll; do
    case $t in before-*) bin=$BEFORE ;; *) bin=$AFTER ;; esac; eng=${t##*-}
    start "$bin" "$eng"
    run "$r" "$t" connect  connect --count 5000 --concurrency 32 --seconds 20
    run "$r" "$t" stream64 stream --tunnels 64 --seconds 5
    run "$r" "$t" agents   agent --agents 2000 --time-scale 2 --seconds 10 --sources 4
    stop
  done
done
