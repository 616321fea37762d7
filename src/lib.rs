//! modbridge: a Modbus edge gateway.
//!
//! The data flows through these modules, in this order:
//!
//! - [`config`]: the TOML file (and shared device profiles) -> a validated [`model::Config`],
//!   or every problem as `FILE:LINE:COL: message`.
//! - [`plan`]: pure. Items due together -> the fewest Modbus read requests the device allows.
//! - [`modbus`]: the field side. One link per TCP host, one shared bus per serial port;
//!   every request has a timeout; a failed transport is dropped and rebuilt with backoff.
//! - [`decode`]: pure. Registers <-> engineering values, every type and byte order.
//! - [`poll`]: one task per host: schedule, read, decode, narrow exceptions, live item state.
//! - [`store`]: SQLite on its own thread: history, hourly trends, the outbox; batched commits.
//! - [`api`]: the local HTTP API, `/health`, `/metrics` and the status page.
//! - [`daemon`]: wires the above together for `modbridge run`, with clean shutdown.
//! - [`notify`]: systemd's readiness, watchdog and status notifications.
//! - [`sim`]: a simulated Modbus device, used by `modbridge demo` and the tests.
//! - [`cli`]: the command line (`run`, `check`, `read`, `probe`, `demo`).

pub mod alarm;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod config_requests;
pub mod daemon;
pub mod decode;
pub mod diag;
pub mod expr;
pub mod gateway;
pub mod ledger;
pub mod logging;
pub mod modbus;
pub mod model;
pub mod mqtt;
pub mod notify;
pub mod plan;
pub mod poll;
pub mod sim;
pub mod snapshot;
pub mod store;
pub mod units;
pub mod uplink_status;
pub mod wire;
