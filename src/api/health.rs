//! `GET /health` and `GET /metrics`.
//!
//! Healthy (200) unless one of these holds, then 503 with the reasons in
//! `problems`:
//! - a host's link is down (its last poll cycle failed on the transport);
//!   a host that has not finished its first cycle yet counts as `starting`, not down;
//! - `[mqtt]` is configured and the broker is not connected;
//! - the database's commits are failing: commit errors were counted since the
//!   previous look at `/health` or `/metrics` and no commit succeeded in between;
//! - the database's file system is full ("disk full"), until it has room again.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::HttpError;
use super::params::{Params, RawQuery};
use super::routes::{json_bytes, to_json};
use super::State as AppState;
use crate::alarm::AlarmStats;
use crate::clock::unix_now;
use crate::config_requests::ConfigRequestStats;
use crate::gateway::Gateway;
use crate::poll::{LATENCY_BUCKETS, LATENESS_BUCKETS};
use crate::snapshot::Snapshot;
use crate::store::StoreStats;

/// Remembers the store's commit counters between looks, to tell whether
/// commits are failing now (the counters only ever grow).
#[derive(Debug, Default)]
pub struct CommitWatch {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    commits: u64,
    errors: u64,
    failing: bool,
}

impl CommitWatch {
    /// Whether the latest commits failed: errors since the last look and no
    /// successful commit; a successful commit with no error clears it.
    pub fn failing(&self, stats: &StoreStats) -> bool {
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let errors = stats.commit_errors > s.errors;
        let commits = stats.commits > s.commits;
        if errors && !commits {
            s.failing = true;
        } else if commits && !errors {
            s.failing = false;
        }
        s.commits = stats.commits;
        s.errors = stats.commit_errors;
        s.failing
    }
}

#[derive(Debug, Serialize)]
struct HostHealth {
    host: String,
    /// `up`, `down`, or `starting` before its first poll cycle finished.
    link: &'static str,
    /// Unix seconds of the last cycle that reached the device.
    last_ok: Option<i64>,
    consecutive_errors: u32,
    last_error: Option<String>,
    items: usize,
    items_in_error: usize,
}

#[derive(Debug, Serialize)]
struct MqttHealth {
    configured: bool,
    connected: bool,
    /// Durable messages not yet acknowledged by the broker: data messages
    /// (outbox) plus events, trigger states and config statuses.
    backlog: u64,
    published: u64,
    connect_errors: u64,
}

/// The Sparkplug B uplink: its own connection and position.
#[derive(Debug, Serialize)]
struct SparkplugHealth {
    configured: bool,
    connected: bool,
    /// Data messages of the outbox not yet confirmed over Sparkplug.
    backlog: u64,
    /// Messages the broker has confirmed reading since start-up.
    published: u64,
    connect_errors: u64,
}

#[derive(Debug, Serialize)]
struct DatabaseHealth {
    bytes: u64,
    commits: u64,
    commit_errors: u64,
    /// The latest commits failed (samples are kept in memory and retried).
    failing: bool,
    /// The file system is full: the oldest data is deleted to store the newest.
    disk_full: bool,
    dropped_unsent: u64,
}

#[derive(Debug, Serialize)]
struct ApiHealth {
    /// PUT/POST need `Authorization: Bearer <token>`.
    token_required: bool,
}

#[derive(Debug, Serialize)]
struct Health {
    /// `ok` or `degraded`.
    status: &'static str,
    problems: Vec<String>,
    clock: i64,
    gateway: String,
    version: &'static str,
    hosts: Vec<HostHealth>,
    mqtt: MqttHealth,
    sparkplug: SparkplugHealth,
    database: DatabaseHealth,
    api: ApiHealth,
}

