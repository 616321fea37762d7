//! The MQTT uplink and downlink against a real mosquitto and a real upstream
//! client: data, status and host metadata; a broker outage; SIGKILL during a
//! backlog drain; TLS with client certificates; refused downlink messages.

#[path = "support/broker.rs"]
mod broker;
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker::{data_messages, eventually, signal, Broker, Data, Msg, Pki, Upstream};
use common::Running;
use modbridge::model::Table;
use modbridge::sim::{SimDevice, SimServer};
use modbridge::store::Store;
use tokio_rustls::rustls::ClientConfig;

const ROOT: &str = "modbridge/box-1";

struct Setup {
    data: PathBuf,
    device: SocketAddr,
    mqtt: String,
    poll: &'static str,
    /// Extra `[[hosts]]` blocks.
    hosts: String,
}

fn config_text(s: &Setup) -> String {
    format!(
        r#"
[gateway]
id = "box-1"
data_dir = "{data}"

[storage]
commit_interval = "200ms"

{mqtt}

[[hosts]]
host = "pump"
connection = "tcp://{device}"
unit = 1
poll_interval = "{poll}"
timeout = "500ms"
type = "heating/heat-pump"
tags = ["plant-room"]

[[hosts.items]]
key = "temp"
name = "Outdoor temp"
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
{hosts}
"#,
        data = s.data.display(),
        device = s.device,
        mqtt = s.mqtt,
        poll = s.poll,
        hosts = s.hosts,
    )
}

fn mqtt_section(url: &str, extra: &str) -> String {
    format!("[mqtt]\nurl = \"{url}\"\nkeep_alive = \"5s\"\n{extra}")
}

async fn device() -> (SimDevice, modbridge::sim::SimServer, SocketAddr) {
    let device = SimDevice::new();
    device.set_registers(Table::Input, 0, &[215, 7]);
    device.set_registers(Table::Holding, 0, &[45]);
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let addr = server.addr().expect("addr");
    (device, server, addr)
}

/// A broker, an upstream client subscribed to everything below the root, the
/// simulated device and, in a tempdir, the config file of a gateway talking to
/// both (plain MQTT, poll interval 1 s, no extra hosts until `setup` changes).
struct Fixture {
    broker: Broker,
    up: Upstream,
    device: SimDevice,
    _server: SimServer,
    dir: tempfile::TempDir,
    path: PathBuf,
    setup: Setup,
}

impl Fixture {
    async fn new(broker: Broker, client: &str, tls: Option<ClientConfig>) -> Fixture {
        let up = Upstream::connect(broker.port, client, tls, &[&format!("{ROOT}/#")], false).await;
        let (device, server, addr) = device().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("modbridge.toml");
        let setup = Setup {
            data: dir.path().join("data"),
            device: addr,
            mqtt: mqtt_section(&broker.url(false), ""),
            poll: "1s",
            hosts: String::new(),
        };
        Fixture {
            broker,
            up,
            device,
            _server: server,
            dir,
            path,
            setup,
        }
    }

    /// Writes the config file from `setup`.
    fn write(&self) {
        std::fs::write(&self.path, config_text(&self.setup)).expect("write");
    }

    /// Writes the config file and starts the gateway on it.
    async fn start(&self) -> Running {
        self.write();
        Running::start_file(&self.path).await
    }
}

fn is_status(m: &Msg, state: &str) -> bool {
    m.topic == format!("{ROOT}/status") && m.json()["state"] == state
}

/// Every history point of every item of `host`, from a reopened store, and
/// the points of the rows still waiting in its outbox.
type Series = BTreeMap<String, Vec<(i64, f64)>>;

async fn stored(config_path: &Path, host: &str) -> (Series, Vec<Data>) {
    let config = modbridge::config::load(config_path).expect("config");
    let store = Store::open(&config).expect("reopen");
    let spec = config.host(host).expect("host").clone();
    let mut history = BTreeMap::new();
    for item in &spec.items {
        let id = store.item_id(host, &item.key).expect("id");
        history.insert(
            item.key.clone(),
            store.history(id, 0, i64::MAX, None).await.expect("history"),
        );
    }
    let pending = store
        .outbox_after(0, usize::MAX >> 1)
        .await
        .expect("outbox")
        .into_iter()
        .filter(|m| m.host == host)
        .map(|m| Data {
            seq: Some(m.seq),
            host: m.host.clone(),
            resend: false,
            items: m.items.iter().cloned().collect(),
            raw: modbridge::wire::data_message(&m).into_bytes(),
        })
        .collect();
    store.close().expect("close");
    (history, pending)
}

