//! Benchmark of the alarms (prints figures; not a timed test).
//!
//! 1,000 triggers over 10,000 items (100 hosts x 100 items), every item one
//! sample per second. A quarter each of:
//! `last(/h/k) > 95`, `avg(/h/k,W) > 60`,
//! `max(/h/k,W) < 10 and last(/h/k2) > 90`, `nodata(/h/k,N)=1`.
//!
//! Part 1, the engine alone, in simulated time (W = 5m, N = 1m): every
//! simulated second 10,000 samples (looked up in a dense table, fed to the
//! engine when a trigger names the item) and one `evaluate()`. A warm-up fills
//! the windows, then the measured window runs.
//!
//! Part 2, the service as the daemon runs it, in real time (W = 1m, N = 30s):
//! `gateway::open` + `run_gateway` polling 100 in-process simulated devices of
//! 100 registers every second (10,000 samples/s into the store), the values
//! moving so that thresholds are crossed, every 97th register refusing reads
//! after the warm-up (nodata and unknown). Measured twice, without and with
//! the triggers: process CPU (all threads: polling, store, alarm task, event
//! writes) over the window; the difference is the alarm service's cost. Also
//! printed: the alarm task's own busy time and the events it stored.
//!
//!     cargo bench --bench alarms
//!     cargo bench --bench alarms -- --engine-only --warmup 300 --seconds 120 --runs 3
//!     cargo bench --bench alarms -- --service-only --service-warmup 70 --service-seconds 60
//!
//! Target: <= 5 % of one core for the 1,000 triggers.

use std::path::Path;
use std::time::{Duration, Instant};

use modbridge::alarm::{compile, Engine, ItemIndex};
use modbridge::model::Table;
use modbridge::sim::SimDevice;
use tokio_util::sync::CancellationToken;

const HOSTS: usize = 100;
const ITEMS_PER_HOST: usize = 100;
const TRIGGERS: usize = 1000;

struct Args {
    warmup: i64,
    seconds: i64,
    runs: usize,
    engine: bool,
    service: bool,
    service_warmup: u64,
    service_seconds: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        warmup: 300,
        seconds: 120,
        runs: 3,
        engine: true,
        service: true,
        service_warmup: 70,
        service_seconds: 60,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        match argv[i].as_str() {
            "--bench" => {
                i += 1;
                continue;
            }
            "--engine-only" => {
                a.service = false;
                i += 1;
                continue;
            }
            "--service-only" => {
                a.engine = false;
                i += 1;
                continue;
            }
            _ => {}
        }
        let value = argv.get(i + 1).and_then(|v| v.parse::<i64>().ok());
        match (argv[i].as_str(), value) {
            ("--warmup", Some(v)) => a.warmup = v.max(0),
            ("--seconds", Some(v)) => a.seconds = v.max(1),
            ("--runs", Some(v)) => a.runs = usize::try_from(v.max(1)).unwrap_or(1),
            ("--service-warmup", Some(v)) => a.service_warmup = v.max(0) as u64,
            ("--service-seconds", Some(v)) => a.service_seconds = v.max(1) as u64,
            (other, _) => {
                eprintln!(
                    "unknown or incomplete option {other}; options: --warmup S --seconds S --runs K \
                     --engine-only --service-only --service-warmup S --service-seconds S"
                );
                std::process::exit(2);
            }
        }
        i += 2;
    }
    a
}

fn item_name(g: usize) -> (String, String) {
    (
        format!("h{}", g / ITEMS_PER_HOST),
        format!("k{}", g % ITEMS_PER_HOST),
    )
}

/// The config: hosts reached at `connection(h)`, triggers with windows of
/// `window` and `nodata` over `nodata` (none if `triggers` is false).
fn config_text(
    connection: impl Fn(usize) -> String,
    data_dir: Option<&Path>,
    window: &str,
    nodata: &str,
    triggers: bool,
) -> String {
    let mut t = String::from("[gateway]\nid = \"bench\"\n");
    if let Some(dir) = data_dir {
        t += &format!("data_dir = {:?}\n", dir.display().to_string());
    }
    t += "\n[api]\nlisten = \"127.0.0.1:0\"\n\n";
    for h in 0..HOSTS {
        t += &format!(
            "[[hosts]]\nhost = \"h{h}\"\nconnection = \"{}\"\npoll_interval = \"1s\"\ntimeout = \"500ms\"\n\n",
            connection(h)
        );
        for k in 0..ITEMS_PER_HOST {
            t += &format!(
                "[[hosts.items]]\nname = \"k{k}\"\ntable = \"holding\"\naddress = {k}\ntype = \"i16\"\nkey = \"k{k}\"\n\n"
            );
        }
    }
    if !triggers {
        return t;
    }
    for i in 0..TRIGGERS {
        let (h, k) = item_name((i * 10) % (HOSTS * ITEMS_PER_HOST));
        let (h2, k2) = item_name((i * 10 + 5) % (HOSTS * ITEMS_PER_HOST));
        let expression = match i % 4 {
            0 => format!("last(/{h}/{k}) > 95"),
            1 => format!("avg(/{h}/{k},{window}) > 60"),
            2 => format!("max(/{h}/{k},{window}) < 10 and last(/{h2}/{k2}) > 90"),
            _ => format!("nodata(/{h}/{k},{nodata})=1"),
        };
        t += &format!(
            "[[triggers]]\ntriggerid = {}\ndescription = \"t{i}\"\nseverity = 3\nexpression = \"{expression}\"\n\n",
            i + 1
        );
    }
    t
}

