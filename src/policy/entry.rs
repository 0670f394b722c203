//! One allowlist entry as written in `allowed_hosts`, a preset or `client_auth.user_hosts`: a
//! [`HostPattern`] with, optionally, its own ports.
//!
//! ```text
//! *.ods.opinsights.azure.com               the global allowed_ports
//! *.cloudapp.net:443,9354,30000-30199      its own ports and ranges
//! login.windows.net:80,443
//! [2001:db8::1]:443                        an IPv6 literal with ports, in brackets
//! 2001:db8::1                              a bare IPv6 literal never has ports
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use super::allowlist::{HostPattern, PatternError};
use super::ports::{PortList, PortListError};

/// Why an allowlist entry does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("{0}")]
    Pattern(#[from] PatternError),
    #[error("{0}")]
    Ports(#[from] PortListError),
    #[error("only an IPv6 address goes in brackets, as in \"[2001:db8::1]:443\"")]
    Brackets,
    #[error("a host is followed by ':' and its ports, as in \"example.com:443\"; an IPv6 address with ports goes in brackets, as in \"[2001:db8::1]:443\"")]
    Colons,
}

/// A host pattern and the ports it may be reached on: `None` = the global `allowed_ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostEntry {
    pattern: HostPattern,
    ports: Option<PortList>,
}

impl HostEntry {
    /// An entry from its parts.
    pub fn new(pattern: HostPattern, ports: Option<PortList>) -> HostEntry {
        HostEntry { pattern, ports }
    }

    /// Parses `HOST` or `HOST:PORTS` (see the module documentation). The host part follows
    /// [`HostPattern::parse`]; the ports follow [`PortList::parse`].
    pub fn parse(s: &str) -> Result<HostEntry, EntryError> {
        if s.is_empty() {
            return Err(PatternError::Empty.into());
        }
        if s.chars().any(char::is_whitespace) {
            return Err(PatternError::Whitespace.into());
        }
        if s.contains("://") {
            return Err(PatternError::Scheme.into());
        }
        if let Some(rest) = s.strip_prefix('[') {
            let Some((inner, after)) = rest.split_once(']') else {
                return Err(EntryError::Brackets);
            };
            if inner.parse::<Ipv6Addr>().is_err() {
                return Err(EntryError::Brackets);
            }
            let pattern = HostPattern::parse(&format!("[{inner}]"))?;
            let ports = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(list) => Some(PortList::parse(list)?),
                    None => return Err(EntryError::Colons),
                },
            };
            return Ok(HostEntry { pattern, ports });
        }
        // A bare IP literal (IPv6 included) is the whole entry: `2001:db8::1:443` is an address.
        if s.parse::<IpAddr>().is_ok() {
            return Ok(HostEntry {
                pattern: HostPattern::parse(s)?,
                ports: None,
            });
        }
        match s.split_once(':') {
            None => Ok(HostEntry {
                pattern: HostPattern::parse(s)?,
                ports: None,
            }),
            Some((host, list)) => {
                if host.contains('/') {
                    return Err(PatternError::Path.into());
                }
                if list.contains(':') {
                    return Err(EntryError::Colons);
                }
                let pattern = HostPattern::parse(host)?;
                Ok(HostEntry {
                    pattern,
                    ports: Some(PortList::parse(list)?),
                })
            }
        }
    }

    /// The host pattern.
    pub fn pattern(&self) -> &HostPattern {
        &self.pattern
    }

    /// The entry's own ports; `None` = the global `allowed_ports`.
    pub fn ports(&self) -> Option<&PortList> {
        self.ports.as_ref()
    }
}

impl fmt::Display for HostEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ports {
            None => write!(f, "{}", self.pattern),
            Some(ports) => {
                let host = self.pattern.to_string();
                if host.contains(':') {
                    write!(f, "[{host}]:{ports}")
                } else {
                    write!(f, "{host}:{ports}")
                }
            }
        }
    }
}

impl FromStr for HostEntry {
    type Err = EntryError;

    fn from_str(s: &str) -> Result<HostEntry, EntryError> {
        HostEntry::parse(s)
    }
}

impl From<HostPattern> for HostEntry {
    fn from(pattern: HostPattern) -> HostEntry {
        HostEntry {
            pattern,
            ports: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(s: &str) -> HostEntry {
        match HostEntry::parse(s) {
            Ok(e) => e,
            Err(err) => panic!("{s:?} should parse: {err}"),
        }
    }

    #[test]
    fn parse_entries() {
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            ("example.com", "example.com", None, "example.com"),
            ("Example.COM.", "example.com", None, "example.com"),
            (
                "*.cloudapp.net:443,9354,30000-30199",
                "*.cloudapp.net",
                Some("443,9354,30000-30199"),
                "*.cloudapp.net:443,9354,30000-30199",
            ),
            (
                "login.windows.net:443,80,443",
                "login.windows.net",
                Some("80,443"),
                "login.windows.net:80,443",
            ),
            (
                "[2001:DB8::1]:443",
                "2001:db8::1",
                Some("443"),
                "[2001:db8::1]:443",
            ),
            ("[2001:db8::1]", "2001:db8::1", None, "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1", None, "2001:db8::1"),
            // A bare IPv6 literal has no ports: this is the address 2001:db8::1:443.
            (
                "2001:db8::1:443",
                "2001:db8::1:443",
                None,
                "2001:db8::1:443",
            ),
            ("203.0.113.7", "203.0.113.7", None, "203.0.113.7"),
            (
                "203.0.113.7:8443",
                "203.0.113.7",
                Some("8443"),
                "203.0.113.7:8443",
            ),
        ];
        for &(input, pattern, ports, display) in cases {
            let e = entry(input);
            assert_eq!(e.pattern().to_string(), pattern, "{input:?}");
            assert_eq!(
                e.ports().map(ToString::to_string).as_deref(),
                ports,
                "{input:?}"
            );
            assert_eq!(e.to_string(), display, "{input:?}");
            assert_eq!(entry(display), e, "display round-trips for {input:?}");
        }
    }

    #[test]
    fn reject_entries() {
        let bad: &[(&str, EntryError)] = &[
            ("", PatternError::Empty.into()),
            ("x:", PortListError::Empty.into()),
            ("x:0", PortListError::OutOfRange("0".into()).into()),
            ("x:70000", PortListError::OutOfRange("70000".into()).into()),
            ("x:443-80", PortListError::Backwards(443, 80).into()),
            ("x:https", PortListError::NotANumber("https".into()).into()),
            (":443", PatternError::Empty.into()),
            ("*.:443", PatternError::Wildcard.into()),
            ("a:b:443", EntryError::Colons),
            ("[2001:db8::1]443", EntryError::Colons),
            ("[2001:db8::1]:", PortListError::Empty.into()),
            ("[example.com]:443", EntryError::Brackets),
            ("[10.0.0.1]:443", EntryError::Brackets),
            ("[2001:db8::1", EntryError::Brackets),
            ("https://example.com:443", PatternError::Scheme.into()),
            ("example.com/x:443", PatternError::Path.into()),
            ("example.com: 443", PatternError::Whitespace.into()),
            ("10.0.0.0/8", PatternError::Path.into()),
        ];
        for (input, want) in bad {
            assert_eq!(HostEntry::parse(input).as_ref(), Err(want), "{input:?}");
        }
    }
}
