//! Sans-IO inspection of the TLS handshake inside a CONNECT tunnel: protocol version, server name
//! (SNI) and, optionally, the subject of the client certificate.
//!
//! The [`Inspector`] only parses. It is fed the bytes of each direction as they are read and
//! answers with a [`Verdict`]; it never writes, never buffers a whole stream for the engine and
//! never changes a byte. The engine keeps its own copy of whatever it has not forwarded yet and,
//! once allowed, forwards the original bytes unchanged.
//!
//! # Engine contract
//! 1. After the `200` has been written, call [`Inspector::new`] with the `tls:` settings and the
//!    CONNECT host. `None` means `tls.inspect` is off: relay as a plain tunnel.
//! 2. Start the `tls.hello_timeout` timer. Read the client; buffer what is read (bytes that
//!    arrived with the CONNECT head count too) and pass each newly read chunk, once and in
//!    order, to [`Inspector::client_bytes`]. While the verdict is [`Verdict::NeedMore`], forward
//!    **nothing** upstream and do not read the upstream (a TLS server waits for the
//!    ClientHello; server bytes fed at this stage are refused as
//!    [`ParseError::UnexpectedRecord`]).
//! 3. On [`Verdict::Allow`]: write the buffered client bytes upstream unchanged, log event
//!    [`events::TLS_VERIFIED`] (107) with the version and SNI,
//!    stop the timer and drop the inspector; from here on the tunnel is a plain tunnel (splice).
//! 4. On [`Verdict::Deny`]: close both sides; nothing was forwarded. Count
//!    [`Reason::label`] and log [`Reason::event_id`] with the reason's text.
//! 5. On [`Verdict::Following`] (only when `tls.allowed_client_certificates` is set): write the
//!    buffered client bytes upstream, then relay both directions through user space (copy, not
//!    splice) while the handshake is watched. For every chunk read from either side, first pass
//!    it to [`Inspector::client_bytes`] or [`Inspector::server_bytes`], then act on the verdict:
//!    `Following` -> forward the chunk; `Allow` -> forward the chunk and go on as a plain tunnel;
//!    `Deny` -> drop the chunk and close both sides (the server never sees a complete handshake
//!    from the client, and the client never sees the server's last flight if the denial came from
//!    the server side). Keep the `hello_timeout` timer running until the verdict is final.
//! 6. End of stream or an error on either side, or the timer firing, before a final verdict:
//!    close both sides; that is the engine's own reason (timeout, peer closed), not a TLS
//!    refusal.
//!
//! A final verdict ([`Verdict::is_final`]) never changes: calls made after it ignore their
//! input and return it again.
//!
//! # What is checked
//! - **Framing.** The first byte must start a TLS handshake record (`0x16`) and every record must
//!   have a `0x03xx` version, a known content type and a length of at most 2^14 + 2048. An
//!   SSLv2-format hello (high bit set, message type 1) is refused as [`TlsVersion::Ssl2`] whatever
//!   version it announces; anything else that is not TLS is [`ParseError::NotTls`].
//!   The ClientHello may be fragmented over any number of records and reads.
//! - **Size.** `tls.max_hello_bytes` bounds, separately: the raw client bytes (record headers
//!   included) up to the end of the ClientHello; the raw client bytes after it while following;
//!   the raw server bytes up to the end of the ServerHello. Beyond it: [`ParseError::TooLarge`]
//!   (label `tls_parse`). A handshake message declared longer than the limit is refused at its
//!   header.
//! - **Version.** The highest known, non-GREASE entry of `supported_versions`, or the legacy
//!   `client_version` when the extension is absent (a legacy version above 1.2 counts as 1.2,
//!   as a server reads it). SSL 2.0 and 3.0 are always refused; so is anything below
//!   `tls.min_version`. Older versions listed next to an acceptable one are not refused (a
//!   server could still pick one of them); when the handshake is followed, the version the
//!   ServerHello selects is checked against `tls.min_version` too.
//! - **SNI.** The `host_name` of `server_name`, lower-cased and without its trailing dot. With
//!   `tls.require_sni` a hello without one is refused. With `tls.require_sni_match` an SNI, when
//!   present, must equal the CONNECT host (ASCII case-insensitive, trailing dot ignored).
//!   When the CONNECT host is an IP literal there is no name to send: `require_sni` does not
//!   apply, and with `require_sni_match` any SNI is refused as a mismatch (an SNI never
//!   carries an IP address, RFC 6066 section 3, so a client that sends one for an IP literal
//!   names some other host: it is fronting). Two `server_name` extensions, two host
//!   names, or a host name that is not 1 to 255 visible ASCII characters or has an empty
//!   label (`a..b`, `.a`, `a..`) are refused as malformed.
//! - **Client certificate** (when `tls.allowed_client_certificates` is not empty):
//!   - a hello whose acceptable offers are all TLS 1.3 is judged at once by
//!     `tls.tls13_client_certificate` (the certificate would be encrypted);
//!   - otherwise the handshake is followed: the server's ServerHello gives the negotiated
//!     version. TLS 1.3 (also via HelloRetryRequest) is judged by `tls13_client_certificate`;
//!     TLS 1.2 and below by the client's Certificate message, read from the client's records up
//!     to its ChangeCipherSpec (its first record that is neither a handshake record nor an
//!     alert). The leaf's subject must be on the list (see [`normalize_subject`] for the
//!     canonical form and the matching rule); an empty certificate list, or no Certificate
//!     message, is [`Reason::ClientCertMissing`]. The verdict waits for both the ServerHello
//!     and the client's certificate, in whatever order they are fed.
//!
//!   A resumed TLS 1.2 session (abbreviated handshake) carries no certificate and is therefore
//!   refused as `ClientCertMissing`; so is a client that is never asked for one. The server, not
//!   the gateway, verifies the chain and the client's proof of possession (CertificateVerify).
//!   Renegotiation happens encrypted and is not seen.

mod hello;
mod record;
mod subject;
#[cfg(test)]
mod testdata;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::events;
use crate::proto::connect::Host;

use hello::ClientHello;
use record::{Event, Reader, ALERT, HANDSHAKE};
use subject::CertSubject;

pub use subject::{normalize_subject, SubjectError};

/// `tls:`: inspection of the TLS handshake inside each tunnel (the settings this module runs with).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// `false`: plain CONNECT tunnels, no TLS checks at all.
    pub inspect: bool,
    /// The oldest TLS version allowed, 1.0 to 1.3; SSL 2.0 and 3.0 are always refused.
    pub min_version: TlsVersion,
    /// Refuse a ClientHello without a server name (SNI).
    pub require_sni: bool,
    /// Refuse an SNI that differs from the CONNECT host (the domain-fronting guard).
    pub require_sni_match: bool,
    /// Time for the client to send its ClientHello (and, when client certificates are checked,
    /// for the handshake to reach a verdict).
    pub hello_timeout: Duration,
    /// Bound on the bytes of the ClientHello, and on those read in each direction while the
    /// handshake is followed; 1024 to 1 MiB.
    pub max_hello_bytes: usize,
    /// Allowed client certificate subjects, in the canonical form of
    /// [`normalize_subject`](crate::proto::tls::normalize_subject); empty = no check.
    pub allowed_client_certificates: Vec<String>,
    /// What to do with a TLS 1.3 session when subjects are checked (its certificate is
    /// encrypted).
    pub tls13_client_certificate: Tls13Policy,
}

impl Default for TlsSettings {
    fn default() -> TlsSettings {
        TlsSettings {
            inspect: true,
            min_version: TlsVersion::Tls12,
            require_sni: true,
            require_sni_match: true,
            hello_timeout: Duration::from_secs(10),
            max_hello_bytes: 64 * 1024,
            allowed_client_certificates: Vec::new(),
            tls13_client_certificate: Tls13Policy::Deny,
        }
    }
}

/// Whether the subject of an allowed session ([`CertCheck::Subject`]) is on `allowed` (used to
/// re-check open tunnels when a reload changes `tls.allowed_client_certificates`).
pub fn subject_allowed(canonical: &str, allowed: &[String]) -> bool {
    subject::canonical_allowed(canonical, allowed)
}

/// Handshake message types (RFC 8446 section 4, RFC 5246 section 7.4).
const CLIENT_HELLO: u8 = 1;
const SERVER_HELLO: u8 = 2;
const CERTIFICATE: u8 = 11;
const CERTIFICATE_REQUEST: u8 = 13;
const SERVER_HELLO_DONE: u8 = 14;

/// A protocol version, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsVersion {
    Ssl2,
    Ssl3,
    Tls10,
    Tls11,
    Tls12,
    Tls13,
}

impl TlsVersion {
    /// Every version, oldest first.
    pub const ALL: [TlsVersion; 6] = [
        TlsVersion::Ssl2,
        TlsVersion::Ssl3,
        TlsVersion::Tls10,
        TlsVersion::Tls11,
        TlsVersion::Tls12,
        TlsVersion::Tls13,
    ];

