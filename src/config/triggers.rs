//! The config-side check of `[[triggers]]`: every expression parsed with
//! [`crate::expr`] and its items and windows checked against the config, so a
//! config that loads names only items that exist.

use std::collections::HashMap;

use crate::diag::{suggest_name, Diagnostic, SourcePos};
use crate::expr::{parse, Expr, ExprError, Func, Window};
use crate::model::{Config, TriggerSpec};

/// The most samples one window may hold (window / the item's poll interval).
pub const MAX_WINDOW_SAMPLES: u64 = 100_000;

/// One `[[triggers]]` table as written: the expressions still text, with the
/// position of each in the file, because they can only be checked once the
/// hosts and items they name are known.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TriggerText {
    pub triggerid: u64,
    pub description: String,
    pub severity: u8,
    pub expression: String,
    /// Where the expression string's first character is in the config file.
    pub expression_pos: SourcePos,
    pub recovery_expression: Option<String>,
    pub recovery_expression_pos: SourcePos,
}

/// Parses and checks every trigger's expressions (syntax, hosts, keys,
/// windows) into [`TriggerSpec`]s, or returns one diagnostic per problem, at
/// the expression's position in the file plus the problem's character offset
/// (expressions are single-line; a TOML escape such as `\"` before the
/// problem shifts the column by its length).
pub(crate) fn check_triggers(
    config: &Config,
    texts: &[TriggerText],
) -> Result<Vec<TriggerSpec>, Vec<Diagnostic>> {
    let mut diagnostics = Vec::new();
    let mut specs = Vec::new();
    for text in texts {
        let at = |pos: &SourcePos, e: ExprError| Diagnostic {
            file: if pos.file.as_os_str().is_empty() {
                config.path.clone()
            } else {
                pos.file.clone()
            },
            line: pos.line.max(1),
            col: pos.col.max(1) + e.offset,
            message: format!("trigger {}: {}", text.triggerid, e.message),
        };
        let expression = check_one(config, &text.expression, true)
            .map_err(|es| diagnostics.extend(es.into_iter().map(|e| at(&text.expression_pos, e))))
            .ok();
        let recovery = match &text.recovery_expression {
            Some(r) => check_one(config, r, false)
                .map(Some)
                .map_err(|es| {
                    diagnostics.extend(es.into_iter().map(|e| at(&text.recovery_expression_pos, e)))
                })
                .ok(),
            None => Some(None),
        };
        if let (Some(expression), Some(recovery_expression)) = (expression, recovery) {
            specs.push(TriggerSpec {
                triggerid: text.triggerid,
                description: text.description.clone(),
                severity: text.severity,
                expression,
                recovery_expression,
            });
        }
    }
    if diagnostics.is_empty() {
        Ok(specs)
    } else {
        Err(diagnostics)
    }
}

/// Parses one expression and checks its items and windows against the config.
fn check_one(config: &Config, text: &str, needs_item: bool) -> Result<Expr, Vec<ExprError>> {
    let expr = parse(text).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let hosts: HashMap<&str, _> = config.hosts.iter().map(|h| (h.host.as_str(), h)).collect();
    let functions = expr.functions();
    if needs_item && functions.is_empty() {
        errors.push(ExprError {
            offset: 0,
            message:
                "the expression names no item; use at least one function such as last(/host/key)"
                    .to_string(),
        });
    }
    for (func, item, window) in functions {
        let Some(host) = hosts.get(item.host.as_str()) else {
            let names: Vec<&str> = config.hosts.iter().map(|h| h.host.as_str()).collect();
            let hint = match suggest_name(&item.host, &names) {
                Some(s) => format!("; did you mean \"{s}\"?"),
                None if names.is_empty() => "; the config has no hosts".to_string(),
                None => format!("; hosts: {}", short_list(&names)),
            };
            errors.push(ExprError {
                offset: item.host_pos(),
                message: format!("unknown host \"{}\"{hint}", item.host),
            });
            continue;
        };
        let Some(spec) = host.item(&item.key) else {
            let keys: Vec<&str> = host.items.iter().map(|i| i.key.as_str()).collect();
            let hint = match suggest_name(&item.key, &keys) {
                Some(s) => format!("; did you mean \"{s}\"?"),
                None if keys.is_empty() => " (it has no items)".to_string(),
                None => String::new(),
            };
            errors.push(ExprError {
                offset: item.key_pos(),
                message: format!("host \"{}\" has no item \"{}\"{hint}", item.host, item.key),
            });
            continue;
        };
        let interval = spec.poll_interval.as_secs().max(1);
        let held = match window {
            Some(Window::Time(s)) if func != Func::Nodata => {
                u64::try_from(s).unwrap_or(0) / interval
            }
            Some(Window::Count(n)) => u64::from(n),
            _ => 0,
        };
        if held > MAX_WINDOW_SAMPLES {
            let w = window.map(|w| w.to_string()).unwrap_or_default();
            errors.push(ExprError {
                offset: item.pos,
                message: format!(
                    "window {w} would hold about {held} samples of \"{}\" (polled every {interval}s); \
                     the limit is {MAX_WINDOW_SAMPLES}",
                    item.key
                ),
            });
        }
    }
    if errors.is_empty() {
        Ok(expr)
    } else {
        Err(errors)
    }
}

fn short_list(names: &[&str]) -> String {
    if names.len() <= 8 {
        names.join(", ")
    } else {
        format!("{}, ...", names[..8].join(", "))
    }
}
