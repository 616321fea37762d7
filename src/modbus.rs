//! The field side: Modbus TCP links and shared RTU buses.
//!
//! Invariants:
//! - every request has a timeout (tokio-modbus's async client has none);
//! - after a timeout or any transport error the connection is dropped, so a late
//!   reply can never be taken as the answer to the next request;
//! - hosts on one serial port share one [`Bus`]: one request at a time, writes
//!   ahead of queued reads, and the RTU inter-frame silence kept between frames;
//! - a host's pacing (`delay_between_requests`, `delay_after_connect`) is kept
//!   by its [`Link`], on top of the bus's inter-frame silence.
//! - a proxy forwards through the same links ([`Link::for_proxy`]: the bus, or
//!   the host's own TCP connection), its requests between the hosts' poll
//!   cycles (a [`Gate`] per link: a cycle is delayed by at most one proxied
//!   request).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Slave};

use crate::model::{Connection, HostSpec, Pacing, Parity, SerialSettings, Table};

/// Why a Modbus request failed.
///
/// The split matters: a transport failure means "drop the link and back off";
/// an exception means the device is there and refused this request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No answer within the host's timeout.
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    /// Connecting, sending or receiving failed, or the answer was garbage.
    #[error("{0}")]
    Transport(String),
    /// The device answered with a Modbus exception.
    #[error("Modbus exception {}", exception_name(*.0))]
    Exception(ExceptionCode),
}

impl RequestError {
    /// True when the link must be dropped and rebuilt.
    pub fn is_transport(&self) -> bool {
        !matches!(self, RequestError::Exception(_))
    }

    /// True for an exception that is an answer about the request itself
    /// (see [`refuses_request`]): the same request will be refused again.
    pub fn refuses_request(&self) -> bool {
        matches!(self, RequestError::Exception(code) if refuses_request(*code))
    }
}

/// Whether an exception code is an answer about the request itself: 01
/// illegal function, 02 illegal data address, 03 illegal data value. Every
/// other code (04 server device failure, 05 acknowledge, 06 server busy, 0A
/// gateway path unavailable, 0B gateway target failed to respond, and codes
/// the standard does not name) says the device cannot answer *now*: nothing
/// is learned from it, and the host backs off as after a timeout.
pub fn refuses_request(code: ExceptionCode) -> bool {
    matches!(
        code,
        ExceptionCode::IllegalFunction
            | ExceptionCode::IllegalDataAddress
            | ExceptionCode::IllegalDataValue
    )
}

/// A human readable name of a Modbus exception, with its code.
pub fn exception_name(code: ExceptionCode) -> String {
    let n: u8 = code.into();
    let name = match code {
        ExceptionCode::IllegalFunction => "illegal function",
        ExceptionCode::IllegalDataAddress => "illegal data address",
        ExceptionCode::IllegalDataValue => "illegal data value",
        ExceptionCode::ServerDeviceFailure => "server device failure",
        ExceptionCode::Acknowledge => "acknowledge",
        ExceptionCode::ServerDeviceBusy => "server device busy",
        ExceptionCode::MemoryParityError => "memory parity error",
        ExceptionCode::GatewayPathUnavailable => "gateway path unavailable",
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond",
        ExceptionCode::Custom(_) => "unknown exception",
    };
    format!("0x{n:02X} ({name})")
}

/// The answer to a read: registers or bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadData {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// What goes on the wire: one of the gateway's own operations, or any
/// request sent as it is ([`Link::forward`]: device identification, a
/// proxied request).
#[derive(Clone, Copy)]
enum Job<'a> {
    Op(&'a Operation),
    Forward(&'a tokio_modbus::Request<'static>),
}

/// The answer to a [`Job`].
enum Answer {
    Data(ReadData),
    Raw(tokio_modbus::Response),
}

/// One operation on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    Read {
        table: Table,
        start: u16,
        count: u16,
    },
    WriteRegisters {
        start: u16,
        words: Vec<u16>,
    },
    WriteCoil {
        address: u16,
        on: bool,
    },
}

/// Whether a request may jump the queue on a shared bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Config writes (and their reads): ahead of every queued poll read.
    Write,
    Poll,
}

