//! Sans-IO parser for the head of an HTTP/1.x `CONNECT` request.
//!
//! The engine calls [`parse_head`] on everything it has read so far; the parser is stateless, so
//! a head split across any number of reads gives the same answer as the head read in one go. The
//! request line is parsed by hand so that a wrong method or a binary first line is refused as soon
//! as it can be told apart, without waiting for the rest of the head; the header section is
//! delimited here (bare LF and obs-fold are refused on sight) and then validated with `httparse`.
//!
//! Only the request target (the authority) is turned into owned data; headers stay in the
//! caller's buffer and can be looked up with [`header`].

use std::fmt;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::response::Status;

/// Most header fields accepted in one head; one more is [`HeadError::TooLarge`].
pub const MAX_HEADERS: usize = 64;

/// Longest request target that can be valid: a 253-byte name, its trailing dot, `:` and a
/// five-digit port. A longer target is refused before its end is seen.
const MAX_TARGET_LEN: usize = 253 + 1 + 1 + 5;

/// Longest DNS name (without the trailing dot).
const MAX_NAME_LEN: usize = 253;

/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// The host of a CONNECT authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name: ASCII lower-case, without a trailing dot, labels of `[a-z0-9-_]`.
    Name(String),
    /// A strict dotted-quad IPv4 literal.
    V4(Ipv4Addr),
    /// A bracketed IPv6 literal (brackets removed; zone ids are refused).
    V6(Ipv6Addr),
}

impl Host {
    /// The text the policy matches against: the normalised name as is, an address in its
    /// canonical form without brackets.
    pub fn as_policy_str(&self) -> String {
        match self {
            Host::Name(name) => name.clone(),
            Host::V4(addr) => addr.to_string(),
            Host::V6(addr) => addr.to_string(),
        }
    }
}

/// For logs: a name or IPv4 address as is, an IPv6 address in brackets (`[::1]`).
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::V4(addr) => write!(f, "{addr}"),
            Host::V6(addr) => write!(f, "[{addr}]"),
        }
    }
}

/// The `host:port` request target of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: Host,
    pub port: u16,
}

/// `host:port`, or `[v6]:port`.
impl fmt::Display for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// The HTTP version of the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A complete, valid CONNECT head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The request target; the only input to the policy.
    pub authority: Authority,
    pub version: Version,
    /// Bytes up to and including the final CRLFCRLF. Bytes after it are early tunnel data.
    pub head_len: usize,
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// A well-formed method token other than `CONNECT` (methods are case-sensitive).
    NotConnect,
    /// Not a valid CONNECT head; the reason is for logs and metrics only.
    Malformed(Malformed),
    /// No complete head within the limit, a longer head, or more than [`MAX_HEADERS`] fields.
    TooLarge,
}

