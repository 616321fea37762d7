//! The plumbing of the config loader: source files with byte offset -> line:col,
//! the collected diagnostics, and a reader over one spanned TOML table that
//! reports wrong types, bad values and unknown keys without stopping.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::Diagnostic;
use crate::diag::{did_you_mean, SourcePos};
use crate::units;

/// One file's text, with the byte offsets where its lines start.
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
    line_starts: Vec<usize>,
}

impl Source {
    /// Wraps a file's text; `path` is what messages call the file.
    pub(crate) fn new(path: &Path, text: String) -> Source {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            path: path.to_path_buf(),
            text,
            line_starts,
        }
    }

    /// The 1-based line and column (in characters) of a byte offset.
    pub(crate) fn pos(&self, offset: usize) -> SourcePos {
        let offset = offset.min(self.text.len());
        let line_index = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let start = self.line_starts.get(line_index).copied().unwrap_or(0);
        let col = match self.text.get(start..offset) {
            Some(prefix) => prefix.chars().count(),
            None => offset - start,
        };
        SourcePos {
            file: self.path.clone(),
            line: line_index + 1,
            col: col + 1,
        }
    }

    /// The position of the first character inside a string value's quotes,
    /// given the span of the whole string token (quotes included). A
    /// multi-line string's newline right after the opening quotes is skipped,
    /// as TOML does.
    pub(crate) fn string_content_pos(&self, span: std::ops::Range<usize>) -> SourcePos {
        let token = self.text.get(span.clone()).unwrap_or("");
        let mut offset = span.start;
        if token.starts_with("\"\"\"") || token.starts_with("'''") {
            offset += 3;
            let rest = self.text.get(offset..).unwrap_or("");
            if rest.starts_with("\r\n") {
                offset += 2;
            } else if rest.starts_with('\n') {
                offset += 1;
            }
        } else if token.starts_with('"') || token.starts_with('\'') {
            offset += 1;
        }
        self.pos(offset)
    }
}

/// The diagnostics found so far, in all files.
#[derive(Default)]
pub(crate) struct Report {
    diagnostics: Vec<Diagnostic>,
    /// Files in the order they were first read, for sorting.
    files: Vec<PathBuf>,
}

impl Report {
    /// Records that a file takes part, so its diagnostics sort after earlier files'.
    pub(crate) fn add_file(&mut self, path: &Path) {
        if !self.files.iter().any(|p| p == path) {
            self.files.push(path.to_path_buf());
        }
    }

    /// Adds one problem at `pos`.
    pub(crate) fn error(&mut self, pos: &SourcePos, message: impl Into<String>) {
        self.add_file(&pos.file);
        self.diagnostics.push(Diagnostic {
            file: pos.file.clone(),
            line: pos.line,
            col: pos.col,
            message: message.into(),
        });
    }

    /// How many problems have been reported so far.
    pub(crate) fn len(&self) -> usize {
        self.diagnostics.len()
    }

    /// True when nothing has been reported.
    pub(crate) fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// Every diagnostic, by file (in reading order), line and column, without repeats.
    pub(crate) fn into_sorted(self) -> Vec<Diagnostic> {
        let files = self.files;
        let file_rank = |p: &Path| files.iter().position(|f| f == p).unwrap_or(usize::MAX);
        let mut diagnostics = self.diagnostics;
        diagnostics.sort_by_key(|d| (file_rank(&d.file), d.line, d.col));
        let mut unique: Vec<Diagnostic> = Vec::with_capacity(diagnostics.len());
        for d in diagnostics {
            if !unique.contains(&d) {
                unique.push(d);
            }
        }
        unique
    }
}

/// "a string", "an integer", ... for messages about wrong types.
pub(crate) fn type_with_article(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// The value of a TOML integer, if it fits an i64.
pub(crate) fn integer_value(value: &DeValue<'_>) -> Option<i64> {
    let DeValue::Integer(i) = value else {
        return None;
    };
    let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
    i64::from_str_radix(&digits, i.radix()).ok()
}

/// The value of a TOML integer or float as f64.
pub(crate) fn number_value(value: &DeValue<'_>) -> Option<f64> {
    match value {
        DeValue::Integer(_) => integer_value(value).map(|i| i as f64),
        DeValue::Float(f) => {
            let digits: String = f.as_str().chars().filter(|c| *c != '_').collect();
            digits.parse().ok()
        }
        _ => None,
    }
}

/// A value with the position of its text in the config file.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct At<T> {
    pub(crate) value: T,
    pub(crate) pos: SourcePos,
}

/// Reads the keys of one TOML table, reporting every problem to a [`Report`].
///
/// Each getter returns `None` both when the key is absent and when its value
/// is unusable (after reporting why), so callers fall back to defaults and
/// carry on finding further problems.
pub(crate) struct Section<'s, 'i> {
    pub(crate) src: &'s Source,
    pub(crate) table: &'s DeTable<'i>,
    /// Where the table starts (its header), for "missing key" messages.
    pub(crate) pos: SourcePos,
    /// Prefix for every message, e.g. `hosts[1] "pump": `; may be empty.
    pub(crate) context: String,
}

