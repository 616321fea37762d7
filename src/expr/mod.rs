//! Trigger expressions: lexer ([`lexer`]), recursive-descent parser
//! ([`parser`]), AST ([`ast`]) and its canonical printing ([`print`]).
//! Depends on nothing else in the crate but [`crate::diag`].
//!
//! Grammar (Zabbix style), loosest binding first:
//!
//! ```text
//! or      := and ("or" and)*
//! and     := eq ("and" eq)*
//! eq      := cmp (("=" | "<>") cmp)*
//! cmp     := add (("<" | "<=" | ">" | ">=") add)*
//! add     := mul (("+" | "-") mul)*
//! mul     := unary (("*" | "/") unary)*
//! unary   := "-" unary | "not" unary | primary
//! primary := NUMBER | FUNC "(" "/" HOST "/" KEY ["," WINDOW] ")" | "(" or ")"
//! WINDOW  := INTEGER ("s" | "m" | "h" | "d") | "#" INTEGER
//! ```
//!
//! Numbers may carry one Zabbix suffix: `K`, `M`, `G` (powers of 1024) or
//! `s`, `m`, `h`, `d` (seconds). Every error carries the 0-based character
//! offset into the expression where it was found.

mod ast;
mod lexer;
mod parser;
mod print;
#[cfg(test)]
mod tests;

pub use ast::{BinOp, Expr, ExprError, Func, ItemRef, Window};
pub use parser::{parse, MAX_DEPTH, MAX_LEN};
