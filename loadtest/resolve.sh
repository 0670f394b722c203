#!/usr/bin/env bash
# Set-up comparison across the three ways a destination name is resolved, in one run, with Squid
# beside (issue 11). For each path splicegate and Squid each run, on a fresh process:
#   - agents: 1,000 agents, 200 KB every 0.6 s (TLS), set up 64 at a time;
#   - storm:  5,000 tunnels (CONNECT -> 200 -> close), 1,000 at a time.
# The paths (the CONNECT target names differ, nothing else):
#   map   - mapped.test, in the config's `hosts:` map (Squid: in its hosts_file; it has no map);
#   file  - hostsfile.test, in a hosts file (resolver.hosts_file / Squid's hosts_file);
#   dns   - dns.test, answered by `splicegate-load dns` on 127.0.0.153:53 with a 60 s TTL
#           (resolver.nameservers / Squid's dns_nameservers, which cannot take another port).
# The DNS server's query count is printed per path and target. Loopback only; every run is
# bounded in count and time. Needs root (port 53, Squid's proxy user). Results: $OUT/results.jsonl
# and $OUT/summary.md.
#
#   bash loadtest/resolve.sh
#   AGENT_SECONDS=10 bash loadtest/resolve.sh       # shorter schedule, same agent/tunnel counts
set -euo pipefail
cd "$(dirname "$0")/.."
AGENTS=${AGENTS:-1000}
AGENT_SECONDS=${AGENT_SECONDS:-20}
STORM=${STORM:-5000}
STORM_CONCURRENCY=${STORM_CONCURRENCY:-1000}
TARGETS=${TARGETS:-"uring squid"}
PATHS=${PATHS:-"map file dns"}
DNS_ADDR=${DNS_ADDR:-127.0.0.153}
OUT=${OUT:-loadtest/results/resolve-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if ! command -v squid >/dev/null; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q squid
  rm -f /usr/sbin/policy-rc.d
fi
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl stop squid 2>/dev/null || true; systemctl disable squid 2>/dev/null || true
else
  service squid stop >/dev/null 2>&1 || true
fi

if [ -z "${GW:-}" ]; then cargo build --release --quiet; GW=$PWD/target/release/splicegate; fi
cargo build --release --quiet --manifest-path loadtest/Cargo.toml
LOAD=$PWD/loadtest/target/release/splicegate-load
work=$(mktemp -d /tmp/splicegate-resolve.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/peer" && chown proxy:proxy "$work/peer" 2>/dev/null || chmod 777 "$work/peer"
PEERPID=""; SINKPID=""; DNSPID=""
cleanup() {
  [ -n "$PEERPID" ] && kill "$PEERPID" 2>/dev/null && wait "$PEERPID" 2>/dev/null || true
  [ -n "$SINKPID" ] && kill "$SINKPID" 2>/dev/null || true
  [ -n "$DNSPID" ] && kill "$DNSPID" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

source loadtest/lib.sh   # free_port, squid_connect_head, squid_common_conf (the cwd is the repository)

$LOAD sink --tls --listen 127.0.0.1:0 --seconds 7200 --cert-out "$work/ca.pem" > "$work/sink.out" &
SINKPID=$!
$LOAD dns --listen "$DNS_ADDR:53" --name dns.test --address 127.0.0.1 --ttl 60 --seconds 7200 \
  --count-file "$work/dns.count" > "$work/dns.out" &
DNSPID=$!
for _ in $(seq 50); do
  grep -q listening "$work/sink.out" 2>/dev/null && grep -q listening "$work/dns.out" 2>/dev/null && break
  sleep 0.1
done
grep -q listening "$work/dns.out" || { echo "the DNS server did not start (port 53 needs root)"; exit 1; }
SINK=$(awk '/listening/ {print $2}' "$work/sink.out")
P=${SINK##*:}
printf '127.0.0.1 mapped.test\n127.0.0.1 hostsfile.test\n' > "$work/hosts"
# Squid's hosts file: the names it must not ask DNS for (it has no `hosts:` map of its own).
cp "$work/hosts" "$work/squid-hosts"

name_of() { case $1 in map) echo mapped.test ;; file) echo hostsfile.test ;; dns) echo dns.test ;; esac; }

start_target() { # target -> PROXY, PEERPID
  PROXY=""; PEERPID=""
  case $1 in
    uring|epoll)
      # Only the `hosts:` map holds mapped.test: the gateway's hosts file does not list it.
      printf '127.0.0.1 hostsfile.test\n' > "$work/gw-hosts"
      cat > "$work/gw.yaml" <<YAML
listen: ["127.0.0.1:0"]
metrics_listen: "127.0.0.1:0"
workers: 0
engine: $1
allowed_ports: [$P]
allowed_hosts: ["mapped.test", "hostsfile.test", "dns.test"]
hosts: { mapped.test: ["127.0.0.1"] }
allowed_destination_networks: ["127.0.0.0/8"]
resolver:
  nameservers: ["$DNS_ADDR:53"]
  hosts_file: "$work/gw-hosts"
tls: { inspect: false }
YAML
      $GW run --config "$work/gw.yaml" --log-format json 2> "$work/gw.log" &
      PEERPID=$!
      for _ in $(seq 200); do grep -q '"event_id":101' "$work/gw.log" 2>/dev/null && break; sleep 0.05; done
      PROXY=$(grep '"event_id":101' "$work/gw.log" | sed 's/.*"listen":"\([^"]*\)".*/\1/')
      METRICS=$(grep '"event_id":101' "$work/gw.log" | sed 's/.*"metrics_listen":"\([^"]*\)".*/\1/') ;;
    squid)
      local port; port=$(free_port)
      {
        squid_connect_head "$port" "$P"
        squid_common_conf "$work"
        cat <<CONF
hosts_file $work/squid-hosts
dns_nameservers $DNS_ADDR
CONF
      } > "$work/squid.conf"
      squid -N -f "$work/squid.conf" > "$work/peer/squid.out" 2>&1 &
      PEERPID=$!; PROXY=127.0.0.1:$port; METRICS="" ;;
  esac
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/${PROXY%:*}/${PROXY##*:}") 2>/dev/null && break; sleep 0.1
  done
}

