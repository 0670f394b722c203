//! `resolver:`: the settings the resolver runs with (parsed by `config`, owned here).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `resolver:`. Restart-only (the resolver is started once); see [`crate::resolve`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Name servers to query; empty = the system's `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Names cached, each with its A and AAAA answers; 0 disables the cache.
    pub cache_size: usize,
    /// The hosts file answered before DNS (`files dns`); a missing file has no entries.
    pub hosts_file: PathBuf,
    /// Positive answers are kept at least this long, whatever their TTL.
    pub min_ttl: Duration,
    /// ... and at most this long; never below `min_ttl`.
    pub max_ttl: Duration,
    /// Cap on how long NXDOMAIN / NODATA is kept (the SOA minimum otherwise); 0 = not kept.
    pub negative_ttl: Duration,
    /// Silence after which an expired answer is served (RFC 8767); below `resolve_timeout`.
    pub stale_after: Duration,
    /// How long past its expiry an answer may still be served stale; 0 = never.
    pub stale_ttl: Duration,
    /// How long addresses of one family wait for the other family's answer (RFC 8305's
    /// Resolution Delay); below `resolve_timeout`.
    pub resolution_delay: Duration,
    /// A private address from DNS is allowed only through a `privatelink.` CNAME chain.
    pub private_link: bool,
}

impl Default for ResolverSettings {
    fn default() -> ResolverSettings {
        ResolverSettings {
            nameservers: Vec::new(),
            cache_size: 4096,
            hosts_file: PathBuf::from("/etc/hosts"),
            min_ttl: Duration::from_secs(5),
            max_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
            stale_after: Duration::from_millis(1500),
            stale_ttl: Duration::from_secs(3600),
            resolution_delay: Duration::from_millis(50),
            private_link: false,
        }
    }
}
