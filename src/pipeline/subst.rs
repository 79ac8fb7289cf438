//! `${NAME}` substitution in every string of a workflow, from the matrix element first and the
//! submission's variables second. `$${X}` is the escape for a literal `${X}`; an unknown name is
//! left as written, because commands use shell variables of the same syntax.

use std::collections::BTreeMap;

use super::node::{Node, Value};

/// Substitutes one string.
pub fn substitute(
    text: &str,
    matrix: &BTreeMap<String, String>,
    vars: &BTreeMap<String, String>,
) -> String {
    if !text.contains("${") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            // Escape: `$${X}` is the literal text `${X}`.
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            match tail.find('}') {
                Some(end) if is_name(&tail[..end]) => {
                    let name = &tail[..end];
                    match matrix.get(name).or_else(|| vars.get(name)) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("${");
                            out.push_str(name);
                            out.push('}');
                        }
                    }
                    rest = &tail[end + 1..];
                }
                _ => {
                    out.push_str("${");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    out
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// Substitutes every string value of a tree in place (keys are left alone).
pub fn substitute_node(
    node: &mut Node,
    matrix: &BTreeMap<String, String>,
    vars: &BTreeMap<String, String>,
) {
    match &mut node.value {
        Value::String(s) => *s = substitute(s, matrix, vars),
        Value::Seq(items) => items
            .iter_mut()
            .for_each(|i| substitute_node(i, matrix, vars)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|e| substitute_node(&mut e.value, matrix, vars)),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matrix_wins_over_variables() {
        let s = substitute(
            "golang:${GO} on ${CI_COMMIT_BRANCH}",
            &m(&[("GO", "1.22")]),
            &m(&[("GO", "x"), ("CI_COMMIT_BRANCH", "main")]),
        );
        assert_eq!(s, "golang:1.22 on main");
    }

    #[test]
    fn escape_and_unknown_names() {
        let vars = m(&[("X", "1")]);
        assert_eq!(substitute("echo $${X}", &vars, &vars), "echo ${X}");
        assert_eq!(
            substitute("echo ${HOME} $X $$", &vars, &vars),
            "echo ${HOME} $X $$"
        );
        assert_eq!(substitute("${X", &vars, &vars), "${X");
        assert_eq!(substitute("${}${X}", &vars, &vars), "${}1");
    }
}
