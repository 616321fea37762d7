//! Unit tests of the loader: defaults, profile merging and positions. The
//! broken configs live in `tests/config_errors/`.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::model::{ByteOrder, Connection, Parity, SerialSettings, Table, ValueType};

fn load_text(text: &str) -> Config {
    load_text_and_triggers(text).0
}

/// The config without triggers, and its `[[triggers]]` tables unchecked.
fn load_text_and_triggers(text: &str) -> (Config, Vec<TriggerText>) {
    match super::load_str_without_expressions(Path::new("test.toml"), text) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("unexpected errors:\n{errors}"),
    }
}

fn errors_of(text: &str) -> Vec<String> {
    match load_str(Path::new("test.toml"), text) {
        Ok(_) => panic!("expected errors"),
        Err(errors) => errors.0.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn minimal_config_gets_every_default() {
    let config = load_text(
        r#"
[gateway]
id = "box-1"

[[hosts]]
host = "plc"
connection = "tcp://10.0.0.5"

[[hosts.items]]
table = "holding"
address = 3

[[hosts.items]]
table = "coil"
address = 12000
"#,
    );
    assert_eq!(config.path, Path::new("test.toml"));
    assert_eq!(config.gateway.id, "box-1");
    assert_eq!(config.gateway.name, "box-1");
    assert_eq!(config.gateway.data_dir, Path::new("/var/lib/modbridge"));
    assert_eq!(config.storage, StorageSpec::default());
    assert_eq!(config.severity, default_severity());
    assert_eq!(config.mqtt, None);
    assert_eq!(config.api, ApiSpec::default());
    assert!(config.triggers.is_empty());

    let host = &config.hosts[0];
    assert_eq!(host.host, "plc");
    assert_eq!(host.name, "plc");
    assert_eq!(
        host.connection,
        Connection::Tcp {
            host: "10.0.0.5".into(),
            port: 502
        }
    );
    assert_eq!(host.serial, None);
    assert_eq!(host.unit, 1);
    assert_eq!(host.model, "generic");
    assert_eq!(host.poll_interval, Duration::from_secs(10));
    assert_eq!(host.timeout, Duration::from_secs(1));
    assert_eq!(host.retries, 1);
    assert_eq!(host.max_read_registers, 125);
    assert_eq!(host.max_gap, 8);
    assert_eq!(host.byte_order, ByteOrder::Abcd);
    assert_eq!(host.kind, None);
    assert!(host.tags.is_empty());
    assert_eq!(host.write_expiry, Duration::from_secs(600));

    let register = &host.items[0];
    assert_eq!(register.key, "modbus.plc.generic.1.40004");
    assert_eq!(register.name(), register.key);
    assert_eq!(register.table, Table::Holding);
    assert_eq!(register.address, 3);
    assert_eq!(register.value_type, ValueType::U16);
    assert_eq!(register.bit, None);
    assert_eq!(register.byte_order, ByteOrder::Abcd);
    assert_eq!(register.scale, 1.0);
    assert_eq!(register.offset, 0.0);
    assert_eq!(register.unit(), "");
    assert_eq!(register.poll_interval, Duration::from_secs(10));
    assert_eq!(register.deadband(), None);
    assert_eq!(register.heartbeat(), None);
    assert_eq!(register.lower_bound(), None);
    assert_eq!(register.upper_bound(), None);
    assert!(!register.configurable);
    assert!(register.tags().is_empty());

    let coil = &host.items[1];
    assert_eq!(coil.key, "modbus.plc.generic.1.12001");
    assert_eq!(coil.value_type, ValueType::Bool);
}

#[test]
fn every_option_is_read() {
    let (config, triggers) = load_text_and_triggers(
        r#"
[gateway]
id = "box_2"
name = "Box two"
data_dir = "/data"

[storage]
history_retention = "7d"
trend_retention = "365d"
event_retention = "90d"
max_size = "512MiB"
commit_interval = "500ms"

[severity]
1 = "Info"
5 = "Fire"

[mqtt]
url = "mqtts://broker.example:8883"
username = "box"
password_file = "/etc/pw"
ca_file = "/etc/ca.pem"
cert_file = "/etc/c.pem"
key_file = "/etc/c.key"
topic_prefix = "site/7"
keep_alive = "1m"

[api]
listen = "[::]:9000"
token_file = "/etc/token"

[[hosts]]
host = "line"
name = "Meter"
connection = "rtu:///dev/ttyS1"
unit = 247
model = "EM24"
poll_interval = "5s"
timeout = "300ms"
retries = 0
max_read_registers = 60
max_gap = 0
byte_order = "CDAB"
type = "meter"
tags = ["a", "b"]
write_expiry = "1h"
delay_between_requests = "20ms"
baud = 38400
parity = "odd"
data_bits = 7
stop_bits = 2

[[hosts.items]]
name = "Energy"
table = "input"
address = 10
type = "f64"
scale = 2.5
offset = -1
unit = "kWh"
key = "energy:total"
byte_order = "DCBA"
poll_interval = "1m"
deadband = 0.5
heartbeat = "1h"
lower_bound = -1
upper_bound = 1e6
tags = ["x"]

[[hosts.items]]
table = "holding"
address = 5
type = "bool"
bit = 15
configurable = true

[[triggers]]
triggerid = 1
description = "Fire"
severity = 5
expression = "last(/line/energy:total) > 1"
"#,
    );
    assert_eq!(config.gateway.name, "Box two");
    assert_eq!(config.gateway.data_dir, Path::new("/data"));
    assert_eq!(
        config.storage.history_retention,
        Duration::from_secs(7 * 86400)
    );
    assert_eq!(
        config.storage.trend_retention,
        Duration::from_secs(365 * 86400)
    );
    assert_eq!(
        config.storage.event_retention,
        Duration::from_secs(90 * 86400)
    );
    assert_eq!(config.storage.max_size, 512 << 20);
    assert_eq!(config.storage.commit_interval, Duration::from_millis(500));
    assert_eq!(config.severity.len(), 2);
    assert_eq!(config.severity.get(&1).map(String::as_str), Some("Info"));
    let mqtt = config.mqtt.as_ref().expect("mqtt");
    assert_eq!(mqtt.url, "mqtts://broker.example:8883");
    assert_eq!(mqtt.client_id, "modbridge-box_2");
    assert_eq!(mqtt.username.as_deref(), Some("box"));
    assert_eq!(mqtt.key_file.as_deref(), Some(Path::new("/etc/c.key")));
    assert_eq!(mqtt.topic_prefix, "site/7");
    assert_eq!(mqtt.keep_alive, Duration::from_secs(60));
    assert_eq!(config.api.listen.port(), 9000);
    assert_eq!(
        config.api.token_file.as_deref(),
        Some(Path::new("/etc/token"))
    );

    let host = &config.hosts[0];
    assert_eq!(
        host.serial,
        Some(SerialSettings {
            baud: 38400,
            parity: Parity::Odd,
            data_bits: 7,
            stop_bits: 2
        })
    );
    assert_eq!(host.unit, 247);
    assert_eq!(host.retries, 0);
    assert_eq!(host.max_gap, 0);
    assert_eq!(host.kind.as_deref(), Some("meter"));
    assert_eq!(host.write_expiry, Duration::from_secs(3600));
    assert_eq!(host.pacing.between_requests, Duration::from_millis(20));
    assert_eq!(host.pacing.after_connect, Duration::ZERO);
    let energy = &host.items[0];
    assert_eq!(energy.key, "energy:total");
    assert_eq!(energy.value_type, ValueType::F64);
    assert_eq!(energy.byte_order, ByteOrder::Dcba);
    assert_eq!(energy.offset, -1.0);
    assert_eq!(energy.deadband(), Some(0.5));
    assert_eq!(energy.heartbeat(), Some(Duration::from_secs(3600)));
    assert_eq!(energy.upper_bound(), Some(1e6));
    let flag = &host.items[1];
    assert_eq!(flag.key, "modbus.line.EM24.247.40006.15");
    assert_eq!(flag.bit, Some(15));
    assert_eq!(flag.byte_order, ByteOrder::Cdab);
    assert!(flag.configurable);

    let trigger = &triggers[0];
    assert_eq!(trigger.triggerid, 1);
    assert_eq!(trigger.severity, 5);
    assert_eq!(trigger.recovery_expression, None);
}

#[test]
fn example_config_merges_profiles() {
    let config = match load(Path::new("config/example.toml")) {
        Ok(config) => config,
        Err(errors) => panic!("config/example.toml:\n{errors}"),
    };
    let pump = config.host("pump").expect("pump");
    assert_eq!(pump.model, "F1345");
    assert_eq!(pump.kind.as_deref(), Some("heating/heat-pump"));
    // The profile's items first, then the host's own.
    let last = pump.items.last().expect("items");
    assert_eq!(last.key, "modbus.pump.F1345.3.30021");
    let outdoor = pump.item("modbus.pump.F1345.3.30004").expect("BT1");
    assert_eq!(outdoor.name(), "BT1 Outdoor temp");
    assert_eq!(outdoor.scale, 0.1);
    assert_eq!(outdoor.poll_interval, Duration::from_secs(60));
    assert!(pump.item("modbus.pump.F1345.3.40007.3").is_some());

    // ahu2 sets nothing but connection, unit and serial: the rest comes from the profile.
    let ahu2 = config.host("ahu2").expect("ahu2");
    assert_eq!(ahu2.model, "corrigo");
    assert_eq!(ahu2.byte_order, ByteOrder::Cdab);
    assert_eq!(ahu2.max_read_registers, 32);
    assert_eq!(ahu2.max_gap, 4);
    assert_eq!(ahu2.poll_interval, Duration::from_secs(15));
    assert_eq!(ahu2.timeout, Duration::from_millis(500));
    let setpoint = ahu2.item("modbus.ahu2.corrigo.2.40001").expect("setpoint");
    assert_eq!(setpoint.value_type, ValueType::F32);
    assert_eq!(setpoint.byte_order, ByteOrder::Cdab);
    assert!(setpoint.configurable);
    let ahu1 = config.host("ahu1").expect("ahu1");
    assert_eq!(ahu1.items.len(), ahu2.items.len() + 1);
    assert_eq!(ahu1.serial, ahu2.serial);
}

#[test]
fn host_settings_win_over_the_profile() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("profiles")).expect("mkdir");
    std::fs::write(
        dir.path().join("profiles/dev.toml"),
        "model = \"DEV\"\nmax_read_registers = 10\ntimeout = \"2s\"\n\n[[items]]\ntable = \"input\"\naddress = 1\n",
    )
    .expect("write profile");
    let path = dir.path().join("main.toml");
    let text = "[gateway]\nid = \"g\"\n\n[[hosts]]\nhost = \"d\"\nconnection = \"tcp://h\"\nprofile = \"profiles/dev.toml\"\nmax_read_registers = 20\n\n[[hosts.items]]\ntable = \"input\"\naddress = 0\n";
    let config = match load_str(&path, text) {
        Ok(config) => config,
        Err(errors) => panic!("{errors}"),
    };
    let host = &config.hosts[0];
    assert_eq!(host.model, "DEV");
    assert_eq!(host.max_read_registers, 20);
    assert_eq!(host.timeout, Duration::from_secs(2));
    let keys: Vec<&str> = host.items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["modbus.d.DEV.1.30002", "modbus.d.DEV.1.30001"]);
}

