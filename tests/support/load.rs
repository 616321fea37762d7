//! The liveness load: the release or test binary of `modbridge run` polling 10
//! simulated devices at 1 s and connected to a real mosquitto, one item with
//! a quarter of a million history points, and API clients asking for
//! 200,000-point histories and sending config requests meanwhile. Shared by
//! `tests/liveness.rs` (which asserts) and `benches/liveness.rs` (which
//! prints the figures).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use modbridge::api::client;
use modbridge::model::Table;
use modbridge::sim::SimDevice;
use modbridge::store::{Sample, Store};

use super::broker::Broker;

/// Hosts polled, one simulated device each.
pub const HOSTS: usize = 10;
/// Points of history seeded for the queried item (more than one answer carries).
pub const SEEDED: i64 = 250_000;
/// Points one history answer asks for.
pub const ASKED: usize = 200_000;
/// Concurrent history clients.
pub const CLIENTS: usize = 8;
/// The gateway's MQTT client id (to find it in the broker's log).
pub const CLIENT_ID: &str = "modbridge-liveness";
/// The keep-alive the gateway is configured with.
pub const KEEP_ALIVE_SECS: u64 = 2;

/// Simulated devices served from their own thread and runtime, so the
/// clients' work in this process never slows the devices' answers.
pub struct Devices {
    pub addrs: Vec<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Devices {
    pub fn start(n: usize) -> Devices {
        let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("device runtime");
            rt.block_on(async move {
                let mut servers = Vec::new();
                let mut addrs = Vec::new();
                for i in 0..n {
                    let device = SimDevice::new();
                    for a in 0..10u16 {
                        device.set_register(Table::Holding, a, 100 * i as u16 + a);
                    }
                    let server = device.bind_tcp("127.0.0.1:0").await.expect("device");
                    addrs.push(server.addr().expect("addr"));
                    servers.push((device, server));
                }
                addrs_tx.send(addrs).expect("addresses");
                let _ = stopped.await;
                drop(servers);
            });
        });
        let addrs = addrs_rx.recv().expect("devices started");
        Devices {
            addrs,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Devices {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn config_text(data: &Path, api: SocketAddr, broker: &Broker, devices: &[SocketAddr]) -> String {
    let mut text = format!(
        r#"[gateway]
id = "liveness"
data_dir = "{data}"

[api]
listen = "{api}"

[mqtt]
url = "{url}"
client_id = "{CLIENT_ID}"
keep_alive = "{KEEP_ALIVE_SECS}s"
"#,
        data = data.display(),
        url = broker.url(false),
    );
    for (i, addr) in devices.iter().enumerate() {
        text.push_str(&format!(
            "\n[[hosts]]\nhost = \"h{i}\"\nconnection = \"tcp://{addr}\"\npoll_interval = \"1s\"\ntimeout = \"500ms\"\n"
        ));
        for a in 0..10 {
            text.push_str(&format!(
                "\n[[hosts.items]]\nkey = \"r{a}\"\ntable = \"holding\"\naddress = {a}\ntype = \"u16\"\n"
            ));
        }
        if i == 0 {
            text.push_str(
                "\n[[hosts.items]]\nkey = \"setpoint\"\ntable = \"holding\"\naddress = 20\ntype = \"u16\"\nconfigurable = true\nlower_bound = 0\nupper_bound = 1000\n",
            );
        }
    }
    text
}

/// Writes [`SEEDED`] points of `h0/r0`, one a second up to two minutes ago,
/// through the store into the database before the gateway starts.
fn seed(config_path: &Path) -> i64 {
    let config = modbridge::config::load(config_path).expect("valid config");
    let store = Store::open(&config).expect("store");
    let id = store.item_id("h0", "r0").expect("item");
    let end = modbridge::clock::unix_now() - 120;
    let start = end - SEEDED + 1;
    let mut batch = Vec::with_capacity(10_000);
    for clock in start..=end {
        batch.push(Sample {
            item: id,
            clock,
            value: (clock % 1000) as f64,
        });
        if batch.len() == batch.capacity() {
            store.push(&batch);
            batch.clear();
        }
    }
    store.push(&batch);
    store.maintain().expect("seed committed and compacted");
    store.close().expect("close");
    start
}

/// The gateway process and what it runs against.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub broker: Broker,
    pub devices: Devices,
    pub api: SocketAddr,
    pub log: PathBuf,
    /// The oldest seeded clock.
    pub seeded_from: i64,
    child: Child,
}

impl Gateway {
    /// Seeds the history, starts the binary and waits until every host is up
    /// and the broker connected.
    pub async fn start() -> Gateway {
        let devices = Devices::start(HOSTS);
        let broker = Broker::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config_path = dir.path().join("modbridge.toml");
        std::fs::write(
            &config_path,
            config_text(&dir.path().join("data"), api, &broker, &devices.addrs),
        )
        .expect("write config");
        let seeded_from = seed(&config_path);
        let log = dir.path().join("modbridge.log");
        let child = Command::new(env!("CARGO_BIN_EXE_modbridge"))
            .args(["run", "-c", config_path.to_str().expect("path")])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start modbridge");
        let g = Gateway {
            dir,
            broker,
            devices,
            api,
            log,
            seeded_from,
            child,
        };
        g.wait_ready().await;
        g
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = get(self.api, "/health").await {
                let up = r.json().is_some_and(|h| {
                    h["mqtt"]["connected"] == true
                        && h["hosts"].as_array().is_some_and(|a| {
                            a.len() == HOSTS && a.iter().all(|x| x["link"] == "up")
                        })
                });
                if up {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not get every host up and the broker connected within 60 s; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident set size now, bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }

    /// The poll lateness figures of `/metrics`, summed over hosts.
    pub async fn lateness(&self) -> Lateness {
        let r = get(self.api, "/metrics").await.expect("metrics");
        Lateness::parse(&String::from_utf8_lossy(&r.body))
    }

    /// How often the broker saw the gateway connect, and whether it ever
    /// dropped it for a missed keep-alive.
    pub fn broker_sessions(&self) -> (usize, bool) {
        let log = self.broker.log();
        let connects = log
            .lines()
            .filter(|l| l.contains("New client connected") && l.contains(CLIENT_ID))
            .count();
        let timed_out = log
            .lines()
            .any(|l| l.contains(CLIENT_ID) && l.contains("exceeded timeout"));
        (connects, timed_out)
    }

    pub fn history_path(&self) -> String {
        format!(
            "/hosts/h0/items/r0/history?from={}&to={}&limit={ASKED}",
            self.seeded_from,
            modbridge::clock::unix_now() + 3600
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> std::io::Result<client::Response> {
    client::request(addr, "GET", path, &[], None, Duration::from_secs(60))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// Poll lateness from `/metrics`: polls, polls later than 50 ms, the
/// cumulative buckets, and the largest since start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lateness {
    pub polls: u64,
    /// (upper bound, polls at most that late), ascending.
    pub buckets: Vec<(f64, u64)>,
    pub max_seconds: f64,
    /// The host with the largest lateness since start-up.
    pub latest_host: String,
}

impl Lateness {
    pub fn parse(metrics: &str) -> Lateness {
        let mut l = Lateness::default();
        for line in metrics.lines() {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if name.starts_with("modbridge_poll_lateness_seconds_count") {
                l.polls += value as u64;
            } else if name.starts_with("modbridge_poll_lateness_max_seconds") {
                if value > l.max_seconds || l.latest_host.is_empty() {
                    l.max_seconds = value;
                    l.latest_host = name.split('"').nth(1).unwrap_or("").to_string();
                }
            } else if let Some(rest) = name.strip_prefix("modbridge_poll_lateness_seconds_bucket") {
                let Some(le) = rest.split("le=\"").nth(1).and_then(|s| s.split('"').next()) else {
                    continue;
                };
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                match l.buckets.iter_mut().find(|(b, _)| *b == bound) {
                    Some((_, n)) => *n += value as u64,
                    None => l.buckets.push((bound, value as u64)),
                }
            }
        }
        l.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        l
    }

    /// The figures of the polls between `before` and `self`.
    pub fn since(&self, before: &Lateness) -> Lateness {
        Lateness {
            polls: self.polls - before.polls,
            buckets: self
                .buckets
                .iter()
                .map(|(b, n)| {
                    let old = before
                        .buckets
                        .iter()
                        .find(|(ob, _)| ob == b)
                        .map_or(0, |(_, n)| *n);
                    (*b, n - old)
                })
                .collect(),
            max_seconds: self.max_seconds,
            latest_host: self.latest_host.clone(),
        }
    }

    /// Polls later than `seconds` (a bucket bound).
    pub fn later_than(&self, seconds: f64) -> u64 {
        let within = self
            .buckets
            .iter()
            .find(|(b, _)| (*b - seconds).abs() < 1e-9)
            .map_or(0, |(_, n)| *n);
        self.polls - within
    }

    /// The smallest bucket bound that at least `q` of the polls are within.
    pub fn quantile_bound(&self, q: f64) -> f64 {
        let want = (self.polls as f64 * q).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= want)
            .map_or(f64::INFINITY, |(b, _)| *b)
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct ClientFigures {
    pub histories: usize,
    pub history_bytes: usize,
    /// Answers other than 200 with exactly [`ASKED`] ascending points.
    pub bad_histories: Vec<String>,
    pub config_requests: usize,
    pub bad_config_requests: Vec<String>,
    /// The slowest history answer.
    pub slowest: Duration,
}

/// Runs [`CLIENTS`] history clients and one config request client against
/// the gateway for `window`, sampling the gateway's RSS; returns what the
/// clients saw and the largest RSS.
pub async fn run_load(g: &Gateway, window: Duration) -> (ClientFigures, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (addr, path, stop) = (g.api, g.history_path(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut f = ClientFigures::default();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match get(addr, &path).await {
                    Ok(r) => {
                        f.slowest = f.slowest.max(t.elapsed());
                        f.histories += 1;
                        f.history_bytes += r.body.len();
                        // Every client checks its first answer whole.
                        if f.histories == 1 || r.status != 200 {
                            if let Some(problem) = check_history(&r) {
                                f.bad_histories.push(format!("client {c}: {problem}"));
                            }
                        }
                    }
                    Err(e) => f.bad_histories.push(format!("client {c}: {e}")),
                }
            }
            f
        }));
    }
    {
        let (addr, stop) = (g.api, stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut f = ClientFigures::default();
            let mut target = 0;
            while !stop.load(Ordering::Relaxed) {
                target = (target + 1) % 1000;
                let body = format!("{{\"target\": {target}}}");
                let r = client::request(
                    addr,
                    "PUT",
                    "/hosts/h0/items/setpoint/config",
                    &[("Content-Type", "application/json")],
                    Some(body.as_bytes()),
                    Duration::from_secs(60),
                )
                .await;
                match r {
                    Ok(r) if r.status == 202 => f.config_requests += 1,
                    Ok(r) => f.bad_config_requests.push(format!(
                        "{}: {}",
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    )),
                    Err(e) => f.bad_config_requests.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            f
        }));
    }
    let end = Instant::now() + window;
    let mut rss_max = g.rss();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_max = rss_max.max(g.rss());
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = ClientFigures::default();
    for t in tasks {
        let f = t.await.expect("client");
        all.histories += f.histories;
        all.history_bytes += f.history_bytes;
        all.bad_histories.extend(f.bad_histories);
        all.config_requests += f.config_requests;
        all.bad_config_requests.extend(f.bad_config_requests);
        all.slowest = all.slowest.max(f.slowest);
    }
    (all, rss_max.max(g.rss()))
}

/// None for a 200 answer with [`ASKED`] ascending points, else what is wrong.
fn check_history(r: &client::Response) -> Option<String> {
    if r.status != 200 {
        return Some(format!(
            "status {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        ));
    }
    match serde_json::from_slice::<Vec<(i64, f64)>>(&r.body) {
        Ok(points) if points.len() != ASKED => Some(format!("{} points", points.len())),
        Ok(points) if points.windows(2).any(|w| w[0].0 > w[1].0) => {
            Some("points not ascending".into())
        }
        Ok(_) => None,
        Err(e) => Some(format!("not JSON points: {e}")),
    }
}
