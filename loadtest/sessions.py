#!/usr/bin/env python3
"""`splicegate sessions` with N idle tunnels open (BENCHMARKS.md, "Live view").

Starts the gateway (--bin, default target/release/splicegate) on loopback with its own admin
socket, a holding upstream in this process, opens N tunnels through it (each CONNECT answered
200, then idle), and times the admin socket's `sessions` answer and the CLI's
`sessions --json`, each several times. Needs RLIMIT_NOFILE >= 2N+500 here and in the gateway
(run as root, or raise the hard limit first). Everything stays on 127.0.0.1.

    python3 loadtest/sessions.py --tunnels 9000 --engine uring
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/splicegate")
    ap.add_argument("--tunnels", type=int, default=9000)
    ap.add_argument("--engine", default="uring")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * a.tunnels + 500:
        sys.exit(f"RLIMIT_NOFILE hard limit {hard} is below {2 * a.tunnels + 500}")

    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(4096)
    up_port = upstream.getsockname()[1]
    held_up = []

    def accept_loop():
        # Bounded by the process: the thread is a daemon and N accepts are expected.
        while len(held_up) < a.tunnels:
            c, _ = upstream.accept()
            held_up.append(c)

    threading.Thread(target=accept_loop, daemon=True).start()

    d = tempfile.mkdtemp(prefix="splicegate-sessions-")
    sock = os.path.join(d, "admin.sock")
    cfg = os.path.join(d, "splicegate.yaml")
    with open(cfg, "w") as f:
        f.write(
            f'listen: ["127.0.0.1:0"]\nmetrics_listen: null\nworkers: {a.workers}\n'
            f"engine: {a.engine}\nallowed_ports: [{up_port}]\n"
            f'allowed_hosts: ["hold.test"]\nhosts: {{"hold.test": ["127.0.0.1"]}}\n'
            f'allowed_destination_networks: ["127.0.0.0/8"]\n'
            f'admin_socket: "{sock}"\nlimits:\n  max_connections: {2 * a.tunnels}\n'
            f"tls:\n  inspect: false\n"
        )
    gw = subprocess.Popen(
        [a.bin, "run", "--config", cfg, "--log-format", "json", "--no-watch"],
        stderr=subprocess.PIPE,
        text=True,
    )
    listen = None
    deadline = time.time() + 20
    while time.time() < deadline and listen is None:
        line = gw.stderr.readline()
        if not line:
            break
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("event_id") == 101:
            listen = ev["listen"].split(",")[0]
    if listen is None:
        gw.kill()
        sys.exit("the gateway did not start")
    threading.Thread(target=lambda: [None for _ in gw.stderr], daemon=True).start()
    host, port = listen.rsplit(":", 1)

    t0 = time.time()
    clients = []
    for _ in range(a.tunnels):
        c = socket.create_connection((host, int(port)), timeout=10)
        c.sendall(f"CONNECT hold.test:{up_port} HTTP/1.1\r\nHost: hold.test:{up_port}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.recv(4096)
            if not chunk:
                sys.exit("tunnel refused: connection closed")
            head += chunk
        if not head.startswith(b"HTTP/1.1 200"):
            sys.exit(f"tunnel refused: {head[:80]!r}")
        clients.append(c)
    opened = time.time() - t0

    def ask():
        s = socket.socket(socket.AF_UNIX)
        t = time.perf_counter()
        s.connect(sock)
        s.sendall(b'{"cmd":"sessions"}\n')
        buf = []
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            buf.append(b)
        took = time.perf_counter() - t
        s.close()
        ans = json.loads(b"".join(buf))
        assert ans["ok"] and len(ans["sessions"]) == a.tunnels, "every tunnel listed"
        return took, sum(len(x) for x in buf)

    direct = [ask() for _ in range(a.runs)]
    cli = []
    for _ in range(a.runs):
        t = time.perf_counter()
        out = subprocess.run(
            [a.bin, "sessions", "--json", "--config", cfg], capture_output=True, check=True
        )
        cli.append(time.perf_counter() - t)
        assert len(json.loads(out.stdout)) == a.tunnels
    t = time.perf_counter()
    subprocess.run([a.bin, "sessions", "--config", cfg], capture_output=True, check=True)
    table = time.perf_counter() - t

    secs = [x[0] for x in direct]
    print(
        json.dumps(
            {
                "tunnels": a.tunnels,
                "engine": a.engine,
                "workers": a.workers,
                "open_s": round(opened, 2),
                "answer_bytes": direct[0][1],
                "socket_answer_s": {
                    "median": round(statistics.median(secs), 4),
                    "min": round(min(secs), 4),
                    "max": round(max(secs), 4),
                },
                "cli_json_s": {"median": round(statistics.median(cli), 4), "max": round(max(cli), 4)},
                "cli_table_s": round(table, 4),
            }
        )
    )
    gw.terminate()
    gw.wait(timeout=60)


if __name__ == "__main__":
    main()