#[test]
fn expression_positions_point_inside_the_quotes() {
    let (_, triggers) = load_text_and_triggers(
        "[gateway]\nid = \"g\"\n\n[[triggers]]\ntriggerid = 1\nseverity = 3\nexpression = \"last(/a/b) > 1\"\nrecovery_expression = '''\n  last(/a/b) < 1'''\n\n[[triggers]]\ntriggerid = 2\nseverity = 4\n  expression =   'x'\n",
    );
    let first = &triggers[0];
    assert_eq!(
        (first.expression_pos.line, first.expression_pos.col),
        (7, 15)
    );
    assert_eq!(first.expression_pos.file, Path::new("test.toml"));
    assert_eq!(
        first.recovery_expression.as_deref(),
        Some("  last(/a/b) < 1")
    );
    assert_eq!(
        (
            first.recovery_expression_pos.line,
            first.recovery_expression_pos.col
        ),
        (9, 1)
    );
    let second = &triggers[1];
    assert_eq!(
        (second.expression_pos.line, second.expression_pos.col),
        (14, 19)
    );
}

#[test]
fn every_problem_is_reported_with_its_position() {
    let errors = errors_of(
        "[gateway]\nid = \"g\"\nnmae = \"x\"\n\n[storage]\ncommit_interval = \"0s\"\nmax_size = \"1 GiB\"\n",
    );
    assert_eq!(
        errors,
        [
            "test.toml:3:1: unknown key \"nmae\" in [gateway]; did you mean \"name\"?",
            "test.toml:6:19: commit_interval must be longer than zero",
            "test.toml:7:12: max_size: size \"1 GiB\" has an unknown unit \" GiB\"; use one of B, kB, MB, GB, TB, KiB, MiB, GiB, TiB",
        ]
    );
}

