//! The validated, immutable description of what the gateway does: hosts,
//! items, triggers and the settings around them.
//!
//! `config` turns a TOML file into a [`Config`]; everything downstream (plan,
//! poll, store, uplink, api) only ever sees these types, so a value here has
//! already passed every semantic check.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use uuid::Uuid;

use crate::expr::Expr;

/// A Modbus data table. The four tables have separate address spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Read/write single bits (function codes 1, 5, 15).
    Coil,
    /// Read-only single bits (function code 2).
    Discrete,
    /// Read-only 16-bit registers (function code 4).
    Input,
    /// Read/write 16-bit registers (function codes 3, 6, 16).
    Holding,
}

impl Table {
    /// The name used in the config file and in `check` output.
    pub fn name(self) -> &'static str {
        match self {
            Table::Coil => "coil",
            Table::Discrete => "discrete",
            Table::Input => "input",
            Table::Holding => "holding",
        }
    }

    /// Parses the config file's spelling.
    pub fn parse(s: &str) -> Option<Table> {
        match s {
            "coil" => Some(Table::Coil),
            "discrete" => Some(Table::Discrete),
            "input" => Some(Table::Input),
            "holding" => Some(Table::Holding),
            _ => None,
        }
    }

    /// True for the single-bit tables (coils and discrete inputs).
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    /// True for the tables a master may write (coils and holding registers).
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }

    /// The Modbus protocol limit for one read request of this table.
    pub fn protocol_max_read(self) -> u16 {
        if self.is_bits() {
            2000
        } else {
            125
        }
    }

    /// The Modicon reference of a 0-based address: coil `address+1`, discrete
    /// `10001+address`, input `30001+address`, holding `40001+address`; from
    /// address 9999 on, six digits (`100001+`, `300001+`, `400001+`).
    pub fn modicon(self, address: u16) -> u32 {
        let a = u32::from(address);
        let (five, six) = match self {
            Table::Coil => return a + 1,
            Table::Discrete => (10001, 100001),
            Table::Input => (30001, 300001),
            Table::Holding => (40001, 400001),
        };
        if a < 9999 {
            five + a
        } else {
            six + a
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How an item's value is laid out in its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// A coil, a discrete input, or one bit of a register.
    Bool,
}

impl ValueType {
    /// The config file's spelling.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::U64 => "u64",
            ValueType::I64 => "i64",
            ValueType::F32 => "f32",
            ValueType::F64 => "f64",
            ValueType::Bool => "bool",
        }
    }

    /// Parses the config file's spelling.
    pub fn parse(s: &str) -> Option<ValueType> {
        Some(match s {
            "u16" => ValueType::U16,
            "i16" => ValueType::I16,
            "u32" => ValueType::U32,
            "i32" => ValueType::I32,
            "u64" => ValueType::U64,
            "i64" => ValueType::I64,
            "f32" => ValueType::F32,
            "f64" => ValueType::F64,
            "bool" => ValueType::Bool,
            _ => return None,
        })
    }

    /// How many 16-bit registers the value occupies in a register table.
    pub fn registers(self) -> u16 {
        match self {
            ValueType::U16 | ValueType::I16 | ValueType::Bool => 1,
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            ValueType::U64 | ValueType::I64 | ValueType::F64 => 4,
        }
    }

    /// True for the floating point types.
    pub fn is_float(self) -> bool {
        matches!(self, ValueType::F32 | ValueType::F64)
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The byte order of 32- and 64-bit values, naming the bytes of a 32-bit value
/// from the most significant: `ABCD` big-endian, `DCBA` little-endian, `BADC`
/// bytes swapped inside each word, `CDAB` words in reverse order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ByteOrder {
    #[default]
    Abcd,
    Dcba,
    Badc,
    Cdab,
}

