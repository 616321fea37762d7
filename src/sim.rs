//! A simulated Modbus device: serves registers over TCP (or RTU on a serial
//! port), optionally animates them with plausible values from a device profile,
//! and can misbehave on request (exceptions of any code, delays, silence,
//! dropped connections, garbage answers, writes that do not stick).
//!
//! `modbridge demo` and the tests use it; `modbridge simulate` serves many for
//! benchmarks.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use crate::decode;
use crate::model::{ItemSpec, Table};

/// How the device misbehaves. Change it at any time through [`SimDevice::faults`].
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// A read or write touching one of these answers `exception` ("illegal
    /// data address" when that is None).
    pub exception_at: HashSet<(Table, u16)>,
    /// The exception answered for `exception_at`.
    pub exception: Option<ExceptionCode>,
    /// Every request is answered with this exception (a busy device, or a
    /// TCP->RTU converter whose device does not answer).
    pub refuse_all: Option<ExceptionCode>,
    /// Every request waits this long before it is answered.
    pub delay: Duration,
    /// Requests are not answered at all.
    pub silent: bool,
    /// Writes are acknowledged but change nothing.
    pub ignore_writes: bool,
    /// Answers are replaced by garbage bytes of the same length.
    pub garbage: bool,
}

impl Faults {
    /// The exception answered for a register in `exception_at`.
    fn exception_code(&self) -> ExceptionCode {
        self.exception.unwrap_or(ExceptionCode::IllegalDataAddress)
    }
}

/// When things happened on the device's side of the wire.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    /// TCP connections accepted.
    pub connects: Vec<std::time::Instant>,
    /// Per request: when it arrived and when it was answered (None: never).
    pub requests: Vec<(std::time::Instant, Option<std::time::Instant>)>,
}

/// One animated value: `base + amplitude * sin(2 pi t / period + phase)`.
#[derive(Debug, Clone)]
struct Animation {
    item: ItemSpec,
    base: f64,
    amplitude: f64,
    period: f64,
    phase: f64,
}

struct Tables {
    coils: Vec<bool>,
    discretes: Vec<bool>,
    inputs: Vec<u16>,
    holdings: Vec<u16>,
}

struct Inner {
    tables: Mutex<Tables>,
    faults: Mutex<Faults>,
    animations: Mutex<Vec<Animation>>,
    /// Unit ids this device answers; empty answers every unit.
    units: Mutex<HashSet<u8>>,
    /// Vendor, product code and revision it answers 43/14 with; none: exception 01.
    identification: Mutex<Option<[String; 3]>>,
    requests: AtomicU64,
    /// Sees `requests` move, for tests that wait for a request to arrive.
    arrived: tokio::sync::watch::Sender<u64>,
    /// When recording: TCP connections accepted, and each request's arrival
    /// and answer (see [`SimDevice::record_timing`]).
    timing: Mutex<Option<Timing>>,
    /// TCP connections accepted so far.
    connections: AtomicU64,
    /// Bumped by `drop_connections`; connections of older epochs close.
    epoch: AtomicU64,
}

/// A simulated device; cheap to clone (all clones are the same device).
#[derive(Clone)]
pub struct SimDevice {
    inner: Arc<Inner>,
}

