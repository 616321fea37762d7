//! Hosts, items, history, trends, config requests, events, acknowledgements
//! and triggers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::client::encode;
use super::error::HttpError;
use super::limit::Peer;
use super::params::{self, Params, RawQuery};
use super::stream::JsonPoints;
use super::State as AppState;
use crate::alarm::EventFilter;
use crate::clock::unix_now;
use crate::config_requests::{self, Channel, ConfigObject};
use crate::gateway::Gateway;
use crate::model::HostSpec;
use crate::poll::HostLiveHandle;
use crate::snapshot::Snapshot;
use crate::store::HistoryLimit;
use crate::wire::{host_object, item_object, ItemObject};

/// The most history points (or events) one answer carries; more is a 422
/// asking for a narrower range or a `limit`.
pub const MAX_POINTS: usize = 200_000;

/// Runs `f` on the blocking pool (large encodings must not stall the runtime).
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HttpError> + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HttpError::internal_join(&e))?
}

/// A JSON answer from already serialized bytes.
pub fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Serializes a value (on the calling thread).
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, HttpError> {
    serde_json::to_vec(value).map_err(|e| {
        tracing::error!(error = %e, "cannot serialize an API answer");
        HttpError::unavailable("the answer could not be encoded")
    })
}

/// Runs `f` on the blocking pool; 200 with the JSON it returns.
async fn blocking_ok(
    f: impl FnOnce() -> Result<Vec<u8>, HttpError> + Send + 'static,
) -> Result<Response, HttpError> {
    Ok(json_bytes(StatusCode::OK, blocking(f).await?))
}

/// Refuses (422) an answer of more than [`MAX_POINTS`] points or events.
fn at_most_max_points(n: usize, what: &str) -> Result<(), HttpError> {
    if n > MAX_POINTS {
        return Err(HttpError::unprocessable(format!(
            "{n} {what} in that range, more than the {MAX_POINTS} one answer carries; narrow from/to or give a limit"
        )));
    }
    Ok(())
}

/// A JSON answer with a `Location` header (left out if `location` is not a
/// valid header value).
fn json_at(status: StatusCode, body: Vec<u8>, location: &str) -> Response {
    let mut res = json_bytes(status, body);
    if let Ok(loc) = HeaderValue::from_str(location) {
        res.headers_mut().insert(header::LOCATION, loc);
    }
    res
}

pub(super) fn ok_json<T: Serialize + ?Sized>(value: &T) -> Result<Response, HttpError> {
    Ok(json_bytes(StatusCode::OK, to_json(value)?))
}

type HostPath = Result<Path<String>, PathRejection>;
type ItemPath = Result<Path<(String, String)>, PathRejection>;

fn find_host(running: &Snapshot, host: &str) -> Result<(Arc<HostSpec>, HostLiveHandle), HttpError> {
    match (running.config.host(host), running.hosts.get(host)) {
        (Some(spec), Some(live)) => Ok((spec.clone(), live.clone())),
        _ => Err(HttpError::not_found(format!("unknown host {host:?}"))),
    }
}

fn find_item(
    running: &Snapshot,
    host: &str,
    key: &str,
) -> Result<(Arc<HostSpec>, HostLiveHandle, usize), HttpError> {
    let (spec, live) = find_host(running, host)?;
    match spec.items.iter().position(|i| i.key == key) {
        Some(index) => Ok((spec, live, index)),
        None => Err(HttpError::not_found(format!(
            "host {host:?} has no item {key:?}"
        ))),
    }
}

/// Item objects of a host (all, or the one at `only`), with the latest config
/// request of configurable items (all in memory).
pub fn item_objects(
    gateway: &Gateway,
    spec: &HostSpec,
    live: &HostLiveHandle,
    only: Option<usize>,
) -> Vec<ItemObject> {
    let wanted = |i: usize| match only {
        Some(o) => o == i,
        None => true,
    };
    let mut configs: Vec<Option<ConfigObject>> = spec
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            (item.configurable && wanted(i))
                .then(|| gateway.writes.config_of(&spec.host, &item.key))
                .flatten()
        })
        .collect();
    let live = live.lock();
    (0..spec.items.len())
        .filter(|i| wanted(*i))
        .filter_map(|i| {
            item_object(
                spec,
                i,
                live.view(i),
                configs.get_mut(i).and_then(Option::take),
            )
        })
        .collect()
}

