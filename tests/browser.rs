//! The status page in a real browser: Debian's headless Chromium loads it
//! from a gateway polling the in-process simulated device, and the live
//! values must appear in the DOM. A screenshot is left under the cargo target
//! directory (`tmp/status-page.png`) for a person to look at.
//!
//! Chromium is required: without it this test fails and says how to install
//! it (CI installs it).

#[path = "common/api_gateway.rs"]
mod api_gateway;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use api_gateway::TestGateway;
use modbridge::model::Table;

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

/// Runs headless Chromium on `url` with `extra` arguments; returns stdout.
async fn run_chromium(url: &str, extra: &[String]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut args: Vec<String> = [
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
        "--virtual-time-budget=8000",
    ]
    .iter()
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
