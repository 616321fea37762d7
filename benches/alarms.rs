//! Benchmark of the alarm engine (prints figures; not a timed test).
//!
//! 1,000 triggers over 10,000 items (100 hosts x 100 items), every item one
//! sample per second. A quarter each of:
//! `last(/h/k) > 95`, `avg(/h/k,5m) > 60`,
//! `max(/h/k,5m) < 10 and last(/h/k2) > 90`, `nodata(/h/k,1m)=1`.
//! Every simulated second: 10,000 samples (looked up in a dense table, fed to
//! the engine when a trigger names the item) and one `evaluate()`. A warm-up
//! fills the 5-minute windows, then the measured window runs.
//!
//!     cargo bench --bench alarms
//!     cargo bench --bench alarms -- --warmup 300 --seconds 120 --runs 3
//!
//! Prints: CPU time per simulated second as % of one core (target <= 5 %),
//! samples/s processed, memory held by the windows.

use std::path::Path;
use std::time::Instant;

use modbridge::alarm::{compile, Engine, ItemIndex};

const HOSTS: usize = 100;
const ITEMS_PER_HOST: usize = 100;
const TRIGGERS: usize = 1000;

struct Args {
    warmup: i64,
    seconds: i64,
    runs: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        warmup: 300,
        seconds: 120,
        runs: 3,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).and_then(|v| v.parse::<i64>().ok());
        match (argv[i].as_str(), value) {
            ("--warmup", Some(v)) => a.warmup = v.max(0),
            ("--seconds", Some(v)) => a.seconds = v.max(1),
            ("--runs", Some(v)) => a.runs = usize::try_from(v.max(1)).unwrap_or(1),
            ("--bench", _) => {
                i += 1;
                continue;
            }
            (other, _) => {
                eprintln!("unknown or incomplete option {other}; options: --warmup S --seconds S --runs K");
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

fn config_text() -> String {
    let mut t = String::from("[gateway]\nid = \"bench\"\n\n");
    for h in 0..HOSTS {
        t += &format!(
            "[[hosts]]\nhost = \"h{h}\"\nconnection = \"tcp://127.0.0.1:{}\"\npoll_interval = \"1s\"\n\n",
            20000 + h
        );
        for k in 0..ITEMS_PER_HOST {
            t += &format!(
                "[[hosts.items]]\nname = \"k{k}\"\ntable = \"holding\"\naddress = {k}\ntype = \"i16\"\nkey = \"k{k}\"\n\n"
            );
        }
    }
    for i in 0..TRIGGERS {
        let (h, k) = item_name((i * 10) % (HOSTS * ITEMS_PER_HOST));
        let (h2, k2) = item_name((i * 10 + 5) % (HOSTS * ITEMS_PER_HOST));
        let expression = match i % 4 {
            0 => format!("last(/{h}/{k}) > 95"),
            1 => format!("avg(/{h}/{k},5m) > 60"),
            2 => format!("max(/{h}/{k},5m) < 10 and last(/{h2}/{k2}) > 90"),
            _ => format!("nodata(/{h}/{k},1m)=1"),
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
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after "pid (comm)".
    (fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0)) * 10_000_000
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
    let text = config_text();
    let loaded = Instant::now();
    let config = match modbridge::config::load_str(Path::new("bench.toml"), &text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench config does not load:\n{e}");
            std::process::exit(1);
        }
    };
    let triggers = match compile(&config) {
        Ok(t) => t,
        Err(diagnostics) => {
            for d in diagnostics {
                eprintln!("{d}");
            }
            std::process::exit(1);
        }
    };
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
        let r = one_run(&args, &mut engine, &table);
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
