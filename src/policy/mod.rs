//! The gateway's access policy, as one immutable snapshot built from a validated
//! [`Config`](crate::config::Config).
//!
//! A CONNECT request goes through two checks:
//! 1. [`Policy::check_target`], on the requested authority before anything is resolved: the
//!    host must match the allowlist (exact names, `*.` wildcards, IP literals) and the port
//!    must be in the port set.
//! 2. [`Policy::check_address`], the private-destination (SSRF) guard, on every address the
//!    name resolved to (or the literal address): anything [`classify`] does not call public is
//!    refused unless `allow_private_destinations` is set or the address lies in one of
//!    `allowed_destination_networks`.
//!
//! [`Policy::host_override`] exposes the static `hosts:` map, consulted instead of DNS.
//! A `Policy` is `Send + Sync` and never changes; a reload builds a new one.

mod allowlist;
mod ip;
mod ports;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};

pub use allowlist::{normalize_host, Allowlist, HostPattern, PatternError};
pub use ip::{classify, classify_v4, classify_v6, AddrClass};
pub use ports::PortSet;

/// The immutable policy snapshot shared by all workers.
#[derive(Debug, Clone)]
pub struct Policy {
    allowlist: Allowlist,
    ports: PortSet,
    overrides: HashMap<String, Vec<IpAddr>>,
    guard: Guard,
}

impl Policy {
    /// Builds the policy from a validated configuration.
    pub fn new(cfg: &crate::config::Config) -> Policy {
        let overrides = cfg
            .hosts
            .iter()
            .map(|(name, addrs)| {
                let key = normalize_host(name).unwrap_or_else(|| name.clone());
                (key, addrs.clone())
            })
            .collect();
        let mut guard = Guard {
            allow_private: cfg.allow_private_destinations,
            v4: Vec::new(),
            v6: Vec::new(),
        };
        for net in &cfg.allowed_destination_networks {
            match net {
                ipnet::IpNet::V4(n) => guard.v4.push(n.trunc()),
                ipnet::IpNet::V6(n) => guard.v6.push(n.trunc()),
            }
        }
        Policy {
            allowlist: Allowlist::from_patterns(&cfg.allowed_hosts),
            ports: cfg.allowed_ports.iter().copied().collect(),
            overrides,
            guard,
        }
    }

    /// Decides on the CONNECT authority before any resolution. `host` is already normalised
    /// (see [`normalize_host`]). The host is checked before the port.
    pub fn check_target(&self, host: &str, port: u16) -> Result<(), Denial> {
        if !self.allowlist.is_allowed(host) {
            return Err(Denial::HostNotAllowed);
        }
        if !self.ports.contains(port) {
            return Err(Denial::PortNotAllowed);
        }
        Ok(())
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
    /// The port is not in `allowed_ports`.
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
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl Guard {
    /// Whether a non-public address is exempted. An IPv4-mapped IPv6 address is also matched
    /// against the IPv4 networks.
    fn exempts(&self, ip: IpAddr) -> bool {
        if self.allow_private {
            return true;
        }
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
            Ok(cfg) => Policy::new(&cfg),
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
        let p = Policy::new(&Config::default());
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
        let p = Policy::new(&Config::default());
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
    fn denial_reasons() {
        assert_eq!(Denial::HostNotAllowed.reason(), "host_not_allowed");
        assert_eq!(Denial::PortNotAllowed.reason(), "port_not_allowed");
        let d = Denial::PrivateDestination(AddrClass::Loopback);
        assert_eq!(d.reason(), "private_destination");
        assert_eq!(d.to_string(), "private_destination (loopback)");
    }
}
