//! A JSON Schema of the config file and of device profiles, for editors:
//! taplo and the "Even Better TOML" extension read the `#:schema` directive
//! on a file's first line and then complete keys, show these descriptions on
//! hover and underline unknown keys and wrong types while the file is typed.
//!
//! The loader in the parent module walks the TOML by hand so that every
//! problem comes with its position, and it checks far more than a schema can
//! express (overlapping registers, shared serial ports, trigger expressions):
//! `modbridge check` stays the authority. These types only describe the file
//! format. `tests/schema.rs` keeps both in step: every key the loader accepts
//! ([`super::accepted_keys`]) is described here and nothing else, the files
//! in `config/` equal what [`config_schema`] and [`profile_schema`] generate
//! (`BLESS=1 cargo test --test schema` rewrites them), and every shipped
//! config and profile validates.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use schemars::transform::{transform_subschemas, Transform};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::Value;

/// The file name of the config schema, next to the configs that name it.
pub const CONFIG_SCHEMA_FILE: &str = "modbridge.schema.json";
/// The file name of the profile schema.
pub const PROFILE_SCHEMA_FILE: &str = "profile.schema.json";

/// The schema of a config file, as pretty JSON with a final newline.
pub fn config_schema() -> String {
    render::<ConfigFile>("modbridge config")
}

/// The schema of a device profile file, as pretty JSON with a final newline.
pub fn profile_schema() -> String {
    render::<ProfileFile>("modbridge device profile")
}

fn render<T: JsonSchema>(title: &str) -> String {
    let mut settings = SchemaSettings::draft07();
    // Before draft 7's own clean-ups, which move a `$ref`'s siblings aside.
    settings.transforms.insert(0, Box::new(TomlValues));
    let mut schema = settings.into_generator().into_root_schema_for::<T>();
    schema.insert("title".into(), title.into());
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

/// Describes values as TOML has them: there is no null (an optional key is
/// simply left out, so `Option<T>` is described as `T` and never required),
/// and integers have no machine format.
#[derive(Clone)]
struct TomlValues;

impl Transform for TomlValues {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(obj) = schema.as_object_mut() {
            let is_null = |v: &Value| v.is_null() || v == "null";
            if let Some(Value::Array(types)) = obj.get_mut("type") {
                types.retain(|t| !is_null(t));
                if types.len() == 1 {
                    let only = types.remove(0);
                    obj.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(values)) = obj.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            if let Some(Value::Array(mut options)) = obj.remove("anyOf") {
                options.retain(|o| !o.get("type").is_some_and(is_null));
                match options.pop() {
                    Some(Value::Object(only)) if options.is_empty() => {
                        for (k, v) in only {
                            obj.entry(k).or_insert(v);
                        }
                    }
                    Some(last) => {
                        options.push(last);
                        obj.insert("anyOf".into(), options.into());
                    }
                    None => {}
                }
            }
            if obj.get("default").is_some_and(Value::is_null) {
                obj.remove("default");
            }
            if obj.get("format").and_then(Value::as_str).is_some_and(|f| {
                f.starts_with("int") || f.starts_with("uint") || f == "double" || f == "float"
            }) {
                obj.remove("format");
            }
            if obj
                .get("examples")
                .is_some_and(|e| e == &Value::Array(vec![]))
            {
                obj.remove("examples");
            }
        }
        transform_subschemas(self, schema);
    }
}

/// A string value with a pattern, inlined where it is used.
macro_rules! string_type {
    ($(#[$doc:meta])* $name:ident, $pattern:expr, [$($example:expr),*]) => {
        $(#[$doc])*
        pub struct $name;

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "pattern": $pattern,
                    "examples": [$($example),*]
                })
            }
        }
    };
}

