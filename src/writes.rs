//! Config requests (writes): one entry point for every channel (MQTT, HTTP
//! API, command line), a durable PENDING -> SUCCESS/FAILED pipeline.
//!
//! [`Writes::submit`] validates a request against the current config, records
//! it in the ledger (PENDING, or FAILED at once when the target cannot be
//! written) and wakes the host's task. The host task carries it out before its
//! next reads through [`HostWrites::run_due`]: read and compare with
//! `expected`, write with the item's function code, read back.
//!
//! Invariants:
//! - a request is committed before `submit` returns, and every status change is
//!   committed together with its retained `config/<host>/<key>` uplink message;
//! - per item only the newest request can be PENDING: a newer request fails an
//!   older pending one ("superseded by a newer request"), so the retained
//!   message and [`Writes::config_of`] always describe the newest request;
//! - a request that cannot reach the device stays PENDING and is retried with
//!   backoff until it expires; only a Modbus answer (or expiry, or a config
//!   change) ends it;
//! - before a write is sent the request is marked `written` in the ledger: a
//!   retry (also after a crash) then accepts a device that already holds the
//!   target where `expected` is checked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Transaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::decode;
use crate::ledger::{Ledger, Uplink};
use crate::modbus::{exception_name, Backoff, Link, Operation, Priority, ReadData, RequestError};
use crate::model::{Config, HostSpec, ItemSpec, Table, ValueType};
use crate::store::StoreError;

/// At most this many strings in a request's `audit`...
pub const MAX_AUDIT_ENTRIES: usize = 16;
/// ...each at most this many bytes.
pub const MAX_AUDIT_LEN: usize = 256;
/// A request's `id`, as JSON, at most this many bytes.
pub const MAX_ID_LEN: usize = 256;

/// The reason of a request failed by a newer one for the same item.
pub const SUPERSEDED: &str = "superseded by a newer request";
/// The reason of a request whose item left the config (or is no longer configurable).
pub const REMOVED: &str = "item removed from config";

/// Where a request came from; the gateway adds it to `audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    Mqtt,
    /// The HTTP API, with the peer's address.
    Api(std::net::SocketAddr),
    /// The command line, with the user's name.
    Cli(String),
}

impl Channel {
    /// The audit string: `mqtt`, `api <peer address>`, `cli <user>`.
    pub fn audit(&self) -> String {
        match self {
            Channel::Mqtt => "mqtt".to_string(),
            Channel::Api(peer) => format!("api {peer}"),
            Channel::Cli(user) => format!("cli {user}"),
        }
    }
}

/// A validated config request.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigRequest {
    pub host: String,
    pub key: String,
    pub target: f64,
    pub expected: Option<f64>,
    pub audit: Vec<String>,
    /// The requester's id, echoed in `config.id`.
    pub id: Option<serde_json::Value>,
}

/// A request's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    #[serde(rename = "PENDING")]
    Pending,
    #[serde(rename = "SUCCESS")]
    Success,
    #[serde(rename = "FAILED")]
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Success => "SUCCESS",
            Status::Failed => "FAILED",
        }
    }

    fn parse(s: &str) -> Status {
        match s {
            "PENDING" => Status::Pending,
            "SUCCESS" => Status::Success,
            _ => Status::Failed,
        }
    }
}

/// The item's `config` object: the seed's fields plus `reason` and `id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfigObject {
    pub audit: Vec<String>,
    pub target: Option<f64>,
    /// When the request was received.
    pub lastclock: Option<i64>,
    pub status: Status,
    pub expected: Option<f64>,
    /// Why it failed (or what was found), in engineering units.
    pub reason: Option<String>,
    pub id: Option<serde_json::Value>,
}

impl ConfigObject {
    /// The seed's object for an item that never received a request.
    pub fn none() -> ConfigObject {
        ConfigObject {
            audit: Vec::new(),
            target: None,
            lastclock: None,
            status: Status::Success,
            expected: None,
            reason: None,
            id: None,
        }
    }
}

/// Why a request was refused (nothing was recorded).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Not JSON, wrong shape, missing fields: HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown host {0:?}")]
    UnknownHost(String),
    #[error("host {host:?} has no item {key:?}")]
    UnknownKey { host: String, key: String },
    #[error("{host}/{key} is a sensor, not configurable")]
    NotConfigurable { host: String, key: String },
    /// Well-formed but unusable (e.g. target not a number): HTTP 422.
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

impl SubmitError {
    /// The HTTP status that fits.
    pub fn http_status(&self) -> u16 {
        match self {
            SubmitError::BadRequest(_) => 400,
            SubmitError::UnknownHost(_) | SubmitError::UnknownKey { .. } => 404,
            SubmitError::NotConfigurable { .. } => 409,
            SubmitError::Invalid(_) => 422,
            SubmitError::Storage(_) => 503,
        }
    }
}

