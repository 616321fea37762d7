//! SQLite ingest micro-benchmark: push -> commit -> compaction, and bytes on disk.
//!
//! `cargo bench --bench ingest` (optionally `-- ITEMS CLOCKS`, default 1000 10000).

use std::path::Path;
use std::time::{Duration, Instant};

use modbridge::model::*;
use modbridge::store::{Sample, Store, StoreOptions};

/// A store for 10 hosts of `items` items each, and the items' ids.
fn open_store(dir: &Path, items: usize) -> (Store, Vec<u32>) {
    let cfg = config(dir, 10, items);
    let store = Store::open_with(&cfg, StoreOptions::default()).expect("open");
    let ids = cfg
        .hosts
        .iter()
        .flat_map(|h| {
            h.items
                .iter()
                .map(|i| store.item_id(&h.host, &i.key).expect("id"))
                .collect::<Vec<_>>()
        })
        .collect();
    (store, ids)
}

fn config(dir: &Path, hosts: usize, items: usize) -> Config {
    let item = |k: usize| ItemSpec {
        scale: 0.1,
        poll_interval: Duration::from_secs(1),
        extra: Some(Box::new(ItemExtra {
            name: format!("item {k}"),
            unit: "degC".into(),
            ..ItemExtra::default()
        })),
        ..ItemSpec::new(
            &format!("modbus.h.generic.1.{}", 40001 + k),
            Table::Holding,
            k as u16,
            ValueType::I16,
        )
    };
    let hosts = (0..hosts)
        .map(|h| HostSpec {
            poll_interval: Duration::from_secs(1),
            ..HostSpec::tcp(
                &format!("dev{h}"),
                "127.0.0.1",
                15020 + h as u16,
                (0..items / hosts).map(item).collect(),
            )
        })
        .collect();
    Config::new(
        dir.join("modbridge.toml"),
        GatewaySpec::new("bench", dir.to_path_buf()),
        hosts,
    )
}

struct Figures {
    ingest_s: f64,
    compact_s: f64,
    points: u64,
    file_bytes: u64,
    used_bytes: u64,
    chunks: i64,
}

fn run(name: &str, items: usize, clocks: i64, random: bool, compact_every: Option<i64>) -> Figures {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, ids) = open_store(dir.path(), items);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let t0 = now - clocks - 60;
    let mut rng = fastrand::Rng::with_seed(42);
    // Temperatures: raw register values in 0.1 degC doing a slow random walk.
    let mut raw: Vec<i32> = (0..ids.len()).map(|_| rng.i32(150..300)).collect();
    let total = ids.len() as u64 * clocks as u64;
    let mut batch = Vec::with_capacity(ids.len());
    let start = Instant::now();
    for c in 0..clocks {
        batch.clear();
        for (i, &id) in ids.iter().enumerate() {
            let value = if random {
                rng.f64() * 200.0 - 100.0
            } else {
                let r = rng.u8(..);
                if r < 40 {
                    raw[i] += 1;
                } else if r < 80 {
                    raw[i] -= 1;
                }
                f64::from(raw[i]) * 0.1
            };
            batch.push(Sample {
                item: id,
                clock: t0 + c,
                value,
            });
        }
        store.push(&batch);
        if compact_every.is_some_and(|n| (c + 1) % n == 0) {
            store.maintain().expect("maintain");
        }
        // Back-pressure (a real source cannot outrun the writer for long).
        loop {
            let st = store.stats();
            if st.samples_received - st.history_points < 1_500_000 {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    store.flush().expect("flush");
    let ingest_s = start.elapsed().as_secs_f64();
    let t = Instant::now();
    store.maintain().expect("maintain");
    let compact_s = t.elapsed().as_secs_f64();
    let points = store.stats().history_points;
    assert_eq!(points, total, "{name}: every sample is a history point");
    // Spot check.
    let h = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(store.history(ids[0], t0, t0 + clocks, None))
        .expect("history");
    assert_eq!(h.len() as i64, clocks);
    store.close().expect("close");
    let path = dir.path().join("modbridge.db");
    let conn = rusqlite::Connection::open(&path).expect("reopen");
    let _: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .expect("checkpoint");
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let pages: i64 = conn
        .pragma_query_value(None, "page_count", |r| r.get(0))
        .expect("pages");
    let free: i64 = conn
        .pragma_query_value(None, "freelist_count", |r| r.get(0))
        .expect("free");
    let psize: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .expect("psize");
    let chunks: i64 = conn
        .query_row("SELECT count(*) FROM history", [], |r| r.get(0))
        .expect("chunks");
    let journal: i64 = conn
        .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
        .expect("journal");
    assert_eq!(journal, 0, "everything compacted");
    Figures {
        ingest_s,
        compact_s,
        points,
        file_bytes,
        used_bytes: ((pages - free) * psize) as u64,
        chunks,
    }
}

/// utime + stime of this process, seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// W1-like load: 1000 values pushed once a second (10 hosts x 100), for `secs` seconds.
fn steady(secs: i64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, ids) = open_store(dir.path(), 1000);
    let mut rng = fastrand::Rng::with_seed(1);
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut batch = Vec::new();
    for s in 0..secs {
        let next = start + Duration::from_secs(s as u64);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        batch.clear();
        batch.extend(ids.iter().map(|&id| Sample {
            item: id,
            clock,
            value: f64::from(rng.i32(0..1000)),
        }));
        store.push(&batch);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let st = store.stats();
    println!("--- steady W1-like load: 1000 values/s for {secs} s");
    println!(
        "  CPU (whole process)   {:>12.2} % of one core",
        cpu / wall * 100.0
    );
    println!("  commits               {:>12}", st.commits);
    store.close().expect("close");
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if args.first().map(String::as_str) == Some("steady") {
        steady(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(30));
        return;
    }
    let items: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let clocks: i64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    println!("store ingest benchmark: {items} items x {clocks} clocks, 10 hosts, no deadband, commit_interval 1s");
    for (name, random, every) in [
        ("temperatures (0.1 steps)", false, None),
        ("random f64", true, None),
        (
            "temperatures, compacted every 300 clocks (like 5 min at 1 s)",
            false,
            Some(300),
        ),
        ("random f64, compacted every 300 clocks", true, Some(300)),
    ] {
        let f = run(name, items, clocks, random, every);
        let n = f.points as f64;
        println!("--- {name}");
        println!("  samples               {:>12}", f.points);
        println!("  push -> commit        {:>12.0} samples/s  ({:.2} s incl. final flush, compaction in-line)", n / f.ingest_s, f.ingest_s);
        println!("  + compact remainder   {:>12.2} s", f.compact_s);
        println!(
            "  end to end            {:>12.0} samples/s",
            n / (f.ingest_s + f.compact_s)
        );
        println!(
            "  db file (WAL ckpt)    {:>12} bytes = {:.2} bytes/sample",
            f.file_bytes,
            f.file_bytes as f64 / n
        );
        println!(
            "  db pages in use       {:>12} bytes = {:.2} bytes/sample",
            f.used_bytes,
            f.used_bytes as f64 / n
        );
        println!(
            "  history chunks        {:>12} ({:.0} points/chunk)",
            f.chunks,
            n / f.chunks.max(1) as f64
        );
    }
}
