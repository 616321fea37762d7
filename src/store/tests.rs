//! Store tests on real SQLite files in temporary directories.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::model::*;

pub(crate) fn item(key: &str) -> ItemSpec {
    ItemSpec {
        poll_interval: Duration::from_secs(1),
        ..ItemSpec::new(key, Table::Holding, 0, ValueType::I16)
    }
}

/// A config with `hosts` hosts `h0..` of `items` items `k0..` each.
pub(crate) fn config(dir: &Path, hosts: usize, items: usize, mqtt: bool) -> Config {
    let hosts = (0..hosts)
        .map(|h| HostSpec {
            poll_interval: Duration::from_secs(1),
            ..HostSpec::tcp(
                &format!("h{h}"),
                "127.0.0.1",
                502,
                (0..items).map(|i| item(&format!("k{i}"))).collect(),
            )
        })
        .collect();
    Config {
        mqtt: mqtt.then(|| MqttSpec::new("mqtt://127.0.0.1:1883", "gw")),
        ..Config::new(
            dir.join("modbridge.toml"),
            GatewaySpec::new("gw", dir.join("data")),
            hosts,
        )
    }
}

fn now() -> i64 {
    crate::clock::unix_now()
}

fn opts() -> StoreOptions {
    StoreOptions {
        busy_timeout: Duration::from_millis(200),
        ..StoreOptions::default()
    }
}

fn ids(store: &Store, cfg: &Config) -> Vec<Vec<ItemId>> {
    cfg.hosts
        .iter()
        .map(|h| {
            h.items
                .iter()
                .map(|i| store.item_id(&h.host, &i.key).unwrap())
                .collect()
        })
        .collect()
}

/// A `[sparkplug]` section for the store (it only needs to exist).
fn sparkplug() -> crate::model::SparkplugSpec {
    crate::model::SparkplugSpec::new("mqtt://127.0.0.1:1883", "plant", "gw")
}

/// One sample of `item` per commit, the value `round` at `t0 + round`.
fn commit_one_by_one(store: &Store, item: ItemId, t0: i64, rounds: std::ops::Range<i64>) {
    for round in rounds {
        store.push(&[s(item, t0 + round, round as f64)]);
        store.flush().unwrap();
    }
}

fn s(item: ItemId, clock: i64, value: f64) -> Sample {
    Sample { item, clock, value }
}

#[tokio::test]
async fn store_history_without_deadband_every_sample() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 2, false);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    let (a, b) = (id[0][0], id[0][1]);
    assert_ne!(a, b);
    let t0 = 1_700_000_000;
    for i in 0..100 {
        store.push(&[s(a, t0 + i, 5.0), s(b, t0 + i, i as f64 * 0.5)]);
    }
    store.flush().unwrap();
    let h = store.history(a, t0, t0 + 1000, None).await.unwrap();
    assert_eq!(h.len(), 100);
    assert!(h
        .iter()
        .enumerate()
        .all(|(i, p)| *p == (t0 + i as i64, 5.0)));
    let h = store.history(b, t0 + 10, t0 + 19, None).await.unwrap();
    assert_eq!(
        h,
        (10..20)
            .map(|i| (t0 + i, i as f64 * 0.5))
            .collect::<Vec<_>>()
    );
    let h = store.history(b, t0, t0 + 1000, Some(3)).await.unwrap();
    assert_eq!(h, vec![(t0 + 97, 48.5), (t0 + 98, 49.0), (t0 + 99, 49.5)]);
    assert_eq!(store.latest(b).unwrap(), Some((t0 + 99, 49.5)));
    let st = store.stats();
    assert_eq!(st.samples_received, 200);
    assert_eq!(st.history_points, 200);
    assert!(st.commits >= 1);
    assert!(st.db_bytes > 0);
    assert_eq!(st.outbox_messages, 0, "no mqtt: nothing to send");
    store.close().unwrap();
}

#[tokio::test]
async fn store_keeps_samples_whatever_their_clock() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 2, true);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    let (a, b) = (id[0][0], id[0][1]);
    let t0 = now() - 10_000;
    // Before: a's history in chunks, ending at t0 + 999.
    store.push(
        &(0..1000)
            .map(|i| s(a, t0 + i, i as f64))
            .collect::<Vec<_>>(),
    );
    store.maintain().unwrap();
    // The clock steps back by 600 s; then two samples in one second, and
    // one in the same second as the last point before the step.
    let back: Vec<Sample> = (0..5)
        .map(|i| s(a, t0 + 400 + i, -(i as f64)))
        .chain([
            s(a, t0 + 404, -10.0),
            s(a, t0 + 999, -20.0),
            s(b, t0, 1.0),
            s(b, t0, 2.0),
        ])
        .collect();
    store.push(&back);
    store.flush().unwrap();
    let expected = |h: &[(i64, f64)]| {
        assert_eq!(h.len(), 1000 + 7, "every sample kept");
        assert!(h.windows(2).all(|w| w[0].0 <= w[1].0), "ascending by clock");
        let at = |c: i64| {
            h.iter()
                .filter(|p| p.0 == c)
                .map(|p| p.1)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            at(t0 + 400),
            vec![400.0, 0.0],
            "old point first, then the new one"
        );
        assert_eq!(at(t0 + 404), vec![404.0, -4.0, -10.0]);
        assert_eq!(at(t0 + 999), vec![999.0, -20.0]);
    };
    // Uncompacted (journal) and compacted (chunks) give the same answer.
    expected(&store.history(a, t0, t0 + 2000, None).await.unwrap());
    let msgs = store.outbox_after(0, 100).await.unwrap();
    let sent: Vec<i64> = msgs
        .last()
        .iter()
        .flat_map(|m| m.items.iter().filter(|(k, _)| k == "k0"))
        .flat_map(|(_, p)| p.iter().map(|p| p.0 - t0))
        .collect();
    assert_eq!(
        sent,
        vec![400, 401, 402, 403, 404, 404, 999],
        "sent upstream in arrival order"
    );
    store.maintain().unwrap();
    expected(&store.history(a, t0, t0 + 2000, None).await.unwrap());
    assert_eq!(
        store.history(a, t0 + 404, t0 + 404, None).await.unwrap(),
        vec![(t0 + 404, 404.0), (t0 + 404, -4.0), (t0 + 404, -10.0)]
    );
    assert_eq!(
        store.history(b, t0, t0, None).await.unwrap(),
        vec![(t0, 1.0), (t0, 2.0)]
    );
    assert_eq!(
        store.history(a, t0, t0 + 2000, Some(2)).await.unwrap(),
        vec![(t0 + 999, 999.0), (t0 + 999, -20.0)]
    );
    // The deadband baseline is the newest point received, whatever its clock.
    assert_eq!(store.latest(a).unwrap(), Some((t0 + 999, -20.0)));
    store.close().unwrap();
    // A restart keeps them all.
    let store = Store::open_with(&cfg, opts()).unwrap();
    expected(&store.history(a, t0, t0 + 2000, None).await.unwrap());
    store.close().unwrap();
}

