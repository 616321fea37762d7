//! The writer thread: deadband, trends, commits, compaction, retention, size cap.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::codec::{self, RowBuilder};
use super::ItemSetting;
use super::{
    lock, Inner, ItemId, Packed, Settings, StoreError, TrendAcc, CHUNK_TARGET_BYTES,
    MAX_MESSAGE_JSON_BYTES, MAX_POINTS_PER_MESSAGE,
};
use crate::model::StorageSpec;

pub(super) struct Backlog {
    pub(super) points: u64,
    since: Instant,
}

pub(crate) struct Writer {
    pub(super) inner: Arc<Inner>,
    pub(super) conn: Connection,
    pub(super) storage: StorageSpec,
    pub(super) sent_on_insert: bool,
    /// `[mqtt]` is configured: its `sent` marks pin rows.
    pub(super) has_mqtt: bool,
    /// `[sparkplug]` is configured: its position pins the rows after it.
    pub(super) has_sparkplug: bool,
    /// Sparkplug's position as committed (what deleting may rely on).
    pub(super) spb_committed: u64,
    /// Indexed by item id.
    pub(super) items: Vec<ItemSetting>,
    /// See [`ItemSetting::deadband`].
    pub(super) deadbands: Vec<f64>,
    /// History points not yet committed, in arrival order (so in clock order
    /// per item): (item, clock, value); 16 bytes each.
    pub(super) pending: Vec<(ItemId, u32, f64)>,
    /// Reused per commit: one item's points.
    pub(super) scratch: Vec<(i64, f64)>,
    /// Trend contributions to hours already closed (late samples), merged on write.
    pub(super) late: HashMap<(ItemId, i64), TrendAcc>,
    /// Buckets of hours that closed, to write (replace).
    pub(super) closed: Vec<(ItemId, TrendAcc)>,
    pub(super) backlog: HashMap<u32, Backlog>,
    pub(super) last_trend_flush: Instant,
    pub(super) last_retention: Option<Instant>,
    pub(super) last_size_check: Instant,
    pub(super) spare: Vec<Packed>,
    pub(super) unknown_items: u64,
    pub(super) failing_since: Option<Instant>,
    pub(super) consecutive_failures: u64,
    /// Steps of the wall clock, looked for at every drain.
    pub(super) steps: crate::clock::StepWatch,
    /// Free space kept in a file next to the database, for deleting when the
    /// file system is full.
    pub(super) reserve: super::space::Reserve,
    /// Set while the file system is full (see `space.rs`).
    pub(super) full: Option<super::space::Full>,
    /// The WAL's size after recent commits (decaying), bytes.
    pub(super) wal_peak: u64,
}

/// Marks the writer dead however `run` ends (so flush/close never wait forever).
struct AliveGuard(Arc<Inner>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        let mut s = lock(&self.0.shared);
        s.writer_alive = false;
        s.closed = true;
        self.0.done.notify_all();
    }
}

/// Pending history points that trigger a commit before the tick.
const EARLY_COMMIT_POINTS: usize = 120_000;

impl Writer {
    pub fn new(
        inner: Arc<Inner>,
        conn: Connection,
        settings: Settings,
    ) -> Result<Writer, StoreError> {
        let inner_path = inner.path.clone();
        let reserve_bytes = super::space::reserve_bytes(
            &inner.opts,
            super::space::room_for(
                inner.path.parent().unwrap_or(&inner.path),
                settings.storage.max_size,
            ),
        );
        let mut w = Writer {
            inner,
            conn,
            storage: settings.storage.clone(),
            sent_on_insert: !settings.has_mqtt,
            has_mqtt: settings.has_mqtt,
            has_sparkplug: false,
            spb_committed: 0,
            items: Vec::new(),
            deadbands: Vec::new(),
            pending: Vec::new(),
            scratch: Vec::new(),
            late: HashMap::new(),
            closed: Vec::new(),
            backlog: HashMap::new(),
            last_trend_flush: Instant::now(),
            last_retention: None,
            last_size_check: Instant::now(),
            spare: Vec::new(),
            unknown_items: 0,
            failing_since: None,
            consecutive_failures: 0,
            steps: crate::clock::StepWatch::default(),
            reserve: super::space::Reserve::new(&inner_path, reserve_bytes),
            full: None,
            wal_peak: 0,
        };
        w.init_positions()?;
        w.apply_settings(settings);
        w.restore()?;
        w.check_room_at_open();
        Ok(w)
    }

