//! `modbridge scan`: which units answer on a serial line (at which baud rate
//! and parity) or behind a TCP endpoint, and which device profile fits them.
//!
//! A unit that answers anything, an exception included, is there, except
//! 0A/0B, which a converter or proxy answers for units that are not. Every
//! timeout drops the link (see [`crate::modbus`]), so a late answer to an
//! earlier try is never taken for the next unit's.
//!
//! Early stop: when several serial settings are tried, a setting at which
//! the first [`EARLY_STOP`] units are all silent is given up (a wrong baud
//! rate times out on every unit); a setting where something answered is
//! swept to the end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_modbus::ExceptionCode;

use crate::modbus::{Buses, Link, Operation, Priority, RequestError};
use crate::model::{Connection, HostSpec, SerialSettings, Table};

/// Consecutive silent units after which a setting with no answer yet is given up.
pub const EARLY_STOP: usize = 16;

/// What to scan.
#[derive(Debug, Clone)]
pub struct ScanPlan {
    pub connection: Connection,
    /// Unit ids, in the order they are tried.
    pub units: Vec<u8>,
    /// Serial settings to try, in order (empty for TCP).
    pub settings: Vec<SerialSettings>,
    /// Per try.
    pub timeout: Duration,
}

impl ScanPlan {
    /// The settings the scan walks through: `None` once for TCP.
    pub fn settings(&self) -> Vec<Option<SerialSettings>> {
        if self.connection.is_serial() {
            self.settings.iter().copied().map(Some).collect()
        } else {
            vec![None]
        }
    }

    /// True when the early stop applies (more than one serial setting).
    pub fn early_stop(&self) -> bool {
        self.settings().len() > 1
    }

    /// The longest the scan takes (every unit silent at every setting), and
    /// the time it takes when every setting stops early.
    pub fn durations(&self) -> (Duration, Duration) {
        let settings = self.settings().len() as u32;
        let units = self.units.len() as u32;
        let worst = self.timeout * settings * units;
        let early = if self.early_stop() {
            self.timeout * settings * units.min(EARLY_STOP as u32)
        } else {
            worst
        };
        (worst, early)
    }
}

/// How one unit answered the scan's read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// It answered the read.
    Registers,
    /// It answered with this exception: it is there.
    Exception(ExceptionCode),
    /// Nothing, or only what a converter says for a unit that is not there.
    Absent,
}

/// Classifies the answer to the scan's read.
pub fn presence(result: &Result<Vec<u16>, RequestError>) -> Presence {
    match result {
        Ok(_) => Presence::Registers,
        Err(RequestError::Exception(
            ExceptionCode::GatewayPathUnavailable | ExceptionCode::GatewayTargetDevice,
        )) => Presence::Absent,
        Err(RequestError::Exception(code)) => Presence::Exception(*code),
        Err(_) => Presence::Absent,
    }
}

/// A device found.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub settings: Option<SerialSettings>,
    pub unit: u8,
    pub presence: Presence,
    /// Its answer to device identification (43/14), where it gives one.
    pub identity: Option<Identity>,
    /// A profile that fits, and why.
    pub profile: Option<(PathBuf, &'static str)>,
}

/// Progress, for the person waiting.
pub trait Progress {
    /// About to try `unit` (the `index`-th of the setting's units).
    fn trying(&mut self, settings: Option<SerialSettings>, index: usize, unit: u8, found: usize);
    /// Done with a setting; `stopped_early` when it was given up.
    fn setting_done(
        &mut self,
        settings: Option<SerialSettings>,
        tried: usize,
        found: usize,
        stopped_early: bool,
    );
}

/// The link the scan uses at one setting.
fn scan_link(plan: &ScanPlan, settings: Option<SerialSettings>, buses: &Buses) -> Link {
    let host = HostSpec {
        connection: plan.connection.clone(),
        serial: settings,
        timeout: plan.timeout,
        retries: 0,
        ..HostSpec::tcp("scan", "127.0.0.1", 502, Vec::new())
    };
    Link::new(&host, buses)
}

/// The scan's read: holding register 0 (an exception answer says "there" as well).
const PROBE: Operation = Operation::Read {
    table: Table::Holding,
    start: 0,
    count: 1,
};