#[tokio::test]
async fn store_deadband_and_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 3, false);
    std::sync::Arc::make_mut(&mut cfg.hosts[0]).items[0]
        .extra_mut()
        .deadband = Some(0.5);
    std::sync::Arc::make_mut(&mut cfg.hosts[0]).items[1]
        .extra_mut()
        .deadband = Some(0.5);
    std::sync::Arc::make_mut(&mut cfg.hosts[0]).items[1]
        .extra_mut()
        .heartbeat = Some(Duration::from_secs(10));
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    let (db, dbhb, none) = (id[0][0], id[0][1], id[0][2]);
    let t0 = 1_700_000_000;
    let vals = [
        20.0, 20.1, 20.4, 20.5, 20.6, 19.9, 19.95, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0,
        20.0, 20.0, 20.0,
    ];
    for (i, v) in vals.iter().enumerate() {
        let c = t0 + i as i64;
        store.push(&[s(db, c, *v), s(dbhb, c, *v), s(none, c, *v)]);
    }
    store.flush().unwrap();
    let h = store.history(db, t0, t0 + 100, None).await.unwrap();
    // first; 20.5 (>= 0.5 from 20.0); 19.9 (0.6 from 20.5); 20.0 is only 0.1 from 19.9.
    assert_eq!(h, vec![(t0, 20.0), (t0 + 3, 20.5), (t0 + 5, 19.9)]);
    let h = store.history(dbhb, t0, t0 + 100, None).await.unwrap();
    // ... plus heartbeats 10 s after the last point: t0+15.
    assert_eq!(
        h,
        vec![(t0, 20.0), (t0 + 3, 20.5), (t0 + 5, 19.9), (t0 + 15, 20.0)]
    );
    assert_eq!(
        store.history(none, t0, t0 + 100, None).await.unwrap().len(),
        vals.len()
    );
    // Trends see every sample, also the suppressed ones.
    let tr = store.trend(db, t0, t0 + 100).await.unwrap();
    assert_eq!(tr.len(), 1);
    assert_eq!(tr[0].1.num, vals.len() as u64);
    assert_eq!(tr[0].1.min, 19.9);
    assert_eq!(tr[0].1.max, 20.6);
    store.close().unwrap();
}

#[tokio::test]
async fn store_trends_over_hours_including_current() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 1, false);
    let o = StoreOptions {
        trend_flush_interval: Duration::from_secs(3600),
        ..opts()
    };
    let store = Store::open_with(&cfg, o).unwrap();
    let a = ids(&store, &cfg)[0][0];
    let h0 = now() - now() % 3600 - 10 * 3600;
    // Three hours of one sample a minute, value = minute of the hour; then 10 minutes of a 4th hour.
    for hour in 0..3 {
        for m in 0..60 {
            store.push(&[s(a, h0 + hour * 3600 + m * 60, m as f64)]);
        }
    }
    for m in 0..10 {
        store.push(&[s(a, h0 + 3 * 3600 + m * 60, 100.0 + m as f64)]);
    }
    store.flush().unwrap();
    let tr = store.trend(a, h0 + 100, h0 + 4 * 3600).await.unwrap();
    assert_eq!(tr.len(), 4, "{tr:?}");
    for (i, (hour, b)) in tr.iter().take(3).enumerate() {
        assert_eq!(*hour, h0 + i as i64 * 3600);
        assert_eq!((b.num, b.min, b.avg, b.max), (60, 0.0, 29.5, 59.0));
    }
    assert_eq!(tr[3].0, h0 + 3 * 3600);
    assert_eq!(
        (tr[3].1.num, tr[3].1.min, tr[3].1.avg, tr[3].1.max),
        (10, 100.0, 104.5, 109.0)
    );
    // A range that excludes hours.
    let tr = store.trend(a, h0 + 3600, h0 + 3600).await.unwrap();
    assert_eq!(tr.len(), 1);
    assert_eq!(tr[0].0, h0 + 3600);
    // A late sample for a closed hour is merged into it (visible once written out).
    store.push(&[s(a, h0 + 30, 1000.0)]);
    store.close().unwrap();
    let store = Store::open_with(&cfg, opts()).unwrap();
    let tr = store.trend(a, h0, h0 + 4 * 3600).await.unwrap();
    assert_eq!(tr[0].1.num, 61);
    assert_eq!(tr[0].1.max, 1000.0);
    assert_eq!(tr[3].1.num, 10);
    store.close().unwrap();
}

#[tokio::test]
async fn store_restart_continuity() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2, 3, true);
    std::sync::Arc::make_mut(&mut cfg.hosts[0]).items[0]
        .extra_mut()
        .deadband = Some(1.0);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id1 = ids(&store, &cfg);
    let a = id1[0][0];
    let t0 = now() - 600;
    store.push(&[s(a, t0, 10.0), s(a, t0 + 1, 10.5), s(id1[1][2], t0, 7.0)]);
    store.flush().unwrap();
    let seqs1: Vec<u64> = store
        .outbox_after(0, 100)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs1.len(), 2);
    store.close().unwrap();
    // Pushes after close are refused.
    store.push(&[s(a, t0 + 2, 50.0)]);
    assert!(store.flush().is_err());
    drop(store);

    // Reopen with an extra host first in the list: ids stay.
    let mut cfg2 = cfg.clone();
    let mut extra = (*cfg.hosts[0]).clone();
    extra.host = "new".into();
    cfg2.hosts.insert(0, std::sync::Arc::new(extra));
    let store = Store::open_with(&cfg2, opts()).unwrap();
    let id2 = ids(&store, &cfg2);
    assert_eq!(id2[1], id1[0]);
    assert_eq!(id2[2], id1[1]);
    assert!(!id1.concat().contains(&id2[0][0]));
    assert_eq!(store.latest(a).unwrap(), Some((t0, 10.0)));
    assert_eq!(
        store.history(a, t0 - 10, t0 + 10, None).await.unwrap(),
        vec![(t0, 10.0)]
    );
    // Deadband state survived: 10.9 is within 1.0 of 10.0; 11.0 is not.
    store.push(&[s(a, t0 + 2, 10.9), s(a, t0 + 3, 11.0)]);
    store.flush().unwrap();
    assert_eq!(
        store.history(a, t0 - 10, t0 + 10, None).await.unwrap(),
        vec![(t0, 10.0), (t0 + 3, 11.0)]
    );
    // Trend of the current hour continues.
    let tr = store.trend(a, t0 - 3600, t0 + 3600).await.unwrap();
    let total: u64 = tr.iter().map(|b| b.1.num).sum();
    assert_eq!(total, 4);
    // seq keeps increasing, also after the old rows are sent and deleted.
    store.mark_sent(&seqs1).unwrap();
    store.maintain().unwrap();
    let m = store.outbox_after(0, 100).await.unwrap();
    assert_eq!(m.len(), 1);
    assert!(m[0].seq > *seqs1.iter().max().unwrap());
    store.close().unwrap();
    let store = Store::open_with(&cfg2, opts()).unwrap();
    store.push(&[s(a, t0 + 20, 99.0)]);
    store.flush().unwrap();
    let m2 = store.outbox_after(0, 100).await.unwrap();
    assert_eq!(m2.len(), 2);
    assert!(m2[1].seq > m[0].seq);
    assert_eq!(
        store
            .history(a, t0 - 10, t0 + 100, None)
            .await
            .unwrap()
            .len(),
        3
    );
    store.close().unwrap();
}