/// Counts for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Requests kept in the database, by their current status.
    pub pending: u64,
    pub success: u64,
    pub failed: u64,
    /// Requests refused since start-up (nothing recorded).
    pub refused: u64,
    /// Attempts since start-up that could not reach the device (retried).
    pub unreachable: u64,
}

impl WriteStats {
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
pub struct PendingWrite {
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
    written: bool,
}

struct State {
    config: Arc<Config>,
    /// host -> key -> newest request.
    latest: HashMap<String, HashMap<String, Latest>>,
    /// Wakes a host's task when a request for it arrives.
    wake: HashMap<String, tokio::sync::watch::Sender<u64>>,
    stats: WriteStats,
}

struct Inner {
    ledger: Ledger,
    /// Lock order: this state, then the ledger's connection.
    state: Mutex<State>,
    changes: tokio::sync::watch::Sender<u64>,
}

/// The write pipeline's handle; cheap to clone.
#[derive(Clone)]
pub struct Writes {
    inner: Arc<Inner>,
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn uplink_topic(host: &str, key: &str) -> String {
    format!("config/{host}/{key}")
}

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

impl Writes {
    /// The pipeline over the ledger, for the current config. Prefer
    /// [`Writes::open`]: if the ledger cannot be read, this logs the error and
    /// starts without the requests recorded earlier.
    pub fn new(ledger: Ledger, config: Arc<Config>) -> Writes {
        match Writes::open(ledger.clone(), config.clone()) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot read recorded config requests; starting without them");
                Writes::empty(ledger, config)
            }
        }
    }

