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
    /// The value the device shows now (e.g. on its display): list every
    /// layout of the registers (and their neighbours) that decodes to it.
    #[arg(long, allow_negative_numbers = true)]
    expect: Option<f64>,
    /// How close a decoding must come to --expect: relative ("0.5%") or absolute ("0.05").
    #[arg(long, default_value = "0.5%")]
    tolerance: String,
}

/// How close a decoding must come to the expected value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tolerance {
    /// A fraction of the expected value (`0.5%` is 0.005).
    Relative(f64),
    Absolute(f64),
}

impl Tolerance {
    /// Parses `0.5%` or `0.05`.
    pub fn parse(s: &str) -> Result<Tolerance, String> {
        let bad =
            || format!("--tolerance {s:?}: use a percentage (\"0.5%\") or a number (\"0.05\")");
        let t = s.trim();
        let (number, relative) = match t.strip_suffix('%') {
            Some(n) => (n.trim(), true),
            None => (t, false),
        };
        let x: f64 = number.parse().map_err(|_| bad())?;
        if !x.is_finite() || x < 0.0 {
            return Err(bad());
        }
        Ok(if relative {
            Tolerance::Relative(x / 100.0)
        } else {
            Tolerance::Absolute(x)
        })
    }

    /// The largest allowed difference from `expected`.
    pub fn absolute(self, expected: f64) -> f64 {
        match self {
            Tolerance::Relative(f) => f * expected.abs(),
            Tolerance::Absolute(a) => a,
        }
    }
}

/// What `probe` reads, from its checked arguments.
struct ProbeSetup {
    host: HostSpec,
    table: Table,
    address: u16,
    count: u16,
    expect: Option<(f64, Tolerance)>,
}

