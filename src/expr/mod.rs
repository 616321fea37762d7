//! Trigger expressions: lexer, recursive-descent parser, AST and its canonical printing.
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

use std::fmt;

/// The functions an expression may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    /// The newest value.
    Last,
    /// The smallest value in the window.
    Min,
    /// The largest value in the window.
    Max,
    /// The mean of the values in the window.
    Avg,
    /// The sum of the values in the window.
    Sum,
    /// How many values the window holds.
    Count,
    /// The newest value minus the one before it.
    Change,
    /// 1 when the item had no sample in the window, else 0.
    Nodata,
}

impl Func {
    /// Every function, in the order error messages list them.
    pub const ALL: [Func; 8] = [
        Func::Last,
        Func::Min,
        Func::Max,
        Func::Avg,
        Func::Sum,
        Func::Count,
        Func::Change,
        Func::Nodata,
    ];

    /// The name written in expressions.
    pub fn name(self) -> &'static str {
        match self {
            Func::Last => "last",
            Func::Min => "min",
            Func::Max => "max",
            Func::Avg => "avg",
            Func::Sum => "sum",
            Func::Count => "count",
            Func::Change => "change",
            Func::Nodata => "nodata",
        }
    }

    /// Looks a function up by its name (case-sensitive, as in Zabbix).
    pub fn parse(name: &str) -> Option<Func> {
        Func::ALL.into_iter().find(|f| f.name() == name)
    }

    /// True when the function takes a window argument.
    pub fn takes_window(self) -> bool {
        !matches!(self, Func::Last | Func::Change)
    }
}

impl fmt::Display for Func {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The window of a function: a time span or a number of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// Samples with `clock > now - seconds`.
    Time(i64),
    /// The newest N samples (`#N`).
    Count(u32),
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

/// An item named in an expression: `/host/key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItemRef {
    /// The host id.
    pub host: String,
    /// The item key on that host.
    pub key: String,
    /// Character offset of the leading `/` in the expression.
    pub pos: usize,
}

impl ItemRef {
    /// Character offset of the host's first character.
    pub fn host_pos(&self) -> usize {
        self.pos + 1
    }

