//! Request parsing: the JSON body of a config request, as it comes over MQTT
//! or the HTTP API, becomes a typed [`ConfigRequest`], or a [`SubmitError`]
//! that says what is wrong; and the refusals a request meets against the
//! current config (unknown host or key, a sensor). Nothing here touches the
//! database or a device.

use serde_json::Value;

use crate::model::Config;
use crate::store::StoreError;

/// At most this many strings in a request's `audit`...
pub const MAX_AUDIT_ENTRIES: usize = 16;
/// ...each at most this many bytes.
pub const MAX_AUDIT_LEN: usize = 256;
/// A request's `id`, as JSON, at most this many bytes.
pub const MAX_ID_LEN: usize = 256;

/// Where a request came from; the gateway adds it to `audit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    Mqtt,
    /// The HTTP API, with the peer's address.
    Api(std::net::SocketAddr),
    /// The command line, with the user's name.
    Cli(String),
    /// A Sparkplug B DCMD.
    Sparkplug,
}

impl Channel {
    /// The audit string: `mqtt`, `api <peer address>`, `cli <user>`, `sparkplug`.
    pub fn audit(&self) -> String {
        match self {
            Channel::Mqtt => "mqtt".to_string(),
            Channel::Api(peer) => format!("api {peer}"),
            Channel::Cli(user) => format!("cli {user}"),
            Channel::Sparkplug => "sparkplug".to_string(),
        }
    }
}

/// A validated config request.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigRequest {
    pub host: String,
    pub key: String,
    pub target: f64,
    pub expected: Option<f64>,
    pub audit: Vec<String>,
    /// The requester's id, echoed in `config.id`.
    pub id: Option<serde_json::Value>,
}

/// Why a request was refused (nothing was recorded).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Not JSON, wrong shape, missing fields: HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    #[error("unknown host {0:?}")]
    UnknownHost(String),
    #[error("host {host:?} has no item {key:?}")]
    UnknownKey { host: String, key: String },
    #[error("{host}/{key} is a sensor, not configurable")]
    NotConfigurable { host: String, key: String },
    /// Well-formed but unusable (e.g. target not a number): HTTP 422.
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(#[from] StoreError),
}

impl SubmitError {
    /// The HTTP status that fits.
    pub fn http_status(&self) -> u16 {
        match self {
            SubmitError::BadRequest(_) => 400,
            SubmitError::UnknownHost(_) | SubmitError::UnknownKey { .. } => 404,
            SubmitError::NotConfigurable { .. } => 409,
            SubmitError::Invalid(_) => 422,
            SubmitError::Storage(_) => 503,
        }
    }
}

/// Refusals: unknown host or key, a sensor, a target or expected value that
/// is not a finite number.
pub(super) fn check_request(config: &Config, request: &ConfigRequest) -> Result<(), SubmitError> {
    let Some(host) = config.host(&request.host) else {
        return Err(SubmitError::UnknownHost(request.host.clone()));
    };
    let Some(item) = host.item(&request.key) else {
        return Err(SubmitError::UnknownKey {
            host: request.host.clone(),
            key: request.key.clone(),
        });
    };
    if !item.configurable {
        return Err(SubmitError::NotConfigurable {
            host: request.host.clone(),
            key: request.key.clone(),
        });
    }
    if !request.target.is_finite() {
        return Err(SubmitError::Invalid(format!(
            "target must be a finite number, not {}",
            request.target
        )));
    }
    if let Some(e) = request.expected.filter(|e| !e.is_finite()) {
        return Err(SubmitError::Invalid(format!(
            "expected must be a finite number or null, not {e}"
        )));
    }
    Ok(())
}

