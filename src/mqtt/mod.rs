//! The MQTT uplink and downlink.
//!
//! One task ([`spawn`]) owns the broker connection for the gateway's lifetime:
//! it connects with a persistent session, publishes the retained status and
//! host metadata, drains the durable queues (data rows of the store's outbox,
//! the ledger's `uplink` table) in order through a bounded window, releases a
//! row only at the broker's PUBACK, answers downlink commands, and reconnects
//! with capped exponential backoff. See `session.rs` for the delivery rules.

pub(crate) mod connect;
mod downlink;
mod session;
mod upstream;
mod window;

use tokio_util::sync::CancellationToken;

pub use connect::{Endpoint, SetupError};
pub use downlink::{MAX_COMMAND_BYTES, MAX_RESEND_POINTS};

pub use crate::uplink_status::{MqttSnapshot, MqttStatus, DELAY_BUCKETS, DELAY_BUCKET_MS};

/// `<topic_prefix>/<gateway.id>`, the root of every topic.
pub fn root(config: &crate::model::Config) -> Option<String> {
    let mqtt = config.mqtt.as_ref()?;
    Some(format!("{}/{}", mqtt.topic_prefix, config.gateway.id))
}

/// The running MQTT task (idle while the config has no `[mqtt]` section).
pub struct MqttService {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the MQTT task for a gateway. It follows config reloads (signalled
/// through `reloads`): it starts or stops the uplink when `[mqtt]` appears or
/// goes, reconnects when the section changed, and otherwise republishes the
/// retained host metadata.
pub fn spawn(
    gateway: crate::gateway::Gateway,
    remote: crate::remote::Remote,
    reloads: tokio::sync::watch::Receiver<u64>,
) -> MqttService {
    let cancel = CancellationToken::new();
    let task = tokio::spawn(session::run(gateway, remote, reloads, cancel.clone()));
    MqttService { cancel, task }
}

/// The longest [`MqttService::stop`] takes: the session's grace for
/// messages in flight and for the offline status, and a margin.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
const _: () = assert!(session::CLOSE_GRACE.as_secs() * 2 < STOP_GRACE.as_secs());

impl MqttService {
    /// Stops the task: waits briefly for messages in flight to be
    /// acknowledged, publishes the retained offline status, disconnects;
    /// after [`STOP_GRACE`] it is aborted.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        match tokio::time::timeout(STOP_GRACE, &mut self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "mqtt task ended abnormally"),
            Err(_) => {
                self.task.abort();
                tracing::warn!("the mqtt task did not stop within its grace; aborted");
            }
        }
    }
}
