//! A gateway polling an in-process simulated device, with its HTTP API on
//! 127.0.0.1:0, and a raw HTTP/1.1 client for talking to it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use modbridge::daemon::DaemonError;
use modbridge::gateway::Gateway;
use modbridge::model::Table;
use modbridge::sim::{SimDevice, SimServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The config: host `pump` with a sensor `temp` (input 0, i16 x0.1 degC), a
/// configurable `setpoint` (holding 10, u16, 10..60 degC), an item `broken`
/// whose register answers an exception, and trigger 17 (`temp` above 30).
pub fn config_text(device: SocketAddr, data: &Path, api_extra: &str) -> String {
    format!(
        r#"
[gateway]
id = "box-api"
name = "API test box"
data_dir = "{data}"

[storage]
commit_interval = "200ms"

[api]
listen = "127.0.0.1:0"
{api_extra}

[[hosts]]
host = "pump"
name = "Heat pump"
connection = "tcp://{device}"
model = "F1345"
poll_interval = "1s"
timeout = "300ms"
type = "heating/heat-pump"
tags = ["plant-room"]

[[hosts.items]]
key = "temp"
name = "Outdoor temp"
table = "input"
address = 0
type = "i16"
scale = 0.1
unit = "degC"

[[hosts.items]]
key = "setpoint"
name = "Flow setpoint"
table = "holding"
address = 10
type = "u16"
unit = "degC"
configurable = true
lower_bound = 10
upper_bound = 60

[[hosts.items]]
key = "broken"
name = "Broken register"
table = "input"
address = 2
type = "u16"

[[triggers]]
triggerid = 17
description = "Outdoor too warm"
severity = 4
expression = "last(/pump/temp) > 30"
"#,
        data = data.display()
    )
}

/// A running gateway with its API.
pub struct TestGateway {
    pub device: SimDevice,
    pub server: Option<SimServer>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub gateway: Gateway,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    run: Option<tokio::task::JoinHandle<Result<(), DaemonError>>>,
}

impl TestGateway {
    /// Starts the device and the gateway; returns after the first poll cycle.
    pub async fn start(api_extra: &str) -> TestGateway {
        TestGateway::start_at("127.0.0.1:0", api_extra).await
    }

    /// Like [`TestGateway::start`], with the API on `listen`; `addr` is then
    /// its loopback address when it listens on every interface.
    pub async fn start_at(listen: &str, api_extra: &str) -> TestGateway {
        TestGateway::start_full(listen, api_extra, |api| api).await
    }

    /// [`TestGateway::start`] with the API server changed by `server` (limits).
    pub async fn start_with(
        api_extra: &str,
        limits: impl FnOnce(modbridge::api::Server) -> modbridge::api::Server,
    ) -> TestGateway {
        TestGateway::start_full("127.0.0.1:0", api_extra, limits).await
    }

    async fn start_full(
        listen: &str,
        api_extra: &str,
        limits: impl FnOnce(modbridge::api::Server) -> modbridge::api::Server,
    ) -> TestGateway {
        let device = SimDevice::new();
        device.set_register(Table::Input, 0, 215); // 21.5 degC
        device.set_register(Table::Holding, 10, 45);
        device.faults(|f| {
            f.exception_at.insert((Table::Input, 2));
        });
        let server = device.bind_tcp("127.0.0.1:0").await.expect("bind device");
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("modbridge.toml");
        std::fs::write(
            &config_path,
            config_text(
                server.addr().expect("device addr"),
                &dir.path().join("data"),
                api_extra,
            )
            .replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{listen}\""),
            ),
        )
        .expect("write config");
        let config = modbridge::config::load(&config_path).expect("valid config");
        let api = limits(
            modbridge::api::Server::bind(&config.api)
                .await
                .expect("bind API"),
        );
        let mut addr = api.local_addr();
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let gateway = modbridge::gateway::open(config).await.expect("open");
        let live = gateway.host("pump").expect("host");
        let mut cycles = live.subscribe();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(modbridge::daemon::run_gateway_with_api(
            gateway.clone(),
            Some(api),
            async {
                let _ = stop_rx.await;
            },
        ));
        tokio::time::timeout(Duration::from_secs(10), cycles.changed())
            .await
            .expect("a first poll cycle within 10 s")
            .expect("cycles");
        TestGateway {
            device,
            server: Some(server),
            dir,
            config_path,
            gateway,
            addr,
            stop: Some(stop),
            run: Some(run),
        }
    }

    /// Waits until the host finished `n` more poll cycles.
    pub async fn cycles(&self, n: usize) {
        let live = self.gateway.host("pump").expect("host");
        let mut rx = live.subscribe();
        for _ in 0..n {
            tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .expect("a poll cycle within 10 s")
                .expect("cycles");
        }
    }

    /// Sends one request to the API.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        http(self.addr, method, path, headers, body).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.http("GET", path, &[], None).await
    }

    /// PUTs `body` as a config request for item `key` of host `pump`.
    pub async fn put_config(&self, key: &str, body: &str) -> Reply {
        let path = format!("/hosts/pump/items/{key}/config");
        self.http("PUT", &path, &[], Some(body)).await
    }

    /// GETs each path and checks it answers a JSON error with `status`.
    pub async fn assert_get_errors(&self, status: u16, paths: &[&str]) {
        for path in paths {
            let reply = self.get(path).await;
            assert_eq!(reply.status, status, "GET {path}: {}", reply.body);
            reply.assert_error(status);
        }
    }

    /// Stops the gateway (and its API) cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(run) = self.run.take() {
            run.await.expect("join").expect("clean stop");
        }
    }
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error answer: this status, JSON `{"error": "<text>"}`.
    pub fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "error answers are JSON: {:?}",
            self.headers
        );
        let v = self.json();
        let text = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{{\"error\": string}}: {v}"));
        assert!(!text.is_empty());
        text.to_string()
    }
}

