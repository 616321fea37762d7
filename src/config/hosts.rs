//! `[[hosts]]`, their `[[hosts.items]]`, the device profiles they name, and
//! the checks across items and hosts (duplicate keys, overlaps, shared serial ports).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use toml::de::DeValue;
use toml::Spanned;

use super::source::{is_name, At, Report, Section, Source};
use super::things::{read_thing_ref, read_uuid, UpstreamRefs};
use super::{array_of_tables, parse_document};
use crate::diag::did_you_mean;
use crate::model::{
    default_key, ByteOrder, Connection, DatasetSource, HostSpec, ItemExtra, ItemSpec, ItemUpstream,
    Pacing, Parity, SerialSettings, SourcePos, Table, Uuid, ValueType, LOCAL_ORIGIN,
};
use crate::units::format_duration;

/// Keys of `[[hosts]]`.
pub(super) const HOST_KEYS: [&str; 24] = [
    "host",
    "name",
    "connection",
    "unit",
    "model",
    "poll_interval",
    "timeout",
    "retries",
    "max_read_registers",
    "max_gap",
    "byte_order",
    "type",
    "tags",
    "profile",
    "write_expiry",
    "delay_between_requests",
    "delay_after_connect",
    "uuid",
    "thing",
    "baud",
    "parity",
    "data_bits",
    "stop_bits",
    "items",
];

/// The `connection` URL of a `[[hosts]]` or `[[proxy]]` section (`table`);
/// missing: an error whose hint is `example`.
pub(super) fn read_connection(
    section: &Section<'_, '_>,
    report: &mut Report,
    table: &str,
    example: &str,
) -> Option<Connection> {
    match section.string(report, "connection") {
        Some(c) => match Connection::parse(&c.value) {
            Ok(connection) => Some(connection),
            Err(e) => {
                section.error_at(report, &c.pos, &e);
                None
            }
        },
        None => {
            if section.raw("connection").is_none() {
                section.missing(report, "connection", table, example);
            }
            None
        }
    }
}

/// The serial line settings among [`HOST_KEYS`].
pub(super) const SERIAL_KEYS: [&str; 4] = ["baud", "parity", "data_bits", "stop_bits"];

/// Keys of `[[hosts.items]]` and of a profile's `[[items]]`.
pub(super) const ITEM_KEYS: [&str; 20] = [
    "name",
    "table",
    "address",
    "type",
    "bit",
    "scale",
    "offset",
    "unit",
    "key",
    "byte_order",
    "poll_interval",
    "deadband",
    "heartbeat",
    "lower_bound",
    "upper_bound",
    "configurable",
    "tags",
    "uuid",
    "thing",
    "si_unit",
];

/// Top-level keys of a profile file.
pub(super) const PROFILE_KEYS: [&str; 8] = [
    "model",
    "type",
    "byte_order",
    "max_read_registers",
    "max_gap",
    "poll_interval",
    "timeout",
    "items",
];

const TABLE_NAMES: [&str; 4] = ["holding", "input", "coil", "discrete"];
const TYPE_NAMES: [&str; 9] = [
    "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bool",
];
const BYTE_ORDER_NAMES: [&str; 4] = ["ABCD", "DCBA", "BADC", "CDAB"];
const PARITY_NAMES: [&str; 3] = ["none", "even", "odd"];

/// Host defaults.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_WRITE_EXPIRY: Duration = Duration::from_secs(600);
const DEFAULT_MAX_GAP: u16 = 8;
const DEFAULT_MODEL: &str = "generic";

/// An item as written, before the host's defaults are applied.
#[derive(Debug, Clone)]
struct ItemDraft {
    /// The item's table header.
    pos: SourcePos,
    name: Option<String>,
    table: Table,
    address: At<u16>,
    value_type: ValueType,
    bit: Option<u8>,
    byte_order: Option<ByteOrder>,
    scale: f64,
    offset: f64,
    unit: String,
    key: Option<At<String>>,
    poll_interval: Option<Duration>,
    deadband: Option<f64>,
    heartbeat: Option<At<Duration>>,
    lower_bound: Option<f64>,
    upper_bound: Option<f64>,
    configurable: bool,
    tags: Vec<String>,
    uuid: Option<At<Uuid>>,
    thing: Option<At<String>>,
    si_unit: Option<String>,
}

/// What reading the hosts collects besides the hosts.
pub(crate) struct HostsContext<'a> {
    /// `thing` and `uuid` keys, checked once the whole file is read.
    pub(crate) refs: UpstreamRefs,
    /// The profile files used, in the order first named.
    pub(crate) profiles: Vec<DatasetSource>,
    /// Directories searched for profiles, first match wins; empty: the
    /// config file's own directory.
    pub(crate) profile_dirs: &'a [PathBuf],
}

/// A device profile file, read and checked once however many hosts use it.
#[derive(Debug, Default)]
struct Profile {
    model: Option<String>,
    kind: Option<String>,
    byte_order: Option<ByteOrder>,
    max_read_registers: Option<u16>,
    max_gap: Option<u16>,
    poll_interval: Option<Duration>,
    timeout: Option<Duration>,
    items: Vec<ItemDraft>,
    /// The exact text read, and when the file was last modified.
    text: std::sync::Arc<str>,
    modified: i64,
}

