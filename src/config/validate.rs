//! The second stage of loading: raw nodes -> a validated [`Config`].
//!
//! Each key is converted independently; a bad value records a [`Problem`] (key path, line,
//! what was found, what was expected) and the default stands in, so one pass reports every
//! problem in the document. Absent keys take their defaults. A `null` value is an error except
//! where it has a meaning: `metrics_listen: null` disables metrics, and an empty `hosts:`,
//! `allowed_destination_networks:`, `resolver.nameservers:`, `tls.allowed_client_certificates:`,
//! `limits:`, `resolver:` or `tls:` is the same as an empty one.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::duration::{format_duration, parse_duration, MAX_DURATION};
use super::error::Problem;
use super::raw::{
    Node, RawClientAuth, RawConfig, RawLimits, RawLogging, RawRelay, RawResolver, RawTls,
};
use super::{
    Config, DataPath, EngineKind, Limits, LoggingSettings, TakeoverSocket, MAX_WORKERS,
    MIN_MEMORY_BUDGET,
};
use crate::auth::{ClientAuthSettings, Users};
use crate::events::limiter::RefusalBudget;
use crate::policy::{normalize_host, HostEntry, HostPattern};
use crate::presets::{self, Cloud, Preset, Region, WorkspaceId, MAX_WORKSPACES};
use crate::proto::proxy::ProxySources;
use crate::proto::tls::{normalize_subject, Tls13Policy, TlsSettings, TlsVersion};
use crate::relay::{self, RelaySettings};
use crate::resolve::ResolverSettings;
use std::path::PathBuf;

const EXPECT_LISTEN: &str = "a list of socket addresses such as \"0.0.0.0:8080\"";

/// The addresses of `listen` and, entry by entry, their PROXY protocol sources.
type Listen = (Vec<SocketAddr>, Vec<Option<ProxySources>>);
const EXPECT_SOCKET: &str = "a socket address such as \"0.0.0.0:8080\" or \"[::]:8080\"";
const EXPECT_METRICS: &str =
    "a socket address such as \"127.0.0.1:9464\", or null to disable the metrics listener";
const EXPECT_HEALTH: &str = "a socket address such as \"0.0.0.0:9465\", or null for no probe port";
const EXPECT_TAKEOVER: &str = "an absolute path of at most 107 bytes such as \
    \"/run/splicegate/takeover.sock\", or null to disable takeover";
/// The most `limits.drain_grace`.
const MAX_DRAIN_GRACE: Duration = Duration::from_secs(3600);
const EXPECT_SIZE: &str =
    "0 (off), a whole number of bytes, or a size such as \"512MiB\" or \"2GiB\"";
const MIN_OVERLOAD_SAMPLE: Duration = Duration::from_millis(10);
const MAX_OVERLOAD_SAMPLE: Duration = Duration::from_secs(10);
const EXPECT_PORTS: &str = "a list of port numbers from 1 to 65535, such as [443]";
const EXPECT_PORT: &str = "a port number from 1 to 65535";
const EXPECT_HOSTS_LIST: &str =
    "a list of host patterns such as \"example.com\", \"*.example.com\" or \"*.example.com:443,8443\"";
const EXPECT_PRESETS: &str = "a list of presets such as [azure-monitor-agent]";
const EXPECT_PRESET: &str = "one of azure-monitor-agent, log-analytics-agent, \
    automation-hybrid-worker, azure-arc-connected-machine, operations-manager";
const EXPECT_WORKSPACES: &str = "a list of Log Analytics workspace IDs (GUIDs)";
const EXPECT_WORKSPACE: &str =
    "a workspace ID, a GUID such as \"5e1f3a52-7b1d-4c2e-9a0b-1234567890ab\"";
const EXPECT_REGIONS: &str = "a list of Azure regions such as [westeurope, eastus2]";
const EXPECT_REGION: &str =
    "an Azure region's name in lower case without spaces, such as westeurope";
const EXPECT_PATTERN: &str = "a host pattern such as \"example.com\" or \"*.example.com\", \
    optionally with its own ports and ranges as in \"*.example.com:443,30000-30199\"";
const EXPECT_OVERRIDES: &str =
    "a mapping of host names to lists of IP addresses, such as `example.com: [\"192.0.2.10\"]`";
const EXPECT_OVERRIDE_IPS: &str = "a list of IP addresses such as [\"192.0.2.10\"]";
const EXPECT_IP: &str = "an IP address such as \"192.0.2.10\" or \"2001:db8::10\"";
const EXPECT_BOOL: &str = "true or false";
const EXPECT_NETWORKS: &str =
    "a list of networks such as \"10.0.0.0/8\" or single addresses such as \"10.1.2.3\"";
const EXPECT_NETWORK: &str =
    "a network such as \"10.0.0.0/8\" or \"fd00::/8\", or a single address";
const EXPECT_USERS_FILE: &str = "the path of the users file, such as \"/etc/splicegate/users\"";
const EXPECT_REALM: &str =
    "a realm name such as \"splicegate\", without '\"', '\\' or control characters";
const EXPECT_USER_HOSTS: &str = "a mapping of user names to lists of host patterns, such as \
    `alice: [\"*.extra.example.com:443\"]`";
const EXPECT_USER_NAME: &str = "a user name without ':', spaces or control characters";
const EXPECT_TLS_VERSION: &str =
    "one of \"1.0\", \"1.1\", \"1.2\", \"1.3\" (SSL 2.0 and 3.0 are always refused)";
const EXPECT_SUBJECTS: &str =
    "a list of certificate subjects such as \"CN=agent01\" or \"CN=agent01,O=Contoso\"";
const EXPECT_SUBJECT: &str =
    "a certificate subject such as \"CN=agent01\" or \"CN=agent01,O=Contoso\"";
const EXPECT_DURATION: &str =
    "a duration such as \"10s\", \"500ms\", \"15m\" or \"1h30m\", or a whole number of seconds";
const EXPECT_RELAY_URL: &str = "a URL such as \"http://proxy.corp:8080\"";
const EXPECT_NAMESERVERS: &str =
    "a list of name servers such as \"127.0.0.1:53\" or \"192.0.2.53\" (port 53)";
const EXPECT_NAMESERVER: &str =
    "a name server address such as \"127.0.0.1:53\", \"[2001:db8::53]:53\" or \"192.0.2.53\"";

/// The longest `limits.reload_debounce`. With at most [`MAX_RELOAD_RETRIES`] re-reads, a reload
/// of a file that never holds still gives up within about a minute (the control loop handles
/// SIGTERM once it has).
const MAX_RELOAD_DEBOUNCE: Duration = Duration::from_secs(5);
/// The most `limits.accept_backoff_max`: a worker never stops accepting for longer.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(60);
/// The most `limits.worker_restart_delay`.
const MAX_WORKER_RESTART_DELAY: Duration = Duration::from_secs(3600);
/// The most `limits.admin_timeout`.
const MAX_ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// The most `limits.reload_retries`.
const MAX_RELOAD_RETRIES: usize = 10;