/// Asked right before a frame is sent; false: it is not sent.
pub type Precheck<'a> = &'a mut (dyn FnMut() -> bool + Send);

/// Turns between host poll cycles and proxied requests on one link (a
/// serial bus or a shared TCP connection): a proxied request waits for the
/// request in progress and the cycles under way, and a cycle that would start
/// while a proxied request waits lets that one request go first. So a host's
/// cycle is delayed by at most one proxied request, and a proxied request
/// waits at most for the rest of one cycle of each host.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    changed: Notify,
    /// One proxied request at a time per link.
    proxy: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct GateState {
    /// Poll cycles under way.
    cycles: usize,
    /// A proxied request waits for the cycles under way to end, or is under way.
    proxy_waiting: bool,
    /// Proxied requests done so far.
    proxied: u64,
    /// Cycles waiting for a proxied request to finish.
    delayed: usize,
    /// Of those, the ones whose proxied request has finished: they go before
    /// the next proxied request.
    entitled: usize,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn enter_cycle(self: &Arc<Gate>) -> CycleTurn {
        let mut delay: Option<Delay> = None;
        loop {
            let notified = self.changed.notified();
            {
                let mut st = self.lock();
                let passed = delay.as_ref().is_some_and(|d| st.proxied > d.ticket);
                if passed || (delay.is_none() && !st.proxy_waiting) {
                    if let Some(d) = delay.take() {
                        d.leave(&mut st);
                    }
                    st.cycles += 1;
                    return CycleTurn {
                        gate: Some(self.clone()),
                    };
                }
                if delay.is_none() {
                    st.delayed += 1;
                    delay = Some(Delay {
                        gate: self.clone(),
                        ticket: st.proxied,
                        done: false,
                    });
                }
            }
            notified.await;
        }
    }

    async fn enter_proxy(self: &Arc<Gate>) -> ProxyTurn {
        let lock = self.proxy.clone().lock_owned().await;
        self.lock().proxy_waiting = true;
        // Dropped (also when this future is), it lets the cycles go again.
        let turn = ProxyTurn {
            gate: self.clone(),
            _turn: lock,
        };
        loop {
            let notified = self.changed.notified();
            {
                let st = self.lock();
                if st.cycles == 0 && st.entitled == 0 {
                    return turn;
                }
            }
            notified.await;
        }
    }
}

/// A cycle waiting for a proxied request; dropped unfinished (the host task
/// stopped while it waited), it stops counting.
struct Delay {
    gate: Arc<Gate>,
    ticket: u64,
    done: bool,
}

impl Delay {
    fn leave(mut self, st: &mut GateState) {
        st.delayed = st.delayed.saturating_sub(1);
        if st.proxied > self.ticket {
            st.entitled = st.entitled.saturating_sub(1);
        }
        self.done = true;
    }
}

impl Drop for Delay {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.gate.lock();
        st.delayed = st.delayed.saturating_sub(1);
        if st.proxied > self.ticket {
            st.entitled = st.entitled.saturating_sub(1);
        }
        drop(st);
        self.gate.changed.notify_waiters();
    }
}

/// A host's poll cycle on its link; proxied requests wait while it is held.
pub struct CycleTurn {
    gate: Option<Arc<Gate>>,
}

impl Drop for CycleTurn {
    fn drop(&mut self) {
        if let Some(gate) = &self.gate {
            let mut st = gate.lock();
            st.cycles = st.cycles.saturating_sub(1);
            drop(st);
            gate.changed.notify_waiters();
        }
    }
}

/// A proxied request's turn on a link: new poll cycles wait while it is held.
pub struct ProxyTurn {
    gate: Arc<Gate>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for ProxyTurn {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.proxy_waiting = false;
        st.proxied += 1;
        // Every cycle that waited has waited for this one: they go first.
        st.entitled = st.delayed;
        drop(st);
        self.gate.changed.notify_waiters();
    }
}

