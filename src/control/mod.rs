//! The control plane, off the data path: start-up, signals, reload, drain, systemd notifications
//! and the HTTP endpoint.
//!
//! [`run`] binds everything before it announces event 101, so a bad address or a port in use
//! fails the start with a non-zero exit instead of a half-running service. It then runs a small
//! tokio runtime on the main thread for signals, the config-file watch, the resolver and
//! `/metrics`; workers never touch that runtime.
//!
//! # Reload
//! SIGHUP, or a change of the configuration file seen by [`watch::Watcher`], re-reads the file.
//! A file that does not validate is refused (event 401) and the old configuration keeps serving.
//! Otherwise a new [`Settings`] snapshot is stored into the shared `ArcSwap`: workers use it for
//! new connections, open tunnels keep theirs. When `listen`, `workers` or `engine` changed, a new
//! [`Engine`] starts first (its `SO_REUSEPORT` listeners bind while the old ones are still open,
//! so no connection is refused in between); the old engine is then retired: it stops accepting
//! and its tunnels run to their natural end. Retired engines are reaped once their workers have
//! exited; SIGTERM drains all of them with the real `drain_timeout`. Every reload logs event 100
//! with what changed and counts in `splicegate_config_reloads_total{result}`.

pub mod admin_socket;
pub mod diff;
mod error;
pub mod http;
pub mod notify;
pub mod pidfile;
pub mod status;
pub mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{Config, DEFAULT_ADMIN_SOCKET};
use crate::engine::conn::session::Session;
use crate::engine::worker::Command;
use crate::engine::{self, Choice, Engine};
use crate::events;
use crate::metrics::{Metrics, Shard, Status};
use crate::resolve::Resolver;
use crate::settings::{self, Settings};
use admin_socket::{AdminSocket, Asked, Request};
use notify::Notifier;
use pidfile::PidFile;
use watch::Watcher;

pub use error::ControlError;

/// fds kept back from the tunnel estimate for listeners, rings, the resolver and logging.
const FD_RESERVE: u64 = 128;
/// Pause between retiring an engine and arming its successor's accepts (see
/// [`Control::switch_engine`]).
const RETIRE_GRACE: Duration = Duration::from_millis(50);
/// How often retired engines are checked for having finished.
const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// Options of `splicegate run` beyond the configuration.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Where the configuration came from (`None`: the embedded default); re-read on reload.
    pub config_path: Option<PathBuf>,
    /// The file's bytes the configuration was parsed from.
    pub config_source: Option<Vec<u8>>,
    /// Write the process id here once serving; removed at exit.
    pub pid_file: Option<PathBuf>,
    /// Watch the configuration file with inotify (on by default).
    pub watch: bool,
}

/// The engine accepting new connections, with what it was started from.
struct Serving {
    engine: Engine,
    shards: Vec<Arc<Shard>>,
    bound: Vec<SocketAddr>,
    choice: Choice,
    workers: usize,
}

/// An engine replaced by a reload, draining its tunnels.
struct Retiring {
    engine: Engine,
    shards: Vec<Arc<Shard>>,
    since: Instant,
}

