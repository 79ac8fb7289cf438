//! Text piculet can keep: no NUL character (Postgres cannot store U+0000 in text or JSON, and a
//! process cannot take it in an argument or environment value), and no string longer than the
//! limit. Checked once on each config tree, before anything else reads it, so that `/lint` and
//! submission agree whatever the syntax (YAML, JSON text or a parsed object).
//!
//! Lone surrogates need no check: a Rust `String` cannot hold one, and both parsers refuse the
//! escape (`"\ud800"`) as malformed input (see the tests).

use super::diagnostic::{Pos, Sink};
use super::limits::{Limits, STRING_LENGTH, over};
use super::node::Node;

/// The end of every NUL refusal.
pub const NUL_REFUSAL: &str =
    "contains a NUL character (U+0000), which cannot be stored; remove it";

pub fn has_nul(s: &str) -> bool {
    memchr::memchr(0, s.as_bytes()).is_some()
}

/// `string of 70000 bytes, more than the limit of 65536 (PICULET_MAX_STRING_LENGTH)`.
pub fn too_long(what: &str, len: usize, limits: &Limits) -> String {
    format!(
        "{what} of {len} bytes, {}",
        over(limits.string_length, STRING_LENGTH)
    )
}

/// Where text holds a raw NUL (one YAML forbids even in a comment): its line and column.
pub(crate) fn nul_position(text: &str) -> Option<Pos> {
    let at = memchr::memchr(0, text.as_bytes())?;
    let before = &text[..at];
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Some(Pos::at(
        u32::try_from(line).unwrap_or(u32::MAX),
        u32::try_from(column).unwrap_or(u32::MAX),
    ))
}

/// Reports every key and string of a config holding a NUL or longer than the limit. Returns
/// false when a string is too long: the config is not read further, so that its size cannot
/// be multiplied (matrix, substitution) before it is refused.
pub(crate) fn check_strings(node: &Node, limits: &Limits, sink: &mut Sink) -> bool {
    let mut within = true;
    node.for_each_text(|t, pointer| {
        let what = if t.is_key { "key" } else { "string" };
        if t.text.len() > limits.string_length {
            within = false;
            sink.error(&pointer(), t.pos, too_long(what, t.text.len(), limits));
        }
        if has_nul(t.text) {
            sink.error(&pointer(), t.pos, format!("{what} {NUL_REFUSAL}"));
        }
    });
    within
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, limits: &Limits) -> (bool, Vec<(String, Option<u32>, String)>) {
        let node = Node::parse(text, limits.nesting_depth).expect("parses");
        let mut sink = Sink::new("c");
        let within = check_strings(&node, limits, &mut sink);
        let errors = sink
            .errors
            .into_iter()
            .map(|d| (d.pointer, d.line, d.message))
            .collect();
        (within, errors)
    }

    #[test]
    fn nul_in_values_and_keys_is_refused_with_its_place() {
        let limits = Limits::default();
        let (within, errors) = check(
            "steps:\n  - name: \"a\\0b\"\n    commands: [ls]\n    environment: {\"K\\0\": v}\n",
            &limits,
        );
        assert!(within, "NUL is not a limit");
        assert_eq!(
            errors,
            [
                (
                    "/steps/0/name".to_string(),
                    Some(2),
                    format!("string {NUL_REFUSAL}")
                ),
                (
                    "/steps/0/environment/K\0".to_string(),
                    Some(4),
                    format!("key {NUL_REFUSAL}")
                ),
            ]
        );
        // JSON text: the \u0000 escape.
        let (_, errors) = check("{\"steps\": [{\"commands\": [\"ls\\u0000\"]}]}", &limits);
        assert_eq!(errors[0].0, "/steps/0/commands/0");
    }

    #[test]
    fn strings_at_and_over_the_limit() {
        let limits = Limits {
            string_length: 8,
            ..Limits::default()
        };
        let (within, errors) = check("a: 12345678\nbbbbbbbb: x\n", &limits);
        assert!(within && errors.is_empty(), "{errors:?}");
        let (within, errors) = check("a: 123456789\nbbbbbbbbb: [x]\n", &limits);
        assert!(!within);
        assert_eq!(
            errors,
            [
                (
                    "/a".to_string(),
                    Some(1),
                    "string of 9 bytes, more than the limit of 8 (PICULET_MAX_STRING_LENGTH)"
                        .to_string()
                ),
                (
                    "/bbbbbbbbb".to_string(),
                    Some(2),
                    "key of 9 bytes, more than the limit of 8 (PICULET_MAX_STRING_LENGTH)"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn raw_nul_position() {
        assert_eq!(nul_position("a: b\nc: é\0"), Some(Pos::at(2, 5)));
        assert_eq!(nul_position("a: b"), None);
    }

    /// Lone surrogates cannot reach a check: both parsers refuse the escape.
    #[test]
    fn lone_surrogates_are_malformed_input() {
        let e = serde_json::from_str::<serde_json::Value>("{\"a\": \"\\ud800\"}")
            .expect_err("serde_json refuses a lone surrogate");
        assert!(e.is_syntax(), "{e}");
        let e = Node::parse("a: \"\\ud800\"\n", 32).expect_err("YAML refuses it too");
        assert!(e.message.contains("surrogate"), "{}", e.message);
        // A pair is a character like any other.
        let n = Node::parse("a: \"\\ud83d\\ude00\"\n", 32).expect("a pair");
        assert_eq!(n.to_json(), serde_json::json!({"a": "😀"}));
    }
}
