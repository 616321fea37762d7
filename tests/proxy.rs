//! `[[proxy]]`: Modbus TCP clients reach the devices the gateway polls
//! through the gateway's own link: a socat pty line with two simulated RTU
//! units, and a TCP device that the gateway already holds a connection to.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::{PtyPair, Running};
use modbridge::model::Table;
use modbridge::sim::SimDevice;
use tokio::io::AsyncReadExt;
use tokio_modbus::client::{Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let text = format!(
        "[gateway]\nid = \"proxy-box\"\ndata_dir = \"{}\"\n\n{body}",
        dir.join("data").display()
    );
    let path = dir.join("modbridge.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

async fn client(addr: SocketAddr, unit: u8) -> tokio_modbus::client::Context {
    tokio_modbus::client::tcp::connect_slave(addr, Slave(unit))
        .await
        .expect("connect to the proxy")
}

/// The answer of a read as (values or exception).
async fn read(
    ctx: &mut tokio_modbus::client::Context,
    start: u16,
    count: u16,
) -> Result<Vec<u16>, ExceptionCode> {
    tokio::time::timeout(
        Duration::from_secs(5),
        ctx.read_holding_registers(start, count),
    )
    .await
    .expect("the proxy answers in time")
    .expect("no transport error")
}

fn polls(running: &Running, host: &str) -> (u64, u64) {
    let snapshot = running.gateway.running();
    let live = snapshot.hosts.get(host).expect("host").lock();
    (live.polls, live.request_errors)
}

const SERIAL_HOSTS: &str = r#"
[[hosts]]
host = "a"
connection = "rtu://PTY"
baud = 19200
unit = 2
poll_interval = "200ms"
timeout = "1s"
retries = 0

[[hosts.items]]
table = "holding"
address = 0
type = "u16"

[[hosts]]
host = "b"
connection = "rtu://PTY"
baud = 19200
unit = 3
poll_interval = "200ms"
timeout = "1s"
retries = 0

[[hosts.items]]
table = "input"
address = 1
type = "u16"

[[proxy]]
listen = "127.0.0.1:0"
connection = "rtu://PTY"
units = [2, 3, 4]
timeout = "1s"
"#;

#[tokio::test]
async fn clients_share_the_serial_line_with_polling() {
    let pty = PtyPair::new();
    let device = SimDevice::new();
    device.answer_units(&[2, 3]);
    device.set_registers(
        Table::Holding,
        0,
        &[42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1001, 1002, 1003],
    );
    device.set_register(Table::Input, 1, 7);
    let _server = device.serve_rtu(&pty.b, 19200).expect("serve rtu");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &SERIAL_HOSTS.replace("PTY", &pty.a));
    let running = Running::start_file(&path).await;
    let addr = running.gateway.proxies.listening("127.0.0.1:0").await;

    // Four clients read through the proxy at once while both hosts poll.
    let before = (polls(&running, "a").0, polls(&running, "b").0);
    let started = tokio::time::Instant::now();
    let mut clients = Vec::new();
    for c in 0..4u8 {
        clients.push(tokio::spawn(async move {
            let mut ctx = client(addr, 2 + c % 2).await;
            for _ in 0..120 {
                assert_eq!(read(&mut ctx, 10, 3).await, Ok(vec![1001, 1002, 1003]));
            }
        }));
    }
    for c in clients {
        c.await.expect("client");
    }
    let elapsed = started.elapsed();
    let after = (polls(&running, "a"), polls(&running, "b"));
    // No overlapping frames: every poll and every proxied request answered.
    assert_eq!(after.0 .1, 0, "host a saw request errors");
    assert_eq!(after.1 .1, 0, "host b saw request errors");
    // Polling kept its rate: one cycle per 200 ms (two of slack for a busy machine).
    let cycles = (elapsed.as_millis() / 200) as u64;
    assert!(
        cycles >= 5,
        "the clients kept the line busy for several cycles: {elapsed:?}"
    );
    for (host, done) in [("a", after.0 .0 - before.0), ("b", after.1 .0 - before.1)] {
        eprintln!("host {host}: {done} polls in {elapsed:?} under 4 proxy clients");
        assert!(
            done + 1 >= cycles,
            "host {host}: {done} polls in {elapsed:?}"
        );
    }
    let snapshot = running.gateway.running();
    let value = snapshot.hosts.get("a").expect("a").lock().items[0].value;
    assert_eq!(value, Some(42.0));

    let mut ctx = client(addr, 2).await;
    // Writes are refused by default, with 01; the register is unchanged.
    let w = ctx
        .write_single_register(10, 5)
        .await
        .expect("no transport error");
    assert_eq!(w, Err(ExceptionCode::IllegalFunction));
    assert_eq!(device.register(Table::Holding, 10), 1001);
    // Mask write (22) is not forwarded either.
    let m = ctx
        .masked_write_register(10, 0xFF, 0)
        .await
        .expect("no transport error");
    assert_eq!(m, Err(ExceptionCode::IllegalFunction));
    // A unit outside `units`: 0A; a silent unit: 0B; broadcast: 0A.
    let mut other = client(addr, 9).await;
    assert_eq!(
        read(&mut other, 0, 1).await,
        Err(ExceptionCode::GatewayPathUnavailable)
    );
    let mut silent = client(addr, 4).await;
    assert_eq!(
        read(&mut silent, 0, 1).await,
        Err(ExceptionCode::GatewayTargetDevice)
    );
    let mut broadcast = client(addr, 0).await;
    assert_eq!(
        read(&mut broadcast, 0, 1).await,
        Err(ExceptionCode::GatewayPathUnavailable)
    );
    // The device's own exception passes through.
    device.faults(|f| {
        f.exception_at.insert((Table::Holding, 20));
    });
    assert_eq!(
        read(&mut ctx, 20, 1).await,
        Err(ExceptionCode::IllegalDataAddress)
    );

    // A third-party client.
    let port = addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("mbpoll")
            .args([
                "-m",
                "tcp",
                "-p",
                &port,
                "-a",
                "3",
                "-t",
                "4",
                "-0",
                "-r",
                "10",
                "-c",
                "3",
                "-1",
                "127.0.0.1",
            ])
            .output()
            .expect("mbpoll must be installed (apt-get install mbpoll)")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (reg, value) in [(10, 1001), (11, 1002), (12, 1003)] {
        assert!(stdout.contains(&format!("[{reg}]: \t{value}")), "{stdout}");
    }
    let metrics = running.gateway.proxies.snapshot();
    let (_, counters) = &metrics[0];
    assert!(
        counters.of(modbridge::proxy::Outcome::Ok) >= 481,
        "{counters:?}"
    );
    assert_eq!(counters.of(modbridge::proxy::Outcome::Refused), 2);
    assert_eq!(counters.of(modbridge::proxy::Outcome::Unit), 2);
    assert_eq!(counters.of(modbridge::proxy::Outcome::NoAnswer), 1);
    assert_eq!(counters.of(modbridge::proxy::Outcome::Exception), 1);
    // `scan` through the proxy finds exactly the units on the line: the
    // proxy's 0A (outside `units`) and 0B (silent unit 4) mean "not there".
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_modbridge"))
            .args([
                "scan",
                "--connection",
                &format!("tcp://{addr}"),
                "--units",
                "1-6",
                "--timeout",
                "2s",
            ])
            .output()
            .expect("run modbridge scan")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let found: Vec<&str> = stdout.lines().filter(|l| l.starts_with("found:")).collect();
    assert_eq!(
        found.len(),
        2,
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        found[0].contains(" unit 2") && found[1].contains(" unit 3"),
        "{found:?}"
    );
    drop((ctx, other, silent, broadcast));
    running.stop().await;
}

#[tokio::test]
async fn an_idle_client_is_closed() {
    let device = SimDevice::new();
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let sim = server.addr().expect("addr");
    let spec = modbridge::model::ProxySpec {
        listen: "127.0.0.1:0".parse().expect("addr"),
        connection: modbridge::model::Connection::Tcp {
            host: sim.ip().to_string(),
            port: sim.port(),
        },
        serial: None,
        units: None,
        writes: false,
        timeout: Duration::from_secs(1),
    };
    let listener = modbridge::proxy::bind(&spec).await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let status = modbridge::proxy::ProxyStatus::new();
    let proxy = modbridge::proxy::Proxy::new(spec, &[], Default::default(), status);
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(modbridge::proxy::serve_limited(
        listener,
        proxy,
        cancel.clone(),
        16,
        Duration::from_millis(300),
    ));
    let mut ctx = client(addr, 1).await;
    assert_eq!(read(&mut ctx, 0, 1).await, Ok(vec![0]));
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed only once idle"
    );
    cancel.cancel();
    task.await.expect("join");
}