string_type!(
    /// `"500ms"`, `"10s"`, `"5m"`, `"24h"`, `"30d"`.
    Duration,
    "^[0-9]+(ms|s|m|h|d)$",
    ["10s", "5m"]
);
string_type!(
    /// `"512MiB"`, `"1GiB"`, `"100MB"`; a bare number is bytes.
    Size,
    "^[0-9]+(B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)?$",
    ["512MiB", "1GiB"]
);
string_type!(
    /// An id used in MQTT topics.
    GatewayId,
    "^[A-Za-z0-9_-]{1,64}$",
    ["box-d0ff50abcdef"]
);
string_type!(
    /// A host id, part of item keys and MQTT topics.
    HostId,
    "^[A-Za-z0-9_.-]{1,64}$",
    ["pump"]
);
string_type!(
    /// A host name as a browser sends it in `Host`, without scheme or port.
    AllowedHost,
    "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$",
    ["box.plant.example"]
);
string_type!(
    /// A model name, part of the default item keys.
    Model,
    "^[A-Za-z0-9_.:-]{1,64}$",
    ["F1345"]
);
string_type!(
    /// An item key.
    ItemKey,
    "^[A-Za-z0-9_.:-]{1,128}$",
    ["modbus.pump.F1345.3.30004"]
);
string_type!(
    /// `tcp://HOST[:PORT]` (port 502 by default) or `rtu:///dev/ttyXXX`.
    ConnectionUrl,
    "^(tcp://[^/]+/?|rtu:///.+)$",
    ["tcp://10.0.0.21:502", "rtu:///dev/ttyUSB0"]
);
string_type!(
    /// `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]` (TLS).
    BrokerUrl,
    "^mqtts?://[^/]+/?$",
    ["mqtt://10.0.0.5:1883", "mqtts://broker.example.com:8883"]
);
string_type!(
    /// A Sparkplug topic level: not empty, no + # or /.
    SparkplugId,
    "^[^+#/]+$",
    ["plant1"]
);
string_type!(
    /// An IP address and port.
    ListenAddress,
    "^(\\[[0-9A-Fa-f:.]+\\]|[0-9.]+):[0-9]{1,5}$",
    ["127.0.0.1:8080", "[::]:8080"]
);
string_type!(
    /// A UUID assigned upstream.
    UuidText,
    "^[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}$",
    ["6ba7b811-9dad-11d1-80b4-00c04fd430c8"]
);
string_type!(
    /// A `[[things]]` id.
    ThingId,
    "^[A-Za-z0-9_.-]{1,64}$",
    ["circuit1"]
);
string_type!(
    /// A non-empty string.
    Text,
    "\\S",
    []
);
string_type!(
    /// A file path.
    FilePath,
    "\\S",
    []
);

/// A Modbus table.
#[derive(JsonSchema)]
#[schemars(inline, rename_all = "lowercase")]
pub enum Table {
    Holding,
    Input,
    Coil,
    Discrete,
}

/// A value type: 16, 32 or 64 bits, or one bit.
#[derive(JsonSchema)]
#[schemars(inline, rename_all = "lowercase")]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    Bool,
}

/// The byte order of 32/64-bit values, most significant byte first: ABCD
/// big-endian, DCBA little-endian, BADC bytes swapped in each word, CDAB
/// words reversed.
#[derive(JsonSchema)]
#[schemars(inline)]
pub enum ByteOrder {
    #[schemars(rename = "ABCD")]
    Abcd,
    #[schemars(rename = "DCBA")]
    Dcba,
    #[schemars(rename = "BADC")]
    Badc,
    #[schemars(rename = "CDAB")]
    Cdab,
}

/// Serial parity.
#[derive(JsonSchema)]
#[schemars(inline, rename_all = "lowercase")]
pub enum Parity {
    None,
    Even,
    Odd,
}

/// A modbridge config file (`/etc/modbridge/modbridge.toml`). Check it with
/// `modbridge check -c FILE`; unknown keys are errors.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ConfigFile {
    /// The gateway itself.
    pub gateway: Gateway,
    /// Retention and durability of the local SQLite database.
    pub storage: Option<Storage>,
    /// Trigger severities: a number (0..255) = its name. Default: 3 = "C-Larm", 4 = "B-Larm", 5 = "A-Larm".
    #[schemars(extend("propertyNames" = {"pattern": "^[0-9]{1,3}$"}))]
    pub severity: Option<BTreeMap<String, Text>>,
    /// The MQTT uplink; leave it out to keep everything local.
    pub mqtt: Option<Mqtt>,
    /// The Sparkplug B uplink (for SCADA and historians), beside [mqtt] or alone.
    pub sparkplug: Option<Sparkplug>,
    /// The local HTTP API (default: listen on 127.0.0.1:8080).
    pub api: Option<Api>,
    /// The Modbus devices to poll, one `[[hosts]]` block each.
    pub hosts: Option<Vec<Host>>,
    /// Alarm rules over items, one `[[triggers]]` block each.
    pub triggers: Option<Vec<Trigger>>,
    /// Modbus TCP servers that forward to a serial line or TCP device through
    /// the gateway's own link, one `[[proxy]]` block each.
    pub proxy: Option<Vec<Proxy>>,
    /// Groups of hosts or items upstream (a heating circuit, a substation), one `[[things]]` block each.
    pub things: Option<Vec<Thing>>,
    /// Configuration deployed from upstream.
    pub remote: Option<Remote>,
}

