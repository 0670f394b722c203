//! The admin commands: the Linux counterparts of the Windows gateway's PowerShell cmdlets.
//!
//! | cmdlet | command |
//! |---|---|
//! | `Get-/Set-OMSGatewayConfig` | `splicegate config get [KEY]`, `config set KEY VALUE` |
//! | `Get-/Add-/Remove-OMSGatewayAllowedHost` | `splicegate allowed-host list\|add\|remove` |
//! | `…AllowedClientCertificate` | `splicegate allowed-client-cert list\|add\|remove` |
//! | `Get-/Set-OMSGatewayRelayProxy` | `splicegate relay-proxy get\|set\|clear` |
//! | the MSI's silent install | `splicegate init` |
//!
//! Every edit goes the same way ([`edit`]): read the file, change the one value in the YAML text
//! ([`yaml::Doc`], so comments and key order stay), validate the whole result with the same parser
//! `run` uses, refuse it (exit 2) if it does not validate, write it atomically
//! ([`file::write_atomic`]), then tell a running gateway to reload ([`service::reload`]).
//!
//! Exit codes: 0 done (or nothing to do), 1 usage or refused value, 2 the resulting
//! configuration would not validate, 3 I/O error.

pub mod file;
pub mod live;
pub mod output;
pub mod service;
pub mod users;
pub mod yaml;

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_YAML};
use crate::policy::HostEntry;
use output::{Json, WithField};
use service::Reload;
use yaml::{quote, Doc, Value};

/// Where the package installs the configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/splicegate/splicegate.yaml";
/// Where the packaged service writes its pid (`RuntimeDirectory=splicegate`).
pub const DEFAULT_PID_FILE: &str = "/run/splicegate/splicegate.pid";

/// Exit codes.
pub const EXIT_OK: u8 = 0;
pub const EXIT_USAGE: u8 = 1;
pub const EXIT_INVALID: u8 = 2;
pub const EXIT_IO: u8 = 3;

/// Options shared by every admin command.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The configuration file: the top-level `--config` (accepted before or after any
    /// subcommand's own arguments), else [`DEFAULT_CONFIG_PATH`]; `main.rs` fills it in.
    #[arg(skip = PathBuf::from(DEFAULT_CONFIG_PATH))]
    pub config: PathBuf,
    /// Print one JSON object on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// The running gateway's pid file, signalled (SIGHUP) after an edit.
    #[arg(long, global = true, default_value = DEFAULT_PID_FILE)]
    pub pid_file: PathBuf,
    /// Do not tell a running gateway to reload after an edit.
    #[arg(long, global = true)]
    pub no_reload: bool,
}

/// `splicegate config …`
#[derive(Subcommand, Debug, Clone)]
pub enum ConfigAction {
    /// Print the effective configuration, or one key (`workers`, `limits.idle_timeout`,
    /// `listen_port`); keys not in the file show their default.
    Get { key: Option<String> },
    /// Set one key. Sequences take a comma-separated list (`allowed_ports 443,8443`);
    /// `listen_port PORT` changes the port of every `listen` address.
    Set { key: String, value: String },
}

/// `list | add VALUE | remove VALUE`
#[derive(Subcommand, Debug, Clone)]
pub enum ListAction {
    /// Show the list.
    List {
        /// allowed-host only: per entry, the tunnels the running gateway established since it
        /// started and when it last did (through the admin socket).
        #[arg(long)]
        usage: bool,
    },
    /// Add an entry (no change if it is already there).
    Add { value: String },
    /// Remove an entry.
    Remove { value: String },
}

/// `splicegate relay-proxy …`
#[derive(Subcommand, Debug, Clone)]
pub enum RelayAction {
    /// Show the relay proxy (never a password).
    Get,
    /// Send every tunnel through this HTTP proxy. Credentials not given are removed.
    Set {
        /// `http://host:port` (an empty string clears the relay, like the old cmdlet).
        #[arg(long)]
        address: String,
        #[arg(long)]
        username: Option<String>,
        /// A file holding the password (readable by the service user only).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// CA bundle for an `https://` relay.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Connect directly again.
    Clear,
}

/// `splicegate init …`
#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// The port to accept agents on (on every address).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Relay (upstream) proxy, `http://host:port`.
    #[arg(long)]
    pub relay: Option<String>,
    #[arg(long, requires = "relay")]
    pub username: Option<String>,
    #[arg(long, requires = "relay")]
    pub password_file: Option<PathBuf>,
    /// Log Analytics workspace ID (GUID); repeat for up to 10.
    #[arg(long = "workspace")]
    pub workspaces: Vec<String>,
    /// Endpoint preset (azure-monitor-agent, log-analytics-agent, automation-hybrid-worker,
    /// azure-arc-connected-machine); repeatable. Default with --workspace: azure-monitor-agent.
    #[arg(long = "preset")]
    pub presets: Vec<String>,
    /// public, usgov or china.
    #[arg(long)]
    pub cloud: Option<String>,
    /// Azure region of the agents (westeurope, eastus2, ...); repeatable.
    #[arg(long = "region")]
    pub regions: Vec<String>,
    /// Where to write (default: --config).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Replace an existing file.
    #[arg(long)]
    pub force: bool,
}

