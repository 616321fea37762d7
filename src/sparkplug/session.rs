//! The Sparkplug B edge node session: connect with the NDEATH Will, births,
//! store and forward, data by exception, device deaths and rebirths,
//! commands, the primary host's STATE, and the position in the outbox.
//!
//! Delivery rules:
//! - Births and data are QoS 0. A data message is confirmed once the broker
//!   answered a packet sent after it on the same connection (PINGRESP,
//!   UNSUBACK of a confirmation probe, SUBACK, PUBACK): the broker handles a
//!   connection's packets in order. Only then does the Sparkplug position
//!   move past the outbox rows it carried (`feed::advance`).
//! - Every connection reads the outbox from the position on: whatever was
//!   sent but not confirmed goes again, after the births, as historical.
//! - A point is historical when it was polled before its device's last
//!   DBIRTH; a device's rows that arrive while it is dead wait in memory for
//!   its next DBIRTH.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, Outgoing, QoS};
use srad_types::payload::{DataType, Metric};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::feed;
use super::payload;
use super::target::Target;
use crate::clock::unix_ms;
use crate::config_requests::{Channel, ConfigRequest};
use crate::gateway::Gateway;
use crate::modbus::Backoff;
use crate::model::Config;
use crate::mqtt::connect;
use crate::store::OutboxMessage;
use crate::uplink_status::MqttStatus;
use crate::wire::Status;

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// At shutdown: how long to wait for the NDEATH's PUBACK.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Outbox messages read at a time.
const BATCH: usize = 64;
/// Capacity of the request channel to the event loop.
const CHANNEL_CAPACITY: usize = 256;
/// Events handled per wake-up.
const EVENT_BATCH: usize = 512;
/// How often the devices' poll cycles are looked at (DDEATH, DBIRTH): not
/// more often than the usual poll interval.
const DEVICE_CHECK: Duration = Duration::from_secs(1);

type EventResult = Result<Event, ConnectionError>;

/// State that outlives a connection.
#[derive(Default)]
struct Keep {
    /// The newest `online` STATE timestamp of the primary host.
    last_online: Option<u64>,
}

enum End {
    Shutdown,
    /// `[sparkplug]` changed, or the primary host went offline: connect
    /// again at once (with a new bdSeq).
    Reconnect,
    Lost {
        connected_for: Duration,
    },
}

/// The Sparkplug task: one connection after another until `cancel`.
pub(crate) async fn run(
    gateway: Gateway,
    mut reloads: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let status = gateway.sparkplug.clone();
    let mut keep = Keep::default();
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP);
    reloads.borrow_and_update();
    loop {
        let Some(target) = Target::of(&gateway.config()) else {
            status.enabled.store(false, Ordering::Relaxed);
            tokio::select! {
                () = cancel.cancelled() => return,
                r = reloads.changed() => {
                    if r.is_err() {
                        cancel.cancelled().await;
                        return;
                    }
                    continue;
                }
            }
        };
        status.enabled.store(true, Ordering::Relaxed);
        status
            .backlog
            .store(feed::backlog(&gateway), Ordering::Relaxed);
        let wait = match setup(&gateway, &target).await {
            Ok((bd_seq, options)) => {
                let end = Session::start(&gateway, &status, &mut keep, target, bd_seq, options)
                    .run(&mut reloads, &cancel)
                    .await;
                match end {
                    End::Shutdown => return,
                    End::Reconnect => {
                        backoff.reset();
                        continue;
                    }
                    End::Lost { connected_for } => {
                        if connected_for >= STABLE_CONNECTION {
                            backoff.reset();
                        }
                        backoff.fail()
                    }
                }
            }
            Err(text) => {
                status.connect_errors.fetch_add(1, Ordering::Relaxed);
                status.set_error(text.clone());
                let wait = backoff.fail();
                tracing::error!(error = %text, retry_in = ?wait, "sparkplug: cannot connect");
                wait
            }
        };
        status
            .backlog
            .store(feed::backlog(&gateway), Ordering::Relaxed);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
            r = reloads.changed() => {
                if r.is_ok() {
                    backoff.reset();
                }
            }
        }
    }
}

