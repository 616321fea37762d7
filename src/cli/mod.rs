//! The command line: `run`, `check`, `read`, `probe`, `scan`, `write`, `ack`, `demo`, `simulate`.
//!
//! Exit status: 0 success, 2 bad config or bad usage, 1 anything else.

//! The clap definitions and the dispatch live here; each group of subcommands
//! has its own file: `run` ([`run`]), `check` ([`check`]), `read` and `probe`
//! on the field bus ([`field`]), `scan` ([`scan`]), `write` and `ack` through the running
//! gateway's API ([`remote`]), and `demo`/`simulate` ([`demo`]).

mod check;
mod demo;
#[cfg(feature = "demo-broker")]
mod demo_broker;
mod field;
mod remote;
mod run;
mod scan;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;
use crate::config::DEFAULT_PATH;

pub use check::check_report;
pub use demo::{DEMO_CONFIG, DEMO_PROFILE};
pub use field::{read_table, ProbeArgs};
pub use scan::ScanArgs;

/// modbridge: a Modbus edge gateway.
#[derive(Debug, Parser)]
#[command(name = "modbridge", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon.
    Run {
        /// Config file.
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate the config without touching devices; print hosts, items and the
    /// planned Modbus requests per poll cycle.
    Check {
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Poll one host (or one item) now and print the values, for wiring checks.
    Read {
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// The host id.
        #[arg(long)]
        host: String,
        /// Only this item.
        #[arg(long)]
        key: Option<String>,
    },
    /// Read raw registers and show every plausible decoding side by side.
    Probe(ProbeArgs),
    /// Find the devices on a serial line (each baud rate, parity and unit) or
    /// behind a TCP endpoint (each unit).
    Scan(ScanArgs),
    /// Ask the running gateway (through its HTTP API) to write a value to a
    /// configurable item, and wait for the device's answer.
    Write {
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// The host id.
        #[arg(long)]
        host: String,
        /// The item's key.
        #[arg(long)]
        key: String,
        /// The value to write, in engineering units.
        #[arg(long, allow_negative_numbers = true)]
        target: f64,
        /// Write only if the device holds this value now.
        #[arg(long, allow_negative_numbers = true)]
        expected: Option<f64>,
        /// An id of yours, echoed in the item's config.
        #[arg(long)]
        id: Option<String>,
        /// How long to wait for the outcome ("0s": only submit).
        #[arg(long, default_value = "15s")]
        wait: String,
    },
    /// Acknowledge an alarm event on the running gateway (through its HTTP API).
    Ack {
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
        /// The event's id.
        #[arg(long)]
        event: u64,
        /// What was done.
        #[arg(long)]
        message: String,
    },
    /// A self-contained demo: a simulated heat pump on loopback, polled by the gateway.
    Demo {
        /// Stop after this long (e.g. "30s"); default: run until Ctrl-C.
        #[arg(long)]
        duration: Option<String>,
        /// Where the demo keeps its config and database.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Serve simulated devices for benchmarks: DEVICES TCP devices on
    /// consecutive ports, each with REGISTERS holding registers that change every second.
    Simulate {
        #[arg(long, default_value_t = 10)]
        devices: u16,
        #[arg(long, default_value_t = 15020)]
        base_port: u16,
        #[arg(long, default_value_t = 100)]
        registers: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
    },
}

/// Runs a parsed command line.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("modbridge: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Run { config } => runtime.block_on(run::cmd_run(&config)),
        Command::Check { config } => check::cmd_check(&config),
        Command::Read { config, host, key } => {
            runtime.block_on(field::cmd_read(&config, &host, key.as_deref()))
        }
        Command::Probe(args) => runtime.block_on(field::cmd_probe(args)),
        Command::Scan(args) => runtime.block_on(scan::cmd_scan(args)),
        Command::Write {
            config,
            host,
            key,
            target,
            expected,
            id,
            wait,
        } => runtime.block_on(remote::cmd_write(remote::WriteArgs {
            config,
            host,
            key,
            target,
            expected,
            id,
            wait,
        })),
        Command::Ack {
            config,
            event,
            message,
        } => runtime.block_on(remote::cmd_ack(&config, event, &message)),
        Command::Demo { duration, dir } => runtime.block_on(demo::cmd_demo(duration, dir)),
        Command::Simulate {
            devices,
            base_port,
            registers,
            bind,
        } => runtime.block_on(demo::cmd_simulate(devices, base_port, registers, &bind)),
    }
}

/// Loads the config at `path`, or prints its problems and gives exit status 2.
pub(crate) fn load_or_report(path: &Path) -> Result<crate::model::Config, ExitCode> {
    config::load(path).map_err(|errors| report_errors(path, &errors))
}

/// Prints every problem of the config at `path`; exit status 2.
pub(crate) fn report_errors(path: &Path, errors: &config::ConfigErrors) -> ExitCode {
    let prefix = crate::logging::error_prefix();
    for d in &errors.0 {
        eprintln!("{prefix}{d}");
    }
    eprintln!(
        "{prefix}{}: {} problem{} found",
        path.display(),
        errors.0.len(),
        if errors.0.len() == 1 { "" } else { "s" }
    );
    ExitCode::from(2)
}

/// The plural ending for `n` things: "" for one, "s" otherwise.
pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// A value as people read it: integers without a fraction, others with up to 6 digits.
pub fn format_for_people(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}