impl ByteOrder {
    /// Every byte order, in the order `probe` prints them.
    pub const ALL: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Dcba,
        ByteOrder::Badc,
        ByteOrder::Cdab,
    ];

    /// The config file's spelling.
    pub fn name(self) -> &'static str {
        match self {
            ByteOrder::Abcd => "ABCD",
            ByteOrder::Dcba => "DCBA",
            ByteOrder::Badc => "BADC",
            ByteOrder::Cdab => "CDAB",
        }
    }

    /// Parses the config file's spelling.
    pub fn parse(s: &str) -> Option<ByteOrder> {
        Some(match s {
            "ABCD" => ByteOrder::Abcd,
            "DCBA" => ByteOrder::Dcba,
            "BADC" => ByteOrder::Badc,
            "CDAB" => ByteOrder::Cdab,
            _ => return None,
        })
    }
}

impl fmt::Display for ByteOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Serial line parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

impl Parity {
    /// The config file's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Parity::None => "none",
            Parity::Even => "even",
            Parity::Odd => "odd",
        }
    }
}

/// The settings of a serial line. Hosts that share a port must agree on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SerialSettings {
    pub baud: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

impl Default for SerialSettings {
    fn default() -> Self {
        SerialSettings {
            baud: 9600,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        }
    }
}

/// `9600 8N1`: baud rate, data bits, parity, stop bits.
impl fmt::Display for SerialSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(
            f,
            "{} {}{parity}{}",
            self.baud, self.data_bits, self.stop_bits
        )
    }
}

impl SerialSettings {
    /// Bits on the wire per character: start bit, data bits, parity, stop bits.
    pub fn bits_per_char(&self) -> u32 {
        1 + u32::from(self.data_bits)
            + u32::from(self.parity != Parity::None)
            + u32::from(self.stop_bits)
    }

    /// The silence a Modbus RTU master must keep between frames: 3.5
    /// character times, and a fixed 1.75 ms above 19200 baud (Modbus over
    /// serial line spec, 2.5.1.1).
    pub fn inter_frame_silence(&self) -> Duration {
        if self.baud > 19200 {
            Duration::from_micros(1750)
        } else {
            let micros = u64::from(self.bits_per_char()) * 3_500_000 / u64::from(self.baud.max(1));
            Duration::from_micros(micros)
        }
    }
}

/// Where a host is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Connection {
    /// Modbus TCP, `tcp://HOST:PORT` (port 502 when left out).
    Tcp { host: String, port: u16 },
    /// Modbus RTU on a serial port, `rtu:///dev/ttyUSB0`.
    Rtu { path: String },
}

impl Connection {
    /// Parses `tcp://host[:port]` or `rtu:///dev/path`.
    pub fn parse(url: &str) -> Result<Connection, String> {
        if let Some(rest) = url.strip_prefix("tcp://") {
            let rest = rest.trim_end_matches('/');
            if rest.is_empty() {
                return Err(format!("connection {url:?} has no host"));
            }
            // [v6]:port, host:port or host.
            let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
                let (h, tail) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("connection {url:?}: unclosed '['"))?;
                let port = match tail.strip_prefix(':') {
                    Some(p) => p
                        .parse::<u16>()
                        .map_err(|_| format!("connection {url:?}: bad port {p:?}"))?,
                    None if tail.is_empty() => 502,
                    None => return Err(format!("connection {url:?}: junk after ']'")),
                };
                (h.to_string(), port)
            } else if let Some((h, p)) = rest.rsplit_once(':') {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("connection {url:?}: bad port {p:?}"))?;
                (h.to_string(), port)
            } else {
                (rest.to_string(), 502)
            };
            if host.is_empty() || host.contains('/') {
                return Err(format!("connection {url:?}: bad host {host:?}"));
            }
            if port == 0 {
                return Err(format!("connection {url:?}: port 0"));
            }
            Ok(Connection::Tcp { host, port })
        } else if let Some(path) = url.strip_prefix("rtu://") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(format!(
                    "connection {url:?}: expected rtu:///dev/ttyXXX (an absolute device path)"
                ));
            }
            Ok(Connection::Rtu {
                path: path.to_string(),
            })
        } else {
            Err(format!(
                "connection {url:?}: expected tcp://HOST:PORT or rtu:///dev/ttyXXX"
            ))
        }
    }

    /// True for serial connections.
    pub fn is_serial(&self) -> bool {
        matches!(self, Connection::Rtu { .. })
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Connection::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Connection::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Connection::Rtu { path } => write!(f, "rtu://{path}"),
        }
    }
}

