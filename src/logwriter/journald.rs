//! Events to journald without a send on the logging thread: a `tracing` layer that formats each
//! event as one entry of the journal's native protocol and queues it for the log writer, and the
//! socket the writer sends the entries on.
//!
//! The entry carries the fields `tracing-journald` 0.3 writes with no field prefix (what
//! splicegate used before): `PRIORITY` (error 3, warn 4, info 5, debug 6, trace 7), `TARGET`,
//! `CODE_FILE`, `CODE_LINE`, `SYSLOG_IDENTIFIER`, `MESSAGE` and every event field by its name in
//! upper case (`EVENT_ID`, `CLIENT`, ...), so `journalctl EVENT_ID=105` finds the same entries.
//! Values are length-encoded (the protocol's binary form), so a newline in a value is safe.
//!
//! An entry larger than one datagram (`EMSGSIZE`, past ~200 KiB; event fields are clipped far
//! below that) is not sent and is counted as a dropped line.

use std::fmt::{self, Write as _};
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

use super::{LogQueue, DROPPED};

/// The journal's native-protocol socket.
pub const JOURNALD_PATH: &str = "/run/systemd/journal/socket";

/// An unbound datagram socket and the journal socket's path.
#[derive(Debug)]
pub struct Socket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl Socket {
    /// Connect to journald at `path` (checked with an empty datagram, which journald ignores).
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Socket> {
        let s = Socket {
            socket: UnixDatagram::unbound()?,
            path: path.into(),
        };
        s.socket.send_to(&[], &s.path)?;
        Ok(s)
    }

    /// Send one entry, waiting while journald's receive queue is full (only the writer thread
    /// waits: the workers' lines queue up or are dropped meanwhile); a failed send counts the
    /// entry as dropped.
    pub(super) fn send(&self, entry: &[u8]) {
        if self.socket.send_to(entry, &self.path).is_err() {
            DROPPED.fetch_add(1, Relaxed);
        }
    }
}

/// The `tracing` layer: formats on the logging thread, queues for the writer.
#[derive(Debug)]
pub struct Layer {
    queue: LogQueue,
    identifier: String,
}

impl Layer {
    pub fn new(queue: LogQueue, identifier: &str) -> Layer {
        Layer {
            queue,
            identifier: identifier.to_owned(),
        }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        self.queue.push(entry(event, &self.identifier));
    }
}

/// One native-protocol entry for `event`.
fn entry(event: &Event<'_>, identifier: &str) -> Vec<u8> {
    let meta = event.metadata();
    let mut buf = Vec::with_capacity(384);
    let priority = match *meta.level() {
        Level::ERROR => b"3",
        Level::WARN => b"4",
        Level::INFO => b"5",
        Level::DEBUG => b"6",
        Level::TRACE => b"7",
    };
    put(&mut buf, "PRIORITY", |b| b.extend_from_slice(priority));
    put(&mut buf, "TARGET", |b| {
        b.extend_from_slice(meta.target().as_bytes())
    });
    if let Some(file) = meta.file() {
        put(&mut buf, "CODE_FILE", |b| {
            b.extend_from_slice(file.as_bytes())
        });
    }
    if let Some(line) = meta.line() {
        put(&mut buf, "CODE_LINE", |b| {
            let _ = write!(Bytes(b), "{line}");
        });
    }
    put(&mut buf, "SYSLOG_IDENTIFIER", |b| {
        b.extend_from_slice(identifier.as_bytes())
    });
    event.record(&mut Fields(&mut buf));
    buf
}

struct Fields<'a>(&'a mut Vec<u8>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        put(self.0, field.name(), |b| {
            b.extend_from_slice(value.as_bytes())
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        put(self.0, field.name(), |b| {
            let _ = write!(Bytes(b), "{value:?}");
        });
    }
}

/// `fmt::Write` into a byte buffer, so values format straight into the entry.
struct Bytes<'a>(&'a mut Vec<u8>);

impl fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// A field in the protocol's binary form: `NAME\n`, the value's length (u64 LE), the value, `\n`.
/// The name is upper-cased; `.` becomes `_`, leading `_` and other characters are dropped (as
/// `tracing-journald` does).
fn put(buf: &mut Vec<u8>, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
    buf.extend(
        name.bytes()
            .map(|c| if c == b'.' { b'_' } else { c })
            .skip_while(|&c| c == b'_')
            .filter(|&c| c == b'_' || c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase()),
    );
    buf.push(b'\n');
    buf.extend_from_slice(&[0; 8]);
    let start = buf.len();
    value(buf);
    let len = (buf.len() - start) as u64;
    buf[start - 8..start].copy_from_slice(&len.to_le_bytes());
    buf.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tracing_subscriber::layer::SubscriberExt;

    /// Parse entries in the binary form back into fields.
    fn parse(mut b: &[u8]) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        while !b.is_empty() {
            let nl = b
                .iter()
                .position(|&c| c == b'\n')
                .expect("name ends with a newline");
            let name = String::from_utf8(b[..nl].to_vec()).expect("utf-8 name");
            let len = u64::from_le_bytes(b[nl + 1..nl + 9].try_into().expect("8 bytes")) as usize;
            let v = &b[nl + 9..nl + 9 + len];
            assert_eq!(b[nl + 9 + len], b'\n');
            out.insert(name, String::from_utf8(v.to_vec()).expect("utf-8 value"));
            b = &b[nl + 10 + len..];
        }
        out
    }

    #[test]
    fn an_event_reaches_the_socket_as_one_native_entry() {
        let dir = std::env::temp_dir().join(format!("sg-journald-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let _ = std::fs::remove_file(&path);
        let journal = UnixDatagram::bind(&path).unwrap();
        journal
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0u8; 65536];
        let sock = Socket::open(&path).unwrap();
        assert_eq!(
            journal.recv(&mut buf).unwrap(),
            0,
            "the open probe is empty"
        );
        let (queue, guard) = super::super::start(super::super::Sink::Journald(sock), 64).unwrap();
        let subscriber = tracing_subscriber::registry().with(Layer::new(queue, "splicegate"));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(event_id = 105u16, client = %"127.0.0.1:1", reason = "host_not_allowed", "two\nlines");
        });
        guard.flush();
        let n = journal.recv(&mut buf).unwrap();
        let f = parse(&buf[..n]);
        assert_eq!(f["PRIORITY"], "4");
        assert_eq!(f["EVENT_ID"], "105");
        assert_eq!(f["CLIENT"], "127.0.0.1:1");
        assert_eq!(f["REASON"], "host_not_allowed");
        assert_eq!(f["MESSAGE"], "two\nlines");
        assert_eq!(f["SYSLOG_IDENTIFIER"], "splicegate");
        assert!(f["CODE_FILE"].ends_with("journald.rs"));
        assert!(f.contains_key("TARGET") && f.contains_key("CODE_LINE"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