/// Scans every setting and unit of `plan`, reporting progress.
pub async fn scan(plan: &ScanPlan, progress: &mut dyn Progress) -> Vec<Found> {
    let mut found = Vec::new();
    for settings in plan.settings() {
        // A fresh bus per setting: the port is reopened with its settings.
        let buses = Buses::default();
        let mut link = scan_link(plan, settings, &buses);
        let mut here = 0;
        let mut silent_run = 0;
        let mut tried = 0;
        let mut stopped_early = false;
        for (index, &unit) in plan.units.iter().enumerate() {
            if plan.early_stop() && here == 0 && silent_run >= EARLY_STOP {
                stopped_early = true;
                break;
            }
            progress.trying(settings, index, unit, found.len());
            link.set_unit(unit);
            tried += 1;
            let result = link.request(&PROBE, Priority::Poll).await.map(|d| match d {
                crate::modbus::ReadData::Words(w) => w,
                crate::modbus::ReadData::Bits(_) => Vec::new(),
            });
            match presence(&result) {
                Presence::Absent => silent_run += 1,
                p => {
                    here += 1;
                    silent_run = 0;
                    found.push(Found {
                        settings,
                        unit,
                        presence: p,
                        identity: None,
                        profile: None,
                    });
                }
            }
        }
        progress.setting_done(settings, tried, here, stopped_early);
    }
    found
}

/// The basic device identification objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

/// The request for the basic identification objects (43/14, read code 1, from object 0).
pub fn identification_request() -> Option<tokio_modbus::Request<'static>> {
    let pdu = tokio_modbus::bytes::Bytes::from_static(&[0x2B, 0x0E, 0x01, 0x00]);
    tokio_modbus::Request::try_from(pdu).ok()
}

/// Asks a found device for its identification; `None` when it does not answer it.
pub async fn identify(plan: &ScanPlan, found: &Found) -> Option<Identity> {
    let request = identification_request()?;
    let buses = Buses::default();
    let mut link = scan_link(plan, found.settings, &buses);
    link.set_unit(found.unit);
    let tokio_modbus::Response::ReadDeviceIdentification(answer) =
        link.forward(&request, Priority::Poll).await.ok()?
    else {
        return None;
    };
    let mut identity = Identity::default();
    for object in &answer.device_id_objects {
        let text = String::from_utf8_lossy(&object.value).trim().to_string();
        match object.id {
            0 => identity.vendor = text,
            1 => identity.product = text,
            2 => identity.revision = text,
            _ => {}
        }
    }
    Some(identity)
}

/// The profile whose model (or every word of its file name) appears in the
/// device's identification.
pub fn profile_for_identity<'a>(
    identity: &Identity,
    profiles: &'a [Profile],
) -> Option<&'a Profile> {
    let said = format!("{} {}", identity.vendor, identity.product).to_lowercase();
    profiles.iter().find(|p| {
        let model = p.host.model.to_lowercase();
        let stem = p
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        (model != "generic" && !model.is_empty() && said.contains(&model))
            || (!stem.is_empty() && stem.split(['-', '_']).all(|w| said.contains(w)))
    })
}

/// A device profile, loaded as a host's items.
#[derive(Debug, Clone)]
pub struct Profile {
    pub path: PathBuf,
    pub host: Arc<HostSpec>,
}

