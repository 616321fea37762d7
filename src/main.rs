//! The `modbridge` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    one_malloc_arena();
    let cli = match modbridge::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout (exit 0) and usage errors to stderr (exit 2).
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    modbridge::logging::init();
    modbridge::cli::main(cli)
}

/// One malloc arena for every thread, unless `MALLOC_ARENA_MAX` says
/// otherwise. glibc gives each thread that allocates an arena of its own
/// (up to 8 per core); the SQLite threads' arenas each kept their own free
/// memory, 3-4 MiB of the daemon's resident memory at 100 hosts
/// (`cargo bench --bench gateway -- --smaps`). The threads allocate little
/// and seldom at the same time, so sharing one costs no measurable time.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called first thing in `main`, before any other thread
        // exists; mallopt only sets an allocator parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