impl HeadError {
    /// Short snake_case reason for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            HeadError::NotConnect => "not_connect",
            HeadError::Malformed(reason) => reason.as_str(),
            HeadError::TooLarge => "too_large",
        }
    }

    /// The canned response the client gets for this refusal.
    pub fn status(&self) -> Status {
        match self {
            HeadError::NotConnect => Status::MethodNotAllowed,
            HeadError::Malformed(_) => Status::BadRequest,
            HeadError::TooLarge => Status::HeaderTooLarge,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The reason a head is [`HeadError::Malformed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The method is empty or not a token (binary data, a TLS ClientHello, leading CRLF).
    Method,
    /// Not `METHOD SP target SP version CRLF`: double spaces, empty target, junk after version.
    RequestLine,
    /// The target is not in authority form: a path, a scheme, userinfo, CTLs, too long.
    Target,
    /// The host is not a valid DNS name, strict IPv4 literal or bracketed IPv6 literal.
    Host,
    /// The port is missing, zero, signed, has leading zeros or exceeds 65535.
    Port,
    /// The version is missing or not `HTTP/1.0` / `HTTP/1.1`.
    Version,
    /// A line ends in LF without CR.
    BareLf,
    /// An obsolete folded header line (a line starting with SP or HTAB).
    ObsFold,
    /// A header line `httparse` refuses: whitespace in or before a name, CTL in a value.
    Header,
    /// `Content-Length` or `Transfer-Encoding` on a CONNECT.
    Framing,
    /// More than one `Host` header.
    DuplicateHost,
    /// More than one `Proxy-Authorization` header: which one is checked would be a guess, and
    /// a guess about credentials is not ours to make.
    DuplicateProxyAuthorization,
}

impl Malformed {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [Malformed; 12] = [
        Malformed::Method,
        Malformed::RequestLine,
        Malformed::Target,
        Malformed::Host,
        Malformed::Port,
        Malformed::Version,
        Malformed::BareLf,
        Malformed::ObsFold,
        Malformed::Header,
        Malformed::Framing,
        Malformed::DuplicateHost,
        Malformed::DuplicateProxyAuthorization,
    ];

    /// Short snake_case reason for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Malformed::Method => "method",
            Malformed::RequestLine => "request_line",
            Malformed::Target => "target",
            Malformed::Host => "host",
            Malformed::Port => "port",
            Malformed::Version => "version",
            Malformed::BareLf => "bare_lf",
            Malformed::ObsFold => "obs_fold",
            Malformed::Header => "header",
            Malformed::Framing => "framing",
            Malformed::DuplicateHost => "duplicate_host",
            Malformed::DuplicateProxyAuthorization => "duplicate_proxy_authorization",
        }
    }
}

impl From<Malformed> for HeadError {
    fn from(reason: Malformed) -> Self {
        HeadError::Malformed(reason)
    }
}

/// Parses the CONNECT head at the start of `buf`.
///
/// Returns `Ok(None)` when the head is incomplete and more bytes should be read; this only happens
/// while `buf.len() < max_header_bytes`. Only the first `max_header_bytes` bytes are examined: a
/// head that does not end within them is [`HeadError::TooLarge`].
///
/// Decisions are made left to right, each at the first byte that settles it, so every prefix of an
/// input gives either `Ok(None)` or the same result as the whole input:
/// - a method other than `CONNECT` is [`HeadError::NotConnect`] as soon as its trailing space is
///   seen; a non-token byte in the method is [`Malformed::Method`] on sight;
/// - the target and version are judged as soon as they end; bare LF and obs-fold lines as soon as
///   they are seen;
/// - everything `httparse` checks, the header count, framing headers and duplicate `Host` or
///   `Proxy-Authorization` headers are judged once the terminating empty line has arrived.
///
/// The `Host` header is not compared with the authority: a `Host` that differs from the request
/// target is accepted and ignored, and policy decisions use only [`Head::authority`]. At most one
/// `Host` header is allowed.
pub fn parse_head(buf: &[u8], max_header_bytes: usize) -> Result<Option<Head>, HeadError> {
    let window = buf.get(..max_header_bytes).unwrap_or(buf);
    let incomplete = if buf.len() >= max_header_bytes {
        Err(HeadError::TooLarge)
    } else {
        Ok(None)
    };
    let Some(line) = request_line(window)? else {
        return incomplete;
    };
    let Some(head_len) = header_section_end(window, line.len)? else {
        return incomplete;
    };
    let head = window.get(..head_len).ok_or(Malformed::Header)?;
    check_headers(head)?;
    Ok(Some(Head {
        authority: line.target.to_authority(),
        version: line.version,
        head_len,
    }))
}

/// The value of the first header called `name` (ASCII case-insensitive) in the head `head` was
/// parsed from, trimmed of surrounding whitespace; `None` if absent or if `buf` is not that buffer.
///
/// This re-parses the head, so it belongs on the cold path (for example reading
/// `Proxy-Authorization` once per connection).
pub fn header<'a>(buf: &'a [u8], head: &Head, name: &str) -> Option<&'a [u8]> {
    let bytes = buf.get(..head.head_len)?;
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(bytes, &mut slots) {
        Ok(httparse::Status::Complete(_)) => req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value),
        _ => None,
    }
}

/// A complete, valid request line, still borrowing from the buffer.
struct RequestLine<'a> {
    target: Target<'a>,
    version: Version,
    /// Bytes up to and including its CRLF.
    len: usize,
}

/// Parses `CONNECT SP authority SP HTTP/1.x CRLF`; `Ok(None)` if it has not ended yet.
fn request_line(buf: &[u8]) -> Result<Option<RequestLine<'_>>, HeadError> {
    let Some(method_len) = method_len(buf)? else {
        return Ok(None);
    };
    if buf.get(..method_len) != Some(b"CONNECT".as_slice()) {
        return Err(HeadError::NotConnect);
    }
    let target_start = method_len + 1;
    let Some(target_len) = target_len(buf.get(target_start..).unwrap_or_default())? else {
        return Ok(None);
    };
    let target_end = target_start + target_len;
    let target = buf.get(target_start..target_end).unwrap_or_default();
    let target = parse_target(target)?;
    let version_start = target_end + 1;
    let Some((version, version_len)) = version(buf.get(version_start..).unwrap_or_default())?
    else {
        return Ok(None);
    };
    Ok(Some(RequestLine {
        target,
        version,
        len: version_start + version_len,
    }))
}

/// Length of the method token, once the space after it has arrived.
fn method_len(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    for (i, &b) in buf.iter().enumerate() {
        if b == b' ' {
            return if i == 0 {
                Err(Malformed::Method)
            } else {
                Ok(Some(i))
            };
        }
        if !is_tchar(b) {
            return Err(Malformed::Method);
        }
    }
    Ok(None)
}

/// `tchar` of RFC 9110 section 5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Length of the request target, once the space after it has arrived. Only visible ASCII is
/// allowed; an end of line before the space means the version is missing.
fn target_len(buf: &[u8]) -> Result<Option<usize>, Malformed> {
    for (i, &b) in buf.iter().enumerate() {
        match b {
            b' ' if i == 0 => return Err(Malformed::RequestLine),
            b' ' => return Ok(Some(i)),
            b'\r' | b'\n' => return Err(Malformed::Version),
            _ if !b.is_ascii_graphic() => return Err(Malformed::Target),
            _ if i >= MAX_TARGET_LEN => return Err(Malformed::Target),
            _ => {}
        }
    }
    Ok(None)
}

/// Parses `HTTP/1.0` or `HTTP/1.1` and the CRLF after it; returns the version and the length
/// including the CRLF.
fn version(buf: &[u8]) -> Result<Option<(Version, usize)>, Malformed> {
    const PREFIX: &[u8] = b"HTTP/1.";
    for (&got, &want) in buf.iter().zip(PREFIX) {
        if got != want {
            return Err(Malformed::Version);
        }
    }
    let version = match buf.get(PREFIX.len()) {
        None => return Ok(None),
        Some(b'0') => Version::Http10,
        Some(b'1') => Version::Http11,
        Some(_) => return Err(Malformed::Version),
    };
    let eol = PREFIX.len() + 1;
    match buf.get(eol) {
        None => Ok(None),
        Some(b'\r') => match buf.get(eol + 1) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((version, eol + 2))),
            Some(_) => Err(Malformed::RequestLine),
        },
        Some(b'\n') => Err(Malformed::BareLf),
        Some(b' ' | b'\t') => Err(Malformed::RequestLine),
        Some(_) => Err(Malformed::Version),
    }
}

/// Finds the end of the header section that starts at `start` (just after the request line):
/// the offset just past the empty line. Refuses bare LF and lines starting with whitespace.
fn header_section_end(buf: &[u8], start: usize) -> Result<Option<usize>, Malformed> {
    let mut line_start = start;
    loop {
        let rest = buf.get(line_start..).unwrap_or_default();
        match rest.first() {
            None => return Ok(None),
            // Whitespace before the first field name, or an obs-fold continuation line.
            Some(b' ' | b'\t') if line_start == start => return Err(Malformed::Header),
            Some(b' ' | b'\t') => return Err(Malformed::ObsFold),
            Some(_) => {}
        }
        let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
            return Ok(None);
        };
        let cr = lf.checked_sub(1).and_then(|i| rest.get(i));
        if cr != Some(&b'\r') {
            return Err(Malformed::BareLf);
        }
        if lf == 1 {
            return Ok(Some(line_start + 2));
        }
        line_start += lf + 1;
    }
}

/// Validates a complete head with `httparse` and applies the CONNECT header rules.
fn check_headers(head: &[u8]) -> Result<(), HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut slots) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        Ok(_) => return Err(Malformed::Header.into()),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) => return Err(Malformed::Version.into()),
        Err(httparse::Error::Token) => return Err(Malformed::RequestLine.into()),
        Err(_) => return Err(Malformed::Header.into()),
    }
    let mut hosts = 0u32;
    let mut proxy_auths = 0u32;
    for field in req.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            return Err(Malformed::Framing.into());
        }
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            if hosts > 1 {
                return Err(Malformed::DuplicateHost.into());
            }
        }
        if name.eq_ignore_ascii_case("proxy-authorization") {
            proxy_auths += 1;
            if proxy_auths > 1 {
                return Err(Malformed::DuplicateProxyAuthorization.into());
            }
        }
    }
    Ok(())
}

/// A validated authority-form target. The name stays borrowed, so that the repeated calls on an
/// incomplete head allocate nothing; it is lower-cased into an [`Authority`] once the head is
/// complete.
struct Target<'a> {
    host: TargetHost<'a>,
    port: u16,
}

enum TargetHost<'a> {
    /// A valid name without its trailing dot, not yet lower-cased.
    Name(&'a [u8]),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Target<'_> {
    fn to_authority(&self) -> Authority {
        let host = match self.host {
            TargetHost::Name(name) => Host::Name(
                name.iter()
                    .map(|&b| char::from(b.to_ascii_lowercase()))
                    .collect(),
            ),
            TargetHost::V4(addr) => Host::V4(addr),
            TargetHost::V6(addr) => Host::V6(addr),
        };
        Authority {
            host,
            port: self.port,
        }
    }
}

/// Parses an authority-form target: `name:port`, `a.b.c.d:port` or `[v6]:port`.
fn parse_target(target: &[u8]) -> Result<Target<'_>, Malformed> {
    if target
        .iter()
        .any(|b| matches!(b, b'/' | b'@' | b'?' | b'#' | b'\\'))
    {
        return Err(Malformed::Target);
    }
    let (host, port) = if let Some(rest) = target.strip_prefix(b"[") {
        let close = rest
            .iter()
            .position(|&b| b == b']')
            .ok_or(Malformed::Host)?;
        let (inner, after) = rest.split_at(close);
        let host = parse_v6(inner)?;
        let port = match after {
            [b']', b':', port @ ..] => port,
            [b']'] => return Err(Malformed::Port),
            _ => return Err(Malformed::Target),
        };
        (host, port)
    } else {
        let colon = target
            .iter()
            .rposition(|&b| b == b':')
            .ok_or(Malformed::Port)?;
        let (host, port) = target.split_at(colon);
        (parse_host(host)?, port.get(1..).unwrap_or_default())
    };
    let port = parse_port(port)?;
    Ok(Target { host, port })
}

/// The inside of an IPv6 literal's brackets. `std` refuses zone ids and brackets.
fn parse_v6(inner: &[u8]) -> Result<TargetHost<'static>, Malformed> {
    std::str::from_utf8(inner)
        .ok()
        .and_then(|text| text.parse::<Ipv6Addr>().ok())
        .map(TargetHost::V6)
        .ok_or(Malformed::Host)
}

/// An unbracketed host: a strict IPv4 literal, else a DNS name that does not end in a numeric
/// label (so `127.1`, `2130706433`, `0x7f.1` and `0177.0.0.1` are refused, not resolved).
fn parse_host(host: &[u8]) -> Result<TargetHost<'_>, Malformed> {
    if let Some(addr) = parse_strict_v4(host) {
        return Ok(TargetHost::V4(addr));
    }
    let name = host.strip_suffix(b".").unwrap_or(host);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Malformed::Host);
    }
    let mut last = name;
    for label in name.split(|&b| b == b'.') {
        let valid = (1..=MAX_LABEL_LEN).contains(&label.len())
            && label
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(Malformed::Host);
        }
        last = label;
    }
    if is_numeric_label(last) {
        return Err(Malformed::Host);
    }
    Ok(TargetHost::Name(name))
}

/// Exactly four decimal parts of 0..=255, each without leading zeros.
fn parse_strict_v4(host: &[u8]) -> Option<Ipv4Addr> {
    let mut parts = host.split(|&b| b == b'.');
    let mut octets = [0u8; 4];
    for octet in &mut octets {
        *octet = parse_octet(parts.next()?)?;
    }
    match parts.next() {
        Some(_) => None,
        None => Some(Ipv4Addr::from(octets)),
    }
}

fn parse_octet(part: &[u8]) -> Option<u8> {
    if part.is_empty() || part.len() > 3 || (part.len() > 1 && part.first() == Some(&b'0')) {
        return None;
    }
    let mut value = 0u16;
    for &b in part {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u16::from(b - b'0');
    }
    u8::try_from(value).ok()
}

/// A label an IPv4 parser (WHATWG URL, `inet_aton`) would read as a number: all decimal digits,
/// or `0x` followed by hex digits.
fn is_numeric_label(label: &[u8]) -> bool {
    if let Some(hex) = label
        .strip_prefix(b"0x")
        .or_else(|| label.strip_prefix(b"0X"))
    {
        return hex.iter().all(u8::is_ascii_hexdigit);
    }
    label.iter().all(u8::is_ascii_digit)
}

/// Decimal 1..=65535 without sign or leading zeros.
fn parse_port(port: &[u8]) -> Result<u16, Malformed> {
    if port.is_empty() || port.len() > 5 || port.first() == Some(&b'0') {
        return Err(Malformed::Port);
    }
    let mut value = 0u32;
    for &b in port {
        if !b.is_ascii_digit() {
            return Err(Malformed::Port);
        }
        value = value * 10 + u32::from(b - b'0');
    }
    u16::try_from(value).map_err(|_| Malformed::Port)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 8192;

    type Parsed = Result<Option<Head>, HeadError>;

    fn name(host: &str, port: u16) -> Authority {
        Authority {
            host: Host::Name(host.to_owned()),
            port,
        }
    }

    fn v4(a: [u8; 4], port: u16) -> Authority {
        Authority {
            host: Host::V4(Ipv4Addr::from(a)),
            port,
        }
    }

    fn v6(text: &str, port: u16) -> Authority {
        Authority {
            host: Host::V6(text.parse().expect("test literal")),
            port,
        }
    }

    fn req(target: &str) -> Vec<u8> {
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes()
    }

    fn bad(reason: Malformed) -> Parsed {
        Err(HeadError::Malformed(reason))
    }

    /// Every prefix gives `Ok(None)` or the whole input's result, and once a prefix is decided
    /// every longer prefix gives the same result.
    fn assert_prefix_consistent(input: &[u8], max: usize) {
        let full = parse_head(input, max);
        let mut decided: Option<usize> = None;
        for n in 0..=input.len() {
            let got = parse_head(&input[..n], max);
            if got == Ok(None) {
                assert!(
                    decided.is_none(),
                    "prefix {n} undecided after {decided:?}: {:?}",
                    String::from_utf8_lossy(input)
                );
                assert!(n < max, "Ok(None) at {n} >= max {max}");
            } else {
                assert_eq!(
                    got,
                    full,
                    "prefix {n} of {:?} (max {max})",
                    String::from_utf8_lossy(input)
                );
                decided.get_or_insert(n);
            }
        }
    }

    /// Feeds the input in chunks of `step` the way the engine does and returns the first decision.
    fn feed(input: &[u8], step: usize, max: usize) -> Parsed {
        let mut end = 0;
        loop {
            end = (end + step).min(input.len());
            let got = parse_head(&input[..end], max);
            if got != Ok(None) || end == input.len() {
                return got;
            }
        }
    }

    #[test]
    fn accepts_valid_heads() {
        let typical = b"CONNECT ods.opinsights.azure.com:443 HTTP/1.1\r\n\
            Host: ods.opinsights.azure.com:443\r\n\
            User-Agent: AzureMonitorAgent/1.0\r\n\
            Proxy-Connection: Keep-Alive\r\n\r\n";
        let cases: Vec<(Vec<u8>, Authority, Version)> = vec![
            (
                typical.to_vec(),
                name("ods.opinsights.azure.com", 443),
                Version::Http11,
            ),
            (
                b"CONNECT a.example:443 HTTP/1.0\r\n\r\n".to_vec(),
                name("a.example", 443),
                Version::Http10,
            ),
            (
                req("ALLOWED.EXAMPLE.:443"),
                name("allowed.example", 443),
                Version::Http11,
            ),
            (req("[::1]:443"), v6("::1", 443), Version::Http11),
            (
                req("[2001:db8::1]:443"),
                v6("2001:db8::1", 443),
                Version::Http11,
            ),
            (
                req("[::ffff:192.0.2.1]:443"),
                v6("::ffff:192.0.2.1", 443),
                Version::Http11,
            ),
            (
                req("192.0.2.1:443"),
                v4([192, 0, 2, 1], 443),
                Version::Http11,
            ),
            (req("0.0.0.0:1"), v4([0, 0, 0, 0], 1), Version::Http11),
            (
                req("255.255.255.255:65535"),
                v4([255, 255, 255, 255], 65535),
                Version::Http11,
            ),
            (
                req("localhost:8080"),
                name("localhost", 8080),
                Version::Http11,
            ),
            (
                req("_dmarc.x-y.example:443"),
                name("_dmarc.x-y.example", 443),
                Version::Http11,
            ),
            (
                req("1e100.net:443"),
                name("1e100.net", 443),
                Version::Http11,
            ),
            (
                req("123.example:443"),
                name("123.example", 443),
                Version::Http11,
            ),
            (
                req("0x7f.example:443"),
                name("0x7f.example", 443),
                Version::Http11,
            ),
            (
                req(&format!("{}.example:443", "a".repeat(63))),
                name(&format!("{}.example", "a".repeat(63)), 443),
                Version::Http11,
            ),
            (
                req(&format!("{}:443", long_name(253))),
                name(&long_name(253), 443),
                Version::Http11,
            ),
            (
                req(&format!("{}.:443", long_name(253))),
                name(&long_name(253), 443),
                Version::Http11,
            ),
            // A Host header that differs from the authority is accepted and ignored.
            (
                b"CONNECT a.example:443 HTTP/1.1\r\nHost: evil.example\r\n\r\n".to_vec(),
                name("a.example", 443),
                Version::Http11,
            ),
            (
                b"CONNECT a.example:443 HTTP/1.1\r\nProxy-Authorization: Basic dTpw\r\n\
                  X-Empty:\r\nX-Obs-Text: caf\xc3\xa9\r\n\r\n"
                    .to_vec(),
                name("a.example", 443),
                Version::Http11,
            ),
        ];
        for (input, authority, version) in cases {
            let want = Ok(Some(Head {
                authority,
                version,
                head_len: input.len(),
            }));
            assert_eq!(
                parse_head(&input, MAX),
                want,
                "{:?}",
                String::from_utf8_lossy(&input)
            );
            for n in 0..input.len() {
                assert_eq!(parse_head(&input[..n], MAX), Ok(None), "prefix {n}");
            }
            for step in [1, 2, 3, 7, 64] {
                assert_eq!(feed(&input, step, MAX), want, "step {step}");
            }
        }
    }

    /// A dotted name of exactly `len` bytes made of 63-byte labels.
    fn long_name(len: usize) -> String {
        let mut out = String::new();
        while out.len() < len {
            if !out.is_empty() {
                out.push('.');
            }
            let label = (len - out.len()).min(63);
            out.push_str(&"b".repeat(label));
        }
        out
    }

    #[test]
    fn early_data_is_left_after_head() {
        let mut input = req("a.example:443");
        let head_len = input.len();
        input.extend_from_slice(b"\x16\x03\x01\x02\x00early");
        let head = parse_head(&input, MAX).expect("valid").expect("complete");
        assert_eq!(head.head_len, head_len);
        assert!(head.head_len < input.len());
        assert_prefix_consistent(&input, MAX);
    }

    #[test]
    fn refuses_other_methods_early() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"POST http://x/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"connect a.example:443 HTTP/1.1\r\n\r\n",
            b"Connect a.example:443 HTTP/1.1\r\n\r\n",
            b"CONNECTX a.example:443 HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        for input in cases {
            assert_eq!(parse_head(input, MAX), Err(HeadError::NotConnect));
            let space = input.iter().position(|&b| b == b' ').expect("space");
            assert_eq!(parse_head(&input[..space], MAX), Ok(None));
            assert_eq!(
                parse_head(&input[..=space], MAX),
                Err(HeadError::NotConnect)
            );
            assert_prefix_consistent(input, MAX);
        }
    }

    #[test]
    fn refuses_garbage_first_line_on_sight() {
        let client_hello: &[u8] = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
        assert_eq!(parse_head(&client_hello[..1], MAX), bad(Malformed::Method));
        let cases: &[&[u8]] = &[
            client_hello,
            b"\0\0\0\0",
            b"\r\nCONNECT a:443 HTTP/1.1\r\n\r\n",
            b" CONNECT a:443 HTTP/1.1\r\n\r\n",
            b"CONNECT\ta:443 HTTP/1.1\r\n\r\n",
            b"CONN\xc3\x89CT a:443 HTTP/1.1\r\n\r\n",
            b"GET\r\n\r\n",
            b"CONNECT\r\n\r\n",
        ];
        for input in cases {
            assert_eq!(parse_head(input, MAX), bad(Malformed::Method), "{input:?}");
            assert_prefix_consistent(input, MAX);
        }
    }

    #[test]
    fn refuses_bad_request_lines() {
        let cases: &[(&[u8], Malformed)] = &[
            (
                b"CONNECT  a.example:443 HTTP/1.1\r\n\r\n",
                Malformed::RequestLine,
            ),
            (
                b"CONNECT a.example:443  HTTP/1.1\r\n\r\n",
                Malformed::Version,
            ),
            (
                b"CONNECT a.example:443 HTTP/1.1 \r\n\r\n",
                Malformed::RequestLine,
            ),
            (
                b"CONNECT a.example:443 HTTP/1.1\rX\r\n\r\n",
                Malformed::RequestLine,
            ),
            (
                b"CONNECT a.example:443 HTTP/2.0\r\n\r\n",
                Malformed::Version,
            ),
            (
                b"CONNECT a.example:443 HTTP/0.9\r\n\r\n",
                Malformed::Version,
            ),
            (
                b"CONNECT a.example:443 HTTP/1.2\r\n\r\n",
                Malformed::Version,
            ),
            (
                b"CONNECT a.example:443 HTTP/1.10\r\n\r\n",
                Malformed::Version,
            ),
            (
                b"CONNECT a.example:443 http/1.1\r\n\r\n",
                Malformed::Version,
            ),
            (b"CONNECT a.example:443 HTTP/1\r\n\r\n", Malformed::Version),
            (b"CONNECT a.example:443\r\n\r\n", Malformed::Version),
            (b"CONNECT a.example:443\n\n", Malformed::Version),
            (b"CONNECT a.example:443 HTTP/1.1\n\n", Malformed::BareLf),
            (b"CONNECT a.example:443 HTTP/1.1\n\r\n", Malformed::BareLf),
        ];
        for (input, reason) in cases {
            assert_eq!(parse_head(input, MAX), bad(*reason), "{input:?}");
            assert_prefix_consistent(input, MAX);
        }
    }

    #[test]
    fn refuses_bad_targets() {
        let long_target = format!("{}:443", long_name(300));
        let cases: &[(&str, Malformed)] = &[
            ("a.example", Malformed::Port),
            ("[::1]", Malformed::Port),
            ("/", Malformed::Target),
            ("http://a.example:443", Malformed::Target),
            ("a.example:443/", Malformed::Target),
            ("user@a.example:443", Malformed::Target),
            ("user:pw@a.example:443", Malformed::Target),
            ("a.example:443?x", Malformed::Target),
            ("a.example:443#x", Malformed::Target),
            ("a\\b:443", Malformed::Target),
            ("[::1]x:443", Malformed::Target),
            (long_target.as_str(), Malformed::Target),
            // Hosts.
            (":443", Malformed::Host),
            ("[]:443", Malformed::Host),
            ("[[a]]:443", Malformed::Host),
            ("[::1:443", Malformed::Host),
            ("[fe80::1%25eth0]:443", Malformed::Host),
            ("[fe80::1%eth0]:443", Malformed::Host),
            ("[1.2.3.4]:443", Malformed::Host),
            ("[a.example]:443", Malformed::Host),
            ("::1:443", Malformed::Host),
            ("a.example:443:1", Malformed::Host),
            ("a%2eexample:443", Malformed::Host),
            ("a%:443", Malformed::Host),
            ("a]:443", Malformed::Host),
            (".:443", Malformed::Host),
            ("..:443", Malformed::Host),
            ("a..example:443", Malformed::Host),
            (".a.example:443", Malformed::Host),
            ("a.example..:443", Malformed::Host),
            ("a*.example:443", Malformed::Host),
            ("*.example:443", Malformed::Host),
            ("a,b:443", Malformed::Host),
            ("a\"b:443", Malformed::Host),
            ("2130706433:443", Malformed::Host),
            ("127.1:443", Malformed::Host),
            ("0x7f.1:443", Malformed::Host),
            ("0x7f000001:443", Malformed::Host),
            ("0x:443", Malformed::Host),
            ("0177.0.0.1:443", Malformed::Host),
            ("127.0.0.01:443", Malformed::Host),
            ("256.0.0.1:443", Malformed::Host),
            ("1.2.3.4.5:443", Malformed::Host),
            ("1.2.3:443", Malformed::Host),
            ("1.2.3.4.:443", Malformed::Host),
            ("example.123:443", Malformed::Host),
            // Ports.
            ("a.example:", Malformed::Port),
            ("a.example:0", Malformed::Port),
            ("a.example:007", Malformed::Port),
            ("a.example:0443", Malformed::Port),
            ("a.example:+443", Malformed::Port),
            ("a.example:-1", Malformed::Port),
            ("a.example:65536", Malformed::Port),
            ("a.example:100000", Malformed::Port),
            ("a.example:44x", Malformed::Port),
            ("[::1]:", Malformed::Port),
            ("[::1]:0", Malformed::Port),
        ];
        for (target, reason) in cases {
            let input = req(target);
            assert_eq!(parse_head(&input, MAX), bad(*reason), "{target:?}");
            assert_prefix_consistent(&input, MAX);
        }
        let too_long_label = format!("{}.example:443", "a".repeat(64));
        let too_long_name = format!("{}:443", long_name(254));
        for target in [too_long_label, too_long_name] {
            assert_eq!(parse_head(&req(&target), MAX), bad(Malformed::Host));
        }
    }

    #[test]
    fn refuses_ctl_and_space_in_target() {
        let cases: &[(&[u8], Malformed)] = &[
            (b"CONNECT a\0b:443 HTTP/1.1\r\n\r\n", Malformed::Target),
            (b"CONNECT a\tb:443 HTTP/1.1\r\n\r\n", Malformed::Target),
            (b"CONNECT a\x7fb:443 HTTP/1.1\r\n\r\n", Malformed::Target),
            (
                b"CONNECT \xc3\xa9.example:443 HTTP/1.1\r\n\r\n",
                Malformed::Target,
            ),
            (b"CONNECT a b:443 HTTP/1.1\r\n\r\n", Malformed::Port),
            (b"CONNECT a\rb:443 HTTP/1.1\r\n\r\n", Malformed::Version),
        ];
        for (input, reason) in cases {
            assert_eq!(parse_head(input, MAX), bad(*reason), "{input:?}");
            assert_prefix_consistent(input, MAX);
        }
    }

    #[test]
    fn refuses_bad_headers() {
        let line = "CONNECT a.example:443 HTTP/1.1\r\n";
        let cases: &[(&[u8], Parsed)] = &[
            (b"Content-Length: 5\r\n", bad(Malformed::Framing)),
            (b"content-length: 0\r\n", bad(Malformed::Framing)),
            (b"Transfer-Encoding: chunked\r\n", bad(Malformed::Framing)),
            (b"TRANSFER-ENCODING: identity\r\n", bad(Malformed::Framing)),
            (
                b"Host: a.example:443\r\nHost: b.example:443\r\n",
                bad(Malformed::DuplicateHost),
            ),
            (
                b"Host: a.example:443\r\nhost: a.example:443\r\n",
                bad(Malformed::DuplicateHost),
            ),
            (
                b"Proxy-Authorization: Basic YTpi\r\nProxy-Authorization: Basic Yzpk\r\n",
                bad(Malformed::DuplicateProxyAuthorization),
            ),
            (
                b"Proxy-Authorization: Basic YTpi\r\nX: y\r\nPROXY-AUTHORIZATION: Basic YTpi\r\n",
                bad(Malformed::DuplicateProxyAuthorization),
            ),
            (b" Host: a.example\r\n", bad(Malformed::Header)),
            (b"\tHost: a.example\r\n", bad(Malformed::Header)),
            (b"X: y\r\n Host: a.example\r\n", bad(Malformed::ObsFold)),
            (b"X: y\r\n\tHost: a.example\r\n", bad(Malformed::ObsFold)),
            (b"X-Long: a\r\n  continued\r\n", bad(Malformed::ObsFold)),
            (b"Host: a.example\n", bad(Malformed::BareLf)),
            (b"Host: a.example\r\n\n", bad(Malformed::BareLf)),
            (b"Host: a.example\r\nX: y\n\r\n", bad(Malformed::BareLf)),
            (b"X: a\0b\r\n", bad(Malformed::Header)),
            (b"X: \0\r\n", bad(Malformed::Header)),
            (b"X: a\x01b\r\n", bad(Malformed::Header)),
            (b"X: a\x7fb\r\n", bad(Malformed::Header)),
            (b"X: a\rb\r\n", bad(Malformed::Header)),
            (b"Host : a.example\r\n", bad(Malformed::Header)),
            (b"Host\t: a.example\r\n", bad(Malformed::Header)),
            (b"Ho st: a.example\r\n", bad(Malformed::Header)),
            (b"Host a.example\r\n", bad(Malformed::Header)),
            (b": a.example\r\n", bad(Malformed::Header)),
            (b"X\0: y\r\n", bad(Malformed::Header)),
            (b"\rX: y\r\n", bad(Malformed::Header)),
        ];
        for (fields, want) in cases {
            let mut input = line.as_bytes().to_vec();
            input.extend_from_slice(fields);
            if !input.ends_with(b"\n\n") && !input.ends_with(b"\n\r\n") {
                input.extend_from_slice(b"\r\n");
            }
            assert_eq!(
                parse_head(&input, MAX),
                *want,
                "{:?}",
                String::from_utf8_lossy(&input)
            );
            assert_prefix_consistent(&input, MAX);
        }
    }

    #[test]
    fn bare_lf_is_refused_before_the_head_ends() {
        let input = b"CONNECT a.example:443 HTTP/1.1\r\nX: y\n";
        assert_eq!(parse_head(input, MAX), bad(Malformed::BareLf));
        let input = b"CONNECT a.example:443 HTTP/1.1\r\nX: y\r\n\tz";
        assert_eq!(parse_head(input, MAX), bad(Malformed::ObsFold));
    }

    #[test]
    fn header_count_limit() {
        let mut ok = b"CONNECT a.example:443 HTTP/1.1\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            ok.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let mut over = ok.clone();
        over.extend_from_slice(b"X-Last: v\r\n\r\n");
        ok.extend_from_slice(b"\r\n");
        assert!(matches!(parse_head(&ok, MAX), Ok(Some(_))));
        assert_eq!(parse_head(&over, MAX), Err(HeadError::TooLarge));
        assert_prefix_consistent(&over, MAX);
    }

    #[test]
    fn size_limit() {
        let input = req("a.example:443");
        let len = input.len();
        // Exactly at the limit is fine; one byte less is too large once the limit is reached.
        assert!(matches!(parse_head(&input, len), Ok(Some(_))));
        assert_eq!(parse_head(&input, len - 1), Err(HeadError::TooLarge));
        assert_eq!(parse_head(&input[..len - 2], len - 1), Ok(None));
        assert_eq!(
            parse_head(&input[..len - 1], len - 1),
            Err(HeadError::TooLarge)
        );
        // With early data in the buffer, only the head counts.
        let mut with_data = input.clone();
        with_data.extend_from_slice(&[0u8; 100]);
        assert!(matches!(parse_head(&with_data, len), Ok(Some(_))));
        assert_eq!(parse_head(&with_data, len - 1), Err(HeadError::TooLarge));
        // A head that never ends.
        let mut endless = b"CONNECT a.example:443 HTTP/1.1\r\n".to_vec();
        while endless.len() < 2 * MAX {
            endless.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(parse_head(&endless[..MAX - 1], MAX), Ok(None));
        assert_eq!(parse_head(&endless[..MAX], MAX), Err(HeadError::TooLarge));
        assert_eq!(parse_head(&endless, MAX), Err(HeadError::TooLarge));
        // A method token that never ends.
        assert_eq!(parse_head(&[b'A'; 64], 64), Err(HeadError::TooLarge));
        assert_eq!(parse_head(&[b'A'; 63], 64), Ok(None));
        // Zero limit.
        assert_eq!(parse_head(b"", 0), Err(HeadError::TooLarge));
        // An error inside the limit wins over the limit; one beyond it does not count.
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\n", 8),
            Err(HeadError::NotConnect)
        );
        assert_eq!(parse_head(b"GETTING", 3), Err(HeadError::TooLarge));
    }

    #[test]
    fn prefix_consistency_under_small_limits() {
        let mut inputs: Vec<Vec<u8>> = vec![
            req("a.example:443"),
            req("[2001:db8::1]:443"),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            b"CONNECT a:443 HTTP/1.1\r\nX: a\0b\r\n\r\n".to_vec(),
            b"CONNECT a:443 HTTP/1.1\r\nX: y\nmore".to_vec(),
            b"CONNECT a:443 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx".to_vec(),
        ];
        inputs.push([req("a.example:443"), b"early data".to_vec()].concat());
        for input in &inputs {
            for max in [
                0,
                1,
                8,
                20,
                input.len() / 2,
                input.len() - 1,
                input.len(),
                MAX,
            ] {
                assert_prefix_consistent(input, max);
            }
        }
    }

    #[test]
    fn header_lookup() {
        let input = b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\
            proxy-authorization:  Basic dTpw  \r\nX-Empty:\r\n\r\ntunnel";
        let head = parse_head(input, MAX).expect("valid").expect("complete");
        assert_eq!(
            header(input, &head, "Proxy-Authorization"),
            Some(b"Basic dTpw".as_slice())
        );
        assert_eq!(header(input, &head, "x-empty"), Some(b"".as_slice()));
        assert_eq!(
            header(input, &head, "Host"),
            Some(b"a.example:443".as_slice())
        );
        assert_eq!(header(input, &head, "User-Agent"), None);
        assert_eq!(header(&input[..10], &head, "Host"), None);
    }

    #[test]
    fn host_text_forms() {
        let cases = [
            (name("a.example", 443), "a.example", "a.example:443"),
            (v4([192, 0, 2, 1], 80), "192.0.2.1", "192.0.2.1:80"),
            (v6("::1", 443), "::1", "[::1]:443"),
            (
                v6("2001:0db8:0000::0001", 443),
                "2001:db8::1",
                "[2001:db8::1]:443",
            ),
        ];
        for (authority, policy, display) in cases {
            assert_eq!(authority.host.as_policy_str(), policy);
            assert_eq!(authority.to_string(), display);
        }
        assert_eq!(v6("::1", 1).host.to_string(), "[::1]");
    }

    #[test]
    fn error_labels_and_statuses() {
        let mut seen = std::collections::HashSet::new();
        for reason in Malformed::ALL {
            let label = reason.as_str();
            assert!(label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(seen.insert(label), "duplicate label {label}");
            assert_eq!(HeadError::from(reason).as_str(), label);
            assert_eq!(HeadError::from(reason).status(), Status::BadRequest);
        }
        assert_eq!(HeadError::NotConnect.status(), Status::MethodNotAllowed);
        assert_eq!(HeadError::TooLarge.status(), Status::HeaderTooLarge);
        assert_eq!(HeadError::TooLarge.to_string(), "too_large");
    }

    #[test]
    fn replays_fuzz_corpus() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/connect_head");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).expect("corpus dir") {
            let path = entry.expect("corpus entry").path();
            if !path.is_file() {
                continue;
            }
            let input = std::fs::read(&path).expect("corpus file");
            for max in [0, 16, 256, MAX, usize::MAX] {
                if let Ok(Some(head)) = parse_head(&input, max) {
                    assert!(head.head_len <= input.len().min(max));
                }
            }
            assert_prefix_consistent(&input, MAX);
            count += 1;
        }
        assert!(count >= 10, "only {count} corpus files in {dir}");
    }
}
