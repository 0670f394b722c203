#!/usr/bin/env python3
"""Login storm: what client authentication costs and whether it stalls tunnels.

Starts splicegate (target/release) with client_auth on loopback, a sink and an echo upstream, then:
  1. 2,000 sequential CONNECTs with the right credentials (cached after the first) vs the same
     without client_auth: connect latency p50/p99.
  2. A tunnel streaming for 6 s; during seconds 2-4, 400 CONNECTs with wrong passwords from 16
     threads (uncached: each costs the verifier an argon2 check). Reports the stream's
     throughput before/during/after and the longest gap between two reads.
Loopback only; bounded in count and time.
"""
import base64, json, os, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GW = os.environ.get("GW", os.path.join(ROOT, "target/release/splicegate"))
work = tempfile.mkdtemp(prefix="splicegate-storm-")

def upstream(kind):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0)); s.listen(1024)
    def serve():
        while True:
            c, _ = s.accept()
            def h(c):
                try:
                    if kind == "source":
                        buf = b"x" * 65536
                        while True:
                            c.sendall(buf)
                    while c.recv(65536):
                        pass
                except OSError:
                    pass
            threading.Thread(target=h, args=(c,), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()
    return s.getsockname()[1]

def start_gateway(port, auth):
    users = os.path.join(work, "users")
    if auth and not os.path.exists(users):
        p = subprocess.run([GW, "user", "add", "alice", "--users-file", users, "--pid-file", "/nonexistent"],
                           input=b"right password\n", capture_output=True)
        assert p.returncode == 0, p
    cfg = os.path.join(work, "gw.yaml")
    with open(cfg, "w") as f:
        f.write(f'listen: ["127.0.0.1:0"]\nmetrics_listen: null\nworkers: 1\nallowed_ports: [{port[0]}, {port[1]}]\n'
                'allowed_hosts: ["127.0.0.1"]\nallowed_destination_networks: ["127.0.0.0/8"]\ntls: { inspect: false }\n')
        if auth:
            f.write(f'client_auth:\n  users_file: "{users}"\n  max_failures: 1000000\n')
    log = open(os.path.join(work, "gw.log"), "w+")
    p = subprocess.Popen([GW, "run", "--config", cfg, "--log-format", "json", "--no-watch"], stderr=log)
    for _ in range(200):
        log.seek(0)
        for line in log:
            if '"event_id":101' in line:
                return p, json.loads(line)["listen"]
        time.sleep(0.05)
    raise SystemExit("gateway did not start")

def connect(addr, target, cred=None):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    h = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if cred:
        h += "Proxy-Authorization: Basic " + base64.b64encode(cred.encode()).decode() + "\r\n"
    s.sendall((h + "\r\n").encode())
    r = b""
    while b"\r\n\r\n" not in r:
        d = s.recv(4096)
        if not d:
            break
        r += d
    return s, r.split(b" ", 2)[1] if r else b"closed"

def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(len(xs) * p))]

sink, source = upstream("sink"), upstream("source")
for auth in (False, True):
    p, addr = start_gateway((sink, source), auth)
    lat = []
    for _ in range(2000):
        t = time.perf_counter()
        s, code = connect(addr, f"127.0.0.1:{sink}", "alice:right password" if auth else None)
        lat.append((time.perf_counter() - t) * 1e3)
        assert code == b"200", code
        s.close()
    print(f"{'auth (cached)' if auth else 'no auth':14s} 2000 CONNECTs: p50 {pct(lat, .5):.3f} ms  p99 {pct(lat, .99):.3f} ms")
    if auth:
        s, code = connect(addr, f"127.0.0.1:{source}", "alice:right password")
        assert code == b"200"
        got = [0, 0, 0]; gap = [0.0, 0.0, 0.0]; start = time.time(); last = start
        storm = []
        def attack():
            for _ in range(25):
                t = time.perf_counter()
                c, code = connect(addr, f"127.0.0.1:{sink}", "alice:guess")
                storm.append(((time.perf_counter() - t) * 1e3, code))
                c.close()
        threads = [threading.Thread(target=attack) for _ in range(16)]
        started = False
        while time.time() - start < 6:
            d = s.recv(1 << 20)
            now = time.time()
            phase = 0 if now - start < 2 else (1 if now - start < 4 else 2)
            if phase == 1 and not started:
                for t in threads: t.start()
                started = True
            got[phase] += len(d); gap[phase] = max(gap[phase], now - last); last = now
        for t in threads: t.join()
        codes = {}
        for _, c in storm: codes[c] = codes.get(c, 0) + 1
        print(f"stream during a storm of {len(storm)} wrong logins ({codes}):")
        for i, name in enumerate(["before", "during", "after"]):
            print(f"  {name:7s} {got[i] / 2 / 1e9:.2f} GB/s, longest gap between reads {gap[i] * 1e3:.1f} ms")
        print(f"  wrong-login answer latency p50 {pct([x for x, _ in storm], .5):.1f} ms  p99 {pct([x for x, _ in storm], .99):.1f} ms")
    p.terminate(); p.wait()
