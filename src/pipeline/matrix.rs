//! Matrix expansion: one workflow per element. Axes give their cartesian product in a stable
//! order (axes in file order, the last one varying fastest); `include` lists the elements
//! explicitly and, as in Woodpecker, replaces the axes when both are given.

use std::collections::BTreeMap;

use super::diagnostic::{Pos, Sink, child, index};
use super::limits::{WORKFLOWS_PER_PIPELINE, over};
use super::node::{Node, Value};

pub type Element = BTreeMap<String, String>;

/// How many workflows the pipeline may still have, and its limit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Room {
    pub left: usize,
    pub limit: usize,
}

/// The elements of a workflow's matrix; one empty element when there is no matrix. `None`
/// when there would be more than `room` allows: refused before any element is built.
pub(crate) fn expand(matrix: Option<&Node>, sink: &mut Sink, room: Room) -> Option<Vec<Element>> {
    let Some(node) = matrix.filter(|n| !n.is_null()) else {
        return fits(1, room, sink, "", Pos::NONE).then(|| vec![Element::new()]);
    };
    let Some(entries) = node.as_map() else {
        sink.error("/matrix", node.pos, "expected a map");
        return Some(vec![Element::new()]);
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
            return Some(vec![Element::new()]);
        }
        return fits(include.len(), room, sink, "/matrix/include", node.pos).then_some(include);
    }

    // The product is checked before a single element is built.
    let total = axes
        .iter()
        .try_fold(1usize, |acc, (_, v)| acc.checked_mul(v.len().max(1)))
        .unwrap_or(usize::MAX);
    if !fits(total, room, sink, "/matrix", node.pos) {
        return None;
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
    Some(out)
}

/// Whether `count` more workflows fit; reports them at `pointer` when they do not.
fn fits(count: usize, room: Room, sink: &mut Sink, pointer: &str, pos: Pos) -> bool {
    if count <= room.left {
        return true;
    }
    let before = room.limit - room.left;
    let total = before.saturating_add(count);
    let shown = |n: usize| {
        if n == usize::MAX {
            "too many".to_string()
        } else {
            n.to_string()
        }
    };
    let limit = over(room.limit, WORKFLOWS_PER_PIPELINE);
    let message = match (pointer.is_empty(), before) {
        (true, _) => format!(
            "the pipeline would have {} workflows, {limit}",
            shown(total)
        ),
        (false, 0) => format!("matrix has {} combinations, {limit}", shown(count)),
        (false, _) => format!(
            "matrix has {} combinations; with the {before} workflows of the configs before it, the pipeline would have {} workflows, {limit}",
            shown(count),
            shown(total)
        ),
    };
    sink.error(pointer, pos, message);
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> (Vec<Element>, Sink) {
        let node = Node::parse(yaml, 32).expect("yaml");
        let mut sink = Sink::new("t");
        let room = Room {
            left: 256,
            limit: 256,
        };
        let out = expand(node.get("matrix").map(|e| &e.value), &mut sink, room).unwrap_or_default();
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
        let (els, sink) = run("matrix: {A: [1,2,3,4,5,6,7], B: [1,2,3,4,5,6,7], C: [1,2,3,4,5,6]}");
        assert!(els.is_empty());
        assert_eq!(
            sink.errors[0].message,
            "matrix has 294 combinations, more than the limit of 256 (PICULET_MAX_WORKFLOWS_PER_PIPELINE)"
        );
    }

    #[test]
    fn room_left_by_earlier_configs() {
        let node = Node::parse("matrix: {A: [1, 2, 3]}", 32).expect("yaml");
        let matrix = node.get("matrix").map(|e| &e.value);
        let mut sink = Sink::new("t");
        let at = Room { left: 3, limit: 5 };
        assert_eq!(expand(matrix, &mut sink, at).map(|e| e.len()), Some(3));
        let over = Room { left: 2, limit: 5 };
        assert_eq!(expand(matrix, &mut sink, over), None);
        assert_eq!(
            sink.errors[0].message,
            "matrix has 3 combinations; with the 3 workflows of the configs before it, the pipeline would have 6 workflows, more than the limit of 5 (PICULET_MAX_WORKFLOWS_PER_PIPELINE)"
        );
        // An astronomically large product is refused without overflow.
        let node = Node::parse(
            &format!(
                "matrix: {{{}}}",
                (0..40)
                    .map(|i| format!("A{i}: [1,2,3,4,5,6,7,8]"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            32,
        )
        .expect("yaml");
        let mut sink = Sink::new("t");
        assert_eq!(
            expand(node.get("matrix").map(|e| &e.value), &mut sink, at),
            None
        );
        assert!(
            sink.errors[0]
                .message
                .starts_with("matrix has too many combinations")
        );
    }
}
