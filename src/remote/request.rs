//! A deployment request, `{"name","format":"TOML","content","checksum","id"?,"audit"?}`,
//! and the refusals that change nothing.

use serde_json::Value;

use crate::model::CONFIG_DATASET;

/// The largest `content` a deployment may carry.
pub const MAX_CONTENT_BYTES: usize = 1 << 20;
/// The largest request body or message (the content escaped as JSON).
pub const MAX_REQUEST_BYTES: usize = 4 * MAX_CONTENT_BYTES - 64 * 1024;

/// Why a deployment was refused before anything changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// Not the request's shape (HTTP 400).
    #[error("{0}")]
    Malformed(String),
    /// Well-formed but not acceptable: format, name, size, checksum (HTTP 422).
    #[error("{0}")]
    Invalid(String),
    /// `[remote] config` is off (HTTP 403).
    #[error("remote configuration is off on this gateway; set [remote] config = true in its local config file")]
    Off,
    /// Another deployment is on probation (HTTP 409).
    #[error("deployment {0} is still PENDING (on probation); try again when it is APPLIED or ROLLED_BACK")]
    Busy(String),
    /// The gateway could not record or apply it (HTTP 503).
    #[error("{0}")]
    Failed(String),
}

/// A deployment as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployment {
    pub name: String,
    /// None: go back to the local file.
    pub content: Option<String>,
    pub checksum: Option<String>,
    pub id: Option<Value>,
    /// The request's audit strings followed by the channel's.
    pub audit: Vec<String>,
}

/// True for `modbridge.toml` and `profiles/<file>.toml` with `<file>` of
/// `[A-Za-z0-9_.-]` and no `..`.
pub fn valid_name(name: &str) -> bool {
    if name == CONFIG_DATASET {
        return true;
    }
    let Some(file) = name.strip_prefix("profiles/") else {
        return false;
    };
    file.len() > ".toml".len()
        && file.ends_with(".toml")
        && !file.contains("..")
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn text(map: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>, Refusal> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Refusal::Malformed(format!("\"{key}\" must be a string"))),
    }
}

/// Parses and checks a request; `channel` is the audit string the gateway
/// adds (`mqtt`, `api <peer>`).
pub fn parse(body: &[u8], channel: &str) -> Result<Deployment, Refusal> {
    if body.len() > MAX_REQUEST_BYTES {
        return Err(Refusal::Invalid(format!(
            "the deployment is {} bytes, more than the {MAX_REQUEST_BYTES} a request may have",
            body.len()
        )));
    }
    let map = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(Refusal::Malformed("the body must be a JSON object".into())),
        Err(e) => return Err(Refusal::Malformed(format!("not JSON: {e}"))),
    };
    for key in map.keys() {
        if !["name", "format", "content", "checksum", "id", "audit"].contains(&key.as_str()) {
            return Err(Refusal::Malformed(format!(
                "unknown field \"{key}\"; a deployment has name, format, content, checksum, id and audit"
            )));
        }
    }
    let name =
        text(&map, "name")?.ok_or_else(|| Refusal::Malformed("\"name\" is missing".into()))?;
    if !valid_name(&name) {
        return Err(Refusal::Invalid(format!(
            "name \"{name}\" is not modbridge.toml or profiles/<file>.toml (<file> of A-Z a-z 0-9 _ . -)"
        )));
    }
    match text(&map, "format")?.as_deref() {
        Some("TOML") => {}
        Some(other) => {
            return Err(Refusal::Invalid(format!(
                "format \"{other}\" is not accepted; configs and profiles are \"TOML\""
            )))
        }
        None => {
            return Err(Refusal::Malformed(
                "\"format\" is missing (\"TOML\")".into(),
            ))
        }
    }
    if !map.contains_key("content") {
        return Err(Refusal::Malformed(
            "\"content\" is missing (the text, or null to return to the local file)".into(),
        ));
    }
    let content = text(&map, "content")?;
    let checksum = text(&map, "checksum")?.map(|c| c.to_ascii_lowercase());
    if let Some(content) = &content {
        if content.len() > MAX_CONTENT_BYTES {
            return Err(Refusal::Invalid(format!(
                "content is {} bytes, more than the {MAX_CONTENT_BYTES} a Dataset may have",
                content.len()
            )));
        }
        let actual = crate::datasets::checksum(content.as_bytes());
        match &checksum {
            Some(c) if *c == actual => {}
            Some(c) => {
                return Err(Refusal::Invalid(format!(
                    "checksum {c} does not match the content's SHA-256 {actual}"
                )))
            }
            None => {
                return Err(Refusal::Invalid(
                    "\"checksum\" (the content's SHA-256 in hex) is missing".into(),
                ))
            }
        }
    }
    let mut audit = match map.get("audit") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Refusal::Malformed("\"audit\" must be a list of strings".into()))?,
        Some(_) => {
            return Err(Refusal::Malformed(
                "\"audit\" must be a list of strings".into(),
            ))
        }
    };
    audit.push(channel.to_string());
    Ok(Deployment {
        name,
        checksum: content.as_ref().and(checksum),
        content,
        id: map.get("id").cloned().filter(|v| !v.is_null()),
        audit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_config_or_a_profile() {
        for good in [
            "modbridge.toml",
            "profiles/nibe-f1345.toml",
            "profiles/a.b_c.toml",
        ] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "site.toml",
            "profiles/../x.toml",
            "profiles/x",
            "profiles/.toml",
            "profiles/a/b.toml",
            "/etc/passwd",
            "profiles/x y.toml",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn requests_are_checked_before_anything_changes() {
        let content = "[gateway]\nid = \"x\"\n";
        let sum = crate::datasets::checksum(content.as_bytes());
        let body = |v: serde_json::Value| v.to_string().into_bytes();
        let ok = parse(
            &body(serde_json::json!({"name":"modbridge.toml","format":"TOML","content":content,"checksum":sum.to_uppercase(),"id":7,"audit":["ops"]})),
            "mqtt",
        )
        .unwrap();
        assert_eq!(ok.audit, ["ops", "mqtt"]);
        assert_eq!(ok.checksum.as_deref(), Some(sum.as_str()));
        let null = parse(
            &body(serde_json::json!({"name":"modbridge.toml","format":"TOML","content":null})),
            "mqtt",
        )
        .unwrap();
        assert_eq!(null.content, None);
        let cases = [
            serde_json::json!({"name":"modbridge.toml","format":"TOML","content":content,"checksum":"00"}),
            serde_json::json!({"name":"modbridge.toml","format":"JSON","content":content,"checksum":sum}),
            serde_json::json!({"name":"x.toml","format":"TOML","content":content,"checksum":sum}),
            serde_json::json!({"name":"modbridge.toml","format":"TOML","content":content}),
        ];
        for case in cases {
            assert!(
                matches!(parse(&body(case.clone()), "mqtt"), Err(Refusal::Invalid(_))),
                "{case}"
            );
        }
        let big = "#".repeat(MAX_CONTENT_BYTES + 1);
        let big_sum = crate::datasets::checksum(big.as_bytes());
        let r = parse(
            &body(
                serde_json::json!({"name":"modbridge.toml","format":"TOML","content":big,"checksum":big_sum}),
            ),
            "mqtt",
        );
        assert!(matches!(r, Err(Refusal::Invalid(_))));
        assert!(matches!(parse(b"[1]", "mqtt"), Err(Refusal::Malformed(_))));
    }
}
