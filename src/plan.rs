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

/// The requests of one poll interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollGroup {
    pub interval: std::time::Duration,
    pub requests: Vec<ReadRequest>,
}

/// Every item grouped by poll interval, each group planned.
pub fn plan_host(host: &HostSpec) -> Vec<PollGroup> {
    let _ = host;
    todo!()
}

/// The `check` line for a request.
pub fn describe(host: &HostSpec, req: &ReadRequest, interval: std::time::Duration) -> String {
    let _ = (host, req, interval);
    todo!()
}
