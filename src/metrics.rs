//! Metric names, per-worker shards and the collector that sums them at scrape time.
//!
//! Each worker owns one [`Shard`] and is its only writer: counters are relaxed atomics that no
//! other thread writes, so the data path never contends on a cache line. The control thread reads
//! all shards when `/metrics` is scraped and encodes the sums with `prometheus-client`.
//!
//! The shard list grows when a reload starts a new engine (new `listen` or `workers`): the old
//! engine's shards stay listed while its workers drain, and once they have exited their counts
//! are folded into one `retired` shard, so every counter keeps summing across engines.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::events::{ErrorKind, Reject};
use crate::overload::{Overload, Resource};

pub mod rules;

pub use rules::{RuleBook, RuleRef, RuleTotals, RuleUsage};

pub const ACTIVE_CLIENT_CONNECTIONS: &str = "splicegate_active_client_connections";
pub const CONNECTED_CLIENTS: &str = "splicegate_connected_clients";
pub const ERRORS: &str = "splicegate_errors";
pub const REJECTIONS: &str = "splicegate_rejections";
pub const CONNECT_REQUESTS: &str = "splicegate_connect_requests";
pub const BYTES: &str = "splicegate_bytes";
pub const TUNNELS_ACTIVE: &str = "splicegate_tunnels_active";
pub const PIPES_IN_USE: &str = "splicegate_pipes_in_use";
pub const TIMER_ENTRIES: &str = "splicegate_timer_entries";
pub const COPY_FALLBACKS: &str = "splicegate_copy_fallbacks";
pub const TUNNEL_DURATION: &str = "splicegate_tunnel_duration_seconds";
pub const UPSTREAM_CONNECT: &str = "splicegate_upstream_connect_seconds";
pub const TLS_VERIFIED: &str = "splicegate_tls_sessions_verified";
pub const TLS_INSPECT: &str = "splicegate_tls_inspect_seconds";
pub const DRAINING: &str = "splicegate_draining";
pub const WORKERS_ALIVE: &str = "splicegate_workers_alive";
pub const ENGINE: &str = "splicegate_engine";
pub const CONFIG_RELOADS: &str = "splicegate_config_reloads";
pub const ENGINES_RETIRING: &str = "splicegate_engines_retiring";
pub const DNS_LOOKUP: &str = "splicegate_dns_lookup_seconds";
pub const DNS_QUERIES: &str = "splicegate_dns_queries";
pub const DNS_CACHE: &str = "splicegate_dns_cache";
pub const RULE_TUNNELS: &str = "splicegate_tunnels";
pub const RULE_BYTES: &str = "splicegate_rule_bytes";
pub const WORKERS_CONFIGURED: &str = "splicegate_workers_configured";
/// The conventional names of the process collectors (Go, Python, Java clients), so fd headroom
/// reads `process_open_fds / process_max_fds` as on any other exporter.
pub const OPEN_FDS: &str = "process_open_fds";
pub const MAX_FDS: &str = "process_max_fds";
pub const LOG_LINES_DROPPED: &str = "splicegate_log_lines_dropped";
pub const OVERLOAD_ACTIVE: &str = "splicegate_overload_active";
pub const OVERLOAD_RESOURCE: &str = "splicegate_overload_resource";
pub const MEMORY_BYTES: &str = "splicegate_memory_bytes";
pub const MEMORY_BUDGET: &str = "splicegate_memory_budget_bytes";

/// Upper bounds (seconds) of the tunnel duration histogram.
const TUNNEL_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];
/// TLS versions as labels of `splicegate_tls_sessions_verified_total{version}`.
pub const TLS_VERSIONS: [&str; 4] = ["1.0", "1.1", "1.2", "1.3"];
/// Upper bounds (seconds) of the TLS inspection histogram.
const INSPECT_BUCKETS: [f64; 10] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 10.0,
];
/// Upper bounds (seconds) of the upstream connect histogram.
const CONNECT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Upper bounds (seconds) of the name lookup histogram.
const DNS_BUCKETS: [f64; 13] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Result of one DNS query: label of `splicegate_dns_queries_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsQueryResult {
    Answer,
    NxDomain,
    NoData,
    ServFail,
    Timeout,
}

impl DnsQueryResult {
    pub const ALL: [DnsQueryResult; 5] = [
        DnsQueryResult::Answer,
        DnsQueryResult::NxDomain,
        DnsQueryResult::NoData,
        DnsQueryResult::ServFail,
        DnsQueryResult::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DnsQueryResult::Answer => "answer",
            DnsQueryResult::NxDomain => "nxdomain",
            DnsQueryResult::NoData => "nodata",
            DnsQueryResult::ServFail => "servfail",
            DnsQueryResult::Timeout => "timeout",
        }
    }
}

/// Where a name lookup's answer came from: label of `splicegate_dns_cache_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsCacheOutcome {
    /// Both families fresh in the cache.
    Hit,
    /// A query was sent for it.
    Miss,
    /// It waited for a query already outstanding.
    Coalesced,
    /// It was answered (at least in part) from an expired answer.
    Stale,
    /// The hosts file answered.
    HostsFile,
}

