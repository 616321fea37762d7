//! Pure: which Modbus read requests serve a set of items.

use crate::model::{HostSpec, Table};

/// One read request of a poll cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub table: Table,
    /// First address read (0-based).
    pub start: u16,
    /// Registers (or bits) read.
    pub count: u16,
    /// Indices into the host's `items` served by this request.
    pub items: Vec<usize>,
}

/// Merges the given items (indices into `host.items`) into the fewest requests.
pub fn plan_items(host: &HostSpec, items: &[usize]) -> Vec<ReadRequest> {
    let _ = (host, items);
    todo!()
}