impl<'s, 'i> Section<'s, 'i> {
    /// A reader over `value` if it is a table; otherwise reports that `what`
    /// must be a table and returns None.
    pub(crate) fn of(
        src: &'s Source,
        value: &'s Spanned<DeValue<'i>>,
        what: &str,
        context: String,
        report: &mut Report,
    ) -> Option<Section<'s, 'i>> {
        let pos = src.pos(value.span().start);
        match value.get_ref() {
            DeValue::Table(table) => Some(Section {
                src,
                table,
                pos,
                context,
            }),
            other => {
                report.error(
                    &pos,
                    format!(
                        "{context}{what} must be a table, not {}",
                        type_with_article(other)
                    ),
                );
                None
            }
        }
    }

    /// Reports every key not in `known`, with a suggestion for near misses.
    pub(crate) fn check_keys(&self, report: &mut Report, what: &str, known: &[&str]) {
        self.check_keys_elsewhere(report, what, known, &[], "");
    }

    /// Like [`Section::check_keys`], and a key of `other_keys` is said to
    /// belong in `other_place` (e.g. an item key written in `[[hosts]]`).
    pub(crate) fn check_keys_elsewhere(
        &self,
        report: &mut Report,
        what: &str,
        known: &[&str],
        other_keys: &[&str],
        other_place: &str,
    ) {
        for (key, _) in self.table.iter() {
            let name = key.get_ref().as_ref();
            if !known.contains(&name) {
                let hint = if other_keys.contains(&name) {
                    format!("; it belongs in {other_place}")
                } else {
                    did_you_mean(name, known)
                };
                report.error(
                    &self.src.pos(key.span().start),
                    format!("{}unknown key \"{name}\" in {what}{hint}", self.context),
                );
            }
        }
    }

    /// The raw value of a key.
    pub(crate) fn raw(&self, key: &str) -> Option<&'s Spanned<DeValue<'i>>> {
        self.table.get(key)
    }

    /// Where a key's value starts.
    pub(crate) fn value_pos(&self, key: &str) -> Option<SourcePos> {
        self.raw(key).map(|v| self.src.pos(v.span().start))
    }

    /// Where a key's name starts.
    pub(crate) fn key_pos(&self, key: &str) -> Option<SourcePos> {
        self.table
            .get_key_value(key)
            .map(|(k, _)| self.src.pos(k.span().start))
    }

    /// Reports a problem with the value of `key`, prefixed with the context.
    pub(crate) fn error_at(&self, report: &mut Report, pos: &SourcePos, message: &str) {
        report.error(pos, format!("{}{message}", self.context));
    }

    /// Reports that a key's value has the wrong type.
    fn wrong_type(&self, report: &mut Report, key: &str, expected: &str) {
        if let Some(v) = self.raw(key) {
            let pos = self.src.pos(v.span().start);
            self.error_at(
                report,
                &pos,
                &format!(
                    "{key} must be {expected}, not {}",
                    type_with_article(v.get_ref())
                ),
            );
        }
    }

    /// Reports that a required key is missing.
    pub(crate) fn missing(&self, report: &mut Report, key: &str, what: &str, hint: &str) {
        let pos = self.pos.clone();
        self.error_at(report, &pos, &format!("{key} is required in {what}{hint}"));
    }

