//! The handshake messages the inspector reads: the ClientHello (offered versions and server
//! name), the ServerHello (selected version) and a TLS 1.2 Certificate message (the leaf).
//!
//! Message bodies are parsed with `tls-parser`; its parsers are lenient where the inspector must
//! not be (a malformed extension list is cut short rather than refused, trailing bytes are
//! ignored, a two-byte `supported_versions` is read in its ServerHello form), so every length is
//! also checked here to add up exactly, the extension list is walked here, and only the two
//! extensions that decide anything are interpreted. A ClientHello with two `server_name` or two
//! `supported_versions` extensions, or two host names, is refused: a server might read the other
//! one.

use tls_parser::{
    parse_tls_extension_sni_content, parse_tls_handshake_client_hello,
    parse_tls_handshake_msg_certificate, parse_tls_handshake_server_hello, SNIType, TlsExtension,
    TlsMessageHandshake,
};

use super::{ParseError, TlsVersion};

/// Extension code points (IANA "TLS ExtensionType Values").
const SERVER_NAME: u16 = 0;
const SUPPORTED_VERSIONS: u16 = 43;

/// Longest host name accepted in `server_name`: 253 characters and a trailing dot, with room
/// to spare.
const MAX_SNI_LEN: usize = 255;

/// What a ClientHello offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ClientHello {
    /// The highest version offered: the highest known, non-GREASE entry of
    /// `supported_versions`, or else the legacy `client_version`.
    pub(super) version: TlsVersion,
    /// Every version a server could pick: the known entries of `supported_versions`, or else
    /// the legacy version and every version below it.
    pub(super) offered: VersionSet,
    /// The `host_name` of `server_name`: ASCII lower-case, without a trailing dot.
    pub(super) sni: Option<String>,
}

/// A set of [`TlsVersion`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct VersionSet(u8);

impl VersionSet {
    fn insert(&mut self, version: TlsVersion) {
        self.0 |= 1 << version as u8;
    }

    /// Every version up to and including `version`.
    fn up_to(version: TlsVersion) -> VersionSet {
        VersionSet((2u8 << version as u8).wrapping_sub(1))
    }

    /// Whether some version in `min..=max` is in the set.
    pub(super) fn any_in(self, min: TlsVersion, max: TlsVersion) -> bool {
        min <= max && self.0 & VersionSet::up_to(max).0 & !(VersionSet::up_to(min).0 >> 1) != 0
    }
}

/// Parses the body of a ClientHello (RFC 8446 section 4.1.2, RFC 5246 section 7.4.1.2).
pub(super) fn parse_client_hello(body: &[u8]) -> Result<ClientHello, ParseError> {
    let (rest, hello) =
        parse_tls_handshake_client_hello(body).map_err(|_| ParseError::ClientHello)?;
    if !rest.is_empty() {
        // A truncated extension block, or bytes after it.
        return Err(ParseError::ClientHello);
    }
    let legacy = hello.version.0;
    if legacy >> 8 != 3 {
        return Err(ParseError::ClientHello);
    }
    let mut versions = None;
    let mut sni = None;
    let mut seen_sni = false;
    for extension in Extensions(hello.ext.unwrap_or_default()) {
        let (code, data) = extension?;
        match code {
            SERVER_NAME if seen_sni => return Err(ParseError::DuplicateExtension),
            SERVER_NAME => {
                seen_sni = true;
                sni = server_name(data)?;
            }
            SUPPORTED_VERSIONS if versions.is_some() => return Err(ParseError::DuplicateExtension),
            SUPPORTED_VERSIONS => versions = Some(offered_versions(data)?),
            _ => {}
        }
    }
    let (version, offered) = match versions {
        Some(found) => found,
        None => {
            // Legacy negotiation: the server picks at most this, and never TLS 1.3
            // (RFC 8446 section 4.2.1).
            let version = match legacy {
                0x0300 => TlsVersion::Ssl3,
                0x0301 => TlsVersion::Tls10,
                0x0302 => TlsVersion::Tls11,
                _ => TlsVersion::Tls12,
            };
            (version, VersionSet::up_to(version))
        }
    };
    Ok(ClientHello {
        version,
        offered,
        sni,
    })
}

