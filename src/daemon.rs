//! `modbridge run`: wires config, store and host tasks together, and shuts down cleanly.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::modbus::Buses;
use crate::model::Config;
use crate::poll::{self, HostReader, HostShared, ItemState, Outputs, SharedHost};
use crate::store::{Store, StoreError};

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// Everything the running gateway shares with its API.
#[derive(Clone)]
pub struct Gateway {
    pub config: Arc<Config>,
    pub store: Store,
    /// Live state per host id.
    pub hosts: Arc<BTreeMap<String, SharedHost>>,
}

impl Gateway {
    /// The live state of a host.
    pub fn host(&self, host: &str) -> Option<&SharedHost> {
        self.hosts.get(host)
    }
}

/// Opens the store and builds the live state, with every item's last value
/// restored from history (state `unknown` until its first read).
pub fn open(config: Config) -> Result<Gateway, DaemonError> {
    let store = Store::open(&config)?;
    let mut hosts = BTreeMap::new();
    for host in &config.hosts {
        let shared = HostShared::new(host.items.len());
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
        hosts.insert(host.host.clone(), shared);
    }
    Ok(Gateway {
        config: Arc::new(config),
        store,
        hosts: Arc::new(hosts),
    })
}

/// Runs the gateway until `shutdown` completes, then stops every task and
/// commits everything to the database before returning.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let gateway = open(config)?;
    run_gateway(gateway, shutdown).await
}

/// Runs an opened gateway until `shutdown` completes.
pub async fn run_gateway(
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let buses = Buses::default();
    for host in &gateway.config.hosts {
        let host = host.clone();
        let Some(live) = gateway.host(&host.host).cloned() else {
            continue;
        };
        let item_ids = host
            .items
            .iter()
            .map(|i| gateway.store.item_id(&host.host, &i.key))
            .collect();
        let reader = HostReader::new(host, &buses);
        let outputs = Outputs {
            live,
            store: Some(gateway.store.clone()),
            item_ids,
        };
        tracker.spawn(poll::run_host(reader, outputs, cancel.clone()));
    }
    tracker.close();
    tracing::info!(
        gateway = %gateway.config.gateway.id,
        hosts = gateway.config.hosts.len(),
        "gateway running"
    );
    shutdown.await;
    tracing::info!("shutting down");
    cancel.cancel();
    tracker.wait().await;
    let store = gateway.store.clone();
    tokio::task::spawn_blocking(move || store.close())
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??;
    tracing::info!("stopped; everything committed");
    Ok(())
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn termination_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