/// Serve `cfg` until SIGTERM/SIGINT and a drain.
pub fn run(cfg: Config, opts: RunOptions) -> Result<(), ControlError> {
    match engine::sys::raise_nofile_limit() {
        Ok(n) => info!(
            event_id = events::INFO,
            nofile = n,
            idle_tunnels = n.saturating_sub(FD_RESERVE) / 2,
            "file descriptor limit raised to the hard limit: each idle tunnel holds 2 fds, an active one up to 6"
        ),
        Err(e) => warn!(event_id = events::INFO, error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    let notifier = Notifier::from_env();
    let metrics_listener = match cfg.metrics_listen {
        Some(a) => Some(bind_metrics(a)?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("splicegate-control")
        .build()
        .map_err(ControlError::Runtime)?;

    let current = settings::shared(&cfg);
    let (resolver, resolver_warning) =
        Resolver::start(&cfg.resolver, cfg.limits.resolve_timeout, rt.handle());
    if let Some(w) = resolver_warning {
        warn!(
            event_id = events::INTERNAL_ERROR,
            "{w}; names without a static `hosts:` entry will fail to resolve"
        );
    }
    let serving = start_engine(&cfg, &current, &resolver)?;
    let status = Arc::new(Status::default());
    let metrics = Arc::new(
        Metrics::new(
            serving.shards.clone(),
            Arc::clone(&status),
            serving.choice.kind(),
        )
        .with_dns(resolver.stats()),
    );
    metrics.rules.publish(&current.load().rules);

    // Signal handlers and the HTTP endpoint are in place before event 101 announces the start:
    // a SIGTERM right after start-up must drain, not kill.
    let guard = rt.enter();
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    let (mut term, mut int, mut hup) = match signals {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            serving.engine.stop();
            serving.engine.join();
            return Err(ControlError::Signals(e));
        }
    };
    let (metrics_task, metrics_addr) = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().ok();
            (Some(spawn_metrics(l, &metrics, &current)?), addr)
        }
        None => (None, None),
    };
    let (admin_tx, mut admin_rx) = tokio::sync::mpsc::channel::<Asked>(64);
    let admin_socket = match open_admin_socket(&cfg, &current, admin_tx.clone()) {
        Ok(s) => s,
        Err(e) => {
            serving.engine.stop();
            serving.engine.join();
            return Err(e);
        }
    };
    let mut watcher = match (&opts.config_path, opts.watch) {
        (Some(p), true) => match Watcher::new(p, cfg.limits.reload_debounce) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(
                    event_id = events::INFO,
                    path = %p.display(),
                    error = %e,
                    "cannot watch the configuration file; reload with SIGHUP"
                );
                None
            }
        },
        _ => None,
    };
    drop(guard);
    status.listening.store(true, Relaxed);
    let pid_file = match &opts.pid_file {
        Some(p) => match PidFile::create(p) {
            Ok(f) => Some(f),
            Err(e) => {
                serving.engine.stop();
                serving.engine.join();
                return Err(ControlError::PidFile {
                    path: p.clone(),
                    source: e,
                });
            }
        },
        None => None,
    };

    info!(
        event_id = events::STARTED,
        listen = %addr_list(&serving.bound),
        metrics_listen = %metrics_addr.map_or_else(|| "disabled".to_owned(), |a| a.to_string()),
        admin_socket = %admin_socket.as_ref().map_or_else(|| "disabled".to_owned(), |s| s.path().display().to_string()),
        engine = serving.choice.kind(),
        engine_reason = %serving.choice.why,
        workers = serving.workers,
        data_path = cfg.data_path.as_str(),
        config = %opts.config_path.as_deref().map_or_else(|| "embedded default".into(), |p| p.display().to_string()),
        watch = watcher.as_ref().map_or_else(|| "off".into(), |w| w.dir().display().to_string()),
        pid_file = %pid_file.as_ref().map_or_else(|| "none".into(), |p| p.path().display().to_string()),
        version = env!("CARGO_PKG_VERSION"),
        "splicegate started"
    );
    let mut control = Control {
        cfg,
        source: opts.config_source.clone(),
        path: opts.config_path.clone(),
        current,
        resolver,
        serving,
        retiring: Vec::new(),
        metrics,
        status: Arc::clone(&status),
        metrics_task,
        metrics_addr,
        notifier,
        admin_socket,
        admin_tx,
        samples: status::Samples::default(),
        started: Instant::now(),
        last_reload: None,
    };
    let first = control.metrics.totals();
    control.samples.push(control.started, first);
    control.notifier.ready(&control.status_line());
    let watchdog = control.notifier.watchdog_interval();
    if let Some(every) = watchdog {
        info!(
            event_id = events::INFO,
            interval_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            "systemd watchdog enabled"
        );
    }

    rt.block_on(async move {
        // A change made between the parse and the start of the watch raised no event.
        if watcher.is_some() {
            let now = control.path.as_deref().and_then(|p| std::fs::read(p).ok());
            if now.is_some() && now != control.source {
                control.reload(Trigger::File).await;
            }
        }
        let mut reap = tokio::time::interval(REAP_INTERVAL);
        let mut dog = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        let mut sample = tokio::time::interval(status::SAMPLE_EVERY);
        let how = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => control.reload(Trigger::Signal).await,
                r = next_change(&mut watcher) => match r {
                    Ok(()) => control.reload(Trigger::File).await,
                    Err(e) => {
                        warn!(
                            event_id = events::INFO,
                            error = %e,
                            "configuration file watch failed; reload with SIGHUP"
                        );
                        watcher = None;
                    }
                },
                _ = reap.tick() => control.reap(),
                _ = sample.tick() => {
                    let t = control.metrics.totals();
                    control.samples.push(Instant::now(), t);
                }
                Some(asked) = admin_rx.recv() => control.admin(asked),
                _ = dog.tick(), if watchdog.is_some() => {
                    // Only while every worker is alive: a dead worker should get a restart.
                    if control.serving.engine.all_alive() {
                        control.notifier.watchdog();
                    }
                }
            }
            if let Some(w) = watcher.as_mut() {
                w.set_debounce(control.cfg.limits.reload_debounce);
            }
        };
        control.shutdown(how, &mut int).await;
    });
    drop(pid_file);
    info!(event_id = events::STOPPED, "splicegate stopped");
    Ok(())
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Signal,
    File,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::File => "file change",
        }
    }
}

