//! What the Sparkplug session takes from the store and the ledger: its own
//! durable position in the outbox and the persisted `bdSeq`.

use crate::gateway::Gateway;
use crate::store::{OutboxMessage, StoreError, Uplink};

/// Outbox messages after `after_seq`, ascending, at most `max` (the
/// Sparkplug uplink reads every row after its position).
pub(super) async fn read(
    gateway: &Gateway,
    after_seq: u64,
    max: usize,
) -> Result<Vec<OutboxMessage>, StoreError> {
    gateway
        .store
        .outbox_from(Uplink::Sparkplug, after_seq, max)
        .await
}

/// Everything up to `seq` was delivered over Sparkplug; durable with the
/// store writer's next commit.
pub(super) fn advance(gateway: &Gateway, seq: u64) {
    if let Err(e) = gateway.store.advance(Uplink::Sparkplug, seq) {
        // Only a closing store refuses: the rows are sent again next start.
        tracing::debug!(error = %e, seq, "sparkplug position not moved");
    }
}

/// The highest seq delivered contiguously over Sparkplug (0 = none).
pub(super) fn position(gateway: &Gateway) -> u64 {
    gateway.store.position(Uplink::Sparkplug)
}

/// Messages not yet delivered over Sparkplug.
pub(super) fn backlog(gateway: &Gateway) -> u64 {
    gateway.store.backlog(Uplink::Sparkplug)
}

/// The next connection's `bdSeq`, persisted before it is returned.
pub(super) async fn next_bd_seq(gateway: &Gateway) -> Result<u8, StoreError> {
    gateway.ledger.next_bd_seq().await
}
