//! From `[mqtt]` to rumqttc options: broker address, persistent session, Last
//! Will, packet limits, credentials and TLS (rustls with the ring provider).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::model::MqttSpec;

/// Largest packet read from the broker. Downlink commands are far smaller
/// (see [`super::MAX_COMMAND_BYTES`]); a larger message is still read whole so
/// that it can be refused on `R/rejected` without breaking the connection.
pub(crate) const MAX_INCOMING_PACKET: usize = 4 * 1024 * 1024;
/// Largest packet sent: data rows are at most 192 KiB of JSON; the retained
/// metadata of a host with thousands of items can be larger.
pub(crate) const MAX_OUTGOING_PACKET: usize = 4 * 1024 * 1024;
/// Messages between `publish()` and PUBACK per connection (bounds the memory
/// held for retransmission: at most this many data rows of <= 192 KiB).
pub(crate) const WINDOW: usize = 32;
/// rumqttc's in-flight limit: above the window, so that its flow control never
/// holds back acknowledgements of downlink messages or the disconnect.
pub(crate) const CLIENT_INFLIGHT: u16 = WINDOW as u16 + 16;
/// Capacity of the request channel to the event loop.
pub(crate) const CHANNEL_CAPACITY: usize = WINDOW + 64;

/// System CA bundles tried when `mqtts://` has no `ca_file`.
const SYSTEM_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Why the client could not be set up (before any network traffic).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("mqtt url {0:?} must be mqtt://host[:port] or mqtts://host[:port]")]
    Url(String),
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {} holds no PEM certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("key_file {} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{what} {}: {reason}", path.display())]
    BadCertificate {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("mqtts:// without ca_file needs a system CA bundle; none found (tried {})", SYSTEM_CA_BUNDLES.join(", "))]
    NoSystemRoots,
    #[error("TLS set-up: {0}")]
    Tls(#[from] tokio_rustls::rustls::Error),
}

/// The broker's address as taken from the url.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP (IPv6 in brackets).
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    /// `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (8883).
    pub fn parse(url: &str) -> Result<Endpoint, SetupError> {
        let bad = || SetupError::Url(url.to_string());
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if rest.starts_with('[') {
            let (h, tail) = rest.split_once(']').ok_or_else(bad)?;
            let host = format!("{h}]");
            match tail.strip_prefix(':') {
                Some(p) => (host, p.parse().map_err(|_| bad())?),
                None if tail.is_empty() => (host, default_port),
                None => return Err(bad()),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
                None => (rest.to_string(), default_port),
            }
        };
        if host.is_empty() || host.contains('/') || port == 0 {
            return Err(bad());
        }
        Ok(Endpoint { host, port, tls })
    }
}

/// rumqttc options for one connection attempt. Files (password, CA,
/// certificate, key) are read here, at every attempt, so a fixed file is
/// picked up without a restart.
pub(crate) fn options(
    spec: &MqttSpec,
    root: &str,
    clean_session: bool,
) -> Result<MqttOptions, SetupError> {
    let client_id = if spec.client_id.is_empty() {
        format!("modbridge-{}", root.replace('/', "-"))
    } else {
        spec.client_id.clone()
    };
    let mut o = client_options(spec, &client_id)?;
    o.set_clean_session(clean_session);
    o.set_last_will(LastWill::new(
        format!("{root}/status"),
        crate::wire::status::LAST_WILL,
        QoS::AtLeastOnce,
        true,
    ));
    o.set_inflight(CLIENT_INFLIGHT);
    o.set_request_channel_capacity(CHANNEL_CAPACITY);
    // Downlink commands are acknowledged only once handled (durably recorded
    // or refused), so a crash in between has the broker deliver them again.
    o.set_manual_acks(true);
    Ok(o)
}

/// What every uplink's connection shares: the broker's address from the url,
/// keep-alive, packet limits, credentials and TLS. The session's own settings
/// (clean session, Last Will, in-flight limits, acknowledgements) are the
/// caller's.
pub(crate) fn client_options(spec: &MqttSpec, client_id: &str) -> Result<MqttOptions, SetupError> {
    let endpoint = Endpoint::parse(&spec.url)?;
    let mut o = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    // rumqttc refuses keep-alives under a second (except 0 = off).
    let keep_alive = if spec.keep_alive.is_zero() {
        Duration::ZERO
    } else {
        spec.keep_alive.max(Duration::from_secs(1))
    };
    o.set_keep_alive(keep_alive);
    o.set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET);
    let password = match &spec.password_file {
        Some(path) => Some(read_password(path)?),
        None => None,
    };
    match (&spec.username, password) {
        (Some(user), password) => {
            o.set_credentials(user.clone(), password.unwrap_or_default());
        }
        (None, Some(password)) => {
            o.set_credentials(String::new(), password);
        }
        (None, None) => {}
    }
    if endpoint.tls {
        let tls = tls_config(spec)?;
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(tls))));
    }
    Ok(o)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The password: the file's first line (a trailing newline is not part of it).
