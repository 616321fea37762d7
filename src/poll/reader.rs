//! Reading a host's items once: plan the fewest requests, send them on the
//! host's link, decode the answers, and narrow a refused merged read down to
//! the items that cause the refusal (remembered as cuts for later plans, for
//! [`CUT_LIFETIME`]). Only exceptions about the request itself (01, 02, 03)
//! teach cuts; the others mean "not now" and end the cycle like a timeout.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::decode;
use crate::modbus::{Buses, Link, Operation, Priority, ReadData, RequestError};
use crate::model::{HostSpec, Table};
use crate::plan::{self, ReadRequest};

const SHORT_ANSWER: &str = "the device's answer was too short";

/// How long a learned cut is kept. Then merged reads are tried again, so a
/// device whose firmware changed is not split for ever; a cut that still
/// holds is learned again from the next refusal.
pub const CUT_LIFETIME: Duration = Duration::from_secs(3600);

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
    /// Each cut with the instant it is forgotten.
    cuts: BTreeMap<(Table, u16), Instant>,
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
    /// Set when the device answered "not now" (an exception other than 01,
    /// 02, 03): the link stays, the cycle ended there, the host backs off.
    pub busy: Option<RequestError>,
    /// Latency of each answered request, seconds.
    pub latencies: Vec<f64>,
}

impl CycleReport {
    /// Why the device did not answer the cycle to the end (a transport
    /// failure or a "not now" exception): the host backs off.
    pub fn unanswered(&self) -> Option<&RequestError> {
        self.transport_error.as_ref().or(self.busy.as_ref())
    }
}

impl HostReader {
    /// A reader for a host; serial hosts share `buses`.
    pub fn new(host: Arc<HostSpec>, buses: &Buses) -> HostReader {
        let link = Link::new(&host, buses);
        HostReader {
            host,
            link,
            cuts: BTreeMap::new(),
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
        self.forget_old_cuts(Instant::now());
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
        self.cuts.keys().copied().collect()
    }

    /// Drops the cuts whose time is up (and the plans made with them).
    fn forget_old_cuts(&mut self, now: Instant) {
        let before = self.cuts.len();
        self.cuts.retain(|_, until| *until > now);
        if self.cuts.len() != before {
            tracing::info!(host = %self.host.host, cuts = ?self.cuts.keys(), "forgetting old cuts; merged reads are tried again");
            self.plans.clear();
        }
    }

    fn learn_cut(&mut self, table: Table, at: u16, now: Instant) {
        self.cuts.insert((table, at), now + CUT_LIFETIME);
    }

    /// Reads the given items (sorted indices into the host's items) once.
    pub async fn read(&mut self, items: &[usize]) -> CycleReport {
        // Proxied requests on this link wait for the cycle's end.
        let _cycle = self.link.cycle().await;
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
                Err(e) if !e.is_transport() && !e.refuses_request() => {
                    report.request_errors += 1;
                    tracing::info!(
                        host = %self.host.host,
                        table = %req.table,
                        start = req.start,
                        count = req.count,
                        error = %e,
                        "the device cannot answer now; backing off"
                    );
                    let text: Arc<str> = format!("{e} reading {} {}", req.table, req.start).into();
                    fail_rest(
                        &mut report,
                        &text,
                        &req,
                        &pending,
                        plan.get(next..).unwrap_or_default(),
                    );
                    report.busy = Some(e);
                    break;
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
                    fail_rest(&mut report, &text, &req, &pending, rest);
                    report.transport_error = Some(e);
                    break;
                }
            }
        }
        // A cycle the device did not answer to the end teaches nothing.
        if report.transport_error.is_none() && report.busy.is_none() {
            let now = Instant::now();
            for req in &narrowed {
                self.learn_cuts(req, &report.readings, now);
            }
        }
        report.readings.sort_by_key(|r| r.index);
        report
    }

    /// Remembers why a merged request was refused: items refused alone are cut
    /// off on both sides; if every item reads fine alone, the device refuses
    /// some unused register in a gap, so the gaps of that request are cut.
    fn learn_cuts(&mut self, req: &ReadRequest, readings: &[ItemReading], now: Instant) {
        let refused = |i: usize| {
            readings.iter().any(|r| {
                r.index == i && matches!(&r.value, Err(e) if e.starts_with("Modbus exception"))
            })
        };
        let mut any_refused = false;
        for &i in &req.items {
            if refused(i) {
                any_refused = true;
                let (table, address, end) = {
                    let item = &self.host.items[i];
                    (item.table, item.address, item.end())
                };
                self.learn_cut(table, address, now);
                if let Some(after) = end.checked_add(1) {
                    self.learn_cut(table, after, now);
                }
            }
        }
        if !any_refused {
            let mut end: Option<u16> = None;
            for &i in &req.items {
                let (table, address, item_end) = {
                    let item = &self.host.items[i];
                    (item.table, item.address, item.end())
                };
                if let Some(e) = end {
                    if address > e + 1 {
                        self.learn_cut(table, address, now);
                    }
                }
                end = Some(end.map_or(item_end, |e| e.max(item_end)));
            }
        }
        tracing::info!(host = %self.host.host, cuts = ?self.cuts.keys(), "remembering where the device refuses merged reads");
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

/// Marks every item of `req`, of the narrowing requests `pending` and of the
/// plan's `rest` in error with `text`: the cycle ends here.
fn fail_rest(
    report: &mut CycleReport,
    text: &Arc<str>,
    req: &ReadRequest,
    pending: &[ReadRequest],
    rest: &[ReadRequest],
) {
    for r in std::iter::once(req).chain(pending).chain(rest) {
        for &i in &r.items {
            report.readings.push(ItemReading {
                index: i,
                value: Err(text.clone()),
            });
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
