#!/usr/bin/env bash
# Soak (catalogue G1, issue 16): an agent-profile load for MINUTES minutes against one gateway,
# with tunnel churn and periodic reloads, sampling the gateway once per SAMPLE seconds:
# fds (/proc/PID/fd), RSS (VmRSS), pipes in use, timer entries, tunnels and client connections
# (/metrics). The gate: after WARMUP minutes, the drift of RSS, fds, timer entries and tunnels,
# from a least-squares line over the post-warm-up samples, is under GATE % per hour of their mean.
# Not part of .ci/run: run it by hand or nightly (docs/testing.md has the 24-hour procedure).
#
#   bash loadtest/soak.sh                                   # 30 minutes, 5 of them warm-up
#   MINUTES=1440 WARMUP=60 bash loadtest/soak.sh            # the 24-hour run
#
# Loopback only; every process is bounded in time (the gateway is stopped at the end).
# Exit status: 0 gate passed, 1 gate failed, 2 the run itself failed.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-30}
WARMUP=${WARMUP:-5}                 # minutes excluded from the fit
SAMPLE=${SAMPLE:-60}                # seconds between samples
GATE=${GATE:-1.0}                   # % per hour
AGENTS=${AGENTS:-2000}              # long-lived agent tunnels (TLS, 200 KB every 6 s each)
SIZE=${SIZE:-200000}
INTERVAL=${INTERVAL:-6}
CHURN=${CHURN:-20}                  # short tunnels opened and closed per second (churn)
RELOAD_EVERY=${RELOAD_EVERY:-300}   # seconds between SIGHUP reloads (0 = none)
ENGINE=${ENGINE:-uring}
OUT=${OUT:-loadtest/results/soak-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [ -z "${GW:-}" ]; then cargo build --release --quiet; GW=$PWD/target/release/splicegate; fi
cargo build --release --quiet --manifest-path loadtest/Cargo.toml
LOAD=$PWD/loadtest/target/release/splicegate-load
work=$(mktemp -d /tmp/splicegate-soak.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

source loadtest/lib.sh   # free_port, squid_common_conf (the cwd is the repository)

total_s=$((MINUTES * 60))
"$LOAD" sink --tls --listen 127.0.0.1:0 --seconds $((total_s + 900)) --cert-out "$work/ca.pem" \
  > "$work/sink.out" &
PIDS+=($!)
for _ in $(seq 50); do grep -q listening "$work/sink.out" 2>/dev/null && break; sleep 0.1; done
SINK=$(awk '/listening/ {print $2}' "$work/sink.out")
P=${SINK##*:}
MPORT=$(free_port)
cat > "$work/gw.yaml" <<YAML
listen: ["127.0.0.1:0"]
metrics_listen: "127.0.0.1:$MPORT"
workers: 0
engine: $ENGINE
allowed_ports: [$P]
allowed_hosts: ["sink.test"]
hosts: { sink.test: ["127.0.0.1"] }
allowed_destination_networks: ["127.0.0.0/8"]
tls: { inspect: true }
YAML
"$GW" run --config "$work/gw.yaml" --log-format json 2> "$work/gw.log" &
GWPID=$!
PIDS+=($GWPID)
for _ in $(seq 100); do grep -q '"event_id":101' "$work/gw.log" 2>/dev/null && break; sleep 0.05; done
PROXY=$(grep -m1 '"event_id":101' "$work/gw.log" | sed 's/.*"listen":"\([^"]*\)".*/\1/')
[ -n "$PROXY" ] || { echo "gateway did not start"; tail -5 "$work/gw.log"; exit 2; }
{ echo "minutes=$MINUTES warmup=$WARMUP agents=$AGENTS size=$SIZE interval=$INTERVAL churn=$CHURN/s"
  echo "reload_every=${RELOAD_EVERY}s engine=$ENGINE gw=$GW commit=$(git rev-parse --short HEAD)"
  echo "start=$(date -u +%FT%TZ) nproc=$(nproc) load=$(cut -d' ' -f1-3 /proc/loadavg)"; } | tee "$OUT/run.txt"

# The agents: one process for the whole run (TLS through the inspector, acked uploads). Its
# schedule runs 60 s past the last sample, so no sample sees the agents set up or leave.
"$LOAD" agent --proxy "$PROXY" --target sink.test:"$P" --ca "$work/ca.pem" --agents "$AGENTS" \
  --size "$SIZE" --interval "$INTERVAL" --seconds $((total_s + 60)) --sources 4 --json --quiet \
  > "$OUT/agent.json" 2> "$OUT/agent.err" &
AGENTPID=$!
PIDS+=($AGENTPID)

# Churn: CHURN short tunnels per second, in one-second batches.
(
  end=$((SECONDS + total_s))
  while [ $SECONDS -lt $end ]; do
    t0=$SECONDS
    "$LOAD" connect --proxy "$PROXY" --target sink.test:"$P" --count "$CHURN" --concurrency 2 \
      --seconds 5 --json --quiet >> "$work/churn.jsonl" 2>/dev/null || true
    [ $SECONDS -eq "$t0" ] && sleep 1
  done
) &
PIDS+=($!)

metric() { # name -> value (sum over label sets), or null
  curl -s --max-time 5 "http://127.0.0.1:$MPORT/metrics" > "$work/m.txt" 2>/dev/null || { echo null; return; }
  awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2; f = 1 } END { if (f) print s; else print "null" }' "$work/m.txt"
}

start=$(date +%s)
next_reload=$((start + RELOAD_EVERY))
reloads=0
: > "$OUT/samples.jsonl"
while :; do
  now=$(date +%s)
  elapsed=$((now - start))
  [ -d "/proc/$GWPID" ] || { echo "gateway exited during the soak"; exit 2; }
  fds=$(ls "/proc/$GWPID/fd" | wc -l)
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$GWPID/status")
  t0=$(date +%s%N)
  pipes=$(metric splicegate_pipes_in_use)
  scrape_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  timers=$(metric splicegate_timer_entries)
  tunnels=$(metric splicegate_tunnels_active)
  conns=$(metric splicegate_active_client_connections)
  errs=$(metric splicegate_errors_total)
  line="{\"t_s\":$elapsed,\"fds\":$fds,\"rss_kib\":$rss,\"pipes_in_use\":$pipes,\"timer_entries\":$timers,\"tunnels\":$tunnels,\"connections\":$conns,\"errors_total\":$errs,\"scrape_ms\":$scrape_ms,\"reloads\":$reloads,\"load1\":$(cut -d' ' -f1 /proc/loadavg)}"
  echo "$line" >> "$OUT/samples.jsonl"
  echo "$line"
  [ "$elapsed" -ge "$total_s" ] && break
  # Sleep to the next sample, reloading on the way when one is due.
  target=$((start + (elapsed / SAMPLE + 1) * SAMPLE))
  while [ "$(date +%s)" -lt "$target" ]; do
    if [ "$RELOAD_EVERY" -gt 0 ] && [ "$(date +%s)" -ge "$next_reload" ]; then
      kill -HUP "$GWPID"; reloads=$((reloads + 1)); next_reload=$((next_reload + RELOAD_EVERY))
    fi
    sleep 1
  done
done

wait "$AGENTPID" || true
restarts=$(grep -c '"event_id":400' "$work/gw.log" || true)
panics=$(grep -c 'panicked' "$work/gw.log" || true)
# The whole log runs to tens of MB: keep the count per message and the last 200 lines.
grep -o '"message":"[^"]*"' "$work/gw.log" | sort | uniq -c | sort -rn > "$OUT/gateway-messages.txt" || true
tail -n 200 "$work/gw.log" > "$OUT/gateway-tail.log" 2>/dev/null || true
python3 - "$OUT" "$WARMUP" "$GATE" "$restarts" "$panics" <<'PY' | tee "$OUT/summary.md"
import json, sys
out, warmup, gate, restarts, panics = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rows = [json.loads(l) for l in open(f"{out}/samples.jsonl") if l.strip()]
post = [r for r in rows if r["t_s"] >= warmup * 60]
def fit(key):
    pts = [(r["t_s"] / 3600.0, float(r[key])) for r in post if r.get(key) is not None]
    if len(pts) < 3:
        return None
    n = len(pts); mx = sum(x for x, _ in pts) / n; my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else 0.0
    pct = 100.0 * slope / my if my else None
    return dict(n=n, mean=my, slope_per_h=slope, pct_per_h=pct,
                min=min(y for _, y in pts), max=max(y for _, y in pts))
gated = ["rss_kib", "fds", "timer_entries", "tunnels"]
shown = gated + ["pipes_in_use", "connections", "scrape_ms"]
ok = True
print(f"# Soak: {len(rows)} samples, {len(post)} after {warmup:g} min warm-up; gate |drift| < {gate}%/h\n")
print("| gauge | mean | min | max | slope per hour | drift %/h | gate |")
print("|---|---|---|---|---|---|---|")
for k in shown:
    f = fit(k)
    if f is None:
        print(f"| {k} | - | - | - | - | - | no data |"); ok = ok and k not in gated; continue
    verdict = "-"
    if k in gated:
        passed = f["pct_per_h"] is not None and abs(f["pct_per_h"]) < gate
        verdict = "pass" if passed else "FAIL"; ok = ok and passed
    pct = "-" if f["pct_per_h"] is None else f"{f['pct_per_h']:+.2f}"
    print(f"| {k} | {f['mean']:.1f} | {f['min']:.0f} | {f['max']:.0f} | {f['slope_per_h']:+.2f} | {pct} | {verdict} |")
try:
    a = json.load(open(f"{out}/agent.json"))
    print(f"\nagents: {a['agents_up']}/{a['agents']} up, {a['uploads']} uploads, {a['throughput_mb_per_s']} MB/s acked "
          f"of {a['offered_mb_per_s']} offered, upload p99 {a['upload_latency'].get('p99_ms')} ms, errors {a['errors_total']}")
    ok = ok and a["errors_total"] == 0
except Exception as e:
    print(f"\nagents: no result ({e})"); ok = False
print(f"gateway: {restarts} worker restarts (event 400), {panics} panics; last errors_total {rows[-1].get('errors_total') if rows else '-'}")
ok = ok and restarts == 0 and panics == 0
print(f"\n**{'PASS' if ok else 'FAIL'}**")
sys.exit(0 if ok else 1)
PY
