//! Downlink commands: `R/cmd/config`, `R/cmd/ack`, `R/cmd/resend`.
//!
//! Each command is either carried out (a config request recorded, an
//! acknowledgement stored, a resend planned) or refused with a reason that
//! the session publishes on `R/rejected`; a refused command changes nothing.

use serde_json::Value;

use crate::config_requests::{self, Channel};
use crate::gateway::Gateway;
use crate::store::{MAX_MESSAGE_JSON_BYTES, MAX_POINTS_PER_MESSAGE};

/// Largest command payload accepted; larger ones are refused on `R/rejected`.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most history points one `R/cmd/resend` may ask for (estimated from the
/// range and the items' poll intervals before anything is read).
pub const MAX_RESEND_POINTS: u64 = 100_000;

/// The commands the gateway subscribes to, below its root.
pub(crate) const COMMAND_TOPICS: [&str; 3] = ["cmd/config", "cmd/ack", "cmd/resend"];

/// What a carried-out command leaves for the session to publish.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    Done,
    /// Messages for `R/data/<host>`: (host, payload, points).
    Resend(Vec<(String, String, u64)>),
}

/// Carries out one downlink message received on `topic` (full topic), or
/// says why it was refused.
pub(crate) fn handle(
    gateway: &Gateway,
    root: &str,
    topic: &str,
    payload: &[u8],
    now: i64,
) -> Result<Outcome, String> {
    let command = topic
        .strip_prefix(root)
        .and_then(|t| t.strip_prefix('/'))
        .unwrap_or(topic);
    if payload.len() > MAX_COMMAND_BYTES {
        return Err(format!(
            "message of {} bytes is larger than the {MAX_COMMAND_BYTES} bytes a command may have",
            payload.len()
        ));
    }
    match command {
        "cmd/config" => {
            let request = config_requests::parse_request(payload).map_err(|e| e.to_string())?;
            gateway
                .writes
                .submit(request, Channel::Mqtt)
                .map_err(|e| e.to_string())?;
            Ok(Outcome::Done)
        }
        "cmd/ack" => {
            let (eventid, message) = parse_ack(payload)?;
            gateway
                .alarms
                .acknowledge(eventid, &message)
                .map_err(|e| e.to_string())?;
            Ok(Outcome::Done)
        }
        "cmd/resend" => {
            let request = parse_resend(payload)?;
            plan_resend(gateway, &request, now).map(Outcome::Resend)
        }
        _ => Err(format!(
            "unknown command topic; the gateway takes {}",
            COMMAND_TOPICS.map(|t| format!("{root}/{t}")).join(", ")
        )),
    }
}

/// The `R/rejected` payload: `{"clock","topic","error"}`.
pub(crate) fn rejection(clock: i64, topic: &str, error: &str) -> String {
    serde_json::json!({"clock": clock, "topic": topic, "error": error}).to_string()
}

fn object(payload: &[u8]) -> Result<serde_json::Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("payload must be a JSON object".into()),
        Err(e) => Err(format!("payload is not JSON: {e}")),
    }
}

fn field<'a>(map: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a Value, String> {
    match map.get(name) {
        Some(Value::Null) | None => Err(format!("missing field {name:?}")),
        Some(v) => Ok(v),
    }
}

fn integer(map: &serde_json::Map<String, Value>, name: &str, what: &str) -> Result<i64, String> {
    field(map, name)?
        .as_i64()
        .ok_or_else(|| format!("{name:?} must be {what}"))
}

fn string(map: &serde_json::Map<String, Value>, name: &str) -> Result<String, String> {
    field(map, name)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{name:?} must be a string"))
}

/// `{"eventid","message"}`.
fn parse_ack(payload: &[u8]) -> Result<(u64, String), String> {
    let map = object(payload)?;
    let eventid = field(&map, "eventid")?
        .as_u64()
        .ok_or_else(|| "\"eventid\" must be a non-negative integer".to_string())?;
    Ok((eventid, string(&map, "message")?))
}

/// A parsed `R/cmd/resend`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ResendRequest {
    pub host: String,
    pub key: Option<String>,
    pub from: i64,
    pub to: i64,
}

