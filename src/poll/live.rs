//! What the API shows of a host while it runs: each item's last value, clock
//! and state, the link's health and request counters, and the handle through
//! which the host's task, the API, the alarm task and the watchdog share it.
//!
//! Kept apart from reading and scheduling so that the rules for what a cycle
//! changes (a failed item keeps its last value and clock) are in one place.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::config_requests::CarriedOut;
use crate::model::HostSpec;
use crate::store::{ItemId, Sample};
use crate::wire::ItemView;

use super::reader::CycleReport;

/// Whether an item's value is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ItemState {
    /// Not read yet since start-up.
    #[default]
    Unknown,
    Ok,
    /// The last read failed; `lastvalue`/`lastclock` are from before.
    Error,
}

impl ItemState {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemState::Unknown => "unknown",
            ItemState::Ok => "ok",
            ItemState::Error => "error",
        }
    }
}

/// What the API shows of an item.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemLive {
    pub value: Option<f64>,
    pub clock: Option<i64>,
    pub state: ItemState,
    pub error: Option<Arc<str>>,
}

/// What the API shows of a host and its link.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostLive {
    /// The last cycle reached the device and was answered (no transport
    /// failure, no "not now" exception).
    pub link_up: bool,
    /// Unix seconds of the last cycle that reached the device.
    pub last_ok: Option<i64>,
    /// Cycles in a row that failed on the transport or were answered "not now".
    pub consecutive_errors: u32,
    pub last_error: Option<String>,
    pub polls: u64,
    pub requests: u64,
    pub request_errors: u64,
    /// Request latency histogram, counts per bucket of [`LATENCY_BUCKETS`] (+Inf last).
    pub latency_buckets: Vec<u64>,
    pub latency_sum: f64,
    /// How late poll cycles started against their schedule: counts per
    /// bucket of [`LATENESS_BUCKETS`] (+Inf last), their sum and the largest.
    pub lateness_buckets: Vec<u64>,
    pub lateness_sum: f64,
    pub lateness_max: f64,
    /// Per item, in the host's item order.
    pub items: Vec<ItemLive>,
}

/// Upper bounds, in seconds, of the request latency histogram.
pub const LATENCY_BUCKETS: [f64; 10] = [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Upper bounds, in seconds, of the poll lateness histogram.
pub const LATENESS_BUCKETS: [f64; 9] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0];

/// Counts `seconds` in the bucket of `bounds` it falls in (the last bucket is +Inf).
fn observe(buckets: &mut [u64], bounds: &[f64], seconds: f64) {
    let i = bounds
        .iter()
        .position(|b| seconds <= *b)
        .unwrap_or(bounds.len());
    if let Some(b) = buckets.get_mut(i) {
        *b += 1;
    }
}

impl HostLive {
    /// A fresh state for a host's items.
    pub fn new(items: usize) -> HostLive {
        HostLive {
            items: vec![ItemLive::default(); items],
            latency_buckets: vec![0; LATENCY_BUCKETS.len() + 1],
            lateness_buckets: vec![0; LATENESS_BUCKETS.len() + 1],
            ..HostLive::default()
        }
    }

    /// The newest clock of the host's items; None before any data.
    pub fn lastclock(&self) -> Option<i64> {
        self.items.iter().filter_map(|i| i.clock).max()
    }

    /// What the API and the uplink show of the item at `index` (an item
    /// beyond the known ones: not read yet).
    pub fn view(&self, index: usize) -> ItemView<'_> {
        match self.items.get(index) {
            Some(l) => ItemView {
                value: l.value,
                clock: l.clock,
                state: l.state.as_str(),
                error: l.error.as_deref(),
            },
            None => ItemView {
                state: ItemState::default().as_str(),
                ..ItemView::default()
            },
        }
    }

    fn observe_latency(&mut self, seconds: f64) {
        observe(&mut self.latency_buckets, &LATENCY_BUCKETS, seconds);
        self.latency_sum += seconds;
    }

    /// A poll cycle started `late` after the instant its schedule set.
    pub fn observe_lateness(&mut self, late: std::time::Duration) {
        let seconds = late.as_secs_f64();
        observe(&mut self.lateness_buckets, &LATENESS_BUCKETS, seconds);
        self.lateness_sum += seconds;
        self.lateness_max = self.lateness_max.max(seconds);
    }
}

