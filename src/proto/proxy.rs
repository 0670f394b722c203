//! Sans-IO parser for the PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1 and
//! 2) that a load balancer puts in front of a connection to name the client it forwards.
//!
//! [`parse`] is called on everything read so far and is stateless, like
//! [`super::connect::parse_head`]: a header split across any number of reads gives the same
//! answer as the header read in one go, and every strict prefix of a valid header is
//! `Ok(None)` (incomplete), never an error. A wrong byte is refused as soon as it is visible
//! (the signature byte by byte, v2's version and command as soon as they arrive), so a client
//! that sends no header at all is told apart without waiting for more.
//!
//! Bounds: a v1 line is at most [`V1_MAX`] bytes with its CRLF (the specification's limit); a
//! v2 header is 16 bytes plus at most [`V2_MAX_PAYLOAD`] bytes of addresses and TLVs (the
//! specification allows 65,535; balancers send well under 1 KiB, so a larger length is refused
//! before any of it is read). TLVs are walked to check that they exactly fill the header, and are
//! otherwise ignored (no CRC32C check: the header comes from a trusted source over TCP).
//!
//! Also owns [`ProxySources`], a listener's setting: the networks a header is accepted from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest v1 header, `PROXY` to CRLF inclusive.
pub const V1_MAX: usize = 107;

/// Most bytes of addresses and TLVs a v2 header may announce.
pub const V2_MAX_PAYLOAD: usize = 1024;

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

const V1_PREFIX: &[u8] = b"PROXY ";

/// The length of a v2 header's fixed part.
const V2_FIXED: usize = 16;

/// What a header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The balancer forwards a client: its address and port, and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// v2 `LOCAL`: the balancer's own connection (a health check). The socket's addresses apply.
    Local,
    /// v1 `UNKNOWN`, or a v2 `PROXY` of an unspecified or `AF_UNIX` family: the balancer could
    /// not name the client. The socket's addresses apply.
    Unknown,
}

/// Why the bytes are not a PROXY header. A small `Copy` enum: it is made on the data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The first bytes are neither `PROXY ` nor the v2 signature: no header was sent.
    #[error("no PROXY protocol header")]
    Missing,
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header")]
    V1Syntax,
    #[error("PROXY v2 header of an unsupported version")]
    V2Version,
    #[error("PROXY v2 header with an unknown command")]
    V2Command,
    #[error("PROXY v2 header with an unknown address family or transport")]
    V2Family,
    #[error("PROXY v2 header longer than the 1024 bytes of addresses and TLVs accepted")]
    V2TooLong,
    #[error("PROXY v2 header too short for its addresses")]
    V2Addresses,
    #[error("PROXY v2 TLV runs past the end of the header")]
    V2Tlv,
}

impl ProxyError {
    /// For the event's `detail` and tests: a fixed token per error.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::Missing => "missing",
            ProxyError::V1TooLong => "v1_too_long",
            ProxyError::V1Syntax => "v1_syntax",
            ProxyError::V2Version => "v2_version",
            ProxyError::V2Command => "v2_command",
            ProxyError::V2Family => "v2_family",
            ProxyError::V2TooLong => "v2_too_long",
            ProxyError::V2Addresses => "v2_addresses",
            ProxyError::V2Tlv => "v2_tlv",
        }
    }
}

/// Parse the header at the start of `buf`: `Ok(None)` while it is incomplete, else the header
/// and its length in bytes (what follows belongs to the connection).
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyError::Missing),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let seen = buf.len().min(V1_PREFIX.len());
    if buf[..seen] != V1_PREFIX[..seen] {
        return Err(ProxyError::Missing);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    // The first CR ends the line; it must be followed by LF. A LF alone is an error.
    let Some(cr) = window.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::V1TooLong)
        } else {
            Ok(None)
        };
    };
    if window[cr] == b'\n' {
        return Err(ProxyError::V1Syntax);
    }
    // A CR as the 107th byte leaves no room for its LF: too long, whatever follows (decided
    // on the first 107 bytes, so a read that stops there agrees with one that goes on).
    if cr + 2 > V1_MAX {
        return Err(ProxyError::V1TooLong);
    }
    match buf.get(cr + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(ProxyError::V1Syntax),
    }
    let line = &buf[V1_PREFIX.len()..cr];
    let header = v1_line(line).ok_or(ProxyError::V1Syntax)?;
    Ok(Some((header, cr + 2)))
}

