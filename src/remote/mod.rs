//! Remote configuration: configs and profiles deployed from upstream as
//! Datasets (`R/cmd/dataset`, `PUT /datasets/{name}`), behind
//! `[remote] config = true`.
//!
//! A deployment is checked exactly like `modbridge check` (with the profiles
//! it names, deployed ones first), applied like a SIGHUP reload (hosts it
//! does not touch keep polling, buffered data stays), and put on probation
//! for `[remote] rollback_after`: if a host that answered before, or a host
//! the deployment added, has not answered once by then, the previous config
//! is put back by itself. Its status (`PENDING` -> `APPLIED`, `REFUSED` or
//! `ROLLED_BACK`) is kept in `data_dir` and published, retained and durable,
//! on `R/deploy`. What was applied lives under `data_dir` (see [`files`]) and
//! survives restarts; a restart during probation rolls the deployment back.
//!
//! [`Remote::deploy`] does file and database work: call it off the runtime.

pub mod files;
pub mod request;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::{unix_ms, unix_now};
use crate::config::ConfigErrors;
use crate::gateway::Gateway;
use crate::model::Config;
use crate::units::format_duration;
use crate::wire::DeployObject;
use files::{Dirs, Origin, Probation, State};
pub use request::{Refusal, MAX_CONTENT_BYTES, MAX_REQUEST_BYTES};

/// The deployment statuses.
pub const PENDING: &str = "PENDING";
pub const APPLIED: &str = "APPLIED";
pub const REFUSED: &str = "REFUSED";
pub const ROLLED_BACK: &str = "ROLLED_BACK";

/// The remote configuration of a running gateway; cheap to clone.
#[derive(Clone)]
pub struct Remote {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: Gateway,
    dirs: Dirs,
    /// Held for the whole of a deployment or the end of a probation.
    state: Mutex<State>,
    /// The latest status, for readers that must not wait for a deployment.
    latest: Mutex<Option<DeployObject>>,
    wake: tokio::sync::Notify,
}

fn io_failed(what: &str, e: &std::io::Error) -> Refusal {
    tracing::error!(error = %e, "remote configuration: cannot {what}");
    Refusal::Failed(format!("the gateway cannot {what}: {e}"))
}

/// The config that runs for the local file at `local_path`: the local file,
/// or what was deployed under its `data_dir` (if that no longer loads, the
/// local file, with the problems logged).
pub fn load_effective(local_path: &Path) -> Result<Config, ConfigErrors> {
    let local = crate::config::load(local_path)?;
    Ok(effective(local))
}

fn effective(local: Config) -> Config {
    let dirs = Dirs::of(&local.gateway.data_dir);
    if !files::has_deployment(&dirs.active) {
        return local;
    }
    match files::load_from(&local, &dirs.active) {
        Ok(config) => config,
        Err(errors) => {
            for line in errors.to_string().lines() {
                tracing::error!("{line}");
            }
            tracing::error!(
                dir = %dirs.active.display(),
                "the deployed config does not load any more; running the local file"
            );
            local
        }
    }
}

/// Like [`load_effective`], for `modbridge run`: a deployment whose
/// probation a restart interrupted is rolled back first.
pub fn load_for_start(local_path: &Path) -> Result<Config, ConfigErrors> {
    let local = crate::config::load(local_path)?;
    let dirs = Dirs::of(&local.gateway.data_dir);
    if let Ok(mut state) = files::read_state(&dirs) {
        if let Some(probation) = state.probation.take() {
            tracing::warn!(
                "the gateway restarted while a deployment was on probation; rolling it back"
            );
            if let Err(e) = restore_previous(&dirs, probation.had_previous) {
                tracing::error!(error = %e, "cannot roll back the interrupted deployment");
            }
            if let Some(d) = &mut state.deploy {
                d.status = ROLLED_BACK.to_string();
                d.clock = unix_now();
                d.reason = Some(
                    "the gateway restarted during the probation; the previous config runs again"
                        .to_string(),
                );
            }
            state.unpublished = true;
            if let Err(e) = files::write_state(&dirs, &state) {
                tracing::error!(error = %e, "cannot record the rolled back deployment");
            }
        }
    }
    Ok(effective(local))
}