    fn apply_settings(&mut self, s: Settings) {
        if self.storage.commit_interval != s.storage.commit_interval
            || self.storage.max_size != s.storage.max_size
        {
            tracing::info!(
                commit_interval = ?s.storage.commit_interval,
                max_size = s.storage.max_size,
                "store settings changed"
            );
        }
        self.storage = s.storage;
        self.sent_on_insert = !s.has_mqtt;
        self.has_mqtt = s.has_mqtt;
        if let Err(e) = self.set_sparkplug(s.has_sparkplug) {
            tracing::error!(error = %e, "store: cannot record the Sparkplug uplink's position");
        }
        for it in &mut self.items {
            it.active = false;
        }
        let n = s
            .items
            .iter()
            .map(|(id, _)| *id as usize + 1)
            .max()
            .unwrap_or(0);
        if self.items.len() < n {
            self.items.reserve_exact(n - self.items.len());
            self.items.resize(n, ItemSetting::default());
        }
        for (id, setting) in s.items {
            self.items[id as usize] = setting;
        }
        self.deadbands = s.deadbands;
        self.limit_wal();
    }

    /// The journal's newest seq, its floor and the native position, at open.
    fn init_positions(&mut self) -> Result<(), StoreError> {
        let last: i64 = self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'journal'",
                [],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        let min: Option<i64> = self
            .conn
            .query_row("SELECT min(seq) FROM journal", [], |r| r.get(0))?;
        let pos = &self.inner.pos;
        let last = last.max(0) as u64;
        pos.last_seq.store(last, Ordering::Relaxed);
        let floor = min.map_or(last, |m| (m.max(1) - 1) as u64);
        pos.floor.store(floor, Ordering::Relaxed);
        self.refresh_native()
    }

    /// The native uplink's position: before the lowest unsent row (all
    /// rows count as delivered without `[mqtt]`).
    pub(super) fn refresh_native(&mut self) -> Result<(), StoreError> {
        let pos = &self.inner.pos;
        let last = pos.last_seq.load(Ordering::Relaxed);
        let native = if self.has_mqtt {
            let min: Option<i64> =
                self.conn
                    .query_row("SELECT min(seq) FROM journal WHERE sent = 0", [], |r| {
                        r.get(0)
                    })?;
            min.map_or(last, |m| (m.max(1) - 1) as u64)
        } else {
            last
        };
        pos.native.store(native, Ordering::Relaxed);
        Ok(())
    }

    /// Adopts whether `[sparkplug]` is configured: its position row is made
    /// (at the newest row: what came before is not its backlog) or read
    /// when it is, and dropped when it is not, so it pins nothing.
    fn set_sparkplug(&mut self, configured: bool) -> Result<(), StoreError> {
        let pos = &self.inner.pos;
        if configured == self.has_sparkplug
            && configured == pos.spb_configured.load(Ordering::Relaxed)
        {
            return Ok(());
        }
        if configured {
            let stored: Option<i64> = self
                .conn
                .query_row(
                    "SELECT seq FROM uplink_position WHERE uplink = 'sparkplug'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let p = match stored {
                Some(p) => p.max(0) as u64,
                None => {
                    let last = pos.last_seq.load(Ordering::Relaxed);
                    self.conn.execute(
                        "INSERT INTO uplink_position(uplink, seq) VALUES ('sparkplug', ?1)",
                        [last.min(i64::MAX as u64) as i64],
                    )?;
                    tracing::info!(position = last, "Sparkplug uplink starts at the newest row");
                    last
                }
            };
            self.spb_committed = p;
            pos.spb.store(p, Ordering::Relaxed);
        } else {
            let n = self
                .conn
                .execute("DELETE FROM uplink_position WHERE uplink = 'sparkplug'", [])?;
            if n > 0 {
                tracing::info!("Sparkplug uplink removed: its position is dropped");
            }
            self.spb_committed = 0;
            pos.spb.store(0, Ordering::Relaxed);
            *super::lock(&self.inner.spb_fresh) = Default::default();
        }
        self.has_sparkplug = configured;
        pos.spb_configured.store(configured, Ordering::Relaxed);
        Ok(())
    }

    /// SQL condition of a journal row every configured uplink has
    /// delivered (rows may go then); an uplink not configured pins nothing.
    pub(super) fn delivered_sql(&self) -> String {
        let native = if self.has_mqtt { "sent = 1" } else { "1" };
        if self.has_sparkplug {
            format!(
                "({native} AND seq <= {})",
                self.spb_committed.min(i64::MAX as u64)
            )
        } else {
            format!("({native})")
        }
    }