/// On-CPU nanoseconds of this thread (schedstat), or of the process in clock ticks (stat).
fn cpu_ns() -> u64 {
    if let Ok(s) = std::fs::read_to_string("/proc/thread-self/schedstat") {
        if let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse().ok()) {
            return ns;
        }
    }
    process_cpu_ticks() * 10_000_000
}

/// User + system CPU time of this process, all threads, in clock ticks (1/100 s).
fn process_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after "pid (comm)".
    fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The value of global item `g` at second `t`: a triangle wave 0..100 with a
/// per-item phase, so thresholds are crossed now and then. Every 97th item
/// stops reporting after 60 s (nodata fires).
fn value(g: usize, t: i64) -> Option<f64> {
    if g % 97 == 0 && t > 60 {
        return None;
    }
    let x = (t as usize * 3 + g * 7) % 200;
    Some(if x < 100 { x as f64 } else { (200 - x) as f64 })
}

struct Run {
    cpu_percent: f64,
    samples_per_s: f64,
    fed_per_s: f64,
    changes: usize,
    window_bytes: usize,
    window_samples: usize,
}

fn one_run(args: &Args, engine: &mut Engine, table: &[Option<ItemIndex>]) -> Run {
    let mut changes = 0;
    let second = |engine: &mut Engine, t: i64, fed: &mut u64| {
        for (g, slot) in table.iter().enumerate() {
            let Some(v) = value(g, t) else { continue };
            if let Some(i) = slot {
                engine.on_sample(*i, t, v);
                *fed += 1;
            }
        }
        engine.evaluate(t).len()
    };
    let mut fed = 0;
    for t in 0..args.warmup {
        second(engine, t, &mut fed);
    }
    let mut fed = 0;
    let cpu0 = cpu_ns();
    let wall0 = Instant::now();
    for t in args.warmup..args.warmup + args.seconds {
        changes += second(engine, t, &mut fed);
    }
    let cpu = cpu_ns().saturating_sub(cpu0) as f64 / 1e9;
    let wall = wall0.elapsed().as_secs_f64();
    let total_samples = table.len() as f64 * args.seconds as f64;
    Run {
        cpu_percent: cpu / args.seconds as f64 * 100.0,
        samples_per_s: total_samples / wall.max(1e-9),
        fed_per_s: fed as f64 / wall.max(1e-9),
        changes,
        window_bytes: engine.window_memory(),
        window_samples: engine.window_samples(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    let args = parse_args();
    if args.engine {
        engine_part(&args);
    }
    if args.service {
        service_part(&args);
    }
}

fn engine_part(args: &Args) {
    let text = config_text(
        |h| format!("tcp://127.0.0.1:{}", 20000 + h),
        None,
        "5m",
        "1m",
        true,
    );
    let loaded = Instant::now();
    let config = match modbridge::config::load_str(Path::new("bench.toml"), &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench config does not load:\n{e}");
            std::process::exit(1);
        }
    };
    let triggers = compile(&config);
    println!(
        "config: {} items, {} triggers, loaded and compiled in {:.0} ms",
        HOSTS * ITEMS_PER_HOST,
        triggers.len(),
        loaded.elapsed().as_secs_f64() * 1e3
    );
    let mut runs = Vec::new();
    for run in 0..args.runs {
        let mut engine = Engine::new(triggers.clone());
        let table: Vec<Option<ItemIndex>> = (0..HOSTS * ITEMS_PER_HOST)
            .map(|g| {
                let (h, k) = item_name(g);
                engine.item_index(&h, &k)
            })
            .collect();
        let r = one_run(args, &mut engine, &table);
        println!(
            "run {}: {} referenced items; {:.3} % of one core per simulated second; \
             {:.2} M samples/s offered ({:.2} M/s fed to the engine); {} changes; \
             windows {} samples, {:.1} KiB",
            run + 1,
            engine.items().len(),
            r.cpu_percent,
            r.samples_per_s / 1e6,
            r.fed_per_s / 1e6,
            r.changes,
            r.window_samples,
            r.window_bytes as f64 / 1024.0
        );
        runs.push(r);
    }
    let cpu = median(runs.iter().map(|r| r.cpu_percent).collect());
    let rate = median(runs.iter().map(|r| r.samples_per_s).collect());
    let memory = runs.last().map_or(0, |r| r.window_bytes);
    println!(
        "median of {}: {cpu:.3} % of one core per simulated second (target <= 5 %), \
         {:.2} M samples/s, windows {:.1} KiB; peak RSS {} KiB (includes the 10,000-item config)",
        runs.len(),
        rate / 1e6,
        memory as f64 / 1024.0,
        peak_rss_kib()
    );
}

/// User + system CPU seconds of this process, all threads.
fn process_cpu_seconds() -> f64 {
    process_cpu_ticks() as f64 / 100.0
}

struct ServiceRun {
    cpu_percent: f64,
    busy_percent: f64,
    events: u64,
    samples_per_s: f64,
    values: (usize, usize, usize),
}

/// Moves every register along a triangle wave 0..100 (per-register phase),
/// a quarter second after each whole second, until `stop`.
async fn drive(devices: Vec<SimDevice>, stop: CancellationToken) {
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let wait = Duration::from_micros(1_250_000 - u64::from(now.subsec_micros()) % 1_000_000);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait.min(Duration::from_secs(1))) => {}
        }
        let t = modbridge::clock::unix_now().max(0) as usize;
        for (h, d) in devices.iter().enumerate() {
            let values: Vec<u16> = (0..ITEMS_PER_HOST)
                .map(|k| {
                    let x = (t * 3 + (h * ITEMS_PER_HOST + k) * 7) % 200;
                    if x < 100 {
                        x as u16
                    } else {
                        (200 - x) as u16
                    }
                })
                .collect();
            d.set_registers(Table::Holding, 0, &values);
        }
    }
}

