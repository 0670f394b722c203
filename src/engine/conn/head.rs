//! The `Head` phase: owns the buffer the CONNECT head is read into, and the policy decision
//! that follows the parse (authority, port, IP literals, static overrides, the relay).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;

use tracing::debug;

use crate::engine::conn::close::Close;
use crate::engine::conn::{Conn, State, Target};
use crate::engine::sys;
use crate::engine::worker::Worker;
use crate::events::{self, clip_display, Reject};
use crate::metrics::RuleRef;
use crate::proto::connect::{parse_head, HeadError, Host};
use crate::proto::response::Status;
use crate::relay::RelayHost;

/// Extra room past `max_header_bytes` for early tunnel data read with the head.
pub(in crate::engine) const EARLY_DATA_ROOM: usize = 16 * 1024;

impl Worker {
    pub(in crate::engine) fn read_head(&mut self, slot: u32) {
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return;
        };
        let max = conn.limits.max_header_bytes;
        let Conn { shell: conn, state } = conn;
        let State::Head { buf } = state else {
            return;
        };
        let limit = max + EARLY_DATA_ROOM;
        let mut eof = false;
        // Read into the worker's scratch buffer and keep only what arrived: a client that
        // dribbles a few bytes holds a few bytes (the Vec grows by doubling with what it
        // keeps), not a zero-filled read-sized block per read.
        while conn.c_rd && buf.len() < limit {
            let want = (limit - buf.len()).min(self.scratch.len());
            match sys::recv(conn.client.as_fd(), &mut self.scratch[..want]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let old = buf.len();
                    buf.extend_from_slice(&self.scratch[..n]);
                    // The head is complete: stop rather than make the read that is bound to fail
                    // with EAGAIN. `c_rd` stays set, so whatever follows is read by the next phase.
                    if buf[old.saturating_sub(3)..]
                        .windows(4)
                        .any(|w| w == b"\r\n\r\n")
                    {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.c_rd = false,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let parsed = parse_head(buf, max);
        match parsed {
            Ok(None) if eof => self.close(slot, Close::Quiet),
            Ok(None) => {
                if buf.len() >= limit {
                    self.refuse(
                        slot,
                        Status::HeaderTooLarge,
                        Reject::HeaderTooLarge,
                        "header block too large",
                        None,
                    );
                }
            }
            Ok(Some(head)) => {
                let proxy_auth = crate::proto::connect::header(buf, &head, "proxy-authorization")
                    .map(<[u8]>::to_vec);
                let early = buf.split_off(head.head_len.min(buf.len()));
                self.shard.connect_requests.fetch_add(1, Relaxed);
                let peer = conn.peer;
                debug!(
                    event_id = events::CONNECT_RECEIVED,
                    client = %peer,
                    target = %clip_display(&head.authority),
                    "CONNECT received"
                );
                self.decide(slot, Target::new(head.authority, early, proxy_auth));
            }
            Err(HeadError::NotConnect) => self.refuse(
                slot,
                Status::MethodNotAllowed,
                Reject::NotConnect,
                "not an HTTP CONNECT request",
                None,
            ),
            Err(HeadError::Malformed(m)) => self.refuse(
                slot,
                Status::BadRequest,
                Reject::Malformed,
                m.as_str(),
                None,
            ),
            Err(HeadError::TooLarge) => self.refuse(
                slot,
                Status::HeaderTooLarge,
                Reject::HeaderTooLarge,
                "header block too large",
                None,
            ),
        }
    }

    /// Policy on the authority, then on addresses known without DNS.
    pub(in crate::engine) fn decide(&mut self, slot: u32, mut target: Target) {
        if target.user.is_none() && self.settings.load().auth.is_some() {
            match self.authenticate(slot, target) {
                Some(t) => target = t,
                // Refused, or waiting for the verifier.
                None => return,
            }
        }
        let current = self.settings.load();
        let policy = &current.policy;
        let host = target.authority.host.as_policy_str();
        match policy.decide_target_for(&host, target.authority.port, target.user.as_deref()) {
            Ok(rule) => {
                target.rule = Some(RuleRef {
                    usage: std::sync::Arc::clone(&current.rules),
                    rule: rule.0,
                })
            }
            Err(d) => {
                self.deny(slot, d, &target.authority, None);
                return;
            }
        }
        let literal = match &target.authority.host {
            Host::V4(ip) => Some(IpAddr::V4(*ip)),
            Host::V6(ip) => Some(IpAddr::V6(*ip)),
            Host::Name(_) => None,
        };
        if let Some(relay) = &current.relay {
            // The relay resolves names itself; an IP literal can still be checked here.
            if let Some(ip) = literal {
                if let Err(d) = policy.check_address(ip) {
                    self.deny(slot, d, &target.authority, Some(ip));
                    return;
                }
            }
            target.relay_request = Some(relay.connect_request(&target.authority));
            match &relay.host {
                RelayHost::Ip(ip) => {
                    let addrs = vec![SocketAddr::new(*ip, relay.port)];
                    self.connect_to(slot, target, addrs);
                }
                RelayHost::Name(name) => {
                    let name = name.clone();
                    self.resolve(slot, target, &name);
                }
            }
            return;
        }
        let known: Option<Vec<IpAddr>> = match (&target.authority.host, literal) {
            (_, Some(ip)) => Some(vec![ip]),
            (Host::Name(n), None) => policy.host_override(n).map(|a| a.to_vec()),
            _ => None,
        };
        match known {
            Some(ips) => self.connect_checked(slot, target, ips),
            None => self.resolve(slot, target, &host),
        }
    }
}
