//! One task per host: when items are due, read them with the fewest requests,
//! decode them, keep the live state the API shows, and hand good samples to the store.
//!
//! Invariants:
//! - only a host's task touches its link (serial hosts share a bus through it);
//! - a failed item keeps its last value and clock, never re-stamped, and produces no sample;
//! - a Modbus exception on a merged read blinds only the items that cause it:
//!   they are found by reading each item alone, and read alone from then on.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config_requests::{CarriedOut, HostConfigRequests};
use crate::decode;
use crate::modbus::{Backoff, Buses, Link, Operation, Priority, ReadData, RequestError};
use crate::model::{HostSpec, Table};
use crate::plan::{self, ReadRequest};
use crate::store::{ItemId, Sample, Store};

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

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
    /// The last cycle reached the device.
    pub link_up: bool,
    /// Unix seconds of the last cycle that reached the device.
    pub last_ok: Option<i64>,
    /// Cycles in a row that failed on the transport.
    pub consecutive_errors: u32,
    pub last_error: Option<String>,
    pub polls: u64,
    pub requests: u64,
    pub request_errors: u64,
    /// Request latency histogram, counts per bucket of [`LATENCY_BUCKETS`] (+Inf last).
    pub latency_buckets: Vec<u64>,
    pub latency_sum: f64,
    /// Per item, in the host's item order.
    pub items: Vec<ItemLive>,
}