/// For `modbridge check` of a local file: a note when deployed files are
/// in force instead of local ones.
pub fn deployed_note(local: &Config) -> Option<String> {
    let dirs = Dirs::of(&local.gateway.data_dir);
    if !files::has_deployment(&dirs.active) {
        return None;
    }
    let origins = files::read_origins(&dirs.active).unwrap_or_default();
    let list: Vec<String> = origins
        .iter()
        .map(|(name, o)| format!("{name} (updated {} by {})", o.updated, o.updated_by))
        .collect();
    Some(format!(
        "note: a deployed config is in force: {} under {} runs instead of the local file{}; this checked the local file ({})",
        list.join(", "),
        dirs.active.display(),
        if list.len() == 1 { "" } else { "s" },
        local.local_path.display()
    ))
}

/// Puts back what was in force before the deployment on probation.
fn restore_previous(dirs: &Dirs, had_previous: bool) -> std::io::Result<()> {
    if had_previous && dirs.previous.is_dir() {
        files::swap_in(&dirs.previous, &dirs.active)
    } else {
        files::remove_dir(&dirs.active)
    }
}

/// Makes `status` a refusal for these problems.
fn refuse(status: &mut DeployObject, errors: Vec<String>) {
    tracing::warn!(name = %status.name, problems = errors.len(), "deployment refused");
    status.status = REFUSED.to_string();
    status.reason = Some(format!(
        "the config has {} problem{}",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    ));
    status.errors = errors;
}

/// Waits for the store's or the gateway's `async fn` from a thread of the
/// blocking pool, where deployments run (never on the runtime's threads).
fn wait<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(f)
}

/// Queues `R/deploy` (retained, durable).
async fn publish(gateway: &Gateway, status: &DeployObject) {
    let payload = match serde_json::to_string(status) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode a deployment status");
            return;
        }
    };
    let queued = gateway
        .ledger
        .transaction(move |_, uplink| {
            uplink.push("deploy", payload, true);
            Ok(())
        })
        .await;
    if let Err(e) = queued {
        tracing::error!(error = %e, "cannot queue the deployment status for R/deploy");
    }
}

