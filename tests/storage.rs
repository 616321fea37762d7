//! Storage in the field's bad situations, against real SQLite files and the
//! real binary: a file system filled to 100 % (a small tmpfs, by another file
//! or by the database itself), the wall clock stepping back (libfaketime),
//! and `max_size` over days of trends (libfaketime moving the clock on).

#[path = "common/api_gateway.rs"]
mod api_gateway;
#[path = "support/broker.rs"]
mod broker;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api_gateway::{http, Reply};
use broker::{data_messages, signal, Broker, Upstream};
use modbridge::model::Table;
use modbridge::sim::{SimDevice, SimServer};

const BIN: &str = env!("CARGO_BIN_EXE_modbridge");
const ROOT: &str = "modbridge/box-st";

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop. None
/// (with the reason printed) where mounting is impossible.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs { dir }),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        eprintln!("skipped: cannot mount a tmpfs ({why}); the full-disk tests run as root");
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Writes `path` until the file system has no byte left.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).expect("filler");
    for size in [1 << 20, 64 << 10, 4 << 10, 512, 1] {
        let block = vec![0x5a_u8; size];
        while f.write_all(&block).is_ok() {}
    }
    let _ = f.sync_all();
}

fn free_port() -> SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    ([127, 0, 0, 1], port).into()
}

/// A device with `n` input registers counting up, served on loopback.
async fn device(n: u16) -> (SimDevice, SimServer, SocketAddr) {
    let device = SimDevice::new();
    let values: Vec<u16> = (0..n).collect();
    device.set_registers(Table::Input, 0, &values);
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let addr = server.addr().expect("addr");
    (device, server, addr)
}

/// The config: host `pump` with items `k0..` on input registers `0..n`,
/// polled every `poll`.
fn config(data: &Path, api: SocketAddr, device: (SocketAddr, &str), n: u16, extra: &str) -> String {
    let (device, poll) = device;
    let mut text = format!(
        r#"
[gateway]
id = "box-st"
data_dir = "{data}"

[api]
listen = "{api}"

{extra}

[[hosts]]
host = "pump"
connection = "tcp://{device}"
poll_interval = "{poll}"
timeout = "500ms"
"#,
        data = data.display()
    );
    for k in 0..n {
        text.push_str(&format!(
            "\n[[hosts.items]]\nkey = \"k{k}\"\ntable = \"input\"\naddress = {k}\ntype = \"u16\"\n"
        ));
    }
    text
}

/// The binary on `config`, logging to `log`, with extra environment.
fn spawn(config: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let out = std::fs::File::create(log).expect("log");
    Command::new(BIN)
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("run modbridge")
}

fn stop(mut child: Child) {
    signal(&child, "TERM");
    let _ = child.wait();
}

/// Asks `path` until `done` holds for the answer; panics with the last one
/// after `timeout`.
async fn ask_until(
    api: SocketAddr,
    path: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Reply) -> bool,
) -> Reply {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(api).is_ok() {
            let reply = http(api, "GET", path, &[], None).await;
            if done(&reply) {
                return reply;
            }
            last = Some(reply.body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}; last answer: {last:?}");
}

/// Clocks of the history answer at `path`.
fn clocks(reply: &Reply) -> Vec<i64> {
    reply
        .json()
        .as_array()
        .map(|a| a.iter().filter_map(|p| p[0].as_i64()).collect())
        .unwrap_or_default()
}

fn has_disk_full(reply: &Reply) -> bool {
    reply.status == 503
        && reply.json()["problems"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p.as_str().is_some_and(|s| s.contains("disk full")))
        })
}

fn now() -> i64 {
    modbridge::clock::unix_now()
}