/// The part of a v1 line after `PROXY `.
fn v1_line(line: &[u8]) -> Option<Header> {
    let text = std::str::from_utf8(line).ok()?;
    if !text.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return None;
    }
    if text == "UNKNOWN" || text.starts_with("UNKNOWN ") {
        // "the receiver must ignore anything presented before the CRLF".
        return Some(Header::Unknown);
    }
    let mut parts = text.split(' ');
    let family = parts.next()?;
    let (src, dst, sport, dport) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            src.parse::<Ipv4Addr>().ok()?.into(),
            dst.parse::<Ipv4Addr>().ok()?.into(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>().ok()?.into(),
            dst.parse::<Ipv6Addr>().ok()?.into(),
        ),
        _ => return None,
    };
    Some(Header::Proxied {
        source: SocketAddr::new(src, v1_port(sport)?),
        destination: SocketAddr::new(dst, v1_port(dport)?),
    })
}

/// A decimal port, 0 to 65535, without a sign or leading zeros.
fn v1_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, ProxyError> {
    let seen = buf.len().min(V2_SIGNATURE.len());
    if buf[..seen] != V2_SIGNATURE[..seen] {
        return Err(ProxyError::Missing);
    }
    // Version (high nibble) and command (low nibble), decided as soon as they arrive.
    let Some(&ver_cmd) = buf.get(12) else {
        return Ok(None);
    };
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version);
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::V2Command),
    };
    if buf.len() < V2_FIXED {
        return Ok(None);
    }
    let fam_proto = buf[13];
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > V2_MAX_PAYLOAD {
        return Err(ProxyError::V2TooLong);
    }
    let total = V2_FIXED + len;
    // A LOCAL header's block is ignored whatever it holds ("the receiver must accept this
    // connection as valid and must use the real connection endpoints").
    let family = if local {
        Family::Ignored
    } else {
        v2_family(fam_proto)?
    };
    if len < family.addresses_len() {
        return Err(ProxyError::V2Addresses);
    }
    let Some(payload) = buf.get(V2_FIXED..total) else {
        return Ok(None);
    };
    let header = match family {
        Family::Ignored => return Ok(Some((Header::Local, total))),
        Family::Unspec | Family::Unix => Header::Unknown,
        Family::Inet => {
            let ip = |at: usize| {
                Ipv4Addr::new(
                    payload[at],
                    payload[at + 1],
                    payload[at + 2],
                    payload[at + 3],
                )
            };
            let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0).into(), port(8)),
                destination: SocketAddr::new(ip(4).into(), port(10)),
            }
        }
        Family::Inet6 => {
            let ip = |at: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&payload[at..at + 16]);
                Ipv6Addr::from(b)
            };
            let port = |at: usize| u16::from_be_bytes([payload[at], payload[at + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0).into(), port(32)),
                destination: SocketAddr::new(ip(16).into(), port(34)),
            }
        }
    };
    check_tlvs(&payload[family.addresses_len()..])?;
    Ok(Some((header, total)))
}

/// The address block a v2 `PROXY` header announces.
#[derive(Clone, Copy)]
enum Family {
    /// A `LOCAL` header: whatever the block holds is not read.
    Ignored,
    Unspec,
    Inet,
    Inet6,
    Unix,
}

impl Family {
    fn addresses_len(self) -> usize {
        match self {
            Family::Ignored | Family::Unspec => 0,
            Family::Inet => 12,
            Family::Inet6 => 36,
            Family::Unix => 216,
        }
    }
}

/// The family (high nibble) and transport (low nibble) of a `PROXY` header. A stream over IPv4
/// or IPv6 names a client; unspecified families and `AF_UNIX` name none; a datagram transport
/// cannot have reached a TCP listener and is refused, as is any value the specification does
/// not define.
fn v2_family(fam_proto: u8) -> Result<Family, ProxyError> {
    match (fam_proto >> 4, fam_proto & 0x0f) {
        (0, 0) => Ok(Family::Unspec),
        (1, 1) => Ok(Family::Inet),
        (2, 1) => Ok(Family::Inet6),
        (3, 1) | (3, 2) | (3, 0) => Ok(Family::Unix),
        (1 | 2, 0) => Ok(Family::Unspec),
        _ => Err(ProxyError::V2Family),
    }
}

