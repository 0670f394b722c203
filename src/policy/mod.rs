//! The gateway's access policy, as one immutable snapshot built from a [`PolicySpec`]: the
//! validated, already parsed parts of the configuration that the policy owns.
//!
//! A client is first checked at accept by [`Policy::client_allowed`] (`allowed_client_networks`;
//! empty = any client). A CONNECT request then goes through two checks:
//! 1. [`Policy::check_target`] (or [`Policy::check_target_for`] for an authenticated user), on
//!    the requested authority before anything is resolved: the host must match the allowlist
//!    (exact names, `*.` wildcards, IP literals) and the port must be among the ports of the
//!    most specific matching entry: its own (`"*.cloudapp.net:443,9354,30000-30199"`) or, for
//!    an entry without ports, the global `allowed_ports`. A user's own entries
//!    (`client_auth.user_hosts`) decide for the hosts they match; the global list decides the
//!    rest.
//! 2. [`Policy::check_address`], the private-destination (SSRF) guard, on every address the
//!    name resolved to (or the literal address): anything [`classify`] does not call public is
//!    refused unless `allow_private_destinations` is set or the address lies in one of
//!    `allowed_destination_networks`.
//!
//! [`Policy::host_override`] exposes the static `hosts:` map, consulted instead of DNS.
//! A `Policy` is `Send + Sync` and never changes; a reload builds a new one.

mod allowlist;
mod entry;
mod ip;
mod ports;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};

pub use allowlist::{normalize_host, Allowlist, HostPattern, PatternError, PortRule};
pub use entry::{EntryError, HostEntry};
pub use ip::{classify, classify_v4, classify_v6, AddrClass};
pub use ports::{PortList, PortListError, PortSet};

/// What a [`Policy`] is made of, every part already parsed and validated (the configuration
/// lends its own values; nothing is parsed again here).
#[derive(Debug, Clone, Copy)]
pub struct PolicySpec<'a> {
    /// The host allowlist (`allowed_hosts` plus the presets' entries).
    pub allowed_hosts: &'a [HostEntry],
    /// The ports of entries without their own.
    pub allowed_ports: &'a [u16],
    /// Each user's own entries (`client_auth.user_hosts`).
    pub user_hosts: &'a [(String, Vec<HostEntry>)],
    /// Static name -> addresses overrides (`hosts:`), names normalised.
    pub hosts: &'a [(String, Vec<IpAddr>)],
    /// Turns the private-destination guard off.
    pub allow_private_destinations: bool,
    /// Networks exempted from the private-destination guard.
    pub allowed_destination_networks: &'a [ipnet::IpNet],
    /// Networks clients may connect from; empty = any client.
    pub allowed_client_networks: &'a [ipnet::IpNet],
}

/// The immutable policy snapshot shared by all workers.
#[derive(Debug, Clone)]
pub struct Policy {
    allowlist: Allowlist,
    ports: PortSet,
    /// Each user's own entries (`client_auth.user_hosts`), consulted before `allowlist`.
    users: HashMap<String, Allowlist>,
    /// `allowed_client_networks`; empty = any client.
    clients: Networks,
    overrides: HashMap<String, Vec<IpAddr>>,
    guard: Guard,
    /// Every entry as the configuration lists it, by [`RuleId`]: the global allowlist's
    /// entries first, then each user's (`"ENTRY (user NAME)"`). Bounded by the configuration,
    /// so these are fit to be metric labels.
    rules: Vec<String>,
}

/// Which allowlist entry allowed a request: an index into [`Policy::rules`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleId(pub u32);

impl Policy {
    /// Builds the policy; cannot fail, since every part of `spec` is already parsed.
    pub fn new(spec: &PolicySpec<'_>) -> Policy {
        // The names are normalised by the parse that made the spec.
        let overrides = spec.hosts.iter().cloned().collect();
        let guard = Guard {
            allow_private: spec.allow_private_destinations,
            exempt: Networks::new(spec.allowed_destination_networks),
        };
        let mut rules: Vec<String> = spec.allowed_hosts.iter().map(|e| e.to_string()).collect();
        let mut users = HashMap::new();
        for (user, entries) in spec.user_hosts {
            let first = u32::try_from(rules.len()).unwrap_or(u32::MAX);
            let list = Allowlist::from_entries_at(entries, first);
            rules.extend(entries.iter().map(|e| format!("{e} (user {user})")));
            if !list.is_empty() {
                users.insert(user.clone(), list);
            }
        }
        Policy {
            rules,
            allowlist: Allowlist::from_entries(spec.allowed_hosts),
            ports: spec.allowed_ports.iter().copied().collect(),
            users,
            clients: Networks::new(spec.allowed_client_networks),
            overrides,
            guard,
        }
    }

