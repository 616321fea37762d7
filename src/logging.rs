//! Structured logs: human readable on a terminal, plain lines for journald.

use tracing_subscriber::EnvFilter;

/// Sets up logging to stderr. `RUST_LOG` overrides the default level (`info`).
/// Under systemd (`JOURNAL_STREAM` set) timestamps and colours are left out,
/// since journald adds its own.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if under_journald {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.try_init()
    };
    let _ = result;
}
