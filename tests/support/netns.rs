//! A lab of hosts in network namespaces for the HA tests (`tests/ha.rs`).
//!
//! [`Lab::new`] creates one namespace per host plus a `switch` namespace holding a bridge; each
//! host gets an `eth0` (a veth pair created straight into the two namespaces, so nothing is added
//! to the test machine's own namespace) with its addresses on one /24. Namespace names carry the
//! test process's pid and a counter, so parallel runs never meet; every namespace is deleted
//! when the `Lab` drops, also while a failed test unwinds.
//!
//! A thread joins a host with [`enter`] (`setns(2)` for the calling thread only); sockets
//! it creates afterwards live in that host. Programs run there with [`Lab::command`]
//! (`ip netns exec`, which execs the program, so the child's pid is the program's).

use std::fs::File;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Why the namespace tests cannot run here, or `None` when they can (probed once per process).
pub fn unavailable(tools: &[&str]) -> Option<String> {
    static PROBE: std::sync::Mutex<Option<Option<String>>> = std::sync::Mutex::new(None);
    let mut probe = PROBE.lock().unwrap_or_else(|e| e.into_inner());
    probe.get_or_insert_with(|| probe_namespaces(tools)).clone()
}

fn probe_namespaces(tools: &[&str]) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("network namespaces need root".into());
    }
    for tool in tools {
        let found = std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
        if !found {
            return Some(format!(
                "`{tool}` is not installed (scripts/install-test-deps.sh installs it)"
            ));
        }
    }
    let probe = format!("sgprobe{}", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match made {
        Ok(out) if out.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
        Ok(out) => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip`: {e}")),
    }
}

/// Run a command to completion; panics with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One host of the lab and its namespace.
pub struct Host {
    pub name: String,
    pub netns: String,
}

/// Hosts on one bridged /24, each in its own namespace.
pub struct Lab {
    switch: String,
    hosts: Vec<Host>,
}

impl Lab {
    /// `hosts`: (name, addresses without prefix length); every address gets a /24.
    pub fn new(hosts: &[(&str, &[&str])]) -> Lab {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "sgha{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{prefix}-switch");
        // From here on, Drop deletes whatever was created, also on a panic half-way.
        let mut lab = Lab {
            switch: switch.clone(),
            hosts: Vec::new(),
        };
        run(Command::new("ip").args(["netns", "add", &switch]));
        run(Command::new("ip").args(["-n", &switch, "link", "add", "br0", "type", "bridge"]));
        run(Command::new("ip").args(["-n", &switch, "link", "set", "br0", "up"]));
        for (i, (name, addrs)) in hosts.iter().enumerate() {
            let netns = format!("{prefix}-{name}");
            run(Command::new("ip").args(["netns", "add", &netns]));
            lab.hosts.push(Host {
                name: name.to_string(),
                netns: netns.clone(),
            });
            let port = format!("p{i}");
            run(Command::new("ip").args([
                "link", "add", "name", "eth0", "netns", &netns, "type", "veth", "peer", "name",
                &port, "netns", &switch,
            ]));
            run(Command::new("ip").args(["-n", &switch, "link", "set", &port, "master", "br0"]));
            run(Command::new("ip").args(["-n", &switch, "link", "set", &port, "up"]));
            run(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]));
            // As docs/operations.md advises for bursts to one endpoint: a new namespace reuses
            // TIME_WAIT ports for loopback only, and the storms dial one sink address.
            run(Command::new("ip").args([
                "netns",
                "exec",
                &netns,
                "sysctl",
                "-qw",
                "net.ipv4.tcp_tw_reuse=1",
            ]));
            for a in addrs.iter() {
                run(Command::new("ip").args([
                    "-n",
                    &netns,
                    "addr",
                    "add",
                    &format!("{a}/24"),
                    "dev",
                    "eth0",
                ]));
            }
            run(Command::new("ip").args(["-n", &netns, "link", "set", "eth0", "up"]));
        }
        lab
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} in the lab"))
    }

    pub fn netns(&self, host: &str) -> &str {
        &self.host(host).netns
    }

    /// `ip netns exec <host's namespace> program`.
    pub fn command(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.netns(host), program]);
        c
    }

    /// The wrapper for [`crate::support::Gateway::start_wrapped`] that runs it in `host`.
    pub fn wrapper(&self, host: &str) -> [&str; 4] {
        ["ip", "netns", "exec", self.netns(host)]
    }
}

/// Run `f` on a thread of its own inside the named network namespace (sockets it makes stay
/// there, wherever they are used later) and return what it returns.
pub fn within<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(netns);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Move the calling thread into the named network namespace.
pub fn enter(netns: &str) {
    let path = format!("/run/netns/{netns}");
    let f = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    rustix::thread::move_into_link_name_space(
        f.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in self.hosts.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &h.netns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch])
            .stderr(Stdio::null())
            .status();
    }
}
