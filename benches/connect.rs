//! Benchmarks for the CONNECT head parser: a typical agent head, an IPv6 literal, and an 8 KiB
//! head padded with headers (the default limit).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use splicegate::proto::connect::parse_head;

const MAX_HEADER_BYTES: usize = 8192;

const AGENT: &[u8] = b"CONNECT ods.opinsights.azure.com:443 HTTP/1.1\r\n\
Host: ods.opinsights.azure.com:443\r\n\
User-Agent: AzureMonitorAgent/1.10.0 (Linux; x86_64)\r\n\
Proxy-Connection: Keep-Alive\r\n\r\n";

const IPV6: &[u8] = b"CONNECT [2001:db8:85a3::8a2e:370:7334]:443 HTTP/1.1\r\n\
Host: [2001:db8:85a3::8a2e:370:7334]:443\r\n\r\n";

fn benches(c: &mut Criterion) {
    let large = large_head(MAX_HEADER_BYTES);
    let cases: [(&str, &[u8]); 3] = [("agent", AGENT), ("ipv6", IPV6), ("8KiB", &large)];
    let mut group = c.benchmark_group("parse_head");
    for (name, input) in cases {
        assert!(
            matches!(parse_head(input, MAX_HEADER_BYTES), Ok(Some(_))),
            "{name} must parse"
        );
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| parse_head(black_box(input), black_box(MAX_HEADER_BYTES)))
        });
    }
    group.finish();
}

/// A valid head of exactly `len` bytes: the agent's request line and headers, padded with
/// `X-Pad-N` headers (fewer than the 64-header limit).
fn large_head(len: usize) -> Vec<u8> {
    const FILL: usize = 200;
    let mut head = AGENT[..AGENT.len() - 2].to_vec();
    for n in 0.. {
        let prefix = format!("X-Pad-{n}: ");
        let overhead = prefix.len() + 2;
        let room = len.saturating_sub(head.len() + 2);
        let last = room < overhead + 2 * FILL;
        let fill = if last {
            room.saturating_sub(overhead)
        } else {
            FILL
        };
        head.extend_from_slice(prefix.as_bytes());
        head.extend(std::iter::repeat_n(b'a', fill));
        head.extend_from_slice(b"\r\n");
        if last {
            break;
        }
    }
    head.extend_from_slice(b"\r\n");
    assert_eq!(head.len(), len, "padding arithmetic");
    head
}

criterion_group!(parse, benches);
criterion_main!(parse);
