//! Revocation on reload: owns the re-check of every open tunnel against the settings a reload
//! published (`revoke_on_reload`), and the closing of the tunnels they no longer allow.
//!
//! A tunnel is checked on what it was allowed on: its host and port (with its user's own hosts),
//! its client's network, its user (still in the users table, and authentication still
//! satisfied), and — when inspection saw one — its client certificate's subject. Nothing else
//! is touched: connections still on their way to a tunnel finish under the policy that
//! admitted them, and an allowed tunnel keeps streaming.

use std::collections::HashSet;
use std::net::IpAddr;

use tracing::warn;

use crate::engine::conn::close::Close;
use crate::engine::conn::tunnel::Tunnel;
use crate::engine::conn::State;
use crate::engine::worker::Worker;
use crate::events::{self, clip, Reject};
use crate::proto::tls::subject_allowed;
use crate::settings::Settings;

/// Why a reload revoked a tunnel (the event's `detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::engine) enum Revoked {
    Target,
    ClientNetwork,
    User,
    ClientCertificate,
}

impl Revoked {
    fn detail(self) -> &'static str {
        match self {
            Revoked::Target => "host or port no longer allowed",
            Revoked::ClientNetwork => "client network no longer allowed",
            Revoked::User => "user no longer allowed",
            Revoked::ClientCertificate => "client certificate no longer allowed",
        }
    }
}

/// Whether `settings` still allow tunnel `t` of client `client`; `users` is the users table's
/// names when authentication is on.
pub(in crate::engine) fn recheck(
    settings: &Settings,
    users: Option<&HashSet<&str>>,
    client: IpAddr,
    t: &Tunnel,
) -> Result<(), Revoked> {
    let policy = &settings.policy;
    if !policy.client_allowed(client) {
        return Err(Revoked::ClientNetwork);
    }
    if let Some(users) = users {
        match t.user.as_deref() {
            Some(u) if users.contains(u) => {}
            _ => return Err(Revoked::User),
        }
    }
    let host = t.authority.host.as_policy_str();
    if policy
        .check_target_for(&host, t.authority.port, t.user.as_deref())
        .is_err()
    {
        return Err(Revoked::Target);
    }
    if let Some(subject) = &t.cert_subject {
        let allowed = &settings.tls.allowed_client_certificates;
        if !allowed.is_empty() && !subject_allowed(subject, allowed) {
            return Err(Revoked::ClientCertificate);
        }
    }
    Ok(())
}

impl Worker {
    /// After a reload: close every open tunnel the new settings no longer allow (event 105,
    /// `reason="revoked"`, `splicegate_rejections_total{reason="revoked"}`).
    pub(in crate::engine) fn revoke_disallowed(&mut self) {
        let settings = std::sync::Arc::clone(self.settings.load());
        if !settings.revoke_on_reload {
            return;
        }
        let users: Option<HashSet<&str>> =
            settings.auth.as_ref().map(|a| a.users.names().collect());
        let mut revoked = Vec::new();
        for (slot, s) in self.slots.iter().enumerate() {
            let Some(conn) = s.conn.as_ref() else {
                continue;
            };
            let State::Tunnel(t) = &conn.state else {
                continue;
            };
            if let Err(why) = recheck(&settings, users.as_ref(), conn.peer.ip(), t) {
                revoked.push((
                    slot as u32,
                    conn.peer,
                    t.target.clone(),
                    t.user.clone(),
                    why,
                ));
            }
        }
        for (slot, peer, target, user, why) in revoked {
            self.shard.reject(Reject::Revoked);
            if self.refusal_logged(peer.ip(), Reject::Revoked, events::NOT_ALLOWED) {
                warn!(
                    event_id = events::NOT_ALLOWED,
                    client = %peer,
                    target = %target,
                    user = &*clip(user.as_deref().unwrap_or("")),
                    reason = Reject::Revoked.as_str(),
                    detail = why.detail(),
                    "open tunnel closed: the reloaded configuration no longer allows it"
                );
            }
            self.close(slot, Close::Tunnel("revoked"));
        }
    }
}