/// One value of a host, validated.
///
/// Kept small (72 bytes): a gateway may hold 100,000 of these. Settings most
/// items leave unset live in [`ItemExtra`], allocated only when one is set;
/// read them through the accessors (`name()`, `unit()`, `deadband()`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemSpec {
    /// Unique per host; `[A-Za-z0-9_.:-]{1,128}`.
    pub key: String,
    pub table: Table,
    /// 0-based protocol address of the first register or bit.
    pub address: u16,
    pub value_type: ValueType,
    /// For a bool taken from a register: which bit (0 = least significant).
    pub bit: Option<u8>,
    pub byte_order: ByteOrder,
    /// True when the item accepts config requests (holding or coil only).
    pub configurable: bool,
    /// value = raw * scale + offset
    pub scale: f64,
    pub offset: f64,
    pub poll_interval: Duration,
    /// None when every field of [`ItemExtra`] has its default.
    pub extra: Option<Box<ItemExtra>>,
}

// The budget above, held by the compiler (pointers are 8 bytes on 64-bit targets).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<ItemSpec>() == 72);

/// The rarely set part of an item.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemExtra {
    /// Human readable; the seed's `name`. Empty: the key is shown.
    pub name: String,
    /// Engineering unit, e.g. `degC`; empty when not given.
    pub unit: String,
    /// A change smaller than this is not a new history point...
    pub deadband: Option<f64>,
    /// ...unless this long has passed since the last history point.
    pub heartbeat: Option<Duration>,
    /// Valid range for writes.
    pub lower_bound: Option<f64>,
    pub upper_bound: Option<f64>,
    pub tags: Vec<String>,
    /// How the item appears upstream; None when nothing of it is set.
    pub upstream: Option<Box<ItemUpstream>>,
}

/// The upstream settings of an item as a Time-series, rarely set.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemUpstream {
    /// An id assigned upstream (`uuid = "..."`); else the stable derived one.
    pub uuid: Option<Uuid>,
    /// The `[[things]]` entry the item belongs to instead of its host.
    pub thing: Option<String>,
    /// The SI symbol of its unit when the automatic one is not right.
    pub si_unit: Option<String>,
}

impl ItemSpec {
    /// The display name: the configured name, or the key when none was given.
    pub fn name(&self) -> &str {
        match &self.extra {
            Some(x) if !x.name.is_empty() => &x.name,
            _ => &self.key,
        }
    }

    /// Engineering unit; empty when not given.
    pub fn unit(&self) -> &str {
        self.extra.as_ref().map_or("", |x| &x.unit)
    }

    pub fn deadband(&self) -> Option<f64> {
        self.extra.as_ref().and_then(|x| x.deadband)
    }

    pub fn heartbeat(&self) -> Option<Duration> {
        self.extra.as_ref().and_then(|x| x.heartbeat)
    }

    /// Lowest value a write may set.
    pub fn lower_bound(&self) -> Option<f64> {
        self.extra.as_ref().and_then(|x| x.lower_bound)
    }

    /// Highest value a write may set.
    pub fn upper_bound(&self) -> Option<f64> {
        self.extra.as_ref().and_then(|x| x.upper_bound)
    }

    pub fn tags(&self) -> &[String] {
        self.extra.as_ref().map_or(&[], |x| &x.tags)
    }

    /// The upstream settings (Time-series uuid, thing, SI unit), if any is set.
    pub fn upstream(&self) -> Option<&ItemUpstream> {
        self.extra.as_ref().and_then(|x| x.upstream.as_deref())
    }