/// The admin subcommands, wired into the `splicegate` CLI by `main.rs`.
#[derive(Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// Read or change configuration keys (Get-/Set-OMSGatewayConfig).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
        #[command(flatten)]
        common: Common,
    },
    /// The locally configured allowed hosts (Add-/Remove-/Get-OMSGatewayAllowedHost).
    AllowedHost {
        #[command(subcommand)]
        action: ListAction,
        #[command(flatten)]
        common: Common,
    },
    /// Allowed client certificate subjects (…OMSGatewayAllowedClientCertificate).
    AllowedClientCert {
        #[command(subcommand)]
        action: ListAction,
        #[command(flatten)]
        common: Common,
    },
    /// The relay (upstream) proxy (Get-/Set-OMSGatewayRelayProxy).
    RelayProxy {
        #[command(subcommand)]
        action: RelayAction,
        #[command(flatten)]
        common: Common,
    },
    /// Write a complete, commented configuration (the silent-install equivalent).
    Init {
        #[command(flatten)]
        args: InitArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Open tunnels of the running gateway (through its admin socket); `sessions close`
    /// closes some. `--json`: one JSON array of sessions.
    Sessions {
        #[command(flatten)]
        args: live::SessionsArgs,
        #[command(flatten)]
        common: Common,
    },
    /// One screen on the running gateway: engine, workers, uptime, reloads, tunnels, rates,
    /// refusals in the last minute, fd headroom, DNS cache.
    Status {
        #[command(flatten)]
        common: Common,
    },
}

impl AdminCommand {
    /// The options every admin command shares (`main.rs` sets `config` from `--config`).
    pub fn common_mut(&mut self) -> &mut Common {
        match self {
            AdminCommand::Config { common, .. }
            | AdminCommand::AllowedHost { common, .. }
            | AdminCommand::AllowedClientCert { common, .. }
            | AdminCommand::RelayProxy { common, .. }
            | AdminCommand::Init { common, .. }
            | AdminCommand::Sessions { common, .. }
            | AdminCommand::Status { common } => common,
        }
    }
}

/// A command's result: text for people, JSON for scripts.
#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub json: Json,
}

/// A refusal or failure, with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_USAGE,
            message: message.into(),
        }
    }

    fn io(message: impl Into<String>) -> Failure {
        Failure {
            code: EXIT_IO,
            message: message.into(),
        }
    }

    fn invalid(err: &ConfigError) -> Failure {
        Failure {
            code: EXIT_INVALID,
            message: format!("refused: the configuration would not validate:\n{err}"),
        }
    }
}

/// Run an admin command, print its result, return the exit code.
pub fn run(cmd: AdminCommand) -> u8 {
    // `sessions --json` prints the bare array, `status --json` the status object.
    let bare = matches!(
        cmd,
        AdminCommand::Sessions { .. } | AdminCommand::Status { .. }
    );
    let (common, result) = match cmd {
        AdminCommand::Sessions { args, common } => {
            let r = live::sessions(&common, args);
            (common, r)
        }
        AdminCommand::Status { common } => {
            let r = live::status(&common);
            (common, r)
        }
        AdminCommand::Config { action, common } => {
            let r = match action {
                ConfigAction::Get { key } => config_get(&common, key.as_deref()),
                ConfigAction::Set { key, value } => config_set(&common, &key, &value),
            };
            (common, r)
        }
        AdminCommand::AllowedHost { action, common } => {
            let r = allowed_host(&common, action);
            (common, r)
        }
        AdminCommand::AllowedClientCert { action, common } => {
            let r = client_cert(&common, action);
            (common, r)
        }
        AdminCommand::RelayProxy { action, common } => {
            let r = relay_proxy(&common, action);
            (common, r)
        }
        AdminCommand::Init { args, common } => {
            let r = init(&common, &args);
            (common, r)
        }
    };
    match result {
        Ok(report) => {
            if common.json && bare {
                println!("{}", report.json);
            } else if common.json {
                println!("{}", report.json.with("ok", Json::Bool(true)));
            } else if !report.text.is_empty() {
                println!("{}", report.text.trim_end());
            }
            EXIT_OK
        }
        Err(f) => {
            if common.json {
                println!(
                    "{}",
                    output::obj([
                        ("ok", Json::Bool(false)),
                        ("exit_code", Json::from(i64::from(f.code))),
                        ("error", output::text(&f.message)),
                    ])
                );
            }
            eprintln!("splicegate: {}", f.message.trim_end());
            f.code
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The edit pipeline
// ---------------------------------------------------------------------------------------------

/// The file's text, or a failure naming it.
fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (create one with `splicegate init`)"
        } else {
            ""
        };
        Failure::io(format!("cannot read {}: {e}{hint}", path.display()))
    })
}

/// What an edit did.
struct Edited {
    changed: bool,
    reload: Reload,
}

