//! The recursive-descent parser: one method per grammar rule (see
//! [`crate::expr`]), every error at a character offset.

use super::ast::{BinOp, Expr, ExprError, Func, ItemRef, Window};
use super::lexer::{is_host_char, is_key_char, Tok};

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

/// The parser's state: the expression's characters, the position of the
/// next token, and the current nesting depth.
pub(super) struct Parser {
    pub(super) chars: Vec<char>,
    pub(super) pos: usize,
    pub(super) depth: usize,
}

impl Parser {
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
            let hint = match crate::diag::suggest_name(name, &Func::ALL.map(Func::name)) {
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
