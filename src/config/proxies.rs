//! `[[proxy]]`: Modbus TCP servers that forward through the gateway's links.

use std::net::SocketAddr;
use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::hosts::{describe_serial, read_connection, read_serial};
use super::source::{integer_value, type_with_article, Report, Section, Source};
use crate::model::{ApiSpec, HostSpec, ProxySpec};

/// Keys of `[[proxy]]`.
pub(super) const PROXY_KEYS: [&str; 9] = [
    "listen",
    "connection",
    "units",
    "writes",
    "timeout",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
];

/// The per-request timeout when neither the proxy nor a host on its link sets one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads every `[[proxy]]` table; `hosts` give the defaults and the serial
/// settings a proxy's line must agree with.
pub(super) fn read_proxies(
    src: &Source,
    value: &Spanned<DeValue<'_>>,
    hosts: &[HostSpec],
    api: &ApiSpec,
    report: &mut Report,
) -> Vec<ProxySpec> {
    let Some(list) = super::array_of_tables(src, value, "proxy", report) else {
        return Vec::new();
    };
    let mut proxies: Vec<ProxySpec> = Vec::new();
    for (index, element) in list.iter().enumerate() {
        let context = format!("proxy[{}]: ", index + 1);
        let Some(section) = Section::of(src, element, "[[proxy]]", context, report) else {
            continue;
        };
        section.check_keys(report, "[[proxy]]", &PROXY_KEYS);
        if let Some(proxy) = read_proxy(&section, hosts, report) {
            let pos = section.value_pos("listen").unwrap_or(section.pos.clone());
            if proxies.iter().any(|p| p.listen == proxy.listen) || api.listen == proxy.listen {
                section.error_at(
                    report,
                    &pos,
                    &format!(
                        "listen {} is already taken by another [[proxy]] or the [api]",
                        proxy.listen
                    ),
                );
            }
            proxies.push(proxy);
        }
    }
    proxies
}

fn read_proxy(
    section: &Section<'_, '_>,
    hosts: &[HostSpec],
    report: &mut Report,
) -> Option<ProxySpec> {
    let listen = match section.string(report, "listen") {
        Some(l) => match l.value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                section.error_at(
                    report,
                    &l.pos,
                    &format!(
                        "listen \"{}\" must be an IP address and port, e.g. \"0.0.0.0:5020\"",
                        l.value
                    ),
                );
                None
            }
        },
        None => {
            if section.raw("listen").is_none() {
                section.missing(
                    report,
                    "listen",
                    "[[proxy]]",
                    " (e.g. listen = \"0.0.0.0:5020\")",
                );
            }
            None
        }
    };
    let connection = read_connection(
        section,
        report,
        "[[proxy]]",
        " (the serial line or TCP device to forward to, e.g. \"rtu:///dev/ttyUSB0\")",
    );
    let units = read_units(section, report);
    let writes = section
        .boolean(report, "writes")
        .map(|b| b.value)
        .unwrap_or(false);
    let timeout = section.duration(report, "timeout", false).map(|d| d.value);
    let serial = read_serial(section, "proxy", connection.as_ref(), report);
    let (listen, connection) = (listen?, connection?);
    let on_link: Vec<&HostSpec> = hosts
        .iter()
        .filter(|h| h.connection == connection)
        .collect();
    let line = on_link.iter().find_map(|h| h.serial.map(|s| (h, s)));
    // Without serial keys of its own, a proxy takes the settings of the line's hosts.
    let serial = match (serial, line) {
        (Some(mine), Some((host, theirs))) if mine != theirs => {
            if has_serial_keys(section) {
                let pos = section
                    .value_pos("connection")
                    .unwrap_or(section.pos.clone());
                section.error_at(
                    report,
                    &pos,
                    &format!(
                        "serial port {connection} is used by host \"{}\" at {}; this proxy sets {}. A proxy on a line must use the hosts' settings",
                        host.host,
                        describe_serial(&theirs),
                        describe_serial(&mine)
                    ),
                );
            }
            Some(theirs)
        }
        (mine, _) => mine,
    };
    Some(ProxySpec {
        listen,
        timeout: timeout
            .or(on_link.first().map(|h| h.timeout))
            .unwrap_or(DEFAULT_TIMEOUT),
        connection,
        serial,
        units,
        writes,
    })
}

fn has_serial_keys(section: &Section<'_, '_>) -> bool {
    super::hosts::SERIAL_KEYS
        .iter()
        .any(|k| section.key_pos(k).is_some())
}

/// `units = [3, 7]`: unit ids 0..255.
fn read_units(section: &Section<'_, '_>, report: &mut Report) -> Option<Vec<u8>> {
    let v = section.raw("units")?;
    let pos = section.src.pos(v.span().start);
    let DeValue::Array(array) = v.get_ref() else {
        section.error_at(
            report,
            &pos,
            &format!(
                "units must be an array of unit ids, e.g. [3, 7], not {}",
                type_with_article(v.get_ref())
            ),
        );
        return None;
    };
    let mut units = Vec::new();
    for element in array.iter() {
        let at = section.src.pos(element.span().start);
        match integer_value(element.get_ref()).and_then(|n| u8::try_from(n).ok()) {
            Some(u) if !units.contains(&u) => units.push(u),
            Some(u) => section.error_at(report, &at, &format!("unit {u} is listed twice")),
            None => section.error_at(report, &at, "units must be whole numbers from 0 to 255"),
        }
    }
    if units.is_empty() {
        section.error_at(
            report,
            &pos,
            "units is empty; leave it out to forward every unit",
        );
    }
    Some(units)
}
