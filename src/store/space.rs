//! The database's room: retention, the `max_size` cap, a full file system.
//!
//! - **One order for dropping data.** Over `max_size`, and when a commit fails
//!   for lack of space, the oldest data goes first whichever table holds it:
//!   history chunks (their points are still in the journal until sent),
//!   hourly trends and alarm events with their acknowledgements, merged by
//!   clock. Unsent data (journal rows) goes only when nothing else is left,
//!   oldest first, counted and logged as an error. Every round of deleting
//!   must bring the files down, or the rounds stop (logged) until the next check.
//! - **The WAL counts.** `max_size` caps the database, its WAL and the reserve
//!   file together. After every commit the writer truncates the WAL when it
//!   is over a sixteenth of `max_size` (checkpoint with a short busy
//!   timeout, so that a reader in the middle of a long query, which holds
//!   the WAL because its snapshot needs the frames, delays the checkpoint
//!   instead of the writer), and checks the cap, less the WAL's recent peak
//!   (one transaction that closes an hour rewrites every item's trend
//!   page); `journal_size_limit` and `wal_autocheckpoint` follow `max_size`.
//!   Other checkpoints only rewind the WAL (RESTART), which keeps its room
//!   allocated for the deletions a full file system needs.
//! - **A full file system.** SQLite in WAL mode needs room to delete (the
//!   deletion is written to the WAL first, and a checkpoint that cannot grow
//!   the database file leaves the WAL unusable). A reserve file
//!   (`modbridge.db-reserve`, a sixteenth of `max_size` or of the file system
//!   when smaller, 256 KiB to 8 MiB) is kept next to the database; when a
//!   commit fails for lack of space the reserve is given back, the WAL is
//!   checkpointed, the oldest data is deleted in steps (its pages are reused
//!   by the next commits, inside the database file) and the commit is
//!   retried at once. From then on the database is held at its size, room of
//!   half the reserve is kept free inside it (deleting the oldest before it
//!   runs out) and `/health` reports the full disk, until the file system
//!   has room again; then the reserve is refilled and everything is normal.
//!   A file system without room for the reserve at open counts as full.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::{params, TransactionBehavior};

use super::writer::Writer;
use super::{lock, StoreError, StoreOptions};

/// How long a checkpoint waits for readers before it gives up (retried later).
const CHECKPOINT_BUSY: Duration = Duration::from_millis(100);
/// Rounds of deleting per size check, at most.
const SIZE_ROUNDS: usize = 64;
/// Rows of each table looked at per round to find the cut.
const CUT_SCAN_ROWS: i64 = 20_000;

/// The reserve for `max_size` (see the module doc), unless the options set it.
pub(crate) fn reserve_bytes(opts: &StoreOptions, max_size: u64) -> u64 {
    opts.disk_reserve
        .unwrap_or_else(|| (max_size / 16).clamp(256 << 10, 8 << 20))
}

/// The WAL size that triggers a checkpoint, and its size limit.
fn wal_budget(max_size: u64) -> u64 {
    (max_size / 16).clamp(64 << 10, 16 << 20)
}

/// (Free bytes for an unprivileged writer, total bytes) of the file system
/// holding `path`.
// The field types of `statvfs` differ between targets (u32 on some 32-bit ARM).
#[allow(clippy::unnecessary_cast)]
fn statvfs(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value of the plain C struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    let block = st.f_frsize as u64;
    (r == 0).then(|| {
        (
            (st.f_bavail as u64).saturating_mul(block),
            (st.f_blocks as u64).saturating_mul(block),
        )
    })
}

/// Free bytes on the file system holding `path`.
pub(crate) fn free_space(path: &Path) -> Option<u64> {
    statvfs(path).map(|s| s.0)
}

/// `max_size`, or the size of the file system holding `path` when smaller:
/// the WAL budget and the reserve follow it.
pub(crate) fn room_for(path: &Path, max_size: u64) -> u64 {
    statvfs(path).map_or(max_size, |s| s.1.min(max_size))
}

/// The reserve file: free space held for deleting on a full file system.
pub(crate) struct Reserve {
    path: PathBuf,
    pub bytes: u64,
}

impl Reserve {
    pub fn new(db: &Path, bytes: u64) -> Reserve {
        let mut p = db.as_os_str().to_owned();
        p.push("-reserve");
        Reserve {
            path: PathBuf::from(p),
            bytes,
        }
    }

