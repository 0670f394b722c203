//! Test inputs for the inspector: the captured fixtures in `tests/fixtures/tls/`, a builder
//! for synthetic ClientHellos and ServerHellos, and the helpers that capture real handshakes from
//! `openssl s_client` / `s_server` (used to regenerate the fixtures and by the live test).
//!
//! The capture helpers start their own child processes and kill them by handle when done.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::TlsSettings;
use crate::proto::connect::Host;

use super::{Inspector, Verdict};

/// The fixture directory.
pub(super) const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

/// Why a capture (or the test PKI) could not be made with openssl.
#[derive(Debug, thiserror::Error)]
pub(super) enum CaptureError {
    #[error("openssl {args}: {source}")]
    Spawn {
        args: String,
        source: std::io::Error,
    },
    #[error("openssl {args}: {stderr}")]
    Openssl { args: String, stderr: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("s_client {args} closed after {bytes} bytes")]
    Closed { args: String, bytes: usize },
    #[error("no complete ClientHello from s_client {args}")]
    NoHello { args: String },
    #[error("s_server has no stdout")]
    NoStdout,
    #[error("{line:?}: {source}")]
    AcceptLine {
        line: String,
        source: std::net::AddrParseError,
    },
    #[error("s_server exited before listening")]
    NoListen,
    #[error("accept: {0}")]
    Accept(#[source] std::io::Error),
    #[error("relay thread panicked")]
    Panicked,
}

/// How long a capture may take.
const CAPTURE_DEADLINE: Duration = Duration::from_secs(10);

/// A fixture file's bytes.
pub(super) fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(FIXTURES).join(name);
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) => panic!("fixture {}: {e}", path.display()),
    }
}

/// Both directions of a captured exchange: `(client to server, server to client)`.
pub(super) fn exchange(name: &str) -> (Vec<u8>, Vec<u8>) {
    (
        fixture(&format!("{name}.c2s")),
        fixture(&format!("{name}.s2c")),
    )
}

/// A CONNECT host name.
pub(super) fn name(host: &str) -> Host {
    Host::Name(host.to_owned())
}

/// An inspector for `host` with `settings` (which must have `inspect: true`).
pub(super) fn new_inspector(settings: &TlsSettings, host: &Host) -> Inspector {
    match Inspector::new(Arc::new(settings.clone()), host) {
        Some(inspector) => inspector,
        None => panic!("inspect is off"),
    }
}

/// The verdict for `client` then `server`, each fed in one call.
pub(super) fn judge(settings: &TlsSettings, host: &Host, client: &[u8], server: &[u8]) -> Verdict {
    let mut inspector = new_inspector(settings, host);
    let verdict = inspector.client_bytes(client);
    if verdict.is_final() {
        return verdict;
    }
    inspector.server_bytes(server)
}

/// Length of the records holding the first complete handshake message of `stream` (the
/// ClientHello), or `None` if it is not complete yet.
pub(super) fn first_message_records(stream: &[u8]) -> Option<usize> {
    let mut message = Vec::new();
    let mut at = 0;
    while let Some(header) = stream.get(at..at + 5) {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let body = stream.get(at + 5..at + 5 + len)?;
        at += 5 + len;
        message.extend_from_slice(body);
        if let Some(&[_, a, b, c]) = message.get(..4) {
            let need = 4 + (usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c));
            if message.len() >= need {
                return Some(at);
            }
        }
    }
    None
}

