//! `modbridge demo` and `modbridge simulate`: simulated devices, for trying the
//! gateway out and for benchmarks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::format_for_people;
use crate::model::Table;
use crate::{config, daemon, sim};

/// The demo's config template; its connection and data_dir are replaced at start.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");
/// The device profile the demo's simulated heat pump serves.
pub const DEMO_PROFILE: &str = include_str!("../../config/profiles/nibe-f1345.toml");
/// The address in the demo template that is replaced by the simulator's.
const DEMO_PLACEHOLDER_ADDR: &str = "127.0.0.1:15502";
/// The embedded broker's preferred port; the template's `[mqtt] url` names it
/// and is rewritten with the port the broker got.
#[cfg_attr(not(feature = "demo-broker"), allow(dead_code))]
const DEMO_MQTT_PORT: u16 = 1883;
/// The item the demo runs in a slow cycle for the template's trigger
/// ("above 52", "below 48"): up from half way at the start, so the trigger
/// fires about 13 s in (`asin(2/6)` of the period) and clears two minutes
/// later.
const CYCLE_KEY: &str = "modbus.heatpump.F1345.1.30003";
const CYCLE_LOW: f64 = 44.0;
const CYCLE_HIGH: f64 = 56.0;
const CYCLE_PERIOD: Duration = Duration::from_secs(240);
/// What the template's trigger fires above.
const CYCLE_FIRES_ABOVE: f64 = 52.0;

/// The template without its `[mqtt]` section (up to the next blank line),
/// for a build without the embedded broker.
#[cfg_attr(feature = "demo-broker", allow(dead_code))]
fn without_uplink(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping = false;
    for line in text.split_inclusive('\n') {
        if line.trim() == "[mqtt]" {
            skipping = true;
        } else if skipping && line.trim().is_empty() {
            skipping = false;
            continue;
        }
        if !skipping {
            out.push_str(line);
        }
    }
    out
}

/// The template's broker URL.
#[cfg_attr(not(feature = "demo-broker"), allow(dead_code))]
fn demo_mqtt_url(port: u16) -> String {
    format!("mqtt://127.0.0.1:{port}")
}

/// The embedded broker, when this build has one: the template with the
/// uplink pointing at it and the broker's port (else without an uplink).
/// The broker runs on its own threads until the process ends.
#[cfg(feature = "demo-broker")]
async fn uplink(text: String) -> anyhow::Result<(String, Option<u16>)> {
    let port = super::demo_broker::start(DEMO_MQTT_PORT).await?.port();
    let text = text.replace(&demo_mqtt_url(DEMO_MQTT_PORT), &demo_mqtt_url(port));
    Ok((text, Some(port)))
}

#[cfg(not(feature = "demo-broker"))]
async fn uplink(text: String) -> anyhow::Result<(String, Option<u16>)> {
    Ok((without_uplink(&text), None))
}

