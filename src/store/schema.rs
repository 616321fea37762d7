//! Opening the database: pragmas, schema versions, item registration.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{ItemId, StoreError};
use crate::model::{Config, HostSpec};

/// The schema this program writes; `PRAGMA user_version`.
pub const SCHEMA_VERSION: i32 = 4;

const SCHEMA_V1: &str = "
CREATE TABLE hosts (
    id   INTEGER PRIMARY KEY,
    host TEXT NOT NULL UNIQUE
);
CREATE TABLE items (
    id      INTEGER PRIMARY KEY,
    host_id INTEGER NOT NULL REFERENCES hosts(id),
    key     TEXT NOT NULL,
    UNIQUE (host_id, key)
);
-- New history points, one row per host and commit (split at the message size):
-- each row is also the outbox message with seq = its `seq`.
CREATE TABLE journal (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id   INTEGER NOT NULL,
    clock_min INTEGER NOT NULL,
    clock_max INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    sent      INTEGER NOT NULL,
    compacted INTEGER NOT NULL,
    data      BLOB NOT NULL
);
CREATE INDEX journal_uncompacted ON journal(host_id, seq) WHERE compacted = 0;
-- Per-item chunks of history points, built by compaction from the journal.
CREATE TABLE history (
    item_id INTEGER NOT NULL,
    start   INTEGER NOT NULL,
    end     INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (item_id, start)
) WITHOUT ROWID;
CREATE INDEX history_end ON history(end);
CREATE TABLE trend (
    item_id INTEGER NOT NULL,
    hour    INTEGER NOT NULL,
    num     INTEGER NOT NULL,
    min     REAL NOT NULL,
    avg     REAL NOT NULL,
    max     REAL NOT NULL,
    PRIMARY KEY (item_id, hour)
) WITHOUT ROWID;
";

/// Version 2: the control side, written through the ledger: config requests,
/// trigger states, events, acknowledgements, and the queue of durable non-data
/// MQTT messages. The statements live next to the ledger's code that reads and
/// writes these tables; this module only decides when they are applied.
const SCHEMA_V2: &str = include_str!("../ledger/schema.sql");

/// Version 3: trends by hour across items, so that the size cap finds the
/// oldest data in every table without a full scan.
const SCHEMA_V3: &str = "CREATE INDEX trend_hour ON trend(hour);";

/// Version 4: one durable position per uplink beside the native `sent`
/// marks (a row per configured uplink that has one: `sparkplug`), and the
/// Sparkplug session's control table (the ledger's).
const SCHEMA_V4: &str = "
CREATE TABLE uplink_position (
    uplink TEXT PRIMARY KEY,
    seq    INTEGER NOT NULL
) WITHOUT ROWID;
";
const SCHEMA_V4_CONTROL: &str = include_str!("../ledger/schema_v4.sql");

/// Opens the write connection with the project's pragmas and brings the schema
/// up to date.
pub fn open_write(path: &Path, busy: Duration) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    // 1 MiB of page cache: commits append and compaction reads recent pages.
    configure(&conn, busy, 1024).map_err(err)?;
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    if version == 0 {
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(err)?;
        if tables == 0 {
            // Only effective before the first table exists.
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(err)?;
        }
    }
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "database is not in WAL mode");
    }
    migrate(&conn, version).map_err(|e| match e {
        StoreError::Sqlite(source) => err(source),
        other => other,
    })?;
    Ok(conn)
}

/// The migration hook: from `version` to [`SCHEMA_VERSION`], one step at a time.
fn migrate(conn: &Connection, version: i32) -> Result<(), StoreError> {
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    let mut v = version;
    while v < SCHEMA_VERSION {
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
        match v {
            0 => tx.execute_batch(SCHEMA_V1)?,
            1 => tx.execute_batch(SCHEMA_V2)?,
            2 => tx.execute_batch(SCHEMA_V3)?,
            3 => {
                tx.execute_batch(SCHEMA_V4)?;
                tx.execute_batch(SCHEMA_V4_CONTROL)?;
            }
            // 1 => tx.execute_batch("ALTER TABLE ..."),  // future steps go here
            _ => unreachable!("versions below SCHEMA_VERSION all have a step"),
        }
        v += 1;
        tx.pragma_update(None, "user_version", v)?;
        tx.commit()?;
        tracing::info!(version = v, "database schema migrated");
    }
    Ok(())
}

