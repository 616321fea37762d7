//! The TOML config file -> [`Config`], with every problem reported as `FILE:LINE:COL: message`.
//!
//! The file is parsed into a spanned TOML document and walked by hand, so one
//! run reports every unknown key, wrong type, bad value and semantic problem
//! (in the file and in the device profiles it names), each at the line and
//! column of the offending key or value. Only a TOML syntax error stops the
//! walk, because the rest of the document cannot be trusted after it.

mod hosts;
mod proxies;
pub mod schema;
mod source;
mod things;
mod triggers;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::diag::{did_you_mean, suggest_key, SourcePos};
use crate::model::{
    default_severity, ApiSpec, Config, DatasetSource, GatewaySpec, MqttSpec, RemoteSpec,
    SparkplugSpec, StorageSpec, CONFIG_DATASET, LOCAL_ORIGIN,
};
use source::{is_name, At, Report, Section, Source};
use triggers::TriggerText;

pub use crate::diag::Diagnostic;
pub use triggers::MAX_WINDOW_SAMPLES;

/// Every problem found in a config file (and the profiles it names).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<Diagnostic>);

/// The default config file of `modbridge run` and `check`.
pub const DEFAULT_PATH: &str = "/etc/modbridge/modbridge.toml";

/// Loads and validates a config file. Profiles it names are read relative to
/// its directory. On failure, every problem found is returned, sorted by file
/// and position.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, &LoadOptions::default())
}

/// How a config is loaded besides its own text.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Directories searched for profiles, the first that has the file wins;
    /// empty: the config file's own directory.
    pub profile_dirs: Vec<PathBuf>,
    /// The local config a deployed one stands in for: its `[gateway]`,
    /// `[mqtt]`, `[api]` and `[remote]` are used where the deployed file
    /// leaves them out, and must be equal where it has them.
    pub base: Option<Arc<Config>>,
}

/// The sections a deployed config may not change: identity and uplink stay with the box.
pub const PROTECTED_SECTIONS: [&str; 5] = ["gateway", "mqtt", "sparkplug", "api", "remote"];

/// Like [`load`], with [`LoadOptions`].
pub fn load_with(path: &Path, options: &LoadOptions) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str_with(path, &text, options),
        Err(e) => Err(ConfigErrors(vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read the config file: {e}"),
        }])),
    }
}

/// Validates config text as if it had been read from `path_for_messages`:
/// messages name that path, and profiles are read relative to its directory.
pub fn load_str(path_for_messages: &Path, text: &str) -> Result<Config, ConfigErrors> {
    load_str_with(path_for_messages, text, &LoadOptions::default())
}

/// Like [`load_str`], with [`LoadOptions`].
pub fn load_str_with(
    path_for_messages: &Path,
    text: &str,
    options: &LoadOptions,
) -> Result<Config, ConfigErrors> {
    let (mut config, texts) = load_document(path_for_messages, text, options)?;
    // Trigger expressions name hosts and items, so they are checked against
    // the otherwise valid config.
    config.triggers = triggers::check_triggers(&config, &texts).map_err(ConfigErrors)?;
    Ok(config)
}

/// Like [`load_str`], but trigger expressions are left unchecked: the config
/// has no triggers, and the `[[triggers]]` tables come back as text (for
/// tests of the expression checker itself).
#[cfg(test)]
pub(crate) fn load_str_without_expressions(
    path_for_messages: &Path,
    text: &str,
) -> Result<(Config, Vec<TriggerText>), ConfigErrors> {
    load_document(path_for_messages, text, &LoadOptions::default())
}

fn load_document(
    path_for_messages: &Path,
    text: &str,
    options: &LoadOptions,
) -> Result<(Config, Vec<TriggerText>), ConfigErrors> {
    let mut report = Report::default();
    report.add_file(path_for_messages);
    let src = Source::new(path_for_messages, text.to_string());
    let config = match parse_document(&src, &mut report) {
        Some(document) => build_config(&src, &document, options, &mut report),
        None => None,
    };
    match config {
        Some(config) if report.is_empty() => Ok(config),
        _ => Err(ConfigErrors(report.into_sorted())),
    }
}