    /// The extra settings, created with defaults if the item has none yet.
    pub fn extra_mut(&mut self) -> &mut ItemExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// Drops the extra settings if they are all defaults.
    pub fn compact(&mut self) {
        if self
            .extra
            .as_deref()
            .is_some_and(|x| *x == ItemExtra::default())
        {
            self.extra = None;
        }
    }

    /// An item with the config file's defaults: named after its key, scale 1,
    /// offset 0, no unit, byte order ABCD, polled every 10 s, no deadband,
    /// bounds or tags, not configurable.
    pub fn new(key: &str, table: Table, address: u16, value_type: ValueType) -> ItemSpec {
        ItemSpec {
            key: key.to_string(),
            table,
            address,
            value_type,
            bit: None,
            byte_order: ByteOrder::Abcd,
            configurable: false,
            scale: 1.0,
            offset: 0.0,
            poll_interval: Duration::from_secs(10),
            extra: None,
        }
    }

    /// How many registers (register tables) or bits (bit tables) the item occupies.
    pub fn width(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.value_type.registers()
        }
    }

    /// The last address the item occupies (inclusive).
    pub fn end(&self) -> u16 {
        self.address.saturating_add(self.width() - 1)
    }

    /// The Modicon reference with the bit suffix, as used in default keys:
    /// `40005` or `40005.2`.
    pub fn reference(&self) -> String {
        let r = self.table.modicon(self.address);
        match self.bit {
            Some(b) => format!("{r}.{b}"),
            None => r.to_string(),
        }
    }
}

/// The default item key: `modbus.<host>.<model>.<unit>.<ref>`.
pub fn default_key(
    host: &str,
    model: &str,
    unit: u8,
    table: Table,
    address: u16,
    bit: Option<u8>,
) -> String {
    let r = table.modicon(address);
    match bit {
        Some(b) => format!("modbus.{host}.{model}.{unit}.{r}.{b}"),
        None => format!("modbus.{host}.{model}.{unit}.{r}"),
    }
}

/// One Modbus device the gateway polls, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSpec {
    /// Unique; `[A-Za-z0-9_.-]{1,64}`.
    pub host: String,
    pub name: String,
    pub connection: Connection,
    /// Present exactly when `connection` is serial.
    pub serial: Option<SerialSettings>,
    /// Modbus unit id (slave id).
    pub unit: u8,
    pub model: String,
    pub poll_interval: Duration,
    /// Per request.
    pub timeout: Duration,
    /// Extra attempts after a failed request before it counts as failed.
    pub retries: u32,
    /// This device's limit per read, 1..=125 registers.
    pub max_read_registers: u16,
    /// Unused registers a read may span to merge two items.
    pub max_gap: u16,
    pub byte_order: ByteOrder,
    /// The Thing's type, e.g. `heating/heat-pump`.
    pub kind: Option<String>,
    pub tags: Vec<String>,
    /// How long a config request may stay PENDING before it fails as expired.
    pub write_expiry: Duration,
    /// Pauses the device needs between requests and after a connect.
    pub pacing: Pacing,
    /// The Thing's id assigned upstream (`uuid = "..."`); else the derived one.
    pub uuid: Option<Uuid>,
    /// The `[[things]]` entry that is the host's parent (default: the gateway).
    pub thing: Option<String>,
    pub items: Vec<ItemSpec>,
}

/// Pauses some devices need (host keys `delay_between_requests` and
/// `delay_after_connect`); none by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pacing {
    /// Silence between the end of one answer (or timeout) and the next
    /// request to the host.
    pub between_requests: Duration,
    /// Wait after a TCP connect before the first request.
    pub after_connect: Duration,
}