stop_target() {
  if [ -n "$PEERPID" ]; then kill -TERM "$PEERPID" 2>/dev/null || true; wait "$PEERPID" 2>/dev/null || true; fi
  PEERPID=""
}

dns_total() { awk 'NR == 1 {print $1}' "$work/dns.count"; }

run() { # path target scenario args...
  local path=$1 target=$2 scen=$3; shift 3
  local name; name=$(name_of "$path")
  local before; before=$(dns_total)
  local line
  if line=$(timeout 240 "$LOAD" "$@" --proxy "$PROXY" --target "$name:$P" --ca "$work/ca.pem" \
      --gateway-pid "$PEERPID" --sources 4 --json --quiet 2> "$work/err"); then :; else
    line="{\"failed\":true,\"stderr\":$(tail -c 400 "$work/err" | python3 -c 'import json,sys;print(json.dumps(sys.stdin.read()))')}"
  fi
  local queries=$(( $(dns_total) - before ))
  local alive=true
  kill -0 "$PEERPID" 2>/dev/null || alive=false
  local cache="{}"
  if [ -n "${METRICS:-}" ] && [ "$alive" = true ]; then
    cache=$( (curl -s "http://$METRICS/metrics" || true) | python3 -c '
import json, re, sys
out = {}
for l in sys.stdin:
    m = re.match(r"splicegate_dns_(cache|queries)_total\{\w+=\"(\w+)\"\} (\S+)", l)
    if m and float(m.group(3)):
        out[m.group(1) + ":" + m.group(2)] = float(m.group(3))
print(json.dumps(out))')
  fi
  echo "{\"path\":\"$path\",\"target\":\"$target\",\"scenario\":\"$scen\",\"alive\":$alive,\"dns_queries\":$queries,\"gateway_dns\":$cache,\"result\":$line}" >> "$OUT/results.jsonl"
  printf '%-5s %-6s %-8s queries=%-4s %s\n' "$path" "$target" "$scen" "$queries" "$(echo "$line" | head -c 200)"
}

{ echo "nproc: $(nproc)"; echo "uname -r: $(uname -r)"; grep -m1 'model name' /proc/cpuinfo;
  squid -v | head -1; git rev-parse --short HEAD; date -u;
  echo "agents $AGENTS x 200 KB every 0.6 s for ${AGENT_SECONDS} s; storm $STORM at $STORM_CONCURRENCY"; } > "$OUT/machine.txt"
cat "$OUT/machine.txt"

# Paths interleaved within each target pair, each run on a fresh process (a cold cache).
for path in $PATHS; do
  for t in $TARGETS; do
    start_target "$t"
    run "$path" "$t" agents agent --agents "$AGENTS" --interval 0.6 --seconds "$AGENT_SECONDS" --concurrency 64
    stop_target
    start_target "$t"
    run "$path" "$t" storm connect --count "$STORM" --concurrency "$STORM_CONCURRENCY" --seconds 60
    stop_target
  done
done

cp "$work/dns.count" "$OUT/dns-queries.txt"   # totals, then per name and type, for the whole run
python3 - "$OUT/results.jsonl" <<'PY' | tee "$OUT/summary.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def get(path, target, scen):
    for r in rows:
        if (r["path"], r["target"], r["scenario"]) == (path, target, scen):
            return r
def fmt(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"
names = {"uring": "splicegate io_uring", "epoll": "splicegate epoll", "squid": "Squid"}
print("| path | target | agents connect p99 ms | agents all-up s | agents errors | storm connect p99 ms | storm all-up s | storm errors | DNS queries (agents + storm) | p99 / all-up vs `hosts:` (agents; storm) |")
print("|---|---|---|---|---|---|---|---|---|---|")
targets = sorted({r["target"] for r in rows}, key=lambda t: list(names).index(t) if t in names else 9)
for t in targets:
    base_a, base_s = get("map", t, "agents"), get("map", t, "storm")
    for path in ["map", "file", "dns"]:
        a, s = get(path, t, "agents"), get(path, t, "storm")
        if not a or not s:
            continue
        ar, sr = a["result"], s["result"]
        a99 = ar.get("connect_latency", {}).get("p99_ms")
        s99 = sr.get("connect_latency", {}).get("p99_ms")
        aup, sup = ar.get("setup_s"), sr.get("seconds")
        aerr, serr = ar.get("errors_total", "fail"), sr.get("errors_total", "fail")
        if not a.get("alive", True):
            aerr = f"{aerr} (process exited)"
        if not s.get("alive", True):
            serr = f"{serr} (process exited)"
        ratio = "—"
        if base_a and base_s and path != "map":
            ba, bs = base_a["result"], base_s["result"]
            try:
                ratio = "{:.2f}× / {:.2f}×; {:.2f}× / {:.2f}×".format(
                    a99 / ba["connect_latency"]["p99_ms"], aup / ba["setup_s"],
                    s99 / bs["connect_latency"]["p99_ms"], sup / bs["seconds"])
            except (TypeError, KeyError, ZeroDivisionError):
                pass
        print(f"| {path} | {names.get(t, t)} | {fmt(a99, 3)} | {fmt(aup)} | {aerr} | {fmt(s99, 3)} | {fmt(sup)} | {serr} | {a['dns_queries']} + {s['dns_queries']} | {ratio} |")
PY
echo "results in $OUT"