impl Remote {
    /// The remote configuration of `gateway`; publishes a status a restart
    /// changed (a rolled back probation). Reads `data_dir`: call at start-up.
    pub async fn open(gateway: &Gateway) -> Remote {
        let dirs = Dirs::of(&gateway.config().gateway.data_dir);
        let mut state = files::read_state(&dirs).unwrap_or_else(|e| {
            tracing::error!(error = %e, path = %dirs.state.display(), "cannot read the deployment state");
            State::default()
        });
        if state.unpublished {
            if let Some(d) = &state.deploy {
                publish(gateway, d).await;
            }
            state.unpublished = false;
            if let Err(e) = files::write_state(&dirs, &state) {
                tracing::warn!(error = %e, "cannot record the deployment state");
            }
        }
        Remote {
            inner: Arc::new(Inner {
                gateway: gateway.clone(),
                dirs,
                latest: Mutex::new(state.deploy.clone()),
                state: Mutex::new(state),
                wake: tokio::sync::Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest deployment's status.
    pub fn latest(&self) -> Option<DeployObject> {
        let latest = self.inner.latest.lock();
        latest.unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes a deployment (the request's JSON), `channel` naming where it
    /// came from (`mqtt`, `api <peer>`): checks it like `check` and applies
    /// it (status `PENDING`, on probation) or refuses it (`REFUSED`, with
    /// every problem). A request that is not acceptable at all changes
    /// nothing and is an error. Blocking (files, the database).
    pub fn deploy(&self, body: &[u8], channel: &str) -> Result<DeployObject, Refusal> {
        let gateway = &self.inner.gateway;
        let mut state = self.lock();
        if !gateway.config().remote.config {
            return Err(Refusal::Off);
        }
        let request = request::parse(body, channel)?;
        if state.probation.is_some() {
            let id = state
                .deploy
                .as_ref()
                .and_then(|d| d.id.as_ref())
                .map_or_else(|| "without id".to_string(), |v| v.to_string());
            return Err(Refusal::Busy(id));
        }
        let mut status = DeployObject {
            id: request.id.clone(),
            name: request.name.clone(),
            checksum: request.checksum.clone(),
            status: PENDING.to_string(),
            clock: unix_now(),
            errors: Vec::new(),
            reason: None,
            audit: request.audit.clone(),
        };
        let dirs = &self.inner.dirs;
        self.stage(&request, status.clock)
            .map_err(|e| io_failed("stage the deployment", &e))?;
        let local_path = gateway.config().local_path.clone();
        let checked = crate::config::load(&local_path)
            .and_then(|local| files::load_from(&local, &dirs.staging).map(|c| (local, c)));
        let local = match checked {
            Ok((local, _)) => local,
            Err(errors) => {
                let local_dir = local_path.parent().unwrap_or(Path::new(""));
                refuse(
                    &mut status,
                    files::as_dataset_errors(&errors, &[&dirs.staging, local_dir]),
                );
                let _ = files::remove_dir(&dirs.staging);
                self.record(&mut state, status.clone(), None);
                return Ok(status);
            }
        };
        let probation = self.apply(&local)?;
        tracing::info!(name = %request.name, hosts = ?probation.hosts, "deployment applied; on probation");
        self.record(&mut state, status.clone(), Some(probation));
        self.inner.wake.notify_one();
        Ok(status)
    }

    /// `staging` = what is in force with the deployment's file replaced (or removed).
    fn stage(&self, request: &request::Deployment, now: i64) -> std::io::Result<()> {
        let dirs = &self.inner.dirs;
        files::copy_deployment(&dirs.active, &dirs.staging)?;
        let path = dirs.staging.join(&request.name);
        let mut origins = files::read_origins(&dirs.staging)?;
        match &request.content {
            Some(content) => {
                files::write_atomic(&path, content.as_bytes())?;
                let by = request.audit.join(" ");
                let created = origins
                    .get(&request.name)
                    .map(|o| (o.created, o.created_by.clone()));
                let (created, created_by) = created.unwrap_or((now, by.clone()));
                origins.insert(
                    request.name.clone(),
                    Origin {
                        created,
                        created_by,
                        updated: now,
                        updated_by: by,
                    },
                );
            }
            None => {
                if path.is_file() {
                    std::fs::remove_file(&path)?;
                }
                origins.remove(&request.name);
            }
        }
        files::write_origins(&dirs.staging, &origins)
    }

    /// Makes the staged deployment the one in force and reloads; returns the probation.
    fn apply(&self, local: &Config) -> Result<Probation, Refusal> {
        let gateway = &self.inner.gateway;
        let dirs = &self.inner.dirs;
        let before = gateway.running();
        let answered: Vec<String> = before
            .hosts
            .iter()
            .filter(|(_, live)| live.lock().last_ok.is_some())
            .map(|(h, _)| h.clone())
            .collect();
        let had_previous = dirs.active.is_dir();
        let moved = (|| {
            if had_previous {
                files::swap_in(&dirs.active, &dirs.previous)?;
            }
            files::swap_in(&dirs.staging, &dirs.active)
        })();
        moved.map_err(|e| io_failed("put the deployment in place", &e))?;
        let config = match files::load_from(local, &dirs.active) {
            Ok(c) => c,
            Err(e) => {
                let _ = restore_previous(dirs, had_previous);
                return Err(Refusal::Failed(format!(
                    "the deployment did not load once in place: {e}"
                )));
            }
        };
        let hosts: Vec<String> = config
            .hosts
            .iter()
            .map(|h| h.host.clone())
            .filter(|h| before.config.host(h).is_none() || answered.contains(h))
            .collect();
        let rollback_after = config.remote.rollback_after;
        if let Err(e) = wait(gateway.reload(config)) {
            let _ = restore_previous(dirs, had_previous);
            return Err(Refusal::Failed(format!(
                "the deployment could not be applied: {e}"
            )));
        }
        let started = unix_now();
        Ok(Probation {
            started,
            deadline_ms: unix_ms()
                + i64::try_from(rollback_after.as_millis()).unwrap_or(i64::MAX / 2),
            hosts,
            had_previous,
        })
    }

    /// Records and publishes a status.
    fn record(&self, state: &mut State, status: DeployObject, probation: Option<Probation>) {
        state.deploy = Some(status.clone());
        *self.inner.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(status.clone());
        state.probation = probation;
        state.unpublished = false;
        if let Err(e) = files::write_state(&self.inner.dirs, state) {
            tracing::error!(error = %e, "cannot record the deployment status");
        }
        wait(publish(&self.inner.gateway, &status));
    }

    /// Ends the probation: `APPLIED`, or `ROLLED_BACK` naming the hosts that
    /// did not answer. Blocking.
    fn end_probation(&self) {
        let mut state = self.lock();
        let (Some(probation), Some(mut status)) = (state.probation.clone(), state.deploy.clone())
        else {
            return;
        };
        let silent = self.silent_hosts(&probation);
        status.clock = unix_now();
        if silent.is_empty() {
            status.status = APPLIED.to_string();
            if let Err(e) = files::remove_dir(&self.inner.dirs.previous) {
                tracing::warn!(error = %e, "cannot remove the previous deployment");
            }
            tracing::info!(name = %status.name, "deployment applied");
        } else {
            self.roll_back(&mut status, &silent, &probation);
        }
        self.record(&mut state, status, None);
    }

    /// The hosts of the probation that have not answered since it started.
    fn silent_hosts(&self, probation: &Probation) -> Vec<String> {
        let running = self.inner.gateway.running();
        probation
            .hosts
            .iter()
            .filter(|h| {
                running
                    .hosts
                    .get(*h)
                    .is_some_and(|live| live.lock().last_ok.map_or(true, |t| t < probation.started))
            })
            .cloned()
            .collect()
    }

    /// Puts the previous config back in force and runs it.
    fn roll_back(&self, status: &mut DeployObject, silent: &[String], probation: &Probation) {
        let gateway = &self.inner.gateway;
        let running = gateway.config();
        status.status = ROLLED_BACK.to_string();
        status.reason = Some(format!(
            "host{} {} did not answer within the {} probation; the previous config runs again",
            if silent.len() == 1 { "" } else { "s" },
            silent.join(", "),
            format_duration(running.remote.rollback_after)
        ));
        tracing::warn!(name = %status.name, silent = ?silent, "deployment rolled back");
        if let Err(e) = restore_previous(&self.inner.dirs, probation.had_previous) {
            tracing::error!(error = %e, "cannot put the previous deployment back");
        }
        match load_effective(&running.local_path) {
            Ok(config) => {
                if let Err(e) = wait(gateway.reload(config)) {
                    tracing::error!(error = %e, "cannot reload the previous config");
                }
            }
            Err(errors) => {
                for line in errors.to_string().lines() {
                    tracing::error!("{line}");
                }
                tracing::error!(
                    "the previous config does not load; the deployed one keeps running"
                );
            }
        }
    }

    /// Ends each probation at its deadline until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let notified = self.inner.wake.notified();
            let deadline = self.lock().probation.as_ref().map(|p| p.deadline_ms);
            let wait = match deadline {
                Some(ms) => Duration::from_millis(u64::try_from(ms - unix_ms()).unwrap_or(0)),
                None => Duration::MAX,
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = notified => continue,
                () = tokio::time::sleep(wait.min(Duration::from_secs(86_400))), if deadline.is_some() => {
                    let me = self.clone();
                    if let Err(e) = tokio::task::spawn_blocking(move || me.end_probation()).await {
                        tracing::error!(error = %e, "the probation check ended abnormally");
                    }
                }
            }
        }
    }
}
