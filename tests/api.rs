//! The local HTTP API over real HTTP: a gateway polling an in-process
//! simulated device, the API on 127.0.0.1:0, every endpoint and error path;
//! `modbridge write` and `modbridge ack` as the real binary against it.

#[path = "common/api_gateway.rs"]
mod api_gateway;
#[path = "support/broker.rs"]
mod broker;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::{Duration, Instant};

use api_gateway::{http, raw, TestGateway};
use modbridge::model::Table;

const BIN: &str = env!("CARGO_BIN_EXE_modbridge");

#[tokio::test]
async fn hosts_and_items_have_the_seed_shapes() {
    let gw = TestGateway::start("").await;

    let r = gw.get("/hosts").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let hosts = r.json();
    assert_eq!(hosts.as_array().unwrap().len(), 1);
    let h = &hosts[0];
    assert_eq!(h["host"], "pump");
    assert_eq!(h["name"], "Heat pump");
    assert_eq!(h["ip"], "127.0.0.1");
    assert_eq!(h["type"], "heating/heat-pump");
    assert_eq!(h["tags"], serde_json::json!(["plant-room"]));
    assert!(h["lastclock"].as_i64().is_some(), "{h}");
    assert!(h.get("items").is_none(), "GET /hosts leaves out items: {h}");

    let h = gw.get("/hosts/pump").await.json();
    let items = h["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    let temp = &items[0];
    assert_eq!(temp["key"], "temp");
    assert_eq!(temp["name"], "Outdoor temp");
    assert_eq!(temp["unit"], "degC");
    assert_eq!(temp["lastvalue"], 21.5);
    assert!(temp["lastclock"].as_i64().is_some());
    assert_eq!(temp["configurable"], false);
    assert!(temp.get("config").is_none());
    assert_eq!(temp["state"], "ok");
    assert_eq!(temp["error"], serde_json::Value::Null);
    let setpoint = &items[1];
    assert_eq!(setpoint["configurable"], true);
    assert_eq!(setpoint["lower_bound"], 10.0);
    assert_eq!(setpoint["upper_bound"], 60.0);
    let config = &setpoint["config"];
    for field in ["audit", "target", "lastclock", "status", "expected"] {
        assert!(config.get(field).is_some(), "config.{field}: {config}");
    }
    let broken = &items[2];
    assert_eq!(broken["state"], "error");
    assert!(broken["error"]
        .as_str()
        .is_some_and(|e| e.contains("illegal data address")));
    assert_eq!(broken["lastvalue"], serde_json::Value::Null);

    let item = gw.get("/hosts/pump/items/temp").await;
    assert_eq!(item.status, 200);
    assert_eq!(item.json()["lastvalue"], 21.5);
    let config = gw.get("/hosts/pump/items/setpoint/config").await;
    assert_eq!(config.status, 200);
    assert_eq!(config.json()["status"], "SUCCESS");

    // HEAD works where GET does.
    let head = gw.http("HEAD", "/hosts", &[], None).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn every_error_is_json_with_a_fitting_status() {
    let gw = TestGateway::start("").await;
    let e = gw.get("/hosts/nope").await.assert_error(404);
    assert!(e.contains("nope"), "{e}");
    let e = gw.get("/hosts/pump/items/nope").await.assert_error(404);
    assert!(e.contains("nope"), "{e}");
    gw.assert_get_errors(
        404,
        &[
            "/hosts/nope/items/temp/history",
            "/no/such/path",
            "/hosts/pump/items/temp/trend/median",
            "/hosts/pump/items/temp/config",
        ],
    )
    .await;
    // Wrong method: 405 with Allow, as JSON.
    let r = gw.http("DELETE", "/hosts", &[], None).await;
    let e = r.assert_error(405);
    assert!(e.contains("DELETE"), "{e}");
    assert!(r.header("allow").is_some_and(|a| a.contains("GET")));
    gw.http("POST", "/hosts/pump/items/temp", &[], Some("{}"))
        .await
        .assert_error(405);
    gw.http("PUT", "/events/1/acknowledgements", &[], Some("{}"))
        .await
        .assert_error(405);
    // Bad query strings: 400.
    let e = gw
        .get("/hosts/pump/items/temp/history?from=abc")
        .await
        .assert_error(400);
    assert!(e.contains("from"), "{e}");
    gw.assert_get_errors(
        400,
        &[
            "/hosts/pump/items/temp/history?to=1.5",
            "/hosts/pump/items/temp/history?limit=-1",
            "/hosts/pump/items/temp/history?from=20&to=10",
        ],
    )
    .await;
    let e = gw
        .get("/hosts/pump/items/temp/history?form=1")
        .await
        .assert_error(400);
    assert!(e.contains("form"), "{e}");
    gw.assert_get_errors(
        400,
        &[
            "/hosts/pump/items/temp/trend?limit=5",
            "/hosts/pump/items/temp/history?from=1&from=2",
            "/hosts/pump/items/temp/history?from=%ZZ",
            "/events?from=yesterday",
            "/events/abc",
            "/triggers/x",
            "/hosts?verbose=1",
            // A path that is not valid UTF-8 once decoded.
            "/hosts/%FF%FE",
        ],
    )
    .await;
    // Malformed HTTP is answered by the server (400), not by a crash.
    let r = raw(gw.addr, b"THIS IS NOT HTTP\r\n\r\n").await;
    assert_eq!(r.status, 400);
    // The gateway still answers.
    assert_eq!(gw.get("/hosts").await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn history_and_trends_over_http() {
    let gw = TestGateway::start("").await;
    // Three values, each read by a poll cycle.
    for raw_value in [216u16, 217, 218] {
        gw.device.set_register(Table::Input, 0, raw_value);
        let want = f64::from(raw_value) / 10.0;
        let live = gw.gateway.host("pump").unwrap();
        let mut rx = live.subscribe();
        loop {
            tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .expect("poll")
                .expect("cycles");
            if live.lock().items[0]
                .value
                .is_some_and(|v| (v - want).abs() < 1e-9)
            {
                break;
            }
        }
    }
    // Committed within commit_interval; history is read back from SQLite.
    let deadline = Instant::now() + Duration::from_secs(10);
    let history = loop {
        let r = gw.get("/hosts/pump/items/temp/history").await;
        assert_eq!(r.status, 200, "{}", r.body);
        let h = r.json();
        if h.as_array()
            .unwrap()
            .iter()
            .any(|p| p[1].as_f64().is_some_and(|v| (v - 21.8).abs() < 1e-9))
        {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "21.8 never reached the history: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let points = history.as_array().unwrap();
    assert!(points.len() >= 4, "{history}");
    let clocks: Vec<i64> = points.iter().map(|p| p[0].as_i64().unwrap()).collect();
    assert!(clocks.windows(2).all(|w| w[0] <= w[1]), "ascending");
    let values: Vec<f64> = points.iter().map(|p| p[1].as_f64().unwrap()).collect();
    let pos = |x: f64| values.iter().position(|v| (v - x).abs() < 1e-9).unwrap();
    assert!(pos(21.6) < pos(21.7) && pos(21.7) < pos(21.8), "{values:?}");

    // limit keeps the newest points, ascending.
    let last2 = gw
        .get("/hosts/pump/items/temp/history?limit=2")
        .await
        .json();
    assert_eq!(
        last2.as_array().unwrap().as_slice(),
        &points[points.len() - 2..]
    );
    let none = gw
        .get("/hosts/pump/items/temp/history?limit=0")
        .await
        .json();
    assert_eq!(none, serde_json::json!([]));
    // from/to select a window; empty parameters are the defaults.
    let first = clocks[0];
    let window = gw
        .get(&format!(
            "/hosts/pump/items/temp/history?from={first}&to={first}"
        ))
        .await
        .json();
    assert!(window
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p[0].as_i64() == Some(first)));
    assert!(!window.as_array().unwrap().is_empty());
    let defaults = gw
        .get("/hosts/pump/items/temp/history?from=&to=&limit=")
        .await;
    assert_eq!(defaults.status, 200);
    let old = gw
        .get("/hosts/pump/items/temp/history?from=0&to=1000")
        .await
        .json();
    assert_eq!(old, serde_json::json!([]));
    // An item in error has no history.
    let broken = gw.get("/hosts/pump/items/broken/history").await.json();
    assert_eq!(broken, serde_json::json!([]));

    // Trends include the current, unfinished hour.
    let trend = gw.get("/hosts/pump/items/temp/trend").await.json();
    let buckets = trend.as_array().unwrap();
    let (hour, b) = (&buckets.last().unwrap()[0], &buckets.last().unwrap()[1]);
    let now = modbridge::clock::unix_now();
    assert_eq!(
        hour.as_i64().unwrap(),
        now - now.rem_euclid(3600),
        "{trend}"
    );
    assert!(b["num"].as_u64().unwrap() >= 4, "{trend}");
    assert!(b["min"].as_f64().unwrap() <= 21.5);
    assert!(b["max"].as_f64().unwrap() >= 21.8);
    let avg = b["avg"].as_f64().unwrap();
    assert!((21.5..=21.8).contains(&avg), "{avg}");
    for field in ["num", "min", "avg", "max"] {
        let series = gw
            .get(&format!("/hosts/pump/items/temp/trend/{field}"))
            .await
            .json();
        let last = series.as_array().unwrap().last().unwrap().clone();
        assert_eq!(last[0], *hour);
        assert_eq!(last[1], b[field], "{field}");
    }
    let past = gw
        .get("/hosts/pump/items/temp/trend?from=0&to=3600")
        .await
        .json();
    assert_eq!(past, serde_json::json!([]));
    gw.stop().await;
}

#[tokio::test]
async fn config_requests_are_refused_with_the_right_status() {
    let gw = TestGateway::start("").await;
    let put = |path: &'static str, body: &'static str| {
        let gw = &gw;
        async move { gw.http("PUT", path, &[], Some(body)).await }
    };
    put("/hosts/nope/items/setpoint/config", r#"{"target":20}"#)
        .await
        .assert_error(404);
    put("/hosts/pump/items/nope/config", r#"{"target":20}"#)
        .await
        .assert_error(404);
    let e = put("/hosts/pump/items/temp/config", r#"{"target":20}"#)
        .await
        .assert_error(409);
    assert!(e.contains("sensor"), "{e}");
    put("/hosts/pump/items/setpoint/config", "{not json")
        .await
        .assert_error(400);
    // A browser form post (cross-site without a preflight) is refused.
    let e = gw
        .http(
            "PUT",
            "/hosts/pump/items/setpoint/config",
            &[("Content-Type", "text/plain")],
            Some(r#"{"target":20}"#),
        )
        .await
        .assert_error(415);
    assert!(e.contains("application/json"), "{e}");
    // An oversized body: 413, JSON.
    let big = format!(r#"{{"target":20,"audit":["{}"]}}"#, "x".repeat(100_000));
    gw.put_config("setpoint", &big).await.assert_error(413);
    // Nothing was recorded.
    let config = gw.get("/hosts/pump/items/setpoint").await.json()["config"].clone();
    assert_eq!(config["lastclock"], serde_json::Value::Null, "{config}");
    gw.stop().await;
}

/// Waits until the item's config object leaves PENDING; returns it.
async fn settled_config(gw: &TestGateway, key: &str) -> serde_json::Value {
    let mut changes = gw.gateway.writes.subscribe();
    loop {
        let item = gw.get(&format!("/hosts/pump/items/{key}")).await.json();
        if item["config"]["status"] != "PENDING" {
            return item["config"].clone();
        }
        tokio::time::timeout(Duration::from_secs(10), changes.changed())
            .await
            .expect("the request settles within 10 s")
            .expect("changes");
    }
}

#[tokio::test]
async fn config_requests_are_carried_out_and_reported() {
    let gw = TestGateway::start("").await;
    let r = gw
        .put_config(
            "setpoint",
            r#"{"target":20,"audit":["ticket 7"],"id":"req-1"}"#,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.header("location"), Some("/hosts/pump/items/setpoint"));
    let c = r.json();
    assert_eq!(c["target"], 20.0);
    assert_eq!(c["expected"], serde_json::Value::Null);
    assert_eq!(c["id"], "req-1");
    assert!(c["lastclock"].as_i64().is_some());
    let audit: Vec<&str> = c["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(audit[0], "ticket 7");
    assert!(audit[1].starts_with("api 127.0.0.1:"), "{audit:?}");
    assert!(
        ["PENDING", "SUCCESS"].contains(&c["status"].as_str().unwrap()),
        "{c}"
    );
    let done = settled_config(&gw, "setpoint").await;
    assert_eq!(done["status"], "SUCCESS", "{done}");
    assert_eq!(done["lastclock"], c["lastclock"]);
    assert_eq!(gw.device.register(Table::Holding, 10), 20);
    let config = gw.get("/hosts/pump/items/setpoint/config").await.json();
    assert_eq!(config, done);

    // Outside the bounds: recorded as FAILED (202), like on every channel.
    let r = gw.put_config("setpoint", r#"{"target":99}"#).await;
    assert_eq!(r.status, 202, "{}", r.body);
    let c = r.json();
    assert_eq!(c["status"], "FAILED", "{c}");
    assert!(c["reason"].as_str().unwrap().contains("bound"), "{c}");
    assert_eq!(
        gw.device.register(Table::Holding, 10),
        20,
        "nothing written"
    );

    // `expected` that does not match what the device holds: FAILED with the found value.
    let r = gw
        .put_config("setpoint", r#"{"target":30,"expected":25}"#)
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let done = settled_config(&gw, "setpoint").await;
    assert_eq!(done["status"], "FAILED", "{done}");
    assert!(done["reason"].as_str().unwrap().contains("20"), "{done}");
    assert_eq!(gw.device.register(Table::Holding, 10), 20);

    // Well-formed JSON that is not a usable request: 400/422, nothing recorded.
    let before = gw.get("/hosts/pump/items/setpoint/config").await.json();
    let e = gw
        .put_config("setpoint", r#"{"target":"abc"}"#)
        .await
        .assert_error(422);
    assert!(e.contains("target"), "{e}");
    gw.put_config("setpoint", r#"{"expected":3}"#)
        .await
        .assert_error(400);
    gw.put_config("setpoint", r#"{"target":20,"expexted":3}"#)
        .await
        .assert_error(400);
    gw.put_config("setpoint", "[1,2]").await.assert_error(400);
    assert_eq!(
        gw.get("/hosts/pump/items/setpoint/config").await.json(),
        before
    );

    // A loopback client may name its user (as `modbridge write` does).
    let r = gw
        .http(
            "PUT",
            "/hosts/pump/items/setpoint/config",
            &[("X-Modbridge-User", "anna")],
            Some(r#"{"target":21}"#),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.json()["audit"], serde_json::json!(["cli anna"]));
    assert_eq!(settled_config(&gw, "setpoint").await["status"], "SUCCESS");

    // Metrics count them by status.
    let metrics = gw.get("/metrics").await.body;
    let m = parse_exposition(&metrics);
    assert!(
        m["modbridge_config_requests{status=\"SUCCESS\"}"] >= 2.0,
        "{metrics}"
    );
    assert!(
        m["modbridge_config_requests{status=\"FAILED\"}"] >= 2.0,
        "{metrics}"
    );
    gw.stop().await;
}

/// Waits until trigger 17 has `value` (the alarm task evaluates after each poll).
async fn trigger_value(gw: &TestGateway, value: &str) -> serde_json::Value {
    let live = gw.gateway.host("pump").unwrap();
    let mut cycles = live.subscribe();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let t = gw.get("/triggers/17").await;
        assert_eq!(t.status, 200, "{}", t.body);
        let t = t.json();
        if t["value"] == value {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "trigger 17 never became {value}: {t}"
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), cycles.changed()).await;
    }
}

#[tokio::test]
async fn alarms_events_and_acknowledgements_over_http() {
    let gw = TestGateway::start("").await;
    let triggers = gw.get("/triggers").await.json();
    let t = triggers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["triggerid"] == 17)
        .expect("trigger 17")
        .clone();
    assert_eq!(t["description"], "Outdoor too warm");
    assert_eq!(t["severity"], serde_json::json!([4, "B-Larm"]));
    assert_eq!(t["hosts"][0]["host"], "pump");
    assert!(t["hosts"][0].get("items").is_none());
    assert_eq!(trigger_value(&gw, "OK").await["value"], "OK");

    // 31.5 degC: the trigger fires and an event is stored.
    gw.device.set_register(Table::Input, 0, 315);
    let t = trigger_value(&gw, "problem").await;
    assert!(t["lastchange"].as_i64().is_some());
    let events = gw.get("/events").await.json();
    let event = events
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["triggerid"] == 17 && e["value"] == "problem")
        .unwrap_or_else(|| panic!("a problem event: {events}"))
        .clone();
    assert_eq!(event["host"], "pump");
    assert_eq!(event["key"], "temp");
    assert_eq!(event["description"], "Outdoor too warm");
    assert_eq!(event["severity"], serde_json::json!([4, "B-Larm"]));
    assert_eq!(event["acknowledgements"], serde_json::json!([]));
    let id = event["eventid"].as_u64().unwrap();
    assert_eq!(gw.get(&format!("/events/{id}")).await.json(), event);
    let mine = gw.get("/events?host=pump&key=temp").await.json();
    assert!(mine.as_array().unwrap().iter().any(|e| e["eventid"] == id));
    let other = gw.get("/events?host=other").await.json();
    assert_eq!(other, serde_json::json!([]));
    let clock = event["clock"].as_i64().unwrap();
    let before = gw.get(&format!("/events?to={}", clock - 1)).await.json();
    assert!(!before
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["eventid"] == id));
    let newest = gw.get("/events?limit=1").await.json();
    assert_eq!(newest.as_array().unwrap().len(), 1);

    // Acknowledge it: 201 with the event; a blank message is 422.
    let path = format!("/events/{id}/acknowledgements");
    gw.http("POST", &path, &[], Some(r#"{"message":"  "}"#))
        .await
        .assert_error(422);
    let r = gw
        .http(
            "POST",
            &path,
            &[],
            Some(r#"{"message":"Service technician dispatched"}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.header("location"), Some(format!("/events/{id}").as_str()));
    let acked = r.json();
    assert_eq!(acked["eventid"], id);
    let acks = acked["acknowledgements"].as_array().unwrap();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["message"], "Service technician dispatched");
    assert!(acks[0]["clock"].as_i64().unwrap() >= clock);
    let stored = gw.get(&format!("/events/{id}")).await.json();
    assert_eq!(stored["acknowledgements"], acked["acknowledgements"]);

    // The command line adds one too.
    let cfg = cli_config(&gw);
    let out = run_bin(&[
        "ack",
        "-c",
        cfg.to_str().unwrap(),
        "--event",
        &id.to_string(),
        "--message",
        "pump restarted",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let printed: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("the event");
    assert_eq!(printed["acknowledgements"][1]["message"], "pump restarted");

    let m = parse_exposition(&gw.get("/metrics").await.body);
    assert_eq!(m["modbridge_triggers{value=\"problem\"}"], 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn events_and_triggers_endpoints_answer() {
    let gw = TestGateway::start("").await;
    let events = gw.get("/events").await;
    assert_eq!(events.status, 200, "{}", events.body);
    assert!(events.json().is_array());
    let filtered = gw.get("/events?host=pump&key=temp&from=0&limit=5").await;
    assert_eq!(filtered.status, 200);
    gw.get("/events/999999").await.assert_error(404);
    let triggers = gw.get("/triggers").await;
    assert_eq!(triggers.status, 200);
    assert!(triggers.json().is_array());
    gw.get("/triggers/999").await.assert_error(404);
    // Acknowledgements: body errors before the event lookup.
    let post = |body: &'static str| {
        let gw = &gw;
        async move {
            gw.http("POST", "/events/999999/acknowledgements", &[], Some(body))
                .await
        }
    };
    post("not json").await.assert_error(400);
    post(r#"{"msg":"x"}"#).await.assert_error(400);
    post(r#"{"message":5}"#).await.assert_error(400);
    post(r#"["message"]"#).await.assert_error(400);
    let e = post(r#"{"message":"checked the pump"}"#)
        .await
        .assert_error(404);
    assert!(e.contains("999999"), "{e}");
    gw.http(
        "POST",
        "/events/x/acknowledgements",
        &[],
        Some(r#"{"message":"m"}"#),
    )
    .await
    .assert_error(400);
    gw.stop().await;
}

#[tokio::test]
async fn writes_need_the_token_when_one_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let token_path = dir.path().join("api.token");
    std::fs::write(&token_path, "  s3cret-token\n").unwrap();
    let gw = TestGateway::start(&format!(
        "token_file = {:?}",
        token_path.display().to_string()
    ))
    .await;
    // Reads stay open.
    assert_eq!(gw.get("/hosts").await.status, 200);
    assert_eq!(
        gw.get("/health").await.json()["api"]["token_required"],
        true
    );
    let put = |headers: &'static [(&'static str, &'static str)]| {
        let gw = &gw;
        async move {
            gw.http(
                "PUT",
                "/hosts/pump/items/temp/config",
                headers,
                Some(r#"{"target":20}"#),
            )
            .await
        }
    };
    let r = put(&[]).await;
    let e = r.assert_error(401);
    assert!(e.contains("Bearer"), "{e}");
    assert!(r
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    put(&[("Authorization", "Bearer wrong")])
        .await
        .assert_error(401);
    put(&[("Authorization", "Basic czNjcmV0LXRva2Vu")])
        .await
        .assert_error(401);
    put(&[("Authorization", "Bearer s3cret-token-and-more")])
        .await
        .assert_error(401);
    // The right token gets past authentication (the sensor then answers 409).
    put(&[("Authorization", "Bearer s3cret-token")])
        .await
        .assert_error(409);
    put(&[("Authorization", "bearer s3cret-token")])
        .await
        .assert_error(409);
    let ack = |auth: Option<&'static str>| {
        let gw = &gw;
        async move {
            let h: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
            gw.http(
                "POST",
                "/events/424242/acknowledgements",
                &h,
                Some(r#"{"message":"m"}"#),
            )
            .await
        }
    };
    ack(None).await.assert_error(401);
    ack(Some("Bearer s3cret-token")).await.assert_error(404);

    // A reload re-reads the token file.
    std::fs::write(&token_path, "rotated\n").unwrap();
    let config = modbridge::config::load(&gw.config_path).unwrap();
    gw.gateway.reload(config).await.unwrap();
    put(&[("Authorization", "Bearer s3cret-token")])
        .await
        .assert_error(401);
    put(&[("Authorization", "Bearer rotated")])
        .await
        .assert_error(409);
    // A reload whose token file cannot be read keeps the token in force.
    std::fs::remove_file(&token_path).unwrap();
    let config = modbridge::config::load(&gw.config_path).unwrap();
    gw.gateway.reload(config).await.unwrap();
    put(&[]).await.assert_error(401);
    put(&[("Authorization", "Bearer rotated")])
        .await
        .assert_error(409);
    gw.stop().await;
}

#[tokio::test]
async fn an_unreadable_token_file_or_a_taken_port_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.token");
    let api = modbridge::model::ApiSpec {
        listen: "127.0.0.1:0".parse().unwrap(),
        token_file: Some(missing.clone()),
        ..Default::default()
    };
    let e = modbridge::api::Server::bind(&api)
        .await
        .err()
        .expect("error");
    assert!(
        e.to_string().contains("cannot read the API token file"),
        "{e}"
    );
    assert!(e.to_string().contains("missing.token"), "{e}");

    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = modbridge::model::ApiSpec {
        listen: taken.local_addr().unwrap(),
        token_file: None,
        ..Default::default()
    };
    let e = modbridge::api::Server::bind(&api)
        .await
        .err()
        .expect("error");
    let text = e.to_string();
    assert!(
        text.contains("cannot listen on") && text.contains("[api] listen"),
        "{text}"
    );
    // The demo's way: another port on the same address.
    let other = modbridge::api::Server::bind_or_free_port(&api)
        .await
        .unwrap();
    assert_ne!(other.local_addr().port(), api.listen.port());
    assert_eq!(other.local_addr().ip(), api.listen.ip());

    // The daemon: a clear error and exit 1, for either.
    let device = modbridge::sim::SimDevice::new();
    let server = device.bind_tcp("127.0.0.1:0").await.unwrap();
    let path = dir.path().join("modbridge.toml");
    let text = api_gateway::config_text(server.addr().unwrap(), &dir.path().join("data"), "")
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{}\"", api.listen),
        );
    std::fs::write(&path, &text).unwrap();
    let out = run_bin(&["run", "-c", path.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot listen on"),
        "{}",
        stderr(&out)
    );
    let text = text.replace(
        &format!("listen = \"{}\"", api.listen),
        &format!(
            "listen = \"127.0.0.1:0\"\ntoken_file = {:?}",
            missing.display().to_string()
        ),
    );
    std::fs::write(&path, &text).unwrap();
    let out = run_bin(&["run", "-c", path.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot read the API token file"),
        "{}",
        stderr(&out)
    );
    drop(taken);
}

#[tokio::test]
async fn health_reports_links_and_turns_503_when_a_device_is_gone() {
    let gw = TestGateway::start("").await;
    let r = gw.get("/health").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let h = r.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["problems"], serde_json::json!([]));
    assert_eq!(h["gateway"], "box-api");
    assert_eq!(h["hosts"][0]["host"], "pump");
    assert_eq!(h["hosts"][0]["link"], "up");
    assert!(h["hosts"][0]["last_ok"].as_i64().is_some());
    assert_eq!(h["hosts"][0]["consecutive_errors"], 0);
    assert_eq!(h["mqtt"]["configured"], false);
    assert_eq!(h["mqtt"]["connected"], false);
    assert!(h["mqtt"]["backlog"].as_u64().is_some());
    assert!(h["database"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(h["database"]["failing"], false);

    // The device stops answering: the link goes down and health says so.
    gw.device.faults(|f| f.silent = true);
    let live = gw.gateway.host("pump").unwrap();
    let mut rx = live.subscribe();
    while live.lock().link_up {
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .expect("a failing cycle")
            .expect("cycles");
    }
    let r = gw.get("/health").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let h = r.json();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["hosts"][0]["link"], "down");
    assert!(h["hosts"][0]["consecutive_errors"].as_u64().unwrap() >= 1);
    assert!(h["problems"][0].as_str().unwrap().contains("pump"), "{h}");
    // It comes back.
    gw.device.faults(|f| f.silent = false);
    while !live.lock().link_up {
        tokio::time::timeout(Duration::from_secs(70), rx.changed())
            .await
            .expect("a good cycle")
            .expect("cycles");
    }
    assert_eq!(gw.get("/health").await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn health_follows_the_mqtt_link_and_counts_the_backlog() {
    let mut broker = broker::Broker::start();
    let gw = TestGateway::start(&format!(
        "\n[mqtt]\nurl = \"{}\"\nkeep_alive = \"5s\"\n",
        broker.url(false)
    ))
    .await;
    broker::eventually("the MQTT connection", Duration::from_secs(20), || {
        gw.gateway.mqtt.is_connected()
    })
    .await;
    let r = gw.get("/health").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let h = r.json();
    assert_eq!(h["mqtt"]["configured"], true);
    assert_eq!(h["mqtt"]["connected"], true);
    let m = parse_exposition(&gw.get("/metrics").await.body);
    assert_eq!(m["modbridge_mqtt_configured"], 1.0);
    assert_eq!(m["modbridge_mqtt_connected"], 1.0);

    // The broker goes away: degraded, and the data waits in the backlog.
    broker.stop();
    broker::eventually("the MQTT link to drop", Duration::from_secs(30), || {
        !gw.gateway.mqtt.is_connected()
    })
    .await;
    gw.cycles(2).await;
    let r = gw.get("/health").await;
    assert_eq!(r.status, 503, "{}", r.body);
    let h = r.json();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["mqtt"]["connected"], false);
    assert!(
        h["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("MQTT")),
        "{h}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = gw.get("/health").await.json();
        if h["mqtt"]["backlog"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no backlog while the broker is down: {h}"
        );
        gw.cycles(1).await;
    }
    let m = parse_exposition(&gw.get("/metrics").await.body);
    assert_eq!(m["modbridge_mqtt_connected"], 0.0);
    gw.stop().await;
}

/// Checks the Prometheus text format line by line and returns the samples.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or_else(|| panic!("{line}"));
            assert!(name_ok(name), "{line}");
            match kind {
                "HELP" => assert!(parts.next().is_some(), "{line}"),
                "TYPE" => {
                    let t = parts.next().unwrap_or_else(|| panic!("{line}"));
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_string(), t.to_string()).is_none(),
                        "TYPE given twice: {line}"
                    );
                }
                _ => panic!("unknown comment {line}"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "{line}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = match series.find('{') {
            Some(i) => {
                let labels = &series[i + 1..];
                assert!(labels.ends_with('}'), "{line}");
                let labels = &labels[..labels.len() - 1];
                // k="v" pairs with escapes \\ \" \n.
                let mut chars = labels.chars().peekable();
                while chars.peek().is_some() {
                    let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
                    assert!(name_ok(&key), "label {key:?} in {line}");
                    assert_eq!(chars.next(), Some('"'), "{line}");
                    loop {
                        match chars.next() {
                            Some('\\') => {
                                assert!(matches!(chars.next(), Some('\\' | '"' | 'n')), "{line}")
                            }
                            Some('"') => break,
                            Some('\n') | None => panic!("unterminated label in {line}"),
                            Some(_) => {}
                        }
                    }
                    match chars.next() {
                        Some(',') | None => {}
                        other => panic!("unexpected {other:?} in {line}"),
                    }
                }
                &series[..i]
            }
            None => series,
        };
        assert!(name_ok(name), "{line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "no TYPE before {line}");
        samples.insert(series.to_string(), value);
    }
    samples
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text() {
    let gw = TestGateway::start("").await;
    gw.cycles(2).await;
    let r = gw.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    let m = parse_exposition(&r.body);
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("{k} missing:\n{}", r.body))
    };
    assert!(get("modbridge_polls_total{host=\"pump\"}") >= 3.0);
    assert!(get("modbridge_requests_total{host=\"pump\"}") >= 3.0);
    assert!(
        get("modbridge_request_errors_total{host=\"pump\"}") >= 1.0,
        "the exception counts"
    );
    assert_eq!(get("modbridge_host_link_up{host=\"pump\"}"), 1.0);
    assert_eq!(get("modbridge_items{host=\"pump\",state=\"error\"}"), 1.0);
    // The histogram: cumulative buckets, +Inf equals _count.
    let buckets: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("modbridge_request_duration_seconds_bucket{host=\"pump\""))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(buckets.len(), modbridge::poll::LATENCY_BUCKETS.len() + 1);
    let inf = get("modbridge_request_duration_seconds_bucket{host=\"pump\",le=\"+Inf\"}");
    let count = get("modbridge_request_duration_seconds_count{host=\"pump\"}");
    assert_eq!(inf, count);
    assert!(count >= 3.0);
    let mut le: Vec<(f64, f64)> = m
        .iter()
        .filter_map(|(k, v)| {
            let rest =
                k.strip_prefix("modbridge_request_duration_seconds_bucket{host=\"pump\",le=\"")?;
            let bound = rest.strip_suffix("\"}")?;
            Some((
                if bound == "+Inf" {
                    f64::INFINITY
                } else {
                    bound.parse().ok()?
                },
                *v,
            ))
        })
        .collect();
    le.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        le.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative: {le:?}"
    );
    assert!(get("modbridge_request_duration_seconds_sum{host=\"pump\"}") > 0.0);
    assert!(get("modbridge_samples_received_total") >= 3.0);
    assert!(m.contains_key("modbridge_samples_stored_total"));
    assert!(get("modbridge_database_bytes") > 0.0);
    assert!(m.contains_key("modbridge_outbox_messages"));
    assert!(m.contains_key("modbridge_mqtt_published_total"));
    for status in ["PENDING", "SUCCESS", "FAILED"] {
        assert!(m.contains_key(&format!("modbridge_config_requests{{status=\"{status}\"}}")));
    }
    for value in ["OK", "problem", "unknown"] {
        assert!(m.contains_key(&format!("modbridge_triggers{{value=\"{value}\"}}")));
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_status_page_is_one_self_contained_html_file() {
    let gw = TestGateway::start("").await;
    let r = gw.get("/").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r
        .header("content-security-policy")
        .is_some_and(|c| c.contains("default-src 'none'")));
    assert!(r.body.contains("<style>") && r.body.contains("<script>"));
    assert!(!r.body.contains("https://") && !r.body.contains("http://"));
    for endpoint in [
        "/health",
        "/hosts",
        "/triggers",
        "/events",
        "/acknowledgements",
    ] {
        assert!(r.body.contains(endpoint), "the page uses {endpoint}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn many_connections_at_once_are_all_served() {
    let gw = TestGateway::start("").await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let path = if i % 2 == 0 {
                "/hosts/pump"
            } else {
                "/metrics"
            };
            http(addr, "GET", path, &[], None).await.status
        }));
    }
    let mut statuses = BTreeSet::new();
    for t in tasks {
        statuses.insert(t.await.unwrap());
    }
    assert_eq!(statuses, BTreeSet::from([200]));
    gw.stop().await;
}

async fn run_bin(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(&args)
            .env("RUST_LOG", "warn")
            .env("USER", "anna")
            .env_remove("SUDO_USER")
            .output()
            .expect("run modbridge")
    })
    .await
    .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A config for the CLI: the gateway's, with the port its API really got.
fn cli_config(gw: &TestGateway) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&gw.config_path).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", gw.addr),
    );
    let path = gw.dir.path().join("cli.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn write_and_ack_commands_against_a_running_gateway() {
    let gw = TestGateway::start("").await;
    let cfg = cli_config(&gw);
    let cfg = cfg.to_str().unwrap();
    // A sensor: refused, with the server's reason, exit 1.
    let out = run_bin(&[
        "write", "-c", cfg, "--host", "pump", "--key", "temp", "--target", "20",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("409") && stderr(&out).contains("sensor"),
        "{}",
        stderr(&out)
    );
    let out = run_bin(&[
        "write", "-c", cfg, "--host", "nope", "--key", "temp", "--target", "20",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unknown host"), "{}", stderr(&out));
    // Bad usage: exit 2.
    let out = run_bin(&["write", "-c", cfg, "--host", "pump", "--key", "setpoint"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run_bin(&[
        "write", "-c", cfg, "--host", "pump", "--key", "setpoint", "--target", "abc",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run_bin(&[
        "write", "-c", cfg, "--host", "pump", "--key", "setpoint", "--target", "nan",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = run_bin(&["ack", "-c", cfg, "--event", "x", "--message", "m"]).await;
    assert_eq!(out.status.code(), Some(2));
    let out = run_bin(&["ack", "-c", cfg, "--event", "1", "--message", " "]).await;
    assert_eq!(out.status.code(), Some(2));
    // A write that succeeds: the config object, exit 0; the audit names the user.
    let out = run_bin(&[
        "write", "-c", cfg, "--host", "pump", "--key", "setpoint", "--target", "33", "--id",
        "cli-1",
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let printed: serde_json::Value =
        serde_json::from_str(&stdout(&out)).expect("the config object");
    assert_eq!(printed["status"], "SUCCESS");
    assert_eq!(printed["target"], 33.0);
    assert_eq!(printed["id"], "cli-1");
    assert_eq!(printed["audit"], serde_json::json!(["cli anna"]));
    assert_eq!(gw.device.register(Table::Holding, 10), 33);
    // Out of bounds: recorded FAILED, the reason printed, exit 1.
    let out = run_bin(&[
        "write", "-c", cfg, "--host", "pump", "--key", "setpoint", "--target", "-5",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("FAILED") && stderr(&out).contains("bound"),
        "{}",
        stderr(&out)
    );
    // Expected value does not match: FAILED after the device was read.
    let out = run_bin(&[
        "write",
        "-c",
        cfg,
        "--host",
        "pump",
        "--key",
        "setpoint",
        "--target",
        "40",
        "--expected",
        "12",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("FAILED"), "{}", stderr(&out));
    // An unknown event: refused, exit 1.
    let out = run_bin(&["ack", "-c", cfg, "--event", "987654", "--message", "done"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("404") && stderr(&out).contains("987654"),
        "{}",
        stderr(&out)
    );
    // No gateway there: a clear error, exit 1.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    let text = std::fs::read_to_string(cfg)
        .unwrap()
        .replace(&gw.addr.to_string(), &closed_addr.to_string());
    let other = gw.dir.path().join("closed.toml");
    std::fs::write(&other, text).unwrap();
    let out = run_bin(&[
        "ack",
        "-c",
        other.to_str().unwrap(),
        "--event",
        "1",
        "--message",
        "m",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot reach the gateway"),
        "{}",
        stderr(&out)
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_demo_moves_to_a_free_port_when_8080_is_taken_and_says_where() {
    // Hold the demo's port (if someone else already holds it, it is taken anyway).
    let _held = std::net::TcpListener::bind("127.0.0.1:8080");
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(BIN)
        .args([
            "demo",
            "--duration",
            "4s",
            "--dir",
            dir.path().to_str().unwrap(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the demo");
    let stdout = child.stdout.take().unwrap();
    let url_line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        let found = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.starts_with("Status page: http://"));
        std::thread::spawn(move || for _ in lines {});
        found
    })
    .await
    .unwrap()
    .expect("the demo prints its status page URL");
    assert!(
        url_line.contains("is taken, so the demo uses"),
        "{url_line}"
    );
    let addr: std::net::SocketAddr = url_line
        .trim_start_matches("Status page: http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 8080);
    let r = http(addr, "GET", "/hosts", &[], None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The demo's config names the port it got, so `write`/`ack -c` find it.
    let config = std::fs::read_to_string(dir.path().join("modbridge.toml")).unwrap();
    assert!(config.contains(&format!("listen = \"{addr}\"")), "{config}");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}

/// Polls the API until `done` holds for the answer to `GET path`, or panics.
async fn await_reply(
    addr: std::net::SocketAddr,
    path: &str,
    what: &str,
    done: impl Fn(&api_gateway::Reply) -> bool,
) -> api_gateway::Reply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // The raw client panics when nobody listens: look first.
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let reply = http(addr, "GET", path, &[], None).await;
            if done(&reply) {
                return reply;
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_pending_write_survives_kill_9_and_is_carried_out_after_the_restart() {
    // The device does not answer yet: the request stays PENDING.
    let device = modbridge::sim::SimDevice::new();
    device.set_register(Table::Holding, 10, 45);
    device.faults(|f| f.silent = true);
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let path = dir.path().join("modbridge.toml");
    let text = api_gateway::config_text(server.addr().expect("addr"), &dir.path().join("data"), "")
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""));
    std::fs::write(&path, text).expect("config");
    let spawn = || {
        std::process::Command::new(BIN)
            .args(["run", "-c"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run modbridge")
    };
    let config_path = "/hosts/pump/items/setpoint/config";
    let mut child = spawn();
    await_reply(addr, "/hosts", "the API", |r| r.status == 200).await;
    let reply = http(
        addr,
        "PUT",
        config_path,
        &[],
        Some(r#"{"target":33,"id":"k9"}"#),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.json()["status"], "PENDING", "{}", reply.body);

    // kill -9 right after the receipt, then the device comes back.
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    assert_eq!(device.register(Table::Holding, 10), 45, "not written yet");
    device.faults(|f| f.silent = false);

    let mut child = spawn();
    let done = await_reply(addr, config_path, "SUCCESS after the restart", |r| {
        r.status == 200 && r.json()["status"] == "SUCCESS"
    })
    .await;
    let config = done.json();
    assert_eq!(config["target"], 33.0);
    assert_eq!(config["id"], "k9");
    assert!(
        config["audit"][0]
            .as_str()
            .is_some_and(|a| a.starts_with("api 127.0.0.1:")),
        "{config}"
    );
    assert_eq!(device.register(Table::Holding, 10), 33);
    let _ = child.kill();
    let _ = child.wait();
}

/// The target of `setpoint`'s config request as the API shows it (null: none yet).
async fn setpoint_target(gw: &TestGateway) -> serde_json::Value {
    gw.get("/hosts/pump/items/setpoint").await.json()["config"]["target"].clone()
}

#[tokio::test]
async fn names_other_than_the_boxs_own_in_host_are_refused_with_421() {
    let gw = TestGateway::start("allowed_hosts = [\"GW.plant.example\"]").await;
    let port = gw.addr.port();
    let get_as = |host: String| {
        let addr = gw.addr;
        async move {
            raw(
                addr,
                format!("GET /hosts HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
        }
    };
    let own = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("host name");
    let own = own.trim();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("10.1.2.3:{port}"),
        format!("localhost:{port}"),
        format!("{own}:{port}"),
        format!("{}.local:{port}", own.to_uppercase()),
        format!("gw.plant.example:{port}"),
        "gw.plant.example.".to_string(),
    ] {
        let r = get_as(host.clone()).await;
        assert_eq!(r.status, 200, "Host: {host}: {}", r.body);
    }
    // DNS rebinding: a page of attacker.example whose name now points here.
    for host in [
        format!("attacker.example:{port}"),
        format!("{own}.attacker.example"),
        "plant.example".to_string(),
    ] {
        let e = get_as(host.clone()).await.assert_error(421);
        assert!(e.contains("allowed_hosts"), "Host: {host}: {e}");
    }
    // The status page too, and an absolute URI naming another host.
    let r = raw(
        gw.addr,
        format!("GET / HTTP/1.1\r\nHost: attacker.example:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    r.assert_error(421);
    let r = raw(
        gw.addr,
        format!("GET http://attacker.example/hosts HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    r.assert_error(421);
    // A write through a rebound name changes nothing.
    gw.http(
        "PUT",
        "/hosts/pump/items/setpoint/config",
        &[("Host", "attacker.example")],
        Some(r#"{"target":20}"#),
    )
    .await
    .assert_error(421);
    assert_eq!(setpoint_target(&gw).await, serde_json::Value::Null);
    gw.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_and_idle_ones_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let idle = Duration::from_secs(1);
    let gw = TestGateway::start_with("", |api| api.with_limits(2, idle)).await;
    // Two silent connections take both places...
    let opened = Instant::now();
    let mut a = TcpStream::connect(gw.addr).await.expect("connect");
    let _b = TcpStream::connect(gw.addr).await.expect("connect");
    // ...so a third one's request waits unanswered (in the listen queue).
    let mut c = TcpStream::connect(gw.addr).await.expect("connect");
    c.write_all(b"GET /hosts HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut buf = vec![0u8; 64 * 1024];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf))
            .await
            .is_err(),
        "a connection beyond the limit is not served"
    );
    // The silent ones are closed once idle for the timeout, not before...
    let n = tokio::time::timeout(Duration::from_secs(10), a.read(&mut buf))
        .await
        .expect("an idle connection is closed");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "closed without an answer: {n:?}"
    );
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= idle - Duration::from_millis(100),
        "closed after {closed_after:?}, before the idle timeout"
    );
    // ...which lets the waiting one in.
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
        .await
        .expect("served once a place is free")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"host\":\"pump\""), "{answer}");
    gw.stop().await;
}

#[tokio::test]
async fn writes_from_another_origin_or_without_a_json_type_are_refused() {
    let gw = TestGateway::start("").await;
    let origin = format!("http://{}", gw.addr);
    let put = |headers: Vec<(&'static str, String)>| {
        let gw = &gw;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            gw.http(
                "PUT",
                "/hosts/pump/items/setpoint/config",
                &headers,
                Some(r#"{"target":20}"#),
            )
            .await
        }
    };
    for foreign in ["http://attacker.example", "null", "http://127.0.0.1:1"] {
        let e = put(vec![("Origin", foreign.to_string())])
            .await
            .assert_error(403);
        assert!(e.contains("another web page"), "{foreign}: {e}");
    }
    let e = gw
        .http(
            "POST",
            "/events/1/acknowledgements",
            &[("Origin", "http://attacker.example")],
            Some(r#"{"message":"x"}"#),
        )
        .await
        .assert_error(403);
    assert!(e.contains("Origin"), "{e}");
    assert_eq!(setpoint_target(&gw).await, serde_json::Value::Null);
    // A body without a content type: what a cross-site form or fetch can
    // send without a preflight.
    let body = r#"{"target":20}"#;
    let r = raw(
        gw.addr,
        format!(
            "PUT /hosts/pump/items/setpoint/config HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            gw.addr,
            body.len()
        )
        .as_bytes(),
    )
    .await;
    let e = r.assert_error(415);
    assert!(e.contains("Content-Type: application/json"), "{e}");
    assert_eq!(setpoint_target(&gw).await, serde_json::Value::Null);
    // Reads with a foreign Origin stay open (the browser keeps the answer
    // from the page: there are no CORS headers), and the page's own origin may write.
    let r = gw
        .http(
            "GET",
            "/hosts",
            &[("Origin", "http://attacker.example")],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.header("access-control-allow-origin").is_none());
    let r = put(vec![("Origin", origin)]).await;
    assert_eq!(r.status, 202, "{}", r.body);
    gw.stop().await;
}

#[tokio::test]
async fn an_api_on_the_network_takes_changes_only_with_a_token() {
    let gw = TestGateway::start_at("0.0.0.0:0", "").await;
    assert_eq!(gw.get("/hosts").await.status, 200, "reads stay open");
    let e = gw
        .put_config("setpoint", r#"{"target":20}"#)
        .await
        .assert_error(403);
    assert_eq!(e, "set [api] token_file to allow changes from the network");
    let e = gw
        .http(
            "POST",
            "/events/1/acknowledgements",
            &[],
            Some(r#"{"message":"x"}"#),
        )
        .await
        .assert_error(403);
    assert!(e.contains("token_file"), "{e}");
    assert_eq!(setpoint_target(&gw).await, serde_json::Value::Null);
    gw.stop().await;
    // With a token file, the token lets changes in.
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("api.token");
    std::fs::write(&token, "net-token\n").unwrap();
    let gw = TestGateway::start_at(
        "0.0.0.0:0",
        &format!("token_file = {:?}", token.display().to_string()),
    )
    .await;
    gw.put_config("setpoint", r#"{"target":20}"#)
        .await
        .assert_error(401);
    let r = gw
        .http(
            "PUT",
            "/hosts/pump/items/setpoint/config",
            &[("Authorization", "Bearer net-token")],
            Some(r#"{"target":20}"#),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    gw.stop().await;
}

#[tokio::test]
async fn a_history_over_the_cap_is_refused_and_a_limit_streams_the_newest() {
    let gw = TestGateway::start("").await;
    let store = &gw.gateway.store;
    let id = store.item_id("pump", "broken").expect("id");
    let end = modbridge::clock::unix_now() - 3600;
    let start = end - 200_000;
    let samples: Vec<_> = (start..=end)
        .map(|clock| modbridge::store::Sample {
            item: id,
            clock,
            value: (clock - start) as f64,
        })
        .collect();
    store.push(&samples);
    store.maintain().expect("committed and compacted");
    let range = format!("from={start}&to={end}");
    // 200,001 points: more than one answer carries.
    let r = gw
        .get(&format!("/hosts/pump/items/broken/history?{range}"))
        .await;
    r.assert_error(422);
    assert!(r.body.contains("more than 200000 points"), "{}", r.body);
    let r = gw
        .get(&format!(
            "/hosts/pump/items/broken/history?{range}&limit=200001"
        ))
        .await;
    r.assert_error(422);
    // The cap itself, newest first kept, ascending.
    let r = gw
        .get(&format!(
            "/hosts/pump/items/broken/history?{range}&limit=200000"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(200)]);
    let points: Vec<(i64, f64)> = serde_json::from_str(&r.body).expect("points");
    assert_eq!(points.len(), 200_000);
    assert_eq!(points[0], (start + 1, 1.0));
    assert_eq!(points[199_999], (end, 200_000.0));
    let r = gw
        .get(&format!("/hosts/pump/items/broken/history?{range}&limit=3"))
        .await;
    assert_eq!(r.status, 200);
    let points: Vec<(i64, f64)> = serde_json::from_str(&r.body).expect("points");
    assert_eq!(
        points,
        vec![(end - 2, 199_998.0), (end - 1, 199_999.0), (end, 200_000.0)]
    );
    gw.stop().await;
}