impl DnsCacheOutcome {
    pub const ALL: [DnsCacheOutcome; 5] = [
        DnsCacheOutcome::Hit,
        DnsCacheOutcome::Miss,
        DnsCacheOutcome::Coalesced,
        DnsCacheOutcome::Stale,
        DnsCacheOutcome::HostsFile,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DnsCacheOutcome::Hit => "hit",
            DnsCacheOutcome::Miss => "miss",
            DnsCacheOutcome::Coalesced => "coalesced",
            DnsCacheOutcome::Stale => "stale",
            DnsCacheOutcome::HostsFile => "hosts_file",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The resolver's metrics, written by the resolver task on the control thread, and by the
/// workers for the hosts-file answers they give themselves (`cache[HostsFile]`).
#[derive(Debug)]
pub struct DnsStats {
    /// From a worker's request to the answer sent back, for every lookup the resolver task
    /// answers (a hosts-file name answered on the worker never gets here).
    pub lookup: Histogram,
    queries: [AtomicU64; DnsQueryResult::ALL.len()],
    cache: [AtomicU64; DnsCacheOutcome::ALL.len()],
    /// Names the resolver's cache holds, stored after each of its steps (`splicegate status`).
    cache_entries: AtomicU64,
}

impl Default for DnsStats {
    fn default() -> DnsStats {
        DnsStats {
            lookup: Histogram::new(&DNS_BUCKETS),
            queries: std::array::from_fn(|_| AtomicU64::new(0)),
            cache: std::array::from_fn(|_| AtomicU64::new(0)),
            cache_entries: AtomicU64::new(0),
        }
    }
}

impl DnsStats {
    pub fn query(&self, r: DnsQueryResult) {
        self.queries[r as usize].fetch_add(1, Relaxed);
    }

    pub fn cache(&self, o: DnsCacheOutcome, n: u64) {
        self.cache[o.index()].fetch_add(n, Relaxed);
    }

    pub fn queries(&self, r: DnsQueryResult) -> u64 {
        self.queries[r as usize].load(Relaxed)
    }

    pub fn cached(&self, o: DnsCacheOutcome) -> u64 {
        self.cache[o.index()].load(Relaxed)
    }

    pub fn set_cache_entries(&self, n: usize) {
        self.cache_entries
            .store(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
    }

    /// Names the resolver's cache holds.
    pub fn cache_entries(&self) -> u64 {
        self.cache_entries.load(Relaxed)
    }
}

/// A fixed-bucket histogram written by one thread and read by the scraper.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket counts (not cumulative); one more slot than `bounds` for `+Inf`.
    counts: Vec<AtomicU64>,
    /// Sum of observations in nanoseconds.
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Add `other`'s counts into this histogram (same bounds).
    fn absorb(&self, other: &Histogram) {
        for (c, o) in self.counts.iter().zip(&other.counts) {
            c.fetch_add(o.load(Relaxed), Relaxed);
        }
        self.sum_nanos
            .fetch_add(other.sum_nanos.load(Relaxed), Relaxed);
    }
}

/// One worker's metrics. Written only by that worker (the `clients` map is locked by the worker
/// on accept and close, and by the scraper: never contended on the data path).
#[derive(Debug)]
pub struct Shard {
    pub active_connections: AtomicI64,
    pub tunnels_active: AtomicI64,
    pub connect_requests: AtomicU64,
    /// Tunnels established (their `200` sent), for the rate in `splicegate status`.
    pub tunnels_established: AtomicU64,
    pub bytes_upstream: AtomicU64,
    pub bytes_downstream: AtomicU64,
    pub pipes_in_use: AtomicI64,
    /// Capacity in bytes of the pipes in `pipes_in_use` (kernel pages; counted against
    /// `limits.memory_budget`).
    pub pipe_bytes: AtomicI64,
    /// Deadlines in the worker's timer heap, stored by the worker once per loop turn (a leaked
    /// deadline shows as more entries than connections). Not absorbed from a retired worker.
    pub timer_entries: AtomicI64,
    pub copy_fallbacks: AtomicU64,
    pub rejections: [AtomicU64; Reject::ALL.len()],
    pub errors: [AtomicU64; ErrorKind::ALL.len()],
    pub tunnel_duration: Histogram,
    pub upstream_connect: Histogram,
    /// TLS sessions that passed inspection, by index into [`TLS_VERSIONS`].
    pub tls_verified: [AtomicU64; TLS_VERSIONS.len()],
    /// Time from the `200` to the TLS verdict.
    pub tls_inspect: Histogram,
    /// Open connections per client address, for `splicegate_connected_clients`.
    pub clients: Mutex<HashMap<IpAddr, u32>>,
    /// True while this shard's worker thread runs (set once its driver is up, cleared when it
    /// exits for any reason), for `splicegate_workers_alive` and `/readyz`.
    pub alive: AtomicBool,
}

impl Default for Shard {
    fn default() -> Shard {
        Shard {
            active_connections: AtomicI64::new(0),
            tunnels_active: AtomicI64::new(0),
            connect_requests: AtomicU64::new(0),
            tunnels_established: AtomicU64::new(0),
            bytes_upstream: AtomicU64::new(0),
            bytes_downstream: AtomicU64::new(0),
            pipes_in_use: AtomicI64::new(0),
            pipe_bytes: AtomicI64::new(0),
            timer_entries: AtomicI64::new(0),
            copy_fallbacks: AtomicU64::new(0),
            rejections: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            tunnel_duration: Histogram::new(&TUNNEL_BUCKETS),
            upstream_connect: Histogram::new(&CONNECT_BUCKETS),
            tls_verified: std::array::from_fn(|_| AtomicU64::new(0)),
            tls_inspect: Histogram::new(&INSPECT_BUCKETS),
            clients: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(false),
        }
    }
}

impl Shard {
    pub fn reject(&self, r: Reject) {
        self.rejections[r.index()].fetch_add(1, Relaxed);
    }

    pub fn error(&self, k: ErrorKind) {
        self.errors[k.index()].fetch_add(1, Relaxed);
    }

    pub fn client_opened(&self, ip: IpAddr) {
        if let Ok(mut m) = self.clients.lock() {
            *m.entry(ip).or_insert(0) += 1;
        }
    }

    /// Add a finished worker's counts into this shard (the `retired` accumulator). Gauges are
    /// added too: a finished worker's are zero unless it was stopped with connections open.
    pub fn absorb(&self, other: &Shard) {
        let add_i = |a: &AtomicI64, b: &AtomicI64| a.fetch_add(b.load(Relaxed), Relaxed);
        let add_u = |a: &AtomicU64, b: &AtomicU64| a.fetch_add(b.load(Relaxed), Relaxed);
        add_i(&self.active_connections, &other.active_connections);
        add_i(&self.tunnels_active, &other.tunnels_active);
        add_i(&self.pipes_in_use, &other.pipes_in_use);
        add_i(&self.pipe_bytes, &other.pipe_bytes);
        add_u(&self.connect_requests, &other.connect_requests);
        add_u(&self.tunnels_established, &other.tunnels_established);
        add_u(&self.bytes_upstream, &other.bytes_upstream);
        add_u(&self.bytes_downstream, &other.bytes_downstream);
        add_u(&self.copy_fallbacks, &other.copy_fallbacks);
        for (a, b) in self.rejections.iter().zip(&other.rejections) {
            add_u(a, b);
        }
        for (a, b) in self.errors.iter().zip(&other.errors) {
            add_u(a, b);
        }
        for (a, b) in self.tls_verified.iter().zip(&other.tls_verified) {
            add_u(a, b);
        }
        self.tunnel_duration.absorb(&other.tunnel_duration);
        self.upstream_connect.absorb(&other.upstream_connect);
        self.tls_inspect.absorb(&other.tls_inspect);
    }

    pub fn client_closed(&self, ip: IpAddr) {
        if let Ok(mut m) = self.clients.lock() {
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

/// A few counters summed over the shards (see [`Metrics::totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub tunnels_active: i64,
    pub connections_active: i64,
    /// Capacity of the pipes lent to tunnels, in bytes.
    pub pipe_bytes: i64,
    pub tunnels_established: u64,
    pub bytes_upstream: u64,
    pub bytes_downstream: u64,
    /// By [`Reject::index`].
    pub rejections: [u64; Reject::ALL.len()],
}

/// Process-wide state the control plane reports alongside the shards. Written by the control
/// thread only.
#[derive(Debug, Default)]
pub struct Status {
    pub draining: AtomicBool,
    pub listening: AtomicBool,
    /// Reloads applied (`splicegate_config_reloads_total{result="ok"}`).
    pub reloads_ok: AtomicU64,
    /// Reloads refused: the file could not be read, did not validate, or could not be applied.
    pub reloads_failed: AtomicU64,
    /// Engines replaced by a reload whose workers are still draining their tunnels.
    pub engines_retiring: AtomicI64,
    /// The overload state (the same one the settings snapshots carry to the workers).
    pub overload: Arc<Overload>,
}

/// All shards plus process status; registered as a collector.
///
/// `shards` is written by the control thread when an engine starts or its workers finish, and
/// read at scrape time; workers hold their own `Arc<Shard>` and never take this lock.
#[derive(Debug)]
pub struct Metrics {
    pub shards: Mutex<Vec<Arc<Shard>>>,
    /// Counts of shards whose workers have exited, folded together by [`Metrics::retire`].
    pub retired: Arc<Shard>,
    pub status: Arc<Status>,
    /// The driver kind of the current engine (`uring` or `epoll`); replaced on reload.
    pub engine: Mutex<&'static str>,
    /// The shards of the serving engine (one per configured worker); replaced on reload.
    serving: Mutex<Vec<Arc<Shard>>>,
    /// The resolver's counters (written by the resolver task, read at scrape time).
    pub dns: Arc<DnsStats>,
    /// Per-entry usage of every policy snapshot still referenced (see [`rules`]).
    pub rules: Arc<RuleBook>,
}

impl Metrics {
    pub fn new(shards: Vec<Arc<Shard>>, status: Arc<Status>, engine: &'static str) -> Metrics {
        Metrics {
            serving: Mutex::new(shards.clone()),
            shards: Mutex::new(shards),
            retired: Arc::new(Shard::default()),
            status,
            engine: Mutex::new(engine),
            dns: Arc::new(DnsStats::default()),
            rules: Arc::new(RuleBook::default()),
        }
    }

    /// Report the resolver's metrics (see [`crate::resolve::Resolver::stats`]).
    pub fn with_dns(mut self, dns: Arc<DnsStats>) -> Metrics {
        self.dns = dns;
        self
    }

    /// Publish a new engine's shards (and its driver kind) next to the ones still draining.
    pub fn add_engine(&self, shards: &[Arc<Shard>], engine: &'static str) {
        if let Ok(mut v) = self.shards.lock() {
            v.extend(shards.iter().cloned());
        }
        if let Ok(mut e) = self.engine.lock() {
            *e = engine;
        }
        if let Ok(mut v) = self.serving.lock() {
            *v = shards.to_vec();
        }
    }

    /// `(alive, configured)` workers of the serving engine.
    pub fn workers(&self) -> (usize, usize) {
        let v = match self.serving.lock() {
            Ok(v) => v,
            Err(e) => e.into_inner(),
        };
        let alive = v.iter().filter(|s| s.alive.load(Relaxed)).count();
        (alive, v.len())
    }

    /// The counters `splicegate status` shows, summed over every shard (retired included).
    pub fn totals(&self) -> Totals {
        let sh = self.snapshot();
        let sh = &sh[..];
        Totals {
            tunnels_active: sum_i(sh, |s| &s.tunnels_active),
            connections_active: sum_i(sh, |s| &s.active_connections),
            pipe_bytes: sum_i(sh, |s| &s.pipe_bytes),
            tunnels_established: sum_u(sh, |s| &s.tunnels_established),
            bytes_upstream: sum_u(sh, |s| &s.bytes_upstream),
            bytes_downstream: sum_u(sh, |s| &s.bytes_downstream),
            rejections: std::array::from_fn(|i| sum_u(sh, |s| &s.rejections[i])),
        }
    }

    /// Fold the shards of an engine whose workers have all exited into `retired`.
    pub fn retire(&self, shards: &[Arc<Shard>]) {
        if let Ok(mut v) = self.shards.lock() {
            v.retain(|s| !shards.iter().any(|r| Arc::ptr_eq(r, s)));
            for s in shards {
                self.retired.absorb(s);
            }
        }
    }

    /// The shards to sum: every listed shard plus the retired totals.
    fn snapshot(&self) -> Vec<Arc<Shard>> {
        let mut v = match self.shards.lock() {
            Ok(v) => v.clone(),
            Err(e) => e.into_inner().clone(),
        };
        v.push(Arc::clone(&self.retired));
        v
    }

    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::default();
        r.register_collector(Box::new(Arc::clone(self)));
        r
    }

    /// Render `/metrics` in the Prometheus text format.
    pub fn render(self: &Arc<Self>) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())?;
        Ok(out)
    }
}

fn sum_i(shards: &[Arc<Shard>], f: impl Fn(&Shard) -> &AtomicI64) -> i64 {
    shards.iter().map(|s| f(s).load(Relaxed)).sum()
}

fn sum_u(shards: &[Arc<Shard>], f: impl Fn(&Shard) -> &AtomicU64) -> u64 {
    shards.iter().map(|s| f(s).load(Relaxed)).sum()
}

fn distinct_clients(shards: &[Arc<Shard>]) -> i64 {
    let mut all = std::collections::HashSet::new();
    for s in shards {
        if let Ok(m) = s.clients.lock() {
            all.extend(m.keys().copied());
        }
    }
    i64::try_from(all.len()).unwrap_or(i64::MAX)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    m.encode_gauge(&v)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    m.encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    shards: &[Arc<Shard>],
    pick: impl Fn(&Shard) -> &Histogram,
) -> std::fmt::Result {
    let all: Vec<&Histogram> = shards.iter().map(|s| pick(s)).collect();
    encode_histogram(enc, name, help, &all)
}

/// Encode the sum of `parts` (all with the same bounds).
fn encode_histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    parts: &[&Histogram],
) -> std::fmt::Result {
    let Some(first) = parts.first() else {
        return Ok(());
    };
    let bounds = first.bounds;
    let mut counts = vec![0u64; bounds.len() + 1];
    let mut sum_nanos = 0u64;
    for h in parts {
        for (c, a) in counts.iter_mut().zip(&h.counts) {
            *c += a.load(Relaxed);
        }
        sum_nanos = sum_nanos.saturating_add(h.sum_nanos.load(Relaxed));
    }
    let count = counts.iter().sum();
    let buckets: Vec<(f64, u64)> = bounds
        .iter()
        .copied()
        .chain(std::iter::once(f64::INFINITY))
        .zip(counts)
        .collect();
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(sum_nanos as f64 / 1e9, count, &buckets, None)
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.snapshot();
        let sh = &snapshot[..];
        gauge(
            &mut enc,
            ACTIVE_CLIENT_CONNECTIONS,
            "Open client TCP connections (the old 'Active Client Connection').",
            sum_i(sh, |s| &s.active_connections),
        )?;
        gauge(
            &mut enc,
            CONNECTED_CLIENTS,
            "Distinct client addresses with an open connection (the old 'Connected Client').",
            distinct_clients(sh),
        )?;
        gauge(
            &mut enc,
            TUNNELS_ACTIVE,
            "Established tunnels.",
            sum_i(sh, |s| &s.tunnels_active),
        )?;
        gauge(
            &mut enc,
            PIPES_IN_USE,
            "Pipes held by tunnels with bytes in flight (splice data path).",
            sum_i(sh, |s| &s.pipes_in_use),
        )?;
        gauge(
            &mut enc,
            TIMER_ENTRIES,
            "Deadlines in the workers' timer heaps (one per open connection at most).",
            sum_i(sh, |s| &s.timer_entries),
        )?;
        counter(
            &mut enc,
            CONNECT_REQUESTS,
            "CONNECT requests parsed.",
            sum_u(sh, |s| &s.connect_requests),
        )?;
        counter(
            &mut enc,
            COPY_FALLBACKS,
            "Transfers that fell back from splice to copying (no pipe available).",
            sum_u(sh, |s| &s.copy_fallbacks),
        )?;
        {
            let mut m = enc.encode_descriptor(
                BYTES,
                "Bytes relayed, by direction (upstream = client to server).",
                None,
                MetricType::Counter,
            )?;
            for (dir, v) in [
                ("upstream", sum_u(sh, |s| &s.bytes_upstream)),
                ("downstream", sum_u(sh, |s| &s.bytes_downstream)),
            ] {
                let labels = [("direction", dir)];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                REJECTIONS,
                "Client requests refused, by reason (the old 'Rejection Count').",
                None,
                MetricType::Counter,
            )?;
            for r in Reject::ALL {
                let v = sum_u(sh, |s| &s.rejections[r.index()]);
                let labels = [("reason", r.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                ERRORS,
                "Errors, by kind (the old 'Error Count').",
                None,
                MetricType::Counter,
            )?;
            for k in ErrorKind::ALL {
                let v = sum_u(sh, |s| &s.errors[k.index()]);
                let labels = [("kind", k.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        histogram(
            &mut enc,
            TUNNEL_DURATION,
            "Lifetime of closed tunnels.",
            sh,
            |s| &s.tunnel_duration,
        )?;
        histogram(
            &mut enc,
            UPSTREAM_CONNECT,
            "Time to establish the upstream TCP connection.",
            sh,
            |s| &s.upstream_connect,
        )?;
        {
            let mut m = enc.encode_descriptor(
                TLS_VERIFIED,
                "TLS sessions verified by inspection, by offered version (event 107).",
                None,
                MetricType::Counter,
            )?;
            for (i, v) in TLS_VERSIONS.iter().enumerate() {
                let n = sum_u(sh, |s| &s.tls_verified[i]);
                let labels = [("version", *v)];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        histogram(
            &mut enc,
            TLS_INSPECT,
            "Time from the 200 answer to the TLS inspection verdict.",
            sh,
            |s| &s.tls_inspect,
        )?;
        gauge(
            &mut enc,
            DRAINING,
            "1 while the gateway drains after SIGTERM.",
            i64::from(self.status.draining.load(Relaxed)),
        )?;
        let overload = &self.status.overload;
        gauge(
            &mut enc,
            OVERLOAD_ACTIVE,
            "1 while overloaded: new clients get 503 and /readyz fails; tunnels already open carry on.",
            i64::from(overload.active()),
        )?;
        {
            let mut m = enc.encode_descriptor(
                OVERLOAD_RESOURCE,
                "While overloaded, 1 for each budget at or past the release threshold.",
                None,
                MetricType::Gauge,
            )?;
            let engaged = overload.engaged();
            for r in Resource::ALL {
                let labels = [("resource", r.as_str())];
                m.encode_family(&labels)?
                    .encode_gauge(&i64::from(engaged.contains(r)))?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                MEMORY_BYTES,
                "Memory counted against limits.memory_budget at the last sample, by part.",
                None,
                MetricType::Gauge,
            )?;
            let used = overload.memory();
            for (part, v) in [("resident", used.rss), ("pipes", used.pipes)] {
                let labels = [("part", part)];
                m.encode_family(&labels)?
                    .encode_gauge(&i64::try_from(v).unwrap_or(i64::MAX))?;
            }
        }
        gauge(
            &mut enc,
            MEMORY_BUDGET,
            "limits.memory_budget in bytes (0 = no memory budget).",
            i64::try_from(overload.budget()).unwrap_or(i64::MAX),
        )?;
        gauge(
            &mut enc,
            WORKERS_ALIVE,
            "Workers of the serving engine running (fewer than configured: one has died).",
            self.workers().0 as i64,
        )?;
        gauge(
            &mut enc,
            WORKERS_CONFIGURED,
            "Workers the serving engine was started with (alive below this: /readyz fails).",
            self.workers().1 as i64,
        )?;
        {
            let mut m = enc.encode_descriptor(
                ENGINE,
                "The I/O driver in use (1 for the active kind).",
                None,
                MetricType::Gauge,
            )?;
            let current = match self.engine.lock() {
                Ok(e) => *e,
                Err(e) => *e.into_inner(),
            };
            for kind in ["uring", "epoll"] {
                let labels = [("kind", kind)];
                m.encode_family(&labels)?
                    .encode_gauge(&i64::from(kind == current))?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                CONFIG_RELOADS,
                "Configuration reloads (SIGHUP or a change of the file), by result.",
                None,
                MetricType::Counter,
            )?;
            for (result, v) in [
                ("ok", self.status.reloads_ok.load(Relaxed)),
                ("failed", self.status.reloads_failed.load(Relaxed)),
            ] {
                let labels = [("result", result)];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
            }
        }
        encode_histogram(
            &mut enc,
            DNS_LOOKUP,
            "Time from a worker's name lookup to the resolver's answer (cache or DNS; the workers answer hosts-file names themselves).",
            &[&self.dns.lookup],
        )?;
        {
            let mut m = enc.encode_descriptor(
                DNS_QUERIES,
                "DNS queries sent (one per name and record type), by result.",
                None,
                MetricType::Counter,
            )?;
            for r in DnsQueryResult::ALL {
                let labels = [("result", r.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&self.dns.queries(r), None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                DNS_CACHE,
                "Name lookups by where the answer came from.",
                None,
                MetricType::Counter,
            )?;
            for o in DnsCacheOutcome::ALL {
                let labels = [("outcome", o.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&self.dns.cached(o), None)?;
            }
        }
        let rules = self.rules.totals();
        {
            let mut m = enc.encode_descriptor(
                RULE_TUNNELS,
                "Tunnels established (at the 200), by the allowlist entry that allowed them.",
                None,
                MetricType::Counter,
            )?;
            for (rule, t) in &rules {
                let labels = [("rule", rule.as_str())];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&t.tunnels, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                RULE_BYTES,
                "Bytes relayed, by allowlist entry and direction (upstream = client to server).",
                None,
                MetricType::Counter,
            )?;
            for (rule, t) in &rules {
                for (dir, v) in [("upstream", t.bytes_up), ("downstream", t.bytes_down)] {
                    let labels = [("rule", rule.as_str()), ("direction", dir)];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                }
            }
        }
        gauge(
            &mut enc,
            ENGINES_RETIRING,
            "Engines replaced by a reload (new listen or workers) still draining their tunnels.",
            self.status.engines_retiring.load(Relaxed),
        )?;
        let (open, max) = fd_usage();
        gauge(&mut enc, OPEN_FDS, "Open file descriptors.", open)?;
        gauge(
            &mut enc,
            MAX_FDS,
            "The soft RLIMIT_NOFILE: the most file descriptors the process may open.",
            max,
        )?;
        counter(
            &mut enc,
            LOG_LINES_DROPPED,
            "Log lines dropped because the log writer's queue was full (a worker never waits on a log write).",
            crate::logwriter::dropped(),
        )?;
        Ok(())
    }
}

/// `(open, limit)` file descriptors of this process, read at scrape time; -1 for a figure that
/// cannot be read (no `/proc`), so a dashboard shows a gap rather than a false zero.
fn fd_usage() -> (i64, i64) {
    // The directory listing holds one fd of its own while it is read.
    let open = std::fs::read_dir("/proc/self/fd")
        .map(|d| i64::try_from(d.count()).unwrap_or(i64::MAX) - 1)
        .unwrap_or(-1);
    let max = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    (open, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_sums_shards() {
        let shards: Vec<Arc<Shard>> = (0..3).map(|_| Arc::new(Shard::default())).collect();
        for (i, s) in shards.iter().enumerate() {
            s.connect_requests.fetch_add(i as u64 + 1, Relaxed);
            s.bytes_upstream.fetch_add(100, Relaxed);
            s.reject(Reject::HostNotAllowed);
            s.error(ErrorKind::DnsFailure);
            s.tunnel_duration.observe(Duration::from_millis(200));
            s.client_opened("127.0.0.1".parse().unwrap());
        }
        let m = Arc::new(Metrics::new(shards, Arc::new(Status::default()), "epoll"));
        let text = m.render().unwrap();
        assert!(
            text.contains("splicegate_connect_requests_total 6"),
            "{text}"
        );
        assert!(text.contains("splicegate_bytes_total{direction=\"upstream\"} 300"));
        assert!(text.contains("splicegate_rejections_total{reason=\"host_not_allowed\"} 3"));
        assert!(text.contains("splicegate_errors_total{kind=\"dns_failure\"} 3"));
        assert!(text.contains("splicegate_connected_clients 1"));
        assert!(text.contains("splicegate_tunnel_duration_seconds_bucket{le=\"0.5\"} 3"));
        assert!(text.contains("splicegate_tunnel_duration_seconds_count 3"));
        assert!(text.contains("splicegate_engine{kind=\"epoll\"} 1"));
        assert!(text.contains("splicegate_workers_configured 3"), "{text}");
    }

    #[test]
    fn fd_headroom_is_reported() {
        let m = Arc::new(Metrics::new(
            Vec::new(),
            Arc::new(Status::default()),
            "epoll",
        ));
        let value = |text: &str, name: &str| -> i64 {
            let line = text.lines().find(|l| l.starts_with(&format!("{name} ")));
            line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        let before = value(&m.render().unwrap(), OPEN_FDS);
        let extra: Vec<std::fs::File> = (0..5)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let text = m.render().unwrap();
        let (open, max) = (value(&text, OPEN_FDS), value(&text, MAX_FDS));
        // Other tests of this binary open and close fds concurrently: a lower bound only.
        assert!(open >= 5 && before >= 3, "{before} -> {open}");
        assert!(max >= open, "limit {max} below {open} open");
        drop(extra);
    }

    #[test]
    fn dns_metrics_are_exposed_with_every_label() {
        let dns = Arc::new(DnsStats::default());
        dns.query(DnsQueryResult::Timeout);
        dns.cache(DnsCacheOutcome::Coalesced, 499);
        dns.lookup.observe(Duration::from_millis(3));
        let m =
            Arc::new(Metrics::new(Vec::new(), Arc::new(Status::default()), "epoll").with_dns(dns));
        let text = m.render().unwrap();
        assert!(
            text.contains("splicegate_dns_queries_total{result=\"timeout\"} 1"),
            "{text}"
        );
        assert!(text.contains("splicegate_dns_queries_total{result=\"answer\"} 0"));
        assert!(text.contains("splicegate_dns_cache_total{outcome=\"coalesced\"} 499"));
        assert!(text.contains("splicegate_dns_cache_total{outcome=\"hosts_file\"} 0"));
        assert!(text.contains("splicegate_dns_lookup_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("splicegate_dns_lookup_seconds_count 1"));
    }

    #[test]
    fn retired_shards_keep_counting() {
        let old: Vec<Arc<Shard>> = (0..2).map(|_| Arc::new(Shard::default())).collect();
        let m = Arc::new(Metrics::new(
            old.clone(),
            Arc::new(Status::default()),
            "uring",
        ));
        for s in &old {
            s.bytes_downstream.fetch_add(10, Relaxed);
            s.tunnel_duration.observe(Duration::from_secs(2));
        }
        let new: Vec<Arc<Shard>> = (0..3).map(|_| Arc::new(Shard::default())).collect();
        new[0].bytes_downstream.fetch_add(5, Relaxed);
        m.add_engine(&new, "epoll");
        m.status.reloads_ok.fetch_add(1, Relaxed);
        let text = m.render().unwrap();
        assert!(text.contains("splicegate_bytes_total{direction=\"downstream\"} 25"));
        assert!(text.contains("splicegate_engine{kind=\"epoll\"} 1"));
        assert!(text.contains("splicegate_config_reloads_total{result=\"ok\"} 1"));
        m.retire(&old);
        assert_eq!(m.shards.lock().unwrap().len(), 3);
        let text = m.render().unwrap();
        assert!(text.contains("splicegate_bytes_total{direction=\"downstream\"} 25"));
        assert!(text.contains("splicegate_tunnel_duration_seconds_count 2"));
        assert!(text.contains("splicegate_config_reloads_total{result=\"failed\"} 0"));
    }

    #[test]
    fn client_counts_drop_to_zero() {
        let s = Shard::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        s.client_opened(ip);
        s.client_opened(ip);
        s.client_closed(ip);
        assert_eq!(s.clients.lock().unwrap().len(), 1);
        s.client_closed(ip);
        assert!(s.clients.lock().unwrap().is_empty());
    }
}