/// Everything the control loop owns between events.
struct Control {
    /// The configuration in force.
    cfg: Config,
    /// The file's bytes when `cfg` was loaded: a file event that left them unchanged (our own
    /// rename after a SIGHUP already applied it, a `touch`) is not a reload.
    source: Option<Vec<u8>>,
    path: Option<PathBuf>,
    current: settings::Shared,
    resolver: Resolver,
    serving: Serving,
    retiring: Vec<Retiring>,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    metrics_task: Option<JoinHandle<()>>,
    metrics_addr: Option<SocketAddr>,
    notifier: Notifier,
    /// The admin socket, served on this runtime; its file goes when this drops.
    admin_socket: Option<AdminSocket>,
    /// Where the admin socket's requests go (for a socket a reload moves).
    admin_tx: tokio::sync::mpsc::Sender<Asked>,
    /// Counter samples for the rates of `splicegate status`.
    samples: status::Samples,
    started: Instant,
    /// When the last reload was tried, and whether it applied.
    last_reload: Option<(std::time::SystemTime, bool)>,
}

impl Control {
    fn status_line(&self) -> String {
        let mut s = format!(
            "serving on {} ({}, {} workers)",
            addr_list(&self.serving.bound),
            self.serving.choice.kind(),
            self.serving.workers
        );
        let reloads = self.status.reloads_ok.load(Relaxed);
        if reloads > 0 {
            s.push_str(&format!("; {reloads} reload(s)"));
        }
        let failed = self.status.reloads_failed.load(Relaxed);
        if failed > 0 {
            s.push_str(&format!("; {failed} refused"));
        }
        if !self.retiring.is_empty() {
            s.push_str(&format!("; {} old engine(s) draining", self.retiring.len()));
        }
        s
    }

    /// Re-read the file and apply it, or refuse it and keep the old configuration.
    ///
    /// The file is read with [`watch::read_settled`]: a file still being written is read again
    /// after `limits.reload_debounce`, and refused when it never holds still. An empty file is
    /// refused like any invalid one (the defaults are only for `run` without `--config`).
    async fn reload(&mut self, trigger: Trigger) {
        let Some(path) = self.path.clone() else {
            info!(
                event_id = events::INFO,
                "SIGHUP: running on the embedded default config, nothing to reload"
            );
            return;
        };
        let (debounce, retries) = (
            self.cfg.limits.reload_debounce,
            self.cfg.limits.reload_retries,
        );
        let (engine, notifier) = (&self.serving.engine, &self.notifier);
        let bytes = watch::read_settled(&path, debounce, retries, || {
            if engine.all_alive() {
                notifier.watchdog();
            }
        })
        .await;
        if trigger == Trigger::File {
            match &bytes {
                Ok(b) if self.source.as_deref() == Some(b.as_slice()) => return,
                // Removed for a moment (an editor's save dance): wait for the next event rather
                // than refusing a file that is about to come back.
                Err(e) if e.not_found() => return,
                _ => {}
            }
        }
        self.notifier.reloading();
        let outcome = match bytes {
            Err(e) => Err(ControlError::from(e)),
            Ok(b) => {
                let parsed = std::str::from_utf8(&b)
                    .map_err(|e| ControlError::NotUtf8 {
                        path: path.clone(),
                        source: e,
                    })
                    .and_then(|text| {
                        Config::from_yaml(text).map_err(|e| {
                            // Attach the path, as `from_file` would.
                            ControlError::Config(match e {
                                crate::config::ConfigError::Invalid { problems, .. } => {
                                    crate::config::ConfigError::Invalid {
                                        path: Some(path.clone()),
                                        problems,
                                    }
                                }
                                other => other,
                            })
                        })
                    });
                parsed.and_then(|cfg| self.apply(cfg, b, &path, trigger))
            }
        };
        self.last_reload = Some((std::time::SystemTime::now(), outcome.is_ok()));
        if let Err(e) = outcome {
            self.status.reloads_failed.fetch_add(1, Relaxed);
            error!(
                event_id = events::BAD_CONFIG,
                path = %path.display(),
                trigger = trigger.as_str(),
                error = %e,
                "configuration reload refused; the previous configuration stays in force"
            );
        }
        self.notifier.ready(&self.status_line());
    }

