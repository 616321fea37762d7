//! Query strings and path ids: strict (unknown or repeated parameters are
//! errors, so a typo like `form=` is not silently ignored), empty values
//! count as absent (`?from=&to=` is the default range).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};

use super::error::HttpError;

/// The default span of a time range: 24 hours before `to`.
pub const DEFAULT_SPAN: i64 = 24 * 3600;

/// A query string, checked against the parameters a request takes.
#[derive(Debug)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

pub type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

impl Params {
    pub fn parse(query: RawQuery, allowed: &[&str]) -> Result<Params, HttpError> {
        let Query(pairs) = query
            .map_err(|e| HttpError::bad_request(format!("bad query string: {}", e.body_text())))?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !allowed.contains(&name.as_str()) {
                return Err(HttpError::bad_request(if allowed.is_empty() {
                    format!("unknown query parameter {name:?}; this request takes none")
                } else {
                    format!(
                        "unknown query parameter {name:?}; this request takes {}",
                        allowed.join(", ")
                    )
                }));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(HttpError::bad_request(format!(
                    "query parameter {name:?} is given more than once"
                )));
            }
        }
        Ok(Params { pairs })
    }

    /// A non-empty value.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Unix seconds.
    pub fn clock(&self, name: &str) -> Result<Option<i64>, HttpError> {
        self.text(name)
            .map(|v| {
                v.trim().parse::<i64>().map_err(|_| {
                    HttpError::bad_request(format!(
                        "{name} must be Unix seconds (an integer), not {v:?}"
                    ))
                })
            })
            .transpose()
    }

    /// A count of 0 or more.
    pub fn count(&self, name: &str) -> Result<Option<usize>, HttpError> {
        self.text(name)
            .map(|v| {
                v.trim().parse::<usize>().map_err(|_| {
                    HttpError::bad_request(format!(
                        "{name} must be a whole number of 0 or more, not {v:?}"
                    ))
                })
            })
            .transpose()
    }

    /// `from`/`to`: `to` defaults to `now`, `from` to 24 hours before `to`.
    pub fn range(&self, now: i64) -> Result<(i64, i64), HttpError> {
        let to = self.clock("to")?.unwrap_or(now);
        let from = self
            .clock("from")?
            .unwrap_or(to.saturating_sub(DEFAULT_SPAN));
        if from > to {
            return Err(HttpError::bad_request(format!(
                "from ({from}) is after to ({to})"
            )));
        }
        Ok((from, to))
    }
}

/// Path parameters, or 400 if they cannot be decoded.
pub fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, HttpError> {
    p.map(|Path(t)| t)
        .map_err(|e| HttpError::bad_request(format!("bad path: {}", e.body_text())))
}

/// A numeric id in a path (`eventid`, `triggerid`).
pub fn id(name: &str, value: &str) -> Result<u64, HttpError> {
    value.parse::<u64>().map_err(|_| {
        HttpError::bad_request(format!("{name} must be a positive integer, not {value:?}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &[(&str, &str)], allowed: &[&str]) -> Result<Params, HttpError> {
        Params::parse(
            Ok(Query(
                q.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            )),
            allowed,
        )
    }

    #[test]
    fn ranges_default_to_the_last_24_hours() {
        let p = params(&[], &["from", "to"]).unwrap();
        assert_eq!(p.range(100_000).unwrap(), (100_000 - 86_400, 100_000));
        let p = params(&[("to", "1000"), ("from", "")], &["from", "to"]).unwrap();
        assert_eq!(p.range(5).unwrap(), (1000 - 86_400, 1000));
        let p = params(&[("from", "10"), ("to", "5")], &["from", "to"]).unwrap();
        assert_eq!(p.range(5).unwrap_err().status.as_u16(), 400);
        let p = params(&[("from", "abc")], &["from", "to"]).unwrap();
        let e = p.range(5).unwrap_err();
        assert!(
            e.message.contains("from must be Unix seconds"),
            "{}",
            e.message
        );
    }

    #[test]
    fn unknown_and_repeated_parameters_are_refused() {
        let e = params(&[("form", "1")], &["from", "to"]).unwrap_err();
        assert!(e.message.contains("\"form\""), "{}", e.message);
        let e = params(&[("to", "1"), ("to", "2")], &["from", "to"]).unwrap_err();
        assert!(e.message.contains("more than once"), "{}", e.message);
        let p = params(&[("limit", "-1")], &["limit"]).unwrap();
        assert!(p.count("limit").is_err());
        assert!(id("eventid", "x").is_err());
        assert_eq!(id("eventid", "17").unwrap(), 17);
    }
}
