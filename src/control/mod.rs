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

mod activation;
pub mod admin_socket;
pub mod diff;
mod error;
pub mod http;
pub mod notify;
mod overload;
pub mod pidfile;
mod placed;
pub mod status;
pub mod takeover;
pub mod upgrade;
pub mod watch;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::DEFAULT_ADMIN_SOCKET;
use crate::config::{Config, TakeoverSocket};
use crate::engine::conn::session::Session;
use crate::engine::worker::Command;
use crate::engine::{self, Choice, Engine};
use crate::events;
use crate::metrics::{Metrics, Shard, Status};
use crate::resolve::Resolver;
use crate::settings::{self, Settings};
use admin_socket::{AdminSocket, Asked, Request};
use http::Routes;
use notify::Notifier;
use pidfile::PidFile;
use takeover::{Channel, Kind, Message, SocketMeta};
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
    /// `run --takeover PATH`: take the listening sockets of the gateway serving this takeover
    /// socket instead of binding them, then tell it to stop.
    pub takeover: Option<PathBuf>,
    /// This binary's path, for the process an `upgrade` request starts.
    pub exe: Option<PathBuf>,
    /// `--log-format` as given, passed on to that process.
    pub log_format: Option<String>,
}

/// What a takeover brought: the old process's sockets and the connection to confirm on.
struct Received {
    chan: Channel,
    from_pid: u32,
    path: PathBuf,
    pid_file: Option<PathBuf>,
    listen: Vec<engine::Handover>,
    http: Vec<(SocketAddr, OwnedFd)>,
}

