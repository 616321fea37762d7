//! The device side of config requests: what a host's task calls to carry a
//! request out over its Modbus link. One attempt reads the item and compares
//! it with `expected`, marks the request `written`, writes with the item's
//! function code and reads back; a device that cannot be reached is retried
//! with backoff until the request expires.

use std::time::Duration;

use tokio::time::Instant;

use super::service::{ConfigRequests, PendingRequest, Status, REMOVED};
use super::value::{check_target, format_at_item_precision, same_value};
use crate::clock::unix_ms;
use crate::decode;
use crate::modbus::{
    exception_name, refuses_request, Backoff, Link, Operation, Priority, ReadData, RequestError,
};
use crate::model::{HostSpec, ItemSpec, Table};

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq)]
enum Attempt {
    /// Written and read back equal: the value read back.
    Success(f64),
    /// The device answered, and the request cannot succeed.
    Failed(String),
    /// The device could not be reached; retry later.
    Unreachable(String),
    /// Superseded (or ended) while under way: nothing was written.
    Withdrawn,
}

/// Reads an item for a write (ahead of queued poll reads): its value and, for
/// a register, its first word.
async fn read_item(link: &mut Link, item: &ItemSpec) -> Result<(f64, Option<u16>), RequestError> {
    let op = Operation::Read {
        table: item.table,
        start: item.address,
        count: item.width(),
    };
    match link.request(&op, Priority::Write).await? {
        ReadData::Words(words) => {
            let v = decode::decode_item(item, &words)
                .map_err(|e| RequestError::Transport(e.to_string()))?;
            Ok((v, words.first().copied()))
        }
        ReadData::Bits(bits) => match bits.first() {
            Some(b) => Ok((decode::decode_bit_item(item, *b), None)),
            None => Err(RequestError::Transport("empty answer".into())),
        },
    }
}

/// A step of an attempt that got no value: an answer about the request
/// itself (exception 01, 02, 03) ends the request, with `refused` saying
/// which step; anything else (no answer, or a "not now" exception such as 06
/// server busy or 0B gateway target failed) leaves it to be retried.
fn step_failed(e: RequestError, refused: &str) -> Attempt {
    match e {
        RequestError::Exception(code) if refuses_request(code) => Attempt::Failed(format!(
            "{refused}: Modbus exception {}",
            exception_name(code)
        )),
        e => Attempt::Unreachable(e.to_string()),
    }
}

/// One attempt at a request: check `expected`, write, read back.
async fn carry_out(
    link: &mut Link,
    item: &ItemSpec,
    host: &str,
    p: &PendingRequest,
    requests: &ConfigRequests,
) -> Attempt {
    let words = match check_target(item, p.target) {
        Ok(w) => w,
        Err(reason) => return Attempt::Failed(reason),
    };
    let want = match decode::written_value(item, p.target) {
        Ok(v) => v,
        Err(e) => return Attempt::Failed(e.to_string()),
    };
    let on = words.first().copied().unwrap_or(0) != 0;
    let bit = if item.table.is_bits() { None } else { item.bit };
    // On a shared serial line, no poll read comes between our frames.
    let _turn = link.write_turn();
    let mut word = None;
    if p.expected.is_some() || bit.is_some() {
        match read_item(link, item).await {
            Err(e) => {
                return step_failed(e, "the device refused reading the item before the write")
            }
            Ok((found, w)) => {
                if let Some(expected) = p.expected {
                    // After a write that may have reached the device (an
                    // earlier attempt, or before a restart), the target
                    // counts as expected too.
                    let ours = p.written && same_value(item, found, want);
                    if !same_value(item, found, expected) && !ours {
                        return Attempt::Failed(format!(
                            "expected {}, device has {}",
                            format_at_item_precision(item, expected),
                            format_at_item_precision(item, found)
                        ));
                    }
                }
                word = w;
            }
        }
    }
    let op = match (item.table, bit) {
        (Table::Coil, _) => Operation::WriteCoil {
            address: item.address,
            on,
        },
        (_, Some(b)) => match word {
            Some(w) => Operation::WriteRegisters {
                start: item.address,
                words: vec![decode::encode_bit_into(w, b, on)],
            },
            None => return Attempt::Unreachable("empty answer".into()),
        },
        _ => Operation::WriteRegisters {
            start: item.address,
            words,
        },
    };
    // Durably noted before anything can reach the device (kept across a
    // crash); then, right before the frame goes out and under the lock a
    // supersede takes, checked again: a request superseded meanwhile is
    // never written.
    if !p.written {
        if let Err(e) = requests.mark_written(p.rid).await {
            return Attempt::Unreachable(format!("cannot record the attempt: {e}"));
        }
    }
    let mut clear_to_write = || requests.clear_to_write(host, &p.key, p.rid);
    match link
        .request_gated(&op, Priority::Write, &mut clear_to_write)
        .await
    {
        Err(e) => return step_failed(e, "the device refused the write"),
        Ok(None) => return Attempt::Withdrawn,
        Ok(Some(_)) => {}
    }
    match read_item(link, item).await {
        Err(e) => step_failed(
            e,
            "the device acknowledged the write but refused reading it back",
        ),
        Ok((found, _)) if same_value(item, found, want) => Attempt::Success(found),
        Ok((found, _)) => Attempt::Failed(format!(
            "wrote {}, device reads back {}",
            format_at_item_precision(item, want),
            format_at_item_precision(item, found)
        )),
    }
}

