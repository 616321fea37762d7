//! Config requests: writes of a configurable item's value, asked for over
//! MQTT, the HTTP API or the command line, carried out by the item's host
//! task, with a durable PENDING -> SUCCESS/FAILED status.
//!
//! The layers, bottom-up:
//! - [`request`]: the JSON body -> a typed [`ConfigRequest`], or the
//!   [`SubmitError`] that refuses it;
//! - [`value`]: pure checks of a target against an item (bounds, representable
//!   by the register) and [`format_at_item_precision`] for the reasons;
//! - [`service`]: [`ConfigRequests`], the service with the newest request of
//!   every item in memory: submit, supersede, statuses, reload, expiry; its
//!   rows are written through [`crate::ledger::config_requests`];
//! - [`device`]: [`HostConfigRequests`], a host's share, which its task calls
//!   to carry a request out over the link (expected-read, write, read-back),
//!   yielding a [`CarriedOut`] value.
//!
//! [`ConfigRequests::submit`] validates a request against the current config,
//! records it in the ledger (PENDING, or FAILED at once when the target cannot
//! be written) and wakes the host's task. The host task carries it out before
//! its next reads through [`HostConfigRequests::run_due`]: read and compare
//! with `expected`, write with the item's function code, read back.
//!
//! Invariants:
//! - a request is committed before `submit` returns, and every status change is
//!   committed together with its retained `config/<host>/<key>` uplink message;
//! - per item only the newest request can be PENDING: a newer request fails an
//!   older pending one ("superseded by a newer request"), so the retained
//!   message and [`ConfigRequests::config_of`] always describe the newest
//!   request;
//! - a request that cannot reach the device stays PENDING and is retried with
//!   backoff until it expires; only a Modbus answer (or expiry, or a config
//!   change) ends it;
//! - before a write is sent the request is marked `written` in the ledger: a
//!   retry (also after a crash) then accepts a device that already holds the
//!   target where `expected` is checked.

pub mod device;
pub mod request;
pub mod service;
pub mod value;

pub use device::{CarriedOut, HostConfigRequests};
pub use request::{
    parse_body, parse_request, Channel, ConfigRequest, SubmitError, MAX_AUDIT_ENTRIES,
    MAX_AUDIT_LEN, MAX_ID_LEN,
};
pub use service::{
    ConfigObject, ConfigRequestStats, ConfigRequests, PendingRequest, Status, REMOVED, SUPERSEDED,
    SUPERSEDED_AFTER_WRITE,
};
pub use value::{format_at_item_precision, same_value};