/// `[[things]]`: a group of hosts or items that belong together, as an upstream Thing.
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Thing {
    /// Unique among things and hosts: 1 to 64 of A-Z a-z 0-9 _ . -.
    pub id: ThingId,
    /// An id assigned upstream (default: UUID v5 of modbridge://<gateway id>/things/<id>).
    pub uuid: Option<UuidText>,
    /// A display name (default: the id).
    pub name: Option<Text>,
    /// The Thing's type, e.g. "heating/circuit".
    #[schemars(rename = "type")]
    pub kind: Option<Text>,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
    /// Another thing's id or a host id (default: the gateway).
    pub parent: Option<Text>,
}

/// `[remote]`
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Remote {
    /// Upstream may deploy configs and profiles over R/cmd/dataset and PUT /datasets/{name} (default false).
    pub config: Option<bool>,
    /// Probation of a deployment before it is APPLIED; a host that stops answering rolls it back (default "2m").
    pub rollback_after: Option<Duration>,
}

/// `[[proxy]]`: a Modbus TCP server onto one of the gateway's links.
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Proxy {
    /// Address and port to serve Modbus TCP on (e.g. "0.0.0.0:5020").
    pub listen: ListenAddress,
    /// The serial line or TCP device to forward to: tcp://HOST[:PORT] or rtu:///dev/ttyUSB0.
    pub connection: ConnectionUrl,
    /// The unit ids it forwards (default: any); others answer exception 0A.
    pub units: Option<Vec<u8>>,
    /// Forward the write function codes 5, 6, 15, 16 and 23 (default false: exception 01).
    pub writes: Option<bool>,
    /// Per forwarded request, from when it goes out on the link (default: the hosts' timeout, else "1s").
    pub timeout: Option<Duration>,
    /// Serial only: line speed (default: the line's hosts', else 9600).
    #[schemars(range(min = 50, max = 4000000))]
    pub baud: Option<u32>,
    /// Serial only (default: the line's hosts', else "none").
    pub parity: Option<Parity>,
    /// Serial only (default: the line's hosts', else 8).
    #[schemars(range(min = 5, max = 8))]
    pub data_bits: Option<u8>,
    /// Serial only (default: the line's hosts', else 1).
    #[schemars(range(min = 1, max = 2))]
    pub stop_bits: Option<u8>,
}

/// `[gateway]`
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Gateway {
    /// The gateway's id in MQTT topics: 1 to 64 of A-Z a-z 0-9 _ -.
    pub id: GatewayId,
    /// A display name (default: the id).
    pub name: Option<Text>,
    /// Where the SQLite database lives (default: /var/lib/modbridge).
    pub data_dir: Option<FilePath>,
    /// The gateway Thing's id assigned upstream (default: UUID v5 of modbridge://<gateway id>).
    pub uuid: Option<UuidText>,
}

/// `[storage]`
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Storage {
    /// How long raw samples are kept (default "30d").
    pub history_retention: Option<Duration>,
    /// How long hourly min/avg/max trends are kept (default "730d").
    pub trend_retention: Option<Duration>,
    /// How long alarm events and their acknowledgements are kept (default "365d").
    pub event_retention: Option<Duration>,
    /// Hard cap for the database, at least "1MiB" (default "1GiB").
    pub max_size: Option<Size>,
    /// Longest a sample waits in memory before it is durable (default "1s").
    pub commit_interval: Option<Duration>,
}

/// `[mqtt]`
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Mqtt {
    /// The broker: mqtt://host[:port] or mqtts://host[:port] for TLS.
    pub url: BrokerUrl,
    /// Default: "modbridge-" + gateway id.
    pub client_id: Option<Text>,
    /// Broker user name.
    pub username: Option<Text>,
    /// A file holding the broker password (readable by the modbridge user).
    pub password_file: Option<FilePath>,
    /// TLS only: the broker's CA certificate (default: the system's).
    pub ca_file: Option<FilePath>,
    /// TLS only: a client certificate (needs key_file).
    pub cert_file: Option<FilePath>,
    /// TLS only: the client certificate's private key (needs cert_file).
    pub key_file: Option<FilePath>,
    /// Topics are <topic_prefix>/<gateway id>/... (default "modbridge"); no + # or leading/trailing /.
    #[schemars(regex(pattern = "^[^/+#][^+#]*[^/+#]$|^[^/+#]$"))]
    pub topic_prefix: Option<String>,
    /// MQTT keep-alive, at most "65535s" (default "30s").
    pub keep_alive: Option<Duration>,
}