/// Upper bounds, in seconds, of the request latency histogram.
pub const LATENCY_BUCKETS: [f64; 10] = [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

impl HostLive {
    /// A fresh state for a host's items.
    pub fn new(items: usize) -> HostLive {
        HostLive {
            items: vec![ItemLive::default(); items],
            latency_buckets: vec![0; LATENCY_BUCKETS.len() + 1],
            ..HostLive::default()
        }
    }

    fn observe_latency(&mut self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(b) = self.latency_buckets.get_mut(i) {
            *b += 1;
        }
        self.latency_sum += seconds;
    }
}

/// A host's live state, shared between its task and the API, with a counter
/// of finished poll cycles that others can await.
#[derive(Debug)]
pub struct HostShared {
    live: Mutex<HostLive>,
    cycles: tokio::sync::watch::Sender<u64>,
}

impl HostShared {
    /// Fresh state for a host with `items` items.
    pub fn new(items: usize) -> SharedHost {
        Arc::new(HostShared {
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

    fn cycle_done(&self) {
        self.cycles.send_modify(|n| *n += 1);
    }
}

/// A host's shared live state.
pub type SharedHost = Arc<HostShared>;

const SHORT_ANSWER: &str = "the device's answer was too short";

/// The result of reading one item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemReading {
    /// Index into the host's items.
    pub index: usize,
    /// The engineering value, or why there is none (shared by every item of
    /// a failed request).
    pub value: Result<f64, Arc<str>>,
}

/// Reads a host's items: plans, requests, narrows exceptions, decodes.
pub struct HostReader {
    host: Arc<HostSpec>,
    link: Link,
    /// Learned from exceptions: a cut `(table, c)` means no merged request may
    /// cover both `c - 1` and `c`. A refused item gets cuts on both sides (it
    /// is read alone); a refused gap between items gets a cut at the next item.
    cuts: BTreeSet<(Table, u16)>,
    /// Plans by the set of due items, so a recurring cycle is planned once.
    /// Plans by the set of items they read (as u32: half the memory).
    plans: HashMap<Box<[u32]>, Arc<[ReadRequest]>>,
}

/// What one cycle did on the wire.
#[derive(Debug, Default)]
pub struct CycleReport {
    pub readings: Vec<ItemReading>,
    pub requests: u64,
    pub request_errors: u64,
    /// Set when the transport failed: the link was dropped.
    pub transport_error: Option<RequestError>,
    /// Latency of each answered request, seconds.
    pub latencies: Vec<f64>,
}

impl HostReader {
    /// A reader for a host; serial hosts share `buses`.
    pub fn new(host: Arc<HostSpec>, buses: &Buses) -> HostReader {
        let link = Link::new(&host, buses);
        HostReader {
            host,
            link,
            cuts: BTreeSet::new(),
            plans: HashMap::new(),
        }
    }

    /// The host.
    pub fn host(&self) -> &Arc<HostSpec> {
        &self.host
    }

    /// The link, for writes.
    pub fn link(&mut self) -> &mut Link {
        &mut self.link
    }

    /// The requests that read `items` (sorted indices) now: the planner's
    /// fewest requests, but never across a learned cut.
    pub fn requests_for(&mut self, items: &[usize]) -> Arc<[ReadRequest]> {
        let key: Box<[u32]> = items.iter().map(|&i| i as u32).collect();
        if let Some(p) = self.plans.get(&key) {
            return p.clone();
        }
        let mut sorted: Vec<usize> = items.to_vec();
        sorted.sort_by_key(|&i| {
            let it = &self.host.items[i];
            (it.table, it.address, it.end())
        });
        let mut requests = Vec::new();
        let mut segment: Vec<usize> = Vec::new();
        let mut segment_end: Option<(Table, u16)> = None;
        for i in sorted {
            let item = &self.host.items[i];
            let split = match segment_end {
                None => false,
                Some((table, _)) if table != item.table => true,
                Some((table, end)) => {
                    end < item.address
                        && self
                            .cuts
                            .range((table, end + 1)..=(table, item.address))
                            .next()
                            .is_some()
                }
            };
            if split {
                requests.extend(plan::plan_items(&self.host, &segment));
                segment.clear();
                segment_end = None;
            }
            segment.push(i);
            segment_end = Some(match segment_end {
                Some((t, e)) => (t, e.max(item.end())),
                None => (item.table, item.end()),
            });
        }
        if !segment.is_empty() {
            requests.extend(plan::plan_items(&self.host, &segment));
        }
        let requests: Arc<[ReadRequest]> = requests.into();
        self.plans.insert(key, requests.clone());
        requests
    }

    /// The cuts learned so far (for tests and diagnostics).
    pub fn cuts(&self) -> Vec<(Table, u16)> {
        self.cuts.iter().copied().collect()
    }

    /// Reads the given items (sorted indices into the host's items) once.
    pub async fn read(&mut self, items: &[usize]) -> CycleReport {
        let mut report = CycleReport::default();
        let plan = self.requests_for(items);
        // The plan's requests are taken one at a time; `pending` holds the
        // single-item requests of a merged read being narrowed, read first.
        let mut next = 0;
        let mut pending: Vec<ReadRequest> = Vec::new();
        // Merged requests refused with an exception, whose items are being read alone.
        let mut narrowed: Vec<ReadRequest> = Vec::new();
        loop {
            let req = match pending.pop() {
                Some(r) => r,
                None => match plan.get(next) {
                    Some(r) => {
                        next += 1;
                        r.clone()
                    }
                    None => break,
                },
            };
            let op = Operation::Read {
                table: req.table,
                start: req.start,
                count: req.count,
            };
            let started = Instant::now();
            let result = self.link.request(&op, Priority::Poll).await;
            report.requests += 1;
            match result {
                Ok(data) => {
                    report.latencies.push(started.elapsed().as_secs_f64());
                    self.decode_into(&req, &data, &mut report.readings);
                }
                Err(RequestError::Exception(code)) if req.items.len() > 1 => {
                    report.request_errors += 1;
                    tracing::info!(
                        host = %self.host.host,
                        table = %req.table,
                        start = req.start,
                        count = req.count,
                        exception = %crate::modbus::exception_name(code),
                        "merged read refused; reading its items one by one"
                    );
                    for &i in req.items.iter().rev() {
                        pending.push(single_request(&self.host, i));
                    }
                    narrowed.push(req);
                }
                Err(RequestError::Exception(code)) => {
                    report.request_errors += 1;
                    let text: Arc<str> = format!(
                        "Modbus exception {} reading {} {}",
                        crate::modbus::exception_name(code),
                        req.table,
                        req.start
                    )
                    .into();
                    for &i in &req.items {
                        report.readings.push(ItemReading {
                            index: i,
                            value: Err(text.clone()),
                        });
                    }
                }
                Err(e) => {
                    report.request_errors += 1;
                    let text: Arc<str> = e.to_string().into();
                    let rest = plan.get(next..).unwrap_or_default();
                    for r in std::iter::once(&req).chain(pending.iter()).chain(rest) {
                        for &i in &r.items {
                            report.readings.push(ItemReading {
                                index: i,
                                value: Err(text.clone()),
                            });
                        }
                    }
                    report.transport_error = Some(e);
                    break;
                }
            }
        }
        if report.transport_error.is_none() {
            for req in &narrowed {
                self.learn_cuts(req, &report.readings);
            }
        }
        report.readings.sort_by_key(|r| r.index);
        report
    }

    /// Remembers why a merged request was refused: items refused alone are cut
    /// off on both sides; if every item reads fine alone, the device refuses
    /// some unused register in a gap, so the gaps of that request are cut.
    fn learn_cuts(&mut self, req: &ReadRequest, readings: &[ItemReading]) {
        let refused = |i: usize| {
            readings.iter().any(|r| {
                r.index == i && matches!(&r.value, Err(e) if e.starts_with("Modbus exception"))
            })
        };
        let mut any_refused = false;
        for &i in &req.items {
            if refused(i) {
                any_refused = true;
                let item = &self.host.items[i];
                self.cuts.insert((item.table, item.address));
                if let Some(after) = item.end().checked_add(1) {
                    self.cuts.insert((item.table, after));
                }
            }
        }
        if !any_refused {
            let mut end: Option<u16> = None;
            for &i in &req.items {
                let item = &self.host.items[i];
                if let Some(e) = end {
                    if item.address > e + 1 {
                        self.cuts.insert((item.table, item.address));
                    }
                }
                end = Some(end.map_or(item.end(), |e| e.max(item.end())));
            }
        }
        tracing::info!(host = %self.host.host, cuts = ?self.cuts, "remembering where the device refuses merged reads");
        self.plans.clear();
    }

    fn decode_into(&self, req: &ReadRequest, data: &ReadData, out: &mut Vec<ItemReading>) {
        for &i in &req.items {
            let item = &self.host.items[i];
            let offset = usize::from(item.address - req.start);
            let value = match data {
                ReadData::Words(words) => {
                    let width = usize::from(item.width());
                    match words.get(offset..offset + width) {
                        Some(slice) => {
                            decode::decode_item(item, slice).map_err(|e| e.to_string().into())
                        }
                        None => Err(SHORT_ANSWER.into()),
                    }
                }
                ReadData::Bits(bits) => match bits.get(offset) {
                    Some(b) => Ok(decode::decode_bit_item(item, *b)),
                    None => Err(SHORT_ANSWER.into()),
                },
            };
            let value = value.and_then(|v| {
                if v.is_finite() {
                    Ok(v)
                } else {
                    Err(format!("the device sent a value that is not a number ({v})").into())
                }
            });
            out.push(ItemReading { index: i, value });
        }
    }
}

/// A request reading one item alone.
fn single_request(host: &HostSpec, index: usize) -> ReadRequest {
    let item = &host.items[index];
    ReadRequest {
        table: item.table,
        start: item.address,
        count: item.width(),
        items: vec![index],
    }
}

/// The instant of the next multiple of `interval` since the Unix epoch, so that
/// hosts sharing an interval are polled at the same instant (one wake-up serves them all).
pub fn next_aligned(interval: Duration) -> Instant {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    let step = interval.as_micros().max(1000);
    let next = (now / step + 1) * step;
    let wait = u64::try_from(next - now).unwrap_or(0);
    Instant::now() + Duration::from_micros(wait)
}

/// Groups of item indices sharing a poll interval, ascending by interval.
fn interval_groups(host: &HostSpec) -> Vec<(Duration, Vec<usize>)> {
    let mut groups: Vec<(Duration, Vec<usize>)> = Vec::new();
    for (i, item) in host.items.iter().enumerate() {
        match groups.iter_mut().find(|(d, _)| *d == item.poll_interval) {
            Some((_, v)) => v.push(i),
            None => groups.push((item.poll_interval, vec![i])),
        }
    }
    groups.sort_by_key(|(d, _)| *d);
    groups
}

/// Where a host task sends its results.
pub struct Outputs {
    pub live: SharedHost,
    pub store: Option<Store>,
    /// Store ids by item index (None where the store has no id).
    pub item_ids: Vec<Option<ItemId>>,
}

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
    match &report.transport_error {
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

/// A value written and read back: the item's live state and a sample.
///
/// History holds at most one point per item and second, in clock order: a
/// value read back within the second of the item's last sample is stamped one
/// second after it, so that the written value is a history point.
fn apply_written(outputs: &Outputs, written: CarriedOut) {
    let sample = {
        let mut live = outputs.live.lock();
        let Some(item) = live.items.get_mut(written.index) else {
            return;
        };
        let clock = match item.clock {
            Some(last) if last >= written.clock => last + 1,
            _ => written.clock,
        };
        item.value = Some(written.value);
        item.clock = Some(clock);
        item.state = ItemState::Ok;
        item.error = None;
        match outputs.item_ids.get(written.index) {
            Some(Some(id)) => Some(Sample {
                item: *id,
                clock,
                value: written.value,
            }),
            _ => None,
        }
    };
    if let (Some(store), Some(sample)) = (&outputs.store, sample) {
        store.push(&[sample]);
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
    let groups = interval_groups(&host);
    let mut backoff = Backoff::for_host(&host);
    // The first poll of every host starts right after start-up.
    let start = Instant::now();
    let mut next_due: Vec<Instant> = vec![start; groups.len()];
    // Items whose read failed on the transport, retried after the backoff.
    let mut retry: Option<(Instant, Vec<usize>)> = None;
    let mut first_answer = true;
    tracing::info!(host = %host.host, connection = %host.connection, items = host.items.len(), "polling");
    loop {
        let mut wake = next_due
            .iter()
            .copied()
            .min()
            .unwrap_or(start + Duration::from_secs(3600));
        if let Some((at, _)) = &retry {
            wake = wake.min(*at);
        }
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
                apply_written(&outputs, written)
            })
            .await;
        }
        let now = Instant::now();
        // A little slack so that groups due within the same millisecond merge.
        let horizon = now + Duration::from_millis(2);
        let mut due_groups = groups
            .iter()
            .enumerate()
            .filter(|(g, _)| next_due[*g] <= horizon)
            .map(|(g, (interval, _))| (g, *interval))
            .collect::<Vec<_>>();
        for &(g, interval) in &due_groups {
            next_due[g] = next_aligned(interval);
        }
        let retry_due = match retry.take() {
            Some((at, items)) if at <= horizon => Some(items),
            other => {
                retry = other;
                None
            }
        };
        // The common case, one group due and nothing to retry, reads the
        // group's own (sorted) list without copying it.
        let merged: Vec<usize>;
        let due: &[usize] = match (due_groups.as_slice(), retry_due) {
            ([], None) => continue,
            ([(g, _)], None) => &groups[*g].1,
            (_, extra) => {
                let mut all: Vec<usize> = due_groups
                    .drain(..)
                    .flat_map(|(g, _)| groups[g].1.iter().copied())
                    .chain(extra.into_iter().flatten())
                    .collect();
                all.sort_unstable();
                all.dedup();
                merged = all;
                &merged
            }
        };
        let clock = unix_now();
        let report = reader.read(due).await;
        if report.transport_error.is_some() {
            let wait = backoff.fail();
            let failed: Vec<usize> = report
                .readings
                .iter()
                .filter(|r| r.value.is_err())
                .map(|r| r.index)
                .collect();
            // Retry only if that comes before the items' next regular poll.
            retry = Some((Instant::now() + wait, failed));
            tracing::debug!(host = %host.host, retry_in = ?wait, "transport failed; backing off");
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
