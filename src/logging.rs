//! Structured logs: human readable on a terminal, plain lines for journald.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Sets up logging to stderr. `RUST_LOG` overrides the default level (`info`;
/// `warn` for the demo's embedded MQTT broker, which logs every connection).
///
/// When stderr is connected to the journal (systemd sets `JOURNAL_STREAM` to
/// the device and inode of that stream; a child whose stderr was redirected
/// inherits the variable but not the stream, so both are compared),
/// timestamps and colours are left out, since journald adds its own, and each
/// line starts with its syslog priority (`<3>` error, `<4>` warning, `<6>`
/// info, `<7>` debug), which journald strips and records, so that
/// `journalctl -u modbridge -p warning` shows only what needs attention.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rumqttd=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if *UNDER_JOURNALD.get_or_init(stderr_is_journal) {
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_target(false)
            .with_ansi(false);
        builder
            .with_ansi(false)
            .event_format(PriorityPrefix(format))
            .try_init()
    } else {
        builder.try_init()
    };
    let _ = result;
}

static UNDER_JOURNALD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// What a line written to stderr without `tracing` (such as a config
/// diagnostic) starts with so that journald files it as an error: `<3>`
/// under journald, nothing on a terminal.
pub fn error_prefix() -> &'static str {
    if *UNDER_JOURNALD.get_or_init(stderr_is_journal) {
        "<3>"
    } else {
        ""
    }
}

/// The syslog priority journald reads from a `<N>` line prefix.
pub fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Wraps an event format with the `<N>` priority prefix.
struct PriorityPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for PriorityPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// True when `$JOURNAL_STREAM` names the stream stderr is connected to.
fn stderr_is_journal() -> bool {
    match std::env::var("JOURNAL_STREAM") {
        Ok(value) => journal_stream_matches(&value, stderr_identity()),
        Err(_) => false,
    }
}

/// Whether a `$JOURNAL_STREAM` value (`DEVICE:INODE`) names the stream with
/// this (device, inode).
pub fn journal_stream_matches(value: &str, stream: Option<(u64, u64)>) -> bool {
    let Some((device, inode)) = value.trim().split_once(':') else {
        return false;
    };
    match (device.parse::<u64>(), inode.parse::<u64>(), stream) {
        (Ok(d), Ok(i), Some(s)) => (d, i) == s,
        _ => false,
    }
}

/// The (device, inode) of stderr.
#[cfg(unix)]
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let metadata = std::fs::File::from(fd).metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

#[cfg(not(unix))]
fn stderr_identity() -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_the_stream() {
        assert!(journal_stream_matches("8:12345", Some((8, 12345))));
        assert!(journal_stream_matches("8:12345\n", Some((8, 12345))));
        assert!(!journal_stream_matches("8:12345", Some((8, 12346))));
        assert!(!journal_stream_matches("8:12345", None));
        assert!(!journal_stream_matches("", Some((8, 12345))));
        assert!(!journal_stream_matches("8-12345", Some((8, 12345))));
        assert!(!journal_stream_matches("x:1", Some((8, 1))));
    }

    #[test]
    fn priorities_follow_syslog() {
        assert_eq!(syslog_priority(Level::ERROR), 3);
        assert_eq!(syslog_priority(Level::WARN), 4);
        assert_eq!(syslog_priority(Level::INFO), 6);
        assert_eq!(syslog_priority(Level::DEBUG), 7);
        assert_eq!(syslog_priority(Level::TRACE), 7);
    }
}
