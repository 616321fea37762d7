//! Remote configuration against a real mosquitto, in-process devices and,
//! for restarts, the real binary: deployments applied after probation with
//! an untouched host polling throughout, refused with positions or for a
//! protected section, rejected before anything changes, rolled back for a
//! dead new host and for a host the new config breaks, kept across a
//! restart, and undone with `"content": null`.

#[path = "common/api_gateway.rs"]
mod api_gateway;
#[path = "support/broker.rs"]
mod broker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use api_gateway::{http, Reply};
use broker::{eventually, signal, Broker, Msg, Upstream};
use modbridge::daemon::DaemonError;
use modbridge::gateway::Gateway;
use modbridge::model::Table;
use modbridge::sim::{SimDevice, SimServer};
use serde_json::{json, Value};

const ROOT: &str = "modbridge/box-rc";
const TOKEN: &str = "s3cret-token";
const WAIT: Duration = Duration::from_secs(20);

fn sha256(text: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string()
}

/// A `[[hosts]]` block with one item `k` (input 0).
fn host_block(host: &str, addr: SocketAddr, unit: u8) -> String {
    format!(
        r#"
[[hosts]]
host = "{host}"
connection = "tcp://{addr}"
unit = {unit}
poll_interval = "1s"
timeout = "300ms"
retries = 0

[[hosts.items]]
key = "k"
table = "input"
address = 0
"#
    )
}

/// The local file's head: `[gateway]`, `[mqtt]` (if any), `[api]`, `[remote]`.
fn head(data: &Path, mqtt: Option<&str>, listen: &str, token: &Path, remote: bool) -> String {
    let mqtt = mqtt.map_or(String::new(), |url| format!("[mqtt]\nurl = \"{url}\"\n"));
    format!(
        r#"[gateway]
id = "box-rc"
data_dir = "{data}"

{mqtt}
[api]
listen = "{listen}"
token_file = "{token}"

[remote]
config = {remote}
rollback_after = "3s"
"#,
        data = data.display(),
        token = token.display()
    )
}

/// What a deployment of a whole config has besides its hosts (the
/// protected sections come from the local file).
const STORAGE: &str = "[storage]\ncommit_interval = \"200ms\"\n";

fn deployment(name: &str, content: Option<&str>, id: u64) -> String {
    json!({
        "name": name,
        "format": "TOML",
        "content": content,
        "checksum": content.map(sha256),
        "id": id,
        "audit": ["ops"],
    })
    .to_string()
}

struct Device {
    sim: SimDevice,
    _server: SimServer,
    addr: SocketAddr,
}

async fn device(value: u16) -> Device {
    let sim = SimDevice::new();
    sim.set_register(Table::Input, 0, value);
    let server = sim.bind_tcp("127.0.0.1:0").await.expect("bind device");
    let addr = server.addr().expect("addr");
    Device {
        sim,
        _server: server,
        addr,
    }
}

/// An address where nothing listens.
fn dead_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// A gateway in this process with its API.
struct Fixture {
    dir: tempfile::TempDir,
    gateway: Gateway,
    api: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    run: Option<tokio::task::JoinHandle<Result<(), DaemonError>>>,
}

impl Fixture {
    /// `local`: the local file's text given the data dir and the token file.
    async fn start(local: impl Fn(&Path, &Path) -> String) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("api.token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("token");
        let path = dir.path().join("modbridge.toml");
        std::fs::write(&path, local(&dir.path().join("data"), &token)).expect("config");
        let config = modbridge::remote::load_for_start(&path).expect("valid config");
        let api_gateway::Served {
            gateway,
            addr,
            stop,
            run,
        } = api_gateway::serve(config).await;
        Fixture {
            dir,
            gateway,
            api: addr,
            stop: Some(stop),
            run: Some(run),
        }
    }

