//! The gateway's numeric event IDs (compatible with the Windows Log Analytics gateway) and the
//! reason enums that label refusals and errors.
//!
//! Enum values are the only metric labels: host names never become labels, so the number of
//! series stays fixed whatever clients send.
//!
//! [`field`] bounds the peer-supplied strings events carry; [`limiter`] rate-limits refusal
//! events per client address and reason.

pub mod field;
pub mod limiter;

pub use field::{clip, clip_display};

/// General information: reloads, tunnel established, tunnel closed.
pub const INFO: u16 = 100;
/// The service has started (listeners bound, policy loaded).
pub const STARTED: u16 = 101;
/// The service has stopped.
pub const STOPPED: u16 = 102;
/// An HTTP CONNECT request was received (debug level).
pub const CONNECT_RECEIVED: u16 = 103;
/// Not an HTTP CONNECT request.
pub const NOT_CONNECT: u16 = 104;
/// Destination not allowed (host, port, or resolved address).
pub const NOT_ALLOWED: u16 = 105;
/// Unsupported TLS/SSL protocol version.
pub const TLS_VERSION: u16 = 106;
/// The TLS session has been verified.
pub const TLS_VERIFIED: u16 = 107;
/// Any application error that has no specific ID.
pub const INTERNAL_ERROR: u16 = 400;
/// Wrong configuration.
pub const BAD_CONFIG: u16 = 401;
/// Exception parsing the TLS handshake.
pub const TLS_PARSE: u16 = 402;
/// Networking error, for example the target server cannot be reached.
pub const NETWORK_ERROR: u16 = 403;

/// Why a client request was refused before a tunnel was set up. Label of
/// `splicegate_rejections_total{reason}`.
///
/// [`Reject::ALL`] comes from a derive, so a new variant is in it (and sizes the metric arrays)
/// by construction; `as_str` is an exhaustive match the compiler checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::VariantArray)]
pub enum Reject {
    HostNotAllowed,
    PortNotAllowed,
    PrivateDestination,
    NotConnect,
    Malformed,
    HeaderTooLarge,
    HeaderTimeout,
    OverCapacity,
    TlsVersion,
    TlsParse,
    SniMissing,
    SniMismatch,
    ClientCert,
    ClientAuth,
    ClientNetwork,
    /// An open tunnel a reload no longer allows (`revoke_on_reload`).
    Revoked,
    /// A PROXY protocol listener got no header, or a malformed one, in time.
    ProxyProtocol,
    /// A PROXY protocol listener was reached from outside its `proxy_from`.
    ProxyUntrusted,
    /// The client already holds `limits.max_connections_per_client` connections.
    ClientLimit,
    /// The gateway is overloaded (`splicegate_overload_active`): a budget reached
    /// `limits.overload_engage_percent` and has not yet fallen below the release threshold.
    Overload,
}

impl Reject {
    /// Every variant, in declaration order (so `ALL[r.index()] == r`).
    pub const ALL: &'static [Reject] = <Reject as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::HostNotAllowed => "host_not_allowed",
            Reject::PortNotAllowed => "port_not_allowed",
            Reject::PrivateDestination => "private_destination",
            Reject::NotConnect => "not_connect",
            Reject::Malformed => "malformed",
            Reject::HeaderTooLarge => "header_too_large",
            Reject::HeaderTimeout => "header_timeout",
            Reject::OverCapacity => "over_capacity",
            Reject::TlsVersion => "tls_version",
            Reject::TlsParse => "tls_parse",
            Reject::SniMissing => "sni_missing",
            Reject::SniMismatch => "sni_mismatch",
            Reject::ClientCert => "client_cert",
            Reject::ClientAuth => "client_auth",
            Reject::ClientNetwork => "client_network",
            Reject::Revoked => "revoked",
            Reject::ProxyProtocol => "proxy_protocol",
            Reject::ProxyUntrusted => "proxy_protocol_untrusted",
            Reject::ClientLimit => "client_limit",
            Reject::Overload => "overload",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Errors counted by `splicegate_errors_total{kind}`: failures of the gateway or the network
/// rather than refusals of a client request. [`ErrorKind::ALL`] is derived, as for [`Reject`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::VariantArray)]
pub enum ErrorKind {
    DnsFailure,
    ResolveTimeout,
    ConnectRefused,
    ConnectUnreachable,
    ConnectTimeout,
    ConnectFailed,
    FdExhausted,
    /// `accept` failed with ENOBUFS or ENOMEM: the kernel is short of memory, not of fds.
    OutOfMemory,
    /// Any other persistent `accept` error.
    Accept,
    TunnelIo,
    RelayAuth,
    RelayRefused,
    Internal,
}

impl ErrorKind {
    /// Every variant, in declaration order (so `ALL[k.index()] == k`).
    pub const ALL: &'static [ErrorKind] = <ErrorKind as strum::VariantArray>::VARIANTS;

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::DnsFailure => "dns_failure",
            ErrorKind::ResolveTimeout => "resolve_timeout",
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectUnreachable => "connect_unreachable",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::ConnectFailed => "connect_failed",
            ErrorKind::FdExhausted => "fd_exhausted",
            ErrorKind::OutOfMemory => "out_of_memory",
            ErrorKind::Accept => "accept",
            ErrorKind::TunnelIo => "tunnel_io",
            ErrorKind::RelayAuth => "relay_auth",
            ErrorKind::RelayRefused => "relay_refused",
            ErrorKind::Internal => "internal",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_match_positions() {
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i);
        }
    }

    #[test]
    fn labels_are_distinct_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for l in Reject::ALL.iter().map(|r| r.as_str()) {
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            assert!(seen.insert(l));
        }
        for l in ErrorKind::ALL.iter().map(|k| k.as_str()) {
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            assert!(seen.insert(l));
        }
    }
}