    /// Decides on the CONNECT authority before any resolution, for an unauthenticated client
    /// (the global allowlist only). `host` is already normalised (see [`normalize_host`]). The
    /// host is checked before the port.
    pub fn check_target(&self, host: &str, port: u16) -> Result<(), Denial> {
        self.check_target_for(host, port, None)
    }

    /// Like [`Policy::check_target`], for `user` when the client authenticated: an entry of
    /// the user's own list that matches `host` decides (the most specific one); otherwise the
    /// global allowlist decides. One hash probe per label of `host` in each list consulted.
    pub fn check_target_for(
        &self,
        host: &str,
        port: u16,
        user: Option<&str>,
    ) -> Result<(), Denial> {
        self.decide_target_for(host, port, user).map(drop)
    }

    /// Like [`Policy::check_target_for`], and says which entry allowed the request (the same
    /// lookup: no extra cost).
    pub fn decide_target_for(
        &self,
        host: &str,
        port: u16,
        user: Option<&str>,
    ) -> Result<RuleId, Denial> {
        let own = user
            .and_then(|u| self.users.get(u))
            .and_then(|list| list.lookup(host));
        let rule = own
            .or_else(|| self.allowlist.lookup(host))
            .ok_or(Denial::HostNotAllowed)?;
        if rule.allows(port, &self.ports) {
            Ok(RuleId(rule.entry()))
        } else {
            Err(Denial::PortNotAllowed)
        }
    }

    /// The entries as the configuration lists them, by [`RuleId`] (see the field's doc).
    pub fn rules(&self) -> &[String] {
        &self.rules
    }

    /// Whether a client connecting from `ip` may be served (`allowed_client_networks`; an
    /// empty list allows any client). An IPv4-mapped IPv6 address is also matched against the
    /// IPv4 networks.
    pub fn client_allowed(&self, ip: IpAddr) -> bool {
        self.clients.is_empty() || self.clients.contains(ip)
    }

    /// Whether `user` has entries of its own (`client_auth.user_hosts`).
    pub fn has_user_hosts(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The static override from the configuration's `hosts:` map for a normalised name.
    pub fn host_override(&self, host: &str) -> Option<&[IpAddr]> {
        self.overrides.get(host).map(Vec::as_slice)
    }

    /// The private-destination (SSRF) guard for one resolved or literal address.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Denial> {
        let class = classify(ip);
        if class.is_public() || self.guard.exempts(ip) {
            Ok(())
        } else {
            Err(Denial::PrivateDestination(class))
        }
    }

    /// The host allowlist.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allowlist
    }

    /// The allowed destination ports.
    pub fn ports(&self) -> &PortSet {
        &self.ports
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// The host matches no allowlist entry.
    HostNotAllowed,
    /// The port is not among the ports of the matching entry (its own, or `allowed_ports`).
    PortNotAllowed,
    /// The (resolved) address is not public and not exempted.
    PrivateDestination(AddrClass),
}

impl Denial {
    /// A stable `snake_case` reason, used in logs and as a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::HostNotAllowed => "host_not_allowed",
            Denial::PortNotAllowed => "port_not_allowed",
            Denial::PrivateDestination(_) => "private_destination",
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::PrivateDestination(class) => write!(f, "{} ({class})", self.reason()),
            _ => f.write_str(self.reason()),
        }
    }
}

/// Exemptions from the private-destination guard.
#[derive(Debug, Clone)]
struct Guard {
    allow_private: bool,
    exempt: Networks,
}

impl Guard {
    /// Whether a non-public address is exempted. An IPv4-mapped IPv6 address is also matched
    /// against the IPv4 networks.
    fn exempts(&self, ip: IpAddr) -> bool {
        self.allow_private || self.exempt.contains(ip)
    }
}

