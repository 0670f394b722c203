//! Certificate subjects in one canonical text form, so that a configured subject and a
//! certificate's subject can be compared as strings. The rules are on [`normalize_subject`].

use std::fmt::Write as _;

use x509_parser::asn1_rs::{Any, Tag};
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use super::ParseError;

/// Attribute types with a short name: (dotted OID, canonical name, other accepted names).
const TYPES: &[(&str, &str, &[&str])] = &[
    ("2.5.4.3", "CN", &["COMMONNAME"]),
    ("2.5.4.4", "SN", &["SURNAME"]),
    ("2.5.4.5", "SERIALNUMBER", &[]),
    ("2.5.4.6", "C", &[]),
    ("2.5.4.7", "L", &[]),
    ("2.5.4.8", "ST", &["S"]),
    ("2.5.4.9", "STREET", &[]),
    ("2.5.4.10", "O", &[]),
    ("2.5.4.11", "OU", &[]),
    ("2.5.4.12", "TITLE", &["T"]),
    ("2.5.4.42", "GN", &["G", "GIVENNAME"]),
    ("0.9.2342.19200300.100.1.1", "UID", &["USERID"]),
    ("0.9.2342.19200300.100.1.25", "DC", &[]),
    ("1.2.840.113549.1.9.1", "E", &["EMAIL", "EMAILADDRESS"]),
];

/// Why a configured subject could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("it is empty")]
    Empty,
    #[error("{0:?} is not of the form TYPE=value")]
    NoEquals(String),
    #[error("unknown attribute type {0:?} (use CN, O, OU, L, ST, C, E, DC, ... or a dotted OID)")]
    UnknownType(String),
    #[error("the value of {0} is empty")]
    EmptyValue(String),
    #[error("a backslash must be followed by a special character or two hex digits")]
    BadEscape,
    #[error("quoted and #-hex values are not supported; escape special characters with \\")]
    Unsupported,
}

/// The canonical form of a configured certificate subject.
///
/// # The canonical form
/// The RFC 4514 string form, tightened:
/// - RDNs are written most specific first (the reverse of their order in the certificate, as
///   RFC 4514, OpenSSL's `-nameopt RFC2253` and Windows' `Subject` do): a certificate made with
///   `openssl req -subj "/O=Contoso/CN=agent01"` has the subject `CN=agent01,O=Contoso`.
/// - RDNs are separated by `,` and the attributes of a multi-valued RDN by `+` (sorted), with no
///   spaces around `,`, `+` or `=`.
/// - Attribute types are upper-case short names: `CN`, `C`, `L`, `ST`, `STREET`, `O`, `OU`,
///   `TITLE`, `SN` (surname), `GN`, `SERIALNUMBER`, `DC`, `UID`, `E` (email address); any other
///   type is its dotted OID (`2.5.4.97`).
/// - Values are kept exactly (case included) and escaped with `\`: `, + " \ < > ;` always, a
///   leading `#` or space and a trailing space, and control characters as `\XX` hex.
///   A certificate value that is not a string is `#` followed by the hex of its DER content
///   (a configured value cannot take this form: its `#` is escaped).
///
/// # Configured subjects
/// A configured subject is read as an RFC 4514 string (`CN=agent01, O=Contoso`): types are
/// case-insensitive and may be aliases (`S` for `ST`, `EMAIL`/`EMAILADDRESS` for `E`, `T` for
/// `TITLE`, `G`/`GIVENNAME` for `GN`, `OID.2.5.4.3` or `2.5.4.3` for `CN`), spaces around the
/// separators are ignored, values are unescaped (`\,` and `\2C` both mean a comma) and written
/// back in the canonical form. Quoted values and `#` hex values are not accepted.
///
/// # Matching
/// A certificate's subject is on the list when
/// 1. its canonical form equals a listed subject exactly, or
/// 2. a listed subject is a single `CN=x` and the certificate's subject has exactly one CN
///    attribute (anywhere in it), whose value is exactly `x`. Other attributes do not matter.
///
/// Values are compared case-sensitively, byte for byte.
pub fn normalize_subject(text: &str) -> Result<String, SubjectError> {
    if text.trim().is_empty() {
        return Err(SubjectError::Empty);
    }
    let mut rdns = Vec::new();
    for rdn in split_unescaped(text, b',') {
        let mut avas = Vec::new();
        for ava in split_unescaped(rdn, b'+') {
            let (kind, value) = ava
                .split_once('=')
                .ok_or_else(|| SubjectError::NoEquals(ava.trim().to_owned()))?;
            let kind = type_name(kind.trim())?;
            let value = unescape(trim_unescaped(value))?;
            if value.is_empty() {
                return Err(SubjectError::EmptyValue(kind));
            }
            avas.push(format_ava(&kind, &value, false));
        }
        rdns.push(join_rdn(avas));
    }
    Ok(rdns.join(","))
}

