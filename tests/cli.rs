//! The real binary: `check`, `read`, `probe`, `run` (SIGTERM commits
//! everything) and `demo`, against simulated devices on loopback.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use modbridge::model::Table;
use modbridge::sim::SimDevice;

const BIN: &str = env!("CARGO_BIN_EXE_modbridge");

fn modbridge(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run modbridge")
}

async fn modbridge_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        modbridge(&args)
    })
    .await
    .expect("join")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A config with one TCP host at `addr` and a few items.
fn write_config(dir: &Path, addr: &str, extra_storage: &str) -> std::path::PathBuf {
    let config = format!(
        r#"
[gateway]
id = "test-box"
data_dir = "{data}"

[storage]
{extra_storage}

[api]
listen = "127.0.0.1:0"

[[hosts]]
host = "pump"
connection = "tcp://{addr}"
model = "F1345"
poll_interval = "1s"
timeout = "500ms"

[[hosts.items]]
name = "Outdoor"
table = "input"
address = 3
type = "i16"
scale = 0.1
unit = "degC"

[[hosts.items]]
name = "Setpoint"
table = "holding"
address = 10
type = "f32"
byte_order = "CDAB"
configurable = true

[[hosts.items]]
name = "Running"
table = "coil"
address = 0
"#,
        data = dir.join("data").display()
    );
    let path = dir.join("modbridge.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

#[test]
fn check_prints_the_plan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), "127.0.0.1:1502", "");
    let out = modbridge(&["check", "-c", path.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("pump input 3..3 (1 register, 30004..30004) 1 item every 1s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("pump holding 10..11 (2 registers, 40011..40012) 1 item every 1s"),
        "{stdout}"
    );
    assert!(stdout.contains("modbus.pump.F1345.1.30004"), "{stdout}");
}

#[test]
fn check_reports_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[gateway]\nid = \"x\"\n\n[[hosts]]\nhost = \"a\"\nconnection = \"tcp://h:502\"\nadress = 3\n\n[[hosts]]\nhost = \"a\"\nconnection = \"tcp://h:503\"\n",
    )
    .expect("write");
    let out = modbridge(&["check", "-c", path.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("bad.toml:")).collect();
    assert!(lines.len() >= 2, "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains(":7:1:") && l.contains("adress")),
        "{stderr}"
    );
    assert!(lines.iter().any(|l| l.contains("\"a\"")), "{stderr}");
}

#[test]
fn bad_usage_exits_2() {
    let out = modbridge(&[
        "probe",
        "--connection",
        "tcp://127.0.0.1:1",
        "--table",
        "holdings",
        "--address",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown table"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(modbridge(&["frobnicate"]).status.code(), Some(2));
    let missing = modbridge(&["check", "-c", "/nonexistent/modbridge.toml"]);
    assert_eq!(missing.status.code(), Some(2));
}

#[tokio::test]
async fn read_and_probe_show_what_the_device_holds() {
    let device = SimDevice::new();
    device.set_register(Table::Input, 3, (-52i16) as u16);
    device.set_registers(Table::Holding, 10, &[0x0000, 0x41AC]); // 21.5 in CDAB
    device.set_register(Table::Coil, 0, 1);
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let addr = server.addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &addr, "");
    let cfg = path.to_str().expect("path").to_string();

    let out = modbridge_async(vec![
        "read".into(),
        "-c".into(),
        cfg.clone(),
        "--host".into(),
        "pump".into(),
    ])
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("-5.2 degC"), "{stdout}");
    assert!(stdout.contains("21.5"), "{stdout}");

    let out = modbridge_async(vec![
        "read".into(),
        "-c".into(),
        cfg.clone(),
        "--host".into(),
        "nope".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no host \"nope\""));

    let out = modbridge_async(vec![
        "probe".into(),
        "--connection".into(),
        format!("tcp://{addr}"),
        "--table".into(),
        "holding".into(),
        "--address".into(),
        "10".into(),
        "--count".into(),
        "2".into(),
    ])
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("21.5"), "the CDAB float shows up: {stdout}");

    // A device that is not there: a clear error, exit 1.
    drop(server);
    let out = modbridge_async(vec![
        "read".into(),
        "-c".into(),
        cfg,
        "--host".into(),
        "pump".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("ERROR"), "{}", text(&out.stdout));
}

#[tokio::test]
async fn sigterm_commits_everything_in_memory() {
    let device = SimDevice::new();
    device.set_register(Table::Input, 3, 215);
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let addr = server.addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    // Nothing would be committed for an hour: only the shutdown commits.
    let path = write_config(dir.path(), &addr, "commit_interval = \"1h\"");
    let mut child = Command::new(BIN)
        .args(["run", "-c", path.to_str().expect("path")])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let stderr = child.stderr.take().expect("stderr");
    let pid = child.id();
    // Wait until the first poll has answered.
    let answered = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines();
        let found = lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("device answers"));
        std::thread::spawn(move || for _ in lines {});
        found
    })
    .await
    .expect("join");
    assert!(answered);
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit}");
    let config = modbridge::config::load(&path).expect("config");
    let store = modbridge::store::Store::open(&config).expect("store");
    let id = store
        .item_id("pump", "modbus.pump.F1345.1.30004")
        .expect("id");
    let history = store.history(id, 0, i64::MAX, None).await.expect("history");
    assert!(
        !history.is_empty(),
        "the samples polled before SIGTERM are in the database"
    );
    assert_eq!(history[0].1, 21.5);
    store.close().expect("close");
}

#[test]
fn the_demo_runs_and_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = modbridge(&[
        "demo",
        "--duration",
        "3s",
        "--dir",
        dir.path().to_str().expect("dir"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("simulated NIBE F1345"), "{stdout}");
    assert!(dir.path().join("data/modbridge.db").exists());
}