/// What became of a profile file.
enum ProfileState {
    Loaded(Rc<Profile>),
    /// Could not be read; reported at every host's `profile` value.
    Unreadable(String),
    /// Has problems of its own, already reported in the profile file.
    Invalid,
}

/// Where the parts of a host that cross-host checks talk about were written.
struct HostPlace {
    /// `hosts[2] "boiler"`
    label: String,
    host_pos: SourcePos,
    unit_pos: SourcePos,
    /// The first serial key, or the connection.
    serial_pos: SourcePos,
}

/// Reads every `[[hosts]]` and checks them against each other.
pub(crate) fn read_hosts(
    src: &Source,
    value: &Spanned<DeValue<'_>>,
    ctx: &mut HostsContext<'_>,
    report: &mut Report,
) -> Vec<HostSpec> {
    let Some(list) = array_of_tables(src, value, "hosts", report) else {
        return Vec::new();
    };
    let mut profiles: HashMap<PathBuf, ProfileState> = HashMap::new();
    let mut hosts = Vec::new();
    let mut places = Vec::new();
    for (index, element) in list.iter().enumerate() {
        if let Some((host, place)) = read_host(src, element, index, &mut profiles, ctx, report) {
            hosts.push(host);
            places.push(place);
        }
    }
    check_hosts(&hosts, &places, report);
    hosts
}

/// `line 12` when `pos` is in `file`, else `profiles/x.toml:12`.
fn place_name(pos: &SourcePos, file: &Path) -> String {
    if pos.file == file {
        format!("line {}", pos.line)
    } else {
        format!("{}:{}", pos.file.display(), pos.line)
    }
}

/// Reads one `[[hosts]]`; None if it is not a table at all.
fn read_host(
    src: &Source,
    element: &Spanned<DeValue<'_>>,
    index: usize,
    profiles: &mut HashMap<PathBuf, ProfileState>,
    ctx: &mut HostsContext<'_>,
    report: &mut Report,
) -> Option<(HostSpec, HostPlace)> {
    let number = index + 1;
    let table = element.get_ref().as_table();
    let id = table
        .and_then(|t| t.get("host"))
        .and_then(|v| v.get_ref().as_str())
        .unwrap_or("");
    let label = if id.is_empty() {
        format!("hosts[{number}]")
    } else {
        format!("hosts[{number}] \"{id}\"")
    };
    let section = Section::of(src, element, "[[hosts]]", format!("{label}: "), report)?;
    section.check_keys_elsewhere(
        report,
        "[[hosts]]",
        &HOST_KEYS,
        &ITEM_KEYS,
        "[[hosts.items]] (one block per item)",
    );

    let host = match section.string(report, "host") {
        Some(h) if is_name(&h.value, "_.-", 64) => h.value,
        Some(h) => {
            section.error_at(
                report,
                &h.pos,
                &format!(
                    "host \"{}\" must be 1 to 64 characters from A-Z a-z 0-9 _ . - (it is part of item keys and MQTT topics)",
                    h.value
                ),
            );
            String::new()
        }
        None => {
            if section.raw("host").is_none() {
                section.missing(
                    report,
                    "host",
                    "[[hosts]]",
                    " (a unique short id such as host = \"pump\")",
                );
            }
            String::new()
        }
    };
    let host_pos = section
        .value_pos("host")
        .unwrap_or_else(|| section.pos.clone());

    let profile = read_profile_reference(&section, profiles, ctx, report);
    let profile = profile.as_deref();

    let connection = read_connection(
        &section,
        report,
        "[[hosts]]",
        " (e.g. connection = \"tcp://10.0.0.21:502\" or \"rtu:///dev/ttyUSB0\")",
    );
    let connection_pos = section
        .value_pos("connection")
        .unwrap_or_else(|| section.pos.clone());

    let unit = section
        .integer(report, "unit", 0, 255)
        .map(|u| u8::try_from(u.value).unwrap_or(1))
        .unwrap_or(1);
    let unit_pos = section
        .value_pos("unit")
        .unwrap_or_else(|| connection_pos.clone());

    let model = match section.nonempty_string(report, "model") {
        Some(m) if is_name(&m.value, "_.:-", 64) => m.value,
        Some(m) => {
            section.error_at(
                report,
                &m.pos,
                &format!(
                    "model \"{}\" must be 1 to 64 characters from A-Z a-z 0-9 _ . : - (it is part of the default item keys)",
                    m.value
                ),
            );
            DEFAULT_MODEL.to_string()
        }
        None => profile
            .and_then(|p| p.model.clone())
            .unwrap_or_else(|| DEFAULT_MODEL.to_string()),
    };
    let poll_interval = section
        .duration(report, "poll_interval", false)
        .map(|d| d.value)
        .or(profile.and_then(|p| p.poll_interval))
        .unwrap_or(DEFAULT_POLL_INTERVAL);
    let timeout = section
        .duration(report, "timeout", false)
        .map(|d| d.value)
        .or(profile.and_then(|p| p.timeout))
        .unwrap_or(DEFAULT_TIMEOUT);
    let retries = section
        .integer(report, "retries", 0, 10)
        .map(|r| u32::try_from(r.value).unwrap_or(1))
        .unwrap_or(1);
    let max_read_registers = section
        .integer(report, "max_read_registers", 1, 125)
        .map(|m| u16::try_from(m.value).unwrap_or(125))
        .or(profile.and_then(|p| p.max_read_registers))
        .unwrap_or(125);
    let max_gap = section
        .integer(report, "max_gap", 0, 125)
        .map(|m| u16::try_from(m.value).unwrap_or(DEFAULT_MAX_GAP))
        .or(profile.and_then(|p| p.max_gap))
        .unwrap_or(DEFAULT_MAX_GAP);
    let byte_order = read_byte_order(&section, report)
        .or(profile.and_then(|p| p.byte_order))
        .unwrap_or_default();
    let kind = section
        .nonempty_string(report, "type")
        .map(|t| t.value)
        .or(profile.and_then(|p| p.kind.clone()));
    let tags = section.strings(report, "tags").unwrap_or_default();
    let write_expiry = section
        .duration(report, "write_expiry", false)
        .map(|d| d.value)
        .unwrap_or(DEFAULT_WRITE_EXPIRY);
    let pacing = read_pacing(&section, connection.as_ref(), report);
    let name = section
        .nonempty_string(report, "name")
        .map(|n| n.value)
        .unwrap_or_else(|| host.clone());
    let who = format!("host \"{host}\"");
    let uuid = read_uuid(&section, report);
    if let Some(u) = &uuid {
        ctx.refs.uuids.push((u.clone(), who.clone()));
    }
    let thing = read_thing_ref(&section, &who, &mut ctx.refs, report);

    let serial = read_serial(&section, "host", connection.as_ref(), report);
    let serial_pos = SERIAL_KEYS
        .iter()
        .filter_map(|k| section.key_pos(k))
        .min_by_key(|p| (p.line, p.col))
        .unwrap_or_else(|| connection_pos.clone());

    // Items: the profile's first, then the host's own.
    let mut drafts: Vec<ItemDraft> = profile.map(|p| p.items.clone()).unwrap_or_default();
    if let Some(items) = section.raw("items") {
        if let Some(list) = array_of_tables(src, items, "hosts.items", report) {
            for (item_index, element) in list.iter().enumerate() {
                let context = format!("{label}: items[{}]: ", item_index + 1);
                if let Some(draft) = read_item(src, element, "[[hosts.items]]", context, report) {
                    drafts.push(draft);
                }
            }
        }
    }

    let on_serial = connection.as_ref().is_some_and(Connection::is_serial);
    let mut spec = HostSpec {
        host,
        name,
        connection: connection.unwrap_or(Connection::Rtu {
            path: String::new(),
        }),
        serial,
        unit,
        model,
        poll_interval,
        timeout,
        retries,
        max_read_registers,
        max_gap,
        byte_order,
        kind,
        tags,
        write_expiry,
        pacing,
        uuid: uuid.map(|u| u.value),
        thing,
        items: Vec::new(),
    };
    spec.items = resolve_items(&spec, &label, &drafts, &src.path, &mut ctx.refs, report);
    if let Some(problem) = serial_unit_problem(&spec).filter(|_| on_serial) {
        section.error_at(report, &unit_pos, &problem);
    }
    let place = HostPlace {
        label,
        host_pos,
        unit_pos,
        serial_pos,
    };
    Some((spec, place))
}

