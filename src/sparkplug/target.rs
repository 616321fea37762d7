//! Where the Sparkplug uplink goes: its connection and its ids.

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
        let spb = config.sparkplug.as_ref()?;
        // The connection as the native uplink's set-up reads it (no topic prefix:
        // Sparkplug's topics are its own).
        let conn = MqttSpec {
            url: spb.url.clone(),
            client_id: spb.client_id.clone(),
            username: spb.username.clone(),
            password_file: spb.password_file.clone(),
            ca_file: spb.ca_file.clone(),
            cert_file: spb.cert_file.clone(),
            key_file: spb.key_file.clone(),
            topic_prefix: String::new(),
            keep_alive: spb.keep_alive,
        };
        Some(Target {
            conn,
            client_id: spb.client_id.clone(),
            group_id: spb.group_id.clone(),
            edge_node_id: spb.edge_node_id.clone(),
            primary_host_id: spb.primary_host_id.clone(),
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