#[tokio::test]
async fn a_file_system_filled_by_another_file_stops_nothing() {
    let Some(fs) = Tmpfs::mount("8m") else { return };
    let (_device, _server, addr) = device(20).await;
    let logs = tempfile::tempdir().expect("tempdir");
    let api = free_port();
    let path = logs.path().join("modbridge.toml");
    let text = config(
        &fs.path().join("data"),
        api,
        (addr, "1s"),
        20,
        "[storage]\ncommit_interval = \"200ms\"",
    );
    std::fs::write(&path, text).expect("config");
    let log = logs.path().join("log");
    let child = spawn(&path, &log, &[]);
    let history = "/hosts/pump/items/k3/history?limit=5";
    ask_until(api, history, Duration::from_secs(20), "history", |r| {
        !clocks(r).is_empty()
    })
    .await;

    fill(&fs.path().join("filler"));
    let full_at = now();
    // Within 30 s: samples from after the disk filled up are in history,
    // and /health says why it is degraded.
    ask_until(api, history, Duration::from_secs(30), "new samples", |r| {
        clocks(r).last().is_some_and(|c| *c > full_at + 2)
    })
    .await;
    ask_until(
        api,
        "/health",
        Duration::from_secs(30),
        "disk full",
        has_disk_full,
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("the file system is full"), "{text}");
    let metrics = http(api, "GET", "/metrics", &[], None).await.body;
    assert!(metrics.contains("modbridge_disk_full 1"), "{metrics}");

    // Room again: back to normal by itself.
    std::fs::remove_file(fs.path().join("filler")).expect("remove filler");
    let healthy = ask_until(api, "/health", Duration::from_secs(30), "health", |r| {
        !has_disk_full(r)
    })
    .await;
    assert_eq!(healthy.status, 200, "{}", healthy.body);
    let back = now();
    ask_until(
        api,
        history,
        Duration::from_secs(10),
        "samples after",
        |r| clocks(r).last().is_some_and(|c| *c > back),
    )
    .await;
    assert!(
        fs.path().join("data/modbridge.db-reserve").exists(),
        "the reserve is back"
    );
    stop(child);
}

