//! A small HTTP/1.1 client for `modbridge write` and `modbridge ack`: one
//! request per connection, JSON bodies, a deadline for the whole exchange.
//! The protocol is hyper's client; this module only adds the headers, the
//! deadline and the error texts the command line shows.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The largest answer read.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the gateway's API at {addr}: {source} (is `modbridge run` running with this config?)")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("no answer from the gateway's API at {addr} within {} s", timeout.as_secs())]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("talking to the gateway's API at {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("the gateway's API at {addr} sent a malformed answer: {what}")]
    Malformed { addr: SocketAddr, what: String },
}

/// An answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The server's `{"error"}` text, or the body as text.
    pub fn error_message(&self) -> String {
        match self.json() {
            Some(v) => match v.get("error").and_then(|e| e.as_str()) {
                Some(e) => e.to_string(),
                None => v.to_string(),
            },
            None => String::from_utf8_lossy(&self.body).trim().to_string(),
        }
    }
}

/// Where to connect for a `listen` address: a wildcard address means this
/// machine's loopback.
pub fn connect_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Percent-encodes a path segment.
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends one request and reads the whole answer.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    match tokio::time::timeout(timeout, exchange(addr, method, path, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout { addr, timeout }),
    }
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, ClientError> {
    let malformed = |what: String| ClientError::Malformed { addr, what };
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONNECTION, "close")
        .header(hyper::header::ACCEPT, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("modbridge/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| malformed(format!("request header {name:?}: {e}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| malformed(format!("request header {name}: {e}")))?;
        builder = builder.header(name, value);
    }
    if body.is_some() {
        builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = builder
        .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
        .map_err(|e| malformed(format!("the request: {e}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_error(addr, e))?;
    // Drives the connection; it ends with the answer (`Connection: close`),
    // or is dropped with this future at the deadline.
    let connection = tokio::spawn(connection);
    let answer = sender
        .send_request(request)
        .await
        .map_err(|e| hyper_error(addr, e))?;
    let status = answer.status().as_u16();
    let body = Limited::new(answer.into_body(), MAX_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| match e.downcast::<hyper::Error>() {
            Ok(e) => hyper_error(addr, *e),
            Err(e) => malformed(e.to_string()),
        })?
        .to_bytes()
        .to_vec();
    connection.abort();
    Ok(Response { status, body })
}

/// An HTTP failure as the error the command line shows: an answer hyper
/// cannot parse is malformed, anything else a transport problem.
fn hyper_error(addr: SocketAddr, e: hyper::Error) -> ClientError {
    if e.is_parse() || e.is_incomplete_message() {
        ClientError::Malformed {
            addr,
            what: e.to_string(),
        }
    } else {
        ClientError::Io {
            addr,
            source: io::Error::other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves each of `answers` verbatim to one connection, after reading its request.
    async fn serve(answers: Vec<&'static [u8]>) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                stream.write_all(answer).await.unwrap();
                let _ = stream.shutdown().await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn answers_with_length_or_chunks_are_read() {
        let addr = serve(vec![
            b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"HTTP/1.1 401 Unauthorized\r\n\r\n{\"error\":\"wrong token\"}",
        ])
        .await;
        let get = || request(addr, "GET", "/x", &[], None, Duration::from_secs(5));
        let r = get().await.unwrap();
        assert_eq!((r.status, r.body.as_slice()), (202, &b"{}"[..]));
        let r = get().await.unwrap();
        assert_eq!(r.body, b"abcde");
        assert!(matches!(get().await, Err(ClientError::Malformed { .. })));
        let e = get().await.unwrap();
        assert_eq!(e.error_message(), "wrong token");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(
            encode("modbus.pump.F1345.3:1-a_b~"),
            "modbus.pump.F1345.3:1-a_b~"
        );
        assert_eq!(encode("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(encode("ä"), "%C3%A4");
    }

    #[test]
    fn wildcard_listen_addresses_connect_to_loopback() {
        assert_eq!(
            connect_addr("0.0.0.0:8080".parse().unwrap()),
            "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_addr("[::]:80".parse().unwrap()),
            "[::1]:80".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            connect_addr("10.0.0.5:1".parse().unwrap()),
            "10.0.0.5:1".parse::<SocketAddr>().unwrap()
        );
    }
}
