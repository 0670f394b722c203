//! The snapshot of configuration that workers consult for each new connection.
//!
//! Built from a validated [`Config`] on the control thread and published through `ArcSwap`: a
//! reload builds a new snapshot and swaps it in whole. Workers read it through a per-worker
//! `arc_swap::Cache`, so the per-connection path touches no shared reference count; connections
//! already open keep the values they started with.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, DataPath, Limits};
use crate::policy::Policy;

/// Everything a worker needs to decide on and run a new connection.
#[derive(Debug)]
pub struct Settings {
    pub policy: Policy,
    pub limits: Limits,
    pub data_path: DataPath,
}

impl Settings {
    pub fn new(cfg: &Config) -> Settings {
        Settings {
            policy: Policy::new(cfg),
            limits: cfg.limits.clone(),
            data_path: cfg.data_path,
        }
    }
}

/// The published snapshot, shared by the control thread (writer) and the workers (readers).
pub type Shared = Arc<ArcSwap<Settings>>;

pub fn shared(cfg: &Config) -> Shared {
    Arc::new(ArcSwap::from_pointee(Settings::new(cfg)))
}
