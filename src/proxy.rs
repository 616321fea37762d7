//! `[[proxy]]`: a Modbus TCP server that forwards each request through the
//! gateway's own link to a serial line or TCP device, so a service tool or a
//! SCADA system reaches the devices the gateway polls without a second
//! master on the line (or a second connection to a device that takes one).
//!
//! - Forwarded: function codes 1, 2, 3, 4 and 43/14; with `writes = true`
//!   also 5, 6, 15, 16 and 23, each logged with the peer and counted. Any
//!   other code answers exception 01, a unit outside `units` (and unit 0 on
//!   a serial line: broadcast is not forwarded) 0A, no answer within the
//!   timeout 0B; the device's own exceptions pass through. The server keeps
//!   the client's transaction id and unit in every answer.
//! - A request goes out through [`Link::for_proxy`]: on a serial line the
//!   shared bus (one request at a time, the inter-frame silence, config
//!   writes first), to a TCP device the host's own connection; built from
//!   the host's settings for that unit, so the host's pacing applies. It
//!   takes its turn between poll cycles ([`Link::proxy_turn`]).
//! - At most [`MAX_CLIENTS`] connections (the next is accepted and closed at
//!   once); a client idle for [`IDLE_TIMEOUT`] is closed.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};
use tokio_util::sync::CancellationToken;

use crate::modbus::{Buses, Link, Priority, RequestError};
use crate::model::{HostSpec, ProxySpec};
use crate::netlimit::Guarded;

/// Client connections per proxy.
pub const MAX_CLIENTS: usize = 16;
/// A client connection without traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a proxied request ended, the `result` label of
/// `modbridge_proxy_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The device answered.
    Ok,
    /// The device answered with an exception (passed through).
    Exception,
    /// Not forwarded: function code not allowed (01).
    Refused,
    /// Not forwarded: unit not allowed (0A).
    Unit,
    /// No answer within the timeout, or the link failed (0B).
    NoAnswer,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Exception,
        Outcome::Refused,
        Outcome::Unit,
        Outcome::NoAnswer,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Exception => "exception",
            Outcome::Refused => "refused_function",
            Outcome::Unit => "refused_unit",
            Outcome::NoAnswer => "no_answer",
        }
    }
}

/// One proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// By [`Outcome`], in the order of [`Outcome::ALL`].
    pub requests: [u64; 5],
    /// Writes forwarded to the device.
    pub writes: u64,
    /// Connections refused because [`MAX_CLIENTS`] were open.
    pub refused_clients: u64,
}

impl Counters {
    /// The count of one outcome.
    pub fn of(&self, outcome: Outcome) -> u64 {
        let i = Outcome::ALL.iter().position(|&o| o == outcome).unwrap_or(0);
        self.requests[i]
    }
}

/// Every proxy's counters by name, for `/metrics`.
#[derive(Debug, Default)]
pub struct ProxyStatus {
    proxies: Mutex<BTreeMap<String, Counters>>,
    /// The address each proxy listens on, once bound (a `listen` port 0 is
    /// given one by the system).
    bound: Mutex<BTreeMap<String, SocketAddr>>,
    bound_changed: tokio::sync::Notify,
}

impl ProxyStatus {
    pub fn new() -> Arc<ProxyStatus> {
        Arc::default()
    }

    fn update(&self, proxy: &str, change: impl FnOnce(&mut Counters)) {
        let mut map = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        change(map.entry(proxy.to_string()).or_default());
    }

    fn set_bound(&self, proxy: &str, addr: SocketAddr) {
        let mut map = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        map.insert(proxy.to_string(), addr);
        drop(map);
        self.bound_changed.notify_waiters();
    }

    /// Waits until the proxy named `proxy` (its `listen` as written) is
    /// listening, and returns its address.
    pub async fn listening(&self, proxy: &str) -> SocketAddr {
        loop {
            let changed = self.bound_changed.notified();
            {
                let map = self.bound.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(addr) = map.get(proxy) {
                    return *addr;
                }
            }
            changed.await;
        }
    }

