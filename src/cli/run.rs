//! `modbridge run`: the gateway daemon in the foreground.

use std::path::Path;
use std::process::ExitCode;

use super::report_errors;
use crate::daemon;

/// Loads the config and runs the daemon until a termination signal.
pub(super) async fn cmd_run(path: &Path) -> ExitCode {
    // What was deployed from upstream runs instead of the local file.
    let config = match crate::remote::load_for_start(path) {
        Ok(c) => c,
        Err(errors) => return report_errors(path, &errors),
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
