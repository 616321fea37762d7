//! `modbridge check`: validate the config and print what the gateway would poll.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use super::{load_or_report, plural};
use crate::model::{Connection, Pacing};
use crate::plan;
use crate::units::format_duration;

/// The text `check` prints for a valid config.
pub fn check_report(config: &crate::model::Config) -> String {
    let mut out = String::new();
    let items: usize = config.hosts.iter().map(|h| h.items.len()).sum();
    let _ = writeln!(
        out,
        "{}: OK — gateway {:?}, {} host{}, {} item{}, {} trigger{}",
        config.path.display(),
        config.gateway.id,
        config.hosts.len(),
        plural(config.hosts.len()),
        items,
        plural(items),
        config.triggers.len(),
        plural(config.triggers.len()),
    );
    for host in &config.hosts {
        let _ = writeln!(out);
        let link = match (&host.connection, &host.serial) {
            (Connection::Rtu { .. }, Some(s)) => format!(
                "{} {} baud {}{}{}",
                host.connection,
                s.baud,
                s.data_bits,
                s.parity
                    .name()
                    .chars()
                    .next()
                    .unwrap_or('n')
                    .to_ascii_uppercase(),
                s.stop_bits
            ),
            _ => host.connection.to_string(),
        };
        let _ = writeln!(
            out,
            "host {} ({:?}) {} unit {}, model {}, {} item{}{}",
            host.host,
            host.name,
            link,
            host.unit,
            host.model,
            host.items.len(),
            plural(host.items.len()),
            describe_pacing(&host.pacing)
        );
        for item in &host.items {
            let place = match item.bit {
                Some(b) => format!("{} {}.{}", item.table, item.address, b),
                None => format!("{} {}", item.table, item.address),
            };
            let mut extra = String::new();
            if item.scale != 1.0 || item.offset != 0.0 {
                let _ = write!(extra, " x{} {:+}", item.scale, item.offset);
            }
            if item.value_type.registers() > 1 && !item.table.is_bits() {
                let _ = write!(extra, " {}", item.byte_order);
            }
            if item.configurable {
                extra.push_str(" configurable");
            }
            let _ = writeln!(
                out,
                "  item {} {:?} {} {}{} [{}] every {}",
                item.key,
                item.name(),
                place,
                item.value_type,
                extra,
                item.unit(),
                format_duration(item.poll_interval)
            );
        }
        let groups = plan::plan_host(host);
        let total: usize = groups.iter().map(|g| g.requests.len()).sum();
        let _ = writeln!(out, "  requests per cycle ({total} in all):");
        for group in &groups {
            for req in &group.requests {
                let _ = writeln!(out, "  {}", plan::describe(host, req, group.interval));
            }
        }
    }
    for proxy in &config.proxies {
        let _ = writeln!(out);
        let units = match &proxy.units {
            Some(u) => u.iter().map(u8::to_string).collect::<Vec<_>>().join(","),
            None => "any".to_string(),
        };
        let _ = writeln!(
            out,
            "proxy {} -> {}, units {units}, writes {}, timeout {}",
            proxy.listen,
            proxy.connection,
            if proxy.writes { "forwarded" } else { "refused" },
            crate::units::format_duration(proxy.timeout)
        );
    }
    if let Some(w) = size_warning(config) {
        let _ = writeln!(out, "\n{w}");
    }
    out
}

/// `, 20ms between requests, 1s after connect`, or nothing without pacing.
fn describe_pacing(pacing: &Pacing) -> String {
    let mut out = String::new();
    if !pacing.between_requests.is_zero() {
        let _ = write!(
            out,
            ", {} between requests",
            format_duration(pacing.between_requests)
        );
    }
    if !pacing.after_connect.is_zero() {
        let _ = write!(
            out,
            ", {} after connect",
            format_duration(pacing.after_connect)
        );
    }
    out
}

/// A `warning:` line when the items at their poll intervals and retentions
/// would need more than `max_size`.
fn size_warning(config: &crate::model::Config) -> Option<String> {
    let need = crate::store::SizeEstimate::of(config);
    let max = config.storage.max_size;
    (need.total() > max).then(|| {
        use crate::units::format_size;
        format!(
            "warning: the items at their poll intervals and retentions need about {} \
             (history {}, trends {}), more than max_size = {}: the oldest data will be \
             deleted to stay under it (raise max_size, or shorten history_retention or trend_retention)",
            format_size(need.total()),
            format_size(need.history),
            format_size(need.trends),
            format_size(max)
        )
    })
}

/// Prints the check report, or the config's problems (exit status 2).
pub(super) fn cmd_check(path: &Path) -> ExitCode {
    match load_or_report(path) {
        Ok(config) => {
            print!("{}", check_report(&config));
            if let Some(note) = crate::remote::deployed_note(&config) {
                println!("{note}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
