//! The upstream model against a real mosquitto and in-process devices:
//! Things, Time-series and Datasets with their stable ids (computed here
//! independently, by Python's `uuid.uuid5(uuid.NAMESPACE_URL, ...)`), the
//! hierarchy, SI units, retained metadata that is cleared when a host goes,
//! and Dataset checksums equal to `sha256sum` of the files.

#[path = "common/api_gateway.rs"]
mod api_gateway;
#[path = "support/broker.rs"]
mod broker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api_gateway::{http, Reply};
use broker::{Broker, Msg, Upstream};
use modbridge::daemon::DaemonError;
use modbridge::gateway::Gateway;
use modbridge::model::Table;
use modbridge::sim::{SimDevice, SimServer};

const ROOT: &str = "modbridge/box-up";
// uuid5(NAMESPACE_URL, "modbridge://box-up"), ".../hosts/boiler", ...
const GATEWAY: &str = "0f3e7c27-84e8-5474-a502-4be25ac07726";
const BOILER: &str = "3531892c-473f-5394-82e7-5f4434796806";
const CIRCUIT1: &str = "d19d9ded-fd81-536f-bf2b-0dacd76cf123";
const TEMP: &str = "c5bf811f-7311-506e-8f34-c6e5f051f856";
const FLOW: &str = "8235d74e-f4d7-51f9-bf25-1480ce360137";
const DATASET_CONFIG: &str = "98cb14f7-0f0f-5c3b-abc3-4033bc7aa292";
const DATASET_PROFILE: &str = "8d57a415-c0c1-5d06-8ba5-8a9c3819a975";
/// Assigned upstream in the config: they win over the derived ids.
const PUMP: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";
const PRESSURE: &str = "6fa459ea-ee8a-3ca4-894e-db77e160355e";

const PROFILE: &str = r#"model = "B1"
[[items]]
key = "temp"
name = "Boiler temperature"
table = "input"
address = 0
type = "i16"
scale = 0.1
unit = "degC"
lower_bound = 0
upper_bound = 95
tags = ["supply"]
"#;

fn config_text(data: &Path, mqtt: &str, boiler: SocketAddr, pump: Option<SocketAddr>) -> String {
    let mut text = format!(
        r#"[gateway]
id = "box-up"
name = "Upstream box"
data_dir = "{data}"

[storage]
commit_interval = "200ms"

[mqtt]
url = "{mqtt}"

[api]
listen = "127.0.0.1:0"

[[things]]
id = "circuit1"
name = "Circuit 1"
type = "heating/circuit"
tags = ["c1"]

[[hosts]]
host = "boiler"
connection = "tcp://{boiler}"
profile = "profiles/boiler.toml"
thing = "circuit1"
poll_interval = "1s"
timeout = "300ms"
retries = 0
type = "heating/boiler"

[[hosts.items]]
key = "flow"
table = "input"
address = 1
unit = "m3/h"
"#,
        data = data.display()
    );
    if let Some(pump) = pump {
        text.push_str(&format!(
            r#"
[[hosts]]
host = "pump"
connection = "tcp://{pump}"
uuid = "{PUMP}"
poll_interval = "1s"
timeout = "300ms"
retries = 0

[[hosts.items]]
key = "p"
table = "input"
address = 0
unit = "bar"
si_unit = "kPa"
thing = "circuit1"
uuid = "{PRESSURE}"
"#
        ));
    }
    text
}

/// A gateway with two devices, its API and its uplink.
struct Fixture {
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    data: PathBuf,
    devices: Vec<(SimDevice, Option<SimServer>)>,
    gateway: Gateway,
    api: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    run: Option<tokio::task::JoinHandle<Result<(), DaemonError>>>,
}

impl Fixture {
    async fn start(broker: &Broker) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut devices = Vec::new();
        let mut addrs = Vec::new();
        for raw in [[215u16, 12], [30, 0]] {
            let device = SimDevice::new();
            device.set_register(Table::Input, 0, raw[0]);
            device.set_register(Table::Input, 1, raw[1]);
            let server = device.bind_tcp("127.0.0.1:0").await.expect("bind device");
            addrs.push(server.addr().expect("addr"));
            devices.push((device, Some(server)));
        }
        std::fs::create_dir_all(dir.path().join("profiles")).expect("mkdir");
        std::fs::write(dir.path().join("profiles/boiler.toml"), PROFILE).expect("profile");
        let config_path = dir.path().join("site.toml");
        let data = dir.path().join("data");
        let text = config_text(&data, &broker.url(false), addrs[0], Some(addrs[1]));
        std::fs::write(&config_path, text).expect("config");
        let config = modbridge::config::load(&config_path).expect("valid config");
        let api_gateway::Served {
            gateway,
            addr,
            stop,
            run,
        } = api_gateway::serve(config).await;
        Fixture {
            _dir: dir,
            config_path,
            data,
            devices,
            gateway,
            api: addr,
            stop: Some(stop),
            run: Some(run),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        http(self.api, "GET", path, &[], None).await
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(run) = self.run.take() {
            run.await.expect("join").expect("clean stop");
        }
    }
}

