//! Matrix expansion: one workflow per element. Axes give their cartesian product in a stable
//! order (axes in file order, the last one varying fastest); `include` lists the elements
//! explicitly and, as in Woodpecker, replaces the axes when both are given.

use std::collections::BTreeMap;

use super::diagnostic::{Sink, child, index};
use super::node::{Node, Value};

/// More elements than this is almost surely a mistake, and would flood the engine.
pub const MAX_ELEMENTS: usize = 256;

pub type Element = BTreeMap<String, String>;

/// The elements of a workflow's matrix; one empty element when there is no matrix.
pub(crate) fn expand(matrix: Option<&Node>, sink: &mut Sink) -> Vec<Element> {
    let Some(node) = matrix.filter(|n| !n.is_null()) else {
        return vec![Element::new()];
    };
    let Some(entries) = node.as_map() else {
        sink.error("/matrix", node.pos, "expected a map");
        return vec![Element::new()];
    };
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    let mut include: Vec<Element> = Vec::new();
    let mut include_given = false;
    for e in entries {
        let p = child("/matrix", &e.key);
        let Value::Seq(items) = &e.value.value else {
            let msg = if e.key == "include" {
                "expected a list of maps"
            } else {
                "expected a list of values"
            };
            sink.error(&p, e.value.pos, msg);
            continue;
        };
        if e.key == "include" {
            include_given = true;
            for (i, item) in items.iter().enumerate() {
                let ip = index(&p, i);
                let Some(fields) = item.as_map() else {
                    sink.error(&ip, item.pos, "expected a map");
                    continue;
                };
                let mut element = Element::new();
                for f in fields {
                    match f.value.scalar_text() {
                        Some(v) => {
                            element.insert(f.key.clone(), v);
                        }
                        None => sink.error(&child(&ip, &f.key), f.value.pos, "expected a string"),
                    }
                }
                include.push(element);
            }
            continue;
        }
        if items.is_empty() {
            sink.error(&p, e.value.pos, "expected a non-empty list of values");
            continue;
        }
        let mut values = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.scalar_text() {
                Some(v) => values.push(v),
                None => sink.error(&index(&p, i), item.pos, "expected a string"),
            }
        }
        axes.push((e.key.clone(), values));
    }

    if include_given {
        if !axes.is_empty() {
            sink.warn(
                "/matrix",
                node.pos,
                "matrix axes are ignored because \"include\" is given, as in Woodpecker",
            );
        }
        if include.is_empty() {
            sink.error(
                "/matrix/include",
                node.pos,
                "expected a non-empty list of maps",
            );
            return vec![Element::new()];
        }
        return include;
    }

    let total = axes
        .iter()
        .try_fold(1usize, |acc, (_, v)| acc.checked_mul(v.len().max(1)));
    match total {
        Some(t) if t <= MAX_ELEMENTS => {}
        _ => {
            let shown = total.map_or_else(|| "too many".to_string(), |t| t.to_string());
            sink.error(
                "/matrix",
                node.pos,
                format!("matrix has {shown} combinations; the limit is {MAX_ELEMENTS}"),
            );
            return vec![Element::new()];
        }
    }
    let mut out = vec![Element::new()];
    for (name, values) in &axes {
        out = out
            .into_iter()
            .flat_map(|el| {
                values.iter().map(move |v| {
                    let mut e = el.clone();
                    e.insert(name.clone(), v.clone());
                    e
                })
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> (Vec<Element>, Sink) {
        let node = Node::parse(yaml).expect("yaml");
        let mut sink = Sink::new("t");
        let out = expand(node.get("matrix").map(|e| &e.value), &mut sink);
        (out, sink)
    }

    #[test]
    fn axes_give_a_stable_product() {
        let (els, sink) = run("matrix:\n  GO: [1.21, 1.20]\n  ARCH: [amd64, arm64]\n");
        assert!(sink.errors.is_empty());
        let flat: Vec<String> = els
            .iter()
            .map(|e| format!("{}-{}", e["GO"], e["ARCH"]))
            .collect();
        assert_eq!(
            flat,
            ["1.21-amd64", "1.21-arm64", "1.20-amd64", "1.20-arm64"]
        );
    }

    #[test]
    fn include_lists_elements() {
        let (els, sink) = run("matrix:\n  include:\n    - {GO: 1.22, DB: pg}\n    - {GO: 1.21}\n");
        assert!(sink.errors.is_empty());
        assert_eq!(els.len(), 2);
        assert_eq!(els[0]["DB"], "pg");
        assert_eq!(els[1]["GO"], "1.21");
    }

    #[test]
    fn limits_and_shapes() {
        let (_, sink) = run("matrix:\n  A: []\n  B: x\n");
        let m: Vec<&str> = sink.errors.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            m,
            [
                "expected a non-empty list of values",
                "expected a list of values"
            ]
        );
        let (_, sink) = run("matrix: {A: [1,2,3,4,5,6,7], B: [1,2,3,4,5,6,7], C: [1,2,3,4,5,6]}");
        assert_eq!(
            sink.errors[0].message,
            "matrix has 294 combinations; the limit is 256"
        );
    }
}
