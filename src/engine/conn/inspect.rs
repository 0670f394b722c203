//! TLS inspection inside a `Tunnel`: owns the [`Inspection`] (the inspector, the held
//! ClientHello bytes, the hello deadline) and acts on its verdict.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tracing::{info, warn};

use crate::engine::conn::close::Close;
use crate::engine::conn::tunnel::Tunnel;
use crate::engine::conn::{Conn, State};
use crate::engine::flow::{Cx, Flow};
use crate::engine::sys;
use crate::engine::worker::Worker;
use crate::events::{self, clip, ErrorKind, Reject};
use crate::metrics::TLS_VERSIONS;
use crate::proto::tls::{CertCheck, Inspector, Reason as TlsReason, Verdict};

/// A tunnel's TLS handshake under inspection (see [`crate::proto::tls`] for the contract).
pub(in crate::engine) struct Inspection {
    pub(in crate::engine) inspector: Inspector,
    pub(in crate::engine) started: Instant,
    pub(in crate::engine) deadline: Instant,
    /// Client bytes read but not forwarded: everything up to the end of the ClientHello.
    pub(in crate::engine) held: Vec<u8>,
    /// The ClientHello passed; both directions copy through the inspector until its verdict.
    pub(in crate::engine) following: bool,
}

/// The outcome of a turn of the hello phase.
pub(in crate::engine) enum Hello {
    /// Keep waiting for the client's bytes.
    Wait,
    /// The tunnel was closed.
    Closed,
    /// Go on relaying (allowed, or following the handshake).
    Relay,
}