/// Loads every `*.toml` profile in `dir` (those that do not load are skipped).
pub fn load_profiles(dir: &Path) -> Vec<Profile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|path| {
            let text = format!(
                "[gateway]\nid = \"scan\"\ndata_dir = \"/nonexistent\"\n\n[[hosts]]\nhost = \"p\"\n\
                 connection = \"tcp://127.0.0.1:502\"\nprofile = {}\n",
                toml_string(&path.to_string_lossy())
            );
            let config = crate::config::load_str(Path::new("scan.toml"), &text).ok()?;
            let host = config.hosts.first()?.clone();
            Some(Profile { path, host })
        })
        .collect()
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// True when the device answers the profile's reads (at most its first three
/// requests) without an exception, they are not all zero (which fits
/// anything), the profile's items with bounds read inside them, and there is
/// at least one such item: the register signature fits.
pub async fn signature_fits(plan: &ScanPlan, found: &Found, profile: &Profile) -> bool {
    let buses = Buses::default();
    let mut link = scan_link(plan, found.settings, &buses);
    link.set_unit(found.unit);
    let all: Vec<usize> = (0..profile.host.items.len()).collect();
    let requests = crate::plan::plan_items(&profile.host, &all);
    let (mut bounded, mut nonzero) = (0, false);
    for req in requests.iter().take(3) {
        let op = Operation::Read {
            table: req.table,
            start: req.start,
            count: req.count,
        };
        let Ok(crate::modbus::ReadData::Words(words)) = link.request(&op, Priority::Poll).await
        else {
            if req.table.is_bits() {
                continue;
            }
            return false;
        };
        nonzero |= words.iter().any(|&w| w != 0);
        for &i in &req.items {
            let item = &profile.host.items[i];
            let offset = usize::from(item.address - req.start);
            let Some(slice) = words.get(offset..) else {
                return false;
            };
            let Ok(v) = crate::decode::decode_item(item, slice) else {
                return false;
            };
            if item.lower_bound().is_some() || item.upper_bound().is_some() {
                bounded += 1;
            }
            let low = item.lower_bound().unwrap_or(f64::NEG_INFINITY);
            let high = item.upper_bound().unwrap_or(f64::INFINITY);
            if !(v.is_finite() && (low..=high).contains(&v)) {
                return false;
            }
        }
    }
    nonzero && bounded > 0
}

/// The profile that fits a found device: by its identification, else by
/// its register signature.
pub async fn suggest_profile(
    plan: &ScanPlan,
    found: &Found,
    profiles: &[Profile],
) -> Option<(PathBuf, &'static str)> {
    if let Some(p) = found
        .identity
        .as_ref()
        .and_then(|i| profile_for_identity(i, profiles))
    {
        return Some((p.path.clone(), "its identification names it"));
    }
    for profile in profiles {
        if signature_fits(plan, found, profile).await {
            return Some((profile.path.clone(), "its registers fit"));
        }
    }
    None
}

/// Parses `1-247` or `1,3,10-20`; every unit in 0..=255.
pub fn parse_units(s: &str) -> Result<Vec<u8>, String> {
    let bad = |part: &str| format!("--units: {part:?} is not a unit id or range like 1-247");
    let mut units = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u8 = lo.parse().map_err(|_| bad(part))?;
        let hi: u8 = hi.parse().map_err(|_| bad(part))?;
        if lo > hi {
            return Err(bad(part));
        }
        for u in lo..=hi {
            if !units.contains(&u) {
                units.push(u);
            }
        }
    }
    if units.is_empty() {
        return Err("--units names no unit".into());
    }
    Ok(units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_durations() {
        assert_eq!(parse_units("1-3,7, 2"), Ok(vec![1, 2, 3, 7]));
        assert_eq!(parse_units("1-247").map(|u| u.len()), Ok(247));
        for bad in ["", "0-300", "5-1", "x", "1-"] {
            assert!(parse_units(bad).is_err(), "{bad}");
        }
        let plan = ScanPlan {
            connection: Connection::Rtu {
                path: "/dev/null".into(),
            },
            units: (1..=247).collect(),
            settings: vec![SerialSettings::default(); 6],
            timeout: Duration::from_millis(200),
        };
        let (worst, early) = plan.durations();
        assert_eq!(worst, Duration::from_millis(200 * 6 * 247));
        assert_eq!(early, Duration::from_millis(200 * 6 * EARLY_STOP as u64));
        let tcp = ScanPlan {
            connection: Connection::Tcp {
                host: "h".into(),
                port: 502,
            },
            ..plan
        };
        assert!(!tcp.early_stop());
        assert_eq!(tcp.durations().0, tcp.durations().1);
    }

    #[test]
    fn converter_exceptions_are_absent() {
        use ExceptionCode::*;
        assert_eq!(presence(&Ok(vec![1])), Presence::Registers);
        assert_eq!(
            presence(&Err(RequestError::Exception(IllegalDataAddress))),
            Presence::Exception(IllegalDataAddress)
        );
        for code in [GatewayPathUnavailable, GatewayTargetDevice] {
            assert_eq!(
                presence(&Err(RequestError::Exception(code))),
                Presence::Absent
            );
        }
        assert_eq!(
            presence(&Err(RequestError::Timeout(Duration::from_millis(1)))),
            Presence::Absent
        );
    }
}