    /// Every proxy's counters.
    pub fn snapshot(&self) -> Vec<(String, Counters)> {
        let map = self.proxies.lock().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// What a function code is to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Unsupported,
}

fn kind(request: &Request<'_>) -> Kind {
    match request {
        Request::ReadCoils(..)
        | Request::ReadDiscreteInputs(..)
        | Request::ReadHoldingRegisters(..)
        | Request::ReadInputRegisters(..)
        | Request::ReadDeviceIdentification(..) => Kind::Read,
        Request::WriteSingleCoil(..)
        | Request::WriteSingleRegister(..)
        | Request::WriteMultipleCoils(..)
        | Request::WriteMultipleRegisters(..)
        | Request::ReadWriteMultipleRegisters(..) => Kind::Write,
        _ => Kind::Unsupported,
    }
}

/// One running proxy.
pub struct Proxy {
    spec: ProxySpec,
    name: String,
    /// The hosts on the proxy's connection, whose settings its links take.
    hosts: Vec<Arc<HostSpec>>,
    buses: Arc<Buses>,
    /// Per unit: the link's settings, the connection it uses, the link.
    #[allow(clippy::type_complexity)]
    links: tokio::sync::Mutex<HashMap<u8, (Arc<HostSpec>, usize, Arc<tokio::sync::Mutex<Link>>)>>,
    status: Arc<ProxyStatus>,
}

impl Proxy {
    /// A proxy for `spec` onto the gateway's `buses`; `hosts` are the
    /// gateway's hosts (those on the proxy's connection are used).
    pub fn new(
        spec: ProxySpec,
        hosts: &[Arc<HostSpec>],
        buses: Arc<Buses>,
        status: Arc<ProxyStatus>,
    ) -> Arc<Proxy> {
        let hosts = hosts
            .iter()
            .filter(|h| h.connection == spec.connection)
            .cloned()
            .collect();
        let name = spec.name();
        status.update(&name, |_| {});
        Arc::new(Proxy {
            spec,
            name,
            hosts,
            buses,
            links: tokio::sync::Mutex::new(HashMap::new()),
            status,
        })
    }

    fn unit_allowed(&self, unit: u8) -> bool {
        if unit == 0 && self.spec.connection.is_serial() {
            return false;
        }
        self.spec.units.as_ref().map_or(true, |u| u.contains(&unit))
    }

    /// The settings the link to `unit` takes: the host's where a host polls
    /// that unit, the proxy's otherwise; the proxy's timeout, no retries.
    fn spec_for(&self, unit: u8) -> HostSpec {
        let base = match self.hosts.iter().find(|h| h.unit == unit) {
            Some(h) => (**h).clone(),
            None => HostSpec {
                connection: self.spec.connection.clone(),
                serial: self.spec.serial,
                unit,
                ..HostSpec::tcp("proxy", "127.0.0.1", 502, Vec::new())
            },
        };
        HostSpec {
            timeout: self.spec.timeout,
            retries: 0,
            ..base
        }
    }

    /// The link for `unit`: kept between requests, and rebuilt when the
    /// gateway's connection to the device changed (a host restarted on a
    /// reload connects anew; the proxy follows it).
    async fn link(&self, unit: u8) -> Arc<tokio::sync::Mutex<Link>> {
        let mut links = self.links.lock().await;
        let entry = links.entry(unit).or_insert_with(|| {
            let spec = Arc::new(self.spec_for(unit));
            let link = Link::for_proxy(&spec, &self.buses);
            let id = link.target_id();
            (spec, id, Arc::new(tokio::sync::Mutex::new(link)))
        });
        let fresh = Link::for_proxy(&entry.0, &self.buses);
        if fresh.target_id() != entry.1 {
            entry.1 = fresh.target_id();
            entry.2 = Arc::new(tokio::sync::Mutex::new(fresh));
        }
        entry.2.clone()
    }

