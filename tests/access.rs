//! Access control against the real binary: per-host port rules at the edges of their ranges,
//! the most specific entry deciding, clients from a refused network closed at accept,
//! `check-config` and `allowed-host` with ports.

mod support;

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use support::*;

const T: Duration = Duration::from_secs(20);

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An echo upstream on exactly 127.0.0.1:`port`, or `None` (with the reason printed) when
/// that port is taken on this machine.
fn echo_on_fixed_port(port: u16) -> Option<Upstream> {
    // Probe first: `Upstream::echo_on` panics when it cannot bind.
    match TcpListener::bind(("127.0.0.1", port)) {
        Ok(probe) => drop(probe),
        Err(e) => {
            eprintln!("SKIP part: 127.0.0.1:{port} is not free ({e}); its 200 is not checked");
            return None;
        }
    }
    Some(Upstream::echo_on(&format!("127.0.0.1:{port}")))
}

#[test]
fn port_ranges_at_their_edges() {
    // The upstreams on the two edge ports, when free; refused ports need no listener (the
    // gateway refuses before it connects).
    let low = echo_on_fixed_port(30000);
    let high = echo_on_fixed_port(30199);
    let cfg = Config::new()
        .allow_host("edge.test:443,30000-30199")
        .map_host("edge.test", "127.0.0.1")
        .loopback_networks();
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    for port in [29999u16, 30200, 9354, 8443] {
        let (_s, r) = connect_request(gw.addr(), &format!("edge.test:{port}"));
        assert_eq!(r.status, 403, "edge.test:{port}: {:?}", r.head);
        gw.expect_event(
            105,
            |e| {
                field_str(e, "reason").as_deref() == Some("port_not_allowed")
                    && field_str(e, "target").is_some_and(|t| t.contains(&format!(":{port}")))
            },
            Duration::from_secs(5),
            &format!("port_not_allowed for edge.test:{port}"),
        );
    }
    expect_rejection_metric(&gw, "port_not_allowed", 4.0);
    let mut checked = 0;
    for (port, up) in [(30000u16, &low), (30199, &high)] {
        let Some(up) = up else {
            continue;
        };
        let mut s = open_tunnel(gw.addr(), &format!("edge.test:{port}"));
        echo_roundtrip(&mut s, format!("through port {port}").as_bytes());
        assert!(up.accepts() >= 1, "upstream on {port} reached");
        checked += 1;
    }
    if checked == 0 {
        eprintln!("SKIP part: neither edge port was free; only the refusals were checked");
    }
}

#[test]
fn the_most_specific_entry_decides() {
    let up = Upstream::echo();
    let port = up.port();
    let cfg = Config::new()
        .allow_host("*.w.test:443")
        .allow_host(&format!("a.w.test:{port}"))
        .map_host("a.w.test", "127.0.0.1")
        .map_host("b.w.test", "127.0.0.1")
        .loopback_networks();
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    // a.w.test: its exact entry decides, not the wildcard.
    let (_s, r) = connect_request(gw.addr(), "a.w.test:443");
    assert_eq!(r.status, 403, "{:?}", r.head);
    expect_refusal_event(&gw, 105, 403, Some("port_not_allowed"));
    let mut s = open_tunnel(gw.addr(), &format!("a.w.test:{port}"));
    echo_roundtrip(&mut s, b"exact entry, own port");
    // b.w.test: only the wildcard matches, on 443 alone.
    let (_s, r) = connect_request(gw.addr(), &format!("b.w.test:{port}"));
    assert_eq!(r.status, 403, "{:?}", r.head);
    assert_eq!(
        up.accepts(),
        1,
        "only the allowed tunnel reached the upstream"
    );
}

/// A TCP connection to `to` from the local address `from` (port chosen by the kernel), or the
/// error from bind or connect.
fn connect_from(from: &str, to: SocketAddr) -> io::Result<TcpStream> {
    let local: SocketAddr = format!("{from}:0")
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{from}: {e}")))?;
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    socket.bind(&local.into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// Reads until the peer closes; `Ok(bytes)` on EOF or reset, `Err` if it is still open after
/// `timeout`.
fn bytes_until_closed(s: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "still open after {timeout:?}, read {:?}",
                String::from_utf8_lossy(&out)
            ));
        }
        if let Err(e) = s.set_read_timeout(Some(deadline - now)) {
            return Err(format!("set_read_timeout: {e}"));
        }
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(out),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "still open after {timeout:?}, read {:?}",
                    String::from_utf8_lossy(&out)
                ))
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