/// What is wrong with the unit id of a host on a serial line: 0 is broadcast (nothing
/// answers it; a read would time out and hold the shared line every cycle),
/// 248..255 are reserved. TCP devices may use 0..255.
fn serial_unit_problem(host: &HostSpec) -> Option<String> {
    match host.unit {
        0 if host.items.is_empty() => Some(
            "unit 0 is the Modbus broadcast address, which no device answers, and this host has no items to read or write either: it would do nothing; give the device's unit id (1..247)".into(),
        ),
        0 => Some(
            "unit 0 is the Modbus broadcast address: no device answers it, so every read would time out and hold the serial line for the other units; give the device's unit id (1..247)".into(),
        ),
        248..=255 => Some(format!(
            "unit {} is reserved on a serial line; Modbus RTU units are 1..247",
            host.unit
        )),
        _ => None,
    }
}

/// The longest pause a pacing key accepts.
const MAX_PACING: Duration = Duration::from_secs(60);

/// `delay_between_requests` and `delay_after_connect` (TCP only).
fn read_pacing(
    section: &Section<'_, '_>,
    connection: Option<&Connection>,
    report: &mut Report,
) -> Pacing {
    let mut read = |key: &str| {
        let d = section.duration(report, key, true)?;
        if d.value > MAX_PACING {
            section.error_at(
                report,
                &d.pos,
                &format!(
                    "{key} = \"{}\" is too long; at most {} (it is a pause between requests, not a poll interval)",
                    format_duration(d.value),
                    format_duration(MAX_PACING)
                ),
            );
            return None;
        }
        Some(d)
    };
    let between_requests = read("delay_between_requests");
    let after_connect = read("delay_after_connect");
    if let (Some(Connection::Rtu { .. }), Some(d)) = (connection, &after_connect) {
        section.error_at(
            report,
            &d.pos,
            "delay_after_connect is a pause after a TCP connect, but this host is on a serial line; remove it (delay_between_requests works on both)",
        );
    }
    Pacing {
        between_requests: between_requests.map_or(Duration::ZERO, |d| d.value),
        after_connect: after_connect.map_or(Duration::ZERO, |d| d.value),
    }
}