/// The newest message on `topic` below the root.
fn last<'m>(msgs: &'m [Msg], below: &str) -> Option<&'m Msg> {
    let topic = format!("{ROOT}/{below}");
    msgs.iter().rev().find(|m| m.topic == topic)
}

fn has(msgs: &[Msg], below: &str) -> bool {
    last(msgs, below).is_some_and(|m| !m.payload.is_empty())
}

fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a checksum")
        .to_string()
}

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "current_thread")]
async fn things_and_timeseries_have_stable_ids_a_hierarchy_and_si_units() {
    let broker = Broker::start();
    let fx = Fixture::start(&broker).await;
    let filter = format!("{ROOT}/#");
    let mut up = Upstream::connect(broker.port, "up-ids", None, &[&filter], true).await;
    let msgs = up
        .wait("the model's retained messages", WAIT, |m| {
            [
                format!("things/{GATEWAY}"),
                format!("things/{BOILER}"),
                format!("things/{PUMP}"),
                format!("things/{CIRCUIT1}"),
                format!("timeseries/{TEMP}"),
                format!("timeseries/{FLOW}"),
                format!("timeseries/{PRESSURE}"),
                format!("datasets/{DATASET_CONFIG}"),
                format!("datasets/{DATASET_PROFILE}"),
            ]
            .iter()
            .all(|t| has(m, t))
        })
        .await;
    let json = |below: &str| last(&msgs, below).expect(below).json();

    let gateway = json(&format!("things/{GATEWAY}"));
    assert_eq!(gateway["type"], "gateway/modbus");
    assert_eq!(gateway["name"], "Upstream box");
    assert_eq!(gateway["state"], "online");
    assert!(gateway["parent"].is_null());
    assert!(gateway["created_by"].is_null());
    let mut children: Vec<_> = gateway["children"]
        .as_array()
        .expect("children")
        .iter()
        .map(|c| c.as_str().unwrap_or("").to_string())
        .collect();
    children.sort();
    assert_eq!(children, [PUMP.to_string(), CIRCUIT1.to_string()]);

    let circuit = json(&format!("things/{CIRCUIT1}"));
    assert_eq!(circuit["parent"], GATEWAY);
    assert_eq!(circuit["children"], serde_json::json!([BOILER]));
    assert_eq!(circuit["type"], "heating/circuit");
    assert_eq!(circuit["tags"], serde_json::json!(["c1"]));
    let boiler = json(&format!("things/{BOILER}"));
    assert_eq!(boiler["parent"], CIRCUIT1);
    assert_eq!(boiler["type"], "heating/boiler");
    assert_eq!(json(&format!("things/{PUMP}"))["parent"], GATEWAY);

    let temp = json(&format!("timeseries/{TEMP}"));
    assert_eq!(temp["id"], TEMP);
    assert_eq!(temp["thing_uuid"], BOILER);
    assert_eq!(temp["si_unit"], "°C");
    assert_eq!(temp["name"], "Boiler temperature");
    assert_eq!(temp["lower_bound"], 0.0);
    assert_eq!(temp["upper_bound"], 95.0);
    assert_eq!(temp["tags"], serde_json::json!(["supply"]));
    assert_eq!(temp["host"], "boiler");
    assert_eq!(temp["key"], "temp");
    assert!(temp["created_by"].is_null());
    assert_eq!(json(&format!("timeseries/{FLOW}"))["si_unit"], "m³/h");
    let pressure = json(&format!("timeseries/{PRESSURE}"));
    assert_eq!(pressure["si_unit"], "kPa");
    assert_eq!(
        pressure["thing_uuid"], CIRCUIT1,
        "thing = wins over the host"
    );

    // The same over HTTP, and the host Things leave `starting` once polled.
    let things = fx.get("/things").await.json();
    assert_eq!(things.as_array().map(Vec::len), Some(4));
    up.wait("the boiler online", WAIT, |m| {
        last(m, &format!("things/{BOILER}")).is_some_and(|t| t.json()["state"] == "online")
    })
    .await;
    assert_eq!(
        fx.get(&format!("/things/{BOILER}")).await.json()["state"],
        "online"
    );
    assert_eq!(
        fx.get(&format!("/timeseries/{PRESSURE}")).await.json()["key"],
        "p"
    );
    let series = fx.get("/timeseries").await.json();
    assert_eq!(series.as_array().map(Vec::len), Some(3));
    fx.get("/things/00000000-0000-0000-0000-000000000000")
        .await
        .assert_error(404);
    fx.get("/timeseries/nope/data").await.assert_error(404);
    let data = async {
        loop {
            let points = fx.get(&format!("/timeseries/{TEMP}/data")).await.json();
            if points.as_array().is_some_and(|p| !p.is_empty()) {
                return points;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let points = tokio::time::timeout(WAIT, data).await.expect("history");
    assert_eq!(points[0][1], 21.5);

    // A Thing's state change is published again: the pump goes silent.
    fx.devices[1].0.faults(|f| f.silent = true);
    up.wait("the pump offline", WAIT, |m| {
        last(m, &format!("things/{PUMP}")).is_some_and(|t| t.json()["state"] == "offline")
    })
    .await;
    fx.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn retained_metadata_is_cleared_after_a_reload_removes_a_host() {
    let broker = Broker::start();
    let fx = Fixture::start(&broker).await;
    let filter = format!("{ROOT}/#");
    let mut up = Upstream::connect(broker.port, "up-clear", None, &[&filter], true).await;
    up.wait("the pump's metadata", WAIT, |m| {
        has(m, &format!("things/{PUMP}")) && has(m, &format!("timeseries/{PRESSURE}"))
    })
    .await;
    let boiler = fx.devices[0]
        .1
        .as_ref()
        .and_then(|s| s.addr())
        .expect("addr");
    let text = config_text(&fx.data, &broker.url(false), boiler, None);
    std::fs::write(&fx.config_path, text).expect("config");
    assert!(modbridge::daemon::reload_from_file(&fx.gateway, &fx.config_path).await);
    up.wait("the pump's metadata cleared", WAIT, |m| {
        [format!("things/{PUMP}"), format!("timeseries/{PRESSURE}")]
            .iter()
            .all(|t| last(m, t).is_some_and(|msg| msg.payload.is_empty()))
    })
    .await;
    // A new subscriber gets the boiler's, and nothing of the pump's.
    let mut late = Upstream::connect(broker.port, "up-late", None, &[&filter], true).await;
    let msgs = late
        .wait("the retained model", WAIT, |m| {
            has(m, &format!("things/{BOILER}")) && has(m, &format!("timeseries/{TEMP}"))
        })
        .await;
    assert!(!has(&msgs, &format!("things/{PUMP}")));
    assert!(!has(&msgs, &format!("timeseries/{PRESSURE}")));
    let gateway = last(&msgs, &format!("things/{GATEWAY}"))
        .expect("gateway")
        .json();
    assert_eq!(gateway["children"], serde_json::json!([CIRCUIT1]));
    fx.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn datasets_are_the_config_and_its_profiles_with_their_checksums() {
    let broker = Broker::start();
    let fx = Fixture::start(&broker).await;
    let list = fx.get("/datasets").await.json();
    let list = list.as_array().expect("a list");
    assert_eq!(list.len(), 2);
    let dir = fx.config_path.parent().expect("dir").to_path_buf();
    for (dataset, uuid, file) in [
        (&list[0], DATASET_CONFIG, fx.config_path.clone()),
        (&list[1], DATASET_PROFILE, dir.join("profiles/boiler.toml")),
    ] {
        let bytes = std::fs::read(&file).expect("read");
        assert_eq!(dataset["uuid"], uuid);
        assert_eq!(dataset["format"], "TOML");
        assert_eq!(dataset["checksum"], sha256sum(&file));
        assert_eq!(dataset["size"], bytes.len() as u64);
        assert_eq!(dataset["thing_uuid"], GATEWAY);
        assert_eq!(dataset["created_by"], "local");
        assert_eq!(dataset["updated_by"], "local");
        assert!(dataset["updated"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000));
        let content = fx.get(&format!("/datasets/{uuid}/content")).await;
        assert_eq!(content.status, 200);
        assert_eq!(content.body.as_bytes(), &bytes[..]);
        assert_eq!(
            content.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        let etag = format!("\"{}\"", sha256sum(&file));
        assert_eq!(content.header("etag"), Some(etag.as_str()));
        let again = http(
            fx.api,
            "GET",
            &format!("/datasets/{uuid}/content"),
            &[("If-None-Match", &etag)],
            None,
        )
        .await;
        assert_eq!(again.status, 304);
        assert_eq!(fx.get(&format!("/datasets/{uuid}")).await.json(), *dataset);
    }
    assert_eq!(
        list[0]["name"], "modbridge.toml",
        "whatever the file is called"
    );
    assert_eq!(list[1]["name"], "profiles/boiler.toml");
    fx.get("/datasets/nope/content").await.assert_error(404);
    let filter = format!("{ROOT}/datasets/+");
    let mut up = Upstream::connect(broker.port, "up-ds", None, &[&filter], true).await;
    let msgs = up
        .wait("retained datasets", WAIT, |m| {
            has(m, &format!("datasets/{DATASET_CONFIG}"))
                && has(m, &format!("datasets/{DATASET_PROFILE}"))
        })
        .await;
    let metadata = last(&msgs, &format!("datasets/{DATASET_CONFIG}")).expect("dataset");
    assert_eq!(metadata.json(), list[0]);
    assert!(metadata.retain);
    fx.stop().await;
}
