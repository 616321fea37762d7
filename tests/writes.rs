//! Config requests end to end: submit through the library entry point, the
//! host task carries them out against a simulated device, the ledger records
//! every status change with its uplink message.

mod common;

use std::path::Path;
use std::time::Duration;

use common::Running;
use modbridge::config_requests::{self, Channel, ConfigObject, ConfigRequest, Status, SubmitError};
use modbridge::daemon;
use modbridge::gateway::{self, Gateway};
use modbridge::model::{Config, Table};
use modbridge::sim::{SimDevice, SimServer};
use tokio::time::Instant;

const ITEMS: &str = r#"
[[hosts.items]]
key = "setpoint"
table = "holding"
address = 0
type = "i16"
scale = 0.1
unit = "degC"
lower_bound = -50.0
upper_bound = 80.0
configurable = true

[[hosts.items]]
key = "counter"
table = "holding"
address = 1
type = "u16"
configurable = true

[[hosts.items]]
key = "flow"
table = "holding"
address = 2
type = "f32"
byte_order = "CDAB"
configurable = true

[[hosts.items]]
key = "big"
table = "holding"
address = 4
type = "u32"
configurable = true

[[hosts.items]]
key = "relay"
table = "coil"
address = 0
type = "bool"
configurable = true

[[hosts.items]]
key = "flag"
table = "holding"
address = 10
type = "bool"
bit = 3
configurable = true

[[hosts.items]]
key = "temp"
table = "input"
address = 0
type = "i16"
scale = 0.1
"#;

/// Host settings that vary per test.
struct Opts {
    poll: &'static str,
    expiry: &'static str,
    items: String,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            poll: "1s",
            expiry: "10m",
            items: ITEMS.to_string(),
        }
    }
}

fn config(addr: &str, data: &Path, opts: &Opts) -> Config {
    let text = format!(
        r#"
[gateway]
id = "box-1"
data_dir = "{data}"

[storage]
commit_interval = "100ms"

# Nothing listens there: uplink messages stay queued for the test to read.
[mqtt]
url = "mqtt://127.0.0.1:1"

[[hosts]]
host = "pump"
connection = "tcp://{addr}"
poll_interval = "{poll}"
timeout = "300ms"
retries = 0
write_expiry = "{expiry}"
{items}
"#,
        data = data.display(),
        poll = opts.poll,
        expiry = opts.expiry,
        items = opts.items,
    );
    modbridge::config::load_str(&data.join("modbridge.toml"), &text).expect("valid config")
}

/// A simulated device and a running gateway polling it.
struct Rig {
    device: SimDevice,
    _server: SimServer,
    dir: tempfile::TempDir,
    config: Config,
    gateway: Gateway,
    running: Option<Running>,
}

impl Rig {
    async fn new(opts: Opts) -> Rig {
        let device = SimDevice::new();
        let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
        let dir = tempfile::tempdir().expect("tempdir");
        let addr = server.addr().expect("addr").to_string();
        let config = config(&addr, &dir.path().join("data"), &opts);
        let gateway = gateway::open(config.clone()).await.expect("open");
        let mut rig = Rig {
            device,
            _server: server,
            dir,
            config,
            gateway,
            running: None,
        };
        rig.start();
        rig
    }

    fn start(&mut self) {
        self.running = Some(Running::run(self.gateway.clone()));
    }

    async fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Waits for the host's first poll cycle.
    async fn polled(&self) {
        let live = self.gateway.host("pump").expect("host");
        let mut cycles = live.subscribe();
        tokio::time::timeout(Duration::from_secs(5), async {
            while *cycles.borrow_and_update() == 0 {
                cycles.changed().await.expect("cycles");
            }
        })
        .await
        .expect("a poll cycle within 5 s");
    }

    async fn submit(&self, key: &str, target: f64) -> Result<ConfigObject, SubmitError> {
        self.gateway
            .writes
            .submit(request(key, target, None), Channel::Mqtt)
            .await
    }
}

fn request(key: &str, target: f64, expected: Option<f64>) -> ConfigRequest {
    ConfigRequest {
        host: "pump".into(),
        key: key.into(),
        target,
        expected,
        audit: Vec::new(),
        id: None,
    }
}

/// Waits until the item's config object satisfies `done`, reacting to every
/// change the pipeline announces; fails after `within`.
async fn wait_for(
    gateway: &Gateway,
    key: &str,
    within: Duration,
    done: impl Fn(&ConfigObject) -> bool,
) -> ConfigObject {
    let mut changes = gateway.writes.subscribe();
    let deadline = Instant::now() + within;
    loop {
        if let Some(c) = gateway.writes.config_of("pump", key) {
            if done(&c) {
                return c;
            }
        }
        let last = gateway.writes.config_of("pump", key);
        tokio::time::timeout_at(deadline, changes.changed())
            .await
            .unwrap_or_else(|_| panic!("{key}: not done within {within:?}; last {last:?}"))
            .expect("changes");
    }
}

