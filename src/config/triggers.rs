//! The config-side check of `[[triggers]]`: every expression parsed with
//! [`crate::expr`] and its items and windows checked against the config, so a
//! config that loads names only items that exist.

use std::collections::HashMap;

use crate::diag::{suggest, Diagnostic};
use crate::expr::{parse, Expr, ExprError, Func, Window};
use crate::model::{Config, SourcePos};

/// The most samples one window may hold (window / the item's poll interval).
pub const MAX_WINDOW_SAMPLES: u64 = 100_000;

/// Parses and checks every trigger's expressions (syntax, hosts, keys,
/// windows); one diagnostic per problem, at the expression's position in the
/// file plus the problem's character offset (expressions are single-line; a
/// TOML escape such as `\"` before the problem shifts the column by its length).
pub fn check_triggers(config: &Config) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    for spec in &config.triggers {
        let at = |pos: &SourcePos, e: ExprError| Diagnostic {
            file: if pos.file.as_os_str().is_empty() {
                config.path.clone()
            } else {
                pos.file.clone()
            },
            line: pos.line.max(1),
            col: pos.col.max(1) + e.offset,
            message: format!("trigger {}: {}", spec.triggerid, e.message),
        };
        if let Err(es) = check_one(config, &spec.expression, true) {
            diagnostics.extend(es.into_iter().map(|e| at(&spec.expression_pos, e)));
        }
        if let Some(text) = &spec.recovery_expression {
            if let Err(es) = check_one(config, text, false) {
                diagnostics.extend(es.into_iter().map(|e| at(&spec.recovery_expression_pos, e)));
            }
        }
    }
    diagnostics
}

/// Parses one expression and checks its items and windows against the config.
pub(crate) fn check_one(
    config: &Config,
    text: &str,
    needs_item: bool,
) -> Result<Expr, Vec<ExprError>> {
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
            let hint = match suggest(&item.host, &names) {
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
            let hint = match suggest(&item.key, &keys) {
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