/// Sends raw bytes and reads the answer until the server closes.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let head = request.starts_with(b"HEAD ");
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the API");
    stream.write_all(request).await.expect("send");
    let mut data = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut data))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    parse(&data, head)
}

/// Parses an answer; `head`: to a HEAD request (no body follows the headers).
fn parse(data: &[u8], head: bool) -> Reply {
    let split = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of headers: {:?}", String::from_utf8_lossy(data)));
    let text = std::str::from_utf8(&data[..split]).expect("text headers");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().expect("status line");
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status: u16 = status_line[9..12].parse().expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = data[split + 4..].to_vec();
    if head {
        assert!(body.is_empty(), "no body after HEAD");
    } else if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"))
    {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").expect("chunk");
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..eol]).expect("size").trim(), 16)
                    .expect("hex size");
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    } else if let Some((_, len)) = headers.iter().find(|(n, _)| n == "content-length") {
        let len: usize = len.parse().expect("content-length");
        assert!(body.len() >= len, "short body");
        body.truncate(len);
    }
    Reply {
        status,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    raw(addr, req.as_bytes()).await
}

/// A gateway serving its API as the daemon runs it, until `stop` is sent.
pub struct Served {
    pub gateway: Gateway,
    pub addr: SocketAddr,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub run: tokio::task::JoinHandle<Result<(), DaemonError>>,
}

/// Opens the gateway of `config` and runs it with its API.
pub async fn serve(config: modbridge::model::Config) -> Served {
    let api = modbridge::api::Server::bind(&config.api)
        .await
        .expect("bind API");
    let addr = api.local_addr();
    let gateway = modbridge::gateway::open(config).await.expect("open");
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(modbridge::daemon::run_gateway_with_api(
        gateway.clone(),
        Some(api),
        async {
            let _ = stop_rx.await;
        },
    ));
    Served {
        gateway,
        addr,
        stop,
        run,
    }
}
