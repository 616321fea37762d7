//! systemd integration: the service notification protocol (`sd_notify(3)`),
//! spoken by hand over the unix datagram socket named by `$NOTIFY_SOCKET`.
//!
//! - `READY=1` once the config is loaded, the database open and every host's
//!   polling task started; again after each reload, which `RELOADING=1` announces.
//! - `WATCHDOG=1` every half `$WATCHDOG_USEC` (at most 10 s apart, with the
//!   status), only while the pipeline is alive: the store's writer keeps finishing cycles and every host's task
//!   keeps finishing poll cycles. A stalled part stops the pings, it is logged,
//!   and systemd restarts the service when `WatchdogSec=` runs out.
//! - `STATUS=`: one line for `systemctl status` (hosts up, backlog, uplink).
//! - `STOPPING=1` when shutdown begins.
//!
//! Without `$NOTIFY_SOCKET` (not started by systemd) all of this does nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::gateway::Gateway;
use crate::model::{Config, HostSpec};
use crate::poll::HostLiveHandle;

/// STATUS is refreshed at least this often, watchdog or not.
const STATUS_PERIOD: Duration = Duration::from_secs(10);
/// The store's writer counts as stuck after this long without finishing a
/// cycle (or three commit intervals, if longer). A cycle can legitimately take
/// seconds: SQLite's busy timeout, compaction and retention on a slow SD card.
const STORE_STALL_MIN: Duration = Duration::from_secs(60);
/// Added to every host's worst-case cycle before it counts as stuck.
const HOST_STALL_GRACE: Duration = Duration::from_secs(30);

/// Why notifications cannot be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute socket path nor an abstract name (@...)")]
    Address(String),
    #[error("the notification socket: {0}")]
    Io(#[from] std::io::Error),
}

/// A connection to the service manager's notification socket.
#[cfg(unix)]
pub struct Notifier {
    socket: std::os::unix::net::UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
}

#[cfg(unix)]
impl Notifier {
    /// A notifier for a `$NOTIFY_SOCKET` value: an absolute path, or `@name`
    /// for a socket in the abstract namespace.
    pub fn new(target: &std::ffi::OsStr) -> Result<Notifier, NotifyError> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let bytes = target.as_bytes();
        let bad = || NotifyError::Address(target.to_string_lossy().into_owned());
        let addr = match bytes.first() {
            Some(b'/') => SocketAddr::from_pathname(target).map_err(|_| bad())?,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(b'@') if bytes.len() > 1 => {
                #[cfg(target_os = "android")]
                use std::os::android::net::SocketAddrExt;
                #[cfg(target_os = "linux")]
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(&bytes[1..]).map_err(|_| bad())?
            }
            _ => return Err(bad()),
        };
        let socket = UnixDatagram::unbound()?;
        // The manager reads its socket promptly; never let a wedged one stall the runtime for long.
        socket.set_write_timeout(Some(Duration::from_millis(500)))?;
        Ok(Notifier { socket, addr })
    }

    /// Sends one message: newline-separated `VARIABLE=value` assignments.
    pub fn send(&self, message: &str) -> Result<(), NotifyError> {
        self.socket.send_to_addr(message.as_bytes(), &self.addr)?;
        Ok(())
    }
}

/// Stand-in where unix sockets do not exist: never constructed.
#[cfg(not(unix))]
pub struct Notifier;

#[cfg(not(unix))]
impl Notifier {
    pub fn send(&self, _message: &str) -> Result<(), NotifyError> {
        Ok(())
    }
}

static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();
static SEND_FAILED: AtomicBool = AtomicBool::new(false);
static RELOAD_REFUSED: AtomicBool = AtomicBool::new(false);

/// The notifier for `$NOTIFY_SOCKET`, made on first use; None outside systemd.
fn notifier() -> Option<&'static Notifier> {
    NOTIFIER
        .get_or_init(|| {
            let target = std::env::var_os("NOTIFY_SOCKET")?;
            #[cfg(unix)]
            match Notifier::new(&target) {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(error = %e, "systemd notifications disabled");
                    None
                }
            }
            #[cfg(not(unix))]
            {
                let _ = target;
                None
            }
        })
        .as_ref()
}

/// True when the process was started with a notification socket.
pub fn enabled() -> bool {
    notifier().is_some()
}

