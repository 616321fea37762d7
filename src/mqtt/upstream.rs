//! The retained upstream model: `R/things/<uuid>`, `R/timeseries/<id>` and
//! `R/datasets/<uuid>` (metadata only), published on every connection, after
//! every reload, and for a Thing again whenever its `state` changes.

use std::collections::HashMap;

use crate::snapshot::Snapshot;

/// One retained message: the topic below the root and its payload.
pub(crate) type Retained = (String, Vec<u8>);

/// Every Thing, Time-series and Dataset of the running config.
pub(crate) fn model_messages(running: &Snapshot) -> Vec<Retained> {
    let config = &running.config;
    let mut out = Vec::new();
    for thing in crate::things::things(running) {
        push(&mut out, format!("things/{}", thing.uuid), &thing);
    }
    for ts in crate::things::timeseries(config) {
        push(&mut out, format!("timeseries/{}", ts.id), &ts);
    }
    for dataset in crate::datasets::datasets(config) {
        push(&mut out, format!("datasets/{}", dataset.uuid), &dataset);
    }
    out
}

fn push<T: serde::Serialize>(out: &mut Vec<Retained>, topic: String, value: &T) {
    match serde_json::to_vec(value) {
        Ok(payload) => out.push((topic, payload)),
        Err(e) => tracing::error!(topic = %topic, error = %e, "mqtt: cannot encode metadata"),
    }
}

/// The Things' states as last published, to republish the ones that change.
#[derive(Default)]
pub(crate) struct ThingStates(HashMap<String, &'static str>);

impl ThingStates {
    /// Remembers every Thing's current state (after all were published).
    pub(crate) fn reset(&mut self, running: &Snapshot) {
        self.0 = crate::things::things(running)
            .into_iter()
            .map(|t| (t.uuid, t.state))
            .collect();
    }

    /// The Things whose state changed since last time, as messages.
    pub(crate) fn changed(&mut self, running: &Snapshot) -> Vec<Retained> {
        let mut out = Vec::new();
        for thing in crate::things::things(running) {
            if self.0.get(&thing.uuid) != Some(&thing.state) {
                self.0.insert(thing.uuid.clone(), thing.state);
                push(&mut out, format!("things/{}", thing.uuid), &thing);
            }
        }
        out
    }
}