    /// Its size on disk now (0 when absent).
    pub fn len(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Gives the reserved space back to the file system.
    fn release(&self) -> bool {
        std::fs::remove_file(&self.path).is_ok()
    }

    /// Writes the reserve (real blocks, not a sparse file) when the file system
    /// has room for it twice over. Returns whether it is in place.
    pub fn refill(&self) -> bool {
        let len = self.len();
        if len > self.bytes {
            // A smaller max_size: a smaller reserve.
            let r = std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .and_then(|f| f.set_len(self.bytes));
            return r.is_ok();
        }
        if len == self.bytes {
            return true;
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if free_space(dir).is_some_and(|f| f < self.bytes.saturating_mul(2)) {
            return false;
        }
        match self.write() {
            Ok(()) => true,
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                tracing::debug!(error = %e, "database reserve file not written");
                false
            }
        }
    }

    fn write(&self) -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&self.path)?;
        let block = [0u8; 64 << 10];
        let mut left = self.bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n])?;
            left -= n as u64;
        }
        f.sync_all()
    }
}

/// The file system is full: since when, and the size the database is held at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Full {
    since: Instant,
    cap: u64,
}

/// What one round of deleting in the `max_size` order removed.
#[derive(Debug, Default)]
struct Freed {
    chunks: usize,
    trend_rows: usize,
    events: usize,
    /// Everything with a clock up to this went (history, trends, events).
    up_to: Option<i64>,
    journal_rows: usize,
    /// Points and rows some configured uplink had not delivered.
    unsent_points: u64,
    unsent_messages: u64,
    /// Rows not marked sent by the native uplink (its outbox count).
    native_unsent: u64,
}

impl Freed {
    fn is_empty(&self) -> bool {
        self.chunks + self.trend_rows + self.events + self.journal_rows == 0
    }

    /// Logs what went (a warning) and why.
    fn log(&self, because: &str) {
        tracing::warn!(
            chunks = self.chunks,
            trend_rows = self.trend_rows,
            events = self.events,
            up_to = self.up_to,
            journal_rows = self.journal_rows,
            because,
            "oldest data deleted"
        );
    }
}