/// Capped exponential backoff with jitter for reconnecting.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Starts at `initial`, doubles per failure, never above `cap`.
    pub fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            initial: initial.min(cap),
            cap,
            failures: 0,
        }
    }

    /// The backoff for a host: capped at its poll interval and at 60 s.
    pub fn for_host(host: &HostSpec) -> Backoff {
        let cap = host.poll_interval.min(Duration::from_secs(60));
        Backoff::new(Duration::from_millis(500), cap)
    }

    /// Records a failure and returns how long to wait before the next attempt
    /// (between 80% and 100% of the exponential step, so many links that failed
    /// together do not retry in lockstep).
    pub fn fail(&mut self) -> Duration {
        let exp = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let step = self.initial.saturating_mul(1u32 << exp).min(self.cap);
        let jitter = 0.8 + 0.2 * fastrand::f64();
        step.mul_f64(jitter)
    }

    /// Records a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A serial port wrapper whose flush does not drain: tokio-serial's flush calls
/// `tcdrain`, which blocks the runtime thread until the frame is on the wire. The
/// kernel sends what we wrote anyway, and we wait for the answer, so no drain is needed.
struct NoDrain<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for NoDrain<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for NoDrain<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Opens a serial port with the given settings.
fn open_serial(path: &str, settings: &SerialSettings) -> io::Result<Context> {
    let parity = match settings.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = match settings.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let stop_bits = if settings.stop_bits == 2 {
        tokio_serial::StopBits::Two
    } else {
        tokio_serial::StopBits::One
    };
    let builder = tokio_serial::new(path, settings.baud)
        .parity(parity)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .timeout(Duration::from_millis(50));
    let port = tokio_serial::SerialStream::open(&builder).map_err(io::Error::from)?;
    Ok(tokio_modbus::client::rtu::attach(NoDrain(port)))
}