impl Default for SimDevice {
    fn default() -> Self {
        SimDevice::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimDevice {
    /// A device with every register and bit at zero, answering every unit id.
    pub fn new() -> SimDevice {
        SimDevice {
            inner: Arc::new(Inner {
                tables: Mutex::new(Tables {
                    coils: vec![false; 65536],
                    discretes: vec![false; 65536],
                    inputs: vec![0; 65536],
                    holdings: vec![0; 65536],
                }),
                faults: Mutex::new(Faults::default()),
                animations: Mutex::new(Vec::new()),
                units: Mutex::new(HashSet::new()),
                identification: Mutex::new(None),
                requests: AtomicU64::new(0),
                arrived: tokio::sync::watch::Sender::new(0),
                timing: Mutex::new(None),
                connections: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
            }),
        }
    }

    /// Answer only these unit ids (a unit on a shared serial line).
    pub fn answer_units(&self, units: &[u8]) {
        *lock(&self.inner.units) = units.iter().copied().collect();
    }

    /// Answer device identification (43/14, basic objects) with these.
    pub fn set_identification(&self, vendor: &str, product: &str, revision: &str) {
        *lock(&self.inner.identification) = Some([
            vendor.to_string(),
            product.to_string(),
            revision.to_string(),
        ]);
    }

    /// Sets one register.
    pub fn set_register(&self, table: Table, address: u16, value: u16) {
        let mut t = lock(&self.inner.tables);
        let a = usize::from(address);
        match table {
            Table::Holding => t.holdings[a] = value,
            Table::Input => t.inputs[a] = value,
            Table::Coil => t.coils[a] = value != 0,
            Table::Discrete => t.discretes[a] = value != 0,
        }
    }

    /// Sets consecutive registers from `address`.
    pub fn set_registers(&self, table: Table, address: u16, values: &[u16]) {
        for (i, v) in values.iter().enumerate() {
            if let Some(a) = usize::from(address)
                .checked_add(i)
                .and_then(|a| u16::try_from(a).ok())
            {
                self.set_register(table, a, *v);
            }
        }
    }

    /// Reads one register (or bit as 0/1).
    pub fn register(&self, table: Table, address: u16) -> u16 {
        let t = lock(&self.inner.tables);
        let a = usize::from(address);
        match table {
            Table::Holding => t.holdings[a],
            Table::Input => t.inputs[a],
            Table::Coil => u16::from(t.coils[a]),
            Table::Discrete => u16::from(t.discretes[a]),
        }
    }

    /// Stores an item's engineering value in its registers.
    pub fn set_value(&self, item: &ItemSpec, value: f64) -> Result<(), decode::EncodeError> {
        let words = decode::encode_item(item, value)?;
        match (item.table.is_bits(), item.bit) {
            (true, _) => self.set_register(
                item.table,
                item.address,
                words.first().copied().unwrap_or(0),
            ),
            (false, Some(bit)) => {
                let word = self.register(item.table, item.address);
                let on = words.first().copied().unwrap_or(0) != 0;
                self.set_register(
                    item.table,
                    item.address,
                    decode::encode_bit_into(word, bit, on),
                );
            }
            (false, None) => self.set_registers(item.table, item.address, &words),
        }
        Ok(())
    }

    /// Gives the device a device profile's items: configurable items start at a
    /// plausible setpoint and stay where they are written; the other items move
    /// plausibly over time.
    pub fn animate(&self, items: &[ItemSpec]) {
        let mut animations = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let mid = match (item.lower_bound(), item.upper_bound()) {
                (Some(l), Some(u)) => (l + u) / 2.0,
                _ => typical_value(item),
            };
            if item.configurable || item.value_type == crate::model::ValueType::Bool {
                let start = if item.value_type == crate::model::ValueType::Bool {
                    (i % 2) as f64
                } else {
                    mid
                };
                let _ = self.set_value(item, quantize(item, start));
                continue;
            }
            let amplitude = (mid.abs() * 0.15).max(1.0);
            animations.push(Animation {
                item: item.clone(),
                base: mid,
                amplitude,
                period: 300.0 + 37.0 * i as f64,
                phase: i as f64,
            });
        }
        *lock(&self.inner.animations) = animations;
        self.tick();
    }

    /// Animates `item` (instead of what [`SimDevice::animate`] gave it) in a
    /// slow cycle between `low` and `high` over `period`, starting from now
    /// half way up and rising: at `high` a quarter period from now, back
    /// half way after half a period, at `low` after three quarters. The demo
    /// drives a trigger with it that fires soon after the start, then clears
    /// and fires again every `period`.
    pub fn cycle(&self, item: &ItemSpec, low: f64, high: f64, period: Duration) {
        let period = period.as_secs_f64().max(1.0);
        let now = crate::clock::unix_secs_f64();
        let animation = Animation {
            item: item.clone(),
            base: (low + high) / 2.0,
            amplitude: (high - low) / 2.0,
            period,
            // sin(2 pi t / period + phase) = sin(2 pi (t - now) / period)
            phase: -(std::f64::consts::TAU * (now / period).fract()),
        };
        {
            let mut animations = lock(&self.inner.animations);
            animations.retain(|a| (a.item.table, a.item.address) != (item.table, item.address));
            animations.push(animation);
        }
        self.tick();
    }

    /// Recomputes animated values for the current time.
    fn tick(&self) {
        let animations = lock(&self.inner.animations);
        if animations.is_empty() {
            return;
        }
        let t = crate::clock::unix_secs_f64();
        for a in animations.iter() {
            let v = a.base + a.amplitude * (std::f64::consts::TAU * t / a.period + a.phase).sin();
            let _ = self.set_value(&a.item, quantize(&a.item, v));
        }
    }

    /// Changes how the device misbehaves.
    pub fn faults(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut lock(&self.inner.faults));
    }

