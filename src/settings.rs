//! The snapshot of configuration that workers consult for each new connection.
//!
//! Built from a validated [`Config`] on the control thread and published through `ArcSwap`: a
//! reload builds a new snapshot and swaps it in whole. Workers read it through a per-worker
//! `arc_swap::Cache`, so the per-connection path touches no shared reference count; connections
//! already open keep the values they started with.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::{Auth, Failures, Users};
use crate::config::{Config, DataPath, Limits, TlsSettings};
use crate::events::limiter::RefusalBudget;
use crate::policy::Policy;
use crate::relay::{self, RelaySettings, Scheme};
use rustls_pki_types::ServerName;

/// Everything a worker needs to decide on and run a new connection.
#[derive(Debug)]
pub struct Settings {
    pub policy: Policy,
    pub limits: Limits,
    pub data_path: DataPath,
    /// TLS inspection of each tunnel's handshake.
    pub tls: Arc<TlsSettings>,
    /// Client proxy authentication (`client_auth`); a reload builds a new table, which also
    /// invalidates the workers' caches of accepted credentials.
    pub auth: Option<Arc<Auth>>,
    /// Open tunnels through this relay proxy instead of directly.
    pub relay: Option<RelaySettings>,
    /// For an `https://` relay: the TLS client configuration and the name to verify.
    pub relay_tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// The rate limit on refusal events (`logging:`).
    pub refusals: RefusalBudget,
    /// Re-check open tunnels against this snapshot when it replaces another (`revoke_on_reload`).
    pub revoke_on_reload: bool,
}

impl Settings {
    /// The first snapshot: no failed logins counted yet.
    pub fn new(cfg: &Config) -> Settings {
        Settings::build(cfg, Arc::default())
    }

    /// The snapshot that replaces `previous` on a reload: the failed-login counts carry over,
    /// so a reload does not lift a lockout.
    pub fn after(cfg: &Config, previous: &Settings) -> Settings {
        let failures = previous
            .auth
            .as_ref()
            .map(|a| Arc::clone(&a.failures))
            .unwrap_or_default();
        Settings::build(cfg, failures)
    }

    fn build(cfg: &Config, failures: Arc<Failures>) -> Settings {
        Settings {
            policy: Policy::new(cfg),
            limits: cfg.limits.clone(),
            data_path: cfg.data_path,
            tls: Arc::new(cfg.tls.clone()),
            auth: cfg.client_auth.as_ref().map(|c| {
                Arc::new(Auth::new(
                    // The file was parsed by the config's validation; if it has changed into
                    // something unreadable since, nobody logs in (fail closed).
                    Users::load(&c.users_file).unwrap_or_default(),
                    c.realm.clone(),
                    c.max_failures,
                    c.failure_window,
                    failures,
                ))
            }),
            relay: cfg.relay_proxy.clone(),
            relay_tls: cfg
                .relay_proxy
                .as_ref()
                .filter(|r| r.scheme == Scheme::Https)
                .and_then(|r| {
                    Some((
                        relay::client_config(r).ok()?,
                        relay::server_name(&r.host).ok()?,
                    ))
                }),
            refusals: cfg.logging.refusals,
            revoke_on_reload: cfg.revoke_on_reload,
        }
    }
}

/// The published snapshot, shared by the control thread (writer) and the workers (readers).
pub type Shared = Arc<ArcSwap<Settings>>;

pub fn shared(cfg: &Config) -> Shared {
    Arc::new(ArcSwap::from_pointee(Settings::new(cfg)))
}