    /// Restores deadband state (last point per item), the current trend
    /// buckets and the compaction backlog from the database.
    fn restore(&mut self) -> Result<(), StoreError> {
        let mut last: HashMap<ItemId, (i64, f64)> = HashMap::new();
        {
            let mut st = self
                .conn
                .prepare("SELECT item_id, max(start), data FROM history GROUP BY item_id")?;
            let mut rows = st.query([])?;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                let blob: Vec<u8> = row.get(2)?;
                let mut lp = None;
                if let Err(e) = codec::decode_chunk(&blob, |c, v| lp = Some((c, v))) {
                    tracing::error!(item = id, error = %e, "corrupt history chunk ignored");
                }
                if let Some(p) = lp {
                    last.insert(id as ItemId, p);
                }
            }
            let mut st = self
                .conn
                .prepare("SELECT host_id, n, data FROM journal WHERE compacted = 0 ORDER BY seq")?;
            let mut rows = st.query([])?;
            let now = Instant::now();
            while let Some(row) = rows.next()? {
                let hid: i64 = row.get(0)?;
                let n: i64 = row.get(1)?;
                let blob: Vec<u8> = row.get(2)?;
                let b = self.backlog.entry(hid as u32).or_insert(Backlog {
                    points: 0,
                    since: now,
                });
                b.points += n.max(0) as u64;
                if let Err(e) = codec::decode_row(&blob, |i, c, v| {
                    let e = last.entry(i).or_insert((c, v));
                    if c >= e.0 {
                        *e = (c, v);
                    }
                }) {
                    tracing::error!(host_id = hid, error = %e, "corrupt journal row ignored");
                }
            }
        }
        let mut live = lock(&self.inner.live);
        for (id, p) in last {
            live.ensure(id);
            live.last[id as usize] = p;
        }
        let mut st = self
            .conn
            .prepare("SELECT item_id, max(hour), num, min, avg, max FROM trend GROUP BY item_id")?;
        let mut rows = st.query([])?;
        while let Some(row) = rows.next()? {
            let id = row.get::<_, i64>(0)? as ItemId;
            let num = row.get::<_, i64>(2)?.clamp(0, i64::from(u32::MAX)) as u32;
            let avg: f64 = row.get(4)?;
            live.ensure(id);
            live.cur[id as usize] = Some(TrendAcc {
                hour: row.get(1)?,
                num,
                min: row.get(3)?,
                max: row.get(5)?,
                sum: avg * f64::from(num),
                dirty: false,
            });
        }
        Ok(())
    }

    /// How long to sleep until the next commit tick.
    fn until_tick(&self) -> Duration {
        let iv = self.storage.commit_interval.max(Duration::from_millis(10));
        let phase = self
            .inner
            .opts
            .tick_phase
            .unwrap_or_else(|| (iv / 4).min(Duration::from_millis(250)))
            .min(iv);
        let now = crate::clock::since_epoch().saturating_sub(phase);
        let ivn = iv.as_nanos().max(1);
        let rem = now.as_nanos() % ivn;
        Duration::from_nanos((ivn - rem).min(u128::from(u64::MAX)) as u64)
    }

    pub fn run(mut self) {
        let inner = self.inner.clone();
        let _alive = AliveGuard(inner.clone());
        loop {
            let deadline = Instant::now() + self.until_tick();
            // The writer sleeps until the commit tick. Between ticks it
            // drains the push buffer only when the buffer reaches its high
            // water mark (deadband and trends applied, history points kept as
            // pending), so it stays small at high sample rates while at low
            // rates the writer wakes once per commit.
            let (gen, maintain, marks, closing) = loop {
                let drain_at = deadline;
                let (mut batch, commit_now) = {
                    let mut s = lock(&inner.shared);
                    loop {
                        if s.kill {
                            s.writer_alive = false;
                            inner.done.notify_all();
                            return;
                        }
                        if s.closing || s.req_gen > s.done_gen || s.hw_notified {
                            break;
                        }
                        let now = Instant::now();
                        if now >= drain_at {
                            break;
                        }
                        s = inner
                            .wake
                            .wait_timeout(s, drain_at - now)
                            .map(|(g, _)| g)
                            .unwrap_or_else(|e| e.into_inner().0);
                    }
                    if let Some(settings) = s.settings.take() {
                        self.apply_settings(settings);
                    }
                    let mut batch = std::mem::take(&mut self.spare);
                    std::mem::swap(&mut batch, &mut s.buf);
                    s.hw_notified = false;
                    inner.drained_tx.send_modify(|n| *n += 1);
                    let commit_now =
                        s.closing || s.req_gen > s.done_gen || Instant::now() >= deadline;
                    (batch, commit_now)
                };
                self.watch_clock();
                self.process(&batch);
                batch.clear();
                self.spare = batch;
                // A burst (e.g. the first poll right after start-up followed
                // by the first aligned one) commits early rather than growing
                // the pending list without bound.
                let commit_now = commit_now || self.pending.len() >= EARLY_COMMIT_POINTS;
                if commit_now {
                    let mut s = lock(&inner.shared);
                    // Anything pushed while processing goes into this commit too.
                    let late = std::mem::take(&mut s.buf);
                    let marks: Vec<u64> = s.marks.iter().copied().collect();
                    let maintain = std::mem::take(&mut s.maintain_req);
                    let out = (s.req_gen, maintain, marks, s.closing);
                    drop(s);
                    self.process(&late);
                    let mut s = lock(&inner.shared);
                    if s.buf.is_empty() {
                        s.buf = late;
                        s.buf.clear();
                    }
                    break out;
                }
            };

            let mut result = self.commit(&marks, closing);
            if closing {
                let mut tries = 0;
                while result.is_err() && tries < super::CLOSE_RETRIES {
                    std::thread::sleep(super::CLOSE_RETRY_PAUSE);
                    tries += 1;
                    result = self.commit(&marks, true);
                }
            }
            if result.is_ok() && (maintain || !closing) {
                self.maintenance(maintain);
            }
            {
                let mut s = lock(&inner.shared);
                if result.is_ok() {
                    for m in &marks {
                        s.marks.remove(m);
                    }
                }
                s.done_gen = s.done_gen.max(gen);
                s.last_cycle = Instant::now();
                s.done_result = result.map_err(|e| e.to_string());
                if closing {
                    s.writer_alive = false;
                    if let Err(e) = &s.done_result {
                        tracing::error!(
                            error = %e,
                            lost_points = self.pending.len(),
                            "store closed with uncommitted history points"
                        );
                    }
                }
                inner.done.notify_all();
            }
            if closing {
                tracing::info!("store writer stopped");
                return;
            }
        }
    }

    /// Counts and logs a step of the wall clock. Samples are kept whatever
    /// their clock: after a step back they are stored with the clock the box
    /// has, and history answers sort them by clock.
    fn watch_clock(&mut self) {
        let c = &self.inner.counters;
        match self.steps.look() {
            Some(crate::clock::ClockStep::Back(d)) => {
                c.clock_steps_back.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    step_seconds = d.as_secs_f64(),
                    "the wall clock stepped back; samples keep the new clock and are stored and sent"
                );
            }
            Some(crate::clock::ClockStep::Forward(d)) => {
                c.clock_steps_forward.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    step_seconds = d.as_secs_f64(),
                    "the wall clock jumped forward"
                );
            }
            None => {}
        }
    }

    /// Deadband/heartbeat and trends for a batch of samples.
    fn process(&mut self, batch: &[Packed]) {
        if batch.is_empty() {
            return;
        }
        let inner = self.inner.clone();
        let mut live = lock(&inner.live);
        for &(item, clock, value) in batch {
            let clock = i64::from(clock);
            let id = item as usize;
            let Some(it) = self.items.get(id).filter(|it| it.active) else {
                self.unknown_items += 1;
                if self.unknown_items.is_power_of_two() {
                    tracing::warn!(
                        item = item,
                        count = self.unknown_items,
                        "samples for unknown items dropped"
                    );
                }
                continue;
            };
            if !value.is_finite() {
                continue;
            }
            if live.last.len() <= id {
                live.ensure(item);
            }
            // Trend: every good sample.
            let hour = clock - clock.rem_euclid(3600);
            match &mut live.cur[id] {
                Some(acc) if acc.hour == hour => acc.add(value),
                Some(acc) if acc.hour < hour => {
                    if acc.dirty {
                        self.closed.push((item, *acc));
                    }
                    *acc = TrendAcc::new(hour, value);
                }
                Some(_) => {
                    self.late
                        .entry((item, hour))
                        .and_modify(|a| a.add(value))
                        .or_insert_with(|| TrendAcc::new(hour, value));
                }
                slot @ None => *slot = Some(TrendAcc::new(hour, value)),
            }
            // History: deadband and heartbeat against the last history point.
            // A clock before the last point's (the wall clock stepped back)
            // is a point whatever its value: it starts the item's history
            // again from the box's new clock.
            let is_point = match live.last(item) {
                None => true,
                Some((lc, lv)) => {
                    clock < lc
                        || (it.deadband == 0
                            || (value - lv).abs()
                                >= self
                                    .deadbands
                                    .get(usize::from(it.deadband) - 1)
                                    .copied()
                                    .unwrap_or(0.0)
                            || (it.heartbeat != u32::MAX && clock - lc >= i64::from(it.heartbeat)))
                }
            };
            if is_point {
                live.last[id] = (clock, value);
                self.pending.push((item, clock as u32, value));
            }
        }
        drop(live);
        let cap = self.inner.opts.max_buffered.max(1);
        if self.pending.len() > cap {
            self.drop_oldest_pending(self.pending.len() - cap);
        }
    }

    /// Memory cap after failed commits: drops the oldest pending points.
    fn drop_oldest_pending(&mut self, excess: usize) {
        let mut clocks: Vec<u32> = self.pending.iter().map(|p| p.1).collect();
        if excess == 0 || clocks.is_empty() {
            return;
        }
        let k = excess.min(clocks.len()) - 1;
        let (_, cut, _) = clocks.select_nth_unstable(k);
        let cut = *cut;
        drop(clocks);
        // Drops every point with clock <= cut: at least `excess` points.
        let before = self.pending.len();
        self.pending.retain(|p| p.1 > cut);
        let total = self.pending.len();
        let dropped = before - total;
        self.inner
            .counters
            .dropped_unsent
            .fetch_add(dropped as u64, Ordering::Relaxed);
        tracing::error!(
            dropped,
            kept = total,
            "store: commits keep failing, oldest uncommitted history points dropped"
        );
    }

    /// One transaction: new journal rows, sent marks, trend buckets.
    fn commit(&mut self, marks: &[u64], closing: bool) -> Result<(), StoreError> {
        let trend_due =
            closing || self.last_trend_flush.elapsed() >= self.inner.opts.trend_flush_interval;
        let spb_target = if self.has_sparkplug {
            self.inner
                .pos
                .spb
                .load(Ordering::Relaxed)
                .max(self.spb_committed)
        } else {
            self.spb_committed
        };
        let nothing = self.pending.is_empty()
            && marks.is_empty()
            && spb_target == self.spb_committed
            && self.closed.is_empty()
            && !(trend_due && (!self.late.is_empty() || self.any_dirty_trend()));
        if nothing {
            if trend_due {
                self.last_trend_flush = Instant::now();
            }
            return Ok(());
        }
        let mut result = self.try_commit(marks, spb_target, trend_due);
        if let Err(e) = &result {
            if super::space::is_disk_full(e, self.dir()) {
                // Deleting the oldest data makes room inside the database:
                // the newest samples are committed now, not after a restart.
                self.make_room();
                result = self.try_commit(marks, spb_target, trend_due);
            }
        }
        match result {
            Ok((rows, points, unsent_rows, marked)) => {
                if !marks.is_empty() || !self.has_mqtt {
                    if let Err(e) = self.refresh_native() {
                        tracing::debug!(error = %e, "store: native position not read");
                    }
                }
                self.keep_wal_small();
                self.watch_space();
                if let Err(e) = self.enforce_size() {
                    tracing::error!(error = %e, "store size enforcement failed");
                }
                let c = &self.inner.counters;
                c.commits.fetch_add(1, Ordering::Relaxed);
                c.history_points.fetch_add(points as u64, Ordering::Relaxed);
                c.outbox.fetch_add(unsent_rows as u64, Ordering::Relaxed);
                let _ = c
                    .outbox
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                        Some(v.saturating_sub(marked as u64))
                    });
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        failing_for = ?since.elapsed(),
                        failed_commits = self.consecutive_failures,
                        "store commits work again"
                    );
                }
                self.consecutive_failures = 0;
                if rows > 0 {
                    super::prefetch_outbox(&self.inner, &self.conn);
                    self.inner.commits_tx.send_modify(|v| *v += 1);
                }
                Ok(())
            }
            Err(e) => {
                self.inner
                    .counters
                    .commit_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.failing_since.get_or_insert_with(Instant::now);
                self.consecutive_failures += 1;
                let n = self.consecutive_failures;
                // Not once a second for hours: 1, 2, 4, 8, ... then every 64th.
                if n.is_power_of_two() || n % 64 == 0 {
                    tracing::error!(
                        error = %e,
                        pending_points = self.pending.len(),
                        consecutive_failures = n,
                        "store commit failed; keeping the data in memory and retrying"
                    );
                }
                Err(e)
            }
        }
    }

    fn any_dirty_trend(&self) -> bool {
        lock(&self.inner.live)
            .cur
            .iter()
            .any(|c| c.is_some_and(|a| a.dirty))
    }

    fn try_commit(
        &mut self,
        marks: &[u64],
        spb_target: u64,
        trend_due: bool,
    ) -> Result<(usize, usize, usize, usize), StoreError> {
        // Group points per host, items ascending, into rows of bounded size.
        // Stable: points of one item stay in arrival (clock) order.
        let items = &self.items;
        self.pending.sort_by_key(|&(id, _, _)| {
            let hid = items.get(id as usize).map_or(0, |it| it.host_id);
            (hid, id)
        });
        let mut rows: Vec<(u32, RowBuilder)> = Vec::new();
        let mut cur: Option<(u32, RowBuilder)> = None;
        let mut start = 0;
        while start < self.pending.len() {
            let id = self.pending[start].0;
            let mut end = start;
            self.scratch.clear();
            while end < self.pending.len() && self.pending[end].0 == id {
                self.scratch
                    .push((i64::from(self.pending[end].1), self.pending[end].2));
                end += 1;
            }
            start = end;
            let it = self.items.get(id as usize).copied().unwrap_or_default();
            let key_len = usize::from(it.key_len);
            let mut p = &self.scratch[..];
            if cur.as_ref().is_some_and(|(h, _)| *h != it.host_id) {
                rows.extend(cur.take());
            }
            while !p.is_empty() {
                let row = match &mut cur {
                    Some((_, r)) => r,
                    None => &mut cur.insert((it.host_id, RowBuilder::new(p[0].0))).1,
                };
                let room_pts = MAX_POINTS_PER_MESSAGE - row.n;
                let room_bytes = MAX_MESSAGE_JSON_BYTES
                    .saturating_sub(row.json_bytes + key_len + 8)
                    / codec::JSON_POINT_BYTES;
                let mut take = p.len().min(room_pts).min(room_bytes);
                if take == 0 {
                    if row.is_empty() {
                        take = 1;
                    } else {
                        rows.extend(cur.take());
                        continue;
                    }
                }
                row.add(id, &p[..take], key_len);
                p = &p[take..];
                if row.n >= MAX_POINTS_PER_MESSAGE {
                    rows.extend(cur.take());
                }
            }
        }
        rows.extend(cur.take());

        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let sent = i64::from(self.sent_on_insert);
        let mut points = 0usize;
        let mut last_seq = None;
        {
            let mut ins = tx.prepare_cached(
                "INSERT INTO journal(host_id, clock_min, clock_max, n, sent, compacted, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6)",
            )?;
            for (hid, r) in &rows {
                ins.execute(params![
                    hid,
                    r.clock_min,
                    r.clock_max,
                    r.n as i64,
                    sent,
                    r.buf
                ])?;
                points += r.n;
            }
            if !rows.is_empty() {
                last_seq = Some(tx.last_insert_rowid());
            }
        }
        let spb = spb_target.min(i64::MAX as u64) as i64;
        if spb_target > self.spb_committed {
            // Everything up to the target is delivered on Sparkplug: compacted
            // rows the native uplink needs no more go with it.
            tx.prepare_cached(
                "INSERT INTO uplink_position(uplink, seq) VALUES ('sparkplug', ?1)
                 ON CONFLICT(uplink) DO UPDATE SET seq = excluded.seq",
            )?
            .execute([spb])?;
            let old = self.spb_committed.min(i64::MAX as u64) as i64;
            let sql = if self.has_mqtt {
                "DELETE FROM journal WHERE seq > ?1 AND seq <= ?2 AND compacted = 1 AND sent = 1"
            } else {
                "DELETE FROM journal WHERE seq > ?1 AND seq <= ?2 AND compacted = 1"
            };
            tx.prepare_cached(sql)?.execute([old, spb])?;
        }
        let mut marked = 0usize;
        if !marks.is_empty() {
            let mut upd =
                tx.prepare_cached("UPDATE journal SET sent = 1 WHERE seq = ?1 AND sent = 0")?;
            // A row Sparkplug still needs stays.
            let del_sql = if self.has_sparkplug {
                "DELETE FROM journal WHERE seq = ?1 AND compacted = 1 AND seq <= ?2"
            } else {
                "DELETE FROM journal WHERE seq = ?1 AND compacted = 1 AND ?2 = ?2"
            };
            let mut del = tx.prepare_cached(del_sql)?;
            for &m in marks {
                let m = m.min(i64::MAX as u64) as i64;
                marked += upd.execute([m])?;
                del.execute([m, spb])?;
            }
        }
        // Trends: closed hours (replace), and when due the current buckets and late ones.
        {
            let mut rep = tx.prepare_cached(
                "INSERT OR REPLACE INTO trend(item_id, hour, num, min, avg, max) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (id, acc) in &self.closed {
                let b = acc.bucket();
                rep.execute(params![id, acc.hour, b.num as i64, b.min, b.avg, b.max])?;
            }
            if trend_due {
                // Copied out a slice at a time: readers of the live state
                // never wait for these statements.
                let mut from = 0;
                let mut dirty: Vec<(usize, TrendAcc)> = Vec::with_capacity(1024);
                loop {
                    dirty.clear();
                    let more = {
                        let live = lock(&self.inner.live);
                        let end = (from + 1024).min(live.cur.len());
                        dirty.extend(
                            (from..end)
                                .filter_map(|i| live.cur[i].filter(|a| a.dirty).map(|a| (i, a))),
                        );
                        from = end;
                        end < live.cur.len()
                    };
                    for (i, acc) in &dirty {
                        let b = acc.bucket();
                        rep.execute(params![
                            *i as i64,
                            acc.hour,
                            b.num as i64,
                            b.min,
                            b.avg,
                            b.max
                        ])?;
                    }
                    if !more {
                        break;
                    }
                }
                let mut merge = tx.prepare_cached(
                    "INSERT INTO trend(item_id, hour, num, min, avg, max) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(item_id, hour) DO UPDATE SET
                        avg = (avg * num + excluded.avg * excluded.num) / (num + excluded.num),
                        num = num + excluded.num,
                        min = min(min, excluded.min),
                        max = max(max, excluded.max)",
                )?;
                for ((id, hour), acc) in &self.late {
                    let b = acc.bucket();
                    merge.execute(params![id, hour, b.num as i64, b.min, b.avg, b.max])?;
                }
            }
        }
        tx.commit()?;

        // Durable: forget what was written.
        self.spb_committed = spb_target;
        if let Some(last) = last_seq {
            self.inner
                .pos
                .last_seq
                .fetch_max(last.max(0) as u64, Ordering::Relaxed);
        }
        let unsent_rows = if self.sent_on_insert { 0 } else { rows.len() };
        let now = Instant::now();
        for (hid, r) in &rows {
            let b = self.backlog.entry(*hid).or_insert(Backlog {
                points: 0,
                since: now,
            });
            b.points += r.n as u64;
        }
        self.pending.clear();
        self.closed.clear();
        if trend_due {
            self.late.clear();
            let mut live = lock(&self.inner.live);
            // Every dirty bucket was written above, and nothing was added
            // since: samples are processed on this thread only.
            for acc in live.cur.iter_mut().flatten() {
                acc.dirty = false;
            }
            self.last_trend_flush = Instant::now();
        }
        Ok((rows.len(), points, unsent_rows, marked))
    }

    /// Compaction, retention and the size cap; failures are logged, not fatal.
    fn maintenance(&mut self, force: bool) {
        let opts = self.inner.opts.clone();
        // Compaction: hosts whose backlog is old or big, within the budget.
        let mut due: Vec<u32> = self
            .backlog
            .iter()
            .filter(|(_, b)| {
                b.points > 0
                    && (force
                        || b.points >= opts.compact_points
                        || b.since.elapsed() >= opts.compact_age)
            })
            .map(|(h, _)| *h)
            .collect();
        due.sort_unstable();
        let mut budget = if force {
            u64::MAX
        } else {
            opts.compact_budget.max(1)
        };
        for hid in due {
            if budget == 0 {
                break;
            }
            loop {
                if self.closing() {
                    // The final commit goes first; the journal keeps the rest.
                    return;
                }
                let step = self.compact_step(budget.min(opts.compact_budget.max(1)));
                let r = self.compact_host(hid, step);
                self.keep_wal_small();
                match r {
                    Ok((points, more)) => {
                        budget = budget.saturating_sub(points.max(1));
                        if let Some(b) = self.backlog.get_mut(&hid) {
                            b.points = b.points.saturating_sub(points);
                            if !more {
                                b.points = 0;
                            }
                        }
                        if !more {
                            self.backlog.remove(&hid);
                            break;
                        }
                        if budget == 0 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::error!(host_id = hid, error = %e, "store compaction failed");
                        if super::space::is_disk_full(&e, self.dir()) {
                            self.make_room();
                            return;
                        }
                        break;
                    }
                }
            }
        }
        let retention_due = force
            || self
                .last_retention
                .map_or(true, |t| t.elapsed() >= opts.retention_interval);
        if retention_due && !self.closing() {
            if let Err(e) = self.retention() {
                tracing::error!(error = %e, "store retention failed");
            }
            self.last_retention = Some(Instant::now());
        }
        let size_due = force || self.last_size_check.elapsed() >= opts.size_check_interval;
        if size_due && !self.closing() {
            if let Err(e) = self.enforce_size() {
                tracing::error!(error = %e, "store size enforcement failed");
            }
            self.last_size_check = Instant::now();
        }
    }

    /// Moves up to about `max_points` of a host's oldest uncompacted journal
    /// points into per-item history chunks. Returns (points, more left).
    fn compact_host(&mut self, hid: u32, max_points: u64) -> Result<(u64, bool), StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut seqs: Vec<(i64, bool, bool)> = Vec::new();
        let mut per_item: BTreeMap<ItemId, Vec<(i64, f64)>> = BTreeMap::new();
        let mut points = 0u64;
        let mut more = false;
        let mut dropped_native = 0u64;
        {
            // Whether every configured uplink has delivered it, then native `sent`.
            let mut st = tx.prepare(&format!(
                "SELECT seq, n, {}, data, sent FROM journal WHERE host_id = ?1 AND compacted = 0 ORDER BY seq",
                self.delivered_sql()
            ))?;
            let mut rows = st.query([hid])?;
            while let Some(row) = rows.next()? {
                if points >= max_points {
                    more = true;
                    break;
                }
                let seq: i64 = row.get(0)?;
                let n: i64 = row.get(1)?;
                let delivered: i64 = row.get(2)?;
                let native_unsent = row.get::<_, i64>(4)? == 0;
                let blob = row.get_ref(3)?.as_blob().map_err(rusqlite::Error::from)?;
                let r =
                    codec::decode_row(blob, |i, c, v| per_item.entry(i).or_default().push((c, v)));
                if let Err(e) = r {
                    tracing::error!(seq, error = %e, "corrupt journal row skipped by compaction");
                }
                seqs.push((seq, delivered != 0, native_unsent));
                points += n.max(0) as u64;
            }
        }
        {
            let mut merged: Vec<(i64, f64)> = Vec::new();
            for (n, (id, mut pts)) in per_item.into_iter().enumerate() {
                if n % 256 == 255 && self.closing() {
                    // Shutdown: the final commit goes first. Rolled back;
                    // the journal keeps the points for the next compaction.
                    tracing::info!(host_id = hid, "compaction stopped for shutdown");
                    return Ok((0, true));
                }
                // Arrival order; after a step back of the wall clock not in
                // clock order: sort (stable, so points sharing a second keep
                // their order).
                pts.sort_by_key(|p| p.0);
                add_to_history(&tx, id, &pts, &mut merged)?;
            }
            let mut mark = tx.prepare_cached("UPDATE journal SET compacted = 1 WHERE seq = ?1")?;
            let mut del = tx.prepare_cached("DELETE FROM journal WHERE seq = ?1")?;
            for &(seq, delivered, native_unsent) in &seqs {
                if delivered {
                    del.execute([seq])?;
                    // Not sent on an uplink no longer configured.
                    dropped_native += u64::from(native_unsent);
                } else {
                    mark.execute([seq])?;
                }
            }
        }
        tx.commit()?;
        if dropped_native > 0 {
            let _ = self.inner.counters.outbox.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |v| Some(v.saturating_sub(dropped_native)),
            );
        }
        tracing::debug!(
            host_id = hid,
            rows = seqs.len(),
            points,
            "journal compacted"
        );
        Ok((points, more))
    }
}

