//! Queries on the readers' connections: history read newest-first to find
//! where the answer starts, then streamed oldest-first, so that a query holds
//! no more points than it returns; trends; the outbox.

use std::collections::VecDeque;

use rusqlite::{params, Connection, Transaction};

use super::{codec, HistorySink, ItemId, StoreError, TrendBucket};

/// What a history read returns at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimit {
    /// The newest this many points (`limit`).
    pub newest: Option<usize>,
    /// Refuse an answer of more than this many points (the API's cap).
    pub cap: Option<usize>,
}

/// Where a history answer starts, found newest-first from the chunks' counts.
#[derive(Debug)]
struct Plan {
    /// Start of the oldest chunk that contributes, if any does.
    first_chunk: Option<i64>,
    /// In-range points of that chunk to leave out (older than the answer).
    skip: usize,
    /// How many of the uncompacted (journal) points to send: their newest.
    journal: VecDeque<(i64, f64)>,
    /// Points in the answer.
    total: usize,
}

/// Too many points for the cap: at least `at_least` are in the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    pub at_least: usize,
}

/// Reads the history of `item` (of host `host_id`) in `[from, to]`, ascending,
/// limited as `limit` says, handing the points to `sink` in batches. One read transaction: chunks and journal rows from
/// the same snapshot, so a compaction in between can neither hide nor
/// duplicate points. `Ok(Err(..))` when the answer would exceed the cap (then
/// nothing was handed over).
pub fn history(
    conn: &Connection,
    item: ItemId,
    host_id: u32,
    (from, to): (i64, i64),
    limit: HistoryLimit,
    sink: &mut impl HistorySink,
) -> Result<Result<usize, OverCap>, StoreError> {
    let tx = conn.unchecked_transaction()?;
    let plan = match plan(&tx, item, host_id, (from, to), limit)? {
        Ok(plan) => plan,
        Err(over) => return Ok(Err(over)),
    };
    if !sink.start(plan.total) {
        return Ok(Ok(0));
    }
    let mut out = Out {
        batch: Vec::with_capacity(BATCH),
        sink,
        skip: plan.skip,
        left: plan.total,
        sent: 0,
        open: true,
    };
    // Journal points are merged in by clock: after a step back of the wall
    // clock they can be older than stored chunks (a later compaction puts
    // them into the chunks they fall in).
    let mut journal = plan.journal;
    if let Some(first) = plan.first_chunk {
        let mut st = tx.prepare_cached(
            "SELECT data FROM history WHERE item_id = ?1 AND start >= ?2 AND start <= ?3 ORDER BY start",
        )?;
        let mut rows = st.query(params![item, first, to])?;
        while let Some(row) = rows.next()? {
            let blob = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
            codec::decode_chunk(blob, |c, v| {
                if c < from || c > to {
                    return;
                }
                while let Some(j) = journal.front().copied().filter(|j| j.0 < c) {
                    journal.pop_front();
                    out.push(j);
                }
                out.push((c, v));
            })?;
            if !out.wants_more() {
                break;
            }
        }
    }
    for p in journal {
        if !out.wants_more() {
            break;
        }
        out.push(p);
    }
    let Out {
        batch,
        sink,
        sent,
        mut open,
        ..
    } = out;
    if open && !batch.is_empty() {
        open = sink.points(&batch);
    }
    if open {
        sink.end();
    }
    Ok(Ok(sent))
}

/// Points handed to a sink at a time.
const BATCH: usize = 4096;

/// The answer being handed over: the oldest `skip` points left out, then
/// `left` points in batches.
struct Out<'a, S: HistorySink> {
    batch: Vec<(i64, f64)>,
    sink: &'a mut S,
    skip: usize,
    left: usize,
    sent: usize,
    open: bool,
}

impl<S: HistorySink> Out<'_, S> {
    fn wants_more(&self) -> bool {
        self.open && self.left > 0
    }

    fn push(&mut self, p: (i64, f64)) {
        if !self.wants_more() {
            return;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return;
        }
        self.batch.push(p);
        self.sent += 1;
        self.left -= 1;
        if self.batch.len() >= BATCH {
            self.open = self.sink.points(&self.batch);
            self.batch.clear();
        }
    }
}