#[test]
fn syntax_errors_stop_the_walk() {
    let errors = errors_of("[gateway]\nid = \"g\nfoo = 1\n");
    assert!(!errors.is_empty());
    assert!(errors[0].starts_with("test.toml:2:"), "{errors:?}");
}

#[test]
fn missing_file_is_one_error() {
    let errors = match load(Path::new("does/not/exist.toml")) {
        Ok(_) => panic!("loaded a missing file"),
        Err(e) => e.0,
    };
    assert_eq!(errors.len(), 1);
    assert!(errors[0].message.starts_with("cannot read the config file"));
}

// ---------------------------------------------------------------- trigger expressions

/// A host with two items for trigger tests (also the alarm module's).
pub(crate) const TRIGGER_CONFIG_HEAD: &str = r#"[gateway]
id = "box"

[[hosts]]
host = "pump"
connection = "tcp://127.0.0.1:502"
poll_interval = "1s"

[[hosts.items]]
name = "outdoor"
table = "input"
address = 3
type = "i16"
key = "temp.outdoor"

[[hosts.items]]
name = "run"
table = "coil"
address = 0
type = "bool"
key = "run"
"#;

#[test]
fn check_triggers_reports_positions() {
    let text = format!(
        "{TRIGGER_CONFIG_HEAD}\n{}",
        r#"[[triggers]]
triggerid = 1
description = "Frost"
severity = 5
expression = "max(/pump/temp.outdor,5m) < -20 and last(/pmp/run) = 1"
recovery_expression = "min(/pump/temp.outdoor,5x) > -18"

[[triggers]]
triggerid = 2
description = "ok"
severity = 3
expression = "nodata(/pump/run,10m)=1 or maxx(/pump/run,5m) > 1"

[[triggers]]
triggerid = 3
description = "good"
severity = 3
expression = "avg(/pump/temp.outdoor,5m) > 30"

[[triggers]]
triggerid = 4
description = "too long"
severity = 3
expression = "avg(/pump/temp.outdoor,30d) > 30"

[[triggers]]
triggerid = 5
description = "no item"
severity = 3
expression = "1 > 0"
"#
    );
    let (c, texts) = load_text_and_triggers(&text);
    let line = |n: usize| TRIGGER_CONFIG_HEAD.lines().count() + 1 + n;
    let got: Vec<String> = match triggers::check_triggers(&c, &texts) {
        Ok(_) => panic!("expected errors"),
        Err(diagnostics) => diagnostics.iter().map(|d| d.to_string()).collect(),
    };
    let want = vec![
        format!(
            "test.toml:{}:25: trigger 1: host \"pump\" has no item \"temp.outdor\"; did you mean \"temp.outdoor\"?",
            line(5)
        ),
        format!("test.toml:{}:57: trigger 1: unknown host \"pmp\"; did you mean \"pump\"?", line(5)),
        format!(
            "test.toml:{}:47: trigger 1: window \"5x\": expected a number with s, m, h or d (e.g. 5m), or #N for the newest N samples",
            line(6)
        ),
        format!(
            "test.toml:{}:42: trigger 2: unknown function \"maxx\"; known: last, min, max, avg, sum, count, change, nodata; did you mean \"max\"?",
            line(12)
        ),
        format!(
            "test.toml:{}:19: trigger 4: window 30d would hold about 2592000 samples of \"temp.outdoor\" (polled every 1s); the limit is 100000",
            line(24)
        ),
        format!(
            "test.toml:{}:15: trigger 5: the expression names no item; use at least one function such as last(/host/key)",
            line(30)
        ),
    ];
    assert_eq!(got, want);
    assert_eq!(errors_of(&text), want);
}

