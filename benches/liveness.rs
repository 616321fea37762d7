//! Liveness under load: `cargo bench --bench liveness` (optionally
//! `-- SECONDS`, default 30). The release binary polls 10 simulated devices
//! at 1 s with a real mosquitto while 8 clients ask for 200,000-point
//! histories and config requests arrive (see `tests/support/load.rs`).
//! Prints poll lateness p99 (as the bucket bound it falls in) and max from
//! the gateway's `/metrics`, the gateway's RSS growth during the load, and
//! whether the broker ever dropped it for a missed keep-alive.
//! Targets: p99 <= 50 ms, max <= 200 ms, RSS growth <= 20 MiB.

#[path = "../tests/support/broker.rs"]
mod broker;
#[path = "../tests/support/load.rs"]
mod load;

use std::time::Duration;

fn main() {
    let secs: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let g = load::Gateway::start().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let before = g.lateness().await;
        let rss_before = g.rss();
        let (clients, rss_max) = load::run_load(&g, Duration::from_secs(secs)).await;
        let during = g.lateness().await.since(&before);
        let (connects, timed_out) = g.broker_sessions();
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "load: {secs} s, {} history answers of {} points ({:.1} MB, slowest {:.0} ms), {} config requests; problems: {} history, {} config",
            clients.histories,
            load::ASKED,
            clients.history_bytes as f64 / 1e6,
            clients.slowest.as_secs_f64() * 1000.0,
            clients.config_requests,
            clients.bad_histories.len(),
            clients.bad_config_requests.len(),
        );
        println!(
            "poll lateness during the load: {} polls, p99 <= {} ms, max <= {} ms (histogram bucket bounds), {} later than 50 ms; largest since start-up {:.1} ms (host {}) (targets p99 <= 50 ms, max <= 200 ms)",
            during.polls,
            during.quantile_bound(0.99) * 1000.0,
            during.quantile_bound(1.0) * 1000.0,
            during.later_than(0.05),
            during.max_seconds * 1000.0,
            during.latest_host,
        );
        println!(
            "rss: {:.1} MiB before, {:.1} MiB at most during the load: growth {:.1} MiB (target <= 20 MiB)",
            mib(rss_before),
            mib(rss_max),
            mib(rss_max.saturating_sub(rss_before)),
        );
        println!(
            "mqtt: {connects} connection(s), keep-alive missed: {}",
            if timed_out { "YES" } else { "never" }
        );
    });
}