    async fn put(&self, name: &str, body: &str) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        let path = format!("/datasets/{name}");
        http(
            self.api,
            "PUT",
            &path,
            &[("Authorization", &auth)],
            Some(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> Value {
        http(self.api, "GET", path, &[], None).await.json()
    }

    /// Waits for the latest deployment to have `status`.
    async fn deploy_status(&self, status: &str) -> Value {
        wait_json(self.api, "/deploy", status, |d| d["status"] == status).await
    }

    fn hosts(&self) -> Vec<String> {
        let config = self.gateway.config();
        config.hosts.iter().map(|h| h.host.clone()).collect()
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

fn deploys(msgs: &[Msg]) -> Vec<Value> {
    let topic = format!("{ROOT}/deploy");
    msgs.iter()
        .filter(|m| m.topic == topic)
        .map(Msg::json)
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn a_deployment_is_applied_after_probation_and_untouched_hosts_keep_polling() {
    let broker = Broker::start();
    let (keep, extra) = (device(7).await, device(8).await);
    let url = broker.url(false);
    let keep_block = host_block("keep", keep.addr, 1);
    let fx = Fixture::start(|data, token| {
        format!(
            "{}{STORAGE}{keep_block}",
            head(data, Some(&url), "127.0.0.1:0", token, true)
        )
    })
    .await;
    let filter = format!("{ROOT}/#");
    let mut up = Upstream::connect(broker.port, "up-deploy", None, &[&filter], true).await;
    let live_before = fx.gateway.host("keep").expect("keep");
    let mut cycles = live_before.subscribe();
    tokio::time::timeout(WAIT, cycles.changed())
        .await
        .expect("a first cycle")
        .expect("cycles");

    let content = format!(
        "{STORAGE}{keep_block}{}",
        host_block("extra", extra.addr, 1)
    );
    let started = modbridge::clock::unix_now();
    up.publish(
        &format!("{ROOT}/cmd/dataset"),
        deployment("modbridge.toml", Some(&content), 41),
        false,
    )
    .await;
    let msgs = up
        .wait("APPLIED on R/deploy", WAIT, |m| {
            deploys(m).iter().any(|d| d["status"] == "APPLIED")
        })
        .await;
    let statuses: Vec<Value> = deploys(&msgs).iter().map(|d| d["status"].clone()).collect();
    assert_eq!(statuses, [json!("PENDING"), json!("APPLIED")]);
    let applied = deploys(&msgs).pop().expect("applied");
    assert_eq!(applied["id"], 41);
    assert_eq!(applied["name"], "modbridge.toml");
    assert_eq!(applied["checksum"], sha256(&content));
    assert_eq!(applied["audit"], json!(["ops", "mqtt"]));
    assert!(applied["clock"].as_i64().expect("clock") >= started + 3);
    assert_eq!(fx.hosts(), ["keep", "extra"]);

    // The untouched host kept its task and live state, and polled throughout.
    let live_after = fx.gateway.host("keep").expect("keep");
    assert!(
        Arc::ptr_eq(&live_before, &live_after),
        "keep was not restarted"
    );
    let history = fx
        .get(&format!("/hosts/keep/items/k/history?from={}", started - 2))
        .await;
    let clocks: Vec<i64> = history
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|p| p[0].as_i64())
        .collect();
    assert!(clocks.len() >= 4, "{clocks:?}");
    for pair in clocks.windows(2) {
        assert!(pair[1] - pair[0] <= 2, "a gap in keep's polls: {clocks:?}");
    }

    // What runs is the deployed file, brought by the deployment.
    let datasets = fx.get("/datasets").await;
    assert_eq!(datasets[0]["name"], "modbridge.toml");
    assert_eq!(datasets[0]["checksum"], sha256(&content));
    assert_eq!(datasets[0]["created_by"], "ops mqtt");
    assert_eq!(datasets[0]["updated_by"], "ops mqtt");
    assert_eq!(fx.get("/deploy").await["status"], "APPLIED");

    // R/deploy is retained.
    let mut late = Upstream::connect(broker.port, "up-late", None, &[&filter], true).await;
    let msgs = late
        .wait("the retained status", WAIT, |m| !deploys(m).is_empty())
        .await;
    assert_eq!(deploys(&msgs)[0]["status"], "APPLIED");
    fx.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_deployment_with_problems_is_refused_with_their_positions() {
    let keep = device(7).await;
    let keep_block = host_block("keep", keep.addr, 1);
    let fx = Fixture::start(|data, token| {
        format!(
            "{}{keep_block}",
            head(data, None, "127.0.0.1:0", token, true)
        )
    })
    .await;
    let bad =
        format!("{keep_block}\n[[hosts.items]]\nkey = \"x\"\ntable = \"inptu\"\naddress = 1\n");
    let reply = fx
        .put(
            "modbridge.toml",
            &deployment("modbridge.toml", Some(&bad), 1),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let status = reply.json();
    assert_eq!(status["status"], "REFUSED");
    let errors: Vec<String> = status["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e.as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with("modbridge.toml:17:9: "), "{errors:?}");
    assert!(errors[0].contains("inptu"), "{errors:?}");

    // A protected section that differs from the local file's.
    let other_api = format!("[api]\nlisten = \"127.0.0.1:9\"\n{keep_block}");
    let status = fx
        .put(
            "modbridge.toml",
            &deployment("modbridge.toml", Some(&other_api), 2),
        )
        .await
        .json();
    assert_eq!(status["status"], "REFUSED");
    let text = status["errors"][0].as_str().unwrap_or("");
    assert!(
        text.starts_with("modbridge.toml:1:2: [api] differs"),
        "{status}"
    );

    // A profile's problems are named by the profile's Dataset name.
    let profile = "[[items]]\nkey = \"p\"\ntable = \"holding\"\naddress = \"40001\"\n";
    let status = fx
        .put(
            "profiles/dev.toml",
            &deployment("profiles/dev.toml", Some(profile), 3),
        )
        .await
        .json();
    // The running config does not use the profile: nothing names it, so it is taken.
    assert_eq!(status["status"], "PENDING", "{status}");
    fx.deploy_status("APPLIED").await;
    let with_profile = keep_block.replace(
        "retries = 0\n",
        "retries = 0\nprofile = \"profiles/dev.toml\"\n",
    );
    let status = fx
        .put(
            "modbridge.toml",
            &deployment("modbridge.toml", Some(&with_profile), 4),
        )
        .await
        .json();
    assert_eq!(status["status"], "REFUSED", "{status}");
    let text = status["errors"][0].as_str().unwrap_or("");
    assert!(text.starts_with("profiles/dev.toml:4:11: "), "{status}");
    assert_eq!(fx.hosts(), ["keep"], "nothing changed");
    fx.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn refusals_change_nothing() {
    let broker = Broker::start();
    let keep = device(7).await;
    let url = broker.url(false);
    let keep_block = host_block("keep", keep.addr, 1);
    let fx = Fixture::start(|data, token| {
        format!(
            "{}{keep_block}",
            head(data, Some(&url), "127.0.0.1:0", token, true)
        )
    })
    .await;
    let filter = format!("{ROOT}/#");
    let mut up = Upstream::connect(broker.port, "up-refuse", None, &[&filter], true).await;
    let content = format!("{keep_block}{}", host_block("extra", dead_address(), 1));
    let mut wrong = serde_json::from_str::<Value>(&deployment("modbridge.toml", Some(&content), 1))
        .expect("json");
    wrong["checksum"] = json!(sha256("something else"));
    up.publish(&format!("{ROOT}/cmd/dataset"), wrong.to_string(), false)
        .await;
    let msgs = up
        .wait("a rejection", WAIT, |m| {
            m.iter().any(|m| m.topic == format!("{ROOT}/rejected"))
        })
        .await;
    let rejected = msgs
        .iter()
        .find(|m| m.topic == format!("{ROOT}/rejected"))
        .expect("rejected")
        .json();
    assert_eq!(rejected["topic"], format!("{ROOT}/cmd/dataset"));
    assert!(
        rejected["error"]
            .as_str()
            .unwrap_or("")
            .contains("does not match"),
        "{rejected}"
    );
    assert!(deploys(&msgs).is_empty());

    // Over HTTP: the checksum (422), the token (401), the name (422), the body (400).
    let reply = fx.put("modbridge.toml", &wrong.to_string()).await;
    reply.assert_error(422);
    let no_token = http(
        fx.api,
        "PUT",
        "/datasets/modbridge.toml",
        &[],
        Some(&deployment("modbridge.toml", Some(&content), 2)),
    )
    .await;
    no_token.assert_error(401);
    fx.put("x.toml", &deployment("x.toml", Some(&content), 3))
        .await
        .assert_error(422);
    fx.put("modbridge.toml", "{\"name\": 1}")
        .await
        .assert_error(400);
    http(fx.api, "GET", "/deploy", &[], None)
        .await
        .assert_error(404);
    assert_eq!(fx.hosts(), ["keep"]);

    // One at a time: while one is on probation, another is 409.
    let first = fx
        .put(
            "modbridge.toml",
            &deployment("modbridge.toml", Some(&content), 4),
        )
        .await;
    assert_eq!(first.json()["status"], "PENDING");
    fx.put(
        "modbridge.toml",
        &deployment("modbridge.toml", Some(&content), 5),
    )
    .await
    .assert_error(409);
    fx.stop().await;

    // Remote configuration off: 403.
    let off = Fixture::start(|data, token| {
        format!(
            "{}{keep_block}",
            head(data, None, "127.0.0.1:0", token, false)
        )
    })
    .await;
    off.put(
        "modbridge.toml",
        &deployment("modbridge.toml", Some(&content), 6),
    )
    .await
    .assert_error(403);
    off.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_deployment_is_rolled_back_when_a_new_host_or_a_changed_one_does_not_answer() {
    let keep = device(7).await;
    keep.sim.answer_units(&[1]);
    let keep_block = host_block("keep", keep.addr, 1);
    let fx = Fixture::start(|data, token| {
        format!(
            "{}{keep_block}",
            head(data, None, "127.0.0.1:0", token, true)
        )
    })
    .await;
    let dead = format!("{keep_block}{}", host_block("ghost", dead_address(), 1));
    let status = fx
        .put(
            "modbridge.toml",
            &deployment("modbridge.toml", Some(&dead), 1),
        )
        .await
        .json();
    assert_eq!(status["status"], "PENDING");
    assert_eq!(fx.hosts(), ["keep", "ghost"]);
    let rolled = fx.deploy_status("ROLLED_BACK").await;
    assert!(
        rolled["reason"]
            .as_str()
            .unwrap_or("")
            .contains("host ghost did not answer"),
        "{rolled}"
    );
    assert_eq!(fx.hosts(), ["keep"]);
    let local = std::fs::read_to_string(fx.dir.path().join("modbridge.toml")).expect("local");
    assert_eq!(fx.get("/datasets").await[0]["checksum"], sha256(&local));

    // The device answers unit 1 only: unit 2 breaks a host that answered.
    let broken = host_block("keep", keep.addr, 2);
    let status = fx
        .put(
            "modbridge.toml",
            &deployment("modbridge.toml", Some(&broken), 2),
        )
        .await
        .json();
    assert_eq!(status["status"], "PENDING");
    let rolled = fx.deploy_status("ROLLED_BACK").await;
    assert_eq!(rolled["id"], 2);
    assert!(
        rolled["reason"]
            .as_str()
            .unwrap_or("")
            .contains("host keep did not answer"),
        "{rolled}"
    );
    assert_eq!(fx.gateway.config().host("keep").map(|h| h.unit), Some(1));
    fx.stop().await;
}

/// The real binary on a config file, with its API on `port`.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let log = config.with_extension("log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_modbridge"))
            .args(["run", "-c"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start modbridge");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) {
        signal(&self.child, "TERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "{status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_json(api: SocketAddr, path: &str) -> Option<Value> {
    let connect = tokio::net::TcpStream::connect(api).await;
    if connect.is_err() {
        return None;
    }
    drop(connect);
    let reply = http(api, "GET", path, &[], None).await;
    (reply.status == 200).then(|| reply.json())
}

async fn wait_json(
    api: SocketAddr,
    path: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = get_json(api, path).await {
            if pred(&v) {
                return v;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn what_was_applied_survives_a_restart_and_null_content_returns_to_the_local_file() {
    let (keep, extra) = (device(7).await, device(8).await);
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("api.token");
    std::fs::write(&token, TOKEN).expect("token");
    let api = dead_address();
    let path: PathBuf = dir.path().join("modbridge.toml");
    let keep_block = host_block("keep", keep.addr, 1);
    let local = format!(
        "{}{keep_block}",
        head(
            &dir.path().join("data"),
            None,
            &api.to_string(),
            &token,
            true
        )
    );
    std::fs::write(&path, &local).expect("config");
    let daemon = Daemon::start(&path);
    wait_json(api, "/hosts", "the API", |_| true).await;
    let content = format!("{keep_block}{}", host_block("extra", extra.addr, 1));
    let auth = format!("Bearer {TOKEN}");
    let reply = http(
        api,
        "PUT",
        "/datasets/modbridge.toml",
        &[("Authorization", &auth)],
        Some(&deployment("modbridge.toml", Some(&content), 1)),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    wait_json(api, "/deploy", "APPLIED", |d| d["status"] == "APPLIED").await;
    daemon.stop();

    let check = Command::new(env!("CARGO_BIN_EXE_modbridge"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("check");
    assert!(check.status.success());
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("a deployed config is in force"), "{said}");

    let daemon = Daemon::start(&path);
    let datasets = wait_json(api, "/datasets", "datasets", |_| true).await;
    assert_eq!(datasets[0]["checksum"], sha256(&content));
    let hosts = wait_json(api, "/hosts", "hosts", |_| true).await;
    assert_eq!(hosts.as_array().map(Vec::len), Some(2), "{hosts}");
    assert_eq!(
        wait_json(api, "/deploy", "the status", |_| true).await["status"],
        "APPLIED"
    );
    // A SIGHUP reloads the local file with what is deployed.
    signal(&daemon.child, "HUP");
    eventually("the reload", WAIT, || {
        daemon.log().contains("config reloaded")
    })
    .await;
    assert!(!daemon.log().contains("reload refused"), "{}", daemon.log());
    let hosts = wait_json(api, "/hosts", "hosts", |_| true).await;
    assert_eq!(hosts.as_array().map(Vec::len), Some(2), "{hosts}");

    // Back to the local file.
    let reply = http(
        api,
        "PUT",
        "/datasets/modbridge.toml",
        &[("Authorization", &auth)],
        Some(&deployment("modbridge.toml", None, 2)),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    wait_json(api, "/deploy", "APPLIED", |d| {
        d["status"] == "APPLIED" && d["id"] == 2
    })
    .await;
    let datasets = wait_json(api, "/datasets", "datasets", |_| true).await;
    assert_eq!(datasets[0]["checksum"], sha256(&local));
    assert_eq!(datasets[0]["created_by"], "local");
    let hosts = wait_json(api, "/hosts", "hosts", |_| true).await;
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "{hosts}");
    daemon.stop();
    let check = Command::new(env!("CARGO_BIN_EXE_modbridge"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .expect("check");
    assert!(!String::from_utf8_lossy(&check.stdout).contains("deployed config"));
    eventually("nothing deployed left", Duration::from_secs(1), || {
        !dir.path().join("data/remote/modbridge.toml").exists()
    })
    .await;
}

fn writer_block(addr: SocketAddr, poll: &str) -> String {
    format!(
        r#"
[[hosts]]
host = "writer"
connection = "tcp://{addr}"
poll_interval = "{poll}"
timeout = "300ms"
retries = 0

[[hosts.items]]
key = "sp"
table = "holding"
address = 5
configurable = true
"#
    )
}

#[tokio::test(flavor = "current_thread")]
async fn a_pending_config_request_carries_over_a_deployment_and_its_rollback() {
    let (keep, writer) = (device(7).await, device(0).await);
    writer.sim.faults(|f| f.silent = true);
    let keep_block = host_block("keep", keep.addr, 1);
    let local_writer = writer_block(writer.addr, "1s");
    let fx = Fixture::start(|data, token| {
        format!(
            "{}{keep_block}{local_writer}",
            head(data, None, "127.0.0.1:0", token, true)
        )
    })
    .await;
    let auth = format!("Bearer {TOKEN}");
    let reply = http(
        fx.api,
        "PUT",
        "/hosts/writer/items/sp/config",
        &[("Authorization", &auth)],
        Some(r#"{"target": 30, "id": "w1"}"#),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["status"], "PENDING");

    // The writer's settings change (its task restarts) and a dead host is added.
    let content = format!(
        "{keep_block}{}{}",
        writer_block(writer.addr, "2s"),
        host_block("ghost", dead_address(), 1)
    );
    let status = fx
        .put(
            "modbridge.toml",
            &deployment("modbridge.toml", Some(&content), 1),
        )
        .await
        .json();
    assert_eq!(status["status"], "PENDING");
    let rolled = fx.deploy_status("ROLLED_BACK").await;
    assert!(
        rolled["reason"]
            .as_str()
            .unwrap_or("")
            .contains("host ghost"),
        "{rolled}"
    );
    let config = fx.get("/hosts/writer/items/sp/config").await;
    assert_eq!(config["status"], "PENDING", "{config}");
    assert_eq!(config["id"], "w1");

    // Once the device answers, the request that waited through both reloads is carried out.
    writer.sim.faults(|f| f.silent = false);
    let config = wait_json(fx.api, "/hosts/writer/items/sp/config", "the write", |c| {
        c["status"] != "PENDING"
    })
    .await;
    assert_eq!(config["status"], "SUCCESS", "{config}");
    assert_eq!(writer.sim.register(Table::Holding, 5), 30);
    fx.stop().await;
}
