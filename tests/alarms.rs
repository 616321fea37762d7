//! Alarm triggers in the running daemon, against the simulated device:
//! events, trigger states, acknowledgements, restarts, and the uplink queue.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::Running;
use modbridge::alarm::{AckError, EventFilter, EventObject, MAX_ACK_BYTES};
use modbridge::daemon;
use modbridge::ledger::UplinkMessage;
use modbridge::model::Table;
use modbridge::poll::ItemState;
use modbridge::sim::{SimDevice, SimServer};

const BIN: &str = env!("CARGO_BIN_EXE_modbridge");
const DEADLINE: Duration = Duration::from_secs(20);

fn config_text(addr: &str, data: &Path, triggers: &str) -> String {
    format!(
        r#"
[gateway]
id = "box-1"
data_dir = "{data}"

[storage]
commit_interval = "200ms"

[mqtt]
url = "mqtt://127.0.0.1:1"

[api]
listen = "127.0.0.1:0"

[[hosts]]
host = "boiler"
name = "Boiler room"
connection = "tcp://{addr}"
poll_interval = "250ms"
timeout = "200ms"
retries = 0

[[hosts.items]]
key = "temp"
table = "holding"
address = 0
type = "i16"

[[hosts.items]]
key = "flow"
table = "holding"
address = 1
type = "u16"

{triggers}
"#,
        data = data.display()
    )
}

/// A simulated boiler and a config polling it.
struct Rig {
    device: SimDevice,
    server: Option<SimServer>,
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl Rig {
    async fn new(triggers: &str) -> Rig {
        let device = SimDevice::new();
        device.set_registers(Table::Holding, 0, &[20, 5]);
        let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("modbridge.toml");
        let text = config_text(
            &server.addr().expect("addr").to_string(),
            &dir.path().join("data"),
            triggers,
        );
        std::fs::write(&path, text).expect("write config");
        Rig {
            device,
            server: Some(server),
            dir,
            path,
        }
    }

    fn set_temp(&self, value: i16) {
        self.device
            .set_register(Table::Holding, 0, u16::from_ne_bytes(value.to_ne_bytes()));
    }

    fn config(&self) -> modbridge::model::Config {
        modbridge::config::load(&self.path).expect("valid config")
    }
}

impl Running {
    fn value(&self, triggerid: u64) -> String {
        self.gateway
            .alarms
            .trigger(triggerid)
            .expect("configured trigger")
            .value
    }

    async fn events(&self) -> Vec<EventObject> {
        self.gateway
            .alarms
            .events(&EventFilter::default())
            .await
            .expect("events")
    }

    async fn uplink(&self) -> Vec<UplinkMessage> {
        self.gateway
            .ledger
            .uplink_after(0, 1000)
            .await
            .expect("uplink")
    }

