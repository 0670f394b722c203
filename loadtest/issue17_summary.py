#!/usr/bin/env python3
"""Tables for loadtest/issue17.sh: medians of the rounds with every round's value, the goal table
of issue 17 (ratios against the floor, Squid and no proxy, each with its threshold and pass/miss),
hosts file against the `hosts:` map, and the syscall counts per upload and per tunnel from the
strace pass. The output is markdown to paste into BENCHMARKS.md.

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


# (column, value of one run, decimals). For `direct` the storm's "TCP+CONNECT+200" is the TCP
# connect alone and the handshake is TCP connect + TLS + the first round trip.
METRICS = {
    "storm": [
        ("tunnels/s", lambda r: r.get("tunnels_per_s"), 0),
        ("TCP+CONNECT+200 p50 ms", lambda r: get(r, "open_latency.p50_ms"), 2),
        ("TCP+CONNECT+200 p99 ms", lambda r: get(r, "open_latency.p99_ms"), 2),
        ("handshake done p50 ms", lambda r: get(r, "handshake_latency.p50_ms"), 2),
        ("handshake done p99 ms", lambda r: get(r, "handshake_latency.p99_ms"), 2),
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

# Issue 17's goals: (column, threshold as printed, passes(value)); values from goal_values().
GOALS = [
    ("agents CPU-s/GB ÷ floor", "≤ 1.25×", lambda v: v <= 1.25),
    ("Squid ÷ target, agents CPU-s/GB", "≥ 2×", lambda v: v >= 2.0),
    ("upload p99 − no proxy", "≤ 1 ms", lambda v: v <= 1.0),
    ("agent errors", "0", lambda v: v == 0),
    ("storm CPU/tunnel ÷ floor", "≤ 1.5×", lambda v: v <= 1.5),
    ("Squid ÷ target, storm CPU/tunnel", "≥ 2×", lambda v: v >= 2.0),
    ("handshake p99 ÷ no proxy", "≤ 1.2×", lambda v: v <= 1.2),
    ("storm errors", "0", lambda v: v == 0),
]

NAMES = {
    "direct": "no proxy",
    "floor": "floor (IP literal)",
    "squid": "Squid (hosts_file)",
}


def label(t):
    if t in NAMES:
        return NAMES[t]
    when, _, eng = t.rpartition("-")
    eng = {"uring": "io_uring"}.get(eng, eng)
    if when == "after-map":
        return f"after, {eng}, `hosts:` map"
    return f"{when}, {eng}, hosts file"


def fmt(v, nd):
    return "—" if v is None else f"{v:.{nd}f}"


def main():
    out = sys.argv[1]
    rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
    targets = []
    for r in rows:
        if r["target"] not in targets:
            targets.append(r["target"])
    loads = [r.get("load", "") for r in rows]
    med = {}
    failed_runs = {}
    errors_sum = {}
    for scen, metrics in METRICS.items():
        print(f"\n### {scen}\n")
        print("| target | " + " | ".join(m[0] for m in metrics) + " |")
        print("|---" * (len(metrics) + 1) + "|")
        for t in targets:
            runs = [r["result"] for r in rows if r["target"] == t and r["scenario"] == scen]
            if not runs:
                continue
            failed = sum(1 for r in runs if r.get("failed"))
            failed_runs[(scen, t)] = failed
            errors_sum[(scen, t)] = sum(r.get("errors_total") or 0 for r in runs if not r.get("failed"))
            cells = []
            for name, f, nd in metrics:
                vals = [f(r) for r in runs if not r.get("failed")]
                vals = [v for v in vals if v is not None]
                if not vals:
                    cells.append("—" + (f" ({failed} failed)" if failed else ""))
                    continue
                m = statistics.median(vals)
                med[(scen, t, name)] = m
                cells.append(
                    f"{fmt(m, nd)} ({'/'.join(fmt(v, nd) for v in vals)})"
                    + (f" {failed} failed" if failed else "")
                )
            print(f"| {label(t)} | " + " | ".join(cells) + " |")

    print("\n### issue 17 goals (medians of the rounds)\n")
    print(
        "Storm \"connect p99\" is the client's whole set-up: TCP connect to the handshake done at "
        "both ends (first application-data round trip), against the same with no proxy. Errors "
        "are summed over the rounds; a run that failed counts as a miss. Pass/miss is given for "
        "splicegate's rows only.\n"
    )
    print("| target | " + " | ".join(f"{c} ({th})" for c, th, _ in GOALS) + " | goals met |")
    print("|---" * (len(GOALS) + 2) + "|")
    for t in targets:
        if t == "direct":
            continue
        judged = t.startswith(("before-", "after-"))
        vals = goal_values(t, med, errors_sum, failed_runs)
        cells, met, known = [], 0, 0
        for (col, th, ok), (v, text) in zip(GOALS, vals):
            if v is None:
                cells.append(text or "—")
                continue
            if judged:
                known += 1
                good = ok(v)
                met += good
                cells.append(f"{text} {'pass' if good else '**miss**'}")
            else:
                cells.append(text)
        verdict = f"{met}/{len(GOALS)}" + ("" if known == len(GOALS) else f" ({len(GOALS) - known} unknown)") if judged else ""
        print(f"| {label(t)} | " + " | ".join(cells) + f" | {verdict} |")

    # The issue: "If the floor itself is far above Squid/2, say so with the figures."
    for scen, name, unit in (("agents", "gateway CPU-s/GB", "CPU-s/GB"), ("storm", "gateway CPU µs/tunnel", "µs/tunnel")):
        fl, sq = med.get((scen, "floor", name)), med.get((scen, "squid", name))
        if fl and sq:
            where = "above" if fl > sq / 2 else "below"
            print(f"\n- {scen}: floor {fl:.3g} {unit}, Squid/2 {sq / 2:.3g}: the floor is {where} Squid/2 ({fl / (sq / 2):.2f}×).", end="")
    print()

    pairs = [(f"after-{e}", f"after-map-{e}") for e in ("uring", "epoll")]
    lines = []
    for hf, hm in pairs:
        parts = []
        for scen, name, nd in (("storm", "gateway CPU µs/tunnel", 0), ("storm", "handshake done p99 ms", 2),
                               ("agents", "gateway CPU-s/GB", 3), ("agents", "upload p99 ms", 2)):
            a, b = med.get((scen, hf, name)), med.get((scen, hm, name))
            if a is not None and b:
                parts.append(f"{scen} {name} {fmt(a, nd)} vs {fmt(b, nd)} ({a / b:.2f}×)")
        if parts:
            lines.append(f"- {label(hf)} vs `hosts:` map: " + "; ".join(parts))
    if lines:
        print("\n### hosts file against the `hosts:` map (after; medians; ratio = hosts file ÷ map)\n")
        print("\n".join(lines))
    if loads:
        print(f"\nload averages (1/5/15 min) at the end of each run: first {loads[0]}, last {loads[-1]}, "
              f"highest 1-min {max(float(l.split()[0]) for l in loads if l):.2f}")
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
                f"| {label(t)} | {tot(a) / uploads:.2f} | {sp / uploads:.2f} | "
                f"{(spe / sp * 100 if sp else 0):.0f}% | {waits(a) / uploads:.2f} | "
                f"{tot(b) / tunnels:.1f} | {waits(b) / tunnels:.2f} | "
                + ", ".join(f"{k} {c / tunnels:.2f}" for k, (c, _) in top)
                + " |"
            )


def goal_values(t, med, errors_sum, failed_runs):
    """(value, text) per GOALS entry for target t; value None when a figure is missing."""
    def ratio(scen, name, num, den):
        a, b = med.get((scen, num, name)), med.get((scen, den, name))
        return (a / b, f"{a / b:.2f}×") if a is not None and b else (None, "—")

    def errs(scen):
        if (scen, t) not in errors_sum:
            return None, "—"
        n, f = errors_sum[(scen, t)], failed_runs.get((scen, t), 0)
        return n + f, f"{n}" + (f" ({f} runs failed)" if f else "")

    up_t, up_d = med.get(("agents", t, "upload p99 ms")), med.get(("agents", "direct", "upload p99 ms"))
    up = (up_t - up_d, f"{up_t - up_d:+.2f} ms") if up_t is not None and up_d is not None else (None, "—")
    return [
        ratio("agents", "gateway CPU-s/GB", t, "floor"),
        ratio("agents", "gateway CPU-s/GB", "squid", t),
        up,
        errs("agents"),
        ratio("storm", "gateway CPU µs/tunnel", t, "floor"),
        ratio("storm", "gateway CPU µs/tunnel", "squid", t),
        ratio("storm", "handshake done p99 ms", t, "direct"),
        errs("storm"),
    ]


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
