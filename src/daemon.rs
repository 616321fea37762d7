//! `modbridge run`: wires config, store and host tasks together, reloads the
//! config on SIGHUP, and shuts down cleanly.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alarm::Alarms;
use crate::ledger::Ledger;
use crate::modbus::Buses;
use crate::model::{Config, HostSpec};
use crate::mqtt::MqttStatus;
use crate::poll::{self, HostLiveCell, HostLiveHandle, HostReader, ItemState, Outputs};
use crate::store::{Store, StoreError};
use crate::writes::Writes;

/// Why the daemon could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Api(#[from] crate::api::ApiError),
}

/// The part of the gateway a config reload replaces.
pub struct Running {
    pub config: Arc<Config>,
    /// Live state per host id.
    pub hosts: BTreeMap<String, HostLiveHandle>,
}

/// Everything the running gateway shares with its API and uplink; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    pub store: Store,
    pub ledger: Ledger,
    pub writes: Writes,
    pub alarms: Alarms,
    pub mqtt: Arc<MqttStatus>,
    running: Arc<RwLock<Arc<Running>>>,
    reloads: tokio::sync::watch::Sender<u64>,
}

impl Gateway {
    /// The current config and live host states (replaced as a whole on reload).
    pub fn running(&self) -> Arc<Running> {
        self.running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
    pub fn reload(&self, config: Config) -> Result<(), DaemonError> {
        self.store.reconfigure(&config)?;
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
        let running = Arc::new(Running {
            config: Arc::new(config),
            hosts,
        });
        let config = running.config.clone();
        *self.running.write().unwrap_or_else(|e| e.into_inner()) = running;
        self.alarms.reconfigure();
        if let Err(e) = self.writes.set_config(config) {
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
pub fn open(config: Config) -> Result<Gateway, DaemonError> {
    let store = Store::open(&config)?;
    let ledger = Ledger::open(store.path(), config.mqtt.is_some())?;
    let hosts = config
        .hosts
        .iter()
        .map(|h| (h.host.clone(), live_state(&store, h)))
        .collect();
    let config = Arc::new(config);
    let running = Arc::new(RwLock::new(Arc::new(Running {
        config: config.clone(),
        hosts,
    })));
    Ok(Gateway {
        writes: Writes::open(ledger.clone(), config.clone())?,
        alarms: Alarms::new(ledger.clone(), running.clone())?,
        mqtt: MqttStatus::new(),
        store,
        ledger,
        running,
        reloads: tokio::sync::watch::Sender::new(0),
    })
}

/// Runs the gateway until `shutdown` completes, reloading `config.path` on
/// SIGHUP, then stops every task and commits everything before returning.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    let path = config.path.clone();
    // Before anything else: from here on a SIGHUP is a reload, never fatal.
    let hup = hangup_signals();
    // The API's port and token file are checked before anything else starts.
    let api = crate::api::Server::bind(&config.api).await?;
    let gateway = open(config)?;
    let reloader = gateway.clone();
    let hangups = async move {
        let Some(mut hup) = hup else {
            return std::future::pending().await;
        };
        while hup.recv().await.is_some() {
            crate::notify::reloading();
            crate::notify::reloaded(reload_from_file(&reloader, &path));
        }
    };
    let run = run_gateway_with_api(gateway, Some(api), shutdown);
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r,
        () = hangups => run.await,
    }
}

/// Loads and validates `path`; a bad config is logged and the running one kept.
/// Returns whether the new config took effect.
pub fn reload_from_file(gateway: &Gateway, path: &std::path::Path) -> bool {
    tracing::info!(path = %path.display(), "reloading config");
    match crate::config::load(path) {
        Ok(config) => {
            if config.gateway.data_dir != gateway.config().gateway.data_dir {
                tracing::error!(
                    "reload refused: data_dir changed; restart the service to move the database"
                );
                return false;
            }
            match gateway.reload(config) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "reload failed; the old config keeps running");
                    false
                }
            }
        }
        Err(errors) => {
            for line in errors.to_string().lines() {
                tracing::error!("{line}");
            }
            tracing::error!(
                "reload refused: the new config is invalid; the old config keeps running"
            );
            false
        }
    }
}

#[cfg(unix)]
fn hangup_signals() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signals() -> Option<NeverSignal> {
    None
}

#[cfg(not(unix))]
struct NeverSignal;

