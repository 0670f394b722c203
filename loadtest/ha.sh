#!/usr/bin/env bash
# Behind HAProxy, in network namespaces: the 5,000-tunnel set-up storm and the 1,000-agent profile
# through HAProxy (deploy/haproxy.cfg itself, only its stats socket moved) to one gateway and to
# two, beside the same load straight to one gateway and to no proxy at all, in one run: the four
# targets interleaved in each round, ROUNDS rounds. Same lab as tests/ha.rs: agent 10.0.0.101,
# balancer 10.0.0.2, gateways 10.0.0.11 and .12, sink 10.0.0.200, one bridged /24 that exists only
# in the namespaces this script creates (and deletes on exit). Every run is bounded in count and
# time. Needs root, ip (iproute2) and haproxy (scripts/install-test-deps.sh).
#
#   bash loadtest/ha.sh                                   # ROUNDS=3
#   ROUNDS=1 AGENT_SECONDS=5 OUT=/tmp/ha bash loadtest/ha.sh
#   GW=/tmp/sg/target/release/splicegate bash loadtest/ha.sh   # a given binary
#   TW_REUSE=0 bash loadtest/ha.sh                            # the kernel's tcp_tw_reuse default
#
# Results: $OUT/results.jsonl (one JSON object per run, with the CPU-seconds HAProxy and each
# gateway used during it) and $OUT/summary.md (medians, every round in brackets).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
AGENTS=${AGENTS:-1000}
AGENT_SECONDS=${AGENT_SECONDS:-10}
TIME_SCALE=${TIME_SCALE:-2}
CONNECTS=${CONNECTS:-5000}
ENGINE=${ENGINE:-auto}
TARGETS=${TARGETS:-"none gateway haproxy1 haproxy2"}
OUT=${OUT:-loadtest/results/ha-$(date +%Y%m%d-%H%M%S)}
[ "$(id -u)" -eq 0 ] || { echo "ha.sh: network namespaces need root" >&2; exit 1; }
for tool in ip haproxy python3; do
  command -v "$tool" >/dev/null || { echo "ha.sh: $tool missing (scripts/install-test-deps.sh)" >&2; exit 1; }
done
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd); : > "$OUT/results.jsonl"

if [ -z "${GW:-}" ]; then cargo build --release --quiet; GW=$PWD/target/release/splicegate; fi
cargo build --release --quiet --manifest-path loadtest/Cargo.toml
LOAD=$PWD/loadtest/target/release/splicegate-load
work=$(mktemp -d /tmp/splicegate-ha.XXXXXX)
NS=sgbench$$
HOSTS="agent balancer gw1 gw2 upstream"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  for h in $HOSTS switch; do ip netns del "$NS-$h" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the lab: one bridge, a veth per host, created straight into the namespaces --------------
ip netns add "$NS-switch"
ip -n "$NS-switch" link add br0 type bridge
ip -n "$NS-switch" link set br0 up
i=0
addr_of() { case $1 in agent) echo 10.0.0.101;; balancer) echo 10.0.0.2;; gw1) echo 10.0.0.11;; gw2) echo 10.0.0.12;; upstream) echo 10.0.0.200;; esac; }
for h in $HOSTS; do
  ip netns add "$NS-$h"
  ip link add name eth0 netns "$NS-$h" type veth peer name "p$i" netns "$NS-switch"
  ip -n "$NS-switch" link set "p$i" master br0
  ip -n "$NS-switch" link set "p$i" up
  ip -n "$NS-$h" link set lo up
  # A new namespace reuses TIME_WAIT ports for loopback only (tcp_tw_reuse=2): every set-up
  # dials the one sink address, so repeated storms would fill the ephemeral range and measure
  # the kernel's port search (BENCHMARKS.md, "Behind HAProxy"). TW_REUSE=0 keeps the default.
  if [ "${TW_REUSE:-1}" = 1 ]; then ip netns exec "$NS-$h" sysctl -qw net.ipv4.tcp_tw_reuse=1; fi
  ip -n "$NS-$h" addr add "$(addr_of "$h")/24" dev eth0
  ip -n "$NS-$h" link set eth0 up
  i=$((i + 1))
done
in_ns() { local h=$1; shift; ip netns exec "$NS-$h" "$@"; }

