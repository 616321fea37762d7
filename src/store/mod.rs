//! SQLite storage on its own thread: history, hourly trends, the outbox.
//!
//! Design (see also `writer.rs`):
//! - [`Store::push`] appends to a shared buffer under a mutex: no I/O, no wake-up.
//! - One writer thread owns the write connection. It wakes once per commit
//!   interval (or at once for [`Store::flush`] / [`Store::close`]), applies
//!   deadband/heartbeat, updates the hourly trends, and commits the new history
//!   points as `journal` rows (one or more per host): each row is also the
//!   MQTT data message with `seq` = the row's `seq`.
//! - Compaction (in the writer, every few minutes per host) moves journal points
//!   into per-item `history` chunks; journal rows are deleted once sent and compacted.
//! - Queries run on read-only connections of their own threads
//!   ([`worker::DbThreads`]): history and trends on [`READERS`] of them, the
//!   outbox on one of its own, so a long history query never holds up the
//!   uplink. Every method that reads the database is an `async fn` that hands
//!   its work to those threads.
//! - Retention, the `max_size` cap, WAL checkpoints and a full file system:
//!   `space.rs`. Samples are kept whatever their clock (see `writer.rs`).

mod codec;
mod read;
mod schema;
mod space;
#[cfg(test)]
mod tests;
pub(crate) mod worker;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{params, Connection};

use crate::model::{Config, StorageSpec};

pub use read::{HistoryLimit, OverCap};
#[cfg(test)]
pub(crate) use schema::pragmas;
pub use schema::{configure as configure_connection, open_control, open_read, SCHEMA_VERSION};
pub(crate) use worker::DbThreads;

/// Threads (each with its own read-only connection) that answer history and
/// trend queries.
pub const READERS: usize = 4;

/// A stable number for an item (host, key), kept in the database.
pub type ItemId = u32;

/// Most points in one journal row, i.e. one MQTT data message.
pub const MAX_POINTS_PER_MESSAGE: usize = 2000;
/// Upper bound on the estimated JSON size of one data message (keys included).
pub const MAX_MESSAGE_JSON_BYTES: usize = 192 * 1024;
/// Target size of a history chunk blob: small enough to stay inside a 4 KiB
/// b-tree page (no overflow pages).
pub(crate) const CHUNK_TARGET_BYTES: usize = 900;

/// Bytes a history point takes on disk, about (slowly changing values;
/// noise takes up to 12: `cargo bench --bench ingest`).
pub const HISTORY_BYTES_PER_POINT: u64 = 4;
/// Bytes an hourly trend bucket takes on disk, with its index entries.
pub const TREND_BYTES_PER_BUCKET: u64 = 90;

/// What the configured items need on disk at their poll intervals and
/// retentions, if every sample is a history point (no deadband).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeEstimate {
    pub history: u64,
    pub trends: u64,
}

impl SizeEstimate {
    pub fn of(config: &Config) -> SizeEstimate {
        let st = &config.storage;
        let (mut points, mut buckets) = (0u64, 0u64);
        for it in config.hosts.iter().flat_map(|h| h.items.iter()) {
            let every = it.poll_interval.as_secs_f64().max(0.001);
            points = points.saturating_add((st.history_retention.as_secs_f64() / every) as u64);
            let hourly = every.max(3600.0);
            buckets = buckets.saturating_add((st.trend_retention.as_secs_f64() / hourly) as u64);
        }
        SizeEstimate {
            history: points.saturating_mul(HISTORY_BYTES_PER_POINT),
            trends: buckets.saturating_mul(TREND_BYTES_PER_BUCKET),
        }
    }

    pub fn total(&self) -> u64 {
        self.history.saturating_add(self.trends)
    }
}

/// One good reading of an item, in engineering units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub item: ItemId,
    /// Unix seconds.
    pub clock: i64,
    pub value: f64,
}

/// One hourly trend bucket.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TrendBucket {
    pub num: u64,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

/// Figures for `/health` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    /// Database file, WAL and reserve file, bytes.
    pub db_bytes: u64,
    /// Samples handed to `push` since open.
    pub samples_received: u64,
    /// History points committed since open (after deadband).
    pub history_points: u64,
    /// Successful commits since open.
    pub commits: u64,
    /// Failed commits since open.
    pub commit_errors: u64,
    /// History points that were never sent and are gone (memory cap, `max_size`).
    pub dropped_unsent: u64,
    /// Outbox messages (journal rows) not yet marked sent.
    pub outbox_messages: u64,
    /// Steps of the wall clock backwards seen since open.
    pub clock_steps_back: u64,
    /// Jumps of the wall clock forward (beyond the expected time) seen since open.
    pub clock_steps_forward: u64,
    /// The file system is full: old data is deleted to store the newest.
    pub disk_full: bool,
}

/// One MQTT data message of `R/data/<host>`.
/// An uplink reading the outbox: each has its own durable position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Uplink {
    /// `[mqtt]`: per-message `sent` marks (`mark_sent`), at least once.
    Native,
    /// `[sparkplug]`: one position, everything up to it delivered.
    Sparkplug,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub seq: u64,
    pub host: String,
    /// Per item key, its points in clock order.
    pub items: Vec<(String, Vec<(i64, f64)>)>,
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the store is closed")]
    Closed,
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database schema version {found} is newer than this program's ({supported}); refusing to touch it")]
    TooNew { found: i32, supported: i32 },
    #[error("commit failed (data kept in memory, retrying): {0}")]
    Commit(String),
    #[error("corrupt data in the database: {0}")]
    Corrupt(#[from] codec::CodecError),
}