impl Edited {
    fn json(&self) -> Json {
        output::obj([
            ("changed", Json::Bool(self.changed)),
            ("reload", output::text(self.reload.kind())),
        ])
    }

    fn text(&self, common: &Common, done: &str) -> String {
        if self.changed {
            format!(
                "{done}\nwrote {}\n{}",
                common.config.display(),
                self.reload.describe(&common.pid_file)
            )
        } else {
            format!("{done} (no change)")
        }
    }
}

/// Read, change, validate, write atomically, reload. `change` gets the document and the current
/// configuration (`None` if the file does not validate as it is).
fn edit(
    common: &Common,
    change: impl FnOnce(&mut Doc, Option<&Config>) -> Result<(), Failure>,
) -> Result<Edited, Failure> {
    let before = read(&common.config)?;
    let current = Config::from_yaml(&before).ok();
    let mut doc = Doc::parse(&before);
    change(&mut doc, current.as_ref())?;
    let after = doc.render();
    if after == before {
        return Ok(Edited {
            changed: false,
            reload: Reload::Skipped,
        });
    }
    Config::from_yaml(&after).map_err(|e| Failure::invalid(&e))?;
    file::write_atomic(&common.config, &after)
        .map_err(|e| Failure::io(format!("cannot write {}: {e}", common.config.display())))?;
    let reload = if common.no_reload {
        Reload::Skipped
    } else {
        service::reload(&common.pid_file)
    };
    Ok(Edited {
        changed: true,
        reload,
    })
}

// ---------------------------------------------------------------------------------------------
// config get / set
// ---------------------------------------------------------------------------------------------

/// A key as the user typed it, resolved.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    /// `listen_port`: the port of every `listen` address.
    ListenPort,
    Path(Vec<String>),
}

/// `limits.idle_timeout`, `idle_timeout` (unique second-level key), `IdleTimeout` (the old
/// cmdlets' spelling), `listen_port` / `ListenPort` / `port`.
fn resolve_key(key: &str) -> Result<Key, Failure> {
    let snake = to_snake(key);
    if matches!(snake.as_str(), "listen_port" | "port") {
        return Ok(Key::ListenPort);
    }
    let defaults = Doc::parse(DEFAULT_YAML);
    let parts: Vec<&str> = snake.split('.').collect();
    if defaults.get(&parts).is_some() || relay_key(&parts) {
        return Ok(Key::Path(parts.iter().map(|s| (*s).to_owned()).collect()));
    }
    if parts.len() == 1 {
        let mut hits = Vec::new();
        for section in top_level_keys(&defaults) {
            if let Some(Value::Map(children)) = defaults.get(&[section.as_str()]) {
                if children.iter().any(|c| *c == parts[0]) {
                    hits.push(vec![section.clone(), parts[0].to_owned()]);
                }
            }
        }
        if hits.len() == 1 {
            return Ok(Key::Path(hits.remove(0)));
        }
    }
    Err(Failure::usage(format!(
        "unknown key {key:?}; keys are those of `splicegate default-config`, dotted for \
         sections (limits.idle_timeout), plus listen_port"
    )))
}

/// `relay_proxy` keys, which the default file leaves out (no relay by default).
fn relay_key(parts: &[&str]) -> bool {
    match parts {
        ["relay_proxy"] => true,
        ["relay_proxy", k] => RELAY_KEYS.contains(k),
        _ => false,
    }
}

const RELAY_KEYS: [&str; 5] = [
    "address",
    "username",
    "password_file",
    "ca_file",
    "health_check",
];

/// `IdleTimeout` -> `idle_timeout`; `limits.IdleTimeout` -> `limits.idle_timeout`.
fn to_snake(key: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(if c == '-' { '_' } else { c });
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

fn top_level_keys(doc: &Doc) -> Vec<String> {
    doc.render()
        .lines()
        .filter(|l| !l.starts_with([' ', '#', '-']) && !l.trim().is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, _)| k.trim().to_owned()))
        .collect()
}

/// The value at `path` in the file, else in the defaults.
fn lookup(doc: &Doc, path: &[&str]) -> Option<(Value, &'static str)> {
    match doc.get(path) {
        Some(v) => Some((v, "file")),
        None => Doc::parse(DEFAULT_YAML).get(path).map(|v| (v, "default")),
    }
}

fn value_json(v: &Value) -> Json {
    match v {
        Value::Scalar(s) if s == "null" || s == "~" => Json::Null,
        Value::Scalar(s) | Value::Block(s) => output::text(s),
        Value::Seq(items) => output::texts(items),
        Value::Map(keys) => output::texts(keys),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Scalar(s) | Value::Block(s) => s.clone(),
        Value::Seq(items) => items.join("\n"),
        Value::Map(keys) => keys.join("\n"),
    }
}

