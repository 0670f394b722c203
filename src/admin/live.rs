//! The commands that ask the running gateway through its admin socket: `sessions`,
//! `sessions close`, `status` and `allowed-host list --usage`.
//!
//! The socket is found through the configuration (`admin_socket`, read from `--config`); the
//! protocol (one JSON request line, one JSON answer line) is
//! [`crate::control::admin_socket`]'s.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use super::output::{self, Json, WithField};
use super::{Common, Failure, Report, DEFAULT_CONFIG_PATH, EXIT_IO, EXIT_USAGE};
use crate::config::{Config, DEFAULT_ADMIN_SOCKET};
use crate::control::admin_socket::{Request, Selector};

/// The largest answer read (a session is about 300 bytes of JSON: 100,000 tunnels fit).
const MAX_ANSWER: u64 = 256 << 20;

/// `splicegate sessions [--client CIDR] [--host PATTERN] [--user NAME] [close ...]`
#[derive(Args, Debug, Clone)]
pub struct SessionsArgs {
    #[command(subcommand)]
    pub action: Option<SessionsAction>,
    /// Only tunnels of clients in this network (or of this address).
    #[arg(long)]
    pub client: Option<String>,
    /// Only tunnels to hosts matching this name or `*.suffix` pattern.
    #[arg(long)]
    pub host: Option<String>,
    /// Only tunnels of this authenticated user.
    #[arg(long)]
    pub user: Option<String>,
}

/// `splicegate sessions close ID | --host PATTERN | --client CIDR`
#[derive(Subcommand, Debug, Clone)]
pub enum SessionsAction {
    /// Close the tunnel with this id, or every tunnel matching --host / --client / --user.
    Close {
        /// The tunnel's id (from `splicegate sessions`).
        id: Option<u64>,
        /// Every tunnel to hosts matching this name or `*.suffix` pattern.
        #[arg(long)]
        host: Option<String>,
        /// Every tunnel of clients in this network (or of this address).
        #[arg(long)]
        client: Option<String>,
        /// Every tunnel of this authenticated user.
        #[arg(long)]
        user: Option<String>,
    },
}

/// Where the gateway of `config` listens: its `admin_socket`. Without a configuration file at
/// the default path, the default socket.
pub fn socket_path(config: &Path) -> Result<PathBuf, Failure> {
    if config == Path::new(DEFAULT_CONFIG_PATH) && !config.exists() {
        return Ok(PathBuf::from(DEFAULT_ADMIN_SOCKET));
    }
    let cfg = Config::from_file(config).map_err(|e| Failure {
        code: EXIT_IO,
        message: format!("cannot read the configuration for admin_socket:\n{e}"),
    })?;
    cfg.admin_socket.ok_or_else(|| Failure {
        code: EXIT_USAGE,
        message: format!(
            "admin_socket is null in {}: the running gateway has no admin socket",
            config.display()
        ),
    })
}

/// Send `request` to the socket at `path` and return the answer (its `ok` checked).
pub fn ask(path: &Path, request: &Request) -> Result<Json, Failure> {
    let unreachable = |e: std::io::Error| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                " (root or a member of the socket's group, splicegate, only)"
            }
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                " (is the gateway running, with this configuration?)"
            }
            _ => "",
        };
        Failure {
            code: EXIT_IO,
            message: format!("admin socket {}: {e}{hint}", path.display()),
        }
    };
    let mut stream = UnixStream::connect(path).map_err(unreachable)?;
    // The gateway answers within limits.admin_timeout (at most 1 minute).
    let limit = Some(Duration::from_secs(65));
    stream
        .set_read_timeout(limit)
        .and_then(|()| stream.set_write_timeout(limit))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(request).map_err(|e| Failure {
        code: EXIT_USAGE,
        message: format!("cannot encode the request: {e}"),
    })?;
    line.push(b'\n');
    // A refused peer gets its answer without the request being read: read it even when the
    // write failed.
    let wrote = stream.write_all(&line);
    let mut answer = Vec::new();
    let read = stream.take(MAX_ANSWER).read_to_end(&mut answer);
    if answer.is_empty() {
        wrote.and(read.map(drop)).map_err(unreachable)?;
    }
    let json: Json = serde_json::from_slice(&answer).map_err(|e| Failure {
        code: EXIT_IO,
        message: format!("admin socket {}: unreadable answer: {e}", path.display()),
    })?;
    if json.get("ok") != Some(&Json::Bool(true)) {
        let error = json
            .get("error")
            .and_then(Json::as_str)
            .unwrap_or("no reason given");
        return Err(Failure {
            code: EXIT_USAGE,
            message: format!("the gateway refused: {error}"),
        });
    }
    if let Some(n) = json.get("missing_workers").and_then(Json::as_u64) {
        if n > 0 {
            eprintln!(
                "splicegate: warning: {n} worker(s) did not answer in time; the list is incomplete"
            );
        }
    }
    Ok(json)
}

