//! Client authentication costs: what a login costs the verifier thread (uncached), and what a
//! cached login costs a worker (header parse + map lookup).

use std::collections::HashMap;

use criterion::{criterion_group, criterion_main, Criterion};
use splicegate::auth::{hash_password, parse_basic, Users};

fn bench(c: &mut Criterion) {
    let argon = hash_password("s3cret").expect("hash");
    let bcrypt10 = bcrypt::hash("s3cret", 10).expect("bcrypt");
    let users = Users::parse(&format!("alice:{argon}\nbob:{bcrypt10}\n")).expect("users");
    let mut g = c.benchmark_group("login");
    g.sample_size(10);
    g.bench_function("verify argon2id (default params)", |b| {
        b.iter(|| users.verify("alice", "s3cret"))
    });
    g.bench_function("verify bcrypt cost 10", |b| {
        b.iter(|| users.verify("bob", "s3cret"))
    });
    g.finish();
    let header = b"Basic YWxpY2U6czNjcmV0".to_vec();
    let mut cache: HashMap<Vec<u8>, (String, usize)> = HashMap::new();
    cache.insert(header.clone(), ("alice".into(), 1));
    c.bench_function("cached login (worker)", |b| {
        b.iter(|| {
            cache
                .get(std::hint::black_box(&header))
                .map(|(u, _)| u.len())
        })
    });
    c.bench_function("parse Basic credentials", |b| {
        b.iter(|| parse_basic(std::hint::black_box(&header)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