/// Runs the demo, reporting a bad `--duration` (exit 2) or a failure (exit 1).
pub(super) async fn cmd_demo(duration: Option<String>, dir: Option<PathBuf>) -> ExitCode {
    let duration = match duration.as_deref().map(crate::units::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            eprintln!("modbridge demo: --duration: {e}");
            return ExitCode::from(2);
        }
    };
    match demo(duration, dir).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modbridge demo: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn demo(duration: Option<Duration>, dir: Option<PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("modbridge-demo"));
    std::fs::create_dir_all(dir.join("profiles"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("profiles/nibe-f1345.toml"), DEMO_PROFILE)
        .with_context(|| format!("cannot write into {}", dir.display()))?;

    // The simulated heat pump, on a free loopback port.
    let device = sim::SimDevice::new();
    let server = device
        .bind_tcp("127.0.0.1:0")
        .await
        .context("cannot listen on loopback for the simulated device")?;
    let addr = server
        .addr()
        .context("the simulated device has no address")?;
    let text = DEMO_CONFIG
        .replace(DEMO_PLACEHOLDER_ADDR, &addr.to_string())
        .replace(
            "data_dir = \"./demo-data\"",
            &format!("data_dir = {:?}", dir.join("data")),
        );
    // The uplink: an MQTT broker of the demo's own on loopback.
    let (text, broker_port) = uplink(text).await?;
    let config_path = dir.join("modbridge.toml");
    std::fs::write(&config_path, &text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let mut config = config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The API: on the configured port, or on a free one if that is taken (the
    // config file is then rewritten, so `write`/`ack` with it find the demo).
    let api = crate::api::Server::bind_or_free_port(&config.api).await?;
    let api_addr = api.local_addr();
    let moved = api_addr != config.api.listen;
    if moved {
        let text = text.replace(
            &format!("listen = \"{}\"", config.api.listen),
            &format!("listen = \"{api_addr}\""),
        );
        std::fs::write(&config_path, &text)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        config = config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for host in &config.hosts {
        device.animate(&host.items);
        if let Some(item) = host.items.iter().find(|i| i.key == CYCLE_KEY) {
            device.cycle(item, CYCLE_LOW, CYCLE_HIGH, CYCLE_PERIOD);
        }
    }
    let gateway = crate::gateway::open(config.clone()).await?;
    let host = config
        .hosts
        .first()
        .context("the demo config has no host")?;
    let first_key = host
        .items
        .first()
        .map(|i| i.key.clone())
        .unwrap_or_default();
    // A setting to write: the first configurable item, to the middle of its bounds.
    let writable = host.items.iter().find(|i| i.configurable).map(|i| {
        let target = match (i.lower_bound(), i.upper_bound()) {
            (Some(lo), Some(hi)) => ((lo + hi) / 2.0).round(),
            (Some(lo), None) => lo,
            (None, Some(hi)) => hi,
            (None, None) => 1.0,
        };
        (i, format_for_people(target))
    });
    let write_hint = writable
        .as_ref()
        .map(|(i, target)| {
            format!(
                "\x20 modbridge write -c {} --host {} --key {} --target {target}\n",
                config_path.display(),
                host.host,
                i.key,
            )
        })
        .unwrap_or_default();
    let uplink_text = match (broker_port, &config.mqtt) {
        (Some(port), Some(mqtt)) => uplink_hint(port, mqtt, &config, host, writable.as_ref()),
        _ => "This build has no MQTT broker of its own (feature `demo-broker`), so the demo\n\
              runs without an uplink.\n"
            .to_string(),
    };
    let moved_note = if moved {
        format!(
            " (port {} is taken, so the demo uses {})",
            config.api.listen.port(),
            api_addr.port()
        )
    } else {
        String::new()
    };
    println!(
        "modbridge demo\n\
         \n\
         A simulated NIBE F1345 heat pump is serving Modbus TCP on {addr}.\n\
         The gateway polls it every {} and keeps history in {}.\n\
         \n\
         Status page: http://{api}/{moved_note}\n\
         \n\
         {uplink_text}\
         \n\
         Try, in another terminal:\n\
         \x20 modbridge check -c {cfg}\n\
         \x20 modbridge read  -c {cfg} --host {host}\n\
         \x20 modbridge probe --connection tcp://{addr} --table input --address 0 --count 12\n\
         \x20 curl http://{api}/hosts/{host}/items/{first_key}/history\n\
         \x20 curl http://{api}/metrics\n\
         {write_hint}\
         \n\
         Ctrl-C stops the demo.\n",
        crate::units::format_duration(host.poll_interval),
        dir.join("data").display(),
        cfg = config_path.display(),
        host = host.host,
        api = api_addr,
    );
    let live = gateway.host(&host.host);
    let host_spec = host.clone();
    let printer = async move {
        // Print what the gateway reads, so the demo shows something by itself.
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Some(live) = &live {
                let snapshot = live.lock().clone();
                let shown: Vec<String> = host_spec
                    .items
                    .iter()
                    .zip(snapshot.items.iter())
                    .filter(|(_, l)| l.value.is_some())
                    .take(4)
                    .map(|(i, l)| {
                        format!(
                            "{} = {} {}",
                            i.name(),
                            l.value.map(format_for_people).unwrap_or_default(),
                            i.unit()
                        )
                    })
                    .collect();
                println!("{}", shown.join(" | "));
            }
        }
    };
    let stop = async move {
        tokio::select! {
            () = daemon::termination_signal() => {}
            () = async {
                match duration {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            } => {}
            () = printer => {}
        }
    };
    daemon::run_gateway_with_api(gateway, Some(api), stop).await?;
    drop(server);
    println!(
        "demo stopped; history kept in {}",
        dir.join("data").display()
    );
    Ok(())
}

/// What the demo prints about its uplink: the broker, the trigger, and the
/// commands to watch the topics and to write a setting over MQTT.
fn uplink_hint(
    port: u16,
    mqtt: &crate::model::MqttSpec,
    config: &crate::model::Config,
    host: &crate::model::HostSpec,
    writable: Option<&(&crate::model::ItemSpec, String)>,
) -> String {
    let root = format!("{}/{}", mqtt.topic_prefix, config.gateway.id);
    let mut text = format!(
        "The gateway sends everything upstream (the native MQTT uplink) to an MQTT\n\
         broker of the demo's own on 127.0.0.1:{port}: data on {root}/data/{host},\n\
         events on {root}/events. Watch it:\n\
         \x20 mosquitto_sub -h 127.0.0.1 -p {port} -t '{root}/#' -v\n",
        host = host.host,
    );
    if let Some(trigger) = config.triggers.first() {
        text.push_str(&format!(
            "The trigger \"{}\" fires about {} s after the start and clears two minutes\n\
             later, every {}.\n",
            trigger.description,
            first_firing_secs(),
            crate::units::format_duration(CYCLE_PERIOD),
        ));
    }
    if let Some((item, target)) = writable {
        text.push_str(&format!(
            "Write a setting over MQTT (the outcome comes on {root}/config/{host}/{key}):\n\
             \x20 mosquitto_pub -h 127.0.0.1 -p {port} -q 1 -t {root}/cmd/config -m '{{\"host\":\"{host}\",\"key\":\"{key}\",\"target\":{target}}}'\n",
            host = host.host,
            key = item.key,
        ));
    }
    text
}

/// Seconds from the start until the cycled item passes [`CYCLE_FIRES_ABOVE`].
fn first_firing_secs() -> u64 {
    let mid = (CYCLE_LOW + CYCLE_HIGH) / 2.0;
    let amplitude = (CYCLE_HIGH - CYCLE_LOW) / 2.0;
    let fraction = ((CYCLE_FIRES_ABOVE - mid) / amplitude).asin() / std::f64::consts::TAU;
    (fraction * CYCLE_PERIOD.as_secs_f64()).round() as u64
}

/// Serves `devices` simulated devices whose registers change every second.
pub(super) async fn cmd_simulate(
    devices: u16,
    base_port: u16,
    registers: u16,
    bind: &str,
) -> ExitCode {
    let mut servers = Vec::new();
    let mut sims = Vec::new();
    for d in 0..devices {
        let Some(port) = base_port.checked_add(d) else {
            eprintln!("modbridge simulate: ports past 65535");
            return ExitCode::from(2);
        };
        let device = sim::SimDevice::new();
        match device.bind_tcp(&format!("{bind}:{port}")).await {
            Ok(s) => servers.push(s),
            Err(e) => {
                eprintln!("modbridge simulate: cannot listen on {bind}:{port}: {e}");
                return ExitCode::from(1);
            }
        }
        sims.push(device);
    }
    println!(
        "serving {devices} simulated devices on {bind}:{base_port}..{} with {registers} holding registers each",
        u32::from(base_port) + u32::from(devices) - 1
    );
    // Registers change once a second, like the benchmark's reference simulator.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u16 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = daemon::termination_signal() => break,
        }
        n = n.wrapping_add(1);
        if n % 5 == 0 {
            // For benchmark harnesses: requests answered so far, all devices.
            let total: u64 = sims.iter().map(|d| d.requests()).sum();
            println!("requests {total}");
        }
        for (d, device) in sims.iter().enumerate() {
            let values: Vec<u16> = (0..registers)
                .map(|r| n.wrapping_add(r).wrapping_add(d as u16) % 1000)
                .collect();
            device.set_registers(Table::Holding, 0, &values);
        }
    }
    drop(servers);
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_triggers_on_the_cycled_item() {
        let expression = format!("\"last(/heatpump/{CYCLE_KEY}) > {CYCLE_FIRES_ABOVE}\"");
        assert!(DEMO_CONFIG.contains(&expression), "{expression}");
        assert!(DEMO_CONFIG.contains(&format!("url = \"{}\"", demo_mqtt_url(DEMO_MQTT_PORT))));
        assert_eq!(first_firing_secs(), 13);
    }

    #[test]
    fn without_the_broker_the_template_has_no_uplink_and_still_loads() {
        let text = without_uplink(DEMO_CONFIG);
        assert!(!text.contains("[mqtt]") && !text.contains(&demo_mqtt_url(DEMO_MQTT_PORT)));
        assert!(text.contains("[api]") && text.contains("[[hosts]]"));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("profiles")).expect("mkdir");
        std::fs::write(dir.path().join("profiles/nibe-f1345.toml"), DEMO_PROFILE).expect("profile");
        let path = dir.path().join("modbridge.toml");
        std::fs::write(&path, text).expect("config");
        let config = config::load(&path).expect("loads");
        assert!(config.mqtt.is_none());
        assert_eq!(config.triggers.len(), 1);
    }
}
