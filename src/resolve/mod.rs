//! Name resolution off the workers: one task on the control runtime answers every worker's
//! lookups. Names pinned without DNS are answered by the worker itself, before a request ever
//! gets here: the config's static `hosts:` map first, then the hosts file ([`hosts`]), through
//! [`Resolver::pinned`] — a read of the table the resolver task publishes, with no syscall and
//! no round trip.
//!
//! A worker sends a [`Request`] and goes on serving; the answer comes back on the worker's own
//! channel, followed by a wake-up of its eventfd. The resolver never blocks a worker, and the
//! worker enforces `resolve_timeout` with its own timer, so a silent DNS server costs one timer.
//!
//! In order, for a name:
//! 1. the hosts file ([`hosts`]): a listed name is answered from it, with no query. The task
//!    reads the file at start and re-checks it every [`hosts::RECHECK`] on a timer of its own
//!    (lookups no longer reach it for those names), publishing each version that held still;
//!    a worker answers from the published table, and a request that reaches the task anyway
//!    (the table changed after the worker looked) is answered from it here;
//! 2. the cache ([`cache`]): A and AAAA both fresh -> answered at once;
//! 3. otherwise the lookup joins the name's [`coalesce::Job`]; a query is sent for each
//!    family not fresh unless one is already outstanding ([`coalesce::Inflight`]); A and AAAA
//!    are separate queries ([`query`]) and the job is answered by [`coalesce::Job::decide`];
//! 4. serve-stale (RFC 8767): a family whose query fails, or is outstanding for `stale_after`,
//!    uses an answer expired less than `stale_ttl` ago; once a query for it has failed, that
//!    stale answer is used at once while a new query is tried. Each use logs event 403 with
//!    `stale=true`;
//! 5. an answer the cache gave out at least twice is refreshed in the background at 90% of
//!    its TTL.

pub mod cache;
pub mod coalesce;
pub mod hosts;
pub mod query;
mod settings;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use tracing::{info, warn};

use self::cache::{Cache, Family, Outcome, Ttls};
use self::coalesce::{Decision, Got, Inflight, Job};
use self::hosts::{HostsFile, Pins, Reloaded};
pub use self::query::BuildError;
use self::query::QueryResult;
pub use self::settings::ResolverSettings;
use crate::events;
use crate::mailbox::Mailbox;
use crate::metrics::{DnsCacheOutcome, DnsStats};

/// Why a name did not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveError {
    /// NXDOMAIN or no A/AAAA records.
    NotFound,
    /// The resolver failed (no usable name server, network error, SERVFAIL) and had nothing
    /// stale to offer.
    Failed,
    /// The name server did not answer within `resolve_timeout`, and nothing stale was at hand:
    /// the same outcome as the worker's own timer.
    Timeout,
}

/// Where resolved addresses came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The hosts file: the operator's own pin.
    HostsFile,
    /// DNS; `private_link`: the CNAME chain passed through a `privatelink.` zone.
    Dns { private_link: bool },
}

/// Addresses for a name: IPv4 first, then IPv6 (either may be absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub ips: Vec<IpAddr>,
    pub source: Source,
}

/// An answer for the worker's connection `(slot, gen)`.
#[derive(Debug)]
pub struct Answer {
    pub slot: u32,
    pub gen: u32,
    pub result: Result<Resolved, ResolveError>,
}

/// Where a worker wants its answers.
pub type ReplyTo = Mailbox<Answer>;

#[derive(Debug)]
struct Request {
    name: String,
    at: Instant,
    slot: u32,
    gen: u32,
    reply: ReplyTo,
}

/// A cloneable handle to the resolver task, one per worker; `lookup` never blocks and
/// `pinned` makes no syscall.
#[derive(Debug, Clone)]
pub struct Resolver {
    tx: tokio::sync::mpsc::UnboundedSender<Request>,
    /// This handle's view of the hosts-file table the task publishes.
    pins: Pins,
    stats: Arc<DnsStats>,
    private_link: bool,
}

