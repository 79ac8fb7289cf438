//! Diagnostics: the one shape every error and warning of the pipeline format takes, and the
//! collector that the parser and the checks write into, so that every problem of a submission is
//! reported at once instead of stopping at the first.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};

use serde::Serialize;
use utoipa::ToSchema;

/// Errors (and, apart, warnings) kept per config; past these, one more diagnostic says how
/// many were left out. A hostile config must not turn a few bytes into a large answer.
pub const MAX_PER_CONFIG: usize = 100;

/// Longest message kept, in bytes: messages quote the input, which may be long.
pub const MAX_MESSAGE: usize = 1024;

/// "Did you mean" suggestions computed per config: each compares a word with every candidate.
const SUGGESTIONS_PER_CONFIG: usize = 32;

/// Words longer than this get no suggestion, and candidates more than twice as long are not
/// compared (they are too far to be suggested): an edit distance costs the product of the
/// lengths.
const SUGGESTIBLE_LENGTH: usize = 32;

/// One error or warning, naming the config file, the place in it (an RFC 6901 JSON pointer, and
/// line and column when the config was text) and what is wrong in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, ToSchema)]
pub struct Diagnostic {
    /// Name of the config (source) the diagnostic is about.
    pub config: String,
    /// RFC 6901 JSON pointer into that config, e.g. `/steps/2/comands`; empty for the whole file.
    pub pointer: String,
    /// 1-based line, when the config was submitted as text.
    pub line: Option<u32>,
    /// 1-based column, when the config was submitted as text.
    pub column: Option<u32>,
    pub message: String,
}

/// Everything found while reading a submission: errors refuse it, warnings do not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
pub struct Report {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A position in the source text; both `None` for an already-parsed value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: Option<u32>,
    pub column: Option<u32>,
}

impl Pos {
    pub const NONE: Pos = Pos {
        line: None,
        column: None,
    };

    pub fn at(line: u32, column: u32) -> Pos {
        // serde-saphyr reports 0 for "unknown"; a 1-based position is never 0.
        if line == 0 {
            Pos::NONE
        } else {
            Pos {
                line: Some(line),
                column: Some(column.max(1)),
            }
        }
    }
}

/// Appends one reference token to a JSON pointer, escaping `~` and `/` as RFC 6901 requires.
pub fn child(pointer: &str, token: &str) -> String {
    let escaped = token.replace('~', "~0").replace('/', "~1");
    format!("{pointer}/{escaped}")
}

/// Appends an array index to a JSON pointer.
pub fn index(pointer: &str, i: usize) -> String {
    format!("{pointer}/{i}")
}

/// Collects the diagnostics of one config.
#[derive(Debug)]
pub(crate) struct Sink {
    config: String,
    pub(crate) errors: Vec<Diagnostic>,
    pub(crate) warnings: Vec<Diagnostic>,
    /// Hashes of every diagnostic met, kept or not: matrix elements re-check the same nodes,
    /// and one report per place and message is enough.
    seen: HashSet<u64>,
    hasher: RandomState,
    errors_left_out: usize,
    warnings_left_out: usize,
    suggestions_left: usize,
}

impl Sink {
    pub(crate) fn new(config: &str) -> Sink {
        Sink {
            config: config.to_string(),
            errors: Vec::new(),
            warnings: Vec::new(),
            seen: HashSet::new(),
            hasher: RandomState::new(),
            errors_left_out: 0,
            warnings_left_out: 0,
            suggestions_left: SUGGESTIONS_PER_CONFIG,
        }
    }

    fn make(&self, pointer: &str, pos: Pos, message: String) -> Diagnostic {
        Diagnostic {
            config: self.config.clone(),
            pointer: pointer.to_string(),
            line: pos.line,
            column: pos.column,
            message: shorten(message),
        }
    }

    /// Whether the diagnostic is new, remembering it.
    fn first_time(&mut self, d: &Diagnostic) -> bool {
        let hash = self.hasher.hash_one(d);
        self.seen.insert(hash)
    }