/// Every key the loader accepts, per table: `""` is the top level, then
/// `gateway`, `storage`, `mqtt`, `api`, `hosts`, `hosts.items`, `triggers` and `proxy`;
/// `profile` and `profile.items` are a device profile's. `[severity]` takes
/// numbers as keys and is not listed. The config schema is checked against this.
pub fn accepted_keys() -> Vec<(&'static str, &'static [&'static str])> {
    vec![
        ("", &SECTIONS),
        ("gateway", &GATEWAY_KEYS),
        ("storage", &STORAGE_KEYS),
        ("mqtt", &MQTT_KEYS),
        ("api", &API_KEYS),
        ("hosts", &hosts::HOST_KEYS),
        ("hosts.items", &hosts::ITEM_KEYS),
        ("triggers", &TRIGGER_KEYS),
        ("proxy", &proxies::PROXY_KEYS),
        ("things", &things::THING_KEYS),
        ("remote", &things::REMOTE_KEYS),
        ("profile", &hosts::PROFILE_KEYS),
        ("profile.items", &hosts::ITEM_KEYS),
    ]
}

/// Parses TOML text, reporting every syntax error; None if there was any.
pub(crate) fn parse_document<'i>(
    src: &'i Source,
    report: &mut Report,
) -> Option<Spanned<DeTable<'i>>> {
    let (document, errors) = DeTable::parse_recoverable(&src.text);
    if errors.is_empty() {
        return Some(document);
    }
    for error in errors {
        let span = error.span().unwrap_or(0..0);
        let message = match error.message() {
            "duplicate key" => {
                let key = src.text.get(span.clone()).unwrap_or("").trim();
                let before = src.text.get(..span.start).unwrap_or("").trim_end();
                if before.ends_with('[') {
                    format!("table [{key}] is defined twice; put all its keys under one header")
                } else {
                    format!("duplicate key \"{key}\": it is already set above")
                }
            }
            other => format!("invalid TOML: {}", other.trim()),
        };
        report.error(&src.pos(span.start), message);
    }
    None
}

/// Keys of `[gateway]`.
const GATEWAY_KEYS: [&str; 4] = ["id", "name", "data_dir", "uuid"];

/// Keys of `[storage]`.
const STORAGE_KEYS: [&str; 5] = [
    "history_retention",
    "trend_retention",
    "event_retention",
    "max_size",
    "commit_interval",
];

/// Keys of `[mqtt]`.
const MQTT_KEYS: [&str; 9] = [
    "url",
    "client_id",
    "username",
    "password_file",
    "ca_file",
    "cert_file",
    "key_file",
    "topic_prefix",
    "keep_alive",
];

/// Keys of `[sparkplug]`.
const SPARKPLUG_KEYS: [&str; 11] = [
    "url",
    "client_id",
    "username",
    "password_file",
    "ca_file",
    "cert_file",
    "key_file",
    "keep_alive",
    "group_id",
    "edge_node_id",
    "primary_host_id",
];

/// Keys of `[api]`.
const API_KEYS: [&str; 3] = ["listen", "token_file", "allowed_hosts"];

/// Keys of `[[triggers]]`.
const TRIGGER_KEYS: [&str; 5] = [
    "triggerid",
    "description",
    "severity",
    "expression",
    "recovery_expression",
];

/// The top-level sections.
const SECTIONS: [&str; 11] = [
    "gateway",
    "storage",
    "severity",
    "mqtt",
    "sparkplug",
    "api",
    "hosts",
    "triggers",
    "proxy",
    "things",
    "remote",
];