/// `byte_order`, with the valid names in the message when it is wrong.
fn read_byte_order(section: &Section<'_, '_>, report: &mut Report) -> Option<ByteOrder> {
    let text = section.string(report, "byte_order")?;
    match ByteOrder::parse(&text.value) {
        Some(order) => Some(order),
        None => {
            let upper = text.value.to_ascii_uppercase();
            let hint = if ByteOrder::parse(&upper).is_some() {
                format!("; write it in capitals: \"{upper}\"")
            } else {
                String::new()
            };
            section.error_at(
                report,
                &text.pos,
                &format!(
                    "byte_order \"{}\" is not valid; use one of {}{hint}",
                    text.value,
                    BYTE_ORDER_NAMES.join(", ")
                ),
            );
            None
        }
    }
}

/// The serial settings of an `rtu://` host (or proxy, `what`); on a TCP one,
/// each serial key is an error.
pub(super) fn read_serial(
    section: &Section<'_, '_>,
    what: &str,
    connection: Option<&Connection>,
    report: &mut Report,
) -> Option<SerialSettings> {
    if let Some(Connection::Tcp { .. }) = connection {
        for key in SERIAL_KEYS {
            if let Some(pos) = section.key_pos(key) {
                section.error_at(
                    report,
                    &pos,
                    &format!(
                        "{key} is a serial line setting, but this {what} connects over TCP; remove it or use connection = \"rtu:///dev/ttyUSB0\""
                    ),
                );
            }
        }
        return None;
    }
    let mut settings = SerialSettings::default();
    if let Some(baud) = section.integer(report, "baud", 50, 4_000_000) {
        settings.baud = u32::try_from(baud.value).unwrap_or(settings.baud);
    }
    if let Some(parity) = section.string(report, "parity") {
        match parity.value.as_str() {
            "none" => settings.parity = Parity::None,
            "even" => settings.parity = Parity::Even,
            "odd" => settings.parity = Parity::Odd,
            other => section.error_at(
                report,
                &parity.pos,
                &format!(
                    "parity \"{other}\" is not valid; use one of {}{}",
                    PARITY_NAMES.join(", "),
                    did_you_mean(other, &PARITY_NAMES)
                ),
            ),
        }
    }
    if let Some(bits) = section.integer(report, "data_bits", 5, 8) {
        settings.data_bits = u8::try_from(bits.value).unwrap_or(8);
    }
    if let Some(bits) = section.integer(report, "stop_bits", 1, 2) {
        settings.stop_bits = u8::try_from(bits.value).unwrap_or(1);
    }
    Some(settings)
}

/// Reads the profile a host names (once per file), reporting a missing file
/// at the host's `profile` value.
fn read_profile_reference(
    section: &Section<'_, '_>,
    profiles: &mut HashMap<PathBuf, ProfileState>,
    ctx: &mut HostsContext<'_>,
    report: &mut Report,
) -> Option<Rc<Profile>> {
    let reference = section.nonempty_string(report, "profile")?;
    let path = profile_path(section.src, ctx.profile_dirs, &reference.value);
    let state = profiles.entry(path.clone()).or_insert_with(|| {
        let state = load_profile(&path, report);
        if let ProfileState::Loaded(p) = &state {
            ctx.profiles.push(DatasetSource {
                name: reference.value.clone(),
                path: path.clone(),
                text: p.text.clone(),
                created: p.modified,
                updated: p.modified,
                created_by: LOCAL_ORIGIN.to_string(),
                updated_by: LOCAL_ORIGIN.to_string(),
            });
        }
        state
    });
    match state {
        ProfileState::Loaded(profile) => Some(Rc::clone(profile)),
        ProfileState::Unreadable(error) => {
            section.error_at(
                report,
                &reference.pos,
                &format!(
                    "cannot read profile \"{}\" ({}): {error}",
                    reference.value,
                    path.display()
                ),
            );
            None
        }
        ProfileState::Invalid => None,
    }
}

/// Where a profile named `reference` is read from: in the first of `dirs`
/// that has it (the config file's own directory when `dirs` is empty), else
/// in the last one (whose error is then reported).
fn profile_path(src: &Source, dirs: &[PathBuf], reference: &str) -> PathBuf {
    let own = [src.path.parent().unwrap_or(Path::new("")).to_path_buf()];
    let dirs = if dirs.is_empty() { &own[..] } else { dirs };
    dirs.iter()
        .map(|d| d.join(reference))
        .find(|p| p.is_file())
        .or_else(|| dirs.last().map(|d| d.join(reference)))
        .unwrap_or_else(|| PathBuf::from(reference))
}

