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
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{compile, CompiledTrigger, TriggerValue};
use crate::clock::unix_now;
use crate::ledger::alarms::{EventQuery, NewEvent, NewTriggerState, StoredEvent};
use crate::ledger::Ledger;
use crate::model::Config;
use crate::snapshot::{Snapshot, SnapshotHandle};
use crate::store::{lock, StoreError};
pub use crate::wire::{Acknowledgement, EventObject, TriggerObject};

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
    running: SnapshotHandle,
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
    pub async fn new(ledger: Ledger, running: SnapshotHandle) -> Result<Alarms, StoreError> {
        let alarms = Alarms {
            ledger,
            inner: Arc::new(Inner {
                catalog: Mutex::new(Catalog::default()),
                running,
                counters: Counters::default(),
            }),
        };
        let mut stored = HashMap::new();
        for row in alarms.ledger.trigger_states().await? {
            let value = TriggerValue::parse(&row.value).unwrap_or_else(|| {
                tracing::warn!(
                    triggerid = row.triggerid,
                    value = row.value,
                    "unreadable stored trigger value; taken as unknown"
                );
                TriggerValue::Unknown
            });
            stored.insert(row.triggerid, (value, row.lastchange));
        }
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
        alarms.sync_states(&catalog, &fresh, &[], &stale).await?;
        for (id, (value, _)) in &stored {
            if catalog.get(*id).is_some() && *value == TriggerValue::Problem {
                tracing::info!(triggerid = id, "trigger resumes in problem");
            }
        }
        *lock(&alarms.inner.catalog) = catalog;
        Ok(alarms)
    }

    fn running(&self) -> Arc<Snapshot> {
        self.inner.running.current()
    }

    /// The triggers of `config`, with their state from `state` (default `OK`, never changed).
    fn entries(
        &self,
        config: &Config,
        state: impl Fn(u64) -> Option<(TriggerValue, i64)>,
    ) -> Catalog {
        let compiled = compile(config);
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
    async fn sync_states(
        &self,
        catalog: &Catalog,
        fresh: &[u64],
        changed: &[u64],
        stale: &[u64],
    ) -> Result<(), StoreError> {
        let rows = self.state_rows(catalog, fresh, changed);
        self.store_states(rows, stale).await
    }

    /// The state rows of `fresh` triggers and the retained messages of
    /// `fresh` and `changed` ones, for [`Alarms::store_states`].
    fn state_rows(
        &self,
        catalog: &Catalog,
        fresh: &[u64],
        changed: &[u64],
    ) -> (Vec<NewTriggerState>, Vec<(u64, String)>) {
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
        let fresh: Vec<NewTriggerState> = fresh
            .iter()
            .filter_map(|id| {
                let e = catalog.get(*id)?;
                Some(NewTriggerState {
                    triggerid: *id,
                    value: e.value.as_str(),
                    lastchange: e.lastchange,
                })
            })
            .collect();
        (fresh, payloads)
    }

    async fn store_states(
        &self,
        (fresh, payloads): (Vec<NewTriggerState>, Vec<(u64, String)>),
        stale: &[u64],
    ) -> Result<(), StoreError> {
        if fresh.is_empty() && payloads.is_empty() && stale.is_empty() {
            return Ok(());
        }
        self.ledger
            .sync_trigger_states(fresh, stale.to_vec(), payloads)
            .await
    }

    /// Takes over the triggers of the current config after a reload: kept
    /// triggers keep their state, new ones start `OK`, removed ones are
    /// forgotten. Called by [`crate::gateway::Gateway::reload`] after the new
    /// config is in place; the alarm task then rebuilds its engine.
    pub async fn reconfigure(&self) {
        let running = self.running();
        let old = std::mem::take(&mut *lock(&self.inner.catalog));
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
        let (triggers, added, removed) = (new.triggers.len(), fresh.len(), stale.len());
        let rows = self.state_rows(&new, &fresh, &changed);
        // In place before the statements run (never a lock held across them).
        *lock(&self.inner.catalog) = new;
        if let Err(e) = self.store_states(rows, &stale).await {
            tracing::error!(error = %e, "storing the trigger states of the new config failed; they are written with the next event");
        }
        tracing::info!(triggers, added, removed, "alarm triggers reconfigured");
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
    /// [`Alarms::trigger_payloads`]). Returns the stored events.
    pub(crate) async fn record(
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
        let rows: Vec<NewEvent> = batch
            .iter()
            .zip(&configured)
            .map(|(p, configured)| NewEvent {
                triggerid: p.triggerid,
                host: p.host.clone(),
                key: p.key.clone(),
                value: p.value.as_str(),
                clock: p.clock,
                description: p.description.clone(),
                severity: p.severity,
                severity_text: p.severity_text.clone(),
                update_state: *configured,
            })
            .collect();
        let events: Vec<EventObject> = self
            .ledger
            .record_events(rows, payloads.to_vec(), announce)
            .await?
            .into_iter()
            .map(EventObject::from)
            .collect();
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
    pub async fn acknowledge(&self, eventid: u64, message: &str) -> Result<EventObject, AckError> {
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
        let clock = unix_now();
        let event = self
            .ledger
            .acknowledge_event(eventid, clock, message, announce)
            .await?
            .map(EventObject::from);
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
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<EventObject>, StoreError> {
        let query = EventQuery {
            from: filter.from,
            to: filter.to,
            host: filter.host.clone(),
            key: filter.key.clone(),
            limit: EVENTS_LIMIT,
        };
        Ok(self
            .ledger
            .events(&query)
            .await?
            .into_iter()
            .map(EventObject::from)
            .collect())
    }

    /// One stored event.
    pub async fn event(&self, eventid: u64) -> Result<Option<EventObject>, StoreError> {
        Ok(self.ledger.event(eventid).await?.map(EventObject::from))
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

impl From<StoredEvent> for EventObject {
    fn from(e: StoredEvent) -> EventObject {
        EventObject {
            eventid: e.eventid,
            triggerid: e.triggerid,
            host: e.host,
            key: e.key,
            value: e.value,
            clock: e.clock,
            description: e.description,
            severity: (e.severity, e.severity_text),
            acknowledgements: e
                .acknowledgements
                .into_iter()
                .map(|a| Acknowledgement {
                    clock: a.clock,
                    message: a.message,
                })
                .collect(),
        }
    }
}

/// The `events` message of a stored event: its API object.
fn announce(event: &StoredEvent) -> String {
    to_json(&EventObject::from(event.clone()))
}

/// A trigger object with the given value, its hosts' live state from `running`.
fn trigger_object(
    running: &Snapshot,
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
                Some(live) => crate::wire::host_object(spec, live.lock().lastclock(), None),
                None => crate::wire::host_object(spec, None, None),
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

fn to_json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings and numbers: serialisation cannot fail.
    serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "serialising an alarm message failed");
        String::from("{}")
    })
}
