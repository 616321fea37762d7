//! Every outgoing JSON shape in one place, so that a change of the wire
//! format has one home: hosts and items, data and resend messages, config
//! request statuses, events and triggers, the gateway's status and
//! rejections, and the upstream model (Things, Time-series, Datasets,
//! deployment statuses). The MQTT uplink and the HTTP API both send these; internal
//! types are not serialized anywhere else.

mod alarms;
mod config;
mod data;
mod hosts;
pub mod status;
mod upstream;

pub use alarms::{Acknowledgement, EventObject, TriggerObject};
pub use config::{ConfigObject, Status};
pub use data::{data_message, ResendBuilder};
pub use hosts::{host_object, item_object, HostObject, ItemObject, ItemView};
pub use upstream::{DatasetObject, DeployObject, ThingObject, TimeSeriesObject};