    /// Apply a validated configuration: move the metrics endpoint and start a new engine if
    /// needed (either failing leaves everything as it was), then publish the new settings and
    /// retire the old engine.
    fn apply(
        &mut self,
        cfg: Config,
        source: Vec<u8>,
        path: &Path,
        trigger: Trigger,
    ) -> Result<(), ControlError> {
        let changes = diff::diff(&self.cfg, &cfg);
        let new_metrics = match (changes.metrics_listen, cfg.metrics_listen) {
            (true, Some(a)) => {
                let l = bind_metrics(a)?;
                let addr = l.local_addr().ok();
                Some((Some(l), addr))
            }
            (true, None) => Some((None, None)),
            (false, _) => None,
        };
        // A moved admin socket is bound before anything is committed: a chosen path that
        // fails refuses the reload (the old socket keeps serving).
        let new_admin = if cfg.admin_socket != self.cfg.admin_socket {
            Some(open_admin_socket(
                &cfg,
                &self.current,
                self.admin_tx.clone(),
            )?)
        } else {
            None
        };
        let settings = Arc::new(Settings::after(&cfg, &self.current.load()));
        let prepared = if changes.engine {
            // The old engine's sockets move to the new one for every address that stays, so
            // no socket with clients in its accept queue is closed by the reload.
            let inherited = self.serving.engine.take_listeners();
            let old = (&self.cfg, &self.serving.bound[..]);
            Some(prepare_engine(&cfg, Some(old), inherited)?)
        } else {
            None
        };
        if let Some(p) = prepared {
            self.switch_engine(p)?;
        }
        // Committed from here on.
        self.metrics.rules.publish(&settings.rules);
        self.current.store(settings);
        // Open tunnels are re-checked against the new policy (`revoke_on_reload`).
        self.serving.engine.recheck();
        for r in &self.retiring {
            r.engine.recheck();
        }
        if let Some(admin) = new_admin {
            // The old socket's accept loop stops and its file goes with it.
            self.admin_socket = admin;
        }
        if let Some((listener, addr)) = new_metrics {
            if let Some(task) = self.metrics_task.take() {
                task.abort();
            }
            self.metrics_task = match listener
                .map(|l| spawn_metrics(l, &self.metrics, &self.current))
            {
                Some(Ok(task)) => Some(task),
                Some(Err(e)) => {
                    error!(event_id = events::INTERNAL_ERROR, error = %e, "cannot serve /metrics");
                    None
                }
                None => None,
            };
            self.metrics_addr = addr;
        }
        self.status.reloads_ok.fetch_add(1, Relaxed);
        info!(
            event_id = events::INFO,
            path = %path.display(),
            trigger = trigger.as_str(),
            changes = %changes.summary(),
            listen = %addr_list(&self.serving.bound),
            metrics_listen = %self.metrics_addr.map_or_else(|| "disabled".to_owned(), |a| a.to_string()),
            engine = self.serving.choice.kind(),
            workers = self.serving.workers,
            engines_retiring = self.retiring.len(),
            "configuration reloaded: the new configuration applies to new connections; open tunnels are untouched"
        );
        if widens_listen(&self.cfg.listen, &cfg.listen) {
            warn!(
                event_id = events::INFO,
                old_listen = %addr_list(&self.cfg.listen),
                new_listen = %addr_list(&cfg.listen),
                listen = %addr_list(&self.serving.bound),
                path = %path.display(),
                trigger = trigger.as_str(),
                "reload widens `listen` beyond loopback: the gateway now accepts clients from other hosts"
            );
        }
        if !changes.need_restart.is_empty() {
            warn!(
                event_id = events::INFO,
                keys = %changes.need_restart.join(", "),
                "these settings take effect at the next restart"
            );
        }
        self.cfg = cfg;
        self.source = Some(source);
        Ok(())
    }