/// The modification time of a file in Unix seconds (0 when unknown).
pub(crate) fn modified_unix(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

/// Reads and checks a profile file; its problems are reported in its own file.
fn load_profile(path: &Path, report: &mut Report) -> ProfileState {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return ProfileState::Unreadable(e.to_string()),
    };
    let shared: std::sync::Arc<str> = text.as_str().into();
    report.add_file(path);
    let src = Source::new(path, text);
    let Some(document) = parse_document(&src, report) else {
        return ProfileState::Invalid;
    };
    let section = Section {
        src: &src,
        table: document.get_ref(),
        pos: src.pos(0),
        context: String::new(),
    };
    let errors_before = report.len();
    for (key, _) in section.table.iter() {
        let name = key.get_ref().as_ref();
        if !PROFILE_KEYS.contains(&name) {
            let hint = if ITEM_KEYS.contains(&name) || HOST_KEYS.contains(&name) {
                format!(
                    "; a profile may set only {} (and [[items]])",
                    PROFILE_KEYS[..7].join(", ")
                )
            } else {
                did_you_mean(name, &PROFILE_KEYS)
            };
            report.error(
                &src.pos(key.span().start),
                format!("unknown key \"{name}\" in a profile{hint}"),
            );
        }
    }
    let mut profile = Profile {
        model: None,
        kind: section.nonempty_string(report, "type").map(|t| t.value),
        byte_order: read_byte_order(&section, report),
        max_read_registers: section
            .integer(report, "max_read_registers", 1, 125)
            .and_then(|m| u16::try_from(m.value).ok()),
        max_gap: section
            .integer(report, "max_gap", 0, 125)
            .and_then(|m| u16::try_from(m.value).ok()),
        poll_interval: section
            .duration(report, "poll_interval", false)
            .map(|d| d.value),
        timeout: section.duration(report, "timeout", false).map(|d| d.value),
        items: Vec::new(),
        text: shared,
        modified: modified_unix(path),
    };
    if let Some(model) = section.nonempty_string(report, "model") {
        if is_name(&model.value, "_.:-", 64) {
            profile.model = Some(model.value);
        } else {
            report.error(
                &model.pos,
                format!(
                    "model \"{}\" must be 1 to 64 characters from A-Z a-z 0-9 _ . : - (it is part of the default item keys)",
                    model.value
                ),
            );
        }
    }
    if let Some(items) = section.raw("items") {
        if let Some(list) = array_of_tables(&src, items, "items", report) {
            for (index, element) in list.iter().enumerate() {
                let context = format!("items[{}]: ", index + 1);
                if let Some(draft) = read_item(&src, element, "[[items]]", context, report) {
                    profile.items.push(draft);
                }
            }
        }
    }
    if report.len() > errors_before {
        ProfileState::Invalid
    } else {
        ProfileState::Loaded(Rc::new(profile))
    }
}

/// The table's Modicon prefix range an address may have been copied from by
/// mistake, with the 0-based address it most likely means.
fn modicon_mistake(table: Table, address: i64) -> Option<i64> {
    let (five, six) = match table {
        Table::Coil => return None,
        Table::Discrete => (10001, 100001),
        Table::Input => (30001, 300001),
        Table::Holding => (40001, 400001),
    };
    if (five..five + 9999).contains(&address) {
        Some(address - five)
    } else if (six..six + 65536).contains(&address) {
        Some(address - six)
    } else {
        None
    }
}

/// Reads one item; None (after reporting why) when it has any problem of its own.
fn read_item(
    src: &Source,
    element: &Spanned<DeValue<'_>>,
    what: &str,
    context: String,
    report: &mut Report,
) -> Option<ItemDraft> {
    let section = Section::of(src, element, "an item", context, report)?;
    let errors_before = report.len();
    section.check_keys_elsewhere(report, what, &ITEM_KEYS, &HOST_KEYS, "[[hosts]]");

    let table = read_table(&section, what, report);
    let address = read_address(&section, table, what, report);
    let value_type = read_value_type(&section, table, report);
    let bit = section
        .integer(report, "bit", 0, 15)
        .map(|b| u8::try_from(b.value).unwrap_or(0));
    if let (Some(table), Some(vt)) = (table, value_type) {
        check_type_fits_table(&section, table, vt, report);
        check_bit(&section, table, vt, report);
        if let Some(address) = &address {
            check_fits_address_space(&section, table, vt, address, report);
        }
    }

    let scale = read_scale(&section, report);
    let offset = section.number(report, "offset").map_or(0.0, |o| o.value);
    let unit = section
        .string(report, "unit")
        .map(|u| u.value)
        .unwrap_or_default();
    let key = read_key(&section, report);
    let byte_order = read_byte_order(&section, report);
    let poll_interval = section
        .duration(report, "poll_interval", false)
        .map(|d| d.value);
    let deadband = read_deadband(&section, report);
    let heartbeat = section.duration(report, "heartbeat", false);
    let (lower_bound, upper_bound) = read_bounds(&section, report);
    let configurable = section.boolean(report, "configurable");
    if let (Some(c), Some(table)) = (&configurable, table) {
        check_configurable(&section, c, table, report);
    }
    let tags = section.strings(report, "tags").unwrap_or_default();
    let name = section.nonempty_string(report, "name").map(|n| n.value);
    let uuid = read_uuid(&section, report);
    let thing = section.nonempty_string(report, "thing");
    let si_unit = section.nonempty_string(report, "si_unit").map(|u| u.value);

    if report.len() > errors_before {
        return None;
    }
    Some(ItemDraft {
        pos: section.pos.clone(),
        name,
        table: table?,
        address: address?,
        value_type: value_type?,
        bit,
        byte_order,
        scale,
        offset,
        unit,
        key,
        poll_interval,
        deadband,
        heartbeat,
        lower_bound: lower_bound.map(|b| b.value),
        upper_bound: upper_bound.map(|b| b.value),
        configurable: configurable.is_some_and(|c| c.value),
        tags,
        uuid,
        thing,
        si_unit,
    })
}