fn config_get(common: &Common, key: Option<&str>) -> Result<Report, Failure> {
    let text = read(&common.config)?;
    let doc = Doc::parse(&text);
    let Some(key) = key else {
        let cfg = Config::from_yaml(&text).map_err(|e| Failure {
            code: EXIT_INVALID,
            message: format!("{}: invalid configuration:\n{e}", common.config.display()),
        })?;
        let mut fields = Vec::new();
        let defaults = Doc::parse(DEFAULT_YAML);
        let mut keys = top_level_keys(&defaults);
        for k in top_level_keys(&doc) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for k in keys {
            let entry = match lookup(&doc, &[k.as_str()]) {
                Some((Value::Map(children), _)) => {
                    let mut sub = Vec::new();
                    for c in children {
                        if let Some((v, _)) = lookup(&doc, &[k.as_str(), c.as_str()]) {
                            sub.push((c, value_json(&v)));
                        }
                    }
                    output::object(sub)
                }
                Some((v, _)) => value_json(&v),
                None => Json::Null,
            };
            fields.push((k, entry));
        }
        return Ok(Report {
            text: cfg.summary(),
            json: output::obj([
                ("path", output::text(common.config.display().to_string())),
                ("config", output::object(fields)),
            ]),
        });
    };
    match resolve_key(key)? {
        Key::ListenPort => {
            let listen = match doc.get(&["listen"]) {
                Some(Value::Seq(v)) => v,
                _ => match Doc::parse(DEFAULT_YAML).get(&["listen"]) {
                    Some(Value::Seq(v)) => v,
                    _ => Vec::new(),
                },
            };
            let mut ports: Vec<String> = listen
                .iter()
                .filter_map(|a| a.rsplit_once(':').map(|(_, p)| p.to_owned()))
                .collect();
            ports.dedup();
            Ok(Report {
                text: ports.join("\n"),
                json: output::obj([
                    ("key", output::text("listen_port")),
                    ("value", output::texts(&ports)),
                ]),
            })
        }
        Key::Path(path) => {
            let parts: Vec<&str> = path.iter().map(String::as_str).collect();
            let dotted = path.join(".");
            let (v, source) =
                lookup(&doc, &parts).unwrap_or((Value::Scalar("null".into()), "default"));
            let v = match v {
                // A section: show its keys with their values.
                Value::Map(children) => {
                    let mut lines = Vec::new();
                    let mut sub = Vec::new();
                    for c in children {
                        let mut p = parts.clone();
                        p.push(&c);
                        if let Some((cv, _)) = lookup(&doc, &p) {
                            lines.push(format!("{c}: {}", value_text(&cv).replace('\n', ", ")));
                            sub.push((c.clone(), value_json(&cv)));
                        }
                    }
                    return Ok(Report {
                        text: lines.join("\n"),
                        json: output::obj([
                            ("key", output::text(&dotted)),
                            ("value", output::object(sub)),
                            ("source", output::text(source)),
                        ]),
                    });
                }
                v => v,
            };
            Ok(Report {
                text: value_text(&v),
                json: output::obj([
                    ("key", output::text(&dotted)),
                    ("value", value_json(&v)),
                    ("source", output::text(source)),
                ]),
            })
        }
    }
}

/// A scalar as YAML: integers, booleans and null bare, everything else double-quoted.
fn scalar_yaml(v: &str) -> String {
    let v = v.trim();
    if v.parse::<i64>().is_ok() || matches!(v, "true" | "false" | "null") {
        v.to_owned()
    } else {
        quote(v)
    }
}

/// A list value: YAML flow text as given, or a comma-separated list.
fn list_yaml(v: &str) -> String {
    let v = v.trim();
    if v.starts_with('[') {
        return v.to_owned();
    }
    let items: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(scalar_yaml)
        .collect();
    format!("[{}]", items.join(", "))
}

/// `allowed_hosts` as a comma-separated list: the commas inside an entry's port list
/// (`*.cloudapp.net:443,9354,30000-30199`) stay with that entry, since a bare number or range is
/// never a host pattern.
fn host_list_yaml(v: &str) -> String {
    let v = v.trim();
    if v.starts_with('[') {
        return v.to_owned();
    }
    let is_ports = |s: &str| {
        !s.is_empty()
            && s.split('-')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut items: Vec<String> = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match items.last_mut() {
            Some(last) if is_ports(item) && last.contains(':') => {
                last.push(',');
                last.push_str(item);
            }
            _ => items.push(item.to_owned()),
        }
    }
    let quoted: Vec<String> = items.iter().map(|i| quote(i)).collect();
    format!("[{}]", quoted.join(", "))
}

