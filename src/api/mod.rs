//! The local HTTP API, `/health`, `/metrics` and the technicians' status page.
//!
//! - [`Server`]: binds `[api] listen` (reads the token file first), then
//!   [`Server::serve`] answers until its cancellation token fires. It runs on
//!   the daemon's runtime; everything that touches SQLite (history, trends,
//!   events, config requests) is an `async fn` of the store or the ledger
//!   whose SQL runs on their own threads, so a slow query never delays
//!   polling; history answers are streamed (`stream`) as they are read.
//! - `routes`: hosts, items, history, trends, config requests, events,
//!   acknowledgements, triggers; `upstream`: Things, Time-series and
//!   Datasets; `health`: `/health` and `/metrics`;
//!   `auth`: the bearer token; `guard`: DNS rebinding and cross-site
//!   protections; `error`: every error answer is
//!   `{"error": "..."}`; `page`: the status page (one self-contained HTML file).
//! - [`client`]: the small HTTP/1.1 client `modbridge write` and `ack` use.
//!
//! Invariants:
//! - every answer of status 400 or more is JSON `{"error": "..."}`, including
//!   axum's own rejections (unknown path, wrong method, oversized body);
//! - nothing a client sends produces a 500: bad input is 400/403/404/405/409/413/415/421/422,
//!   a failing database is 503;
//! - PUT/POST need the bearer token when `token_file` is set; reads stay open;
//!   the token is never logged and is compared in constant time;
//! - `guard` answers only to the box's own names (`Host`: 421 otherwise),
//!   takes PUT/POST only from its own origin (403) and, when listening beyond
//!   loopback, only with a `token_file` (403); bodies must be JSON (415).

mod auth;
pub mod client;
mod error;
mod guard;
mod health;
mod limit;
mod page;
mod params;
mod routes;
mod stream;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::model::ApiSpec;

pub use auth::TokenError;
pub use error::ApiErrorBody;

/// The largest request body accepted (config requests and acknowledgements are tiny).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// The header `modbridge write` names its user in (trusted from loopback peers only).
pub const USER_HEADER: &str = "x-modbridge-user";

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on {addr} for the HTTP API: {source}{hint}", hint = bind_hint(source))]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Token(#[from] TokenError),
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another program, or another modbridge, uses this port; change [api] listen)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need privileges; use a higher port in [api] listen)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (this machine has no such address; check [api] listen)"
        }
        _ => "",
    }
}

/// A bound, not yet serving, API.
pub struct Server {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    token: auth::Tokens,
    max_connections: usize,
    idle_timeout: Duration,
}

impl Server {
    /// Reads the token file (if any) and binds `api.listen`.
    pub async fn bind(api: &ApiSpec) -> Result<Server, ApiError> {
        let token = auth::Tokens::load(api.token_file.as_deref())?;
        Server::listen(api.listen, token).await
    }

    /// Like [`Server::bind`], but if the port is taken, binds a free port on
    /// the same address instead (for `modbridge demo`).
    pub async fn bind_or_free_port(api: &ApiSpec) -> Result<Server, ApiError> {
        let token = auth::Tokens::load(api.token_file.as_deref())?;
        match tokio::net::TcpListener::bind(api.listen).await {
            Ok(listener) => Server::from_listener(listener, token, api.listen),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                Server::listen(SocketAddr::new(api.listen.ip(), 0), token).await
            }
            Err(source) => Err(ApiError::Bind {
                addr: api.listen,
                source,
            }),
        }
    }

    async fn listen(addr: SocketAddr, token: auth::Tokens) -> Result<Server, ApiError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ApiError::Bind { addr, source })?;
        Server::from_listener(listener, token, addr)
    }

    fn from_listener(
        listener: tokio::net::TcpListener,
        token: auth::Tokens,
        wanted: SocketAddr,
    ) -> Result<Server, ApiError> {
        let addr = listener.local_addr().map_err(|source| ApiError::Bind {
            addr: wanted,
            source,
        })?;
        Ok(Server {
            listener,
            addr,
            token,
            max_connections: MAX_CONNECTIONS,
            idle_timeout: IDLE_TIMEOUT,
        })
    }

    /// Other limits than [`MAX_CONNECTIONS`] and [`IDLE_TIMEOUT`] (tests).
    pub fn with_limits(self, max_connections: usize, idle_timeout: Duration) -> Server {
        Server {
            max_connections,
            idle_timeout,
            ..self
        }
    }

    /// The address the API listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` is cancelled, then finishes the requests under way.
    pub async fn serve(
        self,
        gateway: Gateway,
        remote: crate::remote::Remote,
        stop: CancellationToken,
    ) {
        let addr = self.addr;
        self.token.bind_config(&gateway.config());
        let state = State::new(gateway, remote, self.token, guard::Site::here(&addr));
        let app = router(state).into_make_service_with_connect_info::<limit::Peer>();
        let listener = limit::Limited::new(self.listener, self.max_connections, self.idle_timeout);
        tracing::info!(listen = %addr, "HTTP API listening");
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled_owned().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP API stopped with an error");
        }
        tracing::debug!("HTTP API stopped");
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct State {
    pub gateway: Gateway,
    pub remote: crate::remote::Remote,
    pub tokens: Arc<auth::Tokens>,
    pub commits: Arc<health::CommitWatch>,
    pub site: Arc<guard::Site>,
}

impl State {
    fn new(
        gateway: Gateway,
        remote: crate::remote::Remote,
        tokens: auth::Tokens,
        site: guard::Site,
    ) -> State {
        State {
            gateway,
            remote,
            tokens: Arc::new(tokens),
            commits: Arc::new(health::CommitWatch::default()),
            site: Arc::new(site),
        }
    }
}

/// Every route of the API.
fn router(state: State) -> Router {
    Router::new()
        .route("/", get(page::status_page))
        .route("/hosts", get(routes::hosts))
        .route("/hosts/{host}", get(routes::host))
        .route("/hosts/{host}/items/{key}", get(routes::item))
        .route("/hosts/{host}/items/{key}/history", get(routes::history))
        .route("/hosts/{host}/items/{key}/trend", get(routes::trend))
        .route(
            "/hosts/{host}/items/{key}/trend/{field}",
            get(routes::trend_field),
        )
        .route(
            "/hosts/{host}/items/{key}/config",
            put(routes::put_config).get(routes::get_config),
        )
        .route("/events", get(routes::events))
        .route("/events/{eventid}", get(routes::event))
        .route(
            "/events/{eventid}/acknowledgements",
            post(routes::acknowledge),
        )
        .route("/triggers", get(routes::triggers))
        .route("/triggers/{triggerid}", get(routes::trigger))
        .route("/things", get(upstream::things))
        .route("/things/{uuid}", get(upstream::thing))
        .route("/timeseries", get(upstream::timeseries))
        .route("/timeseries/{id}", get(upstream::one_timeseries))
        .route("/timeseries/{id}/data", get(upstream::timeseries_data))
        .route("/datasets", get(upstream::datasets))
        .route(
            "/datasets/{*rest}",
            get(upstream::dataset)
                .put(upstream::put_dataset)
                .layer(DefaultBodyLimit::max(crate::remote::MAX_REQUEST_BYTES)),
        )
        .route("/deploy", get(upstream::deploy))
        .route("/health", get(health::health))
        .route("/metrics", get(health::metrics))
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::protect,
        ))
        .layer(axum::middleware::from_fn(error::json_errors))
        .with_state(state)
}