impl Resolver {
    /// Start the resolver on `rt`. A resolver whose name servers cannot be set up (no
    /// `/etc/resolv.conf`) still starts: the hosts file still answers, every DNS query fails,
    /// and the error is returned for the caller to log.
    pub fn start(
        settings: &ResolverSettings,
        timeout: Duration,
        rt: &tokio::runtime::Handle,
    ) -> (Resolver, Option<BuildError>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
        let built = query::build(settings, timeout);
        let (dns, warning) = match built {
            Ok(r) => (Some(Arc::new(r)), None),
            Err(e) => (None, Some(e)),
        };
        let stats = Arc::new(DnsStats::default());
        let mut core = Core::new(settings, timeout, Arc::clone(&stats));
        // Read the hosts file before the first worker can ask, so its names are answered from
        // the first CONNECT and its state is in the log first.
        core.refresh_hosts(Instant::now());
        let pins = Pins::new(core.hosts.shared());
        rt.spawn(run(core, rx, dns, timeout));
        let resolver = Resolver {
            tx,
            pins,
            stats,
            private_link: settings.private_link,
        };
        (resolver, warning)
    }

    /// `name`'s addresses if the hosts file lists it, answered here on the caller's thread
    /// (counted as `splicegate_dns_cache_total{outcome="hosts_file"}`); `None` -> ask
    /// [`Resolver::lookup`].
    pub fn pinned(&mut self, name: &str) -> Option<Resolved> {
        let ips = self.pins.get(name)?.to_vec();
        self.stats.cache(DnsCacheOutcome::HostsFile, 1);
        Some(Resolved {
            ips,
            source: Source::HostsFile,
        })
    }

    /// Ask for `name`; the answer arrives on `reply`. Returns false if the resolver is gone.
    pub fn lookup(&self, name: &str, slot: u32, gen: u32, reply: &ReplyTo) -> bool {
        self.tx
            .send(Request {
                name: name.to_owned(),
                at: Instant::now(),
                slot,
                gen,
                reply: reply.clone(),
            })
            .is_ok()
    }

    /// The resolver's metrics, for `/metrics`.
    pub fn stats(&self) -> Arc<DnsStats> {
        Arc::clone(&self.stats)
    }

    /// `resolver.private_link`: a private address from DNS needs a `privatelink.` CNAME chain.
    pub fn private_link(&self) -> bool {
        self.private_link
    }
}

/// A query's result, sent back to the resolver task.
struct Done {
    name: String,
    family: Family,
    result: QueryResult,
}

/// The resolver task: requests, query results and timers, one at a time.
async fn run(
    mut core: Core,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Request>,
    dns: Option<Arc<TokioResolver>>,
    timeout: Duration,
) {
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    // The hosts file's own timer: the workers answer its names, so no lookup would bring the
    // task here to notice a change.
    let mut hosts_timer = tokio::time::interval(hosts::RECHECK);
    hosts_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = core.next_wake(Instant::now());
        let timer = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            req = rx.recv() => match req {
                Some(r) => core.request(r, Instant::now()),
                None => break,
            },
            Some(d) = done_rx.recv() => core.completed(d, Instant::now()),
            () = timer => core.tick(Instant::now()),
            _ = hosts_timer.tick() => core.refresh_hosts(Instant::now()),
        }
        core.stats.set_cache_entries(core.cache.len());
        for (name, family) in core.take_queries() {
            let (dns, done_tx) = (dns.clone(), done_tx.clone());
            tokio::spawn(async move {
                let result = query::ask(dns.as_deref(), &name, family, timeout).await;
                let _ = done_tx.send(Done {
                    name,
                    family,
                    result,
                });
            });
        }
    }
}

/// One lookup waiting for a job's answer.
#[derive(Debug)]
struct Waiter {
    at: Instant,
    slot: u32,
    gen: u32,
    reply: ReplyTo,
}

/// The resolver's state; every method takes `now`.
struct Core {
    hosts: HostsFile,
    cache: Cache,
    inflight: Inflight,
    jobs: HashMap<String, Job<Waiter>>,
    /// Queries to send, taken by the task after each step.
    queries: Vec<(String, Family)>,
    stale_after: Duration,
    stale_enabled: bool,
    delay: Duration,
    stats: Arc<DnsStats>,
}

