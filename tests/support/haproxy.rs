//! Debian's `haproxy`, run in a lab host for the HA tests, read through its stats socket.
//!
//! [`Haproxy::start`] checks the configuration with `haproxy -c` first (so a broken
//! `deploy/haproxy.cfg` fails with HAProxy's own message), then runs it in the foreground
//! (`-db`) and waits for the stats socket. [`Haproxy::servers`] parses `show stat` by the CSV
//! header's column names; the process is killed on drop.

use crate::netns::Lab;
use crate::support::TempDir;
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// One server row of `show stat`.
#[derive(Clone, Debug)]
pub struct ServerStat {
    pub name: String,
    /// `UP`, `DOWN`, `MAINT`, `NOLB`, `UP 1/2` (going down), `DOWN 1/2` (going up), ...
    pub status: String,
    /// Connection errors to the server (refused, reset or timed out while connecting).
    pub econ: u64,
    /// Connection retries on the same server.
    pub wretr: u64,
    /// Connection retries sent to another server (`option redispatch`).
    pub wredis: u64,
}

pub struct Haproxy {
    child: Child,
    socket: PathBuf,
    config: String,
    stderr: PathBuf,
    _dir: TempDir,
}

impl Haproxy {
    /// Run `config` in `host`. `socket` is the stats socket path the configuration names.
    pub fn start(lab: &Lab, host: &str, config: &str, socket: &Path) -> Haproxy {
        let dir = TempDir::new("haproxy");
        let cfg = dir.write("haproxy.cfg", config);
        let stderr = dir.path().join("haproxy.err");
        crate::netns::run(lab.command(host, "haproxy").arg("-c").arg("-f").arg(&cfg));
        let child = lab
            .command(host, "haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("create the haproxy log"))
            .spawn()
            .expect("spawn haproxy");
        let mut h = Haproxy {
            child,
            socket: socket.to_path_buf(),
            config: config.to_string(),
            stderr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.command("show info").is_err() {
            if let Ok(Some(status)) = h.child.try_wait() {
                panic!("haproxy exited at start ({status}):\n{}", h.log());
            }
            assert!(
                Instant::now() < deadline,
                "haproxy's stats socket did not answer within 10 s:\n{}",
                h.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
        h
    }

    /// What HAProxy wrote on stderr so far, after its configuration.
    pub fn log(&self) -> String {
        format!(
            "---- haproxy.cfg ----\n{}\n---- haproxy stderr ----\n{}",
            self.config,
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    /// One command on the stats socket; its whole answer.
    pub fn command(&self, cmd: &str) -> io::Result<String> {
        let mut s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(cmd.as_bytes())?;
        s.write_all(b"\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The server rows of `backend`.
    pub fn servers(&self, backend: &str) -> Vec<ServerStat> {
        let text = self
            .command("show stat")
            .unwrap_or_else(|e| panic!("show stat: {e}\n{}", self.log()));
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let mut rows = Vec::new();
        for line in lines {
            let f: HashMap<&str, &str> = header.iter().copied().zip(line.split(',')).collect();
            let get = |k: &str| f.get(k).copied().unwrap_or("");
            let num = |k: &str| get(k).parse::<u64>().unwrap_or(0);
            if get("pxname") != backend || matches!(get("svname"), "BACKEND" | "FRONTEND" | "") {
                continue;
            }
            rows.push(ServerStat {
                name: get("svname").to_string(),
                status: get("status").to_string(),
                econ: num("econ"),
                wretr: num("wretr"),
                wredis: num("wredis"),
            });
        }
        rows
    }

    /// One server's row; panics when the backend has no such server.
    pub fn server(&self, backend: &str, name: &str) -> ServerStat {
        self.servers(backend)
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no server {backend}/{name} in show stat\n{}", self.log()))
    }

    /// Poll every 20 ms until `pred` holds for the server's row; the row and when it was seen,
    /// or `None` at the deadline.
    pub fn wait_server(
        &self,
        backend: &str,
        name: &str,
        pred: impl Fn(&ServerStat) -> bool,
        timeout: Duration,
    ) -> Option<(ServerStat, Instant)> {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.server(backend, name);
            let seen = Instant::now();
            if pred(&row) {
                return Some((row, seen));
            }
            if seen >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