/// `GET /hosts`
pub async fn hosts(State(st): State<AppState>, q: RawQuery) -> Result<Response, HttpError> {
    Params::parse(q, &[])?;
    let running = st.gateway.running();
    let hosts: Vec<_> = running
        .config
        .hosts
        .iter()
        .filter_map(|spec| {
            let live = running.hosts.get(&spec.host)?;
            let live = live.lock();
            Some(host_object(spec, live.lastclock(), None))
        })
        .collect();
    ok_json(&hosts)
}

/// `GET /hosts/{host}`
pub async fn host(
    State(st): State<AppState>,
    p: HostPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let host = params::path(p)?;
    Params::parse(q, &[])?;
    let (spec, live) = find_host(&st.gateway.running(), &host)?;
    let gateway = st.gateway.clone();
    blocking_ok(move || {
        let items = item_objects(&gateway, &spec, &live, None);
        let object = host_object(&spec, live.lock().lastclock(), Some(items));
        to_json(&object)
    })
    .await
}

/// `GET /hosts/{host}/items/{key}`
pub async fn item(
    State(st): State<AppState>,
    p: ItemPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let (host, key) = params::path(p)?;
    Params::parse(q, &[])?;
    let (spec, live, index) = find_item(&st.gateway.running(), &host, &key)?;
    let gateway = st.gateway.clone();
    blocking_ok(move || {
        let items = item_objects(&gateway, &spec, &live, Some(index));
        match items.first() {
            Some(item) => to_json(item),
            None => Err(HttpError::not_found(format!(
                "host {host:?} has no item {key:?}"
            ))),
        }
    })
    .await
}

/// `GET /hosts/{host}/items/{key}/history?from=&to=&limit=`
pub async fn history(
    State(st): State<AppState>,
    p: ItemPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let (host, key) = params::path(p)?;
    history_of(&st, host, key, q).await
}

/// An item's history as the answer of `GET .../history` (and of a
/// Time-series' `/data`).
pub(super) async fn history_of(
    st: &AppState,
    host: String,
    key: String,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let params = Params::parse(q, &["from", "to", "limit"])?;
    let (from, to) = params.range(unix_now())?;
    let limit = params.count("limit")?;
    find_item(&st.gateway.running(), &host, &key)?;
    let store = st.gateway.store.clone();
    let Some(id) = store.item_id(&host, &key) else {
        return ok_json(&[] as &[(i64, f64)]);
    };
    // Read, capped and encoded on a reader thread; streamed as it is read.
    let (sink, stream) = JsonPoints::new();
    let limit = HistoryLimit {
        newest: limit,
        cap: Some(MAX_POINTS),
    };
    let read = tokio::spawn(async move {
        store
            .history_with(id, from, to, limit, sink)
            .await
            .map(|(n, _)| n)
    });
    if stream.head.await.is_ok() {
        return Ok(stream.body.into_response());
    }
    match read.await {
        Ok(Ok(Ok(_))) => ok_json(&[] as &[(i64, f64)]),
        Ok(Ok(Err(over))) => Err(HttpError::unprocessable(format!(
            "more than {MAX_POINTS} points in that range ({} or more), more than one answer carries; narrow from/to or give a limit",
            over.at_least
        ))),
        Ok(Err(e)) => Err(HttpError::storage(&e)),
        Err(e) => Err(HttpError::internal_join(&e)),
    }
}

/// The trend buckets of an item, `[(hour, bucket)]`, current hour included.
async fn trend_buckets(
    st: &AppState,
    p: ItemPath,
    q: RawQuery,
) -> Result<Vec<(i64, crate::store::TrendBucket)>, HttpError> {
    let (host, key) = params::path(p)?;
    let params = Params::parse(q, &["from", "to"])?;
    let (from, to) = params.range(unix_now())?;
    find_item(&st.gateway.running(), &host, &key)?;
    let store = st.gateway.store.clone();
    let Some(id) = store.item_id(&host, &key) else {
        return Ok(Vec::new());
    };
    store
        .trend(id, from, to)
        .await
        .map_err(|e| HttpError::storage(&e))
}

/// `GET /hosts/{host}/items/{key}/trend?from=&to=`
pub async fn trend(
    State(st): State<AppState>,
    p: ItemPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let buckets = trend_buckets(&st, p, q).await?;
    ok_json(&buckets)
}

