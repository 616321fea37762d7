//! Config requests (writes): one entry point for every channel (MQTT, HTTP
//! API, command line), a durable PENDING -> SUCCESS/FAILED pipeline.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ledger::Ledger;
use crate::model::Config;
use crate::store::StoreError;

/// Where a request came from; the gateway adds it to `audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    Mqtt,
    /// The HTTP API, with the peer's address.
    Api(std::net::SocketAddr),
    /// The command line, with the user's name.
    Cli(String),
}

impl Channel {
    /// The audit string: `mqtt`, `api <peer address>`, `cli <user>`.
    pub fn audit(&self) -> String {
        match self {
            Channel::Mqtt => "mqtt".to_string(),
            Channel::Api(peer) => format!("api {peer}"),
            Channel::Cli(user) => format!("cli {user}"),
        }
    }
}

/// A validated config request.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigRequest {
    pub host: String,
    pub key: String,
    pub target: f64,
    pub expected: Option<f64>,
    pub audit: Vec<String>,
    /// The requester's id, echoed in `config.id`.
    pub id: Option<serde_json::Value>,
}

/// A request's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    #[serde(rename = "PENDING")]
    Pending,
    #[serde(rename = "SUCCESS")]
    Success,
    #[serde(rename = "FAILED")]
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Success => "SUCCESS",
            Status::Failed => "FAILED",
        }
    }
}

/// The item's `config` object: the seed's fields plus `reason` and `id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigObject {
    pub audit: Vec<String>,
    pub target: Option<f64>,
    /// When the request was received.
    pub lastclock: Option<i64>,
    pub status: Status,
    pub expected: Option<f64>,
    /// Why it failed (or what was found), in engineering units.
    pub reason: Option<String>,
    pub id: Option<serde_json::Value>,
}

impl ConfigObject {
    /// The seed's object for an item that never received a request.
    pub fn none() -> ConfigObject {
        ConfigObject {
            audit: Vec::new(),
            target: None,
            lastclock: None,
            status: Status::Success,
            expected: None,
            reason: None,
            id: None,
        }
    }
}

/// Why a request was refused (nothing was recorded).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Not JSON, wrong shape, missing fields: HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown host {0:?}")]
    UnknownHost(String),
    #[error("host {host:?} has no item {key:?}")]
    UnknownKey { host: String, key: String },
    #[error("{host}/{key} is a sensor, not configurable")]
    NotConfigurable { host: String, key: String },
    /// Well-formed but unusable (e.g. target not a number): HTTP 422.
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

impl SubmitError {
    /// The HTTP status that fits.
    pub fn http_status(&self) -> u16 {
        match self {
            SubmitError::BadRequest(_) => 400,
            SubmitError::UnknownHost(_) | SubmitError::UnknownKey { .. } => 404,
            SubmitError::NotConfigurable { .. } => 409,
            SubmitError::Invalid(_) => 422,
            SubmitError::Storage(_) => 503,
        }
    }
}

/// The write pipeline's handle; cheap to clone.
#[derive(Clone)]
pub struct Writes {
    #[allow(dead_code)]
    ledger: Ledger,
    #[allow(dead_code)]
    config: Arc<std::sync::RwLock<Arc<Config>>>,
}

impl Writes {
    /// The pipeline over the ledger, for the current config.
    pub fn new(ledger: Ledger, config: Arc<Config>) -> Writes {
        Writes {
            ledger,
            config: Arc::new(std::sync::RwLock::new(config)),
        }
    }

    /// Takes a request from any channel: refused with an error (nothing
    /// recorded), or recorded durably (PENDING, or FAILED at once) and returned.
    pub fn submit(
        &self,
        _request: ConfigRequest,
        _channel: Channel,
    ) -> Result<ConfigObject, SubmitError> {
        Err(SubmitError::Invalid("writes are not available yet".into()))
    }

    /// The item's latest config object, if it ever received a request.
    pub fn config_of(&self, _host: &str, _key: &str) -> Option<ConfigObject> {
        None
    }
}

/// Parses a full request (`{"host","key","target","expected"?,"audit"?,"id"?}`),
/// as it comes over MQTT.
pub fn parse_request(_json: &[u8]) -> Result<ConfigRequest, SubmitError> {
    Err(SubmitError::BadRequest("not available yet".into()))
}

/// Parses an HTTP body (`{"target","expected"?,"audit"?,"id"?}`) for an item.
pub fn parse_body(_host: &str, _key: &str, _json: &[u8]) -> Result<ConfigRequest, SubmitError> {
    Err(SubmitError::BadRequest("not available yet".into()))
}
