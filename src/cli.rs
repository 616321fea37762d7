//! The command line: `run`, `check`, `read`, `probe`, `write`, `ack`, `demo`, `simulate`.
//!
//! Exit status: 0 success, 2 bad config or bad usage, 1 anything else.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::modbus::{Buses, Link, Operation, Priority, ReadData};
use crate::model::{Connection, HostSpec, SerialSettings, Table};
use crate::poll::HostReader;
use crate::{config, daemon, decode, plan, sim};

/// The default config file.
pub const DEFAULT_CONFIG: &str = "/etc/modbridge/modbridge.toml";

/// modbridge: a Modbus edge gateway.
#[derive(Debug, Parser)]
#[command(name = "modbridge", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway daemon.
    Run {
        /// Config file.
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate the config without touching devices; print hosts, items and the
    /// planned Modbus requests per poll cycle.
    Check {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Poll one host (or one item) now and print the values, for wiring checks.
    Read {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The host id.
        #[arg(long)]
        host: String,
        /// Only this item.
        #[arg(long)]
        key: Option<String>,
    },
    /// Read raw registers and show every plausible decoding side by side.
    Probe(ProbeArgs),
    /// Ask the running gateway (through its HTTP API) to write a value to a
    /// configurable item, and wait for the device's answer.
    Write {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The host id.
        #[arg(long)]
        host: String,
        /// The item's key.
        #[arg(long)]
        key: String,
        /// The value to write, in engineering units.
        #[arg(long, allow_negative_numbers = true)]
        target: f64,
        /// Write only if the device holds this value now.
        #[arg(long, allow_negative_numbers = true)]
        expected: Option<f64>,
        /// An id of yours, echoed in the item's config.
        #[arg(long)]
        id: Option<String>,
        /// How long to wait for the outcome ("0s": only submit).
        #[arg(long, default_value = "15s")]
        wait: String,
    },
    /// Acknowledge an alarm event on the running gateway (through its HTTP API).
    Ack {
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// The event's id.
        #[arg(long)]
        event: u64,
        /// What was done.
        #[arg(long)]
        message: String,
    },
    /// A self-contained demo: a simulated heat pump on loopback, polled by the gateway.
    Demo {
        /// Stop after this long (e.g. "30s"); default: run until Ctrl-C.
        #[arg(long)]
        duration: Option<String>,
        /// Where the demo keeps its config and database.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Serve simulated devices for benchmarks: DEVICES TCP devices on
    /// consecutive ports, each with REGISTERS holding registers that change every second.
    Simulate {
        #[arg(long, default_value_t = 10)]
        devices: u16,
        #[arg(long, default_value_t = 15020)]
        base_port: u16,
        #[arg(long, default_value_t = 100)]
        registers: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
    },
}

/// Runs a parsed command line.
pub fn main(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("modbridge: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Run { config } => runtime.block_on(cmd_run(&config)),
        Command::Check { config } => cmd_check(&config),
        Command::Read { config, host, key } => {
            runtime.block_on(cmd_read(&config, &host, key.as_deref()))
        }
        Command::Probe(args) => runtime.block_on(cmd_probe(args)),
        Command::Write {
            config,
            host,
            key,
            target,
            expected,
            id,
            wait,
        } => runtime.block_on(cmd_write(WriteArgs {
            config,
            host,
            key,
            target,
            expected,
            id,
            wait,
        })),
        Command::Ack {
            config,
            event,
            message,
        } => runtime.block_on(cmd_ack(&config, event, &message)),
        Command::Demo { duration, dir } => runtime.block_on(cmd_demo(duration, dir)),
        Command::Simulate {
            devices,
            base_port,
            registers,
            bind,
        } => runtime.block_on(cmd_simulate(devices, base_port, registers, &bind)),
    }
}

fn load_or_report(path: &Path) -> Result<crate::model::Config, ExitCode> {
    config::load(path).map_err(|errors| {
        let prefix = crate::logging::error_prefix();
        for d in &errors.0 {
            eprintln!("{prefix}{d}");
        }
        eprintln!(
            "{prefix}{}: {} problem{} found",
            path.display(),
            errors.0.len(),
            if errors.0.len() == 1 { "" } else { "s" }
        );
        ExitCode::from(2)
    })
}

async fn cmd_run(path: &Path) -> ExitCode {
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match daemon::run(config, daemon::termination_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway stopped with an error");
            eprintln!("{}modbridge: {e}", crate::logging::error_prefix());
            ExitCode::from(1)
        }
    }
}

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
            "host {} ({:?}) {} unit {}, model {}, {} item{}",
            host.host,
            host.name,
            link,
            host.unit,
            host.model,
            host.items.len(),
            plural(host.items.len())
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
                crate::units::format_duration(item.poll_interval)
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
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn cmd_check(path: &Path) -> ExitCode {
    match load_or_report(path) {
        Ok(config) => {
            print!("{}", check_report(&config));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn cmd_read(path: &Path, host_id: &str, key: Option<&str>) -> ExitCode {
    let config = match load_or_report(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(host) = config.host(host_id) else {
        let known: Vec<&str> = config.hosts.iter().map(|h| h.host.as_str()).collect();
        eprintln!(
            "modbridge: no host {host_id:?} in {}; hosts: {}",
            path.display(),
            known.join(", ")
        );
        return ExitCode::from(2);
    };
    let items: Vec<usize> = match key {
        None => (0..host.items.len()).collect(),
        Some(k) => match host.items.iter().position(|i| i.key == k) {
            Some(i) => vec![i],
            None => {
                eprintln!("modbridge: host {host_id:?} has no item {k:?}");
                return ExitCode::from(2);
            }
        },
    };
    let buses = Buses::default();
    let mut reader = HostReader::new(host.clone(), &buses);
    let started = std::time::Instant::now();
    let report = reader.read(&items).await;
    let elapsed = started.elapsed();
    print!("{}", read_table(host, &report.readings));
    println!(
        "{} request{} in {:.0} ms{}",
        report.requests,
        plural(report.requests as usize),
        elapsed.as_secs_f64() * 1000.0,
        match &report.transport_error {
            Some(e) => format!("; link failed: {e}"),
            None => String::new(),
        }
    );
    if report.readings.iter().all(|r| r.value.is_ok()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The table `read` prints.
pub fn read_table(host: &HostSpec, readings: &[crate::poll::ItemReading]) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "KEY".into(),
        "ADDRESS".into(),
        "TYPE".into(),
        "VALUE".into(),
        "NAME".into(),
    ]];
    for r in readings {
        let item = &host.items[r.index];
        let place = match item.bit {
            Some(b) => format!(
                "{} {}.{} ({})",
                item.table,
                item.address,
                b,
                item.reference()
            ),
            None => format!("{} {} ({})", item.table, item.address, item.reference()),
        };
        let value = match &r.value {
            Ok(v) => format!("{} {}", format_value(*v), item.unit())
                .trim_end()
                .to_string(),
            Err(e) => format!("ERROR: {e}"),
        };
        rows.push([
            item.key.clone(),
            place,
            item.value_type.to_string(),
            value,
            item.name().to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let _ = writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {:w3$}  {}",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3]
        );
    }
    out
}

/// A value as people read it: integers without a fraction, others with up to 6 digits.
pub fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// `modbridge probe`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// tcp://HOST:PORT or rtu:///dev/ttyUSB0
    #[arg(long)]
    connection: String,
    /// Modbus unit id.
    #[arg(long, default_value_t = 1)]
    unit: u8,
    /// holding, input, coil or discrete.
    #[arg(long)]
    table: String,
    /// First 0-based address.
    #[arg(long)]
    address: u16,
    /// How many registers (or bits).
    #[arg(long, default_value_t = 10)]
    count: u16,
    /// Serial line speed (rtu only).
    #[arg(long, default_value_t = 9600)]
    baud: u32,
    /// Serial parity: none, even or odd (rtu only).
    #[arg(long, default_value = "none")]
    parity: String,
    /// Per request.
    #[arg(long, default_value = "1s")]
    timeout: String,
}

async fn cmd_probe(args: ProbeArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("modbridge probe: {msg}");
        ExitCode::from(2)
    };
    let connection = match Connection::parse(&args.connection) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let Some(table) = Table::parse(&args.table) else {
        return usage(format!(
            "unknown table {:?}; use holding, input, coil or discrete",
            args.table
        ));
    };
    let max = table.protocol_max_read();
    if args.count == 0 || args.count > max {
        return usage(format!("--count must be 1..{max} for {table}"));
    }
    if u32::from(args.address) + u32::from(args.count) > 65536 {
        return usage("address + count goes past 65535".into());
    }
    let parity = match args.parity.as_str() {
        "none" => crate::model::Parity::None,
        "even" => crate::model::Parity::Even,
        "odd" => crate::model::Parity::Odd,
        other => return usage(format!("unknown parity {other:?}; use none, even or odd")),
    };
    let timeout = match crate::units::parse_duration(&args.timeout) {
        Ok(t) => t,
        Err(e) => return usage(format!("--timeout: {e}")),
    };
    let host = HostSpec {
        serial: connection.is_serial().then_some(SerialSettings {
            baud: args.baud,
            parity,
            ..SerialSettings::default()
        }),
        connection,
        unit: args.unit,
        timeout,
        retries: 0,
        max_gap: 0,
        ..HostSpec::tcp("probe", "127.0.0.1", 502, Vec::new())
    };
    let buses = Buses::default();
    let mut link = Link::new(&host, &buses);
    let op = Operation::Read {
        table,
        start: args.address,
        count: args.count,
    };
    println!(
        "{} unit {} {} {}..{} ({}..{})",
        host.connection,
        host.unit,
        table,
        args.address,
        u32::from(args.address) + u32::from(args.count) - 1,
        table.modicon(args.address),
        table.modicon(args.address.saturating_add(args.count - 1))
    );
    match link.request(&op, Priority::Poll).await {
        Ok(ReadData::Words(words)) => {
            print!("{}", decode::probe_table(args.address, &words));
            ExitCode::SUCCESS
        }
        Ok(ReadData::Bits(bits)) => {
            for (i, b) in bits.iter().enumerate() {
                let a = usize::from(args.address) + i;
                let modicon = u16::try_from(a).map(|a| table.modicon(a)).unwrap_or(0);
                println!("{a:>5}  {modicon:>6}  {}", u8::from(*b));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("modbridge probe: {e}");
            ExitCode::from(1)
        }
    }
}

/// How long `write` and `ack` wait for one answer of the API.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers every `write`/`ack` request carries.
type ApiHeaders = Vec<(&'static str, String)>;

/// Loads the config at `path` (reporting its problems) and gives where the
/// running gateway's API is, and the headers every request carries: the
/// bearer token (if `token_file` is set) and the user, for the audit trail
/// (`cli <user>`; the API trusts it from loopback peers only).
fn api_target(path: &Path, command: &str) -> Result<(std::net::SocketAddr, ApiHeaders), ExitCode> {
    let config = load_or_report(path)?;
    let addr = crate::api::client::connect_addr(config.api.listen);
    if addr.port() == 0 {
        eprintln!(
            "modbridge {command}: [api] listen in {} has port 0; give the port the gateway listens on",
            config.path.display()
        );
        return Err(ExitCode::from(2));
    }
    let mut headers = vec![(crate::api::USER_HEADER, cli_user())];
    if let Some(path) = &config.api.token_file {
        match std::fs::read(path) {
            Ok(bytes) => headers.push((
                "Authorization",
                format!("Bearer {}", String::from_utf8_lossy(bytes.trim_ascii())),
            )),
            Err(e) => {
                eprintln!(
                    "modbridge {command}: cannot read the API token file {}: {e}",
                    path.display()
                );
                return Err(ExitCode::from(1));
            }
        }
    }
    Ok((addr, headers))
}

/// The user running the command (the one who called sudo, if so).
fn cli_user() -> String {
    for var in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            let u = u.trim();
            if !u.is_empty() && u.chars().count() <= 64 && !u.chars().any(char::is_control) {
                return u.to_string();
            }
        }
    }
    "unknown".to_string()
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

struct WriteArgs {
    config: PathBuf,
    host: String,
    key: String,
    target: f64,
    expected: Option<f64>,
    id: Option<String>,
    wait: String,
}

async fn cmd_write(args: WriteArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("modbridge write: {msg}");
        ExitCode::from(2)
    };
    if !args.target.is_finite() {
        return usage("--target must be a finite number".into());
    }
    if args.expected.is_some_and(|e| !e.is_finite()) {
        return usage("--expected must be a finite number".into());
    }
    let wait = match crate::units::parse_duration(&args.wait) {
        Ok(w) => w,
        Err(e) => return usage(format!("--wait: {e}")),
    };
    let (addr, headers) = match api_target(&args.config, "write") {
        Ok(t) => t,
        Err(code) => return code,
    };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut body = serde_json::json!({ "target": args.target });
    if let Some(e) = args.expected {
        body["expected"] = serde_json::json!(e);
    }
    if let Some(id) = &args.id {
        body["id"] = serde_json::json!(id);
    }
    let path = format!(
        "/hosts/{}/items/{}/config",
        crate::api::client::encode(&args.host),
        crate::api::client::encode(&args.key)
    );
    let sent = body.to_string();
    let answer = crate::api::client::request(
        addr,
        "PUT",
        &path,
        &headers,
        Some(sent.as_bytes()),
        API_TIMEOUT,
    )
    .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("modbridge write: {e}");
            return ExitCode::from(1);
        }
    };
    let accepted = match (answer.status, answer.json()) {
        (202, Some(obj)) => obj,
        (status, _) => {
            eprintln!(
                "modbridge write: refused ({status}): {}",
                answer.error_message()
            );
            return ExitCode::from(1);
        }
    };
    // Follow the request until the device answered (or the wait is over).
    let mut current = accepted.clone();
    let deadline = tokio::time::Instant::now() + wait;
    while current["status"] == "PENDING" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match crate::api::client::request(addr, "GET", &path, &headers, None, API_TIMEOUT).await {
            Ok(a) if a.status == 200 => match a.json() {
                Some(obj) => {
                    let same = ["lastclock", "target", "audit", "id"]
                        .iter()
                        .all(|f| obj[*f] == accepted[*f]);
                    if !same {
                        println!("{}", pretty(&current));
                        eprintln!(
                            "modbridge write: superseded by a newer request for {}/{}",
                            args.host, args.key
                        );
                        return ExitCode::from(1);
                    }
                    current = obj;
                }
                None => break,
            },
            Ok(a) => {
                eprintln!(
                    "modbridge write: cannot follow the request ({}): {}",
                    a.status,
                    a.error_message()
                );
                break;
            }
            Err(e) => {
                eprintln!("modbridge write: cannot follow the request: {e}");
                break;
            }
        }
    }
    println!("{}", pretty(&current));
    match current["status"].as_str() {
        Some("SUCCESS") => ExitCode::SUCCESS,
        Some("PENDING") if wait.is_zero() => ExitCode::SUCCESS,
        Some("PENDING") => {
            eprintln!(
                "modbridge write: still PENDING after {}: the device has not been reached; the gateway keeps trying until the request expires",
                crate::units::format_duration(wait)
            );
            ExitCode::from(1)
        }
        _ => {
            eprintln!(
                "modbridge write: FAILED: {}",
                current["reason"].as_str().unwrap_or("no reason given")
            );
            ExitCode::from(1)
        }
    }
}

