//! The `Proxy` phase, on listeners with `proxy_protocol: true`: owns the buffer the PROXY
//! header is read into and the admission of the client the header names.
//!
//! The connection's source was checked against `proxy_from` at accept (`accept.rs`). Here the
//! header is read under the connection's `header_timeout` deadline, before anything else; the
//! bytes that followed it in the same reads are the start of the CONNECT head and go on to
//! `Head` unchanged. Then the client is the header's source address and port: it replaces the
//! socket's peer in the shell, so the client-network check, the login lockout, the per-client
//! limit, the connected-clients gauge and every later event use it. A v2 `LOCAL` header (the
//! balancer's own health check) and an `UNKNOWN` one keep the socket's peer and are not counted
//! as a client. A missing or malformed header, or none within the deadline, is event 104
//! (`reason="proxy_protocol"`) and the connection is closed without an answer: nothing on it has
//! spoken HTTP yet, and a balancer that sends no header is misconfigured, not a client.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use tracing::warn;

use crate::engine::conn::close::Close;
use crate::engine::conn::{Conn, State};
use crate::engine::sys;
use crate::engine::worker::Worker;
use crate::events::{self, Reject};
use crate::proto::proxy::{self, Header, V2_MAX_PAYLOAD};
use crate::proto::response::Status;

/// Most bytes read before the header must be decided: the longest v2 header (a v1 header is
/// decided within 107 bytes).
const PROXY_READ_MAX: usize = 16 + V2_MAX_PAYLOAD;

impl Worker {
    pub(in crate::engine) fn read_proxy_header(&mut self, slot: u32) {
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return;
        };
        let Conn { shell, state } = conn;
        let State::Proxy { buf } = state else {
            return;
        };
        let mut eof = false;
        let mut parsed = proxy::parse(buf);
        while parsed == Ok(None) && shell.c_rd && buf.len() < PROXY_READ_MAX {
            let old = buf.len();
            buf.resize(PROXY_READ_MAX, 0);
            match sys::recv(shell.client.as_fd(), &mut buf[old..]) {
                Ok(0) => {
                    buf.truncate(old);
                    eof = true;
                    break;
                }
                Ok(n) => buf.truncate(old + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buf.truncate(old);
                    shell.c_rd = false;
                }
                Err(_) => {
                    buf.truncate(old);
                    eof = true;
                    break;
                }
            }
            parsed = proxy::parse(buf);
        }
        match parsed {
            // A TCP probe that connects and closes: nothing to report.
            Ok(None) if eof && buf.is_empty() => self.close(slot, Close::Quiet),
            Ok(None) if eof => self.proxy_refused(
                slot,
                "connection closed before the PROXY header was complete",
            ),
            Ok(None) => {}
            Ok(Some((header, len))) => {
                let rest = buf.split_off(len.min(buf.len()));
                self.admit_proxied(slot, header, rest);
            }
            Err(e) => {
                let detail = e.to_string();
                self.proxy_refused(slot, &detail);
            }
        }
    }

    /// No valid header: event 104 and the connection closes unanswered.
    pub(in crate::engine) fn proxy_refused(&mut self, slot: u32, detail: &str) {
        self.shard.reject(Reject::ProxyProtocol);
        let peer = self.conn_at(slot).map(|c| c.peer);
        if let Some(peer) = peer {
            if self.refusal_logged(peer.ip(), Reject::ProxyProtocol, events::NOT_CONNECT) {
                warn!(
                    event_id = events::NOT_CONNECT,
                    client = %peer,
                    reason = Reject::ProxyProtocol.as_str(),
                    detail = %detail,
                    "no valid PROXY protocol header: connection closed"
                );
            }
        }
        self.close(slot, Close::Quiet);
    }

    /// The header is read: the client it names (or, for `LOCAL`/`UNKNOWN`, the socket's peer)
    /// is checked and counted as a plain listener's client is at accept, then the CONNECT head
    /// is read, starting with `rest`.
    fn admit_proxied(&mut self, slot: u32, header: Header, rest: Vec<u8>) {
        let Some(socket_peer) = self.conn_at(slot).map(|c| c.peer) else {
            return;
        };
        let (client, agent): (SocketAddr, bool) = match header {
            Header::Proxied { source, .. } => (source, true),
            Header::Local | Header::Unknown => (socket_peer, false),
        };
        let current = self.settings.load();
        let allowed = current.policy.client_allowed(client.ip());
        let max = self
            .conn_at(slot)
            .map_or(0, |c| c.limits.max_connections_per_client);
        let counts = (agent && max > 0).then(|| Arc::clone(&self.settings.load().clients));
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        conn.peer = client;
        if !allowed {
            self.shard.reject(Reject::ClientNetwork);
            if self.refusal_logged(client.ip(), Reject::ClientNetwork, events::NOT_ALLOWED) {
                warn!(
                    event_id = events::NOT_ALLOWED,
                    client = %client,
                    balancer = %socket_peer,
                    reason = Reject::ClientNetwork.as_str(),
                    "client address not in allowed_client_networks: connection closed"
                );
            }
            self.close(slot, Close::Quiet);
            return;
        }
        if let Some(counts) = counts {
            let Some(hold) = counts.try_hold(client.ip(), max) else {
                self.client_limit_refused(client, max);
                self.start_refusal(slot, Status::TooManyRequests);
                return;
            };
            if let Some(conn) = self.conn_at(slot) {
                conn.hold = Some(hold);
            }
        }
        if agent {
            if let Some(conn) = self.conn_at(slot) {
                conn.counted = Some(client.ip());
            }
            self.shard.client_opened(client.ip());
        }
        if let Some(conn) = self.conn_at(slot) {
            conn.state = State::Head { buf: rest };
        }
        self.read_head(slot);
    }
}