/// `[sparkplug]`
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Sparkplug {
    /// The broker: mqtt://host[:port] or mqtts://host[:port] (default: that of [mqtt]).
    pub url: Option<BrokerUrl>,
    /// Default: "modbridge-spb-" + gateway id.
    pub client_id: Option<Text>,
    /// Broker user name (default: that of [mqtt]).
    pub username: Option<Text>,
    /// A file holding the broker password (default: that of [mqtt]).
    pub password_file: Option<FilePath>,
    /// TLS only: the broker's CA certificate (default: that of [mqtt], else the system's).
    pub ca_file: Option<FilePath>,
    /// TLS only: a client certificate (needs key_file; default: that of [mqtt]).
    pub cert_file: Option<FilePath>,
    /// TLS only: the client certificate's private key (default: that of [mqtt]).
    pub key_file: Option<FilePath>,
    /// MQTT keep-alive, at most "65535s" (default "30s").
    pub keep_alive: Option<Duration>,
    /// The Sparkplug group this edge node belongs to; no + # or /.
    pub group_id: SparkplugId,
    /// The edge node id (default: the gateway id); no + # or /.
    pub edge_node_id: Option<SparkplugId>,
    /// The primary host application: the node is born only while its STATE says online.
    pub primary_host_id: Option<SparkplugId>,
}

/// `[api]`
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Api {
    /// Address and port to listen on (default "127.0.0.1:8080").
    pub listen: Option<ListenAddress>,
    /// When set, PUT and POST need "Authorization: Bearer <token>" with the token in this file. Without it, an API listening on a non-loopback address refuses PUT and POST.
    pub token_file: Option<FilePath>,
    /// Host names (without port) the API answers to besides IP addresses, "localhost" and the box's own host name, e.g. ["box.plant.example"].
    pub allowed_hosts: Option<Vec<AllowedHost>>,
}

/// `[[hosts]]`: one Modbus device.
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Host {
    /// Your unique short id for the device: 1 to 64 of A-Z a-z 0-9 _ . -.
    pub host: HostId,
    /// A display name (default: the host id).
    pub name: Option<Text>,
    /// tcp://HOST[:PORT] or rtu:///dev/ttyUSB0.
    pub connection: ConnectionUrl,
    /// The Modbus unit id (default 1): 1..247 on a serial line (0 is broadcast, which nothing answers); TCP devices may use 0..255.
    #[schemars(range(min = 0, max = 255))]
    pub unit: Option<u8>,
    /// Part of the default item keys (default: the profile's, else "generic").
    pub model: Option<Model>,
    /// Default poll interval of its items (default "10s").
    pub poll_interval: Option<Duration>,
    /// Per request (default "1s").
    pub timeout: Option<Duration>,
    /// Tries again after a failed request (default 1).
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<u8>,
    /// The device's limit of registers per read (default 125).
    #[schemars(range(min = 1, max = 125))]
    pub max_read_registers: Option<u8>,
    /// Unused registers one read may span to merge two items (default 8).
    #[schemars(range(min = 0, max = 125))]
    pub max_gap: Option<u8>,
    /// Default byte order of 32/64-bit values (default ABCD).
    pub byte_order: Option<ByteOrder>,
    /// The device's type, as an upstream Thing's type (e.g. "heating/heat-pump").
    #[schemars(rename = "type")]
    pub kind: Option<Text>,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
    /// A shared register map, relative to this file (e.g. "profiles/nibe-f1345.toml").
    pub profile: Option<FilePath>,
    /// How long a config request may wait for the device before it expires (default "10m").
    pub write_expiry: Option<Duration>,
    /// Silence between the end of one answer and the next request to this device, at most "60s" (default "0s"; for RS-485 converters that need bus release time).
    pub delay_between_requests: Option<Duration>,
    /// TCP only: wait after connecting before the first request, at most "60s" (default "0s"; for devices such as some Huawei dongles).
    pub delay_after_connect: Option<Duration>,
    /// The host Thing's id assigned upstream (default: UUID v5 of modbridge://<gateway id>/hosts/<host>).
    pub uuid: Option<UuidText>,
    /// The `[[things]]` id that is this host's parent Thing (default: the gateway).
    pub thing: Option<ThingId>,
    /// Serial only: line speed (default 9600).
    #[schemars(range(min = 50, max = 4000000))]
    pub baud: Option<u32>,
    /// Serial only (default "none").
    pub parity: Option<Parity>,
    /// Serial only (default 8).
    #[schemars(range(min = 5, max = 8))]
    pub data_bits: Option<u8>,
    /// Serial only (default 1).
    #[schemars(range(min = 1, max = 2))]
    pub stop_bits: Option<u8>,
    /// The device's values, one `[[hosts.items]]` block each (after the profile's).
    pub items: Option<Vec<Item>>,
}