#[tokio::test]
async fn at_most_sixteen_clients() {
    let pty = PtyPair::new();
    let device = SimDevice::new();
    device.answer_units(&[2, 3]);
    let _server = device.serve_rtu(&pty.b, 19200).expect("serve rtu");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &SERIAL_HOSTS.replace("PTY", &pty.a));
    let running = Running::start_file(&path).await;
    let addr = running.gateway.proxies.listening("127.0.0.1:0").await;
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut ctx = client(addr, 2).await;
        // Answered: the proxy has taken this connection.
        assert_eq!(read(&mut ctx, 0, 1).await, Ok(vec![0]));
        open.push(ctx);
    }
    // The 17th is accepted and closed at once.
    let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the 17th connection is closed");
    let refused = running.gateway.proxies.snapshot()[0].1.refused_clients;
    assert_eq!(refused, 1);
    // One closes: a new client is served again.
    open.pop();
    let mut again = loop {
        let mut ctx = client(addr, 3).await;
        match tokio::time::timeout(Duration::from_secs(5), ctx.read_holding_registers(0, 1)).await {
            Ok(Ok(Ok(_))) => break ctx,
            // Closed because the permit was not yet given back: try again.
            _ => tokio::task::yield_now().await,
        }
    };
    assert_eq!(read(&mut again, 0, 1).await, Ok(vec![0]));
    drop(open);
    running.stop().await;
}

