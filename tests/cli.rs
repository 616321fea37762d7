//! The real binary: `check`, `read`, `probe`, `run` (SIGTERM commits
//! everything) and `demo`, against simulated devices on loopback.

#[path = "support/broker.rs"]
mod broker;
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

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
fn check_refuses_unit_0_on_a_serial_line_at_its_position() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("units.toml");
    std::fs::write(
        &path,
        "[gateway]\nid = \"x\"\n\n[[hosts]]\nhost = \"meter\"\nconnection = \"rtu:///dev/ttyUSB0\"\nunit = 0\n\n[[hosts.items]]\ntable = \"input\"\naddress = 0\n\n[[hosts]]\nhost = \"idle\"\nconnection = \"rtu:///dev/ttyUSB1\"\nbaud = 19200\n  unit = 0\n",
    )
    .expect("write");
    let out = modbridge(&["check", "-c", path.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    let file = path.display().to_string();
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("{file}:7:8: "))
                && l.contains("\"meter\"")
                && l.contains("broadcast")
                && l.contains("1..247")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&format!("{file}:17:10: "))
                && l.contains("\"idle\"")
                && l.contains("no items")),
        "{stderr}"
    );
    // The same unit on TCP is fine (many gateways answer at 0), and pacing shows.
    std::fs::write(
        &path,
        "[gateway]\nid = \"x\"\n\n[[hosts]]\nhost = \"gw\"\nconnection = \"tcp://10.0.0.5:502\"\nunit = 0\ndelay_between_requests = \"20ms\"\ndelay_after_connect = \"1s\"\n\n[[hosts.items]]\ntable = \"input\"\naddress = 0\n",
    )
    .expect("write");
    let out = modbridge(&["check", "-c", path.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "tcp://10.0.0.5:502 unit 0, model generic, 1 item, 20ms between requests, 1s after connect"
        ),
        "{stdout}"
    );
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

