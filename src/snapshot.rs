//! The config and live host states that a reload replaces as a whole, and the
//! shared handle through which every task reads the current one. It sits below
//! both `gateway` (which replaces it) and `alarm` (which reads it), so neither
//! has to import the other to share it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::model::Config;
use crate::poll::HostLiveHandle;

/// The part of the gateway a config reload replaces.
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Live state per host id.
    pub hosts: BTreeMap<String, HostLiveHandle>,
}

/// A shared handle to the current [`Snapshot`]; cheap to clone. Readers take
/// the current snapshot and keep it as long as they need a consistent view; a
/// reload swaps in a new one without disturbing them.
#[derive(Clone)]
pub struct SnapshotHandle(Arc<RwLock<Arc<Snapshot>>>);

impl SnapshotHandle {
    /// A handle holding `snapshot` as the current one.
    pub fn new(snapshot: Snapshot) -> SnapshotHandle {
        SnapshotHandle(Arc::new(RwLock::new(Arc::new(snapshot))))
    }

    /// The current config and live host states.
    pub fn current(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes `snapshot` the current one.
    pub fn replace(&self, snapshot: Snapshot) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }
}
