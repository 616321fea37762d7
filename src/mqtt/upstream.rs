//! The retained upstream model: `R/things/<uuid>`, `R/timeseries/<id>` and
//! `R/datasets/<uuid>` (metadata only), published on every connection, after
//! every reload, and for a Thing again whenever its `state` changes.

use std::collections::HashMap;

use std::sync::Arc;

use crate::gateway::Gateway;
use crate::snapshot::Snapshot;

/// One retained message: the topic below the root and its payload.
pub(crate) type Retained = (String, Vec<u8>);

/// The retained metadata of a connection or a reload, encoded a message at
/// a time as the session's window has room: every host object, then the
/// Things, every Time-series, the Datasets. Encoded all at once, a message
/// per item sat in memory together (10,000 items: about 7 MB at every
/// connect, most of the gateway's peak memory).
pub(crate) struct Metadata {
    running: Arc<Snapshot>,
    next: Step,
}

#[derive(Clone, Copy)]
enum Step {
    Host(usize),
    Things,
    TimeSeries { host: usize, item: usize },
    Datasets,
    Done,
}

impl Metadata {
    pub(crate) fn new(running: Arc<Snapshot>) -> Metadata {
        Metadata {
            running,
            next: Step::Host(0),
        }
    }

    /// Every topic (below the root) this publishes, in order.
    pub(crate) fn topics(&self) -> Vec<String> {
        let running = &self.running;
        let config = &running.config;
        let mut out: Vec<String> = config
            .hosts
            .iter()
            .filter(|spec| running.hosts.contains_key(&spec.host))
            .map(|spec| format!("hosts/{}", spec.host))
            .collect();
        out.extend(
            crate::things::things(running)
                .into_iter()
                .map(|t| format!("things/{}", t.uuid)),
        );
        for host in &config.hosts {
            for item in &host.items {
                out.push(format!(
                    "timeseries/{}",
                    crate::things::item_uuid(config, host, item)
                ));
            }
        }
        out.extend(
            crate::datasets::datasets(config)
                .into_iter()
                .map(|d| format!("datasets/{}", d.uuid)),
        );
        out
    }

    /// The next messages into `out` (one host or Time-series, or all the
    /// Things or all the Datasets): false when there are no more. The
    /// Things' published states are remembered in `states`.
    pub(crate) fn next(
        &mut self,
        gateway: &Gateway,
        states: &mut ThingStates,
        out: &mut Vec<Retained>,
    ) -> bool {
        let running = self.running.clone();
        let config = &running.config;
        loop {
            match self.next {
                Step::Done => return false,
                Step::Host(i) => {
                    let Some(spec) = config.hosts.get(i) else {
                        self.next = Step::Things;
                        continue;
                    };
                    self.next = Step::Host(i + 1);
                    let Some(live) = running.hosts.get(&spec.host) else {
                        continue;
                    };
                    let live = live.lock().clone();
                    let items = spec
                        .items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, item)| {
                            let config = if item.configurable {
                                gateway.writes.config_of(&spec.host, &item.key)
                            } else {
                                None
                            };
                            crate::wire::item_object(spec, i, live.view(i), config)
                        })
                        .collect();
                    let object = crate::wire::host_object(spec, live.lastclock(), Some(items));
                    push(out, format!("hosts/{}", spec.host), &object);
                    return true;
                }
                Step::Things => {
                    self.next = Step::TimeSeries { host: 0, item: 0 };
                    let things = crate::things::things(&running);
                    for thing in &things {
                        push(out, format!("things/{}", thing.uuid), thing);
                    }
                    states.0 = things.into_iter().map(|t| (t.uuid, t.state)).collect();
                    return true;
                }
                Step::TimeSeries { host, item } => {
                    let Some(spec) = config.hosts.get(host) else {
                        self.next = Step::Datasets;
                        continue;
                    };
                    let Some(it) = spec.items.get(item) else {
                        self.next = Step::TimeSeries {
                            host: host + 1,
                            item: 0,
                        };
                        continue;
                    };
                    self.next = Step::TimeSeries {
                        host,
                        item: item + 1,
                    };
                    let ts = crate::things::timeseries_of(config, spec, it);
                    push(out, format!("timeseries/{}", ts.id), &ts);
                    return true;
                }
                Step::Datasets => {
                    self.next = Step::Done;
                    for dataset in crate::datasets::datasets(config) {
                        push(out, format!("datasets/{}", dataset.uuid), &dataset);
                    }
                    return true;
                }
            }
        }
    }
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