/// The subject of a leaf certificate, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CertSubject {
    /// The whole subject.
    pub(super) canonical: String,
    /// `CN=<value>` when the subject has exactly one CN attribute.
    pub(super) single_cn: Option<String>,
}

impl CertSubject {
    /// Reads the subject of a DER certificate, which must fill `der` exactly (as OpenSSL
    /// requires of a certificate in a Certificate message).
    pub(super) fn from_der(der: &[u8]) -> Result<CertSubject, ParseError> {
        match X509Certificate::from_der(der) {
            Ok(([], cert)) => Ok(CertSubject::from_name(cert.subject())),
            _ => Err(ParseError::X509),
        }
    }

    fn from_name(name: &X509Name<'_>) -> CertSubject {
        let mut rdns = Vec::new();
        let mut common_names = Vec::new();
        for rdn in name.iter().collect::<Vec<_>>().into_iter().rev() {
            let mut avas = Vec::new();
            for ava in rdn.iter() {
                let oid = ava.attr_type().to_id_string();
                let kind = TYPES
                    .iter()
                    .find(|(o, _, _)| *o == oid)
                    .map_or(oid.clone(), |(_, n, _)| (*n).to_owned());
                let (value, hex) = attribute_text(ava.attr_value());
                let text = format_ava(&kind, &value, hex);
                if kind == "CN" {
                    common_names.push(text.clone());
                }
                avas.push(text);
            }
            rdns.push(join_rdn(avas));
        }
        CertSubject {
            canonical: rdns.join(","),
            single_cn: match <[String; 1]>::try_from(common_names) {
                Ok([cn]) => Some(cn),
                Err(_) => None,
            },
        }
    }

    /// Whether the subject is on `allowed` (canonical forms, see the module documentation).
    pub(super) fn is_allowed(&self, allowed: &[String]) -> bool {
        allowed
            .iter()
            .any(|a| *a == self.canonical || self.single_cn.as_ref() == Some(a))
    }
}

/// Whether a subject reported in canonical form (`CertCheck::Subject`) is on `allowed`: the
/// same test as [`CertSubject::is_allowed`], with the single CN recovered from the canonical
/// text (its AVAs are separated by unescaped `,` and `+`).
pub(super) fn canonical_allowed(canonical: &str, allowed: &[String]) -> bool {
    if allowed.iter().any(|a| a == canonical) {
        return true;
    }
    let cns: Vec<&str> = split_unescaped(canonical, b',')
        .into_iter()
        .flat_map(|rdn| split_unescaped(rdn, b'+'))
        .filter(|ava| ava.starts_with("CN="))
        .collect();
    matches!(cns.as_slice(), [cn] if allowed.iter().any(|a| a == cn))
}

/// The text of an attribute value: the string for the string types, else `#` and hex (and
/// `true`).
fn attribute_text(value: &Any<'_>) -> (String, bool) {
    let data = value.data;
    match value.tag() {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => {
            if let Ok(s) = std::str::from_utf8(data) {
                return (s.to_owned(), false);
            }
        }
        Tag::BmpString if data.len().is_multiple_of(2) => {
            let units = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            if let Ok(s) = char::decode_utf16(units).collect::<Result<String, _>>() {
                return (s, false);
            }
        }
        _ => {}
    }
    let mut out = String::with_capacity(1 + 2 * data.len());
    out.push('#');
    for b in data {
        let _ = write!(out, "{b:02x}");
    }
    (out, true)
}

