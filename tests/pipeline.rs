//! End to end in one process: config file -> daemon -> simulated device ->
//! history and trends in SQLite.

mod common;

use std::time::Duration;

use common::Running;
use modbridge::model::Table;
use modbridge::poll::ItemState;
use modbridge::sim::SimDevice;

fn config_text(addr: &str, data: &Path) -> String {
    format!(
        r#"
[gateway]
id = "box-1"
data_dir = "{data}"

[storage]
commit_interval = "200ms"

[[hosts]]
host = "pump"
connection = "tcp://{addr}"
poll_interval = "1s"
timeout = "300ms"

[[hosts.items]]
key = "temp"
table = "input"
address = 0
type = "i16"
scale = 0.1

[[hosts.items]]
key = "flow"
table = "input"
address = 1
type = "u16"

[[hosts.items]]
key = "broken"
table = "input"
address = 2
type = "u16"

[[hosts.items]]
key = "quiet"
table = "input"
address = 5
type = "u16"
deadband = 5.0
heartbeat = "1h"
"#,
        data = data.display()
    )
}

use std::path::Path;

#[tokio::test]
async fn polled_values_become_history_and_trends() {
    let device = SimDevice::new();
    device.set_registers(Table::Input, 0, &[215, 7, 0, 0, 0, 100]);
    device.faults(|f| {
        f.exception_at.insert((Table::Input, 2));
    });
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("modbridge.toml");
    std::fs::write(
        &path,
        config_text(
            &server.addr().expect("addr").to_string(),
            &dir.path().join("data"),
        ),
    )
    .expect("write");
    let config = modbridge::config::load(&path).expect("valid config");
    let gateway = modbridge::gateway::open(config.clone())
        .await
        .expect("open");
    let live = gateway.host("pump").expect("host");
    let mut cycles = live.subscribe();
    let run = Running::run(gateway);

    // Three cycles with changing values; "quiet" changes by less than its deadband.
    let mut seen = Vec::new();
    for (temp, quiet) in [(215u16, 100u16), (220, 102), (-10i16 as u16, 103)] {
        device.set_register(Table::Input, 0, temp);
        device.set_register(Table::Input, 5, quiet);
        let before_clock = live.lock().items[0].clock;
        // Wait for a cycle that read the new value (a cycle may already be under way).
        loop {
            tokio::time::timeout(Duration::from_secs(5), cycles.changed())
                .await
                .expect("a poll cycle within 5 s")
                .expect("cycles");
            let l = live.lock();
            let want = f64::from(temp as i16) * 0.1;
            if l.items[0].value.is_some_and(|v| (v - want).abs() < 1e-9)
                && l.items[0].clock != before_clock
            {
                seen.push(l.items[0].clock);
                break;
            }
            // Same second as the previous point: wait for the next cycle.
        }
    }
    {
        let l = live.lock();
        assert!(l.link_up);
        assert_eq!(l.items[1].state, ItemState::Ok);
        assert_eq!(l.items[2].state, ItemState::Error);
        assert!(l.items[2]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("illegal data address")));
        assert_eq!(l.items[2].value, None);
    }
    run.stop().await;

    let store = modbridge::store::Store::open(&config).expect("reopen");
    let temp = store.item_id("pump", "temp").expect("temp id");
    let history = store
        .history(temp, 0, i64::MAX, None)
        .await
        .expect("history");
    let values: Vec<f64> = history.iter().map(|(_, v)| *v).collect();
    // Every successful poll is a point; the three values we set appear in order.
    let pos = |x: f64| values.iter().position(|v| (v - x).abs() < 1e-9);
    let (a, b, c) = (pos(21.5), pos(22.0), pos(-1.0));
    assert!(a.is_some() && b.is_some() && c.is_some(), "{values:?}");
    assert!(a < b && b < c, "{values:?}");
    assert!(
        history.windows(2).all(|w| w[0].0 <= w[1].0),
        "ascending clocks"
    );
    let broken = store.item_id("pump", "broken").expect("id");
    assert!(store
        .history(broken, 0, i64::MAX, None)
        .await
        .expect("history")
        .is_empty());
    // The deadband keeps only the first point of "quiet" (100, 102, 103 are within 5).
    let quiet = store.item_id("pump", "quiet").expect("id");
    let q = store
        .history(quiet, 0, i64::MAX, None)
        .await
        .expect("history");
    assert_eq!(q.iter().map(|p| p.1).collect::<Vec<_>>(), vec![100.0]);
    // ...but its trend counts every good sample.
    let trend = store.trend(quiet, 0, i64::MAX).await.expect("trend");
    let num: u64 = trend.iter().map(|(_, b)| b.num).sum();
    assert!(num >= 3, "{trend:?}");
    let max = trend.iter().map(|(_, b)| b.max).fold(f64::MIN, f64::max);
    assert_eq!(max, 103.0);
    // Restart continuity: the last value is restored into the live state.
    store.close().expect("close");
    let again = modbridge::gateway::open(config).await.expect("open again");
    let l = again.host("pump").expect("host").lock().clone();
    assert_eq!(l.items[0].value, Some(-1.0));
    assert_eq!(l.items[0].state, ItemState::Unknown);
    again.store.close().expect("close");
    drop(server);
}