    /// Waits until `ok` holds, polling with a deadline.
    async fn until(&self, what: &str, ok: impl Fn(&Running) -> bool) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !ok(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; triggers {:?}, events {:?}",
                self.gateway.alarms.triggers(),
                self.events().await
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until the device's value is read, then for `cycles` more poll
    /// cycles and one more alarm tick.
    async fn settle(&self, temp: f64, cycles: u64) {
        let live = self.gateway.host("boiler").expect("host");
        self.until(&format!("temp = {temp} to be read"), |_| {
            let l = live.lock();
            l.items[0].state == ItemState::Ok && l.items[0].value == Some(temp)
        })
        .await;
        let mut rx = live.subscribe();
        for _ in 0..cycles {
            tokio::time::timeout(DEADLINE, rx.changed())
                .await
                .expect("poll cycle in time")
                .expect("host running");
        }
        // The once-per-second evaluation has run since (it runs on every whole second).
        let clock = modbridge::clock::unix_now();
        self.until("the next second", |_| {
            modbridge::clock::unix_now() > clock + 1
        })
        .await;
    }
}

fn events_of(msgs: &[UplinkMessage]) -> Vec<serde_json::Value> {
    msgs.iter()
        .filter(|m| m.topic == "events")
        .map(|m| {
            assert!(!m.retained, "events are not retained");
            serde_json::from_str(&m.payload).expect("event JSON")
        })
        .collect()
}

fn last_trigger_message(msgs: &[UplinkMessage], triggerid: u64) -> serde_json::Value {
    let m = msgs
        .iter()
        .rev()
        .find(|m| m.topic == format!("triggers/{triggerid}"))
        .expect("a trigger message");
    assert!(m.retained, "trigger messages are retained");
    serde_json::from_str(&m.payload).expect("trigger JSON")
}

const OVERHEAT: &str = r#"
[[triggers]]
triggerid = 1
description = "Boiler overheating"
severity = 4
expression = "last(/boiler/temp) > 80"
"#;

#[tokio::test]
async fn a_threshold_crossing_makes_exactly_one_problem_event_queued_upstream() {
    let rig = Rig::new(OVERHEAT).await;
    let gw = Running::start(rig.config()).await;
    let initial = last_trigger_message(&gw.uplink().await, 1);
    assert_eq!(initial["value"], "OK");
    assert_eq!(initial["lastchange"], serde_json::Value::Null);
    gw.settle(20.0, 2).await;
    assert!(gw.events().await.is_empty());
    assert_eq!(gw.value(1), "OK");

    rig.set_temp(95);
    gw.until("problem", |g| g.value(1) == "problem").await;
    gw.settle(95.0, 4).await;

    let events = gw.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert!(e.eventid > 0);
    let json = serde_json::to_value(e).expect("json");
    assert_eq!(json["value"], "problem");
    assert_eq!(json["host"], "boiler");
    assert_eq!(json["key"], "temp");
    assert_eq!(json["triggerid"], 1);
    assert_eq!(json["description"], "Boiler overheating");
    assert_eq!(json["severity"], serde_json::json!([4, "B-Larm"]));
    assert_eq!(json["acknowledgements"], serde_json::json!([]));
    assert!((e.clock - modbridge::clock::unix_now()).abs() < 30);
    assert_eq!(
        gw.gateway.alarms.event(e.eventid).await.expect("read"),
        Some(e.clone())
    );

    let trigger =
        serde_json::to_value(gw.gateway.alarms.trigger(1).expect("trigger")).expect("json");
    assert_eq!(trigger["value"], "problem");
    assert_eq!(trigger["lastchange"], e.clock);
    assert_eq!(trigger["severity"], serde_json::json!([4, "B-Larm"]));
    assert_eq!(trigger["hosts"][0]["host"], "boiler");
    assert_eq!(trigger["hosts"][0]["name"], "Boiler room");
    assert!(trigger["hosts"][0].get("items").is_none());
    assert!(trigger["hosts"][0]["lastclock"].is_i64());

    let msgs = gw.uplink().await;
    let sent = events_of(&msgs);
    assert_eq!(
        sent,
        vec![json.clone()],
        "one event message, the stored event"
    );
    let t = last_trigger_message(&msgs, 1);
    assert_eq!(t["value"], "problem");
    assert_eq!(t["lastchange"], e.clock);
    assert_eq!(t["triggerid"], 1);

    let stats = gw.gateway.alarms.stats();
    assert_eq!((stats.ok, stats.problem, stats.unknown), (0, 1, 0));
    assert_eq!(
        (stats.events, stats.pending, stats.storage_errors),
        (1, 0, 0)
    );

    // Filters: by host/key/clock.
    let alarms = &gw.gateway.alarms;
    let by = |f: EventFilter| async move { alarms.events(&f).await.expect("events").len() };
    assert_eq!(
        by(EventFilter {
            host: Some("boiler".into()),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        by(EventFilter {
            host: Some("other".into()),
            ..Default::default()
        })
        .await,
        0
    );
    assert_eq!(
        by(EventFilter {
            key: Some("flow".into()),
            ..Default::default()
        })
        .await,
        0
    );
    assert_eq!(
        by(EventFilter {
            from: Some(e.clock),
            to: Some(e.clock),
            ..Default::default()
        })
        .await,
        1
    );
    assert_eq!(
        by(EventFilter {
            from: Some(e.clock + 1),
            ..Default::default()
        })
        .await,
        0
    );
    assert_eq!(
        by(EventFilter {
            to: Some(e.clock - 1),
            ..Default::default()
        })
        .await,
        0
    );
    gw.stop().await;
}

#[tokio::test]
async fn hysteresis_holds_between_the_thresholds_without_flapping() {
    let rig = Rig::new(
        r#"
[[triggers]]
triggerid = 7
description = "Boiler hot"
severity = 3
expression = "last(/boiler/temp) > 80"
recovery_expression = "last(/boiler/temp) < 70"
"#,
    )
    .await;
    let gw = Running::start(rig.config()).await;
    gw.settle(20.0, 1).await;
    rig.set_temp(85);
    gw.until("problem", |g| g.value(7) == "problem").await;
    for between in [75, 79, 71, 78] {
        rig.set_temp(between);
        gw.settle(f64::from(between), 2).await;
        assert_eq!(gw.value(7), "problem", "at {between}");
    }
    assert_eq!(gw.events().await.len(), 1);
    rig.set_temp(65);
    gw.until("recovery", |g| g.value(7) == "OK").await;
    for between in [75, 79] {
        rig.set_temp(between);
        gw.settle(f64::from(between), 2).await;
        assert_eq!(gw.value(7), "OK", "at {between}");
    }
    let values: Vec<String> = gw.events().await.into_iter().map(|e| e.value).collect();
    assert_eq!(values, vec!["problem", "OK"]);
    let ids: Vec<u64> = gw.events().await.iter().map(|e| e.eventid).collect();
    assert!(ids[0] < ids[1], "event ids increase: {ids:?}");
    assert_eq!(events_of(&gw.uplink().await).len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn nodata_fires_when_the_device_goes_silent_and_last_becomes_unknown() {
    let rig = Rig::new(
        r#"
[[triggers]]
triggerid = 2
description = "Boiler silent"
severity = 5
expression = "nodata(/boiler/temp,2s)=1"

[[triggers]]
triggerid = 3
description = "Low flow"
severity = 3
expression = "last(/boiler/flow) < 1"
"#,
    )
    .await;
    let gw = Running::start(rig.config()).await;
    gw.settle(20.0, 2).await;
    assert_eq!((gw.value(2).as_str(), gw.value(3).as_str()), ("OK", "OK"));

    rig.device.faults(|f| f.silent = true);
    gw.until("nodata problem", |g| g.value(2) == "problem")
        .await;
    gw.until("unknown without data", |g| g.value(3) == "unknown")
        .await;
    let e = gw
        .events()
        .await
        .into_iter()
        .find(|e| e.triggerid == 2)
        .expect("nodata event");
    assert_eq!(e.severity, (5, "A-Larm".to_string()));

    rig.device.faults(|f| f.silent = false);
    gw.until("data again", |g| g.value(2) == "OK" && g.value(3) == "OK")
        .await;
    let events = gw.events().await;
    let of = |id: u64| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.triggerid == id)
            .map(|e| e.value.clone())
            .collect()
    };
    assert_eq!(of(2), vec!["problem", "OK"]);
    assert_eq!(of(3), vec!["unknown", "OK"]);
    gw.stop().await;
}

#[tokio::test]
async fn a_restart_in_problem_creates_no_new_event() {
    let rig = Rig::new(OVERHEAT).await;
    rig.set_temp(90);
    let gw = Running::start(rig.config()).await;
    gw.until("problem", |g| g.value(1) == "problem").await;
    let before = gw.events().await;
    assert_eq!(before.len(), 1);
    let queued = events_of(&gw.uplink().await).len();
    gw.stop().await;

    let gw = Running::start(rig.config()).await;
    assert_eq!(gw.value(1), "problem", "restored before the first poll");
    gw.settle(90.0, 4).await;
    assert_eq!(gw.value(1), "problem");
    assert_eq!(gw.events().await, before, "no new event after the restart");
    assert_eq!(events_of(&gw.uplink().await).len(), queued);
    let t = gw.gateway.alarms.trigger(1).expect("trigger");
    assert_eq!(t.lastchange, Some(before[0].clock));

    rig.set_temp(20);
    gw.until("recovery", |g| g.value(1) == "OK").await;
    let after = gw.events().await;
    assert_eq!(after.len(), 2);
    assert!(after[1].eventid > after[0].eventid);
    gw.stop().await;
}

#[tokio::test]
async fn acknowledgements_are_stored_shown_and_queued_again() {
    let rig = Rig::new(OVERHEAT).await;
    rig.set_temp(99);
    let gw = Running::start(rig.config()).await;
    gw.until("problem", |g| g.value(1) == "problem").await;
    let id = gw.events().await[0].eventid;
    let alarms = &gw.gateway.alarms;

    let first = alarms
        .acknowledge(id, "Service technician dispatched")
        .await
        .expect("ack");
    assert_eq!(first.acknowledgements.len(), 1);
    assert_eq!(
        first.acknowledgements[0].message,
        "Service technician dispatched"
    );
    assert!((first.acknowledgements[0].clock - modbridge::clock::unix_now()).abs() < 30);
    let second = alarms
        .acknowledge(id, "Fixed: valve replaced")
        .await
        .expect("ack");
    let messages: Vec<&str> = second
        .acknowledgements
        .iter()
        .map(|a| a.message.as_str())
        .collect();
    assert_eq!(
        messages,
        ["Service technician dispatched", "Fixed: valve replaced"]
    );
    assert_eq!(alarms.event(id).await.expect("read"), Some(second.clone()));
    assert_eq!(
        alarms
            .events(&EventFilter::default())
            .await
            .expect("events"),
        vec![second.clone()]
    );

    // Queued again each time, with every acknowledgement so far.
    let sent = events_of(&gw.uplink().await);
    assert_eq!(sent.len(), 3);
    assert_eq!(
        sent[1]["acknowledgements"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(sent[2], serde_json::to_value(&second).expect("json"));
    assert_eq!(
        sent[2]["acknowledgements"][1]["message"],
        "Fixed: valve replaced"
    );

    // Refusals change nothing.
    let unknown = alarms
        .acknowledge(id + 1000, "hello")
        .await
        .expect_err("unknown");
    assert!(matches!(unknown, AckError::UnknownEvent(n) if n == id + 1000));
    assert_eq!(unknown.http_status(), 404);
    assert!(matches!(
        alarms.acknowledge(u64::MAX, "hello").await,
        Err(AckError::UnknownEvent(u64::MAX))
    ));
    for bad in ["", "   \n", &"x".repeat(MAX_ACK_BYTES + 1)] {
        let e = alarms.acknowledge(id, bad).await.expect_err("invalid");
        assert!(matches!(e, AckError::Invalid(_)), "{e}");
        assert_eq!(e.http_status(), 422);
    }
    assert!(alarms
        .acknowledge(id, &"é".repeat(MAX_ACK_BYTES / 2))
        .await
        .is_ok());
    assert_eq!(alarms.event(id + 1000).await.expect("read"), None);
    assert_eq!(events_of(&gw.uplink().await).len(), 4);

    // Acknowledgements survive a restart.
    gw.stop().await;
    let gw = Running::start(rig.config()).await;
    let stored = gw
        .gateway
        .alarms
        .event(id)
        .await
        .expect("read")
        .expect("event");
    assert_eq!(stored.acknowledgements.len(), 3);
    gw.stop().await;
}

#[tokio::test]
async fn a_reload_keeps_trigger_states_and_takes_new_triggers() {
    let rig = Rig::new(OVERHEAT).await;
    rig.set_temp(90);
    let gw = Running::start(rig.config()).await;
    gw.until("problem", |g| g.value(1) == "problem").await;

    // Trigger 1 reworded (same expression), trigger 9 added.
    let text = std::fs::read_to_string(&rig.path)
        .expect("read")
        .replace("Boiler overheating", "Boiler far too hot")
        + r#"
[[triggers]]
triggerid = 9
description = "Flow high"
severity = 3
expression = "avg(/boiler/flow,3s) > 10"
"#;
    std::fs::write(&rig.path, text).expect("write");
    assert!(daemon::reload_from_file(&gw.gateway, &rig.path).await);
    let t = gw.gateway.alarms.trigger(1).expect("trigger 1");
    assert_eq!(
        (t.value.as_str(), t.description.as_str()),
        ("problem", "Boiler far too hot")
    );
    assert_eq!(gw.value(9), "OK");
    assert_eq!(
        last_trigger_message(&gw.uplink().await, 1)["description"],
        "Boiler far too hot"
    );
    assert_eq!(last_trigger_message(&gw.uplink().await, 9)["value"], "OK");

    rig.device.set_register(Table::Holding, 1, 50);
    gw.until("the new trigger fires", |g| g.value(9) == "problem")
        .await;
    gw.settle(90.0, 2).await;
    assert_eq!(gw.value(1), "problem");
    let ids: Vec<u64> = gw.events().await.iter().map(|e| e.triggerid).collect();
    assert_eq!(ids, vec![1, 9], "the reload made no event for trigger 1");

    // Removing a trigger clears its retained message.
    std::fs::write(&rig.path, config_text_of(&rig, OVERHEAT)).expect("write");
    assert!(daemon::reload_from_file(&gw.gateway, &rig.path).await);
    assert!(gw.gateway.alarms.trigger(9).is_none());
    let cleared = gw
        .uplink()
        .await
        .into_iter()
        .rev()
        .find(|m| m.topic == "triggers/9")
        .expect("message");
    assert!(cleared.retained && cleared.payload.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_storage_failure_keeps_the_change_and_retries_until_it_is_stored() {
    let rig = Rig::new(OVERHEAT).await;
    let gw = Running::start(rig.config()).await;
    gw.settle(20.0, 1).await;
    let db = rusqlite::Connection::open(rig.dir.path().join("data/modbridge.db")).expect("db");
    db.execute_batch(
        "CREATE TRIGGER broken_events BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;
         CREATE TRIGGER broken_acks BEFORE INSERT ON acknowledgements BEGIN SELECT RAISE(ABORT, 'disk trouble'); END;",
    )
    .expect("break the tables");

    let changed_at = modbridge::clock::unix_now();
    rig.set_temp(95);
    gw.until("two failed attempts", |g| {
        g.gateway.alarms.stats().storage_errors >= 2
    })
    .await;
    let stats = gw.gateway.alarms.stats();
    assert_eq!(stats.pending, 1);
    assert_eq!(gw.value(1), "OK", "shows the stored value");
    assert!(gw.events().await.is_empty());
    assert!(
        events_of(&gw.uplink().await).is_empty(),
        "nothing queued without its event"
    );

    db.execute_batch("DROP TRIGGER broken_events;")
        .expect("repair");
    gw.until("stored", |g| g.value(1) == "problem").await;
    let events = gw.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0].clock >= changed_at && events[0].clock <= changed_at + 2,
        "the event keeps the clock of the change"
    );
    assert_eq!(gw.gateway.alarms.stats().pending, 0);
    assert_eq!(events_of(&gw.uplink().await).len(), 1);

    // An acknowledgement that cannot be stored is refused with 503.
    let e = gw
        .gateway
        .alarms
        .acknowledge(events[0].eventid, "on it")
        .await
        .expect_err("storage fails");
    assert!(matches!(e, AckError::Storage(_)), "{e}");
    assert_eq!(e.http_status(), 503);
    assert_eq!(events_of(&gw.uplink().await).len(), 1, "nothing queued");
    db.execute_batch("DROP TRIGGER broken_acks;")
        .expect("repair");
    gw.stop().await;
}

fn config_text_of(rig: &Rig, triggers: &str) -> String {
    let addr = rig
        .server
        .as_ref()
        .and_then(|s| s.addr())
        .expect("addr")
        .to_string();
    config_text(&addr, &rig.dir.path().join("data"), triggers)
}

// ------------------------------------------------------------ kill -9

struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts `modbridge run` and returns once `line` was logged.
    async fn start(path: &Path, line: &'static str) -> Daemon {
        let mut child = Command::new(BIN)
            .args(["run", "-c", path.to_str().expect("path")])
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start modbridge");
        let stderr = child.stderr.take().expect("stderr");
        let found = tokio::time::timeout(
            DEADLINE,
            tokio::task::spawn_blocking(move || {
                let mut lines = BufReader::new(stderr).lines();
                let found = lines
                    .by_ref()
                    .map_while(Result::ok)
                    .any(|l| l.contains(line));
                std::thread::spawn(move || for _ in lines {});
                found
            }),
        )
        .await;
        let ok = matches!(found, Ok(Ok(true)));
        let mut d = Daemon { child };
        if !ok {
            d.kill();
            panic!("modbridge never logged {line:?}");
        }
        d
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn stored(data: &Path) -> (i64, Option<String>) {
    let conn = rusqlite::Connection::open(data.join("modbridge.db")).expect("db");
    let events: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count");
    let state: Option<String> = conn
        .query_row(
            "SELECT value FROM trigger_states WHERE triggerid = 1",
            [],
            |r| r.get(0),
        )
        .ok();
    (events, state)
}

#[tokio::test]
async fn kill_9_neither_loses_nor_repeats_an_event() {
    let rig = Rig::new(OVERHEAT).await;
    let data = rig.dir.path().join("data");
    rig.set_temp(90);
    let mut d = Daemon::start(&rig.path, "event recorded").await;
    d.kill();
    assert_eq!(stored(&data), (1, Some("problem".to_string())));

    // Killed again while the trigger is still in problem: no second event.
    let mut d = Daemon::start(&rig.path, "trigger resumes in problem").await;
    let polled = rig.device.requests();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // 12 polls at 250 ms: three seconds of evaluation.
    while rig.device.requests() < polled + 12 {
        assert!(tokio::time::Instant::now() < deadline, "the daemon polls");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.kill();
    assert_eq!(stored(&data), (1, Some("problem".to_string())));

    // Recovery after a restart is recorded once.
    rig.set_temp(20);
    let mut d = Daemon::start(&rig.path, "event recorded").await;
    d.kill();
    assert_eq!(stored(&data), (2, Some("OK".to_string())));
}