impl Worker {
    /// The hello phase: deliver the `200`, read the client's bytes into the inspection buffer and
    /// feed them to the inspector; forward nothing until the ClientHello is judged.
    pub(in crate::engine) fn inspect_hello(&mut self, slot: u32) -> Hello {
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return Hello::Closed;
        };
        let Conn { shell: conn, state } = conn;
        let State::Tunnel(t) = state else {
            return Hello::Closed;
        };
        let Tunnel {
            upstream,
            up,
            down,
            tls,
            inspect,
            ..
        } = &mut **t;
        let Some(ins) = inspect.as_mut() else {
            return Hello::Relay;
        };
        // The 200 goes out; nothing is read from the upstream yet.
        let flushed = match tls.as_mut() {
            Some(leg) => leg.flush_down(
                conn.client.as_fd(),
                &mut conn.c_wr,
                &self.shard.bytes_downstream,
            ),
            None => {
                let mut cx = Cx {
                    pool: &mut self.pool,
                    scratch: &mut self.scratch,
                    splice: false,
                    shard: &self.shard,
                    moved: false,
                };
                let mut never = false;
                down.pump(
                    upstream.as_fd(),
                    conn.client.as_fd(),
                    &mut never,
                    true,
                    &mut conn.c_wr,
                    &self.shard.bytes_downstream,
                    0,
                    &mut cx,
                    None,
                )
                .map(drop)
            }
        };
        let mut closed = flushed.is_err();
        let mut verdict = ins.inspector.verdict();
        while !closed && verdict == Verdict::NeedMore && conn.c_rd {
            match sys::recv(conn.client.as_fd(), &mut self.scratch) {
                Ok(0) => closed = true,
                Ok(n) => {
                    ins.held.extend_from_slice(&self.scratch[..n]);
                    verdict = ins.inspector.client_bytes(&self.scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => conn.c_rd = false,
                Err(_) => closed = true,
            }
        }
        match verdict {
            Verdict::NeedMore if closed => {
                self.close(slot, Close::Tunnel("client closed before its TLS hello"));
                Hello::Closed
            }
            Verdict::NeedMore => Hello::Wait,
            Verdict::Deny(_) => {
                let _ = self.inspection_verdict(slot);
                Hello::Closed
            }
            Verdict::Allow { .. } | Verdict::Following => {
                // The held bytes go upstream unchanged, before anything else.
                let held = std::mem::take(&mut ins.held);
                ins.following = true;
                let forwarded = match tls.as_mut() {
                    Some(leg) => leg.forward_up(&held, &self.shard.bytes_upstream),
                    None => {
                        *up = Flow::with_pending(held);
                        Ok(())
                    }
                };
                if forwarded.is_err() {
                    self.shard.error(ErrorKind::TunnelIo);
                    self.close(slot, Close::Tunnel("reset"));
                    return Hello::Closed;
                }
                if self.inspection_verdict(slot) {
                    return Hello::Closed;
                }
                Hello::Relay
            }
        }
    }

    /// Act on a final verdict: log and count an allowed session and end the inspection, or
    /// refuse the tunnel. Returns true if the tunnel was closed.
    pub(in crate::engine) fn inspection_verdict(&mut self, slot: u32) -> bool {
        let Some(conn) = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.conn.as_mut())
        else {
            return true;
        };
        let peer = conn.peer;
        let Conn { state, .. } = conn;
        let State::Tunnel(t) = state else {
            return true;
        };
        let Some(ins) = t.inspect.as_ref() else {
            return false;
        };
        match ins.inspector.verdict() {
            Verdict::NeedMore | Verdict::Following => false,
            Verdict::Allow { version, sni, cert } => {
                let took = self.now.saturating_duration_since(ins.started);
                t.inspect = None;
                t.tls_version = Some(version.as_str());
                t.sni = sni.clone();
                if let Some(i) = TLS_VERSIONS.iter().position(|v| *v == version.as_str()) {
                    self.shard.tls_verified[i].fetch_add(1, Relaxed);
                }
                self.shard.tls_inspect.observe(took);
                let cert = match cert {
                    CertCheck::NotRequired => "not required".to_owned(),
                    CertCheck::Subject(s) => {
                        t.cert_subject = Some(s.clone());
                        s
                    }
                    CertCheck::Tls13Policy => {
                        "TLS 1.3: allowed by tls13_client_certificate".to_owned()
                    }
                };
                info!(
                    event_id = events::TLS_VERIFIED,
                    client = %peer,
                    target = %t.target,
                    version = version.as_str(),
                    // As `&str`, quoted and escaped by the text format: a certificate subject
                    // has spaces and `=`, and must not read as fields of its own.
                    sni = &*clip(sni.as_deref().unwrap_or("")),
                    client_certificate = &*clip(&cert),
                    inspect_ms = took.as_secs_f64() * 1e3,
                    "TLS session verified"
                );
                false
            }
            Verdict::Deny(reason) => {
                let took = self.now.saturating_duration_since(ins.started);
                let target = t.target.clone();
                self.shard.tls_inspect.observe(took);
                let reject = tls_reject(&reason);
                self.shard.reject(reject);
                let version = match &reason {
                    TlsReason::TlsVersion(v) => v.as_str(),
                    _ => "",
                };
                let policy = matches!(reason, TlsReason::ClientCertTls13)
                    .then_some("tls13_client_certificate: deny")
                    .unwrap_or("");
                if self.refusal_logged(peer.ip(), reject, reason.event_id()) {
                    // The reason names the SNI or the certificate subject, which the client
                    // chose: a field (quoted in the text format), never the message.
                    let detail = reason.to_string();
                    warn!(
                        event_id = reason.event_id(),
                        client = %peer,
                        target = %target,
                        reason = reason.label(),
                        version = version,
                        policy = policy,
                        detail = detail.as_str(),
                        "TLS handshake refused"
                    );
                }
                self.close(slot, Close::Tunnel(reason.label()));
                true
            }
        }
    }
}

pub(in crate::engine) fn tls_reject(reason: &TlsReason) -> Reject {
    match reason {
        TlsReason::TlsVersion(_) => Reject::TlsVersion,
        TlsReason::Parse(_) => Reject::TlsParse,
        TlsReason::SniMissing => Reject::SniMissing,
        TlsReason::SniMismatch { .. } => Reject::SniMismatch,
        TlsReason::ClientCert { .. }
        | TlsReason::ClientCertMissing
        | TlsReason::ClientCertTls13 => Reject::ClientCert,
    }
}
