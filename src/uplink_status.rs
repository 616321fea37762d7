//! The uplink's counters and delay histogram that `/health` and `/metrics`
//! read. They live below `gateway` so that the gateway can hold them without
//! importing the MQTT task that updates them.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Width of one bucket of [`MqttStatus`]'s delay histogram, milliseconds.
pub const DELAY_BUCKET_MS: u64 = 10;
/// Buckets of the delay histogram; the last one also counts everything longer.
pub const DELAY_BUCKETS: usize = 1001;

/// What `/health` and `/metrics` show of the uplink; shared with the client task.
#[derive(Debug)]
pub struct MqttStatus {
    /// Connected to the broker (CONNACK received, not yet lost).
    pub connected: AtomicBool,
    /// Messages acknowledged by the broker since start-up.
    pub published: AtomicU64,
    /// Connection attempts that failed since start-up.
    pub connect_errors: AtomicU64,
    /// An `[mqtt]` section is configured.
    pub enabled: AtomicBool,
    /// Unix seconds of the current connection's CONNACK; 0 while disconnected.
    pub connected_since: AtomicI64,
    /// Connections established since start-up.
    pub connects: AtomicU64,
    /// Durable messages not yet acknowledged by the broker: data rows of the
    /// outbox plus queued events, trigger states and config statuses.
    pub backlog: AtomicU64,
    /// Messages handed to the client and not yet acknowledged.
    pub inflight: AtomicU64,
    /// Data messages (`R/data/<host>`) acknowledged since start-up.
    pub data_messages: AtomicU64,
    /// Samples in those messages.
    pub data_samples: AtomicU64,
    /// Events, trigger states and config statuses acknowledged since start-up.
    pub uplink_messages: AtomicU64,
    /// Resend messages acknowledged since start-up.
    pub resend_messages: AtomicU64,
    /// Downlink commands received since start-up.
    pub commands: AtomicU64,
    /// Downlink messages answered on `R/rejected` since start-up.
    pub rejected: AtomicU64,
    last_error: Mutex<Option<(i64, String)>>,
    /// Newest sample's clock -> PUBACK of its data message, counted in
    /// [`DELAY_BUCKET_MS`] buckets.
    delays: Box<[AtomicU64]>,
}

impl Default for MqttStatus {
    fn default() -> Self {
        MqttStatus {
            connected: AtomicBool::new(false),
            published: AtomicU64::new(0),
            connect_errors: AtomicU64::new(0),
            enabled: AtomicBool::new(false),
            connected_since: AtomicI64::new(0),
            connects: AtomicU64::new(0),
            backlog: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            data_messages: AtomicU64::new(0),
            data_samples: AtomicU64::new(0),
            uplink_messages: AtomicU64::new(0),
            resend_messages: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            last_error: Mutex::new(None),
            delays: (0..DELAY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// A consistent-enough copy of [`MqttStatus`] for one `/health` answer.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct MqttSnapshot {
    pub enabled: bool,
    pub connected: bool,
    pub connected_since: Option<i64>,
    pub connects: u64,
    pub connect_errors: u64,
    pub backlog: u64,
    pub inflight: u64,
    pub published: u64,
    pub data_messages: u64,
    pub data_samples: u64,
    pub uplink_messages: u64,
    pub resend_messages: u64,
    pub commands: u64,
    pub rejected: u64,
    /// Unix seconds and text of the last connection or delivery problem.
    pub last_error: Option<(i64, String)>,
}

impl MqttStatus {
    pub fn new() -> Arc<MqttStatus> {
        Arc::new(MqttStatus::default())
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The last connection or delivery problem: (Unix seconds, text).
    pub fn last_error(&self) -> Option<(i64, String)> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn set_error(&self, text: String) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((crate::clock::unix_now(), text));
    }

    /// Every figure at once.
    pub fn snapshot(&self) -> MqttSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let since = self.connected_since.load(Ordering::Relaxed);
        MqttSnapshot {
            enabled: self.enabled.load(Ordering::Relaxed),
            connected: self.is_connected(),
            connected_since: (since > 0).then_some(since),
            connects: r(&self.connects),
            connect_errors: r(&self.connect_errors),
            backlog: r(&self.backlog),
            inflight: r(&self.inflight),
            published: r(&self.published),
            data_messages: r(&self.data_messages),
            data_samples: r(&self.data_samples),
            uplink_messages: r(&self.uplink_messages),
            resend_messages: r(&self.resend_messages),
            commands: r(&self.commands),
            rejected: r(&self.rejected),
            last_error: self.last_error(),
        }
    }

    pub(crate) fn record_delay(&self, millis: u64) {
        let i = ((millis / DELAY_BUCKET_MS) as usize).min(DELAY_BUCKETS - 1);
        self.delays[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The delay histogram: count per bucket of [`DELAY_BUCKET_MS`] (bucket `i`
    /// holds delays in `[i, i+1) * DELAY_BUCKET_MS`; the last one everything longer).
    /// The delay is measured from the newest sample's clock (whole seconds) of a
    /// data message to the broker's PUBACK for it.
    pub fn delay_histogram(&self) -> Vec<u64> {
        self.delays
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    /// The `q` quantile (0..=1) of the delay histogram, as the upper edge of its
    /// bucket in milliseconds; None before the first data message.
    pub fn delay_quantile(&self, q: f64) -> Option<u64> {
        quantile(&self.delay_histogram(), q)
    }
}

fn quantile(hist: &[u64], q: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q.clamp(0.0, 1.0)).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some((i as u64 + 1) * DELAY_BUCKET_MS);
        }
    }
    Some(hist.len() as u64 * DELAY_BUCKET_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_quantiles_come_from_the_histogram() {
        let s = MqttStatus::default();
        assert_eq!(s.delay_quantile(0.99), None);
        for ms in 0..100 {
            s.record_delay(200 + ms);
        }
        s.record_delay(5_000);
        s.record_delay(1_000_000);
        assert_eq!(s.delay_quantile(0.5), Some(260));
        assert_eq!(s.delay_quantile(0.98), Some(300));
        assert_eq!(s.delay_quantile(0.99), Some(5_010));
        assert_eq!(s.delay_quantile(1.0), Some(DELAY_BUCKETS as u64 * 10));
        assert_eq!(s.delay_histogram().iter().sum::<u64>(), 102);
    }
}