/// Walks the whole document. Returns the config with defaults wherever a
/// value was unusable; the caller only uses it when nothing was reported.
fn build_config(
    src: &Source,
    document: &Spanned<DeTable<'_>>,
    options: &LoadOptions,
    report: &mut Report,
) -> Option<(Config, Vec<TriggerText>)> {
    let top = document.get_ref();
    for (key, value) in top.iter() {
        let name = key.get_ref().as_ref();
        if SECTIONS.contains(&name) {
            continue;
        }
        let message = if value.get_ref().is_table() {
            match suggest_key(name, &SECTIONS) {
                Some(known) => format!("unknown section [{name}]; did you mean [{known}]?"),
                None => format!(
                    "unknown section [{name}]; the sections are [{}]",
                    SECTIONS.join("], [")
                ),
            }
        } else {
            format!(
                "unknown key \"{name}\" at the top of the file (before any [section]){}",
                did_you_mean(name, &SECTIONS)
            )
        };
        report.error(&src.pos(key.span().start), message);
    }

    let protected = Protected {
        src,
        top,
        base: options.base.as_deref(),
    };
    let gateway = protected.section(
        "gateway",
        |b| b.gateway.clone(),
        |r| read_gateway(src, top, r),
        report,
    );
    let storage = match top.get("storage") {
        Some(v) => read_storage(src, v, report),
        None => StorageSpec::default(),
    };
    let severity = match top.get("severity") {
        Some(v) => read_severity(src, v, report),
        None => default_severity(),
    };
    let mqtt = protected.section(
        "mqtt",
        |b| b.mqtt.clone(),
        |r| {
            top.get("mqtt")
                .and_then(|v| read_mqtt(src, v, &gateway.id, r))
        },
        report,
    );
    let sparkplug = protected.section(
        "sparkplug",
        |b| b.sparkplug.clone(),
        |r| {
            top.get("sparkplug")
                .and_then(|v| read_sparkplug(src, v, &gateway.id, mqtt.as_ref(), r))
        },
        report,
    );
    let api = protected.section(
        "api",
        |b| b.api.clone(),
        |r| match top.get("api") {
            Some(v) => read_api(src, v, r),
            None => ApiSpec::default(),
        },
        report,
    );
    let remote = protected.section(
        "remote",
        |b| b.remote.clone(),
        |r| match top.get("remote") {
            Some(v) => things::read_remote(src, v, r),
            None => RemoteSpec::default(),
        },
        report,
    );
    let mut ctx = hosts::HostsContext {
        refs: things::UpstreamRefs::default(),
        profiles: Vec::new(),
        profile_dirs: &options.profile_dirs,
    };
    if let (Some(uuid), Some(raw)) = (gateway.uuid, table_value(top, "gateway", "uuid")) {
        let pos = src.pos(raw.span().start);
        let at = source::At { value: uuid, pos };
        ctx.refs.uuids.push((at, "[gateway]".to_string()));
    }
    let hosts = match top.get("hosts") {
        Some(v) => hosts::read_hosts(src, v, &mut ctx, report),
        None => Vec::new(),
    };
    let thing_list = match top.get("things") {
        Some(v) => things::read_things(src, v, &mut ctx.refs, report),
        None => Vec::new(),
    };
    let triggers = match top.get("triggers") {
        Some(v) => read_triggers(src, v, &severity, report),
        None => Vec::new(),
    };
    let proxies = match top.get("proxy") {
        Some(v) => proxies::read_proxies(src, v, &hosts, &api, report),
        None => Vec::new(),
    };
    let modified = hosts::modified_unix(&src.path);
    let mut sources = vec![DatasetSource {
        name: CONFIG_DATASET.to_string(),
        path: src.path.clone(),
        text: src.text.as_str().into(),
        created: modified,
        updated: modified,
        created_by: LOCAL_ORIGIN.to_string(),
        updated_by: LOCAL_ORIGIN.to_string(),
    }];
    sources.append(&mut ctx.profiles);
    let config = Config {
        path: src.path.clone(),
        local_path: options
            .base
            .as_ref()
            .map_or_else(|| src.path.clone(), |b| b.local_path.clone()),
        gateway,
        storage,
        severity,
        mqtt,
        sparkplug,
        api,
        hosts: hosts.into_iter().map(std::sync::Arc::new).collect(),
        triggers: Vec::new(),
        proxies,
        things: thing_list.iter().map(|(t, _, _)| t.clone()).collect(),
        remote,
        sources,
    };
    things::check_upstream(&config, &thing_list, &ctx.refs, report);
    Some((config, triggers))
}

