//! The Sparkplug B uplink against a real mosquitto, decoded by a third-party
//! implementation (Eclipse Tahu's protobuf module, `tests/sparkplug_client.py`,
//! installed with pip into a cached directory under target/): births,
//! datatypes and properties, data by exception, seq, rebirth, DCMD writes,
//! device loss, a broker outage, bdSeq across restarts and in the Will, and
//! both uplinks at once with one of them down.

#[path = "common/api_gateway.rs"]
mod api_gateway;
#[path = "support/broker.rs"]
mod broker;
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use broker::{eventually, signal, Broker};
use common::Running;
use modbridge::model::Table;
use modbridge::sim::{SimDevice, SimServer};
use serde_json::Value;

const GROUP: &str = "plant";
const NODE: &str = "box-1";

/// The directory the Python packages are installed into (once per build).
fn python_path() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sparkplug-py");
        if !dir.join("tahutils").is_dir() || !dir.join("paho").is_dir() {
            let staging = dir.with_extension(format!("staging-{}", std::process::id()));
            let ok = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&staging)
                .args(["tahutils==0.1.11", "paho-mqtt==2.1.0", "protobuf==4.25.9"])
                .status()
                .expect("python3 with pip must be installed");
            assert!(ok.success(), "pip install of tahutils and paho-mqtt failed");
            let _ = std::fs::remove_dir_all(&dir);
            if std::fs::rename(&staging, &dir).is_err() {
                // Another test binary installed it meanwhile.
                let _ = std::fs::remove_dir_all(&staging);
            }
        }
        dir
    })
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sparkplug_client.py")
}

/// A Sparkplug subscriber (Tahu's decoder) on `spBv1.0/#`.
struct Sub {
    child: Child,
    msgs: Arc<Mutex<Vec<Value>>>,
}

impl Sub {
    async fn start(port: u16) -> Sub {
        let mut child = Command::new("python3")
            .arg("-u")
            .arg(client_script())
            .args(["sub", &port.to_string()])
            .env("PYTHONPATH", python_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let stdout = child.stdout.take().expect("stdout");
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let ready = Arc::new(Mutex::new(false));
        let (m, r) = (msgs.clone(), ready.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("ready").is_some() {
                    *r.lock().unwrap() = true;
                } else {
                    m.lock().unwrap().push(v);
                }
            }
        });
        eventually(
            "the subscriber to be ready",
            Duration::from_secs(20),
            || *ready.lock().unwrap(),
        )
        .await;
        Sub { child, msgs }
    }

    fn all(&self) -> Vec<Value> {
        self.msgs.lock().unwrap().clone()
    }

    /// Waits until a message after the first `from` satisfies `pred`; returns its index.
    async fn wait(
        &self,
        what: &str,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.all().iter().skip(from).position(&pred) {
                return from + i;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes a Sparkplug payload (protobuf JSON mapping) with Tahu's module.
fn publish(port: u16, topic: &str, json: &str) {
    let ok = Command::new("python3")
        .arg(client_script())
        .args(["pub", &port.to_string(), topic, json])
        .env("PYTHONPATH", python_path())
        .status()
        .expect("python3");
    assert!(ok.success(), "publishing to {topic} failed");
}

fn topic(kind: &str, device: Option<&str>) -> String {
    match device {
        Some(d) => format!("spBv1.0/{GROUP}/{kind}/{NODE}/{d}"),
        None => format!("spBv1.0/{GROUP}/{kind}/{NODE}"),
    }
}

fn is(m: &Value, kind: &str, device: Option<&str>) -> bool {
    m["topic"] == topic(kind, device)
}

fn metric<'a>(m: &'a Value, name: &str) -> &'a Value {
    m["metrics"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == name))
        .unwrap_or_else(|| panic!("no metric {name} in {m:#}"))
}

/// Every message of the node carries seq +1 (mod 256) from its NBIRTH's 0;
/// NDEATH has none. Checked per connection (between NBIRTHs), over the
/// node's own messages.
fn check_seq(msgs: &[Value]) {
    let mut expect: Option<u64> = None;
    for m in msgs {
        let t = m["topic"].as_str().unwrap_or("");
        // Commands and the host's STATE are not the node's messages.
        if t.contains("/STATE/") || t.contains("/NCMD/") || t.contains("/DCMD/") {
            continue;
        }
        if t == topic("NDEATH", None) {
            assert!(m["seq"].is_null(), "NDEATH without seq: {m}");
            expect = None;
            continue;
        }
        let seq = m["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {m}"));
        if t == topic("NBIRTH", None) {
            assert_eq!(seq, 0, "NBIRTH seq 0");
        } else if let Some(e) = expect {
            assert_eq!(seq, e, "seq after {:?} in {m}", e.checked_sub(1));
        } else {
            panic!("a message before any NBIRTH: {m}");
        }
        expect = Some((seq + 1) % 256);
    }
}

