//! Log and metric abuse (issue 16, test catalogue F4): what a client sends can neither split nor
//! forge a log line, in any log format, nor add a metric series.
//!
//! - CR, LF, ANSI escapes, NUL and 4 KiB of junk in the CONNECT host, the `Host` header, the
//!   user name of `Proxy-Authorization` and the SNI of a ClientHello (with `tls.inspect` on):
//!   in the `text` format (without colours, as a file or a pipe gets it), every line is one event
//!   with no control byte in it; in `json`, every line is one JSON object; in `journald`, every
//!   datagram sent to a journal socket the test serves (in a private mount namespace over
//!   `/run/systemd/journal`) is one well-formed entry. In all three, each abusive request was
//!   logged (so the check saw it), no event carries an ID the gateway does not have, and no
//!   field is longer than the 256-byte bound on peer strings allows.
//! - 100,000 CONNECTs for random host names, all refused, leave the number of series on
//!   `/metrics` unchanged (and every one of them is counted).

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use support::*;

/// The allowed name, resolved statically to the loopback upstream.
const HOST: &str = "ok.abuse.test";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";
/// What an attacker would like to see as an event of its own.
const FORGED: &str = "event_id=999 FORGED";
/// Event IDs the gateway has (src/events.rs).
const KNOWN_IDS: [u64; 12] = [100, 101, 102, 103, 104, 105, 106, 107, 400, 401, 402, 403];

/// A little PRNG (xorshift), so the junk is the same on every run.
struct Junk(u64);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `n` bytes of anything, with CR, LF, ESC sequences and NUL sprinkled in.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            match self.next() % 8 {
                0 => v.extend_from_slice(b"\r\n"),
                1 => v.extend_from_slice(b"\x1b[31m\x1b[2J"),
                2 => v.push(0),
                3 => v.extend_from_slice(FORGED.as_bytes()),
                _ => v.push((self.next() % 256) as u8),
            }
        }
        v.truncate(n);
        v
    }

    /// A host name of `n` characters a DNS name may hold.
    fn name(&mut self, n: usize) -> String {
        const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..n)
            .map(|i| {
                if i % 40 == 39 {
                    '.'
                } else {
                    CHARS[(self.next() % CHARS.len() as u64) as usize] as char
                }
            })
            .collect()
    }
}