/// Tuning knobs; the defaults suit the daemon, tests shrink them.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Compact a host's journal rows once the oldest is this old...
    pub compact_age: Duration,
    /// ...or once the host has this many uncompacted points.
    pub compact_points: u64,
    /// At most this many points are compacted per writer cycle (spreads the work).
    pub compact_budget: u64,
    /// How often the current hour's trend buckets are written out.
    pub trend_flush_interval: Duration,
    /// How often retention runs (also once at open).
    pub retention_interval: Duration,
    /// How often the database size is checked against `max_size`.
    pub size_check_interval: Duration,
    /// Memory cap for samples not yet committed (push buffer, and again for
    /// history points kept after failed commits); beyond it the oldest are dropped.
    pub max_buffered: usize,
    /// A buffer this full wakes the writer to drain it (apply deadband and
    /// trends) before its next drain tick; keeps the buffer small when many
    /// hosts deliver at the same instant. Commits still happen at their tick.
    pub high_water: usize,
    /// SQLite busy timeout.
    pub busy_timeout: Duration,
    /// Bytes kept free in a reserve file for deleting on a full file
    /// system; None: a sixteenth of `max_size` (or of the file system when
    /// smaller), 256 KiB to 8 MiB; 0: none.
    pub disk_reserve: Option<u64>,
    /// Commit ticks are aligned to wall-clock multiples of `commit_interval`
    /// plus this offset (so samples of polls aligned on whole seconds are
    /// committed shortly after they arrive). None: a quarter of the interval, at most 250 ms.
    pub tick_phase: Option<Duration>,
}

/// Tries of the final commit at close after the first fails, and the pause
/// between two.
pub const CLOSE_RETRIES: u32 = 3;
pub const CLOSE_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// The longest one step of the writer's maintenance runs before the writer
/// looks whether the store is closing (a compaction looks every 256 items and
/// rolls back; one round of the size cap; the retention deletes): generous.
pub const MAINTENANCE_STEP_MAX: Duration = Duration::from_secs(3);

impl StoreOptions {
    /// The longest [`Store::close`] takes: the maintenance step under way,
    /// then the final commit and its retries, each waiting up to the busy
    /// timeout for the database's lock.
    pub fn close_budget(&self) -> Duration {
        MAINTENANCE_STEP_MAX
            + self.busy_timeout * (1 + CLOSE_RETRIES)
            + CLOSE_RETRY_PAUSE * CLOSE_RETRIES
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            compact_age: Duration::from_secs(300),
            compact_points: 500_000,
            compact_budget: 1_000_000,
            trend_flush_interval: Duration::from_secs(60),
            retention_interval: Duration::from_secs(3600),
            size_check_interval: Duration::from_secs(10),
            max_buffered: 2_000_000,
            high_water: 16_384,
            busy_timeout: Duration::from_secs(5),
            disk_reserve: None,
            tick_phase: None,
        }
    }
}

/// Where the journal and the uplinks' positions are (the writer keeps them).
#[derive(Default)]
pub(crate) struct Positions {
    /// `[sparkplug]` is configured (as the writer last applied it).
    spb_configured: std::sync::atomic::AtomicBool,
    /// Sparkplug's position as advanced (committed by the writer's next commit).
    spb: AtomicU64,
    /// The highest journal seq committed.
    last_seq: AtomicU64,
    /// Every journal row up to this seq is gone (the size cap's last resort).
    floor: AtomicU64,
    /// The native uplink's position: below the lowest unsent row.
    native: AtomicU64,
}

pub(crate) struct Counters {
    samples_received: AtomicU64,
    history_points: AtomicU64,
    commits: AtomicU64,
    commit_errors: AtomicU64,
    dropped_unsent: AtomicU64,
    outbox: AtomicU64,
    clock_steps_back: AtomicU64,
    clock_steps_forward: AtomicU64,
    /// The file system is full (see `space.rs`).
    disk_full: std::sync::atomic::AtomicBool,
}

/// How the writer treats one configured item; 12 bytes, one per item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ItemSetting {
    pub host_id: u32,
    /// Seconds; `u32::MAX` when none.
    pub heartbeat: u32,
    /// 0: no deadband; else `Settings::deadbands[deadband - 1]` (configs use
    /// few distinct deadbands, so a table beats 8 bytes per item).
    pub deadband: u16,
    /// Length of the key, for the JSON size estimate of a message.
    pub key_len: u8,
    /// Configured (samples of unconfigured items are dropped).
    pub active: bool,
}

impl Default for ItemSetting {
    fn default() -> Self {
        ItemSetting {
            host_id: 0,
            heartbeat: u32::MAX,
            deadband: 0,
            key_len: 0,
            active: false,
        }
    }
}

/// What the writer should adopt at its next cycle (from open/reconfigure).
pub(crate) struct Settings {
    pub storage: StorageSpec,
    pub has_mqtt: bool,
    pub has_sparkplug: bool,
    /// Every configured item.
    pub items: Vec<(ItemId, ItemSetting)>,
    /// The distinct deadbands the items refer to.
    pub deadbands: Vec<f64>,
}

/// State shared between handles and the writer, under one mutex.
pub(crate) struct Shared {
    buf: Vec<Packed>,
    /// `close` was called: pushes are refused.
    closed: bool,
    /// The writer should do its final commit and stop.
    closing: bool,
    /// The writer should stop at once without committing (tests: a crash).
    kill: bool,
    writer_alive: bool,
    /// When the writer last finished a cycle (for the service watchdog).
    last_cycle: std::time::Instant,
    /// Flush requests: the writer serves every request up to `req_gen` per cycle.
    req_gen: u64,
    done_gen: u64,
    done_result: Result<(), String>,
    /// Compaction/retention/size check requested (with the next flush).
    maintain_req: bool,
    /// mark_sent seqs not yet committed by the writer.
    marks: HashSet<u64>,
    settings: Option<Settings>,
    hw_notified: bool,
    refused_pushes: u64,
    dropped_pushes: u64,
    bad_clocks: u64,
}