/// Splits a handshake `message` into records of at most `fragment` bytes.
pub(super) fn records(message: &[u8], fragment: usize, record_version: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 5 * (message.len() / fragment + 1));
    for chunk in message.chunks(fragment) {
        out.push(22);
        out.extend_from_slice(&record_version.to_be_bytes());
        out.extend_from_slice(&u16_len(chunk.len()).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// The handshake messages of a stream of handshake records, joined (test inputs only).
pub(super) fn unrecord(stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(header) = stream.get(at..at + 5) {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        out.extend_from_slice(&stream[at + 5..at + 5 + len]);
        at += 5 + len;
    }
    out
}

fn u16_len(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

fn u24_len(n: usize) -> [u8; 3] {
    let [_, a, b, c] = u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes();
    [a, b, c]
}

/// A synthetic ClientHello, shaped like a modern client's: 31 cipher suites, null compression
/// and the usual extensions around the ones that matter.
#[derive(Debug, Clone)]
pub(super) struct HelloBuilder {
    pub(super) legacy_version: u16,
    pub(super) record_version: u16,
    /// The raw `host_name`; `None` = no `server_name` extension.
    pub(super) sni: Option<Vec<u8>>,
    /// `supported_versions` entries; `None` = no such extension.
    pub(super) versions: Option<Vec<u16>>,
    /// More extensions, placed before the others (a `key_share` here replaces the default one).
    pub(super) extra: Vec<(u16, Vec<u8>)>,
    /// Leave out the extension block altogether (an old TLS 1.0 client).
    pub(super) no_extensions: bool,
}

impl HelloBuilder {
    /// TLS 1.2 and 1.3 offered, SNI `a.example`.
    pub(super) fn new() -> HelloBuilder {
        HelloBuilder {
            legacy_version: 0x0303,
            record_version: 0x0301,
            sni: Some(b"a.example".to_vec()),
            versions: Some(vec![0x0304, 0x0303]),
            extra: Vec::new(),
            no_extensions: false,
        }
    }

    pub(super) fn sni(mut self, sni: Option<&str>) -> HelloBuilder {
        self.sni = sni.map(|s| s.as_bytes().to_vec());
        self
    }

    pub(super) fn versions(mut self, versions: Option<&[u16]>) -> HelloBuilder {
        self.versions = versions.map(<[u16]>::to_vec);
        self
    }

    pub(super) fn extension(mut self, code: u16, data: Vec<u8>) -> HelloBuilder {
        self.extra.push((code, data));
        self
    }

    /// The `server_name` extension data for one host name.
    pub(super) fn sni_data(host: &[u8]) -> Vec<u8> {
        let mut data = u16_len(host.len() + 3).to_be_bytes().to_vec();
        data.push(0);
        data.extend_from_slice(&u16_len(host.len()).to_be_bytes());
        data.extend_from_slice(host);
        data
    }

    /// The handshake message, header included.
    pub(super) fn message(&self) -> Vec<u8> {
        let mut body = self.legacy_version.to_be_bytes().to_vec();
        body.extend_from_slice(&[0x5a; 32]);
        body.push(32);
        body.extend_from_slice(&[0xa5; 32]);
        let suites: Vec<u8> = (0..31u16)
            .flat_map(|i| (0xc000 + i).to_be_bytes())
            .collect();
        body.extend_from_slice(&u16_len(suites.len()).to_be_bytes());
        body.extend_from_slice(&suites);
        body.extend_from_slice(&[1, 0]);
        if !self.no_extensions {
            let mut extensions = Vec::new();
            let mut push = |code: u16, data: &[u8]| {
                extensions.extend_from_slice(&code.to_be_bytes());
                extensions.extend_from_slice(&u16_len(data.len()).to_be_bytes());
                extensions.extend_from_slice(data);
            };
            for (code, data) in &self.extra {
                push(*code, data);
            }
            if let Some(host) = &self.sni {
                push(0, &HelloBuilder::sni_data(host));
            }
            push(11, &[3, 0, 1, 2]);
            push(10, &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]);
            push(35, &[]);
            push(
                16,
                &[0, 9, 8, b'h', b't', b't', b'p', b'/', b'1', b'.', b'1'],
            );
            push(22, &[]);
            push(23, &[]);
            push(13, &[0, 4, 0x04, 0x03, 0x08, 0x04]);
            if let Some(versions) = &self.versions {
                let mut data = vec![u8::try_from(versions.len() * 2).unwrap_or(u8::MAX)];
                data.extend(versions.iter().flat_map(|v| v.to_be_bytes()));
                push(43, &data);
            }
            push(45, &[1, 1]);
            if !self.extra.iter().any(|(code, _)| *code == 51) {
                let mut share = vec![0, 36, 0x00, 0x1d, 0, 32];
                share.extend_from_slice(&[0x42; 32]);
                push(51, &share);
            }
            body.extend_from_slice(&u16_len(extensions.len()).to_be_bytes());
            body.extend_from_slice(&extensions);
        }
        let mut message = vec![1];
        message.extend_from_slice(&u24_len(body.len()));
        message.extend_from_slice(&body);
        message
    }

    /// The message in one record.
    pub(super) fn bytes(&self) -> Vec<u8> {
        records(&self.message(), 1 << 14, self.record_version)
    }
}

/// A ServerHello record selecting `legacy` (and `selected` through `supported_versions`).
pub(super) fn server_hello(legacy: u16, selected: Option<u16>) -> Vec<u8> {
    let mut body = legacy.to_be_bytes().to_vec();
    body.extend_from_slice(&[0x11; 32]);
    body.push(0);
    body.extend_from_slice(&[0xc0, 0x2f, 0]);
    if legacy != 0x0300 {
        // SSL 3.0 has no extensions.
        let mut extensions = vec![0xff, 0x01, 0, 1, 0];
        if let Some(v) = selected {
            extensions.extend_from_slice(&[0, 43, 0, 2]);
            extensions.extend_from_slice(&v.to_be_bytes());
        }
        body.extend_from_slice(&u16_len(extensions.len()).to_be_bytes());
        body.extend_from_slice(&extensions);
    }
    let mut message = vec![2];
    message.extend_from_slice(&u24_len(body.len()));
    message.extend_from_slice(&body);
    records(&message, 1 << 14, 0x0303)
}

/// Whether `openssl` can be run; prints why not.
pub(super) fn openssl_available() -> bool {
    match Command::new("openssl").arg("version").output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            eprintln!("skipping: `openssl version` failed: {:?}", out.status);
            false
        }
        Err(e) => {
            eprintln!("skipping: openssl is not available: {e}");
            false
        }
    }
}

