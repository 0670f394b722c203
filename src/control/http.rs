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

const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serve until the listener fails.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let m = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, m)).await;
        });
    }
}

async fn handle(mut stream: TcpStream, metrics: Arc<Metrics>) -> std::io::Result<()> {
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
            if s.draining.load(Relaxed) {
                respond(&mut stream, 503, "text/plain", b"draining\n").await
            } else if !s.listening.load(Relaxed) {
                respond(&mut stream, 503, "text/plain", b"starting\n").await
            } else {
                respond(&mut stream, 200, "text/plain", b"ready\n").await
            }
        }
        _ => respond(&mut stream, 404, "text/plain", b"not found\n").await,
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
