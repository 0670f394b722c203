//! The `Resolving` phase: owns the hand-off of a name to the resolver and the handling of its
//! answer. Kept thin on purpose: it only turns an answer into addresses for [`super::dial`] or
//! into a refusal.
//!
//! Names pinned without DNS never leave the worker: the config's `hosts:` map is consulted in
//! `head.rs` before a name gets here, then the hosts file's published table through
//! [`crate::resolve::Resolver::pinned`] (no syscall, no round trip); only what neither lists
//! goes to the resolver task. Order: `hosts:` map, hosts file, DNS.

use std::net::{IpAddr, SocketAddr};

use crate::engine::conn::{State, Target};
use crate::engine::worker::Worker;
use crate::events::ErrorKind;
use crate::policy::Denial;
use crate::proto::response::Status;
use crate::resolve::{Answer, ResolveError, Resolved, Source};

impl Worker {
    /// Answer `name` from the hosts file here, or hand it to the resolver; its answer comes
    /// back through [`Worker::on_answer`].
    pub(in crate::engine) fn resolve(&mut self, slot: u32, target: Target, name: &str) {
        if let Some(r) = self.resolver.pinned(name) {
            self.answered(slot, target, Ok(r));
            return;
        }
        let gen = self.gen_of(slot);
        let now = self.now;
        let Some(timeout) = self.conn_at(slot).map(|c| c.limits.resolve_timeout) else {
            return;
        };
        let deadline = now + timeout;
        if !self.resolver.lookup(name, slot, gen, &self.reply) {
            self.fail(
                slot,
                Some(&target.authority),
                ErrorKind::DnsFailure,
                Status::BadGateway,
                "resolver unavailable",
            );
            return;
        }
        if let Some(conn) = self.conn_at(slot) {
            conn.deadline = deadline;
            conn.state = State::Resolving(target);
        }
        self.deadlines.set(slot, deadline);
    }

    pub(in crate::engine) fn on_answer(&mut self, a: Answer) {
        let Some(conn) = self.conn_mut(a.slot, a.gen) else {
            return;
        };
        // `Resolving` stays until what follows (a dial or a refusal) replaces it; the target
        // goes on as a copy (see [`Target`]).
        let State::Resolving(target) = &conn.state else {
            return;
        };
        let target = target.clone();
        self.answered(a.slot, target, a.result);
    }

    /// Addresses for `target` (from the hosts file or the resolver task) -> a dial; a failure
    /// -> a refusal.
    fn answered(&mut self, slot: u32, target: Target, result: Result<Resolved, ResolveError>) {
        match result {
            Ok(r) if target.relay_request.is_some() => {
                let port = self.settings.load().relay.as_ref().map_or(0, |r| r.port);
                let addrs = r
                    .ips
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect();
                self.connect_to(slot, target, addrs);
            }
            Ok(r) => {
                if let Some(ip) = self.private_link_refusal(&r) {
                    let d = Denial::PrivateDestination(crate::policy::classify(ip));
                    self.deny(slot, d, &target.authority, Some(ip));
                    return;
                }
                self.connect_checked(slot, target, r.ips)
            }
            Err(ResolveError::NotFound) => self.fail(
                slot,
                Some(&target.authority),
                ErrorKind::DnsFailure,
                Status::BadGateway,
                "name not found",
            ),
            Err(ResolveError::Failed) => self.fail(
                slot,
                Some(&target.authority),
                ErrorKind::DnsFailure,
                Status::BadGateway,
                "name resolution failed",
            ),
            Err(ResolveError::Timeout) => self.fail(
                slot,
                Some(&target.authority),
                ErrorKind::ResolveTimeout,
                Status::GatewayTimeout,
                "resolver did not answer in time",
            ),
        }
    }

    /// With `resolver.private_link`, a private (non-public) address from DNS is allowed only
    /// through a `privatelink.` CNAME chain; the hosts file is the operator's own pin and is
    /// checked by the private-destination guard alone. Returns the address to refuse.
    fn private_link_refusal(&self, r: &Resolved) -> Option<IpAddr> {
        if !self.resolver.private_link()
            || r.source
                != (Source::Dns {
                    private_link: false,
                })
        {
            return None;
        }
        r.ips
            .iter()
            .copied()
            .find(|ip| !crate::policy::classify(*ip).is_public())
    }
}
