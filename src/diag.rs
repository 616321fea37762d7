//! Positioned diagnostics and "did you mean" suggestions (one for config
//! keys, one for names in expressions), shared by the config loader and the
//! trigger-expression language.
//!
//! This module depends on nothing else in the crate, so every layer that
//! reports a problem in a config file (or suggests a known name for a typo)
//! can use it without importing the layer that found the problem.

/// A position in a config file, for messages about things found after parsing
/// (e.g. a trigger expression's errors).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SourcePos {
    /// The file (the config file or a profile it names); empty when not
    /// known, which readers take as the config file.
    pub file: std::path::PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub col: usize,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file the problem is in (the config file or a profile it names).
    pub file: std::path::PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// A sentence for the technician.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// The config key (or enumerated value, or section name) closest to `word`,
/// if it is close enough to be a likely typo of it.
///
/// Keys are short, fixed and lower-case: `word` is compared lower-cased, a
/// swap of two neighbouring letters counts as one edit, and up to one edit
/// per three characters of the key is allowed (at least one).
pub fn suggest_key<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance_with_swaps(&lower, k), *k))
        .filter(|(distance, k)| *distance <= (k.chars().count() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| k)
}

/// `; did you mean "x"?` with [`suggest_key`]'s suggestion, or nothing.
pub fn did_you_mean(word: &str, known: &[&str]) -> String {
    match suggest_key(word, known) {
        Some(k) => format!("; did you mean \"{k}\"?"),
        None => String::new(),
    }
}

/// The name in an expression (host id, item key, function) closest to
/// `word`, if it is close enough to be a likely typo of it.
///
/// Names are the user's own and may be long or mixed-case: both sides are
/// compared lower-cased, every edit is an insertion, deletion or
/// substitution, and up to one edit per four characters of the name is
/// allowed (at least one, at most three).
pub fn suggest_name<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
        .filter(|(d, k)| *d <= (k.chars().count() / 4).clamp(1, 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The Levenshtein distance between two strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The edit distance between two short strings, counting a swap of two
/// neighbouring characters as one edit (optimal string alignment).
fn edit_distance_with_swaps(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_suggestions() {
        let known = ["address", "table", "type", "scale"];
        assert_eq!(suggest_key("adress", &known), Some("address"));
        assert_eq!(suggest_key("Table", &known), Some("table"));
        assert_eq!(suggest_key("tpye", &known), Some("type"));
        assert_eq!(suggest_key("colour", &known), None);
    }

    #[test]
    fn name_suggestions() {
        let known = ["pump", "temp.outdoor", "max"];
        assert_eq!(suggest_name("pmp", &known), Some("pump"));
        assert_eq!(suggest_name("TEMP.OUTDOR", &known), Some("temp.outdoor"));
        assert_eq!(suggest_name("maxx", &known), Some("max"));
        assert_eq!(suggest_name("boiler", &known), None);
    }
}