    /// `"SSLv2"`, `"SSLv3"`, `"1.0"`, `"1.1"`, `"1.2"` or `"1.3"` (the `tls.min_version`
    /// spelling for the TLS versions).
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::Ssl2 => "SSLv2",
            TlsVersion::Ssl3 => "SSLv3",
            TlsVersion::Tls10 => "1.0",
            TlsVersion::Tls11 => "1.1",
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }

    /// The version with this wire code (`0x0002` for SSL 2.0, `0x0300` to `0x0304`); `None`
    /// for GREASE, drafts, DTLS and anything else.
    pub fn from_wire(code: u16) -> Option<TlsVersion> {
        match code {
            0x0002 => Some(TlsVersion::Ssl2),
            0x0300 => Some(TlsVersion::Ssl3),
            0x0301 => Some(TlsVersion::Tls10),
            0x0302 => Some(TlsVersion::Tls11),
            0x0303 => Some(TlsVersion::Tls12),
            0x0304 => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `tls.tls13_client_certificate`: what to do with a TLS 1.3 session when client certificates
/// are checked (its certificate is encrypted and cannot be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls13Policy {
    Allow,
    Deny,
}

impl Tls13Policy {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Tls13Policy::Allow => "allow",
            Tls13Policy::Deny => "deny",
        }
    }
}

/// The inspector's answer after each call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The ClientHello is not complete: keep buffering the client's bytes, forward nothing.
    NeedMore,
    /// The ClientHello passed; the rest of the handshake is being watched for the client
    /// certificate. Forward what has been read (both directions) and keep feeding.
    Following,
    /// Let the tunnel through.
    Allow {
        /// The version the server negotiated when the handshake was followed to the
        /// ServerHello, else the highest version the client offered.
        version: TlsVersion,
        /// The SNI, normalised (lower-case, no trailing dot).
        sni: Option<String>,
        /// How the client certificate requirement was met.
        cert: CertCheck,
    },
    /// Close the tunnel.
    Deny(Reason),
}

impl Verdict {
    /// `Allow` or `Deny`: the verdict will not change.
    pub fn is_final(&self) -> bool {
        matches!(self, Verdict::Allow { .. } | Verdict::Deny(_))
    }
}

/// How an allowed session met `tls.allowed_client_certificates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertCheck {
    /// The list is empty: no check.
    NotRequired,
    /// The leaf certificate's subject (canonical form) is on the list.
    Subject(String),
    /// TLS 1.3, allowed by `tls13_client_certificate: allow` without seeing a certificate.
    Tls13Policy,
}

/// Why a tunnel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// SSL 2.0 or 3.0, or a version below `tls.min_version`.
    #[error("unsupported TLS/SSL protocol version {0}")]
    TlsVersion(TlsVersion),
    /// Not TLS, malformed, or over `tls.max_hello_bytes`.
    #[error("cannot parse the TLS handshake: {0}")]
    Parse(ParseError),
    /// `tls.require_sni` and the ClientHello has no server name.
    #[error("the ClientHello has no server name (SNI)")]
    SniMissing,
    /// `tls.require_sni_match` and the server name is not the CONNECT host, or any server name
    /// on a CONNECT to an IP literal (`host` is then the address).
    #[error(
        "the server name (SNI) {} does not match the CONNECT host {}",
        events::clip(.sni),
        events::clip(.host)
    )]
    SniMismatch { sni: String, host: String },
    /// The leaf certificate's subject (canonical form) is not on the list.
    #[error("Invalid client certificate: {}", events::clip(.subject))]
    ClientCert { subject: String },
    /// No Certificate message, or an empty one, before the client's ChangeCipherSpec.
    #[error("no client certificate was presented")]
    ClientCertMissing,
    /// TLS 1.3 with `tls13_client_certificate: deny`.
    #[error("TLS 1.3 session: the client certificate cannot be checked (tls13_client_certificate: deny)")]
    ClientCertTls13,
}

impl Reason {
    /// Every metric label, for pre-registering series.
    pub const LABELS: [&'static str; 5] = [
        "tls_version",
        "tls_parse",
        "sni_missing",
        "sni_mismatch",
        "client_cert",
    ];

    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::TlsVersion(_) => "tls_version",
            Reason::Parse(_) => "tls_parse",
            Reason::SniMissing => "sni_missing",
            Reason::SniMismatch { .. } => "sni_mismatch",
            Reason::ClientCert { .. } | Reason::ClientCertMissing | Reason::ClientCertTls13 => {
                "client_cert"
            }
        }
    }

    /// The event ID to log: 106 for a version, 402 for a parse failure, 105 for the rest.
    pub fn event_id(&self) -> u16 {
        match self {
            Reason::TlsVersion(_) => events::TLS_VERSION,
            Reason::Parse(_) => events::TLS_PARSE,
            _ => events::NOT_ALLOWED,
        }
    }
}

/// What was malformed, for logs (the metric label is always `tls_parse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not a TLS handshake")]
    NotTls,
    #[error("invalid record content type")]
    RecordType,
    #[error("record version is not 3.x")]
    RecordVersion,
    #[error("record too long")]
    RecordLength,
    #[error("unexpected record type during the handshake")]
    UnexpectedRecord,
    #[error("unexpected handshake message")]
    UnexpectedMessage,
    #[error("malformed ClientHello")]
    ClientHello,
    #[error("malformed extension list")]
    Extensions,
    #[error("duplicate extension")]
    DuplicateExtension,
    #[error("malformed server_name extension")]
    ServerName,
    #[error("malformed supported_versions extension")]
    SupportedVersions,
    #[error("malformed ServerHello")]
    ServerHello,
    #[error("malformed Certificate message")]
    Certificate,
    #[error("the client certificate is not valid X.509")]
    X509,
    #[error("handshake larger than tls.max_hello_bytes")]
    TooLarge,
}

impl ParseError {
    /// Short snake_case name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseError::NotTls => "not_tls",
            ParseError::RecordType => "record_type",
            ParseError::RecordVersion => "record_version",
            ParseError::RecordLength => "record_length",
            ParseError::UnexpectedRecord => "unexpected_record",
            ParseError::UnexpectedMessage => "unexpected_message",
            ParseError::ClientHello => "client_hello",
            ParseError::Extensions => "extensions",
            ParseError::DuplicateExtension => "duplicate_extension",
            ParseError::ServerName => "server_name",
            ParseError::SupportedVersions => "supported_versions",
            ParseError::ServerHello => "server_hello",
            ParseError::Certificate => "certificate",
            ParseError::X509 => "x509",
            ParseError::TooLarge => "too_large",
        }
    }
}

/// Inspects one tunnel's handshake. See the module documentation for the engine contract.
///
/// Memory: two small record readers, plus one buffer per direction for the handshake message
/// being reassembled (the ClientHello, the ServerHello, the client's Certificate), each bounded
/// by `tls.max_hello_bytes`. Owned by the engine's connection; dropped with it or once the
/// verdict is final.
#[derive(Debug)]
pub struct Inspector {
    settings: Arc<TlsSettings>,
    /// The CONNECT host, for the SNI rules.
    host: ConnectHost,
    state: State,
    client: Reader,
    server: Reader,
    /// Whether the server's flight held a CertificateRequest.
    certificate_requested: bool,
}

/// The CONNECT host as the SNI rules see it.
#[derive(Debug)]
enum ConnectHost {
    /// A host name (normalised: lower-case, no trailing dot).
    Name(String),
    /// An IP literal: no SNI can name it.
    Ip(IpAddr),
}

#[derive(Debug)]
enum State {
    /// Before the first record header: nothing yet, or the first one or two bytes of what may be
    /// an SSLv2-format record.
    Start {
        prefix: [u8; 2],
        len: usize,
    },
    /// Reading the ClientHello.
    Hello,
    /// Watching the rest of the handshake.
    Following(Follow),
    Done(Verdict),
}

/// What is known while following the handshake.
#[derive(Debug)]
struct Follow {
    /// What the ClientHello offered.
    offer: ClientHello,
    /// The version the ServerHello selected, once seen (always at most 1.2 here: 1.3 decides).
    negotiated: Option<TlsVersion>,
    server: ServerWatch,
    /// What the client's records said about its certificate, once known.
    client: Option<ClientCert>,
}

/// How far the server's side has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerWatch {
    /// Until its first handshake message, which must be the ServerHello.
    Hello,
    /// After the ServerHello, up to ServerHelloDone: noting a CertificateRequest.
    Flight,
    /// Nothing more to read.
    Done,
}

/// What the client's handshake records showed.
#[derive(Debug)]
enum ClientCert {
    /// No Certificate message, or an empty list, before its ChangeCipherSpec (or application
    /// data).
    Missing,
    /// The leaf's subject.
    Leaf(CertSubject),
    /// The Certificate message or the leaf did not parse.
    Malformed(ParseError),
}

impl Inspector {
    /// A new inspector for a tunnel to `host`, or `None` when `settings.inspect` is off.
    pub fn new(settings: Arc<TlsSettings>, host: &Host) -> Option<Inspector> {
        if !settings.inspect {
            return None;
        }
        let host = match host {
            Host::Name(name) => ConnectHost::Name(name.clone()),
            Host::V4(ip) => ConnectHost::Ip(IpAddr::V4(*ip)),
            Host::V6(ip) => ConnectHost::Ip(IpAddr::V6(*ip)),
        };
        let budget = settings.max_hello_bytes;
        Some(Inspector {
            settings,
            host,
            state: State::Start {
                prefix: [0; 2],
                len: 0,
            },
            client: Reader::new(budget),
            server: Reader::new(budget),
            certificate_requested: false,
        })
    }

    /// Feeds bytes read from the client (each byte exactly once, in order) and returns the
    /// verdict so far.
    pub fn client_bytes(&mut self, bytes: &[u8]) -> Verdict {
        let mut input = bytes;
        let outcome = self.client_step(&mut input);
        self.settle(outcome)
    }

