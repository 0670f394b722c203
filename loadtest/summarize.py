#!/usr/bin/env python3
"""Medians and ratios from peers.sh's results.jsonl, as Markdown tables."""
import json
import statistics
import sys
from collections import defaultdict

TARGETS = ["direct", "uring", "epoll", "squid", "tinyproxy"]
NAMES = {"direct": "no proxy", "uring": "splicegate io_uring", "epoll": "splicegate epoll",
         "squid": "Squid", "tinyproxy": "tinyproxy"}

runs = defaultdict(list)  # (scenario, target) -> [result]
for line in open(sys.argv[1]):
    line = line.strip()
    if not line:
        continue
    r = json.loads(line)
    runs[(r["scenario"], r["target"])].append(r["result"])


def get(res, path):
    v = res
    for k in path.split("."):
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def med(scen, target, path):
    vals = [get(r, path) for r in runs.get((scen, target), [])]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return (statistics.median(vals), vals) if vals else (None, [])


def fmt(v, nd=2):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def failed(scen, target):
    rs = runs.get((scen, target), [])
    n = sum(1 for r in rs if r.get("failed"))
    return f" ({n} failed)" if n else ""


def allruns(vals, nd=2):
    return "/".join(fmt(v, nd) for v in vals)


for scen, title in [("stream1", "Stream, 1 tunnel, plain TCP"), ("stream64", "Stream, 64 tunnels, plain TCP"),
                    ("stream1tls", "Stream, 1 tunnel, TLS (sender encrypts, sink decrypts)")]:
    if not any((scen, t) in runs for t in TARGETS):
        continue
    print(f"\n### {title}\n")
    print("| target | GB/s (median) | runs | vs no proxy | gateway CPU-s/GB (median) | runs | user / sys CPU-s |")
    print("|---|---|---|---|---|---|---|")
    base, _ = med(scen, "direct", "gb_per_s")
    for t in TARGETS:
        if (scen, t) not in runs:
            continue
        g, gs = med(scen, t, "gb_per_s")
        c, cs = med(scen, t, "gateway.cpu_s_per_gb")
        u, _ = med(scen, t, "gateway.user_s")
        s, _ = med(scen, t, "gateway.sys_s")
        ratio = f"{100 * g / base:.0f}%" if g and base else "—"
        print(f"| {NAMES[t]}{failed(scen, t)} | {fmt(g, 3)} | {allruns(gs, 2)} | {ratio} | {fmt(c, 3)} | {allruns(cs, 3)} | {fmt(u)} / {fmt(s)} |")

