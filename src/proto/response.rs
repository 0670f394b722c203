//! Canned HTTP/1.1 responses the gateway writes to clients.
//!
//! Every response is a complete `&'static [u8]`, so the engine writes it without formatting or
//! allocating. `200 Connection established` is the bare status line the CONNECT success response
//! needs; every refusal closes the connection and carries a short `text/plain` body with an exact
//! `Content-Length`.

/// The responses the gateway can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200: the tunnel is up; bytes after this are the tunnel.
    Established,
    /// 400: a malformed head.
    BadRequest,
    /// 403: refused by policy.
    Forbidden,
    /// 405: a method other than CONNECT.
    MethodNotAllowed,
    /// 408: the head did not arrive in time.
    RequestTimeout,
    /// 431: the head is too large.
    HeaderTooLarge,
    /// 502: the upstream could not be resolved or connected to.
    BadGateway,
    /// 503: the gateway is draining or out of capacity.
    ServiceUnavailable,
    /// 504: connecting to the upstream timed out.
    GatewayTimeout,
    /// 407: proxy authentication is required.
    ProxyAuthRequired,
    /// 429: too many failed logins from this address.
    TooManyRequests,
}

/// Builds a refusal: status line, common headers, `extra` header lines, and the body with its
/// length (checked by a test, since `concat!` cannot count).
macro_rules! refusal {
    ($status:literal, $extra:literal, $len:literal, $body:literal) => {
        concat!(
            "HTTP/1.1 ",
            $status,
            "\r\nServer: splicegate\r\nConnection: close\r\nContent-Type: text/plain\r\n",
            $extra,
            "Content-Length: ",
            $len,
            "\r\n\r\n",
            $body
        )
        .as_bytes()
    };
}

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";
const BAD_REQUEST: &[u8] = refusal!("400 Bad Request", "", "12", "bad request\n");
const FORBIDDEN: &[u8] = refusal!(
    "403 Forbidden",
    "",
    "38",
    "destination not allowed by splicegate\n"
);
const METHOD_NOT_ALLOWED: &[u8] = refusal!(
    "405 Method Not Allowed",
    "Allow: CONNECT\r\n",
    "26",
    "only CONNECT is supported\n"
);
const REQUEST_TIMEOUT: &[u8] = refusal!("408 Request Timeout", "", "16", "request timeout\n");
const HEADER_TOO_LARGE: &[u8] = refusal!(
    "431 Request Header Fields Too Large",
    "",
    "32",
    "request header fields too large\n"
);
const BAD_GATEWAY: &[u8] = refusal!("502 Bad Gateway", "", "12", "bad gateway\n");
const SERVICE_UNAVAILABLE: &[u8] =
    refusal!("503 Service Unavailable", "", "20", "service unavailable\n");
const GATEWAY_TIMEOUT: &[u8] = refusal!("504 Gateway Timeout", "", "16", "gateway timeout\n");
const PROXY_AUTH_REQUIRED: &[u8] = refusal!(
    "407 Proxy Authentication Required",
    "Proxy-Authenticate: Basic realm=\"splicegate\"\r\n",
    "30",
    "proxy authentication required\n"
);

const TOO_MANY_REQUESTS: &[u8] = refusal!(
    "429 Too Many Requests",
    "Retry-After: 60\r\n",
    "23",
    "too many failed logins\n"
);

impl Status {
    /// Every status, for tests and for pre-registering metric labels.
    pub const ALL: [Status; 11] = [
        Status::Established,
        Status::BadRequest,
        Status::Forbidden,
        Status::MethodNotAllowed,
        Status::RequestTimeout,
        Status::HeaderTooLarge,
        Status::BadGateway,
        Status::ServiceUnavailable,
        Status::GatewayTimeout,
        Status::ProxyAuthRequired,
        Status::TooManyRequests,
    ];

    /// The numeric status code.
    pub fn code(&self) -> u16 {
        match self {
            Status::Established => 200,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::HeaderTooLarge => 431,
            Status::BadGateway => 502,
            Status::ServiceUnavailable => 503,
            Status::GatewayTimeout => 504,
            Status::ProxyAuthRequired => 407,
            Status::TooManyRequests => 429,
        }
    }

