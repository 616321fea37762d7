//! The gateway's own messages: `R/status` and `R/rejected`.

/// `R/status` on every connect: `{"state":"online","clock","version"}`.
pub fn online(clock: i64) -> String {
    serde_json::json!({
        "state": "online",
        "clock": clock,
        "version": env!("CARGO_PKG_VERSION"),
    })
    .to_string()
}

/// `R/status` at a clean stop: `{"state":"offline","clock"}`.
pub fn offline(clock: i64) -> String {
    serde_json::json!({"state": "offline", "clock": clock}).to_string()
}

/// The retained Last Will on `R/status`: `{"state":"offline"}` (no clock:
/// the broker sends it, whenever the connection is lost).
pub const LAST_WILL: &str = r#"{"state":"offline"}"#;

/// The `R/rejected` payload: `{"clock","topic","error"}`.
pub fn rejection(clock: i64, topic: &str, error: &str) -> String {
    serde_json::json!({"clock": clock, "topic": topic, "error": error}).to_string()
}