/// Sends a message to the service manager, if there is one. A failure is
/// logged once as a warning (then at debug level): the gateway goes on.
pub fn notify(message: &str) {
    let Some(n) = notifier() else {
        return;
    };
    if let Err(e) = n.send(message) {
        if SEND_FAILED.swap(true, Ordering::Relaxed) {
            tracing::debug!(error = %e, "cannot notify systemd");
        } else {
            tracing::warn!(error = %e, "cannot notify systemd");
        }
    }
}

/// The interval between watchdog pings (half the timeout) from the values of
/// `$WATCHDOG_USEC` and `$WATCHDOG_PID`; None when the watchdog is off or
/// meant for another process.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

fn watchdog_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// CLOCK_MONOTONIC in microseconds, as systemd wants it next to `RELOADING=1`.
fn monotonic_usec() -> u64 {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
        let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        if r == 0 {
            let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
            let micros = u64::try_from(ts.tv_nsec).unwrap_or(0) / 1000;
            return secs.saturating_mul(1_000_000).saturating_add(micros);
        }
        0
    }
    #[cfg(not(unix))]
    0
}

/// Announces a config reload (SIGHUP); [`reloaded`] ends it.
pub fn reloading() {
    notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading the config",
        monotonic_usec()
    ));
}

/// Ends a reload: ready again, with the new config or, if it was refused, the old one.
pub fn reloaded(took_effect: bool) {
    RELOAD_REFUSED.store(!took_effect, Ordering::Relaxed);
    let status = if took_effect {
        "config reloaded"
    } else {
        "reload refused, the old config keeps running (see the journal)"
    };
    notify(&format!("READY=1\nSTATUS={status}"));
}

/// The service manager's view of one [`crate::daemon::run_gateway`]: sends
/// `READY=1` when made, then keeps the watchdog and the status line up to
/// date from a task of the current runtime until [`Service::stopping`].
pub struct Service {
    task: Option<tokio::task::AbortHandle>,
}

impl Service {
    /// Call once the gateway's host tasks have been started. Does nothing
    /// outside systemd. Must run inside the gateway's tokio runtime.
    pub fn start(gateway: &Gateway) -> Service {
        if !enabled() {
            return Service { task: None };
        }
        let mut health = Health::default();
        let first = health.check(gateway, Instant::now());
        notify(&format!("READY=1\nSTATUS={}", first.status));
        let watchdog = watchdog_from_env();
        let period = watchdog.map_or(STATUS_PERIOD, |w| w.min(STATUS_PERIOD));
        tracing::info!(
            watchdog = ?watchdog,
            "systemd notified: ready"
        );
        let gateway = gateway.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut stalled_before: Vec<String> = Vec::new();
            loop {
                tick.tick().await;
                let verdict = health.check(&gateway, Instant::now());
                if verdict.stalled != stalled_before {
                    if verdict.stalled.is_empty() {
                        tracing::info!("the pipeline is alive again; watchdog pings resume");
                    } else {
                        tracing::error!(
                            stalled = %verdict.stalled.join("; "),
                            "the pipeline is stalled; watchdog pings stop, systemd will restart the service"
                        );
                    }
                    stalled_before = verdict.stalled.clone();
                }
                let ping = watchdog.is_some() && verdict.stalled.is_empty();
                let message = format!(
                    "{}STATUS={}",
                    if ping { "WATCHDOG=1\n" } else { "" },
                    verdict.status
                );
                notify(&message);
            }
        });
        Service {
            task: Some(task.abort_handle()),
        }
    }

    /// Tells systemd that shutdown has begun; no more watchdog pings.
    pub fn stopping(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            notify("STOPPING=1\nSTATUS=stopping: committing everything to the database");
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What one look at the pipeline found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The parts that stopped making progress, for the log; empty when alive.
    pub stalled: Vec<String>,
    /// The one-line summary for `STATUS=`.
    pub status: String,
}

/// Progress of one host's task as last seen.
struct HostWatch {
    live: HostLiveHandle,
    cycles: u64,
    since: Instant,
}

/// Tracks the pipeline's progress between looks: the store writer's
/// heartbeat and every host's poll-cycle counter.
#[derive(Default)]
pub struct Health {
    hosts: HashMap<String, HostWatch>,
}