# --- sink, gateways, balancers -------------------------------------------------------------------
# Started with `ip netns exec` itself (it execs), never through a shell function: $! must be
# the program's own pid, for the CPU figures and for the clean-up.
ip netns exec "$NS-upstream" "$LOAD" sink --tls --listen 10.0.0.200:443 --seconds 3600 --threads 2 \
  --cert-out "$work/ca.pem" > "$work/sink.out" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$work/sink.out" 2>/dev/null && break; sleep 0.05; done

declare -A GWPID
for g in gw1 gw2; do
  a=$(addr_of "$g")
  # 8080: PROXY protocol from the balancer (deploy/haproxy.cfg sends v2); 8090: plain, for the
  # run straight to one gateway.
  cat > "$work/$g.yaml" <<YAML
listen:
  - {address: "$a:8080", proxy_protocol: true, proxy_from: ["10.0.0.2/32"]}
  - "$a:8090"
health_listen: "$a:8081"
metrics_listen: null
takeover_socket: null
workers: 0
engine: $ENGINE
allowed_ports: [443]
allowed_hosts: ["sink.test"]
hosts: { sink.test: ["10.0.0.200"] }
allowed_destination_networks: ["10.0.0.0/24"]
limits: { drain_timeout: 10s, drain_grace: 3s }
YAML
  ip netns exec "$NS-$g" "$GW" run --config "$work/$g.yaml" --log-format json 2> "$work/$g.log" &
  GWPID[$g]=$!; PIDS+=($!)
  for _ in $(seq 100); do grep -q '"event_id":101' "$work/$g.log" 2>/dev/null && break; sleep 0.05; done
  grep -q '"event_id":101' "$work/$g.log" || { echo "ha.sh: $g did not start:"; cat "$work/$g.log"; exit 1; } >&2
done

# haproxy2: deploy/haproxy.cfg as it is; haproxy1: the same with gw2's server line removed, on
# port 8082 beside it. Both check the gateways all the time, as a real pair would.
sed "s#/run/haproxy/splicegate.sock#$work/h2.sock#" deploy/haproxy.cfg > "$work/h2.cfg"
sed -e "s#/run/haproxy/splicegate.sock#$work/h1.sock#" -e '/^    server gw2 /d' \
  -e 's/^    bind :8080$/    bind :8082/' deploy/haproxy.cfg > "$work/h1.cfg"
grep -q 'bind :8082' "$work/h1.cfg" && ! grep -q 'server gw2' "$work/h1.cfg" \
  || { echo "ha.sh: deploy/haproxy.cfg no longer has the shape this script edits" >&2; exit 1; }
declare -A HAPID
for h in h1 h2; do
  in_ns balancer haproxy -c -q -f "$work/$h.cfg"
  ip netns exec "$NS-balancer" haproxy -db -f "$work/$h.cfg" 2> "$work/$h.log" &
  HAPID[$h]=$!; PIDS+=($!)
done
sleep 3  # rise 2 x inter 1s: every server UP

cpu() { # CPU-seconds (user+sys) of a pid so far
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
snapshot() { echo "$(cpu "${HAPID[h1]}") $(cpu "${HAPID[h2]}") $(cpu "${GWPID[gw1]}") $(cpu "${GWPID[gw2]}")"; }

run() { # round target scenario load-args...
  local round=$1 target=$2 scen=$3; shift 3
  local net
  case $target in
    none) net=(--direct --sink 10.0.0.200:443) ;;
    gateway) net=(--proxy 10.0.0.11:8090 --target sink.test:443) ;;
    haproxy1) net=(--proxy 10.0.0.2:8082 --target sink.test:443) ;;
    haproxy2) net=(--proxy 10.0.0.2:8080 --target sink.test:443) ;;
  esac
  local before after line wall t0
  before=$(snapshot); t0=$(date +%s.%N)
  if line=$(timeout 180 ip netns exec "$NS-agent" "$LOAD" "$@" "${net[@]}" --ca "$work/ca.pem" \
      --json --quiet 2> "$work/err"); then :; else line='{"failed":true}'; fi
  after=$(snapshot); wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
  local cpu_json
  cpu_json=$(python3 -c 'import sys
b=[float(x) for x in sys.argv[1].split()]; a=[float(x) for x in sys.argv[2].split()]
d=[round(y-x,3) for x,y in zip(b,a)]
print("{\"haproxy\": %s, \"gw1\": %s, \"gw2\": %s, \"wall_s\": %s}" % (d[0] + d[1], d[2], d[3], sys.argv[3]))' \
    "$before" "$after" "$wall")
  echo "{\"round\":$round,\"target\":\"$target\",\"scenario\":\"$scen\",\"cpu_s\":$cpu_json,\"result\":$line}" >> "$OUT/results.jsonl"
  printf '%-3s %-9s %-7s %s\n' "r$round" "$target" "$scen" "$(echo "$line" | head -c 160)"
}