/// A TLS 1.2 ClientHello record whose `server_name` holds `sni` as it is.
fn client_hello(sni: &[u8]) -> Vec<u8> {
    let mut ext = Vec::new();
    let name_len = sni.len() as u16;
    ext.extend_from_slice(&[0x00, 0x00]);
    ext.extend_from_slice(&(name_len + 5).to_be_bytes());
    ext.extend_from_slice(&(name_len + 3).to_be_bytes());
    ext.push(0);
    ext.extend_from_slice(&name_len.to_be_bytes());
    ext.extend_from_slice(sni);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0);
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x2f, 0xc0, 0x30]);
    body.extend_from_slice(&[0x01, 0x00]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

fn basic(user: &[u8], password: &str) -> String {
    let mut raw = user.to_vec();
    raw.push(b':');
    raw.extend_from_slice(password.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// `splicegate user add` with the password on stdin.
fn users_file(dir: &TempDir) -> PathBuf {
    let file = dir.path().join("users");
    let mut child = Command::new(bin())
        .args(["user", "add", USER, "--users-file"])
        .arg(&file)
        .args(["--pid-file", "/nonexistent/splicegate.pid"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run splicegate user add");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .expect("password");
    drop(stdin);
    let out = child.wait_with_output().expect("user add");
    assert!(out.status.success(), "user add: {out:?}");
    file
}

fn config(upstream: u16, users: &Path) -> Config {
    Config::new()
        .workers(1)
        .upstream(HOST, upstream)
        .inspect_tls(&["require_sni_match: true"])
        // Every refusal is logged: the rate limit would otherwise hide most of them.
        .raw("logging:\n  refusal_burst: 100000\n")
        .raw(&format!(
            "client_auth:\n  users_file: {}\n  realm: \"abuse\"\n",
            yq(&users.display().to_string())
        ))
}

/// One abusive request: what it is, its bytes, the ClientHello sent after a `200`, the status.
type Abuse = (&'static str, Vec<u8>, Option<Vec<u8>>, u16);

/// The abusive requests, each with the answer it must get.
fn abuses(upstream: u16) -> Vec<Abuse> {
    let mut junk = Junk(0x5eed_1e55_ab05_e001);
    let auth = format!(
        "Proxy-Authorization: Basic {}\r\n",
        basic(USER.as_bytes(), PASSWORD)
    );
    let good =
        format!("CONNECT {HOST}:{upstream} HTTP/1.1\r\nHost: {HOST}:{upstream}\r\n{auth}\r\n");
    let mut v: Vec<Abuse> = Vec::new();
    let connect = |target: &[u8], headers: &[u8]| -> Vec<u8> {
        let mut r = b"CONNECT ".to_vec();
        r.extend_from_slice(target);
        r.extend_from_slice(b" HTTP/1.1\r\n");
        r.extend_from_slice(headers);
        r.extend_from_slice(b"\r\n");
        r
    };
    // The host of the request line.
    v.push((
        "escape in the host",
        connect(b"ev\x1b[31mil\x1b[0m.example:443", auth.as_bytes()),
        None,
        400,
    ));
    v.push((
        "CR in the host",
        connect(b"evil\r.example:443", auth.as_bytes()),
        None,
        400,
    ));
    let mut target = junk.bytes(4096);
    target.retain(|b| *b != b'\n' && *b != b' ');
    target.extend_from_slice(b":443");
    v.push((
        "4 KiB of junk as the host",
        connect(&target, auth.as_bytes()),
        None,
        400,
    ));
    let long = format!("{}.example:443", junk.name(4096));
    v.push((
        "a 4 KiB host name",
        connect(long.as_bytes(), auth.as_bytes()),
        None,
        400,
    ));
    v.push((
        "a forged field as the host",
        connect(b"x\"\x20event_id=999.forged.example:443", auth.as_bytes()),
        None,
        400,
    ));
    let unlisted = format!("{}.example:443", junk.name(230));
    v.push((
        "a long host name that is not allowed",
        connect(unlisted.as_bytes(), auth.as_bytes()),
        None,
        403,
    ));
    let mut get = b"GET http://ev\x1b[2Jil/\r\x00 HTTP/1.1\r\n".to_vec();
    get.extend_from_slice(b"\r\n");
    v.push(("junk in another method's target", get, None, 405));
    // The Host header.
    let mut headers = b"Host: ok\x1b[2J\rFORGED event_id=999\r\n".to_vec();
    headers.extend_from_slice(auth.as_bytes());
    v.push((
        "escapes and CR in the Host header",
        connect(format!("{HOST}:{upstream}").as_bytes(), &headers),
        None,
        400,
    ));
    // The user name.
    for (what, user) in [
        (
            "LF, CR and escapes in the user name",
            b"bob\nevent_id=999 FORGED\x1b[31m\r".to_vec(),
        ),
        ("4 KiB of junk as the user name", {
            let mut u = junk.bytes(4096);
            u.retain(|b| *b != b':');
            u
        }),
        ("a 4 KiB printable user name", junk.name(4096).into_bytes()),
    ] {
        let h = format!("Proxy-Authorization: Basic {}\r\n", basic(&user, "pw"));
        v.push((
            what,
            connect(format!("{HOST}:{upstream}").as_bytes(), h.as_bytes()),
            None,
            407,
        ));
    }
    // The SNI (the tunnel is allowed; the ClientHello is judged).
    for (what, sni) in [
        (
            "CR, LF and escapes in the SNI",
            b"ok\r\nevent_id=999 FORGED\x1b[2J.example".to_vec(),
        ),
        ("4 KiB of junk as the SNI", junk.bytes(4096)),
        ("a 4 KiB printable SNI", junk.name(4096).into_bytes()),
        (
            "a printable SNI with a forged field",
            b"event_id=999\"forged\"=x.example".to_vec(),
        ),
    ] {
        v.push((
            what,
            good.clone().into_bytes(),
            Some(client_hello(&sni)),
            200,
        ));
    }
    v
}

/// Send one abusive request (and its ClientHello); check the answer; wait for the close.
fn send_abuse(addr: SocketAddr, what: &str, raw: &[u8], hello: Option<&[u8]>, status: u16) {
    let mut s = connect(addr);
    s.write_all(raw)
        .unwrap_or_else(|e| panic!("{what}: send: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = read_response_head(&mut s).unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_eq!(r.status, status, "{what}: {:?}", r.head);
    if let Some(h) = hello {
        s.write_all(h)
            .unwrap_or_else(|e| panic!("{what}: hello: {e}"));
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    assert_closes(&mut s, Duration::from_secs(10));
}

/// A gateway run with `--log-format FORMAT`, its stderr collected.
struct Run {
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    _dir: TempDir,
}

impl Run {
    fn start(cfg: &Config, format: &str, wrapper: &[String]) -> Run {
        let dir = TempDir::new("abuse");
        let path = dir.write("splicegate.yaml", &cfg.render());
        let mut cmd = gateway_command(wrapper);
        let mut child = cmd
            .arg("run")
            .arg("--config")
            .arg(&path)
            .args(["--log-format", format])
            .env("NO_COLOR", "1")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the gateway");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        thread::spawn(move || {
            let mut buf = [0u8; 8192];
            // Ends at EOF, when the gateway exits.
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Run {
            child,
            stderr,
            _dir: dir,
        }
    }

    fn output(&self) -> Vec<u8> {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, then wait for the exit (bounded).
    fn stop(mut self) -> Vec<u8> {
        sigterm(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader thread sees EOF once the process is gone.
        thread::sleep(Duration::from_millis(100));
        self.output()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SIGTERM through the `kill` command (the crate denies `unsafe`, tests included).
fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// Wait until `pred(text)` holds for the collected output; panics with it after 10 s.
fn wait_output(run: &Run, what: &str, pred: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + STARTUP_DEADLINE;
    loop {
        let out = run.output();
        if pred(&out) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not seen; output:\n{}",
            String::from_utf8_lossy(&out)
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `key=value` of a text line (value up to the next space).
fn text_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
}

/// The `key=value` fields of a text line as a reader of the format splits them: tokens are
/// separated by spaces outside double quotes (a backslash escapes inside them); a token with
/// `=` is a field, its value unquoted. Words of the message are not fields.
fn text_fields(line: &str) -> Vec<(String, String)> {
    let mut tokens = Vec::new();
    let (mut cur, mut quoted, mut escaped) = (String::new(), false, false);
    for c in line.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ' ' if !quoted => {
                tokens.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    tokens.push(cur);
    tokens
        .into_iter()
        .filter_map(|t| {
            let (k, v) = t.split_once('=')?;
            (!k.is_empty() && !k.contains('"'))
                .then(|| (k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect()
}

/// Every abuse sent; return how many refusals they should have logged.
fn drive(addrs: (SocketAddr, SocketAddr), upstream: u16) -> usize {
    let list = abuses(upstream);
    for (what, raw, hello, status) in &list {
        send_abuse(addrs.0, what, raw, hello.as_deref(), *status);
    }
    // Every request was refused (the SNI ones at their hello): all counted before we look.
    let want = list.len() as f64;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http_get(addrs.1, "/metrics").expect("GET /metrics");
        let refused = metric_from_text(&text, "splicegate_rejections_total");
        if refused >= want || Instant::now() >= deadline {
            assert!(
                refused >= want,
                "{refused} of {want} refusals counted:\n{text}"
            );
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    list.len()
}

/// The per-format checks on the events the abuses produced: `(event_id, fields)` of each.
fn check_events(format: &str, events: &[(u64, BTreeMap<String, String>)], abuses: usize) {
    assert!(
        events.iter().any(|(id, _)| *id == 101),
        "{format}: no start event"
    );
    let mut refusals = 0;
    for (id, fields) in events {
        assert!(
            KNOWN_IDS.contains(id),
            "{format}: an event with ID {id}: {fields:?}"
        );
        if matches!(id, 104 | 105 | 106 | 402 | 403) {
            refusals += 1;
        }
        for (k, v) in fields {
            assert!(
                !k.to_ascii_lowercase().contains("forged"),
                "{format}: a field named {k}: {fields:?}"
            );
            // 256 bytes of peer string, plus a prefix the gateway writes (a message naming the
            // SNI and the host, say).
            assert!(v.len() <= 1024, "{format}: field {k} of {} bytes", v.len());
        }
    }
    assert!(
        refusals >= abuses,
        "{format}: {refusals} refusal events for {abuses} abusive requests: {events:?}"
    );
}

/// `(listen, metrics_listen)` from the start event in text or JSON output.
fn started_addrs(format: &str, out: &[u8]) -> (SocketAddr, SocketAddr) {
    let text = String::from_utf8_lossy(out);
    let line = text
        .lines()
        .find(|l| l.contains("splicegate started"))
        .expect("start line");
    let (listen, metrics) = match format {
        "json" => {
            let v: Value = serde_json::from_str(line).expect("start event is JSON");
            (
                field_str(&v, "listen").unwrap_or_default(),
                field_str(&v, "metrics_listen").unwrap_or_default(),
            )
        }
        _ => (
            text_field(line, "listen").unwrap_or_default().to_owned(),
            text_field(line, "metrics_listen")
                .unwrap_or_default()
                .to_owned(),
        ),
    };
    (
        sockaddr(listen.trim_matches('"')),
        sockaddr(metrics.trim_matches('"')),
    )
}

#[test]
fn text_log_lines_cannot_be_split_or_forged() {
    let up = Upstream::hold();
    let dir = TempDir::new("abuse-users");
    let cfg = config(up.port(), &users_file(&dir));
    let run = Run::start(&cfg, "text", &[]);
    let out = wait_output(&run, "event 101", |o| {
        String::from_utf8_lossy(o).contains("splicegate started")
    });
    let n = drive(started_addrs("text", &out), up.port());
    let out = run.stop();
    let text = String::from_utf8(out.clone()).expect("the text log is UTF-8");
    let mut events = Vec::new();
    for line in text.lines() {
        // tracing's text format: "2026-12-03T11:03:58.005143Z  WARN target: message k=v ..."
        let ts = line.get(..20).unwrap_or_default();
        assert!(
            ts.len() == 20 && ts.as_bytes()[4] == b'-' && ts.as_bytes()[10] == b'T',
            "a line that is not an event of its own: {line:?}"
        );
        assert!(
            !line.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f),
            "a control byte in {line:?}"
        );
        let fields = text_fields(line);
        let ids: Vec<&String> = fields
            .iter()
            .filter(|(k, _)| k == "event_id")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(ids.len(), 1, "one event ID per line: {line:?}");
        let id: u64 = ids[0]
            .parse()
            .unwrap_or_else(|_| panic!("event_id of {line:?}"));
        events.push((id, fields.into_iter().collect()));
    }
    assert!(
        !text.contains('\r') && !out.contains(&0x1b),
        "CR or ESC in the log"
    );
    check_events("text", &events, n);
}

#[test]
fn json_log_lines_cannot_be_split_or_forged() {
    let up = Upstream::hold();
    let dir = TempDir::new("abuse-users");
    let cfg = config(up.port(), &users_file(&dir));
    let run = Run::start(&cfg, "json", &[]);
    let out = wait_output(&run, "event 101", |o| {
        String::from_utf8_lossy(o).contains("splicegate started")
    });
    let n = drive(started_addrs("json", &out), up.port());
    let out = run.stop();
    let text = String::from_utf8(out).expect("the JSON log is UTF-8");
    let mut events = Vec::new();
    for line in text.lines() {
        assert!(
            !line.bytes().any(|b| b < 0x20),
            "a raw control byte in {line:?}"
        );
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a line that is not one JSON object ({e}): {line:?}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let id = event_id(&v).unwrap_or_else(|| panic!("no event_id: {line}"));
        let fields = obj
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect();
        events.push((id, fields));
    }
    check_events("json", &events, n);
}

/// One journal entry of the native protocol: `NAME=value\n`, or `NAME\n` + u64 LE length +
/// value + `\n`. `None` when the datagram is not well formed.
fn journal_entry(mut d: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let nl = d.iter().position(|b| *b == b'\n')?;
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            out.push((
                String::from_utf8(line[..eq].to_vec()).ok()?,
                line[eq + 1..].to_vec(),
            ));
            d = &d[nl + 1..];
        } else {
            let name = String::from_utf8(line.to_vec()).ok()?;
            let rest = &d[nl + 1..];
            let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?) as usize;
            let value = rest.get(8..8 + len)?.to_vec();
            if rest.get(8 + len) != Some(&b'\n') {
                return None;
            }
            out.push((name, value));
            d = &rest[9 + len..];
        }
    }
    let valid = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    };
    out.iter().all(|(n, _)| valid(n)).then_some(out)
}

#[test]
fn journald_entries_cannot_be_split_or_forged() {
    let unshare = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "true"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !unshare || !Path::new("/run/systemd").is_dir() {
        eprintln!(
            "SKIP: needs `unshare --mount` (root) and /run/systemd, to serve a journal socket \
             to the gateway in a private mount namespace"
        );
        return;
    }
    let dir = TempDir::new("journal");
    let sock = UnixDatagram::bind(dir.path().join("socket")).expect("bind the journal socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /run/systemd && mkdir -p /run/systemd/journal && \
         mount --bind {} /run/systemd/journal && exec \"$0\" \"$@\"",
        dir.path().display()
    );
    let wrapper: Vec<String> = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([script])
    .collect();
    let up = Upstream::hold();
    let udir = TempDir::new("abuse-users");
    let cfg = config(up.port(), &users_file(&udir));
    let run = Run::start(&cfg, "journald", &wrapper);

    let entries = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::clone(&entries);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = Arc::clone(&stop);
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        // Bounded: ends when the test sets `stop` (or after 5 minutes).
        let deadline = Instant::now() + Duration::from_secs(300);
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                received.lock().unwrap().push(buf[..n].to_vec());
            }
        }
    });
    let started = |e: &Vec<Vec<u8>>| -> Option<(SocketAddr, SocketAddr)> {
        e.iter().filter_map(|d| journal_entry(d)).find_map(|f| {
            let get = |k: &str| {
                f.iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            };
            (get("EVENT_ID")? == "101").then_some(())?;
            Some((sockaddr(&get("LISTEN")?), sockaddr(&get("METRICS_LISTEN")?)))
        })
    };
    let deadline = Instant::now() + STARTUP_DEADLINE;
    let addrs = loop {
        if let Some(a) = started(&entries.lock().unwrap()) {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "no event 101 on the journal socket; stderr:\n{}",
            String::from_utf8_lossy(&run.output())
        );
        thread::sleep(Duration::from_millis(20));
    };
    let n = drive(addrs, up.port());
    let stderr = run.stop();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().expect("reader");
    assert!(
        stderr.is_empty(),
        "with a journal, nothing goes to stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    let datagrams = entries.lock().unwrap().clone();
    let mut events = Vec::new();
    for d in datagrams.iter().filter(|d| !d.is_empty()) {
        let fields = journal_entry(d).unwrap_or_else(|| {
            panic!(
                "a datagram that is not one journal entry: {:?}",
                String::from_utf8_lossy(d)
            )
        });
        let ids: Vec<&Vec<u8>> = fields
            .iter()
            .filter(|(n, _)| n == "EVENT_ID")
            .map(|(_, v)| v)
            .collect();
        assert_eq!(ids.len(), 1, "one EVENT_ID per entry: {fields:?}");
        assert_eq!(
            fields.iter().filter(|(n, _)| n == "MESSAGE").count(),
            1,
            "one MESSAGE per entry: {fields:?}"
        );
        let id: u64 = String::from_utf8_lossy(ids[0])
            .parse()
            .unwrap_or_else(|_| panic!("EVENT_ID {:?}", ids[0]));
        let map = fields
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        events.push((id, map));
    }
    check_events("journald", &events, n);
}

/// 100,000 refused CONNECTs for random names, over 4 client addresses: the series count of
/// `/metrics` does not move, and the refusals are all counted.
#[test]
fn random_host_names_add_no_metric_series() {
    const TOTAL: usize = 100_000;
    const CLIENTS: usize = 8;
    let _heavy = heavy_lock();
    let Some(gw) = Gateway::start(
        Config::new()
            .allow_host("allowed.abuse.test")
            .port(443)
            .limit("max_connections", "4096"),
    ) else {
        return;
    };
    let series = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.rsplit_once(' ').map_or(l, |(k, _)| k).to_owned())
            .collect()
    };
    let before = series(&gw.metrics());
    let refused_before = gw.metric_value("splicegate_rejections_total");
    let addr = gw.addr();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(240);
    let workers: Vec<_> = (0..CLIENTS)
        .map(|c| {
            thread::spawn(move || {
                let mut junk = Junk(0x1234_5678_9abc_def1 ^ (c as u64 + 1));
                let src: SocketAddr = format!("127.0.0.{}:0", 2 + c % 4).parse().expect("addr");
                let mut done = 0;
                let mut buf = [0u8; 512];
                while done < TOTAL / CLIENTS && Instant::now() < deadline {
                    let len = 1 + (junk.next() % 60) as usize;
                    let name = junk.name(len);
                    let sock =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                            .expect("socket");
                    sock.bind(&src.into()).expect("bind a loopback source");
                    if sock
                        .connect_timeout(&addr.into(), Duration::from_secs(5))
                        .is_err()
                    {
                        continue;
                    }
                    let mut s: TcpStream = sock.into();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let req = format!("CONNECT {name}.example:443 HTTP/1.1\r\n\r\n");
                    if s.write_all(req.as_bytes()).is_err() {
                        continue;
                    }
                    let mut r = BufReader::new(&s);
                    let mut status = String::new();
                    let _ = r.read_line(&mut status);
                    assert!(
                        status.starts_with("HTTP/1.1 403") || status.starts_with("HTTP/1.1 400"),
                        "{name}: {status:?}"
                    );
                    let _ = s.shutdown(std::net::Shutdown::Write);
                    // Read to the gateway's close (bounded by the read timeout).
                    while matches!((&s).read(&mut buf), Ok(n) if n > 0) {}
                    done += 1;
                }
                done
            })
        })
        .collect();
    let sent: usize = workers.into_iter().map(|w| w.join().expect("client")).sum();
    let took = started.elapsed();
    assert_eq!(sent, TOTAL, "sent {sent} in {took:?}");
    let refused = gw.wait_metric(
        "splicegate_rejections_total",
        |v| v >= refused_before + TOTAL as f64,
        IO_TIMEOUT,
    );
    assert!(
        refused >= refused_before + TOTAL as f64,
        "{refused} refusals counted"
    );
    let after = series(&gw.metrics());
    assert_eq!(before, after, "the series on /metrics changed");
    eprintln!(
        "FIGURE: {TOTAL} refused random host names in {:.1} s ({:.0}/s, {CLIENTS} clients, engine \
         {}); /metrics series {} before and after",
        took.as_secs_f64(),
        TOTAL as f64 / took.as_secs_f64(),
        test_engine(),
        before.len()
    );
}

/// The text-format reader sees a forged field outside quotes, and none inside them.
#[test]
fn text_fields_split_like_a_reader_of_the_format() {
    let forged = r#"2026-12-03T11:12:10.803788Z  WARN x: the SNI event_id=999"f"=x.example ok event_id=105 reason="sni_mismatch""#;
    let keys: Vec<String> = text_fields(forged).into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["event_id", "event_id", "reason"]);
    let quoted = r#"2026-12-03T11:12:10.803788Z  WARN x: refused event_id=105 detail="the SNI event_id=999\"f\"=x ok" user="a b""#;
    let fields = text_fields(quoted);
    assert_eq!(
        fields,
        [
            ("event_id".to_owned(), "105".to_owned()),
            (
                "detail".to_owned(),
                r#"the SNI event_id=999\"f\"=x ok"#.to_owned()
            ),
            ("user".to_owned(), "a b".to_owned()),
        ]
    );
    let entry = b"MESSAGE\n\x03\x00\x00\x00\x00\x00\x00\x00a\nb\nEVENT_ID=105\n";
    let parsed = journal_entry(entry).expect("well formed");
    assert_eq!(parsed[0], ("MESSAGE".to_owned(), b"a\nb".to_vec()));
    assert!(journal_entry(b"MESSAGE\n\x09\x00\x00\x00\x00\x00\x00\x00a\n").is_none());
    assert!(journal_entry(b"message=lower case\n").is_none());
}
