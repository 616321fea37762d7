//! One task per host: when items are due, read them with the fewest requests,
//! decode them, keep the live state the API shows, and hand good samples to the store.
//!
//! Read bottom-up: [`schedule`] decides what is due when (pure, no I/O),
//! [`reader`] reads and decodes a set of items on the host's link, [`live`]
//! is the state the API shows and the rules for updating it, and [`task`] is
//! the loop that ties them together.
//!
//! Invariants:
//! - only a host's task touches its link (serial hosts share a bus through it);
//! - a failed item keeps its last value and clock, never re-stamped, and produces no sample;
//! - a Modbus exception 01/02/03 on a merged read blinds only the items that
//!   cause it: they are found by reading each item alone, and read alone for
//!   the next hour; any other code means "not now" and teaches nothing.

pub mod live;
pub mod reader;
pub mod schedule;
pub mod task;

pub use live::{
    apply_readings, apply_written, HostLive, HostLiveCell, HostLiveHandle, ItemLive, ItemState,
    LATENCY_BUCKETS, LATENESS_BUCKETS,
};
pub use reader::{CycleReport, HostReader, ItemReading, CUT_LIFETIME};
pub use schedule::Schedule;
pub use task::{run_host, run_host_with_writes, Outputs};
