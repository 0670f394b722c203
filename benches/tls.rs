//! Benchmarks for the TLS inspector, per connection (a fresh [`Inspector`] each time): a
//! typical ClientHello (OpenSSL 3 offering TLS 1.3 and 1.2), a TLS 1.2-only one, the typical
//! hello re-fragmented into one-byte records (the worst case for reassembly), and a whole TLS
//! 1.2 handshake followed for the client certificate check (x509 parsing included).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use splicegate::proto::connect::Host;
use splicegate::proto::tls::TlsSettings;
use splicegate::proto::tls::{normalize_subject, Inspector, Verdict};

const HELLO_DEFAULT: &[u8] = include_bytes!("../tests/fixtures/tls/hello_default.bin");
const HELLO_TLS12: &[u8] = include_bytes!("../tests/fixtures/tls/hello_tls12.bin");
const AGENT_C2S: &[u8] = include_bytes!("../tests/fixtures/tls/tls12_agent01.c2s");
const AGENT_S2C: &[u8] = include_bytes!("../tests/fixtures/tls/tls12_agent01.s2c");

fn benches(c: &mut Criterion) {
    let host = Host::Name("a.example".to_owned());
    let plain = Arc::new(TlsSettings::default());
    let fragmented = one_byte_records(HELLO_DEFAULT);
    let mut group = c.benchmark_group("client_hello");
    let cases: [(&str, &[u8]); 3] = [
        ("default", HELLO_DEFAULT),
        ("tls12", HELLO_TLS12),
        ("one_byte_records", &fragmented),
    ];
    for (name, input) in cases {
        assert!(
            matches!(hello(&plain, &host, input), Verdict::Allow { .. }),
            "{name} must be allowed"
        );
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| hello(black_box(&plain), &host, black_box(input)))
        });
    }
    group.finish();

    let subjects = ["CN=agent01"]
        .iter()
        .filter_map(|s| normalize_subject(s).ok());
    let certs = Arc::new(TlsSettings {
        allowed_client_certificates: subjects.collect(),
        ..TlsSettings::default()
    });
    assert!(matches!(handshake(&certs, &host), Verdict::Allow { .. }));
    let mut group = c.benchmark_group("client_certificate");
    group.throughput(Throughput::Bytes(
        (AGENT_C2S.len() + AGENT_S2C.len()) as u64,
    ));
    group.bench_function("tls12_handshake", |b| {
        b.iter(|| handshake(black_box(&certs), &host))
    });
    group.finish();
}

/// The verdict on a ClientHello read in one go.
fn hello(settings: &Arc<TlsSettings>, host: &Host, input: &[u8]) -> Verdict {
    match Inspector::new(Arc::clone(settings), host) {
        Some(mut inspector) => inspector.client_bytes(input),
        None => Verdict::NeedMore,
    }
}

/// The verdict on a TLS 1.2 handshake with a client certificate: the client's first flight,
/// the server's flight, the client's second flight.
fn handshake(settings: &Arc<TlsSettings>, host: &Host) -> Verdict {
    let Some(mut inspector) = Inspector::new(Arc::clone(settings), host) else {
        return Verdict::NeedMore;
    };
    let hello_len = 5 + usize::from(u16::from_be_bytes([AGENT_C2S[3], AGENT_C2S[4]]));
    let (first, second) = AGENT_C2S.split_at(hello_len);
    let mut verdict = inspector.client_bytes(first);
    if !verdict.is_final() {
        verdict = inspector.server_bytes(AGENT_S2C);
    }
    if !verdict.is_final() {
        verdict = inspector.client_bytes(second);
    }
    verdict
}

/// The handshake messages of a one-record hello, re-sent one byte per record.
fn one_byte_records(hello: &[u8]) -> Vec<u8> {
    let message = &hello[5..];
    let mut out = Vec::with_capacity(6 * message.len());
    for &byte in message {
        out.extend_from_slice(&[0x16, 0x03, 0x01, 0x00, 0x01, byte]);
    }
    out
}

criterion_group!(tls, benches);
criterion_main!(tls);
