//! The control plane, off the data path: start-up, signals, drain, reload and the HTTP endpoint.
//!
//! [`run`] binds everything before it announces event 101, so a bad address or a port in use
//! fails the start with a non-zero exit instead of a half-running service. It then runs a small
//! tokio runtime on the main thread for signals, the resolver and `/metrics`; workers never touch
//! that runtime.

pub mod http;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::engine::{self, Engine};
use crate::events;
use crate::metrics::{Metrics, Shard, Status};
use crate::resolve::Resolver;
use crate::settings::{self, Settings};

/// fds kept back from the tunnel estimate for listeners, rings, the resolver and logging.
const FD_RESERVE: u64 = 128;

/// Serve `cfg` until SIGTERM/SIGINT and a drain. `path` is where the config came from (`None`
/// for the embedded default), re-read on SIGHUP.
pub fn run(cfg: Config, path: Option<PathBuf>) -> Result<(), String> {
    engine::sys::ignore_sigpipe();
    match engine::sys::raise_nofile_limit() {
        Ok(n) => info!(
            event_id = events::INFO,
            nofile = n,
            idle_tunnels = n.saturating_sub(FD_RESERVE) / 2,
            "file descriptor limit raised to the hard limit: each idle tunnel holds 2 fds, an active one up to 6"
        ),
        Err(e) => warn!(event_id = events::INFO, error = %e, "cannot raise RLIMIT_NOFILE"),
    }
    let choice = engine::choose(cfg.engine)?;
    let workers = if cfg.workers == 0 {
        engine::sys::online_cpus()
    } else {
        cfg.workers
    };
    let (listeners, warnings) =
        engine::bind_listeners(&cfg.listen, workers).map_err(|e| e.to_string())?;
    for w in warnings {
        warn!(event_id = events::INFO, "{w}");
    }
    let bound = listeners.bound.clone();
    let metrics_listener = match cfg.metrics_listen {
        Some(a) => Some(
            std::net::TcpListener::bind(a)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| format!("cannot listen on metrics_listen {a}: {e}"))?,
        ),
        None => None,
    };
    let metrics_addr = match &metrics_listener {
        Some(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        None => "disabled".to_string(),
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("splicegate-control")
        .build()
        .map_err(|e| format!("cannot start the control runtime: {e}"))?;

    let shards: Vec<Arc<Shard>> = (0..workers).map(|_| Arc::new(Shard::default())).collect();
    let status = Arc::new(Status::default());
    let metrics = Arc::new(Metrics {
        shards: shards.clone(),
        status: Arc::clone(&status),
        engine: choice.kind(),
    });
    let current = settings::shared(&cfg);
    let (resolver, resolver_warning) =
        Resolver::start(&cfg.resolver, cfg.limits.resolve_timeout, rt.handle());
    if let Some(w) = resolver_warning {
        warn!(
            event_id = events::INTERNAL_ERROR,
            "{w}; names without a static `hosts:` entry will fail to resolve"
        );
    }
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
        _ => return Err("cannot install signal handlers".into()),
    };
    if let Some(l) = metrics_listener {
        let l = tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())?;
        tokio::spawn(http::serve(l, Arc::clone(&metrics)));
    }
    drop(guard);
    let engine = Engine::start(&choice, listeners, Arc::clone(&current), resolver, &shards)
        .map_err(|e| e.to_string())?;
    status.listening.store(true, Relaxed);

    let listen_list = bound
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    info!(
        event_id = events::STARTED,
        listen = %listen_list,
        metrics_listen = %metrics_addr,
        engine = choice.kind(),
        engine_reason = %choice.why,
        workers = workers,
        data_path = cfg.data_path.as_str(),
        version = env!("CARGO_PKG_VERSION"),
        "splicegate started"
    );

    let drain_timeout = cfg.limits.drain_timeout;
    let result = rt.block_on(async move {
        let how = loop {
            tokio::select! {
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
                _ = hup.recv() => reload(path.as_deref(), &current),
            }
        };
        status.draining.store(true, Relaxed);
        let deadline = Instant::now() + drain_timeout;
        info!(
            event_id = events::INFO,
            signal = how,
            drain_timeout_s = drain_timeout.as_secs_f64(),
            "stopping: listeners closed, draining open tunnels"
        );
        engine.drain(deadline);
        // Workers close what is left at the deadline; give them a moment past it.
        let hard = deadline + Duration::from_secs(2);
        while !engine.finished() && Instant::now() < hard {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = int.recv() => engine.stop(),
            }
        }
        if !engine.finished() {
            engine.stop();
        }
        engine.join();
        Ok::<(), String>(())
    });
    info!(event_id = events::STOPPED, "splicegate stopped");
    result
}

/// SIGHUP: re-read the file and swap the policy for new connections. Open tunnels are untouched;
/// a file that does not validate is refused and the old policy keeps serving.
fn reload(path: Option<&std::path::Path>, current: &ArcSwap<Settings>) {
    let Some(path) = path else {
        info!(
            event_id = events::INFO,
            "SIGHUP: running on the embedded default config, nothing to reload"
        );
        return;
    };
    match Config::from_file(path) {
        Ok(cfg) => {
            current.store(Arc::new(Settings::new(&cfg)));
            info!(
                event_id = events::INFO,
                path = %path.display(),
                "configuration reloaded: the new policy applies to new connections"
            );
        }
        Err(e) => error!(
            event_id = events::BAD_CONFIG,
            path = %path.display(),
            error = %e,
            "configuration reload refused; the previous configuration stays in force"
        ),
    }
}