#[tokio::test]
async fn store_outbox_read_ahead_serves_every_message_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, 3, true);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    let t0 = now() - 3 * 3600;
    let mut clock = t0;
    let mut commit = |n: usize| {
        // One message per host and commit.
        for _ in 0..n {
            store.push(&[s(id[0][0], clock, 1.0), s(id[1][0], clock, 2.0)]);
            store.flush().unwrap();
            clock += 1;
        }
    };
    commit(400);
    let all: Vec<u64> = store
        .outbox_after(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(all.len(), 800);
    // Drain as the uplink does, with commits (read ahead by the writer)
    // and a start over (a reconnect) in between.
    let mut seen = Vec::new();
    let mut cursor = 0;
    let mut rounds = 0;
    loop {
        let msgs = store.outbox_after(cursor, 16).await.unwrap();
        if msgs.is_empty() {
            break;
        }
        for m in &msgs {
            assert!(m.seq > cursor, "ascending after the cursor");
            seen.push(m.seq);
            cursor = m.seq;
        }
        rounds += 1;
        if rounds == 20 {
            // Back to the start, as after a reconnect: everything again.
            cursor = 0;
            seen.clear();
        }
        if rounds % 7 == 0 {
            commit(3);
        }
        // Let read-ahead run now and then.
        tokio::task::yield_now().await;
    }
    let mut want: Vec<u64> = store
        .outbox_after(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    want.sort_unstable();
    assert!(want.len() > 800);
    assert_eq!(seen, want, "every unsent message exactly once, in order");
    // Caught up: the next commit's messages come from memory, and right.
    commit(1);
    let next = store.outbox_after(cursor, 16).await.unwrap();
    assert_eq!(next.len(), 2);
    assert!(next.iter().all(|m| m.seq > cursor));
    store.close().unwrap();
}

#[tokio::test]
async fn store_outbox_split_order_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, 3, true);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    let mut rx = store.commits();
    let before = *rx.borrow_and_update();
    let t0 = now() - 3 * 3600;
    // Host 0: 3 items x 1500 points = 4500 points -> 3 messages; host 1: 10 points.
    let mut batch = Vec::new();
    for i in 0..1500 {
        for &it in &id[0] {
            batch.push(s(it, t0 + i, (i % 100) as f64 / 10.0));
        }
    }
    for i in 0..10 {
        batch.push(s(id[1][1], t0 + i, -(i as f64)));
    }
    store.push(&batch);
    store.flush().unwrap();
    assert!(rx.has_changed().unwrap());
    assert!(*rx.borrow_and_update() > before);
    let msgs = store.outbox_after(0, 100).await.unwrap();
    assert_eq!(
        msgs.len(),
        4,
        "{:?}",
        msgs.iter()
            .map(|m| (m.seq, m.items.len()))
            .collect::<Vec<_>>()
    );
    assert_eq!(store.outbox_len(), 4);
    for w in msgs.windows(2) {
        assert!(w[1].seq > w[0].seq);
    }
    let mut per_key: std::collections::BTreeMap<(String, String), Vec<(i64, f64)>> =
        Default::default();
    for m in &msgs {
        let n: usize = m.items.iter().map(|(_, p)| p.len()).sum();
        assert!(n <= MAX_POINTS_PER_MESSAGE);
        assert!(crate::wire::data_message(m).len() < 256 * 1024);
        for (k, p) in &m.items {
            per_key
                .entry((m.host.clone(), k.clone()))
                .or_default()
                .extend(p);
        }
    }
    for ((h, _), pts) in &per_key {
        assert_eq!(pts.len(), if h == "h0" { 1500 } else { 10 });
        assert!(
            pts.windows(2).all(|w| w[0].0 < w[1].0),
            "clock order across messages"
        );
    }
    assert_eq!(
        per_key[&("h1".to_string(), "k1".to_string())][3],
        (t0 + 3, -3.0)
    );
    // Paging.
    let first = store.outbox_after(0, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let rest = store.outbox_after(first[1].seq, 10).await.unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].seq, msgs[2].seq);
    // Mark two sent: they disappear from the outbox at once.
    store.mark_sent(&[msgs[0].seq, msgs[1].seq]).unwrap();
    assert_eq!(store.outbox_len(), 2);
    assert_eq!(store.outbox_after(0, 10).await.unwrap().len(), 2);
    // Compaction: sent rows go, unsent stay (compacted); history unchanged.
    store.maintain().unwrap();
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let (rows, compacted): (i64, i64) = conn
        .query_row("SELECT count(*), sum(compacted) FROM journal", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((rows, compacted), (2, 2));
    let chunks: i64 = conn
        .query_row("SELECT count(*) FROM history", [], |r| r.get(0))
        .unwrap();
    assert!(chunks >= 4);
    for (hi, host) in id.iter().enumerate() {
        for (ii, &it) in host.iter().enumerate() {
            let h = store.history(it, t0, t0 + 10_000, None).await.unwrap();
            let key = (format!("h{hi}"), format!("k{ii}"));
            assert_eq!(&h, per_key.get(&key).unwrap_or(&Vec::new()), "{key:?}");
        }
    }
    assert_eq!(store.outbox_after(0, 10).await.unwrap().len(), 2);
    store.mark_sent(&[msgs[2].seq, msgs[3].seq]).unwrap();
    store.flush().unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
    assert_eq!(store.outbox_len(), 0);
    assert_eq!(
        store
            .history(id[0][2], t0, t0 + 10_000, None)
            .await
            .unwrap()
            .len(),
        1500
    );
    store.close().unwrap();
}

/// A sink that records how the points came.
#[derive(Default)]
struct Recorder {
    total: Option<usize>,
    points: Vec<(i64, f64)>,
    largest_batch: usize,
    ended: bool,
}

impl HistorySink for Recorder {
    fn start(&mut self, total: usize) -> bool {
        self.total = Some(total);
        true
    }
    fn points(&mut self, points: &[(i64, f64)]) -> bool {
        self.largest_batch = self.largest_batch.max(points.len());
        self.points.extend_from_slice(points);
        true
    }
    fn end(&mut self) {
        self.ended = true;
    }
}

