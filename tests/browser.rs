//! The status page in a real browser: Debian's headless Chromium loads it
//! from a gateway polling the in-process simulated device, and the live
//! values must appear in the DOM. A screenshot is left under the cargo target
//! directory (`tmp/status-page.png`) for a person to look at.
//!
//! A second test drives the page through the DevTools protocol (a small
//! WebSocket client below): a technician acknowledges an active alarm with the
//! button, the gateway asks for its token (401), the page asks for it, and
//! the acknowledgement shows up on the page and in the API.
//!
//! Chromium is required: without it these tests fail and say how to install
//! it (CI installs it).

#[path = "common/api_gateway.rs"]
mod api_gateway;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_gateway::TestGateway;
use modbridge::model::Table;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn chromium() -> PathBuf {
    let path = std::env::var_os("MODBRIDGE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "this test needs headless Chromium at {}: install it with `apt-get install -y chromium` \
         (or point MODBRIDGE_CHROMIUM at a Chromium binary)",
        path.display()
    );
    path
}

/// The flags every headless Chromium here runs with.
const HEADLESS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
];

/// Runs headless Chromium on `url` with `extra` arguments; returns stdout.
async fn run_chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut args: Vec<String> = HEADLESS
        .iter()
        .chain(&["--virtual-time-budget=8000"])
        .map(|s| s.to_string())
        .collect();
    args.push(format!("--user-data-dir={}", profile.path().display()));
    args.extend(extra.iter().cloned());
    args.push(url.to_string());
    let bin = chromium();
    // Blocking: the gateway keeps serving on the test's runtime meanwhile.
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(&bin)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if child.try_wait().expect("wait").is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().expect("chromium output")
    })
    .await
    .expect("join");
    drop(profile);
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(name)
}