    pub(crate) fn error(&mut self, pointer: &str, pos: Pos, message: impl Into<String>) {
        let d = self.make(pointer, pos, message.into());
        if !self.first_time(&d) {
            return;
        }
        if self.errors.len() < MAX_PER_CONFIG {
            self.errors.push(d);
        } else {
            self.errors_left_out += 1;
        }
    }

    pub(crate) fn warn(&mut self, pointer: &str, pos: Pos, message: impl Into<String>) {
        let d = self.make(pointer, pos, message.into());
        if !self.first_time(&d) {
            return;
        }
        if self.warnings.len() < MAX_PER_CONFIG {
            self.warnings.push(d);
        } else {
            self.warnings_left_out += 1;
        }
    }

    /// A "did you mean" for `word` among `candidates`, while this config's budget for them
    /// lasts and the word is short enough to be a typo.
    pub(crate) fn suggest<'a>(&mut self, word: &str, candidates: &[&'a str]) -> Option<&'a str> {
        if self.suggestions_left == 0 || word.len() > SUGGESTIBLE_LENGTH {
            return None;
        }
        self.suggestions_left -= 1;
        let near: Vec<&'a str> = candidates
            .iter()
            .copied()
            .filter(|c| c.len() <= 2 * SUGGESTIBLE_LENGTH)
            .collect();
        super::schema::suggest(word, &near)
    }

    pub(crate) fn into_parts(mut self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        for (left_out, list, what) in [
            (self.errors_left_out, &mut self.errors, "errors"),
            (self.warnings_left_out, &mut self.warnings, "warnings"),
        ] {
            if left_out > 0 {
                list.push(Diagnostic {
                    config: self.config.clone(),
                    pointer: String::new(),
                    line: None,
                    column: None,
                    message: format!(
                        "{left_out} more {what} in this config are not shown; fix the ones above first"
                    ),
                });
            }
        }
        (self.errors, self.warnings)
    }
}

/// Cuts a message to [`MAX_MESSAGE`] bytes, at a character boundary.
fn shorten(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_tokens_are_escaped() {
        assert_eq!(child("/steps", "a/b~c"), "/steps/a~1b~0c");
        assert_eq!(index("/steps", 2), "/steps/2");
    }

    #[test]
    fn duplicates_are_reported_once() {
        let mut s = Sink::new("c");
        s.error("/a", Pos::at(1, 2), "x");
        s.error("/a", Pos::at(1, 2), "x");
        s.warn("/a", Pos::NONE, "w");
        s.warn("/a", Pos::NONE, "w");
        let (e, w) = s.into_parts();
        assert_eq!((e.len(), w.len()), (1, 1));
    }

    #[test]
    fn many_diagnostics_are_summarized() {
        let mut s = Sink::new("c");
        for i in 0..MAX_PER_CONFIG + 5 {
            s.error(&index("/steps", i), Pos::NONE, "x");
            s.error(&index("/steps", i), Pos::NONE, "x");
        }
        let (e, _) = s.into_parts();
        assert_eq!(e.len(), MAX_PER_CONFIG + 1);
        assert_eq!(
            e[MAX_PER_CONFIG].message,
            "5 more errors in this config are not shown; fix the ones above first"
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let mut s = Sink::new("c");
        s.error(
            "",
            Pos::NONE,
            format!("unknown key \"{}\"", "é".repeat(5000)),
        );
        let (e, _) = s.into_parts();
        assert!(e[0].message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(e[0].message.ends_with('…'));
    }

    #[test]
    fn suggestions_are_bounded() {
        let mut s = Sink::new("c");
        assert_eq!(s.suggest("comands", &["commands"]), Some("commands"));
        assert_eq!(
            s.suggest(&"x".repeat(SUGGESTIBLE_LENGTH + 1), &["commands"]),
            None
        );
        for _ in 0..SUGGESTIONS_PER_CONFIG {
            s.suggest("a", &["b"]);
        }
        assert_eq!(s.suggest("comands", &["commands"]), None);
    }
}
