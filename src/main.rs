//! The `splicegate` command: `run`, `upgrade`, `check-config`, `default-config`, and the admin
//! commands (`config`, `allowed-host`, `allowed-client-cert`, `relay-proxy`, `init`, and
//! `sessions`, `status` through the running gateway's admin socket; see
//! [`splicegate::admin`]).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use splicegate::config::Config;
use splicegate::logwriter::{self, LogGuard, LogQueue, Sink};
use splicegate::{admin, control, events};

#[derive(Parser)]
#[command(name = "splicegate", version, about = "Zero-copy HTTP CONNECT gateway")]
struct Cli {
    /// Log format; journald is chosen automatically when running under systemd.
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    /// The configuration file, for every subcommand, before or after its own arguments
    /// (`run` without it serves the embedded default; the admin commands default to
    /// /etc/splicegate/splicegate.yaml).
    #[arg(long, global = true, env = "SPLICEGATE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve. Without --config, serves the embedded default configuration.
    Run {
        /// Write the process id to this file (for `splicegate config set` and friends to signal
        /// a gateway that systemd does not manage); removed at exit.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Do not watch the configuration file for changes (SIGHUP still reloads).
        #[arg(long)]
        no_watch: bool,
        /// Take the listening sockets over from the gateway serving this takeover socket
        /// instead of binding them; it stops accepting once this process accepts.
        #[arg(long, value_name = "PATH")]
        takeover: Option<PathBuf>,
    },
    /// Replace the running gateway by a new process of its binary (after a package upgrade)
    /// through a takeover: no connection is refused. Waits until the new process serves.
    Upgrade {
        /// The running gateway's takeover socket (default: `takeover_socket` of --config, else
        /// /run/splicegate/takeover.sock).
        #[arg(long)]
        takeover_socket: Option<PathBuf>,
        /// The binary the running gateway starts (default: the path it was started from,
        /// which holds the new binary after a package upgrade).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Seconds to wait for the new process to take over.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Validate a configuration file (PATH, else --config) and print the effective policy.
    CheckConfig { path: Option<PathBuf> },
    /// Print the embedded default configuration.
    DefaultConfig,
    #[command(flatten)]
    Admin(Box<admin::AdminCommand>),
    /// Manage the users file for client proxy authentication (`client_auth.users_file`).
    User {
        #[command(subcommand)]
        cmd: admin::users::UserCommand,
        /// The users file to edit.
        #[arg(long, global = true, default_value = admin::users::DEFAULT_USERS_FILE)]
        users_file: PathBuf,
        /// Pid file of a running gateway to signal after an edit.
        #[arg(long, global = true, default_value = admin::DEFAULT_PID_FILE)]
        pid_file: PathBuf,
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Write the man pages and shell completions into DIR (run by the package build).
    #[command(hide = true)]
    Generate { dir: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
    Journald,
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
            LogFormat::Journald => "journald",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Flushes the queued log lines when `main` returns (the last events come after SIGTERM).
    let _log = match init_logging(cli.log_format) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("splicegate: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Run {
            pid_file,
            no_watch,
            takeover,
        } => {
            let config = cli.config;
            let cfg = match &config {
                Some(p) => Config::load(p).map(|(c, text)| (c, Some(text.into_bytes()))),
                None => Ok((Config::embedded_default(), None)),
            };
            let (cfg, config_source) = match cfg {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(event_id = events::BAD_CONFIG, "invalid configuration: {e}");
                    eprintln!("splicegate: invalid configuration:\n{e}");
                    return ExitCode::from(2);
                }
            };
            let opts = control::RunOptions {
                config_path: config,
                config_source,
                pid_file,
                watch: !no_watch,
                takeover,
                exe: std::env::current_exe().ok(),
                log_format: cli.log_format.map(|f| f.as_str().to_owned()),
            };
            match control::run(cfg, opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.is_config_problem() => {
                    tracing::error!(event_id = events::BAD_CONFIG, "cannot serve: {e}");
                    eprintln!("splicegate: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    tracing::error!(event_id = events::INTERNAL_ERROR, "cannot serve: {e}");
                    eprintln!("splicegate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { path } => {
            let Some(path) = path.or(cli.config) else {
                eprintln!(
                    "splicegate: check-config needs a file: check-config PATH or --config PATH"
                );
                return ExitCode::from(admin::EXIT_USAGE);
            };
            check_config(&path)
        }
        Command::Upgrade {
            takeover_socket,
            binary,
            timeout,
        } => {
            // The socket given, else the one the configuration names, else the default.
            let takeover_socket = match (takeover_socket, &cli.config) {
                (Some(p), _) => p,
                (None, Some(path)) => match Config::from_file(path) {
                    Ok(cfg) => match cfg.takeover_socket.path() {
                        Some(p) => p,
                        None => {
                            eprintln!(
                                "splicegate upgrade: {} sets takeover_socket: null",
                                path.display()
                            );
                            return ExitCode::from(2);
                        }
                    },
                    Err(e) => {
                        eprintln!("{}: invalid configuration:\n{e}", path.display());
                        return ExitCode::from(2);
                    }
                },
                (None, None) => PathBuf::from(splicegate::config::DEFAULT_TAKEOVER_SOCKET),
            };
            let opts = control::upgrade::UpgradeOptions {
                takeover_socket,
                binary,
                timeout: std::time::Duration::from_secs(timeout),
            };
            match control::upgrade::upgrade(&opts) {
                Ok(u) => {
                    println!("splicegate: pid {} took over from pid {}", u.new, u.old);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("splicegate upgrade: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::DefaultConfig => {
            print!("{}", splicegate::config::DEFAULT_YAML);
            ExitCode::SUCCESS
        }
        Command::Admin(mut cmd) => {
            if let Some(c) = cli.config {
                cmd.common_mut().config = c;
            }
            ExitCode::from(admin::run(*cmd))
        }
        Command::User {
            cmd,
            users_file,
            pid_file,
            json,
        } => ExitCode::from(admin::users::run(cmd, &users_file, &pid_file, json)),
        Command::Generate { dir } => match splicegate::manual::write(Cli::command(), &dir) {
            Ok(files) => {
                let mut out = std::io::stdout().lock();
                for f in files {
                    let _ = writeln!(out, "{}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("splicegate: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(path: &std::path::Path) -> ExitCode {
    match Config::from_file(path) {
        Ok(cfg) => {
            println!("{}: configuration is valid\n", path.display());
            println!("{}", cfg.summary());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: invalid configuration:\n{e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// Events are formatted on the thread that logs them and written by the log writer thread
/// (`splicegate::logwriter`): no worker waits on stderr or journald.
fn init_logging(format: Option<LogFormat>) -> Result<LogGuard, logwriter::LogWriterError> {
    let filter =
        EnvFilter::try_from_env("SPLICEGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let format = format.unwrap_or(if std::env::var_os("JOURNAL_STREAM").is_some() {
        LogFormat::Journald
    } else {
        LogFormat::Text
    });
    let lines = logwriter::queue_lines_from_env()?;
    let (journal, journal_err) = match format {
        LogFormat::Journald => {
            match logwriter::journald::Socket::open(logwriter::journald::JOURNALD_PATH) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(e)),
            }
        }
        _ => (None, None),
    };
    let journald = journal.is_some();
    let (queue, guard): (LogQueue, LogGuard) =
        logwriter::start(journal.map_or(Sink::Stderr, Sink::Journald), lines)?;
    match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(queue)
            .init(),
        LogFormat::Journald if journald => {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            // No field prefix: the event ID is the journal field EVENT_ID
            // (`journalctl -u splicegate EVENT_ID=401`).
            tracing_subscriber::registry()
                .with(filter)
                .with(logwriter::journald::Layer::new(queue, "splicegate"))
                .init();
        }
        LogFormat::Journald | LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(queue)
            .init(),
    }
    if let Some(e) = journal_err {
        tracing::warn!("journald unavailable ({e}); logging to stderr");
    }
    Ok(guard)
}