async fn finished(gateway: &Gateway, key: &str) -> ConfigObject {
    wait_for(gateway, key, Duration::from_secs(10), |c| {
        c.status != Status::Pending
    })
    .await
}

/// The uplink messages queued for an item, as (status, reason) in order.
async fn uplink_statuses(gateway: &Gateway, key: &str) -> Vec<(String, Option<String>)> {
    gateway
        .ledger
        .uplink_after(0, 1000)
        .await
        .expect("uplink")
        .into_iter()
        .filter(|m| m.topic == format!("config/pump/{key}"))
        .map(|m| {
            assert!(m.retained, "config messages are retained");
            let v: serde_json::Value = serde_json::from_str(&m.payload).expect("json");
            assert_eq!(v["host"], "pump");
            assert_eq!(v["key"], key);
            (
                v["config"]["status"].as_str().unwrap_or("").to_string(),
                v["config"]["reason"].as_str().map(str::to_string),
            )
        })
        .collect()
}

async fn rows(gateway: &Gateway) -> i64 {
    gateway
        .ledger
        .read(|c| Ok(c.query_row("SELECT count(*) FROM config_requests", [], |r| r.get(0))?))
        .await
        .expect("count")
}

#[tokio::test]
async fn a_write_on_a_host_polled_hourly_completes_within_a_second() {
    let mut rig = Rig::new(Opts {
        poll: "1h",
        ..Opts::default()
    })
    .await;
    rig.device.set_register(Table::Holding, 0, 200);
    rig.polled().await;
    let before = modbridge::clock::unix_now();
    let peer: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let started = Instant::now();
    let pending = rig
        .gateway
        .writes
        .submit(
            ConfigRequest {
                audit: vec!["alice".into()],
                id: Some(serde_json::json!("req-1")),
                ..request("setpoint", 22.5, None)
            },
            Channel::Api(peer),
        )
        .await
        .expect("accepted");
    let recorded = started.elapsed();
    assert_eq!(pending.status, Status::Pending);
    assert!(pending.lastclock.is_some_and(|c| c >= before));
    assert_eq!(pending.audit, vec!["alice", "api 127.0.0.1:5000"]);
    let done = wait_for(&rig.gateway, "setpoint", Duration::from_secs(2), |c| {
        c.status != Status::Pending
    })
    .await;
    let took = started.elapsed();
    assert_eq!(done.status, Status::Success, "{done:?}");
    assert_eq!(done.reason, None);
    assert_eq!(done.target, Some(22.5));
    assert_eq!(done.id, Some(serde_json::json!("req-1")));
    assert_eq!(done.lastclock, pending.lastclock);
    assert_eq!(rig.device.register(Table::Holding, 0), 225);
    eprintln!(
        "write on a 1h-polled host: PENDING recorded after {recorded:?}, SUCCESS after {took:?}"
    );

    // The live state has the written value, the item JSON shows the config.
    let live = rig.gateway.host("pump").expect("host").lock().clone();
    assert_eq!(live.items[0].value, Some(22.5));
    let spec = rig.gateway.config().host("pump").expect("spec").clone();
    let item = modbridge::wire::item_object(
        &spec,
        0,
        live.view(0),
        rig.gateway.writes.config_of("pump", "setpoint"),
    )
    .expect("item");
    let json = serde_json::to_value(&item).expect("json");
    assert_eq!(json["config"]["status"], "SUCCESS");
    assert_eq!(json["config"]["audit"][1], "api 127.0.0.1:5000");
    assert_eq!(json["lastvalue"], 22.5);

    // PENDING and SUCCESS were queued for the uplink, retained.
    assert_eq!(
        uplink_statuses(&rig.gateway, "setpoint").await,
        vec![("PENDING".to_string(), None), ("SUCCESS".to_string(), None)]
    );
    let stats = rig.gateway.writes.stats();
    assert_eq!((stats.pending, stats.success, stats.failed), (0, 1, 0));

    // ...and the value is a history point.
    rig.gateway.store.flush().expect("flush");
    let id = rig.gateway.store.item_id("pump", "setpoint").expect("id");
    let history = rig
        .gateway
        .store
        .history(id, 0, i64::MAX, None)
        .await
        .expect("history");
    assert!(history.iter().any(|(_, v)| *v == 22.5), "{history:?}");
    rig.stop().await;
}