    /// Retire the serving engine and launch `next` in its place.
    ///
    /// The old workers are told to stop accepting before the new ones arm their accepts: an
    /// io_uring accept wakes only one waiter, and a waiter being cancelled can swallow the wakeup
    /// and leave a client in the queue. Clients that arrive in between wait in the accept queues
    /// of the handed-over sockets, which never close. Should the new engine fail to start, one
    /// with the previous `listen`/`workers` takes over (on fresh sockets) and the reload fails.
    fn switch_engine(&mut self, next: Prepared) -> Result<(), ControlError> {
        self.serving.engine.retire();
        // Workers do not acknowledge a drain; give a busy one a moment to act on it before new
        // accepts are armed on the same sockets (clients meanwhile wait in the accept queues).
        std::thread::sleep(RETIRE_GRACE);
        let (next, failed) = match launch_engine(next, &self.current, &self.resolver) {
            Ok(n) => (n, None),
            Err(e) => {
                error!(
                    event_id = events::INTERNAL_ERROR,
                    error = %e,
                    "cannot start the new engine; restarting the previous listeners and workers"
                );
                let old = (&self.cfg, &self.serving.bound[..]);
                let again = prepare_engine(&self.cfg, Some(old), Vec::new())
                    .and_then(|p| launch_engine(p, &self.current, &self.resolver));
                match again {
                    Ok(n) => (n, Some(e)),
                    Err(e2) => {
                        self.status.listening.store(false, Relaxed);
                        return Err(ControlError::NoEngine {
                            new: Box::new(e),
                            previous: Box::new(e2),
                        });
                    }
                }
            }
        };
        self.metrics.add_engine(&next.shards, next.choice.kind());
        let old = std::mem::replace(&mut self.serving, next);
        self.retiring.push(Retiring {
            engine: old.engine,
            shards: old.shards,
            since: Instant::now(),
        });
        self.status
            .engines_retiring
            .store(self.retiring.len() as i64, Relaxed);
        match failed {
            Some(e) => Err(ControlError::NewEngine(Box::new(e))),
            None => Ok(()),
        }
    }

    /// Answer a request from the admin socket. Snapshots and closes go to every worker of
    /// every engine; a task collects their answers (within `limits.admin_timeout`) so the
    /// control loop never waits for a worker.
    fn admin(&mut self, asked: Asked) {
        let Asked { request, reply } = asked;
        let (selector, close) = match request {
            Request::Status => {
                let _ = reply.send(self.status_answer().into());
                return;
            }
            Request::Rules => {
                let rules: Vec<serde_json::Value> = self
                    .metrics
                    .rules
                    .totals()
                    .into_iter()
                    .map(|(rule, t)| {
                        serde_json::json!({
                            "rule": rule,
                            "tunnels": t.tunnels,
                            "bytes_up": t.bytes_up,
                            "bytes_down": t.bytes_down,
                            "last_used": (t.last_used > 0).then_some(t.last_used),
                        })
                    })
                    .collect();
                let _ = reply.send(serde_json::json!({"ok": true, "rules": rules}).into());
                return;
            }
            Request::Sessions(s) => (s, false),
            Request::Close(s) => (s, true),
        };
        if close && selector.is_empty() {
            let e = admin_socket::SelectorError::Unbounded;
            let _ = reply.send(admin_socket::error_answer(&e.to_string()).into());
            return;
        }
        let filter = match selector.parse() {
            Ok(f) => Arc::new(f),
            Err(e) => {
                let _ = reply.send(admin_socket::error_answer(&e.to_string()).into());
                return;
            }
        };
        let engines =
            std::iter::once(&self.serving.engine).chain(self.retiring.iter().map(|r| &r.engine));
        // Three quarters of the connection's own timeout, so that an answer without the
        // workers that did not make it still reaches the client.
        let timeout = self.cfg.limits.admin_timeout * 3 / 4;
        if close {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
            let asked: usize = engines
                .map(|e| {
                    e.ask(|| Command::CloseSessions {
                        filter: Arc::clone(&filter),
                        reply: tx.clone(),
                    })
                })
                .sum();
            drop(tx);
            tokio::spawn(async move {
                let (counts, missing) = gather(rx, asked, timeout).await;
                let closed: usize = counts.into_iter().sum();
                let _ = reply.send(
                    serde_json::json!({
                        "ok": true, "closed": closed, "missing_workers": missing,
                    })
                    .into(),
                );
            });
        } else {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Session>>();
            let asked: usize = engines
                .map(|e| {
                    e.ask(|| Command::Sessions {
                        filter: Arc::clone(&filter),
                        reply: tx.clone(),
                    })
                })
                .sum();
            drop(tx);
            tokio::spawn(async move {
                let (lists, missing) = gather(rx, asked, timeout).await;
                let mut all: Vec<Session> = lists.into_iter().flatten().collect();
                all.sort_by_key(|s| s.id);
                let _ = reply.send(admin_socket::sessions_answer(&all, missing));
            });
        }
    }

