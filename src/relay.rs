//! The relay (upstream) proxy: when the gateway host has no direct internet either, every allowed
//! tunnel is opened through the corporate proxy with `CONNECT host:port` (the old
//! `Set-OMSGatewayRelayProxy`).
//!
//! This module holds the validated relay settings and the sans-IO pieces: the request the gateway
//! sends to the relay and the parser for the relay's answer. The engine dials the relay, writes
//! the request, feeds the answer to [`parse_answer`], and on `200` runs the tunnel as usual.
//!
//! Choices:
//! - The destination name is passed to the relay unresolved: the relay resolves it. The gateway's
//!   private-destination guard therefore applies only to IP-literal targets (checked before
//!   anything is sent); the relay's own address is configured by the operator, is usually private
//!   (a corporate proxy), and is not subject to the guard. The `hosts:` overrides do not apply to
//!   relayed tunnels.
//! - The password is read once from a file that must not be readable by other users (mode
//!   `o-r`), relative paths are looked up in systemd's `$CREDENTIALS_DIRECTORY` when set
//!   (`LoadCredential=`), and it is never logged or printed: [`Secret`] has a redacted `Debug`.

use std::fmt;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::proto::connect::Authority;

/// How the gateway talks to the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The relay's host as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayHost {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for RelayHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayHost::Name(n) => f.write_str(n),
            RelayHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            RelayHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A string that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The validated `relay_proxy:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    pub scheme: Scheme,
    pub host: RelayHost,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    /// `/readyz` also checks that the relay accepts TCP connections.
    pub health_check: bool,
    /// For an `https://` relay (and only then): the TLS client side, built once when the
    /// configuration is parsed, so a bad `ca_file` fails the start or the reload, never a tunnel.
    pub tls: Option<RelayTls>,
}

/// The TLS client configuration for an `https://` relay and the name its certificate must
/// carry; made by [`RelayTls::build`] while the configuration is parsed.
#[derive(Debug, Clone)]
pub struct RelayTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl RelayTls {
    /// The system's trust store plus the certificates in `ca_file`, for the relay at `host`.
    pub fn build(host: &RelayHost, ca_file: Option<&Path>) -> Result<RelayTls, RelayError> {
        Ok(RelayTls {
            config: client_config(ca_file)?,
            server_name: server_name(host)?,
        })
    }
}

/// Equal when they verify the same name: the client configuration is derived from `ca_file`,
/// which [`RelaySettings`] compares itself (a rustls configuration has no equality).
impl PartialEq for RelayTls {
    fn eq(&self, other: &RelayTls) -> bool {
        self.server_name == other.server_name
    }
}

impl Eq for RelayTls {}

impl RelaySettings {
    /// `http://host:port` as configured, without credentials.
    pub fn address(&self) -> String {
        format!("{}://{}:{}", self.scheme.as_str(), self.host, self.port)
    }

    /// The `Proxy-Authorization` value, when credentials are configured.
    pub fn authorization(&self) -> Option<String> {
        let user = self.username.as_deref()?;
        let pass = self.password.as_ref().map_or("", |p| p.expose());
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))
    }

    /// The request sent to the relay for `target`.
    pub fn connect_request(&self, target: &Authority) -> Vec<u8> {
        let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(auth) = self.authorization() {
            req.push_str("Proxy-Authorization: ");
            req.push_str(&auth);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        req.into_bytes()
    }
}

/// Why a relay address or password file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelayError {
    #[error("expected a URL such as \"http://proxy.corp:8080\" or \"https://proxy.corp:8443\", found {0:?}")]
    Url(String),
    #[error("the relay URL must not carry credentials: use `username` and `password_file`")]
    Credentials,
    #[error("cannot read the password file {0}: {1}")]
    PasswordRead(String, String),
    #[error(
        "the password file {0} is readable by other users (mode {1:o}); run `chmod o-rwx` on it"
    )]
    PasswordWorldReadable(String, u32),
    #[error("`password_file` needs `username`")]
    PasswordWithoutUser,
    #[error("cannot use the CA file {0}: {1}")]
    CaFile(String, String),
    #[error("no trusted CA certificates: the system store is empty and no `ca_file` is set")]
    NoRoots,
    #[error("TLS set-up for the relay failed: {0}")]
    Tls(String),
}