    /// Character offset of the key's first character.
    pub fn key_pos(&self) -> usize {
        self.pos + 2 + self.host.chars().count()
    }
}

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    /// How tightly the operator binds: higher binds tighter.
    pub fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            BinOp::Eq | BinOp::Ne => 3,
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => 4,
            BinOp::Add | BinOp::Sub => 5,
            BinOp::Mul | BinOp::Div => 6,
        }
    }

    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "=",
            BinOp::Ne => "<>",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A constant (suffixes already applied; `-5` is folded into the constant).
    Num(f64),
    /// A function over an item.
    Func {
        func: Func,
        item: ItemRef,
        window: Option<Window>,
        /// Character offset of the function name.
        pos: usize,
    },
    /// Unary minus.
    Neg(Box<Expr>),
    /// Logical `not`.
    Not(Box<Expr>),
    /// A binary operation.
    Bin {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
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

    /// Every function call, left to right.
    pub fn functions(&self) -> Vec<(Func, &ItemRef, Option<Window>)> {
        let mut out = Vec::new();
        self.visit_functions(&mut |func, item, window| out.push((func, item, window)));
        out
    }

    fn visit_functions<'a>(&'a self, f: &mut impl FnMut(Func, &'a ItemRef, Option<Window>)) {
        match self {
            Expr::Num(_) => {}
            Expr::Func {
                func, item, window, ..
            } => f(*func, item, *window),
            Expr::Neg(e) | Expr::Not(e) => e.visit_functions(f),
            Expr::Bin { lhs, rhs, .. } => {
                lhs.visit_functions(f);
                rhs.visit_functions(f);
            }
        }
    }

    /// The first item the expression names, if any.
    pub fn first_item(&self) -> Option<&ItemRef> {
        self.functions().into_iter().next().map(|(_, item, _)| item)
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

/// A syntax or semantic error in an expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("character {offset}: {message}")]
pub struct ExprError {
    /// 0-based character offset into the expression.
    pub offset: usize,
    /// What is wrong, for the technician.
    pub message: String,
}

impl ExprError {
    fn new(offset: usize, message: impl Into<String>) -> ExprError {
        ExprError {
            offset,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    LParen,
    RParen,
    Comma,
    Op(BinOp),
    End,
}

/// Parses one expression.
pub fn parse(text: &str) -> Result<Expr, ExprError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
        depth: 0,
    };
    if p.chars.len() > MAX_LEN {
        return Err(ExprError::new(
            MAX_LEN,
            format!("the expression is longer than {MAX_LEN} characters"),
        ));
    }
    p.skip_ws();
    if p.pos >= p.chars.len() {
        return Err(ExprError::new(0, "the expression is empty"));
    }
    let e = p.or()?;
    let (start, tok, _) = p.peek()?;
    match tok {
        Tok::End => Ok(e),
        Tok::RParen => Err(ExprError::new(start, "unexpected \")\": no \"(\" to close")),
        _ => Err(ExprError::new(
            start,
            format!(
                "expected an operator or the end of the expression, found {}",
                p.describe(start)
            ),
        )),
    }
}

/// The longest expression accepted, in characters.
pub const MAX_LEN: usize = 4096;

/// The deepest nesting of parentheses and unary operators accepted.
pub const MAX_DEPTH: usize = 64;

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

/// Multipliers of the suffixes allowed on constants.
fn suffix_multiplier(s: &str) -> Option<f64> {
    Some(match s {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return None,
    })
}

impl Parser {
    fn at(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    fn skip_ws(&mut self) {
        while self.at(self.pos).is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// The run of characters from `start` satisfying `f`, and where it ends.
    fn run(&self, start: usize, f: impl Fn(char) -> bool) -> (String, usize) {
        let mut end = start;
        while self.at(end).is_some_and(&f) {
            end += 1;
        }
        (self.chars[start..end].iter().collect(), end)
    }

    /// A short description of what is at `i`, for "found ..." messages.
    fn describe(&self, i: usize) -> String {
        match self.at(i) {
            None => "the end of the expression".to_string(),
            Some(c) if is_ident(c) || c == '.' => {
                let (word, _) = self.run(i, |c| is_ident(c) || c == '.');
                format!("\"{word}\"")
            }
            Some(c) => format!("\"{c}\""),
        }
    }

    /// The next token without consuming it: (start, token, end).
    fn peek(&mut self) -> Result<(usize, Tok, usize), ExprError> {
        self.skip_ws();
        let start = self.pos;
        let Some(c) = self.at(start) else {
            return Ok((start, Tok::End, start));
        };
        let next = self.at(start + 1);
        let one = |t: Tok| Ok((start, t, start + 1));
        let two = |t: Tok| Ok((start, t, start + 2));
        match c {
            '(' => one(Tok::LParen),
            ')' => one(Tok::RParen),
            ',' => one(Tok::Comma),
            '+' => one(Tok::Op(BinOp::Add)),
            '-' => one(Tok::Op(BinOp::Sub)),
            '*' => one(Tok::Op(BinOp::Mul)),
            '/' => one(Tok::Op(BinOp::Div)),
            '=' if next == Some('=') => {
                Err(ExprError::new(start, "\"==\": write \"=\" to compare"))
            }
            '=' => one(Tok::Op(BinOp::Eq)),
            '<' if next == Some('>') => two(Tok::Op(BinOp::Ne)),
            '<' if next == Some('=') => two(Tok::Op(BinOp::Le)),
            '<' => one(Tok::Op(BinOp::Lt)),
            '>' if next == Some('=') => two(Tok::Op(BinOp::Ge)),
            '>' => one(Tok::Op(BinOp::Gt)),
            '!' if next == Some('=') => {
                Err(ExprError::new(start, "\"!=\": write \"<>\" for not equal"))
            }
            '!' => Err(ExprError::new(start, "\"!\": write \"not\"")),
            '&' => Err(ExprError::new(start, "\"&\": write \"and\"")),
            '|' => Err(ExprError::new(start, "\"|\": write \"or\"")),
            c if c.is_ascii_digit() || (c == '.' && next.is_some_and(|n| n.is_ascii_digit())) => {
                self.number(start)
            }
            c if is_ident_start(c) => {
                let (word, end) = self.run(start, is_ident);
                Ok((start, Tok::Ident(word), end))
            }
            '"' | '\'' => Err(ExprError::new(
                start,
                "quotes are not allowed here; items are written /host/key without quotes",
            )),
            '#' => Err(ExprError::new(
                start,
                "\"#N\" is only allowed as a window, e.g. avg(/host/key,#10)",
            )),
            c => Err(ExprError::new(
                start,
                format!("unexpected character \"{c}\""),
            )),
        }
    }

    fn number(&self, start: usize) -> Result<(usize, Tok, usize), ExprError> {
        let mut end = start;
        let digits = |end: &mut usize| {
            while self.at(*end).is_some_and(|c| c.is_ascii_digit()) {
                *end += 1;
            }
        };
        digits(&mut end);
        if self.at(end) == Some('.') {
            end += 1;
            digits(&mut end);
        }
        if matches!(self.at(end), Some('e' | 'E')) {
            let mut e = end + 1;
            if matches!(self.at(e), Some('+' | '-')) {
                e += 1;
            }
            if self.at(e).is_some_and(|c| c.is_ascii_digit()) {
                end = e;
                digits(&mut end);
            }
        }
        let literal: String = self.chars[start..end].iter().collect();
        let (suffix, full_end) = self.run(end, |c| is_ident(c) || c == '.');
        let Ok(value) = literal.parse::<f64>() else {
            return Err(ExprError::new(start, format!("bad number \"{literal}\"")));
        };
        let Some(mult) = suffix_multiplier(&suffix) else {
            return Err(ExprError::new(
                start,
                format!(
                    "number \"{literal}{suffix}\": unknown suffix \"{suffix}\"; \
                     allowed are K, M, G (x1024) and s, m, h, d (seconds)"
                ),
            ));
        };
        Ok((start, Tok::Num(value * mult), full_end))
    }

    fn bump(&mut self) -> Result<(usize, Tok), ExprError> {
        let (start, tok, end) = self.peek()?;
        self.pos = end;
        Ok((start, tok))
    }

    fn binary(
        &mut self,
        ops: &[BinOp],
        next: fn(&mut Parser) -> Result<Expr, ExprError>,
    ) -> Result<Expr, ExprError> {
        let mut lhs = next(self)?;
        loop {
            let (_, tok, end) = self.peek()?;
            let op = match tok {
                Tok::Op(op) if ops.contains(&op) => op,
                Tok::Ident(ref w) if w == "and" && ops.contains(&BinOp::And) => BinOp::And,
                Tok::Ident(ref w) if w == "or" && ops.contains(&BinOp::Or) => BinOp::Or,
                _ => return Ok(lhs),
            };
            self.pos = end;
            let rhs = next(self)?;
            lhs = Expr::Bin {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            };
        }
    }

    fn or(&mut self) -> Result<Expr, ExprError> {
        self.binary(&[BinOp::Or], Parser::and)
    }

    fn and(&mut self) -> Result<Expr, ExprError> {
        self.binary(&[BinOp::And], Parser::eq)
    }

    fn eq(&mut self) -> Result<Expr, ExprError> {
        self.binary(&[BinOp::Eq, BinOp::Ne], Parser::cmp)
    }

    fn cmp(&mut self) -> Result<Expr, ExprError> {
        self.binary(&[BinOp::Lt, BinOp::Le, BinOp::Gt, BinOp::Ge], Parser::add)
    }

    fn add(&mut self) -> Result<Expr, ExprError> {
        self.binary(&[BinOp::Add, BinOp::Sub], Parser::mul)
    }

    fn mul(&mut self) -> Result<Expr, ExprError> {
        self.binary(&[BinOp::Mul, BinOp::Div], Parser::unary)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        self.depth += 1;
        let result = self.unary_inner();
        self.depth -= 1;
        result
    }

    fn unary_inner(&mut self) -> Result<Expr, ExprError> {
        let (start, tok, end) = self.peek()?;
        if self.depth > MAX_DEPTH {
            return Err(ExprError::new(
                start,
                format!("the expression is nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        match tok {
            Tok::Op(BinOp::Sub) => {
                self.pos = end;
                Ok(match self.unary()? {
                    Expr::Num(v) => Expr::Num(-v),
                    e => Expr::Neg(Box::new(e)),
                })
            }
            Tok::Ident(w) if w == "not" => {
                self.pos = end;
                Ok(Expr::Not(Box::new(self.unary()?)))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let (start, tok) = self.bump()?;
        match tok {
            Tok::Num(v) => Ok(Expr::Num(v)),
            Tok::LParen => {
                let e = self.or()?;
                let (at, tok) = self.bump()?;
                if tok == Tok::RParen {
                    Ok(e)
                } else {
                    Err(ExprError::new(
                        at,
                        format!(
                            "expected \")\" to close the \"(\" at character {start}, found {}",
                            self.describe(at)
                        ),
                    ))
                }
            }
            Tok::Ident(name) => self.call(start, &name),
            Tok::End => Err(ExprError::new(
                start,
                "expected a value (a number, a function such as last(/host/key), \"(\", \"-\" or \"not\"), \
                 found the end of the expression",
            )),
            _ => Err(ExprError::new(
                start,
                format!(
                    "expected a value (a number, a function such as last(/host/key), \"(\", \"-\" or \"not\"), found {}",
                    self.describe(start)
                ),
            )),
        }
    }

    fn call(&mut self, start: usize, name: &str) -> Result<Expr, ExprError> {
        let (paren_at, paren, paren_end) = self.peek()?;
        let known = Func::ALL.map(Func::name).join(", ");
        let Some(func) = Func::parse(name) else {
            let hint = match crate::diag::suggest(name, &Func::ALL.map(Func::name)) {
                Some(s) => format!("; did you mean \"{s}\"?"),
                None => String::new(),
            };
            return Err(ExprError::new(
                start,
                if paren == Tok::LParen {
                    format!("unknown function \"{name}\"; known: {known}{hint}")
                } else if matches!(name, "and" | "or") {
                    format!("expected a value before \"{name}\"")
                } else {
                    format!(
                        "unknown word \"{name}\": expected a number, a function ({known}), \"(\", \"-\" or \"not\"{hint}"
                    )
                },
            ));
        };
        if paren != Tok::LParen {
            return Err(ExprError::new(
                paren_at,
                format!("expected \"(\" after {name}, e.g. {}", example(func)),
            ));
        }
        self.pos = paren_end;
        let item = self.item_ref(func)?;
        let (at, tok) = self.bump()?;
        let window = if func.takes_window() {
            match tok {
                Tok::Comma => {}
                Tok::RParen => {
                    return Err(ExprError::new(
                        at,
                        format!("{name} needs a window, e.g. {}", example(func)),
                    ))
                }
                _ => {
                    return Err(ExprError::new(
                        at,
                        format!(
                            "expected \",\" and a window after the item, e.g. {}",
                            example(func)
                        ),
                    ))
                }
            }
            let w = self.window(func)?;
            let (at, tok) = self.bump()?;
            if tok != Tok::RParen {
                return Err(ExprError::new(
                    at,
                    format!(
                        "expected \")\" after the window, found {}",
                        self.describe(at)
                    ),
                ));
            }
            Some(w)
        } else {
            match tok {
                Tok::RParen => None,
                Tok::Comma => {
                    return Err(ExprError::new(
                        at,
                        format!(
                            "expected \")\" after the item: {name} takes no window, e.g. {}",
                            example(func)
                        ),
                    ))
                }
                _ => {
                    return Err(ExprError::new(
                        at,
                        format!("expected \")\" after the item, found {}", self.describe(at)),
                    ))
                }
            }
        };
        Ok(Expr::Func {
            func,
            item,
            window,
            pos: start,
        })
    }

    fn item_ref(&mut self, func: Func) -> Result<ItemRef, ExprError> {
        self.skip_ws();
        let start = self.pos;
        if matches!(self.at(start), Some('"' | '\'')) {
            return Err(ExprError::new(
                start,
                "quotes are not allowed here; items are written /host/key without quotes",
            ));
        }
        if self.at(start) != Some('/') {
            return Err(ExprError::new(
                start,
                format!(
                    "expected an item /host/key as the first argument of {func}, found {}",
                    self.describe(start)
                ),
            ));
        }
        let (host, host_end) = self.run(start + 1, is_host_char);
        if host.is_empty() {
            return Err(ExprError::new(
                start + 1,
                "expected a host after \"/\" (items are written /host/key)",
            ));
        }
        if self.at(host_end) != Some('/') {
            return Err(ExprError::new(
                host_end,
                format!(
                    "expected \"/\" between the host and the key, found {}",
                    self.describe(host_end)
                ),
            ));
        }
        let (key, key_end) = self.run(host_end + 1, is_key_char);
        if key.is_empty() {
            return Err(ExprError::new(
                host_end + 1,
                format!("expected an item key after \"/{host}/\""),
            ));
        }
        self.pos = key_end;
        Ok(ItemRef {
            host,
            key,
            pos: start,
        })
    }

    fn window(&mut self, func: Func) -> Result<Window, ExprError> {
        self.skip_ws();
        let start = self.pos;
        if self.at(start) == Some('#') {
            let (digits, end) = self.run(start + 1, |c| c.is_ascii_alphanumeric() || c == '.');
            let n = digits
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    ExprError::new(
                        start,
                        format!("window \"#{digits}\": expected a whole number of samples >= 1 after \"#\""),
                    )
                })?;
            if func == Func::Nodata {
                return Err(ExprError::new(
                    start,
                    "nodata needs a time window such as 10m, not a number of samples",
                ));
            }
            self.pos = end;
            return Ok(Window::Count(n));
        }
        let (word, end) = self.run(start, |c| c.is_ascii_alphanumeric() || c == '.');
        if word.is_empty() {
            return Err(ExprError::new(
                start,
                format!(
                    "expected a window after \",\", e.g. 5m or #10, found {}",
                    self.describe(start)
                ),
            ));
        }
        let bad = || {
            ExprError::new(
                start,
                format!(
                    "window \"{word}\": expected a number with s, m, h or d (e.g. 5m), \
                     or #N for the newest N samples"
                ),
            )
        };
        let split = word
            .char_indices()
            .find(|(_, c)| !c.is_ascii_digit())
            .map(|(i, _)| i)
            .ok_or_else(bad)?;
        let (number, unit) = word.split_at(split);
        let secs: i64 = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        let n: i64 = number.parse().map_err(|_| bad())?;
        let total = n
            .checked_mul(secs)
            .filter(|t| *t <= 3_650 * 86_400)
            .ok_or_else(|| ExprError::new(start, format!("window \"{word}\" is too long")))?;
        if total == 0 {
            return Err(ExprError::new(
                start,
                format!("window \"{word}\" is empty; it must be at least 1s"),
            ));
        }
        self.pos = end;
        Ok(Window::Time(total))
    }
}

fn example(func: Func) -> String {
    match func {
        Func::Last | Func::Change => format!("{func}(/host/key)"),
        Func::Nodata => "nodata(/host/key,10m)".to_string(),
        _ => format!("{func}(/host/key,5m)"),
    }
}