/// `GET /hosts/{host}/items/{key}/trend/{num,min,avg,max}?from=&to=`
pub async fn trend_field(
    State(st): State<AppState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let (host, key, field) = params::path(p)?;
    if !matches!(field.as_str(), "num" | "min" | "avg" | "max") {
        return Err(HttpError::not_found(format!(
            "no trend field {field:?}; use num, min, avg or max"
        )));
    }
    let buckets = trend_buckets(&st, Ok(Path((host, key))), q).await?;
    let series: Vec<(i64, serde_json::Value)> = buckets
        .iter()
        .map(|(hour, b)| {
            let v = match field.as_str() {
                "num" => serde_json::Value::from(b.num),
                "min" => serde_json::Value::from(b.min),
                "avg" => serde_json::Value::from(b.avg),
                _ => serde_json::Value::from(b.max),
            };
            (*hour, v)
        })
        .collect();
    ok_json(&series)
}

/// Bodies must be JSON. Refusing the content types a browser may send
/// cross-site without asking first (form posts, text/plain) keeps other web
/// pages from writing through a technician's browser.
pub(super) fn check_json_body(headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        // A body without a type is what a cross-site "simple" request can send.
        return Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON sent with \"Content-Type: application/json\" (curl: -H 'Content-Type: application/json')",
        ));
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(HttpError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "the body must be JSON sent as \"Content-Type: application/json\", not {essence:?} (curl: -H 'Content-Type: application/json')"
            ),
        ))
    }
}

pub(super) fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, HttpError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} bytes",
                    super::MAX_BODY_BYTES
                ),
            )
        } else {
            HttpError::bad_request(format!("cannot read the request body: {}", e.body_text()))
        }
    })
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The channel a config request came through: `cli <user>` when a loopback
/// peer names its user in [`super::USER_HEADER`] (as `modbridge write`
/// does), else `api <peer address>`. The header is ignored from other peers.
fn channel(peer: SocketAddr, headers: &HeaderMap) -> Result<Channel, HttpError> {
    let Some(value) = headers.get(super::USER_HEADER) else {
        return Ok(Channel::Api(peer));
    };
    if !is_loopback(peer.ip()) {
        tracing::debug!(%peer, "user header from a remote peer ignored");
        return Ok(Channel::Api(peer));
    }
    let user = value
        .to_str()
        .map(str::trim)
        .ok()
        .filter(|u| !u.is_empty() && u.chars().count() <= 64 && !u.chars().any(char::is_control))
        .ok_or_else(|| {
            HttpError::bad_request(format!(
                "{} must be a user name of 1 to 64 printable characters",
                super::USER_HEADER
            ))
        })?;
    Ok(Channel::Cli(user.to_string()))
}

/// `PUT /hosts/{host}/items/{key}/config`: 202 with the recorded config
/// object. A target outside the item's bounds is recorded too, as FAILED
/// (202, `status` FAILED, `reason` says why), like on every other channel;
/// refusals that record nothing are 400/404/409/422.
pub async fn put_config(
    State(st): State<AppState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    p: ItemPath,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let running = st.gateway.running();
    st.tokens.authorize(&running.config, &headers)?;
    let (host, key) = params::path(p)?;
    let (spec, _, index) = find_item(&running, &host, &key)?;
    if !spec.items.get(index).is_some_and(|i| i.configurable) {
        return Err(HttpError::conflict(format!(
            "{host}/{key} is a sensor, not configurable"
        )));
    }
    check_json_body(&headers)?;
    let body = body(b)?;
    let channel = channel(peer, &headers)?;
    let request =
        config_requests::parse_body(&host, &key, &body).map_err(|e| HttpError::submit(&e))?;
    let object = st
        .gateway
        .writes
        .submit(request, channel)
        .await
        .map_err(|e| HttpError::submit(&e))?;
    tracing::info!(%host, %key, %peer, status = object.status.as_str(), "config request through the API");
    Ok(json_at(
        StatusCode::ACCEPTED,
        to_json(&object)?,
        &format!("/hosts/{}/items/{}", encode(&host), encode(&key)),
    ))
}

/// `GET /hosts/{host}/items/{key}/config`: the item's config object.
pub async fn get_config(
    State(st): State<AppState>,
    p: ItemPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let (host, key) = params::path(p)?;
    Params::parse(q, &[])?;
    let (spec, _, index) = find_item(&st.gateway.running(), &host, &key)?;
    if !spec.items.get(index).is_some_and(|i| i.configurable) {
        return Err(HttpError::not_found(format!(
            "{host}/{key} is a sensor: it has no config"
        )));
    }
    let writes = st.gateway.writes.clone();
    blocking_ok(move || {
        to_json(
            &writes
                .config_of(&host, &key)
                .unwrap_or_else(ConfigObject::none),
        )
    })
    .await
}