impl Core {
    fn new(s: &ResolverSettings, timeout: Duration, stats: Arc<DnsStats>) -> Core {
        let ttls = Ttls {
            min: s.min_ttl,
            max: s.max_ttl.max(s.min_ttl),
            negative: s.negative_ttl,
            stale: s.stale_ttl,
        };
        Core {
            hosts: HostsFile::new(s.hosts_file.clone()),
            cache: Cache::new(s.cache_size, ttls),
            inflight: Inflight::default(),
            jobs: HashMap::new(),
            queries: Vec::new(),
            stale_after: s.stale_after.min(timeout),
            stale_enabled: !s.stale_ttl.is_zero(),
            delay: s.resolution_delay,
            stats,
        }
    }

    fn request(&mut self, req: Request, now: Instant) {
        let name = req.name.trim_end_matches('.').to_ascii_lowercase();
        let waiter = Waiter {
            at: req.at,
            slot: req.slot,
            gen: req.gen,
            reply: req.reply,
        };
        // Workers answer the hosts file's names themselves; one that reaches the task anyway
        // (published after the worker looked) is answered from the same table.
        if let Some(ips) = self.hosts.get(&name) {
            let resolved = Resolved {
                ips,
                source: Source::HostsFile,
            };
            self.stats.cache(DnsCacheOutcome::HostsFile, 1);
            self.deliver(waiter, Ok(resolved), now);
            return;
        }
        if let Some(job) = self.jobs.get_mut(&name) {
            job.waiters.push(waiter);
            self.stats.cache(DnsCacheOutcome::Coalesced, 1);
            return;
        }
        let fresh = [
            self.cache.fresh(&name, Family::V4, now),
            self.cache.fresh(&name, Family::V6, now),
        ];
        if let [Some(a), Some(b)] = &fresh {
            self.stats.cache(DnsCacheOutcome::Hit, 1);
            let d = coalesce_fresh(a, b);
            self.deliver(waiter, to_result(d), now);
            return;
        }
        let mut job = Job::new(
            fresh[0].as_ref().map(got_from),
            fresh[1].as_ref().map(got_from),
        );
        let mut sent = false;
        for f in Family::BOTH {
            if !job.waiting(f) {
                continue;
            }
            if self.inflight.begin(&name, f, now) {
                self.queries.push((name.clone(), f));
                sent = true;
            }
            if let Some(s) = self.cache.stale_after_failure(&name, f, now) {
                job.set(f, stale_got(s));
            }
        }
        self.stats.cache(
            if sent {
                DnsCacheOutcome::Miss
            } else {
                DnsCacheOutcome::Coalesced
            },
            1,
        );
        job.waiters.push(waiter);
        self.jobs.insert(name.clone(), job);
        self.settle(&name, now);
    }

    /// Publish a change of the hosts file that held still (checked at most once per
    /// [`hosts::RECHECK`]) and say so.
    fn refresh_hosts(&mut self, now: Instant) {
        match self.hosts.refresh(now) {
            Reloaded::No => {}
            Reloaded::Read(n) => info!(
                event_id = events::INFO,
                names = n,
                "hosts file read: its names are answered without DNS"
            ),
            Reloaded::Failed(e) => warn!(
                event_id = events::INTERNAL_ERROR,
                error = %e,
                "cannot read the hosts file: its names go to DNS"
            ),
        }
    }