/// Runs one job on a connected context, with a timeout.
async fn execute(
    ctx: &mut Context,
    job: Job<'_>,
    timeout: Duration,
) -> Result<Answer, RequestError> {
    let op = match job {
        Job::Op(op) => op,
        Job::Forward(request) => {
            use tokio_modbus::client::Client as _;
            return match tokio::time::timeout(timeout, ctx.call(request.clone())).await {
                Err(_) => Err(RequestError::Timeout(timeout)),
                Ok(Err(e)) => Err(RequestError::Transport(e.to_string())),
                Ok(Ok(Err(code))) => Err(RequestError::Exception(code)),
                Ok(Ok(Ok(response))) => Ok(Answer::Raw(response)),
            };
        }
    };
    let call = async {
        match op {
            Operation::Read {
                table,
                start,
                count,
            } => match table {
                Table::Holding => ctx
                    .read_holding_registers(*start, *count)
                    .await
                    .map(|r| r.map(ReadData::Words)),
                Table::Input => ctx
                    .read_input_registers(*start, *count)
                    .await
                    .map(|r| r.map(ReadData::Words)),
                Table::Coil => ctx
                    .read_coils(*start, *count)
                    .await
                    .map(|r| r.map(ReadData::Bits)),
                Table::Discrete => ctx
                    .read_discrete_inputs(*start, *count)
                    .await
                    .map(|r| r.map(ReadData::Bits)),
            },
            Operation::WriteRegisters { start, words } => {
                let r = if words.len() == 1 {
                    ctx.write_single_register(*start, words[0]).await
                } else {
                    ctx.write_multiple_registers(*start, words).await
                };
                r.map(|r| r.map(|()| ReadData::Words(Vec::new())))
            }
            Operation::WriteCoil { address, on } => ctx
                .write_single_coil(*address, *on)
                .await
                .map(|r| r.map(|()| ReadData::Bits(Vec::new()))),
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(RequestError::Timeout(timeout)),
        Ok(Err(e)) => Err(RequestError::Transport(e.to_string())),
        Ok(Ok(Err(code))) => Err(RequestError::Exception(code)),
        Ok(Ok(Ok(data))) => {
            // A device that answers with fewer values than asked for is
            // answering garbage: treat it as a transport failure.
            if let Operation::Read { count, .. } = op {
                let got = match &data {
                    ReadData::Words(w) => w.len(),
                    ReadData::Bits(b) => b.len(),
                };
                if got < usize::from(*count) {
                    return Err(RequestError::Transport(format!(
                        "short answer: {got} values for {count} requested"
                    )));
                }
            }
            Ok(Answer::Data(data))
        }
    }
}

/// One serial port shared by every host on it.
pub struct Bus {
    path: String,
    settings: SerialSettings,
    state: tokio::sync::Mutex<BusState>,
    /// Writes waiting for the bus; poll reads wait while this is not zero.
    writes_waiting: AtomicUsize,
    writes_done: Notify,
    gate: Arc<Gate>,
}

struct BusState {
    ctx: Option<Context>,
    /// When the last frame on the wire ended (answer received or timed out).
    last_activity: Option<Instant>,
    /// Port-level reconnect backoff (opening the device failed).
    reopen_at: Option<Instant>,
    backoff: Backoff,
}

impl Bus {
    /// A bus for a serial port; the port is opened on first use.
    pub fn new(path: &str, settings: SerialSettings) -> Arc<Bus> {
        Arc::new(Bus {
            path: path.to_string(),
            settings,
            state: tokio::sync::Mutex::new(BusState {
                ctx: None,
                last_activity: None,
                reopen_at: None,
                backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(10)),
            }),
            writes_waiting: AtomicUsize::new(0),
            writes_done: Notify::new(),
            gate: Arc::default(),
        })
    }

    /// The device path.
    pub fn path(&self) -> &str {
        &self.path
    }

    async fn lock(&self, priority: Priority) -> tokio::sync::MutexGuard<'_, BusState> {
        match priority {
            Priority::Write => {
                self.writes_waiting.fetch_add(1, Ordering::SeqCst);
                let guard = self.state.lock().await;
                self.writes_waiting.fetch_sub(1, Ordering::SeqCst);
                self.writes_done.notify_waiters();
                guard
            }
            Priority::Poll => loop {
                let notified = self.writes_done.notified();
                if self.writes_waiting.load(Ordering::SeqCst) == 0 {
                    return self.state.lock().await;
                }
                notified.await;
            },
        }
    }

    /// Runs one request for unit `unit`, holding the bus only for it; `precheck`
    /// is asked once the bus is ours, right before the frame is sent (false:
    /// nothing is sent, `Ok(None)`).
    async fn request(
        &self,
        unit: u8,
        job: Job<'_>,
        timeout: Duration,
        priority: Priority,
        precheck: Precheck<'_>,
    ) -> Result<Option<Answer>, RequestError> {
        let mut state = self.lock(priority).await;
        if state.ctx.is_none() {
            if let Some(at) = state.reopen_at {
                if Instant::now() < at {
                    return Err(RequestError::Transport(format!(
                        "serial port {} unavailable (retrying)",
                        self.path
                    )));
                }
            }
            match open_serial(&self.path, &self.settings) {
                Ok(ctx) => {
                    state.ctx = Some(ctx);
                    state.reopen_at = None;
                    state.backoff.reset();
                    tracing::info!(port = %self.path, "serial port opened");
                }
                Err(e) => {
                    let wait = state.backoff.fail();
                    state.reopen_at = Some(Instant::now() + wait);
                    return Err(RequestError::Transport(format!(
                        "cannot open serial port {}: {e}",
                        self.path
                    )));
                }
            }
        }
        if let Some(last) = state.last_activity {
            let ready = last + self.settings.inter_frame_silence();
            if Instant::now() < ready {
                tokio::time::sleep_until(ready).await;
            }
        }
        let BusState {
            ctx, last_activity, ..
        } = &mut *state;
        let Some(context) = ctx.as_mut() else {
            return Err(RequestError::Transport("serial port not open".into()));
        };
        if !precheck() {
            return Ok(None);
        }
        context.set_slave(Slave(unit));
        let result = execute(context, job, timeout).await;
        *last_activity = Some(Instant::now());
        if matches!(&result, Err(e) if e.is_transport()) {
            // Reopen the port so that a late answer or line noise is discarded
            // instead of being read as the next unit's answer.
            *ctx = None;
        }
        result.map(Some)
    }
}

/// Serial buses by device path, so hosts on one port share one [`Bus`]; and
/// the TCP connections of the hosts by (address, unit), so a proxy forwards
/// through a host's own connection.
#[derive(Default)]
pub struct Buses {
    buses: Mutex<HashMap<String, Arc<Bus>>>,
    tcp: Mutex<HashMap<(String, u8), Weak<TcpShared>>>,
}

