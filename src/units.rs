//! Durations (`"500ms"`, `"10s"`, `"5m"`, `"24h"`, `"30d"`) and sizes (`"512MiB"`).

use std::time::Duration;

/// Parses a duration such as `500ms`, `10s`, `5m`, `24h`, `30d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let _ = s;
    Err("not yet".into())
}

/// Parses a size such as `512MiB`, `1GiB`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let _ = s;
    Err("not yet".into())
}

/// Formats a duration compactly, as the config file writes it: `500ms`, `10s`, `5m`, `2h`, `1d`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if s % size == 0 {
            return format!("{}{unit}", s / size);
        }
    }
    format!("{s}s")
}