#[tokio::test]
async fn store_history_limit_and_cap_are_applied_while_reading() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 2, false);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    let a = id[0][0];
    let t0 = now() - 30_000;
    let mut rng = fastrand::Rng::with_seed(7);
    let mut all = Vec::new();
    // Compacted chunks (with gaps between clocks), then an uncompacted tail.
    for round in 0..5 {
        let mut batch = Vec::new();
        // Rounds apart: clocks ascend from one to the next.
        let mut c = t0 + round * 5000;
        for _ in 0..2000 {
            c += rng.i64(1..3);
            let v = rng.f64();
            batch.push(s(a, c, v));
            batch.push(s(id[0][1], c, v));
            all.push((c, v));
        }
        store.push(&batch);
        if round < 4 {
            store.maintain().unwrap();
        } else {
            store.flush().unwrap();
        }
    }
    let last = all.last().unwrap().0;
    for _ in 0..200 {
        let from = t0 + rng.i64(-100..26_000);
        let to = from + rng.i64(0..26_000);
        let limit = match rng.u8(0..4) {
            0 => None,
            1 => Some(rng.usize(1..20)),
            _ => Some(rng.usize(1..9000)),
        };
        let mut want: Vec<_> = all
            .iter()
            .copied()
            .filter(|p| p.0 >= from && p.0 <= to)
            .collect();
        if let Some(l) = limit {
            want.drain(..want.len().saturating_sub(l));
        }
        let got = store.history(a, from, to, limit).await.unwrap();
        assert_eq!(got.len(), want.len(), "{from}..{to} limit {limit:?}");
        let first_wrong = got.iter().zip(&want).position(|(g, w)| g != w);
        assert_eq!(
            first_wrong,
            None,
            "{from}..{to} limit {limit:?}: {:?}",
            first_wrong.map(|i| (
                &got[i.saturating_sub(2)..(i + 2).min(got.len())],
                &want[i.saturating_sub(2)..(i + 2).min(want.len())]
            ))
        );
    }
    // Streamed: the size first, then batches, the newest `limit` ascending.
    let limit = HistoryLimit {
        newest: Some(9000),
        cap: Some(9000),
    };
    let (n, r) = store
        .history_with(a, t0, last, limit, Recorder::default())
        .await
        .unwrap();
    assert_eq!(n, Ok(9000));
    assert_eq!(r.total, Some(9000));
    assert!(r.ended);
    assert!(r.largest_batch <= 4096, "{}", r.largest_batch);
    assert_eq!(r.points, all[all.len() - 9000..].to_vec());
    // Over the cap: refused before anything is read out.
    for newest in [None, Some(9001)] {
        let limit = HistoryLimit {
            newest,
            cap: Some(9000),
        };
        let (n, r) = store
            .history_with(a, t0, last, limit, Recorder::default())
            .await
            .unwrap();
        assert!(
            matches!(n, Err(OverCap { at_least }) if at_least > 9000),
            "{newest:?}: {n:?}"
        );
        assert_eq!(r.total, None);
        assert!(r.points.is_empty());
    }
    // Exactly at the cap, and under it without a limit.
    let tail_from = all[all.len() - 9000].0;
    let limit = HistoryLimit {
        newest: None,
        cap: Some(9000),
    };
    let (n, _) = store
        .history_with(a, tail_from, last, limit, Recorder::default())
        .await
        .unwrap();
    assert_eq!(n, Ok(9000));
    store.close().unwrap();
}

#[tokio::test]
async fn store_history_spans_chunks_and_journal() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 2, false);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    let a = id[0][0];
    let t0 = now() - 5000;
    let mut rng = fastrand::Rng::with_seed(1);
    let mut expect = Vec::new();
    // Three compacted rounds (random values -> several chunks) then a journal tail.
    for round in 0..4 {
        let mut batch = Vec::new();
        for i in 0..1000 {
            let c = t0 + round * 1000 + i;
            let v = if round % 2 == 0 {
                rng.f64()
            } else {
                (i % 50) as f64
            };
            batch.push(s(a, c, v));
            batch.push(s(id[0][1], c, 1.0 + i as f64));
            expect.push((c, v));
        }
        store.push(&batch);
        if round < 3 {
            store.maintain().unwrap();
        } else {
            store.flush().unwrap();
        }
    }
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let chunks: i64 = conn
        .query_row(
            "SELECT count(*) FROM history WHERE item_id = ?1",
            [a],
            |r| r.get(0),
        )
        .unwrap();
    assert!(chunks > 3, "{chunks} chunks");
    let uncompacted: i64 = conn
        .query_row(
            "SELECT count(*) FROM journal WHERE compacted = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(uncompacted >= 1);
    assert_eq!(
        store.history(a, t0, t0 + 10_000, None).await.unwrap(),
        expect
    );
    // Ranges inside and across boundaries.
    let (lo, hi) = (t0 + 1500, t0 + 3200);
    let want: Vec<_> = expect
        .iter()
        .copied()
        .filter(|p| p.0 >= lo && p.0 <= hi)
        .collect();
    assert_eq!(store.history(a, lo, hi, None).await.unwrap(), want);
    let want_last: Vec<_> = want[want.len() - 7..].to_vec();
    assert_eq!(store.history(a, lo, hi, Some(7)).await.unwrap(), want_last);
    assert_eq!(
        store.history(a, t0 + 2999, t0 + 3000, None).await.unwrap(),
        expect[2999..=3000].to_vec()
    );
    assert!(store
        .history(a, t0 + 20_000, t0 + 30_000, None)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .history(9999, t0, t0 + 30_000, None)
        .await
        .unwrap()
        .is_empty());
    // Restart: last point restored from the journal, history the same.
    store.close().unwrap();
    let store = Store::open_with(&cfg, opts()).unwrap();
    assert_eq!(store.latest(a).unwrap(), expect.last().copied());
    store.maintain().unwrap();
    assert_eq!(
        store.history(a, t0, t0 + 10_000, None).await.unwrap(),
        expect
    );
    store.close().unwrap();
}

#[tokio::test]
async fn store_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 1, false);
    cfg.storage.history_retention = Duration::from_secs(86400);
    cfg.storage.trend_retention = Duration::from_secs(3 * 86400);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let a = ids(&store, &cfg)[0][0];
    let n = now();
    let old = n - 2 * 86400;
    let ancient = n - 5 * 86400;
    store.push(&[
        s(a, ancient, 1.0),
        s(a, old, 2.0),
        s(a, n - 100, 3.0),
        s(a, n - 50, 4.0),
    ]);
    store.maintain().unwrap();
    // The trend of the ancient hour is written when its hour closed; retention
    // runs again on the next maintain.
    store.maintain().unwrap();
    assert_eq!(
        store.history(a, 0, n, None).await.unwrap(),
        vec![(n - 100, 3.0), (n - 50, 4.0)]
    );
    let tr = store.trend(a, 0, n).await.unwrap();
    let hours: Vec<i64> = tr.iter().map(|t| t.0).collect();
    assert!(!hours.contains(&(ancient - ancient % 3600)), "{hours:?}");
    assert!(hours.contains(&(old - old % 3600)));
    store.close().unwrap();
}

