//! MQTT uplink benchmark against a local mosquitto.
//!
//! 1. Drain: a backlog of N samples (default 1,000,000) already in the outbox,
//!    as an outage leaves it (one message per host and commit), is published
//!    until every message is acknowledged. Prints samples/s.
//! 2. Latency: 10 hosts x 100 registers polled every second from simulated
//!    devices with the default commit interval (1 s); prints the delay from a
//!    sample's clock (polls are aligned on whole seconds) to the PUBACK of the
//!    message carrying it.
//!
//! 3. With `--sparkplug`: the same drain over the Sparkplug B uplink alone
//!    (devices answering, as their DBIRTHs come before their historical
//!    DDATA), until its position passes the whole backlog, i.e. until the
//!    broker has confirmed reading every message.
//!
//! `cargo bench --bench mqtt [-- --samples N --points-per-message P --seconds S --skip-drain --skip-latency --sparkplug]`

#[path = "../tests/support/broker.rs"]
mod broker;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use modbridge::model::Table;
use modbridge::sim::SimDevice;
use modbridge::store::{Sample, Store, Uplink};

struct Args {
    samples: u64,
    points_per_message: u64,
    seconds: u64,
    drain: bool,
    latency: bool,
    sparkplug: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        samples: 1_000_000,
        points_per_message: 100,
        seconds: 30,
        drain: true,
        latency: true,
        sparkplug: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--samples" => a.samples = num("--samples"),
            "--points-per-message" => a.points_per_message = num("--points-per-message").max(1),
            "--seconds" => a.seconds = num("--seconds").max(5),
            "--skip-drain" => a.drain = false,
            "--skip-latency" => a.latency = false,
            "--sparkplug" => a.sparkplug = true,
            _ => {} // cargo bench passes --bench
        }
    }
    a
}

/// 10 hosts x 100 holding registers; `device` None: an address nobody answers.
fn config_text(
    data: &Path,
    broker: &str,
    device: Option<std::net::SocketAddr>,
    commit: &str,
    sparkplug: bool,
) -> String {
    let uplink = if sparkplug {
        format!("[sparkplug]\nurl = \"{broker}\"\ngroup_id = \"bench\"\n")
    } else {
        format!("[mqtt]\nurl = \"{broker}\"\n")
    };
    let mut s = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = \"{}\"\n[storage]\ncommit_interval = \"{commit}\"\n{uplink}",
        data.display()
    );
    for h in 0..10 {
        let conn = match device {
            Some(addr) => format!("tcp://{addr}"),
            None => "tcp://127.0.0.1:9".to_string(),
        };
        s.push_str(&format!(
            "\n[[hosts]]\nhost = \"dev{h}\"\nconnection = \"{conn}\"\nunit = {}\npoll_interval = \"1s\"\ntimeout = \"500ms\"\n",
            h + 1
        ));
        for r in 0..100 {
            s.push_str(&format!(
                "\n[[hosts.items]]\nkey = \"r{r}\"\ntable = \"holding\"\naddress = {r}\ntype = \"i16\"\nscale = 0.1\n"
            ));
        }
    }
    s
}

async fn start(
    path: &Path,
) -> (
    modbridge::gateway::Gateway,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), modbridge::daemon::DaemonError>>,
) {
    let config = modbridge::config::load(path).expect("config");
    let gateway = modbridge::gateway::open(config).await.expect("open");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(modbridge::daemon::run_gateway(gateway.clone(), async {
        let _ = rx.await;
    }));
    (gateway, tx, task)
}