    fn completed(&mut self, d: Done, now: Instant) {
        let Done {
            name,
            family,
            result,
        } = d;
        self.inflight.end(&name, family);
        self.stats.query(result.label());
        let got = match result {
            QueryResult::Answer {
                ips,
                ttl,
                private_link,
            } => {
                self.cache
                    .insert_addrs(&name, family, (ips.clone(), private_link), ttl, now);
                Got::Addrs {
                    ips,
                    private_link,
                    stale: false,
                }
            }
            QueryResult::NxDomain { negative_ttl } => {
                self.cache
                    .insert_negative(&name, family, true, negative_ttl, now);
                Got::NotFound
            }
            QueryResult::NoData { negative_ttl } => {
                self.cache
                    .insert_negative(&name, family, false, negative_ttl, now);
                Got::NotFound
            }
            QueryResult::ServFail | QueryResult::Timeout => {
                self.cache.failed(&name, family);
                match self.cache.stale(&name, family, now) {
                    Some(s) => stale_got(s),
                    None if result == QueryResult::Timeout => Got::TimedOut,
                    None => Got::Failed,
                }
            }
        };
        if let Some(job) = self.jobs.get_mut(&name) {
            job.set(family, got);
            self.settle(&name, now);
        }
    }

    /// Timers: silence past `stale_after`, resolution delays, background refreshes.
    fn tick(&mut self, now: Instant) {
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for name in names {
            if self.stale_enabled {
                for f in Family::BOTH {
                    let silent = self
                        .inflight
                        .since(&name, f)
                        .is_some_and(|t| now.saturating_duration_since(t) >= self.stale_after);
                    let waiting = self.jobs.get(&name).is_some_and(|j| j.waiting(f));
                    if silent && waiting {
                        if let Some(s) = self.cache.stale(&name, f, now) {
                            if let Some(job) = self.jobs.get_mut(&name) {
                                job.set(f, stale_got(s));
                            }
                        }
                    }
                }
            }
            self.settle(&name, now);
        }
        for (name, f) in self.cache.due_refreshes(now) {
            if self.inflight.begin(&name, f, now) {
                self.queries.push((name, f));
            }
        }
    }

    /// Answer `name`'s job if the rule says so.
    fn settle(&mut self, name: &str, now: Instant) {
        let Some(job) = self.jobs.get(name) else {
            return;
        };
        let inflight = &self.inflight;
        let Some(decision) = job.decide(now, |f| inflight.since(name, f), self.delay) else {
            return;
        };
        let Some(job) = self.jobs.remove(name) else {
            return;
        };
        if let Decision::Addrs { stale: true, .. } = decision {
            let lookups = job.waiters.len();
            self.stats
                .cache(DnsCacheOutcome::Stale, u64::try_from(lookups).unwrap_or(0));
            warn!(
                event_id = events::NETWORK_ERROR,
                name = name,
                stale = true,
                lookups = lookups,
                detail = "the name server failed or is silent; answered with an expired answer (serve-stale) while the refresh is retried",
                "serving a stale DNS answer"
            );
        }
        let result = to_result(decision);
        for w in job.waiters {
            self.deliver(w, result.clone(), now);
        }
    }

    fn deliver(&self, w: Waiter, result: Result<Resolved, ResolveError>, now: Instant) {
        self.stats
            .lookup
            .observe(now.saturating_duration_since(w.at));
        let answer = Answer {
            slot: w.slot,
            gen: w.gen,
            result,
        };
        w.reply.post(answer);
    }

    /// The earliest instant [`Core::tick`] has something to do.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let mut next = self.cache.next_refresh();
        let mut earliest = |t: Instant| {
            next = Some(next.map_or(t, |n| n.min(t)));
        };
        for (name, job) in &self.jobs {
            let sent = |f| self.inflight.since(name, f);
            if let Some(t) = job.delay_deadline(sent, self.delay) {
                earliest(t);
            }
            if self.stale_enabled {
                for f in Family::BOTH {
                    if job.waiting(f) && self.cache.stale(name, f, now).is_some() {
                        if let Some(t) = sent(f) {
                            earliest(t + self.stale_after);
                        }
                    }
                }
            }
        }
        next
    }

    fn take_queries(&mut self) -> Vec<(String, Family)> {
        std::mem::take(&mut self.queries)
    }
}

fn got_from(o: &Outcome) -> Got {
    match o {
        Outcome::Addrs { ips, private_link } => Got::Addrs {
            ips: ips.clone(),
            private_link: *private_link,
            stale: false,
        },
        Outcome::NxDomain | Outcome::NoData => Got::NotFound,
    }
}