/// A read-only connection for queries (WAL lets it read while the writer writes).
pub fn open_read(path: &Path, busy: Duration) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(err)?;
    // Queries are short range scans; a small page cache keeps the daemon small.
    configure(&conn, busy, 512).map_err(err)?;
    Ok(conn)
}

/// The largest the WAL file is left at after a checkpoint.
pub const JOURNAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

/// The per-connection settings every connection to the database gets (the
/// writer's, the readers', the ledger's): the busy timeout, `synchronous =
/// FULL` (a commit is on disk when it returns), the WAL size limit and a page
/// cache of `cache_kib`.
pub fn configure(conn: &Connection, busy: Duration, cache_kib: i64) -> rusqlite::Result<()> {
    conn.busy_timeout(busy)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    conn.pragma_update(None, "cache_size", -cache_kib)
}

/// A connection's `synchronous`, `busy_timeout` (ms) and `journal_size_limit`.
#[cfg(test)]
pub type Pragmas = (i64, i64, i64);

/// The settings [`configure`] makes, as the connection reports them.
#[cfg(test)]
pub fn pragmas(conn: &Connection) -> Pragmas {
    let get = |name: &str| {
        conn.pragma_query_value(None, name, |r| r.get::<_, i64>(0))
            .unwrap_or(-1)
    };
    (
        get("synchronous"),
        get("busy_timeout"),
        get("journal_size_limit"),
    )
}

/// A read-write connection that does not migrate (the store has done that):
/// for the ledger and for registering the items of a reloaded config.
pub fn open_control(path: &Path, busy: Duration, cache_kib: i64) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    configure(&conn, busy, cache_kib).map_err(err)?;
    Ok(conn)
}

/// Where an item's key is: in the current config, or (for items no longer
/// configured) in the arena of `Items::keys`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Host id; `u32::MAX` for ids not in use.
    hid: u32,
    /// Configured: index into `Items::specs`; else the key's start in the arena.
    a: u32,
    /// Configured: the item's index in its host, with [`CONFIGURED`] set;
    /// else the key's length.
    b: u32,
}

const CONFIGURED: u32 = 1 << 31;
const UNUSED: Slot = Slot {
    hid: u32::MAX,
    a: 0,
    b: 0,
};

/// Every item the database knows (also those no longer configured), kept
/// compact: at 100,000 items this is a large share of the daemon's memory.
/// Keys of configured items are not copied: they are read from the config's
/// shared host specs.
#[derive(Debug, Default, Clone)]
pub struct Items {
    /// Indexed by item id.
    all: Vec<Slot>,
    /// The current config's hosts.
    specs: Vec<Arc<HostSpec>>,
    /// Keys of items no longer configured, one after another.
    keys: String,
    /// host id -> host name.
    pub hosts: HashMap<u32, Arc<str>>,
    /// host name -> ids of its items in the current config, sorted by key.
    current: HashMap<String, Vec<ItemId>>,
}

impl Items {
    /// (host id, key) of an item.
    pub fn get(&self, id: ItemId) -> Option<(u32, &str)> {
        let slot = self.all.get(id as usize)?;
        if slot.hid == u32::MAX {
            return None;
        }
        let key = if slot.b & CONFIGURED != 0 {
            let spec = self.specs.get(slot.a as usize)?;
            spec.items
                .get((slot.b & !CONFIGURED) as usize)?
                .key
                .as_str()
        } else {
            let start = slot.a as usize;
            self.keys.get(start..start + slot.b as usize)?
        };
        Some((slot.hid, key))
    }

    fn key(&self, id: ItemId) -> &str {
        self.get(id).map(|(_, k)| k).unwrap_or("")
    }

    /// The id of a configured item.
    pub fn id_of(&self, host: &str, key: &str) -> Option<ItemId> {
        let ids = self.current.get(host)?;
        ids.binary_search_by(|id| self.key(*id).cmp(key))
            .ok()
            .map(|i| ids[i])
    }