/// Converts the raw document, or returns every problem found.
pub(super) fn validate(raw: RawConfig) -> Result<Config, Vec<Problem>> {
    let mut c = Checker::default();
    let defaults = Config::default();
    let cloud = c
        .choice(
            "cloud",
            raw.cloud.as_ref(),
            &[
                ("public", Cloud::Public),
                ("usgov", Cloud::UsGov),
                ("china", Cloud::China),
            ],
        )
        .unwrap_or_default();
    let preset_list = c.presets(raw.presets.as_ref()).unwrap_or_default();
    let workspaces = c.workspaces(raw.workspaces.as_ref()).unwrap_or_default();
    let regions = c.regions(raw.regions.as_ref()).unwrap_or_default();
    if preset_list.is_empty() {
        for (key, node, used) in [
            (
                "workspaces",
                raw.workspaces.as_ref(),
                !workspaces.is_empty(),
            ),
            ("regions", raw.regions.as_ref(), !regions.is_empty()),
        ] {
            if let (Some(node), true) = (node, used) {
                c.report(
                    key,
                    node,
                    format!(
                        "{key} are only used by presets; add one to `presets` \
                         (azure-monitor-agent, log-analytics-agent, automation-hybrid-worker, ...)"
                    ),
                );
            }
        }
    }
    let raw_resolver = raw.resolver.unwrap_or_default();
    let listen = c
        .listen(raw.listen.as_ref())
        .unwrap_or((defaults.listen, defaults.listen_proxy));
    let mut cfg = Config {
        listen: listen.0,
        listen_proxy: listen.1,
        metrics_listen: c
            .metrics_listen(raw.metrics_listen.as_ref())
            .unwrap_or(defaults.metrics_listen),
        metrics_public: c
            .boolean("metrics_public", raw.metrics_public.as_ref())
            .unwrap_or(defaults.metrics_public),
        health_listen: c
            .health_listen(raw.health_listen.as_ref())
            .unwrap_or(defaults.health_listen),
        takeover_socket: c
            .takeover_socket(raw.takeover_socket.as_ref())
            .unwrap_or(defaults.takeover_socket),
        admin_socket: c
            .admin_socket(raw.admin_socket.as_ref())
            .unwrap_or(defaults.admin_socket),
        workers: c
            .count(
                "workers",
                raw.workers.as_ref(),
                0,
                MAX_WORKERS,
                "a whole number from 0 (one per online CPU) to 1024",
            )
            .unwrap_or(defaults.workers),
        engine: c
            .choice(
                "engine",
                raw.engine.as_ref(),
                &[
                    ("auto", EngineKind::Auto),
                    ("uring", EngineKind::Uring),
                    ("epoll", EngineKind::Epoll),
                ],
            )
            .unwrap_or(defaults.engine),
        data_path: c
            .choice(
                "data_path",
                raw.data_path.as_ref(),
                &[("splice", DataPath::Splice), ("copy", DataPath::Copy)],
            )
            .unwrap_or(defaults.data_path),
        allowed_ports: c
            .allowed_ports(raw.allowed_ports.as_ref())
            .unwrap_or(defaults.allowed_ports),
        // With presets, a file without `allowed_hosts` allows only what the presets expand to.
        allowed_hosts: match raw.allowed_hosts.as_ref() {
            None if !preset_list.is_empty() => Vec::new(),
            at => c
                .allowed_hosts(at, !preset_list.is_empty())
                .unwrap_or(defaults.allowed_hosts),
        },
        local_hosts: 0,
        hosts: c.hosts(raw.hosts.as_ref()).unwrap_or(defaults.hosts),
        allow_private_destinations: c
            .boolean(
                "allow_private_destinations",
                raw.allow_private_destinations.as_ref(),
            )
            .unwrap_or(defaults.allow_private_destinations),
        revoke_on_reload: c
            .boolean("revoke_on_reload", raw.revoke_on_reload.as_ref())
            .unwrap_or(defaults.revoke_on_reload),
        allowed_destination_networks: c
            .networks(
                "allowed_destination_networks",
                raw.allowed_destination_networks.as_ref(),
            )
            .unwrap_or(defaults.allowed_destination_networks),
        allowed_client_networks: c
            .networks(
                "allowed_client_networks",
                raw.allowed_client_networks.as_ref(),
            )
            .unwrap_or(defaults.allowed_client_networks),
        client_auth: raw.client_auth.as_ref().and_then(|r| c.client_auth(r)),
        limits: c.limits(raw.limits.unwrap_or_default()),
        resolver: c.resolver(&raw_resolver),
        tls: c.tls(raw.tls.unwrap_or_default()),
        relay_proxy: raw.relay_proxy.and_then(|r| c.relay(r)),
        logging: c.logging(raw.logging.unwrap_or_default()),
        preset_hosts: presets::expand(cloud, &preset_list, &workspaces, &regions),
        cloud,
        presets: preset_list,
        workspaces,
        regions,
    };
    cfg.local_hosts = cfg.allowed_hosts.len();
    let mut seen: HashSet<HostEntry> = cfg.allowed_hosts.iter().cloned().collect();
    for h in &cfg.preset_hosts {
        if seen.insert(h.entry.clone()) {
            cfg.allowed_hosts.push(h.entry.clone());
        }
    }
    (cfg.resolver.stale_after, cfg.resolver.resolution_delay) =
        c.resolver_timing(&raw_resolver, &cfg.resolver, cfg.limits.resolve_timeout);
    // Port 0 (an ephemeral port, as tests use) never collides.
    let clash = |m: &SocketAddr| m.port() != 0 && cfg.listen.contains(m);
    if let Some(metrics) = cfg.metrics_listen.filter(clash) {
        let message =
            format!("{metrics} is both a listen address and metrics_listen; each needs its own");
        if let Some(node) = raw.metrics_listen.as_ref() {
            c.report("metrics_listen", node, message);
        } else if let Some(node) = raw.listen.as_ref() {
            c.report("listen", node, message);
        }
    }
    // The probe port is a third listener of its own.
    if let Some(health) = cfg.health_listen.filter(|h| h.port() != 0) {
        let message = if cfg.listen.contains(&health) {
            Some(format!(
                "{health} is both a listen address and health_listen; each needs its own"
            ))
        } else if cfg.metrics_listen == Some(health) {
            Some(format!(
                "{health} is both metrics_listen and health_listen; each needs its own"
            ))
        } else {
            None
        };
        if let (Some(message), Some(node)) = (message, raw.health_listen.as_ref()) {
            c.report("health_listen", node, message);
        }
    }
    // The endpoint has no authentication: serving it beyond this host is an explicit choice.
    if let (Some(metrics), false) = (cfg.metrics_listen, cfg.metrics_public) {
        if !metrics.ip().to_canonical().is_loopback() {
            if let Some(node) = raw.metrics_listen.as_ref() {
                c.report(
                    "metrics_listen",
                    node,
                    format!(
                        "{metrics} is not a loopback address: /metrics, /healthz and /readyz \
                         have no authentication, so serving them beyond this host needs \
                         `metrics_public: true` (or use 127.0.0.1 / \"[::1]\")"
                    ),
                );
            }
        }
    }
    if c.problems.is_empty() {
        Ok(cfg)
    } else {
        c.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
        Err(c.problems)
    }
}