/// Parse `http://host[:port]` or `https://host[:port]` (default ports 80 and 443; a trailing `/`
/// is allowed, any other path is not).
pub fn parse_address(url: &str) -> Result<(Scheme, RelayHost, u16), RelayError> {
    let bad = || RelayError::Url(url.to_owned());
    let (scheme, rest) = if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else {
        return Err(bad());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('@') {
        return Err(RelayError::Credentials);
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(bad());
    }
    let default_port = match scheme {
        Scheme::Http => 80,
        Scheme::Https => 443,
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (ip, after) = v6.split_once(']').ok_or_else(bad)?;
        let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| bad())?;
        let port = match after.strip_prefix(':') {
            Some(p) => parse_port(p).ok_or_else(bad)?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        (RelayHost::Ip(IpAddr::V6(ip)), port)
    } else {
        let (h, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p).ok_or_else(bad)?),
            None => (rest, default_port),
        };
        let host = match h.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => RelayHost::Ip(IpAddr::V4(ip)),
            Err(_) => RelayHost::Name(crate::policy::normalize_host(h).ok_or_else(bad)?),
        };
        (host, port)
    };
    Ok((scheme, host, port))
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok().filter(|n| *n != 0)
}

/// Where a configured password file really is: relative paths live in systemd's
/// `$CREDENTIALS_DIRECTORY` (`LoadCredential=`) when that is set.
pub fn resolve_password_path(path: &Path) -> PathBuf {
    if path.is_relative() {
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            return Path::new(&dir).join(path);
        }
    }
    path.to_path_buf()
}

