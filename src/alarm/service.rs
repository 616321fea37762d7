//! The running alarm service: stores trigger states, events and
//! acknowledgements in the ledger, queues them for the uplink, and answers
//! the API. The task that feeds polled samples to the [`super::Engine`] is
//! [`super::run`].
//!
//! Invariants:
//! - a change of a trigger's value is written as one transaction: its event
//!   row, its `trigger_states` row, the `events` message and the retained
//!   `triggers/<id>` message, so after any stop either all exist or none;
//! - the values [`Alarms::triggers`] shows are the stored ones (the last
//!   recorded event's), and they are what the engine resumes from at start-up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{compile, CompiledTrigger, TriggerValue};
use crate::clock::unix_now;
use crate::daemon::Running;
use crate::json::HostObject;
use crate::ledger::Ledger;
use crate::model::Config;
use crate::store::{lock, StoreError};

/// An acknowledgement of an event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Acknowledgement {
    pub clock: i64,
    pub message: String,
}

/// An alarm event: the seed's shape plus `triggerid`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventObject {
    pub eventid: u64,
    pub triggerid: u64,
    pub host: String,
    pub key: String,
    /// `problem`, `OK` or `unknown`.
    pub value: String,
    pub clock: i64,
    pub description: String,
    /// `[n, "text"]`.
    pub severity: (u8, String),
    pub acknowledgements: Vec<Acknowledgement>,
}

/// A trigger: the seed's shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TriggerObject {
    pub triggerid: u64,
    pub description: String,
    /// Every host its expressions name, without items.
    pub hosts: Vec<HostObject>,
    pub lastchange: Option<i64>,
    pub value: String,
    pub severity: (u8, String),
}

/// Which events to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub host: Option<String>,
    pub key: Option<String>,
}

/// Why an acknowledgement was refused.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    #[error("no event {0}")]
    UnknownEvent(u64),
    /// An empty or oversized message: HTTP 422.
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

impl AckError {
    /// The HTTP status that fits.
    pub fn http_status(&self) -> u16 {
        match self {
            AckError::UnknownEvent(_) => 404,
            AckError::Invalid(_) => 422,
            AckError::Storage(_) => 503,
        }
    }
}

/// The longest acknowledgement message accepted, in bytes (UTF-8).
pub const MAX_ACK_BYTES: usize = 1024;

/// The most events [`Alarms::events`] returns: the newest that match.
pub const EVENTS_LIMIT: usize = 1000;

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlarmStats {
    /// Configured triggers per stored value.
    pub ok: usize,
    pub problem: usize,
    pub unknown: usize,
    /// Events recorded since start-up.
    pub events: u64,
    /// Changes seen by the engine but not yet stored (retried every second).
    pub pending: u64,
    /// Failed attempts to store events since start-up.
    pub storage_errors: u64,
    /// Time the alarm task spent feeding samples and evaluating, seconds.
    pub busy_seconds: f64,
}

/// One configured trigger with its stored state.
#[derive(Debug, Clone)]
struct Entry {
    compiled: CompiledTrigger,
    severity_text: String,
    value: TriggerValue,
    /// 0: never changed.
    lastchange: i64,
}

#[derive(Debug, Default)]
struct Catalog {
    triggers: Vec<Entry>,
    by_id: HashMap<u64, usize>,
}

impl Catalog {
    fn get(&self, triggerid: u64) -> Option<&Entry> {
        self.by_id
            .get(&triggerid)
            .and_then(|i| self.triggers.get(*i))
    }
}

#[derive(Debug, Default)]
struct Counters {
    events: AtomicU64,
    pending: AtomicU64,
    storage_errors: AtomicU64,
    busy_ns: AtomicU64,
}

struct Inner {
    catalog: Mutex<Catalog>,
    running: Arc<RwLock<Arc<Running>>>,
    counters: Counters,
}

/// A change of a trigger's value, waiting to be stored as one event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingChange {
    pub triggerid: u64,
    pub value: TriggerValue,
    pub clock: i64,
    pub host: String,
    pub key: String,
    pub description: String,
    pub severity: u8,
    pub severity_text: String,
}

/// The alarm service's handle; cheap to clone.
#[derive(Clone)]
pub struct Alarms {
    ledger: Ledger,
    inner: Arc<Inner>,
}