/// The next bdSeq (persisted first) and the options of a connection whose
/// Will is the NDEATH carrying it.
async fn setup(gateway: &Gateway, target: &Target) -> Result<(u8, rumqttc::MqttOptions), String> {
    let mut options = connect::client_options(&target.conn, &target.client_id)
        .map_err(|e| format!("sparkplug set-up failed: {e}"))?;
    let bd_seq = feed::next_bd_seq(gateway)
        .await
        .map_err(|e| format!("cannot persist the next bdSeq: {e}"))?;
    options.set_clean_session(true);
    let will = payload::encode(&payload::ndeath(bd_seq, unix_ms_u64()));
    options.set_last_will(LastWill::new(
        target.node_topic("NDEATH"),
        will,
        QoS::AtLeastOnce,
        false,
    ));
    options.set_request_channel_capacity(CHANNEL_CAPACITY);
    Ok((bd_seq, options))
}

fn unix_ms_u64() -> u64 {
    u64::try_from(unix_ms()).unwrap_or(0)
}

/// An item as a metric of its device.
struct ItemMeta {
    alias: u64,
    datatype: DataType,
    /// The item's heartbeat in seconds: an unchanged value is sent again
    /// after this long.
    heartbeat: Option<i64>,
}

/// A device's items and what the session has told of it.
struct Device {
    spec: Arc<crate::model::HostSpec>,
    items: Vec<ItemMeta>,
    by_key: HashMap<String, usize>,
    /// DBIRTH sent and no DDEATH since.
    born: bool,
    /// When its last DBIRTH was built (ms): older points are historical.
    birth_ms: u64,
    /// Poll cycles seen.
    polls: u64,
    /// Last value sent per item: live data and historical data apart.
    live: LastSent,
    hist: LastSent,
    /// Rows read while it was not born, for after its DBIRTH.
    held: Vec<OutboxMessage>,
}

/// The clock and value last sent of each item, by the item's index.
#[derive(Default)]
struct LastSent(Vec<Option<(i64, f64)>>);

impl LastSent {
    fn get(&self, i: usize) -> Option<(i64, f64)> {
        self.0.get(i).copied().flatten()
    }

    fn insert(&mut self, i: usize, sent: (i64, f64)) {
        if self.0.len() <= i {
            self.0.resize(i + 1, None);
        }
        self.0[i] = Some(sent);
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// An outbox row read on this connection, until it is confirmed.
struct Row {
    seq: u64,
    /// Waits for its device's DBIRTH.
    held: bool,
    /// The number of publishes that must have been written (and then
    /// answered) for the row to count as delivered.
    index: u64,
}

/// A message waiting for room in the request channel.
struct Out {
    topic: String,
    payload: Vec<u8>,
}

struct Session<'a> {
    gateway: &'a Gateway,
    status: &'a MqttStatus,
    keep: &'a mut Keep,
    target: Target,
    bd_seq: u8,
    client: AsyncClient,
    events: mpsc::Receiver<EventResult>,
    poller: tokio::task::JoinHandle<()>,
    /// The next message's seq.
    seq: u8,
    /// NBIRTH sent on this connection.
    born: bool,
    out: VecDeque<Out>,
    /// Publishes handed to the client, written to the connection, and
    /// confirmed by an answer that came after them.
    handed: u64,
    written: u64,
    confirmed: u64,
    /// Packet id -> publishes written before it.
    marks: HashMap<u16, u64>,
    ping_mark: Option<u64>,
    probe_out: bool,
    rows: VecDeque<Row>,
    /// The last row read.
    cursor: u64,
    more: bool,
    retry_at: Option<tokio::time::Instant>,
    devices: BTreeMap<String, Device>,
    by_alias: HashMap<u64, (String, usize)>,
    /// DCMD writes whose outcome is awaited: (host, item index).
    pending_writes: Vec<(String, usize)>,
    closing: bool,
}

impl<'a> Session<'a> {
    fn start(
        gateway: &'a Gateway,
        status: &'a MqttStatus,
        keep: &'a mut Keep,
        target: Target,
        bd_seq: u8,
        options: rumqttc::MqttOptions,
    ) -> Session<'a> {
        let (client, eventloop) = AsyncClient::new(options, CHANNEL_CAPACITY);
        let (tx, events) = mpsc::channel(EVENT_BATCH);
        let poller = tokio::spawn(poll_events(eventloop, tx));
        let cursor = feed::position(gateway);
        let mut s = Session {
            gateway,
            status,
            keep,
            target,
            bd_seq,
            client,
            events,
            poller,
            seq: 0,
            born: false,
            out: VecDeque::new(),
            handed: 0,
            written: 0,
            confirmed: 0,
            marks: HashMap::new(),
            ping_mark: None,
            probe_out: false,
            rows: VecDeque::new(),
            cursor,
            more: true,
            retry_at: None,
            devices: BTreeMap::new(),
            by_alias: HashMap::new(),
            pending_writes: Vec::new(),
            closing: false,
        };
        s.build_devices(&gateway.config());
        s
    }