/// A host's live state, shared between its task and the API, with a counter
/// of finished poll cycles that others can await.
#[derive(Debug)]
pub struct HostLiveCell {
    live: Mutex<HostLive>,
    cycles: tokio::sync::watch::Sender<u64>,
}

impl HostLiveCell {
    /// Fresh state for a host with `items` items.
    pub fn new(items: usize) -> HostLiveHandle {
        Arc::new(HostLiveCell {
            live: Mutex::new(HostLive::new(items)),
            cycles: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Locks the live state (a poisoned lock still holds valid data).
    pub fn lock(&self) -> MutexGuard<'_, HostLive> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that sees the number of finished poll cycles change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.cycles.subscribe()
    }

    pub(super) fn cycle_done(&self) {
        self.cycles.send_modify(|n| *n += 1);
    }
}

/// The handle to a host's live state that its task, the API and the other
/// tasks hold.
pub type HostLiveHandle = Arc<HostLiveCell>;

/// Applies a cycle's readings to the live state and returns the samples to store.
pub fn apply_readings(
    host: &HostSpec,
    live: &mut HostLive,
    report: &CycleReport,
    clock: i64,
    item_ids: &[Option<ItemId>],
) -> Vec<Sample> {
    let mut samples = Vec::with_capacity(report.readings.len());
    live.polls += 1;
    live.requests += report.requests;
    live.request_errors += report.request_errors;
    for l in &report.latencies {
        live.observe_latency(*l);
    }
    match report.unanswered() {
        Some(e) => {
            live.link_up = false;
            live.consecutive_errors += 1;
            live.last_error = Some(e.to_string());
        }
        None => {
            live.link_up = true;
            live.consecutive_errors = 0;
            live.last_ok = Some(clock);
        }
    }
    for r in &report.readings {
        let Some(item) = live.items.get_mut(r.index) else {
            continue;
        };
        match &r.value {
            Ok(v) => {
                item.value = Some(*v);
                item.clock = Some(clock);
                item.state = ItemState::Ok;
                item.error = None;
                if let Some(Some(id)) = item_ids.get(r.index) {
                    samples.push(Sample {
                        item: *id,
                        clock,
                        value: *v,
                    });
                }
            }
            Err(e) => {
                if item.state != ItemState::Error || item.error.as_deref() != Some(&**e) {
                    tracing::warn!(
                        host = %host.host,
                        key = %host.items.get(r.index).map(|i| i.key.as_str()).unwrap_or(""),
                        error = %e,
                        "item read failed"
                    );
                }
                item.state = ItemState::Error;
                item.error = Some(e.clone());
            }
        }
    }
    samples
}

/// A value written and read back: updates the item's live state and returns
/// the sample to store (None where the store has no id for the item).
///
/// History holds at most one point per item and second, in clock order: a
/// value read back within the second of the item's last sample is stamped one
/// second after it, so that the written value is a history point.
pub fn apply_written(
    live: &mut HostLive,
    written: CarriedOut,
    item_ids: &[Option<ItemId>],
) -> Option<Sample> {
    let item = live.items.get_mut(written.index)?;
    let clock = match item.clock {
        Some(last) if last >= written.clock => last + 1,
        _ => written.clock,
    };
    item.value = Some(written.value);
    item.clock = Some(clock);
    item.state = ItemState::Ok;
    item.error = None;
    match item_ids.get(written.index) {
        Some(Some(id)) => Some(Sample {
            item: *id,
            clock,
            value: written.value,
        }),
        _ => None,
    }
}
