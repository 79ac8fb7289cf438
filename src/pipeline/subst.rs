//! `${NAME}` substitution in every string of a workflow, from the matrix element first and the
//! submission's variables second. `$${X}` is the escape for a literal `${X}`; an unknown name is
//! left as written, because commands use shell variables of the same syntax.

use std::collections::BTreeMap;

use super::diagnostic::{Pos, child};
use super::node::{Node, Value};

/// Substitutes one string; `None` when the result would be longer than `max_len` bytes (a
/// short string naming a long variable many times must not grow without bound). Each byte of
/// `text` is looked at a bounded number of times, whatever it holds.
pub fn substitute(
    text: &str,
    matrix: &BTreeMap<String, String>,
    vars: &BTreeMap<String, String>,
    max_len: usize,
) -> Option<String> {
    if !text.contains("${") {
        return (text.len() <= max_len).then(|| text.to_string());
    }
    let mut out = String::with_capacity(text.len().min(max_len));
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            // Escape: `$${X}` is the literal text `${X}`.
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let name_len = tail
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            let name = &tail[..name_len];
            if tail[name_len..].starts_with('}') && is_name(name) {
                match matrix.get(name).or_else(|| vars.get(name)) {
                    Some(v) => out.push_str(v),
                    None => {
                        out.push_str("${");
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &tail[name_len + 1..];
            } else {
                out.push_str("${");
                rest = tail;
            }
        } else {
            out.push('$');
            rest = &after[1..];
        }
        if out.len() > max_len {
            return None;
        }
    }
    out.push_str(rest);
    (out.len() <= max_len).then_some(out)
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// What substituting a tree did.
#[derive(Debug, Default, PartialEq)]
pub struct Substituted {
    /// Strings that would grow past the length limit (pointer and position); left as they were.
    pub too_long: Vec<(String, Pos)>,
    /// Bytes of the tree's strings and keys after substitution, as far as the walk went.
    pub bytes: usize,
    /// Whether the walk stopped early because `bytes` passed the budget.
    pub over_budget: bool,
}

/// Substitutes every string value of a tree in place (keys are left alone), each at most
/// `max_len` bytes, and stops once the tree's text passes `budget` bytes: a short tree naming a
/// long variable many times must not grow without bound. Recurses on the tree's depth, which
/// the reader has bounded.
pub fn substitute_node(
    node: &mut Node,
    matrix: &BTreeMap<String, String>,
    vars: &BTreeMap<String, String>,
    max_len: usize,
    budget: usize,
) -> Substituted {
    struct Walk<'a> {
        path: Vec<String>,
        subst: &'a dyn Fn(&str) -> Option<String>,
        budget: usize,
        done: Substituted,
    }
    impl Walk<'_> {
        fn add(&mut self, bytes: usize) {
            self.done.bytes = self.done.bytes.saturating_add(bytes);
            self.done.over_budget |= self.done.bytes > self.budget;
        }
        fn node(&mut self, node: &mut Node) {
            if self.done.over_budget {
                return;
            }
            match &mut node.value {
                Value::String(s) => match (self.subst)(s) {
                    Some(new) => {
                        self.add(new.len());
                        *s = new;
                    }
                    None => self.done.too_long.push((
                        self.path.iter().fold(String::new(), |p, t| child(&p, t)),
                        node.pos,
                    )),
                },
                Value::Seq(items) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        self.path.push(i.to_string());
                        self.node(item);
                        self.path.pop();
                    }
                }
                Value::Map(entries) => {
                    for e in entries.iter_mut() {
                        self.add(e.key.len());
                        self.path.push(e.key.clone());
                        self.node(&mut e.value);
                        self.path.pop();
                    }
                }
                Value::Number(n) => self.add(n.len()),
                Value::Null | Value::Bool(_) => {}
            }
        }
    }
    let subst = |s: &str| substitute(s, matrix, vars, max_len);
    let mut walk = Walk {
        path: Vec::new(),
        subst: &subst,
        budget,
        done: Substituted::default(),
    };
    walk.node(node);
    walk.done
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
            100,
        );
        assert_eq!(s.as_deref(), Some("golang:1.22 on main"));
    }

    #[test]
    fn escape_and_unknown_names() {
        let vars = m(&[("X", "1")]);
        let sub = |t: &str| substitute(t, &vars, &vars, 100).expect("fits");
        assert_eq!(sub("echo $${X}"), "echo ${X}");
        assert_eq!(sub("echo ${HOME} $X $$"), "echo ${HOME} $X $$");
        assert_eq!(sub("${X"), "${X");
        assert_eq!(sub("${}${X}"), "${}1");
        assert_eq!(sub("${1X}${X-}${X}"), "${1X}${X-}1");
        assert_eq!(sub("${${X}}"), "${1}");
    }

    #[test]
    fn growth_is_bounded() {
        let vars = m(&[("X", "0123456789")]);
        assert_eq!(
            substitute("${X}${X}", &vars, &vars, 20).as_deref(),
            Some("01234567890123456789")
        );
        assert_eq!(substitute("${X}${X}!", &vars, &vars, 20), None);
        // Many references to a long value stop at the limit, not after building it all.
        let text = "${X}".repeat(100_000);
        let long = m(&[("X", &"x".repeat(65_536))]);
        assert_eq!(substitute(&text, &long, &long, 65_536), None);
    }

    #[test]
    fn unclosed_references_cost_linear_time() {
        // Every `${` finds no name; the scan must not look ahead to the end each time.
        let text = "${".repeat(200_000);
        let vars = m(&[]);
        assert_eq!(
            substitute(&text, &vars, &vars, usize::MAX).as_deref(),
            Some(text.as_str())
        );
        let text = format!("{}{{X}}", "${a".repeat(100_000));
        assert!(substitute(&text, &vars, &vars, usize::MAX).is_some());
    }

    #[test]
    fn too_long_strings_are_named() {
        let mut node = Node::parse("steps: [{commands: ['${X}${X}', short]}]", 32).expect("yaml");
        let vars = m(&[("X", "0123456789")]);
        let done = substitute_node(&mut node, &vars, &vars, 15, usize::MAX);
        assert_eq!(done.too_long.len(), 1);
        assert_eq!(done.too_long[0].0, "/steps/0/commands/0");
        assert!(!done.over_budget);
    }

    #[test]
    fn the_walk_stops_past_its_budget() {
        let text = format!(
            "steps: [{{commands: [{}]}}]",
            vec!["'${X}'"; 1000].join(", ")
        );
        let vars = m(&[("X", &"x".repeat(1000))]);
        let mut node = Node::parse(&text, 32).expect("yaml");
        let done = substitute_node(&mut node, &vars, &vars, 4096, 10_000);
        assert!(done.over_budget);
        // It stopped at the first string past the budget, not after all 1,000 of them.
        assert!(
            done.bytes > 10_000 && done.bytes <= 10_000 + 1000,
            "{}",
            done.bytes
        );

        let mut node = Node::parse(&text, 32).expect("yaml");
        let done = substitute_node(&mut node, &vars, &vars, 4096, 2_000_000);
        assert!(!done.over_budget);
        assert_eq!(done.bytes, "steps".len() + "commands".len() + 1000 * 1000);
    }
}
