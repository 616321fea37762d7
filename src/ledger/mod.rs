//! The control side of the database: config requests, trigger states, events,
//! acknowledgements, the queue of durable non-data MQTT messages and the
//! topics of retained host metadata.
//!
//! Every SQL statement on these tables is in this module, next to their
//! schema (`schema.sql`, applied by the store's migration as schema version
//! 2), one file per group of tables: [`config_requests`], [`alarms`],
//! [`uplink`], [`mqtt_hosts`]. The services above (the config requests, the
//! alarms, the MQTT session) call these functions and keep no SQL of their own.
//!
//! Unlike samples (batched by the store's writer thread), every change here is
//! committed before the call returns: a config request is durable before it
//! is answered, an event before anyone hears of it. The volume is small (a few
//! transactions per minute), so one connection behind a mutex serves all.
//!
//! Invariant: a state change and the uplink message announcing it are
//! written in one transaction, so after a crash either both exist or neither.

pub mod alarms;
pub mod config_requests;
pub mod mqtt_hosts;
pub mod uplink;

pub use uplink::UplinkMessage;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::store::{lock, StoreError};

/// Messages queued inside a [`Ledger::transaction`]; written with it.
pub struct Uplink {
    enabled: bool,
    queued: Vec<(String, String, bool)>,
}

impl Uplink {
    /// Queues a durable message for `R/<topic>`. Without an `[mqtt]` section
    /// nothing is queued (there is nobody to send it to).
    pub fn push(&mut self, topic: impl Into<String>, payload: impl Into<String>, retained: bool) {
        if self.enabled {
            self.queued.push((topic.into(), payload.into(), retained));
        }
    }
}

struct Inner {
    conn: Mutex<Connection>,
    uplink_enabled: AtomicBool,
    uplink_len: AtomicU64,
    changes: tokio::sync::watch::Sender<u64>,
}

/// A handle to the control tables; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Inner>,
}

impl Ledger {
    /// Opens its own connection to the store's database (the store has already
    /// created and migrated the schema). `uplink` says whether an `[mqtt]`
    /// section exists, i.e. whether messages are queued at all.
    pub fn open(path: &Path, uplink: bool) -> Result<Ledger, StoreError> {
        let err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "cache_size", -256).map_err(err)?;
        let len = uplink::count(&conn).map_err(err)?;
        let (changes, _) = tokio::sync::watch::channel(0);
        Ok(Ledger {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                uplink_enabled: AtomicBool::new(uplink),
                uplink_len: AtomicU64::new(len),
                changes,
            }),
        })
    }

    /// Turns queueing of uplink messages on or off (config reload).
    pub fn set_uplink(&self, enabled: bool) {
        self.inner.uplink_enabled.store(enabled, Ordering::Relaxed);
    }

    /// Runs `f` in one immediate transaction and commits it, together with the
    /// uplink messages it queued. Nothing is written if `f` fails. The
    /// statements of the services live in this module's files, which build on
    /// this; it is public so that tests can inspect and age rows.
    pub fn transaction<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>, &mut Uplink) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = lock(&self.inner.conn);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut uplink = Uplink {
            enabled: self.inner.uplink_enabled.load(Ordering::Relaxed),
            queued: Vec::new(),
        };
        let out = f(&tx, &mut uplink)?;
        uplink::insert(&tx, &uplink.queued)?;
        tx.commit()?;
        drop(conn);
        if !uplink.queued.is_empty() {
            self.inner
                .uplink_len
                .fetch_add(uplink.queued.len() as u64, Ordering::Relaxed);
            self.inner.changes.send_modify(|n| *n += 1);
        }
        Ok(out)
    }

    /// Runs a read-only query (the counterpart of [`Ledger::transaction`]).
    pub fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = lock(&self.inner.conn);
        f(&conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger on a fresh database in `dir`, as the daemon opens it.
    pub(super) fn open(dir: &Path, uplink: bool) -> Ledger {
        let cfg = crate::config::load_str(
            &dir.join("c.toml"),
            &format!(
                "[gateway]\nid = \"t\"\ndata_dir = {:?}\n",
                dir.to_string_lossy()
            ),
        )
        .expect("config");
        let store = crate::store::Store::open(&cfg).expect("store");
        let l = Ledger::open(store.path(), uplink).expect("ledger");
        store.close().expect("close");
        l
    }

    #[test]
    fn queued_messages_survive_reopen_and_leave_at_done() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path(), true);
        let mut rx = l.uplink_changes();
        l.transaction(|_, up| {
            up.push("events", "{\"eventid\":1}", false);
            up.push("triggers/1", "{}", true);
            Ok(())
        })
        .unwrap();
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert_eq!(l.uplink_len(), 2);
        drop(l);
        let l = open(dir.path(), true);
        assert_eq!(l.uplink_len(), 2);
        let msgs = l.uplink_after(0, 10).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1].topic, "triggers/1");
        assert!(msgs[1].retained);
        l.uplink_done(&[msgs[0].id]).unwrap();
        assert_eq!(l.uplink_len(), 1);
        assert_eq!(l.uplink_after(0, 10).unwrap().len(), 1);
        assert_eq!(l.uplink_after(msgs[1].id, 10).unwrap().len(), 0);
    }

    #[test]
    fn a_failed_transaction_queues_nothing_and_without_mqtt_nothing_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path(), true);
        let r: Result<(), StoreError> = l.transaction(|_, up| {
            up.push("events", "{}", false);
            Err(StoreError::Closed)
        });
        assert!(r.is_err());
        assert_eq!(l.uplink_after(0, 10).unwrap().len(), 0);
        l.set_uplink(false);
        l.transaction(|_, up| {
            up.push("events", "{}", false);
            Ok(())
        })
        .unwrap();
        assert_eq!(l.uplink_len(), 0);
    }
}
