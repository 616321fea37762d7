//! The broker connection: connect, publish, track PUBACKs, answer commands,
//! reconnect.
//!
//! Delivery rules:
//! - Every connection gets a fresh rumqttc event loop, polled by its own task
//!   that forwards events here (the event loop is never cancelled mid-write).
//!   When a connection ends, its event loop and everything it had not seen
//!   acknowledged are dropped; rumqttc never retransmits on its own. The rows
//!   stay in the database and the next connection sends them again, from the
//!   lowest unacknowledged one, with the same `seq` and payload.
//! - A row leaves the database (`mark_sent`, `uplink_done`) only at the PUBACK
//!   of the packet that carried it ([`Window`]).
//! - At most [`WINDOW`] messages are between `publish()` and PUBACK.
//! - Downlink commands are acknowledged after they were carried out or
//!   refused, so a crash in between gets them delivered again.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, Outgoing, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::connect::{self, CHANNEL_CAPACITY, MAX_OUTGOING_PACKET, WINDOW};
use super::downlink::{self, Outcome, COMMAND_TOPICS, DATASET_TOPIC, MAX_RESEND_POINTS};
use super::window::{Tag, Window};
use super::MqttStatus;
use crate::clock::unix_now;
use crate::gateway::Gateway;
use crate::modbus::Backoff;
use crate::model::{Config, MqttSpec};
use crate::remote::{Refusal, Remote};

/// A deployment carried out off the runtime: its command and the outcome.
type Deployed = (Publish, Result<(), Refusal>);

/// First reconnect delay; doubles per failure up to [`BACKOFF_CAP`] (with jitter).
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// A connection that lasted this long resets the backoff.
const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// At shutdown: how long to wait for messages in flight, then for the offline status.
pub(super) const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Resend messages queued at most (points); more is refused until they are out.
const MAX_RESEND_QUEUED: u64 = 2 * MAX_RESEND_POINTS;
/// Events handled per wake-up before the window is refilled.
const EVENT_BATCH: usize = 512;
/// How often, at most, the Things' states are compared with what was
/// published: at a wake-up for anything else once this has passed...
const THING_STATE_CHECK: Duration = Duration::from_secs(1);
/// ...and at the latest after this, when nothing else woke the session (no
/// extra wake-ups while data flows).
const THING_STATE_IDLE_CHECK: Duration = Duration::from_secs(5);

/// Where the uplink goes: the `[mqtt]` section and the topic root.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    spec: MqttSpec,
    root: String,
}

impl Target {
    fn of(config: &Config) -> Option<Target> {
        Some(Target {
            spec: config.mqtt.clone()?,
            root: super::root(config)?,
        })
    }
}

/// State that outlives a connection.
#[derive(Default)]
struct Keep {
    /// Rows up to these were acknowledged or are about to be sent again.
    data_cursor: u64,
    uplink_cursor: u64,
    /// Resend messages not yet handed to a connection: (host, payload, points).
    resend: VecDeque<(String, String, u64)>,
    resend_points: u64,
    /// Hashes of recently handled commands, to drop the broker's redeliveries.
    recent: VecDeque<u64>,
    /// The next connection must start a clean session (why).
    purge: Option<String>,
    /// Rejections to publish once connected: (topic, error).
    rejections: Vec<(String, String)>,
}

enum End {
    Shutdown,
    /// `[mqtt]` changed: connect again at once with the new settings.
    Reconfigure,
    /// A clean session dropped the broker's queue; connect again at once.
    Purged,
    Lost {
        connected_for: Duration,
    },
}

