//! Whole-process benchmark of the gateway (prints figures; not a timed test).
//!
//! Starts `modbridge simulate` (devices in another process) and `modbridge run`
//! polling them, waits a warm-up, then measures over a window: CPU seconds of
//! the gateway process (utime + stime from /proc, as % of one core), peak RSS
//! (VmHWM), and Modbus requests per device per cycle (from the simulator).
//! With `--mqtt` it also starts a mosquitto on a free port, the gateway
//! publishes to it, and a subscriber (in this process) counts the values
//! delivered on `modbridge/bench/data/+` per second. `--sparkplug` (with
//! `--mqtt`) adds the Sparkplug B uplink to the same broker beside it.
//!
//!     cargo bench --bench gateway -- --devices 10 --registers 100 --mqtt --runs 3    # W1
//!     cargo bench --bench gateway -- --devices 100 --registers 100 --mqtt --runs 3   # W3
//!     cargo bench --bench gateway -- --devices 100 --registers 1000 --runs 3         # W2
//!     cargo bench --bench gateway -- --devices 10 --registers 100 --mqtt --sparkplug --runs 3   # W1, both uplinks
//!
//! Options: --devices N --registers R --interval 1s --warmup S --window S --runs K
//! --base-port P --mqtt --bin PATH (another modbridge binary, e.g. an older
//! build to compare with) --smaps (print where the gateway's resident memory is, from /proc smaps, at
//! the end of each window).

#[path = "../tests/support/broker.rs"]
mod broker;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    devices: u16,
    registers: u16,
    interval: String,
    warmup: u64,
    window: u64,
    runs: usize,
    base_port: u16,
    mqtt: bool,
    sparkplug: bool,
    bin: Option<String>,
    smaps: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        devices: 100,
        registers: 1000,
        interval: "1s".into(),
        warmup: 10,
        window: 60,
        runs: 1,
        base_port: 25020,
        mqtt: false,
        sparkplug: false,
        bin: None,
        smaps: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let v = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--devices" => a.devices = v.parse().expect("--devices N"),
            "--registers" => a.registers = v.parse().expect("--registers N"),
            "--interval" => a.interval = v,
            "--warmup" => a.warmup = v.parse().expect("--warmup seconds"),
            "--window" => a.window = v.parse().expect("--window seconds"),
            "--runs" => a.runs = v.parse().expect("--runs N"),
            "--base-port" => a.base_port = v.parse().expect("--base-port P"),
            "--bin" => a.bin = Some(v),
            "--mqtt" | "--sparkplug" | "--smaps" | "--bench" => {
                match argv[i].as_str() {
                    "--mqtt" => a.mqtt = true,
                    "--sparkplug" => a.sparkplug = true,
                    "--smaps" => a.smaps = true,
                    _ => {}
                }
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}"),
        }
        i += 2;
    }
    assert!(
        !a.sparkplug || a.mqtt,
        "--sparkplug needs --mqtt (the broker)"
    );
    a
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime + cutime + cstime of a process, in ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // Fields 14..17 of stat; `after` starts at field 3.
    f[11] + f[12] + f[13] + f[14]
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Run {
    cpu_percent: f64,
    peak_rss_mib: f64,
    requests_per_device_cycle: f64,
    values_per_second: f64,
}

/// Counts the values of every `R/data` message the broker delivers (QoS 1,
/// clean session), on a thread of its own with its own runtime.
fn subscribe(port: u16, values: Arc<AtomicU64>) -> std::sync::mpsc::Receiver<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
            let mut o = MqttOptions::new("bench-counter", "127.0.0.1", port);
            o.set_keep_alive(Duration::from_secs(30));
            o.set_max_packet_size(8 << 20, 8 << 20);
            let (client, mut el) = AsyncClient::new(o, 64);
            let mut ready = Some(ready_tx);
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.try_subscribe("modbridge/bench/data/+", QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&p.payload).unwrap_or_default();
                        let n: usize = v["items"]
                            .as_object()
                            .map(|o| o.values().filter_map(|a| a.as_array()).map(Vec::len).sum())
                            .unwrap_or(0);
                        values.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    });
    ready_rx
}

