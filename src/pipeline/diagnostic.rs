//! Diagnostics: the one shape every error and warning of the pipeline format takes, and the
//! collector that the parser and the checks write into, so that every problem of a submission is
//! reported at once instead of stopping at the first.

use serde::Serialize;
use utoipa::ToSchema;

/// One error or warning, naming the config file, the place in it (an RFC 6901 JSON pointer, and
/// line and column when the config was text) and what is wrong in words a user can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, ToSchema)]
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
}

impl Sink {
    pub(crate) fn new(config: &str) -> Sink {
        Sink {
            config: config.to_string(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn make(&self, pointer: &str, pos: Pos, message: String) -> Diagnostic {
        Diagnostic {
            config: self.config.clone(),
            pointer: pointer.to_string(),
            line: pos.line,
            column: pos.column,
            message,
        }
    }

    pub(crate) fn error(&mut self, pointer: &str, pos: Pos, message: impl Into<String>) {
        let d = self.make(pointer, pos, message.into());
        // Matrix elements re-check the same nodes; one report per place and message is enough.
        if !self.errors.contains(&d) {
            self.errors.push(d);
        }
    }

    pub(crate) fn warn(&mut self, pointer: &str, pos: Pos, message: impl Into<String>) {
        let d = self.make(pointer, pos, message.into());
        if !self.warnings.contains(&d) {
            self.warnings.push(d);
        }
    }

    pub(crate) fn into_parts(self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        (self.errors, self.warnings)
    }
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
}