#[test]
fn sparkplug_takes_the_mqtt_connection_unless_it_has_its_own() {
    let base = "[gateway]\nid = \"box-1\"\n\n[mqtt]\nurl = \"mqtts://broker.example:8883\"\nusername = \"box\"\npassword_file = \"/etc/pw\"\nca_file = \"/etc/ca.pem\"\nkeep_alive = \"1m\"\n\n";
    let c = load_text(&format!("{base}[sparkplug]\ngroup_id = \"plant1\"\n"));
    let s = c.sparkplug.expect("sparkplug");
    assert_eq!(s.url, "mqtts://broker.example:8883");
    assert_eq!(s.username.as_deref(), Some("box"));
    assert_eq!(s.password_file.as_deref(), Some(Path::new("/etc/pw")));
    assert_eq!(s.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert_eq!(s.client_id, "modbridge-spb-box-1");
    assert_eq!(s.keep_alive, Duration::from_secs(30), "its own default");
    assert_eq!(s.group_id, "plant1");
    assert_eq!(s.edge_node_id, "box-1");
    assert_eq!(s.primary_host_id, None);

    let c = load_text(&format!(
        "{base}[sparkplug]\nurl = \"mqtt://scada:1883\"\nusername = \"edge\"\nclient_id = \"edge-7\"\nkeep_alive = \"10s\"\ngroup_id = \"g\"\nedge_node_id = \"node-7\"\nprimary_host_id = \"scada\"\n"
    ));
    let s = c.sparkplug.expect("sparkplug");
    assert_eq!(
        (s.url.as_str(), s.username.as_deref(), s.client_id.as_str()),
        ("mqtt://scada:1883", Some("edge"), "edge-7")
    );
    assert_eq!(s.keep_alive, Duration::from_secs(10));
    assert_eq!(s.edge_node_id, "node-7");
    assert_eq!(s.primary_host_id.as_deref(), Some("scada"));

    // Alone, without [mqtt].
    let c = load_text(
        "[gateway]\nid = \"box-1\"\n\n[sparkplug]\nurl = \"mqtt://scada:1883\"\ngroup_id = \"g\"\n",
    );
    assert!(c.mqtt.is_none());
    assert_eq!(c.sparkplug.expect("sparkplug").url, "mqtt://scada:1883");
}