#[tokio::test]
async fn store_max_size_drops_sent_history_first_then_unsent() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 200, true);
    cfg.storage.max_size = 1 << 30;
    // No reserve file: the figures below are the database's alone.
    let o = StoreOptions {
        disk_reserve: Some(0),
        ..opts()
    };
    let store = Store::open_with(&cfg, o).unwrap();
    let id = ids(&store, &cfg);
    let t0 = now() - 20_000;
    let mut rng = fastrand::Rng::with_seed(5);
    let mut batch = Vec::new();
    for c in 0..1500 {
        for &it in &id[0] {
            batch.push(s(it, t0 + c, rng.f64()));
        }
    }
    store.push(&batch);
    store.maintain().unwrap();
    let all: Vec<u64> = store
        .outbox_after(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|m| m.seq)
        .collect();
    store.mark_sent(&all).unwrap();
    store.maintain().unwrap();
    assert_eq!(store.outbox_len(), 0);
    // Unsent: 200 items x 100 clocks.
    batch.clear();
    for c in 1500..1600 {
        for &it in &id[0] {
            batch.push(s(it, t0 + c, rng.f64()));
        }
    }
    store.push(&batch);
    store.flush().unwrap();
    let unsent = store.outbox_len();
    assert!(unsent >= 10);
    let big = store.stats().db_bytes;
    assert!(big > 3_000_000, "{big}");

    // Shrink the cap: history goes, the unsent outbox stays.
    cfg.storage.max_size = big / 3;
    store.reconfigure(&cfg).await.unwrap();
    store.maintain().unwrap();
    let st = store.stats();
    assert!(
        st.db_bytes <= cfg.storage.max_size,
        "{} > {}",
        st.db_bytes,
        cfg.storage.max_size
    );
    assert_eq!(st.dropped_unsent, 0);
    assert_eq!(store.outbox_len(), unsent);
    let h = store.history(id[0][0], 0, now(), None).await.unwrap();
    assert!(h.len() < 1600 && h.len() >= 100, "{}", h.len());
    assert_eq!(h.last().unwrap().0, t0 + 1599, "the newest history stays");

    // Far too small: all history, then the oldest unsent messages go, counted.
    // (the empty schema alone takes about 100 kB)
    cfg.storage.max_size = 200_000;
    store.reconfigure(&cfg).await.unwrap();
    store.maintain().unwrap();
    let st = store.stats();
    assert!(st.dropped_unsent > 0);
    assert!(store.outbox_len() < unsent);
    let left = store.outbox_after(0, 10_000).await.unwrap();
    assert!(!left.is_empty(), "only as much as needed is dropped");
    assert_eq!(
        left.last().unwrap().seq,
        *all.last().unwrap() + unsent,
        "the newest stay"
    );
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let chunks: i64 = conn
        .query_row("SELECT count(*) FROM history", [], |r| r.get(0))
        .unwrap();
    assert_eq!(chunks, 0);
    assert!(st.db_bytes <= cfg.storage.max_size, "{}", st.db_bytes);
    store.close().unwrap();
}

#[tokio::test]
async fn store_commit_failure_keeps_data_and_retries() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 1, true);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let a = ids(&store, &cfg)[0][0];
    let t0 = now() - 1000;
    // Another connection holds the write lock: commits fail with SQLITE_BUSY.
    let blocker = rusqlite::Connection::open(store.path()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    store.push(&[s(a, t0, 1.0), s(a, t0 + 1, 2.0)]);
    assert!(matches!(store.flush(), Err(StoreError::Commit(_))));
    store.push(&[s(a, t0 + 2, 3.0)]);
    assert!(store.flush().is_err());
    assert!(store.stats().commit_errors >= 2);
    assert_eq!(store.latest(a).unwrap(), Some((t0 + 2, 3.0)));
    blocker.execute_batch("COMMIT").unwrap();
    store.flush().unwrap();
    assert_eq!(
        store.history(a, t0, t0 + 10, None).await.unwrap(),
        vec![(t0, 1.0), (t0 + 1, 2.0), (t0 + 2, 3.0)]
    );
    let msgs = store.outbox_after(0, 10).await.unwrap();
    assert_eq!(
        msgs.len(),
        1,
        "one message, no seq burnt by the failed commits"
    );
    assert_eq!(msgs[0].seq, 1);
    store.close().unwrap();
}

#[tokio::test]
async fn store_memory_cap_drops_oldest_when_commits_fail() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 1, true);
    let o = StoreOptions {
        max_buffered: 1000,
        ..opts()
    };
    let store = Store::open_with(&cfg, o).unwrap();
    let a = ids(&store, &cfg)[0][0];
    let t0 = now() - 10_000;
    let blocker = rusqlite::Connection::open(store.path()).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    for round in 0..3 {
        let batch: Vec<_> = (0..800)
            .map(|i| s(a, t0 + round * 800 + i, i as f64))
            .collect();
        store.push(&batch);
        assert!(store.flush().is_err());
    }
    blocker.execute_batch("COMMIT").unwrap();
    store.flush().unwrap();
    let st = store.stats();
    assert_eq!(st.dropped_unsent, 1400);
    let h = store.history(a, 0, now(), None).await.unwrap();
    assert_eq!(h.len(), 1000);
    assert_eq!(h[0].0, t0 + 1400);
    assert_eq!(h.last().unwrap().0, t0 + 2399);
    store.close().unwrap();
}

#[tokio::test]
async fn store_crash_after_flush_keeps_flushed_data() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 1, true);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let a = ids(&store, &cfg)[0][0];
    let t0 = now() - 100;
    store.push(&[s(a, t0, 1.0), s(a, t0 + 1, 2.0)]);
    store.flush().unwrap();
    store.push(&[s(a, t0 + 2, 3.0)]);
    store.kill();
    drop(store);
    let store = Store::open_with(&cfg, opts()).unwrap();
    assert_eq!(
        store.history(a, t0, t0 + 10, None).await.unwrap(),
        vec![(t0, 1.0), (t0 + 1, 2.0)]
    );
    assert_eq!(store.latest(a).unwrap(), Some((t0 + 1, 2.0)));
    assert_eq!(store.outbox_len(), 1);
    // Dropping the last handle without close commits (a clean drop).
    store.push(&[s(a, t0 + 5, 5.0)]);
    drop(store);
    let store = Store::open_with(&cfg, opts()).unwrap();
    assert_eq!(store.latest(a).unwrap(), Some((t0 + 5, 5.0)));
    store.close().unwrap();
}

#[tokio::test]
async fn store_reconfigure_adds_items_and_deadbands() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 1, false);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let a = ids(&store, &cfg)[0][0];
    assert!(store.item_id("h0", "k1").is_none());
    let t0 = now() - 100;
    store.push(&[s(a, t0, 1.0), s(a, t0 + 1, 1.1)]);
    store.flush().unwrap();
    std::sync::Arc::make_mut(&mut cfg.hosts[0])
        .items
        .push(item("k1"));
    std::sync::Arc::make_mut(&mut cfg.hosts[0]).items[0]
        .extra_mut()
        .deadband = Some(5.0);
    store.reconfigure(&cfg).await.unwrap();
    let b = store.item_id("h0", "k1").unwrap();
    assert_ne!(a, b);
    store.push(&[s(a, t0 + 2, 1.2), s(b, t0 + 2, 7.0), s(a, t0 + 3, 9.0)]);
    store.flush().unwrap();
    assert_eq!(
        store.history(a, t0, t0 + 10, None).await.unwrap(),
        vec![(t0, 1.0), (t0 + 1, 1.1), (t0 + 3, 9.0)]
    );
    assert_eq!(
        store.history(b, t0, t0 + 10, None).await.unwrap(),
        vec![(t0 + 2, 7.0)]
    );
    // Removing an item: its samples are ignored, its history stays.
    std::sync::Arc::make_mut(&mut cfg.hosts[0]).items.remove(0);
    store.reconfigure(&cfg).await.unwrap();
    assert!(store.item_id("h0", "k0").is_none());
    store.push(&[s(a, t0 + 4, 100.0)]);
    store.flush().unwrap();
    assert_eq!(store.history(a, t0, t0 + 10, None).await.unwrap().len(), 3);
    store.close().unwrap();
}

