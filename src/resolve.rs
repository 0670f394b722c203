//! Name resolution off the workers: an asynchronous, caching resolver (hickory) on the control
//! runtime. It honours record TTLs and `/etc/hosts`; the config's static `hosts:` overrides are
//! answered by the worker itself before a request ever gets here.
//!
//! A worker sends a [`Request`] and goes on serving; the answer comes back on the worker's own
//! channel, followed by a wake-up of its eventfd. The resolver never blocks a worker, and the
//! worker enforces `resolve_timeout` with its own timer, so a silent DNS server costs one timer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::TokioResolver;

use crate::mailbox::Mailbox;

/// Why a name did not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveError {
    /// NXDOMAIN or no A/AAAA records.
    NotFound,
    /// The resolver failed (no usable name server, network error, SERVFAIL...).
    Failed,
}

/// Why the resolver could not be built; lookups then fail with [`ResolveError::Failed`].
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("reading the system DNS configuration: {0}")]
    SystemConfig(#[source] NetError),
    #[error("building the resolver: {0}")]
    Build(#[source] NetError),
}

/// An answer for the worker's connection `(slot, gen)`.
#[derive(Debug)]
pub struct Answer {
    pub slot: u32,
    pub gen: u32,
    pub result: Result<Vec<IpAddr>, ResolveError>,
}

/// Where a worker wants its answers.
pub type ReplyTo = Mailbox<Answer>;

/// `resolver:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverSettings {
    /// Name servers to query; empty = the system's `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Cached answers; 0 disables the cache.
    pub cache_size: usize,
}

impl Default for ResolverSettings {
    fn default() -> ResolverSettings {
        ResolverSettings {
            nameservers: Vec::new(),
            cache_size: 4096,
        }
    }
}

#[derive(Debug)]
struct Request {
    name: String,
    slot: u32,
    gen: u32,
    reply: ReplyTo,
}

/// A cloneable handle to the resolver task; `lookup` never blocks.
#[derive(Debug, Clone)]
pub struct Resolver {
    tx: tokio::sync::mpsc::UnboundedSender<Request>,
}

impl Resolver {
    /// Start the resolver on `rt`. A resolver that cannot be built (no `/etc/resolv.conf`)
    /// still starts: every lookup then fails with [`ResolveError::Failed`] and the error is
    /// returned for the caller to log.
    pub fn start(
        settings: &ResolverSettings,
        timeout: Duration,
        rt: &tokio::runtime::Handle,
    ) -> (Resolver, Option<SetupError>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
        let (resolver, warning) = match build(settings, timeout) {
            Ok(r) => (Some(Arc::new(r)), None),
            Err(e) => (None, Some(e)),
        };
        rt.spawn(async move {
            while let Some(req) = rx.recv().await {
                let resolver = resolver.clone();
                tokio::spawn(async move {
                    let result = match resolver {
                        Some(r) => lookup(&r, &req.name).await,
                        None => Err(ResolveError::Failed),
                    };
                    let answer = Answer {
                        slot: req.slot,
                        gen: req.gen,
                        result,
                    };
                    req.reply.post(answer);
                });
            }
        });
        (Resolver { tx }, warning)
    }

    /// Ask for `name`; the answer arrives on `reply`. Returns false if the resolver is gone.
    pub fn lookup(&self, name: &str, slot: u32, gen: u32, reply: &ReplyTo) -> bool {
        self.tx
            .send(Request {
                name: name.to_owned(),
                slot,
                gen,
                reply: reply.clone(),
            })
            .is_ok()
    }
}

fn build(settings: &ResolverSettings, timeout: Duration) -> Result<TokioResolver, SetupError> {
    let mut builder = if settings.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(SetupError::SystemConfig)?
    } else {
        let servers = settings.nameservers.iter().map(name_server).collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts = builder.options_mut();
    opts.cache_size = settings.cache_size as u64;
    opts.timeout = timeout;
    opts.attempts = 2;
    opts.use_hosts_file = ResolveHosts::Always;
    // Names come from CONNECT requests and are absolute: never append search domains.
    opts.ndots = 0;
    builder.build().map_err(SetupError::Build)
}

fn name_server(addr: &SocketAddr) -> NameServerConfig {
    let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut ns.connections {
        c.port = addr.port();
    }
    ns
}

async fn lookup(r: &TokioResolver, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
    // A trailing dot makes the name fully qualified for the resolver.
    let fqdn = format!("{name}.");
    match r.lookup_ip(fqdn.as_str()).await {
        Ok(l) => {
            let ips: Vec<IpAddr> = l.iter().collect();
            if ips.is_empty() {
                Err(ResolveError::NotFound)
            } else {
                Ok(ips)
            }
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(_))) => Err(ResolveError::NotFound),
        Err(_) => Err(ResolveError::Failed),
    }
}
