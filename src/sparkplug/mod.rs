//! The Sparkplug B uplink: the gateway as a Sparkplug edge node, every host
//! a device, over a connection of its own beside the native MQTT uplink.
//!
//! One task ([`spawn`]) runs for the gateway's lifetime, idle without
//! `[sparkplug]`: `session.rs` (births, data by exception, store and forward
//! with its own durable position in the outbox, commands, the primary
//! host's STATE), `payload.rs` (the Tahu protobuf payloads; pure),
//! `target.rs` (the section's ids and topics), `feed.rs` (what it takes
//! from the store and the ledger). Connection set-up (url, credentials,
//! TLS) is the native uplink's (`mqtt::connect`).

mod feed;
pub mod payload;
mod session;
mod target;

use tokio_util::sync::CancellationToken;

/// The running Sparkplug task.
pub struct SparkplugService {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the Sparkplug task for a gateway; it follows config reloads
/// (starts, stops or reconnects when `[sparkplug]` appears, goes or
/// changes; rebirths when the hosts changed).
pub fn spawn(
    gateway: crate::gateway::Gateway,
    reloads: tokio::sync::watch::Receiver<u64>,
) -> SparkplugService {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(session::run(gateway, reloads, cancel.clone()));
    SparkplugService { cancel, task }
}

/// The longest [`SparkplugService::stop`] takes.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
const _: () = assert!(session::CLOSE_GRACE.as_secs() * 2 < STOP_GRACE.as_secs());

impl SparkplugService {
    /// Stops the task: NDEATH, then disconnect; aborted after [`STOP_GRACE`].
    pub async fn stop(mut self) {
        self.cancel.cancel();
        match tokio::time::timeout(STOP_GRACE, &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "sparkplug task ended abnormally"),
            Err(_) => {
                self.task.abort();
                tracing::warn!("the sparkplug task did not stop within its grace; aborted");
            }
        }
    }
}
