//! The alarm engine: the evaluation of trigger expressions and the events it
//! records.
//!
//! - [`crate::expr`]: Zabbix-style expressions (`max(/pump/temp,5m) < -20 and last(/pump/run) = 1`)
//!   -> an [`Expr`] AST; the config loader parses and checks them (hosts,
//!   keys, windows) into the config's [`crate::model::TriggerSpec`]s.
//! - [`compile`]: the triggers of a loaded [`Config`] as [`CompiledTrigger`]s.
//! - [`Engine`]: pure evaluation; samples and errors in, [`TriggerChange`]s out.
//! - [`run`]: the daemon's alarm task (samples from the hosts' live state,
//!   evaluation on samples and once per second, events stored with retries).
//! - [`Alarms`]: stored trigger states, events and acknowledgements, the
//!   uplink messages announcing them, and the API's view.
//!
//! # Semantics
//!
//! Values are 3-valued internally: a number, or *unknown*. Comparisons and
//! logic give 1 or 0; any non-zero number is true. Arithmetic or a comparison
//! with an unknown operand is unknown, as is division by zero and NaN.
//! `false and unknown` is false, `true or unknown` is true, `not unknown` is
//! unknown. `=` and `<>` compare with a relative tolerance of 1e-9.
//!
//! Functions (window `W` is a time span: samples with `clock > now - W`;
//! `#N` is the newest N samples, or fewer if fewer are held):
//!
//! | function | value | unknown when |
//! |---|---|---|
//! | `last` | newest value | item in error; no staleness limit otherwise |
//! | `change` | newest minus the one before | item in error |
//! | `min` `max` `avg` `sum` | over the window | item in error, or no sample in the window (its newest sample is older than the window allows) |
//! | `count` | samples in the window (may be 0) | item in error |
//! | `nodata(W)` | 1 if no sample for `W` seconds, else 0 | never; an item in error sends no samples, so it fires after `W` |
//!
//! `last`/`change` have no staleness limit on purpose: the poller reports a
//! failed read with [`Engine::on_error`], which is what makes them unknown;
//! an item that is merely polled slowly keeps its last value. For `nodata`, an
//! item that never reported counts from the first [`Engine::evaluate`] call.
//!
//! Trigger values: a trigger starts `OK` (or as [`Engine::restore`]d) and is
//! first evaluated once every item its expressions name has had a sample
//! since the engine started (two for `change`); an item named only under
//! `nodata(W)` counts as ready after a sample or after `W` seconds, so a
//! restart neither clears nor re-raises a `nodata` problem. From `OK` it becomes `problem` when
//! the expression is true, `unknown` when it is unknown. From `problem` it
//! returns to `OK` when the expression is false **and** the recovery
//! expression (if any) is true (as in Zabbix: a problem whose condition still
//! holds is never recovered); it stays `problem` while the expression is true
//! or the recovery expression is false; otherwise it becomes `unknown`. From
//! `unknown` it is evaluated as from the last known value (`OK` or `problem`),
//! so hysteresis survives an outage.

mod engine;
pub mod service;
mod task;
#[cfg(test)]
mod tests;

pub use crate::expr::{parse, BinOp, Expr, ExprError, Func, ItemRef, Window};
pub use engine::{Engine, ItemIndex, TriggerChange};
pub use service::{
    AckError, Acknowledgement, AlarmStats, Alarms, EventFilter, EventObject, TriggerObject,
    EVENTS_LIMIT, MAX_ACK_BYTES,
};
pub use task::run;

use crate::model::{Config, TriggerSpec};

/// The value of a trigger, spelled as in the JSON (`OK`, `problem`, `unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TriggerValue {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "problem")]
    Problem,
    #[serde(rename = "unknown")]
    Unknown,
}

impl TriggerValue {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerValue::Ok => "OK",
            TriggerValue::Problem => "problem",
            TriggerValue::Unknown => "unknown",
        }
    }

    /// Parses the JSON spelling.
    pub fn parse(s: &str) -> Option<TriggerValue> {
        match s {
            "OK" => Some(TriggerValue::Ok),
            "problem" => Some(TriggerValue::Problem),
            "unknown" => Some(TriggerValue::Unknown),
            _ => None,
        }
    }
}

impl std::fmt::Display for TriggerValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A trigger whose expressions parsed and name existing items.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledTrigger {
    pub triggerid: u64,
    pub description: String,
    pub severity: u8,
    pub expression: Expr,
    pub recovery: Option<Expr>,
    /// (host, key) of the first item the expression names: the event's `host`/`key`.
    pub first_item: (String, String),
    hosts: Vec<String>,
}

impl CompiledTrigger {
    /// Builds a trigger from parsed expressions, without checking its items
    /// against a config. Fails when the expression names no item.
    pub fn new(
        triggerid: u64,
        description: impl Into<String>,
        severity: u8,
        expression: Expr,
        recovery: Option<Expr>,
    ) -> Result<CompiledTrigger, ExprError> {
        if expression.first_item().is_none() {
            return Err(ExprError {
                offset: 0,
                message: "the expression names no item; use at least one function such as last(/host/key)"
                    .to_string(),
            });
        }
        Ok(CompiledTrigger::build(
            triggerid,
            description.into(),
            severity,
            expression,
            recovery,
        ))
    }

    /// The trigger of a loaded config's `[[triggers]]` table (whose expression
    /// the loader has checked to name an item).
    pub fn from_spec(spec: &TriggerSpec) -> CompiledTrigger {
        CompiledTrigger::build(
            spec.triggerid,
            spec.description.clone(),
            spec.severity,
            spec.expression.clone(),
            spec.recovery_expression.clone(),
        )
    }

    fn build(
        triggerid: u64,
        description: String,
        severity: u8,
        expression: Expr,
        recovery: Option<Expr>,
    ) -> CompiledTrigger {
        let first_item = expression
            .first_item()
            .map(|i| (i.host.clone(), i.key.clone()))
            .unwrap_or_default();
        let mut hosts: Vec<String> = Vec::new();
        for e in std::iter::once(&expression).chain(recovery.as_ref()) {
            for (_, item, _) in e.functions() {
                if !hosts.contains(&item.host) {
                    hosts.push(item.host.clone());
                }
            }
        }
        CompiledTrigger {
            triggerid,
            description,
            severity,
            expression,
            recovery,
            first_item,
            hosts,
        }
    }

    /// The distinct host ids the expressions name, in first-mention order
    /// (expression first, then recovery expression).
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }
}

/// The triggers of a loaded config, ready for the [`Engine`] (the loader has
/// parsed and checked their expressions).
pub fn compile(config: &Config) -> Vec<CompiledTrigger> {
    config
        .triggers
        .iter()
        .map(CompiledTrigger::from_spec)
        .collect()
}
