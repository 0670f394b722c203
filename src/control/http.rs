//! The loopback HTTP endpoint: `GET /metrics`, `/healthz`, `/readyz`. Read-only, off the data
//! path, on the control runtime.
//!
//! Three fixed GET routes with `Connection: close` do not need an HTTP library: a bounded read of
//! the request line, a canned answer, and a timeout so a silent client cannot hold a task.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;
use crate::relay::RelayHost;
use crate::settings::Shared;

const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const RELAY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Serve until the listener fails.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, current: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let m = Arc::clone(&metrics);
        let c = Arc::clone(&current);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, m, c)).await;
        });
    }
}

async fn handle(
    mut stream: TcpStream,
    metrics: Arc<Metrics>,
    current: Shared,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&mut stream, 431, "text/plain", b"request too large\n").await;
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", b"only GET\n").await;
    }
    match path {
        "/metrics" => match metrics.render() {
            Ok(text) => {
                respond(
                    &mut stream,
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text.as_bytes(),
                )
                .await
            }
            Err(_) => respond(&mut stream, 500, "text/plain", b"encoding failed\n").await,
        },
        "/healthz" | "/live" => respond(&mut stream, 200, "text/plain", b"ok\n").await,
        "/readyz" | "/ready" => {
            let s = &metrics.status;
            let (alive, configured) = metrics.workers();
            if s.draining.load(Relaxed) {
                respond(&mut stream, 503, "text/plain", b"draining\n").await
            } else if !s.listening.load(Relaxed) {
                respond(&mut stream, 503, "text/plain", b"starting\n").await
            } else if alive < configured {
                // A worker died: its share of clients is served by the others, at reduced capacity.
                let why = format!("{alive} of {configured} workers alive\n");
                respond(&mut stream, 503, "text/plain", why.as_bytes()).await
            } else if let Err(why) = relay_reachable(&current).await {
                respond(&mut stream, 503, "text/plain", why.as_bytes()).await
            } else {
                respond(&mut stream, 200, "text/plain", b"ready\n").await
            }
        }
        _ => respond(&mut stream, 404, "text/plain", b"not found\n").await,
    }
}

/// With `relay_proxy.health_check`, readiness also means the relay accepts a TCP connection
/// (within [`RELAY_CHECK_TIMEOUT`]): a gateway whose relay is down tells its load balancer.
async fn relay_reachable(current: &Shared) -> Result<(), String> {
    let settings = current.load_full();
    let Some(relay) = settings.relay.as_ref().filter(|r| r.health_check) else {
        return Ok(());
    };
    let target = match &relay.host {
        RelayHost::Ip(ip) => std::net::SocketAddr::new(*ip, relay.port).to_string(),
        RelayHost::Name(n) => format!("{n}:{}", relay.port),
    };
    match tokio::time::timeout(RELAY_CHECK_TIMEOUT, TcpStream::connect(&target)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!(
            "relay proxy {} unreachable: {e}\n",
            relay.address()
        )),
        Err(_) => Err(format!(
            "relay proxy {} did not accept within {RELAY_CHECK_TIMEOUT:?}\n",
            relay.address()
        )),
    }
}

async fn respond(
    stream: &mut TcpStream,
    code: u16,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}