    /// The answer to `splicegate status`.
    fn status_answer(&self) -> serde_json::Value {
        let now = Instant::now();
        let t = self.metrics.totals();
        let rates = self.samples.rates(now, &t);
        let (alive, workers) = self.metrics.workers();
        let (fds_open, fds_limit) = status::fds();
        let refusals: serde_json::Map<String, serde_json::Value> = rates
            .refusals
            .iter()
            .map(|(r, n)| ((*r).to_owned(), serde_json::Value::from(*n)))
            .collect();
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        };
        let last_reload = self.last_reload.map(|(at, ok)| {
            serde_json::json!({
                "at": unix(at),
                "result": if ok { "ok" } else { "refused" },
            })
        });
        let round = |x: f64| (x * 1000.0).round() / 1000.0;
        // The window to the microsecond: rates times the window give the counts back.
        let round_us = |x: f64| (x * 1e6).round() / 1e6;
        serde_json::json!({"ok": true, "status": {
            "version": env!("CARGO_PKG_VERSION"),
            "engine": self.serving.choice.kind(),
            "workers": workers,
            "workers_alive": alive,
            "engines_retiring": self.retiring.len(),
            "draining": self.status.draining.load(Relaxed),
            "uptime_s": round(now.saturating_duration_since(self.started).as_secs_f64()),
            "config": self.path.as_ref().map(|p| p.display().to_string()),
            "admin_socket": self.admin_socket.as_ref().map(|s| s.path().display().to_string()),
            "reloads_ok": self.status.reloads_ok.load(Relaxed),
            "reloads_refused": self.status.reloads_failed.load(Relaxed),
            "last_reload": last_reload,
            "tunnels_open": t.tunnels_active,
            "connections_open": t.connections_active,
            "tunnels_total": t.tunnels_established,
            "window_s": round_us(rates.window.as_secs_f64()),
            "tunnels_per_s": round(rates.tunnels_per_s),
            "bytes_up_per_s": round(rates.bytes_up_per_s),
            "bytes_down_per_s": round(rates.bytes_down_per_s),
            "refusals_last_minute": refusals,
            "fds_open": fds_open,
            "fds_limit": fds_limit,
            "dns_cache_entries": self.metrics.dns.cache_entries(),
        }})
    }

    /// Join retired engines whose workers have all exited.
    fn reap(&mut self) {
        // A worker of the serving engine that died is started again after a pause.
        for (worker, result) in self.serving.engine.restart_dead() {
            match result {
                Ok(()) => info!(
                    event_id = events::INFO,
                    worker, "worker restarted after it stopped on an error"
                ),
                Err(e) => tracing::error!(
                    event_id = events::INTERNAL_ERROR,
                    worker,
                    reason = "worker_died",
                    error = %e,
                    "a dead worker could not be restarted; trying again"
                ),
            }
        }
        if self.retiring.is_empty() {
            return;
        }
        let (done, live): (Vec<Retiring>, Vec<Retiring>) = std::mem::take(&mut self.retiring)
            .into_iter()
            .partition(|r| r.engine.finished());
        self.retiring = live;
        for r in done {
            r.engine.join();
            self.metrics.retire(&r.shards);
            info!(
                event_id = events::INFO,
                drained_s = r.since.elapsed().as_secs_f64(),
                engines_retiring = self.retiring.len(),
                "a replaced engine finished its last tunnel"
            );
        }
        self.status
            .engines_retiring
            .store(self.retiring.len() as i64, Relaxed);
        self.notifier.status(&self.status_line());
    }

    /// SIGTERM/SIGINT: stop accepting everywhere, drain every engine within `drain_timeout`.
    async fn shutdown(self, how: &str, int: &mut tokio::signal::unix::Signal) {
        let Control {
            cfg,
            serving,
            retiring,
            status,
            metrics,
            notifier,
            ..
        } = self;
        let drain_timeout = cfg.limits.drain_timeout;
        status.draining.store(true, Relaxed);
        notifier.stopping(&format!(
            "draining open tunnels for up to {}",
            crate::config::format_duration(drain_timeout)
        ));
        let deadline = Instant::now() + drain_timeout;
        info!(
            event_id = events::INFO,
            signal = how,
            drain_timeout_s = drain_timeout.as_secs_f64(),
            engines = 1 + retiring.len(),
            "stopping: listeners closed, draining open tunnels"
        );
        let mut engines: Vec<(Engine, Vec<Arc<Shard>>)> = vec![(serving.engine, serving.shards)];
        engines.extend(retiring.into_iter().map(|r| (r.engine, r.shards)));
        for (e, _) in &engines {
            e.drain(deadline);
        }
        // Workers close what is left at the deadline; give them a moment past it.
        let hard = deadline + Duration::from_secs(2);
        let all_done = |v: &[(Engine, Vec<Arc<Shard>>)]| v.iter().all(|(e, _)| e.finished());
        while !all_done(&engines) && Instant::now() < hard {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = int.recv() => for (e, _) in &engines { e.stop() },
            }
        }
        for (e, shards) in engines {
            if !e.finished() {
                e.stop();
            }
            e.join();
            metrics.retire(&shards);
        }
    }
}