/// A sample as the store keeps it in memory: (item, clock, value), 16 bytes
/// (at 100,000 samples per second the buffers matter).
pub(crate) type Packed = (ItemId, u32, f64);

/// None for a clock outside what history can hold (1970..2106).
// The per-item budgets of ARCHITECTURE.md ("Memory per item is budgeted"),
// held by the compiler: a packed sample, the writer's settings of an item, and
// the live part (newest point + current trend bucket).
const _: () = {
    assert!(std::mem::size_of::<Packed>() == 16);
    assert!(std::mem::size_of::<ItemSetting>() == 12);
    assert!(std::mem::size_of::<(i64, f64)>() + std::mem::size_of::<Option<TrendAcc>>() == 56);
};

fn pack(s: &Sample) -> Option<Packed> {
    u32::try_from(s.clock).ok().map(|c| (s.item, c, s.value))
}

/// The current hour's trend accumulator of one item.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TrendAcc {
    pub hour: i64,
    /// Samples in the hour (an hour holds at most 3,600,000 at 1 ms polls).
    pub num: u32,
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub dirty: bool,
}

impl TrendAcc {
    pub fn new(hour: i64, v: f64) -> Self {
        TrendAcc {
            hour,
            num: 1,
            min: v,
            max: v,
            sum: v,
            dirty: true,
        }
    }

    #[inline]
    pub fn add(&mut self, v: f64) {
        self.num = self.num.saturating_add(1);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
        self.sum += v;
        self.dirty = true;
    }

    pub fn bucket(&self) -> TrendBucket {
        TrendBucket {
            num: u64::from(self.num),
            min: self.min,
            avg: if self.num > 0 {
                self.sum / self.num as f64
            } else {
                0.0
            },
            max: self.max,
        }
    }
}

/// Per-item state readers also see: the newest history point, the current trend bucket.
#[derive(Default)]
pub(crate) struct Live {
    /// Per item: (clock, value) of the newest history point; clock `i64::MIN` when none.
    pub last: Vec<(i64, f64)>,
    pub cur: Vec<Option<TrendAcc>>,
}

/// "No history point yet" in [`Live::last`].
pub(crate) const NO_POINT: (i64, f64) = (i64::MIN, 0.0);

impl Live {
    pub fn ensure(&mut self, id: ItemId) {
        let n = id as usize + 1;
        if self.last.len() < n {
            self.last.resize(n, NO_POINT);
            self.cur.resize(n, None);
        }
    }

    /// The newest history point of an item.
    pub fn last(&self, id: ItemId) -> Option<(i64, f64)> {
        self.last
            .get(id as usize)
            .copied()
            .filter(|p| p.0 != i64::MIN)
    }
}