/// `table`: required, one of the table names, with a guess when it is misspelt.
fn read_table(section: &Section<'_, '_>, what: &str, report: &mut Report) -> Option<Table> {
    match section.string(report, "table") {
        Some(t) => match Table::parse(&t.value) {
            Some(table) => Some(table),
            None => {
                let lower = t.value.to_ascii_lowercase();
                let guess = TABLE_NAMES
                    .iter()
                    .find(|name| lower.starts_with(&name[..4]))
                    .map(|name| format!("; did you mean \"{name}\"?"))
                    .unwrap_or_else(|| did_you_mean(&t.value, &TABLE_NAMES));
                section.error_at(
                    report,
                    &t.pos,
                    &format!(
                        "table \"{}\" is not valid; use one of {}{guess}",
                        t.value,
                        TABLE_NAMES.join(", ")
                    ),
                );
                None
            }
        },
        None => {
            if section.raw("table").is_none() {
                section.missing(
                    report,
                    "table",
                    what,
                    &format!(" (one of {})", TABLE_NAMES.join(", ")),
                );
            }
            None
        }
    }
}

/// `type`: one of the type names; left out, bool for a bit table and u16 for a register table.
fn read_value_type(
    section: &Section<'_, '_>,
    table: Option<Table>,
    report: &mut Report,
) -> Option<ValueType> {
    match section.string(report, "type") {
        Some(t) => match ValueType::parse(&t.value) {
            Some(vt) => Some(vt),
            None => {
                section.error_at(
                    report,
                    &t.pos,
                    &format!(
                        "type \"{}\" is not valid; use one of {}{}",
                        t.value,
                        TYPE_NAMES.join(", "),
                        did_you_mean(&t.value, &TYPE_NAMES)
                    ),
                );
                None
            }
        },
        None if section.raw("type").is_some() => None,
        None => table.map(|t| {
            if t.is_bits() {
                ValueType::Bool
            } else {
                ValueType::U16
            }
        }),
    }
}

/// Where a problem with the item's type is shown: at its `type` value, or at
/// the item when the type is left out.
fn type_pos(section: &Section<'_, '_>) -> SourcePos {
    section
        .value_pos("type")
        .unwrap_or_else(|| section.pos.clone())
}

/// Checks that an item in a coil or discrete input table is a bool.
fn check_type_fits_table(
    section: &Section<'_, '_>,
    table: Table,
    vt: ValueType,
    report: &mut Report,
) {
    if table.is_bits() && vt != ValueType::Bool {
        let at_type = type_pos(section);
        section.error_at(
            report,
            &at_type,
            &format!(
                "type {vt} is not possible in the {table} table: coils and discrete inputs are single bits, so the type must be bool (or left out)"
            ),
        );
    }
}

/// Checks that `bit` is given exactly for a bool taken from a register.
fn check_bit(section: &Section<'_, '_>, table: Table, vt: ValueType, report: &mut Report) {
    if let Some(pos) = &section.key_pos("bit") {
        if table.is_bits() {
            section.error_at(
                report,
                pos,
                &format!(
                    "bit is only for a bool taken from a register; a {table} is a single bit already"
                ),
            );
        } else if vt != ValueType::Bool {
            section.error_at(
                report,
                pos,
                &format!("bit goes only with type = \"bool\", but this item is {vt}"),
            );
        }
    } else if !table.is_bits() && vt == ValueType::Bool && section.raw("bit").is_none() {
        let at_type = type_pos(section);
        section.error_at(
            report,
            &at_type,
            &format!(
                "a bool in the {table} table needs bit = 0..15 (which bit of the register; 0 is the least significant)"
            ),
        );
    }
}

/// Checks that the item's registers (or bit) end at or before the last address 65535.
fn check_fits_address_space(
    section: &Section<'_, '_>,
    table: Table,
    vt: ValueType,
    address: &At<u16>,
    report: &mut Report,
) {
    let width = if table.is_bits() { 1 } else { vt.registers() };
    let last = u32::from(address.value) + u32::from(width) - 1;
    if last > 65535 {
        section.error_at(
            report,
            &address.pos,
            &format!(
                "a {vt} takes {width} registers, so address {} would run past the last address 65535",
                address.value
            ),
        );
    }
}

/// `scale`: any number but 0 (reported, and read as 1); 1 when left out.
fn read_scale(section: &Section<'_, '_>, report: &mut Report) -> f64 {
    match section.number(report, "scale") {
        Some(s) if s.value == 0.0 => {
            section.error_at(
                report,
                &s.pos,
                "scale must not be 0 (every value would read as the offset); use 1 for no scaling",
            );
            1.0
        }
        Some(s) => s.value,
        None => 1.0,
    }
}

/// `key`: 1 to 128 characters from A-Z a-z 0-9 _ . : -.
fn read_key(section: &Section<'_, '_>, report: &mut Report) -> Option<At<String>> {
    match section.string(report, "key") {
        Some(k) if is_name(&k.value, "_.:-", 128) => Some(k),
        Some(k) => {
            section.error_at(
                report,
                &k.pos,
                &format!(
                    "key \"{}\" must be 1 to 128 characters from A-Z a-z 0-9 _ . : -",
                    k.value
                ),
            );
            None
        }
        None => None,
    }
}

/// `deadband`: a number that must not be negative.
fn read_deadband(section: &Section<'_, '_>, report: &mut Report) -> Option<f64> {
    match section.number(report, "deadband") {
        Some(d) if d.value < 0.0 => {
            section.error_at(
                report,
                &d.pos,
                "deadband must not be negative (it is the smallest change that counts)",
            );
            None
        }
        Some(d) => Some(d.value),
        None => None,
    }
}

