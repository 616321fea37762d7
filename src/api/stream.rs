//! History answers streamed as they are read: the store's reader thread
//! encodes `[[clock, value], ...]` in pieces of about [`PIECE_BYTES`] and
//! hands them through a small bounded channel to the response body, so an
//! answer of 200,000 points never sits in memory whole, and a client that
//! reads slowly holds back only its own reader.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;
use tokio::sync::{mpsc, oneshot};

use crate::store::HistorySink;

/// About this many bytes per piece of the body.
pub const PIECE_BYTES: usize = 32 * 1024;
/// Pieces encoded ahead of the client.
const AHEAD: usize = 4;

/// Encodes points as JSON pieces for a [`HistoryBody`]; runs on a reader thread.
pub struct JsonPoints {
    /// Told the number of points before any is read (or dropped unsent when
    /// the read fails or is refused).
    head: Option<oneshot::Sender<usize>>,
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
    first: bool,
}

/// A history answer under way: its size, then its body.
pub struct HistoryStream {
    pub head: oneshot::Receiver<usize>,
    pub body: HistoryBody,
}

impl JsonPoints {
    pub fn new() -> (JsonPoints, HistoryStream) {
        let (head_tx, head) = oneshot::channel();
        let (tx, rx) = mpsc::channel(AHEAD);
        let sink = JsonPoints {
            head: Some(head_tx),
            tx,
            buf: Vec::with_capacity(PIECE_BYTES + 64),
            first: true,
        };
        (
            sink,
            HistoryStream {
                head,
                body: HistoryBody { rx },
            },
        )
    }

    /// Hands the buffered piece to the body; false when the client is gone.
    fn send(&mut self) -> bool {
        let piece = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(PIECE_BYTES + 64),
        ));
        self.tx.blocking_send(piece).is_ok()
    }
}

impl HistorySink for JsonPoints {
    fn start(&mut self, total: usize) -> bool {
        self.buf.push(b'[');
        self.head.take().is_some_and(|h| h.send(total).is_ok())
    }

    fn points(&mut self, points: &[(i64, f64)]) -> bool {
        for p in points {
            if !self.first {
                self.buf.push(b',');
            }
            self.first = false;
            // The same encoding as any other JSON answer (non-finite -> null).
            if serde_json::to_writer(&mut self.buf, p).is_err() {
                return false;
            }
            if self.buf.len() >= PIECE_BYTES && !self.send() {
                return false;
            }
        }
        true
    }

    fn end(&mut self) {
        self.buf.push(b']');
        let _ = self.send();
    }
}

/// The response body of a streamed history answer.
pub struct HistoryBody {
    rx: mpsc::Receiver<Bytes>,
}

impl hyper::body::Body for HistoryBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|piece| piece.map(|b| Ok(Frame::data(b))))
    }
}

impl HistoryBody {
    /// The 200 answer.
    pub fn into_response(self) -> Response {
        (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            Body::new(self),
        )
            .into_response()
    }
}