if any(("connect", t) in runs for t in TARGETS):
    print("\n### Tunnel set-up storm (connect, 32 at a time)\n")
    print("| target | tunnels/s (median) | runs | vs Squid | CONNECT→200 p50 ms | p99 ms | p99 vs Squid | max ms | errors | gateway CPU % of a core |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    sq_rate, _ = med("connect", "squid", "tunnels_per_s")
    sq_p99, _ = med("connect", "squid", "connect_latency.p99_ms")
    for t in TARGETS:
        if ("connect", t) not in runs:
            continue
        rate, rates = med("connect", t, "tunnels_per_s")
        p50, _ = med("connect", t, "connect_latency.p50_ms")
        p99, _ = med("connect", t, "connect_latency.p99_ms")
        mx, _ = med("connect", t, "connect_latency.max_ms")
        err, _ = med("connect", t, "errors_total")
        cpu, _ = med("connect", t, "gateway.cpu_pct_of_one_core")
        vs = f"{rate / sq_rate:.2f}×" if rate and sq_rate else "—"
        vp = f"{p99 / sq_p99:.2f}×" if p99 and sq_p99 else "—"
        label = NAMES[t] + (" (TCP connect only)" if t == "direct" else "")
        print(f"| {label}{failed('connect', t)} | {fmt(rate, 0)} | {allruns(rates, 0)} | {vs} | {fmt(p50, 3)} | {fmt(p99, 3)} | {vp} | {fmt(mx, 2)} | {fmt(err, 0)} | {fmt(cpu, 0)} |")

for scen, title in [("agents5000", "Agents: 5,000 × 200 KB every 6 s at --time-scale 2 (333 MB/s offered), TLS"),
                    ("agents9000", "Agents: 9,000 × 200 KB every 6 s at --time-scale 1 (300 MB/s offered), TLS")]:
    if not any((scen, t) in runs for t in TARGETS):
        continue
    print(f"\n### {title}\n")
    print("| target | up | MB/s acked | uploads | p50 ms | p99 ms | p99 − no proxy | p99.9 ms | max ms | errors | gateway % of one core | gateway VmHWM MiB | set-up s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    base99, _ = med(scen, "direct", "upload_latency.p99_ms")
    for t in TARGETS:
        if (scen, t) not in runs:
            continue
        up, _ = med(scen, t, "agents_up")
        tp, _ = med(scen, t, "throughput_mb_per_s")
        n, _ = med(scen, t, "uploads")
        p50, _ = med(scen, t, "upload_latency.p50_ms")
        p99, p99s = med(scen, t, "upload_latency.p99_ms")
        p999, _ = med(scen, t, "upload_latency.p99_9_ms")
        mx, _ = med(scen, t, "upload_latency.max_ms")
        err, errs = med(scen, t, "errors_total")
        cpu, cpus = med(scen, t, "gateway.cpu_pct_of_one_core")
        hwm, _ = med(scen, t, "gateway.vm_hwm_kib")
        su, _ = med(scen, t, "setup_s")
        d = f"{p99 - base99:+.3f}" if p99 is not None and base99 is not None and t != "direct" else "—"
        print(f"| {NAMES[t]}{failed(scen, t)} | {fmt(up, 0)} | {fmt(tp, 1)} | {fmt(n, 0)} | {fmt(p50, 3)} | {fmt(p99, 3)} ({allruns(p99s, 2)}) | {d} | {fmt(p999, 3)} | {fmt(mx, 1)} | {fmt(err, 0)} ({allruns(errs, 0)}) | {fmt(cpu, 1)} ({allruns(cpus, 1)}) | {fmt(hwm / 1024 if hwm else None, 1)} | {fmt(su, 2)} |")
    kinds = defaultdict(int)
    for t in TARGETS:
        for r in runs.get((scen, t), []):
            for k, v in (r.get("errors") or {}).items():
                kinds[(t, k, v.get("example", ""))] += v.get("count", 0)
    if kinds:
        print("\nErrors by kind (summed over rounds): " + "; ".join(f"{NAMES[t]}: {k} × {n} (`{ex[:80]}`)" for (t, k, ex), n in kinds.items()))

for scen, title in [("idle1000", "Idle tunnels: 1,000 held, over 4 source addresses"),
                    ("idle9900", "Idle tunnels: ~9,900 held (the fd limit), over 4 source addresses")]:
    if not any((scen, t) in runs for t in TARGETS):
        continue
    print(f"\n### {title}\n")
    print("| target | up | RSS KiB/tunnel (median) | runs | fds/tunnel | threads before → after | RSS after MiB | extrapolated RSS for 100k tunnels MiB | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in TARGETS:
        if (scen, t) not in runs or t == "direct":
            continue
        up, _ = med(scen, t, "up")
        rss, rsss = med(scen, t, "gateway.rss_kib_per_tunnel")
        fds, _ = med(scen, t, "gateway.fds_per_tunnel")
        t0, _ = med(scen, t, "gateway.threads_before")
        t1, _ = med(scen, t, "gateway.threads")
        ra, _ = med(scen, t, "gateway.rss_kib")
        ex, _ = med(scen, t, "extrapolated_100k_rss_mib")
        err, _ = med(scen, t, "errors_total")
        print(f"| {NAMES[t]}{failed(scen, t)} | {fmt(up, 0)} | {fmt(rss, 2)} | {allruns(rsss, 2)} | {fmt(fds, 2)} | {fmt(t0, 0)} → {fmt(t1, 0)} | {fmt(ra / 1024 if ra else None, 1)} | {fmt(ex, 0)} | {fmt(err, 0)} |")
