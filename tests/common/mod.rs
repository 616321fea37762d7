//! Shared test fixtures: hand-built host specs, simulated devices, socat pty pairs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use modbridge::daemon::{self, DaemonError};
use modbridge::gateway::{self, Gateway};
use modbridge::model::{Config, Connection, HostSpec, ItemSpec, SerialSettings, Table, ValueType};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_modbus::ExceptionCode;

/// Exceptions that answer the request itself, with the name messages give them.
pub const ABOUT_THE_REQUEST: [(ExceptionCode, &str); 3] = [
    (ExceptionCode::IllegalFunction, "0x01 (illegal function)"),
    (
        ExceptionCode::IllegalDataAddress,
        "0x02 (illegal data address)",
    ),
    (ExceptionCode::IllegalDataValue, "0x03 (illegal data value)"),
];

/// Exceptions that say the device cannot answer now.
pub const NOT_NOW: [(ExceptionCode, &str); 5] = [
    (
        ExceptionCode::ServerDeviceFailure,
        "0x04 (server device failure)",
    ),
    (ExceptionCode::Acknowledge, "0x05 (acknowledge)"),
    (ExceptionCode::ServerDeviceBusy, "0x06 (server device busy)"),
    (
        ExceptionCode::GatewayPathUnavailable,
        "0x0A (gateway path unavailable)",
    ),
    (
        ExceptionCode::GatewayTargetDevice,
        "0x0B (gateway target device failed to respond)",
    ),
];

/// An item with defaults: scale 1, no deadband, 1 s poll.
pub fn item(key: &str, table: Table, address: u16, value_type: ValueType) -> ItemSpec {
    ItemSpec {
        poll_interval: Duration::from_secs(1),
        ..ItemSpec::new(key, table, address, value_type)
    }
}

/// A TCP host with defaults: timeout 300 ms, no retries, 125 registers, gap 8.
pub fn tcp_host(id: &str, addr: std::net::SocketAddr, items: Vec<ItemSpec>) -> HostSpec {
    HostSpec {
        poll_interval: Duration::from_secs(1),
        timeout: Duration::from_millis(300),
        retries: 0,
        ..HostSpec::tcp(id, &addr.ip().to_string(), addr.port(), items)
    }
}

/// An RTU host on a serial port.
pub fn rtu_host(id: &str, path: &str, unit: u8, items: Vec<ItemSpec>) -> HostSpec {
    HostSpec {
        connection: Connection::Rtu {
            path: path.to_string(),
        },
        serial: Some(SerialSettings {
            baud: 19200,
            ..SerialSettings::default()
        }),
        unit,
        ..tcp_host(id, "127.0.0.1:1".parse().unwrap(), items)
    }
}

/// A pair of connected pseudo terminals made by socat; killed on drop.
pub struct PtyPair {
    child: Child,
    pub a: String,
    pub b: String,
}

impl PtyPair {
    /// Starts socat and waits until it names both ptys.
    pub fn new() -> PtyPair {
        let mut child = Command::new("socat")
            .args(["-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("socat must be installed (apt-get install socat)");
        let stderr = child.stderr.take().expect("socat stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut ptys = Vec::new();
        while ptys.len() < 2 {
            let line = lines
                .next()
                .expect("socat ended before naming its ptys")
                .expect("socat stderr");
            if let Some(pos) = line.find("PTY is ") {
                ptys.push(line[pos + 7..].trim().to_string());
            }
        }
        // socat logs "starting data transfer loop" once both ends are open.
        for line in lines.by_ref() {
            if line
                .map(|l| l.contains("starting data transfer loop"))
                .unwrap_or(true)
            {
                break;
            }
        }
        // Keep draining stderr so socat never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        PtyPair {
            child,
            a: ptys.remove(0),
            b: ptys.remove(0),
        }
    }
}

impl Drop for PtyPair {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway running in the test's runtime until `stop`.
pub struct Running {
    pub gateway: Gateway,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), DaemonError>>,
}

impl Running {
    /// Opens the gateway for `config` and runs it.
    pub async fn start(config: Config) -> Running {
        Running::run(gateway::open(config).await.expect("open"))
    }

    /// Loads the config file at `path`, opens the gateway and runs it.
    pub async fn start_file(path: &std::path::Path) -> Running {
        Running::start(modbridge::config::load(path).expect("valid config")).await
    }

    /// Runs a gateway already opened.
    pub fn run(gateway: Gateway) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(daemon::run_gateway(gateway.clone(), async move {
            let _ = stopped.await;
        }));
        Running {
            gateway,
            stop,
            task,
        }
    }

    /// Stops the gateway and checks it stopped cleanly; returns it.
    pub async fn stop(self) -> Gateway {
        let _ = self.stop.send(());
        self.task.await.expect("join").expect("clean stop");
        self.gateway
    }
}
