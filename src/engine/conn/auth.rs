//! The `Authenticating` phase: owns client authentication — the worker's cache of accepted
//! `Proxy-Authorization` values (keyed by users-table generation), the hand-off to the verifier
//! thread, its answer, and the refusals of a failed login.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{debug, warn};

use crate::auth::{self, Checked};
use crate::engine::conn::{State, Target};
use crate::engine::worker::Worker;
use crate::events::{self, clip, clip_display, Reject};
use crate::proto::connect::Authority;
use crate::proto::response::Status;

/// Accepted credentials a worker remembers (each entry is one header value).
const AUTH_CACHE: usize = 16 * 1024;

/// Accepted `Proxy-Authorization` values -> user, every one checked against the users table of
/// generation `table`. Written when the verifier accepts a login checked against that table;
/// emptied when a reload brings a new table, or when full. One per worker, never shared.
#[derive(Default)]
pub(in crate::engine) struct AuthCache {
    entries: HashMap<Vec<u8>, String>,
    table: u64,
}

impl AuthCache {
    /// The entries of users table `table`: emptied first when they are of another table.
    fn for_table(&mut self, table: u64) -> &mut HashMap<Vec<u8>, String> {
        if self.table != table {
            self.entries.clear();
            self.table = table;
        }
        &mut self.entries
    }

    fn get(&mut self, table: u64, header: &[u8]) -> Option<&String> {
        self.for_table(table).get(header)
    }

    fn insert(&mut self, table: u64, header: Vec<u8>, user: String) {
        let entries = self.for_table(table);
        if entries.len() >= AUTH_CACHE {
            entries.clear();
        }
        entries.insert(header, user);
    }
}

impl Worker {
    /// Client authentication, consuming the target: given back with its user set when the
    /// credentials are known good (cached) or authentication is off; `None` when the request was
    /// refused (the target is dropped) or handed to the verifier (the target moves into
    /// `Authenticating`).
    pub(in crate::engine) fn authenticate(
        &mut self,
        slot: u32,
        mut target: Target,
    ) -> Option<Target> {
        let Some(auth) = self.settings.load().auth.clone() else {
            return Some(target);
        };
        let peer = self.conn_at(slot)?.peer;
        let now = self.now;
        let Some(header) = target.proxy_auth.take() else {
            // The normal first step of a client that waits to be asked: no event, no count.
            debug!(client = %peer, target = %clip_display(&target.authority), "proxy authentication required");
            self.start_refusal_bytes(slot, std::borrow::Cow::Owned(auth::challenge(&auth.realm)));
            return None;
        };
        // The lockout comes before the cache: otherwise a locked-out guesser would get 200 for a
        // password some client already had accepted on this worker, and 429 for a wrong one.
        if auth.locked_out(peer.ip(), now) {
            self.auth_refusal(
                slot,
                &target.authority,
                Status::TooManyRequests,
                None,
                "too many failed logins from this address",
            );
            return None;
        }
        if let Some(user) = self.auth_cache.get(auth.generation(), &header) {
            target.user = Some(user.clone());
            return Some(target);
        }
        let Some((user, password)) = auth::parse_basic(&header) else {
            auth.failed(peer.ip(), now);
            self.auth_refusal(
                slot,
                &target.authority,
                Status::ProxyAuthRequired,
                None,
                "malformed Proxy-Authorization",
            );
            return None;
        };
        let gen = self.gen_of(slot);
        let queued = self.verifier.check(
            Arc::clone(&auth),
            user,
            password,
            slot,
            gen,
            &self.checked_tx,
            &self.reply,
        );
        if !queued {
            self.auth_refusal(
                slot,
                &target.authority,
                Status::ServiceUnavailable,
                None,
                "login queue full",
            );
            return None;
        }
        target.proxy_auth = Some(header);
        let conn = self.conn_at(slot)?;
        let deadline = now + conn.limits.resolve_timeout;
        conn.deadline = deadline;
        conn.state = State::Authenticating(target);
        self.deadlines.set(slot, deadline);
        None
    }

    /// The verifier's answer for a connection in `Authenticating`.
    pub(in crate::engine) fn on_checked(&mut self, c: Checked) {
        let Some(conn) = self.conn_mut(c.slot, c.gen) else {
            return;
        };
        let peer = conn.peer;
        // `Authenticating` stays until what follows (a dial, a refusal, another check) replaces
        // it; the target goes on as a copy (see [`Target`]).
        let State::Authenticating(target) = &conn.state else {
            return;
        };
        let mut target = target.clone();
        let Some(auth) = self.settings.load().auth.clone() else {
            // Authentication was switched off by a reload meanwhile.
            self.decide(c.slot, target);
            return;
        };
        if c.table != auth.generation() {
            // Checked against a users table a reload has replaced meanwhile (the user may be
            // gone, or have a new password): check again against the table in force.
            self.decide(c.slot, target);
            return;
        }
        if c.ok {
            if let Some(header) = target.proxy_auth.take() {
                self.auth_cache.insert(c.table, header, c.user.clone());
            }
            auth.succeeded(peer.ip());
            target.user = Some(c.user);
            self.decide(c.slot, target);
        } else {
            auth.failed(peer.ip(), self.now);
            let detail = format!("wrong user name or password for user {}", c.user);
            self.auth_refusal(
                c.slot,
                &target.authority,
                Status::ProxyAuthRequired,
                Some(&c.user),
                &detail,
            );
        }
    }

    /// A failed or refused login: event 105, `rejections_total{reason="client_auth"}`, and the
    /// answer (a fresh 407 challenge, or 429/503).
    pub(in crate::engine) fn auth_refusal(
        &mut self,
        slot: u32,
        target: &Authority,
        status: Status,
        user: Option<&str>,
        detail: &str,
    ) {
        self.shard.reject(Reject::ClientAuth);
        let peer = self.conn_at(slot).map(|c| c.peer);
        if let Some(peer) = peer {
            if self.refusal_logged(peer.ip(), Reject::ClientAuth, events::NOT_ALLOWED) {
                warn!(
                    event_id = events::NOT_ALLOWED,
                    client = %peer,
                    target = %clip_display(target),
                    reason = Reject::ClientAuth.as_str(),
                    // As `&str`, which the text format quotes and escapes: a peer string
                    // cannot start a field of its own there.
                    user = &*clip(user.unwrap_or("")),
                    detail = &*clip(detail),
                    status = status.code(),
                    "client authentication failed"
                );
            }
        }
        match (status, self.settings.load().auth.as_ref()) {
            (Status::ProxyAuthRequired, Some(a)) => {
                let challenge = auth::challenge(&a.realm);
                self.start_refusal_bytes(slot, std::borrow::Cow::Owned(challenge));
            }
            _ => self.start_refusal(slot, status),
        }
    }
}
