//! The alarm task: feeds the hosts' polled values to the [`Engine`],
//! evaluates, and stores every change of a trigger's value as one event.
//!
//! - Samples: each host's poll task bumps its cycle counter
//!   ([`crate::poll::HostLiveCell::subscribe`]) after every cycle; the task then
//!   reads the live state of the items its triggers name. A changed clock or
//!   value with state `ok` is a new sample, state `error` is
//!   [`Engine::on_error`]. Cycles that end together are handled in one pass
//!   followed by one [`Engine::evaluate_changed`].
//! - Time: once per second (half a second after the second boundary, so the
//!   polls aligned on that boundary are in) [`Engine::evaluate`] re-evaluates
//!   windows and `nodata`, if any trigger has them. Clocks are whole seconds,
//!   so nothing time-dependent changes in between.
//! - Storage: changes wait in memory until they are stored (one transaction
//!   per batch, on the ledger's thread); a failure is logged and retried every
//!   second. A change lost with the process (kill -9 before the commit) is
//!   seen again at the next start, because the engine resumes from the stored
//!   states.
//! - Reload: the engine is rebuilt for the new triggers, keeping the sample
//!   windows of items both configs name and the values of triggers both have.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::service::{Alarms, PendingChange};
use super::{Engine, ItemIndex, TriggerChange};
use crate::clock::unix_now;
use crate::poll::{HostLiveHandle, ItemState};
use crate::snapshot::{Snapshot, SnapshotHandle};

/// What was last fed to the engine for one item.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Fed {
    /// (clock, value bits) of the last sample.
    sample: Option<(i64, u64)>,
    /// An error was reported after it.
    error: bool,
}

struct WatchedItem {
    key: String,
    /// Position in the host's items.
    pos: usize,
    index: ItemIndex,
    fed: Fed,
}

struct WatchedHost {
    host: String,
    live: HostLiveHandle,
    /// Set by the host's forwarder when a poll cycle ended.
    cycle: Arc<AtomicBool>,
    items: Vec<WatchedItem>,
}

struct State {
    engine: Engine,
    hosts: Vec<WatchedHost>,
    /// One small task per watched host, turning its cycle counter into a
    /// flag and a wake-up of this task; aborted when dropped.
    _forwarders: JoinSet<()>,
}

/// Runs the alarm evaluation of `alarms` over the hosts of `snapshot` until
/// `shutdown` is cancelled; every change of `reloads` rebuilds the engine for
/// the then current snapshot.
pub async fn run(
    alarms: Alarms,
    snapshot: SnapshotHandle,
    mut reloads: tokio::sync::watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let wake = Arc::new(Notify::new());
    let mut state = build(&alarms, &snapshot.current(), None, &wake);
    let mut pending: Vec<PendingChange> = Vec::new();
    let mut retry_at: Option<Instant> = None;
    tracing::info!(
        triggers = state.engine.triggers().len(),
        items = state.engine.items().len(),
        "alarm evaluation running"
    );
    loop {
        let timed = state.engine.has_timed() || !pending.is_empty();
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            r = reloads.changed() => {
                if r.is_err() {
                    shutdown.cancelled().await;
                    break;
                }
                let started = std::time::Instant::now();
                state = build(&alarms, &snapshot.current(), Some(state), &wake);
                alarms.add_busy(started.elapsed());
                tracing::info!(
                    triggers = state.engine.triggers().len(),
                    items = state.engine.items().len(),
                    "alarm engine rebuilt for the new config"
                );
            }
            () = wake.notified() => {
                let started = std::time::Instant::now();
                let now = unix_now();
                feed(&mut state, now);
                let changes = state.engine.evaluate_changed(now);
                queue(&alarms, &mut pending, changes);
                alarms.add_busy(started.elapsed());
            }
            () = tokio::time::sleep_until(next_tick()), if timed => {
                let started = std::time::Instant::now();
                let changes = state.engine.evaluate(unix_now());
                queue(&alarms, &mut pending, changes);
                alarms.add_busy(started.elapsed());
            }
        }
        let due = match retry_at {
            Some(at) => at <= Instant::now(),
            None => true,
        };
        if !pending.is_empty() && due {
            retry_at = if flush(&alarms, &mut pending).await {
                None
            } else {
                Some(Instant::now() + Duration::from_secs(1))
            };
            alarms.set_pending(pending.len());
        }
    }
    if !pending.is_empty() && !flush(&alarms, &mut pending).await {
        tracing::error!(
            changes = pending.len(),
            "alarm changes could not be stored before stopping; they are evaluated again at the next start"
        );
    }
    tracing::info!("alarm evaluation stopped");
}