/// Runs `openssl` with `args` in `dir` and waits for it.
fn openssl(dir: &Path, args: &[&str]) -> Result<(), CaptureError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CaptureError::Spawn {
            args: format!("{args:?}"),
            source: e,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CaptureError::Openssl {
            args: format!("{args:?}"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// A fresh scratch directory.
pub(super) fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "splicegate-tls-{tag}-{}-{:?}",
        std::process::id(),
        thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("{}: {e}", dir.display());
    }
    dir
}

/// Makes a test PKI in `dir`: `ca.pem`, a server certificate `server.pem`/`server.key` for
/// `a.example`, and client certificates `agent01` (`/O=Contoso/CN=agent01`) and `intruder`
/// (`/CN=intruder`), all P-256 and signed by the CA.
pub(super) fn make_pki(dir: &Path) -> Result<(), CaptureError> {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=Test CA",
        "-days",
        "3650",
    ]);
    openssl(dir, &ca)?;
    for (name, subject) in [
        ("server", "/CN=a.example"),
        ("agent01", "/O=Contoso/CN=agent01"),
        ("intruder", "/CN=intruder"),
    ] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
        openssl(dir, &req)?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "3650",
            ],
        )?;
    }
    Ok(())
}

/// Kills a child by its handle when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Captures the records holding the ClientHello `openssl s_client <args>` sends to a plain TCP
/// listener that never answers.
pub(super) fn capture_client_hello(args: &[&str]) -> Result<Vec<u8>, CaptureError> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _client = Reaped(child);
    let mut conn = accept_within(&listener, CAPTURE_DEADLINE)?;
    let deadline = Instant::now() + CAPTURE_DEADLINE;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    conn.set_read_timeout(Some(Duration::from_millis(100)))?;
    while Instant::now() < deadline {
        if let Some(len) = first_message_records(&got) {
            got.truncate(len);
            return Ok(got);
        }
        match conn.read(&mut buf) {
            Ok(0) => {
                return Err(CaptureError::Closed {
                    args: format!("{args:?}"),
                    bytes: got.len(),
                })
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(CaptureError::NoHello {
        args: format!("{args:?}"),
    })
}

/// Runs `openssl s_server <server_args>` and `openssl s_client <client_args>` in `dir` with a
/// relay between them, and returns what each side sent: `(client to server, server to
/// client)`. The client's stdin is empty, so it closes once the handshake is done.
pub(super) fn capture_exchange(
    dir: &Path,
    server_args: &[&str],
    client_args: &[&str],
) -> Result<(Vec<u8>, Vec<u8>), CaptureError> {
    let mut server = Command::new("openssl");
    server
        .args(["s_server", "-accept", "127.0.0.1:0", "-naccept", "1"])
        .args(server_args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut server = Reaped(server.spawn()?);
    let server_addr = accept_line(&mut server.0)?;
    let relay = TcpListener::bind("127.0.0.1:0")?;
    let relay_addr = relay.local_addr()?;
    let client = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(relay_addr.to_string())
        .args(client_args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _client = Reaped(client);
    let downstream = accept_within(&relay, CAPTURE_DEADLINE)?;
    let upstream = TcpStream::connect(server_addr)?;
    let deadline = Instant::now() + CAPTURE_DEADLINE;
    let c2s = pump(&downstream, &upstream, deadline)?;
    let s2c = pump(&upstream, &downstream, deadline)?;
    let c2s = c2s.join().map_err(|_| CaptureError::Panicked)??;
    let s2c = s2c.join().map_err(|_| CaptureError::Panicked)??;
    Ok((c2s, s2c))
}

type Pump = thread::JoinHandle<Result<Vec<u8>, CaptureError>>;

/// Copies `from` to `to` until end of stream (or the deadline), recording the bytes; closes the
/// write side of `to` at the end.
fn pump(from: &TcpStream, to: &TcpStream, deadline: Instant) -> Result<Pump, CaptureError> {
    let mut from = from.try_clone()?;
    let mut to = to.try_clone()?;
    from.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 16384];
        while Instant::now() < deadline {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    seen.extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if is_timeout(&e) => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        Ok(seen)
    }))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Accepts one connection before `limit` passes.
fn accept_within(listener: &TcpListener, limit: Duration) -> Result<TcpStream, CaptureError> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false)?;
                return Ok(conn);
            }
            Err(e) if is_timeout(&e) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(CaptureError::Accept(e)),
        }
    }
}