    /// The complete response: status line, headers and body.
    pub fn bytes(&self) -> &'static [u8] {
        match self {
            Status::Established => ESTABLISHED,
            Status::BadRequest => BAD_REQUEST,
            Status::Forbidden => FORBIDDEN,
            Status::MethodNotAllowed => METHOD_NOT_ALLOWED,
            Status::RequestTimeout => REQUEST_TIMEOUT,
            Status::HeaderTooLarge => HEADER_TOO_LARGE,
            Status::BadGateway => BAD_GATEWAY,
            Status::ServiceUnavailable => SERVICE_UNAVAILABLE,
            Status::GatewayTimeout => GATEWAY_TIMEOUT,
            Status::ProxyAuthRequired => PROXY_AUTH_REQUIRED,
            Status::TooManyRequests => TOO_MANY_REQUESTS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a response into its status code, header fields and body using `httparse`.
    fn parse(bytes: &[u8]) -> (u16, Vec<(String, String)>, &[u8]) {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(bytes) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("incomplete or invalid response: {other:?}"),
        };
        let fields = resp
            .headers
            .iter()
            .map(|h| {
                let value = std::str::from_utf8(h.value).expect("ascii value");
                (h.name.to_owned(), value.to_owned())
            })
            .collect();
        (resp.code.expect("code"), fields, &bytes[len..])
    }

    fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn established_is_bare() {
        assert_eq!(
            Status::Established.bytes(),
            b"HTTP/1.1 200 Connection established\r\n\r\n"
        );
        assert_eq!(Status::Established.code(), 200);
    }

    #[test]
    fn refusals_are_complete_and_consistent() {
        for status in Status::ALL {
            let bytes = status.bytes();
            assert!(bytes.is_ascii());
            let (code, fields, body) = parse(bytes);
            assert_eq!(code, status.code(), "{status:?}");
            let status_line = format!("HTTP/1.1 {} ", status.code());
            assert!(bytes.starts_with(status_line.as_bytes()), "{status:?}");
            if status == Status::Established {
                assert!(fields.is_empty());
                assert!(body.is_empty());
                continue;
            }
            let len: usize = field(&fields, "Content-Length")
                .expect("Content-Length")
                .parse()
                .expect("numeric Content-Length");
            assert_eq!(len, body.len(), "{status:?}");
            assert!(body.ends_with(b"\n") && body.len() > 1, "{status:?}");
            assert_eq!(field(&fields, "Connection"), Some("close"), "{status:?}");
            assert_eq!(field(&fields, "Content-Type"), Some("text/plain"));
            assert_eq!(field(&fields, "Server"), Some("splicegate"));
            let allow = field(&fields, "Allow");
            let auth = field(&fields, "Proxy-Authenticate");
            match status {
                Status::MethodNotAllowed => assert_eq!(allow, Some("CONNECT")),
                Status::ProxyAuthRequired => {
                    assert_eq!(auth, Some("Basic realm=\"splicegate\""))
                }
                _ => assert_eq!((allow, auth), (None, None), "{status:?}"),
            }
        }
    }

    #[test]
    fn codes_and_reasons() {
        let cases = [
            (Status::BadRequest, "400 Bad Request"),
            (Status::Forbidden, "403 Forbidden"),
            (Status::MethodNotAllowed, "405 Method Not Allowed"),
            (Status::RequestTimeout, "408 Request Timeout"),
            (
                Status::HeaderTooLarge,
                "431 Request Header Fields Too Large",
            ),
            (Status::BadGateway, "502 Bad Gateway"),
            (Status::ServiceUnavailable, "503 Service Unavailable"),
            (Status::GatewayTimeout, "504 Gateway Timeout"),
            (
                Status::ProxyAuthRequired,
                "407 Proxy Authentication Required",
            ),
        ];
        for (status, line) in cases {
            let want = format!("HTTP/1.1 {line}\r\n");
            assert!(status.bytes().starts_with(want.as_bytes()), "{status:?}");
            assert_eq!(line[..3].parse::<u16>().ok(), Some(status.code()));
        }
    }
}