async fn probe_expect(
    addr: &str,
    table: &str,
    address: u16,
    count: u16,
    expect: &str,
) -> (Option<i32>, String) {
    let out = modbridge_async(
        [
            "probe",
            "--connection",
            &format!("tcp://{addr}"),
            "--table",
            table,
            "--address",
            &address.to_string(),
            "--count",
            &count.to_string(),
            "--expect",
            expect,
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    (out.status.code(), text(&out.stdout) + &text(&out.stderr))
}

/// The part of `probe --expect`'s output after the tables: the layouts, best first.
fn layouts(out: &str) -> &str {
    out.split_once("best first:").map(|(_, l)| l).unwrap_or("")
}

#[tokio::test]
async fn probe_expect_names_the_layout() {
    let device = SimDevice::new();
    // 18.2 degC as i16 x 0.1 at input 3, between registers that make a
    // plausible looking float of the wrong order.
    device.set_registers(Table::Input, 2, &[0x3333, 182, 0xC202]);
    device.set_registers(Table::Input, 20, &[(-42i16) as u16]);
    // 3000000 as u32 at holding 100; 21.5 as f32 CDAB at holding 200.
    device.set_registers(Table::Holding, 100, &[0x002D, 0xC6C0]);
    device.set_registers(Table::Holding, 200, &[0x0000, 0x41AC]);
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let addr = server.addr().expect("addr").to_string();

    let (code, out) = probe_expect(&addr, "input", 3, 1, "18.2").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains('*'), "no false likely marks: {out}");
    assert!(
        layouts(&out).trim_start().starts_with(
            "# input 3 (30004): i16 x 0.1 = 18.2\n[[hosts.items]]\ntable = \"input\"\naddress = 3\ntype = \"i16\"\nscale = 0.1\n"
        ),
        "{out}"
    );
    assert!(!out.contains("note:"), "{out}");

    let (code, out) = probe_expect(&addr, "input", 20, 1, "-4.2").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        layouts(&out)
            .trim_start()
            .starts_with("# input 20 (30021): i16 x 0.1 = -4.2"),
        "{out}"
    );

    let (code, out) = probe_expect(&addr, "holding", 100, 2, "3000000").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        layouts(&out)
            .contains("address = 100\ntype = \"u32\"\nbyte_order = \"ABCD\"\nscale = 1.0\n"),
        "{out}"
    );

    let (code, out) = probe_expect(&addr, "holding", 200, 2, "21.5").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        layouts(&out)
            .trim_start()
            .starts_with("# holding 200 (40201): f32 CDAB x 1 = 21.5\n"),
        "{out}"
    );

    // The documentation's 1-based "register 4" is address 3: flagged.
    let (code, out) = probe_expect(&addr, "input", 4, 1, "18.2").await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        layouts(&out)
            .trim_start()
            .starts_with("# input 3 (30004): i16 x 0.1 = 18.2  (one register off"),
        "{out}"
    );
    assert!(
        out.contains("note: the best match is at address 3, one below the 4 asked for"),
        "{out}"
    );

    // Nothing decodes to it: exit 1 and say so; a bad tolerance is a usage error.
    let (code, out) = probe_expect(&addr, "input", 3, 1, "77.7").await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("no layout decodes to 77.7 within 0.5%"),
        "{out}"
    );
    let bad = modbridge_async(
        [
            "probe",
            "--connection",
            &format!("tcp://{addr}"),
            "--table",
            "coil",
            "--address",
            "0",
            "--expect",
            "1",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("--expect needs registers"),
        "{}",
        text(&bad.stderr)
    );
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

/// The demo's uplink, watched the way its printout says: a real MQTT client
/// subscribed to the demo's broker gets the data, the trigger firing, and the
/// outcome of a write sent with the printed `mosquitto_pub` message.
#[tokio::test]
async fn the_demo_shows_its_uplink_on_its_own_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .args(["demo", "--duration", "2m", "--dir"])
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the demo");
    let stdout = child.stdout.take().expect("stdout");
    // Killed if the test fails before it stops the demo.
    struct Running(Option<Child>);
    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(mut child) = self.0.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
    let mut running = Running(Some(child));
    // What the demo prints, up to the write command (the last uplink line).
    let printed = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut printed = Vec::new();
        for line in lines.by_ref().map_while(Result::ok) {
            let last = line.contains("mosquitto_pub");
            printed.push(line);
            if last {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        printed
    })
    .await
    .expect("join");
    let text = printed.join("\n");
    let sub = printed
        .iter()
        .find(|l| l.contains("mosquitto_sub"))
        .unwrap_or_else(|| panic!("a mosquitto_sub command: {text}"));
    let words: Vec<&str> = sub.split_whitespace().collect();
    let arg = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .map(|w| w.trim_matches('\'').to_string())
            .unwrap_or_else(|| panic!("{flag} in {sub}"))
    };
    let port: u16 = arg("-p").parse().expect("port");
    assert_eq!(arg("-t"), "modbridge/demo-box/#", "{sub}");
    let mut upstream =
        broker::Upstream::connect(port, "demo-watcher", None, &["modbridge/demo-box/#"], true)
            .await;
    upstream
        .wait("data from the heat pump", Duration::from_secs(20), |m| {
            broker::data_messages(m, "modbridge/demo-box")
                .iter()
                .any(|d| d.host == "heatpump" && !d.items.is_empty())
        })
        .await;
    // The write, as printed.
    let publish = printed.last().expect("lines");
    let topic = publish
        .split_whitespace()
        .skip_while(|w| *w != "-t")
        .nth(1)
        .expect("topic");
    let message = publish
        .split_once("-m '")
        .and_then(|(_, m)| m.strip_suffix('\''))
        .unwrap_or_else(|| panic!("a message in {publish}"));
    let request: serde_json::Value = serde_json::from_str(message).expect("json");
    let key = request["key"].as_str().expect("key").to_string();
    upstream.publish(topic, message, false).await;
    let config_topic = format!("modbridge/demo-box/config/heatpump/{key}");
    upstream
        .wait("the write's outcome", Duration::from_secs(20), |m| {
            m.iter()
                .any(|m| m.topic == config_topic && m.json()["config"]["status"] == "SUCCESS")
        })
        .await;
    // The trigger fires about 13 s after the start.
    let msgs = upstream
        .wait("the trigger firing", Duration::from_secs(40), |m| {
            m.iter()
                .any(|m| m.topic == "modbridge/demo-box/events" && m.json()["value"] == "problem")
        })
        .await;
    let event = msgs
        .iter()
        .find(|m| m.topic == "modbridge/demo-box/events")
        .expect("event")
        .json();
    assert_eq!(event["triggerid"], 1, "{event}");
    assert_eq!(event["host"], "heatpump", "{event}");
    assert!(text.contains("Hot water charging above 52 degC"), "{text}");
    let mut child = running.0.take().expect("the demo");
    broker::signal(&child, "TERM");
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(exit.success(), "{exit}");
}

#[test]
fn check_warns_when_the_retentions_need_more_than_max_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 3 items at 1 s for 30 days: about 30 MiB of history; 730 days of
    // hourly trends: 4.5 MiB.
    let path = write_config(dir.path(), "127.0.0.1:1502", "max_size = \"8MiB\"");
    let out = modbridge(&["check", "-c", path.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(0), "a warning, not an error");
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("a warning line: {stdout}"));
    assert!(
        line.contains("need about 34.2 MiB (history 29.7 MiB, trends 4.5 MiB)")
            && line.contains("max_size = 8.0 MiB"),
        "{line}"
    );
    // Enough room: no warning.
    let path = write_config(dir.path(), "127.0.0.1:1502", "max_size = \"64MiB\"");
    let out = modbridge(&["check", "-c", path.to_str().expect("path")]);
    assert!(
        !text(&out.stdout).contains("warning:"),
        "{}",
        text(&out.stdout)
    );
}
