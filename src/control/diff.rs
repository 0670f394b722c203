//! What a reload changed: a short, human-readable account for event 100.
//!
//! Pure: compares two validated configurations. Host patterns and ports are listed as added and
//! removed; scalar settings as `key: old -> new`. Keys this module does not itemise (settings
//! added to the configuration later) still show up as "other settings changed", so a reload never
//! claims "no changes" when something did change.

use std::collections::BTreeSet;
use std::fmt::Display;

use crate::config::{format_duration, Config};
use crate::proto::proxy::ProxySources;

/// The changes between two configurations, one entry per item.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub items: Vec<String>,
    /// `listen`, `workers` or `engine` changed: a new engine must take over.
    pub engine: bool,
    /// `metrics_listen` changed: the HTTP endpoint moves.
    pub metrics_listen: bool,
    /// `health_listen` changed: the probe port moves (or opens, or closes).
    pub health_listen: bool,
    /// Changes that only a restart applies (the resolver is started once).
    pub need_restart: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// `"hosts +a.example -b.example; workers 2 -> 4"`, or `"no changes"`.
    pub fn summary(&self) -> String {
        if self.items.is_empty() {
            "no changes".to_owned()
        } else {
            self.items.join("; ")
        }
    }
}

/// `[0.0.0.0:8080 from 10.0.0.0/24]`: the listeners with the PROXY protocol and their sources.
fn proxy_list(listen: &[std::net::SocketAddr], proxy: &[Option<ProxySources>]) -> String {
    let items: Vec<String> = listen
        .iter()
        .zip(proxy)
        .filter_map(|(a, p)| {
            p.as_ref()
                .map(|p| format!("{a} from {}", list(p.networks())))
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Compare `old` with `new`.
pub fn diff(old: &Config, new: &Config) -> Changes {
    let mut c = Changes::default();
    set_diff(
        &mut c.items,
        "allowed_hosts",
        old.allowed_hosts.iter().map(ToString::to_string),
        new.allowed_hosts.iter().map(ToString::to_string),
    );
    set_diff(
        &mut c.items,
        "allowed_ports",
        old.allowed_ports.iter().map(ToString::to_string),
        new.allowed_ports.iter().map(ToString::to_string),
    );
    if old.listen != new.listen {
        c.engine = true;
        c.items.push(format!(
            "listen {} -> {}",
            list(&old.listen),
            list(&new.listen)
        ));
    }
    if old.listen_proxy != new.listen_proxy {
        // A listener's PROXY protocol setting is the engine's: a new one takes over the sockets.
        c.engine = true;
        c.items.push(format!(
            "listen proxy_protocol {} -> {}",
            proxy_list(&old.listen, &old.listen_proxy),
            proxy_list(&new.listen, &new.listen_proxy)
        ));
    }
    if old.workers != new.workers {
        c.engine = true;
        scalar(&mut c.items, "workers", old.workers, new.workers);
    }
    if old.engine != new.engine {
        c.engine = true;
        scalar(
            &mut c.items,
            "engine",
            old.engine.as_str(),
            new.engine.as_str(),
        );
    }
    if old.metrics_listen != new.metrics_listen {
        c.metrics_listen = true;
        let show = |a: Option<std::net::SocketAddr>| a.map_or("null".to_owned(), |a| a.to_string());
        scalar(
            &mut c.items,
            "metrics_listen",
            show(old.metrics_listen),
            show(new.metrics_listen),
        );
    }
    if old.health_listen != new.health_listen {
        c.health_listen = true;
        let show = |a: Option<std::net::SocketAddr>| a.map_or("null".to_owned(), |a| a.to_string());
        scalar(
            &mut c.items,
            "health_listen",
            show(old.health_listen),
            show(new.health_listen),
        );
    }
    if old.takeover_socket != new.takeover_socket {
        c.items.push("takeover_socket changed".to_owned());
        c.need_restart.push("takeover_socket".to_owned());
    }
    if old.metrics_public != new.metrics_public {
        scalar(
            &mut c.items,
            "metrics_public",
            old.metrics_public,
            new.metrics_public,
        );
    }
    if old.data_path != new.data_path {
        scalar(
            &mut c.items,
            "data_path",
            old.data_path.as_str(),
            new.data_path.as_str(),
        );
    }
    set_diff(
        &mut c.items,
        "hosts",
        old.hosts.iter().map(|(n, a)| format!("{n}={}", list(a))),
        new.hosts.iter().map(|(n, a)| format!("{n}={}", list(a))),
    );
    if old.allow_private_destinations != new.allow_private_destinations {
        scalar(
            &mut c.items,
            "allow_private_destinations",
            old.allow_private_destinations,
            new.allow_private_destinations,
        );
    }
    set_diff(
        &mut c.items,
        "allowed_destination_networks",
        old.allowed_destination_networks
            .iter()
            .map(ToString::to_string),
        new.allowed_destination_networks
            .iter()
            .map(ToString::to_string),
    );
    let (o, n) = (&old.limits, &new.limits);
    for (key, a, b) in [
        ("max_connections", o.max_connections, n.max_connections),
        ("max_header_bytes", o.max_header_bytes, n.max_header_bytes),
        ("max_pipes", o.max_pipes, n.max_pipes),
        ("pipe_size", o.pipe_size, n.pipe_size),
        (
            "metrics_max_connections",
            o.metrics_max_connections,
            n.metrics_max_connections,
        ),
        ("reload_retries", o.reload_retries, n.reload_retries),
        (
            "max_connections_per_client",
            o.max_connections_per_client,
            n.max_connections_per_client,
        ),
        (
            "admin_max_connections",
            o.admin_max_connections,
            n.admin_max_connections,
        ),
    ] {
        if a != b {
            scalar(&mut c.items, &format!("limits.{key}"), a, b);
        }
    }
    for (key, a, b) in [
        ("memory_budget", o.memory_budget, n.memory_budget),
        (
            "overload_engage_percent",
            u64::from(o.overload_engage_percent),
            u64::from(n.overload_engage_percent),
        ),
        (
            "overload_release_percent",
            u64::from(o.overload_release_percent),
            u64::from(n.overload_release_percent),
        ),
    ] {
        if a != b {
            scalar(&mut c.items, &format!("limits.{key}"), a, b);
        }
    }
    for (key, a, b) in [
        ("header_timeout", o.header_timeout, n.header_timeout),
        ("connect_timeout", o.connect_timeout, n.connect_timeout),
        ("idle_timeout", o.idle_timeout, n.idle_timeout),
        ("drain_timeout", o.drain_timeout, n.drain_timeout),
        ("resolve_timeout", o.resolve_timeout, n.resolve_timeout),
        ("reload_debounce", o.reload_debounce, n.reload_debounce),
        (
            "accept_backoff_min",
            o.accept_backoff_min,
            n.accept_backoff_min,
        ),
        (
            "accept_backoff_max",
            o.accept_backoff_max,
            n.accept_backoff_max,
        ),
        (
            "worker_restart_delay",
            o.worker_restart_delay,
            n.worker_restart_delay,
        ),
        ("drain_grace", o.drain_grace, n.drain_grace),
        ("takeover_timeout", o.takeover_timeout, n.takeover_timeout),
        ("admin_timeout", o.admin_timeout, n.admin_timeout),
        (
            "overload_sample_interval",
            o.overload_sample_interval,
            n.overload_sample_interval,
        ),
    ] {
        if a != b {
            scalar(
                &mut c.items,
                &format!("limits.{key}"),
                format_duration(a),
                format_duration(b),
            );
        }
    }
    if o.resolve_timeout != n.resolve_timeout {
        c.need_restart.push("limits.resolve_timeout".to_owned());
    }
    if old.admin_socket != new.admin_socket {
        let show = |p: &Option<std::path::PathBuf>| {
            p.as_ref()
                .map_or_else(|| "disabled".to_owned(), |p| p.display().to_string())
        };
        scalar(
            &mut c.items,
            "admin_socket",
            show(&old.admin_socket),
            show(&new.admin_socket),
        );
    }
    if old.resolver != new.resolver {
        c.items.push("resolver changed".to_owned());
        c.need_restart.push("resolver".to_owned());
    }
    if old.tls != new.tls {
        c.items.push("tls changed".to_owned());
    }
    if old.relay_proxy != new.relay_proxy {
        c.items.push(match (&old.relay_proxy, &new.relay_proxy) {
            (None, Some(_)) => "relay_proxy set".to_owned(),
            (Some(_), None) => "relay_proxy cleared".to_owned(),
            _ => "relay_proxy changed".to_owned(),
        });
    }
    set_diff(
        &mut c.items,
        "allowed_client_networks",
        old.allowed_client_networks.iter().map(ToString::to_string),
        new.allowed_client_networks.iter().map(ToString::to_string),
    );
    if old.client_auth != new.client_auth {
        c.items.push(match (&old.client_auth, &new.client_auth) {
            (None, Some(_)) => "client_auth enabled".to_owned(),
            (Some(_), None) => "client_auth disabled".to_owned(),
            _ => "client_auth changed".to_owned(),
        });
    }
    if c.items.is_empty() && old != new {
        c.items.push("other settings changed".to_owned());
    }
    c
}

fn list<T: Display>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("[{}]", v.join(", "))
}

fn scalar(out: &mut Vec<String>, key: &str, old: impl Display, new: impl Display) {
    out.push(format!("{key} {old} -> {new}"));
}

fn set_diff(
    out: &mut Vec<String>,
    key: &str,
    old: impl Iterator<Item = String>,
    new: impl Iterator<Item = String>,
) {
    let old: BTreeSet<String> = old.collect();
    let new: BTreeSet<String> = new.collect();
    let mut parts: Vec<String> = new.difference(&old).map(|s| format!("+{s}")).collect();
    parts.extend(old.difference(&new).map(|s| format!("-{s}")));
    if !parts.is_empty() {
        out.push(format!("{key} {}", parts.join(" ")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Config {
        Config::from_yaml(yaml).unwrap()
    }

    #[test]
    fn identical_configs_have_no_changes() {
        let a = cfg("allowed_hosts: [a.example]\n");
        let c = diff(&a, &a.clone());
        assert!(c.is_empty());
        assert_eq!(c.summary(), "no changes");
        assert!(!c.engine);
    }

    #[test]
    fn hosts_ports_limits_and_engine_changes_are_itemised() {
        let a = cfg(
            "allowed_hosts: [a.example, b.example]\nallowed_ports: [443]\nworkers: 2\n\
             limits:\n  idle_timeout: 15m\n",
        );
        let b = cfg(
            "allowed_hosts: [a.example, \"*.c.example\"]\nallowed_ports: [443, 8443]\n\
             workers: 4\nlimits:\n  idle_timeout: 5m\n",
        );
        let c = diff(&a, &b);
        let s = c.summary();
        assert!(s.contains("allowed_hosts +*.c.example -b.example"), "{s}");
        assert!(s.contains("allowed_ports +8443"), "{s}");
        assert!(s.contains("workers 2 -> 4"), "{s}");
        assert!(s.contains("limits.idle_timeout 15m -> 5m"), "{s}");
        assert!(c.engine);
        assert!(!c.metrics_listen);
    }

    #[test]
    fn overload_settings_are_itemised() {
        let a = cfg("{}\n");
        let b = cfg(
            "limits:\n  memory_budget: 64MiB\n  overload_engage_percent: 80\n  \
             overload_release_percent: 70\n  overload_sample_interval: 1s\n",
        );
        let s = diff(&a, &b).summary();
        assert!(s.contains("limits.memory_budget 0 -> 67108864"), "{s}");
        assert!(s.contains("limits.overload_engage_percent 95 -> 80"), "{s}");
        assert!(
            s.contains("limits.overload_release_percent 90 -> 70"),
            "{s}"
        );
        assert!(
            s.contains("limits.overload_sample_interval 250ms -> 1s"),
            "{s}"
        );
    }

    #[test]
    fn probe_port_moves_and_takeover_socket_needs_a_restart() {
        let a = cfg("{}\n");
        let b = cfg(
            "health_listen: \"0.0.0.0:9465\"\ntakeover_socket: /run/x.sock\n\
             limits:\n  drain_grace: 10s\n",
        );
        let c = diff(&a, &b);
        assert!(c.health_listen && !c.engine && !c.metrics_listen, "{c:?}");
        let s = c.summary();
        assert!(s.contains("health_listen null -> 0.0.0.0:9465"), "{s}");
        assert!(s.contains("limits.drain_grace 0s -> 10s"), "{s}");
        assert_eq!(c.need_restart, vec!["takeover_socket".to_owned()]);
        assert!(!diff(&b, &b.clone()).health_listen);
    }

    #[test]
    fn listen_and_resolver_changes() {
        let a = cfg("listen: [\"127.0.0.1:8080\"]\n");
        let b = cfg(
            "listen: [\"127.0.0.1:8080\", \"127.0.0.1:8081\"]\nresolver:\n  cache_size: 10\n\
             metrics_listen: null\n",
        );
        let c = diff(&a, &b);
        assert!(c.engine);
        assert!(c.metrics_listen);
        assert_eq!(c.need_restart, vec!["resolver".to_owned()]);
        assert!(c
            .summary()
            .contains("listen [127.0.0.1:8080] -> [127.0.0.1:8080, 127.0.0.1:8081]"));
    }

    /// A listener's PROXY protocol setting belongs to the engine: changing it (or only its
    /// sources) starts a new engine, as a changed address does.
    #[test]
    fn proxy_protocol_changes_start_a_new_engine() {
        let plain = cfg("listen: [\"127.0.0.1:8080\"]\n");
        let proxied = cfg(
            "listen: [{address: \"127.0.0.1:8080\", proxy_protocol: true, proxy_from: [10.0.0.0/24]}]\n",
        );
        let other = cfg(
            "listen: [{address: \"127.0.0.1:8080\", proxy_protocol: true, proxy_from: [10.0.1.0/24]}]\n",
        );
        let c = diff(&plain, &proxied);
        assert!(c.engine, "{}", c.summary());
        assert!(c
            .summary()
            .contains("listen proxy_protocol [] -> [127.0.0.1:8080 from [10.0.0.0/24]]"));
        assert!(diff(&proxied, &other).engine);
        assert!(diff(&proxied, &plain).engine);
        assert!(!diff(&proxied, &proxied.clone()).engine);
        let limited = cfg("limits:\n  max_connections_per_client: 5\n");
        let c = diff(&plain, &limited);
        assert!(c
            .summary()
            .contains("limits.max_connections_per_client 0 -> 5"));
    }

    /// The users table is part of the parsed configuration: a reload after the file changed
    /// says so, and one after no change says nothing, although the path is the same.
    #[test]
    fn a_changed_users_table_is_a_client_auth_change() {
        let dir =
            std::env::temp_dir().join(format!("splicegate-diff-users-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("create {}: {e}", dir.display());
        }
        let file = dir.join("users");
        let write = |text: &str| {
            if let Err(e) = std::fs::write(&file, text) {
                panic!("write {}: {e}", file.display());
            }
        };
        let yaml = format!(
            "client_auth:\n  users_file: {:?}\n",
            file.display().to_string()
        );
        let load = || match Config::from_yaml(&yaml) {
            Ok(cfg) => cfg,
            Err(e) => panic!("{yaml:?}: {e}"),
        };
        write("alice:$2b$04$notarealhashatall\n");
        let a = load();
        let same = load();
        write("alice:$2b$04$notarealhashatall\nbob:$2b$04$anotherfakehash\n");
        let b = load();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(diff(&a, &same).summary(), "no changes");
        let s = diff(&a, &b).summary();
        assert!(s.contains("client_auth changed"), "{s}");
    }
}