/// The value of `key` in the top-level table `section`, if both exist.
fn table_value<'s, 'i>(
    top: &'s DeTable<'i>,
    section: &str,
    key: &str,
) -> Option<&'s Spanned<DeValue<'i>>> {
    top.get(section)?.get_ref().as_table()?.get(key)
}

/// Reads the sections a deployed config may not change: from the base
/// config where the file leaves them out, else from the file, which must
/// then say the same as the base.
struct Protected<'a, 's, 'i> {
    src: &'a Source,
    top: &'s DeTable<'i>,
    base: Option<&'a Config>,
}

impl Protected<'_, '_, '_> {
    fn section<T: PartialEq>(
        &self,
        name: &str,
        from_base: impl Fn(&Config) -> T,
        read: impl FnOnce(&mut Report) -> T,
        report: &mut Report,
    ) -> T {
        let Some(base) = self.base else {
            return read(report);
        };
        let Some((key, _)) = self.top.get_key_value(name) else {
            return from_base(base);
        };
        let value = read(report);
        if value != from_base(base) {
            report.error(
                &self.src.pos(key.span().start),
                format!(
                    "[{name}] differs from the local file's; identity and uplink stay with the box, so leave [{name}] out of a deployed config (it is taken from the local file) or make it equal"
                ),
            );
        }
        from_base(base)
    }
}

/// The position of a table header given a top-level key, or the file start.
fn start_pos(src: &Source) -> SourcePos {
    src.pos(0)
}

/// `[gateway]`
fn read_gateway(src: &Source, top: &DeTable<'_>, report: &mut Report) -> GatewaySpec {
    let mut gateway = GatewaySpec {
        id: String::new(),
        name: String::new(),
        data_dir: PathBuf::from("/var/lib/modbridge"),
        uuid: None,
    };
    let Some(value) = top.get("gateway") else {
        report.error(
            &start_pos(src),
            "the config has no [gateway] section; it needs at least id = \"...\" (the gateway's id in MQTT topics)",
        );
        return gateway;
    };
    let Some(section) = Section::of(src, value, "[gateway]", String::new(), report) else {
        return gateway;
    };
    section.check_keys(report, "[gateway]", &GATEWAY_KEYS);
    match section.string(report, "id") {
        Some(id) if is_name(&id.value, "_-", 64) => gateway.id = id.value,
        Some(id) => report.error(
            &id.pos,
            format!(
                "gateway id \"{}\" must be 1 to 64 characters from A-Z a-z 0-9 _ - (it is used in MQTT topics)",
                id.value
            ),
        ),
        None if section.raw("id").is_none() => {
            section.missing(report, "id", "[gateway]", " (e.g. id = \"box-1\")")
        }
        None => {}
    }
    gateway.name = section
        .nonempty_string(report, "name")
        .map(|n| n.value)
        .unwrap_or_else(|| gateway.id.clone());
    if let Some(dir) = section.path(report, "data_dir") {
        gateway.data_dir = dir;
    }
    gateway.uuid = things::read_uuid(&section, report).map(|u| u.value);
    gateway
}

