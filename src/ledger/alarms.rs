//! The alarm tables: `trigger_states` (the last value of every trigger, so a
//! restart neither repeats nor loses an event), `events` and
//! `acknowledgements`.
//!
//! The rows are plain data here; the alarm service turns them into its API
//! objects and decides the messages' payloads, which it hands in as closures
//! so that an event and the message announcing it are one transaction.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::Ledger;
use crate::store::StoreError;

/// A trigger's stored value: its `trigger_states` row.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTriggerState {
    pub triggerid: u64,
    /// `OK`, `problem` or `unknown`, as written; the service reads it.
    pub value: String,
    /// Unix seconds of the last change; 0: never changed.
    pub lastchange: i64,
}

/// A trigger state row to create (a trigger seen for the first time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewTriggerState {
    pub triggerid: u64,
    pub value: &'static str,
    pub lastchange: i64,
}

/// A change of a trigger's value to record as an event.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub triggerid: u64,
    pub host: String,
    pub key: String,
    pub value: &'static str,
    pub clock: i64,
    pub description: String,
    pub severity: u8,
    pub severity_text: String,
    /// Whether the trigger is still configured: only then is its state row
    /// updated along with the event.
    pub update_state: bool,
}

/// A stored acknowledgement of an event.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAck {
    pub clock: i64,
    pub message: String,
}

/// A stored event with its acknowledgements, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub eventid: u64,
    pub triggerid: u64,
    pub host: String,
    pub key: String,
    pub value: String,
    pub clock: i64,
    pub description: String,
    pub severity: u8,
    pub severity_text: String,
    pub acknowledgements: Vec<StoredAck>,
}

/// Which events to list: `from`/`to` inclusive on `clock`, at most `limit`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventQuery {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub host: Option<String>,
    pub key: Option<String>,
    pub limit: usize,
}

/// The uplink topic of a trigger's retained state message.
fn trigger_topic(triggerid: u64) -> String {
    format!("triggers/{triggerid}")
}