fn bd_seq(m: &Value) -> u64 {
    let b = metric(m, "bdSeq");
    assert_eq!(b["datatype"], 4, "bdSeq is Int64");
    b["value"].as_u64().expect("bdSeq value")
}

struct Fixture {
    broker: Broker,
    device: SimDevice,
    server: Option<SimServer>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    path: PathBuf,
}

fn config_text(f: &Fixture, poll: &str, extra: &str) -> String {
    format!(
        r#"
[gateway]
id = "{NODE}"
data_dir = "{data}"

[storage]
commit_interval = "200ms"

[api]
listen = "127.0.0.1:0"

[sparkplug]
url = "{url}"
group_id = "{GROUP}"
keep_alive = "5s"
{extra}

[[hosts]]
host = "pump"
connection = "tcp://{device}"
poll_interval = "{poll}"
timeout = "300ms"
retries = 0

[[hosts.items]]
key = "temp"
table = "input"
address = 0
type = "i16"
scale = 0.1
unit = "degC"

[[hosts.items]]
key = "flow"
table = "input"
address = 1
type = "u16"

[[hosts.items]]
key = "setpoint"
table = "holding"
address = 0
type = "u16"
configurable = true
lower_bound = 10.0
upper_bound = 60.0

[[hosts.items]]
key = "power"
table = "input"
address = 2
type = "f32"
"#,
        data = f.dir.path().join("data").display(),
        url = f.broker.url(false),
        device = f.addr,
    )
}

impl Fixture {
    async fn new() -> Fixture {
        let broker = Broker::start();
        let device = SimDevice::new();
        device.set_registers(Table::Input, 0, &[215, 7, 0x4148, 0]);
        device.set_registers(Table::Holding, 0, &[45]);
        let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
        let addr = server.addr().expect("addr");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("modbridge.toml");
        Fixture {
            broker,
            device,
            server: Some(server),
            addr,
            dir,
            path,
        }
    }

    fn write(&self, poll: &str, extra: &str) {
        std::fs::write(&self.path, config_text(self, poll, extra)).expect("write");
    }
}

fn alias_of(dbirth: &Value, name: &str) -> u64 {
    metric(dbirth, name)["alias"].as_u64().expect("alias")
}

/// Live (not historical) DDATA points of the metric with `alias`.
fn live_points(msgs: &[Value], alias: u64) -> Vec<(u64, Value)> {
    points(msgs, alias, false)
}

