//! Policy hot-path benchmarks: allowlist lookups at 10, 10,000 and 1,000,000 entries (exact
//! and wildcard, hit and miss), the same lookup with per-host port rules (entry and port
//! decided together), and `classify` over a mix of IPv4 and IPv6 addresses.
//!
//! Run with `cargo bench --bench policy`.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use splicegate::policy::{classify, Allowlist, HostEntry, HostPattern, PortSet};

/// Half exact names, half wildcards, so both sets hold `size / 2` entries.
fn build(size: usize) -> Allowlist {
    (0..size)
        .filter_map(|i| {
            let text = if i % 2 == 0 {
                format!("host{i}.region{}.example.com", i % 97)
            } else {
                format!("*.zone{i}.example.net")
            };
            HostPattern::parse(&text).ok()
        })
        .collect()
}

fn allowlist(c: &mut Criterion) {
    let mut group = c.benchmark_group("allowlist");
    group.throughput(Throughput::Elements(1));
    for size in [10usize, 10_000, 1_000_000] {
        let started = Instant::now();
        let list = build(size);
        eprintln!(
            "allowlist of {size} entries built in {:?}",
            started.elapsed()
        );
        assert_eq!(list.len(), size);
        // The last entries of each kind, so a hit is not just a lucky early bucket.
        let exact_i = (size - 1) & !1;
        let wild_i = if (size - 1) % 2 == 1 {
            size - 1
        } else {
            size - 2
        };
        let cases = [
            (
                "exact_hit",
                format!("host{exact_i}.region{}.example.com", exact_i % 97),
                true,
            ),
            ("wildcard_hit", format!("a.zone{wild_i}.example.net"), true),
            (
                "wildcard_hit_deep",
                format!("x.y.z.zone{wild_i}.example.net"),
                true,
            ),
            ("miss_short", "nothere.example.org".to_owned(), false),
            (
                "miss_deep",
                "a.b.c.d.e.f.g.h.nothere.example.org".to_owned(),
                false,
            ),
            (
                "miss_bare_suffix",
                format!("zone{wild_i}.example.net"),
                false,
            ),
        ];
        for (name, host, expect) in &cases {
            assert_eq!(list.is_allowed(host), *expect, "{name}: {host}");
            group.bench_with_input(BenchmarkId::new(*name, size), host, |b, host| {
                b.iter(|| list.is_allowed(black_box(host)))
            });
        }
    }
    group.finish();
}

/// Entries with their own ports (a third each: global ports, one port, a list with a range),
/// half exact and half wildcard; the lookup finds the most specific entry and checks the port.
fn port_rules(c: &mut Criterion) {
    let mut group = c.benchmark_group("port_rules");
    group.throughput(Throughput::Elements(1));
    let global: PortSet = [443].into_iter().collect();
    for size in [10usize, 10_000, 1_000_000] {
        let entries: Vec<HostEntry> = (0..size)
            .filter_map(|i| {
                let host = if i % 2 == 0 {
                    format!("host{i}.example.com")
                } else {
                    format!("*.zone{i}.example.net")
                };
                let text = match i % 3 {
                    0 => host,
                    1 => format!("{host}:8443"),
                    _ => format!("{host}:443,9354,30000-30199"),
                };
                HostEntry::parse(&text).ok()
            })
            .collect();
        let started = Instant::now();
        let list = Allowlist::from_entries(&entries);
        eprintln!(
            "allowlist with port rules, {size} entries, built in {:?}",
            started.elapsed()
        );
        assert_eq!(list.len(), size);
        // The last wildcard with a port range (i % 3 == 2, odd).
        let wild_i = (0..size)
            .rev()
            .find(|i| i % 3 == 2 && i % 2 == 1)
            .unwrap_or(1);
        let cases = [
            (
                "range_hit",
                format!("a.zone{wild_i}.example.net"),
                30150,
                true,
            ),
            (
                "range_miss",
                format!("a.zone{wild_i}.example.net"),
                30200,
                false,
            ),
            (
                "most_specific_deep",
                format!("x.y.z.zone{wild_i}.example.net"),
                9354,
                true,
            ),
            ("host_miss", "nothere.example.org".to_owned(), 443, false),
        ];
        let allowed = |host: &str, port: u16| {
            list.lookup(host)
                .is_some_and(|rule| rule.allows(port, &global))
        };
        for (name, host, port, expect) in &cases {
            assert_eq!(allowed(host, *port), *expect, "{name}: {host}:{port}");
            group.bench_with_input(BenchmarkId::new(*name, size), host, |b, host| {
                b.iter(|| allowed(black_box(host), black_box(*port)))
            });
        }
    }
    group.finish();
}

fn classify_mix(c: &mut Criterion) {
    let addrs: Vec<IpAddr> = [
        "8.8.8.8",
        "20.50.2.10",
        "10.1.2.3",
        "172.20.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "169.254.169.254",
        "100.64.1.1",
        "255.255.255.255",
        "2603:1030:20e:3::23c",
        "2001:4860:4860::8888",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect();
    let mut group = c.benchmark_group("classify");
    group.throughput(Throughput::Elements(addrs.len() as u64));
    group.bench_function("mixed_v4_v6", |b| {
        b.iter(|| {
            for ip in &addrs {
                black_box(classify(black_box(*ip)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, allowlist, port_rules, classify_mix);
criterion_main!(benches);