/// Builds the engine for the current triggers, resuming from their stored
/// states (or from `old`'s engine), and starts watching the hosts.
fn build(alarms: &Alarms, running: &Snapshot, old: Option<State>, wake: &Arc<Notify>) -> State {
    let setup = alarms.engine_setup();
    let mut engine = Engine::new(setup.iter().map(|(c, _, _)| c.clone()).collect());
    for (c, value, lastchange) in &setup {
        engine.restore(c.triggerid, *value, *lastchange);
    }
    let mut fed: HashMap<(String, String), Fed> = HashMap::new();
    if let Some(old) = old {
        engine.carry_over(&old.engine);
        for h in old.hosts {
            for i in h.items {
                fed.insert((h.host.clone(), i.key), i.fed);
            }
        }
    }
    let mut forwarders = JoinSet::new();
    let mut hosts = Vec::new();
    for (id, live) in &running.hosts {
        let Some(spec) = running.config.host(id) else {
            continue;
        };
        let items: Vec<WatchedItem> = spec
            .items
            .iter()
            .enumerate()
            .filter_map(|(pos, item)| {
                let index = engine.item_index(id, &item.key)?;
                Some(WatchedItem {
                    fed: fed
                        .remove(&(id.clone(), item.key.clone()))
                        .unwrap_or_default(),
                    key: item.key.clone(),
                    pos,
                    index,
                })
            })
            .collect();
        if items.is_empty() {
            continue;
        }
        // Set: read once now (a new item may already have a value).
        let cycle = Arc::new(AtomicBool::new(true));
        let mut cycles = live.subscribe();
        let (flag, wake) = (cycle.clone(), wake.clone());
        forwarders.spawn(async move {
            while cycles.changed().await.is_ok() {
                flag.store(true, Ordering::Release);
                wake.notify_one();
            }
        });
        hosts.push(WatchedHost {
            host: id.clone(),
            live: live.clone(),
            cycle,
            items,
        });
    }
    wake.notify_one();
    State {
        engine,
        hosts,
        _forwarders: forwarders,
    }
}

/// Feeds the new values of every host whose poll cycle ended.
fn feed(state: &mut State, now: i64) {
    let State { engine, hosts, .. } = state;
    for h in hosts.iter_mut() {
        if !h.cycle.swap(false, Ordering::AcqRel) {
            continue;
        }
        let live = h.live.lock();
        for w in &mut h.items {
            let Some(l) = live.items.get(w.pos) else {
                continue;
            };
            match l.state {
                ItemState::Ok => {
                    let (Some(clock), Some(value)) = (l.clock, l.value) else {
                        continue;
                    };
                    let sample = Some((clock, value.to_bits()));
                    if w.fed.error || w.fed.sample != sample {
                        engine.on_sample(w.index, clock, value);
                        w.fed = Fed {
                            sample,
                            error: false,
                        };
                    }
                }
                ItemState::Error => {
                    if !w.fed.error {
                        engine.on_error(w.index, now);
                        w.fed.error = true;
                    }
                }
                // Restored from history, not read since start-up: not a sample.
                ItemState::Unknown => {}
            }
        }
    }
}

/// Turns the engine's changes into pending events.
fn queue(alarms: &Alarms, pending: &mut Vec<PendingChange>, changes: Vec<TriggerChange>) {
    for c in changes {
        match alarms.pending_change(c.triggerid, c.new, c.clock) {
            Some(p) => {
                tracing::info!(
                    triggerid = c.triggerid,
                    from = %c.old,
                    to = %c.new,
                    host = %p.host,
                    key = %p.key,
                    "trigger changed"
                );
                pending.push(p);
            }
            None => {
                tracing::debug!(
                    triggerid = c.triggerid,
                    "change of a trigger removed by a reload; not recorded"
                );
            }
        }
    }
    alarms.set_pending(pending.len());
}

/// Stores the pending changes in one transaction; false (and they stay
/// pending) if that failed.
async fn flush(alarms: &Alarms, pending: &mut Vec<PendingChange>) -> bool {
    let batch = pending.clone();
    let payloads = alarms.trigger_payloads(&batch);
    let error = match alarms.record(&batch, &payloads).await {
        Ok(events) => {
            for e in &events {
                tracing::info!(
                    eventid = e.eventid,
                    triggerid = e.triggerid,
                    value = %e.value,
                    clock = e.clock,
                    "event recorded"
                );
            }
            pending.clear();
            return true;
        }
        Err(e) => e.to_string(),
    };
    alarms.storage_failed();
    tracing::error!(
        error = %error,
        pending = pending.len(),
        "storing alarm events failed; kept in memory and retried in a second"
    );
    false
}

/// Half a second after the next whole wall-clock second.
fn next_tick() -> Instant {
    crate::clock::next_aligned_phase(Duration::from_secs(1), Duration::from_millis(500))
}
