//! Opening the database: pragmas, schema versions, item registration.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use super::{ItemId, StoreError};
use crate::model::Config;

/// The schema this program writes; `PRAGMA user_version`.
pub const SCHEMA_VERSION: i32 = 2;

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

/// Version 2: the control side, written through [`crate::ledger::Ledger`]:
/// config requests, trigger states, events, acknowledgements, and the queue of
/// durable non-data MQTT messages.
const SCHEMA_V2: &str = "
-- Every config request received; the newest per (host, key) is the item's `config`.
CREATE TABLE config_requests (
    rid       INTEGER PRIMARY KEY AUTOINCREMENT,
    host      TEXT NOT NULL,
    key       TEXT NOT NULL,
    target    REAL NOT NULL,
    expected  REAL,
    audit     TEXT NOT NULL,   -- JSON array of strings
    id        TEXT,            -- the requester's id, as JSON
    status    TEXT NOT NULL,   -- PENDING | SUCCESS | FAILED
    lastclock INTEGER NOT NULL,
    reason    TEXT,
    expires   INTEGER NOT NULL
);
CREATE INDEX config_requests_item ON config_requests(host, key, rid);
CREATE INDEX config_requests_pending ON config_requests(status) WHERE status = 'PENDING';
-- The last value of every trigger, so a restart neither repeats nor loses an event.
CREATE TABLE trigger_states (
    triggerid  INTEGER PRIMARY KEY,
    value      TEXT NOT NULL,      -- OK | problem | unknown
    lastchange INTEGER NOT NULL    -- 0: never changed
);
CREATE TABLE events (
    eventid       INTEGER PRIMARY KEY AUTOINCREMENT,
    triggerid     INTEGER NOT NULL,
    host          TEXT NOT NULL,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    clock         INTEGER NOT NULL,
    description   TEXT NOT NULL,
    severity      INTEGER NOT NULL,
    severity_text TEXT NOT NULL
);
CREATE INDEX events_clock ON events(clock);
CREATE INDEX events_item ON events(host, key);
CREATE TABLE acknowledgements (
    eventid INTEGER NOT NULL,
    clock   INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX acknowledgements_event ON acknowledgements(eventid);
-- Durable MQTT messages other than data (events, trigger states, config
-- statuses); a row is deleted at the broker's PUBACK.
CREATE TABLE uplink (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    topic    TEXT NOT NULL,    -- below the gateway's root, e.g. events, triggers/17
    payload  TEXT NOT NULL,
    retained INTEGER NOT NULL
);
";

/// Opens the write connection with the project's pragmas and brings the schema
/// up to date.
pub fn open_write(path: &Path, busy: Duration) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(busy).map_err(err)?;
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
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err)?;
    conn.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)
        .map_err(err)?;
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
    conn.busy_timeout(busy).map_err(err)?;
    Ok(conn)
}

/// Every item the database knows (also those no longer configured).
#[derive(Debug, Default, Clone)]
pub struct Items {
    /// host name -> key -> id, for the current config only.
    pub current: HashMap<String, HashMap<String, ItemId>>,
    /// id -> (host id, key), every item ever registered.
    pub all: HashMap<ItemId, (u32, Arc<str>)>,
    /// host id -> host name.
    pub hosts: HashMap<u32, Arc<str>>,
}

/// Registers the config's hosts and items (new ones get new ids, existing ones
/// keep theirs) and returns the full mapping.
pub fn register(conn: &Connection, config: &Config) -> Result<Items, StoreError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    {
        let mut get_host = tx.prepare_cached("SELECT id FROM hosts WHERE host = ?1")?;
        let mut add_host = tx.prepare_cached("INSERT INTO hosts(host) VALUES (?1)")?;
        let mut get_item =
            tx.prepare_cached("SELECT id FROM items WHERE host_id = ?1 AND key = ?2")?;
        let mut add_item = tx.prepare_cached("INSERT INTO items(host_id, key) VALUES (?1, ?2)")?;
        for h in &config.hosts {
            let hid: i64 = match get_host.query_row([&h.host], |r| r.get(0)).optional()? {
                Some(id) => id,
                None => {
                    add_host.execute([&h.host])?;
                    tx.last_insert_rowid()
                }
            };
            for it in &h.items {
                if get_item
                    .query_row(params![hid, it.key], |r| r.get::<_, i64>(0))
                    .optional()?
                    .is_none()
                {
                    add_item.execute(params![hid, it.key])?;
                }
            }
        }
    }
    tx.commit()?;
    let mut items = load_items(conn)?;
    let host_ids: HashMap<&str, u32> = items.hosts.iter().map(|(id, n)| (&**n, *id)).collect();
    let by_key: HashMap<(u32, &str), ItemId> = items
        .all
        .iter()
        .map(|(id, (hid, k))| ((*hid, &**k), *id))
        .collect();
    let mut current = HashMap::new();
    for h in &config.hosts {
        let mut keys = HashMap::new();
        if let Some(&hid) = host_ids.get(h.host.as_str()) {
            for it in &h.items {
                if let Some(&id) = by_key.get(&(hid, it.key.as_str())) {
                    keys.insert(it.key.clone(), id);
                }
            }
        }
        current.insert(h.host.clone(), keys);
    }
    drop(by_key);
    drop(host_ids);
    items.current = current;
    Ok(items)
}

fn load_items(conn: &Connection) -> Result<Items, StoreError> {
    let mut items = Items::default();
    let mut st = conn.prepare("SELECT id, host FROM hosts")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    for row in rows {
        let (id, host) = row?;
        items.hosts.insert(id as u32, Arc::from(host));
    }
    let mut st = conn.prepare("SELECT id, host_id, key FROM items")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (id, hid, key) = row?;
        items.all.insert(id as ItemId, (hid as u32, Arc::from(key)));
    }
    Ok(items)
}