/// Collects problems while converting values.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, key: &str, at: &Spanned<Node>, message: String) {
        let line = usize::try_from(at.referenced.line())
            .ok()
            .filter(|&l| l > 0);
        self.problems.push(Problem {
            key: key.to_owned(),
            line,
            message,
        });
    }

    /// Records "expected X, found Y".
    fn mismatch<T>(&mut self, key: &str, at: &Spanned<Node>, expected: &str) -> Option<T> {
        let found = at.value.describe();
        let hint = match &at.value {
            Node::Map(_) if expected.contains("[::]") || expected.contains("2001:db8") => {
                " (IPv6 addresses must be quoted in YAML, as in \"[::]:8080\")"
            }
            Node::Str(s) if expected == EXPECT_BOOL && !s.is_empty() => {
                " (write true or false without quotes)"
            }
            _ => "",
        };
        self.report(key, at, format!("expected {expected}, found {found}{hint}"));
        None
    }

    /// A list; `null` is an empty list when `null_is_empty`.
    fn list<'a>(
        &mut self,
        key: &str,
        at: &'a Spanned<Node>,
        expected: &str,
        null_is_empty: bool,
    ) -> Option<&'a [Spanned<Node>]> {
        match &at.value {
            Node::Seq(items) => Some(items),
            Node::Null if null_is_empty => Some(&[]),
            _ => self.mismatch(key, at, expected),
        }
    }

    fn string<'a>(&mut self, key: &str, at: &'a Spanned<Node>, expected: &str) -> Option<&'a str> {
        match &at.value {
            Node::Str(s) => Some(s),
            _ => self.mismatch(key, at, expected),
        }
    }

    /// A whole number in `min..=max`.
    fn count(
        &mut self,
        key: &str,
        at: Option<&Spanned<Node>>,
        min: usize,
        max: usize,
        expected: &str,
    ) -> Option<usize> {
        let at = at?;
        match &at.value {
            Node::Int(i) => match usize::try_from(*i) {
                Ok(n) if (min..=max).contains(&n) => Some(n),
                _ => self.mismatch(key, at, expected),
            },
            _ => self.mismatch(key, at, expected),
        }
    }

    fn boolean(&mut self, key: &str, at: Option<&Spanned<Node>>) -> Option<bool> {
        let at = at?;
        match &at.value {
            Node::Bool(b) => Some(*b),
            _ => self.mismatch(key, at, EXPECT_BOOL),
        }
    }

    /// One of a fixed set of lower-case words.
    fn choice<T: Copy>(
        &mut self,
        key: &str,
        at: Option<&Spanned<Node>>,
        options: &[(&str, T)],
    ) -> Option<T> {
        let at = at?;
        let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
        let expected = format!("one of {}", names.join(", "));
        let word = self.string(key, at, &expected)?;
        match options.iter().find(|(n, _)| *n == word) {
            Some((_, value)) => Some(*value),
            None => self.mismatch(key, at, &expected),
        }
    }

    fn duration(&mut self, key: &str, at: Option<&Spanned<Node>>) -> Option<Duration> {
        let at = at?;
        let d = match &at.value {
            Node::Int(secs) => match u64::try_from(*secs) {
                Ok(secs) => Duration::from_secs(secs),
                Err(_) => return self.mismatch(key, at, EXPECT_DURATION),
            },
            Node::Str(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    let found = at.value.describe();
                    self.report(
                        key,
                        at,
                        format!("expected {EXPECT_DURATION}, found {found}: {e}"),
                    );
                    return None;
                }
            },
            _ => return self.mismatch(key, at, EXPECT_DURATION),
        };
        if d.is_zero() {
            self.report(
                key,
                at,
                format!(
                    "the timeout must be greater than zero, found {}",
                    at.value.describe()
                ),
            );
            return None;
        }
        if d > MAX_DURATION {
            self.report(
                key,
                at,
                format!(
                    "the timeout must be at most 365 days, found {}",
                    at.value.describe()
                ),
            );
            return None;
        }
        Some(d)
    }

    fn socket_addr(&mut self, key: &str, at: &Spanned<Node>, expected: &str) -> Option<SocketAddr> {
        let s = self.string(key, at, expected)?;
        match s.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => self.mismatch(key, at, expected),
        }
    }

    /// `listen`: each entry a socket address, or `{address, proxy_protocol, proxy_from}`.
    /// Returns the addresses and, entry by entry, the PROXY protocol sources (`None` for a
    /// plain listener).
    fn listen(&mut self, at: Option<&Spanned<Node>>) -> Option<Listen> {
        let at = at?;
        let items = self.list("listen", at, EXPECT_LISTEN, false)?;
        if items.is_empty() {
            self.report(
                "listen",
                at,
                "the list is empty; the gateway needs at least one address to listen on".into(),
            );
            return None;
        }
        let mut out: Vec<SocketAddr> = Vec::with_capacity(items.len());
        let mut proxy = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let key = format!("listen[{i}]");
            let entry = match &item.value {
                Node::Map(entries) => self.listen_object(&key, item, entries),
                _ => self
                    .socket_addr(&key, item, EXPECT_SOCKET)
                    .map(|a| (a, None)),
            };
            match entry {
                Some((addr, _)) if addr.port() != 0 && out.contains(&addr) => {
                    self.report(&key, item, format!("{addr} is listed more than once"));
                    ok = false;
                }
                Some((addr, from)) => {
                    out.push(addr);
                    proxy.push(from);
                }
                None => ok = false,
            }
        }
        ok.then_some((out, proxy))
    }

    /// `{address: "0.0.0.0:8080", proxy_protocol: true, proxy_from: ["10.0.0.0/24"]}`.
    fn listen_object(
        &mut self,
        key: &str,
        at: &Spanned<Node>,
        entries: &[(Spanned<Node>, Spanned<Node>)],
    ) -> Option<(SocketAddr, Option<ProxySources>)> {
        let (mut address, mut enabled, mut from) = (None, None, None);
        let mut ok = true;
        for (k, v) in entries {
            let name = match &k.value {
                Node::Str(s) => s.as_str(),
                _ => "",
            };
            let slot = match name {
                "address" => &mut address,
                "proxy_protocol" => &mut enabled,
                "proxy_from" => &mut from,
                _ => {
                    self.report(
                        key,
                        k,
                        format!(
                            "found a mapping with the unknown key {}; expected {EXPECT_SOCKET}, \
                             or a listener with the keys address, proxy_protocol and proxy_from \
                             (an IPv6 address must be quoted in YAML, as in \"[::]:8080\")",
                            k.value.describe()
                        ),
                    );
                    ok = false;
                    continue;
                }
            };
            if slot.replace(v).is_some() {
                self.report(key, k, format!("{name} is given more than once"));
                ok = false;
            }
        }
        let Some(address_node) = address else {
            if !ok {
                // An unknown key was reported (often an unquoted IPv6 address): enough said.
                return None;
            }
            self.report(
                key,
                at,
                format!("the listener has no `address`; expected {EXPECT_SOCKET}"),
            );
            return None;
        };
        let addr = self.socket_addr(&format!("{key}.address"), address_node, EXPECT_SOCKET);
        let enabled = match enabled {
            None => false,
            Some(node) => self.boolean(&format!("{key}.proxy_protocol"), Some(node))?,
        };
        let sources = match (enabled, from) {
            (false, None) => None,
            (false, Some(node)) => {
                self.report(
                    &format!("{key}.proxy_from"),
                    node,
                    "proxy_from is only used with `proxy_protocol: true`; set it, or remove \
                     proxy_from"
                        .to_owned(),
                );
                ok = false;
                None
            }
            (true, None) => {
                self.report(
                    &format!("{key}.proxy_protocol"),
                    at,
                    "proxy_protocol: true needs proxy_from, the networks of the load balancers \
                     allowed to send the header (such as [\"10.0.0.0/24\"])"
                        .to_owned(),
                );
                ok = false;
                None
            }
            (true, Some(node)) => {
                let key = format!("{key}.proxy_from");
                let nets = self.networks(&key, Some(node));
                match nets.map(ProxySources::new) {
                    Some(Some(s)) => Some(s),
                    Some(None) => {
                        self.report(
                            &key,
                            node,
                            format!("the list is empty; expected {EXPECT_NETWORKS}"),
                        );
                        ok = false;
                        None
                    }
                    None => {
                        ok = false;
                        None
                    }
                }
            }
        };
        match (addr, ok) {
            (Some(addr), true) => Some((addr, sources)),
            _ => None,
        }
    }

    fn metrics_listen(&mut self, at: Option<&Spanned<Node>>) -> Option<Option<SocketAddr>> {
        let at = at?;
        match at.value {
            Node::Null => Some(None),
            _ => self
                .socket_addr("metrics_listen", at, EXPECT_METRICS)
                .map(Some),
        }
    }

    fn health_listen(&mut self, at: Option<&Spanned<Node>>) -> Option<Option<SocketAddr>> {
        let at = at?;
        match at.value {
            Node::Null => Some(None),
            _ => self
                .socket_addr("health_listen", at, EXPECT_HEALTH)
                .map(Some),
        }
    }

    /// `takeover_socket`: an absolute path, or null (off).
    fn takeover_socket(&mut self, at: Option<&Spanned<Node>>) -> Option<TakeoverSocket> {
        const KEY: &str = "takeover_socket";
        let at = at?;
        if let Node::Null = at.value {
            return Some(TakeoverSocket::Off);
        }
        let text = self.string(KEY, at, EXPECT_TAKEOVER)?;
        let path = PathBuf::from(text);
        // sun_path holds 108 bytes with its terminating NUL.
        if !path.is_absolute()
            || text.contains('\0')
            || text.len() > 107
            || path.file_name().is_none()
        {
            return self.mismatch(KEY, at, EXPECT_TAKEOVER);
        }
        Some(TakeoverSocket::Path(path))
    }

    /// `admin_socket`: an absolute path, or `null` to disable the socket.
    fn admin_socket(&mut self, at: Option<&Spanned<Node>>) -> Option<Option<PathBuf>> {
        const EXPECT: &str = "an absolute path such as \"/run/splicegate/admin.sock\", or null";
        let at = at?;
        if matches!(at.value, Node::Null) {
            return Some(None);
        }
        let text = self.string("admin_socket", at, EXPECT)?;
        let path = PathBuf::from(text);
        // sun_path holds 108 bytes with its terminating NUL.
        if !path.is_absolute() || text.len() > 107 || text.contains('\0') || text.ends_with('/') {
            self.report(
                "admin_socket",
                at,
                format!("{text:?} is not usable as a socket path; expected {EXPECT} of at most 107 bytes"),
            );
            return None;
        }
        Some(Some(path))
    }

    fn allowed_ports(&mut self, at: Option<&Spanned<Node>>) -> Option<Vec<u16>> {
        let at = at?;
        let items = self.list("allowed_ports", at, EXPECT_PORTS, false)?;
        if items.is_empty() {
            self.report(
                "allowed_ports",
                at,
                format!("the list is empty; expected {EXPECT_PORTS}"),
            );
            return None;
        }
        let mut out: Vec<u16> = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let key = format!("allowed_ports[{i}]");
            let port = match &item.value {
                Node::Int(p) => u16::try_from(*p).ok().filter(|&p| p != 0),
                _ => None,
            };
            match port {
                Some(p) if !out.contains(&p) => out.push(p),
                Some(_) => {}
                None => {
                    ok = false;
                    self.mismatch::<()>(&key, item, EXPECT_PORT);
                }
            }
        }
        ok.then_some(out)
    }

    /// `presets:` entries, each a known preset name; duplicates are dropped.
    fn presets(&mut self, at: Option<&Spanned<Node>>) -> Option<Vec<Preset>> {
        let at = at?;
        let items = self.list("presets", at, EXPECT_PRESETS, true)?;
        self.distinct_strings("presets", items, EXPECT_PRESET, Preset::parse, |text| {
            format!("unknown preset {text:?}; expected {EXPECT_PRESET}")
        })
    }

    /// `workspaces:`: up to [`MAX_WORKSPACES`] GUIDs.
    fn workspaces(&mut self, at: Option<&Spanned<Node>>) -> Option<Vec<WorkspaceId>> {
        let at = at?;
        let items = self.list("workspaces", at, EXPECT_WORKSPACES, true)?;
        if items.len() > MAX_WORKSPACES {
            self.report(
                "workspaces",
                at,
                format!(
                    "at most {MAX_WORKSPACES} workspaces (the Azure Monitor agent reports to up to \
                     ten through a gateway), found {}",
                    items.len()
                ),
            );
            return None;
        }
        self.distinct_strings(
            "workspaces",
            items,
            EXPECT_WORKSPACE,
            WorkspaceId::parse,
            |text| format!("{text:?} is not a workspace ID; expected {EXPECT_WORKSPACE}"),
        )
    }

    /// `regions:`: Azure region names.
    fn regions(&mut self, at: Option<&Spanned<Node>>) -> Option<Vec<Region>> {
        let at = at?;
        let items = self.list("regions", at, EXPECT_REGIONS, true)?;
        self.distinct_strings("regions", items, EXPECT_REGION, Region::parse, |text| {
            format!("{text:?} is not a region name; expected {EXPECT_REGION}")
        })
    }

    /// A list of strings each parsed by `parse`, duplicates dropped; every item `parse` refuses
    /// is reported as `key[i]` with its line and the message `refused` gives for it. `None` if
    /// any item was bad.
    fn distinct_strings<T: PartialEq>(
        &mut self,
        key: &str,
        items: &[Spanned<Node>],
        expected: &str,
        parse: impl Fn(&str) -> Option<T>,
        refused: impl Fn(&str) -> String,
    ) -> Option<Vec<T>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_key = format!("{key}[{i}]");
            let Some(text) = self.string(&item_key, item, expected) else {
                ok = false;
                continue;
            };
            match parse(text) {
                Some(v) if !out.contains(&v) => out.push(v),
                Some(_) => {}
                None => {
                    ok = false;
                    let message = refused(text);
                    self.report(&item_key, item, message);
                }
            }
        }
        ok.then_some(out)
    }

    /// `allowed_hosts:`; an empty list is an error unless presets supply hosts.
    fn allowed_hosts(
        &mut self,
        at: Option<&Spanned<Node>>,
        may_be_empty: bool,
    ) -> Option<Vec<HostEntry>> {
        let at = at?;
        let items = self.list("allowed_hosts", at, EXPECT_HOSTS_LIST, false)?;
        if items.is_empty() && may_be_empty {
            return Some(Vec::new());
        }
        if items.is_empty() {
            self.report(
                "allowed_hosts",
                at,
                format!(
                    "the list is empty, so every request would be refused; expected {EXPECT_HOSTS_LIST}"
                ),
            );
            return None;
        }
        self.entries("allowed_hosts", items)
    }

    /// Allowlist entries (`HOST` or `HOST:PORTS`), each reported as `{key}[i]`; exact repeats
    /// are dropped, the same pattern with other ports is kept (the policy unites them).
    fn entries(&mut self, key: &str, items: &[Spanned<Node>]) -> Option<Vec<HostEntry>> {
        let mut out = Vec::with_capacity(items.len());
        let mut seen = HashSet::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let Some(text) = self.string(&key, item, EXPECT_PATTERN) else {
                ok = false;
                continue;
            };
            match HostEntry::parse(text) {
                Ok(entry) => {
                    if seen.insert(entry.clone()) {
                        out.push(entry);
                    }
                }
                Err(e) => {
                    ok = false;
                    self.report(
                        &key,
                        item,
                        format!("invalid host pattern {text:?}: {e}; expected {EXPECT_PATTERN}"),
                    );
                }
            }
        }
        ok.then_some(out)
    }

    fn hosts(&mut self, at: Option<&Spanned<Node>>) -> Option<Vec<(String, Vec<IpAddr>)>> {
        let at = at?;
        let entries: &[(Spanned<Node>, Spanned<Node>)] = match &at.value {
            Node::Map(entries) => entries,
            Node::Null => &[],
            _ => return self.mismatch("hosts", at, EXPECT_OVERRIDES),
        };
        let mut out: Vec<(String, Vec<IpAddr>)> = Vec::with_capacity(entries.len());
        let mut ok = true;
        for (name_node, addrs_node) in entries {
            let Some(name) = self.override_name(name_node) else {
                ok = false;
                continue;
            };
            let key = format!("hosts.{name}");
            if out.iter().any(|(n, _)| *n == name) {
                self.report(&key, name_node, format!("{name} has more than one entry"));
                ok = false;
                continue;
            }
            let Some(items) = self.list(&key, addrs_node, EXPECT_OVERRIDE_IPS, false) else {
                ok = false;
                continue;
            };
            if items.is_empty() {
                self.report(
                    &key,
                    addrs_node,
                    format!("the list is empty; expected {EXPECT_OVERRIDE_IPS}"),
                );
                ok = false;
                continue;
            }
            let mut addrs = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let item_key = format!("{key}[{i}]");
                match self.ip(&item_key, item, EXPECT_IP) {
                    Some(ip) => addrs.push(ip),
                    None => ok = false,
                }
            }
            out.push((name, addrs));
        }
        ok.then_some(out)
    }

    /// A `hosts:` key: a normalised DNS name (not an IP literal, not a wildcard).
    fn override_name(&mut self, at: &Spanned<Node>) -> Option<String> {
        const EXPECT: &str = "a host name such as \"example.com\"";
        let text = match &at.value {
            Node::Str(s) => s,
            _ => return self.mismatch("hosts", at, EXPECT),
        };
        let key = format!("hosts.{text}");
        if text.parse::<IpAddr>().is_ok() {
            self.report(
                &key,
                at,
                format!("{text:?} is an IP address, which is never resolved; expected {EXPECT}"),
            );
            return None;
        }
        if text.contains('*') {
            self.report(
                &key,
                at,
                format!("{text:?}: wildcards are not allowed here, an override names one host; expected {EXPECT}"),
            );
            return None;
        }
        match normalize_host(text) {
            Some(name) => Some(name),
            None => {
                let why = HostPattern::parse(text)
                    .err()
                    .map_or_else(String::new, |e| format!(": {e}"));
                self.report(
                    &key,
                    at,
                    format!("{text:?} is not a valid host name{why}; expected {EXPECT}"),
                );
                None
            }
        }
    }

    fn ip(&mut self, key: &str, at: &Spanned<Node>, expected: &str) -> Option<IpAddr> {
        let s = self.string(key, at, expected)?;
        match s.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => self.mismatch(key, at, expected),
        }
    }

    /// A list of networks (`10.0.0.0/8`) or single addresses; `null` is an empty list.
    fn networks(&mut self, key: &str, at: Option<&Spanned<Node>>) -> Option<Vec<ipnet::IpNet>> {
        let at = at?;
        let items = self.list(key, at, EXPECT_NETWORKS, true)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let Some(text) = self.string(&key, item, EXPECT_NETWORK) else {
                ok = false;
                continue;
            };
            let net = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from));
            match net {
                Ok(net) => out.push(net.trunc()),
                Err(_) => {
                    ok = false;
                    self.mismatch::<()>(&key, item, EXPECT_NETWORK);
                }
            }
        }
        ok.then_some(out)
    }

    fn limits(&mut self, raw: RawLimits) -> Limits {
        let d = Limits::default();
        let accept_backoff_max = self
            .duration_at_most(
                "limits.accept_backoff_max",
                raw.accept_backoff_max.as_ref(),
                MAX_ACCEPT_BACKOFF,
                "1m",
            )
            .unwrap_or(d.accept_backoff_max);
        let accept_backoff_min = self
            .duration("limits.accept_backoff_min", raw.accept_backoff_min.as_ref())
            .and_then(|t| {
                if t > accept_backoff_max {
                    let at = raw.accept_backoff_min.as_ref()?;
                    let found = at.value.describe();
                    self.report(
                        "limits.accept_backoff_min",
                        at,
                        format!(
                            "expected at most limits.accept_backoff_max ({}), found {found}",
                            super::duration::format_duration(accept_backoff_max)
                        ),
                    );
                    return None;
                }
                Some(t)
            })
            .unwrap_or(d.accept_backoff_min.min(accept_backoff_max));
        let bytes = |n: usize| format!("a whole number of bytes from {n} to 1048576 (1 MiB)");
        let (engage, release) = self.overload_percents(&raw, &d);
        let overload_sample_interval = self
            .duration(
                "limits.overload_sample_interval",
                raw.overload_sample_interval.as_ref(),
            )
            .and_then(|t| {
                if (MIN_OVERLOAD_SAMPLE..=MAX_OVERLOAD_SAMPLE).contains(&t) {
                    return Some(t);
                }
                let at = raw.overload_sample_interval.as_ref()?;
                let found = at.value.describe();
                self.report(
                    "limits.overload_sample_interval",
                    at,
                    format!("expected from 10ms to 10s, found {found}"),
                );
                None
            })
            .unwrap_or(d.overload_sample_interval);
        Limits {
            max_connections: self
                .count(
                    "limits.max_connections",
                    raw.max_connections.as_ref(),
                    1,
                    usize::MAX,
                    "a whole number of at least 1",
                )
                .unwrap_or(d.max_connections),
            max_header_bytes: self
                .count(
                    "limits.max_header_bytes",
                    raw.max_header_bytes.as_ref(),
                    256,
                    1 << 20,
                    &bytes(256),
                )
                .unwrap_or(d.max_header_bytes),
            header_timeout: self
                .duration("limits.header_timeout", raw.header_timeout.as_ref())
                .unwrap_or(d.header_timeout),
            connect_timeout: self
                .duration("limits.connect_timeout", raw.connect_timeout.as_ref())
                .unwrap_or(d.connect_timeout),
            idle_timeout: self
                .duration("limits.idle_timeout", raw.idle_timeout.as_ref())
                .unwrap_or(d.idle_timeout),
            drain_timeout: self
                .duration("limits.drain_timeout", raw.drain_timeout.as_ref())
                .unwrap_or(d.drain_timeout),
            resolve_timeout: self
                .duration("limits.resolve_timeout", raw.resolve_timeout.as_ref())
                .unwrap_or(d.resolve_timeout),
            max_pipes: self
                .count(
                    "limits.max_pipes",
                    raw.max_pipes.as_ref(),
                    0,
                    usize::MAX,
                    "a whole number (0 = automatic)",
                )
                .unwrap_or(d.max_pipes),
            pipe_size: self
                .count(
                    "limits.pipe_size",
                    raw.pipe_size.as_ref(),
                    4096,
                    1 << 20,
                    &bytes(4096),
                )
                .unwrap_or(d.pipe_size),
            metrics_max_connections: self
                .count(
                    "limits.metrics_max_connections",
                    raw.metrics_max_connections.as_ref(),
                    1,
                    1024,
                    "a whole number of connections from 1 to 1024",
                )
                .unwrap_or(d.metrics_max_connections),
            reload_debounce: self
                .duration("limits.reload_debounce", raw.reload_debounce.as_ref())
                .filter(|t| {
                    let fits = *t <= MAX_RELOAD_DEBOUNCE;
                    if let (false, Some(at)) = (fits, raw.reload_debounce.as_ref()) {
                        self.report(
                            "limits.reload_debounce",
                            at,
                            "expected at most 5s: every saved edit waits this long to apply"
                                .to_owned(),
                        );
                    }
                    fits
                })
                .unwrap_or(d.reload_debounce),
            reload_retries: self
                .count(
                    "limits.reload_retries",
                    raw.reload_retries.as_ref(),
                    0,
                    MAX_RELOAD_RETRIES,
                    "a whole number from 0 to 10",
                )
                .unwrap_or(d.reload_retries),
            max_connections_per_client: self
                .count(
                    "limits.max_connections_per_client",
                    raw.max_connections_per_client.as_ref(),
                    0,
                    usize::MAX,
                    "a whole number (0 = no limit per client)",
                )
                .unwrap_or(d.max_connections_per_client),
            accept_backoff_min,
            accept_backoff_max,
            worker_restart_delay: self
                .duration_at_most(
                    "limits.worker_restart_delay",
                    raw.worker_restart_delay.as_ref(),
                    MAX_WORKER_RESTART_DELAY,
                    "1h",
                )
                .unwrap_or(d.worker_restart_delay),
            drain_grace: self
                .duration_or_zero("limits.drain_grace", raw.drain_grace.as_ref())
                .and_then(|t| {
                    if t > MAX_DRAIN_GRACE {
                        let at = raw.drain_grace.as_ref()?;
                        let found = at.value.describe();
                        self.report(
                            "limits.drain_grace",
                            at,
                            format!("expected at most 1h, found {found}"),
                        );
                        return None;
                    }
                    Some(t)
                })
                .unwrap_or(d.drain_grace),
            takeover_timeout: self
                .duration_at_most(
                    "limits.takeover_timeout",
                    raw.takeover_timeout.as_ref(),
                    MAX_DRAIN_GRACE,
                    "1h",
                )
                .unwrap_or(d.takeover_timeout),
            admin_max_connections: self
                .count(
                    "limits.admin_max_connections",
                    raw.admin_max_connections.as_ref(),
                    1,
                    1024,
                    "a whole number of connections from 1 to 1024",
                )
                .unwrap_or(d.admin_max_connections),
            admin_timeout: self
                .duration_at_most(
                    "limits.admin_timeout",
                    raw.admin_timeout.as_ref(),
                    MAX_ADMIN_TIMEOUT,
                    "1m",
                )
                .unwrap_or(d.admin_timeout),
            memory_budget: self
                .memory_budget(raw.memory_budget.as_ref())
                .unwrap_or(d.memory_budget),
            overload_engage_percent: engage,
            overload_release_percent: release,
            overload_sample_interval,
        }
    }

    /// `limits.memory_budget`: 0 (off), a whole number of bytes, or a number with a binary
    /// suffix (`"512MiB"`, `"2GiB"`); at least [`MIN_MEMORY_BUDGET`] when on.
    fn memory_budget(&mut self, at: Option<&Spanned<Node>>) -> Option<u64> {
        const KEY: &str = "limits.memory_budget";
        let at = at?;
        let bytes = match &at.value {
            Node::Int(i) => u64::try_from(*i).ok(),
            Node::Str(s) => parse_size(s),
            _ => None,
        };
        match bytes {
            Some(0) => Some(0),
            Some(n) if n >= MIN_MEMORY_BUDGET => Some(n),
            Some(_) => {
                let found = at.value.describe();
                self.report(
                    KEY,
                    at,
                    format!(
                        "expected 0 (off) or at least 16MiB: a started gateway is already \
                         several MiB resident and would stay overloaded; found {found}"
                    ),
                );
                None
            }
            None => self.mismatch(KEY, at, EXPECT_SIZE),
        }
    }

    /// `limits.overload_engage_percent` and `limits.overload_release_percent`: the release
    /// threshold must be below the engage threshold, or the state would flap on every sample.
    fn overload_percents(&mut self, raw: &RawLimits, d: &Limits) -> (u8, u8) {
        let percent = |v: usize| u8::try_from(v).ok();
        let engage = self
            .count(
                "limits.overload_engage_percent",
                raw.overload_engage_percent.as_ref(),
                2,
                100,
                "a whole number of percent from 2 to 100",
            )
            .and_then(percent);
        let release = self
            .count(
                "limits.overload_release_percent",
                raw.overload_release_percent.as_ref(),
                1,
                99,
                "a whole number of percent from 1 to 99",
            )
            .and_then(percent);
        let engage_v = engage.unwrap_or(d.overload_engage_percent);
        let release_v = release.unwrap_or(d.overload_release_percent);
        if release_v >= engage_v {
            // Report on whichever key was written (the release key when both were).
            let at = raw
                .overload_release_percent
                .as_ref()
                .filter(|_| release.is_some())
                .map(|a| ("limits.overload_release_percent", a))
                .or_else(|| {
                    raw.overload_engage_percent
                        .as_ref()
                        .map(|a| ("limits.overload_engage_percent", a))
                });
            if let Some((key, at)) = at {
                self.report(
                    key,
                    at,
                    format!(
                        "expected overload_release_percent ({release_v}) below \
                         overload_engage_percent ({engage_v}): between the two the overload \
                         state holds, so it does not flap"
                    ),
                );
            }
            return (d.overload_engage_percent, d.overload_release_percent);
        }
        (engage_v, release_v)
    }

    /// A duration key with an upper bound (besides the bounds of every duration).
    fn duration_at_most(
        &mut self,
        key: &str,
        at: Option<&Spanned<Node>>,
        max: Duration,
        max_text: &str,
    ) -> Option<Duration> {
        let d = self.duration(key, at)?;
        if d > max {
            let at = at?;
            let found = at.value.describe();
            self.report(
                key,
                at,
                format!("expected at most {max_text}, found {found}"),
            );
            return None;
        }
        Some(d)
    }

    fn logging(&mut self, raw: RawLogging) -> LoggingSettings {
        let d = RefusalBudget::default();
        let window = self
            .duration("logging.refusal_window", raw.refusal_window.as_ref())
            .and_then(|w| {
                if w < Duration::from_secs(1) {
                    let at = raw.refusal_window.as_ref()?;
                    self.report(
                        "logging.refusal_window",
                        at,
                        format!("expected at least 1s, found {}", at.value.describe()),
                    );
                    return None;
                }
                Some(w)
            });
        LoggingSettings {
            refusals: RefusalBudget {
                burst: self
                    .count(
                        "logging.refusal_burst",
                        raw.refusal_burst.as_ref(),
                        1,
                        u32::MAX as usize,
                        "a whole number of events of at least 1",
                    )
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(d.burst),
                window: window.unwrap_or(d.window),
                max_keys: self
                    .count(
                        "logging.refusal_table_size",
                        raw.refusal_table_size.as_ref(),
                        1,
                        1 << 24,
                        "a whole number of entries from 1 to 16777216",
                    )
                    .unwrap_or(d.max_keys),
            },
        }
    }

    fn resolver(&mut self, raw: &RawResolver) -> ResolverSettings {
        let d = ResolverSettings::default();
        let r = ResolverSettings {
            nameservers: self
                .nameservers(raw.nameservers.as_ref())
                .unwrap_or(d.nameservers),
            cache_size: self
                .count(
                    "resolver.cache_size",
                    raw.cache_size.as_ref(),
                    0,
                    usize::MAX,
                    "a whole number of entries (0 disables the cache)",
                )
                .unwrap_or(d.cache_size),
            hosts_file: raw
                .hosts_file
                .as_ref()
                .and_then(|at| self.hosts_file(at))
                .unwrap_or(d.hosts_file),
            min_ttl: self
                .duration_or_zero("resolver.min_ttl", raw.min_ttl.as_ref())
                .unwrap_or(d.min_ttl),
            max_ttl: self
                .duration("resolver.max_ttl", raw.max_ttl.as_ref())
                .unwrap_or(d.max_ttl),
            negative_ttl: self
                .duration_or_zero("resolver.negative_ttl", raw.negative_ttl.as_ref())
                .unwrap_or(d.negative_ttl),
            stale_after: self
                .duration("resolver.stale_after", raw.stale_after.as_ref())
                .unwrap_or(d.stale_after),
            stale_ttl: self
                .duration_or_zero("resolver.stale_ttl", raw.stale_ttl.as_ref())
                .unwrap_or(d.stale_ttl),
            resolution_delay: self
                .duration_or_zero("resolver.resolution_delay", raw.resolution_delay.as_ref())
                .unwrap_or(d.resolution_delay),
            private_link: self
                .boolean("resolver.private_link", raw.private_link.as_ref())
                .unwrap_or(d.private_link),
        };
        if r.min_ttl > r.max_ttl {
            let at = raw.min_ttl.as_ref().or(raw.max_ttl.as_ref());
            if let Some(at) = at {
                self.report(
                    "resolver.min_ttl",
                    at,
                    format!(
                        "min_ttl ({}) is above max_ttl ({}); expected min_ttl <= max_ttl",
                        format_duration(r.min_ttl),
                        format_duration(r.max_ttl)
                    ),
                );
            }
        }
        r
    }

    /// `resolver.stale_after` and `resolver.resolution_delay` must end before the worker's
    /// own `limits.resolve_timeout` gives up, or they could never take effect. Set, they are
    /// checked; left at their defaults, they become at most half of `resolve_timeout`.
    /// Returns the values to use.
    fn resolver_timing(
        &mut self,
        raw: &RawResolver,
        r: &ResolverSettings,
        resolve_timeout: Duration,
    ) -> (Duration, Duration) {
        // Left at their defaults, both follow a short resolve_timeout instead of failing it.
        let stale_after = match raw.stale_after {
            Some(_) => r.stale_after,
            None => r.stale_after.min(resolve_timeout / 2),
        };
        let resolution_delay = match raw.resolution_delay {
            Some(_) => r.resolution_delay,
            None => r.resolution_delay.min(resolve_timeout / 2),
        };
        for (key, at, value) in [
            (
                "resolver.stale_after",
                raw.stale_after.as_ref(),
                stale_after,
            ),
            (
                "resolver.resolution_delay",
                raw.resolution_delay.as_ref(),
                resolution_delay,
            ),
        ] {
            if value < resolve_timeout {
                continue;
            }
            let message = format!(
                "{key} ({}) must be below limits.resolve_timeout ({})",
                format_duration(value),
                format_duration(resolve_timeout)
            );
            if let Some(at) = at {
                self.report(key, at, message);
            }
        }
        (stale_after, resolution_delay)
    }

    /// A duration where 0 is meaningful (it switches something off).
    fn duration_or_zero(&mut self, key: &str, at: Option<&Spanned<Node>>) -> Option<Duration> {
        let zero = match &at?.value {
            Node::Int(0) => true,
            Node::Str(s) => parse_duration(s).is_ok_and(|d| d.is_zero()),
            _ => false,
        };
        if zero {
            Some(Duration::ZERO)
        } else {
            self.duration(key, at)
        }
    }

    /// `resolver.hosts_file`: a path; the file itself may be absent (no entries), as with the C
    /// library, and is read by the resolver, which re-reads it when it changes.
    fn hosts_file(&mut self, at: &Spanned<Node>) -> Option<PathBuf> {
        const KEY: &str = "resolver.hosts_file";
        const EXPECT: &str = "the path of a hosts file, such as \"/etc/hosts\"";
        let text = self.string(KEY, at, EXPECT)?;
        if text.is_empty() || text.contains('\0') {
            return self.mismatch(KEY, at, EXPECT);
        }
        Some(PathBuf::from(text))
    }

    /// `relay_proxy:`; `None` when absent, `null`, or with errors (which are reported).
    fn relay(&mut self, raw: RawRelay) -> Option<RelaySettings> {
        let Some(at) = raw.address.as_ref() else {
            if raw.username.is_some() || raw.password_file.is_some() || raw.ca_file.is_some() {
                self.problems.push(Problem {
                    key: "relay_proxy.address".to_owned(),
                    line: None,
                    message:
                        "missing: a relay proxy needs an address such as \"http://proxy.corp:8080\""
                            .to_owned(),
                });
            }
            return None;
        };
        let text = self.string("relay_proxy.address", at, EXPECT_RELAY_URL)?;
        let (scheme, host, port) = match relay::parse_address(text) {
            Ok(v) => v,
            Err(e) => {
                self.report("relay_proxy.address", at, e.to_string());
                return None;
            }
        };
        let username = match raw.username.as_ref() {
            Some(u) if !matches!(u.value, Node::Null) => {
                let name = self.string("relay_proxy.username", u, "a user name")?;
                if name.is_empty() || name.contains([':', '\r', '\n']) {
                    self.report(
                        "relay_proxy.username",
                        u,
                        format!("expected a user name without ':' or line breaks, found {name:?}"),
                    );
                    return None;
                }
                Some(name.to_owned())
            }
            _ => None,
        };
        let (password, password_file) = match raw.password_file.as_ref() {
            Some(p) if !matches!(p.value, Node::Null) => {
                let path =
                    PathBuf::from(self.string("relay_proxy.password_file", p, "a file path")?);
                if username.is_none() {
                    self.report(
                        "relay_proxy.password_file",
                        p,
                        relay::RelayError::PasswordWithoutUser.to_string(),
                    );
                    return None;
                }
                match relay::read_password(&path) {
                    Ok(secret) => (Some(secret), Some(path)),
                    Err(e) => {
                        self.report("relay_proxy.password_file", p, e.to_string());
                        return None;
                    }
                }
            }
            _ => (None, None),
        };
        let ca_file = match raw.ca_file.as_ref() {
            Some(f) if !matches!(f.value, Node::Null) => {
                let path =
                    PathBuf::from(self.string("relay_proxy.ca_file", f, "a PEM file path")?);
                if let Err(e) = std::fs::metadata(&path) {
                    self.report(
                        "relay_proxy.ca_file",
                        f,
                        format!("cannot read {}: {e}", path.display()),
                    );
                    return None;
                }
                Some(path)
            }
            _ => None,
        };
        let health_check = self
            .boolean("relay_proxy.health_check", raw.health_check.as_ref())
            .unwrap_or(false);
        let ca_node = raw
            .ca_file
            .as_ref()
            .filter(|f| !matches!(f.value, Node::Null));
        let tls = match scheme {
            // Load the trust store now, so a bad ca_file fails the start, not every tunnel.
            relay::Scheme::Https => match relay::RelayTls::build(&host, ca_file.as_deref()) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    let key = if ca_node.is_some() {
                        "relay_proxy.ca_file"
                    } else {
                        "relay_proxy.address"
                    };
                    self.report(key, ca_node.unwrap_or(at), e.to_string());
                    return None;
                }
            },
            relay::Scheme::Http => {
                if let Some(f) = ca_node {
                    self.report(
                        "relay_proxy.ca_file",
                        f,
                        "ca_file only applies to an https:// relay".to_owned(),
                    );
                    return None;
                }
                None
            }
        };
        Some(RelaySettings {
            scheme,
            host,
            port,
            username,
            password,
            password_file,
            ca_file,
            health_check,
            tls,
        })
    }

    /// `client_auth:`; `None` when absent, `null`, or with errors (which are reported).
    fn client_auth(&mut self, raw: &Spanned<RawClientAuth>) -> Option<ClientAuthSettings> {
        let line = usize::try_from(raw.referenced.line())
            .ok()
            .filter(|&l| l > 0);
        let raw = &raw.value;
        let users = match raw.users_file.as_ref() {
            Some(at) => self.users_file(at),
            None => {
                self.problems.push(Problem {
                    key: "client_auth.users_file".to_owned(),
                    line,
                    message: format!(
                        "missing: client authentication needs {EXPECT_USERS_FILE} \
                         (or remove client_auth)"
                    ),
                });
                None
            }
        };
        let realm = match raw.realm.as_ref() {
            None => Some(ClientAuthSettings::DEFAULT_REALM.to_owned()),
            Some(at) => self.realm(at),
        };
        let max_failures = match raw.max_failures.as_ref() {
            None => Some(ClientAuthSettings::DEFAULT_MAX_FAILURES),
            Some(at) => self
                .count(
                    "client_auth.max_failures",
                    Some(at),
                    1,
                    usize::try_from(u32::MAX).unwrap_or(usize::MAX),
                    "a whole number of failed logins of at least 1",
                )
                .and_then(|n| u32::try_from(n).ok()),
        };
        let failure_window = match raw.failure_window.as_ref() {
            None => Some(ClientAuthSettings::DEFAULT_FAILURE_WINDOW),
            Some(at) => self.duration("client_auth.failure_window", Some(at)),
        };
        let user_hosts = match raw.user_hosts.as_ref() {
            None => Some(Vec::new()),
            Some(at) => self.user_hosts(at),
        };
        let (users_file, users) = users?;
        Some(ClientAuthSettings {
            users_file,
            users,
            realm: realm?,
            max_failures: max_failures?,
            failure_window: failure_window?,
            user_hosts: user_hosts?,
        })
    }

    /// `client_auth.users_file`: a file that exists, can be read now, and parses as a users
    /// file: a malformed line or a plain-text password fails the start (or the reload) rather
    /// than every login. The parsed table is kept: the file is not read again until the next
    /// reload.
    fn users_file(&mut self, at: &Spanned<Node>) -> Option<(PathBuf, Users)> {
        const KEY: &str = "client_auth.users_file";
        let text = self.string(KEY, at, EXPECT_USERS_FILE)?;
        if text.is_empty() {
            return self.mismatch(KEY, at, EXPECT_USERS_FILE);
        }
        let path = PathBuf::from(text);
        let readable = std::fs::File::open(&path).and_then(|f| f.metadata());
        match readable {
            Ok(meta) if meta.is_file() => match Users::load(&path) {
                Ok(users) => Some((path, users)),
                Err(e) => {
                    self.report(KEY, at, e.to_string());
                    None
                }
            },
            Ok(_) => {
                self.report(
                    KEY,
                    at,
                    format!(
                        "{} is not a regular file; expected {EXPECT_USERS_FILE}",
                        path.display()
                    ),
                );
                None
            }
            Err(e) => {
                self.report(KEY, at, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }

    /// `client_auth.realm`: goes between the quotes of `Basic realm="..."`.
    fn realm(&mut self, at: &Spanned<Node>) -> Option<String> {
        const KEY: &str = "client_auth.realm";
        let text = self.string(KEY, at, EXPECT_REALM)?;
        if text.is_empty()
            || text
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_control())
        {
            return self.mismatch(KEY, at, EXPECT_REALM);
        }
        Some(text.to_owned())
    }

    /// `client_auth.user_hosts`: user name -> allowlist entries; `null` is an empty mapping.
    fn user_hosts(&mut self, at: &Spanned<Node>) -> Option<Vec<(String, Vec<HostEntry>)>> {
        const KEY: &str = "client_auth.user_hosts";
        let entries: &[(Spanned<Node>, Spanned<Node>)] = match &at.value {
            Node::Map(entries) => entries,
            Node::Null => &[],
            _ => return self.mismatch(KEY, at, EXPECT_USER_HOSTS),
        };
        let mut out: Vec<(String, Vec<HostEntry>)> = Vec::with_capacity(entries.len());
        let mut ok = true;
        for (name_node, list_node) in entries {
            let name = match &name_node.value {
                Node::Str(s)
                    if !s.is_empty()
                        && !s
                            .chars()
                            .any(|c| c == ':' || c.is_whitespace() || c.is_control()) =>
                {
                    s.clone()
                }
                _ => {
                    ok = false;
                    self.mismatch::<()>(KEY, name_node, EXPECT_USER_NAME);
                    continue;
                }
            };
            let key = format!("{KEY}.{name}");
            if out.iter().any(|(n, _)| *n == name) {
                self.report(&key, name_node, format!("{name} has more than one entry"));
                ok = false;
                continue;
            }
            let Some(items) = self.list(&key, list_node, EXPECT_HOSTS_LIST, true) else {
                ok = false;
                continue;
            };
            match self.entries(&key, items) {
                Some(parsed) => out.push((name, parsed)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn nameservers(&mut self, at: Option<&Spanned<Node>>) -> Option<Vec<SocketAddr>> {
        let at = at?;
        let items = self.list("resolver.nameservers", at, EXPECT_NAMESERVERS, true)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let key = format!("resolver.nameservers[{i}]");
            let Some(text) = self.string(&key, item, EXPECT_NAMESERVER) else {
                ok = false;
                continue;
            };
            let addr = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 53))
            });
            match addr {
                Some(addr) if addr.port() != 0 => out.push(addr),
                _ => {
                    ok = false;
                    self.mismatch::<()>(&key, item, EXPECT_NAMESERVER);
                }
            }
        }
        ok.then_some(out)
    }

    fn tls(&mut self, raw: RawTls) -> TlsSettings {
        let d = TlsSettings::default();
        let tls = TlsSettings {
            inspect: self
                .boolean("tls.inspect", raw.inspect.as_ref())
                .unwrap_or(d.inspect),
            min_version: self
                .tls_version(raw.min_version.as_ref())
                .unwrap_or(d.min_version),
            require_sni: self
                .boolean("tls.require_sni", raw.require_sni.as_ref())
                .unwrap_or(d.require_sni),
            require_sni_match: self
                .boolean("tls.require_sni_match", raw.require_sni_match.as_ref())
                .unwrap_or(d.require_sni_match),
            hello_timeout: self
                .duration("tls.hello_timeout", raw.hello_timeout.as_ref())
                .unwrap_or(d.hello_timeout),
            max_hello_bytes: self
                .count(
                    "tls.max_hello_bytes",
                    raw.max_hello_bytes.as_ref(),
                    1024,
                    1 << 20,
                    "a whole number of bytes from 1024 to 1048576 (1 MiB)",
                )
                .unwrap_or(d.max_hello_bytes),
            allowed_client_certificates: self
                .subjects(raw.allowed_client_certificates.as_ref())
                .unwrap_or(d.allowed_client_certificates),
            tls13_client_certificate: self
                .choice(
                    "tls.tls13_client_certificate",
                    raw.tls13_client_certificate.as_ref(),
                    &[("allow", Tls13Policy::Allow), ("deny", Tls13Policy::Deny)],
                )
                .unwrap_or(d.tls13_client_certificate),
        };
        if let Some(at) = raw.allowed_client_certificates.as_ref() {
            if !tls.inspect && !tls.allowed_client_certificates.is_empty() {
                self.report(
                    "tls.allowed_client_certificates",
                    at,
                    "client certificates are only checked when tls.inspect is true; \
                     set inspect: true or remove the list"
                        .into(),
                );
            }
        }
        tls
    }

    /// `tls.min_version`: `"1.0"` to `"1.3"`; an unquoted `1.2` (a YAML number) is accepted.
    fn tls_version(&mut self, at: Option<&Spanned<Node>>) -> Option<TlsVersion> {
        const KEY: &str = "tls.min_version";
        const CHOICES: [TlsVersion; 4] = [
            TlsVersion::Tls10,
            TlsVersion::Tls11,
            TlsVersion::Tls12,
            TlsVersion::Tls13,
        ];
        let at = at?;
        let found = match &at.value {
            Node::Str(s) => CHOICES.into_iter().find(|v| v.as_str() == s),
            Node::Float(x) => CHOICES.into_iter().find(|v| {
                v.as_str()
                    .parse::<f64>()
                    .is_ok_and(|y| (x - y).abs() < 1e-9)
            }),
            _ => None,
        };
        match found {
            Some(version) => Some(version),
            None => self.mismatch(KEY, at, EXPECT_TLS_VERSION),
        }
    }

    /// `tls.allowed_client_certificates`: subjects in canonical form, without repeats.
    fn subjects(&mut self, at: Option<&Spanned<Node>>) -> Option<Vec<String>> {
        const KEY: &str = "tls.allowed_client_certificates";
        let at = at?;
        let items = self.list(KEY, at, EXPECT_SUBJECTS, true)?;
        let mut out = Vec::with_capacity(items.len());
        let mut seen = HashSet::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let key = format!("{KEY}[{i}]");
            let Some(text) = self.string(&key, item, EXPECT_SUBJECT) else {
                ok = false;
                continue;
            };
            match normalize_subject(text) {
                Ok(subject) => {
                    if seen.insert(subject.clone()) {
                        out.push(subject);
                    }
                }
                Err(e) => {
                    ok = false;
                    self.report(
                        &key,
                        item,
                        format!(
                            "invalid certificate subject {text:?}: {e}; expected {EXPECT_SUBJECT}"
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }
}

/// A size: whole bytes (`"1048576"`) or a whole number with a binary suffix (`KiB`, `MiB`,
/// `GiB`, `TiB`). `None` for anything else, or a size past `u64`.
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    if digits.is_empty() {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}