const REQUEST_FIELDS: [&str; 6] = ["host", "key", "target", "expected", "audit", "id"];

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_object(json: &[u8]) -> Result<serde_json::Map<String, Value>, SubmitError> {
    let v: Value = serde_json::from_slice(json)
        .map_err(|e| SubmitError::BadRequest(format!("the request is not valid JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(SubmitError::BadRequest(format!(
            "the request must be a JSON object, not {}",
            json_kind(&v)
        )));
    };
    if let Some(k) = map.keys().find(|k| !REQUEST_FIELDS.contains(&k.as_str())) {
        return Err(SubmitError::BadRequest(format!(
            "unknown field {k:?}; a request has the fields host, key, target, expected, audit and id"
        )));
    }
    Ok(map)
}

/// A JSON number. Strings are refused, also numeric ones: values in JSON are numbers.
fn number(field: &str, v: &Value) -> Result<f64, SubmitError> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| SubmitError::Invalid(format!("{field} {n} is not a usable number"))),
        Value::String(s) => Err(SubmitError::Invalid(format!(
            "{field} must be a JSON number, not the string {s:?}"
        ))),
        other => Err(SubmitError::Invalid(format!(
            "{field} must be a number, not {}",
            json_kind(other)
        ))),
    }
}

fn string_field(map: &serde_json::Map<String, Value>, field: &str) -> Result<String, SubmitError> {
    match map.get(field) {
        None => Err(SubmitError::BadRequest(format!("missing field {field:?}"))),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(SubmitError::Invalid(format!("{field} must not be empty"))),
        Some(other) => Err(SubmitError::Invalid(format!(
            "{field} must be a string, not {}",
            json_kind(other)
        ))),
    }
}

/// The fields besides host and key.
fn parse_fields(
    host: String,
    key: String,
    map: &serde_json::Map<String, Value>,
) -> Result<ConfigRequest, SubmitError> {
    let target = match map.get("target") {
        None => return Err(SubmitError::BadRequest("missing field \"target\"".into())),
        Some(v) => number("target", v)?,
    };
    let expected = match map.get("expected") {
        None | Some(Value::Null) => None,
        Some(v) => Some(number("expected", v)?),
    };
    let audit = match map.get("audit") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => {
            if list.len() > MAX_AUDIT_ENTRIES {
                return Err(SubmitError::Invalid(format!(
                    "audit has {} entries; at most {MAX_AUDIT_ENTRIES} are accepted",
                    list.len()
                )));
            }
            let mut audit = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                match v {
                    Value::String(s) if s.len() <= MAX_AUDIT_LEN => audit.push(s.clone()),
                    Value::String(s) => {
                        return Err(SubmitError::Invalid(format!(
                            "audit[{i}] is {} bytes long; at most {MAX_AUDIT_LEN} are accepted",
                            s.len()
                        )))
                    }
                    other => {
                        return Err(SubmitError::Invalid(format!(
                            "audit must be an array of strings, but audit[{i}] is {}",
                            json_kind(other)
                        )))
                    }
                }
            }
            audit
        }
        Some(other) => {
            return Err(SubmitError::Invalid(format!(
                "audit must be an array of strings, not {}",
                json_kind(other)
            )))
        }
    };
    let id = match map.get("id") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let len = v.to_string().len();
            if len > MAX_ID_LEN {
                return Err(SubmitError::Invalid(format!(
                    "id is {len} bytes of JSON; at most {MAX_ID_LEN} are accepted"
                )));
            }
            Some(v.clone())
        }
    };
    Ok(ConfigRequest {
        host,
        key,
        target,
        expected,
        audit,
        id,
    })
}

/// Parses a full request (`{"host","key","target","expected"?,"audit"?,"id"?}`),
/// as it comes over MQTT.
///
/// `target` and `expected` must be JSON numbers (a numeric string such as
/// `"22.5"` is refused like `"abc"`); `expected`, `audit` and `id` may be
/// null or absent; unknown fields are refused, so that a misspelt `expected`
/// never turns a guarded write into an unguarded one.
pub fn parse_request(json: &[u8]) -> Result<ConfigRequest, SubmitError> {
    let map = parse_object(json)?;
    let host = string_field(&map, "host")?;
    let key = string_field(&map, "key")?;
    parse_fields(host, key, &map)
}

