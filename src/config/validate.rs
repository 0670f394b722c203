//! The second stage of loading: raw nodes -> a validated [`Config`].
//!
//! Each key is converted independently; a bad value records a [`Problem`] (key path, line,
//! what was found, what was expected) and the default stands in, so one pass reports every
//! problem in the document. Absent keys take their defaults. A `null` value is an error except
//! where it has a meaning: `metrics_listen: null` disables metrics, and an empty `hosts:`,
//! `allowed_destination_networks:`, `resolver.nameservers:`, `limits:` or `resolver:` is the
//! same as an empty one.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::duration::{parse_duration, MAX_DURATION};
use super::error::Problem;
use super::raw::{Node, RawConfig, RawLimits, RawResolver};
use super::{Config, DataPath, EngineKind, Limits, ResolverSettings, MAX_WORKERS};
use crate::policy::{normalize_host, HostPattern};

const EXPECT_LISTEN: &str = "a list of socket addresses such as \"0.0.0.0:8080\"";
const EXPECT_SOCKET: &str = "a socket address such as \"0.0.0.0:8080\" or \"[::]:8080\"";
const EXPECT_METRICS: &str =
    "a socket address such as \"127.0.0.1:9464\", or null to disable the metrics listener";
const EXPECT_PORTS: &str = "a list of port numbers from 1 to 65535, such as [443]";
const EXPECT_PORT: &str = "a port number from 1 to 65535";
const EXPECT_HOSTS_LIST: &str =
    "a list of host patterns such as \"example.com\" or \"*.example.com\"";
const EXPECT_PATTERN: &str = "a host pattern such as \"example.com\" or \"*.example.com\"";
const EXPECT_OVERRIDES: &str =
    "a mapping of host names to lists of IP addresses, such as `example.com: [\"192.0.2.10\"]`";
const EXPECT_OVERRIDE_IPS: &str = "a list of IP addresses such as [\"192.0.2.10\"]";
const EXPECT_IP: &str = "an IP address such as \"192.0.2.10\" or \"2001:db8::10\"";
const EXPECT_BOOL: &str = "true or false";
const EXPECT_NETWORKS: &str =
    "a list of networks such as \"10.0.0.0/8\" or single addresses such as \"10.1.2.3\"";
const EXPECT_NETWORK: &str =
    "a network such as \"10.0.0.0/8\" or \"fd00::/8\", or a single address";
const EXPECT_DURATION: &str =
    "a duration such as \"10s\", \"500ms\", \"15m\" or \"1h30m\", or a whole number of seconds";
const EXPECT_NAMESERVERS: &str =
    "a list of name servers such as \"127.0.0.1:53\" or \"192.0.2.53\" (port 53)";
const EXPECT_NAMESERVER: &str =
    "a name server address such as \"127.0.0.1:53\", \"[2001:db8::53]:53\" or \"192.0.2.53\"";

/// Converts the raw document, or returns every problem found.
pub(super) fn validate(raw: RawConfig) -> Result<Config, Vec<Problem>> {
    let mut c = Checker::default();
    let defaults = Config::default();
    let cfg = Config {
        listen: c.listen(raw.listen.as_ref()).unwrap_or(defaults.listen),
        metrics_listen: c
            .metrics_listen(raw.metrics_listen.as_ref())
            .unwrap_or(defaults.metrics_listen),
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
        allowed_hosts: c
            .allowed_hosts(raw.allowed_hosts.as_ref())
            .unwrap_or(defaults.allowed_hosts),
        hosts: c.hosts(raw.hosts.as_ref()).unwrap_or(defaults.hosts),
        allow_private_destinations: c
            .boolean(
                "allow_private_destinations",
                raw.allow_private_destinations.as_ref(),
            )
            .unwrap_or(defaults.allow_private_destinations),
        allowed_destination_networks: c
            .networks(raw.allowed_destination_networks.as_ref())
            .unwrap_or(defaults.allowed_destination_networks),
        limits: c.limits(raw.limits.unwrap_or_default()),
        resolver: c.resolver(raw.resolver.unwrap_or_default()),
    };
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

    fn listen(&mut self, at: Option<&Spanned<Node>>) -> Option<Vec<SocketAddr>> {
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
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let key = format!("listen[{i}]");
            match self.socket_addr(&key, item, EXPECT_SOCKET) {
                Some(addr) if addr.port() != 0 && out.contains(&addr) => {
                    self.report(&key, item, format!("{addr} is listed more than once"));
                    ok = false;
                }
                Some(addr) => out.push(addr),
                None => ok = false,
            }
        }
        ok.then_some(out)
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

    fn allowed_hosts(&mut self, at: Option<&Spanned<Node>>) -> Option<Vec<HostPattern>> {
        let at = at?;
        let items = self.list("allowed_hosts", at, EXPECT_HOSTS_LIST, false)?;
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
        let mut out = Vec::with_capacity(items.len());
        let mut seen = HashSet::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let key = format!("allowed_hosts[{i}]");
            let Some(text) = self.string(&key, item, EXPECT_PATTERN) else {
                ok = false;
                continue;
            };
            match HostPattern::parse(text) {
                Ok(pattern) => {
                    if seen.insert(pattern.clone()) {
                        out.push(pattern);
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

    fn networks(&mut self, at: Option<&Spanned<Node>>) -> Option<Vec<ipnet::IpNet>> {
        let at = at?;
        let items = self.list("allowed_destination_networks", at, EXPECT_NETWORKS, true)?;
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let key = format!("allowed_destination_networks[{i}]");
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
        let bytes = |n: usize| format!("a whole number of bytes from {n} to 1048576 (1 MiB)");
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
        }
    }

    fn resolver(&mut self, raw: RawResolver) -> ResolverSettings {
        let d = ResolverSettings::default();
        ResolverSettings {
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
        }
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
}
