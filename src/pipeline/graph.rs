//! Dependency cycles, found in time linear in the graph and without recursion: the strongly
//! connected components (Tarjan's algorithm with an explicit stack), then one shortest cycle
//! through the first node of each component that has one. Reporting one cycle per component
//! keeps the answer small whatever the graph: a graph where everything depends on everything
//! has one component, and so one cycle to report, not factorially many.

use std::collections::VecDeque;

/// Names at most this many nodes of a cycle in its message.
const SHOWN: usize = 10;

/// One cycle per strongly connected component that has one (more than one node, or a node
/// depending on itself), as node indices in edge order, starting at the component's first node;
/// ordered by that node. `edges[v]` lists the nodes `v` points at (its dependencies).
pub(crate) fn cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let component = components(edges);
    let mut size = vec![0usize; edges.len()];
    for &c in &component {
        size[c] += 1;
    }
    // Shared by every search: each one only touches the nodes of its own component.
    let mut search = Search {
        parent: vec![None; edges.len()],
        reached: vec![false; edges.len()],
    };
    let mut seen = vec![false; edges.len()];
    let mut found = Vec::new();
    // The first node of each component, in node order.
    for start in 0..edges.len() {
        let c = component[start];
        if seen[c] {
            continue;
        }
        seen[c] = true;
        if size[c] == 1 {
            if edges[start].contains(&start) {
                found.push(vec![start]);
            }
        } else if let Some(cycle) = search.cycle_through(start, edges, &component) {
            found.push(cycle);
        }
    }
    found
}

/// The component of each node, by Tarjan's algorithm without recursion.
fn components(edges: &[Vec<usize>]) -> Vec<usize> {
    const UNSEEN: usize = usize::MAX;
    let n = edges.len();
    let mut order = vec![UNSEEN; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<usize> = Vec::new();
    let mut component = vec![UNSEEN; n];
    let mut next_order = 0;
    let mut next_component = 0;
    // The walk: a node and how many of its edges were followed.
    let mut walk: Vec<(usize, usize)> = Vec::new();
    for root in 0..n {
        if order[root] != UNSEEN {
            continue;
        }
        order[root] = next_order;
        low[root] = next_order;
        next_order += 1;
        stack.push(root);
        on_stack[root] = true;
        walk.push((root, 0));
        while let Some(top) = walk.last_mut() {
            let v = top.0;
            if let Some(&w) = edges[v].get(top.1) {
                top.1 += 1;
                if order[w] == UNSEEN {
                    order[w] = next_order;
                    low[w] = next_order;
                    next_order += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    walk.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(order[w]);
                }
                continue;
            }
            walk.pop();
            if low[v] == order[v] {
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component[w] = next_component;
                    if w == v {
                        break;
                    }
                }
                next_component += 1;
            }
            if let Some(&(parent, _)) = walk.last() {
                low[parent] = low[parent].min(low[v]);
            }
        }
    }
    component
}

/// The state of the breadth-first searches for cycles.
struct Search {
    parent: Vec<Option<usize>>,
    reached: Vec<bool>,
}

impl Search {
    /// A shortest cycle through `start` inside its component, if there is one.
    fn cycle_through(
        &mut self,
        start: usize,
        edges: &[Vec<usize>],
        component: &[usize],
    ) -> Option<Vec<usize>> {
        let c = component[start];
        let mut queue = VecDeque::from([start]);
        self.reached[start] = true;
        while let Some(v) = queue.pop_front() {
            if edges[v].contains(&start) {
                let mut path = vec![v];
                let mut at = v;
                while let Some(p) = self.parent[at] {
                    path.push(p);
                    at = p;
                }
                path.reverse();
                return Some(path);
            }
            for &w in &edges[v] {
                if component[w] == c && !self.reached[w] {
                    self.reached[w] = true;
                    self.parent[w] = Some(v);
                    queue.push_back(w);
                }
            }
        }
        None
    }
}

/// `a -> b -> c -> a`; past ten names, `a -> … -> j -> … -> a (4000 steps)`.
pub(crate) fn describe(names: &[&str], noun: &str) -> String {
    let Some(first) = names.first() else {
        return String::new();
    };
    let mut shown: Vec<&str> = names.iter().take(SHOWN).copied().collect();
    if names.len() > SHOWN {
        shown.push("…");
        shown.push(first);
        format!("{} ({} {noun})", shown.join(" -> "), names.len())
    } else {
        shown.push(first);
        shown.join(" -> ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cycle_per_component_starting_at_its_first_node() {
        // 0 -> 2 -> 1 -> 0, 3 -> 3, 4 -> 5 (no cycle), 6 <-> 7.
        let edges = vec![
            vec![2],
            vec![0],
            vec![1],
            vec![3],
            vec![5],
            vec![],
            vec![7],
            vec![6],
        ];
        assert_eq!(cycles(&edges), vec![vec![0, 2, 1], vec![3], vec![6, 7]]);
    }

    #[test]
    fn a_complete_graph_is_one_short_cycle() {
        let n = 300;
        let edges: Vec<Vec<usize>> = (0..n)
            .map(|i| (0..n).filter(|j| *j != i).collect())
            .collect();
        assert_eq!(cycles(&edges), vec![vec![0, 1]]);
    }

    #[test]
    fn long_chains_and_rings_without_recursion() {
        let n = 200_000;
        let chain: Vec<Vec<usize>> = (0..n)
            .map(|i| if i + 1 < n { vec![i + 1] } else { vec![] })
            .collect();
        assert!(cycles(&chain).is_empty());
        let ring: Vec<Vec<usize>> = (0..n).map(|i| vec![(i + 1) % n]).collect();
        let found = cycles(&ring);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].len(), n);
        assert_eq!(found[0][..3], [0, 1, 2]);
    }

    #[test]
    fn long_cycles_are_described_briefly() {
        assert_eq!(describe(&["a", "b"], "steps"), "a -> b -> a");
        assert_eq!(describe(&["a"], "steps"), "a -> a");
        let names: Vec<String> = (0..4000).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            describe(&refs, "steps"),
            "s0 -> s1 -> s2 -> s3 -> s4 -> s5 -> s6 -> s7 -> s8 -> s9 -> … -> s0 (4000 steps)"
        );
    }
}