/// Parses an HTTP body (`{"target","expected"?,"audit"?,"id"?}`) for an item.
/// The body may repeat `host` and `key`, but only with the path's values.
pub fn parse_body(host: &str, key: &str, json: &[u8]) -> Result<ConfigRequest, SubmitError> {
    let map = parse_object(json)?;
    for (field, path) in [("host", host), ("key", key)] {
        if map.contains_key(field) {
            let body = string_field(&map, field)?;
            if body != path {
                return Err(SubmitError::BadRequest(format!(
                    "the body names {field} {body:?} but the path names {path:?}"
                )));
            }
        }
    }
    parse_fields(host.to_string(), key.to_string(), &map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_full_and_minimal_requests() {
        let r = parse_request(
            br#"{"host":"pump","key":"k","target":22.5,"expected":null,"audit":["alice"],"id":"r-1"}"#,
        )
        .unwrap();
        assert_eq!(r.host, "pump");
        assert_eq!(r.target, 22.5);
        assert_eq!(r.expected, None);
        assert_eq!(r.audit, vec!["alice".to_string()]);
        assert_eq!(r.id, Some(Value::String("r-1".into())));
        let r = parse_body("pump", "k", br#"{"target":3,"expected":2}"#).unwrap();
        assert_eq!((r.target, r.expected), (3.0, Some(2.0)));
        assert!(r.audit.is_empty() && r.id.is_none());
        let r = parse_body("pump", "k", br#"{"host":"pump","target":1,"id":7}"#).unwrap();
        assert_eq!(r.id, Some(serde_json::json!(7)));
    }

    #[test]
    fn parse_refuses_bad_input_with_clear_errors() {
        let cases: [(&[u8], u16, &str); 14] = [
            (b"not json", 400, "not valid JSON"),
            (b"[1,2]", 400, "must be a JSON object, not an array"),
            (br#"{"key":"k","target":1}"#, 400, "missing field \"host\""),
            (br#"{"host":"h","target":1}"#, 400, "missing field \"key\""),
            (
                br#"{"host":"h","key":"k"}"#,
                400,
                "missing field \"target\"",
            ),
            (
                br#"{"host":"h","key":"k","target":"abc"}"#,
                422,
                "not the string \"abc\"",
            ),
            (
                br#"{"host":"h","key":"k","target":"22.5"}"#,
                422,
                "must be a JSON number",
            ),
            (br#"{"host":"h","key":"k","target":null}"#, 422, "not null"),
            (
                br#"{"host":"h","key":"k","target":1,"expected":"x"}"#,
                422,
                "expected must be",
            ),
            (
                br#"{"host":"h","key":"k","target":1,"audit":"me"}"#,
                422,
                "audit must be an array of strings",
            ),
            (
                br#"{"host":"h","key":"k","target":1,"audit":["a",3]}"#,
                422,
                "audit[1] is a number",
            ),
            (
                br#"{"host":"h","key":"k","target":1,"expect":2}"#,
                400,
                "unknown field \"expect\"",
            ),
            (
                br#"{"host":5,"key":"k","target":1}"#,
                422,
                "host must be a string",
            ),
            (
                br#"{"host":"h","key":"k","target":1e999}"#,
                400,
                "not valid JSON",
            ),
        ];
        for (json, status, text) in cases {
            let e = parse_request(json).unwrap_err();
            assert_eq!(
                e.http_status(),
                status,
                "{}: {e}",
                String::from_utf8_lossy(json)
            );
            assert!(
                e.to_string().contains(text),
                "{}: {e}",
                String::from_utf8_lossy(json)
            );
        }
        let e = parse_body("pump", "k", br#"{"host":"other","target":1}"#).unwrap_err();
        assert!(e.to_string().contains("the path names \"pump\""), "{e}");
        let long = format!(r#"{{"target":1,"audit":["{}"]}}"#, "x".repeat(300));
        assert!(parse_body("h", "k", long.as_bytes()).is_err());
    }
}