/// Reads `s_server`'s stdout up to its `ACCEPT 127.0.0.1:<port>` line.
fn accept_line(server: &mut Child) -> Result<SocketAddr, CaptureError> {
    let out = server.stdout.take().ok_or(CaptureError::NoStdout)?;
    let mut lines = BufReader::new(out).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(addr) = line.strip_prefix("ACCEPT ") {
            let addr = match addr.trim().parse() {
                Ok(a) => a,
                Err(e) => {
                    return Err(CaptureError::AcceptLine {
                        line: line.clone(),
                        source: e,
                    })
                }
            };
            // Keep draining stdout so that s_server never blocks on a full pipe.
            thread::spawn(move || lines.for_each(drop));
            return Ok(addr);
        }
    }
    Err(CaptureError::NoListen)
}

/// The exchanges captured as fixtures: (name, s_server arguments, s_client arguments).
pub(super) const EXCHANGES: &[(&str, &[&str], &[&str])] = &[
    (
        "tls12_agent01",
        &[
            "-tls1_2",
            "-Verify",
            "1",
            "-CAfile",
            "ca.pem",
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ],
        &[
            "-tls1_2",
            "-servername",
            "a.example",
            "-cert",
            "agent01.pem",
            "-key",
            "agent01.key",
        ],
    ),
    (
        "tls12_intruder",
        &[
            "-tls1_2",
            "-Verify",
            "1",
            "-CAfile",
            "ca.pem",
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ],
        &[
            "-tls1_2",
            "-servername",
            "a.example",
            "-cert",
            "intruder.pem",
            "-key",
            "intruder.key",
        ],
    ),
    (
        "tls12_nocert",
        &[
            "-tls1_2",
            "-Verify",
            "1",
            "-CAfile",
            "ca.pem",
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ],
        &["-tls1_2", "-servername", "a.example"],
    ),
    (
        "tls12_norequest",
        &["-tls1_2", "-cert", "server.pem", "-key", "server.key"],
        &[
            "-tls1_2",
            "-servername",
            "a.example",
            "-cert",
            "agent01.pem",
            "-key",
            "agent01.key",
        ],
    ),
    (
        "downgrade_agent01",
        &[
            "-tls1_2",
            "-Verify",
            "1",
            "-CAfile",
            "ca.pem",
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ],
        &[
            "-servername",
            "a.example",
            "-cert",
            "agent01.pem",
            "-key",
            "agent01.key",
        ],
    ),
    (
        "tls13_agent01",
        &[
            "-Verify",
            "1",
            "-CAfile",
            "ca.pem",
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ],
        &[
            "-servername",
            "a.example",
            "-cert",
            "agent01.pem",
            "-key",
            "agent01.key",
        ],
    ),
];