impl Ledger {
    /// Every stored trigger state.
    pub async fn trigger_states(&self) -> Result<Vec<StoredTriggerState>, StoreError> {
        self.read(|conn| {
            let mut st = conn.prepare("SELECT triggerid, value, lastchange FROM trigger_states")?;
            let rows = st.query_map([], |r| {
                Ok(StoredTriggerState {
                    triggerid: r.get::<_, i64>(0)? as u64,
                    value: r.get(1)?,
                    lastchange: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One transaction: `fresh` triggers get their state row, `stale` ones
    /// lose it and have their retained `triggers/<id>` message cleared, and
    /// `messages` (trigger id, payload) are queued as retained state messages.
    pub async fn sync_trigger_states(
        &self,
        fresh: Vec<NewTriggerState>,
        stale: Vec<u64>,
        messages: Vec<(u64, String)>,
    ) -> Result<(), StoreError> {
        self.transaction(move |tx, up| {
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO trigger_states(triggerid, value, lastchange) VALUES (?1, ?2, ?3)",
                )?;
                for s in &fresh {
                    insert.execute(params![to_sql_id(s.triggerid), s.value, s.lastchange])?;
                }
                let mut delete =
                    tx.prepare_cached("DELETE FROM trigger_states WHERE triggerid = ?1")?;
                for id in stale {
                    delete.execute([to_sql_id(id)])?;
                    up.push(trigger_topic(id), "", true);
                }
            }
            for (id, payload) in messages {
                up.push(trigger_topic(id), payload, true);
            }
            Ok(())
        })
        .await
    }

    /// Records a batch of changes in one transaction: per change its event
    /// row, its trigger's state row (when `update_state`) and the `events`
    /// message `announce` makes of the stored event; then `messages` (trigger
    /// id, payload) as retained state messages. Returns the stored events.
    pub async fn record_events(
        &self,
        batch: Vec<NewEvent>,
        messages: Vec<(u64, String)>,
        announce: impl Fn(&StoredEvent) -> String + Send + 'static,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.transaction(move |tx, up| {
            let mut events = Vec::with_capacity(batch.len());
            let mut insert = tx.prepare_cached(
                "INSERT INTO events(triggerid, host, key, value, clock, description, severity, severity_text) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut state = tx.prepare_cached(
                "INSERT INTO trigger_states(triggerid, value, lastchange) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(triggerid) DO UPDATE SET value = excluded.value, lastchange = excluded.lastchange",
            )?;
            for p in batch {
                insert.execute(params![
                    to_sql_id(p.triggerid),
                    p.host,
                    p.key,
                    p.value,
                    p.clock,
                    p.description,
                    p.severity,
                    p.severity_text
                ])?;
                if p.update_state {
                    state.execute(params![to_sql_id(p.triggerid), p.value, p.clock])?;
                }
                let event = StoredEvent {
                    eventid: tx.last_insert_rowid().max(0) as u64,
                    triggerid: p.triggerid,
                    host: p.host,
                    key: p.key,
                    value: p.value.to_string(),
                    clock: p.clock,
                    description: p.description,
                    severity: p.severity,
                    severity_text: p.severity_text,
                    acknowledgements: Vec::new(),
                };
                up.push("events", announce(&event), false);
                events.push(event);
            }
            for (id, payload) in messages {
                up.push(trigger_topic(id), payload, true);
            }
            Ok(events)
        })
        .await
    }

    /// Adds an acknowledgement to a stored event and queues the `events`
    /// message `announce` makes of the event with all its acknowledgements,
    /// in one transaction. None (and nothing written) for an unknown event.
    pub async fn acknowledge_event(
        &self,
        eventid: u64,
        clock: i64,
        message: &str,
        announce: impl FnOnce(&StoredEvent) -> String + Send + 'static,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let Ok(id) = i64::try_from(eventid) else {
            return Ok(None);
        };
        let message = message.to_string();
        self.transaction(move |tx, up| {
            let Some(mut event) = load_event(tx, id)? else {
                return Ok(None);
            };
            tx.execute(
                "INSERT INTO acknowledgements(eventid, clock, message) VALUES (?1, ?2, ?3)",
                params![id, clock, message],
            )?;
            event.acknowledgements = load_acknowledgements(tx, id, id)?
                .remove(&eventid)
                .unwrap_or_default();
            up.push("events", announce(&event), false);
            Ok(Some(event))
        })
        .await
    }

    /// Stored events matching the query, ascending by `eventid`; at most
    /// `limit`, the newest.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let query = query.clone();
        self.read(move |conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events \
                 WHERE (?1 IS NULL OR clock >= ?1) AND (?2 IS NULL OR clock <= ?2) \
                 AND (?3 IS NULL OR host = ?3) AND (?4 IS NULL OR key = ?4) \
                 ORDER BY eventid DESC LIMIT ?5"
            ))?;
            let rows = st.query_map(
                params![
                    query.from,
                    query.to,
                    query.host,
                    query.key,
                    i64::try_from(query.limit).unwrap_or(i64::MAX)
                ],
                event_row,
            )?;
            let mut events = rows.collect::<Result<Vec<_>, _>>()?;
            events.reverse();
            if let (Some(first), Some(last)) = (events.first(), events.last()) {
                let mut acks =
                    load_acknowledgements(conn, to_sql_id(first.eventid), to_sql_id(last.eventid))?;
                for e in &mut events {
                    e.acknowledgements = acks.remove(&e.eventid).unwrap_or_default();
                }
            }
            Ok(events)
        })
        .await
    }

    /// One stored event with its acknowledgements.
    pub async fn event(&self, eventid: u64) -> Result<Option<StoredEvent>, StoreError> {
        let Ok(id) = i64::try_from(eventid) else {
            return Ok(None);
        };
        self.read(move |conn| {
            let Some(mut event) = load_event(conn, id)? else {
                return Ok(None);
            };
            event.acknowledgements = load_acknowledgements(conn, id, id)?
                .remove(&eventid)
                .unwrap_or_default();
            Ok(Some(event))
        })
        .await
    }
}

