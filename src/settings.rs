//! The snapshot of configuration that workers consult for each new connection.
//!
//! Built from a validated [`Config`] on the control thread and published through `ArcSwap`: a
//! reload builds a new snapshot and swaps it in whole. Workers read it through a per-worker
//! `arc_swap::Cache`, so the per-connection path touches no shared reference count; connections
//! already open keep the values they started with.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::{Auth, Failures};
use crate::clients::ClientCounts;
use crate::config::{Config, DataPath, Limits};
use crate::events::limiter::RefusalBudget;
use crate::metrics::RuleUsage;
use crate::overload::Overload;
use crate::policy::Policy;
use crate::proto::tls::TlsSettings;
use crate::relay::RelaySettings;
use rustls_pki_types::ServerName;

/// Everything a worker needs to decide on and run a new connection.
#[derive(Debug)]
pub struct Settings {
    pub policy: Policy,
    /// The usage counters of `policy`'s entries (`splicegate_tunnels_total{rule}`); the
    /// control thread publishes them to the metrics' [`crate::metrics::RuleBook`].
    pub rules: Arc<RuleUsage>,
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
    /// Open connections per client across the workers (`limits.max_connections_per_client`);
    /// carried over by a reload, so the connections already open stay counted.
    pub clients: Arc<ClientCounts>,
    /// The overload state the control thread publishes (see [`crate::overload`]); carried over
    /// by a reload like `clients`, so one state serves every snapshot.
    pub overload: Arc<Overload>,
}

impl Settings {
    /// The first snapshot: no failed logins counted yet.
    pub fn new(cfg: &Config) -> Settings {
        Settings::build(cfg, Arc::default(), Arc::default(), Arc::default())
    }

    /// The snapshot that replaces `previous` on a reload: the failed-login counts carry over,
    /// so a reload does not lift a lockout.
    pub fn after(cfg: &Config, previous: &Settings) -> Settings {
        let failures = match &previous.auth {
            Some(a) => Arc::clone(&a.failures),
            // Authentication is newly switched on: nobody has failed a login yet.
            None => Arc::default(),
        };
        Settings::build(
            cfg,
            failures,
            Arc::clone(&previous.clients),
            Arc::clone(&previous.overload),
        )
    }

    /// Made only of values the configuration already parsed: no file is read and nothing can
    /// fail here (the users table, the per-user allowlists and the relay's TLS client all come
    /// from [`Config`]).
    fn build(
        cfg: &Config,
        failures: Arc<Failures>,
        clients: Arc<ClientCounts>,
        overload: Arc<Overload>,
    ) -> Settings {
        let policy = Policy::new(&cfg.policy_spec());
        Settings {
            rules: Arc::new(RuleUsage::new(policy.rules().to_vec())),
            policy,
            limits: cfg.limits.clone(),
            data_path: cfg.data_path,
            tls: Arc::new(cfg.tls.clone()),
            auth: cfg
                .client_auth
                .as_ref()
                .map(|c| Arc::new(Auth::from_settings(c, failures))),
            relay: cfg.relay_proxy.clone(),
            relay_tls: cfg
                .relay_proxy
                .as_ref()
                .and_then(|r| r.tls.as_ref())
                .map(|t| (Arc::clone(&t.config), t.server_name.clone())),
            refusals: cfg.logging.refusals,
            revoke_on_reload: cfg.revoke_on_reload,
            clients,
            overload,
        }
    }
}

/// The published snapshot, shared by the control thread (writer) and the workers (readers).
pub type Shared = Arc<ArcSwap<Settings>>;

pub fn shared(cfg: &Config) -> Shared {
    Arc::new(ArcSwap::from_pointee(Settings::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A directory of its own under the temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("splicegate-settings-{tag}-{}", std::process::id()));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                panic!("create {}: {e}", dir.display());
            }
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            if let Err(e) = std::fs::write(&path, text) {
                panic!("write {}: {e}", path.display());
            }
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn parse(yaml: &str) -> Config {
        match Config::from_yaml(yaml) {
            Ok(cfg) => cfg,
            Err(e) => panic!("{yaml:?} should parse:\n{e}"),
        }
    }

    /// The users table is the one validation parsed: a file that turns invalid or vanishes
    /// before the snapshot is built cannot become an empty table (nobody logs in) or another one.
    #[test]
    fn users_come_from_the_parsed_config_not_the_file() {
        let dir = TempDir::new("users");
        let hash = match bcrypt::hash("pw", 4) {
            Ok(h) => h,
            Err(e) => panic!("bcrypt: {e}"),
        };
        let file = dir.write("users", &format!("alice:{hash}\n"));
        let cfg = parse(&format!(
            "client_auth:\n  users_file: {:?}\n  user_hosts:\n    alice: [extra.example]\n",
            file.display().to_string()
        ));
        dir.write("users", "alice:plaintext-now\n");
        let first = Settings::new(&cfg);
        let _ = std::fs::remove_file(&file);
        let second = Settings::after(&cfg, &first);
        for s in [&first, &second] {
            let Some(auth) = &s.auth else {
                panic!("client_auth is configured");
            };
            assert_eq!(auth.users.len(), 1);
            assert!(auth.users.verify("alice", "pw"));
            assert!(s.policy.has_user_hosts("alice"));
            assert_eq!(
                s.policy
                    .check_target_for("extra.example", 443, Some("alice")),
                Ok(())
            );
        }
        let generation = cfg.client_auth.as_ref().map(|a| a.users.generation());
        assert_eq!(
            first.auth.as_ref().map(|a| a.generation()),
            generation,
            "the table keeps the generation it got when it was parsed"
        );
    }

    /// The relay's TLS client is built while parsing: removing the CA file afterwards changes
    /// nothing, and the snapshot always has the client for an https relay.
    #[test]
    fn relay_tls_comes_from_the_parsed_config() {
        let dir = TempDir::new("relay");
        let Some(pem) = std::fs::read_dir("/etc/ssl/certs")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "pem"))
        else {
            eprintln!("skipped: no PEM certificate under /etc/ssl/certs to use as ca_file");
            return;
        };
        let text = match std::fs::read_to_string(&pem) {
            Ok(t) => t,
            Err(e) => panic!("read {}: {e}", pem.display()),
        };
        let ca = dir.write("ca.pem", &text);
        let cfg = parse(&format!(
            "relay_proxy:\n  address: https://proxy.corp:8443\n  ca_file: {:?}\n",
            ca.display().to_string()
        ));
        let _ = std::fs::remove_file(&ca);
        let s = Settings::new(&cfg);
        let Some((_, name)) = &s.relay_tls else {
            panic!("an https relay has its TLS client in the snapshot");
        };
        assert_eq!(name.to_str(), "proxy.corp");
        assert!(Settings::new(&parse("relay_proxy:\n  address: http://p\n"))
            .relay_tls
            .is_none());
    }
}