    /// The largest id in use (0 when none).
    pub fn max_id(&self) -> ItemId {
        self.all.len().saturating_sub(1) as ItemId
    }
}

/// Registers the config's hosts and items (new ones get new ids, existing ones
/// keep theirs) and returns the full mapping.
pub fn register(conn: &Connection, config: &Config) -> Result<Items, StoreError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    {
        let mut get_host = tx.prepare_cached("SELECT id FROM hosts WHERE host = ?1")?;
        let mut add_host = tx.prepare_cached("INSERT INTO hosts(host) VALUES (?1)")?;
        let mut add_item =
            tx.prepare_cached("INSERT OR IGNORE INTO items(host_id, key) VALUES (?1, ?2)")?;
        for h in &config.hosts {
            let hid: i64 = match get_host.query_row([&h.host], |r| r.get(0)).optional()? {
                Some(id) => id,
                None => {
                    add_host.execute([&h.host])?;
                    tx.last_insert_rowid()
                }
            };
            for it in &h.items {
                add_item.execute(params![hid, it.key])?;
            }
        }
    }
    tx.commit()?;
    load_items(conn, config)
}

fn load_items(conn: &Connection, config: &Config) -> Result<Items, StoreError> {
    let mut items = Items {
        specs: config.hosts.clone(),
        ..Items::default()
    };
    let mut st = conn.prepare("SELECT id, host FROM hosts")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (id, host) = row?;
        items.hosts.insert(id as u32, Arc::from(host));
    }
    // host id -> (index into specs, the host's item indices sorted by key).
    let mut configured: HashMap<u32, (u32, Vec<u32>)> = HashMap::new();
    for (si, spec) in config.hosts.iter().enumerate() {
        if let Some((&hid, _)) = items.hosts.iter().find(|(_, n)| ***n == *spec.host) {
            let mut order: Vec<u32> = (0..spec.items.len() as u32).collect();
            order.sort_unstable_by(|a, b| {
                spec.items[*a as usize]
                    .key
                    .cmp(&spec.items[*b as usize].key)
            });
            configured.insert(hid, (si as u32, order));
        }
    }
    let max: i64 = conn.query_row("SELECT coalesce(max(id), 0) FROM items", [], |r| r.get(0))?;
    items.all = vec![UNUSED; max.max(0) as usize + 1];
    let mut by_host: HashMap<u32, Vec<ItemId>> = HashMap::new();
    let mut st = conn.prepare("SELECT id, host_id, key FROM items ORDER BY id")?;
    let mut rows = st.query([])?;
    while let Some(row) = rows.next()? {
        let id = row.get::<_, i64>(0)?.max(0) as usize;
        let hid = row.get::<_, i64>(1)? as u32;
        let key = row.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?;
        let found = configured.get(&hid).and_then(|(si, order)| {
            let spec = &config.hosts[*si as usize];
            order
                .binary_search_by(|i| spec.items[*i as usize].key.as_str().cmp(key))
                .ok()
                .map(|pos| (*si, order[pos]))
        });
        let slot = match found {
            Some((si, index)) => {
                by_host.entry(hid).or_default().push(id as ItemId);
                Slot {
                    hid,
                    a: si,
                    b: index | CONFIGURED,
                }
            }
            None => {
                let start = items.keys.len().min(u32::MAX as usize) as u32;
                items.keys.push_str(key);
                Slot {
                    hid,
                    a: start,
                    b: key.len() as u32,
                }
            }
        };
        if let Some(s) = items.all.get_mut(id) {
            *s = slot;
        }
    }
    items.keys.shrink_to_fit();
    let mut current = HashMap::new();
    for h in &config.hosts {
        let Some((&hid, _)) = items.hosts.iter().find(|(_, n)| ***n == *h.host) else {
            continue;
        };
        let mut ids = by_host.remove(&hid).unwrap_or_default();
        ids.sort_unstable_by(|a, b| items.key(*a).cmp(items.key(*b)));
        ids.shrink_to_fit();
        current.insert(h.host.clone(), ids);
    }
    items.current = current;
    Ok(items)
}
