//! A connection's life as typed states: owns [`Conn`] (the client socket's registration, peer,
//! limits) and the [`State`] enum, one variant per phase. Each phase file owns its state's data
//! and the transitions out of it; a transition moves the old state out by value, so whatever the
//! new state does not take (an upstream [`Registered`] socket, a pipe) is dropped — and a
//! registered socket deregisters itself on drop.
//!
//! ```text
//!   [Proxy] ──► Head ──► [Authenticating] ──► [Resolving] ──► Connecting ──► [Relaying] ──► Tunnel ──► closed
//!     │             │                  │              │               │            (inspect)
//!     └─────────────┴──────────────────┴──────────────┴───────────────┴──► Refusing ──► Lingering ──► closed
//! ```
//!
//! Phases: [`proxy`] (a load balancer's PROXY protocol header, on listeners that have it),
//! [`head`] (read and parse the CONNECT head, policy decision), [`auth`] (client
//! passwords and their cache), [`resolve`] (hand-off to the resolver), [`dial`] (connect to the
//! checked addresses), [`relay`] (the relay proxy's handshake), [`tunnel`] (the `200` and the
//! byte path), [`inspect`] (TLS inspection until its verdict), [`refusal`] (canned answers and
//! lingering), [`close`] (timeouts and the end of a connection).

pub mod auth;
pub mod close;
pub mod dial;
pub mod head;
pub mod inspect;
pub mod proxy;
pub mod refusal;
pub mod relay;
pub mod resolve;
pub mod revoke;
#[cfg(test)]
mod tests;
pub mod tunnel;

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use self::dial::Connecting;
use self::relay::Relaying;
use self::tunnel::Tunnel;
use crate::clients::ClientHold;
use crate::config::Limits;
use crate::engine::registry::Registered;
use crate::engine::worker::Worker;
use crate::proto::connect::Authority;

/// A connection: its [`Shell`] (what every phase shares) and its current [`State`]. The shell's
/// fields are reached through `Deref`, so `conn.peer` reads the shell's peer.
pub(in crate::engine) struct Conn {
    pub(in crate::engine) shell: Shell,
    pub(in crate::engine) state: State,
}

impl std::ops::Deref for Conn {
    type Target = Shell;
    fn deref(&self) -> &Shell {
        &self.shell
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut Shell {
        &mut self.shell
    }
}

pub(in crate::engine) enum State {
    /// A listener with the PROXY protocol: the header is read before anything else.
    Proxy {
        buf: Vec<u8>,
    },
    Head {
        buf: Vec<u8>,
    },
    Resolving(Target),
    /// Waiting for the verifier to check the client's password.
    Authenticating(Target),
    Connecting(Box<Connecting>),
    Relaying(Box<Relaying>),
    Tunnel(Box<Tunnel>),
    Refusing {
        bytes: std::borrow::Cow<'static, [u8]>,
        sent: usize,
    },
    Lingering {
        discarded: usize,
    },
}

impl Target {
    fn new(authority: Authority, early: Vec<u8>, proxy_auth: Option<Vec<u8>>) -> Target {
        Target {
            authority,
            early,
            relay_request: None,
            proxy_auth,
            user: None,
        }
    }
}

/// What a connection keeps across its states: the client socket's registration, its peer, its
/// limits. A transition that consumes the old state takes the connection out of its slot as a
/// `Shell` and the old [`State`] by value ([`Worker::take_conn`]); the connection goes back only
/// with its next state ([`Worker::put_conn`]), or ends ([`Worker::retire`]). So whatever the old
/// state owned is either moved into the next one or dropped — a socket together with its
/// registration.
pub(in crate::engine) struct Shell {
    pub(in crate::engine) client: Registered,
    /// The client: the socket's peer, or after a PROXY protocol header the address it names.
    /// Every event, client-network check, login lockout and per-client count uses it.
    pub(in crate::engine) peer: SocketAddr,
    /// The address this connection is counted under in `splicegate_connected_clients`, set
    /// when it is counted (at accept, or after a PROXY header that names a client) and undone
    /// with the same address when the connection ends. `None`: not counted (before the header,
    /// or a balancer's own `LOCAL` connection).
    pub(in crate::engine) counted: Option<IpAddr>,
    /// This connection's place in `limits.max_connections_per_client` (while the limit is on):
    /// dropped with the shell, which gives the count back on every way a connection ends.
    pub(in crate::engine) hold: Option<ClientHold>,
    /// The limits in force when the connection was accepted (a reload does not change them).
    pub(in crate::engine) limits: Limits,
    /// Relay with `splice(2)` (else copy through user space).
    pub(in crate::engine) splice: bool,
    /// Deadline of the current phase (not used by `Tunnel`, which runs on its idle timer).
    pub(in crate::engine) deadline: Instant,
    pub(in crate::engine) c_rd: bool,
    pub(in crate::engine) c_wr: bool,
}

impl Conn {
    fn split(self) -> (Shell, State) {
        (self.shell, self.state)
    }
}

impl Shell {
    fn with(self, state: State) -> Conn {
        Conn { shell: self, state }
    }
}

/// An allowed CONNECT on its way to a tunnel. It owns no socket: a state that holds only a
/// target (`Resolving`, `Authenticating`) stays in force while the answer it waited for is acted
/// on with a copy, until the next state or a refusal replaces (and drops) it.
#[derive(Clone)]
pub(in crate::engine) struct Target {
    pub(in crate::engine) authority: Authority,
    /// Client bytes that followed the head (an early ClientHello): sent upstream first.
    pub(in crate::engine) early: Vec<u8>,
    /// With a relay proxy: the CONNECT request for the relay (the addresses dialled are the
    /// relay's, and the private-destination guard does not apply to them).
    pub(in crate::engine) relay_request: Option<Vec<u8>>,
    /// The `Proxy-Authorization` header value, when client authentication is on.
    pub(in crate::engine) proxy_auth: Option<Vec<u8>>,
    /// The authenticated user.
    pub(in crate::engine) user: Option<String>,
}

impl Worker {
    /// Take the connection at `slot` out of it, split from its state, for a transition that
    /// consumes the state. Until [`Worker::put_conn`] or [`Worker::retire`], nothing else
    /// reaches it (the worker is single-threaded: no event or answer is handled meanwhile).
    pub(in crate::engine) fn take_conn(&mut self, slot: u32) -> Option<(Shell, State)> {
        let conn = self.slots.get_mut(slot as usize)?.conn.take()?;
        Some(conn.split())
    }

    /// Put a connection taken by [`Worker::take_conn`] back into its slot, in `state`.
    pub(in crate::engine) fn put_conn(&mut self, slot: u32, shell: Shell, state: State) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.conn = Some(shell.with(state));
        }
    }

    pub(in crate::engine) fn drive(&mut self, slot: u32) {
        let Some(conn) = self.conn_at(slot) else {
            return;
        };
        match conn.state {
            State::Proxy { .. } => self.read_proxy_header(slot),
            State::Head { .. } => self.read_head(slot),
            State::Tunnel(_) => self.pump(slot),
            State::Refusing { .. } => self.write_refusal(slot),
            State::Lingering { .. } => self.linger(slot),
            State::Relaying(_) => self.relay_handshake(slot),
            State::Resolving(_) | State::Authenticating(_) | State::Connecting(_) => {}
        }
    }
}