/// A list of IPv4 and IPv6 networks.
#[derive(Debug, Clone, Default)]
struct Networks {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl Networks {
    fn new(nets: &[ipnet::IpNet]) -> Networks {
        let mut out = Networks::default();
        for net in nets {
            match net {
                ipnet::IpNet::V4(n) => out.v4.push(n.trunc()),
                ipnet::IpNet::V6(n) => out.v6.push(n.trunc()),
            }
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` lies in one of the networks; an IPv4-mapped IPv6 address is also matched
    /// against the IPv4 networks.
    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.v4.iter().any(|n| n.contains(&v4)),
            IpAddr::V6(v6) => {
                self.v6.iter().any(|n| n.contains(&v6))
                    || v6
                        .to_ipv4_mapped()
                        .is_some_and(|v4| self.v4.iter().any(|n| n.contains(&v4)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn ip(s: &str) -> IpAddr {
        match s.parse() {
            Ok(ip) => ip,
            Err(e) => panic!("bad test address {s}: {e}"),
        }
    }

    fn policy(yaml: &str) -> Policy {
        match Config::from_yaml(yaml) {
            Ok(cfg) => Policy::new(&cfg.policy_spec()),
            Err(e) => panic!("test config should parse: {e}"),
        }
    }

    #[test]
    fn is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Policy>();
        assert_send_sync::<std::sync::Arc<Policy>>();
    }

    #[test]
    fn default_policy_targets() {
        let p = Policy::new(&Config::default().policy_spec());
        let ws = "0f0e0d0c-0000-1111-2222-333344445555.ods.opinsights.azure.com";
        assert_eq!(p.check_target(ws, 443), Ok(()));
        assert_eq!(
            p.check_target("global.handler.control.monitor.azure.com", 443),
            Ok(())
        );
        assert_eq!(
            p.check_target("westeurope.handler.control.monitor.azure.com", 443),
            Ok(())
        );
        assert_eq!(p.check_target(ws, 80), Err(Denial::PortNotAllowed));
        assert_eq!(p.check_target(ws, 0), Err(Denial::PortNotAllowed));
        assert_eq!(
            p.check_target("ods.opinsights.azure.com", 443),
            Err(Denial::HostNotAllowed)
        );
        assert_eq!(
            p.check_target("evilods.opinsights.azure.com", 443),
            Err(Denial::HostNotAllowed)
        );
        assert_eq!(
            p.check_target("example.com", 80),
            Err(Denial::HostNotAllowed),
            "the host is checked before the port"
        );
        assert_eq!(p.host_override(ws), None);
    }

    #[test]
    fn guard_refuses_private_by_default() {
        let p = Policy::new(&Config::default().policy_spec());
        assert_eq!(p.check_address(ip("20.50.1.1")), Ok(()));
        assert_eq!(p.check_address(ip("2603:1030::1")), Ok(()));
        let refused: &[(&str, AddrClass)] = &[
            ("127.0.0.1", AddrClass::Loopback),
            ("10.1.2.3", AddrClass::Private),
            ("169.254.169.254", AddrClass::LinkLocal),
            ("100.64.0.1", AddrClass::Cgnat),
            ("0.0.0.0", AddrClass::Unspecified),
            ("::1", AddrClass::Loopback),
            ("fd00::1", AddrClass::UniqueLocal),
            ("::ffff:8.8.8.8", AddrClass::Ipv4Embedded),
            ("::ffff:127.0.0.1", AddrClass::Ipv4Embedded),
            ("64:ff9b::a00:1", AddrClass::Ipv4Embedded),
        ];
        for &(addr, class) in refused {
            let denial = p.check_address(ip(addr));
            assert_eq!(denial, Err(Denial::PrivateDestination(class)), "{addr}");
        }
    }

    #[test]
    fn guard_exemptions() {
        let p =
            policy("allowed_destination_networks: [10.20.0.0/16, 192.168.1.5, 'fd00:1::/32']\n");
        assert_eq!(p.check_address(ip("10.20.3.4")), Ok(()));
        assert_eq!(p.check_address(ip("192.168.1.5")), Ok(()));
        assert_eq!(p.check_address(ip("fd00:1::9")), Ok(()));
        assert_eq!(
            p.check_address(ip("::ffff:10.20.3.4")),
            Ok(()),
            "IPv4-mapped addresses match IPv4 networks"
        );
        assert_eq!(
            p.check_address(ip("10.21.0.1")),
            Err(Denial::PrivateDestination(AddrClass::Private))
        );
        assert_eq!(
            p.check_address(ip("192.168.1.6")),
            Err(Denial::PrivateDestination(AddrClass::Private))
        );
        assert_eq!(
            p.check_address(ip("::ffff:10.21.0.1")),
            Err(Denial::PrivateDestination(AddrClass::Ipv4Embedded))
        );
        assert_eq!(
            p.check_address(ip("64:ff9b::a14:304")),
            Err(Denial::PrivateDestination(AddrClass::Ipv4Embedded)),
            "only IPv4-mapped addresses are matched against IPv4 networks"
        );

        let open = policy("allow_private_destinations: true\n");
        for addr in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.169.254",
            "::1",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(open.check_address(ip(addr)), Ok(()), "{addr}");
        }
    }

    #[test]
    fn targets_overrides_and_ports() {
        let p = policy(
            "allowed_ports: [443, 8443]\n\
             allowed_hosts: [api.example.com, '*.svc.example.net', 203.0.113.7, '2001:db8::7']\n\
             hosts:\n  API.example.com.: [198.51.100.1, '2001:db8::1']\n",
        );
        assert_eq!(p.check_target("api.example.com", 8443), Ok(()));
        assert_eq!(p.check_target("a.svc.example.net", 443), Ok(()));
        assert_eq!(p.check_target("203.0.113.7", 443), Ok(()));
        assert_eq!(p.check_target("2001:db8::7", 443), Ok(()));
        assert_eq!(
            p.check_target("api.example.com", 80),
            Err(Denial::PortNotAllowed)
        );
        assert_eq!(
            p.check_target("svc.example.net", 443),
            Err(Denial::HostNotAllowed)
        );
        assert_eq!(
            p.host_override("api.example.com"),
            Some(&[ip("198.51.100.1"), ip("2001:db8::1")][..])
        );
        assert_eq!(p.host_override("other.example.com"), None);
        assert_eq!(p.ports().iter().collect::<Vec<_>>(), vec![443, 8443]);
        assert_eq!(p.allowlist().len(), 4);
    }

    #[test]
    fn per_host_ports() {
        let p = policy(
            "allowed_ports: [443]\n\
             allowed_hosts:\n\
             \x20 - '*.cloudapp.net:443,9354,30000-30199'\n\
             \x20 - login.windows.net:80,443\n\
             \x20 - plain.example\n\
             \x20 - '[2001:db8::1]:8443'\n",
        );
        let w = "worker1.cloudapp.net";
        for port in [443, 9354, 30000, 30100, 30199] {
            assert_eq!(p.check_target(w, port), Ok(()), "{port}");
        }
        for port in [80, 9353, 9355, 29999, 30200, 8443] {
            assert_eq!(
                p.check_target(w, port),
                Err(Denial::PortNotAllowed),
                "{port}"
            );
        }
        assert_eq!(p.check_target("login.windows.net", 80), Ok(()));
        assert_eq!(p.check_target("login.windows.net", 443), Ok(()));
        assert_eq!(
            p.check_target("login.windows.net", 8080),
            Err(Denial::PortNotAllowed)
        );
        assert_eq!(p.check_target("plain.example", 443), Ok(()));
        assert_eq!(
            p.check_target("plain.example", 9354),
            Err(Denial::PortNotAllowed),
            "another entry's ports do not leak"
        );
        assert_eq!(p.check_target("2001:db8::1", 8443), Ok(()));
        assert_eq!(
            p.check_target("2001:db8::1", 443),
            Err(Denial::PortNotAllowed)
        );
        assert_eq!(
            p.check_target("cloudapp.net", 443),
            Err(Denial::HostNotAllowed)
        );
    }

    #[test]
    fn the_most_specific_entry_decides() {
        let p = policy(
            "allowed_ports: [443]\n\
             allowed_hosts: ['*.w.test:443', 'a.w.test:8443', '*.b.w.test:9000', '*.example']\n",
        );
        assert_eq!(p.check_target("a.w.test", 8443), Ok(()));
        assert_eq!(
            p.check_target("a.w.test", 443),
            Err(Denial::PortNotAllowed),
            "the exact entry beats the wildcard"
        );
        assert_eq!(p.check_target("z.w.test", 443), Ok(()));
        assert_eq!(
            p.check_target("x.a.w.test", 443),
            Ok(()),
            "exact a.w.test is not a wildcard"
        );
        assert_eq!(p.check_target("x.b.w.test", 9000), Ok(()));
        assert_eq!(
            p.check_target("x.b.w.test", 443),
            Err(Denial::PortNotAllowed),
            "the longer suffix beats the shorter"
        );
        assert_eq!(
            p.check_target("b.w.test", 443),
            Ok(()),
            "b.w.test itself: *.w.test"
        );
        assert_eq!(p.check_target("deep.x.b.w.test", 9000), Ok(()));
    }

    #[test]
    fn a_pattern_listed_twice_gets_both_port_lists() {
        let p = policy(
            "allowed_ports: [443]\n\
             allowed_hosts: ['x.test:8443', 'x.test:9000-9001', '*.y.test', '*.y.test:8080', z.test]\n",
        );
        for port in [8443, 9000, 9001] {
            assert_eq!(p.check_target("x.test", port), Ok(()), "{port}");
        }
        assert_eq!(p.check_target("x.test", 443), Err(Denial::PortNotAllowed));
        assert_eq!(p.check_target("a.y.test", 443), Ok(()), "global ports kept");
        assert_eq!(p.check_target("a.y.test", 8080), Ok(()), "own ports added");
        assert_eq!(p.check_target("a.y.test", 80), Err(Denial::PortNotAllowed));
        assert_eq!(p.check_target("z.test", 443), Ok(()));
        assert_eq!(p.allowlist().len(), 3);
    }

    #[test]
    fn the_decision_names_the_entry_that_matched() {
        let p = policy(
            "allowed_ports: [443]\n\
             allowed_hosts: ['*.a.test', 'exact.a.test:8443', 'b.test', '*.a.test:9443']\n",
        );
        assert_eq!(
            p.rules(),
            ["*.a.test", "exact.a.test:8443", "b.test", "*.a.test:9443"]
        );
        let rule = |host: &str, port: u16| p.decide_target_for(host, port, None);
        assert_eq!(rule("x.a.test", 443), Ok(RuleId(0)));
        // The exact entry is more specific than the wildcard.
        assert_eq!(rule("exact.a.test", 8443), Ok(RuleId(1)));
        assert_eq!(rule("b.test", 443), Ok(RuleId(2)));
        // A pattern listed twice: its ports unite, and it counts as its first entry.
        assert_eq!(rule("x.a.test", 9443), Ok(RuleId(0)));
        assert_eq!(rule("c.test", 443), Err(Denial::HostNotAllowed));
    }

    #[test]
    fn per_user_entries() {
        let dir = std::env::temp_dir().join(format!("splicegate-policy-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("{e}");
        }
        let users = dir.join("users");
        if let Err(e) = std::fs::write(&users, "alice:$2b$04$x\n") {
            panic!("{e}");
        }
        let p = policy(&format!(
            "allowed_ports: [443]\n\
             allowed_hosts: ['*.shared.test', 'a.shared.test:8443']\n\
             client_auth:\n  users_file: {:?}\n  user_hosts:\n    \
             alice: ['*.extra.test:443,8443', 'a.shared.test:9443']\n    bob: []\n",
            users.display().to_string()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // Global list for everyone.
        for user in [None, Some("alice"), Some("bob"), Some("carol")] {
            assert_eq!(
                p.check_target_for("b.shared.test", 443, user),
                Ok(()),
                "{user:?}"
            );
        }
        // Alice's own entries.
        assert_eq!(
            p.check_target_for("x.extra.test", 8443, Some("alice")),
            Ok(())
        );
        assert_eq!(
            p.check_target_for("x.extra.test", 80, Some("alice")),
            Err(Denial::PortNotAllowed)
        );
        for user in [None, Some("bob"), Some("carol")] {
            assert_eq!(
                p.check_target_for("x.extra.test", 443, user),
                Err(Denial::HostNotAllowed),
                "{user:?} does not see alice's entries"
            );
        }
        assert_eq!(
            p.check_target("x.extra.test", 443),
            Err(Denial::HostNotAllowed)
        );
        // A user entry that matches decides for its host.
        assert_eq!(
            p.check_target_for("a.shared.test", 9443, Some("alice")),
            Ok(())
        );
        assert_eq!(
            p.check_target_for("a.shared.test", 8443, Some("alice")),
            Err(Denial::PortNotAllowed)
        );
        assert_eq!(p.check_target_for("a.shared.test", 8443, None), Ok(()));
        assert!(p.has_user_hosts("alice"));
        assert!(!p.has_user_hosts("bob"), "an empty list is no list");
    }

    #[test]
    fn client_networks() {
        let any = Policy::new(&Config::default().policy_spec());
        for addr in ["127.0.0.1", "10.9.9.9", "::1", "2001:db8::1"] {
            assert!(any.client_allowed(ip(addr)), "{addr}");
        }
        let p = policy("allowed_client_networks: [10.0.0.0/8, 127.0.0.1, 'fd00::/8']\n");
        for addr in [
            "10.1.2.3",
            "127.0.0.1",
            "fd00::5",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(p.client_allowed(ip(addr)), "{addr}");
        }
        for addr in [
            "127.0.0.2",
            "11.0.0.1",
            "::1",
            "fe80::1",
            "::ffff:11.0.0.1",
            "192.168.0.1",
        ] {
            assert!(!p.client_allowed(ip(addr)), "{addr}");
        }
    }

    #[test]
    fn denial_reasons() {
        assert_eq!(Denial::HostNotAllowed.reason(), "host_not_allowed");
        assert_eq!(Denial::PortNotAllowed.reason(), "port_not_allowed");
        let d = Denial::PrivateDestination(AddrClass::Loopback);
        assert_eq!(d.reason(), "private_destination");
        assert_eq!(d.to_string(), "private_destination (loopback)");
    }
}
