//! The upstream platform's shapes: Things, Time-series and Datasets (the
//! seed's fields, plus `host`/`key` on a Time-series), and the status of a
//! remote deployment. Built by `things`, `datasets` and `remote`; sent on
//! `R/things/<uuid>`, `R/timeseries/<id>`, `R/datasets/<uuid>`, `R/deploy`
//! and by the HTTP API.

use serde::Serialize;

/// A Thing: the gateway, a host, or a `[[things]]` group.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ThingObject {
    pub uuid: String,
    pub name: String,
    /// `starting`, `online` or `offline`.
    pub state: &'static str,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Always null: the gateway made it.
    pub created_by: Option<String>,
    pub tags: Vec<String>,
    /// The parent Thing's uuid; null for the gateway.
    pub parent: Option<String>,
    /// The uuids of its direct children.
    pub children: Vec<String>,
    /// The host id, on a host's Thing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The `[[things]]` id, on a group's Thing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A Time-series: one item.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimeSeriesObject {
    pub id: String,
    pub thing_uuid: String,
    pub created_by: Option<String>,
    pub name: String,
    pub si_unit: Option<String>,
    pub lower_bound: Option<f64>,
    pub upper_bound: Option<f64>,
    pub tags: Vec<String>,
    pub host: String,
    pub key: String,
}

/// A Dataset: the running config file or a profile it uses (metadata only).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatasetObject {
    pub uuid: String,
    pub name: String,
    pub format: &'static str,
    pub size: u64,
    pub checksum: String,
    pub thing_uuid: String,
    pub created: i64,
    pub created_by: String,
    pub updated: i64,
    pub updated_by: String,
    pub tags: Vec<String>,
}

/// `R/deploy` and `GET /deploy`: where a deployment stands.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct DeployObject {
    /// The deployment's `id`, echoed; null when it had none.
    pub id: Option<serde_json::Value>,
    pub name: String,
    /// The checksum of the deployed content; null for `"content": null`.
    pub checksum: Option<String>,
    /// `PENDING`, `APPLIED`, `REFUSED` or `ROLLED_BACK`.
    pub status: String,
    /// When the status was set, Unix seconds.
    pub clock: i64,
    /// `REFUSED`: every problem as `name:LINE:COL: message`.
    pub errors: Vec<String>,
    pub reason: Option<String>,
    pub audit: Vec<String>,
}
