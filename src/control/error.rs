//! Why the control thread could not start serving, or refused a reload.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::ConfigError;

/// A start-up failure (the process exits) or a refused reload (the previous configuration stays
/// in force); the text is what event 400 or the error on stderr shows.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot start the control runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] io::Error),
    #[error("cannot write the pid file {path}: {source}")]
    PidFile { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// A reload's file could not be read whole and settled.
    #[error(transparent)]
    Settle(#[from] super::watch::ReadError),
    #[error("{path}: not UTF-8: {source}")]
    NotUtf8 {
        path: PathBuf,
        source: std::str::Utf8Error,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {kind} {addr}: {source}")]
    HttpListen {
        kind: super::HttpKind,
        addr: SocketAddr,
        source: io::Error,
    },
    /// Inherited sockets (systemd socket activation) that cannot be used as configured.
    #[error(transparent)]
    Activation(#[from] super::activation::ActivationError),
    /// A reload would stop serving a socket-activated address.
    #[error(
        "{addr} is a socket-activated address (the socket unit owns it): it stays in `listen` \
         until the socket unit changes"
    )]
    SharedRemoved { addr: SocketAddr },
    #[error("cannot take over from {path}: {source}")]
    TakeoverFrom {
        path: PathBuf,
        source: super::takeover::TakeoverError,
    },
    #[error("takeover: {0}")]
    Takeover(#[source] io::Error),
    #[error("takeover_socket: {0}")]
    TakeoverSocket(#[source] super::takeover::TakeoverError),
    #[error("cannot serve /metrics: {0}")]
    MetricsServe(#[source] io::Error),
    /// No usable I/O driver (`engine:`), as the engine explains it.
    #[error("{0}")]
    Driver(String),
    /// Binding the `listen` addresses failed, as the engine explains it.
    #[error("{0}")]
    Listen(String),
    /// The workers did not start, as the engine explains it.
    #[error("{0}")]
    Workers(String),
    /// A reload's engine did not start; the previous one serves again.
    #[error("cannot start the new engine: {0}")]
    NewEngine(Box<ControlError>),
    /// A reload's engine did not start, nor did the previous one again.
    #[error(
        "cannot start the new engine ({new}) nor the previous one ({previous}): \
         not accepting connections"
    )]
    NoEngine {
        new: Box<ControlError>,
        previous: Box<ControlError>,
    },
}

impl ControlError {
    /// A problem of the configuration or of what the service manager passed, not of the
    /// host: `run` exits with status 2 and event 401, as for an invalid file.
    pub fn is_config_problem(&self) -> bool {
        matches!(self, ControlError::Activation(_) | ControlError::Config(_))
    }
}