impl Alarms {
    /// The service for the current config of `running`: its triggers with
    /// their stored states. A trigger seen for the first time gets an `OK`
    /// state row and its retained message; the state of a trigger no longer
    /// configured is deleted and its retained message cleared.
    pub fn new(ledger: Ledger, running: Arc<RwLock<Arc<Running>>>) -> Result<Alarms, StoreError> {
        let alarms = Alarms {
            ledger,
            inner: Arc::new(Inner {
                catalog: Mutex::new(Catalog::default()),
                running,
                counters: Counters::default(),
            }),
        };
        let stored = alarms.ledger.read(|conn| {
            let mut st = conn.prepare("SELECT triggerid, value, lastchange FROM trigger_states")?;
            let rows = st.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut out = HashMap::new();
            for row in rows {
                let (id, value, lastchange) = row?;
                let value = TriggerValue::parse(&value).unwrap_or_else(|| {
                    tracing::warn!(
                        triggerid = id,
                        value,
                        "unreadable stored trigger value; taken as unknown"
                    );
                    TriggerValue::Unknown
                });
                out.insert(id as u64, (value, lastchange));
            }
            Ok(out)
        })?;
        let catalog = alarms.entries(&alarms.running().config, |id| stored.get(&id).copied());
        let stale: Vec<u64> = stored
            .keys()
            .copied()
            .filter(|id| catalog.get(*id).is_none())
            .collect();
        let fresh: Vec<u64> = catalog
            .triggers
            .iter()
            .map(|e| e.compiled.triggerid)
            .filter(|id| !stored.contains_key(id))
            .collect();
        alarms.sync_states(&catalog, &fresh, &[], &stale)?;
        for (id, (value, _)) in &stored {
            if catalog.get(*id).is_some() && *value == TriggerValue::Problem {
                tracing::info!(triggerid = id, "trigger resumes in problem");
            }
        }
        *lock(&alarms.inner.catalog) = catalog;
        Ok(alarms)
    }