#[tokio::test]
async fn expected_value_is_checked_before_writing() {
    let mut rig = Rig::new(Opts::default()).await;
    rig.device.set_register(Table::Holding, 0, 215);
    let w = &rig.gateway.writes;
    w.submit(request("setpoint", 23.0, Some(22.0)), Channel::Mqtt)
        .await
        .expect("accepted");
    let c = finished(&rig.gateway, "setpoint").await;
    assert_eq!(c.status, Status::Failed);
    assert_eq!(c.reason.as_deref(), Some("expected 22.0, device has 21.5"));
    assert_eq!(c.expected, Some(22.0));
    assert_eq!(rig.device.register(Table::Holding, 0), 215, "not written");

    // Within half a register step counts as expected.
    w.submit(request("setpoint", 23.0, Some(21.52)), Channel::Mqtt)
        .await
        .expect("accepted");
    let c = finished(&rig.gateway, "setpoint").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    assert_eq!(rig.device.register(Table::Holding, 0), 230);
    rig.stop().await;
}

#[tokio::test]
async fn targets_out_of_bounds_or_unrepresentable_fail_at_once() {
    let mut rig = Rig::new(Opts::default()).await;
    rig.device.set_register(Table::Holding, 0, 200);
    rig.device.set_register(Table::Holding, 1, 7);
    let cases = [
        (
            "setpoint",
            90.0,
            "target 90.0 is above the upper bound 80.0",
        ),
        (
            "setpoint",
            -60.0,
            "target -60.0 is below the lower bound -50.0",
        ),
        ("setpoint", 0.05, "target 0.05 is not a multiple of 0.1"),
        ("counter", 70000.0, "outside the u16 range 0..65535"),
        ("counter", 1.5, "not a multiple of 1"),
        ("relay", 2.0, "it takes 0 (off) or 1 (on)"),
    ];
    for (key, target, reason) in cases {
        let c = rig.submit(key, target).await.expect("recorded");
        assert_eq!(c.status, Status::Failed, "{key} {target}");
        let r = c.reason.clone().unwrap_or_default();
        assert!(r.contains(reason), "{key} {target}: {r}");
        // Recorded durably and announced, like any status.
        assert_eq!(rig.gateway.writes.config_of("pump", key), Some(c));
    }
    assert_eq!(
        uplink_statuses(&rig.gateway, "counter").await,
        vec![
            (
                "FAILED".into(),
                Some(
                    "target 70000 is outside the u16 range 0..65535 of this register \
                     (after scale 1, offset 0)"
                        .into()
                )
            ),
            (
                "FAILED".into(),
                Some(
                    "target 1.5 is not a multiple of 1 (this register's scale); \
                     the nearest values it can hold are 1 and 2"
                        .into()
                )
            ),
        ]
    );
    assert_eq!(rig.gateway.writes.stats().failed, 6);
    assert_eq!(rig.device.register(Table::Holding, 0), 200);
    assert_eq!(rig.device.register(Table::Holding, 1), 7);
    rig.stop().await;
}

