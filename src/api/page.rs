//! `GET /`: the technicians' status page, one self-contained HTML file
//! (inline CSS and JavaScript, no external assets: the box is often offline).
//! It fetches the JSON endpoints every few seconds.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

/// The page.
pub const STATUS_PAGE: &str = include_str!("status.html");

/// `GET /`
pub async fn status_page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                     frame-ancestors 'none'",
                ),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "//cdn", "<link", "src="] {
            assert!(
                !STATUS_PAGE.contains(needle),
                "the status page must be self-contained: found {needle:?}"
            );
        }
        assert!(STATUS_PAGE.contains("<meta name=\"viewport\""));
    }
}