    /// A string value.
    pub(crate) fn string(&self, report: &mut Report, key: &str) -> Option<At<String>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some(At {
                value: s.to_string(),
                pos: self.src.pos(v.span().start),
            }),
            _ => {
                self.wrong_type(report, key, "a string");
                None
            }
        }
    }

    /// A string value that must not be empty.
    pub(crate) fn nonempty_string(&self, report: &mut Report, key: &str) -> Option<At<String>> {
        let s = self.string(report, key)?;
        if s.value.trim().is_empty() {
            self.error_at(report, &s.pos, &format!("{key} must not be empty"));
            return None;
        }
        Some(s)
    }

    /// A path value (a non-empty string).
    pub(crate) fn path(&self, report: &mut Report, key: &str) -> Option<PathBuf> {
        self.nonempty_string(report, key)
            .map(|s| PathBuf::from(s.value))
    }

    /// An integer value within `min..=max`.
    pub(crate) fn integer(
        &self,
        report: &mut Report,
        key: &str,
        min: i64,
        max: i64,
    ) -> Option<At<i64>> {
        let v = self.raw(key)?;
        let pos = self.src.pos(v.span().start);
        match v.get_ref() {
            DeValue::Integer(_) => {
                match integer_value(v.get_ref()) {
                    Some(i) if (min..=max).contains(&i) => Some(At { value: i, pos }),
                    Some(i) => {
                        let range = if max == i64::MAX {
                            format!("at least {min}")
                        } else {
                            format!("between {min} and {max}")
                        };
                        self.error_at(report, &pos, &format!("{key} must be {range}, not {i}"));
                        None
                    }
                    None => {
                        self.error_at(
                        report,
                        &pos,
                        &format!("{key} must be between {min} and {max}; this number is far too large"),
                    );
                        None
                    }
                }
            }
            DeValue::String(s) if s.trim().parse::<i64>().is_ok() => {
                self.error_at(
                    report,
                    &pos,
                    &format!(
                        "{key} must be an integer without quotes ({key} = {}), not a string",
                        s.trim()
                    ),
                );
                None
            }
            _ => {
                self.wrong_type(report, key, "an integer");
                None
            }
        }
    }

    /// A finite number (integer or float).
    pub(crate) fn number(&self, report: &mut Report, key: &str) -> Option<At<f64>> {
        let v = self.raw(key)?;
        let pos = self.src.pos(v.span().start);
        match number_value(v.get_ref()) {
            Some(x) if x.is_finite() => Some(At { value: x, pos }),
            Some(_) => {
                self.error_at(report, &pos, &format!("{key} must be a finite number"));
                None
            }
            None => {
                match v.get_ref() {
                    DeValue::String(s) if s.trim().parse::<f64>().is_ok() => self.error_at(
                        report,
                        &pos,
                        &format!(
                            "{key} must be a number without quotes ({key} = {}), not a string",
                            s.trim()
                        ),
                    ),
                    _ => self.wrong_type(report, key, "a number"),
                }
                None
            }
        }
    }

    /// A boolean value.
    pub(crate) fn boolean(&self, report: &mut Report, key: &str) -> Option<At<bool>> {
        let v = self.raw(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(At {
                value: *b,
                pos: self.src.pos(v.span().start),
            }),
            _ => {
                self.wrong_type(report, key, "true or false");
                None
            }
        }
    }

    /// A duration string such as `"10s"`; zero only when `allow_zero`.
    pub(crate) fn duration(
        &self,
        report: &mut Report,
        key: &str,
        allow_zero: bool,
    ) -> Option<At<Duration>> {
        let v = self.raw(key)?;
        let pos = self.src.pos(v.span().start);
        match v.get_ref() {
            DeValue::String(s) => match units::parse_duration(s) {
                Ok(d) if d.is_zero() && !allow_zero => {
                    self.error_at(report, &pos, &format!("{key} must be longer than zero"));
                    None
                }
                Ok(d) => Some(At { value: d, pos }),
                Err(e) => {
                    self.error_at(report, &pos, &format!("{key}: {e}"));
                    None
                }
            },
            DeValue::Integer(_) | DeValue::Float(_) => {
                self.error_at(
                    report,
                    &pos,
                    &format!(
                        "{key} must be a duration string with a unit, e.g. \"{}s\", not a bare number",
                        integer_value(v.get_ref()).unwrap_or(10)
                    ),
                );
                None
            }
            _ => {
                self.wrong_type(report, key, "a duration string such as \"10s\"");
                None
            }
        }
    }

    /// A size string such as `"512MiB"`.
    pub(crate) fn size(&self, report: &mut Report, key: &str) -> Option<At<u64>> {
        let v = self.raw(key)?;
        let pos = self.src.pos(v.span().start);
        match v.get_ref() {
            DeValue::String(s) => match units::parse_size(s) {
                Ok(bytes) => Some(At { value: bytes, pos }),
                Err(e) => {
                    self.error_at(report, &pos, &format!("{key}: {e}"));
                    None
                }
            },
            DeValue::Integer(_) => match integer_value(v.get_ref()) {
                Some(bytes) if bytes >= 0 => Some(At {
                    value: bytes.unsigned_abs(),
                    pos,
                }),
                _ => {
                    self.error_at(report, &pos, &format!("{key} must not be negative"));
                    None
                }
            },
            _ => {
                self.wrong_type(report, key, "a size string such as \"512MiB\"");
                None
            }
        }
    }

    /// An array of strings.
    pub(crate) fn strings(&self, report: &mut Report, key: &str) -> Option<Vec<String>> {
        let v = self.raw(key)?;
        let DeValue::Array(array) = v.get_ref() else {
            self.wrong_type(report, key, "an array of strings, e.g. [\"a\", \"b\"]");
            return None;
        };
        let mut out = Vec::with_capacity(array.len());
        let mut ok = true;
        for element in array.iter() {
            match element.get_ref() {
                DeValue::String(s) => out.push(s.to_string()),
                other => {
                    ok = false;
                    let pos = self.src.pos(element.span().start);
                    self.error_at(
                        report,
                        &pos,
                        &format!(
                            "{key} must contain only strings, not {}",
                            type_with_article(other)
                        ),
                    );
                }
            }
        }
        ok.then_some(out)
    }
}

/// True when `s` is 1..=`max` characters from `[A-Za-z0-9]` and `extra`.
pub(crate) fn is_name(s: &str, extra: &str, max: usize) -> bool {
    !s.is_empty()
        && s.chars().count() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters() {
        let src = Source::new(Path::new("x.toml"), "a = 1\nné = \"ü\"\n".to_string());
        assert_eq!((src.pos(0).line, src.pos(0).col), (1, 1));
        let quote = src.text.find('"').unwrap_or(0);
        assert_eq!((src.pos(quote).line, src.pos(quote).col), (2, 6));
        let end = src.text.len();
        assert_eq!((src.pos(end).line, src.pos(end).col), (3, 1));
    }
}
