//! `modbridge run`: the gateway daemon in the foreground.

use std::path::Path;
use std::process::ExitCode;

use super::load_or_report;
use crate::daemon;

/// Loads the config and runs the daemon until a termination signal.
pub(super) async fn cmd_run(path: &Path) -> ExitCode {
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match daemon::run(config, daemon::termination_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway stopped with an error");
            eprintln!("{}modbridge: {e}", crate::logging::error_prefix());
            ExitCode::from(1)
        }
    }
}
