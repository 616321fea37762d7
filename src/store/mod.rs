//! SQLite storage on its own thread: history, hourly trends, the outbox.

use std::sync::Arc;

use crate::model::Config;

/// A stable number for an item (host, key), kept in the database.
pub type ItemId = u32;

/// One good reading of an item, in engineering units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub item: ItemId,
    /// Unix seconds.
    pub clock: i64,
    pub value: f64,
}

/// One hourly trend bucket.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TrendBucket {
    pub num: u64,
    pub min: f64,
    pub avg: f64,
    pub max: f64,
}

/// Figures for `/health` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    pub db_bytes: u64,
    pub samples_received: u64,
    pub history_points: u64,
    pub commits: u64,
    pub commit_errors: u64,
    pub dropped_unsent: u64,
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the store is closed")]
    Closed,
}

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<()>,
}

impl Store {
    /// Opens (creating if needed) `data_dir/modbridge.db`, registers the config's
    /// items and starts the writer thread.
    pub fn open(config: &Config) -> Result<Store, StoreError> {
        let _ = config;
        todo!()
    }

    /// The id of an item of the current config.
    pub fn item_id(&self, host: &str, key: &str) -> Option<ItemId> {
        let _ = (&self.inner, host, key);
        todo!()
    }

    /// Hands good samples to the writer; no I/O, never blocks on the disk.
    pub fn push(&self, samples: &[Sample]) {
        let _ = samples;
        todo!()
    }

    /// Commits everything pushed so far and waits until it is durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        todo!()
    }

    /// Commits everything and stops the writer thread.
    pub fn close(&self) -> Result<(), StoreError> {
        todo!()
    }

    /// History points of an item in `[from, to]`, ascending; with `limit`, the newest `limit`.
    pub fn history(
        &self,
        item: ItemId,
        from: i64,
        to: i64,
        limit: Option<usize>,
    ) -> Result<Vec<(i64, f64)>, StoreError> {
        let _ = (item, from, to, limit);
        todo!()
    }

    /// Hourly trend buckets of an item whose hour starts in `[from, to]`
    /// (the bucket containing `from` included), with the current hour.
    pub fn trend(&self, item: ItemId, from: i64, to: i64) -> Result<Vec<(i64, TrendBucket)>, StoreError> {
        let _ = (item, from, to);
        todo!()
    }

    /// The newest history point of an item, to restore `lastvalue` after a restart.
    pub fn latest(&self, item: ItemId) -> Result<Option<(i64, f64)>, StoreError> {
        let _ = item;
        todo!()
    }

    /// Current figures.
    pub fn stats(&self) -> StoreStats {
        todo!()
    }

    /// Registers the items of a reloaded config (new ids for new items, new deadbands).
    pub fn reconfigure(&self, config: &Config) -> Result<(), StoreError> {
        let _ = config;
        todo!()
    }
}