    /// The devices and their metrics from the config; aliases are unique
    /// across the node (1, 2, ... in config order). Rows held for a device
    /// that stays are kept.
    fn build_devices(&mut self, config: &Config) {
        let mut old = std::mem::take(&mut self.devices);
        self.by_alias.clear();
        let mut alias = 0u64;
        for spec in &config.hosts {
            let mut items = Vec::with_capacity(spec.items.len());
            let mut by_key = HashMap::with_capacity(spec.items.len());
            for (i, item) in spec.items.iter().enumerate() {
                alias += 1;
                items.push(ItemMeta {
                    alias,
                    datatype: payload::datatype(item),
                    heartbeat: item
                        .heartbeat()
                        .map(|h| i64::try_from(h.as_secs()).unwrap_or(i64::MAX)),
                });
                by_key.insert(item.key.clone(), i);
                self.by_alias.insert(alias, (spec.host.clone(), i));
            }
            let held = old.remove(&spec.host).map(|d| d.held).unwrap_or_default();
            self.devices.insert(
                spec.host.clone(),
                Device {
                    spec: spec.clone(),
                    items,
                    by_key,
                    born: false,
                    birth_ms: 0,
                    polls: 0,
                    live: LastSent::default(),
                    hist: LastSent::default(),
                    held,
                },
            );
        }
        // Rows of devices gone from the config are no longer waited for.
        for (_, gone) in old {
            for m in gone.held {
                self.release_row(m.seq);
            }
        }
    }

    async fn run(mut self, reloads: &mut watch::Receiver<u64>, cancel: &CancellationToken) -> End {
        let end = self.connected(reloads, cancel).await;
        self.finish();
        end
    }