/// Adds an item's points (in clock order) to its history chunks. Points after
/// the item's last chunk extend it (when small) or start new chunks; points at
/// or before its end (the same second, or a step back of the wall clock) are
/// merged into the chunks they fall in, so chunks never overlap and every
/// point is kept.
fn add_to_history(
    tx: &rusqlite::Transaction<'_>,
    id: ItemId,
    pts: &[(i64, f64)],
    merged: &mut Vec<(i64, f64)>,
) -> Result<(), StoreError> {
    let (Some(first), Some(last_new)) = (pts.first(), pts.last()) else {
        return Ok(());
    };
    let mut last = tx.prepare_cached(
        "SELECT start, end, data FROM history WHERE item_id = ?1 ORDER BY start DESC LIMIT 1",
    )?;
    let prev: Option<(i64, i64, Vec<u8>)> = last
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    merged.clear();
    match prev {
        Some((start, end, _)) if first.0 <= end => {
            return merge_into_history(tx, id, pts, (first.0.min(start), last_new.0), merged);
        }
        Some((start, _, blob))
            if blob.len() < CHUNK_TARGET_BYTES / 2 && first.0 - start <= codec::CHUNK_MAX_SPAN =>
        {
            // Extend the item's small last chunk (same start key: replaced).
            codec::decode_chunk(&blob, |c, v| merged.push((c, v)))?;
        }
        Some(_) => {}
        None => {}
    }
    merged.extend_from_slice(pts);
    write_chunks(tx, id, merged)
}

