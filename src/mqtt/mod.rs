//! The MQTT uplink and downlink.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What `/health` and `/metrics` show of the uplink; shared with the client task.
#[derive(Debug, Default)]
pub struct MqttStatus {
    /// Connected to the broker (CONNACK received, not yet lost).
    pub connected: AtomicBool,
    /// Messages acknowledged by the broker since start-up.
    pub published: AtomicU64,
    /// Connection attempts that failed since start-up.
    pub connect_errors: AtomicU64,
}

impl MqttStatus {
    pub fn new() -> Arc<MqttStatus> {
        Arc::new(MqttStatus::default())
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}