/// Counts newest-first (the chunks' `n`, decoding only chunks that straddle
/// the range's ends) until the answer is complete.
fn plan(
    tx: &Transaction<'_>,
    item: ItemId,
    host_id: u32,
    (from, to): (i64, i64),
    limit: HistoryLimit,
) -> Result<Result<Plan, OverCap>, StoreError> {
    let newest = limit.newest.unwrap_or(usize::MAX);
    // Enough to tell an answer over the cap.
    let need = newest.min(limit.cap.map_or(usize::MAX, |c| c.saturating_add(1)));
    let over = |n: usize| limit.cap.is_some_and(|c| n.min(newest) > c);
    let (journal_total, journal) = journal_points(tx, item, host_id, (from, to), need)?;
    if journal_total >= need {
        if over(journal_total) {
            return Ok(Err(OverCap {
                at_least: journal_total,
            }));
        }
        let total = journal.len();
        return Ok(Ok(Plan {
            first_chunk: None,
            skip: 0,
            journal,
            total,
        }));
    }
    let chunk_need = need - journal_total;
    let mut st = tx.prepare_cached(
        "SELECT start, end, n, data FROM history WHERE item_id = ?1
           AND start >= coalesce((SELECT max(start) FROM history WHERE item_id = ?1 AND start <= ?2), ?2)
           AND start <= ?3
         ORDER BY start DESC",
    )?;
    let mut rows = st.query(params![item, from, to])?;
    let mut counted = 0usize;
    let mut oldest: Option<(i64, usize)> = None;
    while counted < chunk_need {
        let Some(row) = rows.next()? else { break };
        let (start, end, n): (i64, i64, i64) = (row.get(0)?, row.get(1)?, row.get(2)?);
        let in_range = if start >= from && end <= to {
            usize::try_from(n).unwrap_or(0)
        } else {
            let blob = row.get_ref(3)?.as_blob().map_err(rusqlite::Error::from)?;
            let mut k = 0usize;
            codec::decode_chunk(blob, |c, _| k += usize::from(c >= from && c <= to))?;
            k
        };
        if in_range > 0 {
            counted += in_range;
            oldest = Some((start, in_range));
        }
    }
    let seen = counted + journal_total;
    if over(seen) {
        return Ok(Err(OverCap { at_least: seen }));
    }
    let total = seen.min(newest);
    Ok(Ok(Plan {
        first_chunk: oldest.map(|(start, _)| start),
        skip: seen - total,
        journal,
        total,
    }))
}

/// The item's points in uncompacted journal rows in the range: how many, and
/// the newest `keep` of them by clock, ascending.
fn journal_points(
    tx: &Transaction<'_>,
    item: ItemId,
    host_id: u32,
    (from, to): (i64, i64),
    keep: usize,
) -> Result<(usize, VecDeque<(i64, f64)>), StoreError> {
    let mut st = tx.prepare_cached(
        "SELECT data FROM journal WHERE host_id = ?1 AND compacted = 0
           AND clock_max >= ?2 AND clock_min <= ?3 ORDER BY seq",
    )?;
    let mut rows = st.query(params![host_id, from, to])?;
    let mut points = Vec::new();
    while let Some(row) = rows.next()? {
        let blob = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
        codec::decode_row(blob, |i, c, v| {
            if i == item && c >= from && c <= to {
                points.push((c, v));
            }
        })?;
    }
    // Arrival order is clock order but across a step back of the wall clock.
    // Stable: points sharing a second stay in arrival order.
    points.sort_by_key(|p| p.0);
    let total = points.len();
    let mut points = VecDeque::from(points);
    while points.len() > keep {
        points.pop_front();
    }
    Ok((total, points))
}

/// Stored hourly trend buckets of an item with hours in `[lo, to]`, ascending.
pub fn trend(
    conn: &Connection,
    item: ItemId,
    lo: i64,
    to: i64,
) -> Result<Vec<(i64, TrendBucket)>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT hour, num, min, avg, max FROM trend WHERE item_id = ?1 AND hour >= ?2 AND hour <= ?3 ORDER BY hour",
    )?;
    let rows = st.query_map(params![item, lo, to], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            TrendBucket {
                num: r.get::<_, i64>(1)?.max(0) as u64,
                min: r.get(2)?,
                avg: r.get(3)?,
                max: r.get(4)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}