impl HostSpec {
    /// A TCP host with the config file's defaults (unit 1, model `generic`,
    /// polled every 10 s, timeout 1 s, one retry, 125 registers, gap 8, ABCD,
    /// writes expire after 10 minutes, no pacing).
    pub fn tcp(host: &str, address: &str, port: u16, items: Vec<ItemSpec>) -> HostSpec {
        HostSpec {
            host: host.to_string(),
            name: host.to_string(),
            connection: Connection::Tcp {
                host: address.to_string(),
                port,
            },
            serial: None,
            unit: 1,
            model: "generic".into(),
            poll_interval: Duration::from_secs(10),
            timeout: Duration::from_secs(1),
            retries: 1,
            max_read_registers: 125,
            max_gap: 8,
            byte_order: ByteOrder::Abcd,
            kind: None,
            tags: Vec::new(),
            write_expiry: Duration::from_secs(600),
            pacing: Pacing::default(),
            uuid: None,
            thing: None,
            items,
        }
    }

    /// The device's IP or host name for the seed's `ip` field; None for serial hosts.
    pub fn ip(&self) -> Option<&str> {
        match &self.connection {
            Connection::Tcp { host, .. } => Some(host),
            Connection::Rtu { .. } => None,
        }
    }

    /// Finds an item by key.
    pub fn item(&self, key: &str) -> Option<&ItemSpec> {
        self.items.iter().find(|i| i.key == key)
    }
}

/// `[gateway]`
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySpec {
    /// `[A-Za-z0-9_-]{1,64}`, used in MQTT topics.
    pub id: String,
    pub name: String,
    /// The SQLite database lives here.
    pub data_dir: PathBuf,
    /// The gateway Thing's id assigned upstream; else the derived one.
    pub uuid: Option<Uuid>,
}

impl GatewaySpec {
    /// A gateway named after its id (as when the config gives no `name`).
    pub fn new(id: &str, data_dir: PathBuf) -> GatewaySpec {
        GatewaySpec {
            id: id.to_string(),
            name: id.to_string(),
            data_dir,
            uuid: None,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq)]
pub struct StorageSpec {
    pub history_retention: Duration,
    pub trend_retention: Duration,
    /// How long alarm events (and their acknowledgements) are kept.
    pub event_retention: Duration,
    /// Hard cap for the database, bytes.
    pub max_size: u64,
    /// Longest a sample waits in memory before it is durable.
    pub commit_interval: Duration,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            history_retention: Duration::from_secs(30 * 86400),
            trend_retention: Duration::from_secs(730 * 86400),
            event_retention: Duration::from_secs(365 * 86400),
            max_size: 1 << 30,
            commit_interval: Duration::from_secs(1),
        }
    }
}

/// `[mqtt]`
#[derive(Debug, Clone, PartialEq)]
pub struct MqttSpec {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub topic_prefix: String,
    pub keep_alive: Duration,
}

impl MqttSpec {
    /// The defaults for a broker at `url`: client id `modbridge-<gateway id>`,
    /// topic prefix `modbridge`, keep-alive 30 s, no credentials or TLS files.
    pub fn new(url: &str, gateway_id: &str) -> MqttSpec {
        MqttSpec {
            url: url.to_string(),
            client_id: format!("modbridge-{gateway_id}"),
            username: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            topic_prefix: "modbridge".to_string(),
            keep_alive: Duration::from_secs(30),
        }
    }
}

/// `[sparkplug]`: the Sparkplug B uplink. Connection keys default to
/// those of `[mqtt]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SparkplugSpec {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub client_id: String,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub keep_alive: Duration,
    pub group_id: String,
    pub edge_node_id: String,
    pub primary_host_id: Option<String>,
}

impl SparkplugSpec {
    /// The defaults for a broker at `url` and a group: client id
    /// `modbridge-spb-<gateway id>`, edge node id the gateway id, keep-alive
    /// 30 s, no credentials, TLS files or primary host.
    pub fn new(url: &str, group_id: &str, gateway_id: &str) -> SparkplugSpec {
        SparkplugSpec {
            url: url.to_string(),
            client_id: format!("modbridge-spb-{gateway_id}"),
            username: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            keep_alive: Duration::from_secs(30),
            group_id: group_id.to_string(),
            edge_node_id: gateway_id.to_string(),
            primary_host_id: None,
        }
    }
}

