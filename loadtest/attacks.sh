#!/usr/bin/env bash
# Attack and fault scenarios (issue 16, catalogue section D) against splicegate (io_uring and
# epoll) and, where it compares, Squid, each on a fresh process:
#
#   slowloris  9,000 connections dribbling a never-ending CONNECT head (header_timeout 5 s)
#   flood      6,000 silent connections against max_connections 2,000, plus 100/s more
#   resets     4,000 tunnels (1,000 at a time) reset mid-stream by either side, 2 rounds
#   stall      50 tunnels whose client (then upstream) stops reading (idle_timeout 10 s)
#   blackhole  20 CONNECTs whose SYNs are dropped (connect_timeout 5 s) beside healthy tunnels,
#              inside a network namespace this script creates (nft drop rule on 127.0.0.2:443)
#
#   bash loadtest/attacks.sh                                   # everything, ~10 min
#   SCENARIOS="slowloris" TARGETS="uring" bash loadtest/attacks.sh
#   GW=/tmp/before/splicegate SCENARIOS=slowloris TARGETS=uring bash loadtest/attacks.sh
#
# Loopback (or the script's own namespace) only; every run is bounded by count and time.
# Results: $OUT/results.jsonl (one JSON line per run), summary: $OUT/summary.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIOS=${SCENARIOS:-"slowloris flood resets stall blackhole"}
TARGETS=${TARGETS:-"uring epoll squid"}
SLOWLORIS=${SLOWLORIS:-9000}
FLOOD=${FLOOD:-6000}
FLOOD_MAX=${FLOOD_MAX:-2000}
RESETS=${RESETS:-4000}
RESET_CONCURRENCY=${RESET_CONCURRENCY:-1000}
OUT=${OUT:-loadtest/results/attacks-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ -z "${GW:-}" ]; then cargo build --release --quiet; GW=$PWD/target/release/splicegate; fi
cargo build --release --quiet --manifest-path loadtest/Cargo.toml
LOAD=$PWD/loadtest/target/release/splicegate-load
command -v squid >/dev/null || TARGETS=${TARGETS//squid/}
work=$(mktemp -d /tmp/splicegate-attacks.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/peer" && (chown proxy:proxy "$work/peer" 2>/dev/null || chmod 777 "$work/peer")
NS=sgattack$$
PEERPID=""
cleanup() {
  [ -n "$PEERPID" ] && kill "$PEERPID" 2>/dev/null && wait "$PEERPID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

source loadtest/lib.sh   # free_port, squid_common_conf (the cwd is the repository)

# The black hole: a namespace with only loopback, where SYNs to 127.0.0.2:443 are dropped on input
# (so the sender retransmits them until its connect timeout: a real black hole, not a refusal).
make_namespace() {
  ip netns add "$NS"
  ip -n "$NS" link set lo up
  ip netns exec "$NS" nft add table inet hole
  ip netns exec "$NS" nft add chain inet hole in '{ type filter hook input priority 0; }'
  ip netns exec "$NS" nft add rule inet hole in ip daddr 127.0.0.2 tcp dport 443 drop
}

# start TARGET SCENARIO [IN_NS] -> PROXY, PEERPID, METRICS (empty for Squid)
start() {
  local t=$1 scen=$2 wrap=()
  [ "${3:-}" = ns ] && wrap=(ip netns exec "$NS")
  PROXY=""; PEERPID=""; METRICS=""
  case $t in
    uring|epoll)
      local mport; mport=$(free_port)
      local extra=""
      [ "$scen" = flood ] && extra="  max_connections: $FLOOD_MAX"
      cat > "$work/gw.yaml" <<YAML
listen: ["127.0.0.1:0"]
metrics_listen: "127.0.0.1:$mport"
workers: 0
engine: $t
allowed_hosts: ["127.0.0.1:1-65535", "127.0.0.2:443"]
allowed_destination_networks: ["127.0.0.0/8"]
tls: { inspect: false }
limits:
  header_timeout: 5s
  connect_timeout: 5s
  idle_timeout: 10s
$extra
YAML
      "${wrap[@]}" "$GW" run --config "$work/gw.yaml" --log-format json 2> "$work/gw.log" &
      PEERPID=$!
      for _ in $(seq 100); do grep -q '"event_id":101' "$work/gw.log" 2>/dev/null && break; sleep 0.05; done
      PROXY=$(grep -m1 '"event_id":101' "$work/gw.log" | sed 's/.*"listen":"\([^"]*\)".*/\1/')
      METRICS=127.0.0.1:$mport ;;
    squid)
      local port; port=$(free_port)
      {
        cat <<CONF
http_port 127.0.0.1:$port
acl CONNECT method CONNECT
acl loop src 127.0.0.0/8
http_access allow CONNECT loop
http_access deny all
CONF
        squid_common_conf "$work"
        cat <<CONF
# The same budgets as the gateway's: header, connect, idle.
request_start_timeout 5 seconds
request_timeout 5 seconds
connect_timeout 5 seconds
read_timeout 10 seconds
CONF
      } > "$work/squid.conf"
      "${wrap[@]}" squid -N -f "$work/squid.conf" > "$work/peer/squid.out" 2>&1 &
      PEERPID=$!; PROXY=127.0.0.1:$port ;;
  esac
  local ok=""
  for _ in $(seq 100); do
    if [ ${#wrap[@]} -gt 0 ]; then
      "${wrap[@]}" bash -c "exec 3<>/dev/tcp/${PROXY%:*}/${PROXY##*:}" 2>/dev/null && { ok=1; break; }
    else
      (exec 3<>"/dev/tcp/${PROXY%:*}/${PROXY##*:}") 2>/dev/null && { ok=1; break; }
    fi
    sleep 0.1
  done
  [ -n "$ok" ] || { echo "$t did not start"; return 1; }
}

stop() {
  if [ -n "$PEERPID" ]; then kill -TERM "$PEERPID" 2>/dev/null || true; wait "$PEERPID" 2>/dev/null || true; fi
  PEERPID=""
}

run() { # target scenario [ns] -- load args...
  local t=$1 scen=$2 wrap=(); shift 2
  if [ "${1:-}" = ns ]; then wrap=(ip netns exec "$NS"); shift; fi
  local args=(--proxy "$PROXY" --gateway-pid "$PEERPID" --json --quiet)
  [ -n "$METRICS" ] && args+=(--metrics "$METRICS")
  local load1 load1_after line
  load1=$(cut -d' ' -f1 /proc/loadavg)
  if line=$(timeout 300 "${wrap[@]}" "$LOAD" "$@" "${args[@]}" 2> "$work/err"); then :; else
    line="{\"failed\":true,\"stderr\":$(tail -c 400 "$work/err" | python3 -c 'import json,sys;print(json.dumps(sys.stdin.read()))')}"
  fi
  load1_after=$(cut -d' ' -f1 /proc/loadavg)
  echo "{\"target\":\"$t\",\"scenario\":\"$scen\",\"load1_before\":$load1,\"load1_after\":$load1_after,\"result\":$line}" >> "$OUT/results.jsonl"
  printf '%-6s %-10s %s\n' "$t" "$scen" "$(echo "$line" | head -c 300)"
}

{ echo "nproc: $(nproc)"; echo "uname -r: $(uname -r)"; echo "ulimit -Hn: $(ulimit -Hn)"
  squid -v 2>/dev/null | head -1; echo "gateway: $GW"; git rev-parse --short HEAD; date -u
  echo "loadavg: $(cat /proc/loadavg)"; } > "$OUT/machine.txt"
cat "$OUT/machine.txt"

for scen in $SCENARIOS; do
  for t in $TARGETS; do
    case $scen in
      slowloris)
        start "$t" "$scen"
        run "$t" slowloris slowloris --connections "$SLOWLORIS" --interval-ms 1000 --seconds 30 --sources 4
        stop ;;
      flood)
        # Squid has no connection cap to compare with (it accepts up to its fd limit).
        [ "$t" = squid ] && continue
        start "$t" "$scen"
        run "$t" flood flood --connections "$FLOOD" --hold 5 --trickle 100 --sources 4
        stop ;;
      resets)
        start "$t" "$scen"
        run "$t" resets resets --tunnels "$RESETS" --concurrency "$RESET_CONCURRENCY" --rounds 2 --sources 4
        stop ;;
      stall)
        for side in client upstream; do
          start "$t" "$scen"
          run "$t" "stall-$side" stall --tunnels 50 --side "$side" --seconds 40
          stop
        done ;;
      blackhole)
        ip netns list | grep -q "^$NS" || make_namespace
        start "$t" "$scen" ns
        run "$t" blackhole ns blackhole --target 127.0.0.2:443 --count 20 --seconds 30
        stop ;;
    esac
  done
done

python3 "$(dirname "$0")/attacks-summary.py" "$OUT/results.jsonl" | tee "$OUT/summary.md"
echo "results in $OUT"