/// The MQTT task: one connection after another until `cancel`.
pub(crate) async fn run(
    gateway: Gateway,
    remote: Remote,
    mut reloads: watch::Receiver<u64>,
    cancel: CancellationToken,
) {
    let status = gateway.mqtt.clone();
    let mut keep = Keep::default();
    let mut backoff = Backoff::new(BACKOFF_START, BACKOFF_CAP);
    reloads.borrow_and_update();
    loop {
        let Some(target) = Target::of(&gateway.config()) else {
            status.enabled.store(false, Ordering::Relaxed);
            update_backlog(&gateway, &status);
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
        let clean = keep.purge.is_some();
        let wait = match connect::options(&target.spec, &target.root, clean) {
            Ok(options) => {
                let end = Session::start(&gateway, &remote, &mut keep, target.clone(), options)
                    .run(&mut reloads, &cancel)
                    .await;
                match end {
                    End::Shutdown => return,
                    End::Reconfigure | End::Purged => {
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
            Err(e) => {
                status.connect_errors.fetch_add(1, Ordering::Relaxed);
                let text = format!("mqtt set-up failed: {e}");
                status.set_error(text.clone());
                let wait = backoff.fail();
                tracing::error!(error = %text, retry_in = ?wait, "mqtt: cannot connect");
                wait
            }
        };
        update_backlog(&gateway, &status);
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

fn update_backlog(gateway: &Gateway, status: &MqttStatus) {
    let backlog = gateway.store.outbox_len() + gateway.ledger.uplink_len();
    status.backlog.store(backlog, Ordering::Relaxed);
}

/// A message waiting for room in the window or the request channel.
struct Out {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    tag: Tag,
}

type EventResult = Result<Event, ConnectionError>;

/// One connection.
struct Session<'a> {
    gateway: &'a Gateway,
    remote: &'a Remote,
    /// Deployments under way report here; their command is acknowledged then.
    deployed_tx: mpsc::UnboundedSender<Deployed>,
    deployed: mpsc::UnboundedReceiver<Deployed>,
    status: &'a MqttStatus,
    keep: &'a mut Keep,
    target: Target,
    client: AsyncClient,
    events: mpsc::Receiver<EventResult>,
    poller: tokio::task::JoinHandle<()>,
    window: Window,
    /// Non-durable messages, sent ahead of durable ones.
    ctrl: VecDeque<Out>,
    /// Retained metadata still to publish, encoded as the window has room
    /// (after `ctrl`).
    meta: Option<super::upstream::Metadata>,
    /// Downlink messages to acknowledge.
    acks: VecDeque<Publish>,
    data_more: bool,
    uplink_more: bool,
    /// A database read failed: try again then.
    retry_at: Option<tokio::time::Instant>,
    closing: bool,
    acked_seqs: Vec<u64>,
    acked_ids: Vec<u64>,
    cleared_hosts: Vec<String>,
    thing_states: super::upstream::ThingStates,
}

impl<'a> Session<'a> {
    fn start(
        gateway: &'a Gateway,
        remote: &'a Remote,
        keep: &'a mut Keep,
        target: Target,
        options: rumqttc::MqttOptions,
    ) -> Session<'a> {
        let (client, eventloop) = AsyncClient::new(options, CHANNEL_CAPACITY);
        let (tx, events) = mpsc::channel(EVENT_BATCH);
        let poller = tokio::spawn(poll_events(eventloop, tx));
        let (deployed_tx, deployed) = mpsc::unbounded_channel();
        Session {
            gateway,
            remote,
            deployed_tx,
            deployed,
            status: &gateway.mqtt,
            keep,
            target,
            client,
            events,
            poller,
            window: Window::default(),
            ctrl: VecDeque::new(),
            meta: None,
            acks: VecDeque::new(),
            data_more: true,
            uplink_more: true,
            retry_at: None,
            closing: false,
            acked_seqs: Vec::new(),
            acked_ids: Vec::new(),
            cleared_hosts: Vec::new(),
            thing_states: Default::default(),
        }
    }

    async fn run(mut self, reloads: &mut watch::Receiver<u64>, cancel: &CancellationToken) -> End {
        let end = self.connected(reloads, cancel).await;
        self.finish().await;
        end
    }

    async fn connected(
        &mut self,
        reloads: &mut watch::Receiver<u64>,
        cancel: &CancellationToken,
    ) -> End {
        let url = self.target.spec.url.clone();
        let first = tokio::select! {
            () = cancel.cancelled() => return End::Shutdown,
            ev = self.events.recv() => ev,
        };
        let session_present = match first {
            Some(Ok(Event::Incoming(Incoming::ConnAck(ack)))) => ack.session_present,
            Some(Err(e)) => {
                self.status.connect_errors.fetch_add(1, Ordering::Relaxed);
                let text = connect::describe(&e, &url);
                self.status.set_error(text.clone());
                tracing::warn!(error = %text, "mqtt: cannot connect");
                return End::Lost {
                    connected_for: Duration::ZERO,
                };
            }
            other => {
                self.status.connect_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(event = ?other, "mqtt: unexpected first event");
                return End::Lost {
                    connected_for: Duration::ZERO,
                };
            }
        };
        if let Some(reason) = self.keep.purge.take() {
            tracing::warn!(
                "mqtt: started a clean session to drop an oversized downlink message; commands queued for the gateway while it was away are dropped with it"
            );
            self.keep.rejections.push((
                format!("{}/cmd/#", self.target.root),
                format!("{reason}; the broker's queue for this gateway was cleared"),
            ));
            let _ = self.client.try_disconnect();
            self.wait_poller().await;
            return End::Purged;
        }
        let since = Instant::now();
        let s = self.status;
        s.connected.store(true, Ordering::Relaxed);
        s.connected_since.store(unix_now(), Ordering::Relaxed);
        s.connects.fetch_add(1, Ordering::Relaxed);
        tracing::info!(url = %url, root = %self.target.root, session_present, "mqtt: connected");
        self.subscribe();
        let online = crate::wire::status::online(unix_now());
        self.push_ctrl("status", online.into_bytes(), true, Tag::Other);
        self.queue_hosts().await;
        for (topic, error) in std::mem::take(&mut self.keep.rejections) {
            self.reject(&topic, &error);
        }

        let mut commits = self.gateway.store.commits();
        let mut uplink_changes = self.gateway.ledger.uplink_changes();
        let (mut commits_open, mut uplink_open, mut reloads_open) = (true, true, true);
        let mut thing_checked = tokio::time::Instant::now();
        loop {
            if thing_checked.elapsed() >= THING_STATE_CHECK {
                thing_checked = tokio::time::Instant::now();
                self.queue_thing_changes();
            }
            self.pump().await;
            self.flush_releases().await;
            self.update_status();
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
                    if Target::of(&self.gateway.config()).as_ref() != Some(&self.target) {
                        tracing::info!("mqtt: [mqtt] changed; reconnecting");
                        self.close().await;
                        return End::Reconfigure;
                    }
                    self.queue_hosts().await;
                }
                ev = self.events.recv() => {
                    let mut ev = ev;
                    for _ in 0..EVENT_BATCH {
                        match ev {
                            Some(Ok(event)) => self.on_event(event).await,
                            Some(Err(e)) => return self.lost(&e, since),
                            None => {
                                tracing::warn!("mqtt: event loop ended");
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
                r = commits.changed(), if commits_open && !self.data_more => {
                    commits_open = r.is_ok();
                    self.data_more = true;
                }
                r = uplink_changes.changed(), if uplink_open && !self.uplink_more => {
                    uplink_open = r.is_ok();
                    self.uplink_more = true;
                }
                Some((p, outcome)) = self.deployed.recv() => {
                    if let Err(e) = outcome {
                        self.reject(&p.topic, &e.to_string());
                    }
                    self.acks.push_back(p);
                }
                () = tokio::time::sleep_until(thing_checked + THING_STATE_IDLE_CHECK) => {}
                () = sleep_until(retry_at), if retry_at.is_some() => {
                    self.retry_at = None;
                    self.data_more = true;
                    self.uplink_more = true;
                }
            }
        }
    }

    fn lost(&mut self, e: &ConnectionError, since: Instant) -> End {
        let text = connect::describe(e, &self.target.spec.url);
        if let ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(_),
        )) = e
        {
            self.keep.purge = Some(text.clone());
        }
        self.status.set_error(text.clone());
        tracing::warn!(error = %text, "mqtt: connection lost");
        End::Lost {
            connected_for: since.elapsed(),
        }
    }

    /// The connection is over (for whatever reason): forget what it had in
    /// flight and resume from the lowest unacknowledged row next time.
    async fn finish(&mut self) {
        self.flush_releases().await;
        let (seq, id) = self.window.abandon();
        if let Some(seq) = seq {
            self.keep.data_cursor = self.keep.data_cursor.min(seq.saturating_sub(1));
        }
        if let Some(id) = id {
            self.keep.uplink_cursor = self.keep.uplink_cursor.min(id.saturating_sub(1));
        }
        // Durable rows queued but not handed over are read again from the database.
        for out in &self.ctrl {
            match out.tag {
                Tag::Data { seq, .. } => {
                    self.keep.data_cursor = self.keep.data_cursor.min(seq.saturating_sub(1))
                }
                Tag::Uplink(id) => {
                    self.keep.uplink_cursor = self.keep.uplink_cursor.min(id.saturating_sub(1))
                }
                _ => {}
            }
        }
        self.poller.abort();
        let s = self.status;
        s.connected.store(false, Ordering::Relaxed);
        s.connected_since.store(0, Ordering::Relaxed);
        s.inflight.store(0, Ordering::Relaxed);
        update_backlog(self.gateway, s);
    }

    async fn wait_poller(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Some(Ok(event))) = tokio::time::timeout_at(deadline, self.events.recv()).await
        {
            self.on_event(event).await;
        }
        self.poller.abort();
    }

    /// Clean end of a connection: wait a little for durable messages in
    /// flight, publish the retained offline status, disconnect.
    async fn close(&mut self) {
        self.closing = true;
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        while self.window.has_durable() {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(event))) => self.on_event(event).await,
                _ => break,
            }
            self.flush_releases().await;
        }
        let offline = crate::wire::status::offline(unix_now());
        let topic = format!("{}/status", self.target.root);
        self.window.queue(Tag::Other);
        if self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, offline)
            .is_err()
        {
            self.window.unqueue_last();
        }
        let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
        while self.window.len() > 0 {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(Ok(event))) => self.on_event(event).await,
                _ => break,
            }
        }
        self.flush_releases().await;
        if self.client.try_disconnect().is_ok() {
            self.wait_poller().await;
        }
        tracing::info!(root = %self.target.root, "mqtt: disconnected (offline status published)");
    }

    fn subscribe(&mut self) {
        let filters = COMMAND_TOPICS
            .iter()
            .map(|t| SubscribeFilter::new(format!("{}/{t}", self.target.root), QoS::AtLeastOnce));
        if let Err(e) = self.client.try_subscribe_many(filters) {
            tracing::error!(error = %e, "mqtt: cannot subscribe to the command topics");
        }
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::Outgoing(Outgoing::Publish(pkid)) => self.window.on_outgoing(pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => self.window.on_await_ack(pkid),
            Event::Incoming(Incoming::PubAck(ack)) => {
                if let Some(tag) = self.window.on_puback(ack.pkid) {
                    self.release(tag);
                }
            }
            // While closing, commands are left unacknowledged: the broker
            // delivers them again on the next connection.
            Event::Incoming(Incoming::Publish(p)) if !self.closing => self.on_command(p).await,
            Event::Incoming(Incoming::SubAck(ack))
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure)) =>
            {
                let root = &self.target.root;
                let text = format!(
                    "the broker refused a subscription to {root}/cmd/... (check its ACL): no downlink commands will arrive"
                );
                self.status.set_error(text.clone());
                tracing::error!("mqtt: {text}");
            }
            _ => {}
        }
    }

    fn release(&mut self, tag: Tag) {
        let s = self.status;
        s.published.fetch_add(1, Ordering::Relaxed);
        match tag {
            Tag::Data {
                seq,
                points,
                newest,
            } => {
                self.acked_seqs.push(seq);
                s.data_messages.fetch_add(1, Ordering::Relaxed);
                s.data_samples.fetch_add(points, Ordering::Relaxed);
                let now_ms = crate::clock::unix_ms();
                let delay = now_ms.saturating_sub(newest.saturating_mul(1000)).max(0);
                s.record_delay(delay as u64);
            }
            Tag::Uplink(id) => {
                self.acked_ids.push(id);
                s.uplink_messages.fetch_add(1, Ordering::Relaxed);
            }
            Tag::ClearHost(topic) => self.cleared_hosts.push(topic),
            Tag::Resend => {
                s.resend_messages.fetch_add(1, Ordering::Relaxed);
            }
            Tag::Other => {}
        }
    }

    /// Records deliveries in the database.
    async fn flush_releases(&mut self) {
        if !self.acked_seqs.is_empty() {
            if let Err(e) = self.gateway.store.mark_sent(&self.acked_seqs) {
                tracing::error!(error = %e, "mqtt: cannot record delivered data messages; they will be sent again");
            }
            self.acked_seqs.clear();
        }
        if !self.acked_ids.is_empty() {
            if let Err(e) = self.gateway.ledger.uplink_done(&self.acked_ids).await {
                let text =
                    format!("cannot record delivered messages (they will be sent again): {e}");
                self.status.set_error(text.clone());
                tracing::error!("mqtt: {text}");
            }
            self.acked_ids.clear();
        }
        if !self.cleared_hosts.is_empty() {
            let topics = std::mem::take(&mut self.cleared_hosts);
            let r = self.gateway.ledger.forget_host_topics(&topics).await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "mqtt: cannot forget cleared host topics");
            }
        }
    }

    fn update_status(&self) {
        self.status
            .inflight
            .store(self.window.len() as u64, Ordering::Relaxed);
        update_backlog(self.gateway, self.status);
    }

    fn push_ctrl(&mut self, below_root: &str, payload: Vec<u8>, retain: bool, tag: Tag) {
        self.ctrl.push_back(Out {
            topic: format!("{}/{below_root}", self.target.root),
            payload,
            retain,
            tag,
        });
    }

    fn reject(&mut self, topic: &str, error: &str) {
        tracing::warn!(topic, error, "mqtt: downlink message refused");
        self.status.rejected.fetch_add(1, Ordering::Relaxed);
        let payload = crate::wire::status::rejection(unix_now(), topic, error).into_bytes();
        self.push_ctrl("rejected", payload, false, Tag::Other);
    }

    async fn on_command(&mut self, p: Publish) {
        self.status.commands.fetch_add(1, Ordering::Relaxed);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        p.topic.hash(&mut h);
        p.payload.hash(&mut h);
        let hash = h.finish();
        let redelivered = p.dup && self.keep.recent.contains(&hash);
        if p.payload.is_empty() {
            // Clears a retained command (never a command itself): nothing to do.
        } else if redelivered {
            tracing::info!(topic = %p.topic, "mqtt: command delivered again; already handled");
        } else if p.retain {
            self.reject(
                &p.topic,
                "retained commands are refused (they would be carried out again at every connection); publish without retain and clear this one with an empty retained message",
            );
        } else if p.topic == format!("{}/{DATASET_TOPIC}", self.target.root) {
            self.deploy(p, hash);
            return;
        } else {
            let r = downlink::handle(
                self.gateway,
                &self.target.root,
                &p.topic,
                &p.payload,
                unix_now(),
            )
            .await;
            match r {
                Ok(Outcome::Done) => {
                    tracing::info!(topic = %p.topic, "mqtt: command carried out");
                }
                Ok(Outcome::Resend(messages)) => {
                    let points: u64 = messages.iter().map(|m| m.2).sum();
                    if self.keep.resend_points + points > MAX_RESEND_QUEUED {
                        self.reject(
                            &p.topic,
                            &format!(
                                "{} points of earlier resends are still being sent; try again later",
                                self.keep.resend_points
                            ),
                        );
                    } else {
                        tracing::info!(topic = %p.topic, messages = messages.len(), points, "mqtt: resending history");
                        self.keep.resend_points += points;
                        self.keep.resend.extend(messages);
                    }
                }
                Err(error) => self.reject(&p.topic, &error),
            }
            self.keep.recent.push_back(hash);
            if self.keep.recent.len() > 256 {
                self.keep.recent.pop_front();
            }
        }
        self.acks.push_back(p);
    }

    /// The Things whose `state` changed since they were published, again.
    fn queue_thing_changes(&mut self) {
        let running = self.gateway.running();
        for (below, payload) in self.thing_states.changed(&running) {
            self.push_ctrl(&below, payload, true, Tag::Other);
        }
    }

    /// Carries out a deployment off the runtime; its command is acknowledged
    /// (and refused on `R/rejected` if it was not taken) when it is done.
    fn deploy(&mut self, p: Publish, hash: u64) {
        let remote = self.remote.clone();
        let tx = self.deployed_tx.clone();
        self.keep.recent.push_back(hash);
        if self.keep.recent.len() > 256 {
            self.keep.recent.pop_front();
        }
        tokio::spawn(async move {
            let payload = p.payload.clone();
            let outcome = tokio::task::spawn_blocking(move || remote.deploy(&payload, "mqtt"))
                .await
                .unwrap_or_else(|e| Err(Refusal::Failed(format!("the deployment failed: {e}"))));
            let _ = tx.send((p, outcome.map(|_| ())));
        });
    }

    /// Retained metadata of every configured host and of the upstream model
    /// (Things, Time-series, Datasets), encoded as the window has room, and
    /// empty retained messages for those published earlier that are gone
    /// from the config.
    async fn queue_hosts(&mut self) {
        let meta = super::upstream::Metadata::new(self.gateway.running());
        let topics: Vec<String> = meta
            .topics()
            .into_iter()
            .map(|below| format!("{}/{below}", self.target.root))
            .collect();
        self.meta = Some(meta);
        let stale = self.gateway.ledger.remember_host_topics(&topics).await;
        match stale {
            Ok(stale) => {
                for topic in stale {
                    tracing::info!(topic = %topic, "mqtt: clearing retained metadata of something gone from the config");
                    self.ctrl.push_back(Out {
                        topic: topic.clone(),
                        payload: Vec::new(),
                        retain: true,
                        tag: Tag::ClearHost(topic),
                    });
                }
            }
            Err(e) => tracing::warn!(error = %e, "mqtt: cannot record published host topics"),
        }
    }

    /// Stages the next metadata message(s) in `ctrl`: false when none is left.
    fn queue_metadata(&mut self) -> bool {
        let Some(meta) = &mut self.meta else {
            return false;
        };
        let mut out = Vec::new();
        if !meta.next(self.gateway, &mut self.thing_states, &mut out) {
            self.meta = None;
            return false;
        }
        for (below, payload) in out {
            self.push_ctrl(&below, payload, true, Tag::Other);
        }
        true
    }

    /// Fills the window: acknowledgements, then what is staged in `ctrl`
    /// (control messages, rows already read), resends (at most half the
    /// window), queued events/states/statuses, data. Rows are read only when
    /// `ctrl` is empty, so they go out in database order.
    async fn pump(&mut self) {
        while let Some(p) = self.acks.front() {
            if self.client.try_ack(p).is_err() {
                break;
            }
            self.acks.pop_front();
        }
        if self.closing {
            return;
        }
        while self.window.len() < WINDOW {
            if let Some(out) = self.ctrl.pop_front() {
                if !self.send(out) {
                    return;
                }
                continue;
            }
            if self.queue_metadata() {
                continue;
            }
            if self.window.resends() < WINDOW / 2 {
                if let Some((host, payload, points)) = self.keep.resend.pop_front() {
                    self.keep.resend_points = self.keep.resend_points.saturating_sub(points);
                    let out = Out {
                        topic: format!("{}/data/{host}", self.target.root),
                        payload: payload.into_bytes(),
                        retain: false,
                        tag: Tag::Resend,
                    };
                    if !self.send(out) {
                        return;
                    }
                    continue;
                }
            }
            let room = WINDOW - self.window.len();
            if self.uplink_more {
                self.fetch_uplink(room).await;
                continue;
            }
            // Data rows come in batches (fewer database reads while draining a
            // backlog), or at once when nothing is in flight (low latency).
            if self.data_more && (room >= WINDOW / 2 || self.window.len() == 0) {
                self.fetch_data(room).await;
                continue;
            }
            return;
        }
    }

    async fn fetch_uplink(&mut self, room: usize) {
        match self
            .gateway
            .ledger
            .uplink_after(self.keep.uplink_cursor, room)
            .await
        {
            Ok(rows) => {
                self.uplink_more = rows.len() >= room;
                for row in rows {
                    self.keep.uplink_cursor = row.id;
                    self.ctrl.push_back(Out {
                        topic: format!("{}/{}", self.target.root, row.topic),
                        payload: row.payload.into_bytes(),
                        retain: row.retained,
                        tag: Tag::Uplink(row.id),
                    });
                }
            }
            Err(e) => {
                self.uplink_more = false;
                self.db_error(format!("cannot read queued messages: {e}"));
            }
        }
    }

    async fn fetch_data(&mut self, room: usize) {
        match self
            .gateway
            .store
            .outbox_after(self.keep.data_cursor, room)
            .await
        {
            Ok(messages) => {
                self.data_more = messages.len() >= room;
                for m in messages {
                    self.keep.data_cursor = m.seq;
                    let points = m.items.iter().map(|(_, p)| p.len() as u64).sum();
                    let newest = m
                        .items
                        .iter()
                        .filter_map(|(_, p)| p.iter().map(|(c, _)| *c).max())
                        .max()
                        .unwrap_or(0);
                    self.ctrl.push_back(Out {
                        topic: format!("{}/data/{}", self.target.root, m.host),
                        payload: crate::wire::data_message(&m).into_bytes(),
                        retain: false,
                        tag: Tag::Data {
                            seq: m.seq,
                            points,
                            newest,
                        },
                    });
                }
            }
            Err(e) => {
                self.data_more = false;
                self.db_error(format!("cannot read the outbox: {e}"));
            }
        }
    }

    fn db_error(&mut self, text: String) {
        self.status.set_error(text.clone());
        tracing::error!("mqtt: {text}; retrying in 1s");
        self.retry_at = Some(tokio::time::Instant::now() + Duration::from_secs(1));
    }

    /// Hands one message to the client; false (and kept for later) when the
    /// request channel is full.
    fn send(&mut self, out: Out) -> bool {
        if out.payload.len() + out.topic.len() + 8 > MAX_OUTGOING_PACKET
            || !rumqttc::valid_topic(&out.topic)
        {
            // Cannot happen for data rows (<= 192 KiB); anything else is
            // dropped rather than blocking the queue forever.
            let text = format!(
                "message for {} ({} bytes) cannot be published (invalid topic or over {MAX_OUTGOING_PACKET} bytes); dropped",
                out.topic,
                out.payload.len()
            );
            self.status.set_error(text.clone());
            tracing::error!("mqtt: {text}");
            self.release(out.tag);
            return true;
        }
        self.window.queue(out.tag.clone());
        match self.client.try_publish(
            out.topic.as_str(),
            QoS::AtLeastOnce,
            out.retain,
            out.payload.as_slice(),
        ) {
            Ok(()) => true,
            Err(_) => {
                self.window.unqueue_last();
                self.ctrl.push_front(out);
                false
            }
        }
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
