//! Where deployed configs live (under `data_dir`, since `/etc` is read-only
//! for the service) and how the config that runs is put together from them
//! and the local file.
//!
//! - `data_dir/remote/`: what is deployed and in force: `modbridge.toml`
//!   (optional) and `profiles/*.toml`, with `origins.json` saying who brought
//!   each file and when;
//! - `data_dir/remote.previous/`: what was in force before the deployment on
//!   probation (absent: nothing was deployed);
//! - `data_dir/remote.staging/`: a deployment being checked;
//! - `data_dir/remote.json`: the latest deployment status and the probation.
//!
//! Every switch between them is a directory rename, so a crash leaves one
//! whole set in force.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigErrors, Diagnostic, LoadOptions};
use crate::model::{Config, CONFIG_DATASET};
use crate::wire::DeployObject;

/// The directories of one gateway's deployments.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub active: PathBuf,
    pub previous: PathBuf,
    pub staging: PathBuf,
    pub state: PathBuf,
}

impl Dirs {
    pub fn of(data_dir: &Path) -> Dirs {
        Dirs {
            active: data_dir.join("remote"),
            previous: data_dir.join("remote.previous"),
            staging: data_dir.join("remote.staging"),
            state: data_dir.join("remote.json"),
        }
    }
}

/// Who brought a deployed file, and when.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Origin {
    pub created: i64,
    pub created_by: String,
    pub updated: i64,
    pub updated_by: String,
}

/// `origins.json` of a deployment directory: Dataset name -> origin.
pub type Origins = BTreeMap<String, Origin>;

const ORIGINS: &str = "origins.json";

/// A probation under way.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Probation {
    /// When the deployment was applied, Unix seconds.
    pub started: i64,
    /// When it ends, Unix milliseconds.
    pub deadline_ms: i64,
    /// Hosts that must answer once: those that answered before, and new ones.
    pub hosts: Vec<String>,
    /// Whether something was deployed before (else rolling back returns to the local files).
    pub had_previous: bool,
}

/// `remote.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub deploy: Option<DeployObject>,
    pub probation: Option<Probation>,
    /// The status was changed while nothing could publish it (at start-up).
    #[serde(default)]
    pub unpublished: bool,
}

/// Reads a JSON file; a missing file is the default value.
fn read_json<T: Default + for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<T> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e),
    }
}

/// Writes a file whole or not at all: a temporary file, synced, renamed over it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

pub fn read_state(dirs: &Dirs) -> std::io::Result<State> {
    read_json(&dirs.state)
}

pub fn write_state(dirs: &Dirs, state: &State) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    write_atomic(&dirs.state, &bytes)
}

pub fn read_origins(dir: &Path) -> std::io::Result<Origins> {
    read_json(&dir.join(ORIGINS))
}

pub fn write_origins(dir: &Path, origins: &Origins) -> std::io::Result<()> {
    let bytes = serde_json::to_vec_pretty(origins).map_err(std::io::Error::other)?;
    write_atomic(&dir.join(ORIGINS), &bytes)
}

/// Removes a directory tree if it exists.
pub fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Copies a deployment directory (`modbridge.toml`, `origins.json`,
/// `profiles/*`) to `to`, which is replaced.
pub fn copy_deployment(from: &Path, to: &Path) -> std::io::Result<()> {
    remove_dir(to)?;
    std::fs::create_dir_all(to.join("profiles"))?;
    if !from.is_dir() {
        return Ok(());
    }
    for name in [CONFIG_DATASET, ORIGINS] {
        if from.join(name).is_file() {
            std::fs::copy(from.join(name), to.join(name))?;
        }
    }
    if let Ok(entries) = std::fs::read_dir(from.join("profiles")) {
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::copy(entry.path(), to.join("profiles").join(entry.file_name()))?;
            }
        }
    }
    Ok(())
}

/// Makes `from` the directory at `to` (replacing it), durably.
pub fn swap_in(from: &Path, to: &Path) -> std::io::Result<()> {
    remove_dir(to)?;
    std::fs::rename(from, to)?;
    if let Some(parent) = to.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// True when `dir` holds any deployed file.
pub fn has_deployment(dir: &Path) -> bool {
    dir.join(CONFIG_DATASET).is_file()
        || std::fs::read_dir(dir.join("profiles")).is_ok_and(|mut e| e.next().is_some())
}

/// The config that runs: the local file, or the config deployed in
/// `deployed` (with the local file's `[gateway]`, `[mqtt]`, `[api]` and
/// `[remote]`), profiles from `deployed` first, then beside the local file.
/// Deployed files carry their origins.
pub fn load_from(local: &Config, deployed: &Path) -> Result<Config, ConfigErrors> {
    let local_dir = local
        .local_path
        .parent()
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let options = LoadOptions {
        profile_dirs: vec![deployed.to_path_buf(), local_dir],
        base: Some(std::sync::Arc::new(local.clone())),
    };
    let deployed_config = deployed.join(CONFIG_DATASET);
    let mut config = if deployed_config.is_file() {
        crate::config::load_with(&deployed_config, &options)?
    } else {
        crate::config::load_with(
            &local.local_path,
            &LoadOptions {
                base: None,
                ..options
            },
        )?
    };
    let origins = read_origins(deployed).unwrap_or_default();
    for source in &mut config.sources {
        if !source.path.starts_with(deployed) {
            continue;
        }
        if let Some(o) = origins.get(&source.name) {
            source.created = o.created;
            source.created_by = o.created_by.clone();
            source.updated = o.updated;
            source.updated_by = o.updated_by.clone();
        }
    }
    Ok(config)
}

/// Problems of a deployment named as its Datasets: `modbridge.toml:3:1: ...`.
pub fn as_dataset_errors(errors: &ConfigErrors, dirs: &[&Path]) -> Vec<String> {
    errors
        .0
        .iter()
        .map(|d| {
            let file = dirs
                .iter()
                .find_map(|dir| d.file.strip_prefix(dir).ok())
                .map_or_else(|| d.file.clone(), Path::to_path_buf);
            Diagnostic { file, ..d.clone() }.to_string()
        })
        .collect()
}