pub(crate) struct Inner {
    path: PathBuf,
    opts: StoreOptions,
    shared: Mutex<Shared>,
    /// The writer waits on this.
    wake: Condvar,
    /// Flush/close waiters wait on this.
    done: Condvar,
    items: RwLock<schema::Items>,
    live: Mutex<Live>,
    /// History and trend queries; registering a reloaded config's items.
    readers: DbThreads,
    /// The outbox's reads (the uplink never waits behind a history query).
    outbox_reader: DbThreads,
    /// Outbox messages read ahead of the uplink's cursor.
    fresh: Mutex<Fresh>,
    /// The same for the Sparkplug uplink (rows after its cursor).
    spb_fresh: Mutex<Fresh>,
    /// The Sparkplug uplink's reads of the outbox.
    spb_reader: DbThreads,
    /// Positions of the journal, shared with the writer.
    pos: Positions,
    counters: Counters,
    commits_tx: tokio::sync::watch::Sender<u64>,
    /// Bumped each time the writer takes the push buffer.
    drained_tx: tokio::sync::watch::Sender<u64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Store {
    /// The longest [`Store::close`] takes with this store's options.
    pub fn close_budget(&self) -> Duration {
        self.inner.opts.close_budget()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Closes the store when the last handle goes away.
struct CloseOnDrop(Arc<Inner>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Err(e) = close_inner(&self.0) {
            tracing::error!(error = %e, "store: closing on drop failed");
        }
    }
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    _guard: Arc<CloseOnDrop>,
}

fn settings_of(config: &Config, items: &schema::Items) -> Settings {
    let mut list = Vec::with_capacity(config.hosts.iter().map(|h| h.items.len()).sum());
    let mut deadbands: Vec<f64> = Vec::new();
    let mut deadband_index = |d: Option<f64>| -> u16 {
        let Some(d) = d.filter(|d| d.is_finite()) else {
            return 0;
        };
        if let Some(i) = deadbands.iter().position(|x| x.to_bits() == d.to_bits()) {
            return (i + 1) as u16;
        }
        if deadbands.len() >= usize::from(u16::MAX) {
            tracing::warn!(
                deadband = d,
                "more than 65,535 distinct deadbands: this one is ignored"
            );
            return 0;
        }
        deadbands.push(d);
        deadbands.len() as u16
    };
    for h in &config.hosts {
        for it in &h.items {
            if let Some(id) = items.id_of(&h.host, &it.key) {
                let hid = items.get(id).map(|(hid, _)| hid).unwrap_or(0);
                list.push((
                    id,
                    ItemSetting {
                        host_id: hid,
                        key_len: it.key.len().min(usize::from(u8::MAX)) as u8,
                        active: true,
                        heartbeat: it
                            .heartbeat()
                            .map_or(u32::MAX, |d| d.as_secs().min(u32::MAX as u64 - 1) as u32),
                        deadband: deadband_index(it.deadband()),
                    },
                ));
            }
        }
    }
    Settings {
        storage: config.storage.clone(),
        has_mqtt: config.mqtt.is_some(),
        has_sparkplug: config.sparkplug.is_some(),
        items: list,
        deadbands,
    }
}

impl Store {
    /// Opens (creating if needed) `data_dir/modbridge.db`, registers the config's
    /// items and starts the writer thread.
    pub fn open(config: &Config) -> Result<Store, StoreError> {
        Store::open_with(config, StoreOptions::default())
    }

    /// [`Store::open`] with tuning options.
    pub fn open_with(config: &Config, opts: StoreOptions) -> Result<Store, StoreError> {
        let dir = &config.gateway.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join("modbridge.db");
        let conn = schema::open_write(&path, opts.busy_timeout)?;
        let items = schema::register(&conn, config)?;
        let settings = settings_of(config, &items);
        let mut live = Live::default();
        let max_id = items.max_id();
        live.ensure(max_id);
        let outbox: i64 =
            conn.query_row("SELECT count(*) FROM journal WHERE sent = 0", [], |r| {
                r.get(0)
            })?;
        let readers = (0..READERS)
            .map(|_| schema::open_read(&path, opts.busy_timeout))
            .collect::<Result<Vec<_>, _>>()?;
        // History answers are bulk work: they yield the CPU to polling.
        let readers = DbThreads::spawn_with("store-read", readers, worker::Priority::Background)?;
        let outbox_reader = DbThreads::spawn(
            "store-outbox",
            vec![schema::open_read(&path, opts.busy_timeout)?],
        )?;
        let spb_reader = DbThreads::spawn(
            "store-spb",
            vec![schema::open_read(&path, opts.busy_timeout)?],
        )?;
        let (commits_tx, _) = tokio::sync::watch::channel(0u64);
        let inner = Arc::new(Inner {
            path: path.clone(),
            opts,
            shared: Mutex::new(Shared {
                buf: Vec::new(),
                closed: false,
                closing: false,
                kill: false,
                writer_alive: true,
                last_cycle: std::time::Instant::now(),
                req_gen: 0,
                done_gen: 0,
                done_result: Ok(()),
                maintain_req: false,
                marks: HashSet::new(),
                settings: None,
                hw_notified: false,
                refused_pushes: 0,
                dropped_pushes: 0,
                bad_clocks: 0,
            }),
            wake: Condvar::new(),
            done: Condvar::new(),
            items: RwLock::new(items),
            live: Mutex::new(live),
            readers,
            outbox_reader,
            fresh: Mutex::new(Fresh::default()),
            spb_fresh: Mutex::new(Fresh::default()),
            spb_reader,
            pos: Positions::default(),
            counters: Counters {
                samples_received: AtomicU64::new(0),
                history_points: AtomicU64::new(0),
                commits: AtomicU64::new(0),
                commit_errors: AtomicU64::new(0),
                dropped_unsent: AtomicU64::new(0),
                outbox: AtomicU64::new(outbox.max(0) as u64),
                clock_steps_back: AtomicU64::new(0),
                clock_steps_forward: AtomicU64::new(0),
                disk_full: std::sync::atomic::AtomicBool::new(false),
            },
            commits_tx,
            drained_tx: tokio::sync::watch::Sender::new(0),
            thread: Mutex::new(None),
        });
        let w = writer::Writer::new(inner.clone(), conn, settings)?;
        let handle = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || w.run())?;
        *lock(&inner.thread) = Some(handle);
        tracing::info!(path = %path.display(), "store opened");
        Ok(Store {
            _guard: Arc::new(CloseOnDrop(inner.clone())),
            inner,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The id of an item of the current config.
    pub fn item_id(&self, host: &str, key: &str) -> Option<ItemId> {
        let items = self.inner.items.read().unwrap_or_else(|e| e.into_inner());
        items.id_of(host, key)
    }

    /// Hands good samples to the writer; no I/O, never blocks on the disk.
    pub fn push(&self, samples: &[Sample]) {
        if samples.is_empty() {
            return;
        }
        let inner = &*self.inner;
        let mut s = lock(&inner.shared);
        if s.closed {
            s.refused_pushes += samples.len() as u64;
            if s.refused_pushes == samples.len() as u64 {
                tracing::warn!(samples = samples.len(), "store is closed: samples refused");
            }
            return;
        }
        let before = s.buf.len();
        s.buf.extend(samples.iter().filter_map(pack));
        let bad = samples.len() - (s.buf.len() - before);
        if bad > 0 {
            s.bad_clocks += bad as u64;
            if s.bad_clocks == bad as u64 || s.bad_clocks.is_power_of_two() {
                tracing::warn!(
                    count = s.bad_clocks,
                    "samples with a clock outside 1970..2106 dropped"
                );
            }
        }
        inner
            .counters
            .samples_received
            .fetch_add(samples.len() as u64, Ordering::Relaxed);
        let cap = inner.opts.max_buffered.max(1);
        if s.buf.len() > cap {
            let excess = s.buf.len() - cap;
            s.buf.drain(..excess);
            s.dropped_pushes += excess as u64;
            inner
                .counters
                .dropped_unsent
                .fetch_add(excess as u64, Ordering::Relaxed);
            if s.dropped_pushes == excess as u64 || s.dropped_pushes % 1_000_000 < excess as u64 {
                tracing::error!(
                    dropped = excess,
                    dropped_total = s.dropped_pushes,
                    cap,
                    "store: writer is behind, oldest uncommitted samples dropped"
                );
            }
        }
        if s.buf.len() >= inner.opts.high_water && !s.hw_notified {
            s.hw_notified = true;
            inner.wake.notify_one();
        }
    }

    /// Waits (at most `limit`) until the writer has taken the push buffer, if
    /// it holds more than four times `high_water` samples. Host tasks call this
    /// after pushing, so a writer that falls behind (a slow disk, a busy CPU)
    /// slows polling a little instead of letting the buffer grow.
    pub async fn wait_if_backlogged(&self, limit: Duration) {
        let mut drained = self.inner.drained_tx.subscribe();
        let backlogged = {
            let s = lock(&self.inner.shared);
            !s.closed && s.buf.len() >= self.inner.opts.high_water.saturating_mul(4)
        };
        if backlogged {
            let _ = tokio::time::timeout(limit, drained.changed()).await;
        }
    }

    /// Commits everything pushed so far and waits until it is durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.request(false)
    }

    /// Flushes, then runs compaction of every journal row, retention and the
    /// size check now (normally they run on their own schedule).
    pub fn maintain(&self) -> Result<(), StoreError> {
        self.request(true)
    }

    fn request(&self, maintain: bool) -> Result<(), StoreError> {
        let inner = &*self.inner;
        let mut s = lock(&inner.shared);
        if s.closed || !s.writer_alive {
            return Err(StoreError::Closed);
        }
        s.req_gen += 1;
        let gen = s.req_gen;
        s.maintain_req |= maintain;
        inner.wake.notify_one();
        while s.done_gen < gen {
            if !s.writer_alive {
                return Err(StoreError::Closed);
            }
            s = inner.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.done_result.clone().map_err(StoreError::Commit)
    }

    /// Commits everything and stops the writer thread. Later pushes are
    /// refused. Takes at most [`StoreOptions::close_budget`].
    pub fn close(&self) -> Result<(), StoreError> {
        close_inner(&self.inner)
    }

    /// Simulates a crash: the writer stops without committing what is buffered.
    #[cfg(test)]
    pub(crate) fn kill(&self) {
        {
            let mut s = lock(&self.inner.shared);
            s.kill = true;
            s.closed = true;
            self.inner.wake.notify_one();
        }
        if let Some(h) = lock(&self.inner.thread).take() {
            let _ = h.join();
        }
    }

    /// History points of an item in `[from, to]`, ascending; with `limit`,
    /// the newest `limit`. `limit` is applied while reading: the query holds
    /// no more points than it returns.
    pub async fn history(
        &self,
        item: ItemId,
        from: i64,
        to: i64,
        limit: Option<usize>,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let limit = HistoryLimit {
            newest: limit,
            cap: None,
        };
        match self.history_with(item, from, to, limit, Vec::new()).await? {
            (Ok(_), points) => Ok(points),
            // Without a cap there is nothing to exceed.
            (Err(_), _) => Ok(Vec::new()),
        }
    }

    /// Reads history as [`Store::history`] does, on a reader thread, handing
    /// the points to `sink` there in batches as they are decoded (the API
    /// streams its answer from it). Returns the sink with the number of points
    /// handed over, or [`OverCap`] (before anything was handed over) when the
    /// answer would have more than `limit.cap` points.
    pub async fn history_with<S: HistorySink>(
        &self,
        item: ItemId,
        from: i64,
        to: i64,
        limit: HistoryLimit,
        mut sink: S,
    ) -> Result<(Result<usize, OverCap>, S), StoreError> {
        if from > to || limit.newest == Some(0) {
            return Ok((Ok(0), sink));
        }
        let host_id = {
            let items = self.inner.items.read().unwrap_or_else(|e| e.into_inner());
            match items.get(item) {
                Some((hid, _)) => hid,
                None => return Ok((Ok(0), sink)),
            }
        };
        self.inner
            .readers
            .call(move |conn| {
                let n = read::history(conn, item, host_id, (from, to), limit, &mut sink)?;
                Ok((n, sink))
            })
            .await
    }

    /// Hourly trend buckets of an item whose hour starts in `[from, to]`
    /// (the bucket containing `from` included), with the current hour.
    pub async fn trend(
        &self,
        item: ItemId,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, TrendBucket)>, StoreError> {
        let lo = from - from.rem_euclid(3600);
        if lo > to {
            return Ok(Vec::new());
        }
        let inner = self.inner.clone();
        self.inner
            .readers
            .call(move |conn| {
                let mut out = read::trend(conn, item, lo, to)?;
                let cur = {
                    let live = lock(&inner.live);
                    live.cur.get(item as usize).copied().flatten()
                };
                if let Some(acc) = cur {
                    if acc.hour >= lo && acc.hour <= to {
                        // The in-memory bucket is the whole hour (reloaded at open).
                        match out.binary_search_by_key(&acc.hour, |(h, _)| *h) {
                            Ok(i) => out[i].1 = acc.bucket(),
                            Err(i) => out.insert(i, (acc.hour, acc.bucket())),
                        }
                    }
                }
                Ok(out)
            })
            .await
    }

    /// The newest history point of an item, to restore `lastvalue` after a restart.
    /// Includes points not yet committed.
    pub fn latest(&self, item: ItemId) -> Result<Option<(i64, f64)>, StoreError> {
        let live = lock(&self.inner.live);
        Ok(live.last(item))
    }

    /// Unsent outbox messages with `seq > after_seq`, ascending, at most
    /// `max_messages`; read on the outbox's own connection.
    pub async fn outbox_after(
        &self,
        after_seq: u64,
        max_messages: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        let served = lock(&self.inner.fresh).take(after_seq, max_messages);
        if let Some(msgs) = served {
            self.read_ahead();
            return Ok(msgs);
        }
        let marks: HashSet<u64> = lock(&self.inner.shared).marks.clone();
        let inner = self.inner.clone();
        self.inner
            .outbox_reader
            .call(move |conn| {
                // Read ahead: the next calls are answered from memory.
                let commits = lock(&inner.fresh).commits;
                let want = max_messages.saturating_add(READ_AHEAD);
                let mut msgs = outbox_messages(&inner, conn, after_seq, want, &marks)?;
                let full = msgs.len() >= want;
                let ahead = msgs.split_off(msgs.len().min(max_messages));
                let last = msgs.last().map_or(after_seq, |m| m.seq);
                let mut fresh = lock(&inner.fresh);
                // A commit during the read may have added rows it missed.
                let more = full || fresh.commits != commits;
                fresh.reset(last, ahead, more);
                Ok(msgs)
            })
            .await
    }

    /// While a backlog drains: reads the next messages in the background once
    /// fewer than three quarters of [`READ_AHEAD`] are left in memory, so the uplink's
    /// next requests find them there.
    fn read_ahead(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let tail = {
            let mut fresh = lock(&self.inner.fresh);
            if !fresh.more || fresh.reading || fresh.msgs.len() >= READ_AHEAD * 3 / 4 {
                return;
            }
            let Some(after) = fresh.after else { return };
            fresh.reading = true;
            (fresh.msgs.back().map_or(after, |m| m.seq), fresh.commits)
        };
        let marks: HashSet<u64> = lock(&self.inner.shared).marks.clone();
        let inner = self.inner.clone();
        let threads = self.inner.outbox_reader.clone();
        runtime.spawn(async move {
            let read = threads
                .call(move |conn| {
                    let (from, commits) = tail;
                    let msgs = outbox_messages(&inner, conn, from, READ_AHEAD, &marks);
                    let mut fresh = lock(&inner.fresh);
                    fresh.reading = false;
                    let same = fresh.after.is_some()
                        && fresh.msgs.back().map_or(fresh.after, |m| Some(m.seq)) == Some(from);
                    match msgs {
                        Ok(msgs) if same => {
                            fresh.more = msgs.len() >= READ_AHEAD || fresh.commits != commits;
                            fresh.msgs.extend(msgs);
                        }
                        // The uplink started over meanwhile: its next request reads.
                        Ok(_) => {}
                        Err(_) => fresh.after = None,
                    }
                    Ok(())
                })
                .await;
            if let Err(e) = read {
                tracing::debug!(error = %e, "outbox read-ahead failed");
            }
        });
    }

    /// Marks outbox messages as delivered (after the broker's PUBACK). The marks
    /// are committed by the writer with its next commit (and on close); until
    /// then `outbox_after` already leaves them out. After a crash they may be
    /// sent again, with the same seq and content.
    pub fn mark_sent(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let mut s = lock(&self.inner.shared);
        if s.closed {
            return Err(StoreError::Closed);
        }
        s.marks.extend(seqs.iter().copied());
        Ok(())
    }

    /// Outbox messages (journal rows) with `seq > after_seq`, ascending, at
    /// most `max`, that `uplink` has not delivered: for the native uplink
    /// [`Store::outbox_after`]; for Sparkplug every row after its position
    /// (read on a connection of its own).
    pub async fn outbox_from(
        &self,
        uplink: Uplink,
        after_seq: u64,
        max: usize,
    ) -> Result<Vec<OutboxMessage>, StoreError> {
        match uplink {
            Uplink::Native => self.outbox_after(after_seq, max).await,
            Uplink::Sparkplug => {
                if lock(&self.inner.shared).closed {
                    return Err(StoreError::Closed);
                }
                if let Some(msgs) = lock(&self.inner.spb_fresh).take(after_seq, max) {
                    return Ok(msgs);
                }
                let inner = self.inner.clone();
                self.inner
                    .spb_reader
                    .call(move |conn| {
                        let commits = lock(&inner.spb_fresh).commits;
                        let msgs = read_rows(&inner, conn, SPB_ROWS, after_seq, max, None)?;
                        let last = msgs.last().map_or(after_seq, |m| m.seq);
                        let mut fresh = lock(&inner.spb_fresh);
                        // Caught up: the writer adds each commit's rows from now on.
                        let more = msgs.len() >= max || fresh.commits != commits;
                        fresh.reset(last, Vec::new(), more);
                        Ok(msgs)
                    })
                    .await
            }
        }
    }

    /// The highest seq `uplink` has delivered with every row before it (0:
    /// none). Sparkplug's includes what [`Store::advance`] moved it to and
    /// the writer has not committed yet. On a store without `[sparkplug]`,
    /// Sparkplug's is 0; right after `[sparkplug]` is configured (at open,
    /// or at the writer's next cycle after a reload) it starts at the newest
    /// row: what was written before the uplink existed is not its backlog.
    pub fn position(&self, uplink: Uplink) -> u64 {
        let p = &self.inner.pos;
        match uplink {
            Uplink::Native => p.native.load(Ordering::Relaxed),
            Uplink::Sparkplug => {
                if p.spb_configured.load(Ordering::Relaxed) {
                    p.spb.load(Ordering::Relaxed)
                } else {
                    0
                }
            }
        }
    }

    /// Moves `uplink`'s position: for Sparkplug everything `<= seq` is
    /// delivered (a position never moves back); for the native uplink the
    /// message `seq` is marked sent ([`Store::mark_sent`]). Durable with the
    /// writer's next commit, like `mark_sent`.
    pub fn advance(&self, uplink: Uplink, seq: u64) -> Result<(), StoreError> {
        match uplink {
            Uplink::Native => self.mark_sent(&[seq]),
            Uplink::Sparkplug => {
                if lock(&self.inner.shared).closed {
                    return Err(StoreError::Closed);
                }
                self.inner.pos.spb.fetch_max(seq, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Outbox messages `uplink` has not delivered yet (0 for Sparkplug
    /// when it is not configured).
    pub fn backlog(&self, uplink: Uplink) -> u64 {
        match uplink {
            Uplink::Native => self.outbox_len(),
            Uplink::Sparkplug => {
                let p = &self.inner.pos;
                if !p.spb_configured.load(Ordering::Relaxed) {
                    return 0;
                }
                // Rows after the position are never deleted but by the
                // size cap's last resort, which takes the oldest: they are
                // the seqs from there to the newest.
                let from = p
                    .spb
                    .load(Ordering::Relaxed)
                    .max(p.floor.load(Ordering::Relaxed));
                p.last_seq.load(Ordering::Relaxed).saturating_sub(from)
            }
        }
    }

    /// Outbox messages not yet marked sent.
    pub fn outbox_len(&self) -> u64 {
        let pending = lock(&self.inner.shared).marks.len() as u64;
        self.inner
            .counters
            .outbox
            .load(Ordering::Relaxed)
            .saturating_sub(pending)
    }

    /// Bumped after every commit that added outbox messages.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.commits_tx.subscribe()
    }

    /// When the writer thread last finished a cycle (whether its commit
    /// worked or not: a failing commit is retried, not a hang); None once it
    /// has stopped. The service watchdog tells a stuck writer by it.
    pub fn writer_heartbeat(&self) -> Option<std::time::Instant> {
        let s = lock(&self.inner.shared);
        s.writer_alive.then_some(s.last_cycle)
    }

    /// Current figures.
    pub fn stats(&self) -> StoreStats {
        let c = &self.inner.counters;
        StoreStats {
            db_bytes: db_file_bytes(&self.inner.path),
            samples_received: c.samples_received.load(Ordering::Relaxed),
            history_points: c.history_points.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            commit_errors: c.commit_errors.load(Ordering::Relaxed),
            dropped_unsent: c.dropped_unsent.load(Ordering::Relaxed),
            outbox_messages: self.outbox_len(),
            clock_steps_back: c.clock_steps_back.load(Ordering::Relaxed),
            clock_steps_forward: c.clock_steps_forward.load(Ordering::Relaxed),
            disk_full: c.disk_full.load(Ordering::Relaxed),
        }
    }

    /// Registers the items of a reloaded config (new ids for new items, new
    /// deadbands, storage settings, with or without MQTT). Takes effect at the
    /// writer's next cycle; ids are usable when this returns.
    pub async fn reconfigure(&self, config: &Config) -> Result<(), StoreError> {
        if lock(&self.inner.shared).closed {
            return Err(StoreError::Closed);
        }
        let inner = self.inner.clone();
        let config = config.clone();
        self.inner
            .readers
            .call(move |_| {
                let busy = inner.opts.busy_timeout.max(Duration::from_secs(10));
                let conn = schema::open_control(&inner.path, busy, 256)?;
                let items = schema::register(&conn, &config)?;
                drop(conn);
                let settings = settings_of(&config, &items);
                {
                    let max_id = items.max_id();
                    lock(&inner.live).ensure(max_id);
                }
                *inner.items.write().unwrap_or_else(|e| e.into_inner()) = items;
                lock(&inner.shared).settings = Some(settings);
                Ok(())
            })
            .await
    }
}

#[cfg(test)]
impl Store {
    /// `schema::Pragmas` of every reader connection, then the outbox's.
    pub(crate) async fn connection_pragmas(&self) -> Result<Vec<schema::Pragmas>, StoreError> {
        let mut all = self.inner.readers.on_each(READERS, schema::pragmas).await?;
        all.extend(self.inner.outbox_reader.on_each(1, schema::pragmas).await?);
        Ok(all)
    }
}

/// Where [`Store::history_with`] hands the points, on a reader thread.
pub trait HistorySink: Send + 'static {
    /// The answer will have `total` points; false: do not read them.
    fn start(&mut self, total: usize) -> bool {
        let _ = total;
        true
    }
    /// The next points, ascending; false: stop reading.
    fn points(&mut self, points: &[(i64, f64)]) -> bool;
    /// Every point was handed over.
    fn end(&mut self) {}
}

impl HistorySink for Vec<(i64, f64)> {
    fn start(&mut self, total: usize) -> bool {
        self.reserve_exact(total);
        true
    }
    fn points(&mut self, points: &[(i64, f64)]) -> bool {
        self.extend_from_slice(points);
        true
    }
}

/// Outbox messages read at most ahead of what the uplink asked for.
const READ_AHEAD: usize = 256;

/// Unsent outbox messages read ahead of the uplink's cursor, so that the
/// uplink seldom waits for a thread: the outbox reader stashes what it read
/// beyond a request, and the writer adds the messages of each commit while
/// the uplink is caught up (before it announces the commit).
#[derive(Default)]
pub(crate) struct Fresh {
    /// `msgs` are the unsent messages right after this seq (None: unknown).
    after: Option<u64>,
    msgs: std::collections::VecDeque<OutboxMessage>,
    /// More unsent messages may follow `msgs` (only a read can tell).
    more: bool,
    /// Commits that added outbox messages (to tell a read that raced one).
    commits: u64,
    /// A background read is under way.
    reading: bool,
}

impl Fresh {
    /// The answer to `outbox_after(after, max)` if memory holds it.
    fn take(&mut self, after: u64, max: usize) -> Option<Vec<OutboxMessage>> {
        if self.after != Some(after) || (self.more && self.msgs.len() < max) {
            return None;
        }
        let n = self.msgs.len().min(max);
        let msgs: Vec<OutboxMessage> = self.msgs.drain(..n).collect();
        if let Some(m) = msgs.last() {
            self.after = Some(m.seq);
        }
        Some(msgs)
    }

    fn reset(&mut self, after: u64, ahead: Vec<OutboxMessage>, more: bool) {
        self.after = Some(after);
        self.msgs = ahead.into();
        self.more = more;
        // A read-ahead under way now finds its start gone and drops its rows.
        self.reading = false;
    }

    /// Where the next commit's messages would go, if memory is complete.
    fn tail(&self) -> Option<u64> {
        let after = self.after?;
        (!self.more).then(|| self.msgs.back().map_or(after, |m| m.seq))
    }
}

/// After a commit that added outbox messages, on the writer's thread: reads
/// them into [`Fresh`] while the native uplink is caught up, and into the
/// Sparkplug uplink's while it is.
pub(crate) fn prefetch_outbox(inner: &Inner, conn: &Connection) {
    let spb = inner.pos.spb_configured.load(Ordering::Relaxed);
    // Both uplinks caught up at the same row (the usual case): the rows are
    // read and decoded once, unless a mark (a row sent but not yet
    // committed as sent) left one of them out of the native read.
    let mut native_read: Option<(u64, usize, Vec<OutboxMessage>)> = None;
    prefetch(&inner.fresh, |tail, room| {
        let marks: HashSet<u64> = lock(&inner.shared).marks.clone();
        let read = outbox_messages(inner, conn, tail, room, &marks);
        if let (true, Ok(msgs)) = (spb, &read) {
            if marks.iter().all(|&m| m <= tail) {
                native_read = Some((tail, room, msgs.clone()));
            }
        }
        read
    });
    if spb {
        prefetch(&inner.spb_fresh, |tail, room| match native_read {
            // The native read holds every row up to `room` after `tail`.
            Some((t, r, mut msgs)) if t == tail && (msgs.len() < r || room <= r) => {
                msgs.truncate(room);
                Ok(msgs)
            }
            _ => read_rows(inner, conn, SPB_ROWS, tail, room, None),
        });
    }
}

/// The next rows after `fresh`'s tail, read by `read(tail, room)`, if
/// memory holds every row up to the tail.
fn prefetch(
    fresh: &Mutex<Fresh>,
    read: impl FnOnce(u64, usize) -> Result<Vec<OutboxMessage>, StoreError>,
) {
    let (tail, room) = {
        let mut fresh = lock(fresh);
        fresh.commits += 1;
        let Some(tail) = fresh.tail() else {
            return;
        };
        let room = READ_AHEAD.saturating_sub(fresh.msgs.len());
        if room == 0 {
            fresh.more = true;
            return;
        }
        (tail, room)
    };
    let read = read(tail, room);
    let mut fresh = lock(fresh);
    if fresh.tail() != Some(tail) {
        return; // the uplink moved meanwhile; its next read starts over
    }
    match read {
        Ok(msgs) => {
            fresh.more = msgs.len() >= room;
            fresh.msgs.extend(msgs);
        }
        Err(_) => fresh.after = None,
    }
}

/// Reads and decodes unsent outbox rows (see [`Store::outbox_after`]).
fn outbox_messages(
    inner: &Inner,
    conn: &Connection,
    after_seq: u64,
    max_messages: usize,
    marks: &HashSet<u64>,
) -> Result<Vec<OutboxMessage>, StoreError> {
    read_rows(
        inner,
        conn,
        "SELECT seq, host_id, data FROM journal WHERE seq > ?1 AND sent = 0 ORDER BY seq LIMIT ?2",
        after_seq,
        max_messages,
        Some(marks),
    )
}

/// Sparkplug's rows: every row after its position.
const SPB_ROWS: &str =
    "SELECT seq, host_id, data FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2";

/// Reads and decodes journal rows (`sql` selects seq, host_id, data with
/// `seq > ?1`, at most ?2), leaving out `marks`.
fn read_rows(
    inner: &Inner,
    conn: &Connection,
    sql: &str,
    after_seq: u64,
    max_messages: usize,
    marks: Option<&HashSet<u64>>,
) -> Result<Vec<OutboxMessage>, StoreError> {
    let mut raw = Vec::new();
    {
        let mut st = conn.prepare_cached(sql)?;
        let skip = marks.map_or(0, |m| m.len());
        let limit = max_messages.saturating_add(skip).min(i64::MAX as usize) as i64;
        let mut rows = st.query(params![after_seq.min(i64::MAX as u64) as i64, limit])?;
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)? as u64;
            if marks.is_some_and(|m| m.contains(&seq)) {
                continue;
            }
            raw.push((seq, row.get::<_, i64>(1)? as u32, row.get::<_, Vec<u8>>(2)?));
            if raw.len() >= max_messages {
                break;
            }
        }
    }
    let items = inner.items.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::with_capacity(raw.len());
    for (seq, hid, blob) in raw {
        let mut msg_items: Vec<(String, Vec<(i64, f64)>)> = Vec::new();
        let mut last_item = None;
        codec::decode_row(&blob, |i, c, v| {
            if last_item != Some(i) {
                last_item = Some(i);
                let key = match items.get(i) {
                    Some((_, k)) => k.to_string(),
                    None => format!("#{i}"),
                };
                msg_items.push((key, Vec::new()));
            }
            if let Some((_, p)) = msg_items.last_mut() {
                p.push((c, v));
            }
        })?;
        let host = match items.hosts.get(&hid) {
            Some(h) => h.to_string(),
            None => format!("#{hid}"),
        };
        out.push(OutboxMessage {
            seq,
            host,
            items: msg_items,
        });
    }
    Ok(out)
}

/// Database file, WAL and reserve file, bytes (what `max_size` caps).
pub(crate) fn db_file_bytes(path: &Path) -> u64 {
    let len = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        std::fs::metadata(PathBuf::from(p))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    len("") + len("-wal") + len("-reserve")
}

fn close_inner(inner: &Arc<Inner>) -> Result<(), StoreError> {
    {
        let mut s = lock(&inner.shared);
        s.closed = true;
        s.closing = true;
        inner.wake.notify_one();
    }
    let handle = lock(&inner.thread).take();
    let Some(h) = handle else { return Ok(()) };
    if h.join().is_err() {
        tracing::error!("store writer thread panicked");
    }
    let s = lock(&inner.shared);
    s.done_result.clone().map_err(StoreError::Commit)
}