/// Replaces the item's chunks that touch `[lo, hi]` (and the one `lo` falls
/// in) by those chunks' points merged with `pts`, in clock order; an old
/// point goes before a new one of the same second.
fn merge_into_history(
    tx: &rusqlite::Transaction<'_>,
    id: ItemId,
    pts: &[(i64, f64)],
    (lo, mut hi): (i64, i64),
    merged: &mut Vec<(i64, f64)>,
) -> Result<(), StoreError> {
    let mut sel = tx.prepare_cached(
        "SELECT start, end, data FROM history WHERE item_id = ?1
           AND start >= coalesce((SELECT max(start) FROM history WHERE item_id = ?1 AND start <= ?2), ?2)
           AND start <= ?3
         ORDER BY start",
    )?;
    let mut old: Vec<(i64, f64)> = Vec::new();
    let mut starts: Vec<i64> = Vec::new();
    let mut from = lo;
    // A chunk may end in the second the next one starts: take it too, until
    // the chunks taken end before the next one not taken.
    loop {
        let mut rows = sel.query(params![id, from, hi])?;
        let mut widened = hi;
        while let Some(row) = rows.next()? {
            let start: i64 = row.get(0)?;
            if starts.contains(&start) {
                continue;
            }
            starts.push(start);
            widened = widened.max(row.get(1)?);
            let blob = row.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?;
            codec::decode_chunk(blob, |c, v| old.push((c, v)))?;
        }
        if widened <= hi {
            break;
        }
        from = hi;
        hi = widened;
    }
    old.sort_by_key(|p| p.0);
    merged.clear();
    merged.reserve(old.len() + pts.len());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < pts.len() {
        if j >= pts.len() || (i < old.len() && old[i].0 <= pts[j].0) {
            merged.push(old[i]);
            i += 1;
        } else {
            merged.push(pts[j]);
            j += 1;
        }
    }
    let mut del = tx.prepare_cached("DELETE FROM history WHERE item_id = ?1 AND start = ?2")?;
    for start in starts {
        del.execute(params![id, start])?;
    }
    write_chunks(tx, id, merged)
}

/// Writes points in clock order as chunks (never split inside a second, see
/// [`codec::encode_chunks`]).
fn write_chunks(
    tx: &rusqlite::Transaction<'_>,
    id: ItemId,
    points: &[(i64, f64)],
) -> Result<(), StoreError> {
    let mut ins = tx.prepare_cached(
        "INSERT OR REPLACE INTO history(item_id, start, end, n, data) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (start, end, n, data) in codec::encode_chunks(points, CHUNK_TARGET_BYTES) {
        ins.execute(params![id, start, end, n as i64, data])?;
    }
    Ok(())
}
