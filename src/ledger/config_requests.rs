//! The `config_requests` table: every config request received, with its
//! status. The newest row per (host, key) is the item's `config`, and only the
//! newest may be PENDING.
//!
//! Every status change is written together with its retained
//! `config/<host>/<key>` uplink message; the config request service builds the
//! payloads (the item's `config` object) and hands them in.

use rusqlite::{params, Transaction};

use super::{Ledger, Uplink};
use crate::store::StoreError;

/// The newest request of an item, as stored. Text columns are as written:
/// `audit` and `id` are JSON, `status` is `PENDING`, `SUCCESS` or `FAILED`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConfigRequest {
    pub rid: i64,
    pub host: String,
    pub key: String,
    pub target: f64,
    pub expected: Option<f64>,
    pub audit: String,
    pub id: Option<String>,
    pub status: String,
    /// When it was received, Unix seconds.
    pub lastclock: i64,
    pub reason: Option<String>,
    /// Unix milliseconds after which a PENDING request fails.
    pub expires_ms: i64,
    /// A write may have reached the device.
    pub written: bool,
}

/// A request to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewConfigRequest {
    pub host: String,
    pub key: String,
    pub target: f64,
    pub expected: Option<f64>,
    /// JSON array of strings.
    pub audit: String,
    /// The requester's id, as JSON.
    pub id: Option<String>,
    pub status: &'static str,
    /// When it was received, Unix seconds; also when an older pending request
    /// of the item is superseded.
    pub lastclock: i64,
    pub reason: Option<String>,
    pub expires_ms: i64,
    /// When it became SUCCESS or FAILED (a request failed at once).
    pub finished: Option<i64>,
}

/// The end of a pending request.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// `SUCCESS` or `FAILED`.
    pub status: &'static str,
    pub reason: Option<String>,
    /// When, Unix seconds.
    pub finished: i64,
    /// The item's retained `config` message after the change.
    pub payload: String,
}

/// What the config request service loads at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredConfigRequests {
    /// The newest request of every item.
    pub newest: Vec<StoredConfigRequest>,
    /// Rows per status text.
    pub counts: Vec<(String, i64)>,
}

/// The uplink topic of an item's retained `config` message.
fn status_topic(host: &str, key: &str) -> String {
    format!("config/{host}/{key}")
}

impl Ledger {
    /// Start-up tidying, in one transaction: a pending request that is not
    /// its item's newest fails with `superseded` (finished at `now`, Unix
    /// seconds), and finished requests received before `horizon` (Unix
    /// seconds) are deleted, never an item's newest. Returns how many were
    /// deleted.
    pub async fn tidy_config_requests(
        &self,
        superseded: &str,
        now: i64,
        horizon: i64,
    ) -> Result<usize, StoreError> {
        let superseded = superseded.to_string();
        self.transaction(move |tx, _| {
            tx.execute(
                "UPDATE config_requests SET status = 'FAILED', reason = ?1, finished = ?2
                 WHERE status = 'PENDING' AND rid NOT IN
                   (SELECT max(rid) FROM config_requests GROUP BY host, key)",
                params![superseded, now],
            )?;
            let pruned = tx.execute(
                "DELETE FROM config_requests WHERE status != 'PENDING' AND lastclock < ?1
                 AND rid NOT IN (SELECT max(rid) FROM config_requests GROUP BY host, key)",
                [horizon],
            )?;
            Ok(pruned)
        })
        .await
    }

    /// The newest request of every item, and the number of rows per status.
    pub async fn load_config_requests(&self) -> Result<StoredConfigRequests, StoreError> {
        self.read(|conn| {
            let mut st = conn.prepare(
                "SELECT rid, host, key, target, expected, audit, id, status, lastclock, reason,
                        expires_ms, written
                 FROM config_requests WHERE rid IN
                   (SELECT max(rid) FROM config_requests GROUP BY host, key)",
            )?;
            let rows = st.query_map([], |r| {
                Ok(StoredConfigRequest {
                    rid: r.get(0)?,
                    host: r.get(1)?,
                    key: r.get(2)?,
                    target: r.get(3)?,
                    expected: r.get(4)?,
                    audit: r.get(5)?,
                    id: r.get(6)?,
                    status: r.get(7)?,
                    lastclock: r.get(8)?,
                    reason: r.get(9)?,
                    expires_ms: r.get(10)?,
                    written: r.get::<_, i64>(11)? != 0,
                })
            })?;
            let newest = rows.collect::<Result<Vec<_>, _>>()?;
            let mut st =
                conn.prepare("SELECT status, count(*) FROM config_requests GROUP BY status")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let counts = rows.collect::<Result<Vec<_>, _>>()?;
            Ok(StoredConfigRequests { newest, counts })
        })
        .await
    }

    /// Records a request in one transaction (see [`insert`]). Returns the new row's id.
    pub async fn insert_config_request(
        &self,
        request: NewConfigRequest,
        superseded: &str,
        superseded_payload: Option<String>,
        payload: String,
    ) -> Result<i64, StoreError> {
        let superseded = superseded.to_string();
        self.transaction(move |tx, up| {
            insert(tx, up, &request, &superseded, superseded_payload, payload)
        })
        .await
    }

