//! Downlink commands: `R/cmd/config`, `R/cmd/ack`, `R/cmd/resend`
//! (`R/cmd/dataset`, a deployment, is the session's: it runs off the runtime).
//!
//! Each command is either carried out (a config request recorded, an
//! acknowledgement stored, a resend planned) or refused with a reason that
//! the session publishes on `R/rejected`; a refused command changes nothing.

use serde_json::Value;

use crate::config_requests::{self, Channel};
use crate::gateway::Gateway;

/// Largest command payload accepted; larger ones are refused on `R/rejected`.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Most history points one `R/cmd/resend` may ask for (estimated from the
/// range and the items' poll intervals before anything is read).
pub const MAX_RESEND_POINTS: u64 = 100_000;

/// The commands the gateway subscribes to, below its root.
pub(crate) const COMMAND_TOPICS: [&str; 4] = ["cmd/config", "cmd/ack", "cmd/resend", DATASET_TOPIC];

/// The deployment command, below the root.
pub(crate) const DATASET_TOPIC: &str = "cmd/dataset";

/// What a carried-out command leaves for the session to publish.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    Done,
    /// Messages for `R/data/<host>`: (host, payload, points).
    Resend(Vec<(String, String, u64)>),
}

/// Carries out one downlink message received on `topic` (full topic), or
/// says why it was refused.
pub(crate) async fn handle(
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
                .await
                .map_err(|e| e.to_string())?;
            Ok(Outcome::Done)
        }
        "cmd/ack" => {
            let (eventid, message) = parse_ack(payload)?;
            gateway
                .alarms
                .acknowledge(eventid, &message)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Outcome::Done)
        }
        "cmd/resend" => {
            let request = parse_resend(payload)?;
            plan_resend(gateway, &request, now)
                .await
                .map(Outcome::Resend)
        }
        _ => Err(format!(
            "unknown command topic; the gateway takes {}",
            COMMAND_TOPICS.map(|t| format!("{root}/{t}")).join(", ")
        )),
    }
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
async fn plan_resend(
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
    let mut builder = crate::wire::ResendBuilder::new(&r.host, r.from, r.to);
    if from <= to {
        for item in items {
            let Some(id) = gateway.store.item_id(&r.host, &item.key) else {
                continue;
            };
            let points = gateway
                .store
                .history(id, from, to, None)
                .await
                .map_err(|e| format!("cannot read history: {e}"))?;
            builder.add(&item.key, &points);
        }
    }
    Ok(builder.finish())
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
}