#[tokio::test]
async fn a_proxy_in_front_of_a_tcp_host_uses_the_gateways_connection() {
    let device = SimDevice::new();
    device.set_register(Table::Holding, 5, 77);
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let sim = server.addr().expect("addr");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &format!(
            r#"
[[hosts]]
host = "inverter"
connection = "tcp://{sim}"
poll_interval = "200ms"

[[hosts.items]]
table = "holding"
address = 5
type = "u16"

[[proxy]]
listen = "127.0.0.1:0"
connection = "tcp://{sim}"
writes = true
"#
        ),
    );
    let running = Running::start_file(&path).await;
    let addr = running.gateway.proxies.listening("127.0.0.1:0").await;
    let mut ctx = client(addr, 1).await;
    assert_eq!(read(&mut ctx, 5, 1).await, Ok(vec![77]));
    // Writes are forwarded when enabled, and counted.
    let w = ctx
        .write_single_register(6, 1234)
        .await
        .expect("no transport error");
    assert_eq!(w, Ok(()));
    assert_eq!(device.register(Table::Holding, 6), 1234);
    let w = ctx
        .write_multiple_registers(7, &[1, 2])
        .await
        .expect("no transport error");
    assert_eq!(w, Ok(()));
    assert_eq!(device.register(Table::Holding, 8), 2);
    assert_eq!(running.gateway.proxies.snapshot()[0].1.writes, 2);
    // A unit no host polls goes over the same connection too.
    let mut other = client(addr, 9).await;
    assert_eq!(read(&mut other, 5, 1).await, Ok(vec![77]));
    // Device identification (43/14) is forwarded.
    device.set_identification("ACME", "Inverter 5k", "1.0");
    let request = modbridge::scan::identification_request().expect("43/14 request");
    let answer = tokio_modbus::client::Client::call(&mut ctx, request)
        .await
        .expect("no transport error");
    match answer {
        Ok(tokio_modbus::Response::ReadDeviceIdentification(id)) => {
            let vendor = &id.device_id_objects[0];
            assert_eq!((vendor.id, vendor.value_as_str()), (0, Some("ACME")));
        }
        other => panic!("not an identification: {other:?}"),
    }
    // One connection to the device, the gateway's, whatever the clients did.
    assert_eq!(device.connections(), 1);
    let (polls, errors) = polls(&running, "inverter");
    assert!(polls >= 1 && errors == 0, "{polls} polls, {errors} errors");
    drop((ctx, other));
    running.stop().await;
}

#[test]
fn proxy_config_is_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = write_config(
        dir.path(),
        r#"
[[hosts]]
host = "a"
connection = "rtu:///dev/ttyX"
baud = 19200

[[proxy]]
listen = "nowhere"
connection = "tcp://10.0.0.1:502"
units = [3, 300]
writes = "yes"
baud = 9600
colour = "red"

[[proxy]]
connection = "rtu:///dev/ttyX"
baud = 9600
"#,
    );
    let errors = modbridge::config::load(&bad)
        .expect_err("invalid")
        .to_string();
    for want in [
        ":12:10: proxy[1]: listen \"nowhere\" must be an IP address and port",
        ":14:13: proxy[1]: units must be whole numbers from 0 to 255",
        ":15:10: proxy[1]: writes must be true or false",
        ":16:1: proxy[1]: baud is a serial line setting, but this proxy connects over TCP",
        ":17:1: proxy[1]: unknown key \"colour\" in [[proxy]]",
        "proxy[2]: listen is required in [[proxy]]",
    ] {
        assert!(errors.contains(want), "missing {want:?} in\n{errors}");
    }
    let good = write_config(
        dir.path(),
        "[[hosts]]\nhost = \"a\"\nconnection = \"rtu:///dev/ttyX\"\nbaud = 19200\ntimeout = \"250ms\"\n\n\
         [[proxy]]\nlisten = \"0.0.0.0:5020\"\nconnection = \"rtu:///dev/ttyX\"\nunits = [1, 2]\n",
    );
    let config = modbridge::config::load(&good).expect("valid");
    let proxy = &config.proxies[0];
    assert_eq!(
        proxy.serial.map(|s| s.baud),
        Some(19200),
        "the line's settings"
    );
    assert_eq!(
        proxy.timeout,
        Duration::from_millis(250),
        "the hosts' timeout"
    );
    assert!(!proxy.writes);
    let report = modbridge::cli::check_report(&config);
    assert!(
        report.contains(
            "proxy 0.0.0.0:5020 -> rtu:///dev/ttyX, units 1,2, writes refused, timeout 250ms"
        ),
        "{report}"
    );
}
