//! The `splicegate` command: `run`, `check-config`, `default-config`, and the admin commands
//! (`config`, `allowed-host`, `allowed-client-cert`, `relay-proxy`, `init`; see
//! [`splicegate::admin`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve. Without --config, serves the embedded default configuration.
    Run {
        #[arg(long, env = "SPLICEGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Write the process id to this file (for `splicegate config set` and friends to signal
        /// a gateway that systemd does not manage); removed at exit.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// Do not watch the configuration file for changes (SIGHUP still reloads).
        #[arg(long)]
        no_watch: bool,
    },
    /// Validate a configuration file and print the effective policy.
    CheckConfig { path: PathBuf },
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
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
    Journald,
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
            config,
            pid_file,
            no_watch,
        } => {
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
            };
            match control::run(cfg, opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(event_id = events::INTERNAL_ERROR, "cannot serve: {e}");
                    eprintln!("splicegate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { path } => match Config::from_file(&path) {
            Ok(cfg) => {
                println!("{}: configuration is valid\n", path.display());
                println!("{}", cfg.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid configuration:\n{e}", path.display());
                ExitCode::from(2)
            }
        },
        Command::DefaultConfig => {
            print!("{}", splicegate::config::DEFAULT_YAML);
            ExitCode::SUCCESS
        }
        Command::Admin(cmd) => ExitCode::from(admin::run(*cmd)),
        Command::User {
            cmd,
            users_file,
            pid_file,
            json,
        } => ExitCode::from(admin::users::run(cmd, &users_file, &pid_file, json)),
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