#[tokio::test]
async fn a_database_that_fills_the_file_system_goes_on_with_the_newest() {
    let Some(fs) = Tmpfs::mount("3m") else { return };
    let (device, _server, addr) = device(400).await;
    let logs = tempfile::tempdir().expect("tempdir");
    let api = free_port();
    let path = logs.path().join("modbridge.toml");
    let data = fs.path().join("data");
    let text = config(
        &data,
        api,
        (addr, "100ms"),
        400,
        "[storage]\ncommit_interval = \"200ms\"",
    );
    std::fs::write(&path, text).expect("config");
    // The file system is already full of this database's history, as after
    // months: seeded through the library (a day ago) until it was full.
    {
        let cfg = modbridge::config::load(&path).expect("config");
        let store = modbridge::store::Store::open(&cfg).expect("store");
        let ids: Vec<u32> = (0..400)
            .map(|k| store.item_id("pump", &format!("k{k}")).expect("id"))
            .collect();
        let t0 = now() - 86_400;
        let mut rng = fastrand::Rng::with_seed(3);
        let mut c = 0;
        while free(fs.path()) > 100 << 10 && !store.stats().disk_full {
            let batch: Vec<_> = (0..10)
                .flat_map(|k| ids.iter().map(move |&item| (item, k)))
                .map(|(item, k)| modbridge::store::Sample {
                    item,
                    clock: t0 + c + k,
                    value: rng.f64(),
                })
                .collect();
            c += 10;
            store.push(&batch);
            store.flush().expect("seeding");
        }
        store.close().expect("close");
    }
    let log = logs.path().join("log");
    let child = spawn(&path, &log, &[]);
    // Values that do not compress: the database grows quickly.
    let start = now();
    let noise = tokio::spawn(async move {
        let mut rng = fastrand::Rng::with_seed(4);
        loop {
            let v: Vec<u16> = (0..400).map(|_| rng.u16(..)).collect();
            device.set_registers(Table::Input, 0, &v);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    ask_until(
        api,
        "/health",
        Duration::from_secs(60),
        "disk full",
        has_disk_full,
    )
    .await;
    // The new samples use up the last free bytes; then the oldest data goes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("oldest data deleted")
    {
        assert!(
            Instant::now() < deadline,
            "the database never filled the file system"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let full_at = now();
    let history = "/hosts/pump/items/k7/history?limit=3";
    ask_until(api, history, Duration::from_secs(30), "new samples", |r| {
        clocks(r).last().is_some_and(|c| *c > full_at + 3)
    })
    .await;
    let all = http(
        api,
        "GET",
        &format!("/hosts/pump/items/k7/history?from=0&to={}", now()),
        &[],
        None,
    )
    .await;
    let c = clocks(&all);
    assert!(
        c.first().is_some_and(|c| *c < start),
        "old history is still there, only the oldest went"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("store commit failed"),
        "no commit lost: {text}"
    );
    noise.abort();
    stop(child);
}

fn free(p: &Path) -> u64 {
    // `df`'s view: the test does not reach into the crate's internals.
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(p)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}

/// libfaketime's preload library, found where Debian installs it.
fn libfaketime() -> PathBuf {
    let found = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .chain([PathBuf::from("/usr/lib/faketime/libfaketime.so.1")])
        .find(|p| p.exists());
    found.expect("this test needs libfaketime: apt-get install -y faketime")
}

/// The binary under libfaketime: the offset in `offset_file` moves its wall
/// clock while it runs (its monotonic clock is left alone).
fn spawn_faked(config: &Path, log: &Path, offset_file: &Path) -> Child {
    let lib = libfaketime();
    spawn(
        config,
        log,
        &[
            ("LD_PRELOAD", lib.to_str().expect("path")),
            (
                "FAKETIME_TIMESTAMP_FILE",
                offset_file.to_str().expect("path"),
            ),
            ("FAKETIME_NO_CACHE", "1"),
            ("DONT_FAKE_MONOTONIC", "1"),
        ],
    )
}

fn set_offset(file: &Path, seconds: i64) {
    std::fs::write(file, format!("{seconds:+}\n")).expect("faketime offset");
}

#[tokio::test]
async fn a_clock_step_back_drops_nothing_and_is_reported() {
    let broker = Broker::start();
    let mut up =
        Upstream::connect(broker.port, "st-up", None, &[&format!("{ROOT}/#")], false).await;
    let (_device, _server, addr) = device(2).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let api = free_port();
    let path = dir.path().join("modbridge.toml");
    let mqtt = format!(
        "[storage]\ncommit_interval = \"200ms\"\n\n[mqtt]\nurl = \"{}\"\nkeep_alive = \"5s\"",
        broker.url(false)
    );
    std::fs::write(
        &path,
        config(&dir.path().join("data"), api, (addr, "1s"), 2, &mqtt),
    )
    .expect("config");
    let offset = dir.path().join("faketime");
    set_offset(&offset, 0);
    let log = dir.path().join("log");
    let child = spawn_faked(&path, &log, &offset);
    let root = ROOT.to_string();
    let msgs = up
        .wait("data before the step", Duration::from_secs(20), |m| {
            data_messages(m, &root).len() >= 2
        })
        .await;
    let before = data_messages(&msgs, ROOT).len();
    let newest = data_messages(&msgs, ROOT)
        .iter()
        .flat_map(|d| d.items.values().flatten().map(|p| p.0))
        .max()
        .expect("a clock");

    // The box restores a saved time an hour old.
    set_offset(&offset, -3600);
    let after_step = |m: &[broker::Msg]| -> Vec<i64> {
        data_messages(m, &root)[before..]
            .iter()
            .flat_map(|d| d.items.get("k0").into_iter().flatten().map(|p| p.0))
            .filter(|c| *c < newest - 3000)
            .collect()
    };
    let msgs = up
        .wait("data after the step", Duration::from_secs(20), |m| {
            after_step(m).len() >= 4
        })
        .await;
    let stepped = after_step(&msgs);
    assert!(
        stepped.windows(2).all(|w| w[0] <= w[1]),
        "in order after the step: {stepped:?}"
    );
    let seqs: Vec<u64> = data_messages(&msgs, ROOT)
        .iter()
        .filter_map(|d| d.seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no seq hole: {seqs:?}"
    );

    let metrics = http(api, "GET", "/metrics", &[], None).await.body;
    assert!(
        metrics.contains("modbridge_clock_steps_total{direction=\"back\"} 1"),
        "{metrics}"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.contains("wall clock stepped back"))
        .unwrap_or_else(|| panic!("the step is logged: {text}"));
    assert!(
        line.contains("WARN") && line.contains("step_seconds=3"),
        "{line}"
    );

    // History keeps both sides of the step, ascending by clock.
    let q = format!(
        "/hosts/pump/items/k0/history?from={}&to={}",
        newest - 7200,
        newest + 60
    );
    let h = clocks(&http(api, "GET", &q, &[], None).await);
    assert!(h.windows(2).all(|w| w[0] <= w[1]), "ascending: {h:?}");
    assert!(
        h.iter().any(|c| *c >= newest - 5) && h.iter().any(|c| *c < newest - 3000),
        "{h:?}"
    );
    stop(child);
}

/// The database's files in `dir` (the database, its WAL, the reserve),
/// bytes.
fn files_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("modbridge.db") && !name.ends_with("-shm")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The value of an unlabelled metric.
async fn metric(api: SocketAddr, name: &str) -> f64 {
    let body = http(api, "GET", "/metrics", &[], None).await.body;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in {body}"))
}

#[tokio::test]
async fn max_size_holds_over_days_of_trends_and_spares_unsent_data() {
    let mut broker = Broker::start();
    let mut up = Upstream::connect(
        broker.port,
        "st-cap",
        None,
        &[&format!("{ROOT}/data/#")],
        false,
    )
    .await;
    let n = 1000;
    let (_device, _server, addr) = device(n).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let api = free_port();
    let path = dir.path().join("modbridge.toml");
    let data = dir.path().join("data");
    let extra = format!(
        "[storage]\nmax_size = \"1MiB\"\ncommit_interval = \"500ms\"\n\n[mqtt]\nurl = \"{}\"\nkeep_alive = \"5s\"",
        broker.url(false)
    );
    std::fs::write(&path, config(&data, api, (addr, "1s"), n, &extra)).expect("config");
    let offset = dir.path().join("faketime");
    set_offset(&offset, 0);
    let child = spawn_faked(&path, &dir.path().join("log"), &offset);
    let cap = 1u64 << 20;
    // The clock moves on an hour every 1.2 s: every item gets a trend bucket
    // an hour, 1,000 buckets (about 90 KB) per step, so the cap is reached
    // by trends within a few steps, as after weeks at 1 s.
    let mut max_seen = 0;
    let mut hours = 0;
    let step = |hours: &mut i64| {
        *hours += 1;
        set_offset(&offset, *hours * 3600);
    };
    for _ in 0..24 {
        step(&mut hours);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        max_seen = max_seen.max(files_bytes(&data));
    }
    assert!(
        max_seen <= cap,
        "the files stayed under max_size: {max_seen}"
    );
    let real = now();
    let newest = real + hours * 3600;
    let h = clocks(
        &http(
            api,
            "GET",
            &format!(
                "/hosts/pump/items/k5/history?from={}&to={}",
                real - 3600,
                newest + 60
            ),
            &[],
            None,
        )
        .await,
    );
    assert!(
        h.iter().any(|c| *c >= newest - 3600),
        "the newest hours stay: {h:?}"
    );
    let trend = http(
        api,
        "GET",
        &format!(
            "/hosts/pump/items/k5/trend?from={}&to={}",
            real - 3600,
            newest + 60
        ),
        &[],
        None,
    )
    .await
    .json();
    let hours_kept = trend.as_array().map_or(0, Vec::len);
    assert!(
        hours_kept < 24,
        "older trends went: {hours_kept} hours kept"
    );
    assert_eq!(metric(api, "modbridge_dropped_unsent_total").await, 0.0);

    // The broker goes away: unsent data survives while older data goes.
    broker.stop();
    for _ in 0..8 {
        step(&mut hours);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        max_seen = max_seen.max(files_bytes(&data));
    }
    assert!(
        max_seen <= cap,
        "the files stayed under max_size: {max_seen}"
    );
    assert!(metric(api, "modbridge_outbox_messages").await > 0.0);
    assert_eq!(metric(api, "modbridge_dropped_unsent_total").await, 0.0);
    broker.restart();
    let root = ROOT.to_string();
    let msgs = up
        .wait(
            "the backlog after the outage",
            Duration::from_secs(30),
            |m| {
                let seqs: Vec<u64> = data_messages(m, &root)
                    .iter()
                    .filter_map(|d| d.seq)
                    .collect();
                seqs.len() > 10 && seqs.last() > seqs.first()
            },
        )
        .await;
    drop(msgs);
    // What was in flight at the outage arrives too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut seqs: Vec<u64> = data_messages(&up.messages(), ROOT)
        .iter()
        .filter_map(|d| d.seq)
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no seq hole: {} seqs, first {:?}",
        seqs.len(),
        seqs.first()
    );
    stop(child);
}
