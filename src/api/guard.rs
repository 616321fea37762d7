//! Protections against other web pages in a technician's browser.
//!
//! - DNS rebinding: a page from `attacker.example` whose name is made to
//!   resolve to the box reaches the API with `Host: attacker.example`. Only
//!   requests whose `Host` is an IP literal, `localhost`, the box's host name
//!   (also as `<name>.local`) or a name in `[api] allowed_hosts` are answered;
//!   the others get 421.
//! - Cross-site writes: a PUT or POST whose `Origin` is not the API's own
//!   origin is 403 (the routes also refuse bodies that are not
//!   `Content-Type: application/json`, 415, so a form post cannot get in
//!   without a preflight).
//! - An API listening beyond loopback without `token_file` takes no PUT or
//!   POST at all (403): anyone on the network could change setpoints.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::HttpError;
use super::State as AppState;

/// The message of the 403 for changes on a network-facing API without token.
pub const NEEDS_TOKEN: &str = "set [api] token_file to allow changes from the network";

/// What the guard needs to know about where the API runs.
#[derive(Debug, Clone)]
pub struct Site {
    /// The box's host name, lower case (None if it cannot be read).
    pub host_name: Option<String>,
    /// `listen` is not a loopback address.
    pub network: bool,
}

impl Site {
    /// The site of an API bound to `listen`, on this machine.
    pub fn here(listen: &std::net::SocketAddr) -> Site {
        Site {
            host_name: box_host_name(),
            network: !listen.ip().is_loopback(),
        }
    }
}

/// The machine's host name, as the kernel has it now.
fn box_host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .find(|s| !s.is_empty())
}

/// The middleware: refuses what the checks refuse, passes the rest on.
pub async fn protect(State(st): State<AppState>, request: Request, next: Next) -> Response {
    let config = st.gateway.config();
    let write = matches!(*request.method(), Method::PUT | Method::POST);
    let checked = check_host(&st.site, &config.api.allowed_hosts, &request).and_then(|()| {
        if !write {
            return Ok(());
        }
        if st.site.network && !st.tokens.required(&config) {
            return Err(HttpError::new(StatusCode::FORBIDDEN, NEEDS_TOKEN));
        }
        check_origin(request.headers())
    });
    match checked {
        Ok(()) => next.run(request).await,
        Err(e) => {
            tracing::debug!(method = %request.method(), uri = %request.uri(), error = %e.message, "API request refused");
            e.into_response()
        }
    }
}

/// The name a `Host` value (or URI authority) names: without port, brackets
/// or a trailing dot, lower case.
fn name_of(authority: &str) -> String {
    let name = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(n, _)| n),
    };
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// Whether the API answers to `name`.
fn allowed_name(name: &str, site: &Site, allowed: &[String]) -> bool {
    if name.parse::<IpAddr>().is_ok() || name == "localhost" {
        return true;
    }
    if let Some(own) = site.host_name.as_deref() {
        if name == own || name.strip_suffix(".local") == Some(own) {
            return true;
        }
    }
    allowed.iter().any(|a| a == name)
}

/// 421 unless the request's `Host` (and an absolute URI's authority) is a
/// name of this gateway. A request without `Host` (HTTP/1.0) is let through:
/// browsers always send one.
fn check_host(site: &Site, allowed: &[String], request: &Request) -> Result<(), HttpError> {
    let given = request
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{FFFD}").to_string())
        .chain(request.uri().authority().map(|a| a.to_string()));
    for authority in given {
        let name = name_of(&authority);
        if !allowed_name(&name, site, allowed) {
            return Err(HttpError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "this gateway does not answer to the name {name:?}; use its IP address or host name, or add the name to [api] allowed_hosts"
                ),
            ));
        }
    }
    Ok(())
}

/// `(scheme's default port removed) host[:port]`, lower case.
fn normal_authority(authority: &str, default_port: &str) -> String {
    let a = authority.to_ascii_lowercase();
    match a.strip_suffix(default_port) {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => a,
    }
}

/// 403 when `Origin` names another origin than the `Host` the request was sent to.
fn check_origin(headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let same = [("http://", ":80"), ("https://", ":443")]
        .iter()
        .any(|(scheme, port)| {
            origin.strip_prefix(scheme).is_some_and(|rest| {
                !host.is_empty() && normal_authority(rest, port) == normal_authority(host, port)
            })
        });
    if same {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::FORBIDDEN,
            format!("changes are refused from another web page (Origin {origin:?})"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> Site {
        Site {
            host_name: Some("box-7".into()),
            network: false,
        }
    }

    #[test]
    fn names_without_port_brackets_and_trailing_dot() {
        assert_eq!(name_of("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(name_of("[::1]:8080"), "::1");
        assert_eq!(name_of("[fe80::1]"), "fe80::1");
        assert_eq!(name_of("Box-7.:8080"), "box-7");
        assert_eq!(name_of("localhost"), "localhost");
    }

    #[test]
    fn only_own_names_are_answered() {
        let allowed = vec!["gw.plant.example".to_string()];
        for ok in [
            "127.0.0.1",
            "::1",
            "10.0.0.9",
            "localhost",
            "box-7",
            "box-7.local",
            "gw.plant.example",
        ] {
            assert!(allowed_name(ok, &site(), &allowed), "{ok}");
        }
        for bad in [
            "attacker.example",
            "box-7.attacker.example",
            "localhost.attacker.example",
            "plant.example",
            "",
        ] {
            assert!(!allowed_name(bad, &site(), &allowed), "{bad}");
        }
        let nameless = Site {
            host_name: None,
            network: false,
        };
        assert!(!allowed_name("box-7", &nameless, &[]));
    }

    #[test]
    fn origins_must_match_the_host() {
        let headers = |origin: &str, host: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::ORIGIN, origin.parse().unwrap());
            h.insert(header::HOST, host.parse().unwrap());
            h
        };
        assert!(check_origin(&headers("http://10.0.0.9:8080", "10.0.0.9:8080")).is_ok());
        assert!(check_origin(&headers("http://Box-7", "box-7:80")).is_ok());
        assert!(check_origin(&headers("https://gw.example", "gw.example")).is_ok());
        for (origin, host) in [
            ("http://attacker.example", "10.0.0.9:8080"),
            ("http://10.0.0.9:8081", "10.0.0.9:8080"),
            ("null", "10.0.0.9:8080"),
            ("http://10.0.0.9:8080", ""),
        ] {
            let e = check_origin(&headers(origin, host)).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{origin} {host}");
        }
        assert!(
            check_origin(&HeaderMap::new()).is_ok(),
            "no Origin: not a browser's cross-site request"
        );
    }
}
