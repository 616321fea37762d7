//! The task of one host: waits for whatever comes first (shutdown, a config
//! request, the next due read), runs config requests ahead of the reads, reads
//! what the schedule says is due, and hands the results to the live state and
//! the store. The decisions it follows live in the sibling modules.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::config_requests::HostConfigRequests;
use crate::modbus::Backoff;
use crate::store::{ItemId, Store};

use super::live::{apply_readings, apply_written, HostLiveHandle};
use super::reader::HostReader;
use super::schedule::Schedule;

/// Where a host task sends its results.
pub struct Outputs {
    pub live: HostLiveHandle,
    pub store: Option<Store>,
    /// Store ids by item index (None where the store has no id).
    pub item_ids: Vec<Option<ItemId>>,
}

/// The polling task of one host. Returns when `shutdown` is cancelled.
pub async fn run_host(reader: HostReader, outputs: Outputs, shutdown: CancellationToken) {
    run_host_with_writes(reader, outputs, None, shutdown).await;
}

/// Waits for a new config request, forever without a write queue.
async fn write_arrived(writes: &mut Option<HostConfigRequests>) {
    match writes {
        Some(w) => w.arrived().await,
        None => std::future::pending().await,
    }
}

/// The task of one host: its config requests (ahead of its reads, as soon as
/// they arrive) and its polling. Returns when `shutdown` is cancelled.
pub async fn run_host_with_writes(
    mut reader: HostReader,
    outputs: Outputs,
    mut writes: Option<HostConfigRequests>,
    shutdown: CancellationToken,
) {
    let host = reader.host().clone();
    let mut backoff = Backoff::for_host(&host);
    // The first poll of every host starts right after start-up.
    let mut schedule = Schedule::new(&host, Instant::now());
    let mut first_answer = true;
    tracing::info!(host = %host.host, connection = %host.connection, items = host.items.len(), "polling");
    loop {
        let mut wake = schedule.next_wake();
        if let Some(at) = writes.as_ref().and_then(HostConfigRequests::next_wake) {
            wake = wake.min(at);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            () = write_arrived(&mut writes) => {}
            () = tokio::time::sleep_until(wake) => {}
        }
        // Config requests go ahead of the reads.
        if let Some(w) = writes.as_mut() {
            w.run_due(&host, reader.link(), |written| {
                let sample = apply_written(&mut outputs.live.lock(), written, &outputs.item_ids);
                if let (Some(store), Some(sample)) = (&outputs.store, sample) {
                    store.push(&[sample]);
                }
            })
            .await;
        }
        let now = Instant::now();
        let wall = clock::since_epoch();
        let planned = schedule.next_wake();
        let Some(due) = schedule.take_due(now, wall) else {
            continue;
        };
        outputs
            .live
            .lock()
            .observe_lateness(now.saturating_duration_since(planned));
        let clock = clock::unix_now();
        let report = reader.read(&due).await;
        drop(due);
        if report.unanswered().is_some() {
            let wait = backoff.fail();
            let failed: Vec<usize> = report
                .readings
                .iter()
                .filter(|r| r.value.is_err())
                .map(|r| r.index)
                .collect();
            // Retry only if that comes before the items' next regular poll.
            schedule.retry(Instant::now() + wait, failed);
            tracing::debug!(host = %host.host, retry_in = ?wait, "device did not answer; backing off");
        } else {
            if first_answer || backoff.failures() > 0 {
                let ok = report.readings.iter().filter(|r| r.value.is_ok()).count();
                tracing::info!(
                    host = %host.host,
                    items_read = ok,
                    items_failed = report.readings.len() - ok,
                    requests = report.requests,
                    "device answers"
                );
                first_answer = false;
            }
            backoff.reset();
            if let Some(w) = writes.as_mut() {
                w.device_answered();
            }
        }
        let samples = {
            let mut live = outputs.live.lock();
            apply_readings(&host, &mut live, &report, clock, &outputs.item_ids)
        };
        if let Some(store) = &outputs.store {
            if !samples.is_empty() {
                store.push(&samples);
                store.wait_if_backlogged(Duration::from_millis(200)).await;
            }
        }
        outputs.live.cycle_done();
    }
}