/// TLVs (type, 16-bit length, value) must exactly fill what follows the addresses.
fn check_tlvs(mut rest: &[u8]) -> Result<(), ProxyError> {
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(ProxyError::V2Tlv);
        }
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        rest = rest.get(3 + len..).ok_or(ProxyError::V2Tlv)?;
    }
    Ok(())
}

/// A v1 header for `source` -> `destination` (both of one family), as a balancer sends it.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A v2 header for `header` followed by `tlvs` (type, value). `Header::Proxied` needs both
/// addresses of one family; `Header::Unknown` is written as `PROXY` with the unspecified family.
/// Returns `None` when the header would not fit [`V2_MAX_PAYLOAD`] or the families differ.
pub fn encode_v2(header: &Header, tlvs: &[(u8, &[u8])]) -> Option<Vec<u8>> {
    let mut out = V2_SIGNATURE.to_vec();
    let mut block = Vec::new();
    match header {
        Header::Local => out.extend_from_slice(&[0x20, 0x00]),
        Header::Unknown => out.extend_from_slice(&[0x21, 0x00]),
        Header::Proxied {
            source,
            destination,
        } => match (source.ip(), destination.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                out.extend_from_slice(&[0x21, 0x11]);
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                block.extend_from_slice(&source.port().to_be_bytes());
                block.extend_from_slice(&destination.port().to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                out.extend_from_slice(&[0x21, 0x21]);
                block.extend_from_slice(&s.octets());
                block.extend_from_slice(&d.octets());
                block.extend_from_slice(&source.port().to_be_bytes());
                block.extend_from_slice(&destination.port().to_be_bytes());
            }
            _ => return None,
        },
    }
    for (kind, value) in tlvs {
        block.push(*kind);
        block.extend_from_slice(&u16::try_from(value.len()).ok()?.to_be_bytes());
        block.extend_from_slice(value);
    }
    if block.len() > V2_MAX_PAYLOAD {
        return None;
    }
    out.extend_from_slice(&u16::try_from(block.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&block);
    Some(out)
}

/// A listener's `proxy_from`: the networks a PROXY header is accepted from. A connection from
/// anywhere else is closed unanswered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySources(Vec<ipnet::IpNet>);

impl ProxySources {
    /// `None` for an empty list: a listener with the PROXY protocol must trust some source.
    pub fn new(networks: Vec<ipnet::IpNet>) -> Option<ProxySources> {
        (!networks.is_empty()).then_some(ProxySources(networks))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn networks(&self) -> &[ipnet::IpNet] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        match s.parse() {
            Ok(a) => a,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn proxied(src: &str, dst: &str) -> Header {
        Header::Proxied {
            source: addr(src),
            destination: addr(dst),
        }
    }

    fn v2(header: &Header) -> Vec<u8> {
        match encode_v2(header, &[]) {
            Some(b) => b,
            None => panic!("{header:?} should encode"),
        }
    }

    /// Every strict prefix is incomplete; the whole parses to `want`, with `tail` left over.
    fn complete(bytes: &[u8], want: Header) {
        for n in 0..bytes.len() {
            assert_eq!(
                parse(&bytes[..n]),
                Ok(None),
                "prefix of {n} bytes of {bytes:?}"
            );
        }
        assert_eq!(parse(bytes), Ok(Some((want, bytes.len()))));
        let mut more = bytes.to_vec();
        more.extend_from_slice(b"CONNECT a:443 HTTP/1.1\r\n\r\n");
        assert_eq!(
            parse(&more),
            Ok(Some((want, bytes.len()))),
            "trailing bytes are not read"
        );
    }

    #[test]
    fn v1_tcp4_and_tcp6_at_every_length() {
        complete(
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 8080\r\n",
            proxied("192.0.2.7:51234", "10.0.0.1:8080"),
        );
        complete(
            b"PROXY TCP6 2001:db8::7 2001:db8::1 0 65535\r\n",
            proxied("[2001:db8::7]:0", "[2001:db8::1]:65535"),
        );
        let max = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let tcp6 = format!("PROXY TCP6 {max} {max} 65535 65535\r\n");
        complete(
            tcp6.as_bytes(),
            proxied(&format!("[{max}]:65535"), &format!("[{max}]:65535")),
        );
        // The longest header the specification allows is exactly 107 bytes (UNKNOWN followed by
        // the longest addresses).
        let longest = format!("PROXY UNKNOWN {max} {max} 65535 65535\r\n");
        assert_eq!(longest.len(), V1_MAX);
        complete(longest.as_bytes(), Header::Unknown);
    }

    #[test]
    fn v1_unknown_uses_no_address() {
        complete(b"PROXY UNKNOWN\r\n", Header::Unknown);
        complete(
            b"PROXY UNKNOWN ffff:f::1 ffff:f::2 1 2\r\n",
            Header::Unknown,
        );
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 51234\r\n"[..],
            b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 8080 9\r\n",
            b"PROXY TCP4 192.0.2.7  10.0.0.1 51234 8080\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 2001:db8::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 80\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 080 80\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 +80 80\r\n",
            b"PROXY TCP4 192.0.2.007 10.0.0.1 80 80\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 80 80\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 80 80\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 80 80\rX",
            b"PROXY \r\n",
            b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(ProxyError::V1Syntax),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn v1_longer_than_107_bytes_is_refused_at_107() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX - 1, b'x');
        assert_eq!(parse(&long), Ok(None));
        long.push(b'x');
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
        // A CR as the 107th byte cannot be followed by its LF within the limit: too long,
        // whatever follows it (fuzz regression v1_cr_as_107th_byte: it was "too long" when
        // the read stopped at the CR and "malformed" when a non-LF byte followed).
        long.truncate(V1_MAX - 1);
        long.push(b'\r');
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
        for next in [b'\n', 0x08, b'x'] {
            let mut more = long.clone();
            more.push(next);
            assert_eq!(
                parse(&more),
                Err(ProxyError::V1TooLong),
                "CR then {next:#x}"
            );
        }
        long.truncate(V1_MAX - 2);
        long.extend_from_slice(b"\r\n");
        assert_eq!(parse(&long), Ok(Some((Header::Unknown, V1_MAX))));
    }

    #[test]
    fn wrong_signature_is_missing_as_soon_as_it_shows() {
        assert_eq!(parse(b""), Ok(None));
        assert_eq!(parse(b"C"), Err(ProxyError::Missing));
        assert_eq!(
            parse(b"CONNECT a:443 HTTP/1.1\r\n\r\n"),
            Err(ProxyError::Missing)
        );
        assert_eq!(parse(b"PROX"), Ok(None));
        assert_eq!(parse(b"PROXX"), Err(ProxyError::Missing));
        assert_eq!(parse(b"PROXYTCP4"), Err(ProxyError::Missing));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUI"), Ok(None));
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ProxyError::Missing));
        assert_eq!(parse(b"\r\n\r\n"), Ok(None));
        assert_eq!(parse(b"\r\n\r\n\r\n"), Err(ProxyError::Missing));
        assert_eq!(parse(&[0x16, 3, 1]), Err(ProxyError::Missing));
    }

    #[test]
    fn v2_inet_inet6_with_tlvs_at_every_length() {
        complete(
            &v2(&proxied("192.0.2.7:51234", "10.0.0.1:8080")),
            proxied("192.0.2.7:51234", "10.0.0.1:8080"),
        );
        complete(
            &v2(&proxied("[2001:db8::7]:1", "[2001:db8::1]:443")),
            proxied("[2001:db8::7]:1", "[2001:db8::1]:443"),
        );
        let tlvs: [(u8, &[u8]); 3] = [(0x01, b"h2"), (0x04, b""), (0xEA, &[7u8; 40])];
        let Some(with) = encode_v2(&proxied("192.0.2.7:1", "10.0.0.1:2"), &tlvs) else {
            panic!("should encode");
        };
        complete(&with, proxied("192.0.2.7:1", "10.0.0.1:2"));
    }

    #[test]
    fn v2_local_and_unknown_families() {
        complete(&v2(&Header::Local), Header::Local);
        complete(&v2(&Header::Unknown), Header::Unknown);
        // LOCAL with an address block: the block is ignored.
        let mut local = v2(&proxied("192.0.2.7:1", "10.0.0.1:2"));
        local[12] = 0x20;
        complete(&local, Header::Local);
        // AF_UNIX: 216 bytes of paths, no client address.
        let mut unix = V2_SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
        unix.resize(16 + 216, 0);
        complete(&unix, Header::Unknown);
    }

    #[test]
    fn v2_bad_version_command_family() {
        let good = v2(&proxied("192.0.2.7:1", "10.0.0.1:2"));
        let with = |at: usize, b: u8| {
            let mut h = good.clone();
            h[at] = b;
            h
        };
        // Version and command are decided on the 13th byte.
        assert_eq!(parse(&with(12, 0x11)[..13]), Err(ProxyError::V2Version));
        assert_eq!(parse(&with(12, 0x22)[..13]), Err(ProxyError::V2Command));
        assert_eq!(
            parse(&with(13, 0x12)),
            Err(ProxyError::V2Family),
            "UDP over IPv4"
        );
        assert_eq!(parse(&with(13, 0x41)), Err(ProxyError::V2Family));
        assert_eq!(parse(&with(13, 0x13)), Err(ProxyError::V2Family));
        // IPv6 announced with an IPv4-sized block.
        assert_eq!(parse(&with(13, 0x21)[..16]), Err(ProxyError::V2Addresses));
    }

    #[test]
    fn v2_oversized_length_and_tlv() {
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(
            parse(&huge),
            Err(ProxyError::V2TooLong),
            "refused before any of it arrives"
        );
        let mut at_cap = V2_SIGNATURE.to_vec();
        at_cap.extend_from_slice(&[0x21, 0x11]);
        at_cap.extend_from_slice(&(V2_MAX_PAYLOAD as u16).to_be_bytes());
        at_cap.extend_from_slice(&[192, 0, 2, 7, 10, 0, 0, 1, 0, 1, 0, 2]);
        let tlv_len = V2_MAX_PAYLOAD - 12 - 3;
        at_cap.push(0xEE);
        at_cap.extend_from_slice(&(tlv_len as u16).to_be_bytes());
        at_cap.resize(16 + V2_MAX_PAYLOAD, 0);
        assert_eq!(
            parse(&at_cap),
            Ok(Some((proxied("192.0.2.7:1", "10.0.0.1:2"), at_cap.len())))
        );
        let mut over = at_cap.clone();
        over[14..16].copy_from_slice(&(V2_MAX_PAYLOAD as u16 + 1).to_be_bytes());
        assert_eq!(parse(&over[..16]), Err(ProxyError::V2TooLong));
        // A TLV that claims more than the header holds.
        let mut overrun = at_cap.clone();
        let at = 16 + 12 + 1;
        overrun[at..at + 2].copy_from_slice(&(tlv_len as u16 + 1).to_be_bytes());
        assert_eq!(parse(&overrun), Err(ProxyError::V2Tlv));
        // Two stray bytes after the addresses: a TLV cut short.
        let mut stray = V2_SIGNATURE.to_vec();
        stray.extend_from_slice(&[
            0x21, 0x11, 0, 14, 192, 0, 2, 7, 10, 0, 0, 1, 0, 1, 0, 2, 1, 0,
        ]);
        assert_eq!(parse(&stray), Err(ProxyError::V2Tlv));
    }

    #[test]
    fn split_arrival_gives_the_same_answer() {
        let mut both = v2(&proxied("[2001:db8::7]:1", "[2001:db8::1]:443"));
        both.extend_from_slice(b"CONNECT a:443 HTTP/1.1\r\n\r\n");
        let want = parse(&both);
        for cut in 0..=both.len() {
            // Whatever was read first, the first decided answer equals the whole one.
            let first = parse(&both[..cut]);
            assert!(
                first == Ok(None) || first == want,
                "cut at {cut}: {first:?}"
            );
        }
    }

    #[test]
    fn sources_match_networks_and_mapped_addresses() {
        let nets = vec!["10.0.0.0/24".parse().unwrap_or_else(|e| panic!("{e}"))];
        let Some(s) = ProxySources::new(nets) else {
            panic!("non-empty");
        };
        assert!(s.contains("10.0.0.9".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(s.contains("::ffff:10.0.0.9".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(!s.contains("10.0.1.9".parse().unwrap_or_else(|e| panic!("{e}"))));
        assert!(ProxySources::new(Vec::new()).is_none());
    }
}
