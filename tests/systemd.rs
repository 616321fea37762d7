//! The real binary as systemd runs it: `sd_notify` messages on a unix
//! datagram socket this test holds in place of the service manager (a path
//! and an abstract `@` name), the watchdog, SIGHUP reloads with a good and a
//! bad config, journald log lines; and the unit and sysusers files themselves
//! (`systemd-analyze verify` / `security`, `systemd-sysusers`), where
//! systemd's tools are installed (always under CI).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use modbridge::model::Table;
use modbridge::sim::SimDevice;
use tokio::net::{TcpListener, TcpStream, UnixDatagram};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio::time::{timeout, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_modbridge");
/// Generous: the machine may be busy; every wait ends as soon as its event happens.
const DEADLINE: Duration = Duration::from_secs(30);

/// Removes ANSI colour sequences from a log line.
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `modbridge run` with its stderr lines collected as they come.
struct Daemon {
    child: Option<Child>,
    lines: UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    fn start(config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut command = Command::new(BIN);
        command
            .args(["run", "-c", config.to_str().expect("utf-8 path")])
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start modbridge");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(plain(&line));
            }
        });
        Daemon {
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a log line (seen before or to come) that contains every part.
    async fn line(&mut self, parts: &[&str]) -> String {
        let matches = |l: &str| parts.iter().all(|p| l.contains(p));
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = self.seen.iter().find(|l| matches(l)) {
                return line.clone();
            }
            match timeout(deadline - Instant::now(), self.lines.recv()).await {
                Ok(Some(line)) => self.seen.push(line),
                _ => panic!(
                    "no log line with {parts:?}; the daemon said:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// How many lines seen so far contain every part.
    fn count(&self, parts: &[&str]) -> usize {
        self.seen
            .iter()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().map(Child::id).expect("running");
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    async fn wait(mut self) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .expect("join")
            .expect("wait");
        while let Ok(Some(line)) = timeout(Duration::from_secs(5), self.lines.recv()).await {
            self.seen.push(line);
        }
        (status, std::mem::take(&mut self.seen))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The service manager's end of `$NOTIFY_SOCKET`.
struct Manager {
    socket: UnixDatagram,
    messages: Vec<String>,
}

impl Manager {
    fn at_path(path: &Path) -> Manager {
        Manager {
            socket: UnixDatagram::bind(path).expect("bind notify socket"),
            messages: Vec::new(),
        }
    }

    fn abstract_name(name: &str) -> Manager {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).expect("bind abstract");
        socket.set_nonblocking(true).expect("nonblocking");
        Manager {
            socket: UnixDatagram::from_std(socket).expect("tokio socket"),
            messages: Vec::new(),
        }
    }

    /// The next message that satisfies `wanted`.
    async fn until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 4096];
        loop {
            match timeout(deadline - Instant::now(), self.socket.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.messages.push(message.clone());
                    if wanted(&message) {
                        return message;
                    }
                }
                _ => panic!(
                    "no notification with {what}; got:\n{}",
                    self.messages.join("\n--\n")
                ),
            }
        }
    }

    async fn with(&mut self, assignment: &str) -> String {
        self.until(assignment, |m| m.lines().any(|l| l == assignment))
            .await
    }
}

/// A TCP proxy that counts the connections made through it.
struct CountingProxy {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn to(target: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        CountingProxy {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `condition` until it holds (for what no event can be awaited).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn host_block(id: &str, addr: SocketAddr, addresses: &[u16]) -> String {
    let mut text = format!(
        "[[hosts]]\nhost = \"{id}\"\nconnection = \"tcp://{addr}\"\npoll_interval = \"200ms\"\ntimeout = \"5s\"\nretries = 0\n"
    );
    for a in addresses {
        text.push_str(&format!(
            "\n[[hosts.items]]\ntable = \"holding\"\naddress = {a}\n"
        ));
    }
    text
}

fn config_text(dir: &Path, hosts: &[String]) -> String {
    format!(
        "[gateway]\nid = \"test-box\"\ndata_dir = \"{}\"\n\n[storage]\ncommit_interval = \"200ms\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n{}",
        dir.join("data").display(),
        hosts.join("\n")
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

async fn device(value: u16) -> (SimDevice, modbridge::sim::SimServer, SocketAddr) {
    let device = SimDevice::new();
    device.set_registers(Table::Holding, 0, &[value; 8]);
    let server = device.bind_tcp("127.0.0.1:0").await.expect("bind device");
    let addr = server.addr().expect("device address");
    (device, server, addr)
}

#[tokio::test]
async fn ready_watchdog_status_and_stopping_reach_the_notify_socket() {
    let (_device, _server, addr) = device(7).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("modbridge.toml");
    write(
        &config,
        &config_text(dir.path(), &[host_block("pump", addr, &[0, 1])]),
    );
    let socket = dir.path().join("notify.sock");
    let mut manager = Manager::at_path(&socket);
    let daemon = Daemon::start(
        &config,
        &[
            ("NOTIFY_SOCKET", socket.to_str().expect("path")),
            ("WATCHDOG_USEC", "300000"),
        ],
    );
    let ready = manager
        .until("READY=1", |m| m.lines().any(|l| l == "READY=1"))
        .await;
    assert_eq!(manager.messages.len(), 1, "READY=1 comes first");
    assert!(
        ready.contains("STATUS=") && ready.contains("/1 hosts up, backlog"),
        "{ready}"
    );
    // Pings every WATCHDOG_USEC/2 while the device is polled and the store commits.
    for _ in 0..3 {
        manager.with("WATCHDOG=1").await;
    }
    manager
        .until("STATUS=1/1 hosts up", |m| m.contains("STATUS=1/1 hosts up"))
        .await;
    daemon.signal("TERM");
    let stopping = manager.with("STOPPING=1").await;
    assert!(stopping.contains("STATUS=stopping"), "{stopping}");
    let (status, log) = daemon.wait().await;
    assert!(status.success(), "{status}\n{}", log.join("\n"));
    assert!(
        log.iter()
            .any(|l| l.contains("stopped; everything committed")),
        "{}",
        log.join("\n")
    );
}

#[tokio::test]
async fn abstract_socket_and_a_watchdog_meant_for_another_process() {
    let (_device, _server, addr) = device(7).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("modbridge.toml");
    write(
        &config,
        &config_text(dir.path(), &[host_block("pump", addr, &[0])]),
    );
    let name = format!(
        "modbridge-test-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    );
    let mut manager = Manager::abstract_name(&name);
    let mut daemon = Daemon::start(
        &config,
        &[
            ("NOTIFY_SOCKET", &format!("@{name}")),
            ("WATCHDOG_USEC", "100000"),
            // The watchdog is some other process's business.
            ("WATCHDOG_PID", "1"),
        ],
    );
    manager.with("READY=1").await;
    daemon
        .line(&["systemd notified: ready", "watchdog=None"])
        .await;
    daemon.line(&["device answers", "host=pump"]).await;
    daemon.signal("TERM");
    manager.with("STOPPING=1").await;
    assert!(
        !manager.messages.iter().any(|m| m.contains("WATCHDOG=1")),
        "{:?}",
        manager.messages
    );
    let (status, log) = daemon.wait().await;
    assert!(status.success(), "{status}\n{}", log.join("\n"));
}

#[tokio::test]
async fn sighup_applies_a_good_config_and_refuses_a_bad_one() {
    let (alpha, _alpha_server, alpha_addr) = device(11).await;
    let (_beta, _beta_server, beta_addr) = device(22).await;
    let (gamma, _gamma_server, gamma_addr) = device(33).await;
    let alpha_proxy = CountingProxy::to(alpha_addr).await;
    let beta_proxy = CountingProxy::to(beta_addr).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("modbridge.toml");
    let alpha_block = host_block("alpha", alpha_proxy.addr, &[0]);
    write(
        &config,
        &config_text(
            dir.path(),
            &[
                alpha_block.clone(),
                host_block("beta", beta_proxy.addr, &[0]),
            ],
        ),
    );
    let socket = dir.path().join("notify.sock");
    let mut manager = Manager::at_path(&socket);
    let mut daemon = Daemon::start(
        &config,
        &[("NOTIFY_SOCKET", socket.to_str().expect("path"))],
    );
    manager.with("READY=1").await;
    daemon.line(&["device answers", "host=alpha "]).await;
    daemon.line(&["device answers", "host=beta "]).await;
    assert_eq!(alpha_proxy.connections(), 1);
    assert_eq!(beta_proxy.connections(), 1);

    // A good new config: alpha unchanged, beta gets an item, gamma is new.
    let good = config_text(
        dir.path(),
        &[
            alpha_block.clone(),
            host_block("beta", beta_proxy.addr, &[0, 5]),
            host_block("gamma", gamma_addr, &[0]),
        ],
    );
    write(&config, &good);
    daemon.signal("HUP");
    manager.with("RELOADING=1").await;
    let ready = manager.with("READY=1").await;
    assert!(ready.contains("STATUS=config reloaded"), "{ready}");
    daemon
        .line(&["host tasks updated after reload", "started=2", "stopped=1"])
        .await;
    daemon.line(&["device answers", "host=gamma "]).await;
    // beta was restarted: a new connection. alpha kept its task and connection.
    eventually("beta reconnects", || beta_proxy.connections() == 2).await;
    let before = alpha.requests();
    eventually("alpha keeps being polled", || {
        alpha.requests() >= before + 3
    })
    .await;
    assert_eq!(alpha_proxy.connections(), 1, "alpha was not interrupted");
    assert_eq!(
        daemon.count(&["polling", "host=alpha "]),
        1,
        "{:?}",
        daemon.seen
    );

    // A bad new config: refused with its position, the running one stays.
    let bad = format!("{good}\n[gateway_typo]\nid = \"x\"\n");
    let bad_line = bad
        .lines()
        .position(|l| l == "[gateway_typo]")
        .expect("line")
        + 1;
    write(&config, &bad);
    daemon.signal("HUP");
    manager.with("RELOADING=1").await;
    let ready = manager.with("READY=1").await;
    assert!(ready.contains("reload refused"), "{ready}");
    let diagnostic = daemon
        .line(&[&format!(
            "modbridge.toml:{bad_line}:2: unknown section [gateway_typo]"
        )])
        .await;
    assert!(diagnostic.contains("ERROR"), "{diagnostic}");
    daemon
        .line(&["reload refused", "old config keeps running"])
        .await;
    let (alpha_before, gamma_before) = (alpha.requests(), gamma.requests());
    eventually("alpha and gamma keep being polled", || {
        alpha.requests() >= alpha_before + 3 && gamma.requests() >= gamma_before + 3
    })
    .await;
    assert_eq!(alpha_proxy.connections(), 1);
    assert_eq!(beta_proxy.connections(), 2);
    // The refused reload touched no host task.
    assert_eq!(daemon.count(&["host tasks updated after reload"]), 1);

    daemon.signal("TERM");
    let (status, log) = daemon.wait().await;
    assert!(status.success(), "{status}\n{}", log.join("\n"));
    // What the reloaded hosts read is in the database.
    let loaded = modbridge::config::load_str(&config, &good).expect("good config");
    let store = modbridge::store::Store::open(&loaded).expect("store");
    for (host, key, value) in [
        ("beta", "modbus.beta.generic.1.40006", 22.0),
        ("gamma", "modbus.gamma.generic.1.40001", 33.0),
        ("alpha", "modbus.alpha.generic.1.40001", 11.0),
    ] {
        let id = store.item_id(host, key).expect("item");
        let history = store.history(id, 0, i64::MAX, None).await.expect("history");
        assert!(
            history.last().is_some_and(|p| p.1 == value),
            "{host} {key}: {history:?}"
        );
    }
    store.close().expect("close");
}

/// (device, inode) of a file, as `$JOURNAL_STREAM` names a stream.
fn identity(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).expect("metadata");
    format!("{}:{}", m.dev(), m.ino())
}

#[test]
fn log_lines_carry_syslog_priorities_only_when_stderr_is_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    // data_dir below a regular file: opening the store fails, an error is logged.
    std::fs::write(dir.path().join("file"), "").expect("file");
    let unusable = dir.path().join("unusable.toml");
    write(
        &unusable,
        &format!(
            "[gateway]\nid = \"test-box\"\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
            dir.path().join("file/data").display()
        ),
    );
    let invalid = dir.path().join("invalid.toml");
    write(&invalid, "[gateway]\nid = \"test box\"\n");
    let run = |config: &Path, journal_stream: &dyn Fn(&Path) -> String| -> (Option<i32>, String) {
        let log = dir.path().join(format!("stderr-{}", fastrand::u32(..)));
        let file = std::fs::File::create(&log).expect("log file");
        let status = Command::new(BIN)
            .args(["run", "-c", config.to_str().expect("path")])
            .env("RUST_LOG", "info")
            .env("JOURNAL_STREAM", journal_stream(&log))
            .stderr(Stdio::from(file))
            .status()
            .expect("run");
        (status.code(), std::fs::read_to_string(&log).expect("log"))
    };
    let (code, journal) = run(&unusable, &|log| identity(log));
    assert_eq!(code, Some(1), "{journal}");
    let error = journal
        .lines()
        .find(|l| l.contains("gateway stopped with an error"))
        .unwrap_or_else(|| panic!("{journal}"));
    assert!(error.starts_with("<3>"), "{journal}");
    assert!(
        !error.contains('\u{1b}'),
        "no colours for the journal: {error:?}"
    );
    assert!(
        journal.lines().all(|l| l.starts_with('<')),
        "every line has a priority:\n{journal}"
    );
    // A config refused at start: its diagnostics are errors in the journal too.
    let (code, journal) = run(&invalid, &|log| identity(log));
    assert_eq!(code, Some(2), "{journal}");
    let expected = format!("<3>{}:2:6: gateway id", invalid.display());
    assert!(
        journal.lines().any(|l| l.starts_with(&expected)),
        "{journal}"
    );
    // Not the journal (the variable was inherited, the stream is another): a terminal's lines.
    let (_, other) = run(&unusable, &|_| "1:1".to_string());
    assert!(!other.contains("<3>"), "{other}");
    assert!(other.contains("gateway stopped with an error"), "{other}");
}

/// A tool from systemd, or None (then the test is skipped, except under CI).
fn systemd_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} is missing; CI installs systemd (apt-get install systemd)"
        );
        eprintln!("skipped: {name} is not installed (apt-get install systemd)");
    }
    found
}

fn unit_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/modbridge.service")
}