for r in $(seq "$ROUNDS"); do
  for t in $TARGETS; do
    run "$r" "$t" storm connect --count "$CONNECTS" --concurrency 32 --seconds 30
    run "$r" "$t" agents agent --agents "$AGENTS" --time-scale "$TIME_SCALE" --seconds "$AGENT_SECONDS"
  done
done

python3 - "$OUT/results.jsonl" > "$OUT/summary.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(vals):
    vals = [v for v in vals if v is not None]
    return (statistics.median(vals), vals) if vals else (None, [])
def cell(vals, fmt="{:.1f}"):
    m, v = med(vals)
    if m is None:
        return "—"
    return fmt.format(m) + " (" + "/".join(fmt.format(x) for x in v) + ")"
targets = []
for r in rows:
    if r["target"] not in targets:
        targets.append(r["target"])
names = {"none": "no proxy", "gateway": "one gateway, no balancer",
         "haproxy1": "HAProxy -> one gateway", "haproxy2": "HAProxy -> two gateways"}
print("### Set-up storm: %s tunnels, 32 at a time\n" % next((r["result"].get("count") for r in rows if r["scenario"] == "storm" and "count" in r["result"]), "?"))
print("| target | tunnels/s | CONNECT->200 p50 ms | p99 ms | errors | HAProxy CPU-s | gateway CPU-s (gw1 + gw2) |")
print("|---|---|---|---|---|---|---|")
for t in targets:
    rs = [r for r in rows if r["target"] == t and r["scenario"] == "storm"]
    res = [r["result"] for r in rs]
    print("| %s | %s | %s | %s | %s | %s | %s |" % (
        names.get(t, t),
        cell([x.get("tunnels_per_s") for x in res], "{:.0f}"),
        cell([x.get("connect_latency", {}).get("p50_ms") for x in res], "{:.2f}"),
        cell([x.get("connect_latency", {}).get("p99_ms") for x in res], "{:.2f}"),
        cell([x.get("errors_total", 1 if x.get("failed") else None) for x in res], "{:.0f}"),
        cell([r["cpu_s"]["haproxy"] for r in rs], "{:.2f}"),
        cell([r["cpu_s"]["gw1"] + r["cpu_s"]["gw2"] for r in rs], "{:.2f}")))
a0 = next((r["result"] for r in rows if r["scenario"] == "agents" and "agents" in r["result"]), {})
print("\n### Agents: %s x %s bytes every %s s at --time-scale %s, TLS\n" % (
    a0.get("agents"), a0.get("size"), a0.get("interval_s"), a0.get("time_scale")))
print("| target | up | uploads | upload p50 ms | p99 ms | set-up p99 ms | errors | HAProxy % of a core | gateways % of a core (gw1 + gw2) |")
print("|---|---|---|---|---|---|---|---|---|")
for t in targets:
    rs = [r for r in rows if r["target"] == t and r["scenario"] == "agents"]
    res = [r["result"] for r in rs]
    pct = lambda k: [100 * (r["cpu_s"][k] if k != "gw" else r["cpu_s"]["gw1"] + r["cpu_s"]["gw2"]) / float(r["cpu_s"]["wall_s"]) for r in rs]
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        names.get(t, t),
        cell([x.get("agents_up") for x in res], "{:.0f}"),
        cell([x.get("uploads") for x in res], "{:.0f}"),
        cell([x.get("upload_latency", {}).get("p50_ms") for x in res], "{:.2f}"),
        cell([x.get("upload_latency", {}).get("p99_ms") for x in res], "{:.2f}"),
        cell([x.get("connect_latency", {}).get("p99_ms") for x in res], "{:.1f}"),
        cell([x.get("errors_total", 1 if x.get("failed") else None) for x in res], "{:.0f}"),
        cell(pct("haproxy"), "{:.1f}"),
        cell(pct("gw"), "{:.1f}")))
PY
cat "$OUT/summary.md"