    /// Feeds bytes read from the server (each byte exactly once, in order) and returns the
    /// verdict so far. Only useful while [`Verdict::Following`]; bytes fed before the
    /// ClientHello is judged are refused ([`ParseError::UnexpectedRecord`]), as a TLS server
    /// waits for the ClientHello.
    pub fn server_bytes(&mut self, bytes: &[u8]) -> Verdict {
        let mut input = bytes;
        let outcome = self.server_step(&mut input);
        self.settle(outcome)
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        match &self.state {
            State::Start { .. } | State::Hello => Verdict::NeedMore,
            State::Following(_) => Verdict::Following,
            State::Done(verdict) => verdict.clone(),
        }
    }

    /// Whether the server asked for a client certificate (a CertificateRequest in its TLS 1.2
    /// flight), for the log line of a [`Reason::ClientCertMissing`].
    pub fn certificate_requested(&self) -> bool {
        self.certificate_requested
    }

    /// Records a final verdict, if any, and returns the verdict so far.
    fn settle(&mut self, outcome: Result<Option<Verdict>, Reason>) -> Verdict {
        match outcome {
            Ok(None) => {}
            Ok(Some(verdict)) => self.state = State::Done(verdict),
            Err(reason) => self.state = State::Done(Verdict::Deny(reason)),
        }
        self.verdict()
    }

    fn client_step(&mut self, input: &mut &[u8]) -> Result<Option<Verdict>, Reason> {
        if let State::Start { prefix, len } = &mut self.state {
            if !starts_tls(prefix, len, input)? {
                return Ok(None);
            }
            self.state = State::Hello;
        }
        if matches!(self.state, State::Hello) {
            let Some(offer) = self.read_hello(input)? else {
                return Ok(None);
            };
            match self.judge_hello(offer)? {
                Judged::Final(verdict) => return Ok(Some(verdict)),
                Judged::Follow(offer) => {
                    self.client.set_budget(self.settings.max_hello_bytes);
                    self.state = State::Following(Follow {
                        offer,
                        negotiated: None,
                        server: ServerWatch::Hello,
                        client: None,
                    });
                }
            }
        }
        let State::Following(follow) = &mut self.state else {
            return Ok(None);
        };
        if follow.client.is_none() {
            follow_client(&mut self.client, follow, input)?;
        }
        // Decide before counting what follows the certificate in this chunk: a verdict reached
        // here is final whether those bytes came in the same read or in a later one.
        if let Some(verdict) = follow.decide(&self.settings) {
            return Ok(Some(verdict));
        }
        // Bytes after the client's last plaintext handshake record still count.
        self.client.count(input.len()).map_err(Reason::Parse)?;
        Ok(None)
    }

    fn server_step(&mut self, input: &mut &[u8]) -> Result<Option<Verdict>, Reason> {
        let follow = match &mut self.state {
            State::Following(follow) => follow,
            // In TLS the client speaks first: a server that does not wait for the ClientHello
            // is not a TLS server.
            State::Start { .. } | State::Hello if !input.is_empty() => {
                return Err(Reason::Parse(ParseError::UnexpectedRecord));
            }
            State::Start { .. } | State::Hello | State::Done(_) => return Ok(None),
        };
        if follow.server != ServerWatch::Done {
            let watched = Watched {
                settings: &self.settings,
                certificate_requested: &mut self.certificate_requested,
            };
            if let Some(verdict) = follow_server(&mut self.server, follow, watched, input)? {
                return Ok(Some(verdict));
            }
        }
        Ok(follow.decide(&self.settings))
    }

    /// Reads client records until the ClientHello is complete.
    fn read_hello(&mut self, input: &mut &[u8]) -> Result<Option<ClientHello>, Reason> {
        loop {
            let event = self
                .client
                .next(input, |t| t == CLIENT_HELLO)
                .map_err(Reason::Parse)?;
            match event {
                None => return Ok(None),
                Some(Event::Record(_)) => {
                    return Err(Reason::Parse(ParseError::UnexpectedRecord));
                }
                Some(Event::Header { msg_type, .. }) if msg_type != CLIENT_HELLO => {
                    return Err(Reason::Parse(ParseError::UnexpectedMessage));
                }
                Some(Event::Header { .. }) => {}
                Some(Event::Message { body, .. }) => {
                    return hello::parse_client_hello(body)
                        .map(Some)
                        .map_err(Reason::Parse);
                }
            }
        }
    }

    /// Applies the version, SNI and (for a TLS 1.3-only offer) certificate rules to a complete
    /// ClientHello.
    fn judge_hello(&self, offer: ClientHello) -> Result<Judged, Reason> {
        let s = &self.settings;
        if offer.version < TlsVersion::Tls10 || offer.version < s.min_version {
            return Err(Reason::TlsVersion(offer.version));
        }
        match (&offer.sni, &self.host) {
            // An IP literal has no name a client could send: `require_sni` cannot apply.
            (None, ConnectHost::Name(_)) if s.require_sni => return Err(Reason::SniMissing),
            (Some(sni), ConnectHost::Name(host)) if s.require_sni_match && sni != host => {
                return Err(Reason::SniMismatch {
                    sni: sni.clone(),
                    host: host.clone(),
                });
            }
            // An SNI never carries an address: any name sent for an IP literal is another
            // host's.
            (Some(sni), ConnectHost::Ip(ip)) if s.require_sni_match => {
                return Err(Reason::SniMismatch {
                    sni: sni.clone(),
                    host: ip.to_string(),
                });
            }
            _ => {}
        }
        if s.allowed_client_certificates.is_empty() {
            return Ok(Judged::Final(Verdict::Allow {
                version: offer.version,
                sni: offer.sni,
                cert: CertCheck::NotRequired,
            }));
        }
        let floor = s.min_version.max(TlsVersion::Tls10);
        if offer.offered.any_in(floor, TlsVersion::Tls12) {
            return Ok(Judged::Follow(offer));
        }
        // Only TLS 1.3 can be negotiated.
        Ok(Judged::Final(tls13_verdict(s, offer.sni)))
    }
}

/// The outcome of judging a ClientHello.
enum Judged {
    Final(Verdict),
    Follow(ClientHello),
}

impl Follow {
    /// The final verdict once both the negotiated version and the client's certificate are
    /// known.
    fn decide(&mut self, settings: &TlsSettings) -> Option<Verdict> {
        let version = self.negotiated?;
        let verdict = match self.client.as_ref()? {
            ClientCert::Missing => Verdict::Deny(Reason::ClientCertMissing),
            ClientCert::Malformed(e) => Verdict::Deny(Reason::Parse(*e)),
            ClientCert::Leaf(subject)
                if subject.is_allowed(&settings.allowed_client_certificates) =>
            {
                Verdict::Allow {
                    version,
                    sni: self.offer.sni.take(),
                    cert: CertCheck::Subject(subject.canonical.clone()),
                }
            }
            ClientCert::Leaf(subject) => Verdict::Deny(Reason::ClientCert {
                subject: subject.canonical.clone(),
            }),
        };
        Some(verdict)
    }
}

/// Reads the client's records after the ClientHello until its certificate is known: its
/// Certificate message, or its first record that is neither a handshake record nor an alert
/// (normally its ChangeCipherSpec).
fn follow_client(
    reader: &mut Reader,
    follow: &mut Follow,
    input: &mut &[u8],
) -> Result<(), Reason> {
    while let Some(event) = reader
        .next(input, |t| t == CERTIFICATE)
        .map_err(Reason::Parse)?
    {
        let found = match event {
            // The client gives up (it may not trust the server): not a certificate matter. A
            // fatal alert is followed by a close, which ends the tunnel.
            Event::Record(ALERT) => continue,
            Event::Record(_) => ClientCert::Missing,
            Event::Header { .. } => continue,
            Event::Message { body, .. } => match hello::leaf_certificate(body) {
                Ok(None) => ClientCert::Missing,
                Ok(Some(der)) => match CertSubject::from_der(der) {
                    Ok(subject) => ClientCert::Leaf(subject),
                    Err(e) => ClientCert::Malformed(e),
                },
                Err(e) => ClientCert::Malformed(e),
            },
        };
        follow.client = Some(found);
        return Ok(());
    }
    Ok(())
}

/// The inspector's fields [`follow_server`] needs besides the reader and the follow state.
struct Watched<'a> {
    settings: &'a TlsSettings,
    certificate_requested: &'a mut bool,
}

/// Reads the server's records: the ServerHello decides the version; the rest of its flight is
/// skipped up to ServerHelloDone, noting a CertificateRequest. Returns a verdict when the
/// version alone settles it.
fn follow_server(
    reader: &mut Reader,
    follow: &mut Follow,
    watched: Watched<'_>,
    input: &mut &[u8],
) -> Result<Option<Verdict>, Reason> {
    let settings = watched.settings;
    while let Some(event) = reader
        .next(input, |t| t == SERVER_HELLO)
        .map_err(Reason::Parse)?
    {
        match (follow.server, event) {
            (ServerWatch::Hello, Event::Record(ALERT)) => {
                // The server refuses the hello and will close; so will the engine.
                follow.server = ServerWatch::Done;
                return Ok(None);
            }
            (ServerWatch::Hello, Event::Record(_)) => {
                return Err(Reason::Parse(ParseError::UnexpectedRecord));
            }
            (ServerWatch::Hello, Event::Header { msg_type, .. }) => {
                if msg_type != SERVER_HELLO {
                    return Err(Reason::Parse(ParseError::UnexpectedMessage));
                }
            }
            (ServerWatch::Hello, Event::Message { body, .. }) => {
                let version = hello::parse_server_hello(body).map_err(Reason::Parse)?;
                if version == TlsVersion::Tls13 {
                    return Ok(Some(tls13_verdict(settings, follow.offer.sni.take())));
                }
                if version < TlsVersion::Tls10 || version < settings.min_version {
                    return Err(Reason::TlsVersion(version));
                }
                follow.negotiated = Some(version);
                follow.server = ServerWatch::Flight;
                // Nothing after the ServerHello is buffered.
                reader.set_budget(usize::MAX);
                // With the client's certificate already known the verdict is reached here,
                // whether the rest of the server's flight came in this read or comes later.
                if let Some(verdict) = follow.decide(settings) {
                    return Ok(Some(verdict));
                }
            }
            (ServerWatch::Flight, Event::Header { msg_type, .. }) => match msg_type {
                CERTIFICATE_REQUEST => *watched.certificate_requested = true,
                SERVER_HELLO_DONE => {
                    follow.server = ServerWatch::Done;
                    return Ok(None);
                }
                _ => {}
            },
            (ServerWatch::Flight, Event::Record(_)) => {
                // The ChangeCipherSpec of a resumed session, or an alert.
                follow.server = ServerWatch::Done;
                return Ok(None);
            }
            (ServerWatch::Flight, Event::Message { .. }) | (ServerWatch::Done, _) => {}
        }
    }
    Ok(None)
}

