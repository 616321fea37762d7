//! The character-level half of the parser: tokens (numbers with their
//! suffixes, words, operators, parentheses) read on demand at the parser's
//! position, so the grammar in [`super::parser`] never looks at characters
//! except inside item references and windows.

use super::ast::{BinOp, ExprError};
use super::parser::Parser;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Num(f64),
    Ident(String),
    LParen,
    RParen,
    Comma,
    Op(BinOp),
    End,
}

pub(super) fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

pub(super) fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

pub(super) fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

pub(super) fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

/// Multipliers of the suffixes allowed on constants.
pub(super) fn suffix_multiplier(s: &str) -> Option<f64> {
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
    pub(super) fn at(&self, i: usize) -> Option<char> {
        self.chars.get(i).copied()
    }

    pub(super) fn skip_ws(&mut self) {
        while self.at(self.pos).is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    /// The run of characters from `start` satisfying `f`, and where it ends.
    pub(super) fn run(&self, start: usize, f: impl Fn(char) -> bool) -> (String, usize) {
        let mut end = start;
        while self.at(end).is_some_and(&f) {
            end += 1;
        }
        (self.chars[start..end].iter().collect(), end)
    }

    /// A short description of what is at `i`, for "found ..." messages.
    pub(super) fn describe(&self, i: usize) -> String {
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
    pub(super) fn peek(&mut self) -> Result<(usize, Tok, usize), ExprError> {
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

    pub(super) fn number(&self, start: usize) -> Result<(usize, Tok, usize), ExprError> {
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

    pub(super) fn bump(&mut self) -> Result<(usize, Tok), ExprError> {
        let (start, tok, end) = self.peek()?;
        self.pos = end;
        Ok((start, tok))
    }
}