/// The ClientHellos captured as fixtures: (file name, s_client arguments).
pub(super) const HELLOS: &[(&str, &[&str])] = &[
    (
        "hello_tls10.bin",
        &[
            "-tls1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-servername",
            "a.example",
        ],
    ),
    (
        "hello_tls11.bin",
        &[
            "-tls1_1",
            "-cipher",
            "DEFAULT:@SECLEVEL=0",
            "-servername",
            "a.example",
        ],
    ),
    ("hello_tls12.bin", &["-tls1_2", "-servername", "a.example"]),
    ("hello_tls13.bin", &["-tls1_3", "-servername", "a.example"]),
    ("hello_default.bin", &["-servername", "a.example"]),
    ("hello_nosni.bin", &["-noservername"]),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Rewrites `tests/fixtures/tls/` from live openssl runs. Run it explicitly:
    /// `cargo test --lib regenerate_fixtures -- --ignored`.
    #[test]
    #[ignore = "rewrites tests/fixtures/tls from live openssl runs; run by hand"]
    fn regenerate_fixtures() {
        assert!(openssl_available(), "openssl is needed");
        for (file, args) in HELLOS {
            match capture_client_hello(args) {
                Ok(bytes) => write(file, &bytes),
                Err(e) => panic!("{file}: {e}"),
            }
        }
        let dir = scratch_dir("fixtures");
        if let Err(e) = make_pki(&dir) {
            panic!("{e}");
        }
        for (name, server, client) in EXCHANGES {
            match capture_exchange(&dir, server, client) {
                Ok((c2s, s2c)) => {
                    write(&format!("{name}.c2s"), &c2s);
                    write(&format!("{name}.s2c"), &s2c);
                }
                Err(e) => panic!("{name}: {e}"),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn write(file: &str, bytes: &[u8]) {
        let path = Path::new(FIXTURES).join(file);
        if let Err(e) = std::fs::write(&path, bytes) {
            panic!("{}: {e}", path.display());
        }
        eprintln!("wrote {} ({} bytes)", path.display(), bytes.len());
    }

    #[test]
    fn builder_and_record_helpers_agree() {
        let message = HelloBuilder::new().message();
        let stream = records(&message, 100, 0x0301);
        assert_eq!(first_message_records(&stream), Some(stream.len()));
        assert_eq!(first_message_records(&stream[..stream.len() - 1]), None);
        assert_eq!(unrecord(&stream), message);
    }
}
