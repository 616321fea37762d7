//! The config request service: one entry point for every channel (MQTT,
//! HTTP API, command line), a durable PENDING -> SUCCESS/FAILED pipeline with
//! the newest request of every item in memory.
//!
//! [`ConfigRequests::submit`] checks a request against the current config,
//! records it in the ledger (PENDING, or FAILED at once when the target cannot
//! be written), supersedes an older pending request of the item and wakes the
//! host's task; [`ConfigRequests::set_config`] (reload) fails the pending
//! requests of items that are gone. The statuses are kept here for the API and
//! `/metrics`; the SQL is in [`crate::ledger::config_requests`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;

use super::device::HostConfigRequests;
use super::request::{check_request, Channel, ConfigRequest, SubmitError};
use super::value::check_target;
use crate::clock::unix_ms;
use crate::ledger::config_requests::{self as stored, NewConfigRequest, StatusChange};
use crate::ledger::Ledger;
use crate::model::{Config, HostSpec, ItemSpec};
use crate::store::StoreError;
pub use crate::wire::{ConfigObject, Status};

/// The reason of a request failed by a newer one for the same item.
pub const SUPERSEDED: &str = "superseded by a newer request";
/// The reason of a request failed by a newer one after its write was sent
/// (it may have reached the device; a superseded request is never sent).
pub const SUPERSEDED_AFTER_WRITE: &str =
    "superseded by a newer request; its write was already sent and may have reached the device";
/// The reason of a request whose item left the config (or is no longer configurable).
pub const REMOVED: &str = "item removed from config";

/// Counts for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConfigRequestStats {
    /// Requests kept in the database, by their current status.
    pub pending: u64,
    pub success: u64,
    pub failed: u64,
    /// Requests refused since start-up (nothing recorded).
    pub refused: u64,
    /// Attempts since start-up that could not reach the device (retried).
    pub unreachable: u64,
}

impl ConfigRequestStats {
    fn count(&mut self, status: Status, delta: i64) {
        let n = match status {
            Status::Pending => &mut self.pending,
            Status::Success => &mut self.success,
            Status::Failed => &mut self.failed,
        };
        *n = n.saturating_add_signed(delta);
    }
}

/// A PENDING request as its host task sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingRequest {
    /// The ledger's row id.
    pub rid: i64,
    pub key: String,
    pub target: f64,
    pub expected: Option<f64>,
    /// Unix milliseconds after which it fails as expired.
    pub expires_ms: i64,
    /// A write may already have reached the device.
    pub written: bool,
}

/// The newest request of an item.
#[derive(Debug, Clone)]
struct Latest {
    rid: i64,
    object: ConfigObject,
    expires_ms: i64,
    /// A write frame of it was sent (it may have reached the device).
    written: bool,
    /// A newer request is superseding it: it must not be written any more.
    withdrawn: bool,
}

/// The reason a superseded request fails with: whether its write was sent.
fn superseded_reason(l: &Latest) -> &'static str {
    if l.written {
        SUPERSEDED_AFTER_WRITE
    } else {
        SUPERSEDED
    }
}

struct State {
    config: Arc<Config>,
    /// host -> key -> newest request.
    latest: HashMap<String, HashMap<String, Latest>>,
    /// Wakes a host's task when a request for it arrives.
    wake: HashMap<String, tokio::sync::watch::Sender<u64>>,
    stats: ConfigRequestStats,
}

struct Inner {
    ledger: Ledger,
    /// Only ever locked briefly, never across SQL: changes are decided and
    /// applied on the ledger's thread (see [`Ledger::transaction_then`]), so
    /// they are applied in commit order.
    state: Mutex<State>,
    changes: tokio::sync::watch::Sender<u64>,
}

/// The config request service's handle; cheap to clone.
#[derive(Clone)]
pub struct ConfigRequests {
    inner: Arc<Inner>,
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The retained `config/<host>/<key>` message: the item's `config` object.
fn uplink_payload(host: &str, key: &str, object: &ConfigObject) -> String {
    serde_json::json!({ "host": host, "key": key, "config": object }).to_string()
}

/// The configurable item `key` of `host` in `config`, if it still is one.
fn configurable<'a>(config: &'a Config, host: &str, key: &str) -> Option<&'a ItemSpec> {
    config
        .host(host)
        .and_then(|h| h.item(key))
        .filter(|i| i.configurable)
}