async fn measure(
    args: &Args,
    devices: &[SimDevice],
    addrs: &[String],
    triggers: bool,
) -> ServiceRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(
        |h| format!("tcp://{}", addrs[h]),
        Some(&dir.path().join("data")),
        "1m",
        "30s",
        triggers,
    );
    let config = match modbridge::config::load_str(&dir.path().join("bench.toml"), &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench config does not load:\n{e}");
            std::process::exit(1);
        }
    };
    for d in devices {
        d.faults(|f| f.exception_at.clear());
    }
    let gateway = modbridge::gateway::open(config)
        .await
        .expect("open the gateway");
    let stop = CancellationToken::new();
    let driver = tokio::spawn(drive(devices.to_vec(), stop.clone()));
    let until = stop.clone();
    let running = tokio::spawn(modbridge::daemon::run_gateway(
        gateway.clone(),
        async move { until.cancelled().await },
    ));
    tokio::time::sleep(Duration::from_secs(args.service_warmup / 2)).await;
    // Every 97th register stops answering: nodata fires, last() turns unknown.
    for g in (0..HOSTS * ITEMS_PER_HOST).step_by(97) {
        if let Some(d) = devices.get(g / ITEMS_PER_HOST) {
            d.faults(|f| {
                f.exception_at
                    .insert((Table::Holding, (g % ITEMS_PER_HOST) as u16));
            });
        }
    }
    tokio::time::sleep(Duration::from_secs(
        args.service_warmup - args.service_warmup / 2,
    ))
    .await;
    let polls = |g: &modbridge::gateway::Gateway| -> u64 {
        g.running().hosts.values().map(|h| h.lock().polls).sum()
    };
    let (cpu0, stats0, polls0, wall0) = (
        process_cpu_seconds(),
        gateway.alarms.stats(),
        polls(&gateway),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(args.service_seconds)).await;
    let (cpu1, stats1, polls1) = (
        process_cpu_seconds(),
        gateway.alarms.stats(),
        polls(&gateway),
    );
    let wall = wall0.elapsed().as_secs_f64();
    stop.cancel();
    let _ = running.await;
    let _ = driver.await;
    ServiceRun {
        cpu_percent: (cpu1 - cpu0) / wall * 100.0,
        busy_percent: (stats1.busy_seconds - stats0.busy_seconds) / wall * 100.0,
        events: stats1.events - stats0.events,
        samples_per_s: (polls1 - polls0) as f64 * ITEMS_PER_HOST as f64 / wall,
        values: (stats1.ok, stats1.problem, stats1.unknown),
    }
}

fn service_part(args: &Args) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async {
        let devices: Vec<SimDevice> = (0..HOSTS).map(|_| SimDevice::new()).collect();
        let mut servers = Vec::new();
        for d in &devices {
            servers.push(d.bind_tcp("127.0.0.1:0").await.expect("bind"));
        }
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| s.addr().expect("address").to_string())
            .collect();
        println!(
            "service: {HOSTS} simulated devices x {ITEMS_PER_HOST} registers polled every second; \
             warm-up {} s, window {} s",
            args.service_warmup, args.service_seconds
        );
        let base = measure(args, &devices, &addrs, false).await;
        println!(
            "  without triggers: {:.1} % of one core (polling, store), {:.0} samples/s",
            base.cpu_percent, base.samples_per_s
        );
        let with = measure(args, &devices, &addrs, true).await;
        println!(
            "  with {TRIGGERS} triggers: {:.1} % of one core, {:.0} samples/s; {} events stored in the window; \
             triggers OK/problem/unknown {}/{}/{}",
            with.cpu_percent,
            with.samples_per_s,
            with.events,
            with.values.0,
            with.values.1,
            with.values.2
        );
        println!(
            "alarm service: {:.2} % of one core (difference of the two runs; target <= 5 %), \
             of which the alarm task's own work {:.2} %",
            with.cpu_percent - base.cpu_percent,
            with.busy_percent
        );
        drop(servers);
    });
}