/// `[storage]`
fn read_storage(src: &Source, value: &Spanned<DeValue<'_>>, report: &mut Report) -> StorageSpec {
    let mut storage = StorageSpec::default();
    let Some(section) = Section::of(src, value, "[storage]", String::new(), report) else {
        return storage;
    };
    section.check_keys(report, "[storage]", &STORAGE_KEYS);
    if let Some(d) = section.duration(report, "history_retention", false) {
        storage.history_retention = d.value;
    }
    if let Some(d) = section.duration(report, "trend_retention", false) {
        storage.trend_retention = d.value;
    }
    if let Some(d) = section.duration(report, "event_retention", false) {
        storage.event_retention = d.value;
    }
    if let Some(d) = section.duration(report, "commit_interval", false) {
        storage.commit_interval = d.value;
    }
    if let Some(size) = section.size(report, "max_size") {
        if size.value < 1 << 20 {
            report.error(
                &size.pos,
                "max_size must be at least 1MiB; the database cannot work in less",
            );
        } else {
            storage.max_size = size.value;
        }
    }
    storage
}

/// `[severity]`: integer keys (as TOML keys they are strings) -> text.
fn read_severity(
    src: &Source,
    value: &Spanned<DeValue<'_>>,
    report: &mut Report,
) -> BTreeMap<u8, String> {
    let mut severity = BTreeMap::new();
    let Some(section) = Section::of(src, value, "[severity]", String::new(), report) else {
        return default_severity();
    };
    for (key, text) in section.table.iter() {
        let key_pos = src.pos(key.span().start);
        let Ok(number) = key.get_ref().trim().parse::<u8>() else {
            report.error(
                &key_pos,
                format!(
                    "severity \"{}\" must be a whole number from 0 to 255 (e.g. 5 = \"A-Larm\")",
                    key.get_ref()
                ),
            );
            continue;
        };
        match text.get_ref() {
            DeValue::String(s) if !s.trim().is_empty() => {
                severity.insert(number, s.to_string());
            }
            DeValue::String(_) => report.error(
                &src.pos(text.span().start),
                format!("severity {number} needs a name, e.g. {number} = \"A-Larm\""),
            ),
            other => report.error(
                &src.pos(text.span().start),
                format!(
                    "severity {number} must be named by a string, not {}",
                    source::type_with_article(other)
                ),
            ),
        }
    }
    if section.table.is_empty() {
        report.error(
            &section.pos,
            "[severity] is empty; leave it out to use the defaults 3 = \"C-Larm\", 4 = \"B-Larm\", 5 = \"A-Larm\"",
        );
    }
    severity
}

/// `[mqtt]`
fn read_mqtt(
    src: &Source,
    value: &Spanned<DeValue<'_>>,
    gateway_id: &str,
    report: &mut Report,
) -> Option<MqttSpec> {
    let section = Section::of(src, value, "[mqtt]", String::new(), report)?;
    section.check_keys(report, "[mqtt]", &MQTT_KEYS);
    let mut mqtt = MqttSpec::new("", gateway_id);
    let conn = read_connection(
        &section,
        report,
        "[mqtt]",
        None,
        " (e.g. url = \"mqtt://10.0.0.5:1883\"; remove [mqtt] to keep everything local)",
    );
    mqtt.url = conn.url.unwrap_or_default();
    if let Some(id) = section.nonempty_string(report, "client_id") {
        mqtt.client_id = id.value;
    }
    if let Some(prefix) = section.nonempty_string(report, "topic_prefix") {
        if prefix.value.contains(['+', '#', '\0'])
            || prefix.value.starts_with('/')
            || prefix.value.ends_with('/')
        {
            report.error(
                &prefix.pos,
                format!(
                    "topic_prefix \"{}\" must not contain + or # nor start or end with /",
                    prefix.value
                ),
            );
        } else {
            mqtt.topic_prefix = prefix.value;
        }
    }
    if let Some(k) = section.duration(report, "keep_alive", false) {
        if k.value.as_secs() > 65535 {
            report.error(&k.pos, "keep_alive must be at most 65535s (MQTT's limit)");
        } else {
            mqtt.keep_alive = k.value;
        }
    }
    mqtt.username = conn.username;
    mqtt.password_file = conn.password_file;
    mqtt.ca_file = conn.ca_file;
    mqtt.cert_file = conn.cert_file;
    mqtt.key_file = conn.key_file;
    Some(mqtt)
}