impl Buses {
    /// The bus for a port, created on first use.
    pub fn get(&self, path: &str, settings: SerialSettings) -> Arc<Bus> {
        let mut map = self.buses.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(path.to_string())
            .or_insert_with(|| Bus::new(path, settings))
            .clone()
    }

    /// A connection to `address` for a host polling `unit`: always its own
    /// (a restarted host connects anew), registered for proxies to find.
    fn tcp_for_host(&self, address: &str, unit: u8) -> Arc<TcpShared> {
        let shared = TcpShared::new(address, true);
        let mut map = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        map.insert((address.to_string(), unit), Arc::downgrade(&shared));
        shared
    }

    /// The connection a proxy forwards to `unit` at `address` through: the
    /// live one of the host polling that unit, else any live one to that
    /// address, else a new one (registered until a host has its own).
    fn tcp_for_proxy(&self, address: &str, unit: u8) -> Arc<TcpShared> {
        let mut map = self.tcp.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, w| w.strong_count() > 0);
        let key = (address.to_string(), unit);
        // A host's connection first (the one of this unit, else any at the
        // address), then one of the proxy's own (this unit's first).
        let mut live: Vec<(bool, bool, Arc<TcpShared>)> = map
            .iter()
            .filter(|((a, _), _)| a == address)
            .filter_map(|((_, u), w)| w.upgrade().map(|s| (s.host_owned, *u == unit, s)))
            .collect();
        live.sort_by_key(|(host, this_unit, _)| (!host, !this_unit));
        if let Some((_, _, best)) = live.into_iter().next() {
            return best;
        }
        let shared = TcpShared::new(address, false);
        map.insert(key, Arc::downgrade(&shared));
        shared
    }
}

/// One TCP connection, shared by its host and any proxy forwarding to the device.
struct TcpShared {
    address: String,
    ctx: tokio::sync::Mutex<Option<Context>>,
    gate: Arc<Gate>,
    /// A host's own connection (else a proxy's, while no host has one).
    host_owned: bool,
}

impl TcpShared {
    fn new(address: &str, host_owned: bool) -> Arc<TcpShared> {
        Arc::new(TcpShared {
            host_owned,
            address: address.to_string(),
            ctx: tokio::sync::Mutex::new(None),
            gate: Arc::default(),
        })
    }
}

/// A host's turn on its shared serial bus for one config request (read,
/// write, read back): while it is held, poll reads of every host on the bus
/// wait, so the request's frames follow each other. No effect on TCP links.
pub struct WriteTurn {
    bus: Option<Arc<Bus>>,
}

impl Drop for WriteTurn {
    fn drop(&mut self) {
        if let Some(bus) = &self.bus {
            bus.writes_waiting.fetch_sub(1, Ordering::SeqCst);
            bus.writes_done.notify_waiters();
        }
    }
}

/// A host's link to its device: its own TCP connection, or its unit on a shared bus.
pub struct Link {
    target: Target,
    unit: u8,
    timeout: Duration,
    retries: u32,
    pacing: Pacing,
    /// When the last request to this host ended (answered, refused or timed out).
    last_end: Option<Instant>,
}

enum Target {
    Tcp(Arc<TcpShared>),
    Serial(Arc<Bus>),
}

impl Link {
    /// The link for a host; TCP connects lazily, serial shares `buses`.
    pub fn new(host: &HostSpec, buses: &Buses) -> Link {
        Link::with_sharing(host, buses, false)
    }

    /// A proxy's link to `host`'s device: the host's own connection (or,
    /// for a unit no host polls, any connection the gateway holds to that
    /// TCP device) and the host's settings, so its pacing applies.
    pub fn for_proxy(host: &HostSpec, buses: &Buses) -> Link {
        Link::with_sharing(host, buses, true)
    }

    fn with_sharing(host: &HostSpec, buses: &Buses, for_proxy: bool) -> Link {
        let target = match &host.connection {
            Connection::Tcp { host: h, port } => {
                let address = if h.contains(':') {
                    format!("[{h}]:{port}")
                } else {
                    format!("{h}:{port}")
                };
                Target::Tcp(if for_proxy {
                    buses.tcp_for_proxy(&address, host.unit)
                } else {
                    buses.tcp_for_host(&address, host.unit)
                })
            }
            Connection::Rtu { path } => {
                Target::Serial(buses.get(path, host.serial.unwrap_or_default()))
            }
        };
        Link {
            target,
            unit: host.unit,
            timeout: host.timeout,
            retries: host.retries,
            pacing: host.pacing,
            last_end: None,
        }
    }