async fn cmd_ack(path: &Path, event: u64, message: &str) -> ExitCode {
    if message.trim().is_empty() {
        eprintln!("modbridge ack: --message must not be empty");
        return ExitCode::from(2);
    }
    let (addr, headers) = match api_target(path, "ack") {
        Ok(t) => t,
        Err(code) => return code,
    };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = serde_json::json!({ "message": message }).to_string();
    let answer = crate::api::client::request(
        addr,
        "POST",
        &format!("/events/{event}/acknowledgements"),
        &headers,
        Some(body.as_bytes()),
        API_TIMEOUT,
    )
    .await;
    match answer {
        Ok(a) if a.status == 201 => {
            match a.json() {
                Some(v) => println!("{}", pretty(&v)),
                None => println!("{}", String::from_utf8_lossy(&a.body)),
            }
            ExitCode::SUCCESS
        }
        Ok(a) => {
            eprintln!(
                "modbridge ack: refused ({}): {}",
                a.status,
                a.error_message()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("modbridge ack: {e}");
            ExitCode::from(1)
        }
    }
}

/// The demo's config template; its connection and data_dir are replaced at start.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
/// The device profile the demo's simulated heat pump serves.
pub const DEMO_PROFILE: &str = include_str!("../config/profiles/nibe-f1345.toml");
/// The address in the demo template that is replaced by the simulator's.
const DEMO_PLACEHOLDER_ADDR: &str = "127.0.0.1:15502";

async fn cmd_demo(duration: Option<String>, dir: Option<PathBuf>) -> ExitCode {
    let duration = match duration.as_deref().map(crate::units::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            eprintln!("modbridge demo: --duration: {e}");
            return ExitCode::from(2);
        }
    };
    match demo(duration, dir).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modbridge demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn demo(duration: Option<Duration>, dir: Option<PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("modbridge-demo"));
    std::fs::create_dir_all(dir.join("profiles"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("profiles/nibe-f1345.toml"), DEMO_PROFILE)
        .with_context(|| format!("cannot write into {}", dir.display()))?;

    // The simulated heat pump, on a free loopback port.
    let device = sim::SimDevice::new();
    let server = device
        .bind_tcp("127.0.0.1:0")
        .await
        .context("cannot listen on loopback for the simulated device")?;
    let addr = server
        .addr()
        .context("the simulated device has no address")?;
    let text = DEMO_CONFIG
        .replace(DEMO_PLACEHOLDER_ADDR, &addr.to_string())
        .replace(
            "data_dir = \"./demo-data\"",
            &format!("data_dir = {:?}", dir.join("data")),
        );
    let config_path = dir.join("modbridge.toml");
    std::fs::write(&config_path, &text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let mut config = config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The API: on the configured port, or on a free one if that is taken (the
    // config file is then rewritten, so `write`/`ack` with it find the demo).
    let api = crate::api::Server::bind_or_free_port(&config.api).await?;
    let api_addr = api.local_addr();
    let moved = api_addr != config.api.listen;
    if moved {
        let text = text.replace(
            &format!("listen = \"{}\"", config.api.listen),
            &format!("listen = \"{api_addr}\""),
        );
        std::fs::write(&config_path, &text)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        config = config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for host in &config.hosts {
        device.animate(&host.items);
    }
    let gateway = crate::gateway::open(config.clone())?;
    let host = config
        .hosts
        .first()
        .context("the demo config has no host")?;
    let first_key = host
        .items
        .first()
        .map(|i| i.key.clone())
        .unwrap_or_default();
    let write_hint = host
        .items
        .iter()
        .find(|i| i.configurable)
        .map(|i| {
            let target = match (i.lower_bound(), i.upper_bound()) {
                (Some(lo), Some(hi)) => ((lo + hi) / 2.0).round(),
                (Some(lo), None) => lo,
                (None, Some(hi)) => hi,
                (None, None) => 1.0,
            };
            format!(
                "\x20 modbridge write -c {} --host {} --key {} --target {}\n",
                config_path.display(),
                host.host,
                i.key,
                format_value(target)
            )
        })
        .unwrap_or_default();
    let moved_note = if moved {
        format!(
            " (port {} is taken, so the demo uses {})",
            config.api.listen.port(),
            api_addr.port()
        )
    } else {
        String::new()
    };
    println!(
        "modbridge demo\n\
         \n\
         A simulated NIBE F1345 heat pump is serving Modbus TCP on {addr}.\n\
         The gateway polls it every {} and keeps history in {}.\n\
         \n\
         Status page: http://{api}/{moved_note}\n\
         \n\
         Try, in another terminal:\n\
         \x20 modbridge check -c {cfg}\n\
         \x20 modbridge read  -c {cfg} --host {host}\n\
         \x20 modbridge probe --connection tcp://{addr} --table input --address 0 --count 12\n\
         \x20 curl http://{api}/hosts/{host}/items/{first_key}/history\n\
         \x20 curl http://{api}/metrics\n\
         {write_hint}\
         \n\
         Ctrl-C stops the demo.\n",
        crate::units::format_duration(host.poll_interval),
        dir.join("data").display(),
        cfg = config_path.display(),
        host = host.host,
        api = api_addr,
    );
    let live = gateway.host(&host.host);
    let host_spec = host.clone();
    let printer = async move {
        // Print what the gateway reads, so the demo shows something by itself.
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Some(live) = &live {
                let snapshot = live.lock().clone();
                let shown: Vec<String> = host_spec
                    .items
                    .iter()
                    .zip(snapshot.items.iter())
                    .filter(|(_, l)| l.value.is_some())
                    .take(4)
                    .map(|(i, l)| {
                        format!(
                            "{} = {} {}",
                            i.name(),
                            l.value.map(format_value).unwrap_or_default(),
                            i.unit()
                        )
                    })
                    .collect();
                println!("{}", shown.join(" | "));
            }
        }
    };
    let stop = async move {
        tokio::select! {
            () = daemon::termination_signal() => {}
            () = async {
                match duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            } => {}
            () = printer => {}
        }
    };
    daemon::run_gateway_with_api(gateway, Some(api), stop).await?;
    drop(server);
    println!(
        "demo stopped; history kept in {}",
        dir.join("data").display()
    );
    Ok(())
}

async fn cmd_simulate(devices: u16, base_port: u16, registers: u16, bind: &str) -> ExitCode {
    let mut servers = Vec::new();
    let mut sims = Vec::new();
    for d in 0..devices {
        let Some(port) = base_port.checked_add(d) else {
            eprintln!("modbridge simulate: ports past 65535");
            return ExitCode::from(2);
        };
        let device = sim::SimDevice::new();
        match device.bind_tcp(&format!("{bind}:{port}")).await {
            Ok(s) => servers.push(s),
            Err(e) => {
                eprintln!("modbridge simulate: cannot listen on {bind}:{port}: {e}");
                return ExitCode::from(1);
            }
        }
        sims.push(device);
    }
    println!(
        "serving {devices} simulated devices on {bind}:{base_port}..{} with {registers} holding registers each",
        u32::from(base_port) + u32::from(devices) - 1
    );
    // Registers change once a second, like the benchmark's reference simulator.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u16 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = daemon::termination_signal() => break,
        }
        n = n.wrapping_add(1);
        if n % 5 == 0 {
            // For benchmark harnesses: requests answered so far, all devices.
            let total: u64 = sims.iter().map(|d| d.requests()).sum();
            println!("requests {total}");
        }
        for (d, device) in sims.iter().enumerate() {
            let values: Vec<u16> = (0..registers)
                .map(|r| n.wrapping_add(r).wrapping_add(d as u16) % 1000)
                .collect();
            device.set_registers(Table::Holding, 0, &values);
        }
    }
    drop(servers);
    ExitCode::SUCCESS
}