#[test]
fn store_open_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 1, false);
    std::fs::write(dir.path().join("file"), b"x").unwrap();
    cfg.gateway.data_dir = dir.path().join("file").join("sub");
    let e = Store::open_with(&cfg, opts()).err().unwrap();
    assert!(matches!(e, StoreError::DataDir { .. }), "{e}");
    assert!(
        e.to_string().contains("cannot create data directory"),
        "{e}"
    );
    // Not a database.
    cfg.gateway.data_dir = dir.path().join("bad");
    std::fs::create_dir_all(&cfg.gateway.data_dir).unwrap();
    std::fs::write(cfg.gateway.data_dir.join("modbridge.db"), vec![7u8; 8192]).unwrap();
    let e = Store::open_with(&cfg, opts()).err().unwrap();
    assert!(e.to_string().contains("modbridge.db"), "{e}");
    // A newer schema is refused.
    cfg.gateway.data_dir = dir.path().join("newer");
    std::fs::create_dir_all(&cfg.gateway.data_dir).unwrap();
    let c = rusqlite::Connection::open(cfg.gateway.data_dir.join("modbridge.db")).unwrap();
    c.pragma_update(None, "user_version", 99).unwrap();
    drop(c);
    let e = Store::open_with(&cfg, opts()).err().unwrap();
    assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
}

#[tokio::test]
async fn store_schema_and_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 1, false);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let v: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let av: i32 = conn
        .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
        .unwrap();
    assert_eq!(av, 2, "incremental");
    let jm: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(jm, "wal");
    // Every connection: FULL (2) sync, the busy timeout, the WAL size limit.
    let limit = schema::JOURNAL_SIZE_LIMIT;
    let busy = opts().busy_timeout.as_millis() as i64;
    let expected = |busy_ms: i64| (2, busy_ms, limit);
    let writer = schema::open_write(store.path(), opts().busy_timeout).unwrap();
    assert_eq!(schema::pragmas(&writer), expected(busy), "the writer's");
    let control = schema::open_control(store.path(), Duration::from_secs(10), 256).unwrap();
    assert_eq!(schema::pragmas(&control), expected(10_000), "reconfigure's");
    let running = store.connection_pragmas().await.unwrap();
    assert_eq!(running.len(), super::READERS + 1);
    for (i, p) in running.iter().enumerate() {
        assert_eq!(*p, expected(busy), "reader connection {i}");
    }
    let ledger = crate::ledger::Ledger::open(store.path(), false).unwrap();
    let ledger_busy = crate::ledger::BUSY_TIMEOUT.as_millis() as i64;
    for (i, p) in ledger
        .connection_pragmas()
        .await
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(*p, expected(ledger_busy), "ledger connection {i}");
    }
    // A plain connection has SQLite's defaults: the checks above can fail.
    assert_ne!(schema::pragmas(&conn), expected(busy));
    store.close().unwrap();
}

#[test]
fn store_json_message_format() {
    let m = OutboxMessage {
        seq: 42,
        host: "pump".into(),
        items: vec![
            (
                "modbus.pump.F1345.3.30004".into(),
                vec![(1_700_000_000, 21.3), (1_700_000_010, 21.0)],
            ),
            (
                "b".into(),
                vec![(1_700_000_000, -0.5), (1_700_000_001, 1e300)],
            ),
        ],
    };
    let j = crate::wire::data_message(&m);
    assert_eq!(
        j,
        r#"{"seq":42,"host":"pump","items":{"modbus.pump.F1345.3.30004":[[1700000000,21.3],[1700000010,21]],"b":[[1700000000,-0.5],[1700000001,1e+300]]}}"#
    );
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["items"]["b"][1][1].as_f64(), Some(1e300));
}

#[tokio::test]
async fn store_writer_wakes_once_per_interval() {
    // Pushes do not wake the writer: with a 1 s interval, 2 s of pushes give at most 3 commits.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 1, false);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let a = ids(&store, &cfg)[0][0];
    let t0 = now() - 10_000;
    let start = std::time::Instant::now();
    let mut i = 0;
    while start.elapsed() < Duration::from_secs(2) {
        store.push(&[s(a, t0 + i, i as f64)]);
        i += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    let commits = store.stats().commits;
    assert!((1..=3).contains(&commits), "{commits} commits");
    store.close().unwrap();
    let store = Store::open_with(&cfg, opts()).unwrap();
    assert_eq!(
        store
            .history(a, t0, t0 + 100_000, None)
            .await
            .unwrap()
            .len() as i64,
        i
    );
    store.close().unwrap();
}

#[tokio::test]
async fn store_messages_split_by_json_size_with_long_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 1500, true);
    for (i, it) in std::sync::Arc::make_mut(&mut cfg.hosts[0])
        .items
        .iter_mut()
        .enumerate()
    {
        it.key = format!("{i:0>128}");
    }
    let store = Store::open_with(&cfg, opts()).unwrap();
    let t0 = now() - 100;
    let batch: Vec<_> = cfg.hosts[0]
        .items
        .iter()
        .map(|it| s(store.item_id("h0", &it.key).unwrap(), t0, 1.0 / 3.0))
        .collect();
    store.push(&batch);
    store.flush().unwrap();
    let msgs = store.outbox_after(0, 100).await.unwrap();
    assert!(
        msgs.len() >= 2,
        "split by size although below the point limit"
    );
    let mut n = 0;
    for m in &msgs {
        let j = crate::wire::data_message(m);
        assert!(j.len() <= MAX_MESSAGE_JSON_BYTES, "{}", j.len());
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["seq"].as_u64(), Some(m.seq));
        n += v["items"].as_object().unwrap().len();
    }
    assert_eq!(n, 1500);
    store.close().unwrap();
}

