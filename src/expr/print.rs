//! The canonical printing of expressions: minimal parentheses,
//! `max(/h/k,5m)`, spaces around binary operators, so a parsed expression
//! prints the same however it was written.

use std::fmt;

use super::ast::{Expr, Func, Window};

impl fmt::Display for Func {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Window::Count(n) => write!(f, "#{n}"),
            Window::Time(s) => {
                for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
                    if s % secs == 0 {
                        return write!(f, "{}{unit}", s / secs);
                    }
                }
                write!(f, "{s}s")
            }
        }
    }
}

/// Precedence of unary operators when printing (tighter than every binary one).
const UNARY_PRECEDENCE: u8 = 7;

impl Expr {
    fn precedence(&self) -> u8 {
        match self {
            Expr::Bin { op, .. } => op.precedence(),
            Expr::Num(v) if *v < 0.0 => UNARY_PRECEDENCE,
            Expr::Neg(_) | Expr::Not(_) => UNARY_PRECEDENCE,
            _ => u8::MAX,
        }
    }
}

fn fmt_child(f: &mut fmt::Formatter<'_>, e: &Expr, parens: bool) -> fmt::Result {
    if parens {
        write!(f, "({e})")
    } else {
        write!(f, "{e}")
    }
}

/// Canonical form: minimal parentheses, `max(/h/k,5m)`, spaces around binary operators.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Num(v) => write!(f, "{v}"),
            Expr::Func {
                func, item, window, ..
            } => {
                write!(f, "{func}(/{}/{}", item.host, item.key)?;
                if let Some(w) = window {
                    write!(f, ",{w}")?;
                }
                f.write_str(")")
            }
            Expr::Neg(e) => {
                f.write_str("-")?;
                fmt_child(f, e, e.precedence() < UNARY_PRECEDENCE)
            }
            Expr::Not(e) => {
                f.write_str("not ")?;
                fmt_child(f, e, e.precedence() < UNARY_PRECEDENCE)
            }
            Expr::Bin { op, lhs, rhs } => {
                let p = op.precedence();
                fmt_child(f, lhs, lhs.precedence() < p)?;
                write!(f, " {} ", op.symbol())?;
                fmt_child(f, rhs, rhs.precedence() <= p)
            }
        }
    }
}
