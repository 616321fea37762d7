//! The upstream model: `/things`, `/timeseries` (with `/data`), `/datasets`
//! (with `/content`). Answers come from the running config and live state
//! in memory, except a Time-series' data (history, on the blocking pool).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::HttpError;
use super::limit::Peer;
use super::params::{self, Params, RawQuery};
use super::routes::{blocking, check_json_body, history_of, json_bytes, ok_json as ok, to_json};
use super::State as AppState;
use crate::remote::Refusal;

type IdPath = Result<Path<String>, PathRejection>;

/// `GET /things`
pub async fn things(State(st): State<AppState>, q: RawQuery) -> Result<Response, HttpError> {
    Params::parse(q, &[])?;
    ok(&crate::things::things(&st.gateway.running()))
}

/// `GET /things/{uuid}`
pub async fn thing(
    State(st): State<AppState>,
    p: IdPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let uuid = params::path(p)?;
    Params::parse(q, &[])?;
    let wanted = uuid.to_ascii_lowercase();
    crate::things::things(&st.gateway.running())
        .into_iter()
        .find(|t| t.uuid == wanted)
        .map_or_else(
            || Err(HttpError::not_found(format!("no thing {uuid:?}"))),
            |t| ok(&t),
        )
}

/// `GET /timeseries`
pub async fn timeseries(State(st): State<AppState>, q: RawQuery) -> Result<Response, HttpError> {
    Params::parse(q, &[])?;
    ok(&crate::things::timeseries(&st.gateway.config()))
}

/// The host and key of a Time-series id, or 404.
fn find_series(st: &AppState, id: &str) -> Result<(String, String), HttpError> {
    let config = st.gateway.config();
    crate::things::find_timeseries(&config, id)
        .map(|(h, i)| (h.host.clone(), i.key.clone()))
        .ok_or_else(|| HttpError::not_found(format!("no time-series {id:?}")))
}

/// `GET /timeseries/{id}`
pub async fn one_timeseries(
    State(st): State<AppState>,
    p: IdPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let id = params::path(p)?;
    Params::parse(q, &[])?;
    let (host, key) = find_series(&st, &id)?;
    let config = st.gateway.config();
    let spec = config.host(&host);
    let item = spec.and_then(|h| h.item(&key).map(|i| (h, i)));
    match item {
        Some((h, i)) => ok(&crate::things::timeseries_of(&config, h, i)),
        None => Err(HttpError::not_found(format!("no time-series {id:?}"))),
    }
}

/// `GET /timeseries/{id}/data?from=&to=&limit=`: the item's history.
pub async fn timeseries_data(
    State(st): State<AppState>,
    p: IdPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let id = params::path(p)?;
    let (host, key) = find_series(&st, &id)?;
    history_of(&st, host, key, q).await
}

/// `GET /datasets`
pub async fn datasets(State(st): State<AppState>, q: RawQuery) -> Result<Response, HttpError> {
    Params::parse(q, &[])?;
    ok(&crate::datasets::datasets(&st.gateway.config()))
}

/// `GET /datasets/{uuid}` and `GET /datasets/{uuid}/content` (the bytes,
/// with the checksum as `ETag`; `If-None-Match` with it answers 304).
pub async fn dataset(
    State(st): State<AppState>,
    headers: HeaderMap,
    p: IdPath,
    q: RawQuery,
) -> Result<Response, HttpError> {
    let rest = params::path(p)?;
    Params::parse(q, &[])?;
    let (uuid, content) = match rest.strip_suffix("/content") {
        Some(uuid) => (uuid, true),
        None => (rest.as_str(), false),
    };
    let config = st.gateway.config();
    let Some(source) = crate::datasets::find(&config, uuid) else {
        return Err(HttpError::not_found(format!("no dataset {uuid:?}")));
    };
    let object = crate::datasets::dataset_of(&config, source);
    if !content {
        return ok(&object);
    }
    let etag = format!("\"{}\"", object.checksum);
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (header::ETAG, etag_value),
        ],
        source.text.to_string(),
    )
        .into_response())
}

/// `GET /deploy`: the latest deployment's status.
pub async fn deploy(State(st): State<AppState>, q: RawQuery) -> Result<Response, HttpError> {
    Params::parse(q, &[])?;
    match st.remote.latest() {
        Some(status) => ok(&status),
        None => Err(HttpError::not_found(
            "nothing has been deployed to this gateway",
        )),
    }
}

impl From<Refusal> for HttpError {
    fn from(r: Refusal) -> HttpError {
        let status = match &r {
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Refusal::Off => StatusCode::FORBIDDEN,
            Refusal::Busy(_) => StatusCode::CONFLICT,
            Refusal::Failed(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        HttpError::new(status, r.to_string())
    }
}

/// `PUT /datasets/{name}` with a deployment: 202 with its status (`PENDING`,
/// or `REFUSED` with every problem); refusals that change nothing are
/// 400/403/409/422.
pub async fn put_dataset(
    State(st): State<AppState>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    headers: HeaderMap,
    p: IdPath,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    st.tokens.authorize(&st.gateway.config(), &headers)?;
    let name = params::path(p)?;
    check_json_body(&headers)?;
    let body = b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a deployment may have at most {} bytes",
                    crate::remote::MAX_REQUEST_BYTES
                ),
            )
        } else {
            HttpError::bad_request(format!("cannot read the request body: {}", e.body_text()))
        }
    })?;
    let named = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string));
    if named.as_deref().is_some_and(|n| n != name) {
        return Err(HttpError::bad_request(format!(
            "the body names {:?} but the path {name:?}",
            named.unwrap_or_default()
        )));
    }
    let remote = st.remote.clone();
    let status = blocking(move || {
        remote
            .deploy(&body, &format!("api {peer}"))
            .map_err(HttpError::from)
    })
    .await?;
    tracing::info!(%name, %peer, status = %status.status, "deployment through the API");
    Ok(json_bytes(StatusCode::ACCEPTED, to_json(&status)?))
}