#[test]
fn a_client_from_a_refused_network_is_closed_at_accept() {
    // The refused client comes from 127.0.0.2, another loopback address: probe that it can be
    // bound here.
    if let Err(e) = TcpListener::bind("127.0.0.2:0") {
        eprintln!("SKIP: cannot bind 127.0.0.2 on this machine ({e})");
        return;
    }
    let up = Upstream::echo();
    let cfg = Config::new()
        .upstream("allowed.test", up.port())
        .raw("allowed_client_networks: [\"127.0.0.1/32\"]");
    let Some(gw) = Gateway::start(cfg) else {
        return;
    };
    let target = format!("allowed.test:{}", up.port());

    let mut refused = connect_from("127.0.0.2", gw.addr())
        .unwrap_or_else(|e| panic!("connect from 127.0.0.2 to {}: {e}", gw.addr()));
    // Send nothing: the gateway must close without waiting for (or answering) a request.
    let got = bytes_until_closed(&mut refused, Duration::from_secs(5)).unwrap_or_else(|e| {
        panic!(
            "a client from 127.0.0.2 should be closed at accept: {e}\nlog:\n{}",
            gw.log_dump()
        )
    });
    assert!(
        got.is_empty(),
        "no HTTP answer for a refused client, got {:?}",
        String::from_utf8_lossy(&got)
    );
    let ev = gw.expect_event(
        105,
        |e| field_str(e, "reason").as_deref() == Some("client_network"),
        Duration::from_secs(5),
        "client_network refusal",
    );
    assert!(
        ev.to_string().contains("127.0.0.2"),
        "the event names the client: {ev}"
    );
    expect_rejection_metric(&gw, "client_network", 1.0);

    // A request sent at once from the refused address gets no answer either.
    let mut eager = connect_from("127.0.0.2", gw.addr())
        .unwrap_or_else(|e| panic!("connect from 127.0.0.2: {e}"));
    let _ = io::Write::write_all(&mut eager, connect_head(&target).as_bytes());
    let got = bytes_until_closed(&mut eager, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("eager client from 127.0.0.2: {e}"));
    assert!(
        got.is_empty(),
        "no answer to a refused client's request, got {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        up.accepts(),
        0,
        "a refused client never reaches the upstream"
    );

    // The allowed network is served.
    let mut s = open_tunnel(gw.addr(), &target);
    echo_roundtrip(&mut s, b"from 127.0.0.1");
}

fn check_config(dir: &TempDir, yaml: &str) -> Output {
    let path = dir.write("splicegate.yaml", yaml);
    run_cli(&["check-config", path.to_str().unwrap_or_default()], T)
}

#[test]
fn check_config_shows_ports_per_host() {
    let dir = TempDir::new("access-check");
    let o = check_config(
        &dir,
        "allowed_ports: [443, 8443]\n\
         allowed_hosts:\n\
         \x20 - \"*.cloudapp.net:443,9354,30000-30199\"\n\
         \x20 - \"login.windows.net:80,443\"\n\
         \x20 - \"[2001:db8::1]:443\"\n\
         \x20 - \"plain.example\"\n\
         presets: [operations-manager]\n",
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let line_of = |host: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("- {host} ")))
            .unwrap_or_else(|| panic!("no line for {host}:\n{out}"))
            .to_owned()
    };
    assert!(line_of("*.cloudapp.net").ends_with("ports 443,9354,30000-30199"));
    assert!(line_of("login.windows.net").ends_with("ports 80,443"));
    assert!(line_of("2001:db8::1").ends_with("ports 443"));
    assert!(line_of("plain.example").ends_with("ports (global) 443,8443"));
    // Preset entries show their ports too, with their source.
    let console = out
        .lines()
        .find(|l| l.contains("*.live.com"))
        .unwrap_or_else(|| panic!("no *.live.com from operations-manager:\n{out}"));
    assert!(console.contains("ports 80,443"), "{console}");
    assert!(console.contains("[preset operations-manager]"), "{console}");
    assert!(console.contains("proxy-firewall-settings.md"), "{console}");
}