async fn drain(args: &Args) {
    let broker = broker::Broker::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("modbridge.toml");
    // Sparkplug sends a device's history after its DBIRTH, which follows a
    // poll cycle that reached it: the devices answer there.
    let device = SimDevice::new();
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let answering = args.sparkplug.then(|| server.addr()).flatten();
    std::fs::write(
        &path,
        config_text(
            &dir.path().join("data"),
            &broker.url(false),
            answering,
            "1s",
            args.sparkplug,
        ),
    )
    .expect("write");

    // The backlog: per commit, `points_per_message` points of each host
    // (one message per host and commit, as polling leaves it).
    let config = modbridge::config::load(&path).expect("config");
    let store = Store::open(&config).expect("store");
    let ids: Vec<Vec<u32>> = config
        .hosts
        .iter()
        .map(|h| {
            h.items
                .iter()
                .map(|i| store.item_id(&h.host, &i.key).expect("id"))
                .collect()
        })
        .collect();
    let built = Instant::now();
    let per_commit = args.points_per_message * ids.len() as u64;
    let commits = args.samples.div_ceil(per_commit);
    let t0 = modbridge::clock::unix_now() - commits as i64 * 10;
    let mut batch = Vec::with_capacity(per_commit as usize);
    let mut total = 0u64;
    let mut clock = t0;
    'outer: for _ in 0..commits {
        batch.clear();
        // Each item gets points_per_message / 100 consecutive clocks.
        let rounds = args.points_per_message.div_ceil(100);
        for host in &ids {
            for round in 0..rounds {
                for (k, id) in host.iter().enumerate() {
                    if total >= args.samples {
                        break;
                    }
                    if (round * 100 + k as u64) >= args.points_per_message {
                        break;
                    }
                    batch.push(Sample {
                        item: *id,
                        clock: clock + round as i64,
                        // Over Sparkplug (report by exception) every point
                        // must differ from its item's previous one.
                        value: if args.sparkplug {
                            ((clock + round as i64 - t0) % 1000) as f64 * 0.1
                        } else {
                            (total % 1000) as f64 * 0.1
                        },
                    });
                    total += 1;
                }
            }
        }
        clock += rounds as i64;
        store.push(&batch);
        store.flush().expect("flush");
        if total >= args.samples {
            break 'outer;
        }
    }
    let (messages, last_seq) = if args.sparkplug {
        let backlog = store.backlog(Uplink::Sparkplug);
        (backlog, store.position(Uplink::Sparkplug) + backlog)
    } else {
        (store.outbox_len(), 0)
    };
    store.close().expect("close");
    if args.sparkplug {
        drain_sparkplug(&path, total, messages, last_seq).await;
        return;
    }
    println!(
        "drain: backlog of {total} samples in {messages} messages built in {:.1} s",
        built.elapsed().as_secs_f64()
    );

    let mut up = broker::Upstream::connect(
        broker.port,
        "bench-upstream",
        None,
        &["modbridge/bench/data/+"],
        true,
    )
    .await;
    let started = Instant::now();
    let (gateway, stop, task) = start(&path).await;
    let status = gateway.mqtt.clone();
    let deadline = Instant::now() + Duration::from_secs(600);
    while status.data_samples.load(Ordering::Relaxed) < total {
        assert!(Instant::now() < deadline, "drain did not finish in 600 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acked = status.data_messages.load(Ordering::Relaxed);
    up.wait(
        "every message at the upstream",
        Duration::from_secs(60),
        |m| m.len() as u64 >= messages,
    )
    .await;
    let _ = stop.send(());
    task.await.expect("join").expect("stop");
    println!(
        "drain: {total} samples ({acked} messages) acknowledged in {elapsed:.2} s = {:.0} samples/s, {:.0} messages/s (target >= 200,000 samples/s); {} messages at the upstream",
        total as f64 / elapsed,
        acked as f64 / elapsed,
        up.messages().len()
    );
}

/// Runs the gateway until the Sparkplug position passes `last_seq`.
async fn drain_sparkplug(path: &Path, total: u64, messages: u64, last_seq: u64) {
    let started = Instant::now();
    let (gateway, stop, task) = start(path).await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while gateway.store.position(Uplink::Sparkplug) < last_seq {
        assert!(Instant::now() < deadline, "drain did not finish in 600 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let status = gateway.sparkplug.clone();
    let sent = status.data_messages.load(Ordering::Relaxed);
    let _ = stop.send(());
    task.await.expect("join").expect("stop");
    println!(
        "drain over Sparkplug: {total} samples ({messages} outbox messages, {sent} DDATA) confirmed in {elapsed:.2} s = {:.0} samples/s (target >= 200,000 samples/s)",
        total as f64 / elapsed,
    );
}

async fn latency(args: &Args) {
    let broker = broker::Broker::start();
    let device = SimDevice::new();
    let values: Vec<u16> = (0..100).map(|i| 200 + i).collect();
    device.set_registers(Table::Holding, 0, &values);
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("modbridge.toml");
    std::fs::write(
        &path,
        config_text(
            &dir.path().join("data"),
            &broker.url(false),
            server.addr(),
            "1s",
            false,
        ),
    )
    .expect("write");
    let (gateway, stop, task) = start(&path).await;
    let status = gateway.mqtt.clone();
    // Warm-up, then a clean window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = status.delay_histogram();
    let samples_before = status.data_samples.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let after = status.delay_histogram();
    let samples = status.data_samples.load(Ordering::Relaxed) - samples_before;
    let _ = stop.send(());
    task.await.expect("join").expect("stop");
    let hist: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let n: u64 = hist.iter().sum();
    let q = |q: f64| {
        let rank = ((n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in hist.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return (i as u64 + 1) * modbridge::mqtt::DELAY_BUCKET_MS;
            }
        }
        hist.len() as u64 * modbridge::mqtt::DELAY_BUCKET_MS
    };
    println!(
        "latency: 10 hosts x 100 registers every 1 s, commit_interval 1s, {} s: {n} messages, {samples} samples; poll -> PUBACK p50 <= {} ms, p99 <= {} ms, max <= {} ms (target p99 <= 1050 ms)",
        args.seconds,
        q(0.5),
        q(0.99),
        q(1.0)
    );
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        if args.drain {
            drain(&args).await;
        }
        if args.latency {
            latency(&args).await;
        }
    });
}
