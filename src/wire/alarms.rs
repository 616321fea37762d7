//! Alarm events and triggers in the seed's shapes: `R/events`, the retained
//! `R/triggers/<id>` messages and the API's answers.

use serde::Serialize;

use super::HostObject;

/// An acknowledgement of an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Acknowledgement {
    pub clock: i64,
    pub message: String,
}

/// An alarm event: the seed's shape plus `triggerid`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventObject {
    pub eventid: u64,
    pub triggerid: u64,
    pub host: String,
    pub key: String,
    /// `problem`, `OK` or `unknown`.
    pub value: String,
    pub clock: i64,
    pub description: String,
    /// `[n, "text"]`.
    pub severity: (u8, String),
    pub acknowledgements: Vec<Acknowledgement>,
}

/// A trigger: the seed's shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerObject {
    pub triggerid: u64,
    pub description: String,
    /// Every host its expressions name, without items.
    pub hosts: Vec<HostObject>,
    pub lastchange: Option<i64>,
    pub value: String,
    pub severity: (u8, String),
}
