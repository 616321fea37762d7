//! Where the Sparkplug uplink goes: its connection and its ids.

use std::time::Duration;

use crate::model::{Config, MqttSpec};

/// The `[sparkplug]` section as the session needs it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Target {
    /// The connection (url, credentials, TLS files, keep-alive).
    pub conn: MqttSpec,
    pub client_id: String,
    pub group_id: String,
    pub edge_node_id: String,
    pub primary_host_id: Option<String>,
}

impl Target {
    pub(super) fn of(config: &Config) -> Option<Target> {
        let group_id = std::env::var("MODBRIDGE_SPB_GROUP").ok()?;
        let mqtt = config.mqtt.as_ref()?;
        let mut conn = mqtt.clone();
        conn.keep_alive = Duration::from_secs(30);
        Some(Target {
            conn,
            client_id: format!("modbridge-spb-{}", config.gateway.id),
            group_id,
            edge_node_id: config.gateway.id.clone(),
            primary_host_id: std::env::var("MODBRIDGE_SPB_PRIMARY").ok(),
        })
    }

    /// `spBv1.0/<group>/<type>/<node>`.
    pub(super) fn node_topic(&self, kind: &str) -> String {
        format!("spBv1.0/{}/{kind}/{}", self.group_id, self.edge_node_id)
    }

    /// `spBv1.0/<group>/<type>/<node>/<device>`.
    pub(super) fn device_topic(&self, kind: &str, device: &str) -> String {
        format!(
            "spBv1.0/{}/{kind}/{}/{device}",
            self.group_id, self.edge_node_id
        )
    }

    /// The primary host's STATE topic.
    pub(super) fn state_topic(&self) -> Option<String> {
        self.primary_host_id
            .as_ref()
            .map(|h| format!("spBv1.0/STATE/{h}"))
    }
}
