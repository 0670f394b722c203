//! Helpers for the restart tests (socket activation, takeover): a child process whose stderr
//! lines are collected, and a bounded stream of CONNECTs that counts what went wrong.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

/// A child process with its stderr (and stdout) lines collected.
pub struct Proc {
    pub child: Child,
    lines: Lines,
}

impl Proc {
    /// Spawn `cmd` with stdout and stderr piped into the collected lines.
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let lines: Lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        collect(child.stderr.take().unwrap(), lines.clone());
        collect(child.stdout.take().unwrap(), lines.clone());
        Proc { child, lines }
    }

    /// Collect the output of an already spawned child (stdout and stderr piped).
    pub fn adopt(mut child: Child) -> Proc {
        let lines: Lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        collect(child.stderr.take().unwrap(), lines.clone());
        collect(child.stdout.take().unwrap(), lines.clone());
        Proc { child, lines }
    }

    /// The first line (from the start) that satisfies `pred`, waiting up to `timeout`.
    pub fn wait_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lines.0.lock().unwrap();
        loop {
            if let Some(l) = st.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self.lines.1.wait_timeout(st, deadline - now).unwrap().0;
        }
    }

    /// How many lines satisfy `pred` now.
    pub fn count(&self, pred: impl Fn(&str) -> bool) -> usize {
        self.lines
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| pred(l))
            .count()
    }

    pub fn dump(&self) -> String {
        self.lines.0.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect<R: Read + Send + 'static>(src: R, lines: Lines) {
    thread::spawn(move || {
        let mut r = BufReader::new(src);
        let mut buf = Vec::new();
        // Bounded by the child's lifetime: EOF ends it.
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&buf).trim_end().to_string();
            lines.0.lock().unwrap().push(line);
            lines.1.notify_all();
        }
    });
}

pub fn signal(pid: u32, sig: libc::c_int) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    let sig = match sig {
        libc::SIGTERM => rustix::process::Signal::TERM,
        libc::SIGKILL => rustix::process::Signal::KILL,
        libc::SIGHUP => rustix::process::Signal::HUP,
        _ => panic!("signal {sig} not used by these tests"),
    };
    let _ = rustix::process::kill_process(pid, sig);
}

/// What a stream of CONNECTs saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub ok: u64,
    pub refused: u64,
    pub reset: u64,
    pub other: u64,
    pub elapsed: Duration,
}

impl Tally {
    pub fn rate(&self) -> f64 {
        (self.ok + self.refused + self.reset + self.other) as f64 / self.elapsed.as_secs_f64()
    }
}

/// `threads` clients, each opening a tunnel to `target` through `gw`, sending 16 bytes and
/// reading them back, again and again, until stopped (or `max` time or 200,000 attempts).
pub struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 4]>,
    handles: Vec<JoinHandle<()>>,
    started: Instant,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Load {
    pub fn start(gw: SocketAddr, target: &str, threads: usize, max: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let errors = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let handles = (0..threads)
            .map(|t| {
                let (stop, counts, errors) = (stop.clone(), counts.clone(), errors.clone());
                let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
                thread::spawn(move || {
                    for i in 0..200_000u64 {
                        if stop.load(Ordering::Relaxed) || started.elapsed() > max {
                            break;
                        }
                        let outcome = one(gw, &head, (t as u64) << 32 | i);
                        let k = match &outcome {
                            Ok(()) => 0,
                            Err(e) if e.kind() == ErrorKind::ConnectionRefused => 1,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::ConnectionReset
                                        | ErrorKind::BrokenPipe
                                        | ErrorKind::UnexpectedEof
                                        | ErrorKind::ConnectionAborted
                                ) =>
                            {
                                2
                            }
                            Err(_) => 3,
                        };
                        counts[k].fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = outcome {
                            let mut v = errors.lock().unwrap();
                            if v.len() < 20 {
                                v.push(format!("{:?}: {e}", started.elapsed()));
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            handles,
            started,
            errors,
        }
    }

    pub fn ok_so_far(&self) -> u64 {
        self.counts[0].load(Ordering::Relaxed)
    }

    pub fn finish(self) -> (Tally, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        let c = |i: usize| self.counts[i].load(Ordering::Relaxed);
        let tally = Tally {
            ok: c(0),
            refused: c(1),
            reset: c(2),
            other: c(3),
            elapsed: self.started.elapsed(),
        };
        let errors = self.errors.lock().unwrap().clone();
        (tally, errors)
    }
}

fn one(gw: SocketAddr, head: &str, n: u64) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&gw, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    s.write_all(head.as_bytes())?;
    let mut head_buf = Vec::with_capacity(128);
    let mut b = [0u8; 1];
    while !head_buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        head_buf.push(b[0]);
        if head_buf.len() > 4096 {
            return Err(std::io::Error::other("answer head too long"));
        }
    }
    if !head_buf.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "answer {:?}",
            String::from_utf8_lossy(&head_buf)
        )));
    }
    let payload = n.to_be_bytes().repeat(2);
    s.write_all(&payload)?;
    let mut back = [0u8; 16];
    s.read_exact(&mut back)?;
    if back[..] != payload[..] {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}