impl ConfigRequests {
    /// The pipeline over the ledger, for the current config. Prefer
    /// [`ConfigRequests::open`]: if the ledger cannot be read, this logs the error and
    /// starts without the requests recorded earlier.
    pub async fn new(ledger: Ledger, config: Arc<Config>) -> ConfigRequests {
        match ConfigRequests::open(ledger.clone(), config.clone()).await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot read recorded config requests; starting without them");
                ConfigRequests::empty(ledger, config)
            }
        }
    }

    fn empty(ledger: Ledger, config: Arc<Config>) -> ConfigRequests {
        ConfigRequests {
            inner: Arc::new(Inner {
                ledger,
                state: Mutex::new(State {
                    config,
                    latest: HashMap::new(),
                    wake: HashMap::new(),
                    stats: ConfigRequestStats::default(),
                }),
                changes: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// Opens the pipeline: loads every item's newest request, drops finished
    /// requests older than the history retention (never an item's newest), and
    /// fails pending requests whose item left the config while we were down.
    pub async fn open(ledger: Ledger, config: Arc<Config>) -> Result<ConfigRequests, StoreError> {
        let horizon = unix_ms() / 1000
            - i64::try_from(config.storage.history_retention.as_secs()).unwrap_or(i64::MAX / 2);
        // Only the newest request of an item may be pending.
        let pruned = ledger
            .tidy_config_requests(SUPERSEDED, unix_ms() / 1000, horizon)
            .await?;
        if pruned > 0 {
            tracing::info!(pruned, "old config requests removed");
        }
        let stored = ledger.load_config_requests().await?;
        let mut latest: HashMap<String, HashMap<String, Latest>> = HashMap::new();
        for r in stored.newest {
            let object = ConfigObject {
                audit: serde_json::from_str(&r.audit).unwrap_or_default(),
                target: Some(r.target),
                lastclock: Some(r.lastclock),
                status: Status::parse(&r.status),
                expected: r.expected,
                reason: r.reason,
                id: r
                    .id
                    .map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s))),
            };
            latest.entry(r.host).or_default().insert(
                r.key,
                Latest {
                    rid: r.rid,
                    object,
                    expires_ms: r.expires_ms,
                    written: r.written,
                    withdrawn: false,
                },
            );
        }
        let mut stats = ConfigRequestStats::default();
        for (status, n) in stored.counts {
            stats.count(Status::parse(&status), n);
        }
        let requests = ConfigRequests::empty(ledger, config);
        {
            let mut st = requests.state();
            st.latest = latest;
            st.stats = stats;
            let pending = st.stats.pending;
            if pending > 0 {
                tracing::info!(pending, "pending config requests resumed");
            }
        }
        requests.fail_removed().await?;
        Ok(requests)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a request from any channel: refused with an error (nothing
    /// recorded), or recorded durably (PENDING, or FAILED at once) and returned.
    pub async fn submit(
        &self,
        request: ConfigRequest,
        channel: Channel,
    ) -> Result<ConfigObject, SubmitError> {
        let host = {
            let mut st = self.state();
            let refusal = check_request(&st.config, &request);
            if let Err(e) = refusal {
                st.stats.refused += 1;
                tracing::info!(host = %request.host, key = %request.key, channel = %channel.audit(), error = %e, "config request refused");
                return Err(e);
            }
            st.config.host(&request.host).cloned()
        };
        let Some(host) = host else {
            return Err(SubmitError::UnknownHost(request.host));
        };
        let Some(item) = host.item(&request.key) else {
            return Err(SubmitError::UnknownKey {
                host: request.host,
                key: request.key,
            });
        };
        let now_ms = unix_ms();
        let lastclock = now_ms / 1000;
        let (status, reason) = match check_target(item, request.target) {
            Ok(_) => (Status::Pending, None),
            Err(reason) => (Status::Failed, Some(reason)),
        };
        let mut audit = request.audit;
        audit.push(channel.audit());
        let object = ConfigObject {
            audit,
            target: Some(request.target),
            lastclock: Some(lastclock),
            status,
            expected: request.expected,
            reason,
            id: request.id,
        };
        let expires_ms = now_ms.saturating_add(duration_ms(host.write_expiry));
        let (host_id, key) = (request.host, request.key);
        let row = NewConfigRequest {
            host: host_id.clone(),
            key: key.clone(),
            target: request.target,
            expected: object.expected,
            audit: serde_json::to_string(&object.audit).unwrap_or_else(|_| "[]".into()),
            id: object.id.as_ref().map(Value::to_string),
            status: object.status.as_str(),
            lastclock,
            reason: object.reason.clone(),
            expires_ms,
            finished: (status != Status::Pending).then_some(lastclock),
        };
        let payload = uplink_payload(&host_id, &key, &object);
        let (decide, apply) = (self.clone(), self.clone());
        let recorded = object.clone();
        self.inner
            .ledger
            .transaction_then(
                move |tx, up| {
                    // Decided here, on the ledger's thread: every earlier
                    // request of the item is committed and applied.
                    // The older request is withdrawn under the state lock
                    // that `clear_to_write` takes: it is either written
                    // before this (and said so) or never.
                    let (superseded, why) = {
                        let mut st = decide.state();
                        let older = st
                            .latest
                            .get_mut(&row.host)
                            .and_then(|m| m.get_mut(&row.key))
                            .filter(|l| l.object.status == Status::Pending);
                        match older {
                            Some(l) => {
                                l.withdrawn = true;
                                let why = superseded_reason(l);
                                let object = ConfigObject {
                                    status: Status::Failed,
                                    reason: Some(why.to_string()),
                                    ..l.object.clone()
                                };
                                (Some((object, l.rid)), why)
                            }
                            None => (None, SUPERSEDED),
                        }
                    };
                    let superseded_payload = superseded
                        .as_ref()
                        .map(|(old, _)| uplink_payload(&row.host, &row.key, old));
                    let rid = stored::insert(tx, up, &row, why, superseded_payload, payload)
                        .inspect_err(|_| {
                            // Not recorded: the older request goes on.
                            if let Some((_, old)) = &superseded {
                                decide.unwithdraw(&row.host, &row.key, *old);
                            }
                        })?;
                    Ok((rid, superseded.is_some()))
                },
                move |(rid, superseded)| {
                    apply.recorded(
                        host_id, key, rid, recorded, expires_ms, superseded, &channel,
                    )
                },
            )
            .await?;
        Ok(object)
    }

    /// Applies a request just committed (on the ledger's thread).
    #[allow(clippy::too_many_arguments)]
    fn recorded(
        &self,
        host_id: String,
        key: String,
        rid: i64,
        object: ConfigObject,
        expires_ms: i64,
        superseded: bool,
        channel: &Channel,
    ) {
        let mut st = self.state();
        let status = object.status;
        if superseded {
            st.stats.count(Status::Pending, -1);
            st.stats.count(Status::Failed, 1);
            tracing::info!(host = %host_id, key = %key, "pending config request superseded by a newer one");
        }
        st.stats.count(status, 1);
        tracing::info!(
            host = %host_id,
            key = %key,
            target = object.target.unwrap_or(f64::NAN),
            expected = ?object.expected,
            channel = %channel.audit(),
            status = status.as_str(),
            reason = object.reason.as_deref().unwrap_or(""),
            "config request recorded"
        );
        if status == Status::Pending {
            if let Some(w) = st.wake.get(&host_id) {
                w.send_modify(|n| *n += 1);
            }
        }
        st.latest.entry(host_id).or_default().insert(
            key,
            Latest {
                rid,
                object,
                expires_ms,
                written: false,
                withdrawn: false,
            },
        );
        drop(st);
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// The item's latest config object, if it ever received a request.
    pub fn config_of(&self, host: &str, key: &str) -> Option<ConfigObject> {
        self.state()
            .latest
            .get(host)
            .and_then(|m| m.get(key))
            .map(|l| l.object.clone())
    }

    /// A receiver that sees a change whenever a config object changes (a
    /// request recorded, a status change, a retry noted).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Counts per status, refusals and unreachable attempts.
    pub fn stats(&self) -> ConfigRequestStats {
        self.state().stats
    }

    /// Takes a new config (reload): pending requests for items that are gone
    /// or no longer configurable fail ("item removed from config"); the others
    /// go on.
    pub async fn set_config(&self, config: Arc<Config>) -> Result<(), StoreError> {
        self.state().config = config;
        self.fail_removed().await
    }

    async fn fail_removed(&self) -> Result<(), StoreError> {
        let gone: Vec<(String, String, i64)> = {
            let st = self.state();
            let mut gone = Vec::new();
            for (host, items) in &st.latest {
                for (key, l) in items {
                    if l.object.status == Status::Pending
                        && configurable(&st.config, host, key).is_none()
                    {
                        gone.push((host.clone(), key.clone(), l.rid));
                    }
                }
            }
            gone
        };
        for (host, key, rid) in gone {
            self.finish(&host, &key, rid, Status::Failed, Some(REMOVED.into()))
                .await?;
        }
        Ok(())
    }

    /// The handle a host's task uses to carry out its requests.
    pub fn host_queue(&self, host: &HostSpec) -> HostConfigRequests {
        let wake = self
            .state()
            .wake
            .entry(host.host.clone())
            .or_insert_with(|| tokio::sync::watch::Sender::new(0))
            .subscribe();
        HostConfigRequests::new(self.clone(), host, wake)
    }

    /// The host's pending requests, oldest first.
    pub fn pending(&self, host: &str) -> Vec<PendingRequest> {
        let st = self.state();
        let mut out: Vec<PendingRequest> = st
            .latest
            .get(host)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(_, l)| l.object.status == Status::Pending && !l.withdrawn)
            .map(|(key, l)| PendingRequest {
                rid: l.rid,
                key: key.clone(),
                target: l.object.target.unwrap_or(f64::NAN),
                expected: l.object.expected,
                expires_ms: l.expires_ms,
                written: l.written,
            })
            .collect();
        out.sort_by_key(|p| p.rid);
        out
    }

    /// Ends a pending request. Returns false when it was no longer pending
    /// (superseded or failed meanwhile): then nothing changes.
    pub(super) async fn finish(
        &self,
        host: &str,
        key: &str,
        rid: i64,
        status: Status,
        reason: Option<String>,
    ) -> Result<bool, StoreError> {
        let (host, key) = (host.to_string(), key.to_string());
        let (decide, apply) = (self.clone(), self.clone());
        self.inner
            .ledger
            .transaction_then(
                move |tx, up| {
                    let object = {
                        let st = decide.state();
                        match st.latest.get(&host).and_then(|m| m.get(&key)) {
                            Some(l) if l.rid == rid && l.object.status == Status::Pending => {
                                ConfigObject {
                                    status,
                                    reason,
                                    ..l.object.clone()
                                }
                            }
                            _ => return Ok(None),
                        }
                    };
                    let change = StatusChange {
                        status: status.as_str(),
                        reason: object.reason.clone(),
                        finished: unix_ms() / 1000,
                        payload: uplink_payload(&host, &key, &object),
                    };
                    let changed = stored::finish(tx, up, &host, &key, rid, change)?;
                    Ok(changed.then_some((host, key, object)))
                },
                move |changed| match changed {
                    Some((host, key, object)) => {
                        apply.finished(&host, &key, rid, object);
                        true
                    }
                    None => false,
                },
            )
            .await
    }

    /// Applies a status change just committed (on the ledger's thread).
    fn finished(&self, host: &str, key: &str, rid: i64, object: ConfigObject) {
        let mut st = self.state();
        tracing::info!(
            host,
            key,
            status = object.status.as_str(),
            reason = object.reason.as_deref().unwrap_or(""),
            "config request finished"
        );
        st.stats.count(Status::Pending, -1);
        st.stats.count(object.status, 1);
        if let Some(latest) = st.latest.get_mut(host).and_then(|m| m.get_mut(key)) {
            if latest.rid == rid {
                latest.object = object;
            }
        }
        drop(st);
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// Right before a write of this request is sent: true if it is still the
    /// item's pending request and not withdrawn by a newer one, and then it is
    /// noted that its write may reach the device. False when it was
    /// superseded (or ended) meanwhile: it must not be written. Checked under
    /// the state lock that a supersede takes (on the ledger's thread, in
    /// [`ConfigRequests::submit`]), so a request is either superseded before
    /// this or written after it, never both. No SQLite here: the durable
    /// record comes before, from [`ConfigRequests::mark_written`].
    pub(super) fn clear_to_write(&self, host: &str, key: &str, rid: i64) -> bool {
        let mut st = self.state();
        let Some(l) = st.latest.get_mut(host).and_then(|m| m.get_mut(key)) else {
            return false;
        };
        if l.rid != rid || l.object.status != Status::Pending || l.withdrawn {
            return false;
        }
        l.written = true;
        true
    }

    /// A supersede whose commit failed: the older request goes on.
    fn unwithdraw(&self, host: &str, key: &str, rid: i64) {
        let mut st = self.state();
        if let Some(l) = st.latest.get_mut(host).and_then(|m| m.get_mut(key)) {
            if l.rid == rid {
                l.withdrawn = false;
            }
        }
    }

    /// Records durably, before the write is attempted, that a write of this
    /// request may reach the device.
    pub(super) async fn mark_written(&self, rid: i64) -> Result<(), StoreError> {
        self.inner
            .ledger
            .transaction_then(move |tx, _| stored::mark_written(tx, rid), |()| ())
            .await
    }

    /// A pending request could not reach the device: shown in its `reason`
    /// (not a status change, so nothing is recorded or sent).
    pub(super) fn note_unreachable(&self, host: &str, key: &str, rid: i64, error: &str) {
        let mut st = self.state();
        st.stats.unreachable += 1;
        if let Some(l) = st.latest.get_mut(host).and_then(|m| m.get_mut(key)) {
            if l.rid == rid && l.object.status == Status::Pending {
                l.object.reason = Some(format!("device unreachable, retrying: {error}"));
            }
        }
        drop(st);
        self.inner.changes.send_modify(|n| *n += 1);
    }
}