fn one_run(args: &Args, bin: &str) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    // A profile with the registers, shared by every host.
    let mut profile = String::new();
    for r in 0..args.registers {
        profile.push_str(&format!(
            "[[items]]\ntable = \"holding\"\naddress = {r}\ntype = \"i16\"\n"
        ));
    }
    std::fs::write(dir.path().join("bench-profile.toml"), profile).expect("profile");
    let mut config = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = {:?}\n\n[storage]\ncommit_interval = \"1s\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n",
        dir.path().join("data")
    );
    for d in 0..args.devices {
        config.push_str(&format!(
            "\n[[hosts]]\nhost = \"dev{d:03}\"\nconnection = \"tcp://127.0.0.1:{}\"\nprofile = \"bench-profile.toml\"\npoll_interval = {:?}\ntimeout = \"1s\"\n",
            args.base_port + d,
            args.interval
        ));
    }
    // The broker and the subscriber outlive the gateway's run.
    let broker = args.mqtt.then(broker::Broker::start);
    let values = Arc::new(AtomicU64::new(0));
    if let Some(b) = &broker {
        config = config.replacen(
            "\n[api]",
            &format!("\n[mqtt]\nurl = {:?}\n\n[api]", b.url(false)),
            1,
        );
        if args.sparkplug {
            config = config.replacen("\n[api]", "\n[sparkplug]\ngroup_id = \"bench\"\n\n[api]", 1);
        }
        subscribe(b.port, values.clone())
            .recv_timeout(Duration::from_secs(30))
            .expect("subscriber did not connect");
    }
    let config_path = dir.path().join("bench.toml");
    std::fs::write(&config_path, config).expect("config");

    let mut sim = Command::new(bin)
        .args([
            "simulate",
            "--devices",
            &args.devices.to_string(),
            "--base-port",
            &args.base_port.to_string(),
            "--registers",
            &args.registers.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start simulator");
    // The simulator's latest report: when it came and the request total.
    let requests = Arc::new(Mutex::new((Instant::now(), 0u64)));
    let sim_out = sim.stdout.take().expect("sim stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    {
        let requests = requests.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(sim_out).lines().map_while(Result::ok) {
                if line.starts_with("serving") {
                    let _ = ready_tx.send(());
                }
                if let Some(n) = line.strip_prefix("requests ") {
                    let n = n.trim().parse().unwrap_or(0);
                    *requests.lock().expect("lock") = (Instant::now(), n);
                }
            }
        });
    }
    ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("simulator did not start");

    let mut gw: Child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start gateway");
    let pid = gw.id();
    std::thread::sleep(Duration::from_secs(args.warmup));
    let ticks0 = cpu_ticks(pid);
    let req0 = *requests.lock().expect("lock");
    let values0 = values.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(args.window));
    let ticks1 = cpu_ticks(pid);
    let req1 = *requests.lock().expect("lock");
    let values1 = values.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let hwm = vm_hwm_kib(pid);
    if args.smaps {
        print_memory_breakdown(pid);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = gw.wait().expect("gateway exit");
    let _ = sim.kill();
    let _ = sim.wait();
    assert!(status.success(), "gateway exited with {status}");
    let interval = parse_secs(&args.interval);
    // The simulator reports every 5 s: rate between its two reports.
    let cycles = req1.0.duration_since(req0.0).as_secs_f64() / interval;
    Run {
        cpu_percent: (ticks1 - ticks0) as f64 / clock_ticks() / elapsed * 100.0,
        peak_rss_mib: hwm as f64 / 1024.0,
        requests_per_device_cycle: (req1.1 - req0.1) as f64 / f64::from(args.devices) / cycles,
        values_per_second: (values1 - values0) as f64 / elapsed,
    }
}

/// Where the gateway's resident memory is, from /proc/PID/smaps: file-backed
/// mappings by file, anonymous memory by kind (heap, thread stacks and the
/// rest, which is mostly glibc's per-thread malloc arenas), and the threads.
fn print_memory_breakdown(pid: u32) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    let mut name = String::new();
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: range perms offset dev inode [path].
            let path = f.nth(4).unwrap_or("");
            name = match path {
                "" => "[anonymous: malloc arenas, stacks, mmap]".to_string(),
                p if p.starts_with('/') => format!("file {}", p.rsplit('/').next().unwrap_or(p)),
                p => p.to_string(),
            };
        } else if first == "Rss:" || first == "Anonymous:" {
            let kib: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let e = by.entry(name.clone()).or_default();
            if first == "Rss:" {
                e.0 += kib;
            } else {
                e.1 += kib;
            }
        }
    }
    let mut rows: Vec<_> = by.into_iter().filter(|(_, (rss, _))| *rss > 0).collect();
    rows.sort_by_key(|(_, (rss, _))| std::cmp::Reverse(*rss));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap_or("?")
        .trim();
    println!("memory of the gateway ({threads} threads), KiB resident (of it anonymous):");
    for (name, (rss, anon)) in rows {
        println!("  {rss:>7} ({anon:>6})  {name}");
    }
}

fn parse_secs(s: &str) -> f64 {
    if let Some(ms) = s.strip_suffix("ms") {
        ms.parse::<f64>().unwrap_or(1000.0) / 1000.0
    } else if let Some(sec) = s.strip_suffix('s') {
        sec.parse().unwrap_or(1.0)
    } else {
        1.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args = parse_args();
    let bin = args
        .bin
        .clone()
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_modbridge").to_string());
    let bin = bin.as_str();
    let mut runs = Vec::new();
    for i in 0..args.runs {
        let r = one_run(&args, bin);
        println!(
            "run {}: cpu {:.2} % of one core, peak RSS {:.1} MiB, {:.2} requests per device per cycle{}",
            i + 1,
            r.cpu_percent,
            r.peak_rss_mib,
            r.requests_per_device_cycle,
            if args.mqtt {
                format!(", {:.0} values/s delivered", r.values_per_second)
            } else {
                String::new()
            }
        );
        runs.push(r);
    }
    let optimum = f64::from(args.registers.div_ceil(125));
    println!(
        "\ngateway benchmark: {} devices x {} holding registers every {} ({} values/s){}, warm-up {} s, window {} s, {} run(s)",
        args.devices,
        args.registers,
        args.interval,
        u64::from(args.devices) * u64::from(args.registers) * 1000 / (parse_secs(&args.interval) * 1000.0) as u64,
        match (args.mqtt, args.sparkplug) {
            (true, true) => " to mosquitto, native and Sparkplug uplinks",
            (true, false) => " to mosquitto",
            _ => "",
        },
        args.warmup,
        args.window,
        args.runs
    );
    println!(
        "  median CPU          {:.2} % of one core",
        median(runs.iter().map(|r| r.cpu_percent).collect())
    );
    println!(
        "  median peak RSS     {:.1} MiB",
        median(runs.iter().map(|r| r.peak_rss_mib).collect())
    );
    println!(
        "  requests per device per cycle {:.2} (optimum {optimum})",
        median(runs.iter().map(|r| r.requests_per_device_cycle).collect())
    );
    if args.mqtt {
        println!(
            "  median values/s delivered {:.0}",
            median(runs.iter().map(|r| r.values_per_second).collect())
        );
    }
}