#[test]
fn bad_port_entries_name_the_key_and_line() {
    let dir = TempDir::new("access-bad");
    for (i, entry) in ["x:0", "x:70000", "x:443-80", "x:"].iter().enumerate() {
        // The bad entry is allowed_hosts[1], on line 4.
        let yaml = format!("workers: 1\nallowed_hosts:\n  - ok.example\n  - \"{entry}\"\n");
        let o = check_config(&dir, &yaml);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{entry}: {err}");
        assert!(
            err.contains("line 4: allowed_hosts[1]:"),
            "case {i} {entry:?}: the error names the key and line: {err}"
        );
        assert!(err.contains(&format!("{entry:?}")), "{entry}: {err}");
    }
}

fn admin(path: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", path.to_str().unwrap_or_default(), "--no-reload"]);
    run_cli(&all, T)
}

#[test]
fn allowed_host_add_and_list_with_ports() {
    let dir = TempDir::new("access-admin");
    let path = dir.write(
        "splicegate.yaml",
        "workers: 1\nallowed_ports: [443]\nallowed_hosts:\n  - \"a.example\"\n",
    );
    let o = admin(
        &path,
        &["allowed-host", "add", "*.CloudApp.net:30000-30199,443,9354"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        text.contains("\"*.cloudapp.net:443,9354,30000-30199\""),
        "{text}"
    );
    // The same entry again: no change.
    let o = admin(
        &path,
        &[
            "allowed-host",
            "add",
            "*.cloudapp.net:443,9354,30000-30199",
            "--json",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("\"changed\":false"), "{}", stdout(&o));
    for bad in ["x:0", "x:70000", "x:443-80", "x:", "[x.example]:443"] {
        let o = admin(&path, &["allowed-host", "add", bad]);
        assert_eq!(o.status.code(), Some(1), "{bad}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("not a valid host pattern"),
            "{bad}: {}",
            stderr(&o)
        );
    }
    let o = admin(&path, &["allowed-host", "list"]);
    let out = stdout(&o);
    assert!(
        out.lines()
            .any(|l| l.contains("*.cloudapp.net") && l.ends_with("ports 443,9354,30000-30199")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("a.example") && l.ends_with("ports (global) 443")),
        "{out}"
    );
    // `remove HOST` without ports removes the host whatever its ports.
    let o = admin(&path, &["allowed-host", "remove", "*.cloudapp.net"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(!text.contains("cloudapp"), "{text}");
}

#[test]
fn check_config_shows_client_auth_without_hashes() {
    let dir = TempDir::new("access-auth");
    let users = dir.write(
        "users",
        "alice:$2b$04$abcdefghijklmnopqrstuuSECRETHASHVALUExxxxxxxxxxxxxxxx\n",
    );
    let o = check_config(
        &dir,
        &format!(
            "client_auth:\n  users_file: {:?}\n  realm: \"Contoso\"\n  user_hosts:\n    \
             alice: [\"*.extra.example.com:443\"]\n\
             allowed_client_networks: [10.0.0.0/8, 192.0.2.7]\n",
            users.display().to_string()
        ),
    );
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.contains("client_auth:\n"), "{out}");
    assert!(out.contains("realm: \"Contoso\""), "{out}");
    assert!(out.contains("*.extra.example.com  ports 443"), "{out}");
    assert!(
        out.contains("allowed_client_networks: 10.0.0.0/8, 192.0.2.7/32"),
        "{out}"
    );
    assert!(!out.contains("SECRETHASH"), "{out}");

    let o = check_config(
        &dir,
        "client_auth:\n  users_file: /nonexistent/users\n  bogus: 1\n",
    );
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(stderr(&o).contains("client_auth.bogus"), "{}", stderr(&o));
}
