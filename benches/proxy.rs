//! Benchmarks for the PROXY protocol header parser: what a connection behind a load balancer
//! costs before its CONNECT head, for a v1 line (IPv4 and the longest IPv6 one) and v2 headers
//! (IPv4, IPv6, and IPv4 with the TLVs an AWS NLB or HAProxy adds), each followed by the
//! CONNECT head that arrives in the same read (the parser must stop at the header's end).

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use splicegate::proto::proxy::{encode_v1, encode_v2, parse, Header};

const HEAD: &[u8] = b"CONNECT ods.opinsights.azure.com:443 HTTP/1.1\r\n\
Host: ods.opinsights.azure.com:443\r\n\r\n";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn with_head(header: Vec<u8>) -> Vec<u8> {
    let mut all = header;
    all.extend_from_slice(HEAD);
    all
}

fn benches(c: &mut Criterion) {
    let v4 = Header::Proxied {
        source: addr("192.0.2.7:51234"),
        destination: addr("10.0.0.1:8080"),
    };
    let max6 = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
    let v6 = Header::Proxied {
        source: addr("[2001:db8:85a3::8a2e:370:7334]:51234"),
        destination: addr("[2001:db8::1]:8080"),
    };
    let encode = |h: &Header, tlvs: &[(u8, &[u8])]| {
        encode_v2(h, tlvs).unwrap_or_else(|| panic!("{h:?} must encode"))
    };
    // PP2_TYPE_ALPN, PP2_TYPE_UNIQUE_ID (32 bytes), AWS's VPC endpoint id (0xEA).
    let tlvs: [(u8, &[u8]); 3] = [
        (0x01, b"h2"),
        (0x05, &[0x5a; 32]),
        (0xEA, b"\x01vpce-0123456789abcdef0"),
    ];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "v1_tcp4",
            with_head(encode_v1(addr("192.0.2.7:51234"), addr("10.0.0.1:8080"))),
        ),
        (
            "v1_tcp6_longest",
            with_head(encode_v1(addr(max6), addr(max6))),
        ),
        ("v2_inet", with_head(encode(&v4, &[]))),
        ("v2_inet6", with_head(encode(&v6, &[]))),
        ("v2_inet_tlvs", with_head(encode(&v4, &tlvs))),
        ("v2_local", with_head(encode(&Header::Local, &[]))),
    ];
    let mut group = c.benchmark_group("proxy_header");
    for (name, input) in &cases {
        let Ok(Some((_, len))) = parse(input) else {
            panic!("{name} must parse");
        };
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(*name, |b| b.iter(|| parse(black_box(input))));
    }
    group.finish();
}

criterion_group!(proxy, benches);
criterion_main!(proxy);