/// `lower_bound` and `upper_bound`: numbers, the lower not greater than the upper.
fn read_bounds(
    section: &Section<'_, '_>,
    report: &mut Report,
) -> (Option<At<f64>>, Option<At<f64>>) {
    let lower_bound = section.number(report, "lower_bound");
    let upper_bound = section.number(report, "upper_bound");
    if let (Some(lower), Some(upper)) = (&lower_bound, &upper_bound) {
        if lower.value > upper.value {
            section.error_at(
                report,
                &lower.pos,
                &format!(
                    "lower_bound {} is greater than upper_bound {}",
                    lower.value, upper.value
                ),
            );
        }
    }
    (lower_bound, upper_bound)
}

/// Checks that `configurable = true` is only on a writable table (holding or coil).
fn check_configurable(section: &Section<'_, '_>, c: &At<bool>, table: Table, report: &mut Report) {
    if c.value && !table.is_writable() {
        section.error_at(
            report,
            &c.pos,
            &format!(
                "configurable = true needs a writable table (holding or coil); the {table} table is read-only"
            ),
        );
    }
}

/// `address`: a 0-based integer, with hints for Modicon references and quoted numbers.
fn read_address(
    section: &Section<'_, '_>,
    table: Option<Table>,
    what: &str,
    report: &mut Report,
) -> Option<At<u16>> {
    let Some(raw) = section.raw("address") else {
        section.missing(
            report,
            "address",
            what,
            " (the 0-based protocol address, e.g. address = 3 for holding register 40004)",
        );
        return None;
    };
    let pos = section.src.pos(raw.span().start);
    let value = match raw.get_ref() {
        DeValue::Integer(_) => super::source::integer_value(raw.get_ref()),
        DeValue::String(s) => {
            let hint = match s.trim().parse::<i64>() {
                Ok(n) => match table.and_then(|t| modicon_mistake(t, n).map(|a| (t, a))) {
                    Some((t, a)) if (0..=65535).contains(&a) => format!(
                        "; \"{n}\" looks like a Modicon reference, which is {t} address {a} (address = {a})"
                    ),
                    _ => format!(" (address = {n})"),
                },
                Err(_) => String::new(),
            };
            section.error_at(
                report,
                &pos,
                &format!("address must be a 0-based integer without quotes, not a string{hint}"),
            );
            return None;
        }
        other => {
            section.error_at(
                report,
                &pos,
                &format!(
                    "address must be a 0-based integer, not {}",
                    super::source::type_with_article(other)
                ),
            );
            return None;
        }
    };
    let Some(value) = value else {
        section.error_at(report, &pos, "address must be between 0 and 65535");
        return None;
    };
    if let Some(table) = table {
        if let Some(meant) = modicon_mistake(table, value) {
            section.error_at(
                report,
                &pos,
                &format!(
                    "address {value} looks like a Modicon reference; addresses are 0-based protocol addresses, and {table} reference {value} is address = {meant}"
                ),
            );
            return None;
        }
    }
    match u16::try_from(value) {
        Ok(address) => Some(At {
            value: address,
            pos,
        }),
        Err(_) => {
            section.error_at(
                report,
                &pos,
                &format!("address must be between 0 and 65535, not {value}"),
            );
            None
        }
    }
}

/// Applies the host's defaults to its item drafts and checks them against
/// the host and each other.
fn resolve_items(
    host: &HostSpec,
    label: &str,
    drafts: &[ItemDraft],
    config_file: &Path,
    refs: &mut UpstreamRefs,
    report: &mut Report,
) -> Vec<ItemSpec> {
    let mut items = Vec::with_capacity(drafts.len());
    let mut keys: HashMap<String, SourcePos> = HashMap::new();
    for draft in drafts {
        let key = match &draft.key {
            Some(k) => k.value.clone(),
            None => default_key(
                &host.host,
                &host.model,
                host.unit,
                draft.table,
                draft.address.value,
                draft.bit,
            ),
        };
        let key_pos = draft
            .key
            .as_ref()
            .map_or_else(|| draft.pos.clone(), |k| k.pos.clone());
        if let Some(first) = keys.get(&key) {
            report.error(
                &key_pos,
                format!(
                    "{label}: key \"{key}\" is used twice (first at {}); keys must be unique per host",
                    place_name(first, config_file)
                ),
            );
        } else {
            keys.insert(key.clone(), key_pos);
        }
        let who = format!("{label}: item \"{key}\"");
        if let Some(u) = &draft.uuid {
            refs.uuids.push((u.clone(), who.clone()));
        }
        if let Some(t) = &draft.thing {
            refs.things.push((t.clone(), who));
        }
        let upstream = ItemUpstream {
            uuid: draft.uuid.as_ref().map(|u| u.value),
            thing: draft.thing.as_ref().map(|t| t.value.clone()),
            si_unit: draft.si_unit.clone(),
        };
        let mut key = key;
        key.shrink_to_fit();
        let mut item = ItemSpec {
            key,
            table: draft.table,
            address: draft.address.value,
            value_type: draft.value_type,
            bit: draft.bit,
            byte_order: draft.byte_order.unwrap_or(host.byte_order),
            scale: draft.scale,
            offset: draft.offset,
            poll_interval: draft.poll_interval.unwrap_or(host.poll_interval),
            configurable: draft.configurable,
            extra: Some(Box::new(ItemExtra {
                // Empty when not given: `ItemSpec::name()` falls back to the key.
                name: draft.name.clone().unwrap_or_default(),
                unit: draft.unit.clone(),
                deadband: draft.deadband,
                heartbeat: draft.heartbeat.as_ref().map(|h| h.value),
                lower_bound: draft.lower_bound,
                upper_bound: draft.upper_bound,
                tags: draft.tags.clone(),
                upstream: (upstream != ItemUpstream::default()).then(|| Box::new(upstream)),
            })),
        };
        item.compact();
        if !item.table.is_bits() && item.width() > host.max_read_registers {
            report.error(
                &draft.pos,
                format!(
                    "{label}: item \"{}\" is {} ({} registers) but this host reads at most {} registers per request (max_read_registers)",
                    item.key,
                    item.value_type,
                    item.width(),
                    host.max_read_registers
                ),
            );
        }
        if let Some(heartbeat) = &draft.heartbeat {
            if heartbeat.value < item.poll_interval {
                report.error(
                    &heartbeat.pos,
                    format!(
                        "{label}: item \"{}\": heartbeat {} is shorter than its poll interval {}, so it would never matter",
                        item.key,
                        format_duration(heartbeat.value),
                        format_duration(item.poll_interval)
                    ),
                );
            }
        }
        items.push(item);
    }
    check_overlaps(&items, drafts, label, report);
    items
}