/// Read the password (first line, without the line ending) from a file not readable by others.
pub fn read_password(path: &Path) -> Result<Secret, RelayError> {
    let real = resolve_password_path(path);
    let shown = real.display().to_string();
    let meta = std::fs::metadata(&real)
        .map_err(|e| RelayError::PasswordRead(shown.clone(), e.to_string()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o004 != 0 {
        return Err(RelayError::PasswordWorldReadable(shown, mode));
    }
    let text = std::fs::read_to_string(&real)
        .map_err(|e| RelayError::PasswordRead(shown, e.to_string()))?;
    let line = text.lines().next().unwrap_or("");
    Ok(Secret(line.to_owned()))
}

/// The TLS client configuration for an `https://` relay: the system's trust store plus the
/// certificates in `ca_file`.
fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, RelayError> {
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system roots are not fatal when a ca_file names the relay's issuer.
    let native = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| RelayError::CaFile(shown.clone(), e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RelayError::CaFile(shown.clone(), e.to_string()))?;
        if certs.is_empty() {
            return Err(RelayError::CaFile(shown, "no PEM certificate in it".into()));
        }
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(RelayError::CaFile(
                shown,
                "no usable certificate in it".into(),
            ));
        }
    }
    if roots.is_empty() {
        return Err(RelayError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name the relay's certificate must carry.
fn server_name(host: &RelayHost) -> Result<ServerName<'static>, RelayError> {
    match host {
        RelayHost::Ip(ip) => Ok(ServerName::IpAddress((*ip).into())),
        RelayHost::Name(n) => {
            ServerName::try_from(n.clone()).map_err(|e| RelayError::Tls(e.to_string()))
        }
    }
}

/// The relay's answer to our CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub reason: String,
    /// Bytes of the answer head; anything after it is tunnel data for the client.
    pub head_len: usize,
}

/// Largest relay answer head accepted.
pub const MAX_ANSWER: usize = 16 * 1024;

/// Parse the relay's answer: `Ok(None)` until the head is complete, `Err` for garbage or a head
/// over [`MAX_ANSWER`]. A head over the limit is refused even when it is complete in `buf`, so
/// the outcome does not depend on how the answer was split into reads.
pub fn parse_answer(buf: &[u8]) -> Result<Option<Answer>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n > MAX_ANSWER => Err("relay answer too large"),
        Ok(httparse::Status::Complete(n)) => Ok(Some(Answer {
            status: resp.code.unwrap_or(0),
            reason: resp
                .reason
                .unwrap_or("")
                .chars()
                .filter(|c| !c.is_control())
                .take(64)
                .collect(),
            head_len: n,
        })),
        Ok(httparse::Status::Partial) if buf.len() < MAX_ANSWER => Ok(None),
        Ok(httparse::Status::Partial) => Err("relay answer too large"),
        Err(_) => Err("relay answer is not HTTP"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::connect::Host;

    #[test]
    fn addresses_parse_with_default_ports() {
        assert_eq!(
            parse_address("http://proxy.corp:8080").unwrap(),
            (Scheme::Http, RelayHost::Name("proxy.corp".into()), 8080)
        );
        assert_eq!(
            parse_address("https://Proxy.Corp/").unwrap(),
            (Scheme::Https, RelayHost::Name("proxy.corp".into()), 443)
        );
        assert_eq!(
            parse_address("http://10.80.2.200").unwrap(),
            (
                Scheme::Http,
                RelayHost::Ip("10.80.2.200".parse().unwrap()),
                80
            )
        );
        assert_eq!(
            parse_address("http://[::1]:3128").unwrap(),
            (Scheme::Http, RelayHost::Ip("::1".parse().unwrap()), 3128)
        );
        for bad in [
            "proxy:8080",
            "socks5://p:1080",
            "http://",
            "http://p:0",
            "http://p:65536",
            "http://p:80/path",
            "http://p:x",
            "http://[::1",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_address("http://u:p@proxy:8080"),
            Err(RelayError::Credentials)
        );
    }

    #[test]
    fn request_carries_basic_credentials() {
        let s = RelaySettings {
            scheme: Scheme::Http,
            host: RelayHost::Name("proxy".into()),
            port: 3128,
            username: Some("user1".into()),
            password: Some(Secret("123".into())),
            password_file: None,
            ca_file: None,
            health_check: false,
            tls: None,
        };
        let t = Authority {
            host: Host::Name("ws1.ods.opinsights.azure.com".into()),
            port: 443,
        };
        let req = String::from_utf8(s.connect_request(&t)).unwrap();
        assert_eq!(
            req,
            "CONNECT ws1.ods.opinsights.azure.com:443 HTTP/1.1\r\nHost: ws1.ods.opinsights.azure.com:443\r\nProxy-Authorization: Basic dXNlcjE6MTIz\r\n\r\n"
        );
        assert!(
            !format!("{s:?}").contains("123"),
            "Debug must not show the password"
        );
        let anon = RelaySettings {
            username: None,
            password: None,
            ..s
        };
        assert!(!String::from_utf8(anon.connect_request(&t))
            .unwrap()
            .contains("Proxy-Authorization"));
    }

    #[test]
    fn answers_parse_incrementally() {
        let full = b"HTTP/1.1 200 Connection established\r\nVia: squid\r\n\r\nEARLY";
        for i in 0..full.len() - 5 {
            assert_eq!(parse_answer(&full[..i]), Ok(None), "prefix {i}");
        }
        let a = parse_answer(full).unwrap().unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(&full[a.head_len..], b"EARLY");
        let a = parse_answer(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.status, a.reason.as_str()),
            (407, "Proxy Authentication Required")
        );
        assert!(parse_answer(b"\x16\x03\x01garbage\r\n\r\n").is_err());
        assert!(parse_answer(&vec![b'a'; MAX_ANSWER + 1]).is_err());
    }

    #[test]
    fn a_head_over_the_limit_is_refused_however_it_arrives() {
        // 60 headers of 300 bytes: complete at about 18 KiB. The engine reads up to 4 KiB past
        // the limit before parsing, so the whole head can be in the buffer at once.
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..60 {
            head.extend(format!("X-Pad-{i}: {}\r\n", "p".repeat(290)).bytes());
        }
        head.extend(b"\r\n");
        assert!(head.len() > MAX_ANSWER && head.len() < MAX_ANSWER + 4096);
        assert_eq!(
            parse_answer(&head[..MAX_ANSWER]),
            Err("relay answer too large")
        );
        assert_eq!(parse_answer(&head), Err("relay answer too large"));
    }

    #[test]
    fn password_file_must_not_be_world_readable() {
        let dir = std::env::temp_dir().join(format!("splicegate-relay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("pw");
        std::fs::write(&p, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_password(&p),
            Err(RelayError::PasswordWorldReadable(_, 0o644))
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password(&p).unwrap().expose(), "s3cret");
        assert!(matches!(
            read_password(&dir.join("missing")),
            Err(RelayError::PasswordRead(..))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