/// One table's oldest rows as (clock, estimated bytes), and whether there are more.
fn oldest_rows(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
) -> Result<(Vec<(i64, u64)>, bool), StoreError> {
    let mut st = tx.prepare(sql)?;
    let rows = st
        .query_map([CUT_SCAN_ROWS], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let more = rows.len() as i64 >= CUT_SCAN_ROWS;
    Ok((rows, more))
}

/// The clock up to which history, trends and events together hold about
/// `excess` bytes (oldest first), or None when the three are empty.
fn oldest_cut(
    tx: &rusqlite::Transaction<'_>,
    excess: u64,
    delivered: &str,
) -> Result<Option<i64>, StoreError> {
    // Delivered journal rows not compacted yet are history too.
    let journal = format!(
        "SELECT clock_max, length(data) + 60 FROM journal WHERE {delivered} ORDER BY seq LIMIT ?1"
    );
    // Estimated bytes per row, pages not full: half again.
    let streams = [
        "SELECT end, (length(data) + 40) * 3 / 2 FROM history ORDER BY end LIMIT ?1",
        // A trend bucket counts at the end of its hour.
        "SELECT hour + 3599, 90 FROM trend ORDER BY hour LIMIT ?1",
        "SELECT clock, length(description) + length(host) + length(key) + 160 \
         FROM events ORDER BY clock LIMIT ?1",
        journal.as_str(),
    ];
    let mut all = Vec::new();
    let mut horizon = i64::MAX;
    for sql in streams {
        let (rows, more) = oldest_rows(tx, sql)?;
        if more {
            if let Some(last) = rows.last() {
                horizon = horizon.min(last.0);
            }
        }
        all.extend(rows);
    }
    all.sort_unstable_by_key(|r| r.0);
    let mut acc = 0u64;
    let mut cut = None;
    for (clock, bytes) in all {
        if clock > horizon {
            break;
        }
        cut = Some(clock);
        acc += bytes;
        if acc >= excess {
            break;
        }
    }
    Ok(cut)
}

/// Deletes alarm events with a clock up to `cut`, and their acknowledgements.
/// (The control tables' other statements are the ledger's; retention and the
/// size cap are the store's, which the ledger builds on.)
fn delete_events(tx: &rusqlite::Transaction<'_>, cut: i64) -> Result<usize, StoreError> {
    tx.execute(
        "DELETE FROM acknowledgements WHERE eventid IN (SELECT eventid FROM events WHERE clock <= ?1)",
        [cut],
    )?;
    Ok(tx.execute("DELETE FROM events WHERE clock <= ?1", [cut])?)
}

impl Writer {
    /// Whether `close` was called: long maintenance gives way to the final commit.
    pub(super) fn closing(&self) -> bool {
        lock(&self.inner.shared).closing
    }

    /// `journal_size_limit` and `wal_autocheckpoint` for the current `max_size`.
    pub(super) fn limit_wal(&mut self) {
        let room = self.room();
        let budget = wal_budget(room);
        // A new max_size: the WAL's peak is measured again.
        self.wal_peak = 0;
        self.reserve.bytes = reserve_bytes(&self.inner.opts, room);
        if self.full.is_none() {
            self.reserve.refill();
        }
        // Checkpoints start at half the budget (in 4 KiB pages), so that the
        // WAL is rewound before it passes the budget and the truncating
        // checkpoint after a commit (`keep_wal_small`) stays rare: truncating
        // and growing the file again cost the ingest bench 10-18 %.
        let r = self
            .conn
            .pragma_update(None, "journal_size_limit", budget as i64)
            .and_then(|()| {
                self.conn
                    .pragma_update(None, "wal_autocheckpoint", (budget / 8192).max(16) as i64)
            });
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot set the WAL limits");
        }
    }

    /// `max_size`, or the file system's size when smaller.
    fn room(&self) -> u64 {
        room_for(self.dir(), self.storage.max_size)
    }

    pub(super) fn dir(&self) -> &Path {
        self.inner.path.parent().unwrap_or(Path::new("."))
    }

    fn wal_path(&self) -> PathBuf {
        let mut wal = self.inner.path.as_os_str().to_owned();
        wal.push("-wal");
        PathBuf::from(wal)
    }

    fn wal_bytes(&self) -> u64 {
        std::fs::metadata(self.wal_path())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// The database, its WAL and the reserve file, bytes: what `max_size`
    /// caps (not the WAL's 32 KiB shared-memory index).
    pub(super) fn files_bytes(&self) -> Result<u64, StoreError> {
        let pages: i64 = self
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))?;
        let size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))?;
        Ok((pages.max(0) as u64) * (size.max(0) as u64) + self.wal_bytes() + self.reserve.len())
    }

    /// What the size rounds measure: the files, or while the file system is
    /// full (free pages are kept for the next commits) the pages in use.
    fn used_bytes(&self) -> Result<u64, StoreError> {
        if self.full.is_some() {
            Ok(self.data_bytes()? + self.wal_bytes() + self.reserve.len())
        } else {
            self.files_bytes()
        }
    }

    /// Bytes in pages on the free list (reused by the next transactions).
    fn free_pages_bytes(&self) -> Result<u64, StoreError> {
        let q = |name: &str| -> Result<u64, StoreError> {
            let v: i64 = self.conn.pragma_query_value(None, name, |r| r.get(0))?;
            Ok(v.max(0) as u64)
        };
        Ok(q("freelist_count")? * q("page_size")?)
    }

    /// Bytes in pages that hold data (not on the free list).
    fn data_bytes(&self) -> Result<u64, StoreError> {
        let q = |name: &str| -> Result<u64, StoreError> {
            let v: i64 = self.conn.pragma_query_value(None, name, |r| r.get(0))?;
            Ok(v.max(0) as u64)
        };
        Ok(q("page_count")? * q("page_size")?)
            .map(|all| all.saturating_sub(self.free_pages_bytes().unwrap_or(0)))
    }

    /// Checkpoints the WAL and rewinds it (RESTART; `journal_size_limit` then
    /// trims it to its budget, so the WAL keeps that much room allocated:
    /// on a full file system the next transactions, deletions first, are
    /// written there without growing any file). Waits [`CHECKPOINT_BUSY`] at
    /// most for readers. Returns whether it completed.
    pub(super) fn checkpoint(&self) -> Result<bool, StoreError> {
        self.checkpoint_mode("RESTART")
    }

    /// [`Writer::checkpoint`], then the WAL file truncated to nothing (not
    /// while the file system is full: its room is needed).
    fn checkpoint_truncate(&self) -> Result<bool, StoreError> {
        self.checkpoint_mode(if self.full.is_some() {
            "RESTART"
        } else {
            "TRUNCATE"
        })
    }

    fn checkpoint_mode(&self, mode: &str) -> Result<bool, StoreError> {
        self.conn.busy_timeout(CHECKPOINT_BUSY)?;
        let r = self
            .conn
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                r.get::<_, i64>(0)
            });
        self.conn.busy_timeout(self.inner.opts.busy_timeout)?;
        let done = r? == 0;
        if !done {
            tracing::debug!(
                wal_bytes = self.wal_bytes(),
                "WAL checkpoint incomplete: a reader holds an older snapshot"
            );
        }
        Ok(done)
    }

    /// After a commit: checkpoints (truncating) when the WAL is over its
    /// budget, and remembers how large one transaction made it (a closed
    /// hour rewrites every item's trend page), so that the size cap leaves
    /// room for that too.
    pub(super) fn keep_wal_small(&mut self) {
        let wal = self.wal_bytes();
        self.wal_peak = wal.max(self.wal_peak - self.wal_peak / 64);
        if wal > wal_budget(self.room()) {
            if let Err(e) = self.checkpoint_truncate() {
                tracing::debug!(error = %e, "WAL checkpoint failed");
            }
        }
    }

    /// Returns free pages to the file system (not while it is full: the
    /// next commits reuse them) and checkpoints.
    fn shrink(&mut self) -> Result<bool, StoreError> {
        if self.full.is_none() {
            // Each step frees one page: run it to the end.
            let mut st = self.conn.prepare_cached("PRAGMA incremental_vacuum")?;
            let mut rows = st.query([])?;
            while rows.next()?.is_some() {}
        }
        self.checkpoint_truncate()
    }

    /// Retention of history, trends and events.
    pub(super) fn retention(&mut self) -> Result<(), StoreError> {
        let now = crate::clock::unix_now();
        let before = |d: Duration| now.saturating_sub(d.as_secs().min(i64::MAX as u64) as i64);
        let h_cut = before(self.storage.history_retention);
        let t_cut = before(self.storage.trend_retention);
        let e_cut = before(self.storage.event_retention);
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let chunks = tx.execute("DELETE FROM history WHERE end < ?1", [h_cut])?;
        let trends = tx.execute(
            "DELETE FROM trend WHERE hour < ?1",
            [t_cut - t_cut.rem_euclid(3600)],
        )?;
        let events = delete_events(&tx, e_cut - 1)?;
        // Compacted rows kept for an uplink that is gone (its position
        // dropped, or `[mqtt]` removed): their points are in history.
        let stale = tx.execute(
            &format!(
                "DELETE FROM journal WHERE compacted = 1 AND {}",
                self.delivered_sql()
            ),
            [],
        )?;
        tx.commit()?;
        if stale > 0 {
            tracing::info!(
                rows = stale,
                "store: journal rows no configured uplink needs deleted"
            );
            if !self.has_mqtt {
                let n: i64 = self.conn.query_row(
                    "SELECT count(*) FROM journal WHERE sent = 0",
                    [],
                    |r| r.get(0),
                )?;
                self.inner
                    .counters
                    .outbox
                    .store(n.max(0) as u64, Ordering::Relaxed);
            }
        }
        if chunks + trends + events > 0 {
            tracing::info!(
                chunks,
                trend_rows = trends,
                events,
                "store retention deleted old data"
            );
        }
        Ok(())
    }

    /// Deletes about `excess` bytes of the oldest data in the `max_size`
    /// order, in one transaction.
    fn delete_oldest(&mut self, excess: u64) -> Result<Freed, StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let mut freed = Freed::default();
        let delivered = self.delivered_sql();
        if let Some(cut) = oldest_cut(&tx, excess, &delivered)? {
            freed.up_to = Some(cut);
            freed.chunks = tx.execute("DELETE FROM history WHERE end <= ?1", [cut])?;
            freed.trend_rows = tx.execute("DELETE FROM trend WHERE hour <= ?1", [cut - 3599])?;
            freed.events = delete_events(&tx, cut)?;
            if !self.has_mqtt {
                // Rows the native uplink never sent, now that it is gone.
                let n: i64 = tx.query_row(
                    &format!(
                        "SELECT count(*) FROM journal WHERE {delivered} AND clock_max <= ?1 AND sent = 0"
                    ),
                    [cut],
                    |r| r.get(0),
                )?;
                freed.native_unsent = n.max(0) as u64;
            }
            freed.journal_rows = tx.execute(
                &format!("DELETE FROM journal WHERE {delivered} AND clock_max <= ?1"),
                [cut],
            )?;
        } else {
            self.delete_oldest_journal(&tx, excess, &mut freed)?;
        }
        tx.commit()?;
        let c = &self.inner.counters;
        if freed.unsent_points > 0 {
            c.dropped_unsent
                .fetch_add(freed.unsent_points, Ordering::Relaxed);
        }
        if freed.native_unsent > 0 {
            let _ = c
                .outbox
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(freed.native_unsent))
                });
        }
        if freed.journal_rows > 0 {
            // Uncompacted rows may be gone: recount the backlog lazily.
            for b in self.backlog.values_mut() {
                b.points = b.points.max(1);
            }
        }
        Ok(freed)
    }

    /// The last resort: the oldest journal rows (unsent data among them).
    fn delete_oldest_journal(
        &self,
        tx: &rusqlite::Transaction<'_>,
        excess: u64,
        freed: &mut Freed,
    ) -> Result<(), StoreError> {
        let mut cut_seq = None;
        {
            let mut st = tx.prepare(&format!(
                "SELECT seq, n, {}, length(data) + 40, sent FROM journal ORDER BY seq LIMIT ?1",
                self.delivered_sql()
            ))?;
            let mut rows = st.query([CUT_SCAN_ROWS])?;
            let mut acc = 0u64;
            while let Some(row) = rows.next()? {
                cut_seq = Some(row.get::<_, i64>(0)?);
                if row.get::<_, i64>(2)? == 0 {
                    freed.unsent_points += row.get::<_, i64>(1)?.max(0) as u64;
                    freed.unsent_messages += 1;
                }
                if row.get::<_, i64>(4)? == 0 {
                    freed.native_unsent += 1;
                }
                acc += row.get::<_, i64>(3)?.max(0) as u64;
                if acc >= excess {
                    break;
                }
            }
        }
        if let Some(cs) = cut_seq {
            freed.journal_rows = tx.execute("DELETE FROM journal WHERE seq <= ?1", params![cs])?;
            self.inner
                .pos
                .floor
                .fetch_max(cs.max(0) as u64, Ordering::Relaxed);
            tracing::error!(
                dropped_points = freed.unsent_points,
                dropped_messages = freed.unsent_messages,
                up_to_seq = cs,
                "no history, trends or events left to delete: the oldest UNSENT data was dropped"
            );
        }
        Ok(())
    }

    /// Points per compaction transaction: smaller while the file system is
    /// full (the transaction must fit in the WAL's room).
    pub(super) fn compact_step(&self, normal: u64) -> u64 {
        if self.full.is_some() {
            normal.min(5_000)
        } else {
            normal
        }
    }

    /// The cap now: `max_size`, or lower while the file system is full.
    fn cap(&self) -> u64 {
        let max = self.storage.max_size;
        self.full.map_or(max, |f| f.cap.min(max))
    }

    /// Near the cap (less the WAL's recent peak; checked after every commit):
    /// rounds of deleting the oldest data until the files are under nine
    /// tenths of it. A round that does not bring the files down
    /// (a reader holds the WAL) ends the rounds until the next check; so
    /// does shutdown.
    pub(super) fn enforce_size(&mut self) -> Result<(), StoreError> {
        // Room for the WAL of the largest recent transaction.
        let cap = self.cap().saturating_sub(self.wal_peak).max(self.cap() / 2);
        if self.used_bytes()? <= cap / 20 * 19 {
            return Ok(());
        }
        let target = cap / 10 * 9;
        // Free pages and the WAL count too: give them back first.
        self.shrink()?;
        let mut prev = u64::MAX;
        for _ in 0..SIZE_ROUNDS {
            let size = self.used_bytes()?;
            if size <= target {
                break;
            }
            if size >= prev {
                tracing::error!(
                    bytes = size,
                    cap,
                    wal_bytes = self.wal_bytes(),
                    "database over max_size and deleting brought it no lower (the WAL is held by a reader); trying again later"
                );
                break;
            }
            if self.closing() {
                tracing::info!("size check stopped for shutdown");
                break;
            }
            prev = size;
            // Only what deleting rows can give back.
            let excess = (size - target).min(self.data_bytes()?.max(4096));
            let freed = self.delete_oldest(excess)?;
            if freed.is_empty() {
                break;
            }
            freed.log(if self.full.is_some() {
                "the file system is full: the database is held at its size"
            } else {
                "the database's files are over max_size"
            });
            tracing::debug!(bytes = size, cap, "size round");
            self.shrink()?;
        }
        Ok(())
    }

    /// A commit failed for lack of space: gives the reserve back and, when
    /// that and the free pages inside the database are not room enough for
    /// the reserve's size (or twice what the commit needs), deletes the
    /// oldest data; the database is held at its size from now on.
    pub(super) fn make_room(&mut self) {
        if self.full.is_none() {
            self.enter_full(
                "the file system is full: freeing space inside the database, oldest data first",
            );
        }
        if self.reserve.release() {
            tracing::warn!(bytes = self.reserve.bytes, "database reserve file released");
        }
        // Checkpoint first: the WAL is rewound, so the deletions below are
        // written into its allocated room (the reserve's room lets the
        // checkpoint grow the database file, if it must).
        let _ = self.checkpoint();
        let need = (self.pending.len() as u64 * 64).max(self.reserve.bytes);
        let step = (self.reserve.bytes / 2).max(64 << 10);
        // Pages freed before and not yet reused count, and so does the room
        // the reserve gave back: nothing is deleted while that lasts.
        let mut done = self.free_pages_bytes().unwrap_or(0) + free_space(self.dir()).unwrap_or(0);
        while done < need && self.delete_for_room(step) {
            done += step;
        }
    }

    /// Deletes about `amount` bytes of the oldest data on a full file system
    /// and checkpoints; false when nothing could be deleted.
    fn delete_for_room(&mut self, amount: u64) -> bool {
        let ok = match self.delete_oldest(amount) {
            Ok(freed) if !freed.is_empty() => {
                freed.log("the file system is full: room for the newest samples");
                true
            }
            Ok(_) => {
                tracing::error!("file system full and nothing left in the database to delete");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "file system full: deleting old data failed");
                false
            }
        };
        let _ = self.checkpoint();
        ok
    }

    /// While the file system is full: keeps room (free pages inside the
    /// database, or on the file system) of half the reserve's size, deleting
    /// the oldest data before it runs out, so that no commit and no
    /// checkpoint needs the database file to grow (a checkpoint that cannot
    /// grow it leaves the WAL unusable).
    fn keep_free_pages(&mut self) {
        let want = (self.reserve.bytes / 2).max(64 << 10);
        let room = self.free_pages_bytes().unwrap_or(0) + free_space(self.dir()).unwrap_or(0);
        if room >= want {
            return;
        }
        // A small database keeps its newer three quarters.
        let amount = want.min(self.data_bytes().unwrap_or(0) / 4).max(4096);
        self.delete_for_room(amount);
    }

    /// At open: a file system without room for the reserve counts as full.
    pub(super) fn check_room_at_open(&mut self) {
        if self.reserve.refill() {
            return;
        }
        self.enter_full(
            "the file system has no room for the database's reserve: treating it as full",
        );
    }

    /// The file system is full from now on: logged (an error), shown by
    /// `/health`, and the database held at its size (without the reserve).
    fn enter_full(&mut self, message: &str) {
        let files = self.files_bytes().unwrap_or(0);
        tracing::error!(
            free_bytes = free_space(self.dir()),
            database_bytes = files,
            reserve_bytes = self.reserve.bytes,
            "{message}"
        );
        self.full = Some(Full {
            since: Instant::now(),
            cap: files.saturating_sub(self.reserve.len()).max(1 << 20),
        });
        self.inner.counters.disk_full.store(true, Ordering::Relaxed);
    }

    /// While the file system is full: refills the reserve when it has room,
    /// and ends the full state once it has room for a quarter of the
    /// database again.
    pub(super) fn watch_space(&mut self) {
        let Some(full) = self.full else { return };
        self.keep_free_pages();
        if !self.reserve.refill() {
            return;
        }
        let files = self.files_bytes().unwrap_or(0);
        let room = (files / 4).max(self.reserve.bytes.saturating_mul(2));
        if free_space(self.dir()).is_some_and(|f| f >= room) {
            self.full = None;
            self.inner
                .counters
                .disk_full
                .store(false, Ordering::Relaxed);
            tracing::info!(
                full_for = ?full.since.elapsed(),
                "the file system has room again; storage is back to normal"
            );
        }
    }
}

/// Whether a failed commit failed for lack of space: SQLITE_FULL, ENOSPC, or
/// an I/O error while the file system holding `dir` has no room left.
pub(crate) fn is_disk_full(e: &StoreError, dir: &Path) -> bool {
    let no_room = || free_space(dir).is_some_and(|f| f < 64 << 10);
    match e {
        StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _)) => {
            f.code == rusqlite::ErrorCode::DiskFull
                || (f.code == rusqlite::ErrorCode::SystemIoFailure && no_room())
        }
        StoreError::Io(e) => e.raw_os_error() == Some(libc::ENOSPC) || no_room(),
        _ => false,
    }
}