/// `holding 3..4`, `holding 5 bit 2`, `coil 7`.
fn describe_range(item: &ItemSpec) -> String {
    match item.bit {
        Some(b) => format!("{} {} bit {b}", item.table, item.address),
        None if item.width() == 1 => format!("{} {}", item.table, item.address),
        None => format!("{} {}..{}", item.table, item.address, item.end()),
    }
}

/// Reports items of one host that share registers or bits (two bools on
/// different bits of one register do not overlap).
fn check_overlaps(items: &[ItemSpec], drafts: &[ItemDraft], label: &str, report: &mut Report) {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| (items[i].table, items[i].address, i));
    for (n, &a) in order.iter().enumerate() {
        for &b in &order[n + 1..] {
            let (first, second) = (&items[a], &items[b]);
            if second.table != first.table || second.address > first.end() {
                break;
            }
            let different_bits = matches!((first.bit, second.bit), (Some(x), Some(y)) if x != y);
            if different_bits {
                continue;
            }
            // Report at the one written later, naming the earlier.
            let (earlier, later) = if a < b { (a, b) } else { (b, a) };
            report.error(
                &drafts[later].pos,
                format!(
                    "{label}: item \"{}\" ({}) overlaps item \"{}\" ({})",
                    items[later].key,
                    describe_range(&items[later]),
                    items[earlier].key,
                    describe_range(&items[earlier])
                ),
            );
        }
    }
}

/// `9600 8N1`
pub(super) fn describe_serial(s: &SerialSettings) -> String {
    s.to_string()
}

/// Checks across hosts: unique ids, one setting per serial port, one host per
/// (port, unit) and per (TCP endpoint, unit).
fn check_hosts(hosts: &[HostSpec], places: &[HostPlace], report: &mut Report) {
    for (i, host) in hosts.iter().enumerate() {
        let place = &places[i];
        let earlier = hosts[..i].iter().zip(&places[..i]);
        if !host.host.is_empty() {
            if let Some((_, first)) = earlier.clone().find(|(h, _)| h.host == host.host) {
                report.error(
                    &place.host_pos,
                    format!(
                        "{}: host \"{}\" is already defined by {} (line {}); host ids must be unique",
                        place.label, host.host, first.label, first.host_pos.line
                    ),
                );
            }
        }
        match &host.connection {
            Connection::Rtu { path } if path.is_empty() => {}
            Connection::Rtu { path } => {
                let same_port = earlier.clone().filter(
                    |(h, _)| matches!(&h.connection, Connection::Rtu { path: p } if p == path),
                );
                if let Some((first, first_place)) = same_port.clone().next() {
                    if let (Some(mine), Some(theirs)) = (&host.serial, &first.serial) {
                        if mine != theirs {
                            report.error(
                                &place.serial_pos,
                                format!(
                                    "{}: serial port {path} is shared with {}, which uses {}; this host uses {}. Hosts on one port must use the same baud, parity, data_bits and stop_bits",
                                    place.label,
                                    first_place.label,
                                    describe_serial(theirs),
                                    describe_serial(mine)
                                ),
                            );
                        }
                    }
                }
                if let Some((_, other)) = same_port.clone().find(|(h, _)| h.unit == host.unit) {
                    report.error(
                        &place.unit_pos,
                        format!(
                            "{}: unit {} on {path} is already polled by {}; each device on a serial line needs its own unit id",
                            place.label, host.unit, other.label
                        ),
                    );
                }
            }
            Connection::Tcp { .. } => {
                if let Some((_, other)) = earlier
                    .clone()
                    .find(|(h, _)| h.connection == host.connection && h.unit == host.unit)
                {
                    report.error(
                        &place.unit_pos,
                        format!(
                            "{}: unit {} at {} is already polled by {}; two hosts for one device would read it twice",
                            place.label, host.unit, host.connection, other.label
                        ),
                    );
                }
            }
        }
    }
}