#[tokio::test]
async fn refused_requests_change_nothing() {
    let mut rig = Rig::new(Opts::default()).await;
    let w = &rig.gateway.writes;
    let refuse = |r: ConfigRequest| {
        let w = w.clone();
        async move { w.submit(r, Channel::Mqtt).await.expect_err("refused") }
    };
    let e = refuse(ConfigRequest {
        host: "nope".into(),
        ..request("setpoint", 1.0, None)
    })
    .await;
    assert!(matches!(e, SubmitError::UnknownHost(_)));
    assert_eq!(e.http_status(), 404);
    let e = refuse(request("missing", 1.0, None)).await;
    assert!(matches!(e, SubmitError::UnknownKey { .. }));
    assert_eq!(e.http_status(), 404);
    let e = refuse(request("temp", 1.0, None)).await;
    assert_eq!(e.to_string(), "pump/temp is a sensor, not configurable");
    assert_eq!(e.http_status(), 409);
    let e = refuse(request("setpoint", f64::NAN, None)).await;
    assert_eq!(e.http_status(), 422);
    let e = refuse(request("setpoint", 1.0, Some(f64::INFINITY))).await;
    assert_eq!(e.http_status(), 422);
    // Over MQTT: a target that is not a number never reaches submit.
    let e = config_requests::parse_request(br#"{"host":"pump","key":"setpoint","target":"abc"}"#)
        .expect_err("refused");
    assert_eq!(e.http_status(), 422);
    assert!(e.to_string().contains("\"abc\""), "{e}");

    assert_eq!(w.config_of("pump", "setpoint"), None);
    assert_eq!(w.config_of("pump", "temp"), None);
    assert_eq!(rows(&rig.gateway).await, 0);
    assert_eq!(rig.gateway.ledger.uplink_len(), 0);
    let stats = w.stats();
    assert_eq!((stats.pending, stats.success, stats.failed), (0, 0, 0));
    assert_eq!(stats.refused, 5);
    rig.stop().await;
}

#[tokio::test]
async fn a_write_that_does_not_stick_fails_with_the_value_read_back() {
    let mut rig = Rig::new(Opts::default()).await;
    rig.device.set_register(Table::Holding, 0, 200);
    rig.device.faults(|f| f.ignore_writes = true);
    rig.submit("setpoint", 22.5).await.expect("accepted");
    let c = finished(&rig.gateway, "setpoint").await;
    assert_eq!(c.status, Status::Failed);
    assert_eq!(
        c.reason.as_deref(),
        Some("wrote 22.5, device reads back 20.0")
    );
    assert_eq!(
        uplink_statuses(&rig.gateway, "setpoint").await,
        vec![
            ("PENDING".into(), None),
            (
                "FAILED".into(),
                Some("wrote 22.5, device reads back 20.0".into())
            )
        ]
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_refused_write_names_the_exception() {
    let mut rig = Rig::new(Opts::default()).await;
    rig.device.faults(|f| {
        f.exception_at.insert((Table::Holding, 1));
    });
    rig.submit("counter", 5.0).await.expect("accepted");
    let c = finished(&rig.gateway, "counter").await;
    assert_eq!(c.status, Status::Failed);
    assert_eq!(
        c.reason.as_deref(),
        Some("the device refused the write: Modbus exception 0x02 (illegal data address)")
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_timeout_during_the_write_keeps_it_pending_until_the_device_answers() {
    let mut rig = Rig::new(Opts::default()).await;
    rig.device.set_register(Table::Holding, 0, 200);
    rig.polled().await;
    // Answers come after the 300 ms timeout: each attempt times out, the
    // connection is dropped and the late answer is never taken.
    rig.device.faults(|f| f.delay = Duration::from_millis(700));
    rig.submit("setpoint", 22.5).await.expect("accepted");
    let c = wait_for(&rig.gateway, "setpoint", Duration::from_secs(10), |c| {
        c.reason.is_some()
    })
    .await;
    assert_eq!(c.status, Status::Pending, "{c:?}");
    assert!(
        c.reason
            .as_deref()
            .is_some_and(|r| r.starts_with("device unreachable, retrying: timeout")),
        "{c:?}"
    );
    assert!(rig.gateway.writes.stats().unreachable >= 1);
    // The device recovers: the retry carries the request out.
    rig.device.faults(|f| f.delay = Duration::ZERO);
    let c = finished(&rig.gateway, "setpoint").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    assert_eq!(c.reason, None);
    assert_eq!(rig.device.register(Table::Holding, 0), 225);
    // Retries are not status changes: only PENDING and SUCCESS went out.
    assert_eq!(
        uplink_statuses(&rig.gateway, "setpoint").await,
        vec![("PENDING".into(), None), ("SUCCESS".into(), None)]
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_silent_device_keeps_the_request_pending_until_it_expires() {
    let mut rig = Rig::new(Opts {
        expiry: "2s",
        ..Opts::default()
    })
    .await;
    rig.device.faults(|f| f.silent = true);
    rig.submit("counter", 5.0).await.expect("accepted");
    let c = finished(&rig.gateway, "counter").await;
    assert_eq!(c.status, Status::Failed);
    let reason = c.reason.unwrap_or_default();
    assert!(
        reason.starts_with("expired: the device could not be reached within 2s"),
        "{reason}"
    );
    assert_eq!(rig.device.register(Table::Holding, 1), 0);
    rig.stop().await;
}

#[tokio::test]
async fn an_unreachable_device_is_retried_until_expiry() {
    // A port nothing listens on: connection refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        &addr.to_string(),
        &dir.path().join("data"),
        &Opts {
            expiry: "2s",
            ..Opts::default()
        },
    );
    let gateway = gateway::open(config).await.expect("open");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon::run_gateway(gateway.clone(), async {
        let _ = rx.await;
    }));
    gateway
        .writes
        .submit(request("counter", 5.0, None), Channel::Cli("root".into()))
        .await
        .expect("accepted");
    let c = finished(&gateway, "counter").await;
    assert_eq!(c.status, Status::Failed);
    let reason = c.reason.unwrap_or_default();
    assert!(reason.starts_with("expired"), "{reason}");
    assert!(reason.contains("connect to"), "{reason}");
    assert_eq!(c.audit, vec!["cli root"]);
    assert!(gateway.writes.stats().unreachable >= 2, "retried");
    let _ = tx.send(());
    run.await.expect("join").expect("stop");
}

#[tokio::test]
async fn a_pending_request_survives_a_restart_and_is_carried_out() {
    let device = SimDevice::new();
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        &server.addr().expect("addr").to_string(),
        &dir.path().join("data"),
        &Opts::default(),
    );
    // Received, but the gateway goes away before any host task runs.
    let gateway = gateway::open(config.clone()).await.expect("open");
    let pending = gateway
        .writes
        .submit(request("setpoint", 22.5, None), Channel::Mqtt)
        .await
        .expect("accepted");
    gateway
        .writes
        .submit(request("counter", 9.0, None), Channel::Mqtt)
        .await
        .expect("accepted");
    // A write of this one reached the device just before the crash: it holds
    // the target now, no longer the expected value.
    gateway
        .writes
        .submit(request("big", 7.0, Some(5.0)), Channel::Mqtt)
        .await
        .expect("accepted");
    device.set_registers(Table::Holding, 4, &[0, 7]);
    assert_eq!(pending.status, Status::Pending);
    drop(gateway);

    let gateway = gateway::open(config.clone()).await.expect("reopen");
    assert_eq!(
        gateway.writes.config_of("pump", "setpoint"),
        Some(pending.clone())
    );
    assert_eq!(gateway.writes.stats().pending, 3);
    // One of them expired while the gateway was down.
    gateway
        .ledger
        .transaction(|tx, _| {
            tx.execute(
                "UPDATE config_requests SET expires_ms = 0 WHERE key = 'counter'",
                [],
            )?;
            tx.execute(
                "UPDATE config_requests SET written = 1 WHERE key = 'big'",
                [],
            )?;
            Ok(())
        })
        .await
        .expect("age");
    drop(gateway);
    let gateway = gateway::open(config).await.expect("reopen");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon::run_gateway(gateway.clone(), async {
        let _ = rx.await;
    }));
    let c = finished(&gateway, "setpoint").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    assert_eq!(c.lastclock, pending.lastclock, "receipt time kept");
    assert_eq!(device.register(Table::Holding, 0), 225);
    let c = finished(&gateway, "counter").await;
    assert_eq!(c.status, Status::Failed);
    assert_eq!(
        c.reason.as_deref(),
        Some("expired before it could be carried out")
    );
    assert_eq!(device.register(Table::Holding, 1), 0);
    let c = finished(&gateway, "big").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    let written: i64 = gateway
        .ledger
        .read(|c| {
            Ok(c.query_row(
                "SELECT written FROM config_requests WHERE key = 'setpoint'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
        .expect("row");
    assert_eq!(written, 1, "marked before the write was sent");
    let _ = tx.send(());
    run.await.expect("join").expect("stop");
}

#[tokio::test]
async fn a_newer_request_supersedes_a_pending_one() {
    let mut rig = Rig::new(Opts::default()).await;
    let first = rig.submit("setpoint", 21.0).await.expect("accepted");
    // No await in between: the host task has not run yet.
    let second = rig.submit("setpoint", 23.5).await.expect("accepted");
    assert_eq!(first.status, Status::Pending);
    assert_eq!(second.status, Status::Pending);
    let c = finished(&rig.gateway, "setpoint").await;
    assert_eq!(c.status, Status::Success);
    assert_eq!(c.target, Some(23.5));
    assert_eq!(rig.device.register(Table::Holding, 0), 235);
    assert_eq!(
        uplink_statuses(&rig.gateway, "setpoint").await,
        vec![
            ("PENDING".into(), None),
            ("FAILED".into(), Some(config_requests::SUPERSEDED.into())),
            ("PENDING".into(), None),
            ("SUCCESS".into(), None),
        ]
    );
    let (target, status, reason): (f64, String, Option<String>) = rig
        .gateway
        .ledger
        .read(|c| {
            Ok(c.query_row(
                "SELECT target, status, reason FROM config_requests ORDER BY rid LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?)
        })
        .await
        .expect("first row");
    assert_eq!(
        (target, status.as_str(), reason.as_deref()),
        (21.0, "FAILED", Some(config_requests::SUPERSEDED))
    );
    let stats = rig.gateway.writes.stats();
    assert_eq!((stats.pending, stats.success, stats.failed), (0, 1, 1));
    rig.stop().await;
}

#[tokio::test]
async fn multi_register_values_are_written_in_the_items_byte_order() {
    let mut rig = Rig::new(Opts::default()).await;
    rig.submit("flow", 21.7).await.expect("accepted");
    rig.submit("big", 305_419_896.0).await.expect("accepted");
    let c = finished(&rig.gateway, "flow").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    let bits = 21.7f32.to_bits();
    // CDAB: the low word first.
    assert_eq!(
        [
            rig.device.register(Table::Holding, 2),
            rig.device.register(Table::Holding, 3)
        ],
        [(bits & 0xFFFF) as u16, (bits >> 16) as u16]
    );
    let live = rig.gateway.host("pump").expect("host").lock().clone();
    assert_eq!(live.items[2].value, Some(f64::from(21.7f32)));
    let c = finished(&rig.gateway, "big").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    assert_eq!(
        [
            rig.device.register(Table::Holding, 4),
            rig.device.register(Table::Holding, 5)
        ],
        [0x1234, 0x5678]
    );
    rig.stop().await;
}

#[tokio::test]
async fn coils_and_register_bits_are_written() {
    let mut rig = Rig::new(Opts::default()).await;
    rig.device.set_register(Table::Holding, 10, 0x0101);
    rig.submit("relay", 1.0).await.expect("accepted");
    rig.submit("flag", 1.0).await.expect("accepted");
    assert_eq!(
        finished(&rig.gateway, "relay").await.status,
        Status::Success
    );
    assert_eq!(finished(&rig.gateway, "flag").await.status, Status::Success);
    assert_eq!(rig.device.register(Table::Coil, 0), 1);
    // Read-modify-write: only bit 3 changed.
    assert_eq!(rig.device.register(Table::Holding, 10), 0x0109);
    rig.submit("flag", 0.0).await.expect("accepted");
    assert_eq!(finished(&rig.gateway, "flag").await.status, Status::Success);
    assert_eq!(rig.device.register(Table::Holding, 10), 0x0101);
    rig.stop().await;
}

#[tokio::test]
async fn a_reload_fails_requests_of_removed_items_and_keeps_the_others() {
    let mut rig = Rig::new(Opts::default()).await;
    rig.polled().await;
    rig.device.faults(|f| f.silent = true);
    rig.submit("setpoint", 22.5).await.expect("accepted");
    rig.submit("counter", 9.0).await.expect("accepted");
    // The setpoint is no longer configurable; the counter is unchanged.
    let items = ITEMS.replacen("configurable = true", "configurable = false", 1);
    let data = rig.dir.path().join("data");
    let addr = match &rig.config.host("pump").expect("host").connection {
        modbridge::model::Connection::Tcp { host, port } => format!("{host}:{port}"),
        other => panic!("{other}"),
    };
    let new = config(
        &addr,
        &data,
        &Opts {
            items,
            ..Opts::default()
        },
    );
    rig.gateway.reload(new).await.expect("reload");
    let c = rig
        .gateway
        .writes
        .config_of("pump", "setpoint")
        .expect("config");
    assert_eq!(c.status, Status::Failed);
    assert_eq!(c.reason.as_deref(), Some(config_requests::REMOVED));
    assert_eq!(
        rig.gateway
            .writes
            .config_of("pump", "counter")
            .map(|c| c.status),
        Some(Status::Pending)
    );
    rig.device.faults(|f| f.silent = false);
    let c = finished(&rig.gateway, "counter").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    assert_eq!(rig.device.register(Table::Holding, 1), 9);
    assert_eq!(rig.device.register(Table::Holding, 0), 0, "not written");
    rig.stop().await;
}

#[tokio::test]
async fn a_write_on_a_shared_serial_line_goes_ahead_of_the_polls() {
    let pty = common::PtyPair::new();
    let device = SimDevice::new();
    device.answer_units(&[2, 3]);
    device.set_register(Table::Holding, 0, 200);
    let _server = device.serve_rtu(&pty.b, 19200).expect("serve rtu");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // Unit 2 is polled hourly; unit 3 and the missing unit 4 keep the line busy.
    let text = format!(
        r#"
[gateway]
id = "box-1"
data_dir = "{data}"

[[hosts]]
host = "pump"
connection = "rtu://{port}"
baud = 19200
unit = 2
poll_interval = "1h"
timeout = "300ms"
retries = 0

[[hosts.items]]
key = "setpoint"
table = "holding"
address = 0
type = "i16"
scale = 0.1
configurable = true

[[hosts]]
host = "busy"
connection = "rtu://{port}"
baud = 19200
unit = 3
poll_interval = "100ms"
timeout = "300ms"

[[hosts.items]]
key = "a"
table = "holding"
address = 100
type = "u16"

[[hosts]]
host = "gone"
connection = "rtu://{port}"
baud = 19200
unit = 4
poll_interval = "100ms"
timeout = "200ms"
retries = 0

[[hosts.items]]
key = "b"
table = "holding"
address = 100
type = "u16"
"#,
        data = data.display(),
        port = pty.a,
    );
    let config = modbridge::config::load_str(&data.join("modbridge.toml"), &text).expect("config");
    let gateway = gateway::open(config).await.expect("open");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon::run_gateway(gateway.clone(), async {
        let _ = rx.await;
    }));
    // Wait until the busy unit has been read: the line is in use.
    let busy = gateway.host("busy").expect("busy");
    let mut cycles = busy.subscribe();
    tokio::time::timeout(Duration::from_secs(5), async {
        while busy.lock().items[0].state != modbridge::poll::ItemState::Ok {
            cycles.changed().await.expect("cycles");
        }
    })
    .await
    .expect("the busy unit is read");
    let started = Instant::now();
    gateway
        .writes
        .submit(request("setpoint", 22.5, None), Channel::Mqtt)
        .await
        .expect("accepted");
    let c = wait_for(&gateway, "setpoint", Duration::from_secs(2), |c| {
        c.status != Status::Pending
    })
    .await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    assert_eq!(device.register(Table::Holding, 0), 225);
    eprintln!(
        "write on a shared serial line: SUCCESS after {:?}",
        started.elapsed()
    );
    let _ = tx.send(());
    run.await.expect("join").expect("stop");
}

#[tokio::test]
async fn garbage_answers_and_dropped_connections_are_retried() {
    let mut rig = Rig::new(Opts::default()).await;
    rig.polled().await;
    rig.device.faults(|f| f.garbage = true);
    rig.submit("counter", 3.0).await.expect("accepted");
    let c = wait_for(&rig.gateway, "counter", Duration::from_secs(10), |c| {
        c.reason.is_some()
    })
    .await;
    assert_eq!(c.status, Status::Pending, "{c:?}");
    rig.device.faults(|f| f.garbage = false);
    let c = finished(&rig.gateway, "counter").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    assert_eq!(rig.device.register(Table::Holding, 1), 3);

    // The open connection is gone when the next request comes.
    rig.device.drop_connections();
    rig.submit("counter", 4.0).await.expect("accepted");
    let c = finished(&rig.gateway, "counter").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    assert_eq!(rig.device.register(Table::Holding, 1), 4);
    rig.stop().await;
}

/// A rig whose host is polled once at start-up and then not for an hour, so
/// that every request the device sees after [`Rig::polled`] is a write's.
async fn quiet_rig() -> Rig {
    let rig = Rig::new(Opts {
        poll: "1h",
        ..Opts::default()
    })
    .await;
    rig.polled().await;
    rig
}

#[tokio::test]
async fn exceptions_01_02_03_fail_a_write_at_once() {
    let mut rig = quiet_rig().await;
    for (n, (code, name)) in common::ABOUT_THE_REQUEST.into_iter().enumerate() {
        rig.device.faults(|f| {
            f.exception_at.insert((Table::Holding, 1));
            f.exception = Some(code);
        });
        let before = rig.device.requests();
        rig.submit("counter", n as f64 + 5.0)
            .await
            .expect("accepted");
        let c = finished(&rig.gateway, "counter").await;
        assert_eq!(c.status, Status::Failed);
        assert_eq!(
            c.reason,
            Some(format!(
                "the device refused the write: Modbus exception {name}"
            ))
        );
        assert_eq!(
            rig.device.requests() - before,
            1,
            "{name}: one write, no retry"
        );
        // Once the device accepts the write: one write and its read-back.
        rig.device.faults(|f| f.exception_at.clear());
        let before = rig.device.requests();
        rig.submit("counter", 42.0).await.expect("accepted");
        assert_eq!(
            finished(&rig.gateway, "counter").await.status,
            Status::Success
        );
        assert_eq!(rig.device.requests() - before, 2);
    }
    rig.stop().await;
}

#[tokio::test]
async fn exceptions_04_05_06_0a_0b_keep_a_write_pending_and_retried() {
    let mut rig = quiet_rig().await;
    for (n, (code, name)) in common::NOT_NOW.into_iter().enumerate() {
        let target = n as f64 + 10.0;
        rig.device.faults(|f| f.refuse_all = Some(code));
        let unreachable = rig.gateway.writes.stats().unreachable;
        let before = rig.device.requests();
        rig.submit("counter", target).await.expect("accepted");
        let c = wait_for(&rig.gateway, "counter", Duration::from_secs(10), |c| {
            c.reason.is_some()
        })
        .await;
        assert_eq!(c.status, Status::Pending, "{name}: {c:?}");
        assert_eq!(
            c.reason,
            Some(format!(
                "device unreachable, retrying: Modbus exception {name}"
            ))
        );
        assert_eq!(
            rig.device.requests() - before,
            1,
            "{name}: the write, refused"
        );
        // Retried with backoff, one refused write per attempt.
        tokio::time::timeout(Duration::from_secs(10), async {
            while rig.gateway.writes.stats().unreachable < unreachable + 2 {
                rig.gateway
                    .writes
                    .subscribe()
                    .changed()
                    .await
                    .expect("changes");
            }
        })
        .await
        .expect("a retry");
        assert_eq!(rig.device.requests() - before, 2, "{name}");
        // The device answers again: the next attempt writes and reads back.
        rig.device.faults(|f| f.refuse_all = None);
        let c = finished(&rig.gateway, "counter").await;
        assert_eq!((c.status, c.reason), (Status::Success, None), "{name}");
        assert_eq!(rig.device.register(Table::Holding, 1), target as u16);
        assert_eq!(rig.device.requests() - before, 4, "{name}");
    }
    rig.stop().await;
}

#[tokio::test]
async fn a_request_superseded_while_under_way_is_never_written() {
    let mut rig = quiet_rig().await;
    rig.device.set_register(Table::Holding, 0, 200);
    // Each answer takes 200 ms (within the 300 ms timeout): the check of
    // `expected` is still on the wire when the newer request arrives.
    rig.device.faults(|f| f.delay = Duration::from_millis(200));
    let start = rig.device.requests();
    let a = rig
        .gateway
        .writes
        .submit(request("setpoint", 22.0, Some(20.0)), Channel::Mqtt)
        .await
        .expect("accepted");
    assert_eq!(a.status, Status::Pending);
    rig.device.requests_arrived(start + 1).await;
    // A's read is at the device. B is out of bounds: FAILED at once, and it
    // supersedes A.
    let b = rig.submit("setpoint", 100.0).await.expect("recorded");
    assert_eq!(b.status, Status::Failed);
    // C comes after A's attempt: when C is done, A's attempt has ended.
    rig.device.faults(|f| f.delay = Duration::ZERO);
    rig.submit("setpoint", 23.0).await.expect("accepted");
    let c = finished(&rig.gateway, "setpoint").await;
    assert_eq!(c.status, Status::Success, "{c:?}");
    assert_eq!(
        rig.device.requests() - start,
        3,
        "A's read, then C's write and read-back: A was never written"
    );
    // (Its `written` column, noted durably before each attempt, only says a
    // write may have been sent; the reason says it was not.)
    let (status, reason): (String, Option<String>) = rig
        .gateway
        .ledger
        .read(|c| {
            Ok(c.query_row(
                "SELECT status, reason FROM config_requests ORDER BY rid LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .await
        .expect("A's row");
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("FAILED", Some(config_requests::SUPERSEDED))
    );
    assert_eq!(
        uplink_statuses(&rig.gateway, "setpoint").await,
        vec![
            ("PENDING".into(), None),
            ("FAILED".into(), Some(config_requests::SUPERSEDED.into())),
            (
                "FAILED".into(),
                Some("target 100.0 is above the upper bound 80.0".into())
            ),
            ("PENDING".into(), None),
            ("SUCCESS".into(), None),
        ]
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_request_superseded_with_its_write_on_the_wire_says_so() {
    let mut rig = quiet_rig().await;
    rig.device.faults(|f| f.delay = Duration::from_millis(200));
    let start = rig.device.requests();
    rig.submit("counter", 7.0).await.expect("accepted");
    // No `expected`: the first request is the write itself.
    rig.device.requests_arrived(start + 1).await;
    let b = rig.submit("counter", 70000.0).await.expect("recorded");
    assert_eq!(b.status, Status::Failed, "not representable in a u16");
    let statuses = uplink_statuses(&rig.gateway, "counter").await;
    assert_eq!(
        statuses[1],
        (
            "FAILED".into(),
            Some(config_requests::SUPERSEDED_AFTER_WRITE.into())
        ),
        "{statuses:?}"
    );
    // The next request is carried out as usual.
    rig.device.faults(|f| f.delay = Duration::ZERO);
    rig.submit("counter", 8.0).await.expect("accepted");
    assert_eq!(
        finished(&rig.gateway, "counter").await.status,
        Status::Success
    );
    assert_eq!(rig.device.register(Table::Holding, 1), 8);
    rig.stop().await;
}