impl Health {
    /// Looks at the running gateway at `now`.
    pub fn check(&mut self, gateway: &Gateway, now: Instant) -> Verdict {
        let running = gateway.running();
        let config = &running.config;
        let mut stalled = Vec::new();
        match gateway.store.writer_heartbeat() {
            None => stalled.push("the store writer has stopped".to_string()),
            Some(at) => {
                let limit = store_stall_limit(config);
                let quiet = now.saturating_duration_since(at);
                if quiet > limit {
                    stalled.push(format!(
                        "the store writer has not finished a cycle for {}s",
                        quiet.as_secs()
                    ));
                }
            }
        }
        let mut watched = HashMap::with_capacity(config.hosts.len());
        let mut up = 0;
        for spec in &config.hosts {
            let Some(live) = running.hosts.get(&spec.host) else {
                continue;
            };
            if live.lock().link_up {
                up += 1;
            }
            let cycles = *live.subscribe().borrow();
            let mut watch = match self.hosts.remove(&spec.host) {
                // The same task as before (a reload that changed the host restarts it).
                Some(w) if Arc::ptr_eq(&w.live, live) => w,
                _ => HostWatch {
                    live: live.clone(),
                    cycles,
                    since: now,
                },
            };
            if cycles != watch.cycles {
                watch.cycles = cycles;
                watch.since = now;
            }
            if !spec.items.is_empty() {
                let quiet = now.saturating_duration_since(watch.since);
                if quiet > host_stall_limit(spec, config) {
                    stalled.push(format!(
                        "host {} has not finished a poll cycle for {}s",
                        spec.host,
                        quiet.as_secs()
                    ));
                }
            }
            watched.insert(spec.host.clone(), watch);
        }
        self.hosts = watched;
        let backlog = gateway
            .store
            .outbox_len()
            .saturating_add(gateway.ledger.uplink_len());
        let mut status = format!(
            "{up}/{} hosts up, backlog {backlog} message{}",
            config.hosts.len(),
            if backlog == 1 { "" } else { "s" }
        );
        if config.mqtt.is_some() {
            status.push_str(if gateway.mqtt.is_connected() {
                ", MQTT connected"
            } else {
                ", MQTT disconnected"
            });
        }
        if !stalled.is_empty() {
            status.push_str("; STALLED: ");
            status.push_str(&stalled.join("; "));
        }
        if RELOAD_REFUSED.load(Ordering::Relaxed) {
            status.push_str("; last reload refused, old config running");
        }
        Verdict { stalled, status }
    }
}

/// How long the store's writer may go without finishing a cycle.
pub fn store_stall_limit(config: &Config) -> Duration {
    config
        .storage
        .commit_interval
        .saturating_mul(3)
        .max(STORE_STALL_MIN)
}