/// Why the control loop ended.
enum Stop {
    Signal(&'static str),
    /// A new process confirmed it accepts on our sockets (`ready`).
    Takeover {
        chan: Channel,
        pid: u32,
    },
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
    // First, before any thread starts: this removes the LISTEN_* variables from the environment.
    let activated = activation::take()?;
    activation::check(&activated, &cfg)?;
    for a in &activated {
        info!(
            event_id = events::INFO,
            addr = %a.addr,
            name = %a.name,
            "socket activation: serving on an inherited socket instead of binding it"
        );
    }
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("splicegate-control")
        .build()
        .map_err(ControlError::Runtime)?;
    let received = match &opts.takeover {
        Some(path) => Some(rt.block_on(receive(path, cfg.limits.takeover_timeout))?),
        None => None,
    };
    // Sockets every worker shares (systemd's, or such sockets handed over): kept for the life
    // of the process, so a reload or a failed engine switch can serve them again.
    let mut shared: Vec<(SocketAddr, OwnedFd)> = Vec::new();
    let mut http_stash: Vec<(SocketAddr, OwnedFd)> = Vec::new();
    for a in activated {
        if listed(&cfg, &a.addr) {
            shared.push((a.addr, a.fd));
        } else {
            http_stash.push((a.addr, a.fd));
        }
    }
    // A takeover's sockets: the listen sockets become the new engine's, a shared one (systemd's)
    // is also kept like an activated one, the endpoints' go to the stash.
    let mut received = received;
    let mut inherited = Vec::new();
    let mut from_bound = Vec::new();
    if let Some(r) = received.as_mut() {
        inherited = std::mem::take(&mut r.listen);
        http_stash.append(&mut r.http);
        for h in inherited
            .iter()
            .filter(|h| h.shared && listed(&cfg, &h.addr))
        {
            if let Some(fd) = h.sockets.first() {
                shared.push((h.addr, fd.try_clone().map_err(ControlError::Takeover)?));
            }
        }
        from_bound = inherited.iter().map(|h| h.addr).collect();
    }
    let metrics_listener = match cfg.metrics_listen {
        Some(a) => Some(bind_http(a, &http_stash, HttpKind::Metrics)?),
        None => None,
    };
    let health_listener = match cfg.health_listen {
        Some(a) => Some(bind_http(a, &http_stash, HttpKind::Health)?),
        None => None,
    };
    // Whatever was handed over or activated for an endpoint this configuration has not is
    // closed here.
    drop(http_stash);

    let current = settings::shared(&cfg);
    let (resolver, resolver_warning) =
        Resolver::start(&cfg.resolver, cfg.limits.resolve_timeout, rt.handle());
    if let Some(w) = resolver_warning {
        warn!(
            event_id = events::INTERNAL_ERROR,
            "{w}; names without a static `hosts:` entry will fail to resolve"
        );
    }
    let old = received.as_ref().map(|_| (&cfg, &from_bound[..]));
    let serving = launch_engine(
        prepare_engine(&cfg, old, inherited, &shared)?,
        &current,
        &resolver,
    )?;
    // One overload state: the settings snapshots carry it to the workers, the status to
    // `/metrics` and `/readyz`.
    let status = Arc::new(Status {
        overload: Arc::clone(&current.load().overload),
        ..Status::default()
    });
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
    let metrics_ep = match metrics_listener {
        Some(l) => Some(Endpoint::spawn(l, &metrics, &current, Routes::All)?),
        None => None,
    };
    let health_ep = match health_listener {
        Some(l) => Some(Endpoint::spawn(l, &metrics, &current, Routes::Probe)?),
        None => None,
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
    // A takeover: our workers accept on the old process's sockets; tell it to stop.
    let took_over = received.map(|r| {
        rt.block_on(confirm(&r, &serving.engine, cfg.limits.takeover_timeout));
        (r.from_pid, r.path, r.pid_file)
    });
    let takeover_listener = {
        let _guard = rt.enter();
        let replacing = took_over.as_ref().map(|(_, p, _)| p.as_path());
        match bind_takeover(&cfg.takeover_socket, replacing) {
            Ok(l) => l,
            // The old process has stopped accepting: this one serves whatever happens.
            Err(e) if took_over.is_some() => {
                warn!(
                    event_id = events::INTERNAL_ERROR,
                    error = %e,
                    "takeover socket not served: this process cannot be taken over in turn"
                );
                None
            }
            Err(e) => {
                serving.engine.stop();
                serving.engine.join();
                return Err(e);
            }
        }
    };
    let pid_path = opts
        .pid_file
        .clone()
        .or_else(|| took_over.as_ref().and_then(|(_, _, p)| p.clone()));
    let pid_file = match &pid_path {
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
        metrics_listen = %show_addr(metrics_ep.as_ref().map(|e| e.addr)),
        health_listen = %show_addr(health_ep.as_ref().map(|e| e.addr)),
        socket_activated = %addr_list(&shared.iter().map(|(a, _)| *a).collect::<Vec<_>>()),
        takeover_from = took_over.as_ref().map_or(0, |t| t.0),
        takeover_socket = %takeover_listener.as_ref().map_or_else(|| "disabled".into(), |l| l.path().display().to_string()),
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
        metrics_ep,
        health_ep,
        shared,
        notifier,
        handing_over: false,
        admin_socket,
        admin_tx,
        samples: status::Samples::default(),
        started: Instant::now(),
        last_reload: None,
        overload: overload::Sampler::default(),
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

    let about = Arc::new(About {
        config: opts.config_path.clone(),
        pid_file: pid_path.clone(),
        exe: opts.exe.clone(),
        log_format: opts.log_format.clone(),
        takeover: takeover_listener.as_ref().map(|l| l.path().to_path_buf()),
    });
    let (offer_tx, mut offer_rx) = tokio::sync::mpsc::unbounded_channel::<Channel>();
    let (done_tx, mut done_rx) =
        tokio::sync::mpsc::unbounded_channel::<(Channel, Result<u32, takeover::TakeoverError>)>();
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
        let mut overload_every = control.cfg.limits.overload_sample_interval;
        let mut overload_tick = tokio::time::interval(overload_every);
        overload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let how = loop {
            tokio::select! {
                _ = term.recv() => break Stop::Signal("SIGTERM"),
                _ = int.recv() => break Stop::Signal("SIGINT"),
                r = accept_takeover(takeover_listener.as_ref()) => match r {
                    Ok(chan) => {
                        let limit = control.cfg.limits.takeover_timeout;
                        tokio::spawn(first_request(chan, limit, Arc::clone(&about), offer_tx.clone()));
                    }
                    Err(e) => {
                        warn!(event_id = events::INTERNAL_ERROR, error = %e, "takeover socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(chan) = offer_rx.recv() => control.offer(chan, &done_tx),
                Some((chan, result)) = done_rx.recv() => match result {
                    Ok(pid) => break Stop::Takeover { chan, pid },
                    Err(e) => {
                        control.handing_over = false;
                        error!(
                            event_id = events::INTERNAL_ERROR,
                            reason = "takeover_failed",
                            error = %e,
                            "takeover failed before the new process confirmed; this process keeps serving"
                        );
                        drop(chan);
                    }
                },
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
                _ = overload_tick.tick() => control.sample_overload(),
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
            // A reload may change the sampling interval.
            if control.cfg.limits.overload_sample_interval != overload_every {
                overload_every = control.cfg.limits.overload_sample_interval;
                overload_tick = tokio::time::interval(overload_every);
                overload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
        };
        // The takeover socket goes first: nobody may take over from a process that stops.
        drop(takeover_listener);
        control.shutdown(how, &mut term, &mut int).await;
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
    /// `metrics_listen`, served.
    metrics_ep: Option<Endpoint>,
    /// `health_listen`, served.
    health_ep: Option<Endpoint>,
    /// Listening sockets without `SO_REUSEPORT` that every worker shares (socket activation),
    /// by address: kept for the life of the process. A reload may not drop their addresses.
    shared: Vec<(SocketAddr, OwnedFd)>,
    notifier: Notifier,
    /// A takeover is under way (sockets sent, waiting for the new process's `ready`).
    handing_over: bool,
    /// The admin socket, served on this runtime; its file goes when this drops.
    admin_socket: Option<AdminSocket>,
    /// Where the admin socket's requests go (for a socket a reload moves).
    admin_tx: tokio::sync::mpsc::Sender<Asked>,
    /// Counter samples for the rates of `splicegate status`.
    samples: status::Samples,
    started: Instant,
    /// When the last reload was tried, and whether it applied.
    last_reload: Option<(std::time::SystemTime, bool)>,
    /// Samples the budgets and publishes the overload state.
    overload: overload::Sampler,
}

impl Control {
    /// Sample the connection and memory budgets and publish the overload state.
    fn sample_overload(&mut self) {
        let totals = self.metrics.totals();
        self.overload
            .sample(&totals, &self.cfg.limits, &self.status.overload);
    }

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
        // The socket unit owns an activated address: dropping it would leave clients waiting
        // in a queue nobody serves.
        if let Some((addr, _)) = self.shared.iter().find(|(a, _)| !listed(&cfg, a)) {
            return Err(ControlError::SharedRemoved { addr: *addr });
        }
        let new_metrics = match (changes.metrics_listen, cfg.metrics_listen) {
            (true, Some(a)) => Some(Some(bind_http(a, &[], HttpKind::Metrics)?)),
            (true, None) => Some(None),
            (false, _) => None,
        };
        let new_health = match (changes.health_listen, cfg.health_listen) {
            (true, Some(a)) => Some(Some(bind_http(a, &[], HttpKind::Health)?)),
            (true, None) => Some(None),
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
            Some(prepare_engine(&cfg, Some(old), inherited, &self.shared)?)
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
        for (listener, routes) in [(new_metrics, Routes::All), (new_health, Routes::Probe)] {
            let Some(listener) = listener else { continue };
            let slot = match routes {
                Routes::All => &mut self.metrics_ep,
                Routes::Probe => &mut self.health_ep,
            };
            // The old endpoint stops (its socket closes) before the new one serves.
            *slot = None;
            *slot = match listener.map(|l| Endpoint::spawn(l, &self.metrics, &self.current, routes))
            {
                Some(Ok(ep)) => Some(ep),
                Some(Err(e)) => {
                    error!(event_id = events::INTERNAL_ERROR, error = %e, "cannot serve the HTTP endpoint");
                    None
                }
                None => None,
            };
        }
        self.status.reloads_ok.fetch_add(1, Relaxed);
        info!(
            event_id = events::INFO,
            path = %path.display(),
            trigger = trigger.as_str(),
            changes = %changes.summary(),
            listen = %addr_list(&self.serving.bound),
            metrics_listen = %show_addr(self.metrics_ep.as_ref().map(|e| e.addr)),
            health_listen = %show_addr(self.health_ep.as_ref().map(|e| e.addr)),
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
                let again = prepare_engine(&self.cfg, Some(old), Vec::new(), &self.shared)
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

    /// Offer the listening sockets to the process on `chan` (a `takeover` request); the
    /// outcome arrives on `done` once it confirmed (`ready`), failed or timed out.
    fn offer(
        &mut self,
        chan: Channel,
        done: &tokio::sync::mpsc::UnboundedSender<(Channel, Result<u32, takeover::TakeoverError>)>,
    ) {
        if self.handing_over {
            tokio::spawn(async move {
                let _ = chan.send(&Message::Busy, &[]).await;
            });
            return;
        }
        let offer = match self.offer_sockets() {
            Ok(o) => o,
            Err(e) => {
                error!(
                    event_id = events::INTERNAL_ERROR,
                    reason = "takeover_failed",
                    error = %e,
                    "takeover: cannot duplicate the listening sockets; this process keeps serving"
                );
                return;
            }
        };
        self.handing_over = true;
        info!(
            event_id = events::INFO,
            sockets = offer.sockets.len(),
            "takeover: a new process asked for the listening sockets; sending them"
        );
        let limit = self.cfg.limits.takeover_timeout;
        let done = done.clone();
        tokio::spawn(async move {
            let result = async {
                offer.send(&chan).await?;
                drop(offer);
                match chan.recv(limit).await?.0 {
                    Message::Ready { pid } => Ok(pid),
                    other => Err(takeover::TakeoverError::Unexpected(format!("{other:?}"))),
                }
            }
            .await;
            let _ = done.send((chan, result));
        });
    }

    /// Duplicates of every listening socket (the engine's and the HTTP endpoints'), described.
    fn offer_sockets(&self) -> std::io::Result<takeover::Offer> {
        let mut sockets = Vec::new();
        for h in self.serving.engine.listener_copies()? {
            for fd in h.sockets {
                let meta = SocketMeta {
                    addr: h.addr,
                    kind: Kind::Listen,
                    shared: h.shared,
                };
                sockets.push((meta, fd));
            }
        }
        for (ep, kind) in [
            (&self.metrics_ep, Kind::Metrics),
            (&self.health_ep, Kind::Health),
        ] {
            if let Some(ep) = ep {
                let meta = SocketMeta {
                    addr: ep.addr,
                    kind,
                    shared: false,
                };
                sockets.push((meta, ep.fd.try_clone()?));
            }
        }
        Ok(takeover::Offer { sockets })
    }

    /// SIGTERM/SIGINT: `/readyz` turns 503 at once; after `limits.drain_grace` (listeners still
    /// accepting meanwhile) stop accepting everywhere and drain every engine within
    /// `drain_timeout`. After a takeover: stop accepting at once, tell the new process and
    /// systemd, then drain the same way.
    async fn shutdown(
        self,
        how: Stop,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) {
        let Control {
            cfg,
            serving,
            retiring,
            status,
            metrics,
            notifier,
            metrics_ep,
            health_ep,
            ..
        } = self;
        let drain_timeout = cfg.limits.drain_timeout;
        status.draining.store(true, Relaxed);
        let (signal, handed_to) = match &how {
            Stop::Signal(s) => (*s, None),
            Stop::Takeover { pid, .. } => ("takeover", Some(*pid)),
        };
        let grace = if handed_to.is_some() {
            Duration::ZERO
        } else {
            cfg.limits.drain_grace
        };
        // STOPPING=1 at the signal, before the grace: the service manager knows at once that
        // this instance is going away. Never after a takeover: the service goes on in the new
        // process, which becomes the main one (MAINPID=, below) without a stop.
        if handed_to.is_none() {
            notifier.stopping(&format!(
                "stopping: accepting for {} more (drain_grace), then draining open tunnels for up to {}",
                crate::config::format_duration(grace),
                crate::config::format_duration(drain_timeout)
            ));
        }
        if !grace.is_zero() {
            info!(
                event_id = events::INFO,
                signal,
                drain_grace_s = grace.as_secs_f64(),
                "stopping: /readyz answers 503; listeners keep accepting for limits.drain_grace"
            );
            // A second SIGTERM or SIGINT ends the grace early.
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        let deadline = Instant::now() + drain_timeout;
        info!(
            event_id = events::INFO,
            signal,
            drain_timeout_s = drain_timeout.as_secs_f64(),
            engines = 1 + retiring.len(),
            "stopping: listeners closed, draining open tunnels"
        );
        let mut engines: Vec<(Engine, Vec<Arc<Shard>>)> = vec![(serving.engine, serving.shards)];
        engines.extend(retiring.into_iter().map(|r| (r.engine, r.shards)));
        for (e, _) in &engines {
            e.drain(deadline);
        }
        if let Stop::Takeover { chan, pid } = how {
            // Our copies of the endpoints' sockets close; the new process serves them.
            drop(metrics_ep);
            drop(health_ep);
            // Let the workers act on the drain before the new process re-checks the queues.
            tokio::time::sleep(RETIRE_GRACE).await;
            notifier.main_pid(pid, &format!("handed over to pid {pid}; draining"));
            if let Err(e) = chan.send(&Message::Done, &[]).await {
                warn!(event_id = events::INFO, error = %e, "takeover: could not confirm to the new process");
            }
            info!(
                event_id = events::INFO,
                new_pid = pid,
                "takeover complete: the new process accepts on the listening sockets; draining open tunnels"
            );
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

/// Pick the driver and bind the listeners for `cfg`. With `old` (the configuration and bound
/// addresses being replaced), a listen entry with port 0 that is also in the old configuration
/// keeps the port it was given, so a reload does not move it; addresses found in `inherited`
/// (the old engine's sockets) reuse those sockets, and so do addresses of `shared` (sockets
/// every worker accepts from, such as systemd's) that `inherited` does not carry.
fn prepare_engine(
    cfg: &Config,
    old: Option<(&Config, &[SocketAddr])>,
    mut inherited: Vec<engine::Handover>,
    shared: &[(SocketAddr, OwnedFd)],
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
    for (addr, fd) in shared {
        if listen.contains(addr) && !inherited.iter().any(|h| h.addr == *addr) {
            let fd = fd
                .try_clone()
                .map_err(|e| ControlError::Listen(format!("cannot listen on {addr}: {e}")))?;
            inherited.push(engine::Handover::shared(*addr, fd));
        }
    }
    let (mut listeners, warnings) = engine::bind_listeners_from(&listen, workers, inherited)
        .map_err(|e| ControlError::Listen(e.to_string()))?;
    listeners.proxy = listeners
        .bound
        .iter()
        .zip(&listeners.origin)
        .filter_map(|(addr, &i)| {
            let sources = cfg.listen_proxy.get(i)?.clone()?;
            Some((*addr, Arc::new(sources)))
        })
        .collect();
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

/// Which HTTP endpoint a listener is for (in errors).
#[derive(Debug, Clone, Copy)]
pub enum HttpKind {
    Metrics,
    Health,
}

impl std::fmt::Display for HttpKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HttpKind::Metrics => "metrics_listen",
            HttpKind::Health => "health_listen",
        })
    }
}

/// The listener for `a`: a socket from `stash` (socket activation, a takeover) with that
/// address, or with the same IP when `a` asks for port 0; otherwise a new one.
fn bind_http(
    a: SocketAddr,
    stash: &[(SocketAddr, OwnedFd)],
    kind: HttpKind,
) -> Result<std::net::TcpListener, ControlError> {
    let err = |source| ControlError::HttpListen {
        kind,
        addr: a,
        source,
    };
    let found = stash
        .iter()
        .find(|(s, _)| *s == a || (a.port() == 0 && s.ip() == a.ip()));
    let l = match found {
        Some((_, fd)) => std::net::TcpListener::from(fd.try_clone().map_err(err)?),
        None => std::net::TcpListener::bind(a).map_err(err)?,
    };
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// A served HTTP endpoint: its task (aborted on drop, which closes the socket) and a duplicate
/// of its socket for a takeover.
struct Endpoint {
    task: JoinHandle<()>,
    addr: SocketAddr,
    fd: OwnedFd,
}

impl Endpoint {
    /// Serve `routes` on `l`. Must be called inside the runtime.
    fn spawn(
        l: std::net::TcpListener,
        metrics: &Arc<Metrics>,
        current: &settings::Shared,
        routes: Routes,
    ) -> Result<Endpoint, ControlError> {
        let addr = l.local_addr().map_err(ControlError::MetricsServe)?;
        let fd = OwnedFd::from(l.try_clone().map_err(ControlError::MetricsServe)?);
        let l = tokio::net::TcpListener::from_std(l).map_err(ControlError::MetricsServe)?;
        let task = tokio::spawn(http::serve(
            l,
            Arc::clone(metrics),
            Arc::clone(current),
            routes,
        ));
        Ok(Endpoint { task, addr, fd })
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn show_addr(a: Option<SocketAddr>) -> String {
    a.map_or_else(|| "disabled".to_owned(), |a| a.to_string())
}

/// What `info` answers: who serves this takeover socket.
struct About {
    config: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    /// This binary's path as it was started (after a package upgrade, the new binary).
    exe: Option<PathBuf>,
    log_format: Option<String>,
    /// Our takeover socket.
    takeover: Option<PathBuf>,
}

impl About {
    /// `upgrade`: start `<binary> run --takeover <our socket>` with our configuration, pid
    /// file and log format, as our child (it inherits our environment and stderr). A thread
    /// reaps it should it exit while we still run.
    fn spawn_successor(&self, binary: Option<PathBuf>) -> std::io::Result<u32> {
        let exe = binary
            .or_else(|| self.exe.clone())
            .ok_or_else(|| std::io::Error::other("this process's binary path is unknown"))?;
        let takeover = self
            .takeover
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no takeover socket"))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("run").arg("--takeover").arg(takeover);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        if let Some(p) = &self.pid_file {
            cmd.arg("--pid-file").arg(p);
        }
        if let Some(f) = &self.log_format {
            cmd.arg("--log-format").arg(f);
        }
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        let mut child = cmd.spawn()?;
        let pid = child.id();
        std::thread::Builder::new()
            .name("splicegate-successor".into())
            .spawn(move || {
                let _ = child.wait();
            })?;
        info!(
            event_id = events::INFO,
            new_pid = pid,
            binary = %exe.display(),
            "upgrade: started a new process to take over"
        );
        Ok(pid)
    }
}

/// `run --takeover PATH`: ask the gateway at `path` for its sockets.
async fn receive(path: &Path, limit: Duration) -> Result<Received, ControlError> {
    let fail = |e| ControlError::TakeoverFrom {
        path: path.to_path_buf(),
        source: e,
    };
    let (from_pid, pid_file) = match takeover::info(path, limit).await.map_err(fail)? {
        Message::About { pid, pid_file, .. } => (pid, pid_file),
        other => {
            return Err(fail(takeover::TakeoverError::Unexpected(format!(
                "{other:?}"
            ))))
        }
    };
    let chan = Channel::connect(path).map_err(fail)?;
    let sockets = takeover::receive(&chan, limit).await.map_err(fail)?;
    let mut listen: Vec<engine::Handover> = Vec::new();
    let mut http = Vec::new();
    for (meta, fd) in sockets {
        match meta.kind {
            Kind::Listen => match listen.iter_mut().find(|h| h.addr == meta.addr) {
                Some(h) if !h.shared => {
                    h.owners.push(h.sockets.len());
                    h.sockets.push(fd);
                }
                // A second socket for a shared address adds nothing.
                Some(_) => {}
                None if meta.shared => listen.push(engine::Handover::shared(meta.addr, fd)),
                None => listen.push(engine::Handover {
                    addr: meta.addr,
                    sockets: vec![fd],
                    owners: vec![0],
                    shared: false,
                }),
            },
            Kind::Metrics | Kind::Health => http.push((meta.addr, fd)),
        }
    }
    info!(
        event_id = events::INFO,
        from_pid,
        path = %path.display(),
        listen = %addr_list(&listen.iter().map(|h| h.addr).collect::<Vec<_>>()),
        sockets = listen.iter().map(|h| h.sockets.len()).sum::<usize>(),
        "takeover: received the listening sockets; starting the workers on them"
    );
    Ok(Received {
        chan,
        from_pid,
        path: path.to_path_buf(),
        pid_file,
        listen,
        http,
    })
}

/// Test builds only: `SPLICEGATE_TEST_TAKEOVER_PAUSE=<ms>` makes a new process wait that long
/// after its workers started on the received sockets, so a test can kill it before it confirms.
#[cfg(debug_assertions)]
fn test_pause_before_ready() {
    if let Some(ms) = std::env::var("SPLICEGATE_TEST_TAKEOVER_PAUSE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

#[cfg(not(debug_assertions))]
fn test_pause_before_ready() {}

/// Our workers accept on the received sockets: tell the old process (`ready`), wait for it to
/// stop accepting (`done`), then have our workers look at every queue once.
async fn confirm(r: &Received, engine: &Engine, limit: Duration) {
    info!(
        event_id = events::INFO,
        from_pid = r.from_pid,
        "takeover: the workers accept on the received sockets; confirming to the old process"
    );
    test_pause_before_ready();
    let result = async {
        r.chan
            .send(
                &Message::Ready {
                    pid: std::process::id(),
                },
                &[],
            )
            .await?;
        match r.chan.recv(limit).await?.0 {
            Message::Done => Ok(()),
            other => Err(takeover::TakeoverError::Unexpected(format!("{other:?}"))),
        }
    }
    .await;
    match result {
        Ok(()) => info!(
            event_id = events::INFO,
            from_pid = r.from_pid,
            "takeover: the old process stopped accepting and drains its tunnels"
        ),
        Err(e) => warn!(
            event_id = events::INFO,
            from_pid = r.from_pid,
            error = %e,
            "takeover: the old process did not confirm; serving on the sockets anyway"
        ),
    }
    engine.poke();
}

/// Bind `takeover_socket`. The default path is used when it can be (a warning otherwise); a
/// configured one must work. `replacing`: the path this process took over from, replaced.
fn bind_takeover(
    setting: &TakeoverSocket,
    replacing: Option<&Path>,
) -> Result<Option<takeover::Listener>, ControlError> {
    let Some(path) = setting.path() else {
        return Ok(None);
    };
    let bound = if replacing == Some(path.as_path()) {
        takeover::Listener::bind_replacing(&path)
    } else {
        takeover::Listener::bind(&path)
    };
    match (bound, setting) {
        (Ok(l), _) => Ok(Some(l)),
        (Err(e), TakeoverSocket::Default) => {
            warn!(
                event_id = events::INFO,
                error = %e,
                "takeover is off for this process (set `takeover_socket` to choose a path, or null)"
            );
            Ok(None)
        }
        (Err(e), _) => Err(ControlError::TakeoverSocket(e)),
    }
}

async fn accept_takeover(l: Option<&takeover::Listener>) -> std::io::Result<Channel> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Read a takeover socket client's request: `info` is answered here, `takeover` goes to the
/// control loop.
async fn first_request(
    chan: Channel,
    limit: Duration,
    about: Arc<About>,
    offers: tokio::sync::mpsc::UnboundedSender<Channel>,
) {
    match chan.recv(limit).await {
        Ok((Message::Info, _)) => {
            let msg = Message::About {
                pid: std::process::id(),
                config: about.config.clone(),
                pid_file: about.pid_file.clone(),
            };
            let _ = chan.send(&msg, &[]).await;
        }
        Ok((Message::Upgrade { binary }, _)) => {
            let msg = match about.spawn_successor(binary) {
                Ok(pid) => Message::Spawned { pid },
                Err(e) => {
                    error!(
                        event_id = events::INTERNAL_ERROR,
                        reason = "takeover_failed",
                        error = %e,
                        "upgrade: cannot start the new process; this process keeps serving"
                    );
                    Message::Failed {
                        error: e.to_string(),
                    }
                }
            };
            let _ = chan.send(&msg, &[]).await;
        }
        Ok((Message::Takeover { pid }, _)) => {
            info!(
                event_id = events::INFO,
                new_pid = pid,
                "takeover: requested"
            );
            let _ = offers.send(chan);
        }
        Ok((other, _)) => warn!(
            event_id = events::INFO,
            message = ?other,
            "takeover socket: unexpected request"
        ),
        Err(e) => tracing::debug!(error = %e, "takeover socket: client went away"),
    }
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

/// `a` is one of `cfg`'s `listen` addresses. Inherited and handed-over sockets are matched to
/// the configuration by local address only, so a listen entry that grows fields (PROXY
/// protocol, ...) keeps finding its socket.
fn listed(cfg: &Config, a: &SocketAddr) -> bool {
    cfg.listen.contains(a)
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
