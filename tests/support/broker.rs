//! A real mosquitto broker on a free loopback port, an upstream MQTT client
//! (rumqttc) that records everything it receives, and test certificates.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter, Transport};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A mosquitto process with its own config, persistence and log in a tempdir.
pub struct Broker {
    pub dir: tempfile::TempDir,
    pub port: u16,
    conf: PathBuf,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl Broker {
    /// Plain MQTT, anonymous, persistent (sessions survive a restart).
    pub fn start() -> Broker {
        Broker::with_listener(|_| String::new())
    }

    /// TLS only, client certificates required, from files written by `pki`.
    pub fn start_tls(pki: &Pki) -> Broker {
        let (ca, cert, key) = (
            pki.path("ca.pem"),
            pki.path("server.pem"),
            pki.path("server.key"),
        );
        Broker::with_listener(move |_| {
            format!(
                "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                ca.display(),
                cert.display(),
                key.display()
            )
        })
    }

    fn with_listener(extra: impl Fn(u16) -> String) -> Broker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\n{}allow_anonymous true\nuser root\npersistence true\npersistence_location {}/\nmax_queued_messages 0\nlog_dest file {}\nlog_type all\n",
            extra(port),
            dir.path().display(),
            dir.path().join("mosquitto.log").display()
        );
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let mut b = Broker {
            dir,
            port,
            conf,
            child: None,
        };
        b.run();
        b
    }

    fn run(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (apt-get install mosquitto)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker the way systemd would (SIGTERM: it saves its sessions).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "TERM");
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same config.
    pub fn restart(&mut self) {
        self.stop();
        self.run();
    }

    pub fn url(&self, tls: bool) -> String {
        let scheme = if tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends a signal by name (TERM, KILL, ...) to a child process.
pub fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status();
}

/// One message as the upstream received it.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    pub at: Instant,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// An upstream MQTT client with a persistent session that records every
/// message on its subscriptions; reconnects on its own.
pub struct Upstream {
    pub client: AsyncClient,
    msgs: Arc<Mutex<Vec<Msg>>>,
    seen: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Connects (persistent session unless `clean`), subscribes at QoS 1 and
    /// waits for the SUBACK.
    pub async fn connect(
        port: u16,
        id: &str,
        tls: Option<ClientConfig>,
        filters: &[&str],
        clean: bool,
    ) -> Upstream {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(clean);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(8 << 20, 8 << 20);
        if let Some(tls) = tls {
            o.set_transport(Transport::Tls(rumqttc::TlsConfiguration::Rustls(Arc::new(
                tls,
            ))));
        }
        let (client, mut el) = AsyncClient::new(o, 64);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let (seen_tx, seen) = tokio::sync::watch::channel(0u64);
        let (sub_tx, mut subacks) = tokio::sync::watch::channel(0u64);
        let filters: Vec<SubscribeFilter> = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce))
            .collect();
        let task = {
            let (client, msgs) = (client.clone(), msgs.clone());
            tokio::spawn(async move {
                loop {
                    match el.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe_many(filters.clone());
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => sub_tx.send_modify(|n| *n += 1),
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            msgs.lock().unwrap().push(Msg {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                                at: Instant::now(),
                            });
                            seen_tx.send_modify(|n| *n += 1);
                        }
                        Ok(_) => {}
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(10), subacks.changed())
            .await
            .expect("upstream subscribed within 10 s")
            .expect("subacks");
        Upstream {
            client,
            msgs,
            seen,
            task,
        }
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the messages received so far.
    pub async fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Msg]) -> bool,
    ) -> Vec<Msg> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            self.seen.borrow_and_update();
            let msgs = self.messages();
            if pred(&msgs) {
                return msgs;
            }
            let topics: Vec<_> = msgs.iter().rev().take(5).map(|m| m.topic.clone()).collect();
            match tokio::time::timeout_at(deadline, self.seen.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!(
                    "timed out waiting for {what}; {} messages, last topics {topics:?}",
                    msgs.len()
                ),
            }
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .expect("publish");
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A data message of `R/data/<host>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    pub seq: Option<u64>,
    pub host: String,
    pub resend: bool,
    pub items: BTreeMap<String, Vec<(i64, f64)>>,
    pub raw: Vec<u8>,
}

/// The data messages among `msgs` (in arrival order).
pub fn data_messages(msgs: &[Msg], root: &str) -> Vec<Data> {
    let prefix = format!("{root}/data/");
    msgs.iter()
        .filter(|m| m.topic.starts_with(&prefix))
        .map(|m| {
            let v = m.json();
            let mut items = BTreeMap::new();
            if let Some(obj) = v["items"].as_object() {
                for (k, points) in obj {
                    let pts = points
                        .as_array()
                        .expect("points array")
                        .iter()
                        .map(|p| (p[0].as_i64().expect("clock"), p[1].as_f64().expect("value")))
                        .collect();
                    items.insert(k.clone(), pts);
                }
            }
            Data {
                seq: v["seq"].as_u64(),
                host: v["host"].as_str().unwrap_or_default().to_string(),
                resend: v["resend"] == serde_json::Value::Bool(true),
                items,
                raw: m.payload.clone(),
            }
        })
        .collect()
}

/// Test certificates: a CA, a server certificate for 127.0.0.1/localhost, a
/// client certificate, and an unrelated CA; written as PEM files in a tempdir.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let mut f = std::fs::File::create(dir.path().join(name)).expect("create");
            f.write_all(text.as_bytes()).expect("write");
        };
        let ca = |name: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let cert = params.self_signed(&key).expect("self-signed");
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca("modbridge test CA");
        write("ca.pem", &ca_pem);
        let (wrong_pem, _) = ca("some other CA");
        write("wrong-ca.pem", &wrong_pem);
        for (name, sans) in [
            (
                "server",
                vec!["127.0.0.1".to_string(), "localhost".to_string()],
            ),
            ("client", vec!["modbridge-box".to_string()]),
        ] {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(sans).expect("params");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            let cert = params.signed_by(&key, &issuer).expect("sign");
            write(&format!("{name}.pem"), &cert.pem());
            write(&format!("{name}.key"), &key.serialize_pem());
        }
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client config trusting `ca_file` and presenting the client certificate.
    pub fn client(&self, ca_file: &str) -> ClientConfig {
        let certs = |p: &Path| -> Vec<CertificateDer<'static>> {
            let bytes = std::fs::read(p).expect("read pem");
            rustls_pemfile::certs(&mut bytes.as_slice())
                .collect::<Result<_, _>>()
                .expect("pem")
        };
        let mut roots = RootCertStore::empty();
        for c in certs(&self.path(ca_file)) {
            roots.add(c).expect("root");
        }
        let key_bytes = std::fs::read(self.path("client.key")).expect("key");
        let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_bytes.as_slice())
            .expect("pem")
            .expect("a key");
        ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs(&self.path("client.pem")), key)
        .expect("client auth")
    }
}

/// Polls `cond` until it holds or `timeout` passes (for state that has no
/// event to await, e.g. another process's database).
pub async fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
