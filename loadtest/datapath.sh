#!/usr/bin/env bash
# Compare the data paths side by side in one run: no proxy, splicegate splice (uring and epoll),
# splicegate copy. Prints gateway CPU-seconds per GB and throughput for each, ROUNDS times,
# interleaved. Loopback only; every run is bounded by SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
TUNNELS=${TUNNELS:-1}
cargo build --release --quiet
cargo build --release --quiet --manifest-path loadtest/Cargo.toml
LOAD=loadtest/target/release/splicegate-load
GW=target/release/splicegate
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

$LOAD sink --listen 127.0.0.1:0 --seconds 3600 > "$work/sink.out" &
for _ in $(seq 50); do grep -q listening "$work/sink.out" 2>/dev/null && break; sleep 0.1; done
SINK=$(awk '/listening/ {print $2}' "$work/sink.out")
SINK_PORT=${SINK##*:}

run_gw() { # engine data_path
  cat > "$work/gw.yaml" <<YAML
listen: ["127.0.0.1:0"]
metrics_listen: null
workers: 1
engine: $1
data_path: $2
limits: { pipe_size: ${PIPE_SIZE:-262144} }
allowed_ports: [$SINK_PORT]
allowed_hosts: ["sink.test"]
hosts: { sink.test: ["127.0.0.1"] }
allowed_destination_networks: ["127.0.0.0/8"]
YAML
  $GW run --config "$work/gw.yaml" --log-format json 2> "$work/gw.log" &
  GWPID=$!
  for _ in $(seq 100); do grep -q '"event_id":101' "$work/gw.log" 2>/dev/null && break; sleep 0.05; done
  GWADDR=$(grep '"event_id":101' "$work/gw.log" | sed 's/.*"listen":"\([^"]*\)".*/\1/')
}

for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  printf '%-22s ' "direct"; $LOAD stream --direct --sink "$SINK" --target x --tunnels "$TUNNELS" --seconds "$SECONDS_PER_RUN"
  for variant in "uring splice" "epoll splice" "uring copy" "epoll copy"; do
    set -- $variant
    run_gw "$1" "$2"
    printf '%-22s ' "$1/$2"
    $LOAD stream --proxy "$GWADDR" --target "sink.test:$SINK_PORT" --tunnels "$TUNNELS" --seconds "$SECONDS_PER_RUN" --gateway-pid "$GWPID"
    kill -TERM "$GWPID"; wait "$GWPID" || true
  done
done
