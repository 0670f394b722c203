//! The log writer: a bounded queue of formatted log lines and the one thread that writes them.
//!
//! A thread that logs (a worker, the control thread) formats its event into a line as before and
//! hands a copy of it to the queue with `try_send`; it never makes the write syscall itself,
//! never wakes the writer (which polls the queue every 5 ms) and never waits. The `log-writer` thread takes the lines in order, writes a batch of them to
//! stderr with one `write`, or sends each to journald as a datagram (see [`journald`]). When the
//! queue is full (the writer is behind: a slow terminal, a stalled journald), the line is dropped
//! and counted in [`dropped`] (`splicegate_log_lines_dropped_total`): a full log never slows a
//! worker.
//!
//! [`LogGuard`] flushes what is queued when it is dropped at the end of `main`, so the last events
//! (102 at exit) are written before the process ends.

pub mod journald;

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Lines the queue holds when `SPLICEGATE_LOG_QUEUE` is not set.
pub const DEFAULT_QUEUE_LINES: usize = 65_536;
/// Largest batch the writer puts in one `write` to stderr.
const BATCH_BYTES: usize = 64 * 1024;
/// How often the writer looks at the queue.
const POLL: Duration = Duration::from_millis(5);
/// How long the exit flush waits for the writer.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Lines dropped because the queue was full, since the start.
pub fn dropped() -> u64 {
    DROPPED.load(Relaxed)
}

/// Where the writer thread puts the lines.
#[derive(Debug)]
pub enum Sink {
    /// The process's stderr, in batches.
    Stderr,
    /// The journal's native socket, one datagram per event (each line a native-protocol entry).
    Journald(journald::Socket),
}

enum Msg {
    Line(Vec<u8>),
    /// Write out everything queued before this, then answer.
    Flush(SyncSender<()>),
}

/// The producers' end of the queue: a [`MakeWriter`] for `tracing_subscriber`'s fmt layer, and
/// the queue the journald layer hands its entries to.
#[derive(Clone, Debug)]
pub struct LogQueue {
    tx: SyncSender<Msg>,
}

/// Flushes the queue when dropped (at the end of `main`); the writer thread lives on until the
/// process exits (the global subscriber holds the queue's senders for the process's life).
#[derive(Debug)]
pub struct LogGuard {
    tx: SyncSender<Msg>,
    _thread: Option<JoinHandle<()>>,
}

/// Why the log writer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogWriterError {
    #[error("SPLICEGATE_LOG_QUEUE={0:?} is not a number of lines between 16 and 16777216")]
    BadQueueLength(String),
    #[error("cannot start the log writer thread: {0}")]
    Thread(#[source] io::Error),
}

/// The queue length from `SPLICEGATE_LOG_QUEUE` (lines), or the default when unset.
pub fn queue_lines_from_env() -> Result<usize, LogWriterError> {
    match std::env::var("SPLICEGATE_LOG_QUEUE") {
        Err(_) => Ok(DEFAULT_QUEUE_LINES),
        Ok(s) => parse_queue_lines(&s),
    }
}

fn parse_queue_lines(s: &str) -> Result<usize, LogWriterError> {
    match s.trim().parse::<usize>() {
        Ok(n) if (16..=16 << 20).contains(&n) => Ok(n),
        _ => Err(LogWriterError::BadQueueLength(s.to_owned())),
    }
}

/// Start the writer thread with a queue of `lines` lines.
pub fn start(sink: Sink, lines: usize) -> Result<(LogQueue, LogGuard), LogWriterError> {
    let (tx, rx) = mpsc::sync_channel(lines);
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || run(rx, sink))
        .map_err(LogWriterError::Thread)?;
    Ok((
        LogQueue { tx: tx.clone() },
        LogGuard {
            tx,
            _thread: Some(thread),
        },
    ))
}

impl LogQueue {
    /// Queue one line (or journald entry) without waiting; a full queue drops and counts it.
    pub fn push(&self, line: Vec<u8>) {
        match self.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Relaxed);
            }
        }
    }
}

/// What `tracing_subscriber`'s fmt layer writes one event into: it formats the whole event into
/// its own buffer first and writes it with one `write_all`, so one write is one line.
#[derive(Debug)]
pub struct LineWriter<'a> {
    queue: &'a LogQueue,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.queue.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> LineWriter<'a> {
        LineWriter { queue: self }
    }
}

impl LogGuard {
    /// Wait (at most 2 s) until every line queued so far has been written.
    pub fn flush(&self) {
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The writer thread: until every sender is gone. It polls the queue every [`POLL`] instead of
/// blocking on it, so that a thread queueing a line never has to wake it (a futex syscall per
/// line on the worker); lines wait at most that long.
fn run(rx: Receiver<Msg>, sink: Sink) {
    let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
    let stderr = io::stderr();
    let mut acks = Vec::new();
    loop {
        let mut gone = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Line(line)) => match &sink {
                    Sink::Stderr => {
                        batch.extend_from_slice(&line);
                        if batch.len() >= BATCH_BYTES {
                            let _ = stderr.lock().write_all(&batch);
                            batch.clear();
                        }
                    }
                    Sink::Journald(s) => s.send(&line),
                },
                Ok(Msg::Flush(ack)) => acks.push(ack),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            // A failed write to stderr (closed, full disk) has nowhere to be reported.
            let _ = stderr.lock().write_all(&batch);
            batch.clear();
        }
        for ack in acks.drain(..) {
            let _ = ack.try_send(());
        }
        if gone {
            return;
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_length_is_bounded() {
        for (s, want) in [
            ("16", Some(16)),
            (" 65536 ", Some(65536)),
            ("16777216", Some(16 << 20)),
            ("16777217", None),
            ("15", None),
            ("0", None),
            ("x", None),
            ("", None),
        ] {
            assert_eq!(parse_queue_lines(s).ok(), want, "{s:?}");
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        // A queue whose writer is stuck: no thread reads the receiver.
        let (tx, _rx) = mpsc::sync_channel(16);
        let q = LogQueue { tx };
        let before = dropped();
        let started = Instant::now();
        for _ in 0..1000 {
            q.push(b"line\n".to_vec());
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(dropped() - before >= 1000 - 16);
    }
}
