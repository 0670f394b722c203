//! systemd socket activation: the listening sockets passed in `LISTEN_FDS` (from fd 3 on, for
//! the process named by `LISTEN_PID`; names in `LISTEN_FDNAMES` are only logged).
//!
//! An inherited socket replaces binding for the address it carries: the gateway does not bind
//! that address itself, and every worker accepts from a duplicate of it (it has no
//! `SO_REUSEPORT`, so it can't be bound again beside itself). It may also carry
//! `metrics_listen` or `health_listen`. A socket for an address the configuration does not list
//! is refused, and so is one that listens more widely than the address it carries (an IPv6
//! wildcard that also accepts IPv4): socket activation must never widen where the gateway
//! accepts clients beyond its own configuration.
//!
//! The environment is read with the `listenfd` crate: it checks `LISTEN_PID`, checks each fd
//! is a TCP socket before taking ownership of it (the only `unsafe` this needs lives there), and
//! removes the variables so no child inherits them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use crate::config::Config;

/// One inherited listening socket.
#[derive(Debug)]
pub struct Activated {
    pub addr: SocketAddr,
    pub fd: OwnedFd,
    /// Its `LISTEN_FDNAMES` entry (the socket unit's `FileDescriptorName=`), or `"unknown"`.
    pub name: String,
}

/// Why the inherited sockets cannot be used; the start fails (exit 2, event 401).
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: inherited fd {fd} ({name}) is not a TCP socket: {source}")]
    NotTcp {
        fd: usize,
        name: String,
        source: io::Error,
    },
    #[error(
        "socket activation: inherited socket {addr} ({name}) is not listening (use Accept=no)"
    )]
    NotListening { addr: SocketAddr, name: String },
    #[error("socket activation: cannot set up inherited socket {addr} ({name}): {source}")]
    Setup {
        addr: SocketAddr,
        name: String,
        source: io::Error,
    },
    #[error(
        "socket activation: inherited socket {addr} ({name}) is not in `listen` ({listen}), \
         `metrics_listen` or `health_listen`: refusing to accept on an address the \
         configuration does not list; add it to `listen` or remove it from the socket unit"
    )]
    NotConfigured {
        addr: SocketAddr,
        name: String,
        listen: String,
    },
    #[error(
        "socket activation: inherited socket {addr} ({name}) also accepts IPv4 (dual-stack); \
         set BindIPv6Only=ipv6-only in the socket unit and list an IPv4 address separately"
    )]
    DualStack { addr: SocketAddr, name: String },
    #[error("socket activation: two inherited sockets carry {addr}")]
    Duplicate { addr: SocketAddr },
}

/// Take the inherited sockets (none when not socket-activated). Call before any thread starts:
/// the `LISTEN_*` variables are removed from the environment.
pub fn take() -> Result<Vec<Activated>, ActivationError> {
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    let mut out: Vec<Activated> = Vec::with_capacity(fds.len());
    for i in 0..fds.len() {
        let name = names
            .get(i)
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        let listener = match fds.take_tcp_listener(i) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(source) => {
                return Err(ActivationError::NotTcp {
                    fd: 3 + i,
                    name,
                    source,
                })
            }
        };
        let setup = |source| ActivationError::NotTcp {
            fd: 3 + i,
            name: name.clone(),
            source,
        };
        let addr = listener.local_addr().map_err(setup)?;
        let sock = socket2::Socket::from(OwnedFd::from(listener));
        if !sock
            .is_listener()
            .map_err(|source| ActivationError::Setup {
                addr,
                name: name.clone(),
                source,
            })?
        {
            return Err(ActivationError::NotListening { addr, name });
        }
        let dual = addr.ip().is_unspecified()
            && addr.is_ipv6()
            && !sock.only_v6().map_err(|source| ActivationError::Setup {
                addr,
                name: name.clone(),
                source,
            })?;
        if dual {
            return Err(ActivationError::DualStack { addr, name });
        }
        sock.set_nonblocking(true)
            .map_err(|source| ActivationError::Setup {
                addr,
                name: name.clone(),
                source,
            })?;
        if out.iter().any(|a| a.addr == addr) {
            return Err(ActivationError::Duplicate { addr });
        }
        out.push(Activated {
            addr,
            fd: OwnedFd::from(sock),
            name,
        });
    }
    Ok(out)
}

/// Every inherited socket must carry an address `cfg` lists (`listen` by exact address, or
/// `metrics_listen`, or `health_listen`).
pub fn check(inherited: &[Activated], cfg: &Config) -> Result<(), ActivationError> {
    for a in inherited {
        let listed = super::listed(cfg, &a.addr)
            || cfg.metrics_listen == Some(a.addr)
            || cfg.health_listen == Some(a.addr);
        if !listed {
            return Err(ActivationError::NotConfigured {
                addr: a.addr,
                name: a.name.clone(),
                listen: super::addr_list(&cfg.listen),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listening(addr: &str) -> Activated {
        let l = std::net::TcpListener::bind(addr).unwrap();
        Activated {
            addr: l.local_addr().unwrap(),
            fd: OwnedFd::from(l),
            name: "t".into(),
        }
    }

    #[test]
    fn an_address_the_config_does_not_list_is_refused() {
        let a = listening("127.0.0.1:0");
        let mut cfg = Config {
            listen: vec!["127.0.0.1:1".parse().unwrap()],
            metrics_listen: None,
            ..Config::default()
        };
        let e = check(std::slice::from_ref(&a), &cfg).unwrap_err();
        assert!(matches!(e, ActivationError::NotConfigured { .. }), "{e}");
        cfg.listen.push(a.addr);
        check(std::slice::from_ref(&a), &cfg).unwrap();
        cfg.listen.clear();
        cfg.health_listen = Some(a.addr);
        check(&[a], &cfg).unwrap();
    }
}