    /// Closes every open connection (the next request on each fails).
    pub fn drop_connections(&self) {
        self.inner.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Requests answered or refused so far.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Completes once `n` requests have arrived in all (answered or not yet).
    pub async fn requests_arrived(&self, n: u64) {
        let mut seen = self.inner.arrived.subscribe();
        // The sender lives as long as the device, which `self` keeps.
        let _ = seen.wait_for(|&count| count >= n).await;
    }

    /// Starts recording when connections are accepted and when each request
    /// arrives and is answered (from now on; earlier records are dropped).
    pub fn record_timing(&self) {
        *lock(&self.inner.timing) = Some(Timing::default());
    }

    /// What was recorded since [`SimDevice::record_timing`].
    pub fn timing(&self) -> Timing {
        lock(&self.inner.timing).clone().unwrap_or_default()
    }

    fn record(&self, change: impl FnOnce(&mut Timing)) {
        if let Some(t) = lock(&self.inner.timing).as_mut() {
            change(t);
        }
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::Relaxed)
    }

    fn answer(&self, req: &Request<'_>) -> Result<Response, ExceptionCode> {
        let faults = lock(&self.inner.faults).clone();
        if let Some(code) = faults.refuse_all {
            return Err(code);
        }
        let touches = |table: Table, start: u16, count: usize| {
            (0..count).any(|i| {
                u16::try_from(usize::from(start) + i)
                    .map(|a| faults.exception_at.contains(&(table, a)))
                    .unwrap_or(true)
            })
        };
        let range = |start: u16, count: u16| -> Result<std::ops::Range<usize>, ExceptionCode> {
            let s = usize::from(start);
            let e = s + usize::from(count);
            if count == 0 || e > 65536 {
                Err(ExceptionCode::IllegalDataAddress)
            } else {
                Ok(s..e)
            }
        };
        match req {
            Request::ReadCoils(a, n)
            | Request::ReadDiscreteInputs(a, n)
            | Request::ReadHoldingRegisters(a, n)
            | Request::ReadInputRegisters(a, n) => {
                let table = match req {
                    Request::ReadCoils(..) => Table::Coil,
                    Request::ReadDiscreteInputs(..) => Table::Discrete,
                    Request::ReadHoldingRegisters(..) => Table::Holding,
                    _ => Table::Input,
                };
                if touches(table, *a, usize::from(*n)) {
                    return Err(faults.exception_code());
                }
                let r = range(*a, *n)?;
                self.tick();
                let t = lock(&self.inner.tables);
                Ok(match table {
                    Table::Coil => Response::ReadCoils(t.coils[r].to_vec()),
                    Table::Discrete => Response::ReadDiscreteInputs(t.discretes[r].to_vec()),
                    Table::Holding => Response::ReadHoldingRegisters(t.holdings[r].to_vec()),
                    Table::Input => Response::ReadInputRegisters(t.inputs[r].to_vec()),
                })
            }
            Request::WriteSingleCoil(a, v) => {
                self.write(&faults, Table::Coil, *a, &[u16::from(*v)])?;
                Ok(Response::WriteSingleCoil(*a, *v))
            }
            Request::WriteMultipleCoils(a, vs) => {
                let words: Vec<u16> = vs.iter().map(|b| u16::from(*b)).collect();
                let n = self.write(&faults, Table::Coil, *a, &words)?;
                Ok(Response::WriteMultipleCoils(*a, n))
            }
            Request::WriteSingleRegister(a, v) => {
                self.write(&faults, Table::Holding, *a, &[*v])?;
                Ok(Response::WriteSingleRegister(*a, *v))
            }
            Request::WriteMultipleRegisters(a, vs) => {
                let n = self.write(&faults, Table::Holding, *a, vs)?;
                Ok(Response::WriteMultipleRegisters(*a, n))
            }
            Request::ReadDeviceIdentification(..) => self.identification(),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    /// The basic device identification objects (vendor, product code,
    /// revision), whatever was asked for: the PDU as a device sends it.
    fn identification(&self) -> Result<Response, ExceptionCode> {
        let Some(objects) = lock(&self.inner.identification).clone() else {
            return Err(ExceptionCode::IllegalFunction);
        };
        // Function, MEI type, read code, conformity level, more follows,
        // next object id, object count, then (id, length, value) per object.
        let mut pdu = vec![0x2B, 0x0E, 0x01, 0x81, 0x00, 0x00, objects.len() as u8];
        for (id, value) in (0u8..).zip(&objects) {
            let bytes = &value.as_bytes()[..value.len().min(64)];
            pdu.extend([id, bytes.len() as u8]);
            pdu.extend_from_slice(bytes);
        }
        Response::try_from(tokio_modbus::bytes::Bytes::from(pdu))
            .map_err(|_| ExceptionCode::ServerDeviceFailure)
    }

    /// A master's write of `values` from `start` (coils as 0/1): refused with
    /// "illegal data address" where a fault says so or past the table's end;
    /// acknowledged but ignored when the device ignores writes.
    fn write(
        &self,
        faults: &Faults,
        table: Table,
        start: u16,
        values: &[u16],
    ) -> Result<u16, ExceptionCode> {
        let n = u16::try_from(values.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
        if n == 0 || usize::from(start) + values.len() > 65536 {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        if values.iter().enumerate().any(|(i, _)| {
            u16::try_from(usize::from(start) + i)
                .map(|a| faults.exception_at.contains(&(table, a)))
                .unwrap_or(true)
        }) {
            return Err(faults.exception_code());
        }
        if !faults.ignore_writes {
            self.set_registers(table, start, values);
        }
        Ok(n)
    }

    /// Serves this device on a TCP listener until the returned server is dropped.
    pub fn serve_tcp(&self, listener: TcpListener) -> SimServer {
        let addr = listener.local_addr().ok();
        let device = self.clone();
        let task = tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = |stream: TcpStream, _peer: SocketAddr| {
                let device = device.clone();
                async move {
                    let _ = stream.set_nodelay(true);
                    device.record(|t| t.connects.push(std::time::Instant::now()));
                    device.inner.connections.fetch_add(1, Ordering::Relaxed);
                    let epoch = device.inner.epoch.load(Ordering::SeqCst);
                    let transport = Killable {
                        stream,
                        device: device.clone(),
                        epoch,
                    };
                    Ok(Some((Service { device }, transport)))
                }
            };
            let on_error =
                |e: io::Error| tracing::debug!(error = %e, "simulated device: connection ended");
            if let Err(e) = server.serve(&on_connected, on_error).await {
                tracing::warn!(error = %e, "simulated device stopped");
            }
        });
        SimServer { task, addr }
    }

    /// Binds `127.0.0.1:0` (or the given address) and serves this device there.
    pub async fn bind_tcp(&self, addr: &str) -> io::Result<SimServer> {
        let listener = TcpListener::bind(addr).await?;
        Ok(self.serve_tcp(listener))
    }

    /// Serves this device as an RTU slave on a serial port (e.g. one end of a
    /// pty pair) until the returned server is dropped.
    pub fn serve_rtu(&self, path: &str, baud: u32) -> io::Result<SimServer> {
        let port = tokio_serial::SerialStream::open(&tokio_serial::new(path, baud))
            .map_err(io::Error::from)?;
        let server = tokio_modbus::server::rtu::Server::new(port);
        let device = self.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = server.serve_forever(Service { device }).await {
                tracing::debug!(error = %e, "simulated RTU device stopped");
            }
        });
        Ok(SimServer { task, addr: None })
    }
}

