//! `modbridge read` and `modbridge probe`: talk to devices directly on the
//! field bus, without the daemon, for wiring and register-map checks.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use super::{format_for_people, load_or_report, plural};
use crate::decode;
use crate::modbus::{Buses, Link, Operation, Priority, ReadData};
use crate::model::{Connection, HostSpec, SerialSettings, Table};
use crate::poll::HostReader;

/// Polls one host (or one of its items) once and prints the table of values.
pub(super) async fn cmd_read(path: &Path, host_id: &str, key: Option<&str>) -> ExitCode {
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
        match (&report.transport_error, &report.busy) {
            (Some(e), _) => format!("; link failed: {e}"),
            (None, Some(e)) => format!("; the device cannot answer now: {e}"),
            (None, None) => String::new(),
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
            Ok(v) => format!("{} {}", format_for_people(*v), item.unit())
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

/// Reads raw registers (or bits) and prints every plausible decoding.
pub(super) async fn cmd_probe(args: ProbeArgs) -> ExitCode {
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