#[tokio::test]
async fn store_history_consistent_during_ingest_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2, 50, false);
    let o = StoreOptions {
        compact_points: 5_000,
        compact_budget: 20_000,
        ..opts()
    };
    let store = Store::open_with(&cfg, o).unwrap();
    let id = ids(&store, &cfg);
    let a = id[0][7];
    let t0 = now() - 100_000;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let store = store.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let mut last_len = 0;
            let mut queries = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let h = rt
                    .block_on(store.history(a, t0, t0 + 100_000, None))
                    .unwrap();
                assert!(
                    h.windows(2).all(|w| w[1].0 == w[0].0 + 1),
                    "gap or duplicate"
                );
                assert!(h.is_empty() || h[0].0 == t0);
                assert!(h.len() >= last_len, "points vanished");
                last_len = h.len();
                queries += 1;
            }
            queries
        })
    };
    for round in 0..20 {
        let mut batch = Vec::new();
        for c in 0..500 {
            for host in &id {
                for &it in host {
                    batch.push(s(it, t0 + round * 500 + c, (c % 17) as f64));
                }
            }
        }
        store.push(&batch);
        if round % 3 == 0 {
            store.maintain().unwrap();
        } else {
            store.flush().unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let queries = reader.join().unwrap();
    assert!(queries > 0);
    assert_eq!(
        store
            .history(a, t0, t0 + 100_000, None)
            .await
            .unwrap()
            .len(),
        10_000
    );
    store.close().unwrap();
}

/// Pushes an hour of one sample a minute for every item, starting at `hour`.
fn push_hour(store: &Store, items: &[ItemId], hour: i64) {
    let mut batch = Vec::with_capacity(items.len() * 60);
    for m in 0..60 {
        for (i, &it) in items.iter().enumerate() {
            batch.push(s(
                it,
                hour + m * 60,
                20.0 + ((m as usize + i) % 10) as f64 * 0.1,
            ));
        }
    }
    store.push(&batch);
}

/// Sends (marks) every outbox message, checking that `seq` has no hole.
async fn send_all(store: &Store, next_seq: &mut u64) {
    loop {
        let msgs = store.outbox_after(0, 1000).await.unwrap();
        if msgs.is_empty() {
            return;
        }
        let seqs: Vec<u64> = msgs.iter().map(|m| m.seq).collect();
        for &q in &seqs {
            assert_eq!(q, *next_seq, "no seq hole");
            *next_seq += 1;
        }
        store.mark_sent(&seqs).unwrap();
        store.flush().unwrap();
    }
}

#[tokio::test]
async fn store_size_cap_holds_over_days_and_spares_unsent_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 2, 100, true);
    cfg.storage.max_size = 2 << 20;
    let store = Store::open_with(&cfg, opts()).unwrap();
    let items: Vec<ItemId> = ids(&store, &cfg).concat();
    let hours = 60;
    let first = (now() - (hours + 12) * 3600) / 3600 * 3600;
    let mut next_seq = 1;
    let files = |store: &Store| store.stats().db_bytes;
    // The broker is connected: everything is sent as it comes.
    for h in 0..hours {
        push_hour(&store, &items, first + h * 3600);
        store.flush().unwrap();
        send_all(&store, &mut next_seq).await;
        store.maintain().unwrap();
        let size = files(&store);
        assert!(size <= cfg.storage.max_size, "hour {h}: {size} bytes");
    }
    let st = store.stats();
    assert_eq!(st.dropped_unsent, 0);
    let last = first + (hours - 1) * 3600;
    for &it in [items[0], items[199]].iter() {
        let h = store
            .history(it, last - 3 * 3600, last + 3600, None)
            .await
            .unwrap();
        assert_eq!(h.len(), 4 * 60, "the newest hours of history stay");
        let oldest = store.history(it, 0, last, Some(usize::MAX)).await.unwrap();
        assert!(
            oldest[0].0 > first + 3600,
            "older history went: {}",
            oldest[0].0
        );
    }
    let trend = store.trend(items[0], 0, last + 3600).await.unwrap();
    assert!(trend[0].0 > first, "older trends went too");
    assert_eq!(trend.last().unwrap().0, last, "the newest trends stay");

    // The broker goes away: unsent data is kept; older history and trends go.
    let oldest_before = store
        .history(items[0], 0, last, Some(usize::MAX))
        .await
        .unwrap()[0]
        .0;
    let trend_before = trend[0].0;
    for h in hours..hours + 8 {
        push_hour(&store, &items, first + h * 3600);
        store.maintain().unwrap();
        let size = files(&store);
        assert!(size <= cfg.storage.max_size, "hour {h}: {size} bytes");
    }
    let st = store.stats();
    assert_eq!(
        st.dropped_unsent, 0,
        "no unsent data dropped while older data is left"
    );
    assert!(st.outbox_messages > 0);
    let oldest = store
        .history(items[0], 0, now(), Some(usize::MAX))
        .await
        .unwrap()[0]
        .0;
    assert!(oldest > oldest_before, "older history went");
    assert!(store.trend(items[0], 0, now()).await.unwrap()[0].0 > trend_before);
    // Back: every message arrives, with no seq hole.
    send_all(&store, &mut next_seq).await;
    assert_eq!(store.outbox_len(), 0);
    store.close().unwrap();
}