/// A plausible value for an item without bounds, by its unit.
fn typical_value(item: &ItemSpec) -> f64 {
    match item.unit() {
        "degC" | "°C" | "C" => 21.0,
        "%" | "%RH" => 45.0,
        "Hz" => 50.0,
        "bar" => 2.0,
        "kW" => 6.0,
        "kWh" => 12000.0,
        "rpm" => 1500.0,
        "Pa" => 120.0,
        "l/min" => 20.0,
        "m3/h" => 3.5,
        "V" => 230.0,
        "A" => 8.0,
        _ => 10.0,
    }
}

/// Rounds a value to what the item's register can hold.
fn quantize(item: &ItemSpec, v: f64) -> f64 {
    if item.value_type == crate::model::ValueType::Bool {
        return if v >= 0.5 { 1.0 } else { 0.0 };
    }
    if item.value_type.is_float() {
        return v;
    }
    let raw = ((v - item.offset) / item.scale).round();
    raw * item.scale + item.offset
}

/// A running simulated device server; dropping it stops listening.
pub struct SimServer {
    task: tokio::task::JoinHandle<()>,
    addr: Option<SocketAddr>,
}

impl SimServer {
    /// The TCP address it listens on.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Service {
    device: SimDevice,
}

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let device = self.device.clone();
        Box::pin(async move {
            {
                let units = lock(&device.inner.units);
                if !units.is_empty() && !units.contains(&req.slave) {
                    // Not our unit: on a shared line, another device answers.
                    return Ok(None);
                }
            }
            let count = device.inner.requests.fetch_add(1, Ordering::Relaxed) + 1;
            device.inner.arrived.send_replace(count);
            let arrived = std::time::Instant::now();
            let (delay, silent) = {
                let f = lock(&device.inner.faults);
                (f.delay, f.silent)
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let answered = (!silent).then(std::time::Instant::now);
            device.record(|t| t.requests.push((arrived, answered)));
            if silent {
                return Ok(None);
            }
            device.answer(&req.request).map(Some)
        })
    }
}

/// A TCP stream that closes when the device's epoch moves on, and can garble answers.
struct Killable {
    stream: TcpStream,
    device: SimDevice,
    epoch: u64,
}

impl Killable {
    fn killed(&self) -> bool {
        self.device.inner.epoch.load(Ordering::SeqCst) != self.epoch
    }
}

impl AsyncRead for Killable {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if self.killed() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped by the simulated device",
            )));
        }
        r
    }
}

impl AsyncWrite for Killable {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection dropped by the simulated device",
            )));
        }
        if lock(&self.device.inner.faults).garbage {
            let junk: Vec<u8> = buf.iter().map(|b| b ^ 0x5A).collect();
            return Pin::new(&mut self.stream).poll_write(cx, &junk);
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