/// `GET /events?from=&to=&host=&key=&limit=`: ascending by `eventid`;
/// `limit` keeps the newest.
pub async fn events(State(st): State<AppState>, q: RawQuery) -> Result<Response, HttpError> {
    let params = Params::parse(q, &["from", "to", "host", "key", "limit"])?;
    let (from, to) = params.range(unix_now())?;
    let limit = params.count("limit")?;
    let filter = EventFilter {
        from: Some(from),
        to: Some(to),
        host: params.text("host").map(str::to_string),
        key: params.text("key").map(str::to_string),
    };
    let mut events = st
        .gateway
        .alarms
        .events(&filter)
        .await
        .map_err(|e| HttpError::storage(&e))?;
    if let Some(limit) = limit {
        let drop = events.len().saturating_sub(limit);
        events.drain(..drop);
    }
    at_most_max_points(events.len(), "events")?;
    // Encoded on the blocking pool: an answer can be large.
    blocking_ok(move || to_json(&events)).await
}

/// `GET /events/{eventid}`
pub async fn event(
    State(st): State<AppState>,
    p: HostPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let eventid = params::id("eventid", &params::path(p)?)?;
    Params::parse(q, &[])?;
    match st.gateway.alarms.event(eventid).await {
        Ok(Some(event)) => ok_json(&event),
        Ok(None) => Err(HttpError::not_found(format!("no event {eventid}"))),
        Err(e) => Err(HttpError::storage(&e)),
    }
}

/// `POST /events/{eventid}/acknowledgements` with `{"message"}`: 201 with the
/// event and all its acknowledgements.
pub async fn acknowledge(
    State(st): State<AppState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    p: HostPath,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let config = st.gateway.config();
    st.tokens.authorize(&config, &headers)?;
    let eventid = params::id("eventid", &params::path(p)?)?;
    check_json_body(&headers)?;
    let body = body(b)?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| HttpError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let message = match value.get("message") {
        Some(serde_json::Value::String(m)) => m.clone(),
        Some(_) => {
            return Err(HttpError::bad_request(
                "\"message\" must be a string: {\"message\": \"...\"}",
            ))
        }
        None => {
            return Err(HttpError::bad_request(
                "the body must be an object {\"message\": \"...\"}",
            ))
        }
    };
    let event = st
        .gateway
        .alarms
        .acknowledge(eventid, &message)
        .await
        .map_err(|e| HttpError::ack(&e))?;
    tracing::info!(eventid, %peer, "event acknowledged through the API");
    Ok(json_at(
        StatusCode::CREATED,
        to_json(&event)?,
        &format!("/events/{eventid}"),
    ))
}

/// `GET /triggers`
pub async fn triggers(State(st): State<AppState>, q: RawQuery) -> Result<Response, HttpError> {
    Params::parse(q, &[])?;
    let alarms = st.gateway.alarms.clone();
    blocking_ok(move || to_json(&alarms.triggers())).await
}

/// `GET /triggers/{triggerid}`
pub async fn trigger(
    State(st): State<AppState>,
    p: HostPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let triggerid = params::id("triggerid", &params::path(p)?)?;
    Params::parse(q, &[])?;
    let alarms = st.gateway.alarms.clone();
    blocking_ok(move || match alarms.trigger(triggerid) {
        Some(t) => to_json(&t),
        None => Err(HttpError::not_found(format!("no trigger {triggerid}"))),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_peers_may_name_a_cli_user() {
        let mut h = HeaderMap::new();
        h.insert(super::super::USER_HEADER, HeaderValue::from_static("anna"));
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        let remote: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        assert_eq!(channel(local, &h).unwrap(), Channel::Cli("anna".into()));
        assert_eq!(channel(mapped, &h).unwrap(), Channel::Cli("anna".into()));
        assert_eq!(channel(remote, &h).unwrap(), Channel::Api(remote));
        assert_eq!(
            channel(local, &HeaderMap::new()).unwrap(),
            Channel::Api(local)
        );
        h.insert(super::super::USER_HEADER, HeaderValue::from_static(""));
        assert_eq!(
            channel(local, &h).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn bodies_must_be_json() {
        let mut h = HeaderMap::new();
        assert_eq!(
            check_json_body(&h).unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "no content type: a cross-site simple request"
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(check_json_body(&h).is_ok());
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(bad));
            assert_eq!(
                check_json_body(&h).unwrap_err().status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            );
        }
    }
}
