//! The `splicegate` command: `run`, `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

use splicegate::config::Config;
use splicegate::{control, events};

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
    },
    /// Validate a configuration file and print the effective policy.
    CheckConfig { path: PathBuf },
    /// Print the embedded default configuration.
    DefaultConfig,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
    Journald,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Run { config } => {
            let cfg = match &config {
                Some(p) => Config::from_file(p),
                None => Ok(Config::embedded_default()),
            };
            let cfg = match cfg {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(event_id = events::BAD_CONFIG, "invalid configuration: {e}");
                    eprintln!("splicegate: invalid configuration:\n{e}");
                    return ExitCode::from(2);
                }
            };
            match control::run(cfg, config) {
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
    }
}

fn init_logging(format: Option<LogFormat>) {
    let filter =
        EnvFilter::try_from_env("SPLICEGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let format = format.unwrap_or(if std::env::var_os("JOURNAL_STREAM").is_some() {
        LogFormat::Journald
    } else {
        LogFormat::Text
    });
    match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                use tracing_subscriber::layer::SubscriberExt;
                use tracing_subscriber::util::SubscriberInitExt;
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer.with_syslog_identifier("splicegate".into()))
                    .init();
            }
            Err(e) => {
                tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_writer(std::io::stderr)
                    .init();
                tracing::warn!("journald unavailable ({e}); logging to stderr");
            }
        },
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
}
