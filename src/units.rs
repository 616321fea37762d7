//! Durations (`"500ms"`, `"10s"`, `"5m"`, `"24h"`, `"30d"`) and sizes (`"512MiB"`).
//!
//! Both take an unsigned decimal integer followed directly by a unit, without
//! spaces. The error texts are complete sentences fit for a config diagnostic.

use std::time::Duration;

/// Duration units and how many milliseconds each is.
const DURATION_UNITS: [(&str, u64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Size units and how many bytes each is.
const SIZE_UNITS: [(&str, u64); 9] = [
    ("B", 1),
    ("kB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// Splits `"500ms"` into `("500", "ms")`: the leading ASCII digits and the rest.
fn split_number(s: &str) -> (&str, &str) {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    s.split_at(digits)
}

fn unit_list(units: &[(&str, u64)]) -> String {
    units
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a duration such as `500ms`, `10s`, `5m`, `24h`, `30d`: a whole
/// number followed by one of the units `ms`, `s`, `m`, `h`, `d`.
///
/// Zero (`"0s"`) is accepted here; callers that need a positive duration check it.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let units = unit_list(&DURATION_UNITS);
    if s.is_empty() {
        return Err(format!(
            "an empty string is not a duration; write e.g. \"10s\" (units: {units})"
        ));
    }
    if s.starts_with('-') {
        return Err(format!("duration {s:?} must not be negative"));
    }
    let (number, unit) = split_number(s);
    if number.is_empty() {
        return Err(format!(
            "{s:?} is not a duration; write a whole number and a unit, e.g. \"10s\" (units: {units})"
        ));
    }
    if unit.is_empty() {
        return Err(format!(
            "duration {s:?} has no unit; write e.g. \"{number}s\" (units: {units})"
        ));
    }
    let Some((_, millis_per_unit)) = DURATION_UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(format!(
            "duration {s:?} has an unknown unit {unit:?}; use one of {units}"
        ));
    };
    let too_long = || format!("duration {s:?} is too long");
    let count: u64 = number.parse().map_err(|_| too_long())?;
    let millis = count.checked_mul(*millis_per_unit).ok_or_else(too_long)?;
    Ok(Duration::from_millis(millis))
}

/// Parses a size such as `512MiB`, `1GiB`, `100MB` or `4096` (bytes): a whole
/// number, optionally followed by one of `B`, `kB`, `MB`, `GB`, `TB`, `KiB`,
/// `MiB`, `GiB`, `TiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let units = unit_list(&SIZE_UNITS);
    if s.is_empty() {
        return Err(format!(
            "an empty string is not a size; write e.g. \"512MiB\" (units: {units})"
        ));
    }
    if s.starts_with('-') {
        return Err(format!("size {s:?} must not be negative"));
    }
    let (number, unit) = split_number(s);
    if number.is_empty() {
        return Err(format!(
            "{s:?} is not a size; write a whole number and a unit, e.g. \"512MiB\" (units: {units})"
        ));
    }
    let bytes_per_unit = if unit.is_empty() {
        1
    } else {
        match SIZE_UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, bytes)) => *bytes,
            None => {
                return Err(format!(
                    "size {s:?} has an unknown unit {unit:?}; use one of {units}"
                ))
            }
        }
    };
    let too_large = || format!("size {s:?} is too large");
    let count: u64 = number.parse().map_err(|_| too_large())?;
    count.checked_mul(bytes_per_unit).ok_or_else(too_large)
}

/// Formats a duration the way the config file writes it, in the largest unit
/// that represents it exactly (`90s`, `5m`, `1500ms`).
pub fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    for (name, per) in DURATION_UNITS.iter().rev() {
        let per = u128::from(*per);
        if millis != 0 && millis % per == 0 {
            return format!("{}{name}", millis / per);
        }
    }
    format!("{millis}ms")
}

/// Formats a byte count for people, in binary units with one decimal
/// (`1.5 GiB`, `820.0 KiB`, `512 B`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn durations() {
        let good = [
            ("0s", 0),
            ("500ms", 500),
            ("10s", 10_000),
            ("5m", 300_000),
            ("24h", 86_400_000),
            ("30d", 2_592_000_000),
            ("007s", 7_000),
        ];
        for (text, millis) in good {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(millis)),
                "{text}"
            );
        }
        let bad = [
            ("", "empty"),
            ("-5s", "negative"),
            ("10", "no unit"),
            ("s", "not a duration"),
            ("10 s", "unknown unit"),
            ("10sec", "unknown unit"),
            ("1.5s", "unknown unit"),
            ("10S", "unknown unit"),
            ("99999999999999999999s", "too long"),
            ("9999999999999999d", "too long"),
        ];
        for (text, expected) in bad {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn sizes() {
        let good = [
            ("4096", 4096),
            ("0", 0),
            ("10B", 10),
            ("2kB", 2_000),
            ("100MB", 100_000_000),
            ("3GB", 3_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("4KiB", 4096),
            ("512MiB", 512 << 20),
            ("1GiB", 1 << 30),
            ("2TiB", 2 << 40),
        ];
        for (text, bytes) in good {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        let bad = [
            ("", "empty"),
            ("-1MiB", "negative"),
            ("MiB", "not a size"),
            ("1 GiB", "unknown unit"),
            ("1gib", "unknown unit"),
            ("1.5GiB", "unknown unit"),
            ("99999999999999999999", "too large"),
            ("20000000TiB", "too large"),
        ];
        for (text, expected) in bad {
            let err = parse_size(text).expect_err(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }

    #[test]
    fn formatting_durations() {
        let cases = [
            (0, "0ms"),
            (1_500, "1500ms"),
            (90_000, "90s"),
            (300_000, "5m"),
            (86_400_000, "1d"),
        ];
        for (millis, text) in cases {
            assert_eq!(format_duration(Duration::from_millis(millis)), text);
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(millis)));
        }
    }
}