fn points(msgs: &[Value], alias: u64, historical: bool) -> Vec<(u64, Value)> {
    msgs.iter()
        .filter(|m| is(m, "DDATA", Some("pump")))
        .flat_map(|m| m["metrics"].as_array().cloned().unwrap_or_default())
        .filter(|x| {
            x["alias"] == alias && x["is_historical"].as_bool().unwrap_or(false) == historical
        })
        .map(|x| (x["timestamp"].as_u64().unwrap_or(0), x["value"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn births_data_by_exception_commands_and_rebirth() {
    let f = Fixture::new().await;
    let sub = Sub::start(f.broker.port).await;
    f.write("500ms", "");
    let running = Running::start_file(&f.path).await;

    let nb = sub
        .wait("NBIRTH", 0, Duration::from_secs(20), |m| {
            is(m, "NBIRTH", None)
        })
        .await;
    let all = sub.all();
    let nbirth = &all[nb];
    assert_eq!(nbirth["seq"], 0);
    assert_eq!(bd_seq(nbirth), 0, "fresh data_dir");
    let rebirth = metric(nbirth, "Node Control/Rebirth");
    assert_eq!(rebirth["datatype"], 11);
    assert_eq!(rebirth["value"], false);
    assert!(rebirth.get("alias").is_none(), "{rebirth}");

    let db = sub
        .wait("DBIRTH", nb, Duration::from_secs(20), |m| {
            is(m, "DBIRTH", Some("pump"))
        })
        .await;
    let dbirth = sub.all()[db].clone();
    let temp = metric(&dbirth, "temp");
    assert_eq!(temp["datatype"], 10, "scaled: Double");
    assert_eq!(temp["properties"]["engUnit"]["value"], "degC");
    assert_eq!(temp["properties"]["configurable"]["value"], false);
    let flow = metric(&dbirth, "flow");
    assert_eq!(flow["datatype"], 6, "u16: UInt16");
    let setpoint = metric(&dbirth, "setpoint");
    assert_eq!(setpoint["datatype"], 6);
    assert_eq!(setpoint["properties"]["engLow"]["value"], 10.0);
    assert_eq!(setpoint["properties"]["engHigh"]["value"], 60.0);
    assert_eq!(setpoint["properties"]["configurable"]["value"], true);
    let power = metric(&dbirth, "power");
    assert_eq!(power["datatype"], 9, "f32: Float");
    let mut aliases: Vec<u64> = dbirth["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["alias"].as_u64().expect("alias"))
        .collect();
    aliases.sort();
    aliases.dedup();
    assert_eq!(aliases.len(), 4, "unique aliases: {dbirth}");
    for m in dbirth["metrics"].as_array().unwrap() {
        assert!(m["timestamp"].as_u64().unwrap() > 0);
        assert!(
            m.get("value").is_some_and(|v| !v.is_null()) || m["is_null"] == true,
            "{m}"
        );
    }

    // Report by exception: a changed flow shows, an unchanged temp does not.
    let (temp_a, flow_a, setpoint_a) = (
        alias_of(&dbirth, "temp"),
        alias_of(&dbirth, "flow"),
        alias_of(&dbirth, "setpoint"),
    );
    f.device.set_registers(Table::Input, 1, &[9]);
    sub.wait("DDATA flow = 9", db, Duration::from_secs(20), |m| {
        is(m, "DDATA", Some("pump"))
            && m["metrics"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["alias"] == flow_a && x["value"] == 9))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let since_birth = &sub.all()[db..];
    assert!(
        live_points(since_birth, temp_a).is_empty(),
        "unchanged temp sent: {since_birth:#?}"
    );
    assert_eq!(
        live_points(since_birth, flow_a).len(),
        1,
        "flow once: {since_birth:#?}"
    );

    // DCMD to a configurable item: written, read back, shown as DDATA.
    let n = sub.all().len();
    publish(
        f.broker.port,
        &topic("DCMD", Some("pump")),
        r#"{"metrics":[{"name":"setpoint","datatype":6,"intValue":50}]}"#,
    );
    eventually(
        "the device's setpoint to be 50",
        Duration::from_secs(20),
        || f.device.register(Table::Holding, 0) == 50,
    )
    .await;
    sub.wait("DDATA setpoint = 50", n, Duration::from_secs(20), |m| {
        is(m, "DDATA", Some("pump"))
            && m["metrics"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["alias"] == setpoint_a && x["value"] == 50)
            })
    })
    .await;
    let config = running
        .gateway
        .writes
        .config_of("pump", "setpoint")
        .expect("config object");
    assert!(config.audit.iter().any(|a| a == "sparkplug"), "{config:?}");

    // DCMD to a sensor, an unknown metric, a wrong type: nothing changes.
    publish(
        f.broker.port,
        &topic("DCMD", Some("pump")),
        &format!(
            r#"{{"metrics":[{{"alias":{flow_a},"datatype":6,"intValue":3}},{{"name":"nope","intValue":3}},{{"name":"setpoint","stringValue":"20"}}]}}"#
        ),
    );
    // Commands are handled in order: once a later good one is carried out,
    // the bad ones were seen and changed nothing.
    publish(
        f.broker.port,
        &topic("DCMD", Some("pump")),
        r#"{"metrics":[{"name":"setpoint","datatype":6,"intValue":51}]}"#,
    );
    eventually(
        "the device's setpoint to be 51",
        Duration::from_secs(20),
        || f.device.register(Table::Holding, 0) == 51,
    )
    .await;
    assert!(running.gateway.writes.config_of("pump", "flow").is_none());
    let targets: Vec<f64> = running
        .gateway
        .ledger
        .read(|conn| {
            let mut st = conn.prepare("SELECT target FROM config_requests ORDER BY rid")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<f64>, _>>()?)
        })
        .await
        .expect("config requests");
    assert_eq!(
        targets,
        vec![50.0, 51.0],
        "only the good DCMDs became requests"
    );

    // NCMD rebirth: NBIRTH (same bdSeq) and DBIRTH again.
    let n = sub.all().len();
    publish(
        f.broker.port,
        &topic("NCMD", None),
        r#"{"metrics":[{"name":"Node Control/Rebirth","datatype":11,"booleanValue":true}]}"#,
    );
    let nb2 = sub
        .wait("NBIRTH again", n, Duration::from_secs(20), |m| {
            is(m, "NBIRTH", None)
        })
        .await;
    assert_eq!(bd_seq(&sub.all()[nb2]), 0, "same bdSeq on rebirth");
    sub.wait("DBIRTH again", nb2, Duration::from_secs(20), |m| {
        is(m, "DBIRTH", Some("pump"))
    })
    .await;

    running.stop().await;
    let end = sub
        .wait("NDEATH at stop", nb2, Duration::from_secs(20), |m| {
            is(m, "NDEATH", None)
        })
        .await;
    assert_eq!(bd_seq(&sub.all()[end]), 0);
    check_seq(&sub.all());
    // The native topics are not used by a Sparkplug-only gateway.
    let _ = temp_a;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_loss_gives_ddeath_then_dbirth() {
    let mut f = Fixture::new().await;
    let sub = Sub::start(f.broker.port).await;
    f.write("300ms", "");
    let running = Running::start_file(&f.path).await;
    let db = sub
        .wait("DBIRTH", 0, Duration::from_secs(20), |m| {
            is(m, "DBIRTH", Some("pump"))
        })
        .await;
    drop(f.server.take());
    let death = sub
        .wait("DDEATH", db, Duration::from_secs(20), |m| {
            is(m, "DDEATH", Some("pump"))
        })
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    f.device.set_registers(Table::Input, 1, &[11]);
    f.server = Some(
        f.device
            .bind_tcp(&f.addr.to_string())
            .await
            .expect("bind again"),
    );
    let back = sub
        .wait(
            "DBIRTH after the device is back",
            death,
            Duration::from_secs(20),
            |m| is(m, "DBIRTH", Some("pump")),
        )
        .await;
    let all = sub.all();
    assert!(
        all[death..back]
            .iter()
            .all(|m| !is(m, "DDATA", Some("pump"))),
        "no DDATA between DDEATH and DBIRTH: {:#?}",
        &all[death..back]
    );
    assert_eq!(metric(&all[back], "flow")["value"], 11);
    running.stop().await;
    check_seq(&sub.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_covered_by_historical_data() {
    let mut f = Fixture::new().await;
    // With a primary host the node is born only once the host is online,
    // so a subscriber started after the broker's restart sees every birth.
    f.write("500ms", "primary_host_id = \"scada\"");
    let sub = Sub::start(f.broker.port).await;
    let served = api_gateway::serve(modbridge::config::load(&f.path).expect("valid config")).await;
    // flow changes at every poll.
    let device = f.device.clone();
    let counter = tokio::spawn(async move {
        let mut v = 100u16;
        loop {
            v = v.wrapping_add(1);
            device.set_registers(Table::Input, 1, &[v]);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let online = |port: u16| {
        let now = modbridge::clock::unix_now() * 1000;
        publish(
            port,
            "spBv1.0/STATE/scada",
            &format!(r#"{{"online":true,"timestamp":{now}}}"#),
        );
    };
    online(f.broker.port);
    let state = sub
        .wait("STATE", 0, Duration::from_secs(20), |m| {
            m["topic"] == "spBv1.0/STATE/scada"
        })
        .await;
    let db = sub
        .wait("DBIRTH", 0, Duration::from_secs(20), |m| {
            is(m, "DBIRTH", Some("pump"))
        })
        .await;
    let first_birth = sub
        .all()
        .iter()
        .position(|m| is(m, "NBIRTH", None))
        .expect("NBIRTH");
    assert!(
        first_birth > state,
        "no birth before the primary host is online: {:#?}",
        sub.all()
    );
    let flow_a = alias_of(&sub.all()[db], "flow");
    tokio::time::sleep(Duration::from_secs(2)).await;
    f.broker.stop();
    let down_at = modbridge::clock::unix_now();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let up_at = modbridge::clock::unix_now();
    // The outage shows in /health and /metrics, the backlog with it.
    let health = api_gateway::http(served.addr, "GET", "/health", &[], None).await;
    assert_eq!(health.status, 503, "{}", health.body);
    let h = health.json();
    assert_eq!(h["sparkplug"]["configured"], true);
    assert_eq!(h["sparkplug"]["connected"], false);
    assert!(h["sparkplug"]["backlog"].as_u64().unwrap() >= 20, "{h}");
    assert!(
        h["problems"]
            .to_string()
            .contains("Sparkplug: not connected"),
        "{h}"
    );
    assert_eq!(h["mqtt"]["configured"], false);
    let metrics = api_gateway::http(served.addr, "GET", "/metrics", &[], None).await;
    assert!(
        metrics.body.contains("\nmodbridge_sparkplug_connected 0\n"),
        "{}",
        metrics.body
    );
    assert!(metrics
        .body
        .contains("\nmodbridge_sparkplug_configured 1\n"));
    check_seq(&sub.all());
    drop(sub);
    f.broker.restart();
    let sub = Sub::start(f.broker.port).await;
    online(f.broker.port);
    let nb = sub
        .wait("NBIRTH after the outage", 0, Duration::from_secs(60), |m| {
            is(m, "NBIRTH", None)
        })
        .await;
    // Live data resumes after the history.
    let last_live = sub
        .wait(
            "live DDATA after the outage",
            nb,
            Duration::from_secs(30),
            |m| {
                is(m, "DDATA", Some("pump"))
                    && m["metrics"].as_array().is_some_and(|a| {
                        a.iter()
                            .any(|x| x["alias"] == flow_a && x["is_historical"].is_null())
                    })
            },
        )
        .await;
    let after = &sub.all()[nb..=last_live];
    let historical = points(after, flow_a, true);
    assert!(!historical.is_empty(), "historical DDATA: {after:#?}");
    // Every flow point the store kept from the outage is in the historical data.
    let id = served.gateway.store.item_id("pump", "flow").expect("id");
    let stored = served
        .gateway
        .store
        .history(id, down_at + 1, up_at - 1, None)
        .await
        .expect("history");
    assert!(stored.len() >= 30, "polled during the outage: {stored:?}");
    let sent: std::collections::BTreeSet<u64> = historical.iter().map(|(t, _)| *t).collect();
    for (clock, value) in &stored {
        let ms = (*clock as u64) * 1000;
        assert!(
            sent.contains(&ms),
            "point at {clock} ({value}) missing from the historical data"
        );
    }
    let clocks: Vec<u64> = historical.iter().map(|(t, _)| *t).collect();
    assert!(
        clocks.windows(2).all(|w| w[0] <= w[1]),
        "clock order: {clocks:?}"
    );
    // Caught up: connected again and the backlog drained.
    eventually(
        "the Sparkplug backlog to drain",
        Duration::from_secs(20),
        || {
            let g = &served.gateway;
            g.sparkplug.is_connected() && g.store.backlog(modbridge::store::Uplink::Sparkplug) < 5
        },
    )
    .await;
    let h = api_gateway::http(served.addr, "GET", "/health", &[], None)
        .await
        .json();
    assert_eq!(h["sparkplug"]["connected"], true, "{h}");
    assert!(h["sparkplug"]["published"].as_u64().unwrap() > 0, "{h}");
    counter.abort();
    let _ = served.stop.send(());
    served.run.await.expect("join").expect("clean stop");
    check_seq(&sub.all());
}

fn spawn_binary(path: &Path, log: &Path) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    Command::new(env!("CARGO_BIN_EXE_modbridge"))
        .args(["run", "-c"])
        .arg(path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn modbridge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bd_seq_persists_across_restarts_and_the_will_carries_it() {
    let f = Fixture::new().await;
    let sub = Sub::start(f.broker.port).await;
    f.write("1s", "");
    let log = f.dir.path().join("gateway.log");
    let mut child = spawn_binary(&f.path, &log);
    let nb = sub
        .wait("NBIRTH", 0, Duration::from_secs(30), |m| {
            is(m, "NBIRTH", None)
        })
        .await;
    assert_eq!(bd_seq(&sub.all()[nb]), 0);
    signal(&child, "KILL");
    let _ = child.wait();
    let will = sub
        .wait("the Will (NDEATH)", nb, Duration::from_secs(30), |m| {
            is(m, "NDEATH", None)
        })
        .await;
    assert_eq!(
        bd_seq(&sub.all()[will]),
        0,
        "the Will carries that connection's bdSeq"
    );

    let mut child = spawn_binary(&f.path, &log);
    let nb = sub
        .wait("NBIRTH after restart", will, Duration::from_secs(30), |m| {
            is(m, "NBIRTH", None)
        })
        .await;
    assert_eq!(bd_seq(&sub.all()[nb]), 1, "persisted +1");
    signal(&child, "TERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let end = sub
        .wait("NDEATH at SIGTERM", nb, Duration::from_secs(30), |m| {
            is(m, "NDEATH", None)
        })
        .await;
    assert_eq!(bd_seq(&sub.all()[end]), 1);
    check_seq(&sub.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_wraps_from_255_to_0() {
    let f = Fixture::new().await;
    let sub = Sub::start(f.broker.port).await;
    f.write("100ms", "");
    let device = f.device.clone();
    let counter = tokio::spawn(async move {
        let mut v = 0u16;
        loop {
            v = v.wrapping_add(1);
            device.set_registers(Table::Input, 1, &[v]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let running = Running::start_file(&f.path).await;
    sub.wait("seq 255 then 0", 0, Duration::from_secs(120), |m| {
        m["seq"] == 0 && !is(m, "NBIRTH", None)
    })
    .await;
    counter.abort();
    running.stop().await;
    let all = sub.all();
    assert!(all.iter().any(|m| m["seq"] == 255));
    check_seq(&all);
}

/// `seq` and the `flow` points of the native `R/data/pump` messages.
fn native_data(msgs: &[broker::Msg]) -> (Vec<u64>, Vec<(u64, f64)>) {
    let mut seqs = Vec::new();
    let mut flow = Vec::new();
    for m in msgs
        .iter()
        .filter(|m| m.topic == format!("modbridge/{NODE}/data/pump"))
    {
        let v: Value = serde_json::from_slice(&m.payload).expect("JSON data message");
        seqs.push(v["seq"].as_u64().expect("seq"));
        for p in v["items"]["flow"].as_array().cloned().unwrap_or_default() {
            flow.push((
                p[0].as_u64().expect("clock") * 1000,
                p[1].as_f64().expect("value"),
            ));
        }
    }
    (seqs, flow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_uplinks_one_down_the_other_unaffected_then_it_catches_up() {
    let mut f = Fixture::new().await;
    // The native uplink on a broker of its own, which stays up.
    let native_broker = Broker::start();
    f.write(
        "500ms",
        &format!(
            "primary_host_id = \"scada\"\n\n[mqtt]\nurl = \"{}\"",
            native_broker.url(false)
        ),
    );
    let mut native = broker::Upstream::connect(
        native_broker.port,
        "upstream",
        None,
        &[&format!("modbridge/{NODE}/data/+")],
        true,
    )
    .await;
    let sub = Sub::start(f.broker.port).await;
    let running = Running::start_file(&f.path).await;
    let device = f.device.clone();
    let counter = tokio::spawn(async move {
        let mut v = 100u16;
        loop {
            v = v.wrapping_add(1);
            device.set_registers(Table::Input, 1, &[v]);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let online = |port: u16| {
        let now = modbridge::clock::unix_now() * 1000;
        publish(
            port,
            "spBv1.0/STATE/scada",
            &format!(r#"{{"online":true,"timestamp":{now}}}"#),
        );
    };
    online(f.broker.port);
    let db = sub
        .wait("DBIRTH", 0, Duration::from_secs(20), |m| {
            is(m, "DBIRTH", Some("pump"))
        })
        .await;
    let flow_a = alias_of(&sub.all()[db], "flow");

    // The Sparkplug broker goes away; the native uplink keeps delivering.
    f.broker.stop();
    let down_at = (modbridge::clock::unix_now() as u64 + 1) * 1000;
    let before = native_data(&native.messages()).0.len();
    let outage = native
        .wait(
            "native data during the Sparkplug outage",
            Duration::from_secs(30),
            |m| native_data(m).0.len() >= before + 20,
        )
        .await;
    let (seqs, _) = native_data(&outage);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "native seq without a hole or a repeat: {seqs:?}"
    );
    let backlog = running
        .gateway
        .store
        .backlog(modbridge::store::Uplink::Sparkplug);
    assert!(
        backlog >= 20,
        "Sparkplug's backlog grows while it is down: {backlog}"
    );
    assert!(
        running.gateway.store.outbox_len() < 5,
        "the native uplink is not held back: {}",
        running.gateway.store.outbox_len()
    );

    // Back: Sparkplug catches up with historical DDATA, the native one goes on.
    let up_at = (modbridge::clock::unix_now() as u64).saturating_sub(1) * 1000;
    drop(sub);
    f.broker.restart();
    let sub = Sub::start(f.broker.port).await;
    online(f.broker.port);
    let nb = sub
        .wait("NBIRTH after the outage", 0, Duration::from_secs(60), |m| {
            is(m, "NBIRTH", None)
        })
        .await;
    sub.wait(
        "live DDATA after the outage",
        nb,
        Duration::from_secs(30),
        |m| {
            is(m, "DDATA", Some("pump"))
                && m["metrics"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x["alias"] == flow_a && x["is_historical"].is_null())
                })
        },
    )
    .await;
    let all = native.messages();
    let (seqs, native_flow) = native_data(&all);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "native seq without a hole: {seqs:?}"
    );
    // Every flow point the native uplink delivered during the outage
    // reached Sparkplug as historical data.
    let historical: std::collections::BTreeSet<u64> = points(&sub.all(), flow_a, true)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let outage_points: Vec<u64> = native_flow
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| (down_at..=up_at).contains(t))
        .collect();
    assert!(outage_points.len() >= 10, "{outage_points:?}");
    for t in &outage_points {
        assert!(
            historical.contains(t),
            "flow at {t} ms missing from Sparkplug's historical data"
        );
    }
    counter.abort();
    running.stop().await;
    check_seq(&sub.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_host_offline_gives_ndeath_and_a_new_bdseq_an_older_offline_is_ignored() {
    let f = Fixture::new().await;
    f.write("500ms", "primary_host_id = \"scada\"");
    let sub = Sub::start(f.broker.port).await;
    let running = Running::start_file(&f.path).await;
    let state = |online: bool, ts: u64| {
        publish(
            f.broker.port,
            "spBv1.0/STATE/scada",
            &format!(r#"{{"online":{online},"timestamp":{ts}}}"#),
        );
    };
    let t = modbridge::clock::unix_now() as u64 * 1000;
    state(true, t);
    let nb = sub
        .wait("NBIRTH once online", 0, Duration::from_secs(20), |m| {
            is(m, "NBIRTH", None)
        })
        .await;
    assert_eq!(bd_seq(&sub.all()[nb]), 0);
    sub.wait("DBIRTH", nb, Duration::from_secs(20), |m| {
        is(m, "DBIRTH", Some("pump"))
    })
    .await;

    // An offline older than the last online is stale (a host's old Will):
    // ignored. A newer online after it proves it was handled.
    state(false, t - 1000);
    state(true, t + 1000);
    let marker = sub
        .wait(
            "the second online STATE",
            nb,
            Duration::from_secs(20),
            |m| {
                m["topic"] == "spBv1.0/STATE/scada"
                    && m["state"]
                        .as_str()
                        .is_some_and(|s| s.contains(&format!("{}", t + 1000)))
            },
        )
        .await;
    // The current offline: NDEATH with this bdSeq, then a new session that
    // waits for the host.
    state(false, t + 2000);
    let death = sub
        .wait("NDEATH at offline", marker, Duration::from_secs(20), |m| {
            is(m, "NDEATH", None)
        })
        .await;
    assert_eq!(bd_seq(&sub.all()[death]), 0);
    assert!(
        !sub.all()[nb + 1..death]
            .iter()
            .any(|m| is(m, "NDEATH", None)),
        "the stale offline changed nothing"
    );
    eventually(
        "the new session to connect",
        Duration::from_secs(20),
        || {
            running
                .gateway
                .sparkplug
                .connects
                .load(std::sync::atomic::Ordering::Relaxed)
                >= 2
        },
    )
    .await;
    state(true, t + 3000);
    let nb2 = sub
        .wait(
            "NBIRTH when online again",
            death,
            Duration::from_secs(20),
            |m| is(m, "NBIRTH", None),
        )
        .await;
    assert_eq!(bd_seq(&sub.all()[nb2]), 1, "a new connection, a new bdSeq");
    assert!(
        !sub.all()[death..nb2]
            .iter()
            .any(|m| is(m, "NBIRTH", None) || is(m, "DBIRTH", Some("pump"))),
        "no birth before the host is online again"
    );
    running.stop().await;
    check_seq(&sub.all());
}