fn stale_got(s: cache::Stale) -> Got {
    Got::Addrs {
        ips: s.ips,
        private_link: s.private_link,
        stale: true,
    }
}

/// Both families fresh: the same rule as a job with both results in.
fn coalesce_fresh(a: &Outcome, b: &Outcome) -> Decision {
    let job: Job<()> = Job::new(Some(got_from(a)), Some(got_from(b)));
    job.decide(Instant::now(), |_| None, Duration::ZERO)
        .unwrap_or(Decision::Failed)
}

fn to_result(d: Decision) -> Result<Resolved, ResolveError> {
    match d {
        Decision::Addrs {
            ips, private_link, ..
        } => Ok(Resolved {
            ips,
            source: Source::Dns { private_link },
        }),
        Decision::NotFound => Err(ResolveError::NotFound),
        Decision::Failed => Err(ResolveError::Failed),
        Decision::TimedOut => Err(ResolveError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::mpsc;

    const MS: Duration = Duration::from_millis(1);
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn settings(hosts: &std::path::Path) -> ResolverSettings {
        ResolverSettings {
            hosts_file: hosts.to_path_buf(),
            min_ttl: Duration::ZERO,
            ..ResolverSettings::default()
        }
    }

    fn core(tag: &str) -> (Core, Arc<DnsStats>, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("splicegate-core-{}-{tag}", std::process::id()));
        std::fs::write(&path, "192.0.2.9 pinned.example\n").unwrap();
        let stats = Arc::new(DnsStats::default());
        (
            Core::new(&settings(&path), TIMEOUT, stats.clone()),
            stats,
            path,
        )
    }

    struct Client {
        reply: ReplyTo,
        rx: mpsc::Receiver<Answer>,
    }

    impl Client {
        fn new() -> Client {
            let (tx, rx) = mpsc::channel();
            let wake = Arc::new(
                rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
                )
                .unwrap(),
            );
            Client {
                reply: ReplyTo { tx, wake },
                rx,
            }
        }

        fn ask(&self, core: &mut Core, name: &str, slot: u32, now: Instant) {
            let req = Request {
                name: name.to_owned(),
                at: now,
                slot,
                gen: 0,
                reply: self.reply.clone(),
            };
            core.request(req, now);
        }

        fn answers(&self) -> Vec<Answer> {
            self.rx.try_iter().collect()
        }
    }

    fn a(ttl: u32) -> QueryResult {
        QueryResult::Answer {
            ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
            ttl,
            private_link: false,
        }
    }

    fn done(core: &mut Core, name: &str, family: Family, result: QueryResult, now: Instant) {
        core.completed(
            Done {
                name: name.to_owned(),
                family,
                result,
            },
            now,
        );
    }

    #[test]
    fn hosts_file_answers_without_a_query() {
        let (mut core, stats, path) = core("hosts");
        let c = Client::new();
        let t0 = Instant::now();
        core.refresh_hosts(t0);
        c.ask(&mut core, "Pinned.Example.", 1, t0);
        let ans = c.answers();
        assert_eq!(ans.len(), 1);
        assert_eq!(
            ans[0].result,
            Ok(Resolved {
                ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))],
                source: Source::HostsFile
            })
        );
        assert!(core.take_queries().is_empty());
        assert_eq!(stats.cached(DnsCacheOutcome::HostsFile), 1);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_handle_answers_the_hosts_file_itself_and_follows_its_changes() {
        let path = std::env::temp_dir().join(format!("splicegate-pinned-{}", std::process::id()));
        std::fs::write(&path, "192.0.2.9 pinned.example\n").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (resolver, _) = Resolver::start(&settings(&path), TIMEOUT, rt.handle());
        // A worker's own handle, answering with no runtime turning: read at start.
        let mut mine = resolver.clone();
        let want = Resolved {
            ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))],
            source: Source::HostsFile,
        };
        assert_eq!(mine.pinned("PINNED.example."), Some(want));
        assert_eq!(mine.pinned("other.example"), None);
        let stats = resolver.stats();
        assert_eq!(stats.cached(DnsCacheOutcome::HostsFile), 1);
        // The task's own timer publishes a change (no lookup reaches it): bounded wait.
        std::fs::write(&path, "192.0.2.10 moved.example\n").unwrap();
        let seen = rt.block_on(async {
            for _ in 0..100 {
                if mine.pinned("moved.example").is_some() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        });
        assert!(seen, "the change was not published within 5 s");
        assert_eq!(mine.pinned("pinned.example"), None);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn concurrent_lookups_share_one_query_per_family() {
        let (mut core, stats, path) = core("coalesce");
        let c = Client::new();
        let t0 = Instant::now();
        for slot in 0..3 {
            c.ask(&mut core, "n.example", slot, t0);
        }
        let mut q = core.take_queries();
        q.sort();
        assert_eq!(
            q,
            vec![
                ("n.example".to_owned(), Family::V4),
                ("n.example".to_owned(), Family::V6)
            ]
        );
        assert_eq!(stats.cached(DnsCacheOutcome::Miss), 1);
        assert_eq!(stats.cached(DnsCacheOutcome::Coalesced), 2);
        done(&mut core, "n.example", Family::V4, a(60), t0 + MS);
        assert!(
            c.answers().is_empty(),
            "AAAA still within the resolution delay"
        );
        let nodata = QueryResult::NoData {
            negative_ttl: Some(60),
        };
        done(&mut core, "n.example", Family::V6, nodata, t0 + 2 * MS);
        let ans = c.answers();
        assert_eq!(ans.len(), 3);
        assert!(ans.iter().all(|x| x.result.is_ok()));
        // Now cached: a hit, no query.
        c.ask(&mut core, "n.example", 9, t0 + 10 * MS);
        assert_eq!(c.answers().len(), 1);
        assert!(core.take_queries().is_empty());
        assert_eq!(stats.cached(DnsCacheOutcome::Hit), 1);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_silent_family_costs_only_the_resolution_delay() {
        let (mut core, _stats, path) = core("delay");
        let c = Client::new();
        let t0 = Instant::now();
        c.ask(&mut core, "v4.example", 1, t0);
        let _ = core.take_queries();
        done(&mut core, "v4.example", Family::V4, a(60), t0 + 5 * MS);
        assert!(c.answers().is_empty());
        assert_eq!(core.next_wake(t0 + 5 * MS), Some(t0 + 50 * MS));
        core.tick(t0 + 50 * MS);
        let ans = c.answers();
        assert_eq!(ans.len(), 1);
        let Ok(r) = &ans[0].result else {
            panic!("addresses expected: {ans:?}");
        };
        assert_eq!(r.ips.len(), 1);
        // The AAAA answer arriving later still fills the cache.
        let aaaa = QueryResult::Answer {
            ips: vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
            ttl: 60,
            private_link: false,
        };
        done(&mut core, "v4.example", Family::V6, aaaa, t0 + 3000 * MS);
        c.ask(&mut core, "v4.example", 2, t0 + 3001 * MS);
        let ans = c.answers();
        assert_eq!(ans[0].result.as_ref().map(|r| r.ips.len()), Ok(2));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn expired_answers_are_served_stale_after_silence_then_at_once_after_a_failure() {
        let (mut core, stats, path) = core("stale");
        let c = Client::new();
        let t0 = Instant::now();
        c.ask(&mut core, "s.example", 1, t0);
        let _ = core.take_queries();
        done(&mut core, "s.example", Family::V4, a(1), t0);
        done(&mut core, "s.example", Family::V6, QueryResult::Timeout, t0);
        assert_eq!(c.answers().len(), 1);
        // Expired; the name server is silent: stale after stale_after (1.5 s).
        let t1 = t0 + Duration::from_secs(2);
        c.ask(&mut core, "s.example", 2, t1);
        assert_eq!(core.take_queries().len(), 2);
        core.tick(t1 + 1400 * MS);
        assert!(c.answers().is_empty());
        assert_eq!(core.next_wake(t1 + 1400 * MS), Some(t1 + 1500 * MS));
        core.tick(t1 + 1500 * MS);
        let ans = c.answers();
        assert_eq!(ans.len(), 1, "{ans:?}");
        assert!(ans[0].result.is_ok());
        assert_eq!(stats.cached(DnsCacheOutcome::Stale), 1);
        // The refresh fails: the next lookup is served stale at once, and asks again.
        done(
            &mut core,
            "s.example",
            Family::V4,
            QueryResult::ServFail,
            t1 + 2 * TIMEOUT / 5,
        );
        let t2 = t1 + TIMEOUT;
        done(&mut core, "s.example", Family::V6, QueryResult::Timeout, t2);
        c.ask(&mut core, "s.example", 3, t2);
        assert_eq!(
            core.take_queries().len(),
            2,
            "the refresh keeps being tried"
        );
        // Without waiting for stale_after: only the resolution delay for the AAAA query.
        core.tick(t2 + 50 * MS);
        assert_eq!(c.answers().len(), 1, "served at once");
        assert_eq!(stats.cached(DnsCacheOutcome::Stale), 2);
        // Past stale_ttl (1 h): nothing stale any more.
        done(
            &mut core,
            "s.example",
            Family::V4,
            QueryResult::ServFail,
            t2,
        );
        done(
            &mut core,
            "s.example",
            Family::V6,
            QueryResult::ServFail,
            t2,
        );
        let t3 = t0 + Duration::from_secs(3700);
        c.ask(&mut core, "s.example", 4, t3);
        let _ = core.take_queries();
        done(
            &mut core,
            "s.example",
            Family::V4,
            QueryResult::ServFail,
            t3,
        );
        done(
            &mut core,
            "s.example",
            Family::V6,
            QueryResult::ServFail,
            t3,
        );
        let ans = c.answers();
        assert_eq!(ans[0].result, Err(ResolveError::Failed));
        assert_eq!(stats.queries(crate::metrics::DnsQueryResult::ServFail), 5);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_timeout_with_nothing_stale_is_a_timeout_not_a_failure() {
        let (mut core, stats, path) = core("timeout");
        let c = Client::new();
        let t0 = Instant::now();
        c.ask(&mut core, "t.example", 1, t0);
        let _ = core.take_queries();
        done(
            &mut core,
            "t.example",
            Family::V4,
            QueryResult::Timeout,
            t0 + TIMEOUT,
        );
        done(
            &mut core,
            "t.example",
            Family::V6,
            QueryResult::ServFail,
            t0 + TIMEOUT,
        );
        let ans = c.answers();
        assert_eq!(ans.len(), 1);
        assert_eq!(ans[0].result, Err(ResolveError::Timeout));
        assert_eq!(stats.queries(crate::metrics::DnsQueryResult::Timeout), 1);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn a_busy_name_is_refreshed_at_ninety_percent() {
        let (mut core, _stats, path) = core("refresh");
        let c = Client::new();
        let t0 = Instant::now();
        c.ask(&mut core, "b.example", 1, t0);
        let _ = core.take_queries();
        done(&mut core, "b.example", Family::V4, a(100), t0);
        let nodata = QueryResult::NoData {
            negative_ttl: Some(100),
        };
        done(&mut core, "b.example", Family::V6, nodata, t0);
        for slot in 2..4 {
            c.ask(&mut core, "b.example", slot, t0 + Duration::from_secs(1));
        }
        assert!(core.take_queries().is_empty());
        // NODATA is kept for negative_ttl (30 s): refreshed at 27 s; the A answer at 90 s.
        core.tick(t0 + Duration::from_secs(26));
        assert!(core.take_queries().is_empty());
        core.tick(t0 + Duration::from_secs(27));
        assert_eq!(
            core.take_queries(),
            vec![("b.example".to_owned(), Family::V6)]
        );
        core.tick(t0 + Duration::from_secs(89));
        assert!(core.take_queries().is_empty());
        core.tick(t0 + Duration::from_secs(90));
        assert_eq!(
            core.take_queries(),
            vec![("b.example".to_owned(), Family::V4)]
        );
        let _ = std::fs::remove_file(path);
    }
}
