#!/usr/bin/env bash
# Compare the data paths side by side in one run: no proxy, splicegate splice with 1 MiB, 256 KiB
# and 64 KiB pipes (io_uring and epoll drivers), the copy path, and the io_uring recv/send variant
# (loadtest/src/bin/uring-relay.rs: multishot RECV from a provided-buffer ring, SEND from the same
# buffer; 64 KiB buffers). Prints throughput and gateway
# CPU-seconds per GB (user+sys, measured over a steady window after a 1 s warm-up) for each,
# ROUNDS times, interleaved. One worker, so the figure is one core's cost. Loopback only; every
# run is bounded by SECONDS_PER_RUN.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
TUNNELS=${TUNNELS:-1}
VARIANTS=${VARIANTS:-"uring:splice:1048576 uring:splice:262144 uring:splice:65536 epoll:splice:1048576 epoll:splice:65536 uring:copy:1048576 epoll:copy:1048576 uring-relay:recvsend:65536"}
# GW=/path/to/splicegate benchmarks a given binary (e.g. one built from a clean `git archive HEAD`,
# so that edits in progress in src/ neither break nor change the run); otherwise build this tree.
if [ -z "${GW:-}" ]; then cargo build --release --quiet; GW=$PWD/target/release/splicegate; fi
cargo build --release --quiet --manifest-path loadtest/Cargo.toml
LOAD=loadtest/target/release/splicegate-load
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

$LOAD sink --listen 127.0.0.1:0 --seconds 3600 > "$work/sink.out" &
for _ in $(seq 50); do grep -q listening "$work/sink.out" 2>/dev/null && break; sleep 0.1; done
SINK=$(awk '/listening/ {print $2}' "$work/sink.out")
SINK_PORT=${SINK##*:}

run_gw() { # engine data_path pipe_size
  cat > "$work/gw.yaml" <<YAML
listen: ["127.0.0.1:0"]
metrics_listen: null
workers: 1
engine: $1
data_path: $2
limits: { pipe_size: $3 }
allowed_ports: [$SINK_PORT]
allowed_hosts: ["sink.test"]
hosts: { sink.test: ["127.0.0.1"] }
allowed_destination_networks: ["127.0.0.0/8"]
# Plain-byte stream scenarios and IP-literal targets (no SNI): measure the tunnel itself;
# the inspector's own cost is in benches/tls.rs.
tls: { inspect: ${TLS_INSPECT:-false} }
YAML
  $GW run --config "$work/gw.yaml" --log-format json 2> "$work/gw.log" &
  GWPID=$!
  for _ in $(seq 100); do grep -q '"event_id":101' "$work/gw.log" 2>/dev/null && break; sleep 0.05; done
  GWADDR=$(grep '"event_id":101' "$work/gw.log" | sed 's/.*"listen":"\([^"]*\)".*/\1/')
}

for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  printf '%-28s ' "direct"; $LOAD stream --quiet --direct --sink "$SINK" --tunnels "$TUNNELS" --seconds "$SECONDS_PER_RUN"
  for variant in $VARIANTS; do
    IFS=: read -r engine path pipe <<< "$variant"
    if [ "$engine" = uring-relay ]; then
      loadtest/target/release/uring-relay --seconds 600 > "$work/relay.out" 2>&1 &
      GWPID=$!
      for _ in $(seq 50); do grep -q listening "$work/relay.out" 2>/dev/null && break; sleep 0.05; done
      GWADDR=$(awk '/listening/ {print $2}' "$work/relay.out")
      TARGET=$SINK
      printf '%-28s ' "io_uring recv/send (64KiB)"
    else
      run_gw "$engine" "$path" "$pipe"
      TARGET="sink.test:$SINK_PORT"
      printf '%-28s ' "$engine/$path/pipe=$((pipe / 1024))KiB"
    fi
    $LOAD stream --quiet --proxy "$GWADDR" --target "$TARGET" --tunnels "$TUNNELS" --seconds "$SECONDS_PER_RUN" --gateway-pid "$GWPID"
    kill -TERM "$GWPID"; wait "$GWPID" || true
  done
done
