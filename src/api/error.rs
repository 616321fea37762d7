//! Error answers: always `{"error": "..."}` with a fitting status.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::alarm::AckError;
use crate::config_requests::SubmitError;
use crate::store::StoreError;

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: String,
}

/// An error answer.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::UNAUTHORIZED, message)
    }

    pub fn conflict(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::CONFLICT, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    pub fn unavailable(message: impl Into<String>) -> HttpError {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// The database failed: 503, and logged (the client did nothing wrong).
    pub fn storage(e: &StoreError) -> HttpError {
        tracing::error!(error = %e, "API request failed on the database");
        HttpError::unavailable(format!("the database is not available: {e}"))
    }

    /// The work on the blocking pool panicked or was cancelled (shutdown).
    pub fn internal_join(e: &tokio::task::JoinError) -> HttpError {
        tracing::error!(error = %e, "API request task failed");
        HttpError::unavailable("the gateway could not complete the request")
    }

    /// A refused config request.
    pub fn submit(e: &SubmitError) -> HttpError {
        if let SubmitError::Storage(s) = e {
            return HttpError::storage(s);
        }
        HttpError::new(status(e.http_status()), e.to_string())
    }

    /// A refused acknowledgement.
    pub fn ack(e: &AckError) -> HttpError {
        if let AckError::Storage(s) = e {
            return HttpError::storage(s);
        }
        HttpError::new(status(e.http_status()), e.to_string())
    }
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
}

fn json_error(
    status: StatusCode,
    message: &str,
) -> (StatusCode, [(header::HeaderName, HeaderValue); 1], String) {
    let body = serde_json::to_string(&ApiErrorBody {
        error: message.to_string(),
    })
    .unwrap_or_else(|_| "{\"error\":\"error\"}".to_string());
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let mut res = json_error(self.status, &self.message).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"modbridge\""),
            );
        }
        res
    }
}

/// The fallback: no route for this path.
pub async fn not_found(uri: Uri) -> HttpError {
    HttpError::not_found(format!("no such resource: {}", uri.path()))
}

fn is_json(res: &Response) -> bool {
    res.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Turns every error answer that is not JSON yet (axum's rejections: wrong
/// method, oversized body, undecodable path) into `{"error": "..."}`,
/// keeping its status and headers (e.g. `Allow`).
pub async fn json_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let res = next.run(req).await;
    if res.status().as_u16() < 400 || is_json(&res) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = match parts.status {
        StatusCode::METHOD_NOT_ALLOWED => {
            let allow = parts
                .headers
                .get(header::ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if allow.is_empty() {
                format!("method {method} is not allowed on {path}")
            } else {
                format!("method {method} is not allowed on {path}; allowed: {allow}")
            }
        }
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than {} bytes",
            super::MAX_BODY_BYTES
        ),
        _ if !text.is_empty() => text,
        s => s.canonical_reason().unwrap_or("error").to_string(),
    };
    let (status, headers, body) = json_error(parts.status, &message);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in headers {
        parts.headers.insert(name, value);
    }
    if method == Method::HEAD {
        return Response::from_parts(parts, Body::empty());
    }
    parts.status = status;
    Response::from_parts(parts, Body::from(body))
}
