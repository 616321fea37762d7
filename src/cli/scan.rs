//! `modbridge scan`: finds the devices on a serial line or behind a TCP
//! endpoint (the work is in [`crate::scan`]; this file reads the arguments,
//! says how long it will take, shows progress and prints what was found).

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::model::{Connection, Parity, SerialSettings};
use crate::scan::{self, Found, Presence, ScanPlan};

/// `modbridge scan`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// tcp://HOST:PORT or rtu:///dev/ttyUSB0
    #[arg(long)]
    connection: String,
    /// Unit ids to try: a list of ids and ranges.
    #[arg(long, default_value = "1-247")]
    units: String,
    /// Serial line speeds to try, in order (rtu only).
    #[arg(long, default_value = "9600,19200,38400,57600,115200,4800,2400")]
    baud: String,
    /// Serial parities to try, in order (rtu only).
    #[arg(long, default_value = "even,none,odd")]
    parity: String,
    /// Per try.
    #[arg(long, default_value = "200ms")]
    timeout: String,
    /// Where the device profiles are (default: the first of
    /// /etc/modbridge/profiles, /usr/share/modbridge/profiles, config/profiles).
    #[arg(long)]
    profiles: Option<PathBuf>,
}

fn scan_plan(args: &ScanArgs) -> Result<ScanPlan, String> {
    let connection = Connection::parse(&args.connection)?;
    let units = scan::parse_units(&args.units)?;
    let timeout =
        crate::units::parse_duration(&args.timeout).map_err(|e| format!("--timeout: {e}"))?;
    if timeout.is_zero() {
        return Err("--timeout must be more than 0".into());
    }
    let mut settings = Vec::new();
    if connection.is_serial() {
        if units.contains(&0) {
            return Err("unit 0 is broadcast on a serial line: nothing answers it".into());
        }
        let parities: Vec<Parity> = split(&args.parity)
            .map(super::field::parse_parity)
            .collect::<Result<_, _>>()?;
        let bauds: Vec<u32> = split(&args.baud)
            .map(|b| {
                b.parse::<u32>()
                    .ok()
                    .filter(|&b| b > 0)
                    .ok_or_else(|| format!("--baud: {b:?} is not a baud rate"))
            })
            .collect::<Result<_, _>>()?;
        for &baud in &bauds {
            for &parity in &parities {
                settings.push(SerialSettings {
                    baud,
                    parity,
                    ..SerialSettings::default()
                });
            }
        }
        if settings.is_empty() {
            return Err("--baud and --parity name no setting".into());
        }
    }
    Ok(ScanPlan {
        connection,
        units,
        settings,
        timeout,
    })
}

fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// `9600 8E1`; empty for TCP.
fn settings_label(settings: Option<SerialSettings>) -> String {
    match settings {
        None => String::new(),
        Some(s) => s.to_string(),
    }
}

/// Progress on stderr: a line updated in place on a terminal, one line per
/// setting otherwise.
struct Stderr {
    units: usize,
    terminal: bool,
}

impl scan::Progress for Stderr {
    fn trying(&mut self, settings: Option<SerialSettings>, index: usize, unit: u8, found: usize) {
        if self.terminal {
            eprint!(
                "\r{} unit {unit} ({} of {}), {found} found   ",
                settings_label(settings),
                index + 1,
                self.units
            );
            let _ = std::io::stderr().flush();
        }
    }

    fn setting_done(
        &mut self,
        settings: Option<SerialSettings>,
        tried: usize,
        found: usize,
        stopped_early: bool,
    ) {
        if self.terminal {
            eprint!("\r");
        }
        let label = settings_label(settings);
        let label = if label.is_empty() {
            "units".to_string()
        } else {
            label
        };
        if stopped_early {
            eprintln!("{label}: nothing answered the first {tried} units; setting given up       ");
        } else {
            eprintln!("{label}: {tried} units tried, {found} answered       ");
        }
    }
}

fn default_profiles() -> PathBuf {
    ["/etc/modbridge/profiles", "/usr/share/modbridge/profiles"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(|| PathBuf::from("config/profiles"))
}

/// One line per device found.
fn found_line(plan: &ScanPlan, f: &Found) -> String {
    let mut line = format!("found: {}", plan.connection);
    let label = settings_label(f.settings);
    if !label.is_empty() {
        line.push(' ');
        line.push_str(&label);
    }
    line.push_str(&format!(" unit {}", f.unit));
    if let Presence::Exception(code) = &f.presence {
        line.push_str(&format!(
            " (answered {})",
            crate::modbus::exception_name(*code)
        ));
    }
    if let Some(id) = &f.identity {
        line.push_str(&format!(
            "; vendor {:?}, product {:?}, revision {:?}",
            id.vendor, id.product, id.revision
        ));
    }
    if let Some((path, why)) = &f.profile {
        line.push_str(&format!("; profile {} ({why})", path.display()));
    }
    line
}

pub(super) async fn cmd_scan(args: ScanArgs) -> ExitCode {
    let plan = match scan_plan(&args) {
        Ok(p) => p,
        Err(msg) => {
            eprintln!("modbridge scan: {msg}");
            return ExitCode::from(2);
        }
    };
    let (worst, early) = plan.durations();
    let settings = plan.settings().len();
    if plan.early_stop() {
        eprintln!(
            "scanning {} units at {settings} serial settings, {:?} per try: about {:.1}s if only one \
             setting answers (a silent setting stops after {} units), at most {:.1}s",
            plan.units.len(),
            plan.timeout,
            (early + plan.timeout * plan.units.len() as u32).as_secs_f64(),
            scan::EARLY_STOP,
            worst.as_secs_f64()
        );
    } else {
        eprintln!(
            "scanning {} units, {:?} per try: at most {:.1}s",
            plan.units.len(),
            plan.timeout,
            worst.as_secs_f64()
        );
    }
    let mut progress = Stderr {
        units: plan.units.len(),
        terminal: std::io::stderr().is_terminal(),
    };
    let mut found = scan::scan(&plan, &mut progress).await;
    let profiles = scan::load_profiles(&args.profiles.unwrap_or_else(default_profiles));
    if !plan.connection.is_serial() && plan.units.len() > 2 && found.len() == plan.units.len() {
        // A device that ignores the unit id answers every one: one line.
        found.truncate(1);
        println!(
            "every unit id tried answers: the device at {} ignores the unit id (any unit works; 1 is usual)",
            plan.connection
        );
    }
    for f in &mut found {
        f.identity = scan::identify(&plan, f).await;
        f.profile = scan::suggest_profile(&plan, f, &profiles).await;
        println!("{}", found_line(&plan, f));
    }
    if found.is_empty() {
        println!("no device answered");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