#[cfg(not(unix))]
impl NeverSignal {
    async fn recv(&mut self) -> Option<()> {
        None
    }
}

/// One running host task.
struct HostTask {
    spec: Arc<HostSpec>,
    live: HostLiveHandle,
    cancel: CancellationToken,
}

fn start_host(
    gateway: &Gateway,
    spec: &Arc<HostSpec>,
    live: &HostLiveHandle,
    buses: &Buses,
    parent: &CancellationToken,
    tracker: &TaskTracker,
) -> HostTask {
    let item_ids = spec
        .items
        .iter()
        .map(|i| gateway.store.item_id(&spec.host, &i.key))
        .collect();
    let reader = HostReader::new(spec.clone(), buses);
    let outputs = Outputs {
        live: live.clone(),
        store: Some(gateway.store.clone()),
        item_ids,
    };
    let cancel = parent.child_token();
    let writes = gateway.writes.host_queue(spec);
    tracker.spawn(poll::run_host_with_writes(
        reader,
        outputs,
        Some(writes),
        cancel.clone(),
    ));
    HostTask {
        spec: spec.clone(),
        live: live.clone(),
        cancel,
    }
}

/// How long shutdown waits for host tasks (and the alarm task) to finish what
/// they are in. With the uplink's goodbye and the store's final commit this
/// bounds the drain time, which the systemd unit's `TimeoutStopSec=` must exceed.
pub const HOST_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs an opened gateway until `shutdown` completes.
/// Runs an opened gateway until `shutdown` completes, without the HTTP API.
pub async fn run_gateway(
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_gateway_with_api(gateway, None, shutdown).await
}

/// Runs an opened gateway until `shutdown` completes, serving the HTTP API on
/// `api` (bound by the caller: `run` refuses a taken port, `demo` falls back
/// to a free one, tests bind port 0) until then.
pub async fn run_gateway_with_api(
    gateway: Gateway,
    api: Option<crate::api::Server>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let buses = Buses::default();
    let mut tasks: BTreeMap<String, HostTask> = BTreeMap::new();
    let mut reloads = gateway.reloads.subscribe();
    let sync_hosts = |tasks: &mut BTreeMap<String, HostTask>| {
        let running = gateway.running();
        let (mut started, mut stopped) = (0, 0);
        tasks.retain(|id, task| {
            let keep = running
                .hosts
                .get(id)
                .is_some_and(|l| Arc::ptr_eq(l, &task.live))
                && running.config.host(id).is_some_and(|s| **s == *task.spec);
            if !keep {
                task.cancel.cancel();
                stopped += 1;
            }
            keep
        });
        for spec in &running.config.hosts {
            if tasks.contains_key(&spec.host) {
                continue;
            }
            if let Some(live) = running.hosts.get(&spec.host) {
                tasks.insert(
                    spec.host.clone(),
                    start_host(&gateway, spec, live, &buses, &cancel, &tracker),
                );
                started += 1;
            }
        }
        (started, stopped)
    };
    sync_hosts(&mut tasks);
    let mqtt = crate::mqtt::spawn(gateway.clone(), gateway.reloads.subscribe());
    tracker.spawn(crate::alarm::run(gateway.clone(), cancel.clone()));
    let api_stop = CancellationToken::new();
    let api_task = api.map(|server| tokio::spawn(server.serve(gateway.clone(), api_stop.clone())));
    tracing::info!(
        gateway = %gateway.config().gateway.id,
        hosts = tasks.len(),
        "gateway running"
    );
    let systemd = crate::notify::Service::start(&gateway);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            r = reloads.changed() => {
                if r.is_err() {
                    continue;
                }
                let (started, stopped) = sync_hosts(&mut tasks);
                tracing::info!(started, stopped, running = tasks.len(), "host tasks updated after reload");
            }
        }
    }
    tracing::info!("shutting down");
    systemd.stopping();
    api_stop.cancel();
    if let Some(mut task) = api_task {
        // Requests under way get a moment to finish; the store is still open.
        if tokio::time::timeout(std::time::Duration::from_secs(3), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(HOST_DRAIN, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "a host or alarm task was still busy after {}s; stopping without waiting for it",
            HOST_DRAIN.as_secs()
        );
    }
    // After the host tasks, before the store: publishes the offline status and
    // records the last deliveries, which the store's close then commits.
    mqtt.stop().await;
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