/// The delivery contract over everything received: duplicates only with the
/// same seq and identical payload, no holes in seq, first copies in seq order,
/// clocks ascending per item, and every stored point delivered (or still
/// queued) and nothing else.
fn check_delivery(
    received: &[Data],
    pending: &[Data],
    history: &BTreeMap<String, Vec<(i64, f64)>>,
) {
    let mut by_seq: BTreeMap<u64, &Data> = BTreeMap::new();
    let mut first_order = Vec::new();
    for d in received.iter().filter(|d| !d.resend) {
        let seq = d.seq.expect("live data has a seq");
        match by_seq.get(&seq) {
            Some(prev) => assert_eq!(
                prev.raw, d.raw,
                "seq {seq} sent twice with different content"
            ),
            None => {
                by_seq.insert(seq, d);
                first_order.push(seq);
            }
        }
    }
    assert!(!by_seq.is_empty(), "no data received");
    assert!(
        first_order.windows(2).all(|w| w[0] < w[1]),
        "first copies out of seq order"
    );
    let (lo, hi) = (
        *by_seq.keys().next().unwrap(),
        *by_seq.keys().next_back().unwrap(),
    );
    assert_eq!(lo, 1, "the first message has seq 1");
    let holes: Vec<u64> = (lo..=hi).filter(|s| !by_seq.contains_key(s)).collect();
    assert!(holes.is_empty(), "seq holes: {holes:?}");
    let mut got: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for d in by_seq.values() {
        for (k, p) in &d.items {
            got.entry(k.clone()).or_default().extend(p);
        }
    }
    for points in got.values() {
        assert!(
            points.windows(2).all(|w| w[0].0 <= w[1].0),
            "clock order per item"
        );
    }
    // Rows still queued at the end (never acknowledged) count as delivered
    // later; one already received must be identical.
    let mut queued: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for d in pending {
        let seq = d.seq.expect("outbox rows have a seq");
        match by_seq.get(&seq) {
            Some(got) => assert_eq!(got.raw, d.raw, "seq {seq} differs from the stored row"),
            None => {
                for (k, p) in &d.items {
                    queued.entry(k.clone()).or_default().extend(p);
                }
            }
        }
    }
    // Every stored point once per seq: the multisets are equal.
    let sorted = |v: &[(i64, f64)]| {
        let mut v: Vec<(i64, u64)> = v.iter().map(|(c, x)| (*c, x.to_bits())).collect();
        v.sort_unstable();
        v
    };
    for (key, points) in history {
        let mut delivered = got.get(key).cloned().unwrap_or_default();
        delivered.extend(queued.get(key).cloned().unwrap_or_default());
        let (want, have) = (sorted(points), sorted(&delivered));
        if want != have {
            let w: BTreeSet<_> = want.iter().collect();
            let h: BTreeSet<_> = have.iter().collect();
            panic!(
                "{key}: {} stored, {} delivered; missing {:?}; not stored {:?}",
                want.len(),
                have.len(),
                w.difference(&h).take(5).collect::<Vec<_>>(),
                h.difference(&w).take(5).collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test]
async fn samples_status_and_host_metadata_reach_the_upstream() {
    let mut fx = Fixture::new(Broker::start(), "upstream-1", None).await;
    let addr = fx.setup.device;
    let boiler = format!(
        "\n[[hosts]]\nhost = \"boiler\"\nconnection = \"tcp://{addr}\"\nunit = 2\npoll_interval = \"1s\"\n\n[[hosts.items]]\nkey = \"t\"\ntable = \"input\"\naddress = 1\ntype = \"u16\"\n"
    );
    fx.setup.hosts = boiler;
    let run = fx.start().await;

    let msgs = fx
        .up
        .wait(
            "status, both hosts' metadata and 3 pump data messages",
            Duration::from_secs(15),
            |m| {
                m.iter().any(|m| is_status(m, "online"))
                    && m.iter().any(|m| m.topic == format!("{ROOT}/hosts/pump"))
                    && m.iter().any(|m| m.topic == format!("{ROOT}/hosts/boiler"))
                    && data_messages(m, ROOT)
                        .iter()
                        .filter(|d| d.host == "pump")
                        .count()
                        >= 3
            },
        )
        .await;
    let status = msgs.iter().find(|m| is_status(m, "online")).unwrap().json();
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["clock"].as_i64().unwrap() > 1_600_000_000);
    let host = msgs
        .iter()
        .find(|m| m.topic == format!("{ROOT}/hosts/pump"))
        .unwrap()
        .json();
    assert_eq!(host["host"], "pump");
    assert_eq!(host["type"], "heating/heat-pump");
    assert_eq!(host["tags"], serde_json::json!(["plant-room"]));
    let items = host["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    let setpoint = items.iter().find(|i| i["key"] == "setpoint").unwrap();
    assert_eq!(setpoint["configurable"], true);
    assert_eq!(setpoint["lower_bound"], 10.0);
    assert_eq!(setpoint["upper_bound"], 60.0);
    assert_eq!(setpoint["config"]["status"], "SUCCESS");
    assert_eq!(
        items.iter().find(|i| i["key"] == "temp").unwrap()["unit"],
        "degC"
    );

    let data: Vec<Data> = data_messages(&msgs, ROOT);
    let seqs: Vec<u64> = data.iter().map(|d| d.seq.unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive seq: {seqs:?}"
    );
    for d in data.iter().filter(|d| d.host == "pump") {
        assert!(d.items["temp"].iter().all(|p| p.1 == 21.5), "{:?}", d.items);
        assert!(d.items["flow"].iter().all(|p| p.1 == 7.0));
        assert!(d.items["setpoint"].iter().all(|p| p.1 == 45.0));
    }

    // Retained: a client arriving later gets status and metadata at once.
    let mut late = Upstream::connect(
        fx.broker.port,
        "late-1",
        None,
        &[&format!("{ROOT}/status"), &format!("{ROOT}/hosts/+")],
        true,
    )
    .await;
    late.wait(
        "retained status and metadata",
        Duration::from_secs(5),
        |m| m.iter().filter(|m| m.retain).count() >= 3,
    )
    .await;

    // A reload that removes a host clears its retained metadata; [mqtt] is
    // unchanged, so the connection stays.
    fx.setup.hosts = String::new();
    fx.write();
    let before = fx.up.messages().len();
    assert!(modbridge::daemon::reload_from_file(&run.gateway, &fx.path).await);
    fx.up
        .wait(
            "boiler metadata cleared, pump republished",
            Duration::from_secs(10),
            |m| {
                let new = &m[before.min(m.len())..];
                new.iter()
                    .any(|m| m.topic == format!("{ROOT}/hosts/boiler") && m.payload.is_empty())
                    && new.iter().any(|m| m.topic == format!("{ROOT}/hosts/pump"))
            },
        )
        .await;
    assert_eq!(run.gateway.mqtt.connects.load(Ordering::Relaxed), 1);
    let boiler_cleared = Upstream::connect(
        fx.broker.port,
        "late-2",
        None,
        &[&format!("{ROOT}/hosts/+")],
        true,
    )
    .await;
    // Only pump's retained metadata is left.
    let mut boiler_cleared = boiler_cleared;
    let m = boiler_cleared
        .wait("pump metadata", Duration::from_secs(5), |m| !m.is_empty())
        .await;
    assert!(
        m.iter().all(|m| m.topic.ends_with("/pump")),
        "{:?}",
        m.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );

    let snapshot = run.gateway.mqtt.snapshot();
    assert!(snapshot.connected && snapshot.data_messages >= 3 && snapshot.data_samples >= 9);
    assert!(run.gateway.mqtt.delay_quantile(0.5).is_some());
    let gateway = run.stop().await;
    fx.up
        .wait("offline status", Duration::from_secs(5), |m| {
            m.last().is_some_and(|m| is_status(m, "offline"))
        })
        .await;
    assert!(!gateway.mqtt.is_connected());
}

#[tokio::test]
async fn a_broker_outage_loses_nothing() {
    let mut fx = Fixture::new(Broker::start(), "upstream-2", None).await;
    fx.setup.poll = "500ms";
    let run = fx.start().await;
    fx.up
        .wait("first data", Duration::from_secs(10), |m| {
            data_messages(m, ROOT).len() >= 2
        })
        .await;

    // The broker goes away; polling and storage carry on.
    fx.broker.stop();
    let outage_start = modbridge::clock::unix_now();
    let status = run.gateway.mqtt.clone();
    eventually("the uplink notices", Duration::from_secs(10), || {
        !status.is_connected()
    })
    .await;
    let live = run.gateway.host("pump").expect("host");
    let mut cycles = live.subscribe();
    // Thirty seconds of polling with the broker away, a new value each cycle.
    let mut i = 0u16;
    while live.lock().items[1].clock.unwrap_or(0) < outage_start + 30 {
        i += 1;
        fx.device.set_register(Table::Input, 1, 100 + i);
        tokio::time::timeout(Duration::from_secs(5), cycles.changed())
            .await
            .expect("polling goes on during the outage")
            .expect("cycles");
    }
    let backlog = run.gateway.store.outbox_len();
    assert!(
        backlog > 0,
        "samples polled during the outage wait in the outbox"
    );
    assert!(status.connect_errors.load(Ordering::Relaxed) >= 1);

    // Back on the same port: the backlog drains.
    fx.broker.restart();
    let store = run.gateway.store.clone();
    // The reconnect backoff is at most 30 s (plus jitter).
    eventually("the backlog drains", Duration::from_secs(75), || {
        status.is_connected() && store.outbox_len() == 0
    })
    .await;
    assert_eq!(status.connects.load(Ordering::Relaxed), 2);
    let _ = run.stop().await;
    let msgs = fx
        .up
        .wait(
            "offline status after the drain",
            Duration::from_secs(10),
            |m| m.iter().any(|m| is_status(m, "offline")),
        )
        .await;
    let received = data_messages(&msgs, ROOT);
    let (history, pending) = stored(&fx.path, "pump").await;
    check_delivery(&received, &pending, &history);
    // The values set during the outage all arrived, in order.
    let during: Vec<f64> = received
        .iter()
        .flat_map(|d| d.items["flow"].iter())
        .filter(|(c, v)| *c >= outage_start && *v >= 100.0)
        .map(|(_, v)| *v)
        .collect();
    assert!(
        during.len() >= 5,
        "samples polled during the outage: {during:?}"
    );
    assert!(during.windows(2).all(|w| w[0] <= w[1]), "{during:?}");
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

fn journal(db: &Path) -> (i64, i64, i64) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open db");
    conn.query_row(
        "SELECT count(*), coalesce(sum(n), 0), coalesce(max(seq), 0) FROM journal WHERE sent = 0",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap_or((0, 0, 0))
}

#[tokio::test]
async fn sigkill_while_a_backlog_drains_loses_nothing() {
    let mut fx = Fixture::new(Broker::start(), "upstream-3", None).await;
    let addr = fx.setup.device;
    let values: Vec<u16> = (0..100).collect();
    fx.device.set_registers(Table::Input, 0, &values);
    let log = fx.dir.path().join("modbridge.log");
    // 20 hosts x 100 items: one data message per host and commit.
    let mut hosts = String::new();
    for h in 1..=20 {
        hosts.push_str(&format!(
            "\n[[hosts]]\nhost = \"h{h}\"\nconnection = \"tcp://{addr}\"\nunit = {h}\npoll_interval = \"1s\"\ntimeout = \"1s\"\n"
        ));
        for a in 0..100 {
            hosts.push_str(&format!(
                "\n[[hosts.items]]\nkey = \"r{a}\"\ntable = \"input\"\naddress = {a}\ntype = \"u16\"\n"
            ));
        }
    }
    let data_dir = fx.dir.path().join("data");
    std::fs::write(
        &fx.path,
        format!(
            "[gateway]\nid = \"box-1\"\ndata_dir = \"{}\"\n[storage]\ncommit_interval = \"200ms\"\n[api]\nlisten = \"127.0.0.1:0\"\n{}\n{hosts}",
            data_dir.display(),
            mqtt_section(&fx.broker.url(false), "")
        ),
    )
    .expect("write");
    let db = data_dir.join("modbridge.db");

    // Build a backlog while the broker is away.
    fx.broker.stop();
    let mut child = spawn_binary(&fx.path, &log);
    eventually("a backlog of 150 messages", Duration::from_secs(60), || {
        db.exists() && journal(&db).0 >= 150
    })
    .await;
    fx.broker.restart();
    fx.up
        .wait("the drain to begin", Duration::from_secs(60), |m| {
            !data_messages(m, ROOT).is_empty()
        })
        .await;
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let at_kill = fx.up.messages().len();
    let received_at_kill = data_messages(&fx.up.messages(), ROOT).len();
    let (rows, points, _) = journal(&db);
    let max_seq: i64 = rusqlite::Connection::open(&db)
        .expect("db")
        .query_row("SELECT coalesce(max(seq), 0) FROM journal", [], |r| {
            r.get(0)
        })
        .expect("max seq");
    eprintln!(
        "killed after {received_at_kill} of {max_seq} messages had arrived; {rows} rows ({points} points) not marked sent"
    );

    // Restart: the rows not marked sent go out again, then everything else.
    let mut child = spawn_binary(&fx.path, &log);
    fx.up
        .wait(
            "the restarted gateway online and every seq up to the kill",
            Duration::from_secs(60),
            |m| {
                let after = &m[at_kill.min(m.len())..];
                let seqs: BTreeSet<u64> = data_messages(m, ROOT)
                    .iter()
                    .filter_map(|d| d.seq)
                    .collect();
                after.iter().any(|m| is_status(m, "online"))
                    && (1..=max_seq as u64).all(|s| seqs.contains(&s))
                    && data_messages(after, ROOT).len() >= rows as usize
            },
        )
        .await;
    signal(&child, "TERM");
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "clean exit; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let msgs = fx
        .up
        .wait(
            "the explicit offline status",
            Duration::from_secs(10),
            |m| {
                m.last()
                    .is_some_and(|m| is_status(m, "offline") && m.json()["clock"].is_i64())
            },
        )
        .await;
    let received = data_messages(&msgs, ROOT);
    let distinct: BTreeSet<u64> = received.iter().filter_map(|d| d.seq).collect();
    eprintln!(
        "{} data messages received, {} distinct seqs",
        received.len(),
        distinct.len()
    );
    let config = modbridge::config::load(&fx.path).expect("config");
    let mut all_history = Series::new();
    let mut all_pending = Vec::new();
    for host in &config.hosts {
        let (history, pending) = stored(&fx.path, &host.host).await;
        for (k, v) in history {
            all_history.insert(format!("{}/{k}", host.host), v);
        }
        all_pending.extend(pending);
    }
    let qualify = |d: &Data| Data {
        items: d
            .items
            .iter()
            .map(|(k, v)| (format!("{}/{k}", d.host), v.clone()))
            .collect(),
        ..d.clone()
    };
    let received: Vec<Data> = received.iter().map(qualify).collect();
    let pending: Vec<Data> = all_pending.iter().map(qualify).collect();
    check_delivery(&received, &pending, &all_history);
}

fn tls_section(broker: &Broker, pki: &Pki, ca: &str) -> String {
    mqtt_section(
        &broker.url(true),
        &format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.path(ca).display(),
            pki.path("client.pem").display(),
            pki.path("client.key").display()
        ),
    )
}

#[tokio::test]
async fn tls_with_client_certificates_and_a_wrong_ca() {
    let pki = Pki::new();
    let mut fx = Fixture::new(
        Broker::start_tls(&pki),
        "upstream-4",
        Some(pki.client("ca.pem")),
    )
    .await;
    fx.setup.mqtt = tls_section(&fx.broker, &pki, "wrong-ca.pem");
    let run = fx.start().await;
    let status = run.gateway.mqtt.clone();
    eventually("two refused handshakes", Duration::from_secs(20), || {
        status.connect_errors.load(Ordering::Relaxed) >= 2
    })
    .await;
    let (_, error) = status.last_error().expect("an error is recorded");
    assert!(error.contains("TLS handshake"), "{error}");
    assert!(
        error.contains("UnknownIssuer") || error.contains("certificate"),
        "{error}"
    );
    assert!(!status.is_connected());
    // The daemon carries on: polling and storage are unaffected.
    let live = run.gateway.host("pump").expect("host");
    let mut cycles = live.subscribe();
    tokio::time::timeout(Duration::from_secs(5), cycles.changed())
        .await
        .expect("polling goes on")
        .expect("cycles");
    assert!(run.gateway.store.outbox_len() > 0);

    // The right CA (a changed [mqtt] section): it connects and the backlog drains.
    fx.setup.mqtt = tls_section(&fx.broker, &pki, "ca.pem");
    fx.write();
    assert!(modbridge::daemon::reload_from_file(&run.gateway, &fx.path).await);
    fx.up
        .wait(
            "online status and data over TLS",
            Duration::from_secs(15),
            |m| m.iter().any(|m| is_status(m, "online")) && data_messages(m, ROOT).len() >= 2,
        )
        .await;
    let received = data_messages(&fx.up.messages(), ROOT);
    assert_eq!(
        received[0].seq,
        Some(1),
        "the data stored while TLS failed comes first"
    );
    let gateway = run.stop().await;
    assert!(gateway.mqtt.connects.load(Ordering::Relaxed) == 1);
}

#[tokio::test]
async fn bad_downlink_messages_are_refused_on_rejected() {
    let mut fx = Fixture::new(Broker::start(), "upstream-5", None).await;
    // A retained command is waiting when the gateway subscribes.
    fx.up
        .publish(
            &format!("{ROOT}/cmd/ack"),
            r#"{"eventid":1,"message":"x"}"#,
            true,
        )
        .await;
    let now = modbridge::clock::unix_now();
    let run = fx.start().await;
    fx.up
        .wait("online and data", Duration::from_secs(10), |m| {
            m.iter().any(|m| is_status(m, "online")) && !data_messages(m, ROOT).is_empty()
        })
        .await;
    let big = format!("{{\"host\":\"pump\",\"pad\":\"{}\"}}", "x".repeat(1 << 20));
    let cases: Vec<(&str, String, bool, &str)> = vec![
        (
            "cmd/ack",
            String::new(),
            true,
            "retained commands are refused",
        ),
        ("cmd/config", "not json".into(), false, "not valid JSON"),
        (
            "cmd/config",
            r#"{"host":"pump"}"#.into(),
            false,
            "missing field \"key\"",
        ),
        (
            "cmd/config",
            r#"{"host":"nope","key":"setpoint","target":20}"#.into(),
            false,
            "unknown host \"nope\"",
        ),
        (
            "cmd/config",
            r#"{"host":"pump","key":"nope","target":20}"#.into(),
            false,
            "has no item \"nope\"",
        ),
        (
            "cmd/config",
            r#"{"host":"pump","key":"temp","target":20}"#.into(),
            false,
            "is a sensor",
        ),
        (
            "cmd/config",
            r#"{"host":"pump","key":"setpoint","target":"high"}"#.into(),
            false,
            "not the string \"high\"",
        ),
        ("cmd/config", big, false, "larger than the 65536 bytes"),
        ("cmd/ack", "{{".into(), false, "not JSON"),
        (
            "cmd/ack",
            r#"{"message":"on site"}"#.into(),
            false,
            "missing field \"eventid\"",
        ),
        (
            "cmd/ack",
            r#"{"eventid":"x","message":"on site"}"#.into(),
            false,
            "non-negative integer",
        ),
        (
            "cmd/ack",
            r#"{"eventid":424242,"message":"on site"}"#.into(),
            false,
            "no event 424242",
        ),
        ("cmd/resend", "[]".into(), false, "JSON object"),
        (
            "cmd/resend",
            r#"{"host":"pump","from":20,"to":10}"#.into(),
            false,
            "is after",
        ),
        (
            "cmd/resend",
            r#"{"host":"pump","from":"yesterday","to":10}"#.into(),
            false,
            "must be an integer",
        ),
        (
            "cmd/resend",
            r#"{"host":"nope","from":1,"to":2}"#.into(),
            false,
            "unknown host",
        ),
        (
            "cmd/resend",
            r#"{"host":"pump","key":"nope","from":1,"to":2}"#.into(),
            false,
            "has no item",
        ),
        (
            "cmd/resend",
            format!(r#"{{"host":"pump","from":0,"to":{now}}}"#),
            false,
            "shorter range",
        ),
    ];
    for (i, (cmd, payload, retain, want)) in cases.iter().enumerate() {
        let topic = format!("{ROOT}/{cmd}");
        if !payload.is_empty() {
            fx.up.publish(&topic, payload.as_bytes(), *retain).await;
        }
        let msgs = fx
            .up
            .wait(
                &format!("rejection {i} ({cmd})"),
                Duration::from_secs(10),
                |m| {
                    m.iter()
                        .filter(|m| m.topic == format!("{ROOT}/rejected"))
                        .count()
                        > i
                },
            )
            .await;
        let r = msgs
            .iter()
            .filter(|m| m.topic == format!("{ROOT}/rejected"))
            .nth(i)
            .unwrap()
            .json();
        assert_eq!(r["topic"], topic, "case {i}");
        let error = r["error"].as_str().expect("error text");
        assert!(
            !error.is_empty() && error.contains(want),
            "case {i}: {error}"
        );
        assert!(r["clock"].as_i64().unwrap() >= now, "case {i}");
    }
    // Clearing the retained command is not a command (and not refused).
    fx.up
        .publish(&format!("{ROOT}/cmd/ack"), Vec::new(), true)
        .await;

    // A good resend: the stored history again, told apart from live data.
    let config = run.gateway.config();
    let temp = run.gateway.store.item_id("pump", "temp").expect("id");
    run.gateway.store.flush().expect("flush");
    let to = modbridge::clock::unix_now();
    let history = run
        .gateway
        .store
        .history(temp, now - 3600, to, None)
        .await
        .expect("history");
    assert!(!history.is_empty());
    fx.up
        .publish(
            &format!("{ROOT}/cmd/resend"),
            format!(
                r#"{{"host":"pump","key":"temp","from":{},"to":{to}}}"#,
                now - 3600
            ),
            false,
        )
        .await;
    let msgs = fx
        .up
        .wait("the resend", Duration::from_secs(10), |m| {
            data_messages(m, ROOT).iter().any(|d| d.resend)
        })
        .await;
    let resend = data_messages(&msgs, ROOT)
        .into_iter()
        .find(|d| d.resend)
        .unwrap();
    assert_eq!(resend.seq, None, "a resend is not part of the seq sequence");
    assert_eq!(resend.items.keys().collect::<Vec<_>>(), vec!["temp"]);
    // Exactly the stored points (a poll in the second `to` may add one after
    // the first read).
    run.gateway.store.flush().expect("flush");
    let later = run
        .gateway
        .store
        .history(temp, now - 3600, to, None)
        .await
        .expect("history");
    let got = &resend.items["temp"];
    assert!(got.len() >= history.len() && got[..history.len()] == history[..]);
    assert!(later.len() >= got.len() && later[..got.len()] == got[..]);
    drop(config);

    // The daemon is unaffected: same connection, still polling and publishing.
    let status = run.gateway.mqtt.snapshot();
    assert_eq!(status.connects, 1, "no bad message broke the connection");
    assert!(status.connected);
    assert_eq!(status.rejected, cases.len() as u64);
    let seen = data_messages(&fx.up.messages(), ROOT).len();
    fx.up
        .wait("more live data", Duration::from_secs(10), |m| {
            data_messages(m, ROOT).len() > seen
        })
        .await;
    let _ = run.stop().await;
}

#[tokio::test]
async fn a_config_request_over_mqtt_reports_pending_then_success() {
    let mut fx = Fixture::new(Broker::start(), "upstream-6", None).await;
    let run = fx.start().await;
    fx.up
        .wait("online", Duration::from_secs(10), |m| {
            m.iter().any(|m| is_status(m, "online"))
        })
        .await;
    let topic = format!("{ROOT}/config/pump/setpoint");
    fx.up.publish(
        &format!("{ROOT}/cmd/config"),
        r#"{"host":"pump","key":"setpoint","target":30,"expected":45,"audit":["alice"],"id":"r-1"}"#,
        false,
    )
    .await;
    let msgs = fx
        .up
        .wait("PENDING then SUCCESS", Duration::from_secs(15), |m| {
            m.iter()
                .any(|m| m.topic == topic && m.json()["config"]["status"] == "SUCCESS")
        })
        .await;
    let statuses: Vec<serde_json::Value> = msgs
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.json())
        .collect();
    assert_eq!(statuses[0]["config"]["status"], "PENDING", "{statuses:?}");
    let done = statuses.last().unwrap();
    assert_eq!(done["host"], "pump");
    assert_eq!(done["key"], "setpoint");
    assert_eq!(done["config"]["target"], 30.0);
    assert_eq!(done["config"]["id"], "r-1");
    assert_eq!(
        done["config"]["audit"],
        serde_json::json!(["alice", "mqtt"])
    );
    assert_eq!(fx.device.register(Table::Holding, 0), 30);
    assert!(msgs.iter().all(|m| m.topic != format!("{ROOT}/rejected")));

    // Out of bounds: recorded and FAILED at once (a status, not a rejection).
    fx.up
        .publish(
            &format!("{ROOT}/cmd/config"),
            r#"{"host":"pump","key":"setpoint","target":99}"#,
            false,
        )
        .await;
    fx.up
        .wait("FAILED", Duration::from_secs(10), |m| {
            m.iter()
                .any(|m| m.topic == topic && m.json()["config"]["status"] == "FAILED")
        })
        .await;
    assert_eq!(fx.device.register(Table::Holding, 0), 30);

    // Retained: the latest status is there for a client arriving later.
    let mut late = Upstream::connect(fx.broker.port, "late-6", None, &[&topic], true).await;
    let m = late
        .wait("retained config status", Duration::from_secs(5), |m| {
            !m.is_empty()
        })
        .await;
    assert!(m[0].retain);
    assert_eq!(m[0].json()["config"]["status"], "FAILED");
    let gateway = run.stop().await;
    assert_eq!(
        gateway.ledger.uplink_len(),
        0,
        "every status was acknowledged"
    );
}

#[tokio::test]
async fn alarm_events_and_acknowledgements_travel_over_mqtt() {
    let mut fx = Fixture::new(Broker::start(), "upstream-7", None).await;
    fx.setup.poll = "200ms";
    fx.setup.hosts = r#"
[[triggers]]
triggerid = 7
description = "Outdoor too warm"
severity = 4
expression = "last(/pump/temp) > 30"
"#
    .to_string();
    let run = fx.start().await;
    fx.up
        .wait("online", Duration::from_secs(10), |m| {
            m.iter().any(|m| is_status(m, "online"))
        })
        .await;
    // 21.5 degC -> 35.0 degC: one problem event, and the trigger's state.
    fx.device.set_register(Table::Input, 0, 350);
    let events = format!("{ROOT}/events");
    let trigger = format!("{ROOT}/triggers/7");
    let msgs = fx
        .up
        .wait("a problem event", Duration::from_secs(10), |m| {
            m.iter()
                .any(|m| m.topic == events && m.json()["value"] == "problem")
        })
        .await;
    let event = msgs
        .iter()
        .find(|m| m.topic == events && m.json()["value"] == "problem")
        .map(|m| m.json())
        .expect("event");
    assert_eq!(event["triggerid"], 7);
    assert_eq!(event["host"], "pump");
    assert_eq!(event["key"], "temp");
    assert_eq!(event["severity"], serde_json::json!([4, "B-Larm"]));
    assert_eq!(event["acknowledgements"], serde_json::json!([]));
    let eventid = event["eventid"].as_u64().expect("eventid");
    fx.up
        .wait("the trigger in problem", Duration::from_secs(10), |m| {
            m.iter()
                .any(|m| m.topic == trigger && m.json()["value"] == "problem")
        })
        .await;

    // The acknowledgement comes down and the event goes up again with it.
    fx.up
        .publish(
            &format!("{ROOT}/cmd/ack"),
            format!(r#"{{"eventid":{eventid},"message":"technician on the way"}}"#),
            false,
        )
        .await;
    let msgs = fx
        .up
        .wait(
            "the event again, acknowledged",
            Duration::from_secs(10),
            |m| {
                m.iter().any(|m| {
                    m.topic == events
                        && m.json()["acknowledgements"]
                            .as_array()
                            .is_some_and(|a| !a.is_empty())
                })
            },
        )
        .await;
    let acked = msgs
        .iter()
        .rev()
        .find(|m| m.topic == events)
        .map(|m| m.json())
        .expect("acknowledged event");
    assert_eq!(acked["eventid"], eventid);
    assert_eq!(
        acked["acknowledgements"][0]["message"],
        "technician on the way"
    );
    assert!(acked["acknowledgements"][0]["clock"].as_i64().is_some());
    let stored = run
        .gateway
        .alarms
        .event(eventid)
        .await
        .expect("query")
        .expect("stored");
    assert_eq!(stored.acknowledgements.len(), 1);
    assert!(msgs.iter().all(|m| m.topic != format!("{ROOT}/rejected")));
    let gateway = run.stop().await;
    assert_eq!(
        gateway.ledger.uplink_len(),
        0,
        "every message was acknowledged"
    );
}