#[tokio::test]
async fn the_status_page_shows_live_values_in_a_real_browser() {
    let gw = TestGateway::start("").await;
    gw.device.set_register(Table::Input, 0, 315); // 31.5 degC: trigger 17 fires
    let live = gw.gateway.host("pump").expect("host");
    let mut rx = live.subscribe();
    while !live.lock().items[0]
        .value
        .is_some_and(|v| (v - 31.5).abs() < 1e-9)
    {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a poll cycle")
            .expect("cycles");
    }
    // A write, so that the page has one to show.
    let mut changes = gw.gateway.writes.subscribe();
    let r = gw
        .http(
            "PUT",
            "/hosts/pump/items/setpoint/config",
            &[],
            Some(r#"{"target":52}"#),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    while gw.device.register(Table::Holding, 10) != 52
        || gw.get("/hosts/pump/items/setpoint/config").await.json()["status"] != "SUCCESS"
    {
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("the write settles")
            .expect("changes");
    }
    // The active alarm.
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.get("/triggers/17").await.json()["value"] != "problem" {
        assert!(Instant::now() < deadline, "trigger 17 never fired");
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
    }
    let url = format!("http://{}/", gw.addr);
    let dom = run_chromium(&url, &["--dump-dom".to_string()]).await;
    for expected in [
        "31.5 degC",            // the live value with its unit
        "Outdoor temp",         // the item's name
        "Heat pump",            // the host's name
        "illegal data address", // the broken item's error
        "box-api",              // the gateway's id, from /health
        "healthy",
        "problem",
        "Outdoor too warm", // the active alarm...
        "B-Larm",
        ">Acknowledge</button>", // ...with its button
        "52 degC",               // the write's target...
        "SUCCESS",               // ...and its outcome
    ] {
        assert!(
            dom.contains(expected),
            "{expected:?} is not on the rendered page:\n{dom}"
        );
    }
    assert!(
        dom.contains("data-key=\"temp\""),
        "items are rendered as rows: {dom}"
    );
    assert!(
        dom.contains("<span id=\"offline\" class=\"badge bad\" style=\"display: none;\">"),
        "the page reached the API: {dom}"
    );

    // Pictures for a person: a phone-sized and a desktop-sized one.
    for (name, size) in [
        ("status-page.png", "412,1100"),
        ("status-page-wide.png", "1200,1000"),
    ] {
        let path = screenshot_path(name);
        let _ = std::fs::remove_file(&path);
        run_chromium(
            &url,
            &[
                format!("--screenshot={}", path.display()),
                format!("--window-size={size}"),
            ],
        )
        .await;
        let meta = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("no screenshot at {}: {e}", path.display()));
        assert!(meta.len() > 1000, "a real picture");
        eprintln!("screenshot: {}", path.display());
    }
    gw.stop().await;
}

/// `GET /json/list` of the DevTools HTTP server (which keeps connections open:
/// the body is read by its length).
async fn devtools_targets(devtools: std::net::SocketAddr) -> serde_json::Value {
    let mut s = TcpStream::connect(devtools).await.expect("devtools http");
    s.write_all(format!("GET /json/list HTTP/1.1\r\nHost: {devtools}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("devtools answers")
            .expect("read");
        assert!(n > 0, "devtools closed early");
        data.extend_from_slice(&buf[..n]);
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if data.len() >= end + 4 + len {
                return serde_json::from_slice(&data[end + 4..end + 4 + len]).expect("targets");
            }
        }
    }
}

/// A headless Chromium with the DevTools protocol on a WebSocket; killed on drop.
struct Browser {
    child: std::process::Child,
    _profile: tempfile::TempDir,
    ws: TcpStream,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium on `url` and connects to that page's DevTools socket.
    async fn open(url: &str, window: &str) -> Browser {
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(chromium())
            .args(HEADLESS)
            .args([
                "--remote-debugging-port=0",
                &format!("--window-size={window}"),
                &format!("--user-data-dir={}", profile.path().display()),
                url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        // Chromium writes its DevTools port into the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            assert!(Instant::now() < deadline, "chromium did not open DevTools");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let devtools: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        // The page target for our URL.
        let ws_path = loop {
            let targets = devtools_targets(devtools).await;
            let found = targets.as_array().and_then(|t| {
                t.iter()
                    .find(|t| {
                        t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                    })
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(|u| {
                        u.splitn(4, '/')
                            .nth(3)
                            .map(|p| format!("/{p}"))
                            .expect("ws path")
                    })
            });
            if let Some(p) = found {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "no page target for {url}: {targets}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut ws = TcpStream::connect(devtools).await.expect("devtools socket");
        ws.write_all(
            format!(
                "GET {ws_path} HTTP/1.1\r\nHost: {devtools}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("handshake");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            ws.read_exact(&mut b).await.expect("handshake answer");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        }
    }

    async fn send_frame(&mut self, text: &str) {
        let data = text.as_bytes();
        let mut frame = vec![0x81u8];
        match data.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.ws.write_all(&frame).await.expect("send frame");
    }

    async fn read_message(&mut self) -> String {
        let mut message = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.ws.read_exact(&mut h).await.expect("frame header");
            let fin = h[0] & 0x80 != 0;
            let opcode = h[0] & 0x0f;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.ws.read_exact(&mut b).await.expect("len");
                    u64::from(u16::from_be_bytes(b))
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.ws.read_exact(&mut b).await.expect("len");
                    u64::from_be_bytes(b)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; usize::try_from(len).expect("frame size")];
            self.ws.read_exact(&mut payload).await.expect("payload");
            match opcode {
                0x8 => panic!("DevTools closed the connection"),
                0x9 | 0xA => continue, // ping/pong
                _ => message.extend_from_slice(&payload),
            }
            if fin {
                return String::from_utf8(message).expect("text message");
            }
        }
    }

    /// Calls a DevTools method; returns the whole answer (`result` or `error`).
    async fn call_raw(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.send_frame(&msg.to_string()).await;
        loop {
            let m: serde_json::Value =
                serde_json::from_str(&self.read_message().await).expect("JSON message");
            if m["id"] == id {
                return m;
            }
        }
    }

    /// Calls a DevTools method and returns its result.
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let m = self.call_raw(method, params).await;
        assert!(m.get("error").is_none(), "{method}: {m}");
        m["result"].clone()
    }

    /// Evaluates an async JavaScript expression in the page; returns its value.
    /// Retried while the page is still loading (its context replaced).
    async fn eval(&mut self, js: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        let params =
            serde_json::json!({ "expression": js, "awaitPromise": true, "returnByValue": true });
        loop {
            let m = tokio::time::timeout(
                Duration::from_secs(30),
                self.call_raw("Runtime.evaluate", params.clone()),
            )
            .await
            .expect("the page answers within 30 s");
            if let Some(e) = m.get("error") {
                assert!(
                    Instant::now() < deadline
                        && e["message"].as_str().is_some_and(|t| t.contains("context")),
                    "Runtime.evaluate: {m}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            let r = &m["result"];
            assert!(
                r.get("exceptionDetails").is_none(),
                "script failed: {}\n{js}",
                r["exceptionDetails"]
            );
            return r["result"]["value"].clone();
        }
    }

    async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({ "format": "png" }),
            )
            .await;
        let png = base64_decode(r["data"].as_str().expect("data"));
        std::fs::write(path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|c| u32::from(value(*c))).collect();
        let n = v
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, x)| acc | (x << (18 - 6 * i)));
        out.push((n >> 16) as u8);
        if v.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if v.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}

/// Waits in the page (up to 15 s) until `cond` (a JS expression) is truthy.
fn until(cond: &str) -> String {
    format!(
        "(async () => {{ const t0 = Date.now(); while (Date.now() - t0 < 15000) {{ \
           const v = ({cond}); if (v) return v; await new Promise(r => setTimeout(r, 50)); }} \
           throw new Error('timed out waiting for: ' + {cond:?}); }})()"
    )
}

#[tokio::test]
async fn a_technician_acknowledges_an_alarm_and_is_asked_for_the_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("api.token");
    std::fs::write(&token, "field-token-42\n").expect("token");
    let gw = TestGateway::start(&format!("token_file = {:?}", token.display().to_string())).await;
    gw.device.set_register(Table::Input, 0, 315); // 31.5 degC: trigger 17 fires
    let live = gw.gateway.host("pump").expect("host");
    let mut rx = live.subscribe();
    let deadline = Instant::now() + Duration::from_secs(20);
    while gw.get("/triggers/17").await.json()["value"] != "problem" {
        assert!(Instant::now() < deadline, "trigger 17 never fired");
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.changed()).await;
    }
    let url = format!("http://{}/", gw.addr);
    let mut page = Browser::open(&url, "412,1000").await;

    // The alarm with its button.
    let text = page
        .eval(&until("document.querySelector('#alarms button[data-eventid]') && document.querySelector('#alarms').textContent"))
        .await;
    assert!(
        text.as_str().unwrap().contains("Outdoor too warm"),
        "{text}"
    );
    let eventid = page
        .eval("document.querySelector('#alarms button[data-eventid]').dataset.eventid")
        .await;
    let eventid: u64 = eventid.as_str().unwrap().parse().unwrap();
    page.eval("document.querySelector('#alarms button[data-eventid]').click()")
        .await;
    page.eval(&until("document.querySelector('#alarms input[type=text]')"))
        .await;
    page.eval(
        "(() => { const i = document.querySelector('#alarms input[type=text]'); \
           i.value = 'Service technician dispatched'; \
           i.dispatchEvent(new Event('input', { bubbles: true })); \
           [...document.querySelectorAll('#alarms button')].find(b => b.textContent === 'Send').click(); })()",
    )
    .await;
    // 401: the page asks for the token.
    let note = page
        .eval(&until("document.querySelector('#alarms input[type=password]') && document.querySelector('#alarms .msg').textContent"))
        .await;
    assert!(note.as_str().unwrap().contains("token"), "{note}");
    page.screenshot(&screenshot_path("status-page-token.png"))
        .await;
    // A wrong token is refused again.
    let send_token = |t: &str| {
        format!(
            "(() => {{ const i = document.querySelector('#alarms input[type=password]'); \
               i.value = {t:?}; i.dispatchEvent(new Event('input', {{ bubbles: true }})); \
               [...document.querySelectorAll('#alarms button')].find(b => b.textContent === 'Send').click(); }})()"
        )
    };
    page.eval(&send_token("guess")).await;
    let note = page
        .eval(&until("(document.querySelector('#alarms .msg') || {}).textContent === 'wrong token: enter the API token' && 'refused'"))
        .await;
    assert_eq!(note, "refused");
    assert!(
        gw.get(&format!("/events/{eventid}")).await.json()["acknowledgements"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // The right token: acknowledged, shown on the page, stored.
    page.eval(&send_token("field-token-42")).await;
    let shown = page
        .eval(&until("document.querySelector('#alarms').textContent.includes('Service technician dispatched') && !document.querySelector('#alarms input') && 'shown'"))
        .await;
    assert_eq!(shown, "shown");
    let event = gw.get(&format!("/events/{eventid}")).await.json();
    assert_eq!(
        event["acknowledgements"][0]["message"], "Service technician dispatched",
        "{event}"
    );
    page.screenshot(&screenshot_path("status-page-acknowledged.png"))
        .await;
    drop(page);
    gw.stop().await;
}
