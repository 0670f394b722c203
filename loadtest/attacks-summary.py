#!/usr/bin/env python3
"""Markdown tables from loadtest/attacks.sh results (one JSON line per run)."""
import json
import sys


def g(d, *path, default="-"):
    for p in path:
        if not isinstance(d, dict) or p not in d or d[p] is None:
            return default
        d = d[p]
    return d


def mib(kib):
    return "-" if kib in ("-", None) else f"{kib / 1024:.1f}"


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    by = {}
    for r in rows:
        by.setdefault(r["scenario"], []).append(r)
    for scen, runs in by.items():
        print(f"\n### {scen}\n")
        if scen == "slowloris":
            print("| target | load before / after | answered after (from established) min / p50 / max s | from dial p50 / max s | statuses | ListenOverflows / ListenDrops | RSS growth MiB | KiB/conn | /metrics p50 / p99 / max ms (samples, > 100 ms) | probe p50 / p99 before -> during ms (ratio) | busiest worker CPU % whole / peak 1 s | gateway CPU % | canaries p50 / max s | accept queue peak |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in runs:
                x = r["result"]
                a = g(x, "answered_after")
                dl = g(x, "answered_after_dial")
                lq = g(x, "listen_queue_counters", default={})
                m = g(x, "during", "metrics_scrape", default={})
                w = g(x, "during", "busiest_worker", default={})
                s = lambda d, k: "-" if g(d, k) == "-" else f"{g(d, k) / 1000:.2f}"
                print(f"| {r['target']} | {r['load1_before']} / {g(r, 'load1_after')} "
                      f"| {s(a, 'min_ms')} / {s(a, 'p50_ms')} / {s(a, 'max_ms')} | {s(dl, 'p50_ms')} / {s(dl, 'max_ms')} "
                      f"| {g(x,'statuses')} | {g(lq, 'ListenOverflows')} / {g(lq, 'ListenDrops')} "
                      f"| {mib(g(x,'during','rss_kib_growth'))} | {g(x,'rss_kib_per_connection_at_peak')} "
                      f"| {g(m,'p50_ms')} / {g(m,'p99_ms')} / {g(m,'max_ms')} ({g(m,'count')}, {g(x,'during','metrics_scrape_over_100ms')}) "
                      f"| {g(x,'probe_before','p50_ms')} / {g(x,'probe_before','p99_ms')} -> {g(x,'probe_during','p50_ms')} / {g(x,'probe_during','p99_ms')} ({g(x,'probe_p99_ratio')}) "
                      f"| {g(w,'whole_pct')} / {g(w,'peak_1s_pct')} | {g(x,'gateway_cpu_pct_of_one_core')} "
                      f"| {s(g(x, 'canary_answered_after', default={}), 'p50_ms')} / {s(g(x, 'canary_answered_after', default={}), 'max_ms')} "
                      f"| {g(x, 'during', 'accept_queue_peak')} |")
        elif scen == "flood":
            print("| target | load | statuses | answered at once p50 / p99 / max ms | open conns peak (gauge) | fds peak | CPU % opening / holding+trickle / whole | RSS growth MiB |")
            print("|---|---|---|---|---|---|---|---|")
            for r in runs:
                x = r["result"]
                a = g(x, "answered_at_once")
                print(f"| {r['target']} | {r['load1_before']} | {g(x,'statuses')} | {g(a,'p50_ms')} / {g(a,'p99_ms')} / {g(a,'max_ms')} "
                      f"| {g(x,'during','active_connections_peak')} | {g(x,'during','fds_peak')} "
                      f"| {g(x,'gateway_cpu_pct_opening')} / {g(x,'gateway_cpu_pct_holding_with_trickle')} / {g(x,'gateway_cpu_pct_whole')} "
                      f"| {mib(g(x,'during','rss_kib_growth'))} |")
        elif scen == "resets":
            print("| target | load | round | established | client reset seen by upstream p99 / max ms | upstream reset seen by client p99 / max ms | >100 ms | not seen in 5 s | fds before -> after | RSS MiB before -> after | pipes / timers / tunnels / conns after |")
            print("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in runs:
                x = r["result"]
                b = g(x, "state_before", default={})
                for rd in g(x, "rounds", default=[]):
                    s = rd["state_after"]
                    print(f"| {r['target']} | {r['load1_before']} | {rd['round']} | {rd['established']}/{rd['tunnels']} "
                          f"| {g(rd,'client_reset_seen_by_upstream','p99_ms')} / {g(rd,'client_reset_seen_by_upstream','max_ms')} "
                          f"| {g(rd,'upstream_reset_seen_by_client','p99_ms')} / {g(rd,'upstream_reset_seen_by_client','max_ms')} "
                          f"| {rd['seen_after_over_100ms']} | {rd['resets_never_seen']} | {g(b,'fds')} -> {g(s,'fds')} | {mib(g(b,'rss_kib'))} -> {mib(g(s,'rss_kib'))} "
                          f"| {g(s,'pipes_in_use')} / {g(s,'timer_entries')} / {g(s,'tunnels_active')} / {g(s,'active_client_connections')} |")
        elif scen.startswith("stall"):
            print("| target | load | up | bytes in flight per tunnel (MiB) | ended after bytes stopped min / max s | not ended | RSS min / peak MiB | pipes in use peak |")
            print("|---|---|---|---|---|---|---|---|")
            for r in runs:
                x = r["result"]
                e = g(x, "ended_after_bytes_stopped")
                print(f"| {r['target']} | {r['load1_before']} | {g(x,'up')} | {g(x,'bytes_per_tunnel',default=0)/2**20:.1f} "
                      f"| {g(e,'min_ms',default=0)/1000:.2f} / {g(e,'max_ms',default=0)/1000:.2f} | {g(x,'not_ended')} "
                      f"| {mib(g(x,'during','rss_kib_min'))} / {mib(g(x,'during','rss_kib_peak'))} | {g(x,'during','pipes_in_use_peak')} |")
        elif scen == "blackhole":
            print("| target | load | answers | answered after min / max s | healthy p99 before / during ms | healthy max during ms | healthy errors |")
            print("|---|---|---|---|---|---|---|")
            for r in runs:
                x = r["result"]
                a = g(x, "answered_after")
                print(f"| {r['target']} | {r['load1_before']} | {g(x,'statuses')} | {g(a,'min_ms',default=0)/1000:.2f} / {g(a,'max_ms',default=0)/1000:.2f} "
                      f"| {g(x,'healthy_before','p99_ms')} / {g(x,'healthy_during','p99_ms')} | {g(x,'healthy_during','max_ms')} | {g(x,'healthy_errors')} |")
        for r in runs:
            if g(r, "result", "failed", default=False):
                print(f"\n{r['target']} {scen}: FAILED: {g(r,'result','stderr')}")


if __name__ == "__main__":
    main(sys.argv[1])
