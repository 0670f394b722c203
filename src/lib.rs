//! splicegate: a zero-copy HTTP CONNECT gateway for agents that must reach a fixed set of cloud
//! endpoints through one audited egress point.
//!
//! # Layout
//! - [`config`]: YAML -> raw serde structs -> a validated [`config::Config`]. `check-config` and
//!   `run` go through the same parser; every error names the key, the line and what was expected.
//!   Files the configuration names (users table, relay CA and password) are read and parsed here,
//!   once per load; the settings types belong to the modules that use them.
//! - [`policy`]: the allowlist (exact names and `*.` wildcards, each with its own ports or the
//!   global ones; per-user extras), client networks, static host overrides and
//!   the private-destination guard, bundled as an immutable [`policy::Policy`] snapshot.
//! - [`proto`]: sans-IO protocol pieces: the CONNECT head parser, the canned responses, and the
//!   TLS handshake inspector (version, SNI, client certificate) that never decrypts anything.
//! - [`relay`]: the relay (upstream) proxy: settings, the CONNECT sent to it, its answer.
//! - [`auth`]: client proxy authentication: the users file, Basic credentials, the verifier
//!   threads that check password hashes off the workers.
//! - [`resolve`]: the asynchronous, caching resolver that runs off the workers.
//! - [`mailbox`]: a worker's channel plus its eventfd wake-up, through which the resolver and
//!   the auth verifier answer the workers.
//! - [`engine`]: one worker thread per core, each with its own driver (io_uring or epoll),
//!   listeners, connection table, timers, and the splice data path with its pipe pool.
//! - [`control`]: everything off the data path: signals, drain, live reload (SIGHUP and inotify),
//!   sd_notify, `/metrics`, `/healthz`, `/readyz`, and the admin socket (`sessions`, `status`).
//! - [`admin`]: the admin CLI (`config`, `allowed-host`, `allowed-client-cert`, `relay-proxy`,
//!   `init`): surgical, validated, atomic edits of the YAML file, then a reload of the service;
//!   and `sessions`, `status`, `allowed-host list --usage`, which ask the running gateway
//!   through its admin socket.
//! - [`presets`]: cloud endpoint presets (Azure public, US Government, China) expanded into
//!   allowlist entries, each citing its source.
//! - [`clients`]: open connections per client address (IPv6 per /64), shared by the workers,
//!   for `limits.max_connections_per_client`.
//! - [`overload`]: the overload state (connection and memory budgets, with hysteresis) the
//!   control thread samples and publishes to the workers, `/readyz` and `/metrics`.
//! - [`settings`]: the per-connection configuration snapshot (policy, limits) behind `ArcSwap`.
//! - [`manual`]: the man pages and shell completions, generated from the clap definitions.
//! - [`metrics`]: metric names and per-worker shards, summed at scrape time.
//! - [`events`]: the gateway's numeric event IDs, the reason enums used as metric labels, the
//!   bound on peer-supplied strings in events and the rate limit on refusal events.
//! - [`logwriter`]: the bounded queue of formatted log lines and the thread that writes them
//!   (stderr or journald), so no worker makes a logging syscall or waits on one.
//!
//! # Invariants
//! - Layers point one way (see `docs/architecture.md`, "Layers"; `tests/layering.rs` fails on
//!   an import cycle between top-level modules): `config` builds the settings that `policy`,
//!   `proto`, `relay`, `auth` and `resolve` own, and none of them imports `config`.
//! - Workers share nothing mutable on the per-connection path: each owns its connections, its
//!   ring, its pipe pool and its metric shard; the policy is an immutable snapshot behind `ArcSwap`.
//! - A refusal never contacts the upstream and always closes the client connection.
//! - A name is resolved once; every answer is checked; only a checked address is dialled.
//! - No `IORING_OP_SPLICE` is ever issued: io_uring only reports readiness, and `splice(2)` runs
//!   non-blocking on the worker thread.

pub mod admin;
pub mod auth;
pub mod clients;
pub mod config;
pub mod control;
pub mod engine;
pub mod events;
pub mod logwriter;
pub mod mailbox;
pub mod manual;
pub mod metrics;
pub mod overload;
pub mod policy;
pub mod presets;
pub mod proto;
pub mod relay;
pub mod resolve;
pub mod settings;