/// The verdict for a TLS 1.3 session when client certificates are checked.
fn tls13_verdict(settings: &TlsSettings, sni: Option<String>) -> Verdict {
    match settings.tls13_client_certificate {
        Tls13Policy::Allow => Verdict::Allow {
            version: TlsVersion::Tls13,
            sni,
            cert: CertCheck::Tls13Policy,
        },
        Tls13Policy::Deny => Verdict::Deny(Reason::ClientCertTls13),
    }
}

/// Checks the first bytes of the client stream: `Ok(true)` once they start a TLS handshake
/// record (nothing is consumed: the record reader reads them), `Ok(false)` while what may be an
/// SSLv2-format record is still being told apart (its first bytes are kept in `prefix`).
fn starts_tls(prefix: &mut [u8; 2], len: &mut usize, input: &mut &[u8]) -> Result<bool, Reason> {
    let first = if *len > 0 {
        prefix[0]
    } else {
        match input.first() {
            Some(&b) => b,
            None => return Ok(false),
        }
    };
    if first == HANDSHAKE {
        return Ok(true);
    }
    if first & 0x80 == 0 {
        return Err(Reason::Parse(ParseError::NotTls));
    }
    // An SSLv2 record header: two length bytes, then the message type (1 = CLIENT-HELLO).
    while *len < prefix.len() {
        let Some((&b, rest)) = input.split_first() else {
            return Ok(false);
        };
        prefix[*len] = b;
        *len += 1;
        *input = rest;
    }
    match input.first() {
        None => Ok(false),
        Some(&CLIENT_HELLO) => Err(Reason::TlsVersion(TlsVersion::Ssl2)),
        Some(_) => Err(Reason::Parse(ParseError::NotTls)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::testdata::*;
    use super::*;

    const HELLO_FIXTURES: [&str; 6] = [
        "hello_tls10.bin",
        "hello_tls11.bin",
        "hello_tls12.bin",
        "hello_tls13.bin",
        "hello_default.bin",
        "hello_nosni.bin",
    ];

    fn settings() -> TlsSettings {
        TlsSettings::default()
    }

    fn with_certs(subjects: &[&str], tls13: Tls13Policy) -> TlsSettings {
        TlsSettings {
            allowed_client_certificates: subjects
                .iter()
                .map(|s| normalize_subject(s).unwrap_or_else(|e| panic!("{s}: {e}")))
                .collect(),
            tls13_client_certificate: tls13,
            ..settings()
        }
    }

    fn allow(version: TlsVersion, sni: Option<&str>, cert: CertCheck) -> Verdict {
        Verdict::Allow {
            version,
            sni: sni.map(str::to_owned),
            cert,
        }
    }

    fn allow_plain(version: TlsVersion, sni: Option<&str>) -> Verdict {
        allow(version, sni, CertCheck::NotRequired)
    }

    fn deny(reason: Reason) -> Verdict {
        Verdict::Deny(reason)
    }

    fn parse(e: ParseError) -> Verdict {
        deny(Reason::Parse(e))
    }

    fn hello(settings: &TlsSettings, host: &Host, bytes: &[u8]) -> Verdict {
        new_inspector(settings, host).client_bytes(bytes)
    }

    /// Every proper prefix of `input` is `NeedMore`, or an early verdict equal to `want`;
    /// feeding the rest gives `want`; so does feeding one byte at a time. Returns the number of
    /// proper prefixes that were `NeedMore`.
    fn assert_split_invariant(settings: &TlsSettings, host: &Host, input: &[u8], want: &Verdict) {
        assert_eq!(&hello(settings, host, input), want, "whole input");
        for cut in 0..input.len() {
            let mut inspector = new_inspector(settings, host);
            let early = inspector.client_bytes(&input[..cut]);
            if early.is_final() {
                assert_eq!(&early, want, "prefix of {cut} bytes");
            } else {
                assert_eq!(early, Verdict::NeedMore, "prefix of {cut} bytes");
            }
            let late = inspector.client_bytes(&input[cut..]);
            assert_eq!(&late, want, "split at {cut}");
        }
        let mut inspector = new_inspector(settings, host);
        let mut last = Verdict::NeedMore;
        for byte in input {
            last = inspector.client_bytes(std::slice::from_ref(byte));
        }
        assert_eq!(&last, want, "one byte at a time");
    }

    /// Like [`assert_split_invariant`] for a hello that must be complete to be judged: every
    /// proper prefix is `NeedMore`.
    fn assert_needs_all(settings: &TlsSettings, host: &Host, input: &[u8], want: &Verdict) {
        for cut in 0..input.len() {
            let verdict = hello(settings, host, &input[..cut]);
            assert_eq!(verdict, Verdict::NeedMore, "prefix of {cut} bytes");
        }
        assert_split_invariant(settings, host, input, want);
    }

    #[test]
    fn captured_hellos_every_version() {
        let host = name("a.example");
        let any = TlsSettings {
            min_version: TlsVersion::Tls10,
            ..settings()
        };
        let cases = [
            ("hello_tls10.bin", TlsVersion::Tls10),
            ("hello_tls11.bin", TlsVersion::Tls11),
            ("hello_tls12.bin", TlsVersion::Tls12),
            ("hello_tls13.bin", TlsVersion::Tls13),
            ("hello_default.bin", TlsVersion::Tls13),
        ];
        for (file, version) in cases {
            let bytes = fixture(file);
            let want = allow_plain(version, Some("a.example"));
            assert_needs_all(&any, &host, &bytes, &want);
            for min in [
                TlsVersion::Tls10,
                TlsVersion::Tls11,
                TlsVersion::Tls12,
                TlsVersion::Tls13,
            ] {
                let s = TlsSettings {
                    min_version: min,
                    ..settings()
                };
                let want = if version >= min {
                    allow_plain(version, Some("a.example"))
                } else {
                    deny(Reason::TlsVersion(version))
                };
                assert_eq!(hello(&s, &host, &bytes), want, "{file} with min {min}");
            }
        }
    }

    #[test]
    fn captured_hellos_sni() {
        let bytes = fixture("hello_tls12.bin");
        let s = settings();
        assert_eq!(
            hello(&s, &name("b.example"), &bytes),
            deny(Reason::SniMismatch {
                sni: "a.example".into(),
                host: "b.example".into()
            })
        );
        assert_eq!(
            hello(&s, &name("sub.a.example"), &bytes),
            deny(Reason::SniMismatch {
                sni: "a.example".into(),
                host: "sub.a.example".into()
            })
        );
        let no_match = TlsSettings {
            require_sni_match: false,
            ..settings()
        };
        assert_eq!(
            hello(&no_match, &name("b.example"), &bytes),
            allow_plain(TlsVersion::Tls12, Some("a.example"))
        );
        // An IP-literal CONNECT host: any SNI is fronting, refused as a mismatch.
        for (host, literal) in [
            (Host::V4(Ipv4Addr::new(192, 0, 2, 1)), "192.0.2.1"),
            (Host::V6(Ipv6Addr::LOCALHOST), "::1"),
        ] {
            let want = deny(Reason::SniMismatch {
                sni: "a.example".into(),
                host: literal.into(),
            });
            assert_split_invariant(&s, &host, &bytes, &want);
            // Unless the operator turned the fronting guard off.
            assert_eq!(
                hello(&no_match, &host, &bytes),
                allow_plain(TlsVersion::Tls12, Some("a.example"))
            );
        }
        // No SNI at all.
        let none = fixture("hello_nosni.bin");
        assert_needs_all(&s, &name("a.example"), &none, &deny(Reason::SniMissing));
        // An IP literal has no name to send: `require_sni` does not apply.
        let ip = Host::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(hello(&s, &ip, &none), allow_plain(TlsVersion::Tls13, None));
        assert_eq!(
            hello(&s, &Host::V6(Ipv6Addr::LOCALHOST), &none),
            allow_plain(TlsVersion::Tls13, None)
        );
        let optional = TlsSettings {
            require_sni: false,
            ..settings()
        };
        assert_eq!(
            hello(&optional, &name("a.example"), &none),
            allow_plain(TlsVersion::Tls13, None)
        );
        assert_eq!(
            hello(&optional, &ip, &none),
            allow_plain(TlsVersion::Tls13, None)
        );
    }

    #[test]
    fn sni_case_and_trailing_dot() {
        let s = settings();
        let cases = [
            ("a.example", "a.example"),
            ("A.EXAMPLE", "a.example"),
            ("a.example.", "a.example"),
            ("A.Example.", "a.example"),
        ];
        for (sni, normalised) in cases {
            let bytes = HelloBuilder::new().sni(Some(sni)).bytes();
            // The CONNECT host arrives normalised (lower-case, no trailing dot).
            let want = allow_plain(TlsVersion::Tls13, Some(normalised));
            assert_eq!(hello(&s, &name("a.example"), &bytes), want, "{sni}");
        }
        // A second trailing dot is an empty label, so not a host name: refused as malformed
        // rather than reported as the SNI `a.example.`, which normalised SNIs never end with.
        for bad in [
            "a example",
            "a\u{0}b",
            "é.example",
            ".",
            "a.example..",
            "a..example",
        ] {
            let bytes = HelloBuilder::new().sni(Some(bad)).bytes();
            assert_eq!(
                hello(&s, &name("a.example"), &bytes),
                parse(ParseError::ServerName),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn grease_is_ignored() {
        let s = settings();
        let host = name("a.example");
        let greasy = HelloBuilder::new()
            .versions(Some(&[0x5a5a, 0x0304, 0x0303, 0xfafa]))
            .extension(0x0a0a, vec![])
            .extension(0xdada, vec![0])
            .bytes();
        assert_needs_all(
            &s,
            &host,
            &greasy,
            &allow_plain(TlsVersion::Tls13, Some("a.example")),
        );
        // The highest real version counts, not the highest code.
        let old = HelloBuilder::new()
            .versions(Some(&[0x7a7a, 0x0302, 0x0301]))
            .bytes();
        assert_eq!(
            hello(&s, &host, &old),
            deny(Reason::TlsVersion(TlsVersion::Tls11))
        );
        let only_grease = HelloBuilder::new().versions(Some(&[0x2a2a])).bytes();
        assert_eq!(
            hello(&s, &host, &only_grease),
            parse(ParseError::SupportedVersions)
        );
        // Drafts and DTLS codes are not offers either.
        let drafts = HelloBuilder::new()
            .versions(Some(&[0x7f1c, 0xfefd, 0x0303]))
            .bytes();
        assert_eq!(
            hello(&s, &host, &drafts),
            allow_plain(TlsVersion::Tls12, Some("a.example"))
        );
    }

    #[test]
    fn legacy_version_rules() {
        let s = TlsSettings {
            min_version: TlsVersion::Tls10,
            ..settings()
        };
        let host = name("a.example");
        let legacy = |v: u16| {
            let mut b = HelloBuilder::new().versions(None);
            b.legacy_version = v;
            b.bytes()
        };
        assert_eq!(
            hello(&s, &host, &legacy(0x0301)),
            allow_plain(TlsVersion::Tls10, Some("a.example"))
        );
        // Without supported_versions a server never negotiates 1.3.
        assert_eq!(
            hello(&s, &host, &legacy(0x0304)),
            allow_plain(TlsVersion::Tls12, Some("a.example"))
        );
        assert_eq!(
            hello(&s, &host, &legacy(0x03ff)),
            allow_plain(TlsVersion::Tls12, Some("a.example"))
        );
        assert_eq!(
            hello(&s, &host, &legacy(0x0200)),
            parse(ParseError::ClientHello)
        );
        // supported_versions wins over the legacy version.
        let mut b = HelloBuilder::new().versions(Some(&[0x0302]));
        b.legacy_version = 0x0303;
        assert_eq!(
            hello(&settings(), &host, &b.bytes()),
            deny(Reason::TlsVersion(TlsVersion::Tls11))
        );
        // An old client without any extension: no SNI.
        let mut bare = HelloBuilder::new().versions(None);
        bare.legacy_version = 0x0301;
        bare.no_extensions = true;
        assert_eq!(hello(&s, &host, &bare.bytes()), deny(Reason::SniMissing));
        let lax = TlsSettings {
            require_sni: false,
            ..s.clone()
        };
        assert_eq!(
            hello(&lax, &host, &bare.bytes()),
            allow_plain(TlsVersion::Tls10, None)
        );
    }

    #[test]
    fn large_post_quantum_hello() {
        // An X25519MLKEM768 key share (group 0x11ec, 1216 bytes) next to an X25519 one, and an
        // encrypted_client_hello (0xfe0d) extension, as current browsers send them.
        let mut shares = Vec::new();
        shares.extend_from_slice(&0x11ecu16.to_be_bytes());
        shares.extend_from_slice(&1216u16.to_be_bytes());
        shares.extend_from_slice(&[0x33; 1216]);
        shares.extend_from_slice(&[0x00, 0x1d, 0x00, 0x20]);
        shares.extend_from_slice(&[0x44; 32]);
        let mut key_share = u16::try_from(shares.len())
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec();
        key_share.extend(shares);
        let message = HelloBuilder::new()
            .extension(51, key_share)
            .extension(0xfe0d, vec![0xee; 250])
            .message();
        assert!(message.len() > 1500, "{} bytes", message.len());
        let s = settings();
        let host = name("a.example");
        let want = allow_plain(TlsVersion::Tls13, Some("a.example"));
        let one_record = records(&message, 1 << 14, 0x0301);
        assert_needs_all(&s, &host, &one_record, &want);
        // The same hello over two records, and over records of 1, 7 and 100 bytes.
        for fragment in [1, 7, 100, 1024] {
            let bytes = records(&message, fragment, 0x0301);
            assert_eq!(hello(&s, &host, &bytes), want, "fragment {fragment}");
        }
        let two = records(&message, 1024, 0x0301);
        assert_split_invariant(&s, &host, &two, &want);
    }

    #[test]
    fn captured_hellos_split_anywhere() {
        let host = name("a.example");
        let s = TlsSettings {
            min_version: TlsVersion::Tls10,
            require_sni: false,
            ..settings()
        };
        for file in HELLO_FIXTURES {
            let bytes = fixture(file);
            let want = hello(&s, &host, &bytes);
            assert!(matches!(want, Verdict::Allow { .. }), "{file}: {want:?}");
            assert_needs_all(&s, &host, &bytes, &want);
            // Re-fragmented into one-byte records, and split in two records at every offset.
            let message = unrecord(&bytes);
            assert_eq!(
                hello(&s, &host, &records(&message, 1, 0x0301)),
                want,
                "{file}"
            );
            for cut in 1..message.len() {
                let mut two = records(&message[..cut], 1 << 14, 0x0301);
                two.extend(records(&message[cut..], 1 << 14, 0x0303));
                assert_eq!(
                    hello(&s, &host, &two),
                    want,
                    "{file} in two records at {cut}"
                );
            }
        }
    }

    #[test]
    fn bytes_after_the_hello_do_not_matter() {
        let mut bytes = fixture("hello_tls12.bin");
        bytes.extend_from_slice(b"\x17\x03\x03\x00\x05early and anything else");
        let want = allow_plain(TlsVersion::Tls12, Some("a.example"));
        assert_eq!(hello(&settings(), &name("a.example"), &bytes), want);
    }

    #[test]
    fn sslv2_and_sslv3_are_refused() {
        let host = name("a.example");
        // An SSLv2-format CLIENT-HELLO offering TLS 1.0 (as very old clients sent it).
        let mut v2 = vec![
            0x80, 0x2e, 0x01, 0x03, 0x01, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
        ];
        v2.extend_from_slice(&[0x07, 0x00, 0xc0, 0x03, 0x00, 0x80, 0x01, 0x00, 0x80]);
        v2.extend_from_slice(&[
            0x00, 0x00, 0x0a, 0x00, 0x00, 0x2f, 0x00, 0x00, 0x35, 0, 0, 4,
        ]);
        v2.extend_from_slice(&[0xab; 16]);
        let want = deny(Reason::TlsVersion(TlsVersion::Ssl2));
        assert_split_invariant(&settings(), &host, &v2, &want);
        assert_eq!(hello(&settings(), &host, &v2[..2]), Verdict::NeedMore);
        assert_eq!(hello(&settings(), &host, &v2[..3]), want);
        // High bit set but not a CLIENT-HELLO.
        assert_eq!(
            hello(&settings(), &host, &[0x80, 0x2e, 0x04]),
            parse(ParseError::NotTls)
        );
        // SSL 3.0 record and hello.
        let mut v3 = HelloBuilder::new().versions(None);
        v3.legacy_version = 0x0300;
        v3.record_version = 0x0300;
        let lax = TlsSettings {
            min_version: TlsVersion::Tls10,
            ..settings()
        };
        let want = deny(Reason::TlsVersion(TlsVersion::Ssl3));
        assert_needs_all(&lax, &host, &v3.bytes(), &want);
        // Even through supported_versions, and with any min_version.
        let v3 = HelloBuilder::new().versions(Some(&[0x0300])).bytes();
        assert_eq!(hello(&lax, &host, &v3), want);
        let ssl3_floor = TlsSettings {
            min_version: TlsVersion::Ssl3,
            ..settings()
        };
        assert_eq!(hello(&ssl3_floor, &host, &v3), want);
    }

    #[test]
    fn not_tls() {
        let host = name("a.example");
        let s = settings();
        let cases: &[(&[u8], Verdict)] = &[
            (
                b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
                parse(ParseError::NotTls),
            ),
            (
                b"CONNECT a.example:443 HTTP/1.1\r\n\r\n",
                parse(ParseError::NotTls),
            ),
            (b"SSH-2.0-OpenSSH_9.6\r\n", parse(ParseError::NotTls)),
            (b"\x00\x00\x00\x00", parse(ParseError::NotTls)),
            (b"\x14\x03\x03\x00\x01\x01", parse(ParseError::NotTls)),
            (b"\x17\x03\x03\x00\x01\x01", parse(ParseError::NotTls)),
            (b"\x16\x02\x00", parse(ParseError::RecordVersion)),
            (b"\x16\xfe\xfd", parse(ParseError::RecordVersion)),
            (b"\x16\x03\x01\x48\x01", parse(ParseError::RecordLength)),
            // A handshake record holding a message other than ClientHello.
            (
                b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",
                parse(ParseError::UnexpectedMessage),
            ),
            // An alert record after the first record, before the hello is complete.
            (
                b"\x16\x03\x01\x00\x02\x01\x00\x15\x03\x01\x00\x02\x02\x28",
                parse(ParseError::UnexpectedRecord),
            ),
        ];
        for (input, want) in cases {
            assert_split_invariant(&s, &host, input, want);
        }
        // Decided on the first byte.
        assert_eq!(hello(&s, &host, b"G"), parse(ParseError::NotTls));
        assert_eq!(hello(&s, &host, b""), Verdict::NeedMore);
        // Random bytes never panic and never allow.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let len = (x % 300) as usize;
            let mut input = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                input.push(x.to_le_bytes()[0]);
            }
            if let Some(first) = input.first_mut() {
                *first = 0x16;
            }
            let verdict = hello(&s, &host, &input);
            assert!(!matches!(verdict, Verdict::Allow { .. }), "{input:?}");
        }
    }

    #[test]
    fn malformed_hellos() {
        let host = name("a.example");
        let s = settings();
        let sni = HelloBuilder::sni_data(b"a.example");
        let cases = [
            (
                HelloBuilder::new().extension(0, sni.clone()),
                ParseError::DuplicateExtension,
            ),
            (
                HelloBuilder::new().extension(43, vec![2, 3, 3]),
                ParseError::DuplicateExtension,
            ),
            (
                HelloBuilder::new().sni(None).extension(0, {
                    let mut two = HelloBuilder::sni_data(b"a.example");
                    two.extend_from_slice(&[0, 0, 9]);
                    two.extend_from_slice(b"b.example");
                    two[1] += 12;
                    two
                }),
                ParseError::ServerName,
            ),
            (
                HelloBuilder::new().sni(None).extension(0, vec![]),
                ParseError::ServerName,
            ),
            (
                HelloBuilder::new()
                    .versions(None)
                    .extension(43, vec![3, 3, 4, 3]),
                ParseError::SupportedVersions,
            ),
        ];
        for (builder, error) in cases {
            assert_needs_all(&s, &host, &builder.bytes(), &parse(error));
        }
        // A cut-short extension block, bytes after the extensions, a long session id.
        let mut message = HelloBuilder::new().message();
        let len = message.len();
        message.push(0);
        let fix_len = |m: &mut Vec<u8>| {
            let body = m.len() - 4;
            m[1..4].copy_from_slice(&u32::try_from(body).unwrap_or(0).to_be_bytes()[1..]);
        };
        fix_len(&mut message);
        assert_eq!(
            hello(&s, &host, &records(&message, 1 << 14, 0x0301)),
            parse(ParseError::ClientHello)
        );
        message.truncate(len - 3);
        fix_len(&mut message);
        assert_eq!(
            hello(&s, &host, &records(&message, 1 << 14, 0x0301)),
            parse(ParseError::ClientHello)
        );
        let mut long_sid = HelloBuilder::new().message();
        long_sid[4 + 2 + 32] = 33;
        assert_eq!(
            hello(&s, &host, &records(&long_sid, 1 << 14, 0x0301)),
            parse(ParseError::ClientHello)
        );
        // An empty ClientHello.
        assert_eq!(
            hello(&s, &host, b"\x16\x03\x01\x00\x04\x01\x00\x00\x00"),
            parse(ParseError::ClientHello)
        );
    }

    #[test]
    fn size_limit() {
        let host = name("a.example");
        let bytes = fixture("hello_default.bin");
        let exact = TlsSettings {
            max_hello_bytes: bytes.len(),
            ..settings()
        };
        let want = allow_plain(TlsVersion::Tls13, Some("a.example"));
        assert_eq!(hello(&exact, &host, &bytes), want);
        let short = TlsSettings {
            max_hello_bytes: bytes.len() - 1,
            ..settings()
        };
        let too_large = parse(ParseError::TooLarge);
        assert_split_invariant(&short, &host, &bytes, &too_large);
        // Decided from the message header when the declared length alone is too much.
        let small = TlsSettings {
            max_hello_bytes: 100,
            ..settings()
        };
        assert_eq!(hello(&small, &host, &bytes[..9]), too_large);
        // Record headers count: one-byte records make the same hello six times larger.
        let message = unrecord(&bytes);
        let fragmented = records(&message, 1, 0x0301);
        assert_eq!(fragmented.len(), 6 * message.len());
        assert_eq!(hello(&settings(), &host, &fragmented), want);
        let limit = TlsSettings {
            max_hello_bytes: fragmented.len() - 1,
            ..settings()
        };
        assert_eq!(hello(&limit, &host, &fragmented), too_large);
        // Empty handshake records cannot be used to stall within the limit.
        let empties: Vec<u8> = std::iter::repeat_n(&[22u8, 3, 1, 0, 0][..], 20_000)
            .flatten()
            .copied()
            .collect();
        assert_eq!(hello(&settings(), &host, &empties), too_large);
        // A hello declaring 16 MiB is refused at its header.
        assert_eq!(
            hello(&settings(), &host, b"\x16\x03\x01\x00\x04\x01\xff\xff\xff"),
            too_large
        );
    }

    #[test]
    fn final_verdicts_stick() {
        let host = name("a.example");
        let mut inspector = new_inspector(&settings(), &host);
        let want = allow_plain(TlsVersion::Tls12, Some("a.example"));
        assert_eq!(inspector.client_bytes(&fixture("hello_tls12.bin")), want);
        assert_eq!(inspector.client_bytes(b"garbage"), want);
        assert_eq!(inspector.server_bytes(b"garbage"), want);
        assert_eq!(inspector.verdict(), want);
        let mut inspector = new_inspector(&settings(), &host);
        assert_eq!(inspector.client_bytes(b"x"), parse(ParseError::NotTls));
        assert_eq!(
            inspector.client_bytes(&fixture("hello_tls12.bin")),
            parse(ParseError::NotTls)
        );
        // A server that speaks first.
        let mut inspector = new_inspector(&settings(), &host);
        assert_eq!(inspector.server_bytes(b""), Verdict::NeedMore);
        assert_eq!(
            inspector.server_bytes(b"220 smtp.example ESMTP\r\n"),
            parse(ParseError::UnexpectedRecord)
        );
    }

    #[test]
    fn inspect_off_means_no_inspector() {
        let off = TlsSettings {
            inspect: false,
            ..settings()
        };
        assert!(Inspector::new(Arc::new(off), &name("a.example")).is_none());
    }

    /// Feeds an exchange in a realistic order: the client's first flight (the ClientHello),
    /// then the server's bytes, then the rest of the client's, in chunks of `step`, checking
    /// that every verdict before the final one is `Following` (after the hello).
    fn follow_realistic(
        settings: &TlsSettings,
        c2s: &[u8],
        s2c: &[u8],
        step: usize,
    ) -> (Verdict, Inspector) {
        let mut inspector = new_inspector(settings, &name("a.example"));
        let hello_len = first_message_records(c2s).unwrap_or(c2s.len());
        let (first, rest) = c2s.split_at(hello_len);
        let mut verdict = inspector.client_bytes(first);
        let feeds: [(&[u8], bool); 2] = [(s2c, true), (rest, false)];
        for (bytes, server) in feeds {
            for chunk in bytes.chunks(step) {
                if verdict.is_final() {
                    return (verdict, inspector);
                }
                assert_eq!(verdict, Verdict::Following);
                verdict = if server {
                    inspector.server_bytes(chunk)
                } else {
                    inspector.client_bytes(chunk)
                };
            }
        }
        (verdict, inspector)
    }

    /// The verdict for an exchange fed in several orders, which must all agree.
    fn follow(settings: &TlsSettings, name: &str) -> Verdict {
        let (c2s, s2c) = exchange(name);
        let (want, _) = follow_realistic(settings, &c2s, &s2c, 1 << 20);
        for step in [1, 3, 100] {
            let (got, _) = follow_realistic(settings, &c2s, &s2c, step);
            assert_eq!(got, want, "{name} in chunks of {step}");
        }
        // All of the client's bytes before any of the server's.
        assert_eq!(
            judge(settings, &name_host(), &c2s, &s2c),
            want,
            "{name}: client first"
        );
        // After the hello, alternating single bytes. (Server bytes before the hello is judged
        // are refused: see `final_verdicts_stick`.)
        let mut inspector = new_inspector(settings, &name_host());
        let hello_len = first_message_records(&c2s).unwrap_or(c2s.len());
        let (first, c2s) = c2s.split_at(hello_len);
        let mut got = inspector.client_bytes(first);
        for i in 0..c2s.len().max(s2c.len()) {
            if let Some(b) = c2s.get(i) {
                got = inspector.client_bytes(std::slice::from_ref(b));
            }
            if let Some(b) = s2c.get(i) {
                if !got.is_final() {
                    got = inspector.server_bytes(std::slice::from_ref(b));
                }
            }
            if got.is_final() {
                break;
            }
        }
        assert_eq!(got, want, "{name}: interleaved bytes");
        want
    }

    fn name_host() -> Host {
        name("a.example")
    }

    #[test]
    fn client_certificate_allowed() {
        let subject = CertCheck::Subject("CN=agent01,O=Contoso".into());
        let want = allow(TlsVersion::Tls12, Some("a.example"), subject);
        for list in [
            &["CN=agent01"][..],
            &["CN=agent01, O=Contoso"],
            &["CN=x", "cn=agent01"],
        ] {
            let s = with_certs(list, Tls13Policy::Deny);
            assert_eq!(follow(&s, "tls12_agent01"), want, "{list:?}");
            // The client offered 1.3 too; the server picked 1.2.
            assert_eq!(follow(&s, "downgrade_agent01"), want, "{list:?}");
        }
        let s = with_certs(&["CN=agent01"], Tls13Policy::Deny);
        let (c2s, s2c) = exchange("tls12_agent01");
        let (_, inspector) = follow_realistic(&s, &c2s, &s2c, 1 << 20);
        assert!(inspector.certificate_requested());
    }

    #[test]
    fn client_certificate_refused() {
        let s = with_certs(&["CN=agent01"], Tls13Policy::Allow);
        assert_eq!(
            follow(&s, "tls12_intruder"),
            deny(Reason::ClientCert {
                subject: "CN=intruder".into()
            })
        );
        let s = with_certs(
            &["CN=agent02", "O=Contoso", "CN=Agent01"],
            Tls13Policy::Allow,
        );
        let refused = deny(Reason::ClientCert {
            subject: "CN=agent01,O=Contoso".into(),
        });
        assert_eq!(follow(&s, "tls12_agent01"), refused);
        assert_eq!(follow(&s, "downgrade_agent01"), refused);
        let text = Reason::ClientCert {
            subject: "CN=intruder".into(),
        }
        .to_string();
        assert_eq!(text, "Invalid client certificate: CN=intruder");
    }

    #[test]
    fn client_certificate_missing() {
        let s = with_certs(&["CN=agent01"], Tls13Policy::Allow);
        // An empty Certificate message.
        assert_eq!(follow(&s, "tls12_nocert"), deny(Reason::ClientCertMissing));
        // The server never asked, so the client sent no Certificate before its CCS.
        assert_eq!(
            follow(&s, "tls12_norequest"),
            deny(Reason::ClientCertMissing)
        );
        let (c2s, s2c) = exchange("tls12_norequest");
        let (_, inspector) = follow_realistic(&s, &c2s, &s2c, 1 << 20);
        assert!(!inspector.certificate_requested());
    }

    #[test]
    fn client_certificate_tls13_policy() {
        let allow13 = with_certs(&["CN=agent01"], Tls13Policy::Allow);
        let deny13 = with_certs(&["CN=agent01"], Tls13Policy::Deny);
        // Offered 1.3 and 1.2: followed to the ServerHello, which picks 1.3.
        let want = allow(TlsVersion::Tls13, Some("a.example"), CertCheck::Tls13Policy);
        assert_eq!(follow(&allow13, "tls13_agent01"), want);
        assert_eq!(
            follow(&deny13, "tls13_agent01"),
            deny(Reason::ClientCertTls13)
        );
        // Offered only 1.3: judged from the hello alone.
        let only13 = fixture("hello_tls13.bin");
        assert_needs_all(&allow13, &name_host(), &only13, &want);
        assert_needs_all(
            &deny13,
            &name_host(),
            &only13,
            &deny(Reason::ClientCertTls13),
        );
        // Offered 1.3 and 1.2 but min_version 1.3: only 1.3 is possible.
        let floor13 = TlsSettings {
            min_version: TlsVersion::Tls13,
            ..deny13.clone()
        };
        let both = fixture("hello_default.bin");
        assert_eq!(
            hello(&floor13, &name_host(), &both),
            deny(Reason::ClientCertTls13)
        );
        // With min_version 1.2 it is followed.
        assert_eq!(hello(&deny13, &name_host(), &both), Verdict::Following);
        // A HelloRetryRequest selecting 1.3 settles it too.
        let mut inspector = new_inspector(&allow13, &name_host());
        assert_eq!(inspector.client_bytes(&both), Verdict::Following);
        assert_eq!(
            inspector.server_bytes(&server_hello(0x0303, Some(0x0304))),
            want
        );
    }

    #[test]
    fn following_checks_the_negotiated_version() {
        let s = TlsSettings {
            min_version: TlsVersion::Tls11,
            ..with_certs(&["CN=agent01"], Tls13Policy::Deny)
        };
        let both = fixture("hello_default.bin");
        for (legacy, want) in [
            (0x0301, deny(Reason::TlsVersion(TlsVersion::Tls10))),
            (0x0300, deny(Reason::TlsVersion(TlsVersion::Ssl3))),
            (0x0302, Verdict::Following),
            (0x0303, Verdict::Following),
        ] {
            let mut inspector = new_inspector(&s, &name_host());
            assert_eq!(inspector.client_bytes(&both), Verdict::Following);
            assert_eq!(
                inspector.server_bytes(&server_hello(legacy, None)),
                want,
                "{legacy:#x}"
            );
        }
        // A malformed ServerHello, or a server whose first message is something else.
        let mut inspector = new_inspector(&s, &name_host());
        inspector.client_bytes(&both);
        assert_eq!(
            inspector.server_bytes(&server_hello(0x0303, Some(0x0399))),
            parse(ParseError::ServerHello)
        );
        let mut inspector = new_inspector(&s, &name_host());
        inspector.client_bytes(&both);
        assert_eq!(
            inspector.server_bytes(b"\x16\x03\x03\x00\x04\x0b\x00\x00\x00"),
            parse(ParseError::UnexpectedMessage)
        );
        let mut inspector = new_inspector(&s, &name_host());
        inspector.client_bytes(&both);
        assert_eq!(
            inspector.server_bytes(b"HTTP/1.1 400"),
            parse(ParseError::RecordType)
        );
        // A server alert instead of a ServerHello: no verdict; the engine closes on EOF.
        let mut inspector = new_inspector(&s, &name_host());
        inspector.client_bytes(&both);
        assert_eq!(
            inspector.server_bytes(b"\x15\x03\x03\x00\x02\x02\x46"),
            Verdict::Following
        );
        assert_eq!(
            inspector.client_bytes(&[20, 3, 3, 0, 1, 1]),
            Verdict::Following
        );
    }

    #[test]
    fn following_is_bounded() {
        let s = TlsSettings {
            max_hello_bytes: 2048,
            ..with_certs(&["CN=agent01"], Tls13Policy::Deny)
        };
        let both = fixture("hello_default.bin");
        // The client keeps sending handshake records without ever finishing.
        let mut inspector = new_inspector(&s, &name_host());
        assert_eq!(inspector.client_bytes(&both), Verdict::Following);
        let mut message = vec![0x10, 0x00, 0x03, 0xf0];
        message.extend_from_slice(&[0; 1008]);
        let filler = records(&message, 1 << 14, 0x0303);
        assert_eq!(filler.len(), 1017);
        assert_eq!(inspector.client_bytes(&filler), Verdict::Following);
        assert_eq!(inspector.client_bytes(&filler), Verdict::Following);
        assert_eq!(inspector.client_bytes(&filler), parse(ParseError::TooLarge));
        // Or sends data after its CCS while the server has not answered.
        let mut inspector = new_inspector(&s, &name_host());
        inspector.client_bytes(&both);
        assert_eq!(
            inspector.client_bytes(&[20, 3, 3, 0, 1, 1]),
            Verdict::Following
        );
        assert_eq!(inspector.client_bytes(&[0x17; 2000]), Verdict::Following);
        assert_eq!(
            inspector.client_bytes(&[0x17; 100]),
            parse(ParseError::TooLarge)
        );
        // The server's bytes are bounded until its ServerHello is complete.
        let mut inspector = new_inspector(&s, &name_host());
        inspector.client_bytes(&both);
        assert_eq!(
            inspector.server_bytes(b"\x16\x03\x03\x00\x04\x02\x00\x10\x00"),
            parse(ParseError::TooLarge)
        );
        // After the ServerHello nothing is buffered, so a large server flight is fine.
        let mut inspector = new_inspector(&s, &name_host());
        inspector.client_bytes(&both);
        inspector.server_bytes(&server_hello(0x0303, None));
        let mut message = vec![11, 0x00, 0x13, 0x88];
        message.extend_from_slice(&[0; 5000]);
        let big = records(&message, 4000, 0x0303);
        assert_eq!(inspector.server_bytes(&big), Verdict::Following);
    }

    #[test]
    fn a_followed_verdict_does_not_depend_on_where_the_reads_end() {
        let s = TlsSettings {
            max_hello_bytes: 2048,
            ..with_certs(&["CN=agent01"], Tls13Policy::Deny)
        };
        let both = fixture("hello_default.bin");
        let ccs = [20, 3, 3, 0, 1, 1];
        let missing = deny(Reason::ClientCertMissing);
        // Server first: the client's CCS settles it; what follows in the same read (over the
        // budget here) is not counted against a verdict already reached.
        let mut one_read = ccs.to_vec();
        one_read.extend_from_slice(&[0x17; 3000]);
        for reads in [vec![&one_read[..]], vec![&ccs[..], &one_read[ccs.len()..]]] {
            let mut inspector = new_inspector(&s, &name_host());
            assert_eq!(inspector.client_bytes(&both), Verdict::Following);
            inspector.server_bytes(&server_hello(0x0303, None));
            for read in reads {
                inspector.client_bytes(read);
            }
            assert_eq!(inspector.verdict(), missing, "server first");
        }
        // Client first: the ServerHello settles it; a bad record after it in the same read
        // comes after the verdict.
        let hello = server_hello(0x0303, None);
        let mut one_read = hello.clone();
        one_read.extend_from_slice(&[0xff, 3, 3, 0, 0]);
        for reads in [
            vec![&one_read[..]],
            vec![&hello[..], &one_read[hello.len()..]],
        ] {
            let mut inspector = new_inspector(&s, &name_host());
            assert_eq!(inspector.client_bytes(&both), Verdict::Following);
            assert_eq!(inspector.client_bytes(&ccs), Verdict::Following);
            for read in reads {
                inspector.server_bytes(read);
            }
            assert_eq!(inspector.verdict(), missing, "client first");
        }
    }

    #[test]
    fn malformed_client_certificates() {
        let s = with_certs(&["CN=agent01"], Tls13Policy::Deny);
        let both = fixture("hello_default.bin");
        let cases: [(&[u8], ParseError); 2] = [
            // A Certificate message whose list length is wrong.
            (
                b"\x16\x03\x03\x00\x0a\x0b\x00\x00\x06\x00\x00\x04\x00\x00\x01\x00",
                ParseError::Certificate,
            ),
            // A one-byte "certificate" that is not DER.
            (
                b"\x16\x03\x03\x00\x0b\x0b\x00\x00\x07\x00\x00\x04\x00\x00\x01\x30",
                ParseError::X509,
            ),
        ];
        for (certificate, error) in cases {
            let mut inspector = new_inspector(&s, &name_host());
            assert_eq!(inspector.client_bytes(&both), Verdict::Following);
            assert_eq!(
                inspector.client_bytes(certificate),
                Verdict::Following,
                "{error:?}"
            );
            assert_eq!(
                inspector.server_bytes(&server_hello(0x0303, None)),
                parse(error)
            );
        }
        // The real agent01 certificate with one byte after its DER, inside its entry.
        let (c2s, _) = exchange("tls12_agent01");
        let record = &c2s[first_message_records(&c2s).unwrap_or(0)..];
        let message = &record[5..5 + usize::from(u16::from_be_bytes([record[3], record[4]]))];
        assert_eq!(message[0], 11, "the Certificate message");
        let u24 = |b: &[u8]| usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
        let der = &message[10..10 + u24(&message[7..10])];
        let be24 = |n: usize| u32::try_from(n).unwrap_or(0).to_be_bytes()[1..].to_vec();
        let mut entry = be24(der.len() + 1);
        entry.extend_from_slice(der);
        entry.push(0);
        let mut body = be24(entry.len());
        body.extend(entry);
        let mut padded = vec![11];
        padded.extend(be24(body.len()));
        padded.extend(body);
        let subject = CertCheck::Subject("CN=agent01,O=Contoso".into());
        for (certificate, want) in [
            (
                message.to_vec(),
                allow(TlsVersion::Tls12, Some("a.example"), subject),
            ),
            (padded, parse(ParseError::X509)),
        ] {
            let mut inspector = new_inspector(&s, &name_host());
            inspector.client_bytes(&both);
            inspector.server_bytes(&server_hello(0x0303, None));
            let certificate = records(&certificate, 1 << 14, 0x0303);
            assert_eq!(inspector.client_bytes(&certificate), want);
        }
        // Records on the client side are still checked while following.
        let mut inspector = new_inspector(&s, &name_host());
        inspector.client_bytes(&both);
        assert_eq!(
            inspector.client_bytes(b"\x16\x04"),
            parse(ParseError::RecordVersion)
        );
    }

    #[test]
    fn client_alerts_are_not_an_answer() {
        let s = with_certs(&["CN=agent01"], Tls13Policy::Deny);
        let mut inspector = new_inspector(&s, &name_host());
        inspector.client_bytes(&fixture("hello_default.bin"));
        assert_eq!(
            inspector.server_bytes(&server_hello(0x0303, None)),
            Verdict::Following
        );
        // A warning alert, then the certificate after all.
        assert_eq!(
            inspector.client_bytes(b"\x15\x03\x03\x00\x02\x01\x00"),
            Verdict::Following
        );
        let (c2s, _) = exchange("tls12_agent01");
        let hello_len = first_message_records(&c2s).unwrap_or(0);
        let want = allow(
            TlsVersion::Tls12,
            Some("a.example"),
            CertCheck::Subject("CN=agent01,O=Contoso".into()),
        );
        assert_eq!(inspector.client_bytes(&c2s[hello_len..]), want);
        // Application data before any certificate ends the plaintext handshake.
        let mut inspector = new_inspector(&s, &name_host());
        inspector.client_bytes(&fixture("hello_default.bin"));
        inspector.server_bytes(&server_hello(0x0303, None));
        assert_eq!(
            inspector.client_bytes(b"\x17\x03\x03\x00\x01\x00"),
            deny(Reason::ClientCertMissing)
        );
    }

    #[test]
    fn reasons_labels_and_events() {
        let reasons = [
            (Reason::TlsVersion(TlsVersion::Ssl3), "tls_version", 106),
            (Reason::Parse(ParseError::TooLarge), "tls_parse", 402),
            (Reason::SniMissing, "sni_missing", 105),
            (
                Reason::SniMismatch {
                    sni: "a".into(),
                    host: "b".into(),
                },
                "sni_mismatch",
                105,
            ),
            (
                Reason::ClientCert {
                    subject: "CN=x".into(),
                },
                "client_cert",
                105,
            ),
            (Reason::ClientCertMissing, "client_cert", 105),
            (Reason::ClientCertTls13, "client_cert", 105),
        ];
        for (reason, label, event) in reasons {
            assert_eq!(reason.label(), label);
            assert_eq!(reason.event_id(), event);
            assert!(Reason::LABELS.contains(&label));
            assert!(!reason.to_string().is_empty());
        }
        assert_eq!(
            Reason::TlsVersion(TlsVersion::Ssl3).to_string(),
            "unsupported TLS/SSL protocol version SSLv3"
        );
        let names: Vec<&str> = TlsVersion::ALL.iter().map(|v| v.as_str()).collect();
        assert_eq!(names, ["SSLv2", "SSLv3", "1.0", "1.1", "1.2", "1.3"]);
        assert!(TlsVersion::ALL.windows(2).all(|w| w[0] < w[1]));
        for v in TlsVersion::ALL {
            let code = match v {
                TlsVersion::Ssl2 => 0x0002,
                other => 0x0300 + other as u16 - 1,
            };
            assert_eq!(TlsVersion::from_wire(code), Some(v));
        }
        assert_eq!(TlsVersion::from_wire(0x0305), None);
        assert_eq!(ParseError::TooLarge.as_str(), "too_large");
    }

    #[test]
    fn peer_strings_in_reasons_are_clipped() {
        let long = "s".repeat(2000);
        let m = Reason::SniMismatch {
            sni: long.clone(),
            host: format!("{long}.example"),
        }
        .to_string();
        assert_eq!(m.matches(events::field::ELLIPSIS).count(), 2, "{m}");
        assert!(
            m.len() < 2 * events::field::MAX_FIELD_BYTES + 60,
            "{}",
            m.len()
        );
        let c = Reason::ClientCert {
            subject: format!("CN={long}"),
        }
        .to_string();
        assert!(c.starts_with("Invalid client certificate: CN=sss"));
        assert!(c.ends_with(events::field::ELLIPSIS));
        assert_eq!(
            c.len(),
            "Invalid client certificate: ".len() + events::field::MAX_FIELD_BYTES
        );
        let short = Reason::ClientCert {
            subject: "CN=agent02".into(),
        };
        assert_eq!(short.to_string(), "Invalid client certificate: CN=agent02");
    }

    /// Captures fresh handshakes from the local openssl and checks the verdicts, so that the
    /// fixtures cannot drift from what a real stack sends. Skips when openssl is missing.
    #[test]
    fn live_openssl_exchanges() {
        if !openssl_available() {
            return;
        }
        let dir = scratch_dir("live");
        if let Err(e) = make_pki(&dir) {
            eprintln!("skipping: cannot make a test PKI: {e}");
            return;
        }
        let s = with_certs(&["CN=agent01"], Tls13Policy::Deny);
        let subject = CertCheck::Subject("CN=agent01,O=Contoso".into());
        let cases = [
            (
                "tls12_agent01",
                allow(TlsVersion::Tls12, Some("a.example"), subject),
            ),
            (
                "tls12_intruder",
                deny(Reason::ClientCert {
                    subject: "CN=intruder".into(),
                }),
            ),
            ("tls12_nocert", deny(Reason::ClientCertMissing)),
            ("tls13_agent01", deny(Reason::ClientCertTls13)),
        ];
        for (name, want) in cases {
            let Some((_, server, client)) = EXCHANGES.iter().find(|e| e.0 == name) else {
                panic!("no exchange {name}");
            };
            let (c2s, s2c) = match capture_exchange(&dir, server, client) {
                Ok(captured) => captured,
                Err(e) => panic!("{name}: {e}"),
            };
            let (got, _) = follow_realistic(&s, &c2s, &s2c, 1 << 20);
            assert_eq!(got, want, "{name}");
        }
        for (file, args) in HELLOS {
            // Builds without TLS 1.0/1.1 cannot send every one of these.
            let bytes = match capture_client_hello(args) {
                Ok(bytes) => bytes,
                Err(e) => {
                    eprintln!("skipping {file}: {e}");
                    continue;
                }
            };
            let lax = TlsSettings {
                min_version: TlsVersion::Tls10,
                require_sni: false,
                ..settings()
            };
            let verdict = hello(&lax, &name_host(), &bytes);
            assert_eq!(verdict, hello(&lax, &name_host(), &fixture(file)), "{file}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
