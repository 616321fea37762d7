//! The running alarm service: feeds polled samples to the [`super::Engine`],
//! stores trigger states, events and acknowledgements in the ledger, and
//! queues them for the uplink.

use serde::Serialize;

use crate::json::HostObject;
use crate::ledger::Ledger;
use crate::store::StoreError;

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

/// Which events to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub host: Option<String>,
    pub key: Option<String>,
}

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("no event {0}")]
    UnknownEvent(u64),
    /// An empty or oversized message: HTTP 422.
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

impl AckError {
    /// The HTTP status that fits.
    pub fn http_status(&self) -> u16 {
        match self {
            AckError::UnknownEvent(_) => 404,
            AckError::Invalid(_) => 422,
            AckError::Storage(_) => 503,
        }
    }
}

/// The alarm service's handle; cheap to clone.
#[derive(Clone)]
pub struct Alarms {
    #[allow(dead_code)]
    ledger: Ledger,
}

impl Alarms {
    pub fn new(ledger: Ledger) -> Alarms {
        Alarms { ledger }
    }

    /// Adds an acknowledgement to an event, stores it, queues the event again
    /// for the uplink, and returns the event with all its acknowledgements.
    pub fn acknowledge(&self, eventid: u64, _message: &str) -> Result<EventObject, AckError> {
        Err(AckError::UnknownEvent(eventid))
    }

    /// Stored events matching the filter, ascending by `eventid`.
    pub fn events(&self, _filter: &EventFilter) -> Result<Vec<EventObject>, StoreError> {
        Ok(Vec::new())
    }

    /// One stored event.
    pub fn event(&self, _eventid: u64) -> Result<Option<EventObject>, StoreError> {
        Ok(None)
    }

    /// Every configured trigger with its current value.
    pub fn triggers(&self) -> Vec<TriggerObject> {
        Vec::new()
    }

    /// One trigger.
    pub fn trigger(&self, _triggerid: u64) -> Option<TriggerObject> {
        None
    }
}
