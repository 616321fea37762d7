//! modbridge: a Modbus edge gateway.
//!
//! The modules in the order the data flows through them; each uses only
//! modules above it in this list (no import cycles: `tests/architecture.rs`).
//!
//! Leaves, used everywhere:
//! - [`clock`]: the wall clock, read in one place; aligned instants as pure functions.
//! - [`units`]: durations (`"10s"`) and sizes (`"1GiB"`).
//! - [`diag`]: `Diagnostic`, source positions and the "did you mean" suggesters.
//! - [`expr`]: the trigger language (lexer, parser, AST, printer); knows nothing of config or alarms.
//! - [`netlimit`]: a TCP stream with a connection permit and an idle timeout (API, proxy).
//!
//! The pipeline:
//! - [`model`]: the validated, immutable config types; no I/O.
//! - [`config`]: the TOML file (and device profiles) -> [`model::Config`], or every
//!   problem as `FILE:LINE:COL: message`; the only file I/O of configs.
//! - [`plan`]: pure. Items due together -> the fewest Modbus read requests the device allows.
//! - [`modbus`]: the field side. One link per TCP host, one shared bus per serial port;
//!   every request has a timeout; a failed transport is dropped and rebuilt with backoff.
//! - [`decode`]: pure. Registers <-> engineering values, every type and byte order.
//! - [`store`]: SQLite on its own threads: history, hourly trends, the outbox; batched
//!   commits; queries are `async fn`s answered by reader threads (history limited and
//!   capped while it is read); retention, the `max_size` cap and a full disk; no sample
//!   dropped for its clock.
//! - [`ledger`]: the control tables in the same database (config requests, alarms,
//!   the uplink queue): every statement on them, next to their schema, run on the
//!   ledger's own threads behind `async fn`s.
//! - [`wire`]: every outgoing JSON shape (hosts, items, data, config statuses, events, triggers).
//! - [`config_requests`]: writes of settings: request parsing, value checks, the service, the device side.
//! - [`poll`]: one task per host: schedule (pure), read and narrow exceptions, live state, the task loop.
//! - [`proxy`]: `[[proxy]]`, a Modbus TCP server forwarding through the gateway's own links.
//! - [`scan`]: `modbridge scan`, finding the units (and settings) on a line or TCP endpoint.
//! - [`snapshot`]: the config and live host states a reload replaces, as one value.
//! - [`things`]: the upstream model's Things and Time-series with their stable ids.
//! - [`datasets`]: the config and its profiles as Datasets, with their checksums.
//! - [`alarm`]: trigger evaluation (pure engine), the alarm service and its task.
//! - [`uplink_status`]: the uplink's counters, read by `/health` and `/metrics`.
//! - [`gateway`]: the handles every running part shares; opening and reloading them.
//! - [`remote`]: configs and profiles deployed from upstream: checked, applied, on
//!   probation, rolled back by themselves; kept under `data_dir`.
//!
//! On top:
//! - [`mqtt`]: the uplink and downlink.
//! - [`sparkplug`]: the Sparkplug B uplink (edge node and devices), beside the native one.
//! - [`api`]: the local HTTP API, `/health`, `/metrics` and the status page.
//! - [`notify`]: systemd's readiness, watchdog and status notifications.
//! - [`daemon`]: supervises `modbridge run`: spawns, reloads on SIGHUP, shuts down in order.
//! - [`sim`]: a simulated Modbus device, used by `modbridge demo`, benchmarks and the tests.
//! - [`logging`]: tracing set-up (plain lines with syslog priorities under journald).
//! - [`cli`]: the command line, one file per group of subcommands.

pub mod clock;
pub mod diag;
pub mod expr;
pub mod netlimit;
pub mod units;

pub mod alarm;
pub mod config;
pub mod config_requests;
pub mod datasets;
pub mod decode;
pub mod gateway;
pub mod ledger;
pub mod modbus;
pub mod model;
pub mod plan;
pub mod poll;
pub mod proxy;
pub mod remote;
pub mod scan;
pub mod snapshot;
pub mod store;
pub mod things;
pub mod uplink_status;
pub mod wire;

pub mod api;
pub mod cli;
pub mod daemon;
pub mod logging;
pub mod mqtt;
pub mod notify;
pub mod sim;
pub mod sparkplug;
