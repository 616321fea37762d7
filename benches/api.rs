//! HTTP API latency: a gateway polling a simulated device, with two days of
//! 1-second history for one item, the API on loopback.
//!
//! `cargo bench --bench api` (optionally `-- DAYS`, default 2). Prints, per
//! request, the median and worst of 20 answers and the answer's size; then
//! the latency of `/health` while four full-day history queries run at once
//! (SQLite work runs on the blocking pool, so it should stay small).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use modbridge::api::client;
use modbridge::model::Table;
use modbridge::sim::SimDevice;
use modbridge::store::Sample;

async fn get(addr: SocketAddr, path: &str) -> (u16, usize, Duration) {
    let t = Instant::now();
    let r = client::request(addr, "GET", path, &[], None, Duration::from_secs(60))
        .await
        .expect("answer");
    (r.status, r.body.len(), t.elapsed())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let days: i64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    let device = SimDevice::new();
    device.set_register(Table::Input, 0, 215);
    let server = device.bind_tcp("127.0.0.1:0").await.expect("device");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"
[gateway]
id = "bench"
data_dir = "{data}"

[api]
listen = "127.0.0.1:0"

[[hosts]]
host = "pump"
connection = "tcp://{addr}"
poll_interval = "1s"

[[hosts.items]]
key = "temp"
table = "input"
address = 0
type = "i16"
scale = 0.1
unit = "degC"
"#,
        data = dir.path().join("data").display(),
        addr = server.addr().expect("addr"),
    );
    let path = dir.path().join("modbridge.toml");
    let config = modbridge::config::load_str(&path, &text).expect("config");
    let api = modbridge::api::Server::bind(&config.api)
        .await
        .expect("api");
    let addr = api.local_addr();
    let gateway = modbridge::gateway::open(config).await.expect("open");

    // History: one point a second for `days` days, ending a minute ago.
    let id = gateway.store.item_id("pump", "temp").expect("id");
    let end = modbridge::clock::unix_now() - 60;
    let start = end - days * 86_400;
    let t = Instant::now();
    let mut batch = Vec::with_capacity(10_000);
    for clock in start..end {
        batch.push(Sample {
            item: id,
            clock,
            value: 20.0 + ((clock % 3600) as f64 / 360.0).sin(),
        });
        if batch.len() == 10_000 {
            gateway.store.push(&batch);
            batch.clear();
        }
    }
    gateway.store.push(&batch);
    let store = gateway.store.clone();
    tokio::task::spawn_blocking(move || store.flush())
        .await
        .expect("join")
        .expect("flush");
    println!(
        "loaded {} points in {:.1} s",
        end - start,
        t.elapsed().as_secs_f64()
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(modbridge::daemon::run_gateway_with_api(
        gateway.clone(),
        Some(api),
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut cycles = gateway.host("pump").expect("host").subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(10), cycles.changed()).await;

    // The clients run on their own thread and runtime: the gateway's runtime
    // serves only the API and its own tasks, as in the daemon.
    let measured = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime")
            .block_on(measure(addr, start))
    });
    while !measured.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    measured.join().expect("clients");
    let _ = stop_tx.send(());
    run.await.expect("join").expect("stop");
    drop(server);
}

async fn measure(addr: SocketAddr, start: i64) {
    println!(
        "{:<58} {:>9} {:>9} {:>11}",
        "request", "median ms", "max ms", "bytes"
    );
    let requests = [
        "/hosts".to_string(),
        "/hosts/pump".to_string(),
        "/health".to_string(),
        "/metrics".to_string(),
        "/hosts/pump/items/temp/history?limit=1000".to_string(),
        "/hosts/pump/items/temp/history".to_string(),
        format!(
            "/hosts/pump/items/temp/history?from={start}&to={}",
            start + 3600
        ),
        format!("/hosts/pump/items/temp/trend?from={start}"),
        "/".to_string(),
    ];
    for path in &requests {
        let mut times = Vec::new();
        let mut size = 0;
        for _ in 0..20 {
            let (status, bytes, d) = get(addr, path).await;
            assert_eq!(status, 200, "{path}");
            size = bytes;
            times.push(d);
        }
        times.sort();
        println!(
            "GET {:<54} {:>9.2} {:>9.2} {:>11}",
            path,
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1]),
            size
        );
    }

    // /health while four full-day history queries run at once (each client
    // on its own thread, so that reading 2.7 MB answers does not delay the probe).
    let heavy: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime")
                    .block_on(async move {
                        let mut n = 0;
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_secs(3) {
                            get(addr, "/hosts/pump/items/temp/history").await;
                            n += 1;
                        }
                        n
                    })
            })
        })
        .collect();
    let mut times = Vec::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        times.push(get(addr, "/health").await.2);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut done = 0;
    for h in heavy {
        done += h.join().expect("join");
    }
    times.sort();
    println!(
        "GET /health during {done} concurrent full-day history answers: median {:.2} ms, p95 {:.2} ms, max {:.2} ms ({} samples)",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 95 / 100]),
        ms(times[times.len() - 1]),
        times.len()
    );
}