/// The unit with ExecStart pointing at the binary under test: `verify` needs
/// the executable to exist.
fn testable_unit(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit_file()).expect("unit");
    assert!(text.contains("ExecStart=/usr/bin/modbridge run"), "{text}");
    let path = dir.join("modbridge.service");
    std::fs::write(&path, text.replace("/usr/bin/modbridge", BIN)).expect("write unit");
    path
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_tool("systemd-analyze") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = testable_unit(dir.path());
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "verify warns:\n{stderr}");
}

#[test]
fn the_unit_is_hardened_to_an_exposure_of_at_most_2() {
    let Some(analyze) = systemd_tool("systemd-analyze") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = testable_unit(dir.path());
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=20", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let overall = stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for modbridge.service:")
                .nth(1)
        })
        .unwrap_or_else(|| panic!("{stdout}"));
    let level: f64 = overall
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{overall}"));
    eprintln!("systemd-analyze security: {}", overall.trim());
    assert!(level <= 2.0, "exposure {level}:\n{stdout}");
    assert!(out.status.success(), "{stdout}");
    let text = std::fs::read_to_string(unit_file()).expect("unit");
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "SupplementaryGroups=dialout",
        "StateDirectory=modbridge",
        "ConfigurationDirectory=modbridge",
        "DevicePolicy=closed",
        "DeviceAllow=char-ttyUSB rw",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
    ] {
        assert!(text.lines().any(|l| l == line), "the unit lacks {line}");
    }
}