/// `GET /health`
pub async fn health(State(st): State<AppState>, q: RawQuery) -> Result<Response, HttpError> {
    Params::parse(q, &[])?;
    let gateway = &st.gateway;
    let running = gateway.running();
    let mut problems = Vec::new();
    let mut hosts = Vec::new();
    for spec in &running.config.hosts {
        let Some(live) = running.hosts.get(&spec.host) else {
            continue;
        };
        let l = live.lock();
        let link = if l.link_up {
            "up"
        } else if l.polls == 0 {
            "starting"
        } else {
            "down"
        };
        if link == "down" {
            problems.push(format!(
                "host {}: link down{}",
                spec.host,
                l.last_error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
        hosts.push(HostHealth {
            host: spec.host.clone(),
            link,
            last_ok: l.last_ok,
            consecutive_errors: l.consecutive_errors,
            last_error: l.last_error.clone(),
            items: l.items.len(),
            items_in_error: l
                .items
                .iter()
                .filter(|i| i.state == crate::poll::ItemState::Error)
                .count(),
        });
    }
    let configured = running.config.mqtt.is_some();
    let connected = gateway.mqtt.is_connected();
    if configured && !connected {
        problems.push("MQTT: not connected to the broker".to_string());
    }
    let spb_configured = running.config.sparkplug.is_some();
    let spb_connected = gateway.sparkplug.is_connected();
    if spb_configured && !spb_connected {
        problems.push("Sparkplug: not connected to the broker".to_string());
    }
    let stats = gateway.store.stats();
    let failing = st.commits.failing(&stats);
    if stats.disk_full {
        problems.push(
            "disk full: the file system of the database has no room; the oldest data is deleted to store the newest".into(),
        );
    }
    if failing {
        problems.push("database: commits are failing (samples kept in memory and retried)".into());
    }
    let report = Health {
        status: if problems.is_empty() {
            "ok"
        } else {
            "degraded"
        },
        problems,
        clock: unix_now(),
        gateway: running.config.gateway.id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        hosts,
        mqtt: MqttHealth {
            configured,
            connected,
            backlog: gateway.store.outbox_len() + gateway.ledger.uplink_len(),
            published: gateway
                .mqtt
                .published
                .load(std::sync::atomic::Ordering::Relaxed),
            connect_errors: gateway
                .mqtt
                .connect_errors
                .load(std::sync::atomic::Ordering::Relaxed),
        },
        sparkplug: SparkplugHealth {
            configured: spb_configured,
            connected: spb_connected,
            backlog: gateway.store.backlog(crate::store::Uplink::Sparkplug),
            published: gateway.sparkplug.published.load(Ordering::Relaxed),
            connect_errors: gateway.sparkplug.connect_errors.load(Ordering::Relaxed),
        },
        database: DatabaseHealth {
            bytes: stats.db_bytes,
            commits: stats.commits,
            commit_errors: stats.commit_errors,
            failing,
            disk_full: stats.disk_full,
            dropped_unsent: stats.dropped_unsent,
        },
        api: ApiHealth {
            token_required: st.tokens.required(&running.config),
        },
    };
    let status = if report.problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut res = json_bytes(status, to_json(&report)?);
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// What `/metrics` shows of a host, taken under its lock without copying its items.
struct HostFigures {
    link_up: bool,
    polls: u64,
    requests: u64,
    request_errors: u64,
    consecutive_errors: u32,
    ok: usize,
    error: usize,
    unknown: usize,
    latency_buckets: Vec<u64>,
    latency_sum: f64,
    lateness_buckets: Vec<u64>,
    lateness_sum: f64,
    lateness_max: f64,
}

impl HostFigures {
    fn of(l: &crate::poll::HostLive) -> HostFigures {
        let (mut ok, mut error, mut unknown) = (0, 0, 0);
        for i in &l.items {
            match i.state {
                crate::poll::ItemState::Ok => ok += 1,
                crate::poll::ItemState::Error => error += 1,
                crate::poll::ItemState::Unknown => unknown += 1,
            }
        }
        HostFigures {
            link_up: l.link_up,
            polls: l.polls,
            requests: l.requests,
            request_errors: l.request_errors,
            consecutive_errors: l.consecutive_errors,
            ok,
            error,
            unknown,
            latency_buckets: l.latency_buckets.clone(),
            latency_sum: l.latency_sum,
            lateness_buckets: l.lateness_buckets.clone(),
            lateness_sum: l.lateness_sum,
            lateness_max: l.lateness_max,
        }
    }
}

/// Prometheus text exposition (format 0.0.4).
#[derive(Default)]
pub struct Exposition {
    out: String,
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A sample value as Prometheus writes it: `NaN`, `+Inf`/`-Inf`, integers without a fraction.
fn prometheus_number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

impl Exposition {
    /// Starts a metric family: `# HELP` and `# TYPE`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", prometheus_number(value));
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per value of the label `label`.
    pub fn by_label(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: &[(&str, f64)],
    ) {
        self.family(name, kind, help);
        for (value, n) in values {
            self.sample(name, &[(label, value)], *n);
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// `GET /metrics`
pub async fn metrics(State(st): State<AppState>, q: RawQuery) -> Result<Response, HttpError> {
    Params::parse(q, &[])?;
    let gateway = st.gateway.clone();
    let running = gateway.running();
    let mut m = Exposition::default();
    gateway_info(&mut m, running.config.gateway.id.as_str());
    let lives = host_figures(&running);
    host_counters(&mut m, &lives);
    items_per_state(&mut m, &lives);
    request_latency(&mut m, &lives);
    let stats = gateway.store.stats();
    store_figures(&mut m, &stats);
    uplink_figures(&mut m, &gateway, running.config.mqtt.is_some());
    sparkplug_figures(&mut m, &gateway, running.config.sparkplug.is_some());
    config_request_figures(&mut m, &gateway.writes.stats());
    trigger_figures(&mut m, &gateway.alarms.stats());
    proxy_figures(&mut m, &gateway.proxies.snapshot());
    st.commits.failing(&stats);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        m.finish(),
    )
        .into_response())
}

/// Writes `modbridge_info`: the gateway's id and version as labels.
fn gateway_info(m: &mut Exposition, id: &str) {
    m.family("modbridge_info", "gauge", "The gateway's id and version.");
    m.sample(
        "modbridge_info",
        &[("gateway", id), ("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
}

/// Takes each configured host's figures under its lock, in config order.
fn host_figures(running: &Snapshot) -> Vec<(String, HostFigures)> {
    running
        .config
        .hosts
        .iter()
        .filter_map(|h| {
            let live = running.hosts.get(&h.host)?;
            Some((h.host.clone(), HostFigures::of(&live.lock())))
        })
        .collect()
}

/// Writes a family with one sample per host, the value taken from its figures by `f`.
fn per_host(
    m: &mut Exposition,
    lives: &[(String, HostFigures)],
    name: &str,
    kind: &str,
    help: &str,
    f: &dyn Fn(&HostFigures) -> f64,
) {
    m.family(name, kind, help);
    for (host, l) in lives {
        m.sample(name, &[("host", host)], f(l));
    }
}

/// Writes the per-host link, polling and request counters.
fn host_counters(m: &mut Exposition, lives: &[(String, HostFigures)]) {
    per_host(
        m,
        lives,
        "modbridge_host_link_up",
        "gauge",
        "1 while the host's last poll cycle reached the device.",
        &|l| f64::from(u8::from(l.link_up)),
    );
    per_host(
        m,
        lives,
        "modbridge_polls_total",
        "counter",
        "Poll cycles per host.",
        &|l| l.polls as f64,
    );
    per_host(
        m,
        lives,
        "modbridge_requests_total",
        "counter",
        "Modbus requests per host.",
        &|l| l.requests as f64,
    );
    per_host(
        m,
        lives,
        "modbridge_request_errors_total",
        "counter",
        "Failed Modbus requests per host (timeouts, transport errors, exceptions).",
        &|l| l.request_errors as f64,
    );
    per_host(
        m,
        lives,
        "modbridge_host_consecutive_errors",
        "gauge",
        "Poll cycles in a row that failed on the transport.",
        &|l| f64::from(l.consecutive_errors),
    );
}

/// Writes `modbridge_items`: each host's item count per state (ok, error, unknown).
fn items_per_state(m: &mut Exposition, lives: &[(String, HostFigures)]) {
    m.family(
        "modbridge_items",
        "gauge",
        "Items per host and state (ok, error, unknown).",
    );
    for (host, l) in lives {
        for (state, n) in [("ok", l.ok), ("error", l.error), ("unknown", l.unknown)] {
            m.sample(
                "modbridge_items",
                &[("host", host), ("state", state)],
                n as f64,
            );
        }
    }
}

/// Writes the per-host request latency and poll lateness histograms.
fn request_latency(m: &mut Exposition, lives: &[(String, HostFigures)]) {
    per_host_histogram(
        m,
        lives,
        (
            "modbridge_request_duration_seconds",
            "Modbus request latency per host.",
        ),
        &LATENCY_BUCKETS,
        &|l| (&l.latency_buckets, l.latency_sum),
    );
    per_host_histogram(
        m,
        lives,
        (
            "modbridge_poll_lateness_seconds",
            "How late poll cycles started against their schedule, per host.",
        ),
        &LATENESS_BUCKETS,
        &|l| (&l.lateness_buckets, l.lateness_sum),
    );
    per_host(
        m,
        lives,
        "modbridge_poll_lateness_max_seconds",
        "gauge",
        "The latest start of a poll cycle against its schedule since start-up, per host.",
        &|l| l.lateness_max,
    );
}

/// Writes a per-host histogram with cumulative buckets, sum and count; `f`
/// gives a host's counts per bucket of `bounds` (+Inf last) and their sum.
fn per_host_histogram(
    m: &mut Exposition,
    lives: &[(String, HostFigures)],
    (hist, help): (&str, &str),
    bounds: &[f64],
    f: &dyn Fn(&HostFigures) -> (&Vec<u64>, f64),
) {
    m.family(hist, "histogram", help);
    for (host, l) in lives {
        let (buckets, sum) = f(l);
        let mut cumulative = 0u64;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += buckets.get(i).copied().unwrap_or(0);
            m.sample(
                &format!("{hist}_bucket"),
                &[("host", host), ("le", &prometheus_number(*bound))],
                cumulative as f64,
            );
        }
        let count: u64 = buckets.iter().sum();
        m.sample(
            &format!("{hist}_bucket"),
            &[("host", host), ("le", "+Inf")],
            count as f64,
        );
        m.sample(&format!("{hist}_sum"), &[("host", host)], sum);
        m.sample(&format!("{hist}_count"), &[("host", host)], count as f64);
    }
}

/// Writes the store's sample, commit, dropped-point and database size figures.
fn store_figures(m: &mut Exposition, stats: &StoreStats) {
    m.single(
        "modbridge_samples_received_total",
        "counter",
        "Good samples handed to the store.",
        stats.samples_received as f64,
    );
    m.single(
        "modbridge_samples_stored_total",
        "counter",
        "History points committed to the database.",
        stats.history_points as f64,
    );
    m.single(
        "modbridge_commits_total",
        "counter",
        "Database commits.",
        stats.commits as f64,
    );
    m.single(
        "modbridge_commit_errors_total",
        "counter",
        "Failed database commits (their data is kept and retried).",
        stats.commit_errors as f64,
    );
    m.single(
        "modbridge_dropped_unsent_total",
        "counter",
        "History points never sent upstream and dropped (memory cap or max_size).",
        stats.dropped_unsent as f64,
    );
    m.single(
        "modbridge_disk_full",
        "gauge",
        "1 while the database's file system is full (the oldest data is deleted to store the newest).",
        f64::from(u8::from(stats.disk_full)),
    );
    m.by_label(
        "modbridge_clock_steps_total",
        "counter",
        "Steps of the wall clock: back, or forward by more than a minute beyond the expected time.",
        "direction",
        &[
            ("back", stats.clock_steps_back as f64),
            ("forward", stats.clock_steps_forward as f64),
        ],
    );
    m.single(
        "modbridge_database_bytes",
        "gauge",
        "Size of the database files.",
        stats.db_bytes as f64,
    );
}

/// Writes the unacknowledged message backlogs and the MQTT connection figures.
fn uplink_figures(m: &mut Exposition, gateway: &Gateway, mqtt_configured: bool) {
    m.single(
        "modbridge_outbox_messages",
        "gauge",
        "Data messages not yet acknowledged by the broker.",
        gateway.store.outbox_len() as f64,
    );
    m.single(
        "modbridge_uplink_messages",
        "gauge",
        "Event, trigger and config messages not yet acknowledged by the broker.",
        gateway.ledger.uplink_len() as f64,
    );
    m.single(
        "modbridge_mqtt_configured",
        "gauge",
        "1 if an [mqtt] section is configured.",
        f64::from(u8::from(mqtt_configured)),
    );
    m.single(
        "modbridge_mqtt_connected",
        "gauge",
        "1 while connected to the broker.",
        f64::from(u8::from(gateway.mqtt.is_connected())),
    );
    m.single(
        "modbridge_mqtt_published_total",
        "counter",
        "Messages acknowledged by the broker.",
        gateway
            .mqtt
            .published
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
    m.single(
        "modbridge_mqtt_connect_errors_total",
        "counter",
        "Failed connection attempts to the broker.",
        gateway
            .mqtt
            .connect_errors
            .load(std::sync::atomic::Ordering::Relaxed) as f64,
    );
}

/// Writes the Sparkplug uplink's connection figures and backlog.
fn sparkplug_figures(m: &mut Exposition, gateway: &Gateway, configured: bool) {
    let s = &gateway.sparkplug;
    m.single(
        "modbridge_sparkplug_configured",
        "gauge",
        "1 if a [sparkplug] section is configured.",
        f64::from(u8::from(configured)),
    );
    m.single(
        "modbridge_sparkplug_connected",
        "gauge",
        "1 while the Sparkplug uplink is connected to its broker.",
        f64::from(u8::from(s.is_connected())),
    );
    m.single(
        "modbridge_sparkplug_backlog_messages",
        "gauge",
        "Data messages not yet confirmed over Sparkplug.",
        gateway.store.backlog(crate::store::Uplink::Sparkplug) as f64,
    );
    m.single(
        "modbridge_sparkplug_published_total",
        "counter",
        "Sparkplug messages the broker has confirmed reading.",
        s.published.load(Ordering::Relaxed) as f64,
    );
    m.single(
        "modbridge_sparkplug_samples_total",
        "counter",
        "Samples sent in Sparkplug DDATA.",
        s.data_samples.load(Ordering::Relaxed) as f64,
    );
    m.single(
        "modbridge_sparkplug_connect_errors_total",
        "counter",
        "Failed connection attempts of the Sparkplug uplink.",
        s.connect_errors.load(Ordering::Relaxed) as f64,
    );
}

/// Writes the Modbus TCP proxies' request, write and refused-client counters.
fn proxy_figures(m: &mut Exposition, proxies: &[(String, crate::proxy::Counters)]) {
    if proxies.is_empty() {
        return;
    }
    m.family(
        "modbridge_proxy_requests_total",
        "counter",
        "Requests proxy clients sent, by how they ended.",
    );
    for (name, c) in proxies {
        for outcome in crate::proxy::Outcome::ALL {
            m.sample(
                "modbridge_proxy_requests_total",
                &[("proxy", name), ("result", outcome.label())],
                c.of(outcome) as f64,
            );
        }
    }
    m.family(
        "modbridge_proxy_writes_total",
        "counter",
        "Writes proxy clients sent that were forwarded to the device.",
    );
    for (name, c) in proxies {
        m.sample(
            "modbridge_proxy_writes_total",
            &[("proxy", name)],
            c.writes as f64,
        );
    }
    m.family(
        "modbridge_proxy_clients_refused_total",
        "counter",
        "Client connections closed at once because the proxy had its maximum open.",
    );
    for (name, c) in proxies {
        m.sample(
            "modbridge_proxy_clients_refused_total",
            &[("proxy", name)],
            c.refused_clients as f64,
        );
    }
}

/// Writes the config requests by status and the refused and unreachable-write counters.
fn config_request_figures(m: &mut Exposition, writes: &ConfigRequestStats) {
    m.by_label(
        "modbridge_config_requests",
        "gauge",
        "Config requests (writes) kept in the database, by current status.",
        "status",
        &[
            ("PENDING", writes.pending as f64),
            ("SUCCESS", writes.success as f64),
            ("FAILED", writes.failed as f64),
        ],
    );
    m.single(
        "modbridge_config_requests_refused_total",
        "counter",
        "Config requests refused (nothing recorded) since start-up.",
        writes.refused as f64,
    );
    m.single(
        "modbridge_config_write_attempts_unreachable_total",
        "counter",
        "Write attempts that could not reach the device (retried) since start-up.",
        writes.unreachable as f64,
    );
}

/// Writes the triggers by current value and the alarm event and storage error counters.
fn trigger_figures(m: &mut Exposition, alarms: &AlarmStats) {
    m.by_label(
        "modbridge_triggers",
        "gauge",
        "Triggers by current value.",
        "value",
        &[
            ("OK", alarms.ok as f64),
            ("problem", alarms.problem as f64),
            ("unknown", alarms.unknown as f64),
        ],
    );
    m.single(
        "modbridge_events_total",
        "counter",
        "Alarm events recorded since start-up.",
        alarms.events as f64,
    );
    m.single(
        "modbridge_alarm_storage_errors_total",
        "counter",
        "Failed attempts to store alarm events since start-up (retried).",
        alarms.storage_errors as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_labels_are_written_as_prometheus_reads_them() {
        let mut m = Exposition::default();
        m.family("x_total", "counter", "Help with \\ and\nnewline.");
        m.sample("x_total", &[("host", "a\"b\\c\nd")], 3.0);
        m.sample("x_total", &[], 0.25);
        let text = m.finish();
        assert!(
            text.contains("# HELP x_total Help with \\\\ and\\nnewline.\n"),
            "{text}"
        );
        assert!(
            text.contains("x_total{host=\"a\\\"b\\\\c\\nd\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("x_total 0.25\n"), "{text}");
        assert_eq!(prometheus_number(f64::INFINITY), "+Inf");
        assert_eq!(prometheus_number(0.002), "0.002");
    }

    #[test]
    fn commit_failures_show_until_a_commit_succeeds() {
        let w = CommitWatch::default();
        let mut s = StoreStats::default();
        assert!(!w.failing(&s));
        s.commits = 5;
        assert!(!w.failing(&s));
        s.commit_errors = 2;
        assert!(w.failing(&s));
        assert!(w.failing(&s), "no change: still failing");
        s.commits = 6;
        assert!(!w.failing(&s));
    }
}