/// The outcome of a config request carried out: the value a host's task
/// wrote and read back, a new sample for the item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CarriedOut {
    /// Index into the host's items.
    pub index: usize,
    pub value: f64,
    /// Unix seconds of the read-back.
    pub clock: i64,
}

/// A host's share of the config requests, for its task: wakes the task when a
/// request arrives, and carries out the host's pending requests with backoff
/// while the device is unreachable.
pub struct HostConfigRequests {
    requests: ConfigRequests,
    host: String,
    wake: tokio::sync::watch::Receiver<u64>,
    backoff: Backoff,
    /// While the device is unreachable: the next attempt.
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

impl HostConfigRequests {
    /// The share of `host`; `wake` sees a change when a request for it arrives.
    pub(super) fn new(
        requests: ConfigRequests,
        host: &HostSpec,
        wake: tokio::sync::watch::Receiver<u64>,
    ) -> HostConfigRequests {
        HostConfigRequests {
            requests,
            host: host.host.clone(),
            wake,
            backoff: Backoff::for_host(host),
            retry_at: None,
            last_error: None,
        }
    }

    /// Completes when a new request for this host has arrived.
    pub async fn arrived(&mut self) {
        if self.wake.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// When [`HostConfigRequests::run_due`] has something to do: now for a new request,
    /// the next retry or the earliest expiry; None without pending requests.
    pub fn next_wake(&self) -> Option<Instant> {
        let pending = self.requests.pending(&self.host);
        let earliest = pending.iter().map(|p| p.expires_ms).min()?;
        // Capped so that an absurd expiry never overflows the clock.
        let until = Duration::from_millis(
            u64::try_from(earliest.saturating_sub(unix_ms()))
                .unwrap_or(0)
                .min(86_400_000),
        );
        let expiry = Instant::now() + until;
        Some(match self.retry_at {
            Some(at) => at.min(expiry),
            None => Instant::now(),
        })
    }

    /// The device answered a read: a write waiting for its backoff is tried now.
    pub fn device_answered(&mut self) {
        if self.retry_at.is_some() {
            self.retry_at = Some(Instant::now());
        }
    }

    /// Carries out the pending requests that are due: expired ones fail, the
    /// others are attempted (unless the device is in backoff). Each value
    /// written and read back is handed to `carried_out` before its SUCCESS is
    /// recorded, so whoever sees the SUCCESS sees the new value too.
    pub async fn run_due(
        &mut self,
        host: &HostSpec,
        link: &mut Link,
        mut carried_out: impl FnMut(CarriedOut),
    ) {
        let pending = self.requests.pending(&self.host);
        if pending.is_empty() {
            self.retry_at = None;
            return;
        }
        for p in pending {
            if unix_ms() >= p.expires_ms {
                let reason = match &self.last_error {
                    Some(e) => format!(
                        "expired: the device could not be reached within {} (last error: {e})",
                        crate::units::format_duration(host.write_expiry)
                    ),
                    None => "expired before it could be carried out".to_string(),
                };
                self.end(&p, Status::Failed, Some(reason)).await;
                continue;
            }
            if self.retry_at.is_some_and(|at| at > Instant::now()) {
                continue;
            }
            let Some(index) = host
                .items
                .iter()
                .position(|i| i.key == p.key && i.configurable)
            else {
                self.end(&p, Status::Failed, Some(REMOVED.into())).await;
                continue;
            };
            let item = &host.items[index];
            let attempt = carry_out(link, item, &self.host, &p, &self.requests).await;
            match attempt {
                Attempt::Success(value) => {
                    self.answered();
                    carried_out(CarriedOut {
                        index,
                        value,
                        clock: unix_ms() / 1000,
                    });
                    self.end(&p, Status::Success, None).await;
                }
                Attempt::Failed(reason) => {
                    self.answered();
                    self.end(&p, Status::Failed, Some(reason)).await;
                }
                Attempt::Withdrawn => {
                    tracing::info!(host = %self.host, key = %p.key, "config request superseded while under way; not written");
                }
                Attempt::Unreachable(error) => {
                    let wait = self.backoff.fail();
                    self.retry_at = Some(Instant::now() + wait);
                    tracing::warn!(
                        host = %self.host,
                        key = %p.key,
                        error = %error,
                        retry_in = ?wait,
                        "config request: device unreachable; retrying"
                    );
                    self.requests
                        .note_unreachable(&self.host, &p.key, p.rid, &error);
                    self.last_error = Some(error);
                }
            }
        }
    }

    fn answered(&mut self) {
        self.backoff.reset();
        self.retry_at = None;
        self.last_error = None;
    }

    async fn end(&mut self, p: &PendingRequest, status: Status, reason: Option<String>) {
        if let Err(e) = self
            .requests
            .finish(&self.host, &p.key, p.rid, status, reason)
            .await
        {
            // Stays pending; retried after the backoff so that a broken
            // database does not make the task spin.
            tracing::error!(host = %self.host, key = %p.key, error = %e, "cannot record a config request's status");
            self.retry_at = Some(Instant::now() + self.backoff.fail());
        }
    }
}
