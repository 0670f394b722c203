//! The end of a connection: owns phase timeouts (what each state does when its deadline
//! passes) and `close`, which frees the slot, its deadline and its pipes, and logs a tunnel's end.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use tracing::{info, warn};

use crate::engine::conn::{Conn, Shell, State};
use crate::engine::driver::Key;
use crate::engine::worker::Worker;
use crate::events::{self, ErrorKind, Reject};
use crate::proto::response::Status;

/// How a connection leaves the table.
pub(in crate::engine) enum Close {
    /// Quietly: client went away before a decision, or a lingering refusal ended.
    Quiet,
    /// A tunnel ended; the reason is logged with its byte counts.
    Tunnel(&'static str),
}

impl Worker {
    /// Take the connection out of its slot: the slot's generation moves on (late events and
    /// answers for it are dropped), its deadline goes, and its sockets close with their
    /// registrations as the state drops.
    pub(in crate::engine) fn close(&mut self, slot: u32, how: Close) {
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.take())
        else {
            return;
        };
        self.free_slot(slot, conn.counted);
        // Any upstream socket closes with its registration as the state drops.
        let Conn { shell: conn, state } = conn;
        if let State::Tunnel(mut t) = state {
            t.up.release(&mut self.pool);
            t.down.release(&mut self.pool);
            self.shard.tunnels_active.fetch_sub(1, Relaxed);
            let lived = self.now.saturating_duration_since(t.started);
            self.shard.tunnel_duration.observe(lived);
            let reason = match how {
                Close::Tunnel(r) => r,
                Close::Quiet => "closed",
            };
            info!(
                event_id = events::INFO,
                client = %conn.peer,
                target = %t.target,
                address = %t.addr,
                reason = reason,
                bytes_up = t.tls.as_ref().map_or(t.up.bytes, |l| l.bytes_up),
                bytes_down = t.tls.as_ref().map_or(t.down.bytes, |l| l.bytes_down),
                duration_ms = lived.as_millis() as u64,
                "tunnel closed"
            );
        }
    }

    /// End a connection taken out of its slot by [`Worker::take_conn`] before it reached a
    /// next state (quietly: it was no tunnel yet). Its client socket closes with its
    /// registration as the shell drops.
    pub(in crate::engine) fn retire(&mut self, slot: u32, shell: Shell) {
        self.free_slot(slot, shell.counted);
    }

    /// The slot of a connection that ends: its generation moves on (late events and answers
    /// for it are dropped), its deadline goes, and the counts drop (the connected-clients count
    /// under the address it was counted with; the per-client hold drops with the shell).
    fn free_slot(&mut self, slot: u32, counted: Option<IpAddr>) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        s.gen = Key::wrap_gen(s.gen.wrapping_add(1));
        self.free.push(slot);
        self.deadlines.remove(slot);
        self.live -= 1;
        self.shard.active_connections.fetch_sub(1, Relaxed);
        if let Some(ip) = counted {
            self.shard.client_closed(ip);
        }
    }

    pub(in crate::engine) fn expire(&mut self, slot: u32) {
        let now = self.now;
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        match &conn.state {
            State::Proxy { .. } => self.proxy_refused(
                slot,
                "no complete PROXY protocol header within header_timeout",
            ),
            State::Head { .. } => self.refuse(
                slot,
                Status::RequestTimeout,
                Reject::HeaderTimeout,
                "header not complete within header_timeout",
                None,
            ),
            State::Authenticating(t) => {
                let a = t.authority.clone();
                self.auth_refusal(
                    slot,
                    &a,
                    Status::ServiceUnavailable,
                    None,
                    "password check timed out",
                )
            }
            State::Resolving(t) => {
                let a = t.authority.clone();
                self.fail(
                    slot,
                    Some(&a),
                    ErrorKind::ResolveTimeout,
                    Status::GatewayTimeout,
                    "resolver did not answer in time",
                )
            }
            State::Relaying(r) => {
                let a = r.target.authority.clone();
                let detail = format!("relay proxy {} did not answer in time", r.addr);
                self.fail(
                    slot,
                    Some(&a),
                    ErrorKind::ConnectTimeout,
                    Status::GatewayTimeout,
                    &detail,
                )
            }
            State::Connecting(c) => {
                let a = c.target.authority.clone();
                let addr = c.addr.to_string();
                self.fail(
                    slot,
                    Some(&a),
                    ErrorKind::ConnectTimeout,
                    Status::GatewayTimeout,
                    &addr,
                )
            }
            State::Tunnel(t) => match t.inspect.as_ref() {
                Some(ins) if now >= ins.deadline => {
                    let (peer, target) = (conn.peer, t.target.clone());
                    let stage = if ins.following {
                        "handshake"
                    } else {
                        "ClientHello"
                    };
                    self.shard.reject(Reject::TlsParse);
                    if self.refusal_logged(peer.ip(), Reject::TlsParse, events::TLS_PARSE) {
                        warn!(
                            event_id = events::TLS_PARSE,
                            client = %peer,
                            target = %target,
                            reason = "tls_parse",
                            detail = "hello_timeout",
                            "TLS {stage} not complete within tls.hello_timeout"
                        );
                    }
                    self.close(slot, Close::Tunnel("hello_timeout"));
                }
                _ => self.close(slot, Close::Tunnel("idle_timeout")),
            },
            State::Refusing { .. } | State::Lingering { .. } => self.close(slot, Close::Quiet),
        }
    }

    pub(in crate::engine) fn close_all(&mut self) {
        for slot in 0..self.slots.len() as u32 {
            if self.slots[slot as usize].conn.is_some() {
                self.close(slot, Close::Tunnel("shutdown"));
            }
        }
    }
}