/// A broker connection as a section gives it (`[mqtt]`, `[sparkplug]`).
#[derive(Default)]
struct BrokerConnection {
    url: Option<String>,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

/// The one reader of a section's broker connection: `url`, credentials and
/// TLS files, each defaulting to `fallback`'s (TLS files only over TLS).
fn read_connection(
    section: &Section<'_, '_>,
    report: &mut Report,
    name: &str,
    fallback: Option<&MqttSpec>,
    missing_hint: &str,
) -> BrokerConnection {
    let mut out = BrokerConnection::default();
    let mut tls = None;
    match section.string(report, "url") {
        Some(url) => {
            let rest = url
                .value
                .strip_prefix("mqtts://")
                .map(|r| (true, r))
                .or_else(|| url.value.strip_prefix("mqtt://").map(|r| (false, r)));
            match rest {
                Some((secure, address)) if valid_broker_address(address) => {
                    tls = Some(secure);
                    out.url = Some(url.value);
                }
                Some(_) => report.error(
                    &url.pos,
                    format!(
                        "url \"{}\" needs a broker address, e.g. mqtt://10.0.0.5:1883",
                        url.value
                    ),
                ),
                None => report.error(
                    &url.pos,
                    format!(
                        "url \"{}\" must start with mqtt:// or mqtts:// (TLS)",
                        url.value
                    ),
                ),
            }
        }
        None if section.raw("url").is_none() => match fallback {
            Some(m) => {
                tls = Some(m.url.starts_with("mqtts://"));
                out.url = Some(m.url.clone());
            }
            None => section.missing(report, "url", name, missing_hint),
        },
        None => {}
    }
    out.username = section.nonempty_string(report, "username").map(|u| u.value);
    out.password_file = section.path(report, "password_file");
    out.ca_file = section.path(report, "ca_file");
    out.cert_file = section.path(report, "cert_file");
    out.key_file = section.path(report, "key_file");
    if tls == Some(false) {
        for key in ["ca_file", "cert_file", "key_file"] {
            if let Some(pos) = section.key_pos(key) {
                report.error(
                    &pos,
                    format!("{key} is only used with TLS; the url must start with mqtts://"),
                );
            }
        }
    }
    match (section.key_pos("cert_file"), section.key_pos("key_file")) {
        (Some(pos), None) => report.error(
            &pos,
            "cert_file needs key_file too (the client certificate's private key)",
        ),
        (None, Some(pos)) => report.error(
            &pos,
            "key_file needs cert_file too (the client certificate)",
        ),
        _ => {}
    }
    if let Some(m) = fallback {
        if out.username.is_none() && section.key_pos("username").is_none() {
            out.username = m.username.clone();
        }
        if out.password_file.is_none() && section.key_pos("password_file").is_none() {
            out.password_file = m.password_file.clone();
        }
        let no_tls_keys = ["ca_file", "cert_file", "key_file"]
            .iter()
            .all(|k| section.key_pos(k).is_none());
        if tls == Some(true) && no_tls_keys && m.url.starts_with("mqtts://") {
            out.ca_file = m.ca_file.clone();
            out.cert_file = m.cert_file.clone();
            out.key_file = m.key_file.clone();
        }
    }
    out
}

/// `[sparkplug]`: the Sparkplug B uplink; its connection defaults to `[mqtt]`'s.
fn read_sparkplug(
    src: &Source,
    value: &Spanned<DeValue<'_>>,
    gateway_id: &str,
    mqtt: Option<&MqttSpec>,
    report: &mut Report,
) -> Option<SparkplugSpec> {
    let section = Section::of(src, value, "[sparkplug]", String::new(), report)?;
    section.check_keys(report, "[sparkplug]", &SPARKPLUG_KEYS);
    let conn = read_connection(
        &section,
        report,
        "[sparkplug]",
        mqtt,
        " (e.g. url = \"mqtt://10.0.0.5:1883\"; without [mqtt] the broker must be given here)",
    );
    let mut spb = SparkplugSpec::new(&conn.url.unwrap_or_default(), "", gateway_id);
    spb.username = conn.username;
    spb.password_file = conn.password_file;
    spb.ca_file = conn.ca_file;
    spb.cert_file = conn.cert_file;
    spb.key_file = conn.key_file;
    if let Some(id) = section.nonempty_string(report, "client_id") {
        spb.client_id = id.value;
    }
    if let Some(k) = section.duration(report, "keep_alive", false) {
        if k.value.as_secs() > 65535 {
            report.error(&k.pos, "keep_alive must be at most 65535s (MQTT's limit)");
        } else {
            spb.keep_alive = k.value;
        }
    }
    let id = |key: &str, report: &mut Report| -> Option<String> {
        let v = section.nonempty_string(report, key)?;
        if v.value.contains(['+', '#', '/', '\0']) {
            report.error(
                &v.pos,
                format!(
                    "{key} \"{}\" must not contain +, # or / (it is a Sparkplug topic level)",
                    v.value
                ),
            );
            return None;
        }
        Some(v.value)
    };
    match id("group_id", report) {
        Some(g) => spb.group_id = g,
        None if section.raw("group_id").is_none() => section.missing(
            report,
            "group_id",
            "[sparkplug]",
            " (the Sparkplug group this edge node belongs to, e.g. group_id = \"plant1\")",
        ),
        None => {}
    }
    if let Some(e) = id("edge_node_id", report) {
        spb.edge_node_id = e;
    } else if gateway_id.contains(['+', '#', '/']) && section.raw("edge_node_id").is_none() {
        if let Some(pos) = section.key_pos("group_id") {
            report.error(
                &pos,
                format!(
                    "the gateway id \"{gateway_id}\" cannot be the Sparkplug edge_node_id (it contains +, # or /): set edge_node_id"
                ),
            );
        }
    }
    spb.primary_host_id = id("primary_host_id", report);
    Some(spb)
}

/// True for `host`, `host:port` or `[v6]:port` with a valid port.
fn valid_broker_address(address: &str) -> bool {
    let address = address.trim_end_matches('/');
    if address.is_empty() || address.contains('/') {
        return false;
    }
    let host_and_port = if let Some(v6) = address.strip_prefix('[') {
        v6.split_once(']')
            .map(|(h, tail)| (h, tail.strip_prefix(':')))
    } else if let Some((h, p)) = address.rsplit_once(':') {
        Some((h, Some(p)))
    } else {
        Some((address, None))
    };
    match host_and_port {
        Some((host, port)) => {
            let port_ok = match port {
                Some(p) => p.parse::<u16>().is_ok_and(|p| p > 0),
                None => true,
            };
            !host.is_empty() && port_ok
        }
        None => false,
    }
}

/// `[api]`
fn read_api(src: &Source, value: &Spanned<DeValue<'_>>, report: &mut Report) -> ApiSpec {
    let mut api = ApiSpec::default();
    let Some(section) = Section::of(src, value, "[api]", String::new(), report) else {
        return api;
    };
    section.check_keys(report, "[api]", &API_KEYS);
    if let Some(listen) = section.string(report, "listen") {
        match listen.value.parse::<SocketAddr>() {
            Ok(address) => api.listen = address,
            Err(_) => report.error(
                &listen.pos,
                format!(
                    "listen \"{}\" must be an IP address and port, e.g. \"127.0.0.1:8080\" or \"[::]:8080\"",
                    listen.value
                ),
            ),
        }
    }
    api.token_file = section.path(report, "token_file");
    for name in section.strings(report, "allowed_hosts").unwrap_or_default() {
        if is_name(&name, ".-_", 253) && !name.starts_with(['.', '-']) {
            api.allowed_hosts.push(name.to_ascii_lowercase());
        } else if let Some(pos) = section.value_pos("allowed_hosts") {
            section.error_at(
                report,
                &pos,
                &format!(
                    "allowed_hosts: \"{name}\" must be a host name as a browser sends it, without scheme or port, e.g. \"box.plant.example\""
                ),
            );
        }
    }
    api
}

/// `[[triggers]]`
fn read_triggers(
    src: &Source,
    value: &Spanned<DeValue<'_>>,
    severity: &BTreeMap<u8, String>,
    report: &mut Report,
) -> Vec<TriggerText> {
    let Some(list) = array_of_tables(src, value, "triggers", report) else {
        return Vec::new();
    };
    let severities = severity
        .keys()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut triggers = Vec::new();
    let mut seen_ids: HashMap<u64, SourcePos> = HashMap::new();
    for (index, element) in list.iter().enumerate() {
        let context = format!("triggers[{}]: ", index + 1);
        let Some(section) = Section::of(src, element, "[[triggers]]", context, report) else {
            continue;
        };
        section.check_keys(report, "[[triggers]]", &TRIGGER_KEYS);
        let triggerid = match section.integer(report, "triggerid", 1, i64::MAX) {
            Some(id) => {
                let id_value = id.value.unsigned_abs();
                if let Some(first) = seen_ids.get(&id_value) {
                    section.error_at(
                        report,
                        &id.pos,
                        &format!(
                            "triggerid {id_value} is already used by the trigger at line {}",
                            first.line
                        ),
                    );
                } else {
                    seen_ids.insert(id_value, id.pos.clone());
                }
                id_value
            }
            None => {
                if section.raw("triggerid").is_none() {
                    section.missing(
                        report,
                        "triggerid",
                        "[[triggers]]",
                        " (a unique positive integer)",
                    );
                }
                0
            }
        };
        let description = section
            .string(report, "description")
            .map(|d| d.value)
            .unwrap_or_default();
        let severity_number = match section.integer(report, "severity", 0, 255) {
            Some(s) => {
                let number = u8::try_from(s.value).unwrap_or(0);
                if !severity.contains_key(&number) {
                    section.error_at(
                        report,
                        &s.pos,
                        &format!(
                            "severity {number} is not in the [severity] table; use one of {severities}"
                        ),
                    );
                }
                number
            }
            None => {
                if section.raw("severity").is_none() {
                    section.missing(
                        report,
                        "severity",
                        "[[triggers]]",
                        &format!(" (one of {severities})"),
                    );
                }
                0
            }
        };
        let expression = read_expression(&section, "expression", report);
        if expression.is_none() && section.raw("expression").is_none() {
            section.missing(report, "expression", "[[triggers]]", "");
        }
        let recovery = read_expression(&section, "recovery_expression", report);
        let (expression, expression_pos) = match expression {
            Some(e) => (e.value, e.pos),
            None => (String::new(), SourcePos::default()),
        };
        let (recovery_expression, recovery_expression_pos) = match recovery {
            Some(e) => (Some(e.value), e.pos),
            None => (None, SourcePos::default()),
        };
        triggers.push(TriggerText {
            triggerid,
            description,
            severity: severity_number,
            expression,
            expression_pos,
            recovery_expression,
            recovery_expression_pos,
        });
    }
    triggers
}

/// A non-empty expression string, positioned at its first character inside the quotes.
fn read_expression(
    section: &Section<'_, '_>,
    key: &str,
    report: &mut Report,
) -> Option<At<String>> {
    let raw = section.raw(key)?;
    let text = section.nonempty_string(report, key)?;
    Some(At {
        value: text.value,
        pos: section.src.string_content_pos(raw.span()),
    })
}

/// The elements of `[[name]]`; reports `[name]` written by mistake.
pub(crate) fn array_of_tables<'s, 'i>(
    src: &Source,
    value: &'s Spanned<DeValue<'i>>,
    name: &str,
    report: &mut Report,
) -> Option<&'s toml::de::DeArray<'i>> {
    match value.get_ref() {
        DeValue::Array(list) => Some(list),
        other => {
            report.error(
                &src.pos(value.span().start),
                format!(
                    "{name} must be a list of tables written as [[{name}]], not {}",
                    source::type_with_article(other)
                ),
            );
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
