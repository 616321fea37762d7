//! The control side of the database: config requests, trigger states, events,
//! acknowledgements, the queue of durable non-data MQTT messages and the
//! topics of retained host metadata.
//!
//! Every SQL statement on these tables is in this module, next to their
//! schema (`schema.sql`, applied by the store's migration as schema version
//! 2), one file per group of tables: [`config_requests`], [`alarms`],
//! [`uplink`], [`mqtt_hosts`], [`sparkplug`] (schema version 4). The services above (the config requests, the
//! alarms, the MQTT session) call these functions and keep no SQL of their own.
//!
//! Unlike samples (batched by the store's writer thread), every change here is
//! committed before the call returns: a config request is durable before it
//! is answered, an event before anyone hears of it. The volume is small (a few
//! transactions per minute), so one connection on its own thread (the
//! `ledger` thread, see `store::worker`) takes every change, in the order the
//! calls were made, and a read-only one on another thread answers queries.
//! Every method that touches the database is an `async fn` whose SQL runs on
//! those threads, never on the caller's.
//!
//! Invariant: a state change and the uplink message announcing it are
//! written in one transaction, so after a crash either both exist or neither.

pub mod alarms;
pub mod config_requests;
pub mod mqtt_hosts;
pub mod sparkplug;
pub mod uplink;

pub use uplink::UplinkMessage;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::store::{open_control, open_read, DbThreads, StoreError};

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
    /// The connection every change goes through.
    writer: DbThreads,
    /// A read-only connection for queries.
    reader: DbThreads,
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
        let conn = open_control(path, BUSY_TIMEOUT, 256)?;
        let len = uplink::count(&conn).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let reader = open_read(path, BUSY_TIMEOUT)?;
        let (changes, _) = tokio::sync::watch::channel(0);
        Ok(Ledger {
            inner: Arc::new(Inner {
                writer: DbThreads::spawn("ledger", vec![conn])?,
                reader: DbThreads::spawn("ledger-read", vec![reader])?,
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

    /// Runs `f` in one immediate transaction on the ledger's thread and
    /// commits it, together with the uplink messages it queued. Nothing is
    /// written if `f` fails. The statements of the services live in this
    /// module's files, which build on this; it is public so that tests can
    /// inspect and age rows.
    pub async fn transaction<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>, &mut Uplink) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.transaction_then(f, |out| out).await
    }

    /// [`Ledger::transaction`], then `then` with its result, still on the
    /// ledger's thread and only after the commit succeeded. Services keep
    /// their in-memory view in step with the database this way: changes are
    /// applied in commit order, and a decision taken inside `f` sees every
    /// change committed before it (only brief in-memory locks, never one held
    /// across SQL).
    pub async fn transaction_then<T, U: Send + 'static>(
        &self,
        f: impl FnOnce(&Transaction<'_>, &mut Uplink) -> Result<T, StoreError> + Send + 'static,
        then: impl FnOnce(T) -> U + Send + 'static,
    ) -> Result<U, StoreError> {
        let inner = self.inner.clone();
        self.inner
            .writer
            .call(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut uplink = Uplink {
                    enabled: inner.uplink_enabled.load(Ordering::Relaxed),
                    queued: Vec::new(),
                };
                let out = f(&tx, &mut uplink)?;
                uplink::insert(&tx, &uplink.queued)?;
                tx.commit()?;
                // Counted here, so a caller that stops waiting cannot skip it.
                if !uplink.queued.is_empty() {
                    inner
                        .uplink_len
                        .fetch_add(uplink.queued.len() as u64, Ordering::Relaxed);
                    inner.changes.send_modify(|n| *n += 1);
                }
                Ok(then(out))
            })
            .await
    }

    /// Runs a read-only query on the ledger's reader thread (the counterpart
    /// of [`Ledger::transaction`]); it sees every committed transaction.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.inner.reader.call(move |conn| f(conn)).await
    }
}

#[cfg(test)]
impl Ledger {
    /// `synchronous`, `busy_timeout` and `journal_size_limit` of the
    /// writing connection, then of the reading one.
    pub(crate) async fn connection_pragmas(&self) -> Result<Vec<(i64, i64, i64)>, StoreError> {
        let mut all = self.inner.writer.on_each(1, crate::store::pragmas).await?;
        all.extend(self.inner.reader.on_each(1, crate::store::pragmas).await?);
        Ok(all)
    }
}

/// How long a ledger statement waits for the store's writer to release the database.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

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

    #[tokio::test]
    async fn queued_messages_survive_reopen_and_leave_at_done() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path(), true);
        let mut rx = l.uplink_changes();
        l.transaction(|_, up| {
            up.push("events", "{\"eventid\":1}", false);
            up.push("triggers/1", "{}", true);
            Ok(())
        })
        .await
        .unwrap();
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert_eq!(l.uplink_len(), 2);
        drop(l);
        let l = open(dir.path(), true);
        assert_eq!(l.uplink_len(), 2);
        let msgs = l.uplink_after(0, 10).await.unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1].topic, "triggers/1");
        assert!(msgs[1].retained);
        l.uplink_done(&[msgs[0].id]).await.unwrap();
        assert_eq!(l.uplink_len(), 1);
        assert_eq!(l.uplink_after(0, 10).await.unwrap().len(), 1);
        assert_eq!(l.uplink_after(msgs[1].id, 10).await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn a_failed_transaction_queues_nothing_and_without_mqtt_nothing_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let l = open(dir.path(), true);
        let r: Result<(), StoreError> = l
            .transaction(|_, up| {
                up.push("events", "{}", false);
                Err(StoreError::Closed)
            })
            .await;
        assert!(r.is_err());
        assert_eq!(l.uplink_after(0, 10).await.unwrap().len(), 0);
        l.set_uplink(false);
        l.transaction(|_, up| {
            up.push("events", "{}", false);
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(l.uplink_len(), 0);
    }
}
