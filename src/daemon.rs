//! `modbridge run`: the supervisor. It opens the [`Gateway`] (the shared
//! handles, in `gateway`), starts and stops its tasks (one per host, the
//! alarm task, the uplink, the API, the service-manager notifier), turns a
//! SIGHUP into a reload of the config file, and shuts everything down in
//! order so that the store commits last. What the tasks do lives in their own
//! modules; this one only decides when they run.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::gateway::Gateway;
use crate::modbus::Buses;
use crate::model::{Config, HostSpec};
use crate::poll::{self, HostLiveHandle, HostReader, Outputs};
use crate::store::StoreError;

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

/// Runs the gateway until `shutdown` completes, reloading `config.local_path` (and what is deployed) on
/// SIGHUP, then stops every task and commits everything before returning.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    // The local file: a SIGHUP reloads it together with what is deployed.
    let path = config.local_path.clone();
    // Before anything else: from here on a SIGHUP is a reload, never fatal.
    let hup = hangup_signals();
    // The API's port and token file are checked before anything else starts.
    let api = crate::api::Server::bind(&config.api).await?;
    let gateway = crate::gateway::open(config).await?;
    let reloader = gateway.clone();
    let hangups = async move {
        let Some(mut hup) = hup else {
            return std::future::pending().await;
        };
        while hup.recv().await.is_some() {
            crate::notify::reloading();
            crate::notify::reloaded(reload_from_file(&reloader, &path).await);
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
/// Returns whether the new config took effect. This is the supervisor's answer
/// to SIGHUP: it decides whether a live reload can take the file (a moved
/// `data_dir` needs a restart) and reports the verdict in the journal; the
/// reload itself is [`Gateway::reload`].
pub async fn reload_from_file(gateway: &Gateway, path: &std::path::Path) -> bool {
    tracing::info!(path = %path.display(), "reloading config");
    match crate::remote::load_effective(path) {
        Ok(config) => {
            if config.gateway.data_dir != gateway.config().gateway.data_dir {
                tracing::error!(
                    "reload refused: data_dir changed; restart the service to move the database"
                );
                return false;
            }
            match gateway.reload(config).await {
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

/// Starts every `[[proxy]]` of the config the gateway started with, on the
/// hosts' `buses`. A proxy whose address cannot be bound is logged and left
/// out; polling goes on. A changed `[[proxy]]` takes effect on restart.
async fn start_proxies(
    gateway: &Gateway,
    buses: &Arc<Buses>,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) {
    let config = gateway.config();
    for spec in &config.proxies {
        match crate::proxy::bind(spec).await {
            Ok(listener) => {
                let proxy = crate::proxy::Proxy::new(
                    spec.clone(),
                    &config.hosts,
                    buses.clone(),
                    gateway.proxies.clone(),
                );
                tracker.spawn(crate::proxy::serve(listener, proxy, cancel.clone()));
            }
            Err(e) => tracing::error!(
                listen = %spec.listen,
                error = %e,
                "proxy: cannot listen; it is not running"
            ),
        }
    }
}

/// How long shutdown waits for host tasks (and the alarm task) to finish what
/// they are in. With the uplink's goodbye and the store's final commit this
/// bounds the drain time, which the systemd unit's `TimeoutStopSec=` must exceed.
pub const HOST_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

/// How long shutdown lets HTTP requests under way finish.
pub const API_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// The longest shutdown takes with the default store options: the API's
/// requests, the host tasks, the uplink's goodbye, the store's final commit.
/// The systemd unit's `TimeoutStopSec=` must exceed it.
pub fn stop_budget() -> std::time::Duration {
    API_DRAIN
        + HOST_DRAIN
        + crate::mqtt::STOP_GRACE.max(crate::sparkplug::STOP_GRACE)
        + crate::store::StoreOptions::default().close_budget()
}

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
    let buses = Arc::new(Buses::default());
    let mut tasks: BTreeMap<String, HostTask> = BTreeMap::new();
    let mut reloads = gateway.reloads();
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
    start_proxies(&gateway, &buses, &cancel, &tracker).await;
    let remote = crate::remote::Remote::open(&gateway).await;
    tracker.spawn(remote.clone().run(cancel.clone()));
    let mqtt = crate::mqtt::spawn(gateway.clone(), remote.clone(), gateway.reloads());
    let sparkplug = crate::sparkplug::spawn(gateway.clone(), gateway.reloads());
    tracker.spawn(crate::alarm::run(
        gateway.alarms.clone(),
        gateway.snapshot(),
        gateway.reloads(),
        cancel.clone(),
    ));
    let api_stop = CancellationToken::new();
    let api_task = api.map(|server| {
        tokio::spawn(server.serve(gateway.clone(), remote.clone(), api_stop.clone()))
    });
    tracing::info!(
        gateway = %gateway.config().gateway.id,
        hosts = tasks.len(),
        "gateway running"
    );
    let systemd = crate::notify::Service::start(&gateway);
    let first_proxies = gateway.config().proxies.clone();
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
                if gateway.config().proxies != first_proxies {
                    tracing::warn!("[[proxy]] changed: the proxies keep their old settings until restart");
                }
            }
        }
    }
    tracing::info!("shutting down");
    systemd.stopping();
    api_stop.cancel();
    if let Some(mut task) = api_task {
        // Requests under way get a moment to finish; the store is still open.
        if tokio::time::timeout(API_DRAIN, &mut task).await.is_err() {
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
    // Both uplinks say goodbye at once (NDEATH on Sparkplug).
    tokio::join!(mqtt.stop(), sparkplug.stop());
    let store = gateway.store.clone();
    let budget = store.close_budget();
    let closing = tokio::task::spawn_blocking(move || store.close());
    match tokio::time::timeout(budget, closing).await {
        Ok(joined) => {
            joined.map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))??
        }
        Err(_) => {
            tracing::error!(
                budget = ?budget,
                "the store did not close within its budget; stopping without waiting"
            );
            return Err(StoreError::Commit("the store did not close in time".into()).into());
        }
    }
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