fn config_set(common: &Common, key: &str, value: &str) -> Result<Report, Failure> {
    let resolved = resolve_key(key)?;
    let (label, edited) = match resolved {
        Key::ListenPort => {
            let port: u16 = value
                .trim()
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    Failure::usage(format!("listen_port: {value:?} is not a port (1-65535)"))
                })?;
            let edited = edit(common, |doc, cfg| {
                let listen: Vec<String> = match cfg {
                    Some(c) => c.listen.iter().map(ToString::to_string).collect(),
                    None => match doc.get(&["listen"]) {
                        Some(Value::Seq(v)) => v,
                        _ => Vec::new(),
                    },
                };
                let listen = if listen.is_empty() {
                    vec!["0.0.0.0:8080".to_owned(), "[::]:8080".to_owned()]
                } else {
                    listen
                };
                let mut out: Vec<String> = Vec::new();
                for a in listen {
                    let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
                    let new = quote(&format!("{host}:{port}"));
                    if !out.contains(&new) {
                        out.push(new);
                    }
                }
                doc.set(&["listen"], &format!("[{}]", out.join(", ")));
                Ok(())
            })?;
            ("listen_port".to_owned(), edited)
        }
        Key::Path(path) => {
            let parts: Vec<&str> = path.iter().map(String::as_str).collect();
            let dotted = path.join(".");
            let default = Doc::parse(DEFAULT_YAML).get(&parts);
            let yaml = match default {
                Some(Value::Seq(_)) if parts == ["allowed_hosts"] => host_list_yaml(value),
                Some(Value::Seq(_)) => list_yaml(value),
                Some(Value::Map(children)) if !children.is_empty() => {
                    return Err(Failure::usage(format!(
                        "{dotted} is a section; set one of its keys: {}",
                        children
                            .iter()
                            .map(|c| format!("{dotted}.{c}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
                _ if parts == ["relay_proxy"] => {
                    return Err(Failure::usage(
                        "use `splicegate relay-proxy set|clear` for the relay proxy",
                    ))
                }
                _ => scalar_yaml(value),
            };
            let edited = edit(common, |doc, _| {
                doc.set(&parts, &yaml);
                Ok(())
            })?;
            (dotted, edited)
        }
    };
    Ok(Report {
        text: edited.text(common, &format!("set {label} = {value}")),
        json: edited
            .json()
            .with("key", output::text(label))
            .with("value", output::text(value)),
    })
}

// ---------------------------------------------------------------------------------------------
// allowed-host / allowed-client-cert
// ---------------------------------------------------------------------------------------------

/// Entries that come from `presets:` and `workspaces:`, with where each comes from.
fn preset_hosts(cfg: &Config) -> Vec<(HostEntry, String)> {
    cfg.preset_hosts
        .iter()
        .map(|h| (h.entry.clone(), h.origin()))
        .collect()
}

/// `HOST` or `HOST:PORTS`, as in `allowed_hosts`.
fn parse_entry(s: &str) -> Result<HostEntry, Failure> {
    HostEntry::parse(s.trim()).map_err(|e| {
        Failure::usage(format!(
            "{s:?} is not a valid host pattern: {e} (expected HOST or HOST:PORTS, as in \
             \"*.example.com\" or \"*.cloudapp.net:443,9354,30000-30199\")"
        ))
    })
}

/// Whether the file's item `item` is what `remove` asked for: the same entry, or, when the
/// request names no ports, any entry for the same pattern.
fn entry_matches(item: &str, wanted: &HostEntry) -> bool {
    match HostEntry::parse(item.trim()) {
        Ok(e) if wanted.ports().is_none() => e.pattern() == wanted.pattern(),
        Ok(e) => e == *wanted,
        Err(_) => false,
    }
}

/// `ports 443,9354` or `ports (global) 443` for one entry; `global` is `allowed_ports`.
fn ports_column(entry: &str, cfg: Option<&Config>) -> String {
    match (HostEntry::parse(entry.trim()), cfg) {
        (Ok(e), Some(cfg)) => cfg.ports_text(&e),
        (Ok(e), None) => e
            .ports()
            .map_or_else(|| "ports (global)".to_owned(), |p| format!("ports {p}")),
        (Err(_), _) => "(invalid)".to_owned(),
    }
}

/// The host part of an entry, for the first column of `list`.
fn host_column(entry: &str) -> String {
    HostEntry::parse(entry.trim())
        .map(|e| e.pattern().to_string())
        .unwrap_or_else(|_| entry.to_owned())
}

fn allowed_host(common: &Common, action: ListAction) -> Result<Report, Failure> {
    match action {
        ListAction::List { usage: true } => live::rule_usage(common),
        ListAction::List { usage: false } => {
            let text = read(&common.config)?;
            let doc = Doc::parse(&text);
            let cfg = Config::from_yaml(&text).ok();
            let with_presets = cfg.as_ref().is_some_and(|c| !c.presets.is_empty());
            let (local, source) = match doc.get(&["allowed_hosts"]) {
                Some(Value::Seq(v)) => (v, "file"),
                Some(_) => (Vec::new(), "file"),
                None if with_presets => (Vec::new(), "presets only"),
                None => (
                    crate::config::DEFAULT_ALLOWED_HOSTS
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect(),
                    "default",
                ),
            };
            let presets = cfg.as_ref().map(preset_hosts).unwrap_or_default();
            let mut out = String::new();
            out.push_str(&format!(
                "local (allowed_hosts{}):\n",
                if source == "default" {
                    ", built-in default"
                } else {
                    ""
                }
            ));
            let width = local
                .iter()
                .map(|h| host_column(h).len())
                .max()
                .unwrap_or(0);
            for h in &local {
                out.push_str(&format!(
                    "  {:width$}  {}\n",
                    host_column(h),
                    ports_column(h, cfg.as_ref())
                ));
            }
            if local.is_empty() {
                out.push_str("  (none)\n");
            }
            let presets: Vec<(String, String)> = presets
                .iter()
                .map(|(e, from)| (e.to_string(), from.clone()))
                .collect();
            if !presets.is_empty() {
                out.push_str("from presets and workspaces (change with `config set presets|workspaces|cloud|regions`):\n");
                let width = presets
                    .iter()
                    .map(|(h, _)| host_column(h).len())
                    .max()
                    .unwrap_or(0);
                let ports: Vec<String> = presets
                    .iter()
                    .map(|(h, _)| ports_column(h, cfg.as_ref()))
                    .collect();
                let ports_width = ports.iter().map(String::len).max().unwrap_or(0);
                for ((h, from), ports) in presets.iter().zip(&ports) {
                    out.push_str(&format!(
                        "  {:width$}  {ports:ports_width$}  [{from}]\n",
                        host_column(h)
                    ));
                }
            }
            Ok(Report {
                text: out,
                json: output::obj([
                    ("local", output::texts(&local)),
                    ("local_source", output::text(source)),
                    (
                        "presets",
                        Json::Array(
                            presets
                                .iter()
                                .map(|(h, from)| {
                                    output::obj([
                                        ("host", output::text(h)),
                                        ("from", output::text(from)),
                                    ])
                                })
                                .collect(),
                        ),
                    ),
                ]),
            })
        }
        ListAction::Add { value } => {
            let host = parse_entry(&value)?.to_string();
            let edited = edit(common, |doc, cfg| {
                let with_presets = cfg.is_some_and(|c| !c.presets.is_empty());
                match doc.get(&["allowed_hosts"]) {
                    // With presets, the built-in list is not in force: start a local list.
                    None if with_presets => {
                        doc.set(&["allowed_hosts"], &format!("[{}]", quote(&host)))
                    }
                    Some(Value::Seq(items)) => {
                        if items.iter().any(|i| {
                            HostEntry::parse(i.trim())
                                .ok()
                                .map(|e| e.to_string())
                                .as_deref()
                                == Some(host.as_str())
                        }) {
                            return Ok(());
                        }
                        doc.seq_push(&["allowed_hosts"], &quote(&host));
                    }
                    // Not in the file: the built-in default list is in force. Write it out so
                    // adding a host does not silently drop the defaults.
                    None => {
                        let mut items: Vec<String> = crate::config::DEFAULT_ALLOWED_HOSTS
                            .iter()
                            .map(|h| quote(h))
                            .collect();
                        if !crate::config::DEFAULT_ALLOWED_HOSTS.contains(&host.as_str()) {
                            items.push(quote(&host));
                        }
                        doc.set(&["allowed_hosts"], &format!("[{}]", items.join(", ")));
                    }
                    Some(_) => doc.seq_push(&["allowed_hosts"], &quote(&host)),
                }
                Ok(())
            })?;
            Ok(Report {
                text: edited.text(common, &format!("allowed host {host} added")),
                json: edited.json().with("host", output::text(host)),
            })
        }
        ListAction::Remove { value } => {
            let wanted = parse_entry(&value)?;
            let host = wanted.to_string();
            let edited = edit(common, |doc, cfg| {
                let removed = doc.seq_remove(&["allowed_hosts"], |i| entry_matches(i, &wanted));
                if removed == 0 {
                    let from_preset = cfg
                        .map(preset_hosts)
                        .unwrap_or_default()
                        .into_iter()
                        .find(|(e, _)| entry_matches(&e.to_string(), &wanted));
                    return Err(Failure::usage(match from_preset {
                        Some((_, from)) => format!(
                            "{host} is not a local entry: it comes from {from}; change `presets`/`workspaces` instead"
                        ),
                        None => format!("{host} is not in allowed_hosts"),
                    }));
                }
                Ok(())
            })?;
            Ok(Report {
                text: edited.text(common, &format!("allowed host {host} removed")),
                json: edited.json().with("host", output::text(host)),
            })
        }
    }
}

const CLIENT_CERTS: [&str; 2] = ["tls", "allowed_client_certificates"];

fn client_cert(common: &Common, action: ListAction) -> Result<Report, Failure> {
    match action {
        ListAction::List { usage: true } => Err(Failure::usage(
            "--usage applies to `allowed-host list` (client certificates are not counted)",
        )),
        ListAction::List { usage: false } => {
            let doc = Doc::parse(&read(&common.config)?);
            let subjects = match doc.get(&CLIENT_CERTS) {
                Some(Value::Seq(v)) => v,
                _ => Vec::new(),
            };
            let text = if subjects.is_empty() {
                "no client certificate subjects configured (no client certificate check)".to_owned()
            } else {
                subjects.join("\n")
            };
            Ok(Report {
                text,
                json: output::obj([("subjects", output::texts(&subjects))]),
            })
        }
        ListAction::Add { value } => {
            let subject = value.trim().to_owned();
            if subject.is_empty() || subject.contains('\n') {
                return Err(Failure::usage(
                    "a certificate subject such as \"CN=agent01\" is required",
                ));
            }
            let edited = edit(common, |doc, _| {
                if let Some(Value::Seq(items)) = doc.get(&CLIENT_CERTS) {
                    if items.contains(&subject) {
                        return Ok(());
                    }
                }
                doc.seq_push(&CLIENT_CERTS, &quote(&subject));
                Ok(())
            })?;
            Ok(Report {
                text: edited.text(
                    common,
                    &format!("client certificate subject {subject:?} added"),
                ),
                json: edited.json().with("subject", output::text(subject)),
            })
        }
        ListAction::Remove { value } => {
            let subject = value.trim().to_owned();
            let edited = edit(common, |doc, _| {
                if doc.seq_remove(&CLIENT_CERTS, |s| s == subject) == 0 {
                    return Err(Failure::usage(format!(
                        "{subject:?} is not in tls.allowed_client_certificates"
                    )));
                }
                Ok(())
            })?;
            Ok(Report {
                text: edited.text(
                    common,
                    &format!("client certificate subject {subject:?} removed"),
                ),
                json: edited.json().with("subject", output::text(subject)),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// relay-proxy
// ---------------------------------------------------------------------------------------------

/// `http://user:secret@host` -> `http://user:***@host`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some(x) => x,
        None => return url.to_owned(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

fn relay_proxy(common: &Common, action: RelayAction) -> Result<Report, Failure> {
    const R: &str = "relay_proxy";
    match action {
        RelayAction::Get => {
            let doc = Doc::parse(&read(&common.config)?);
            let mut lines = Vec::new();
            let mut fields = Vec::new();
            let configured = matches!(doc.get(&[R]), Some(Value::Map(ref k)) if !k.is_empty());
            if configured {
                for k in RELAY_KEYS {
                    if let Some(Value::Scalar(v)) = doc.get(&[R, k]) {
                        if v == "null" {
                            continue;
                        }
                        let v = if k == "address" { mask_password(&v) } else { v };
                        lines.push(format!("{k}: {v}"));
                        fields.push((k.to_owned(), output::text(v)));
                    }
                }
            } else {
                lines.push("no relay proxy: tunnels connect directly".to_owned());
            }
            Ok(Report {
                text: lines.join("\n"),
                json: output::obj([
                    ("configured", Json::Bool(configured)),
                    ("relay_proxy", output::object(fields)),
                ]),
            })
        }
        RelayAction::Clear => relay_clear(common),
        RelayAction::Set {
            address,
            username,
            password_file,
            ca_file,
        } => {
            if address.trim().is_empty() {
                return relay_clear(common);
            }
            if password_file.is_some() && username.is_none() {
                return Err(Failure::usage("--password-file needs --username"));
            }
            if let Some(p) = &password_file {
                if let Err(e) = std::fs::metadata(p) {
                    return Err(Failure::usage(format!(
                        "--password-file {}: {e}",
                        p.display()
                    )));
                }
            }
            let edited = edit(common, |doc, _| {
                if !matches!(doc.get(&[R]), Some(Value::Map(_))) {
                    doc.remove(&[R]);
                }
                doc.set(&[R, "address"], &quote(address.trim()));
                match &username {
                    Some(u) => doc.set(&[R, "username"], &quote(u)),
                    None => {
                        doc.remove(&[R, "username"]);
                    }
                }
                match &password_file {
                    Some(p) => doc.set(&[R, "password_file"], &quote(&p.display().to_string())),
                    None => {
                        doc.remove(&[R, "password_file"]);
                    }
                }
                if let Some(c) = &ca_file {
                    doc.set(&[R, "ca_file"], &quote(&c.display().to_string()));
                }
                Ok(())
            })?;
            let shown = mask_password(address.trim());
            Ok(Report {
                text: edited.text(common, &format!("relay proxy set to {shown}")),
                json: edited.json().with("address", output::text(shown)),
            })
        }
    }
}

fn relay_clear(common: &Common) -> Result<Report, Failure> {
    let edited = edit(common, |doc, _| {
        doc.remove(&["relay_proxy"]);
        Ok(())
    })?;
    Ok(Report {
        text: edited.text(common, "relay proxy cleared: tunnels connect directly"),
        json: edited.json(),
    })
}

// ---------------------------------------------------------------------------------------------
// init
// ---------------------------------------------------------------------------------------------

/// The text `init` writes: the commented default configuration with the given port, relay and
/// workspaces filled in.
pub fn init_text(args: &InitArgs) -> Result<String, Failure> {
    if args.port == 0 {
        return Err(Failure::usage("--port must be 1-65535"));
    }
    let mut doc = Doc::parse(DEFAULT_YAML);
    doc.set(
        &["listen"],
        &format!(
            "[{}, {}]",
            quote(&format!("0.0.0.0:{}", args.port)),
            quote(&format!("[::]:{}", args.port))
        ),
    );
    let flow = |items: &[String]| {
        let v: Vec<String> = items.iter().map(|i| quote(i.trim())).collect();
        format!("[{}]", v.join(", "))
    };
    let mut presets = args.presets.clone();
    if presets.is_empty() && !args.workspaces.is_empty() {
        presets.push("azure-monitor-agent".to_owned());
    }
    if let Some(cloud) = &args.cloud {
        doc.set(&["cloud"], &quote(cloud.trim()));
    }
    if !presets.is_empty() {
        doc.set(&["presets"], &flow(&presets));
        // The presets replace the built-in list; local additions go here.
        doc.set(&["allowed_hosts"], "[]");
    }
    if !args.workspaces.is_empty() {
        doc.set(&["workspaces"], &flow(&args.workspaces));
    }
    if !args.regions.is_empty() {
        doc.set(&["regions"], &flow(&args.regions));
    }
    if let Some(relay) = &args.relay {
        if !relay.trim().is_empty() {
            doc.remove(&["relay_proxy"]);
            doc.set(&["relay_proxy", "address"], &quote(relay.trim()));
            if let Some(u) = &args.username {
                doc.set(&["relay_proxy", "username"], &quote(u));
            }
            if let Some(p) = &args.password_file {
                doc.set(
                    &["relay_proxy", "password_file"],
                    &quote(&p.display().to_string()),
                );
            }
        }
    }
    let header = format!(
        "# Written by `splicegate init` (splicegate {}). Edit with `splicegate config set`,\n\
         # `splicegate allowed-host add`, ... or by hand; a running gateway reloads on save.\n#\n",
        env!("CARGO_PKG_VERSION")
    );
    let text = format!("{header}{}", doc.render());
    Config::from_yaml(&text).map_err(|e| Failure::invalid(&e))?;
    Ok(text)
}

fn init(common: &Common, args: &InitArgs) -> Result<Report, Failure> {
    let text = init_text(args)?;
    let out = args.output.clone().unwrap_or_else(|| common.config.clone());
    if out.exists() && !args.force {
        return Err(Failure::usage(format!(
            "{} exists; use --force to replace it",
            out.display()
        )));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::io(format!("cannot create {}: {e}", dir.display())))?;
    }
    file::write_atomic(&out, &text)
        .map_err(|e| Failure::io(format!("cannot write {}: {e}", out.display())))?;
    Ok(Report {
        text: format!(
            "wrote {}\ncheck it with `splicegate check-config {}`, then `systemctl restart splicegate`",
            out.display(),
            out.display()
        ),
        json: output::obj([("path", output::text(out.display().to_string()))]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_resolve_with_aliases() {
        assert_eq!(resolve_key("ListenPort").unwrap(), Key::ListenPort);
        assert_eq!(resolve_key("listen_port").unwrap(), Key::ListenPort);
        assert_eq!(
            resolve_key("IdleTimeout").unwrap(),
            Key::Path(vec!["limits".into(), "idle_timeout".into()])
        );
        assert_eq!(
            resolve_key("limits.idle_timeout").unwrap(),
            Key::Path(vec!["limits".into(), "idle_timeout".into()])
        );
        assert_eq!(
            resolve_key("workers").unwrap(),
            Key::Path(vec!["workers".into()])
        );
        assert_eq!(resolve_key("nope").unwrap_err().code, EXIT_USAGE);
    }

    #[test]
    fn values_become_yaml() {
        assert_eq!(scalar_yaml("8"), "8");
        assert_eq!(scalar_yaml("true"), "true");
        assert_eq!(scalar_yaml("15m"), "\"15m\"");
        assert_eq!(list_yaml("443, 8443"), "[443, 8443]");
        assert_eq!(list_yaml("a.example,*.b"), "[\"a.example\", \"*.b\"]");
        assert_eq!(list_yaml("[\"x\"]"), "[\"x\"]");
        assert_eq!(
            host_list_yaml("a.example, *.cloudapp.net:443,9354,30000-30199,b.example:80,443,c"),
            "[\"a.example\", \"*.cloudapp.net:443,9354,30000-30199\", \"b.example:80,443\", \"c\"]"
        );
        assert_eq!(host_list_yaml("a,443"), "[\"a\", \"443\"]");
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_password("http://u:pw@p:3128"), "http://u:***@p:3128");
        assert_eq!(mask_password("http://p:3128"), "http://p:3128");
    }

    #[test]
    fn init_writes_a_valid_commented_config() {
        let args = InitArgs {
            port: 3128,
            relay: None,
            username: None,
            password_file: None,
            workspaces: Vec::new(),
            presets: Vec::new(),
            cloud: None,
            regions: Vec::new(),
            output: None,
            force: false,
        };
        let text = init_text(&args).unwrap();
        let cfg = Config::from_yaml(&text).unwrap();
        assert!(!cfg.listen.is_empty());
        assert!(cfg.listen.iter().all(|a| a.port() == 3128));
        assert!(text.contains("# Destination ports a client may CONNECT to"));
    }
}
