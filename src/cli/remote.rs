//! `modbridge write` and `modbridge ack`: requests to the running gateway
//! through its HTTP API, authenticated like any other API client.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use super::load_or_report;

/// How long `write` and `ack` wait for one answer of the API.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Headers every `write`/`ack` request carries.
type ApiHeaders = Vec<(&'static str, String)>;

/// Loads the config at `path` (reporting its problems) and gives where the
/// running gateway's API is, and the headers every request carries: the
/// bearer token (if `token_file` is set) and the user, for the audit trail
/// (`cli <user>`; the API trusts it from loopback peers only).
fn api_target(path: &Path, command: &str) -> Result<(std::net::SocketAddr, ApiHeaders), ExitCode> {
    let config = load_or_report(path)?;
    let addr = crate::api::client::connect_addr(config.api.listen);
    if addr.port() == 0 {
        eprintln!(
            "modbridge {command}: [api] listen in {} has port 0; give the port the gateway listens on",
            config.path.display()
        );
        return Err(ExitCode::from(2));
    }
    let mut headers = vec![(crate::api::USER_HEADER, cli_user())];
    if let Some(path) = &config.api.token_file {
        match std::fs::read(path) {
            Ok(bytes) => headers.push((
                "Authorization",
                format!("Bearer {}", String::from_utf8_lossy(bytes.trim_ascii())),
            )),
            Err(e) => {
                eprintln!(
                    "modbridge {command}: cannot read the API token file {}: {e}",
                    path.display()
                );
                return Err(ExitCode::from(1));
            }
        }
    }
    Ok((addr, headers))
}

/// The user running the command (the one who called sudo, if so).
fn cli_user() -> String {
    for var in ["SUDO_USER", "USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var) {
            let u = u.trim();
            if !u.is_empty() && u.chars().count() <= 64 && !u.chars().any(char::is_control) {
                return u.to_string();
            }
        }
    }
    "unknown".to_string()
}

/// A JSON value pretty-printed, as `write` and `ack` print the API's answers.
fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// `modbridge write`'s arguments, as the dispatch hands them over.
pub(super) struct WriteArgs {
    pub(super) config: PathBuf,
    pub(super) host: String,
    pub(super) key: String,
    pub(super) target: f64,
    pub(super) expected: Option<f64>,
    pub(super) id: Option<String>,
    pub(super) wait: String,
}

/// Submits a write and follows it until the device answered or `--wait` is over.
pub(super) async fn cmd_write(args: WriteArgs) -> ExitCode {
    let usage = |msg: String| {
        eprintln!("modbridge write: {msg}");
        ExitCode::from(2)
    };
    if !args.target.is_finite() {
        return usage("--target must be a finite number".into());
    }
    if args.expected.is_some_and(|e| !e.is_finite()) {
        return usage("--expected must be a finite number".into());
    }
    let wait = match crate::units::parse_duration(&args.wait) {
        Ok(w) => w,
        Err(e) => return usage(format!("--wait: {e}")),
    };
    let (addr, headers) = match api_target(&args.config, "write") {
        Ok(t) => t,
        Err(code) => return code,
    };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut body = serde_json::json!({ "target": args.target });
    if let Some(e) = args.expected {
        body["expected"] = serde_json::json!(e);
    }
    if let Some(id) = &args.id {
        body["id"] = serde_json::json!(id);
    }
    let path = format!(
        "/hosts/{}/items/{}/config",
        crate::api::client::encode(&args.host),
        crate::api::client::encode(&args.key)
    );
    let sent = body.to_string();
    let answer = crate::api::client::request(
        addr,
        "PUT",
        &path,
        &headers,
        Some(sent.as_bytes()),
        API_TIMEOUT,
    )
    .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("modbridge write: {e}");
            return ExitCode::from(1);
        }
    };
    let accepted = match (answer.status, answer.json()) {
        (202, Some(obj)) => obj,
        (status, _) => {
            eprintln!(
                "modbridge write: refused ({status}): {}",
                answer.error_message()
            );
            return ExitCode::from(1);
        }
    };
    // Follow the request until the device answered (or the wait is over).
    let mut current = accepted.clone();
    let deadline = tokio::time::Instant::now() + wait;
    while current["status"] == "PENDING" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match crate::api::client::request(addr, "GET", &path, &headers, None, API_TIMEOUT).await {
            Ok(a) if a.status == 200 => match a.json() {
                Some(obj) => {
                    let same = ["lastclock", "target", "audit", "id"]
                        .iter()
                        .all(|f| obj[*f] == accepted[*f]);
                    if !same {
                        println!("{}", pretty(&current));
                        eprintln!(
                            "modbridge write: superseded by a newer request for {}/{}",
                            args.host, args.key
                        );
                        return ExitCode::from(1);
                    }
                    current = obj;
                }
                None => break,
            },
            Ok(a) => {
                eprintln!(
                    "modbridge write: cannot follow the request ({}): {}",
                    a.status,
                    a.error_message()
                );
                break;
            }
            Err(e) => {
                eprintln!("modbridge write: cannot follow the request: {e}");
                break;
            }
        }
    }
    println!("{}", pretty(&current));
    match current["status"].as_str() {
        Some("SUCCESS") => ExitCode::SUCCESS,
        Some("PENDING") if wait.is_zero() => ExitCode::SUCCESS,
        Some("PENDING") => {
            eprintln!(
                "modbridge write: still PENDING after {}: the device has not been reached; the gateway keeps trying until the request expires",
                crate::units::format_duration(wait)
            );
            ExitCode::from(1)
        }
        _ => {
            eprintln!(
                "modbridge write: FAILED: {}",
                current["reason"].as_str().unwrap_or("no reason given")
            );
            ExitCode::from(1)
        }
    }
}

/// Acknowledges an alarm event.
pub(super) async fn cmd_ack(path: &Path, event: u64, message: &str) -> ExitCode {
    if message.trim().is_empty() {
        eprintln!("modbridge ack: --message must not be empty");
        return ExitCode::from(2);
    }
    let (addr, headers) = match api_target(path, "ack") {
        Ok(t) => t,
        Err(code) => return code,
    };
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let body = serde_json::json!({ "message": message }).to_string();
    let answer = crate::api::client::request(
        addr,
        "POST",
        &format!("/events/{event}/acknowledgements"),
        &headers,
        Some(body.as_bytes()),
        API_TIMEOUT,
    )
    .await;
    match answer {
        Ok(a) if a.status == 201 => {
            match a.json() {
                Some(v) => println!("{}", pretty(&v)),
                None => println!("{}", String::from_utf8_lossy(&a.body)),
            }
            ExitCode::SUCCESS
        }
        Ok(a) => {
            eprintln!(
                "modbridge ack: refused ({}): {}",
                a.status,
                a.error_message()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("modbridge ack: {e}");
            ExitCode::from(1)
        }
    }
}