/// `[api]`
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSpec {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// Names besides IP literals, `localhost` and the box's host name that
    /// requests may carry in `Host` (lower case, no port).
    pub allowed_hosts: Vec<String>,
}

impl Default for ApiSpec {
    fn default() -> Self {
        ApiSpec {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token_file: None,
            allowed_hosts: Vec::new(),
        }
    }
}

/// `[[things]]`: a group of hosts or items that belong together.
#[derive(Debug, Clone, PartialEq)]
pub struct ThingSpec {
    /// Unique among things and hosts; `[A-Za-z0-9_.-]{1,64}`.
    pub id: String,
    pub uuid: Option<Uuid>,
    pub name: String,
    pub kind: Option<String>,
    pub tags: Vec<String>,
    /// Another thing's id or a host; None: the gateway.
    pub parent: Option<String>,
}

/// `[remote]`: configuration deployed from upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSpec {
    /// Upstream may deploy configs and profiles.
    pub config: bool,
    /// Probation after a deployment before it counts as applied.
    pub rollback_after: Duration,
}

impl Default for RemoteSpec {
    fn default() -> Self {
        RemoteSpec {
            config: false,
            rollback_after: Duration::from_secs(120),
        }
    }
}

/// Who brought a file: `"local"` or a deployment's audit strings.
pub const LOCAL_ORIGIN: &str = "local";

/// One file the running config was built from (the config or a profile),
/// with the exact text that was loaded: a Dataset upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSource {
    /// `modbridge.toml` for the config, else the profile path as the config writes it.
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    pub text: Arc<str>,
    /// Unix seconds.
    pub created: i64,
    pub updated: i64,
    pub created_by: String,
    pub updated_by: String,
}

/// The Dataset name of the running config, whatever its file is called.
pub const CONFIG_DATASET: &str = "modbridge.toml";

/// Kept here too for the config readers that name it with the model types.
pub use crate::diag::SourcePos;

/// `[[triggers]]`, with its expressions parsed and already checked against
/// the config's hosts and items by the loader, so nothing downstream parses
/// them again.
#[derive(Debug, Clone, PartialEq)]
pub struct TriggerSpec {
    pub triggerid: u64,
    pub description: String,
    /// 3..=5 by default; any key of the severity table.
    pub severity: u8,
    /// Names at least one item.
    pub expression: Expr,
    pub recovery_expression: Option<Expr>,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// The local config file this config stands for: `path` itself, or the
    /// local file of a config deployed from upstream.
    pub local_path: PathBuf,
    pub gateway: GatewaySpec,
    pub storage: StorageSpec,
    /// Severity number -> text; defaults 3 C-Larm, 4 B-Larm, 5 A-Larm.
    pub severity: BTreeMap<u8, String>,
    pub mqtt: Option<MqttSpec>,
    /// `[sparkplug]`: the Sparkplug B uplink, beside `[mqtt]` or alone.
    pub sparkplug: Option<SparkplugSpec>,
    pub api: ApiSpec,
    pub hosts: Vec<std::sync::Arc<HostSpec>>,
    pub triggers: Vec<TriggerSpec>,
    /// Modbus TCP proxies onto the gateway's links (`[[proxy]]`).
    pub proxies: Vec<ProxySpec>,
    /// `[[things]]`, in file order.
    pub things: Vec<ThingSpec>,
    pub remote: RemoteSpec,
    /// The config file (first) and the profiles it uses, as loaded.
    pub sources: Vec<DatasetSource>,
}

