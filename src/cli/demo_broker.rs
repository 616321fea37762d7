//! The demo's own MQTT broker (rumqttd, plain MQTT on loopback), so that
//! `modbridge demo` shows the uplink without a broker installed. Only the
//! demo uses it; a build without the `demo-broker` feature leaves it out.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the broker may take to listen once started.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Free ports tried when the preferred one is taken or the broker fails to
/// listen on a port that looked free (another program took it meanwhile).
const FREE_PORT_TRIES: usize = 3;

/// Why the demo has no broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot find a free loopback port for the MQTT broker: {0}")]
    NoPort(std::io::Error),
    #[error("cannot start the MQTT broker's thread: {0}")]
    Thread(std::io::Error),
    #[error("the MQTT broker did not listen on loopback (tried {0})")]
    NotListening(String),
}

/// Starts the broker on 127.0.0.1:`port`, or on a free port when that one
/// is taken, and returns where it listens once it accepts connections. It
/// runs on its own threads (rumqttd's: a router and one server with its own
/// runtime, none on the gateway's runtime) until the process ends, and keeps
/// nothing on disk.
pub async fn start(port: u16) -> Result<SocketAddr, BrokerError> {
    let mut tried = Vec::new();
    let mut candidates = vec![port];
    candidates.extend(std::iter::repeat(0).take(FREE_PORT_TRIES));
    for candidate in candidates {
        let Some(addr) = bindable(candidate)? else {
            tried.push(format!("{candidate} (taken)"));
            continue;
        };
        let thread = std::thread::Builder::new()
            .name("demo-broker".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config(addr));
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "the demo's MQTT broker stopped");
                }
            })
            .map_err(BrokerError::Thread)?;
        if listening(addr, &thread).await {
            return Ok(addr);
        }
        tried.push(addr.port().to_string());
    }
    Err(BrokerError::NotListening(tried.join(", ")))
}

/// A loopback address on `port` (0: a free one) that nothing listens on now.
fn bindable(port: u16) -> Result<Option<SocketAddr>, BrokerError> {
    match std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)) {
        Ok(listener) => listener.local_addr().map(Some).map_err(BrokerError::NoPort),
        Err(e) if port != 0 && e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
        Err(e) => Err(BrokerError::NoPort(e)),
    }
}

/// Waits until the broker accepts a connection on `addr`, or its thread has
/// ended (it could not listen), or [`READY_TIMEOUT`] has passed. rumqttd
/// tells nothing when it listens, so this polls with a deadline.
async fn listening(addr: SocketAddr, thread: &JoinHandle<()>) -> bool {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return true;
        }
        if thread.is_finished() || tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One MQTT 3.1.1 listener on `addr`, anonymous, with room for the
/// uplink's packets (up to 4 MiB) and its window of unacknowledged ones.
fn config(addr: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: 4 * 1024 * 1024 + 1024,
        max_inflight_count: 256,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "demo".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 64,
            max_outgoing_packet_count: 200,
            max_segment_size: 4 * 1024 * 1024 + 1024,
            max_segment_count: 4,
            ..Default::default()
        },
        v4: Some([("1".to_string(), server)].into_iter().collect()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_moves_the_broker_to_a_free_one() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let addr = start(port).await.expect("broker");
        assert_ne!(addr.port(), port);
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    }
}