    /// Answers one client request.
    pub async fn handle(
        &self,
        peer: SocketAddr,
        unit: u8,
        request: Request<'static>,
    ) -> Result<Response, ExceptionCode> {
        let kind = kind(&request);
        if kind == Kind::Unsupported || (kind == Kind::Write && !self.spec.writes) {
            self.count(Outcome::Refused);
            return Err(ExceptionCode::IllegalFunction);
        }
        if !self.unit_allowed(unit) {
            self.count(Outcome::Unit);
            return Err(ExceptionCode::GatewayPathUnavailable);
        }
        let link = self.link(unit).await;
        let mut link = link.lock().await;
        let turn = link.proxy_turn().await;
        let result = link.forward(&request, Priority::Poll).await;
        drop(turn);
        if kind == Kind::Write {
            self.status.update(&self.name, |c| c.writes += 1);
            tracing::info!(
                proxy = %self.name,
                %peer,
                unit,
                request = ?request,
                result = ?result.as_ref().map(|_| "ok"),
                "proxy: write forwarded"
            );
        }
        match result {
            Ok(response) => {
                self.count(Outcome::Ok);
                Ok(response)
            }
            Err(RequestError::Exception(code)) => {
                self.count(Outcome::Exception);
                Err(code)
            }
            Err(e) => {
                tracing::debug!(proxy = %self.name, %peer, unit, error = %e, "proxy: no answer");
                self.count(Outcome::NoAnswer);
                Err(ExceptionCode::GatewayTargetDevice)
            }
        }
    }

    fn count(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|&o| o == outcome).unwrap_or(0);
        self.status.update(&self.name, |c| c.requests[i] += 1);
    }
}

/// Binds a proxy's listen address.
pub async fn bind(spec: &ProxySpec) -> io::Result<TcpListener> {
    TcpListener::bind(spec.listen).await
}

/// Serves Modbus TCP on `listener` for `proxy` until `cancel`, with at most
/// [`MAX_CLIENTS`] clients, each closed after [`IDLE_TIMEOUT`] without traffic.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, cancel: CancellationToken) {
    serve_limited(listener, proxy, cancel, MAX_CLIENTS, IDLE_TIMEOUT).await;
}

/// [`serve`] with other limits.
pub async fn serve_limited(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    cancel: CancellationToken,
    max_clients: usize,
    idle: Duration,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(proxy = %proxy.name, listen = ?addr, connection = %proxy.spec.connection, "proxy listening");
    if let Some(addr) = addr {
        proxy.status.set_bound(&proxy.name, addr);
    }
    let permits = Arc::new(Semaphore::new(max_clients.max(1)));
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = |stream: TcpStream, peer: SocketAddr| {
        let proxy = proxy.clone();
        let permit = permits.clone().try_acquire_owned();
        async move {
            let Ok(permit) = permit else {
                tracing::warn!(proxy = %proxy.name, %peer, max = max_clients, "proxy: too many clients; connection closed");
                proxy.status.update(&proxy.name, |c| c.refused_clients += 1);
                return Ok(None);
            };
            let _ = stream.set_nodelay(true);
            tracing::debug!(proxy = %proxy.name, %peer, "proxy: client connected");
            let transport = Guarded::new(stream, permit, idle);
            Ok(Some((Service { proxy, peer }, transport)))
        }
    };
    let on_error = |e: io::Error| tracing::debug!(error = %e, "proxy: client connection ended");
    tokio::select! {
        r = server.serve(&on_connected, on_error) => {
            if let Err(e) = r {
                tracing::error!(proxy = %proxy.name, error = %e, "proxy stopped");
            }
        }
        () = cancel.cancelled() => {}
    }
}

struct Service {
    proxy: Arc<Proxy>,
    peer: SocketAddr,
}

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let proxy = self.proxy.clone();
        let peer = self.peer;
        Box::pin(async move { proxy.handle(peer, req.slave, req.request).await.map(Some) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_codes() {
        assert_eq!(kind(&Request::ReadHoldingRegisters(0, 1)), Kind::Read);
        assert_eq!(kind(&Request::ReadCoils(0, 1)), Kind::Read);
        assert_eq!(kind(&Request::WriteSingleRegister(0, 1)), Kind::Write);
        assert_eq!(
            kind(&Request::ReadWriteMultipleRegisters(
                0,
                1,
                0,
                vec![1].into()
            )),
            Kind::Write
        );
        assert_eq!(
            kind(&Request::MaskWriteRegister(0, 1, 2)),
            Kind::Unsupported
        );
        assert_eq!(kind(&Request::ReportServerId), Kind::Unsupported);
        assert_eq!(
            kind(&Request::Custom(0x41, vec![1].into())),
            Kind::Unsupported
        );
        let id = crate::scan::identification_request();
        assert_eq!(id.map(|r| kind(&r)), Some(Kind::Read));
    }
}