/// Parses the body of a ServerHello (or HelloRetryRequest) and returns the version it selects:
/// its `supported_versions` extension when present, else its legacy version.
pub(super) fn parse_server_hello(body: &[u8]) -> Result<TlsVersion, ParseError> {
    let (rest, hello) =
        parse_tls_handshake_server_hello(body).map_err(|_| ParseError::ServerHello)?;
    if !rest.is_empty() {
        return Err(ParseError::ServerHello);
    }
    let mut selected = None;
    for extension in Extensions(hello.ext.unwrap_or_default()) {
        let (code, data) = extension?;
        if code == SUPPORTED_VERSIONS {
            let [a, b] = data else {
                return Err(ParseError::SupportedVersions);
            };
            if selected.is_some() {
                return Err(ParseError::DuplicateExtension);
            }
            selected = Some(u16::from_be_bytes([*a, *b]));
        }
    }
    TlsVersion::from_wire(selected.unwrap_or(hello.version.0)).ok_or(ParseError::ServerHello)
}

/// Parses the body of a TLS 1.2 (or earlier) Certificate message and returns the leaf
/// certificate's DER bytes, or `None` for an empty certificate list.
pub(super) fn leaf_certificate(body: &[u8]) -> Result<Option<&[u8]>, ParseError> {
    let (rest, message) =
        parse_tls_handshake_msg_certificate(body).map_err(|_| ParseError::Certificate)?;
    let TlsMessageHandshake::Certificate(certificate) = message else {
        return Err(ParseError::Certificate);
    };
    // tls-parser stops at the first entry that does not fit; the entries must fill the list.
    let declared = body.len().saturating_sub(3);
    let listed: usize = certificate
        .cert_chain
        .iter()
        .map(|c| 3 + c.data.len())
        .sum();
    if !rest.is_empty() || listed != declared {
        return Err(ParseError::Certificate);
    }
    match certificate.cert_chain.first() {
        None => Ok(None),
        Some(leaf) if leaf.data.is_empty() => Err(ParseError::Certificate),
        Some(leaf) => Ok(Some(leaf.data)),
    }
}

/// The known versions in a ClientHello's `supported_versions`, and the highest.
fn offered_versions(data: &[u8]) -> Result<(TlsVersion, VersionSet), ParseError> {
    let Some((&len, list)) = data.split_first() else {
        return Err(ParseError::SupportedVersions);
    };
    if usize::from(len) != list.len() || list.is_empty() || !list.len().is_multiple_of(2) {
        return Err(ParseError::SupportedVersions);
    }
    let mut offered = VersionSet::default();
    let mut highest = None;
    for pair in list.chunks_exact(2) {
        // GREASE values (0x?a?a) and unknown versions (drafts, DTLS) are not offers.
        let Some(version) = TlsVersion::from_wire(u16::from_be_bytes([pair[0], pair[1]])) else {
            continue;
        };
        offered.insert(version);
        highest = highest.max(Some(version));
    }
    highest
        .map(|v| (v, offered))
        .ok_or(ParseError::SupportedVersions)
}

/// The `host_name` of a ClientHello's `server_name` extension (RFC 6066 section 3), normalised;
/// `None` when the list holds no host name.
fn server_name(data: &[u8]) -> Result<Option<String>, ParseError> {
    let Ok((rest, TlsExtension::SNI(names))) = parse_tls_extension_sni_content(data) else {
        return Err(ParseError::ServerName);
    };
    // tls-parser stops at the first entry that does not fit; the entries must fill the list.
    let listed: usize = names.iter().map(|(_, name)| 3 + name.len()).sum();
    if !rest.is_empty() || names.is_empty() || listed + 2 != data.len() {
        return Err(ParseError::ServerName);
    }
    let mut host_names = names.iter().filter(|(t, _)| *t == SNIType::HostName);
    let Some((_, name)) = host_names.next() else {
        return Ok(None);
    };
    if host_names.next().is_some() {
        return Err(ParseError::ServerName);
    }
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.len() > MAX_SNI_LEN || !name.iter().all(u8::is_ascii_graphic) {
        return Err(ParseError::ServerName);
    }
    // A DNS name has no empty label: ``, `a..b`, `.a` and `a..` (which would still end in a dot
    // once its trailing dot is dropped) name no host a server could hold a certificate for.
    if name.split(|&b| b == b'.').any(<[u8]>::is_empty) {
        return Err(ParseError::ServerName);
    }
    // Visible ASCII, so this is valid UTF-8.
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    Ok(Some(name))
}

