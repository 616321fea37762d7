//! `modbridge scan` against simulated devices: units behind a TCP endpoint
//! and on a socat pty line, device identification, the profile suggestion
//! and the early stop of a silent serial setting.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::PtyPair;
use modbridge::model::{Connection, Parity, SerialSettings, Table};
use modbridge::scan::{self, Progress, ScanPlan};
use modbridge::sim::SimDevice;

const BIN: &str = env!("CARGO_BIN_EXE_modbridge");

async fn modbridge(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run modbridge")
    })
    .await
    .expect("join")
}

fn found_units(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("found: "))
        .map(String::from)
        .collect()
}

fn profiles_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/config/profiles").to_string()
}

#[tokio::test]
async fn scan_finds_exactly_the_units_behind_a_tcp_endpoint() {
    let device = SimDevice::new();
    device.answer_units(&[3, 7]);
    device.set_identification("NIBE", "F1345", "9.2");
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let addr = server.addr().expect("addr");
    let args = |units: &str| -> Vec<String> {
        [
            "scan",
            "--connection",
            &format!("tcp://{addr}"),
            "--units",
            units,
            "--timeout",
            "200ms",
            "--profiles",
            &profiles_dir(),
        ]
        .map(String::from)
        .to_vec()
    };
    let out = modbridge(args("1-10")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("scanning 10 units, 200ms per try: at most 2.0s"),
        "{stderr}"
    );
    let lines = found_units(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with(&format!("found: tcp://{addr} unit 3; vendor \"NIBE\", product \"F1345\", revision \"9.2\"; profile ")), "{lines:?}");
    assert!(
        lines[0].contains("nibe-f1345.toml (its identification names it)"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(&format!("found: tcp://{addr} unit 7;")),
        "{lines:?}"
    );

    // Without identification, an exception answer still counts.
    let plain = SimDevice::new();
    plain.answer_units(&[4]);
    plain.faults(|f| {
        f.exception_at.insert((Table::Holding, 0));
    });
    let server2 = plain.bind_tcp("127.0.0.1:0").await.expect("bind");
    let addr2 = server2.addr().expect("addr");
    let mut a = args("1-6");
    a[2] = format!("tcp://{addr2}");
    let out = modbridge(a).await;
    let lines = found_units(&out);
    assert_eq!(
        lines,
        vec![format!(
            "found: tcp://{addr2} unit 4 (answered 0x02 (illegal data address))"
        )],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A device that ignores the unit id: one line, not one per unit.
    let any = SimDevice::new();
    let server3 = any.bind_tcp("127.0.0.1:0").await.expect("bind");
    let mut a = args("1-20");
    a[2] = format!("tcp://{}", server3.addr().expect("addr"));
    let out = modbridge(a).await;
    assert_eq!(
        found_units(&out).len(),
        1,
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ignores the unit id"));

    // Nobody there: exit 1.
    let out = modbridge(args("1-2")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no device answered"));
    // Bad usage: exit 2.
    let out = modbridge(args("9-3")).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn scan_finds_exactly_the_units_on_a_serial_line() {
    let pty = PtyPair::new();
    let device = SimDevice::new();
    device.answer_units(&[2, 5]);
    // A NIBE register signature: temperatures in range, no identification.
    let profile = scan::load_profiles(std::path::Path::new(&profiles_dir()))
        .into_iter()
        .find(|p| p.path.ends_with("nibe-f1345.toml"))
        .expect("nibe profile");
    for item in &profile.host.items {
        let v = item
            .lower_bound()
            .zip(item.upper_bound())
            .map(|(l, h)| (l + h) / 2.0);
        let _ = device.set_value(item, v.unwrap_or(1.0));
    }
    let _server = device.serve_rtu(&pty.b, 19200).expect("serve rtu");
    let out = modbridge(
        [
            "scan",
            "--connection",
            &format!("rtu://{}", pty.a),
            "--units",
            "1-8",
            "--baud",
            "19200",
            "--parity",
            "none",
            "--timeout",
            "200ms",
            "--profiles",
            &profiles_dir(),
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines = found_units(&out);
    assert_eq!(lines.len(), 2, "{lines:?} {stderr}");
    for (line, unit) in lines.iter().zip([2, 5]) {
        assert!(
            line.starts_with(&format!(
                "found: rtu://{} 19200 8N1 unit {unit}; profile ",
                pty.a
            )),
            "{line}"
        );
        assert!(
            line.ends_with("nibe-f1345.toml (its registers fit)"),
            "{line}"
        );
    }
    assert!(
        stderr.contains("19200 8N1: 8 units tried, 2 answered"),
        "{stderr}"
    );
}

#[derive(Default)]
struct Record {
    tried: Vec<(u32, u8)>,
    done: Vec<(u32, usize, bool)>,
}

impl Progress for Record {
    fn trying(&mut self, settings: Option<SerialSettings>, _: usize, unit: u8, _: usize) {
        self.tried
            .push((settings.map(|s| s.baud).unwrap_or(0), unit));
    }
    fn setting_done(
        &mut self,
        settings: Option<SerialSettings>,
        tried: usize,
        _: usize,
        early: bool,
    ) {
        self.done
            .push((settings.map(|s| s.baud).unwrap_or(0), tried, early));
    }
}

#[tokio::test]
async fn a_silent_setting_stops_early_and_an_answering_one_is_swept() {
    let pty = PtyPair::new();
    let device = SimDevice::new();
    // The first unit answers at every setting (a pty has no baud rate); the
    // second is too far up to be reached by a setting that stops early
    // unless the first answered.
    device.answer_units(&[1, 20]);
    let _server = device.serve_rtu(&pty.b, 19200).expect("serve rtu");
    let setting = |baud| SerialSettings {
        baud,
        parity: Parity::None,
        ..SerialSettings::default()
    };
    let plan = ScanPlan {
        connection: Connection::Rtu {
            path: pty.a.clone(),
        },
        units: (1..=24).collect(),
        settings: vec![setting(9600), setting(19200)],
        timeout: Duration::from_millis(150),
    };
    let mut record = Record::default();
    let found = scan::scan(&plan, &mut record).await;
    let units: Vec<(u32, u8)> = found
        .iter()
        .map(|f| (f.settings.map(|s| s.baud).unwrap_or(0), f.unit))
        .collect();
    assert_eq!(units, vec![(9600, 1), (9600, 20), (19200, 1), (19200, 20)]);
    assert_eq!(record.done, vec![(9600, 24, false), (19200, 24, false)]);

    // From unit 2 on, the first 16 units are silent at both settings: each
    // is given up before it reaches unit 20.
    let far = ScanPlan {
        units: (2..=24).collect(),
        ..plan
    };
    let mut record = Record::default();
    let found = scan::scan(&far, &mut record).await;
    assert!(found.is_empty(), "{found:?}");
    assert_eq!(
        record.done,
        vec![
            (9600, scan::EARLY_STOP, true),
            (19200, scan::EARLY_STOP, true)
        ]
    );
    assert_eq!(record.tried.len(), 2 * scan::EARLY_STOP);
}
