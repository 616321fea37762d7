//! The handles a running gateway shares with its API, uplink and
//! service-manager notifier, and the config reload that replaces its
//! [`Snapshot`]. It sits below every task so that each can take a `Gateway`
//! without importing the supervisor in `daemon` that spawns them.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::alarm::Alarms;
use crate::config_requests::ConfigRequests;
use crate::ledger::Ledger;
use crate::model::{Config, HostSpec};
use crate::poll::{HostLiveCell, HostLiveHandle, ItemState};
use crate::snapshot::{Snapshot, SnapshotHandle};
use crate::store::{Store, StoreError};
use crate::uplink_status::MqttStatus;

/// Everything the running gateway shares with its API and uplink; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub store: Store,
    pub ledger: Ledger,
    pub writes: ConfigRequests,
    pub alarms: Alarms,
    pub mqtt: Arc<MqttStatus>,
    /// The Sparkplug B uplink's counters.
    pub sparkplug: Arc<MqttStatus>,
    /// The Modbus TCP proxies' counters.
    pub proxies: Arc<crate::proxy::ProxyStatus>,
    running: SnapshotHandle,
    reloads: tokio::sync::watch::Sender<u64>,
}

impl Gateway {
    /// The current config and live host states (replaced as a whole on reload).
    pub fn running(&self) -> Arc<Snapshot> {
        self.running.current()
    }

    /// The shared handle to the current config and live host states, for
    /// tasks that need nothing else of the gateway.
    pub fn snapshot(&self) -> SnapshotHandle {
        self.running.clone()
    }

    /// The current config.
    pub fn config(&self) -> Arc<Config> {
        self.running().config.clone()
    }

    /// Bumped after every config reload that took effect.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// The live state of a host.
    pub fn host(&self, host: &str) -> Option<HostLiveHandle> {
        self.running().hosts.get(host).cloned()
    }

    /// Replaces the config of a running gateway: hosts whose settings changed
    /// are restarted, new ones started, removed ones stopped; the others keep
    /// polling undisturbed (and keep their live state). Pending writes, events
    /// and the outbox are untouched. The caller has validated `config`.
    pub async fn reload(&self, config: Config) -> Result<(), StoreError> {
        self.store.reconfigure(&config).await?;
        self.ledger.set_uplink(config.mqtt.is_some());
        let old = self.running();
        let mut hosts = BTreeMap::new();
        for host in &config.hosts {
            let kept = old
                .config
                .host(&host.host)
                .filter(|o| ***o == **host)
                .and_then(|_| old.hosts.get(&host.host).cloned());
            let live = kept.unwrap_or_else(|| live_state(&self.store, host));
            hosts.insert(host.host.clone(), live);
        }
        let config = Arc::new(config);
        self.running.replace(Snapshot {
            config: config.clone(),
            hosts,
        });
        self.alarms.reconfigure().await;
        if let Err(e) = self.writes.set_config(config).await {
            tracing::error!(error = %e, "cannot fail the config requests of removed items");
        }
        self.reloads.send_modify(|n| *n += 1);
        tracing::info!("config reloaded");
        Ok(())
    }
}

/// A host's live state with every item's last value restored from history
/// (state `unknown` until its first read).
fn live_state(store: &Store, host: &HostSpec) -> HostLiveHandle {
    let shared = HostLiveCell::new(host.items.len());
    let mut live = shared.lock();
    for (item, state) in host.items.iter().zip(live.items.iter_mut()) {
        if let Some(id) = store.item_id(&host.host, &item.key) {
            if let Ok(Some((clock, value))) = store.latest(id) {
                state.clock = Some(clock);
                state.value = Some(value);
                state.state = ItemState::Unknown;
            }
        }
    }
    drop(live);
    shared
}

/// Opens the store and the ledger and builds the live state.
pub async fn open(config: Config) -> Result<Gateway, StoreError> {
    // Opening runs SQLite (schema, item registration): not on the runtime thread.
    let (store, ledger, config) = tokio::task::spawn_blocking(move || {
        let store = Store::open(&config)?;
        let ledger = Ledger::open(store.path(), config.mqtt.is_some())?;
        Ok::<_, StoreError>((store, ledger, config))
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
    let hosts = config
        .hosts
        .iter()
        .map(|h| (h.host.clone(), live_state(&store, h)))
        .collect();
    let config = Arc::new(config);
    let running = SnapshotHandle::new(Snapshot {
        config: config.clone(),
        hosts,
    });
    Ok(Gateway {
        writes: ConfigRequests::open(ledger.clone(), config.clone()).await?,
        alarms: Alarms::new(ledger.clone(), running.clone()).await?,
        mqtt: MqttStatus::new(),
        sparkplug: MqttStatus::new(),
        proxies: crate::proxy::ProxyStatus::new(),
        store,
        ledger,
        running,
        reloads: tokio::sync::watch::Sender::new(0),
    })
}