    fn running(&self) -> Arc<Running> {
        self.inner
            .running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The triggers of `config`, with their state from `state` (default `OK`, never changed).
    fn entries(
        &self,
        config: &Config,
        state: impl Fn(u64) -> Option<(TriggerValue, i64)>,
    ) -> Catalog {
        let compiled = match compile(config) {
            Ok(c) => c,
            Err(diagnostics) => {
                // A loaded config has passed this check; this is a program error.
                for d in diagnostics {
                    tracing::error!("{d}");
                }
                Vec::new()
            }
        };
        let mut catalog = Catalog::default();
        for c in compiled {
            let (value, lastchange) = state(c.triggerid).unwrap_or((TriggerValue::Ok, 0));
            catalog.by_id.insert(c.triggerid, catalog.triggers.len());
            catalog.triggers.push(Entry {
                severity_text: config
                    .severity
                    .get(&c.severity)
                    .cloned()
                    .unwrap_or_default(),
                compiled: c,
                value,
                lastchange,
            });
        }
        catalog
    }

    /// One transaction: `fresh` triggers get an `OK` state row and their
    /// retained message, `changed` ones their retained message again, `stale`
    /// ones lose their state row and retained message.
    fn sync_states(
        &self,
        catalog: &Catalog,
        fresh: &[u64],
        changed: &[u64],
        stale: &[u64],
    ) -> Result<(), StoreError> {
        if fresh.is_empty() && changed.is_empty() && stale.is_empty() {
            return Ok(());
        }
        let running = self.running();
        let payloads: Vec<(u64, String)> = fresh
            .iter()
            .chain(changed)
            .filter_map(|id| {
                let e = catalog.get(*id)?;
                let object = trigger_object(&running, e, e.value, e.lastchange);
                Some((*id, to_json(&object)))
            })
            .collect();
        self.ledger.transaction(|tx, up| {
            {
                let mut insert = tx.prepare_cached(
                    "INSERT OR IGNORE INTO trigger_states(triggerid, value, lastchange) VALUES (?1, ?2, ?3)",
                )?;
                for id in fresh {
                    if let Some(e) = catalog.get(*id) {
                        insert.execute(params![
                            to_sql_id(*id),
                            e.value.as_str(),
                            e.lastchange
                        ])?;
                    }
                }
                let mut delete = tx.prepare_cached("DELETE FROM trigger_states WHERE triggerid = ?1")?;
                for id in stale {
                    delete.execute([to_sql_id(*id)])?;
                    up.push(format!("triggers/{id}"), "", true);
                }
            }
            for (id, payload) in &payloads {
                up.push(format!("triggers/{id}"), payload.as_str(), true);
            }
            Ok(())
        })
    }

    /// Takes over the triggers of the current config after a reload: kept
    /// triggers keep their state, new ones start `OK`, removed ones are
    /// forgotten. Called by [`crate::daemon::Gateway::reload`] after the new
    /// config is in place; the alarm task then rebuilds its engine.
    pub fn reconfigure(&self) {
        let running = self.running();
        let mut catalog = lock(&self.inner.catalog);
        let old = std::mem::take(&mut *catalog);
        let new = self.entries(&running.config, |id| {
            old.get(id).map(|e| (e.value, e.lastchange))
        });
        let fresh: Vec<u64> = new
            .triggers
            .iter()
            .map(|e| e.compiled.triggerid)
            .filter(|id| old.get(*id).is_none())
            .collect();
        let changed: Vec<u64> = new
            .triggers
            .iter()
            .filter(|e| {
                old.get(e.compiled.triggerid).is_some_and(|o| {
                    o.compiled.description != e.compiled.description
                        || o.compiled.severity != e.compiled.severity
                        || o.severity_text != e.severity_text
                        || o.compiled.hosts() != e.compiled.hosts()
                })
            })
            .map(|e| e.compiled.triggerid)
            .collect();
        let stale: Vec<u64> = old
            .triggers
            .iter()
            .map(|e| e.compiled.triggerid)
            .filter(|id| new.get(*id).is_none())
            .collect();
        if let Err(e) = self.sync_states(&new, &fresh, &changed, &stale) {
            tracing::error!(error = %e, "storing the trigger states of the new config failed; they are written with the next event");
        }
        tracing::info!(
            triggers = new.triggers.len(),
            added = fresh.len(),
            removed = stale.len(),
            "alarm triggers reconfigured"
        );
        *catalog = new;
    }

    /// The compiled triggers and their stored states, for building an engine.
    pub(crate) fn engine_setup(&self) -> Vec<(CompiledTrigger, TriggerValue, i64)> {
        lock(&self.inner.catalog)
            .triggers
            .iter()
            .map(|e| (e.compiled.clone(), e.value, e.lastchange))
            .collect()
    }

    /// A change seen by the engine, with what its event needs; `None` for a
    /// trigger no longer configured.
    pub(crate) fn pending_change(
        &self,
        triggerid: u64,
        value: TriggerValue,
        clock: i64,
    ) -> Option<PendingChange> {
        let catalog = lock(&self.inner.catalog);
        let e = catalog.get(triggerid)?;
        Some(PendingChange {
            triggerid,
            value,
            clock,
            host: e.compiled.first_item.0.clone(),
            key: e.compiled.first_item.1.clone(),
            description: e.compiled.description.clone(),
            severity: e.compiled.severity,
            severity_text: e.severity_text.clone(),
        })
    }

    /// The retained trigger messages for a batch of changes: one per trigger
    /// still configured, with its value after the batch.
    pub(crate) fn trigger_payloads(&self, batch: &[PendingChange]) -> Vec<(u64, String)> {
        let running = self.running();
        let catalog = lock(&self.inner.catalog);
        let mut last: Vec<&PendingChange> = Vec::new();
        for p in batch.iter().rev() {
            if !last.iter().any(|l| l.triggerid == p.triggerid) {
                last.push(p);
            }
        }
        last.reverse();
        last.into_iter()
            .filter_map(|p| {
                let e = catalog.get(p.triggerid)?;
                let object = trigger_object(&running, e, p.value, p.clock);
                Some((p.triggerid, to_json(&object)))
            })
            .collect()
    }

    /// Stores a batch of changes in one transaction: per change an event row,
    /// the trigger's state row (if still configured) and the `events`
    /// message; per trigger its retained message (`payloads`, see
    /// [`Alarms::trigger_payloads`]). Returns the stored events. Blocking.
    pub(crate) fn record(
        &self,
        batch: &[PendingChange],
        payloads: &[(u64, String)],
    ) -> Result<Vec<EventObject>, StoreError> {
        let configured: Vec<bool> = {
            let catalog = lock(&self.inner.catalog);
            batch
                .iter()
                .map(|p| catalog.get(p.triggerid).is_some())
                .collect()
        };
        let events = self.ledger.transaction(|tx, up| {
            let mut events = Vec::with_capacity(batch.len());
            let mut insert = tx.prepare_cached(
                "INSERT INTO events(triggerid, host, key, value, clock, description, severity, severity_text) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            let mut state = tx.prepare_cached(
                "INSERT INTO trigger_states(triggerid, value, lastchange) VALUES (?1, ?2, ?3) \
                 ON CONFLICT(triggerid) DO UPDATE SET value = excluded.value, lastchange = excluded.lastchange",
            )?;
            for (p, configured) in batch.iter().zip(&configured) {
                insert.execute(params![
                    to_sql_id(p.triggerid),
                    p.host,
                    p.key,
                    p.value.as_str(),
                    p.clock,
                    p.description,
                    p.severity,
                    p.severity_text
                ])?;
                let event = EventObject {
                    eventid: tx.last_insert_rowid().max(0) as u64,
                    triggerid: p.triggerid,
                    host: p.host.clone(),
                    key: p.key.clone(),
                    value: p.value.as_str().to_string(),
                    clock: p.clock,
                    description: p.description.clone(),
                    severity: (p.severity, p.severity_text.clone()),
                    acknowledgements: Vec::new(),
                };
                if *configured {
                    state.execute(params![to_sql_id(p.triggerid), p.value.as_str(), p.clock])?;
                }
                up.push("events", to_json(&event), false);
                events.push(event);
            }
            for (id, payload) in payloads {
                up.push(format!("triggers/{id}"), payload.as_str(), true);
            }
            Ok(events)
        })?;
        let mut catalog = lock(&self.inner.catalog);
        for p in batch {
            if let Some(&i) = catalog.by_id.get(&p.triggerid) {
                if let Some(e) = catalog.triggers.get_mut(i) {
                    e.value = p.value;
                    e.lastchange = p.clock;
                }
            }
        }
        // The batch is everything that was pending (the task waits for this
        // call); counted under the catalog lock so the two agree.
        self.inner.counters.pending.store(0, Ordering::Relaxed);
        self.inner
            .counters
            .events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        drop(catalog);
        Ok(events)
    }

    pub(crate) fn set_pending(&self, n: usize) {
        self.inner
            .counters
            .pending
            .store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn storage_failed(&self) {
        self.inner
            .counters
            .storage_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_busy(&self, d: std::time::Duration) {
        self.inner.counters.busy_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counters for `/metrics`.
    pub fn stats(&self) -> AlarmStats {
        let mut stats = AlarmStats::default();
        let catalog = lock(&self.inner.catalog);
        for e in &catalog.triggers {
            match e.value {
                TriggerValue::Ok => stats.ok += 1,
                TriggerValue::Problem => stats.problem += 1,
                TriggerValue::Unknown => stats.unknown += 1,
            }
        }
        let c = &self.inner.counters;
        stats.events = c.events.load(Ordering::Relaxed);
        stats.pending = c.pending.load(Ordering::Relaxed);
        stats.storage_errors = c.storage_errors.load(Ordering::Relaxed);
        stats.busy_seconds = c.busy_ns.load(Ordering::Relaxed) as f64 / 1e9;
        drop(catalog);
        stats
    }

    /// Adds an acknowledgement to an event, stores it, queues the event again
    /// for the uplink, and returns the event with all its acknowledgements.
    /// The message must not be blank and at most [`MAX_ACK_BYTES`] long.
    pub fn acknowledge(&self, eventid: u64, message: &str) -> Result<EventObject, AckError> {
        if message.trim().is_empty() {
            return Err(AckError::Invalid("message must not be empty".to_string()));
        }
        if message.len() > MAX_ACK_BYTES {
            return Err(AckError::Invalid(format!(
                "message is {} bytes long; at most {MAX_ACK_BYTES} are accepted",
                message.len()
            )));
        }
        if message.contains('\0') {
            return Err(AckError::Invalid(
                "message must not contain NUL characters".to_string(),
            ));
        }
        let Ok(id) = i64::try_from(eventid) else {
            return Err(AckError::UnknownEvent(eventid));
        };
        let clock = unix_now();
        let event = self.ledger.transaction(|tx, up| {
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
            up.push("events", to_json(&event), false);
            Ok(Some(event))
        })?;
        match event {
            Some(event) => {
                tracing::info!(eventid, triggerid = event.triggerid, "event acknowledged");
                Ok(event)
            }
            None => Err(AckError::UnknownEvent(eventid)),
        }
    }

    /// Stored events matching the filter (`from`/`to` inclusive, on `clock`),
    /// ascending by `eventid`; at most [`EVENTS_LIMIT`], the newest.
    pub fn events(&self, filter: &EventFilter) -> Result<Vec<EventObject>, StoreError> {
        self.ledger.read(|conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events \
                 WHERE (?1 IS NULL OR clock >= ?1) AND (?2 IS NULL OR clock <= ?2) \
                 AND (?3 IS NULL OR host = ?3) AND (?4 IS NULL OR key = ?4) \
                 ORDER BY eventid DESC LIMIT ?5"
            ))?;
            let rows = st.query_map(
                params![
                    filter.from,
                    filter.to,
                    filter.host,
                    filter.key,
                    EVENTS_LIMIT as i64
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
    }

    /// One stored event.
    pub fn event(&self, eventid: u64) -> Result<Option<EventObject>, StoreError> {
        let Ok(id) = i64::try_from(eventid) else {
            return Ok(None);
        };
        self.ledger.read(|conn| {
            let Some(mut event) = load_event(conn, id)? else {
                return Ok(None);
            };
            event.acknowledgements = load_acknowledgements(conn, id, id)?
                .remove(&eventid)
                .unwrap_or_default();
            Ok(Some(event))
        })
    }

    /// Every configured trigger with its current value, in config order.
    pub fn triggers(&self) -> Vec<TriggerObject> {
        let running = self.running();
        lock(&self.inner.catalog)
            .triggers
            .iter()
            .map(|e| trigger_object(&running, e, e.value, e.lastchange))
            .collect()
    }

    /// One trigger.
    pub fn trigger(&self, triggerid: u64) -> Option<TriggerObject> {
        let running = self.running();
        lock(&self.inner.catalog)
            .get(triggerid)
            .map(|e| trigger_object(&running, e, e.value, e.lastchange))
    }
}

const EVENT_COLUMNS: &str =
    "eventid, triggerid, host, key, value, clock, description, severity, severity_text";

fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventObject> {
    Ok(EventObject {
        eventid: r.get::<_, i64>(0)?.max(0) as u64,
        triggerid: r.get::<_, i64>(1)?.max(0) as u64,
        host: r.get(2)?,
        key: r.get(3)?,
        value: r.get(4)?,
        clock: r.get(5)?,
        description: r.get(6)?,
        severity: (r.get(7)?, r.get(8)?),
        acknowledgements: Vec::new(),
    })
}

fn load_event(conn: &Connection, eventid: i64) -> Result<Option<EventObject>, StoreError> {
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
) -> Result<HashMap<u64, Vec<Acknowledgement>>, StoreError> {
    let mut st = conn.prepare_cached(
        "SELECT eventid, clock, message FROM acknowledgements \
         WHERE eventid BETWEEN ?1 AND ?2 ORDER BY rowid",
    )?;
    let rows = st.query_map([from, to], |r| {
        Ok((
            r.get::<_, i64>(0)?.max(0) as u64,
            Acknowledgement {
                clock: r.get(1)?,
                message: r.get(2)?,
            },
        ))
    })?;
    let mut out: HashMap<u64, Vec<Acknowledgement>> = HashMap::new();
    for row in rows {
        let (id, ack) = row?;
        out.entry(id).or_default().push(ack);
    }
    Ok(out)
}

/// A trigger object with the given value, its hosts' live state from `running`.
fn trigger_object(
    running: &Running,
    e: &Entry,
    value: TriggerValue,
    lastchange: i64,
) -> TriggerObject {
    let hosts = e
        .compiled
        .hosts()
        .iter()
        .filter_map(|h| {
            let spec = running.config.host(h)?;
            Some(match running.hosts.get(h) {
                Some(live) => crate::json::host_object(spec, &live.lock(), None),
                None => crate::json::host_object(
                    spec,
                    &crate::poll::HostLive::new(spec.items.len()),
                    None,
                ),
            })
        })
        .collect();
    TriggerObject {
        triggerid: e.compiled.triggerid,
        description: e.compiled.description.clone(),
        hosts,
        lastchange: (lastchange != 0).then_some(lastchange),
        value: value.as_str().to_string(),
        severity: (e.compiled.severity, e.severity_text.clone()),
    }
}

fn to_sql_id(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

fn to_json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings and numbers: serialisation cannot fail.
    serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "serialising an alarm message failed");
        String::from("{}")
    })
}