/// `TYPE=value` with the value escaped, unless `hex` says it is the `#` hex form of a
/// non-string value.
fn format_ava(kind: &str, value: &str, hex: bool) -> String {
    let mut out = String::with_capacity(kind.len() + 1 + value.len());
    out.push_str(kind);
    out.push('=');
    if hex {
        out.push_str(value);
        return out;
    }
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '#' if i == 0 => out.push_str("\\#"),
            c if c.is_control() => {
                let mut utf8 = [0; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    let _ = write!(out, "\\{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Attributes of one RDN, sorted, joined with `+`.
fn join_rdn(mut avas: Vec<String>) -> String {
    avas.sort();
    avas.join("+")
}

/// The canonical name of a configured attribute type.
fn type_name(kind: &str) -> Result<String, SubjectError> {
    let upper = kind.to_ascii_uppercase();
    let oid = upper.strip_prefix("OID.").unwrap_or(&upper);
    for (dotted, name, aliases) in TYPES {
        if oid == *dotted || upper == *name || aliases.contains(&upper.as_str()) {
            return Ok((*name).to_owned());
        }
    }
    let is_oid = oid.split('.').count() >= 2
        && oid
            .split('.')
            .all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
    if is_oid {
        Ok(oid.to_owned())
    } else {
        Err(SubjectError::UnknownType(kind.to_owned()))
    }
}

/// Splits on `sep` where it is not escaped by a backslash.
fn split_unescaped(text: &str, sep: u8) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == sep {
            parts.push(&text[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    parts.push(text.get(start..).unwrap_or_default());
    parts
}

/// Trims spaces around a raw value, keeping an escaped trailing space (`\ `).
fn trim_unescaped(value: &str) -> &str {
    let value = value.trim_start();
    let mut end = value.trim_end().len();
    let backslashes = value[..end]
        .bytes()
        .rev()
        .take_while(|&b| b == b'\\')
        .count();
    if backslashes % 2 == 1 {
        // The (possibly multi-byte) space after an odd number of backslashes is escaped.
        end += value[end..].chars().next().map_or(0, char::len_utf8);
    }
    &value[..end]
}

/// Resolves RFC 4514 escapes: `\` and a special character, or `\` and two hex digits (UTF-8
/// bytes).
fn unescape(raw: &str) -> Result<String, SubjectError> {
    if raw.starts_with('#') || raw.contains('"') {
        return Err(SubjectError::Unsupported);
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'\\' {
            bytes.push(b);
            continue;
        }
        match rest {
            [h, l, tail @ ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                let hex = [*h, *l];
                let hex = std::str::from_utf8(&hex).map_err(|_| SubjectError::BadEscape)?;
                bytes.push(u8::from_str_radix(hex, 16).map_err(|_| SubjectError::BadEscape)?);
                rest = tail;
            }
            [c, tail @ ..] if b",+\"\\<>;=# ".contains(c) => {
                bytes.push(*c);
                rest = tail;
            }
            _ => return Err(SubjectError::BadEscape),
        }
    }
    String::from_utf8(bytes).map_err(|_| SubjectError::BadEscape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_subjects_are_rechecked_like_parsed_ones() {
        let subject = "CN=agent01,O=Contoso";
        let allowed =
            |list: &[&str]| -> Vec<String> { list.iter().map(|s| s.to_string()).collect() };
        assert!(canonical_allowed(
            subject,
            &allowed(&["CN=agent01,O=Contoso"])
        ));
        assert!(
            canonical_allowed(subject, &allowed(&["CN=agent01"])),
            "single CN"
        );
        assert!(!canonical_allowed(subject, &allowed(&["CN=agent02"])));
        assert!(!canonical_allowed(subject, &allowed(&["O=Contoso"])));
        // Two CNs: no single-CN match.
        assert!(!canonical_allowed("CN=a,CN=b", &allowed(&["CN=a"])));
        // An escaped comma stays inside its value.
        assert!(canonical_allowed("CN=a\\,b,O=x", &allowed(&["CN=a\\,b"])));
        assert!(!canonical_allowed("CN=a\\,b,O=x", &allowed(&["CN=a"])));
    }

    fn norm(s: &str) -> String {
        match normalize_subject(s) {
            Ok(n) => n,
            Err(e) => panic!("{s:?}: {e}"),
        }
    }

    #[test]
    fn normalises_configured_subjects() {
        let cases = [
            ("CN=agent01", "CN=agent01"),
            ("cn = agent01", "CN=agent01"),
            ("  CN=agent01 ,  O = Contoso  ", "CN=agent01,O=Contoso"),
            (
                "CN=agent01, OU=Ops, O=Contoso, C=US",
                "CN=agent01,OU=Ops,O=Contoso,C=US",
            ),
            ("S=WA,E=a@b.example", "ST=WA,E=a@b.example"),
            ("emailAddress=a@b.example", "E=a@b.example"),
            ("OID.2.5.4.3=x", "CN=x"),
            ("2.5.4.10=Contoso", "O=Contoso"),
            ("1.3.6.1.4.1.311.60.2.1.3=US", "1.3.6.1.4.1.311.60.2.1.3=US"),
            ("O=Contoso\\, Ltd", "O=Contoso\\, Ltd"),
            ("O=Contoso\\2C Ltd", "O=Contoso\\, Ltd"),
            ("CN=a\\+b", "CN=a\\+b"),
            ("CN=x+OU=b", "CN=x+OU=b"),
            ("OU=b + CN=x", "CN=x+OU=b"),
            ("CN=a=b", "CN=a=b"),
            ("CN=\\ padded\\ ", "CN=\\ padded\\ "),
            ("CN=a\\\\ ", "CN=a\\\\"),
            ("CN=\\#1", "CN=\\#1"),
            ("CN=caf\\C3\\A9", "CN=café"),
            ("CN=Agent01", "CN=Agent01"),
            ("CN=a\\0Ab", "CN=a\\0Ab"),
        ];
        for (input, want) in cases {
            assert_eq!(norm(input), want, "{input:?}");
            assert_eq!(
                norm(want),
                want,
                "canonical form is a fixed point: {want:?}"
            );
        }
    }

    #[test]
    fn refuses_bad_subjects() {
        let cases = [
            ("", SubjectError::Empty),
            ("   ", SubjectError::Empty),
            ("agent01", SubjectError::NoEquals("agent01".into())),
            ("CN=a,", SubjectError::NoEquals(String::new())),
            ("CN=a,,O=b", SubjectError::NoEquals(String::new())),
            ("XX=a", SubjectError::UnknownType("XX".into())),
            ("1.=a", SubjectError::UnknownType("1.".into())),
            ("CN=", SubjectError::EmptyValue("CN".into())),
            ("CN=  ", SubjectError::EmptyValue("CN".into())),
            ("CN=a\\", SubjectError::BadEscape),
            ("CN=a\\x", SubjectError::BadEscape),
            ("CN=\\FF", SubjectError::BadEscape),
            ("CN=#0403", SubjectError::Unsupported),
            ("CN=a\\\u{3000}", SubjectError::BadEscape),
            ("CN=a\\\u{a0}b", SubjectError::BadEscape),
            ("CN=\"a,b\"", SubjectError::Unsupported),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_subject(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn matching_rules() {
        let subject = |canonical: &str, cn: Option<&str>| CertSubject {
            canonical: canonical.to_owned(),
            single_cn: cn.map(str::to_owned),
        };
        let list = |items: &[&str]| items.iter().map(|s| norm(s)).collect::<Vec<_>>();
        let only = subject("CN=agent01", Some("CN=agent01"));
        let full = subject("CN=agent01,O=Contoso", Some("CN=agent01"));
        let two = subject("CN=agent01,CN=other", None);
        // Exact whole subjects.
        assert!(only.is_allowed(&list(&["CN=agent01"])));
        assert!(full.is_allowed(&list(&["CN=agent01, O=Contoso"])));
        assert!(!only.is_allowed(&list(&["CN=agent01,O=Contoso"])));
        assert!(
            !full.is_allowed(&list(&["O=Contoso,CN=agent01"])),
            "order matters"
        );
        // A bare CN matches a single CN among other attributes.
        assert!(full.is_allowed(&list(&["CN=agent01"])));
        assert!(
            !two.is_allowed(&list(&["CN=agent01"])),
            "two CNs: only the full subject"
        );
        assert!(two.is_allowed(&list(&["CN=agent01,CN=other"])));
        // Values are case-sensitive; types are not.
        assert!(!full.is_allowed(&list(&["CN=Agent01"])));
        assert!(full.is_allowed(&list(&["cn=agent01"])));
        assert!(!full.is_allowed(&list(&["CN=agent0"])));
        assert!(
            !full.is_allowed(&list(&["O=Contoso"])),
            "only CN is matched alone"
        );
        assert!(!full.is_allowed(&[]));
    }

    #[test]
    fn escapes_certificate_values() {
        assert_eq!(format_ava("CN", "a,b", false), "CN=a\\,b");
        assert_eq!(format_ava("CN", " a ", false), "CN=\\ a\\ ");
        assert_eq!(format_ava("CN", "#x", false), "CN=\\#x");
        assert_eq!(format_ava("CN", "#0c02", false), "CN=\\#0c02");
        assert_eq!(format_ava("CN", "#0c02", true), "CN=#0c02");
        assert_eq!(
            format_ava("CN", "a\nb\u{7f}\u{85}", false),
            "CN=a\\0Ab\\7F\\C2\\85"
        );
        assert_eq!(format_ava("CN", "café", false), "CN=café");
        assert_eq!(format_ava("CN", " ", false), "CN=\\ ");
    }
}
