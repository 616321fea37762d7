//! A config request's status and the item's `config` object: the retained
//! `R/config/<host>/<key>` messages, the API's answers, an item's `config`.

use serde::{Deserialize, Serialize};

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

    /// The status stored as text (`PENDING`, `SUCCESS`; anything else is `FAILED`).
    pub fn parse(s: &str) -> Status {
        match s {
            "PENDING" => Status::Pending,
            "SUCCESS" => Status::Success,
            _ => Status::Failed,
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
