//! The `sparkplug_session` table: the Sparkplug B session's birth/death
//! sequence number (`bdSeq`), so that a restart — also after a crash —
//! announces itself with the next one and a host can tell a stale NDEATH
//! (the Will of an earlier connection) from the current one.

use rusqlite::OptionalExtension;

use super::Ledger;
use crate::store::StoreError;

impl Ledger {
    /// The `bdSeq` of the next Sparkplug connection: 0 the first time, then
    /// one more than the last one handed out, 255 followed by 0. It is
    /// committed before it is returned, so no two connections share one.
    pub async fn next_bd_seq(&self) -> Result<u8, StoreError> {
        self.transaction(|tx, _| {
            let last: Option<i64> = tx
                .query_row(
                    "SELECT bd_seq FROM sparkplug_session WHERE id = 0",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            let next = match last {
                None => 0,
                Some(v) => (v.rem_euclid(256) as u8).wrapping_add(1),
            };
            tx.execute(
                "INSERT INTO sparkplug_session(id, bd_seq) VALUES (0, ?1) \
                 ON CONFLICT(id) DO UPDATE SET bd_seq = excluded.bd_seq",
                [i64::from(next)],
            )?;
            Ok(next)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn bd_seq_starts_at_zero_counts_up_wraps_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = super::super::tests::open(dir.path(), false);
        assert_eq!(ledger.next_bd_seq().await.unwrap(), 0);
        assert_eq!(ledger.next_bd_seq().await.unwrap(), 1);
        ledger
            .transaction(|tx, _| {
                tx.execute("UPDATE sparkplug_session SET bd_seq = 254", [])?;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(ledger.next_bd_seq().await.unwrap(), 255);
        assert_eq!(ledger.next_bd_seq().await.unwrap(), 0);
        drop(ledger);
        let ledger = super::super::tests::open(dir.path(), false);
        assert_eq!(ledger.next_bd_seq().await.unwrap(), 1);
    }
}