    async fn connected(
        &mut self,
        reloads: &mut watch::Receiver<u64>,
        cancel: &CancellationToken,
    ) -> End {
        let url = self.target.conn.url.clone();
        let first = tokio::select! {
            () = cancel.cancelled() => return End::Shutdown,
            ev = self.events.recv() => ev,
        };
        match first {
            Some(Ok(Event::Incoming(Incoming::ConnAck(_)))) => {}
            Some(Err(e)) => {
                self.status.connect_errors.fetch_add(1, Ordering::Relaxed);
                let text = connect::describe(&e, &url);
                self.status.set_error(text.clone());
                tracing::warn!(error = %text, "sparkplug: cannot connect");
                return End::Lost {
                    connected_for: Duration::ZERO,
                };
            }
            other => {
                self.status.connect_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event = ?other, "sparkplug: unexpected first event");
                return End::Lost {
                    connected_for: Duration::ZERO,
                };
            }
        }
        let since = Instant::now();
        let s = self.status;
        s.connected.store(true, Ordering::Relaxed);
        s.connected_since
            .store(crate::clock::unix_now(), Ordering::Relaxed);
        s.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(url = %url, group = %self.target.group_id, node = %self.target.edge_node_id, bd_seq = self.bd_seq, "sparkplug: connected");
        self.subscribe();
        if self.target.primary_host_id.is_none() {
            self.birth();
        }
        let mut commits = self.gateway.store.commits();
        let mut writes = self.gateway.writes.subscribe();
        let (mut commits_open, mut writes_open, mut reloads_open) = (true, true, true);
        // Devices are looked at when a commit comes less than half a
        // DEVICE_CHECK before the check is due (no wake-up of its own while
        // data flows), else when it is due.
        let check = tokio::time::sleep(DEVICE_CHECK);
        tokio::pin!(check);
        loop {
            self.pump().await;
            self.advance();
            self.probe();
            self.status
                .backlog
                .store(feed::backlog(self.gateway), Ordering::Relaxed);
            self.status
                .inflight
                .store(self.handed - self.confirmed, Ordering::Relaxed);
            let retry_at = self.retry_at;
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    self.close().await;
                    return End::Shutdown;
                }
                r = reloads.changed(), if reloads_open => {
                    if r.is_err() {
                        reloads_open = false;
                        continue;
                    }
                    let config = self.gateway.config();
                    if Target::of(&config).as_ref() != Some(&self.target) {
                        tracing::info!("sparkplug: [sparkplug] changed; reconnecting");
                        self.close().await;
                        return End::Reconnect;
                    }
                    self.build_devices(&config);
                    if self.born {
                        self.birth();
                    }
                }
                ev = self.events.recv() => {
                    let mut ev = ev;
                    for _ in 0..EVENT_BATCH {
                        match ev {
                            Some(Ok(event)) => {
                                if let Some(end) = self.on_event(event).await {
                                    return end;
                                }
                            }
                            Some(Err(e)) => return self.lost(&e, since),
                            None => {
                                tracing::warn!("sparkplug: event loop ended");
                                return End::Lost { connected_for: since.elapsed() };
                            }
                        }
                        match self.events.try_recv() {
                            Ok(next) => ev = Some(next),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => ev = None,
                        }
                    }
                }
                r = commits.changed(), if commits_open && !self.more => {
                    commits_open = r.is_ok();
                    self.more = true;
                    self.look_if_due(check.as_mut(), DEVICE_CHECK / 2);
                }
                r = writes.changed(), if writes_open && !self.pending_writes.is_empty() => {
                    writes_open = r.is_ok();
                    self.check_writes();
                }
                () = &mut check => self.look_if_due(check.as_mut(), Duration::ZERO),
                () = sleep_until(retry_at), if retry_at.is_some() => {
                    self.retry_at = None;
                    self.more = true;
                }
            }
        }
    }

    /// Looks at the devices and the pending writes if `check` is due
    /// within `slack`, and sets it DEVICE_CHECK from now.
    fn look_if_due(&mut self, check: std::pin::Pin<&mut tokio::time::Sleep>, slack: Duration) {
        let now = tokio::time::Instant::now();
        if now + slack >= check.deadline() {
            check.reset(now + DEVICE_CHECK);
            self.check_devices();
            self.check_writes();
        }
    }

    fn lost(&mut self, e: &ConnectionError, since: Instant) -> End {
        let text = connect::describe(e, &self.target.conn.url);
        self.status.set_error(text.clone());
        tracing::warn!(error = %text, "sparkplug: connection lost");
        End::Lost {
            connected_for: since.elapsed(),
        }
    }

    fn finish(&mut self) {
        self.advance();
        self.poller.abort();
        let s = self.status;
        s.connected.store(false, Ordering::Relaxed);
        s.connected_since.store(0, Ordering::Relaxed);
        s.inflight.store(0, Ordering::Relaxed);
        s.backlog
            .store(feed::backlog(self.gateway), Ordering::Relaxed);
    }

    fn subscribe(&mut self) {
        let mut filters = vec![
            self.target.node_topic("NCMD"),
            format!("{}/+", self.target.node_topic("DCMD")),
        ];
        filters.extend(self.target.state_topic());
        for f in filters {
            if let Err(e) = self.client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                tracing::error!(topic = %f, error = %e, "sparkplug: cannot subscribe");
            }
        }
    }

    fn next_seq(&mut self) -> u8 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        s
    }

    fn push(&mut self, topic: String, payload: Vec<u8>) {
        self.out.push_back(Out { topic, payload });
    }

    /// NBIRTH (seq 0) and a DBIRTH for every device whose link is not down.
    fn birth(&mut self) {
        let now = unix_ms_u64();
        self.seq = 0;
        let nbirth = payload::nbirth(self.bd_seq, now);
        self.seq = 1;
        self.push(self.target.node_topic("NBIRTH"), payload::encode(&nbirth));
        self.born = true;
        tracing::info!(bd_seq = self.bd_seq, "sparkplug: NBIRTH");
        let running = self.gateway.running();
        let hosts: Vec<String> = self.devices.keys().cloned().collect();
        for host in hosts {
            // Born once a poll cycle reached it: its DBIRTH carries values.
            // Until then (start-up, link down) the device check watches it.
            let (polls, up) = match running.hosts.get(&host) {
                Some(live) => {
                    let live = live.lock();
                    (live.polls, live.polls > 0 && live.link_up)
                }
                None => (0, false),
            };
            if let Some(d) = self.devices.get_mut(&host) {
                d.polls = polls;
                d.born = false;
            }
            if up {
                self.dbirth(&host);
            }
        }
    }

    /// A device's DBIRTH with every item's current value, then the rows
    /// held for it.
    fn dbirth(&mut self, host: &str) {
        let now = unix_ms_u64();
        let live = self.gateway.running().hosts.get(host).cloned();
        let seq = self.seq;
        let Some(d) = self.devices.get_mut(host) else {
            return;
        };
        let mut metrics = Vec::with_capacity(d.items.len());
        d.live.clear();
        d.hist.clear();
        {
            let live = live.as_ref().map(|l| l.lock());
            for (i, item) in d.spec.items.iter().enumerate() {
                let current = live
                    .as_ref()
                    .and_then(|l| l.items.get(i))
                    .and_then(|l| Some((l.clock?, l.value?)));
                if let Some(c) = current {
                    d.live.insert(i, c);
                }
                metrics.push(payload::birth_metric(item, d.items[i].alias, current, now));
            }
        }
        d.born = true;
        d.birth_ms = now;
        let held = std::mem::take(&mut d.held);
        self.seq = seq.wrapping_add(1);
        let p = payload::with_seq(metrics, seq, now);
        self.push(
            self.target.device_topic("DBIRTH", host),
            payload::encode(&p),
        );
        tracing::info!(host, "sparkplug: DBIRTH");
        for m in held {
            self.data_row(&m);
            let index = self.handed + self.out.len() as u64;
            if let Ok(i) = self.rows.binary_search_by_key(&m.seq, |r| r.seq) {
                self.rows[i].held = false;
                self.rows[i].index = index;
            }
        }
    }

    fn ddeath(&mut self, host: &str) {
        let now = unix_ms_u64();
        let seq = self.next_seq();
        let p = payload::with_seq(Vec::new(), seq, now);
        self.push(
            self.target.device_topic("DDEATH", host),
            payload::encode(&p),
        );
        tracing::info!(host, "sparkplug: DDEATH");
    }

    /// A row's points as one DDATA (if any point is to be sent): by
    /// exception per item (an unchanged value only after its heartbeat),
    /// historical when polled before the device's DBIRTH, in clock order.
    fn data_row(&mut self, m: &OutboxMessage) {
        let Some(d) = self.devices.get_mut(&m.host) else {
            return;
        };
        let mut metrics: Vec<Metric> = Vec::new();
        // Rows list their items in config order: most keys are found where
        // the previous one was, without hashing.
        let mut guess = 0;
        for (key, points) in &m.items {
            let i = match d.spec.items.get(guess) {
                Some(item) if item.key == *key => guess,
                _ => match d.by_key.get(key) {
                    Some(&i) => i,
                    None => continue,
                },
            };
            guess = i + 1;
            let meta = &d.items[i];
            for &(clock, v) in points {
                let historical = payload::clock_ms(clock) < d.birth_ms;
                let last = if historical { &mut d.hist } else { &mut d.live };
                let send = match last.get(i) {
                    None => true,
                    Some((lc, lv)) => {
                        lv != v
                            || meta
                                .heartbeat
                                .is_some_and(|h| clock.saturating_sub(lc) >= h)
                    }
                };
                if send {
                    last.insert(i, (clock, v));
                    metrics.push(payload::data_metric(
                        meta.alias,
                        meta.datatype,
                        clock,
                        v,
                        historical,
                    ));
                }
            }
        }
        if metrics.is_empty() {
            return;
        }
        metrics.sort_by_key(|m| m.timestamp);
        let samples = metrics.len() as u64;
        let seq = self.next_seq();
        let p = payload::with_seq(metrics, seq, unix_ms_u64());
        self.push(
            self.target.device_topic("DDATA", &m.host),
            payload::encode(&p),
        );
        self.status.data_messages.fetch_add(1, Ordering::Relaxed);
        self.status
            .data_samples
            .fetch_add(samples, Ordering::Relaxed);
    }

    /// A row read: sent as DDATA, or held while its device is not born.
    fn take_row(&mut self, m: OutboxMessage) {
        self.cursor = m.seq;
        let held = self.devices.get(&m.host).is_some_and(|d| !d.born);
        if held {
            self.rows.push_back(Row {
                seq: m.seq,
                held: true,
                index: 0,
            });
            if let Some(d) = self.devices.get_mut(&m.host) {
                d.held.push(m);
            }
            return;
        }
        self.data_row(&m);
        let index = self.handed + self.out.len() as u64;
        self.rows.push_back(Row {
            seq: m.seq,
            held: false,
            index,
        });
    }

    fn release_row(&mut self, seq: u64) {
        let index = self.handed + self.out.len() as u64;
        if let Ok(i) = self.rows.binary_search_by_key(&seq, |r| r.seq) {
            self.rows[i].held = false;
            self.rows[i].index = index;
        }
    }

    /// Hands queued messages to the client, reading more rows while there
    /// is room.
    async fn pump(&mut self) {
        if self.closing {
            return;
        }
        loop {
            while let Some(o) = self.out.front() {
                if self
                    .client
                    .try_publish(
                        o.topic.as_str(),
                        QoS::AtMostOnce,
                        false,
                        o.payload.as_slice(),
                    )
                    .is_err()
                {
                    return;
                }
                self.out.pop_front();
                self.handed += 1;
            }
            if !self.born || !self.more || self.retry_at.is_some() {
                return;
            }
            match feed::read(self.gateway, self.cursor, BATCH).await {
                Ok(messages) => {
                    self.more = messages.len() >= BATCH;
                    for m in messages {
                        self.take_row(m);
                    }
                }
                Err(e) => {
                    let text = format!("cannot read the outbox: {e}");
                    self.status.set_error(text.clone());
                    tracing::error!("sparkplug: {text}; retrying in 1s");
                    self.retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                    return;
                }
            }
        }
    }

    /// Moves the position past the rows confirmed in order.
    fn advance(&mut self) {
        let mut last = None;
        while let Some(r) = self.rows.front() {
            if r.held || r.index > self.confirmed {
                break;
            }
            last = Some(r.seq);
            self.rows.pop_front();
        }
        if let Some(seq) = last {
            feed::advance(self.gateway, seq);
        }
    }

    /// Asks the broker for an answer that confirms what was written so far
    /// (the UNSUBACK of a filter never subscribed), one at a time.
    fn probe(&mut self) {
        if self.probe_out || self.closing {
            return;
        }
        let waiting = self
            .rows
            .front()
            .is_some_and(|r| !r.held && r.index > self.confirmed && r.index <= self.handed);
        if !waiting {
            return;
        }
        let filter = format!("{}/confirm", self.target.node_topic("NCMD"));
        if self.client.try_unsubscribe(filter).is_ok() {
            self.probe_out = true;
        }
    }

    fn confirm(&mut self, mark: u64) {
        if mark > self.confirmed {
            self.status
                .published
                .fetch_add(mark - self.confirmed, Ordering::Relaxed);
            self.confirmed = mark;
        }
    }

    async fn on_event(&mut self, event: Event) -> Option<End> {
        match event {
            Event::Incoming(Incoming::Publish(p)) => {
                if self.closing {
                    return None;
                }
                self.on_message(&p.topic, &p.payload).await
            }
            other => {
                self.track(&other);
                None
            }
        }
    }

    /// Packets written and answers received: what they confirm.
    fn track(&mut self, event: &Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                self.written += 1;
                if *pkid != 0 {
                    self.marks.insert(*pkid, self.written);
                }
            }
            Event::Outgoing(Outgoing::Subscribe(pkid) | Outgoing::Unsubscribe(pkid)) => {
                self.marks.insert(*pkid, self.written);
            }
            Event::Outgoing(Outgoing::PingReq) => self.ping_mark = Some(self.written),
            Event::Incoming(Incoming::PingResp) => {
                if let Some(mark) = self.ping_mark.take() {
                    self.confirm(mark);
                }
            }
            Event::Incoming(Incoming::UnsubAck(a)) => {
                self.probe_out = false;
                if let Some(mark) = self.marks.remove(&a.pkid) {
                    self.confirm(mark);
                }
            }
            Event::Incoming(Incoming::SubAck(a)) => {
                if a.return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    let text = "the broker refused a subscription of the Sparkplug node (check its ACL): commands or the primary host's STATE will not arrive".to_string();
                    self.status.set_error(text.clone());
                    tracing::error!("sparkplug: {text}");
                }
                if let Some(mark) = self.marks.remove(&a.pkid) {
                    self.confirm(mark);
                }
            }
            Event::Incoming(Incoming::PubAck(a)) => {
                if let Some(mark) = self.marks.remove(&a.pkid) {
                    self.confirm(mark);
                }
            }
            _ => {}
        }
    }

    async fn on_message(&mut self, topic: &str, bytes: &[u8]) -> Option<End> {
        if Some(topic) == self.target.state_topic().as_deref() {
            return self.on_state(bytes).await;
        }
        self.status.commands.fetch_add(1, Ordering::Relaxed);
        if topic == self.target.node_topic("NCMD") {
            match payload::decode(bytes) {
                Some(p) if payload::asks_rebirth(&p) => {
                    if self.born {
                        tracing::info!("sparkplug: rebirth asked");
                        self.birth();
                    }
                }
                Some(_) => tracing::info!(topic, "sparkplug: NCMD without a rebirth ignored"),
                None => {
                    tracing::warn!(topic, "sparkplug: NCMD is not a Sparkplug payload; ignored")
                }
            }
            return None;
        }
        let prefix = format!("{}/", self.target.node_topic("DCMD"));
        if let Some(device) = topic.strip_prefix(&prefix) {
            self.on_dcmd(device, bytes).await;
        }
        None
    }

    /// The primary host's STATE: NBIRTH once it is online; NDEATH and a new
    /// connection when it goes offline (an offline older than the last
    /// online is ignored).
    async fn on_state(&mut self, bytes: &[u8]) -> Option<End> {
        #[derive(serde::Deserialize)]
        struct State {
            online: bool,
            #[serde(default)]
            timestamp: u64,
        }
        let state: State = match serde_json::from_slice(bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "sparkplug: primary host STATE is not {{\"online\",\"timestamp\"}}; ignored");
                return None;
            }
        };
        if state.online {
            self.keep.last_online = Some(self.keep.last_online.unwrap_or(0).max(state.timestamp));
            if !self.born {
                tracing::info!("sparkplug: primary host online");
                self.birth();
            }
            return None;
        }
        if self
            .keep
            .last_online
            .is_some_and(|online| state.timestamp < online)
        {
            tracing::info!("sparkplug: an offline STATE older than the last online one ignored");
            return None;
        }
        if !self.born {
            return None;
        }
        tracing::warn!("sparkplug: primary host offline; NDEATH and a new session");
        self.close().await;
        Some(End::Reconnect)
    }

    /// DCMD: every metric that sets a configurable item is a config request.
    async fn on_dcmd(&mut self, device: &str, bytes: &[u8]) {
        let Some(p) = payload::decode(bytes) else {
            tracing::warn!(
                device,
                "sparkplug: DCMD is not a Sparkplug payload; ignored"
            );
            return;
        };
        for m in &p.metrics {
            let Some(d) = self.devices.get(device) else {
                tracing::warn!(device, "sparkplug: DCMD for an unknown device ignored");
                return;
            };
            let by_alias = m
                .alias
                .and_then(|a| self.by_alias.get(&a))
                .filter(|(h, _)| h == device)
                .map(|(_, i)| *i);
            let index = by_alias.or_else(|| m.name.as_ref().and_then(|n| d.by_key.get(n).copied()));
            let Some(i) = index else {
                tracing::warn!(device, name = ?m.name, alias = ?m.alias, "sparkplug: DCMD for an unknown metric ignored");
                continue;
            };
            let item = &d.spec.items[i];
            if !item.configurable {
                tracing::warn!(device, key = %item.key, "sparkplug: DCMD for a sensor ignored");
                continue;
            }
            let Some(target) = m
                .value
                .as_ref()
                .and_then(|v| payload::command_value(d.items[i].datatype, v))
            else {
                tracing::warn!(device, key = %item.key, "sparkplug: DCMD with a value of the wrong type ignored");
                continue;
            };
            let request = ConfigRequest {
                host: device.to_string(),
                key: item.key.clone(),
                target,
                expected: None,
                audit: Vec::new(),
                id: None,
            };
            let key = item.key.clone();
            match self
                .gateway
                .writes
                .submit(request, Channel::Sparkplug)
                .await
            {
                Ok(_) => {
                    tracing::info!(device, key = %key, target, "sparkplug: DCMD recorded as a config request");
                    self.pending_writes.push((device.to_string(), i));
                }
                Err(e) => {
                    tracing::warn!(device, key = %key, error = %e, "sparkplug: DCMD refused");
                }
            }
        }
    }

    /// Writes asked by DCMD that are done: DDATA of the value read back.
    fn check_writes(&mut self) {
        if self.pending_writes.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending_writes);
        let running = self.gateway.running();
        for (host, i) in pending {
            let Some(d) = self.devices.get(&host) else {
                continue;
            };
            let Some(item) = d.spec.items.get(i) else {
                continue;
            };
            let done = self
                .gateway
                .writes
                .config_of(&host, &item.key)
                .is_some_and(|c| c.status != Status::Pending);
            if !done {
                self.pending_writes.push((host, i));
                continue;
            }
            let current = running.hosts.get(&host).and_then(|l| {
                l.lock()
                    .items
                    .get(i)
                    .and_then(|l| Some((l.clock?, l.value?)))
            });
            let Some((clock, v)) = current else {
                continue;
            };
            let Some(d) = self.devices.get_mut(&host) else {
                continue;
            };
            if !d.born || !self.born {
                continue;
            }
            let meta = &d.items[i];
            d.live.insert(i, (clock, v));
            let metric = payload::data_metric(meta.alias, meta.datatype, clock, v, false);
            let seq = self.next_seq();
            let p = payload::with_seq(vec![metric], seq, unix_ms_u64());
            self.push(
                self.target.device_topic("DDATA", &host),
                payload::encode(&p),
            );
        }
    }

    /// DDEATH after a failed poll cycle, DBIRTH after the next good one.
    fn check_devices(&mut self) {
        if !self.born {
            return;
        }
        let running = self.gateway.running();
        let mut deaths = Vec::new();
        let mut births = Vec::new();
        for (host, d) in &mut self.devices {
            let Some(live) = running.hosts.get(host) else {
                continue;
            };
            let (polls, up) = {
                let l = live.lock();
                (l.polls, l.link_up)
            };
            if polls == d.polls {
                continue;
            }
            d.polls = polls;
            if !up && d.born {
                d.born = false;
                deaths.push(host.clone());
            } else if up && !d.born {
                births.push(host.clone());
            }
        }
        for host in deaths {
            self.ddeath(&host);
        }
        for host in births {
            self.dbirth(&host);
        }
    }

    /// Clean end: NDEATH (QoS 1; its PUBACK confirms what went before),
    /// then disconnect.
    async fn close(&mut self) {
        self.closing = true;
        // Rows whose messages were never handed over are not confirmed by
        // anything that follows.
        for r in &mut self.rows {
            if r.index > self.handed {
                r.index = u64::MAX;
            }
        }
        self.out.clear();
        let p = payload::ndeath(self.bd_seq, unix_ms_u64());
        let sent = self
            .client
            .try_publish(
                self.target.node_topic("NDEATH"),
                QoS::AtLeastOnce,
                false,
                payload::encode(&p),
            )
            .is_ok();
        if sent {
            self.handed += 1;
            let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
            while self.confirmed < self.handed {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Ok(Some(Ok(event))) => self.track(&event),
                    _ => break,
                }
            }
        }
        self.advance();
        if self.client.try_disconnect().is_ok() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.events.recv()).await
            {
            }
        }
        tracing::info!(
            bd_seq = self.bd_seq,
            "sparkplug: NDEATH published, disconnected"
        );
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Polls one connection's event loop until it fails or nobody listens.
async fn poll_events(mut eventloop: EventLoop, tx: mpsc::Sender<EventResult>) {
    loop {
        let r = eventloop.poll().await;
        let failed = r.is_err();
        if tx.send(r).await.is_err() || failed {
            return;
        }
    }
}