async fn next_change(w: &mut Option<Watcher>) -> std::io::Result<()> {
    match w {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// An engine bound but not started.
struct Prepared {
    choice: Choice,
    workers: usize,
    listeners: engine::Listeners,
}

/// Pick the driver, bind the listeners and start the workers for `cfg`.
fn start_engine(
    cfg: &Config,
    current: &settings::Shared,
    resolver: &Resolver,
) -> Result<Serving, ControlError> {
    launch_engine(prepare_engine(cfg, None, Vec::new())?, current, resolver)
}

/// Pick the driver and bind the listeners for `cfg`. With `old` (the configuration and bound
/// addresses being replaced), a listen entry with port 0 that is also in the old configuration
/// keeps the port it was given, so a reload does not move it; addresses found in `inherited`
/// (the old engine's sockets) reuse those sockets.
fn prepare_engine(
    cfg: &Config,
    old: Option<(&Config, &[SocketAddr])>,
    inherited: Vec<engine::Handover>,
) -> Result<Prepared, ControlError> {
    // The engine's errors are kept as its own text.
    let choice = engine::choose(cfg.engine).map_err(|e| ControlError::Driver(e.to_string()))?;
    let workers = if cfg.workers == 0 {
        engine::sys::online_cpus()
    } else {
        cfg.workers
    };
    let listen = match old {
        Some((old_cfg, old_bound)) => keep_ephemeral_ports(&cfg.listen, &old_cfg.listen, old_bound),
        None => cfg.listen.clone(),
    };
    let (listeners, warnings) = engine::bind_listeners_from(&listen, workers, inherited)
        .map_err(|e| ControlError::Listen(e.to_string()))?;
    for w in warnings {
        warn!(event_id = events::INFO, "{w}");
    }
    Ok(Prepared {
        choice,
        workers,
        listeners,
    })
}

/// Start the workers of a prepared engine.
fn launch_engine(
    p: Prepared,
    current: &settings::Shared,
    resolver: &Resolver,
) -> Result<Serving, ControlError> {
    let bound = p.listeners.bound.clone();
    let shards: Vec<Arc<Shard>> = (0..p.workers).map(|_| Arc::new(Shard::default())).collect();
    let engine = Engine::start(
        &p.choice,
        p.listeners,
        Arc::clone(current),
        resolver.clone(),
        &shards,
    )
    .map_err(|e| ControlError::Workers(e.to_string()))?;
    Ok(Serving {
        engine,
        shards,
        bound,
        choice: p.choice,
        workers: p.workers,
    })
}

/// `new` with each port-0 entry that also appears in `old` replaced by the address it was bound
/// to (`old_bound`, matched by IP in order).
fn keep_ephemeral_ports(
    new: &[SocketAddr],
    old: &[SocketAddr],
    old_bound: &[SocketAddr],
) -> Vec<SocketAddr> {
    let mut used = vec![false; old_bound.len()];
    new.iter()
        .map(|a| {
            if a.port() != 0 || !old.contains(a) {
                return *a;
            }
            let hit = old_bound
                .iter()
                .enumerate()
                .find(|(i, b)| !used[*i] && b.ip() == a.ip() && !old.contains(b));
            match hit {
                Some((i, b)) => {
                    used[i] = true;
                    *b
                }
                None => *a,
            }
        })
        .collect()
}

/// `old` listened on loopback addresses only and `new` listens on at least one other address
/// (a wildcard such as `0.0.0.0` included).
fn widens_listen(old: &[SocketAddr], new: &[SocketAddr]) -> bool {
    let local = |a: &SocketAddr| a.ip().to_canonical().is_loopback();
    old.iter().all(local) && !new.iter().all(local)
}

fn bind_metrics(a: SocketAddr) -> Result<std::net::TcpListener, ControlError> {
    std::net::TcpListener::bind(a)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| ControlError::MetricsListen { addr: a, source: e })
}

/// Serve `/metrics` on `l`. Must be called inside the runtime.
fn spawn_metrics(
    l: std::net::TcpListener,
    metrics: &Arc<Metrics>,
    current: &settings::Shared,
) -> Result<JoinHandle<()>, ControlError> {
    let l = tokio::net::TcpListener::from_std(l).map_err(ControlError::MetricsServe)?;
    Ok(tokio::spawn(http::serve(
        l,
        Arc::clone(metrics),
        Arc::clone(current),
    )))
}

/// Bind and serve `admin_socket`. At the default path a failure is a warning (outside systemd
/// there is no `/run/splicegate`); at a path the configuration chose, it fails the start.
fn open_admin_socket(
    cfg: &Config,
    current: &settings::Shared,
    control: tokio::sync::mpsc::Sender<Asked>,
) -> Result<Option<AdminSocket>, ControlError> {
    let Some(path) = cfg.admin_socket.as_deref() else {
        return Ok(None);
    };
    let served = AdminSocket::bind(path).and_then(|mut s| {
        s.serve(Arc::clone(current), control).map_err(|source| {
            admin_socket::AdminSocketError::Io {
                path: path.to_owned(),
                source,
            }
        })?;
        Ok(s)
    });
    match served {
        Ok(s) => {
            if s.replaced_live {
                warn!(
                    event_id = events::INFO,
                    path = %path.display(),
                    "admin socket: replaced the socket of another running gateway (a hand-over)"
                );
            }
            Ok(Some(s))
        }
        Err(e) if path == std::path::Path::new(DEFAULT_ADMIN_SOCKET) => {
            warn!(
                event_id = events::INFO,
                error = %e,
                "admin socket unavailable at its default path; running without it \
                 (`splicegate sessions` and `status` will not reach this gateway)"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Collect up to `asked` answers from `rx` within `timeout`; the answers and how many
/// workers did not answer.
async fn gather<T>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
    asked: usize,
    timeout: Duration,
) -> (Vec<T>, usize) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut got = Vec::with_capacity(asked);
    while got.len() < asked {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(v)) => got.push(v),
            // Every sender gone (a worker exited without answering) or the time is up.
            Ok(None) | Err(_) => break,
        }
    }
    let missing = asked - got.len();
    (got, missing)
}

fn addr_list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_listen_is_loopback_to_anything_else() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let lo = [a("127.0.0.1:8080"), a("[::1]:8080")];
        assert!(widens_listen(&lo, &[a("0.0.0.0:8080")]));
        assert!(widens_listen(
            &lo,
            &[a("127.0.0.1:8080"), a("192.0.2.1:8080")]
        ));
        assert!(widens_listen(&lo, &[a("[::]:8080")]));
        assert!(!widens_listen(&lo, &[a("127.0.0.2:9000")]));
        assert!(!widens_listen(&lo, &[a("[::ffff:127.0.0.1]:9000")]));
        // Already beyond loopback: not a widening (the change is itemised in event 100 anyway).
        assert!(!widens_listen(&[a("10.0.0.1:8080")], &[a("0.0.0.0:8080")]));
    }

    #[test]
    fn ephemeral_ports_survive_a_reload() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let old = [a("127.0.0.1:0")];
        let bound = [a("127.0.0.1:40001")];
        let new = [a("127.0.0.1:0"), a("127.0.0.1:0"), a("127.0.0.1:9000")];
        assert_eq!(
            keep_ephemeral_ports(&new, &old, &bound),
            vec![a("127.0.0.1:40001"), a("127.0.0.1:0"), a("127.0.0.1:9000")]
        );
        // Not in the old config: a fresh port.
        assert_eq!(
            keep_ephemeral_ports(&[a("[::1]:0")], &old, &bound),
            vec![a("[::1]:0")]
        );
    }
}