/// `splicegate sessions ...` and `sessions close ...`: prints and returns the exit code
/// (`--json` prints the bare array of sessions, or `{"closed":N}`).
pub fn sessions(common: &Common, args: SessionsArgs) -> Result<Report, Failure> {
    let path = socket_path(&common.config)?;
    let request = match args.action {
        Some(SessionsAction::Close {
            id,
            host,
            client,
            user,
        }) => {
            let s = Selector {
                id,
                client,
                host,
                user,
            };
            if s.is_empty() {
                return Err(Failure::usage(
                    "sessions close: give a tunnel id, --host PATTERN or --client CIDR",
                ));
            }
            s.parse().map_err(|e| Failure::usage(e.to_string()))?;
            Request::Close(s)
        }
        None => {
            let s = Selector {
                id: None,
                client: args.client,
                host: args.host,
                user: args.user,
            };
            s.parse().map_err(|e| Failure::usage(e.to_string()))?;
            Request::Sessions(s)
        }
    };
    let closing = matches!(request, Request::Close(_));
    let answer = ask(&path, &request)?;
    if closing {
        let n = answer.get("closed").and_then(Json::as_u64).unwrap_or(0);
        return Ok(Report {
            text: format!("closed {n} tunnel(s)"),
            json: output::obj([("closed", Json::from(n))]),
        });
    }
    let list = match answer.get("sessions") {
        Some(Json::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    Ok(Report {
        text: sessions_table(&list),
        json: Json::Array(list),
    })
}

fn sessions_table(list: &[Json]) -> String {
    let s = |v: &Json, k: &str| match v.get(k) {
        Some(Json::String(s)) => s.clone(),
        Some(Json::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    };
    let f = |v: &Json, k: &str| v.get(k).and_then(Json::as_f64).unwrap_or(0.0);
    let u = |v: &Json, k: &str| v.get(k).and_then(Json::as_u64).unwrap_or(0);
    let header = [
        "ID", "CLIENT", "TARGET", "ADDRESS", "USER", "RULE", "TLS", "SNI", "AGE", "IDLE", "UP",
        "DOWN", "STATE",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for v in list {
        rows.push(vec![
            s(v, "id"),
            s(v, "client"),
            s(v, "target"),
            s(v, "address"),
            s(v, "user"),
            s(v, "rule"),
            s(v, "tls_version"),
            s(v, "sni"),
            duration(f(v, "age_s")),
            duration(f(v, "idle_s")),
            bytes(u(v, "bytes_up") as f64),
            bytes(u(v, "bytes_down") as f64),
            s(v, "state"),
        ]);
    }
    let mut widths = vec![0; header.len()];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!("{} tunnel(s)\n", list.len()));
    out
}

/// `splicegate status`.
pub fn status(common: &Common) -> Result<Report, Failure> {
    let path = socket_path(&common.config)?;
    let answer = ask(&path, &Request::Status)?;
    let st = answer.get("status").cloned().unwrap_or(Json::Null);
    let g = |k: &str| st.get(k).cloned().unwrap_or(Json::Null);
    let n = |k: &str| st.get(k).and_then(Json::as_f64).unwrap_or(0.0);
    let show = |v: Json| match v {
        Json::String(s) => s,
        Json::Null => "-".to_owned(),
        other => other.to_string(),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "splicegate {}  engine {}  workers {}/{} alive  up {}\n",
        show(g("version")),
        show(g("engine")),
        show(g("workers_alive")),
        show(g("workers")),
        duration(n("uptime_s"))
    ));
    let reload = match st.get("last_reload") {
        Some(r @ Json::Object(_)) => format!(
            "last reload {} at {} (unix)",
            show(r.get("result").cloned().unwrap_or(Json::Null)),
            show(r.get("at").cloned().unwrap_or(Json::Null))
        ),
        _ => "no reload since start".to_owned(),
    };
    out.push_str(&format!(
        "config {}  {}  ({} applied, {} refused)\n",
        show(g("config")),
        reload,
        show(g("reloads_ok")),
        show(g("reloads_refused"))
    ));
    out.push_str(&format!(
        "tunnels open {}  connections {}  new tunnels {:.1}/s  up {}/s  down {}/s  (last {})\n",
        show(g("tunnels_open")),
        show(g("connections_open")),
        n("tunnels_per_s"),
        bytes(n("bytes_up_per_s")),
        bytes(n("bytes_down_per_s")),
        duration(n("window_s"))
    ));
    let refusals = match st.get("refusals_last_minute") {
        Some(Json::Object(m)) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".to_owned(),
    };
    out.push_str(&format!("refusals in the last minute: {refusals}\n"));
    let (open, limit) = (n("fds_open"), st.get("fds_limit").and_then(Json::as_f64));
    let headroom = match limit {
        Some(l) if l > 0.0 => format!(
            "{:.0} of {:.0} fds free ({:.1}%)",
            l - open,
            l,
            100.0 * (l - open) / l
        ),
        _ => format!("{open:.0} fds open, no limit"),
    };
    out.push_str(&format!(
        "fd headroom: {headroom}  DNS cache: {} names\n",
        show(g("dns_cache_entries"))
    ));
    Ok(Report {
        text: out,
        json: st,
    })
}

/// `splicegate allowed-host list --usage`: the entries the running gateway serves, with the
/// tunnels each allowed since start and when it last allowed one.
pub fn rule_usage(common: &Common) -> Result<Report, Failure> {
    let path = socket_path(&common.config)?;
    let answer = ask(&path, &Request::Rules)?;
    let rules = match answer.get("rules") {
        Some(Json::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let width = rules
        .iter()
        .filter_map(|r| r.get("rule").and_then(Json::as_str))
        .map(str::len)
        .max()
        .unwrap_or(4)
        .max(5);
    let mut out = format!("{:width$}  {:>8}  LAST USED\n", "ENTRY", "TUNNELS");
    let mut json = Vec::new();
    for r in &rules {
        let name = r.get("rule").and_then(Json::as_str).unwrap_or("");
        let tunnels = r.get("tunnels").and_then(Json::as_u64).unwrap_or(0);
        let last = r.get("last_used").and_then(Json::as_u64);
        let when = match last {
            Some(t) => format!("{} ago", duration(now.saturating_sub(t) as f64)),
            None => "never".to_owned(),
        };
        out.push_str(&format!("{name:width$}  {tunnels:>8}  {when}\n"));
        json.push(
            output::obj([
                ("host", output::text(name)),
                ("tunnels", Json::from(tunnels)),
            ])
            .with("last_used", last.map_or(Json::Null, Json::from)),
        );
    }
    Ok(Report {
        text: out,
        json: output::obj([("usage", Json::Array(json))]),
    })
}

/// `3h12m`, `4m05s`, `12.3s`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s < 86400.0 {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else {
        format!(
            "{}d{:02}h",
            (s / 86400.0) as u64,
            ((s % 86400.0) / 3600.0) as u64
        )
    }
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, `1.0 GiB`.
fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n.max(0.0);
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(duration(12.34), "12.3s");
        assert_eq!(duration(245.0), "4m05s");
        assert_eq!(duration(3.0 * 3600.0 + 720.0), "3h12m");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
    }

    #[test]
    fn the_table_has_every_column() {
        let row = serde_json::json!({"id": 3, "client": "127.0.0.1:5000", "target": "a.test:443",
            "address": "127.0.0.1:443", "user": null, "rule": "*.test", "tls_version": "1.3",
            "sni": "a.test", "age_s": 2.5, "idle_s": 0.5, "bytes_up": 10, "bytes_down": 2048,
            "state": "open"});
        let t = sessions_table(&[row]);
        let line = t.lines().nth(1).unwrap_or_default();
        for want in [
            "3",
            "127.0.0.1:5000",
            "a.test:443",
            "*.test",
            "1.3",
            "2.0 KiB",
            "open",
        ] {
            assert!(line.contains(want), "{want} in {line:?}");
        }
        assert!(t.ends_with("1 tunnel(s)\n"));
    }
}
