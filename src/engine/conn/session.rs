//! The admin view of a worker's open tunnels: owns [`Session`] (one tunnel as `splicegate
//! sessions` shows it), [`SessionFilter`] (which tunnels a command is about), and the two
//! worker commands that read them: a snapshot and a close (event 100, `reason="admin"`).
//!
//! Both run on the worker's own thread between two driver waits, so they read the tunnels
//! without any lock; the control thread merges the workers' answers.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::engine::conn::close::Close;
use crate::engine::conn::tunnel::Tunnel;
use crate::engine::conn::State;
use crate::engine::worker::Worker;
use crate::policy::HostPattern;

/// One open tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Unique in the process, for the tunnel's life.
    pub id: u64,
    /// The client's address (the real one when the listener takes a PROXY header).
    pub client: SocketAddr,
    /// The requested `host:port`.
    pub target: String,
    /// The address dialled (the relay's, through a relay proxy).
    pub address: SocketAddr,
    pub user: Option<String>,
    /// The allowlist entry that allowed it, as the configuration lists it.
    pub rule: String,
    /// The TLS version and SNI inspection saw (`None` without inspection, or before its verdict).
    pub tls_version: Option<&'static str>,
    pub sni: Option<String>,
    pub age: Duration,
    pub idle: Duration,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub state: SessionState,
}

/// Where a tunnel is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for the client's TLS ClientHello (`tls.inspect`).
    Hello,
    /// Relaying while inspection follows the handshake to its verdict.
    Inspecting,
    /// Relaying both ways.
    Open,
    /// One side has finished sending; the other still relays.
    HalfClosed,
}

impl SessionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Hello => "hello",
            SessionState::Inspecting => "inspecting",
            SessionState::Open => "open",
            SessionState::HalfClosed => "half_closed",
        }
    }
}

/// Which tunnels a command is about: every condition given must hold (none = every tunnel).
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub id: Option<u64>,
    /// The client's address lies in this network.
    pub client: Option<IpNet>,
    /// The requested host matches this pattern (an exact name or `*.suffix`).
    pub host: Option<HostPattern>,
    pub user: Option<String>,
}

impl SessionFilter {
    fn matches(&self, client: SocketAddr, t: &Tunnel) -> bool {
        self.id.is_none_or(|id| id == t.id)
            && self
                .client
                .is_none_or(|net| net.contains(&client.ip().to_canonical()))
            && self
                .host
                .as_ref()
                .is_none_or(|p| p.matches(&t.authority.host.as_policy_str()))
            && self
                .user
                .as_deref()
                .is_none_or(|u| t.user.as_deref() == Some(u))
    }
}

impl Worker {
    /// The open tunnels `filter` selects.
    pub(in crate::engine) fn sessions(&self, filter: &SessionFilter) -> Vec<Session> {
        let now = self.now;
        let mut out = Vec::new();
        for s in &self.slots {
            let Some(conn) = s.conn.as_ref() else {
                continue;
            };
            let State::Tunnel(t) = &conn.state else {
                continue;
            };
            if !filter.matches(conn.peer, t) {
                continue;
            }
            let (bytes_up, bytes_down) = t.bytes();
            let state = match &t.inspect {
                Some(i) if !i.following => SessionState::Hello,
                Some(_) => SessionState::Inspecting,
                None if t.up.is_done() || t.down.is_done() => SessionState::HalfClosed,
                None => SessionState::Open,
            };
            out.push(Session {
                id: t.id,
                client: conn.peer,
                target: t.target.clone(),
                address: t.addr,
                user: t.user.clone(),
                rule: t
                    .rule
                    .as_ref()
                    .map_or_else(String::new, |r| r.name().to_owned()),
                tls_version: t.tls_version,
                sni: t.sni.clone(),
                age: now.saturating_duration_since(t.started),
                idle: now.saturating_duration_since(t.last_activity),
                bytes_up,
                bytes_down,
                state,
            });
        }
        out
    }

    /// Close the open tunnels `filter` selects (event 100, `reason="admin"`); how many.
    pub(in crate::engine) fn close_sessions(&mut self, filter: &SessionFilter) -> usize {
        let chosen: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| {
                let conn = s.conn.as_ref()?;
                let State::Tunnel(t) = &conn.state else {
                    return None;
                };
                filter
                    .matches(conn.peer, t)
                    .then_some(u32::try_from(slot).ok())
                    .flatten()
            })
            .collect();
        for &slot in &chosen {
            self.close(slot, Close::Tunnel("admin"));
        }
        chosen.len()
    }
}