const EVENT_COLUMNS: &str =
    "eventid, triggerid, host, key, value, clock, description, severity, severity_text";

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        eventid: r.get::<_, i64>(0)?.max(0) as u64,
        triggerid: r.get::<_, i64>(1)?.max(0) as u64,
        host: r.get(2)?,
        key: r.get(3)?,
        value: r.get(4)?,
        clock: r.get(5)?,
        description: r.get(6)?,
        severity: r.get(7)?,
        severity_text: r.get(8)?,
        acknowledgements: Vec::new(),
    })
}

fn load_event(conn: &Connection, eventid: i64) -> Result<Option<StoredEvent>, StoreError> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE eventid = ?1"
    ))?;
    Ok(st.query_row([eventid], event_row).optional()?)
}

/// Acknowledgements of the events `from..=to`, per event, oldest first.
fn load_acknowledgements(
    conn: &Connection,
    from: i64,
    to: i64,
) -> Result<HashMap<u64, Vec<StoredAck>>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT eventid, clock, message FROM acknowledgements \
         WHERE eventid BETWEEN ?1 AND ?2 ORDER BY rowid",
    )?;
    let rows = st.query_map([from, to], |r| {
        Ok((
            r.get::<_, i64>(0)?.max(0) as u64,
            StoredAck {
                clock: r.get(1)?,
                message: r.get(2)?,
            },
        ))
    })?;
    let mut out: HashMap<u64, Vec<StoredAck>> = HashMap::new();
    for row in rows {
        let (id, ack) = row?;
        out.entry(id).or_default().push(ack);
    }
    Ok(out)
}

fn to_sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(value: &'static str, clock: i64, update_state: bool) -> NewEvent {
        NewEvent {
            triggerid: 7,
            host: "pump".into(),
            key: "k".into(),
            value,
            clock,
            description: "hot".into(),
            severity: 3,
            severity_text: "Average".into(),
            update_state,
        }
    }

    #[tokio::test]
    async fn an_event_its_state_and_messages_are_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let l = super::super::tests::open(dir.path(), true);
        l.sync_trigger_states(
            vec![NewTriggerState {
                triggerid: 7,
                value: "OK",
                lastchange: 0,
            }],
            vec![],
            vec![(7, "{}".into())],
        )
        .await
        .unwrap();
        let events = l
            .record_events(
                vec![change("problem", 100, true), change("OK", 101, false)],
                vec![(7, "state".into())],
                |e| format!("event {}", e.eventid),
            )
            .await
            .unwrap();
        assert_eq!(events.len(), 2);
        let states = l.trigger_states().await.unwrap();
        assert_eq!(states.len(), 1);
        assert_eq!(
            (states[0].value.as_str(), states[0].lastchange),
            ("problem", 100)
        );
        let topics: Vec<String> = l
            .uplink_after(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| format!("{} {}", m.topic, m.payload))
            .collect();
        assert_eq!(
            topics,
            vec![
                "triggers/7 {}".to_string(),
                format!("events event {}", events[0].eventid),
                format!("events event {}", events[1].eventid),
                "triggers/7 state".to_string(),
            ]
        );
        let acked = l
            .acknowledge_event(events[0].eventid, 102, "seen", |e| {
                format!("acks {}", e.acknowledgements.len())
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(acked.acknowledgements[0].message, "seen");
        assert!(l
            .acknowledge_event(999, 103, "x", |_| String::new())
            .await
            .unwrap()
            .is_none());
        assert_eq!(l.uplink_len(), 5, "an unknown event queues nothing");
        let query = EventQuery {
            host: Some("pump".into()),
            limit: 10,
            ..EventQuery::default()
        };
        let listed = l.events(&query).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].acknowledgements.len(), 1);
        assert_eq!(
            l.event(events[1].eventid).await.unwrap().unwrap().value,
            "OK"
        );
        l.sync_trigger_states(vec![], vec![7], vec![])
            .await
            .unwrap();
        assert!(l.trigger_states().await.unwrap().is_empty());
    }
}