/// `[[hosts.items]]`, or `[[items]]` in a profile: one value of a device.
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Item {
    /// A display name (default: the key).
    pub name: Option<Text>,
    /// holding, input, coil or discrete.
    pub table: Table,
    /// The 0-based protocol address (holding register 40001 is address 0).
    #[schemars(range(min = 0, max = 65535))]
    pub address: u16,
    /// Default: u16 in a register table, bool for coils and discrete inputs.
    #[schemars(rename = "type")]
    pub value_type: Option<ValueType>,
    /// A bool taken from one bit of a register: 0 (least significant) to 15.
    #[schemars(range(min = 0, max = 15))]
    pub bit: Option<u8>,
    /// value = raw * scale + offset (default 1; not 0).
    pub scale: Option<f64>,
    /// value = raw * scale + offset (default 0).
    pub offset: Option<f64>,
    /// Engineering unit, e.g. "degC".
    pub unit: Option<String>,
    /// Default: modbus.<host>.<model>.<unit>.<Modicon reference>.
    pub key: Option<ItemKey>,
    /// Overrides the host's byte order for this item.
    pub byte_order: Option<ByteOrder>,
    /// Overrides the host's poll interval for this item.
    pub poll_interval: Option<Duration>,
    /// A change smaller than this is not a new history point...
    #[schemars(range(min = 0.0))]
    pub deadband: Option<f64>,
    /// ...unless this long has passed since the last one.
    pub heartbeat: Option<Duration>,
    /// Writes below this are refused.
    pub lower_bound: Option<f64>,
    /// Writes above this are refused.
    pub upper_bound: Option<f64>,
    /// Accepts config requests (holding or coil only; default false).
    pub configurable: Option<bool>,
    /// Free-form tags.
    pub tags: Option<Vec<String>>,
    /// The Time-series id assigned upstream (default: UUID v5 of modbridge://<gateway id>/hosts/<host>/items/<key>).
    pub uuid: Option<UuidText>,
    /// The `[[things]]` id whose Time-series this is (default: its host's Thing).
    pub thing: Option<ThingId>,
    /// The unit's SI symbol upstream (default: from unit, degC -> °C, m3/h -> m³/h, ...).
    pub si_unit: Option<Text>,
}

/// `[[triggers]]`: an alarm rule.
#[derive(JsonSchema)]
#[schemars(inline, deny_unknown_fields)]
pub struct Trigger {
    /// A unique positive integer.
    #[schemars(range(min = 1))]
    pub triggerid: u64,
    /// What the alarm means.
    pub description: Option<String>,
    /// A number from the [severity] table.
    #[schemars(range(min = 0, max = 255))]
    pub severity: u8,
    /// e.g. "max(/pump/modbus.pump.F1345.3.30004,5m) < -20".
    pub expression: Text,
    /// Optional hysteresis: the problem ends only when this is true.
    pub recovery_expression: Option<Text>,
}

/// A device profile: a register map shared by many hosts
/// (`profile = "profiles/x.toml"`). The host's own settings win.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct ProfileFile {
    /// Default model of the hosts using it.
    pub model: Option<Model>,
    /// Default type of the hosts using it.
    #[schemars(rename = "type")]
    pub kind: Option<Text>,
    /// Default byte order.
    pub byte_order: Option<ByteOrder>,
    /// The device's limit of registers per read.
    #[schemars(range(min = 1, max = 125))]
    pub max_read_registers: Option<u8>,
    /// Unused registers one read may span.
    #[schemars(range(min = 0, max = 125))]
    pub max_gap: Option<u8>,
    /// Default poll interval.
    pub poll_interval: Option<Duration>,
    /// Per request.
    pub timeout: Option<Duration>,
    /// The register map, one `[[items]]` block each.
    pub items: Option<Vec<Item>>,
}