/// `{"host","key"?,"from","to"}`.
fn parse_resend(payload: &[u8]) -> Result<ResendRequest, String> {
    let map = object(payload)?;
    let host = string(&map, "host")?;
    let key = match map.get("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("\"key\" must be a string".into()),
    };
    let from = integer(&map, "from", "an integer (Unix seconds)")?;
    let to = integer(&map, "to", "an integer (Unix seconds)")?;
    if from > to {
        return Err(format!("\"from\" ({from}) is after \"to\" ({to})"));
    }
    Ok(ResendRequest {
        host,
        key,
        from,
        to,
    })
}

/// Checks a resend against the config and its size bound, then reads the
/// history and cuts it into messages like the live ones (at most
/// `MAX_POINTS_PER_MESSAGE` points, about `MAX_MESSAGE_JSON_BYTES`).
fn plan_resend(
    gateway: &Gateway,
    r: &ResendRequest,
    now: i64,
) -> Result<Vec<(String, String, u64)>, String> {
    let config = gateway.config();
    let host = config
        .host(&r.host)
        .ok_or_else(|| format!("unknown host {:?}", r.host))?;
    let items: Vec<_> = match &r.key {
        Some(key) => vec![host
            .item(key)
            .ok_or_else(|| format!("host {:?} has no item {key:?}", r.host))?],
        None => host.items.iter().collect(),
    };
    // Nothing is stored before the retention horizon or after now.
    let retention = config
        .storage
        .history_retention
        .as_secs()
        .min(i64::MAX as u64) as i64;
    let from = r
        .from
        .max(now.saturating_sub(retention).saturating_sub(3600));
    let to = r.to.min(now.saturating_add(60));
    let span_ms = (i128::from(to) - i128::from(from)).max(0) * 1000;
    let estimate: i128 = if from > to {
        0
    } else {
        items
            .iter()
            .map(|i| span_ms / (i.poll_interval.as_millis().max(1) as i128) + 1)
            .sum()
    };
    if estimate > i128::from(MAX_RESEND_POINTS) {
        return Err(format!(
            "the range may hold up to {estimate} points, more than the {MAX_RESEND_POINTS} one resend may cover; ask for a shorter range or one key"
        ));
    }
    let mut builder = ResendBuilder::new(&r.host, r.from, r.to);
    if from <= to {
        for item in items {
            let Some(id) = gateway.store.item_id(&r.host, &item.key) else {
                continue;
            };
            let points = gateway
                .store
                .history(id, from, to, None)
                .map_err(|e| format!("cannot read history: {e}"))?;
            builder.add(&item.key, &points);
        }
    }
    Ok(builder.finish())
}

/// Builds resend messages: `{"host","resend":true,"from","to","items":{...}}`,
/// no `seq` (they are not part of the live sequence).
struct ResendBuilder {
    host: String,
    from: i64,
    to: i64,
    out: Vec<(String, String, u64)>,
    cur: String,
    cur_points: u64,
    cur_items: usize,
}

impl ResendBuilder {
    fn new(host: &str, from: i64, to: i64) -> ResendBuilder {
        let mut b = ResendBuilder {
            host: host.to_string(),
            from,
            to,
            out: Vec::new(),
            cur: String::new(),
            cur_points: 0,
            cur_items: 0,
        };
        b.start();
        b
    }

    fn start(&mut self) {
        self.cur = format!(
            "{{\"host\":{},\"resend\":true,\"from\":{},\"to\":{},\"items\":{{",
            json_str(&self.host),
            self.from,
            self.to
        );
        self.cur_points = 0;
        self.cur_items = 0;
    }

    fn close(&mut self) {
        if self.cur_items > 0 {
            self.cur.push_str("]}}");
        } else {
            self.cur.push_str("}}");
        }
        let payload = std::mem::take(&mut self.cur);
        self.out.push((self.host.clone(), payload, self.cur_points));
    }