    /// Addresses the following requests to another unit (for `scan`).
    pub fn set_unit(&mut self, unit: u8) {
        self.unit = unit;
    }

    /// True while a TCP connection is open (serial: while the port is usable).
    pub fn is_connected(&self) -> bool {
        match &self.target {
            // Locked: a request is under way on it.
            Target::Tcp(shared) => shared.ctx.try_lock().map_or(true, |c| c.is_some()),
            Target::Serial(_) => true,
        }
    }

    /// Identifies the bus or connection this link uses: equal for two links
    /// that share it.
    pub fn target_id(&self) -> usize {
        match &self.target {
            Target::Tcp(shared) => Arc::as_ptr(shared) as usize,
            Target::Serial(bus) => Arc::as_ptr(bus) as usize,
        }
    }

    fn gate(&self) -> &Arc<Gate> {
        match &self.target {
            Target::Tcp(shared) => &shared.gate,
            Target::Serial(bus) => &bus.gate,
        }
    }

    /// Starts a poll cycle: held for the cycle's requests, so that proxied
    /// requests on this link come between cycles (see [`Gate`]).
    pub async fn cycle(&self) -> CycleTurn {
        self.gate().enter_cycle().await
    }

    /// A proxied request's turn: waits for the cycles under way on this link.
    pub async fn proxy_turn(&self) -> ProxyTurn {
        self.gate().enter_proxy().await
    }

    /// Holds off the bus's poll reads until the returned turn is dropped; the
    /// requests in between use [`Priority::Write`].
    pub fn write_turn(&self) -> WriteTurn {
        match &self.target {
            Target::Serial(bus) => {
                bus.writes_waiting.fetch_add(1, Ordering::SeqCst);
                WriteTurn {
                    bus: Some(bus.clone()),
                }
            }
            Target::Tcp(_) => WriteTurn { bus: None },
        }
    }

    /// Drops the connection (TCP); the next request reconnects. A request
    /// under way on it (a proxy's) drops it itself if it fails.
    pub fn disconnect(&mut self) {
        if let Target::Tcp(shared) = &self.target {
            if let Ok(mut ctx) = shared.ctx.try_lock() {
                *ctx = None;
            }
        }
    }

    /// Runs one operation, with the host's timeout and retries. Transport
    /// failures drop the connection before the retry; exceptions are not retried.
    pub async fn request(
        &mut self,
        op: &Operation,
        priority: Priority,
    ) -> Result<ReadData, RequestError> {
        match self
            .request_job(Job::Op(op), priority, &mut || true)
            .await?
        {
            Some(Answer::Data(data)) => Ok(data),
            Some(Answer::Raw(_)) => Err(RequestError::Transport("unexpected answer".into())),
            None => Err(RequestError::Transport("request not sent".into())),
        }
    }

    /// Like [`Link::request`], but `precheck` is asked right before each frame
    /// goes on the wire (after connecting, and on a shared bus once the bus is
    /// ours): when it says false nothing is sent and the answer is `Ok(None)`.
    /// A write that must not go out once it is withdrawn checks that here.
    pub async fn request_gated(
        &mut self,
        op: &Operation,
        priority: Priority,
        precheck: Precheck<'_>,
    ) -> Result<Option<ReadData>, RequestError> {
        match self.request_job(Job::Op(op), priority, precheck).await? {
            Some(Answer::Data(data)) => Ok(Some(data)),
            Some(Answer::Raw(_)) => Err(RequestError::Transport("unexpected answer".into())),
            None => Ok(None),
        }
    }

    /// Sends any request as it is (once: no retries, so that a proxied
    /// request is never repeated on the wire) and returns the device's answer.
    pub async fn forward(
        &mut self,
        request: &tokio_modbus::Request<'static>,
        priority: Priority,
    ) -> Result<tokio_modbus::Response, RequestError> {
        match self
            .request_once(Job::Forward(request), priority, &mut || true)
            .await?
        {
            Some(Answer::Raw(response)) => Ok(response),
            Some(Answer::Data(_)) => Err(RequestError::Transport("unexpected answer".into())),
            None => Err(RequestError::Transport("request not sent".into())),
        }
    }