    /// Ends a pending request in one transaction (see [`finish`]).
    pub async fn finish_config_request(
        &self,
        host: &str,
        key: &str,
        rid: i64,
        change: StatusChange,
    ) -> Result<bool, StoreError> {
        let (host, key) = (host.to_string(), key.to_string());
        self.transaction(move |tx, up| finish(tx, up, &host, &key, rid, change))
            .await
    }

    /// Records that a write of request `rid` may reach the device.
    pub async fn mark_config_request_written(&self, rid: i64) -> Result<(), StoreError> {
        self.transaction(move |tx, _| mark_written(tx, rid)).await
    }
}

/// Records a request: a pending request of the same item fails with
/// `superseded` (and, if there was one, `superseded_payload` is queued as its
/// retained message), the new row is inserted and `payload` queued as the
/// item's retained message. Returns the new row's id. For
/// [`Ledger::transaction`]s of the config request service.
pub fn insert(
    tx: &Transaction<'_>,
    up: &mut Uplink,
    request: &NewConfigRequest,
    superseded: &str,
    superseded_payload: Option<String>,
    payload: String,
) -> Result<i64, StoreError> {
    let (host, key) = (request.host.as_str(), request.key.as_str());
    let n = tx.execute(
        "UPDATE config_requests SET status = 'FAILED', reason = ?3, finished = ?4
         WHERE host = ?1 AND key = ?2 AND status = 'PENDING'",
        params![host, key, superseded, request.lastclock],
    )?;
    if let (Some(old), true) = (superseded_payload, n > 0) {
        up.push(status_topic(host, key), old, true);
    }
    tx.execute(
        "INSERT INTO config_requests(host, key, target, expected, audit, id, status,
             lastclock, reason, expires_ms, written, finished)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)",
        params![
            host,
            key,
            request.target,
            request.expected,
            request.audit,
            request.id,
            request.status,
            request.lastclock,
            request.reason,
            request.expires_ms,
            request.finished,
        ],
    )?;
    let rid = tx.last_insert_rowid();
    up.push(status_topic(host, key), payload, true);
    Ok(rid)
}

/// Ends the pending request `rid` of `host`/`key` as `change` says, with its
/// retained message. Returns false (and writes nothing) when the request was
/// no longer pending.
pub fn finish(
    tx: &Transaction<'_>,
    up: &mut Uplink,
    host: &str,
    key: &str,
    rid: i64,
    change: StatusChange,
) -> Result<bool, StoreError> {
    let n = tx.execute(
        "UPDATE config_requests SET status = ?2, reason = ?3, finished = ?4
         WHERE rid = ?1 AND status = 'PENDING'",
        params![rid, change.status, change.reason, change.finished],
    )?;
    if n > 0 {
        up.push(status_topic(host, key), change.payload, true);
    }
    Ok(n > 0)
}

/// Records that a write of request `rid` may reach the device.
pub fn mark_written(tx: &Transaction<'_>, rid: i64) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE config_requests SET written = 1 WHERE rid = ?1",
        [rid],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: f64, lastclock: i64) -> NewConfigRequest {
        NewConfigRequest {
            host: "pump".into(),
            key: "k".into(),
            target,
            expected: None,
            audit: "[\"mqtt\"]".into(),
            id: None,
            status: "PENDING",
            lastclock,
            reason: None,
            expires_ms: i64::MAX,
            finished: None,
        }
    }

    #[tokio::test]
    async fn a_newer_request_supersedes_the_pending_one_with_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let l = super::super::tests::open(dir.path(), true);
        let first = l
            .insert_config_request(
                request(1.0, 10),
                "superseded",
                Some("old".into()),
                "first".into(),
            )
            .await
            .unwrap();
        let second = l
            .insert_config_request(
                request(2.0, 11),
                "superseded",
                Some("old".into()),
                "second".into(),
            )
            .await
            .unwrap();
        assert!(second > first);
        let msgs: Vec<(String, String)> = l
            .uplink_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.topic, m.payload))
            .collect();
        let topic = "config/pump/k".to_string();
        assert_eq!(
            msgs,
            vec![
                (topic.clone(), "first".into()),
                (topic.clone(), "old".into()),
                (topic, "second".into())
            ]
        );
        let stored = l.load_config_requests().await.unwrap();
        assert_eq!(stored.newest.len(), 1);
        assert_eq!(stored.newest[0].rid, second);
        let mut counts = stored.counts;
        counts.sort();
        assert_eq!(counts, vec![("FAILED".into(), 1), ("PENDING".into(), 1)]);
    }

    #[tokio::test]
    async fn only_a_pending_request_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let l = super::super::tests::open(dir.path(), true);
        let rid = l
            .insert_config_request(request(1.0, 10), "superseded", None, "new".into())
            .await
            .unwrap();
        let change = StatusChange {
            status: "SUCCESS",
            reason: None,
            finished: 12,
            payload: "done".into(),
        };
        assert!(l
            .finish_config_request("pump", "k", rid, change.clone())
            .await
            .unwrap());
        assert!(!l
            .finish_config_request("pump", "k", rid, change)
            .await
            .unwrap());
        assert_eq!(
            l.uplink_len(),
            2,
            "no message for a change that did not happen"
        );
        l.mark_config_request_written(rid).await.unwrap();
        let stored = l.load_config_requests().await.unwrap();
        assert_eq!(stored.newest[0].status, "SUCCESS");
        assert!(stored.newest[0].written);
        assert_eq!(
            l.tidy_config_requests("superseded", 20, 100).await.unwrap(),
            0
        );
    }
}