/// Iterates over an extension block: `(code, data)` pairs, or an error when the block does not
/// split exactly into `u16 code, u16 length, data`.
struct Extensions<'a>(&'a [u8]);

impl<'a> Iterator for Extensions<'a> {
    type Item = Result<(u16, &'a [u8]), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let parsed = match self.0 {
            [c0, c1, l0, l1, rest @ ..] => {
                let len = usize::from(u16::from_be_bytes([*l0, *l1]));
                rest.get(..len)
                    .map(|data| (u16::from_be_bytes([*c0, *c1]), data, &rest[len..]))
            }
            _ => None,
        };
        match parsed {
            Some((code, data, rest)) => {
                self.0 = rest;
                Some(Ok((code, data)))
            }
            None => {
                self.0 = &[];
                Some(Err(ParseError::Extensions))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_sets() {
        use TlsVersion::*;
        let legacy = VersionSet::up_to(Tls12);
        assert!(legacy.any_in(Tls12, Tls12));
        assert!(legacy.any_in(Tls10, Tls12));
        assert!(!legacy.any_in(Tls13, Tls13));
        let mut only13 = VersionSet::default();
        only13.insert(Tls13);
        assert!(!only13.any_in(Tls10, Tls12));
        assert!(only13.any_in(Tls12, Tls13));
        let mut mixed = only13;
        mixed.insert(Tls10);
        assert!(mixed.any_in(Tls10, Tls12));
        assert!(!mixed.any_in(Tls11, Tls12));
        assert!(!mixed.any_in(Tls13, Tls12), "empty range");
        assert_eq!(VersionSet::up_to(Tls13).0, 0b11_1111);
        assert_eq!(VersionSet::up_to(Ssl2).0, 0b1);
    }

    #[test]
    fn offered_versions_rules() {
        use TlsVersion::*;
        let ok = |data: &[u8]| offered_versions(data).map(|(v, _)| v);
        assert_eq!(ok(&[4, 0x03, 0x04, 0x03, 0x03]), Ok(Tls13));
        assert_eq!(
            ok(&[4, 0x03, 0x03, 0x03, 0x04]),
            Ok(Tls13),
            "order does not matter"
        );
        assert_eq!(
            ok(&[6, 0x7a, 0x7a, 0x03, 0x03, 0x7f, 0x1c]),
            Ok(Tls12),
            "GREASE, draft"
        );
        assert_eq!(ok(&[2, 0x03, 0x00]), Ok(Ssl3));
        let bad = ParseError::SupportedVersions;
        assert_eq!(ok(&[]), Err(bad));
        assert_eq!(ok(&[0]), Err(bad));
        assert_eq!(ok(&[3, 0x03, 0x04, 0x03]), Err(bad));
        assert_eq!(ok(&[4, 0x03, 0x04]), Err(bad));
        assert_eq!(ok(&[2, 0x03, 0x04, 0x03, 0x03]), Err(bad));
        assert_eq!(ok(&[2, 0x1a, 0x1a]), Err(bad), "only GREASE");
        assert_eq!(ok(&[0x03, 0x04]), Err(bad), "the ServerHello form");
    }

    #[test]
    fn extension_walk() {
        fn walk(b: &[u8]) -> Result<Vec<(u16, &[u8])>, ParseError> {
            Extensions(b).collect()
        }
        assert_eq!(walk(&[]), Ok(vec![]));
        assert_eq!(
            walk(&[0, 1, 0, 0, 0, 2, 0, 1, 9]),
            Ok(vec![(1, &[][..]), (2, &[9][..])])
        );
        assert_eq!(walk(&[0, 1, 0]), Err(ParseError::Extensions));
        assert_eq!(walk(&[0, 1, 0, 2, 9]), Err(ParseError::Extensions));
    }

    #[test]
    fn server_name_rules() {
        fn ext(entries: &[(u8, &[u8])]) -> Vec<u8> {
            let mut list = Vec::new();
            for (t, name) in entries {
                list.push(*t);
                list.extend_from_slice(&u16::try_from(name.len()).unwrap_or(0).to_be_bytes());
                list.extend_from_slice(name);
            }
            let mut out = u16::try_from(list.len())
                .unwrap_or(0)
                .to_be_bytes()
                .to_vec();
            out.extend(list);
            out
        }
        let name = |s: &str| Ok(Some(s.to_owned()));
        assert_eq!(server_name(&ext(&[(0, b"A.Example.")])), name("a.example"));
        assert_eq!(server_name(&ext(&[(1, b"x"), (0, b"a")])), name("a"));
        assert_eq!(server_name(&ext(&[(1, b"x")])), Ok(None));
        let bad = Err(ParseError::ServerName);
        assert_eq!(server_name(&ext(&[(0, b"a"), (0, b"b")])), bad);
        assert_eq!(server_name(&ext(&[(0, b".")])), bad);
        assert_eq!(server_name(&ext(&[(0, b"")])), bad);
        assert_eq!(server_name(&ext(&[(0, b"a b")])), bad);
        assert_eq!(server_name(&ext(&[(0, b"a\0")])), bad);
        // Empty labels: the fuzzer's `x5e4..2..` was reported as the SNI `x5e4..2.`.
        assert_eq!(server_name(&ext(&[(0, b"x5e4..2..")])), bad);
        assert_eq!(server_name(&ext(&[(0, b"a..")])), bad);
        assert_eq!(server_name(&ext(&[(0, b"a..b")])), bad);
        assert_eq!(server_name(&ext(&[(0, b".a")])), bad);
        assert_eq!(server_name(&ext(&[(0, b"..")])), bad);
        assert_eq!(server_name(&ext(&[(0, "é".as_bytes())])), bad);
        assert_eq!(server_name(&ext(&[(0, &[b'a'; 256])])), bad);
        assert_eq!(
            server_name(&ext(&[(0, &[b'a'; 255])])).map(|n| n.map(|n| n.len())),
            Ok(Some(255))
        );
        assert_eq!(server_name(&ext(&[])), bad, "an empty list");
        assert_eq!(server_name(&[]), bad, "the ServerHello form");
        let mut trailing = ext(&[(0, b"a")]);
        trailing.push(0);
        assert_eq!(server_name(&trailing), bad);
        let mut short = ext(&[(0, b"abc")]);
        short[1] += 1;
        assert_eq!(server_name(&short), bad);
        let mut cut = ext(&[(0, b"abc"), (0, b"def")]);
        cut.pop();
        assert_eq!(server_name(&cut), bad);
    }

    #[test]
    fn certificate_message_rules() {
        fn message(certs: &[&[u8]], extra: &[u8]) -> Vec<u8> {
            let mut list = Vec::new();
            for c in certs {
                list.extend_from_slice(&u32::try_from(c.len()).unwrap_or(0).to_be_bytes()[1..]);
                list.extend_from_slice(c);
            }
            list.extend_from_slice(extra);
            let mut out = u32::try_from(list.len()).unwrap_or(0).to_be_bytes()[1..].to_vec();
            out.extend(list);
            out
        }
        assert_eq!(leaf_certificate(&message(&[], &[])), Ok(None));
        assert_eq!(
            leaf_certificate(&message(&[b"leaf", b"ca"], &[])),
            Ok(Some(&b"leaf"[..]))
        );
        let bad = Err(ParseError::Certificate);
        assert_eq!(leaf_certificate(&message(&[b"leaf"], &[0])), bad);
        assert_eq!(leaf_certificate(&message(&[b"leaf"], &[0, 0, 9])), bad);
        assert_eq!(leaf_certificate(&message(&[b""], &[])), bad);
        assert_eq!(leaf_certificate(&[0, 0]), bad);
        let mut trailing = message(&[b"leaf"], &[]);
        trailing.push(1);
        assert_eq!(leaf_certificate(&trailing), bad);
    }
}