/// How long a host's task may go without finishing a poll cycle: three of its
/// shortest poll intervals, plus the worst case of one cycle (every item read
/// alone and every try timing out, behind every other host on the same serial
/// port), plus a grace period.
pub fn host_stall_limit(host: &HostSpec, config: &Config) -> Duration {
    let shortest = host
        .items
        .iter()
        .map(|i| i.poll_interval)
        .min()
        .unwrap_or(host.poll_interval);
    let worst_cycle = config
        .hosts
        .iter()
        .filter(|h| {
            h.host == host.host || (host.connection.is_serial() && h.connection == host.connection)
        })
        .map(|h| {
            let tries = h.retries.saturating_add(1);
            let requests = u32::try_from(h.items.len().max(1)).unwrap_or(u32::MAX);
            h.timeout.saturating_mul(tries).saturating_mul(requests)
        })
        .fold(Duration::ZERO, Duration::saturating_add);
    shortest
        .saturating_mul(3)
        .saturating_add(worst_cycle)
        .saturating_add(HOST_STALL_GRACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process() {
        let own = 4242;
        assert_eq!(
            watchdog_interval(Some("30000000"), None, own),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("4242"), own),
            Some(Duration::from_secs(15))
        );
        // Meant for another process, off, or garbage: no pings.
        assert_eq!(watchdog_interval(Some("30000000"), Some("1"), own), None);
        assert_eq!(watchdog_interval(Some("0"), None, own), None);
        assert_eq!(watchdog_interval(None, None, own), None);
        assert_eq!(watchdog_interval(Some("soon"), None, own), None);
        assert_eq!(watchdog_interval(Some("30000000"), Some("x"), own), None);
        assert_eq!(
            watchdog_interval(Some("1"), None, own),
            Some(Duration::from_millis(1))
        );
    }

    #[cfg(unix)]
    #[test]
    fn notifier_accepts_paths_and_abstract_names_only() {
        use std::ffi::OsStr;
        assert!(Notifier::new(OsStr::new("/run/systemd/notify")).is_ok());
        assert!(Notifier::new(OsStr::new("@/org/freedesktop/systemd1/notify")).is_ok());
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert!(
                matches!(Notifier::new(OsStr::new(bad)), Err(NotifyError::Address(_))),
                "{bad:?}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn messages_arrive_on_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let receiver = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.as_os_str()).unwrap();
        n.send("READY=1\nSTATUS=hello").unwrap();
        let mut buf = [0u8; 256];
        let len = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=hello");
    }

    #[test]
    fn monotonic_clock_moves_forward() {
        let a = monotonic_usec();
        std::thread::sleep(Duration::from_millis(2));
        let b = monotonic_usec();
        assert!(a > 0 && b > a, "{a} {b}");
    }

    fn config(text: &str) -> Config {
        crate::config::load_str(std::path::Path::new("/tmp/modbridge.toml"), text).unwrap()
    }

    #[test]
    fn stall_limits_follow_the_config() {
        let c = config(
            r#"
[gateway]
id = "box"
[storage]
commit_interval = "1m"
[[hosts]]
host = "a"
connection = "rtu:///dev/ttyUSB0"
unit = 1
poll_interval = "10s"
timeout = "1s"
retries = 1
[[hosts.items]]
table = "holding"
address = 0
[[hosts.items]]
table = "holding"
address = 1
poll_interval = "2s"
[[hosts]]
host = "b"
connection = "rtu:///dev/ttyUSB0"
unit = 2
timeout = "2s"
retries = 0
[[hosts.items]]
table = "holding"
address = 0
[[hosts]]
host = "c"
connection = "tcp://127.0.0.1:502"
timeout = "1s"
retries = 0
[[hosts.items]]
table = "holding"
address = 0
"#,
        );
        assert_eq!(store_stall_limit(&c), Duration::from_secs(180));
        // a: 3 x 2s + (a: 1s x 2 tries x 2 items + b: 2s x 1 x 1 item) + 30s
        assert_eq!(
            host_stall_limit(&c.hosts[0], &c),
            Duration::from_secs(6 + 4 + 2 + 30)
        );
        // c is alone on its TCP link: 3 x 10s + 1s + 30s.
        assert_eq!(host_stall_limit(&c.hosts[2], &c), Duration::from_secs(61));
    }

    #[tokio::test]
    async fn a_host_without_progress_and_a_quiet_writer_are_stalled() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&format!(
            r#"
[gateway]
id = "box"
data_dir = "{}"
[[hosts]]
host = "pump"
connection = "tcp://127.0.0.1:1"
poll_interval = "1s"
timeout = "1s"
retries = 0
[[hosts.items]]
table = "holding"
address = 0
"#,
            dir.path().display()
        ));
        let host_limit = host_stall_limit(&c.hosts[0], &c);
        let store_limit = store_stall_limit(&c);
        assert_eq!(host_limit, Duration::from_secs(34));
        // No host task runs here, so the cycle counter never moves.
        let gateway = crate::gateway::open(c).await.unwrap();
        let mut health = Health::default();
        let t0 = Instant::now();
        let first = health.check(&gateway, t0);
        assert!(first.stalled.is_empty(), "{first:?}");
        assert_eq!(first.status, "0/1 hosts up, backlog 0 messages");
        let later = health.check(&gateway, t0 + host_limit + Duration::from_secs(1));
        assert_eq!(
            later.stalled,
            vec!["host pump has not finished a poll cycle for 35s".to_string()]
        );
        assert!(later.status.contains("STALLED: host pump"), "{later:?}");
        let much_later = health.check(&gateway, Instant::now() + store_limit * 2);
        assert_eq!(much_later.stalled.len(), 2, "{much_later:?}");
        assert!(much_later.stalled[0].starts_with("the store writer has not finished a cycle"));
        gateway.store.close().unwrap();
        let closed = health.check(&gateway, Instant::now());
        assert_eq!(closed.stalled[0], "the store writer has stopped");
    }
}