    fn empty(ledger: Ledger, config: Arc<Config>) -> Writes {
        Writes {
            inner: Arc::new(Inner {
                ledger,
                state: Mutex::new(State {
                    config,
                    latest: HashMap::new(),
                    wake: HashMap::new(),
                    stats: WriteStats::default(),
                }),
                changes: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// Opens the pipeline: loads every item's newest request, drops finished
    /// requests older than the history retention (never an item's newest), and
    /// fails pending requests whose item left the config while we were down.
    pub fn open(ledger: Ledger, config: Arc<Config>) -> Result<Writes, StoreError> {
        let horizon = unix_ms() / 1000
            - i64::try_from(config.storage.history_retention.as_secs()).unwrap_or(i64::MAX / 2);
        ledger.transaction(|tx, _| {
            // Only the newest request of an item may be pending.
            tx.execute(
                "UPDATE config_requests SET status = 'FAILED', reason = ?1, finished = ?2
                 WHERE status = 'PENDING' AND rid NOT IN
                   (SELECT max(rid) FROM config_requests GROUP BY host, key)",
                params![SUPERSEDED, unix_ms() / 1000],
            )?;
            let pruned = tx.execute(
                "DELETE FROM config_requests WHERE status != 'PENDING' AND lastclock < ?1
                 AND rid NOT IN (SELECT max(rid) FROM config_requests GROUP BY host, key)",
                [horizon],
            )?;
            if pruned > 0 {
                tracing::info!(pruned, "old config requests removed");
            }
            Ok(())
        })?;
        let (latest, stats) = ledger.read(|conn| {
            let mut latest: HashMap<String, HashMap<String, Latest>> = HashMap::new();
            let mut st = conn.prepare(
                "SELECT rid, host, key, target, expected, audit, id, status, lastclock, reason,
                        expires_ms, written
                 FROM config_requests WHERE rid IN
                   (SELECT max(rid) FROM config_requests GROUP BY host, key)",
            )?;
            let rows = st.query_map([], |r| {
                let audit: String = r.get(5)?;
                let id: Option<String> = r.get(6)?;
                let status: String = r.get(7)?;
                Ok((
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    Latest {
                        rid: r.get(0)?,
                        object: ConfigObject {
                            audit: serde_json::from_str(&audit).unwrap_or_default(),
                            target: Some(r.get(3)?),
                            lastclock: Some(r.get(8)?),
                            status: Status::parse(&status),
                            expected: r.get(4)?,
                            reason: r.get(9)?,
                            id: id.map(|s| serde_json::from_str(&s).unwrap_or(Value::String(s))),
                        },
                        expires_ms: r.get(10)?,
                        written: r.get::<_, i64>(11)? != 0,
                    },
                ))
            })?;
            for row in rows {
                let (host, key, l) = row?;
                latest.entry(host).or_default().insert(key, l);
            }
            let mut stats = WriteStats::default();
            let mut st =
                conn.prepare("SELECT status, count(*) FROM config_requests GROUP BY status")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (status, n) = row?;
                stats.count(Status::parse(&status), n);
            }
            Ok((latest, stats))
        })?;
        let writes = Writes::empty(ledger, config);
        {
            let mut st = writes.state();
            st.latest = latest;
            st.stats = stats;
            let pending = st.stats.pending;
            if pending > 0 {
                tracing::info!(pending, "pending config requests resumed");
            }
            writes.fail_removed(&mut st)?;
        }
        Ok(writes)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a request from any channel: refused with an error (nothing
    /// recorded), or recorded durably (PENDING, or FAILED at once) and returned.
    pub fn submit(
        &self,
        request: ConfigRequest,
        channel: Channel,
    ) -> Result<ConfigObject, SubmitError> {
        let mut st = self.state();
        let refusal = check_request(&st.config, &request);
        if let Err(e) = refusal {
            st.stats.refused += 1;
            tracing::info!(host = %request.host, key = %request.key, channel = %channel.audit(), error = %e, "config request refused");
            return Err(e);
        }
        let Some(host) = st.config.host(&request.host).cloned() else {
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
        let superseded = st
            .latest
            .get(&host_id)
            .and_then(|m| m.get(&key))
            .filter(|l| l.object.status == Status::Pending)
            .map(|l| ConfigObject {
                status: Status::Failed,
                reason: Some(SUPERSEDED.to_string()),
                ..l.object.clone()
            });
        let audit_json = serde_json::to_string(&object.audit).unwrap_or_else(|_| "[]".into());
        let id_json = object.id.as_ref().map(Value::to_string);
        let rid = self.inner.ledger.transaction(|tx, up| {
            let n = tx.execute(
                "UPDATE config_requests SET status = 'FAILED', reason = ?3, finished = ?4
                 WHERE host = ?1 AND key = ?2 AND status = 'PENDING'",
                params![host_id, key, SUPERSEDED, lastclock],
            )?;
            if let (Some(old), true) = (&superseded, n > 0) {
                up.push(
                    uplink_topic(&host_id, &key),
                    uplink_payload(&host_id, &key, old),
                    true,
                );
            }
            tx.execute(
                "INSERT INTO config_requests(host, key, target, expected, audit, id, status,
                     lastclock, reason, expires_ms, written, finished)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11)",
                params![
                    host_id,
                    key,
                    object.target,
                    object.expected,
                    audit_json,
                    id_json,
                    object.status.as_str(),
                    lastclock,
                    object.reason,
                    expires_ms,
                    (status != Status::Pending).then_some(lastclock),
                ],
            )?;
            let rid = tx.last_insert_rowid();
            up.push(
                uplink_topic(&host_id, &key),
                uplink_payload(&host_id, &key, &object),
                true,
            );
            Ok(rid)
        })?;
        if superseded.is_some() {
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
        st.latest.entry(host_id.clone()).or_default().insert(
            key,
            Latest {
                rid,
                object: object.clone(),
                expires_ms,
                written: false,
            },
        );
        if status == Status::Pending {
            if let Some(w) = st.wake.get(&host_id) {
                w.send_modify(|n| *n += 1);
            }
        }
        drop(st);
        self.inner.changes.send_modify(|n| *n += 1);
        Ok(object)
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
    pub fn stats(&self) -> WriteStats {
        self.state().stats
    }

    /// Takes a new config (reload): pending requests for items that are gone
    /// or no longer configurable fail ("item removed from config"); the others
    /// go on.
    pub fn set_config(&self, config: Arc<Config>) -> Result<(), StoreError> {
        let mut st = self.state();
        st.config = config;
        self.fail_removed(&mut st)
    }

    fn fail_removed(&self, st: &mut State) -> Result<(), StoreError> {
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
        for (host, key, rid) in gone {
            self.finish_locked(st, &host, &key, rid, Status::Failed, Some(REMOVED.into()))?;
        }
        Ok(())
    }

    /// The handle a host's task uses to carry out its requests.
    pub fn host_queue(&self, host: &HostSpec) -> HostWrites {
        let wake = self
            .state()
            .wake
            .entry(host.host.clone())
            .or_insert_with(|| tokio::sync::watch::Sender::new(0))
            .subscribe();
        HostWrites {
            writes: self.clone(),
            host: host.host.clone(),
            wake,
            backoff: Backoff::for_host(host),
            retry_at: None,
            last_error: None,
        }
    }

    /// The host's pending requests, oldest first.
    pub fn pending(&self, host: &str) -> Vec<PendingWrite> {
        let st = self.state();
        let mut out: Vec<PendingWrite> = st
            .latest
            .get(host)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(_, l)| l.object.status == Status::Pending)
            .map(|(key, l)| PendingWrite {
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
    fn finish(
        &self,
        host: &str,
        key: &str,
        rid: i64,
        status: Status,
        reason: Option<String>,
    ) -> Result<bool, StoreError> {
        let mut st = self.state();
        self.finish_locked(&mut st, host, key, rid, status, reason)
    }

    fn finish_locked(
        &self,
        st: &mut State,
        host: &str,
        key: &str,
        rid: i64,
        status: Status,
        reason: Option<String>,
    ) -> Result<bool, StoreError> {
        let Some(latest) = st.latest.get_mut(host).and_then(|m| m.get_mut(key)) else {
            return Ok(false);
        };
        if latest.rid != rid || latest.object.status != Status::Pending {
            return Ok(false);
        }
        let object = ConfigObject {
            status,
            reason,
            ..latest.object.clone()
        };
        let now = unix_ms() / 1000;
        let changed = self
            .inner
            .ledger
            .transaction(|tx: &Transaction<'_>, up: &mut Uplink| {
                let n = tx.execute(
                    "UPDATE config_requests SET status = ?2, reason = ?3, finished = ?4
                     WHERE rid = ?1 AND status = 'PENDING'",
                    params![rid, status.as_str(), object.reason, now],
                )?;
                if n > 0 {
                    up.push(
                        uplink_topic(host, key),
                        uplink_payload(host, key, &object),
                        true,
                    );
                }
                Ok(n > 0)
            })?;
        if changed {
            tracing::info!(
                host,
                key,
                status = status.as_str(),
                reason = object.reason.as_deref().unwrap_or(""),
                "config request finished"
            );
            latest.object = object;
            st.stats.count(Status::Pending, -1);
            st.stats.count(status, 1);
            self.inner.changes.send_modify(|n| *n += 1);
        }
        Ok(changed)
    }

    /// Records that a write of this request may reach the device.
    fn mark_written(&self, host: &str, key: &str, rid: i64) -> Result<(), StoreError> {
        let mut st = self.state();
        self.inner.ledger.transaction(|tx, _| {
            tx.execute(
                "UPDATE config_requests SET written = 1 WHERE rid = ?1",
                [rid],
            )?;
            Ok(())
        })?;
        if let Some(l) = st.latest.get_mut(host).and_then(|m| m.get_mut(key)) {
            if l.rid == rid {
                l.written = true;
            }
        }
        Ok(())
    }

    /// A pending request could not reach the device: shown in its `reason`
    /// (not a status change, so nothing is recorded or sent).
    fn note_unreachable(&self, host: &str, key: &str, rid: i64, error: &str) {
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

/// Refusals: unknown host or key, a sensor, a target or expected value that
/// is not a finite number.
fn check_request(config: &Config, request: &ConfigRequest) -> Result<(), SubmitError> {
    let Some(host) = config.host(&request.host) else {
        return Err(SubmitError::UnknownHost(request.host.clone()));
    };
    let Some(item) = host.item(&request.key) else {
        return Err(SubmitError::UnknownKey {
            host: request.host.clone(),
            key: request.key.clone(),
        });
    };
    if !item.configurable {
        return Err(SubmitError::NotConfigurable {
            host: request.host.clone(),
            key: request.key.clone(),
        });
    }
    if !request.target.is_finite() {
        return Err(SubmitError::Invalid(format!(
            "target must be a finite number, not {}",
            request.target
        )));
    }
    if let Some(e) = request.expected.filter(|e| !e.is_finite()) {
        return Err(SubmitError::Invalid(format!(
            "expected must be a finite number or null, not {e}"
        )));
    }
    Ok(())
}

/// The registers that make the item hold `target`, or why it cannot: outside
/// the item's bounds, or not representable in its register type.
fn check_target(item: &ItemSpec, target: f64) -> Result<Vec<u16>, String> {
    if !item.table.is_writable() {
        return Err(format!("{} items cannot be written", item.table));
    }
    if let Some(lo) = item.lower_bound().filter(|lo| target < *lo) {
        return Err(format!(
            "target {} is below the lower bound {}",
            format_value(item, target),
            format_value(item, lo)
        ));
    }
    if let Some(hi) = item.upper_bound().filter(|hi| target > *hi) {
        return Err(format!(
            "target {} is above the upper bound {}",
            format_value(item, target),
            format_value(item, hi)
        ));
    }
    decode::encode_item(item, target).map_err(|e| e.to_string())
}

/// Decimals of a number on the grid of `x` (0.1 -> 1, 0.25 -> 2, 5 -> 0).
fn grid_decimals(x: f64) -> usize {
    (0..=6)
        .find(|&d| {
            let s = x * 10f64.powi(d as i32);
            (s - s.round()).abs() < 1e-6
        })
        .unwrap_or(6)
}

/// `v` with `digits` significant digits, shortest form.
fn significant(v: f64, digits: usize) -> String {
    let rounded: f64 = format!("{v:.prec$e}", prec = digits.saturating_sub(1))
        .parse()
        .unwrap_or(v);
    rounded.to_string()
}

/// A value in engineering units for a reason: an integer register's value
/// with as many decimals as its scale has (`22.0` for scale 0.1), a float's
/// with the precision it has.
pub fn format_value(item: &ItemSpec, v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    match item.value_type {
        ValueType::F32 => significant(v, 7),
        ValueType::F64 => significant(v, 12),
        _ => {
            let d = grid_decimals(item.scale).max(grid_decimals(item.offset));
            let s = format!("{v:.d$}");
            match s.parse::<f64>() {
                Ok(p) if (p - v).abs() <= 1e-9 * v.abs().max(1.0) => s,
                _ => significant(v, 12),
            }
        }
    }
}

/// Whether the device's `found` counts as `want`: within half a register step
/// for integer and bool items, within the type's precision for floats.
pub fn same_value(item: &ItemSpec, found: f64, want: f64) -> bool {
    let magnitude = (want - item.offset).abs().max((found - item.offset).abs());
    let tol = match item.value_type {
        ValueType::F32 => (magnitude * 1e-6).max(f64::EPSILON * item.scale.abs()),
        ValueType::F64 => (magnitude * 1e-12).max(f64::EPSILON * item.scale.abs()),
        _ => item.scale.abs() / 2.0,
    };
    (found - want).abs() <= tol
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
enum Attempt {
    /// Written and read back equal: the value read back.
    Success(f64),
    /// The device answered, and the request cannot succeed.
    Failed(String),
    /// The device could not be reached; retry later.
    Unreachable(String),
}

/// Reads an item for a write (ahead of queued poll reads): its value and, for
/// a register, its first word.
async fn read_item(link: &mut Link, item: &ItemSpec) -> Result<(f64, Option<u16>), RequestError> {
    let op = Operation::Read {
        table: item.table,
        start: item.address,
        count: item.width(),
    };
    match link.request(&op, Priority::Write).await? {
        ReadData::Words(words) => {
            let v = decode::decode_item(item, &words)
                .map_err(|e| RequestError::Transport(e.to_string()))?;
            Ok((v, words.first().copied()))
        }
        ReadData::Bits(bits) => match bits.first() {
            Some(b) => Ok((decode::decode_bit_item(item, *b), None)),
            None => Err(RequestError::Transport("empty answer".into())),
        },
    }
}

/// One attempt at a request: check `expected`, write, read back.
async fn carry_out(
    link: &mut Link,
    item: &ItemSpec,
    host: &str,
    p: &PendingWrite,
    writes: &Writes,
) -> Attempt {
    let words = match check_target(item, p.target) {
        Ok(w) => w,
        Err(reason) => return Attempt::Failed(reason),
    };
    let want = match decode::written_value(item, p.target) {
        Ok(v) => v,
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    let on = words.first().copied().unwrap_or(0) != 0;
    let bit = if item.table.is_bits() { None } else { item.bit };
    // On a shared serial line, no poll read comes between our frames.
    let _turn = link.write_turn();
    let mut word = None;
    if p.expected.is_some() || bit.is_some() {
        match read_item(link, item).await {
            Err(RequestError::Exception(code)) => {
                return Attempt::Failed(format!(
                    "the device refused reading the item before the write: Modbus exception {}",
                    exception_name(code)
                ))
            }
            Err(e) => return Attempt::Unreachable(e.to_string()),
            Ok((found, w)) => {
                if let Some(expected) = p.expected {
                    // After a write that may have reached the device (an
                    // earlier attempt, or before a restart), the target
                    // counts as expected too.
                    let ours = p.written && same_value(item, found, want);
                    if !same_value(item, found, expected) && !ours {
                        return Attempt::Failed(format!(
                            "expected {}, device has {}",
                            format_value(item, expected),
                            format_value(item, found)
                        ));
                    }
                }
                word = w;
            }
        }
    }
    let op = match (item.table, bit) {
        (Table::Coil, _) => Operation::WriteCoil {
            address: item.address,
            on,
        },
        (_, Some(b)) => match word {
            Some(w) => Operation::WriteRegisters {
                start: item.address,
                words: vec![decode::encode_bit_into(w, b, on)],
            },
            None => return Attempt::Unreachable("empty answer".into()),
        },
        _ => Operation::WriteRegisters {
            start: item.address,
            words,
        },
    };
    if !p.written {
        if let Err(e) = writes.mark_written(host, &p.key, p.rid) {
            return Attempt::Unreachable(format!("cannot record the attempt: {e}"));
        }
    }
    match link.request(&op, Priority::Write).await {
        Err(RequestError::Exception(code)) => {
            return Attempt::Failed(format!(
                "the device refused the write: Modbus exception {}",
                exception_name(code)
            ))
        }
        Err(e) => return Attempt::Unreachable(e.to_string()),
        Ok(_) => {}
    }
    match read_item(link, item).await {
        Err(RequestError::Exception(code)) => Attempt::Failed(format!(
            "the device acknowledged the write but refused reading it back: Modbus exception {}",
            exception_name(code)
        )),
        Err(e) => Attempt::Unreachable(e.to_string()),
        Ok((found, _)) if same_value(item, found, want) => Attempt::Success(found),
        Ok((found, _)) => Attempt::Failed(format!(
            "wrote {}, device reads back {}",
            format_value(item, want),
            format_value(item, found)
        )),
    }
}

/// A value a host's task wrote and read back: a new sample for the item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Written {
    /// Index into the host's items.
    pub index: usize,
    pub value: f64,
    /// Unix seconds of the read-back.
    pub clock: i64,
}

/// A host task's side of the pipeline: wakes it when a request arrives, and
/// carries out its pending requests with backoff while the device is unreachable.
pub struct HostWrites {
    writes: Writes,
    host: String,
    wake: tokio::sync::watch::Receiver<u64>,
    backoff: Backoff,
    /// While the device is unreachable: the next attempt.
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

impl HostWrites {
    /// Completes when a new request for this host has arrived.
    pub async fn arrived(&mut self) {
        if self.wake.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// When [`HostWrites::run_due`] has something to do: now for a new request,
    /// the next retry or the earliest expiry; None without pending requests.
    pub fn next_wake(&self) -> Option<Instant> {
        let pending = self.writes.pending(&self.host);
        let earliest = pending.iter().map(|p| p.expires_ms).min()?;
        // Capped so that an absurd expiry never overflows the clock.
        let until = Duration::from_millis(
            u64::try_from(earliest.saturating_sub(unix_ms()))
                .unwrap_or(0)
                .min(86_400_000),
        );
        let expiry = Instant::now() + until;
        Some(match self.retry_at {
            Some(at) => at.min(expiry),
            None => Instant::now(),
        })
    }

    /// The device answered a read: a write waiting for its backoff is tried now.
    pub fn device_answered(&mut self) {
        if self.retry_at.is_some() {
            self.retry_at = Some(Instant::now());
        }
    }

    /// Carries out the pending requests that are due: expired ones fail, the
    /// others are attempted (unless the device is in backoff). Each value
    /// written and read back is handed to `written` before its SUCCESS is
    /// recorded, so whoever sees the SUCCESS sees the new value too.
    pub async fn run_due(
        &mut self,
        host: &HostSpec,
        link: &mut Link,
        mut written: impl FnMut(Written),
    ) {
        let pending = self.writes.pending(&self.host);
        if pending.is_empty() {
            self.retry_at = None;
            return;
        }
        for p in pending {
            if unix_ms() >= p.expires_ms {
                let reason = match &self.last_error {
                    Some(e) => format!(
                        "expired: the device could not be reached within {} (last error: {e})",
                        crate::units::format_duration(host.write_expiry)
                    ),
                    None => "expired before it could be carried out".to_string(),
                };
                self.end(&p, Status::Failed, Some(reason));
                continue;
            }
            if self.retry_at.is_some_and(|at| at > Instant::now()) {
                continue;
            }
            let Some(index) = host
                .items
                .iter()
                .position(|i| i.key == p.key && i.configurable)
            else {
                self.end(&p, Status::Failed, Some(REMOVED.into()));
                continue;
            };
            let item = &host.items[index];
            let attempt = carry_out(link, item, &self.host, &p, &self.writes).await;
            match attempt {
                Attempt::Success(value) => {
                    self.answered();
                    written(Written {
                        index,
                        value,
                        clock: unix_ms() / 1000,
                    });
                    self.end(&p, Status::Success, None);
                }
                Attempt::Failed(reason) => {
                    self.answered();
                    self.end(&p, Status::Failed, Some(reason));
                }
                Attempt::Unreachable(error) => {
                    let wait = self.backoff.fail();
                    self.retry_at = Some(Instant::now() + wait);
                    tracing::warn!(
                        host = %self.host,
                        key = %p.key,
                        error = %error,
                        retry_in = ?wait,
                        "config request: device unreachable; retrying"
                    );
                    self.writes
                        .note_unreachable(&self.host, &p.key, p.rid, &error);
                    self.last_error = Some(error);
                }
            }
        }
    }

    fn answered(&mut self) {
        self.backoff.reset();
        self.retry_at = None;
        self.last_error = None;
    }

    fn end(&mut self, p: &PendingWrite, status: Status, reason: Option<String>) {
        if let Err(e) = self
            .writes
            .finish(&self.host, &p.key, p.rid, status, reason)
        {
            // Stays pending; retried after the backoff so that a broken
            // database does not make the task spin.
            tracing::error!(host = %self.host, key = %p.key, error = %e, "cannot record a config request's status");
            self.retry_at = Some(Instant::now() + self.backoff.fail());
        }
    }
}

const REQUEST_FIELDS: [&str; 6] = ["host", "key", "target", "expected", "audit", "id"];

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_object(json: &[u8]) -> Result<serde_json::Map<String, Value>, SubmitError> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| SubmitError::BadRequest(format!("the request is not valid JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(SubmitError::BadRequest(format!(
            "the request must be a JSON object, not {}",
            json_kind(&v)
        )));
    };
    if let Some(k) = map.keys().find(|k| !REQUEST_FIELDS.contains(&k.as_str())) {
        return Err(SubmitError::BadRequest(format!(
            "unknown field {k:?}; a request has the fields host, key, target, expected, audit and id"
        )));
    }
    Ok(map)
}

/// A JSON number. Strings are refused, also numeric ones: values in JSON are numbers.
fn number(field: &str, v: &Value) -> Result<f64, SubmitError> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| SubmitError::Invalid(format!("{field} {n} is not a usable number"))),
        Value::String(s) => Err(SubmitError::Invalid(format!(
            "{field} must be a JSON number, not the string {s:?}"
        ))),
        other => Err(SubmitError::Invalid(format!(
            "{field} must be a number, not {}",
            json_kind(other)
        ))),
    }
}

fn string_field(map: &serde_json::Map<String, Value>, field: &str) -> Result<String, SubmitError> {
    match map.get(field) {
        None => Err(SubmitError::BadRequest(format!("missing field {field:?}"))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(SubmitError::Invalid(format!("{field} must not be empty"))),
        Some(other) => Err(SubmitError::Invalid(format!(
            "{field} must be a string, not {}",
            json_kind(other)
        ))),
    }
}

/// The fields besides host and key.
fn parse_fields(
    host: String,
    key: String,
    map: &serde_json::Map<String, Value>,
) -> Result<ConfigRequest, SubmitError> {
    let target = match map.get("target") {
        None => return Err(SubmitError::BadRequest("missing field \"target\"".into())),
        Some(v) => number("target", v)?,
    };
    let expected = match map.get("expected") {
        None | Some(Value::Null) => None,
        Some(v) => Some(number("expected", v)?),
    };
    let audit = match map.get("audit") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => {
            if list.len() > MAX_AUDIT_ENTRIES {
                return Err(SubmitError::Invalid(format!(
                    "audit has {} entries; at most {MAX_AUDIT_ENTRIES} are accepted",
                    list.len()
                )));
            }
            let mut audit = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                match v {
                    Value::String(s) if s.len() <= MAX_AUDIT_LEN => audit.push(s.clone()),
                    Value::String(s) => {
                        return Err(SubmitError::Invalid(format!(
                            "audit[{i}] is {} bytes long; at most {MAX_AUDIT_LEN} are accepted",
                            s.len()
                        )))
                    }
                    other => {
                        return Err(SubmitError::Invalid(format!(
                            "audit must be an array of strings, but audit[{i}] is {}",
                            json_kind(other)
                        )))
                    }
                }
            }
            audit
        }
        Some(other) => {
            return Err(SubmitError::Invalid(format!(
                "audit must be an array of strings, not {}",
                json_kind(other)
            )))
        }
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let len = v.to_string().len();
            if len > MAX_ID_LEN {
                return Err(SubmitError::Invalid(format!(
                    "id is {len} bytes of JSON; at most {MAX_ID_LEN} are accepted"
                )));
            }
            Some(v.clone())
        }
    };
    Ok(ConfigRequest {
        host,
        key,
        target,
        expected,
        audit,
        id,
    })
}

/// Parses a full request (`{"host","key","target","expected"?,"audit"?,"id"?}`),
/// as it comes over MQTT.
///
/// `target` and `expected` must be JSON numbers (a numeric string such as
/// `"22.5"` is refused like `"abc"`); `expected`, `audit` and `id` may be
/// null or absent; unknown fields are refused, so that a misspelt `expected`
/// never turns a guarded write into an unguarded one.
pub fn parse_request(json: &[u8]) -> Result<ConfigRequest, SubmitError> {
    let map = parse_object(json)?;
    let host = string_field(&map, "host")?;
    let key = string_field(&map, "key")?;
    parse_fields(host, key, &map)
}

/// Parses an HTTP body (`{"target","expected"?,"audit"?,"id"?}`) for an item.
/// The body may repeat `host` and `key`, but only with the path's values.
pub fn parse_body(host: &str, key: &str, json: &[u8]) -> Result<ConfigRequest, SubmitError> {
    let map = parse_object(json)?;
    for (field, path) in [("host", host), ("key", key)] {
        if map.contains_key(field) {
            let body = string_field(&map, field)?;
            if body != path {
                return Err(SubmitError::BadRequest(format!(
                    "the body names {field} {body:?} but the path names {path:?}"
                )));
            }
        }
    }
    parse_fields(host.to_string(), key.to_string(), &map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ByteOrder;

    #[test]
    fn parse_accepts_full_and_minimal_requests() {
        let r = parse_request(
            br#"{"host":"pump","key":"k","target":22.5,"expected":null,"audit":["alice"],"id":"r-1"}"#,
        )
        .unwrap();
        assert_eq!(r.host, "pump");
        assert_eq!(r.target, 22.5);
        assert_eq!(r.expected, None);
        assert_eq!(r.audit, vec!["alice".to_string()]);
        assert_eq!(r.id, Some(Value::String("r-1".into())));
        let r = parse_body("pump", "k", br#"{"target":3,"expected":2}"#).unwrap();
        assert_eq!((r.target, r.expected), (3.0, Some(2.0)));
        assert!(r.audit.is_empty() && r.id.is_none());
        let r = parse_body("pump", "k", br#"{"host":"pump","target":1,"id":7}"#).unwrap();
        assert_eq!(r.id, Some(serde_json::json!(7)));
    }

    #[test]
    fn parse_refuses_bad_input_with_clear_errors() {
        let cases: [(&[u8], u16, &str); 14] = [
            (b"not json", 400, "not valid JSON"),
            (b"[1,2]", 400, "must be a JSON object, not an array"),
            (br#"{"key":"k","target":1}"#, 400, "missing field \"host\""),
            (br#"{"host":"h","target":1}"#, 400, "missing field \"key\""),
            (
                br#"{"host":"h","key":"k"}"#,
                400,
                "missing field \"target\"",
            ),
            (
                br#"{"host":"h","key":"k","target":"abc"}"#,
                422,
                "not the string \"abc\"",
            ),
            (
                br#"{"host":"h","key":"k","target":"22.5"}"#,
                422,
                "must be a JSON number",
            ),
            (br#"{"host":"h","key":"k","target":null}"#, 422, "not null"),
            (
                br#"{"host":"h","key":"k","target":1,"expected":"x"}"#,
                422,
                "expected must be",
            ),
            (
                br#"{"host":"h","key":"k","target":1,"audit":"me"}"#,
                422,
                "audit must be an array of strings",
            ),
            (
                br#"{"host":"h","key":"k","target":1,"audit":["a",3]}"#,
                422,
                "audit[1] is a number",
            ),
            (
                br#"{"host":"h","key":"k","target":1,"expect":2}"#,
                400,
                "unknown field \"expect\"",
            ),
            (
                br#"{"host":5,"key":"k","target":1}"#,
                422,
                "host must be a string",
            ),
            (
                br#"{"host":"h","key":"k","target":1e999}"#,
                400,
                "not valid JSON",
            ),
        ];
        for (json, status, text) in cases {
            let e = parse_request(json).unwrap_err();
            assert_eq!(
                e.http_status(),
                status,
                "{}: {e}",
                String::from_utf8_lossy(json)
            );
            assert!(
                e.to_string().contains(text),
                "{}: {e}",
                String::from_utf8_lossy(json)
            );
        }
        let e = parse_body("pump", "k", br#"{"host":"other","target":1}"#).unwrap_err();
        assert!(e.to_string().contains("the path names \"pump\""), "{e}");
        let long = format!(r#"{{"target":1,"audit":["{}"]}}"#, "x".repeat(300));
        assert!(parse_body("h", "k", long.as_bytes()).is_err());
    }

    fn item(vt: ValueType, scale: f64) -> ItemSpec {
        let mut i = ItemSpec::new("k", Table::Holding, 0, vt);
        i.scale = scale;
        i.configurable = true;
        i
    }

    #[test]
    fn values_are_named_in_engineering_units() {
        let t = item(ValueType::I16, 0.1);
        assert_eq!(format_value(&t, 22.0), "22.0");
        assert_eq!(format_value(&t, 21.5), "21.5");
        assert_eq!(format_value(&t, 0.05), "0.05");
        let u = item(ValueType::U16, 1.0);
        assert_eq!(format_value(&u, 70000.0), "70000");
        let f = item(ValueType::F32, 1.0);
        assert_eq!(format_value(&f, f64::from(0.1f32)), "0.1");
        assert_eq!(format_value(&f, 21.5), "21.5");
    }

    #[test]
    fn targets_outside_bounds_or_unrepresentable_fail() {
        let mut t = item(ValueType::I16, 0.1);
        t.extra_mut().lower_bound = Some(-50.0);
        t.extra_mut().upper_bound = Some(80.0);
        assert_eq!(
            check_target(&t, 90.0).unwrap_err(),
            "target 90.0 is above the upper bound 80.0"
        );
        assert!(check_target(&t, -60.0)
            .unwrap_err()
            .contains("below the lower bound -50.0"));
        assert!(check_target(&t, 0.05)
            .unwrap_err()
            .contains("not a multiple of 0.1"));
        assert_eq!(check_target(&t, 22.5).unwrap(), vec![225]);
        let u = item(ValueType::U16, 1.0);
        assert!(check_target(&u, 70000.0)
            .unwrap_err()
            .contains("outside the u16 range"));
        let b = ItemSpec {
            configurable: true,
            ..ItemSpec::new("b", Table::Coil, 0, ValueType::Bool)
        };
        assert!(check_target(&b, 2.0).is_err());
        assert_eq!(check_target(&b, 1.0).unwrap(), vec![1]);
        let s = ItemSpec::new("s", Table::Input, 0, ValueType::U16);
        assert!(check_target(&s, 1.0).is_err());
    }

    #[test]
    fn comparisons_allow_half_a_step_or_float_precision() {
        let t = item(ValueType::I16, 0.1);
        assert!(same_value(&t, 22.0, 22.04));
        assert!(!same_value(&t, 21.5, 22.0));
        let mut f = item(ValueType::F32, 1.0);
        f.byte_order = ByteOrder::Cdab;
        assert!(same_value(&f, f64::from(21.7f32), 21.7));
        assert!(!same_value(&f, 21.7001, 21.7));
    }
}