    fn add(&mut self, key: &str, points: &[(i64, f64)]) {
        let mut open = false;
        for &(clock, value) in points {
            if self.cur_points as usize >= MAX_POINTS_PER_MESSAGE
                || self.cur.len() + key.len() + 64 >= MAX_MESSAGE_JSON_BYTES
            {
                self.close();
                self.start();
                open = false;
            }
            if !open {
                if self.cur_items > 0 {
                    self.cur.push_str("],");
                }
                self.cur.push_str(&json_str(key));
                self.cur.push_str(":[");
                self.cur_items += 1;
                open = true;
            } else {
                self.cur.push(',');
            }
            self.cur.push('[');
            self.cur.push_str(&clock.to_string());
            self.cur.push(',');
            crate::store::push_json_num(&mut self.cur, value);
            self.cur.push(']');
            self.cur_points += 1;
        }
    }

    /// The messages; one with empty `items` when nothing is stored in the range,
    /// so the requester hears back either way.
    fn finish(mut self) -> Vec<(String, String, u64)> {
        if self.cur_points > 0 || self.out.is_empty() {
            self.close();
        }
        self.out
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_and_resends_are_parsed_strictly() {
        assert_eq!(
            parse_ack(br#"{"eventid": 4, "message": "on site"}"#),
            Ok((4, "on site".to_string()))
        );
        for (bad, want) in [
            (&b"nope"[..], "not JSON"),
            (br#"[1]"#, "JSON object"),
            (br#"{"message":"x"}"#, "missing field \"eventid\""),
            (br#"{"eventid":-1,"message":"x"}"#, "non-negative integer"),
            (
                br#"{"eventid":1,"message":2}"#,
                "\"message\" must be a string",
            ),
        ] {
            let e = parse_ack(bad).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        assert_eq!(
            parse_resend(br#"{"host":"pump","from":10,"to":20}"#),
            Ok(ResendRequest {
                host: "pump".into(),
                key: None,
                from: 10,
                to: 20
            })
        );
        for (bad, want) in [
            (&br#"{"host":"pump","from":30,"to":20}"#[..], "is after"),
            (
                br#"{"host":"pump","from":"a","to":20}"#,
                "\"from\" must be an integer",
            ),
            (br#"{"host":"pump","to":20}"#, "missing field \"from\""),
            (
                br#"{"host":"pump","key":3,"from":1,"to":2}"#,
                "\"key\" must be a string",
            ),
            (br#"{"from":1,"to":2}"#, "missing field \"host\""),
        ] {
            let e = parse_resend(bad).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn resend_messages_are_cut_like_live_ones_and_carry_no_seq() {
        let mut b = ResendBuilder::new("pump", 0, 9999);
        let points: Vec<(i64, f64)> = (0..4500).map(|i| (i, i as f64 * 0.5)).collect();
        b.add("a", &points[..10]);
        b.add("b", &points);
        let out = b.finish();
        assert_eq!(out.len(), 3);
        let mut total = 0;
        for (host, payload, n) in &out {
            assert_eq!(host, "pump");
            let v: Value = serde_json::from_str(payload).unwrap();
            assert!(v.get("seq").is_none());
            assert_eq!(v["resend"], true);
            assert_eq!(v["from"], 0);
            let count: usize = v["items"]
                .as_object()
                .unwrap()
                .values()
                .map(|p| p.as_array().unwrap().len())
                .sum();
            assert_eq!(count as u64, *n);
            assert!(count <= MAX_POINTS_PER_MESSAGE);
            total += count;
        }
        assert_eq!(total, 4510);
        let v: Value = serde_json::from_str(&out[0].1).unwrap();
        assert_eq!(v["items"]["a"][3], serde_json::json!([3, 1.5]));
        assert_eq!(v["items"]["b"][0], serde_json::json!([0, 0]));
        let empty = ResendBuilder::new("pump", 5, 6).finish();
        assert_eq!(empty.len(), 1);
        let v: Value = serde_json::from_str(&empty[0].1).unwrap();
        assert_eq!(v["items"], serde_json::json!({}));
        assert!(rejection(1, "r/cmd/ack", "no event 9").contains("\"error\":\"no event 9\""));
    }
}