#[tokio::test]
async fn store_close_does_not_wait_for_a_long_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, 1000, false);
    let lazy = StoreOptions {
        compact_points: u64::MAX,
        compact_age: Duration::from_secs(3600),
        ..opts()
    };
    let store = Store::open_with(&cfg, lazy.clone()).unwrap();
    let items = ids(&store, &cfg).concat();
    let t0 = now() - 100_000;
    for c in 0..1000 {
        let batch: Vec<Sample> = items
            .iter()
            .map(|&it| s(it, t0 + c, (c % 7) as f64))
            .collect();
        store.push(&batch);
    }
    store.flush().unwrap();
    // A forced compaction of 1,000,000 points, in steps; close meanwhile.
    let busy = {
        let store = store.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let r = store.maintain();
            (r, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = std::time::Instant::now();
    store.close().unwrap();
    let closed_in = started.elapsed();
    let (r, _) = busy.join().unwrap();
    assert!(r.is_ok() || matches!(r, Err(StoreError::Closed | StoreError::Commit(_))));
    assert!(
        closed_in < MAINTENANCE_STEP_MAX,
        "close waited {closed_in:?} for the compaction"
    );
    let conn = rusqlite::Connection::open(dir.path().join("data/modbridge.db")).unwrap();
    let left: i64 = conn
        .query_row(
            "SELECT count(*) FROM journal WHERE compacted = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    drop(conn);
    assert!(left > 0, "the compaction gave way to close");
    // Nothing lost: the rest is compacted after the restart.
    let store = Store::open_with(&cfg, lazy).unwrap();
    assert_eq!(
        store
            .history(items[999], 0, now(), None)
            .await
            .unwrap()
            .len(),
        1000
    );
    store.maintain().unwrap();
    assert_eq!(
        store.history(items[0], 0, now(), None).await.unwrap().len(),
        1000
    );
    store.close().unwrap();
}

/// Journal rows in the database.
fn journal_rows(store: &Store) -> i64 {
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    conn.query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn store_uplink_positions_are_independent_and_a_removed_one_pins_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 2, true);
    cfg.sparkplug = Some(sparkplug());
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    assert_eq!(store.position(Uplink::Sparkplug), 0);
    let t0 = now() - 100;
    // Four commits: four rows of host h0.
    for round in 0..4 {
        store.push(&[
            s(id[0][0], t0 + round, round as f64),
            s(id[0][1], t0 + round, 1.0),
        ]);
        store.flush().unwrap();
    }
    let native = store.outbox_after(0, 100).await.unwrap();
    let spb = store.outbox_from(Uplink::Sparkplug, 0, 100).await.unwrap();
    assert_eq!(native.len(), 4);
    assert_eq!(spb, native, "both uplinks read the same rows");
    assert_eq!(store.backlog(Uplink::Sparkplug), 4);

    // The native uplink delivers everything: Sparkplug still needs the rows,
    // through compaction too.
    let seqs: Vec<u64> = native.iter().map(|m| m.seq).collect();
    store.mark_sent(&seqs).unwrap();
    store.maintain().unwrap();
    assert_eq!(store.outbox_len(), 0);
    assert_eq!(journal_rows(&store), 4);
    assert_eq!(
        store
            .outbox_from(Uplink::Sparkplug, 0, 100)
            .await
            .unwrap()
            .len(),
        4
    );
    assert_eq!(
        store.history(id[0][0], 0, now(), None).await.unwrap().len(),
        4
    );

    // Sparkplug delivers two: they go, and its position is durable.
    store.advance(Uplink::Sparkplug, seqs[1]).unwrap();
    assert_eq!(store.position(Uplink::Sparkplug), seqs[1]);
    assert_eq!(store.backlog(Uplink::Sparkplug), 2);
    store.flush().unwrap();
    assert_eq!(journal_rows(&store), 2);
    let after = store
        .outbox_from(Uplink::Sparkplug, store.position(Uplink::Sparkplug), 100)
        .await
        .unwrap();
    assert_eq!(after.iter().map(|m| m.seq).collect::<Vec<_>>(), seqs[2..]);
    // A position never moves back.
    store.advance(Uplink::Sparkplug, seqs[0]).unwrap();
    assert_eq!(store.position(Uplink::Sparkplug), seqs[1]);
    store.close().unwrap();
    drop(store);

    let store = Store::open_with(&cfg, opts()).unwrap();
    assert_eq!(store.position(Uplink::Sparkplug), seqs[1], "restored");
    assert_eq!(store.backlog(Uplink::Sparkplug), 2);
    assert_eq!(store.outbox_len(), 0);

    // [sparkplug] removed: its position goes and pins nothing.
    cfg.sparkplug = None;
    store.reconfigure(&cfg).await.unwrap();
    store.maintain().unwrap();
    assert_eq!(store.position(Uplink::Sparkplug), 0);
    assert_eq!(store.backlog(Uplink::Sparkplug), 0);
    assert_eq!(
        journal_rows(&store),
        0,
        "rows only Sparkplug pinned are gone"
    );
    assert_eq!(
        store.history(id[0][0], 0, now(), None).await.unwrap().len(),
        4
    );
    let conn = rusqlite::Connection::open(store.path()).unwrap();
    let positions: i64 = conn
        .query_row("SELECT count(*) FROM uplink_position", [], |r| r.get(0))
        .unwrap();
    assert_eq!(positions, 0);

    // Configured again: it starts at the newest row, the past is not its backlog.
    store.push(&[s(id[0][0], t0 + 10, 9.0)]);
    store.flush().unwrap();
    cfg.sparkplug = Some(sparkplug());
    store.reconfigure(&cfg).await.unwrap();
    store.maintain().unwrap();
    assert_eq!(store.backlog(Uplink::Sparkplug), 0);
    let newest = store.outbox_after(0, 10).await.unwrap();
    assert_eq!(newest.len(), 1, "the native uplink's unsent row stays");
    assert_eq!(store.position(Uplink::Sparkplug), newest[0].seq);
    store.push(&[s(id[0][0], t0 + 11, 10.0)]);
    store.flush().unwrap();
    assert_eq!(store.backlog(Uplink::Sparkplug), 1);
    store.close().unwrap();
}

#[tokio::test]
async fn store_sparkplug_alone_keeps_rows_until_its_position_passes_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 1, false);
    cfg.sparkplug = Some(sparkplug());
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    let t0 = now() - 100;
    commit_one_by_one(&store, id[0][0], t0, 0..3);
    store.maintain().unwrap();
    assert_eq!(
        store.outbox_len(),
        0,
        "no native uplink: nothing unsent for it"
    );
    assert_eq!(store.backlog(Uplink::Sparkplug), 3);
    assert_eq!(journal_rows(&store), 3, "compacted, kept for Sparkplug");
    let rows = store.outbox_from(Uplink::Sparkplug, 0, 10).await.unwrap();
    store.advance(Uplink::Sparkplug, rows[2].seq).unwrap();
    store.flush().unwrap();
    assert_eq!(journal_rows(&store), 0);
    assert_eq!(store.backlog(Uplink::Sparkplug), 0);
    assert_eq!(
        store.history(id[0][0], 0, now(), None).await.unwrap().len(),
        3
    );
    store.close().unwrap();
}

#[tokio::test]
async fn store_removing_mqtt_lets_its_unsent_rows_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 1, true);
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    let t0 = now() - 100;
    commit_one_by_one(&store, id[0][0], t0, 0..3);
    store.maintain().unwrap();
    assert_eq!(store.outbox_len(), 3);
    assert_eq!(
        journal_rows(&store),
        3,
        "unsent rows stay while [mqtt] is there"
    );
    cfg.mqtt = None;
    store.reconfigure(&cfg).await.unwrap();
    store.maintain().unwrap();
    assert_eq!(journal_rows(&store), 0, "nobody needs them now");
    assert_eq!(store.outbox_len(), 0);
    assert_eq!(
        store.history(id[0][0], 0, now(), None).await.unwrap().len(),
        3
    );
    store.close().unwrap();
}

#[tokio::test]
async fn store_sparkplug_caught_up_gets_each_commit_and_a_restart_reads_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1, 1, true);
    cfg.sparkplug = Some(sparkplug());
    let store = Store::open_with(&cfg, opts()).unwrap();
    let id = ids(&store, &cfg);
    let t0 = now() - 100;
    let values = |rows: &[OutboxMessage]| -> Vec<f64> {
        rows.iter()
            .flat_map(|m| m.items.iter().flat_map(|(_, p)| p.iter().map(|&(_, v)| v)))
            .collect()
    };
    commit_one_by_one(&store, id[0][0], t0, 0..3);
    let first = store.outbox_from(Uplink::Sparkplug, 0, 2).await.unwrap();
    assert_eq!(values(&first), [0.0, 1.0], "at most max");
    let rest = store
        .outbox_from(Uplink::Sparkplug, first[1].seq, 10)
        .await
        .unwrap();
    assert_eq!(values(&rest), [2.0], "caught up");
    let native = store.outbox_after(0, 10).await.unwrap();
    assert_eq!(values(&native), [0.0, 1.0, 2.0]);
    // Both caught up: each commit's rows come to each uplink (from memory,
    // read once for both).
    let mut after = rest[0].seq;
    let mut native_after = native[2].seq;
    for round in 3..6 {
        commit_one_by_one(&store, id[0][0], t0, round..round + 1);
        let got = store
            .outbox_from(Uplink::Sparkplug, after, 10)
            .await
            .unwrap();
        assert_eq!(values(&got), [round as f64], "the commit's row, once");
        after = got[0].seq;
        let got = store.outbox_after(native_after, 10).await.unwrap();
        assert_eq!(values(&got), [round as f64], "and the native uplink's");
        native_after = got[0].seq;
    }
    assert!(store
        .outbox_from(Uplink::Sparkplug, after, 10)
        .await
        .unwrap()
        .is_empty());
    // A new connection starts over from its position: every row again.
    let again = store.outbox_from(Uplink::Sparkplug, 0, 10).await.unwrap();
    assert_eq!(values(&again), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    // The native uplink's own reads are not disturbed.
    let native = store.outbox_after(0, 10).await.unwrap();
    assert_eq!(values(&native), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    store.close().unwrap();
}