/// One `[[proxy]]`: a Modbus TCP server that forwards each request through
/// the gateway's own link to `connection`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxySpec {
    pub listen: std::net::SocketAddr,
    pub connection: Connection,
    /// The serial line's settings (those of the hosts on it).
    pub serial: Option<SerialSettings>,
    /// Unit ids it forwards; `None`: any.
    pub units: Option<Vec<u8>>,
    /// Whether write function codes are forwarded.
    pub writes: bool,
    /// Per forwarded request, from when it goes out on the link.
    pub timeout: Duration,
}

impl ProxySpec {
    /// The name in metrics and logs: its listen address.
    pub fn name(&self) -> String {
        self.listen.to_string()
    }
}

impl Config {
    /// A config with these hosts and the defaults for everything else:
    /// default storage, API and severity table, no MQTT, no triggers.
    pub fn new(path: PathBuf, gateway: GatewaySpec, hosts: Vec<HostSpec>) -> Config {
        Config {
            local_path: path.clone(),
            path,
            gateway,
            storage: StorageSpec::default(),
            severity: default_severity(),
            mqtt: None,
            sparkplug: None,
            api: ApiSpec::default(),
            hosts: hosts.into_iter().map(std::sync::Arc::new).collect(),
            triggers: Vec::new(),
            proxies: Vec::new(),
            things: Vec::new(),
            remote: RemoteSpec::default(),
            sources: Vec::new(),
        }
    }

    /// Finds a host by id.
    pub fn host(&self, host: &str) -> Option<&std::sync::Arc<HostSpec>> {
        self.hosts.iter().find(|h| h.host == host)
    }
}

/// The default severity table.
pub fn default_severity() -> BTreeMap<u8, String> {
    BTreeMap::from([
        (3, "C-Larm".to_string()),
        (4, "B-Larm".to_string()),
        (5, "A-Larm".to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modicon_references() {
        let cases = [
            (Table::Coil, 0, 1),
            (Table::Coil, 12000, 12001),
            (Table::Discrete, 0, 10001),
            (Table::Discrete, 9998, 19999),
            (Table::Discrete, 9999, 110_000),
            (Table::Input, 3, 30004),
            (Table::Holding, 3, 40004),
            (Table::Holding, 9998, 49999),
            (Table::Holding, 9999, 410_000),
            (Table::Holding, 12000, 412_001),
        ];
        for (table, address, expected) in cases {
            assert_eq!(table.modicon(address), expected, "{table} {address}");
        }
    }

    #[test]
    fn default_keys() {
        assert_eq!(
            default_key("pump", "F1345", 3, Table::Holding, 3, None),
            "modbus.pump.F1345.3.40004"
        );
        assert_eq!(
            default_key("pump", "F1345", 3, Table::Holding, 4, Some(2)),
            "modbus.pump.F1345.3.40005.2"
        );
    }

    #[test]
    fn connections() {
        assert_eq!(
            Connection::parse("tcp://10.0.0.21:502"),
            Ok(Connection::Tcp {
                host: "10.0.0.21".into(),
                port: 502
            })
        );
        assert_eq!(
            Connection::parse("tcp://plc.local"),
            Ok(Connection::Tcp {
                host: "plc.local".into(),
                port: 502
            })
        );
        assert_eq!(
            Connection::parse("tcp://[::1]:1502"),
            Ok(Connection::Tcp {
                host: "::1".into(),
                port: 1502
            })
        );
        assert_eq!(
            Connection::parse("rtu:///dev/ttyUSB0"),
            Ok(Connection::Rtu {
                path: "/dev/ttyUSB0".into()
            })
        );
        for bad in [
            "tcp://",
            "tcp://h:99999",
            "rtu://ttyUSB0",
            "udp://x",
            "tcp://h:0",
        ] {
            assert!(Connection::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn inter_frame_silence() {
        let s = SerialSettings::default(); // 9600 8N1: 10 bits/char
        assert_eq!(s.inter_frame_silence(), Duration::from_micros(3645));
        let fast = SerialSettings { baud: 115_200, ..s };
        assert_eq!(fast.inter_frame_silence(), Duration::from_micros(1750));
    }
}
