//! The `uplink` table: durable MQTT messages other than data (events, trigger
//! states, config statuses), queued by [`Ledger::transaction`] together with
//! the change they announce and deleted at the broker's PUBACK.

use std::sync::atomic::Ordering;

use rusqlite::{params, Connection, Transaction};

use super::Ledger;
use crate::store::StoreError;

/// One queued durable MQTT message (not data: those are journal rows).
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkMessage {
    pub id: u64,
    /// Below the gateway's root `R/`, e.g. `events`, `triggers/17`, `config/pump/k`.
    pub topic: String,
    pub payload: String,
    pub retained: bool,
}

/// How many messages are queued (at open, to seed the counter).
pub(super) fn count(conn: &Connection) -> rusqlite::Result<u64> {
    let len: i64 = conn.query_row("SELECT count(*) FROM uplink", [], |r| r.get(0))?;
    Ok(len.max(0) as u64)
}

/// Writes the messages a transaction queued, as (topic, payload, retained).
pub(super) fn insert(
    tx: &Transaction<'_>,
    queued: &[(String, String, bool)],
) -> rusqlite::Result<()> {
    let mut st =
        tx.prepare_cached("INSERT INTO uplink(topic, payload, retained) VALUES (?1, ?2, ?3)")?;
    for (topic, payload, retained) in queued {
        st.execute(params![topic, payload, *retained as i64])?;
    }
    Ok(())
}

impl Ledger {
    /// Queued uplink messages with `id > after`, oldest first, at most `max`.
    pub async fn uplink_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<UplinkMessage>, StoreError> {
        self.read(move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT id, topic, payload, retained FROM uplink WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = st.query_map(
                params![after.min(i64::MAX as u64) as i64, max.min(i64::MAX as usize) as i64],
                |r| {
                    Ok(UplinkMessage {
                        id: r.get::<_, i64>(0)? as u64,
                        topic: r.get(1)?,
                        payload: r.get(2)?,
                        retained: r.get::<_, i64>(3)? != 0,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Removes delivered messages (after the broker's PUBACK).
    pub async fn uplink_done(&self, ids: &[u64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids = ids.to_vec();
        let inner = self.inner.clone();
        self.transaction(move |tx, _| {
            let mut st = tx.prepare_cached("DELETE FROM uplink WHERE id = ?1")?;
            let mut removed = 0u64;
            for id in ids {
                removed += st.execute([id.min(i64::MAX as u64) as i64])? as u64;
            }
            // Counted before the commit returns (a failed commit only means
            // the rows are sent again, the count then catches up at the next start).
            let _ = inner
                .uplink_len
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(removed))
                });
            Ok(())
        })
        .await
    }

    /// Queued uplink messages not yet acknowledged by the broker.
    pub fn uplink_len(&self) -> u64 {
        self.inner.uplink_len.load(Ordering::Relaxed)
    }

    /// Bumped whenever messages are queued.
    pub fn uplink_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}
