#!/usr/bin/env python3
"""Tables for loadtest/issue17.sh: medians of the rounds with every round's value, ratios against
the floor and Squid, and the syscall counts per upload and per tunnel from the strace pass.

    python3 loadtest/issue17_summary.py loadtest/results/issue17
"""
import json
import os
import statistics
import sys


def get(d, path):
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def storm_us(r):
    cpu, ok = get(r, "gateway.cpu_s"), r.get("ok")
    return cpu / ok * 1e6 if cpu is not None and ok else None


METRICS = {
    "storm": [
        ("tunnels/s", lambda r: r.get("tunnels_per_s"), 0),
        ("CONNECT->200 p99 ms", lambda r: get(r, "connect_latency.p99_ms"), 2),
        ("gateway CPU µs/tunnel", storm_us, 0),
        ("errors", lambda r: r.get("errors_total"), 0),
    ],
    "stream64": [
        ("GB/s", lambda r: r.get("gb_per_s"), 2),
        ("gateway CPU-s/GB", lambda r: r.get("gateway_cpu_s_per_gb"), 3),
    ],
    "agents": [
        ("gateway CPU-s/GB", lambda r: get(r, "gateway.cpu_s_per_gb"), 3),
        ("gateway % of a core", lambda r: get(r, "gateway.cpu_pct_of_one_core"), 1),
        ("upload p99 ms", lambda r: get(r, "upload_latency.p99_ms"), 2),
        ("set-up p99 ms", lambda r: get(r, "connect_latency.p99_ms"), 1),
        ("errors", lambda r: r.get("errors_total"), 0),
    ],
}


def fmt(v, nd):
    return "—" if v is None else f"{v:.{nd}f}"


def main():
    out = sys.argv[1]
    rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
    targets = []
    for r in rows:
        if r["target"] not in targets:
            targets.append(r["target"])
    loads = sorted({r.get("load", "") for r in rows})
    med = {}
    for scen, metrics in METRICS.items():
        print(f"\n### {scen}\n")
        print("| target | " + " | ".join(m[0] for m in metrics) + " |")
        print("|---" * (len(metrics) + 1) + "|")
        for t in targets:
            runs = [r["result"] for r in rows if r["target"] == t and r["scenario"] == scen]
            if not runs:
                continue
            cells = []
            for name, f, nd in metrics:
                vals = [f(r) for r in runs if not r.get("failed")]
                vals = [v for v in vals if v is not None]
                failed = sum(1 for r in runs if r.get("failed"))
                if not vals:
                    cells.append("—" + (f" ({failed} failed)" if failed else ""))
                    continue
                m = statistics.median(vals)
                med[(scen, t, name)] = m
                cells.append(
                    f"{fmt(m, nd)} ({'/'.join(fmt(v, nd) for v in vals)})"
                    + (f" {failed} failed" if failed else "")
                )
            print(f"| {t} | " + " | ".join(cells) + " |")
    print("\n### ratios (medians)\n")
    for eng in ("uring", "epoll"):
        for when in ("before", "after"):
            t = f"{when}-{eng}"
            parts = []
            for scen, name in (("agents", "gateway CPU-s/GB"), ("storm", "gateway CPU µs/tunnel")):
                g, fl, sq = (med.get((scen, x, name)) for x in (t, "floor", "squid"))
                if g and fl:
                    parts.append(f"{scen} {name}: {g / fl:.2f}× floor")
                if g and sq:
                    parts.append(f"Squid/{t} {sq / g:.2f}×")
            g, d = med.get(("storm", t, "CONNECT->200 p99 ms")), med.get(("storm", "direct", "CONNECT->200 p99 ms"))
            if g and d:
                parts.append(f"storm p99 {g / d:.2f}× no proxy")
            g, d = med.get(("agents", t, "upload p99 ms")), med.get(("agents", "direct", "upload p99 ms"))
            if g is not None and d is not None:
                parts.append(f"upload p99 {g - d:+.2f} ms vs no proxy")
            if parts:
                print(f"- {t}: " + "; ".join(parts))
    print(f"\nload averages seen at the runs' ends: {', '.join(loads[:3])} … {', '.join(loads[-3:])}")
    sc = os.path.join(out, "syscalls.jsonl")
    if os.path.exists(sc):
        print("\n### syscalls (strace -c -f, all gateway threads)\n")
        print("| target | per upload | splice per upload | splice EAGAIN share (agents) | io_uring_enter / epoll_wait per upload | per tunnel (storm) | io_uring_enter / epoll_wait per tunnel | top calls per tunnel |")
        print("|---|---|---|---|---|---|---|---|")
        for l in open(sc):
            if not l.strip():
                continue
            s = json.loads(l)
            t = s["target"]
            a = parse_strace(os.path.join(out, "strace", f"{t}-agents.txt"))
            b = parse_strace(os.path.join(out, "strace", f"{t}-storm.txt"))
            uploads = s["uploads_per_s"] * s["agents_window_s"]
            tunnels = s.get("storm_ok") or s["storm_tunnels"]
            def tot(d):
                return sum(c for c, _ in d.values())
            def waits(d):
                return d.get("io_uring_enter", (0, 0))[0] + d.get("epoll_wait", (0, 0))[0] + d.get("epoll_pwait", (0, 0))[0]
            sp, spe = a.get("splice", (0, 0))
            top = sorted(b.items(), key=lambda kv: -kv[1][0])[:6]
            print(
                f"| {t} | {tot(a) / uploads:.2f} | {sp / uploads:.2f} | "
                f"{(spe / sp * 100 if sp else 0):.0f}% | {waits(a) / uploads:.2f} | "
                f"{tot(b) / tunnels:.1f} | {waits(b) / tunnels:.2f} | "
                + ", ".join(f"{k} {c / tunnels:.2f}" for k, (c, _) in top)
                + " |"
            )


def parse_strace(path):
    """{syscall: (calls, errors)} from an `strace -c` table."""
    d = {}
    if not os.path.exists(path):
        return d
    for line in open(path):
        p = line.split()
        if len(p) < 5 or not p[0].replace(".", "").isdigit() or p[-1] == "total":
            continue
        try:
            calls = int(p[3])
        except ValueError:
            continue
        errors = int(p[4]) if len(p) == 6 else 0
        d[p[-1]] = (calls, errors)
    return d


if __name__ == "__main__":
    main()