/// Checks `probe`'s arguments; the error is the usage message.
fn probe_setup(args: &ProbeArgs) -> Result<ProbeSetup, String> {
    let connection = Connection::parse(&args.connection)?;
    let table = Table::parse(&args.table).ok_or_else(|| {
        format!(
            "unknown table {:?}; use holding, input, coil or discrete",
            args.table
        )
    })?;
    let max = table.protocol_max_read();
    if args.count == 0 || args.count > max {
        return Err(format!("--count must be 1..{max} for {table}"));
    }
    if u32::from(args.address) + u32::from(args.count) > 65536 {
        return Err("address + count goes past 65535".into());
    }
    let parity = parse_parity(&args.parity)?;
    let timeout =
        crate::units::parse_duration(&args.timeout).map_err(|e| format!("--timeout: {e}"))?;
    let expect = match args.expect {
        None => None,
        Some(v) if !v.is_finite() => return Err("--expect must be a number".into()),
        Some(_) if table.is_bits() => {
            return Err(format!("--expect needs registers; {table} holds bits"))
        }
        Some(_) if args.count > max - 2 => {
            return Err(format!(
                "--count must be at most {} with --expect (it reads one register on each side too)",
                max - 2
            ))
        }
        Some(v) => Some((v, Tolerance::parse(&args.tolerance)?)),
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
    Ok(ProbeSetup {
        host,
        table,
        address: args.address,
        count: args.count,
        expect,
    })
}

/// `none`, `even` or `odd`.
pub(super) fn parse_parity(s: &str) -> Result<crate::model::Parity, String> {
    match s {
        "none" => Ok(crate::model::Parity::None),
        "even" => Ok(crate::model::Parity::Even),
        "odd" => Ok(crate::model::Parity::Odd),
        other => Err(format!("unknown parity {other:?}; use none, even or odd")),
    }
}

/// Reads raw registers (or bits) and prints every plausible decoding; with
/// `--expect`, also the layouts that decode to the expected value.
pub(super) async fn cmd_probe(args: ProbeArgs) -> ExitCode {
    let setup = match probe_setup(&args) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("modbridge probe: {msg}");
            return ExitCode::from(2);
        }
    };
    let ProbeSetup {
        host,
        table,
        address,
        count,
        expect,
    } = &setup;
    let buses = Buses::default();
    let mut link = Link::new(host, &buses);
    println!(
        "{} unit {} {} {}..{} ({}..{})",
        host.connection,
        host.unit,
        table,
        address,
        u32::from(*address) + u32::from(*count) - 1,
        table.modicon(*address),
        table.modicon(address.saturating_add(count - 1))
    );
    let (start, result) = match expect {
        Some(_) => read_with_neighbours(&mut link, *table, *address, *count).await,
        None => (
            *address,
            read_range(&mut link, *table, *address, *count).await,
        ),
    };
    match result {
        Ok(ReadData::Words(words)) => {
            print!("{}", decode::probe_table_for(*table, start, &words));
            if let Some((expected, tolerance)) = expect {
                let report = expect_report(*table, *address, start, &words, *expected, *tolerance);
                print!("\n{report}");
                if report.starts_with("no layout") {
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
        Ok(ReadData::Bits(bits)) => {
            for (i, b) in bits.iter().enumerate() {
                let a = usize::from(*address) + i;
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

async fn read_range(
    link: &mut Link,
    table: Table,
    start: u16,
    count: u16,
) -> Result<ReadData, crate::modbus::RequestError> {
    let op = Operation::Read {
        table,
        start,
        count,
    };
    link.request(&op, Priority::Poll).await
}

/// Reads the range with one register before and after it (where the address
/// space has them); a device that refuses the wider read with an exception
/// (no register there) is asked for the range alone. Returns the first
/// address read.
async fn read_with_neighbours(
    link: &mut Link,
    table: Table,
    address: u16,
    count: u16,
) -> (u16, Result<ReadData, crate::modbus::RequestError>) {
    let lo = address.saturating_sub(1);
    let hi = (u32::from(address) + u32::from(count)).min(65535) as u16;
    let wide = read_range(link, table, lo, hi - lo + 1).await;
    match wide {
        Err(crate::modbus::RequestError::Exception(_)) => {
            (address, read_range(link, table, address, count).await)
        }
        other => (lo, other),
    }
}

/// How many matching layouts `probe --expect` prints.
const MAX_LAYOUTS: usize = 12;

/// `probe --expect`'s list: the layouts of `words` (read from `start` on)
/// that decode to `expected`, best first, each as the `[[hosts.items]]`
/// lines to paste, with the 0-based/1-based hint for a hit one register off
/// the address asked for.
pub fn expect_report(
    table: Table,
    asked: u16,
    start: u16,
    words: &[u16],
    expected: f64,
    tolerance: Tolerance,
) -> String {
    let within = match tolerance {
        Tolerance::Relative(f) => format!("{}%", format_for_people(f * 100.0)),
        Tolerance::Absolute(a) => format_for_people(a),
    };
    let found =
        decode::matching_layouts(start, words, asked, expected, tolerance.absolute(expected));
    let wanted = format_for_people(expected);
    if found.is_empty() {
        return format!(
            "no layout decodes to {wanted} within {within} (types u16 to f64, every byte order, scales 1 to 0.001)\n"
        );
    }
    let mut out = format!(
        "{} layout{} decode{} to {wanted} within {within}, best first:\n",
        found.len(),
        plural(found.len()),
        if found.len() == 1 { "s" } else { "" }
    );
    for layout in found.iter().take(MAX_LAYOUTS) {
        out.push('\n');
        out.push_str(&layout_lines(table, asked, layout));
    }
    if found.len() > MAX_LAYOUTS {
        let _ = writeln!(out, "\n... and {} more", found.len() - MAX_LAYOUTS);
    }
    if let Some(hint) = found
        .first()
        .and_then(|best| one_off_hint(asked, best.address))
    {
        let _ = write!(out, "\n{hint}\n");
    }
    out
}

/// One layout: a comment line naming it, then the item lines to paste.
fn layout_lines(table: Table, asked: u16, l: &decode::Layout) -> String {
    let order = l.byte_order.map(|o| format!(" {o}")).unwrap_or_default();
    let mut out = format!(
        "# {table} {} ({}): {}{order} x {} = {}",
        l.address,
        table.modicon(l.address),
        l.value_type,
        l.scale,
        format_for_people(l.value)
    );
    if l.address.abs_diff(asked) == 1 {
        out.push_str("  (one register off the address asked for: 0-based vs 1-based?)");
    }
    out.push('\n');
    let _ = writeln!(out, "[[hosts.items]]");
    let _ = writeln!(out, "table = \"{table}\"");
    let _ = writeln!(out, "address = {}", l.address);
    let _ = writeln!(out, "type = \"{}\"", l.value_type);
    if let Some(o) = l.byte_order {
        let _ = writeln!(out, "byte_order = \"{o}\"");
    }
    let _ = writeln!(out, "scale = {:?}", l.scale);
    out
}

/// The hint when the best match is one register off the address asked for.
fn one_off_hint(asked: u16, hit: u16) -> Option<String> {
    if hit.checked_add(1) == Some(asked) {
        Some(format!(
            "note: the best match is at address {hit}, one below the {asked} asked for: the \
             register number you have probably counts from 1 (documentation often does); the \
             0-based address to configure is {hit}"
        ))
    } else if asked.checked_add(1) == Some(hit) {
        Some(format!(
            "note: the best match is at address {hit}, one above the {asked} asked for: the \
             register number you have probably counts from 0 where the device counts from 1 \
             (or 1 was taken off twice); the 0-based address to configure is {hit}"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances() {
        assert_eq!(Tolerance::parse("0.5%"), Ok(Tolerance::Relative(0.005)));
        assert_eq!(Tolerance::parse("0.05"), Ok(Tolerance::Absolute(0.05)));
        for bad in ["", "%", "-1%", "abc", "NaN"] {
            assert!(Tolerance::parse(bad).is_err(), "{bad}");
        }
        assert!((Tolerance::Relative(0.005).absolute(-200.0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn expect_report_gives_lines_to_paste_and_the_one_off_hint() {
        // Asked for input 4 (a 1-based number); 18.2 is an i16 x 0.1 at 3.
        let out = expect_report(
            Table::Input,
            4,
            3,
            &[182, 0x1234, 0],
            18.2,
            Tolerance::Relative(0.005),
        );
        let first = out.split("\n\n").nth(1).unwrap_or("");
        assert_eq!(
            first,
            "# input 3 (30004): i16 x 0.1 = 18.2  (one register off the address asked for: 0-based vs 1-based?)\n\
             [[hosts.items]]\ntable = \"input\"\naddress = 3\ntype = \"i16\"\nscale = 0.1",
            "{out}"
        );
        assert!(
            out.contains("note: the best match is at address 3, one below the 4"),
            "{out}"
        );
        let none = expect_report(
            Table::Input,
            4,
            3,
            &[1, 2, 3],
            18.2,
            Tolerance::Relative(0.005),
        );
        assert!(
            none.starts_with("no layout decodes to 18.2 within 0.5%"),
            "{none}"
        );
        // Right address: no hint; a 32-bit layout names its byte order.
        let f = expect_report(
            Table::Holding,
            10,
            9,
            &[7, 0x0000, 0x41AC, 9],
            21.5,
            Tolerance::Absolute(0.01),
        );
        assert!(
            f.contains("type = \"f32\"\nbyte_order = \"CDAB\"\nscale = 1.0\n"),
            "{f}"
        );
        assert!(!f.contains("note:"), "{f}");
    }
}