    async fn request_job(
        &mut self,
        job: Job<'_>,
        priority: Priority,
        precheck: Precheck<'_>,
    ) -> Result<Option<Answer>, RequestError> {
        let mut attempt = 0;
        loop {
            let result = self.request_once(job, priority, &mut *precheck).await;
            match result {
                Err(e) if e.is_transport() && attempt < self.retries => {
                    tracing::debug!(error = %e, attempt, "request failed; retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn request_once(
        &mut self,
        job: Job<'_>,
        priority: Priority,
        precheck: Precheck<'_>,
    ) -> Result<Option<Answer>, RequestError> {
        // Keeps `delay_between_requests` of silence after the last request's end.
        if let Some(end) = self.last_end {
            let ready = end + self.pacing.between_requests;
            if Instant::now() < ready {
                tokio::time::sleep_until(ready).await;
            }
        }
        let result = self.send(job, priority, precheck).await;
        self.last_end = Some(Instant::now());
        result
    }

    async fn send(
        &mut self,
        job: Job<'_>,
        priority: Priority,
        precheck: Precheck<'_>,
    ) -> Result<Option<Answer>, RequestError> {
        match &mut self.target {
            Target::Tcp(shared) => {
                let mut ctx = shared.ctx.lock().await;
                if ctx.is_none() {
                    *ctx = Some(connect_tcp(&shared.address, self.unit, self.timeout).await?);
                    if !self.pacing.after_connect.is_zero() {
                        tokio::time::sleep(self.pacing.after_connect).await;
                    }
                }
                let Some(context) = ctx.as_mut() else {
                    return Err(RequestError::Transport("not connected".into()));
                };
                if !precheck() {
                    return Ok(None);
                }
                context.set_slave(Slave(self.unit));
                let result = execute(context, job, self.timeout).await;
                if matches!(&result, Err(e) if e.is_transport()) {
                    *ctx = None;
                }
                result.map(Some)
            }
            Target::Serial(bus) => {
                bus.request(self.unit, job, self.timeout, priority, precheck)
                    .await
            }
        }
    }
}

async fn connect_tcp(address: &str, unit: u8, timeout: Duration) -> Result<Context, RequestError> {
    let connect = async {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok::<_, io::Error>(stream)
    };
    match tokio::time::timeout(timeout, connect).await {
        Err(_) => Err(RequestError::Transport(format!(
            "connect to {address}: timeout after {timeout:?}"
        ))),
        Ok(Err(e)) => Err(RequestError::Transport(format!(
            "connect to {address}: {e}"
        ))),
        Ok(Ok(stream)) => Ok(tokio_modbus::client::tcp::attach_slave(stream, Slave(unit))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..6).map(|_| b.fail()).collect();
        let steps = [100u64, 200, 400, 800, 1000, 1000];
        for (w, s) in waits.iter().zip(steps) {
            let s = Duration::from_millis(s);
            assert!(*w <= s && *w >= s.mul_f64(0.8), "{w:?} vs {s:?}");
        }
        b.reset();
        assert!(b.fail() <= Duration::from_millis(100));
    }

    /// Polls a future once: `Some` if it is ready.
    fn now<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        let waker = std::task::Waker::from(Arc::new(Noop));
        let mut cx = TaskContext::from_waker(&waker);
        match Pin::new(f).poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    #[test]
    fn proxied_requests_go_between_cycles_and_delay_a_cycle_by_one() {
        let gate: Arc<Gate> = Arc::default();
        let mut first = Box::pin(gate.enter_cycle());
        let cycle_a = now(&mut first).expect("no proxy waits: the cycle starts");
        // A proxied request waits for the cycle under way.
        let mut p1 = Box::pin(gate.enter_proxy());
        assert!(now(&mut p1).is_none());
        // A cycle that would start now lets the waiting request go first.
        let mut cycle_b = Box::pin(gate.enter_cycle());
        assert!(now(&mut cycle_b).is_none());
        drop(cycle_a);
        let turn1 = now(&mut p1).expect("the cycle ended: the proxied request goes");
        assert!(now(&mut cycle_b).is_none());
        // The next proxied request queues behind the first...
        let mut p2 = Box::pin(gate.enter_proxy());
        assert!(now(&mut p2).is_none());
        drop(turn1);
        // ...but the delayed cycle goes before it: one proxied request per cycle.
        // ...and even when it asks before the delayed cycle has run again,
        // the delayed cycle goes before it: one proxied request per cycle.
        assert!(now(&mut p2).is_none(), "a delayed cycle is owed its turn");
        let cycle_b = now(&mut cycle_b).expect("delayed by one proxied request only");
        assert!(now(&mut p2).is_none(), "waits for the cycle under way");
        drop(cycle_b);
        let turn2 = now(&mut p2).expect("the cycle ended");
        // A proxied request given up while it waits (its client went away)
        // does not hold the cycles back.
        let mut waiting_cycle = Box::pin(gate.enter_cycle());
        assert!(now(&mut waiting_cycle).is_none());
        drop(turn2);
        let c = now(&mut waiting_cycle).expect("goes after the proxied request");
        let mut p3 = Box::pin(gate.enter_proxy());
        assert!(now(&mut p3).is_none());
        drop(p3);
        drop(c);
        let mut fresh = Box::pin(gate.enter_cycle());
        assert!(
            now(&mut fresh).is_some(),
            "no proxied request waits any more"
        );
        // A cycle given up while it waits does not hold proxied requests back.
        let mut p4 = Box::pin(gate.enter_proxy());
        let t4 = now(&mut p4).expect("no cycle under way");
        let mut given_up = Box::pin(gate.enter_cycle());
        assert!(now(&mut given_up).is_none());
        drop(given_up);
        drop(t4);
        let mut p5 = Box::pin(gate.enter_proxy());
        assert!(now(&mut p5).is_some(), "nobody is owed a turn");
    }

    #[test]
    fn proxies_find_the_hosts_connections() {
        let buses = Buses::default();
        let host = |unit: u8| HostSpec {
            unit,
            ..HostSpec::tcp("h", "10.0.0.9", 502, Vec::new())
        };
        // No host yet: the proxy's own connection, the same for every unit.
        let own = Link::for_proxy(&host(9), &buses);
        assert_eq!(
            own.target_id(),
            Link::for_proxy(&host(4), &buses).target_id()
        );
        // A host's connection is its own, and the proxy prefers it.
        let h1 = Link::new(&host(1), &buses);
        assert_ne!(h1.target_id(), own.target_id());
        assert_eq!(
            Link::for_proxy(&host(1), &buses).target_id(),
            h1.target_id()
        );
        assert_eq!(
            Link::for_proxy(&host(9), &buses).target_id(),
            h1.target_id()
        );
        // A restarted host connects anew; the proxy follows.
        let restarted = Link::new(&host(1), &buses);
        assert_ne!(restarted.target_id(), h1.target_id());
        drop(h1);
        assert_eq!(
            Link::for_proxy(&host(1), &buses).target_id(),
            restarted.target_id()
        );
        // Another address is another device.
        let other = HostSpec::tcp("o", "10.0.0.10", 502, Vec::new());
        assert_ne!(
            Link::for_proxy(&other, &buses).target_id(),
            restarted.target_id()
        );
    }

    #[test]
    fn only_01_02_03_are_answers_about_the_request() {
        let about_request = [
            ExceptionCode::IllegalFunction,
            ExceptionCode::IllegalDataAddress,
            ExceptionCode::IllegalDataValue,
        ];
        let not_now = [
            ExceptionCode::ServerDeviceFailure,
            ExceptionCode::Acknowledge,
            ExceptionCode::ServerDeviceBusy,
            ExceptionCode::MemoryParityError,
            ExceptionCode::GatewayPathUnavailable,
            ExceptionCode::GatewayTargetDevice,
            ExceptionCode::Custom(0x0C),
        ];
        assert!(about_request.into_iter().all(refuses_request));
        assert!(!not_now.into_iter().any(refuses_request));
        assert!(!RequestError::Timeout(Duration::from_secs(1)).refuses_request());
    }

    #[test]
    fn exception_names() {
        assert_eq!(
            exception_name(ExceptionCode::IllegalDataAddress),
            "0x02 (illegal data address)"
        );
    }
}