/// `TimeoutStopSec=` leaves room for the daemon's drain: host tasks, then the final commit.
#[test]
fn the_stop_timeout_exceeds_the_drain_time() {
    let text = std::fs::read_to_string(unit_file()).expect("unit");
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec=");
    let stop = modbridge::units::parse_duration(value.trim()).expect("a duration");
    let watchdog = text
        .lines()
        .find_map(|l| l.strip_prefix("WatchdogSec="))
        .map(|v| modbridge::units::parse_duration(v.trim()).expect("a duration"))
        .expect("WatchdogSec=");
    // HTTP requests under way, the host and alarm tasks, the uplink's
    // goodbye, then the store's final commit (the maintenance step under
    // way, the commit and its retries at SQLite's busy timeout): the
    // daemon's own constants.
    let budget = modbridge::daemon::stop_budget();
    assert_eq!(
        budget,
        modbridge::daemon::API_DRAIN
            + modbridge::daemon::HOST_DRAIN
            + modbridge::mqtt::STOP_GRACE
            + modbridge::store::StoreOptions::default().close_budget()
    );
    assert!(
        budget >= Duration::from_secs(30),
        "the budget counts every part: {budget:?}"
    );
    assert!(stop >= budget, "TimeoutStopSec={value} < {budget:?}");
    assert!(watchdog >= Duration::from_secs(10), "WatchdogSec too tight");
}

#[test]
fn sysusers_creates_the_user_in_dialout() {
    let Some(sysusers) = systemd_tool("systemd-sysusers") else {
        return;
    };
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/modbridge.sysusers");
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(root.path().join("etc")).expect("etc");
    // An existing dialout group, as on Debian.
    std::fs::write(root.path().join("etc/group"), "root:x:0:\ndialout:x:20:\n").expect("group");
    let out = Command::new(sysusers)
        .arg(format!("--root={}", root.path().display()))
        .arg(&file)
        .output()
        .expect("systemd-sysusers");
    if !out.status.success() && std::env::var_os("CI").is_none() {
        // Writing a passwd database may need root.
        eprintln!(
            "skipped: systemd-sysusers failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).expect("passwd");
    let group = std::fs::read_to_string(root.path().join("etc/group")).expect("group");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("modbridge:"))
        .unwrap_or_else(|| panic!("{passwd}"));
    assert!(
        user.ends_with(":/var/lib/modbridge:/usr/sbin/nologin"),
        "{user}"
    );
    assert!(
        group.lines().any(|l| l == "dialout:x:20:modbridge"),
        "{group}"
    );
}