fn read_password(path: &Path) -> Result<String, SetupError> {
    let bytes = read("password_file", path)?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.lines().next().unwrap_or("").to_string())
}

fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SetupError> {
    let bytes = read(what, path)?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SetupError::BadCertificate {
            what,
            path: path.to_path_buf(),
            reason: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(SetupError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// rustls client config with the ring provider: the CA from `ca_file` (or the
/// system bundle), and the client certificate when `cert_file`/`key_file` are set.
pub(crate) fn tls_config(spec: &MqttSpec) -> Result<ClientConfig, SetupError> {
    let mut roots = RootCertStore::empty();
    match &spec.ca_file {
        Some(path) => {
            for cert in certificates("ca_file", path)? {
                roots.add(cert).map_err(|e| SetupError::BadCertificate {
                    what: "ca_file",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let bundle = SYSTEM_CA_BUNDLES
                .iter()
                .map(Path::new)
                .find(|p| p.is_file())
                .ok_or(SetupError::NoSystemRoots)?;
            let (added, _) = roots.add_parsable_certificates(certificates("CA bundle", bundle)?);
            if added == 0 {
                return Err(SetupError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&spec.cert_file, &spec.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates("cert_file", cert)?;
            let bytes = read("key_file", key)?;
            let private: PrivateKeyDer<'static> =
                rustls_pemfile::private_key(&mut bytes.as_slice())
                    .map_err(|e| SetupError::BadCertificate {
                        what: "key_file",
                        path: key.clone(),
                        reason: format!("bad PEM: {e}"),
                    })?
                    .ok_or_else(|| SetupError::NoKey { path: key.clone() })?;
            builder.with_client_auth_cert(chain, private)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// A connection failure in words an operator can act on.
pub(crate) fn describe(error: &rumqttc::ConnectionError, url: &str) -> String {
    use rumqttc::ConnectionError as E;
    match error {
        E::Tls(e) => format!(
            "TLS handshake with {url} failed: {e} (check ca_file, cert_file, key_file and the broker's certificate)"
        ),
        E::Io(e) if e.get_ref().is_some_and(|i| i.is::<tokio_rustls::rustls::Error>()) => format!(
            "TLS handshake with {url} failed: {e} (check ca_file, cert_file, key_file and the broker's certificate)"
        ),
        E::Io(e) => format!("cannot reach the broker at {url}: {e}"),
        E::NetworkTimeout => format!("no answer from the broker at {url} within the connect timeout"),
        E::ConnectionRefused(code) => format!(
            "the broker at {url} refused the connection: {code:?} (check username, password_file and client_id)"
        ),
        E::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(n),
        )) => format!(
            "the broker sent a {n}-byte message, more than the {MAX_INCOMING_PACKET} bytes the gateway reads; the connection was dropped"
        ),
        other => format!("connection to {url} lost: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_tls() {
        let e = Endpoint::parse("mqtt://10.0.0.5").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("10.0.0.5", 1883, false));
        let e = Endpoint::parse("mqtts://broker.example:9883/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("broker.example", 9883, true)
        );
        let e = Endpoint::parse("mqtts://[::1]").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("[::1]", 8883));
        let e = Endpoint::parse("mqtt://[::1]:1884").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("[::1]", 1884));
        for bad in [
            "tcp://x",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:x",
            "mqtt://[::1",
            "mqtt://a/b",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    fn spec(url: &str) -> MqttSpec {
        MqttSpec {
            keep_alive: Duration::from_millis(300),
            ..MqttSpec::new(url, "t")
        }
    }

    #[test]
    fn options_are_persistent_with_will_and_limits() {
        let o = options(&spec("mqtt://127.0.0.1:1999"), "modbridge/t", false).unwrap();
        assert!(!o.clean_session());
        assert_eq!(o.client_id(), "modbridge-t");
        assert_eq!(o.keep_alive(), Duration::from_secs(1));
        assert_eq!(o.max_packet_size(), MAX_INCOMING_PACKET);
        assert_eq!(o.inflight(), CLIENT_INFLIGHT);
        assert!(o.manual_acks());
        let will = o.last_will().unwrap();
        assert_eq!(will.topic, "modbridge/t/status");
        assert!(will.retain);
        assert_eq!(&will.message[..], crate::wire::status::LAST_WILL.as_bytes());
    }

    #[test]
    fn bad_tls_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec("mqtts://127.0.0.1:1999");
        s.ca_file = Some(dir.path().join("missing.pem"));
        let e = options(&s, "r", false).unwrap_err().to_string();
        assert!(
            e.contains("cannot read ca_file") && e.contains("missing.pem"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        s.ca_file = Some(junk);
        let e = options(&s, "r", false).unwrap_err().to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let mut s = spec("mqtt://127.0.0.1:1999");
        s.username = Some("box".into());
        s.password_file = Some(pw);
        let o = options(&s, "r", false).unwrap();
        let login = o.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("box", "secret")
        );
    }
}
