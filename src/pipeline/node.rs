//! The position-annotated tree every config is read into first, whatever its syntax: YAML text,
//! JSON text (parsed by the same YAML parser, so it gets positions too) or an already-parsed
//! `serde_json::Value` (no positions). Anchors, aliases and merge keys are resolved by the parser;
//! the tree keeps the original text of numbers (`1.20` stays `1.20`, as Woodpecker keeps it).
//!
//! Converting, merging, substituting and dropping a tree recurse on its depth, so the depth is
//! bounded first: while the parser reads (see [`nesting`]), and for an already-parsed value by
//! [`json_nesting`], which does not recurse.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use serde_saphyr::budget::BudgetBreach;

use super::diagnostic::{Pos, child};
use super::limits::{NESTING_DEPTH, over};

/// Parser events that aliases may replay in one config. An anchor reused by every step of
/// the largest workflow replays a few thousand; a "billion laughs" document would replay
/// billions, and is refused once past this.
pub const MAX_ALIAS_EVENTS: usize = 100_000;

/// A node of a config with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// A number, as written in the source.
    Number(String),
    String(String),
    Seq(Vec<Node>),
    /// A mapping, in source order.
    Map(Vec<Entry>),
}

/// One key of a mapping; keys are always read as text.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub key_pos: Pos,
    pub value: Node,
}

/// A parse failure of the text itself, or a limit the text crosses.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    pub message: String,
    pub pos: Pos,
    /// Where in the tree a limit was crossed; empty for a syntax error.
    pub pointer: String,
    /// A limit was crossed (nesting, aliases): the text is readable but refused, and not to be
    /// read again another way.
    pub limit: bool,
}

impl ParseError {
    pub(crate) fn syntax(message: String, pos: Pos) -> ParseError {
        ParseError {
            message,
            pos,
            pointer: String::new(),
            limit: false,
        }
    }

    fn limit(message: String, pos: Pos, pointer: String) -> ParseError {
        ParseError {
            message,
            pos,
            pointer,
            limit: true,
        }
    }

    /// The refusal of a tree nested deeper than `max`, at `pointer`.
    pub fn nesting(max: usize, pos: Pos, pointer: String) -> ParseError {
        ParseError::limit(
            format!(
                "maps and lists nest {} deep here, {}",
                max + 1,
                over(max, NESTING_DEPTH)
            ),
            pos,
            pointer,
        )
    }
}

impl Node {
    pub fn new(value: Value, pos: Pos) -> Node {
        Node { value, pos }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn as_map(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Looks a key up in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.as_map()?.iter().find(|e| e.key == key)
    }

    /// The text of a scalar (string, number or boolean); `None` for null and collections.
    pub fn scalar_text(&self) -> Option<String> {
        match &self.value {
            Value::String(s) | Value::Number(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Converts to a JSON value (plugin settings, affinity): numbers become JSON numbers when
    /// they are valid ones, else strings.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Number(s) => serde_json::from_str::<serde_json::Number>(s)
                .map(J::Number)
                .unwrap_or_else(|_| J::String(s.clone())),
            Value::String(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// Builds a tree from an already-parsed JSON value; it carries no positions.
    pub fn from_json(v: &serde_json::Value) -> Node {
        use serde_json::Value as J;
        let value = match v {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => Value::Number(n.to_string()),
            J::String(s) => Value::String(s.clone()),
            J::Array(a) => Value::Seq(a.iter().map(Node::from_json).collect()),
            J::Object(o) => Value::Map(
                o.iter()
                    .map(|(k, v)| Entry {
                        key: k.clone(),
                        key_pos: Pos::NONE,
                        value: Node::from_json(v),
                    })
                    .collect(),
            ),
        };
        Node::new(value, Pos::NONE)
    }

    /// Parses YAML (or JSON) text into a tree with positions; maps and lists nested deeper
    /// than `max_depth` are refused where they cross it, before the tree is built.
    pub fn parse(text: &str, max_depth: usize) -> Result<Node, ParseError> {
        let mut options = serde_saphyr::Options::default();
        // YAML 1.2 booleans only: `on`, `yes`, `n` stay strings (a step or key named `n` is
        // not `false`), as in Woodpecker's Go YAML decoder.
        options.strict_booleans = true;
        options.with_snippet = false;
        // Merge keys are resolved on the tree (`merge`), because Woodpecker's YAML dialect also
        // merges a list into a list (`- <<: *paths`), which serde-saphyr rejects.
        options.merge_keys = serde_saphyr::MergeKeyPolicy::AsOrdinary;
        let mut budget = serde_saphyr::Budget::default();
        // Backstops only: the reader's own check (`nesting`) is to come first and name the
        // place. The scanner runs ahead of the reader by up to a simple key's lookahead (each
        // level takes at least one character), so these must be that much higher.
        let ahead = budget.simple_key_max_lookahead.saturating_mul(2);
        budget.max_depth = max_depth.saturating_add(ahead);
        budget.flow_nesting_limit = max_depth.saturating_add(ahead);
        // The replay cap stops alias bombs; the ratio heuristic would also refuse an anchor
        // reused by a hundred steps, which Woodpecker configs do.
        budget.enforce_alias_anchor_ratio = false;
        options.budget = Some(budget);
        options.alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;

        let tracking = nesting::Tracking::start(max_depth);
        let parsed = serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options);
        let crossed = tracking.crossed();
        drop(tracking);
        match parsed {
            Ok(raw) => merge(convert(raw, text)),
            Err(e) => {
                let pos = e
                    .location()
                    .map(|l| Pos::at(clamp(l.line()), clamp(l.column())))
                    .unwrap_or(Pos::NONE);
                if let Some(pointer) = crossed {
                    return Err(ParseError::nesting(max_depth, pos, pointer));
                }
                // The cause, without the wrappers that add places to it.
                let mut cause = &e;
                while let serde_saphyr::Error::AliasError { error, .. }
                | serde_saphyr::Error::WithSnippet { error, .. } = cause
                {
                    cause = error;
                }
                Err(match cause {
                    serde_saphyr::Error::AliasReplayLimitExceeded { .. }
                    | serde_saphyr::Error::AliasExpansionLimitExceeded { .. }
                    | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => {
                        ParseError::limit(
                            format!(
                                "YAML aliases expand to more than {MAX_ALIAS_EVENTS} values; write the repeated parts out, or repeat them less"
                            ),
                            pos,
                            String::new(),
                        )
                    }
                    serde_saphyr::Error::Budget { breach, .. } => {
                        budget_refusal(breach, max_depth, pos)
                    }
                    _ => {
                        let message = clean_parse_message(&e.to_string());
                        // The scanner reports a tab where the token before it began (a plain
                        // scalar on the line above, say); the tab is what to fix, so point at it.
                        let pos = if message.contains("tab") {
                            first_tab_from(text, pos).unwrap_or(pos)
                        } else {
                            pos
                        };
                        ParseError::syntax(message, pos)
                    }
                })
            }
        }
    }
}

/// What serde-saphyr's budget refused, in words; nesting is normally caught before it.
fn budget_refusal(breach: &BudgetBreach, max_depth: usize, pos: Pos) -> ParseError {
    let message = match breach {
        BudgetBreach::Depth { .. } => return ParseError::nesting(max_depth, pos, String::new()),
        BudgetBreach::Nodes { nodes } => {
            format!(
                "the config has more than {} values, maps and lists",
                nodes.saturating_sub(1)
            )
        }
        BudgetBreach::Aliases { .. }
        | BudgetBreach::RecordedAnchorEvents { .. }
        | BudgetBreach::RecordedAnchorBytes { .. } => {
            "YAML anchors and aliases are used too much; write the repeated parts out".to_string()
        }
        other => format!("the config is too large to read ({other:?})"),
    };
    ParseError::limit(message, pos, String::new())
}

/// The JSON pointer of `last` under a walk's stack of open collections (whose first entry is
/// the root, with no token of its own).
fn stack_pointer<T>(stack: &[(String, T)], last: &str) -> String {
    stack
        .iter()
        .skip(1)
        .map(|(token, _)| token.as_str())
        .chain([last])
        .fold(String::new(), |p, t| child(&p, t))
}

/// Where an already-parsed value nests deeper than `max` maps and arrays: the pointer of the
/// first collection past the limit. Walks without recursion, whatever the depth.
pub fn json_nesting(value: &serde_json::Value, max: usize) -> Option<String> {
    use serde_json::Value as J;
    enum Children<'a> {
        Array(std::iter::Enumerate<std::slice::Iter<'a, J>>),
        Object(serde_json::map::Iter<'a>),
    }
    fn children(v: &J) -> Option<Children<'_>> {
        match v {
            J::Array(a) => Some(Children::Array(a.iter().enumerate())),
            J::Object(o) => Some(Children::Object(o.iter())),
            _ => None,
        }
    }
    let root = children(value)?;
    if max == 0 {
        return Some(String::new());
    }
    let mut stack: Vec<(String, Children<'_>)> = vec![(String::new(), root)];
    while let Some((_, top)) = stack.last_mut() {
        let next = match top {
            Children::Array(items) => items.next().map(|(i, v)| (i.to_string(), v)),
            Children::Object(entries) => entries.next().map(|(k, v)| (k.clone(), v)),
        };
        let Some((token, v)) = next else {
            stack.pop();
            continue;
        };
        if let Some(grandchildren) = children(v) {
            if stack.len() >= max {
                return Some(stack_pointer(&stack, &token));
            }
            stack.push((token, grandchildren));
        }
    }
    None
}

/// Bounds the nesting while serde-saphyr builds the raw tree: its deserializer recurses once
/// per level, so a deep text must be refused while it is read, not after. The visitor cannot
/// carry state through `Spanned`, hence a thread-local set for the length of one parse.
mod nesting {
    use std::cell::RefCell;

    use super::super::diagnostic::{child, index};

    enum Token {
        Index(usize),
        Key(String),
    }

    struct State {
        max: usize,
        depth: usize,
        path: Vec<Token>,
        crossed: Option<String>,
    }

    thread_local! {
        static STATE: RefCell<Option<State>> = const { RefCell::new(None) };
    }

    /// Tracks the nesting of one parse on this thread until dropped.
    pub(super) struct Tracking;

    impl Tracking {
        pub(super) fn start(max: usize) -> Tracking {
            STATE.with(|s| {
                *s.borrow_mut() = Some(State {
                    max,
                    depth: 0,
                    path: Vec::new(),
                    crossed: None,
                })
            });
            Tracking
        }

        /// The pointer of the first map or list past the limit, if one was met.
        pub(super) fn crossed(&self) -> Option<String> {
            STATE.with(|s| s.borrow().as_ref().and_then(|st| st.crossed.clone()))
        }
    }

    impl Drop for Tracking {
        fn drop(&mut self) {
            STATE.with(|s| s.borrow_mut().take());
        }
    }

    fn with(f: impl FnOnce(&mut State)) {
        STATE.with(|s| {
            if let Some(state) = s.borrow_mut().as_mut() {
                f(state)
            }
        })
    }

    /// A map or list begins; `Err` when it is one level too deep.
    pub(super) fn enter() -> Result<(), ()> {
        let mut result = Ok(());
        with(|st| {
            st.depth += 1;
            if st.depth > st.max {
                let pointer = st.path.iter().fold(String::new(), |p, t| match t {
                    Token::Index(i) => index(&p, *i),
                    Token::Key(k) => child(&p, k),
                });
                st.crossed.get_or_insert(pointer);
                result = Err(());
            }
        });
        result
    }

    pub(super) fn leave() {
        with(|st| st.depth = st.depth.saturating_sub(1));
    }

    pub(super) fn push_index(i: usize) {
        with(|st| st.path.push(Token::Index(i)));
    }

    pub(super) fn push_key(key: String) {
        with(|st| st.path.push(Token::Key(key)));
    }

    pub(super) fn pop() {
        with(|st| {
            st.path.pop();
        });
    }
}

/// A key or a scalar's text met by [`Node::for_each_text`].
pub(crate) struct Text<'a> {
    pub text: &'a str,
    pub pos: Pos,
    /// A mapping key (as opposed to a value).
    pub is_key: bool,
}

impl Node {
    /// Calls `f` with every key and every string or number text of the tree, in document order,
    /// and a function naming its JSON pointer (built only when asked for). Does not recurse.
    pub(crate) fn for_each_text(&self, mut f: impl FnMut(Text<'_>, &dyn Fn() -> String)) {
        enum Children<'a> {
            Seq(std::iter::Enumerate<std::slice::Iter<'a, Node>>),
            Map(std::slice::Iter<'a, Entry>),
        }
        fn children(n: &Node) -> Option<Children<'_>> {
            match &n.value {
                Value::Seq(items) => Some(Children::Seq(items.iter().enumerate())),
                Value::Map(entries) => Some(Children::Map(entries.iter())),
                _ => None,
            }
        }
        fn scalar(n: &Node) -> Option<&str> {
            match &n.value {
                Value::String(s) | Value::Number(s) => Some(s),
                _ => None,
            }
        }

        let Some(root) = children(self) else {
            if let Some(text) = scalar(self) {
                let t = Text {
                    text,
                    pos: self.pos,
                    is_key: false,
                };
                f(t, &String::new);
            }
            return;
        };
        let mut stack: Vec<(String, Children<'_>)> = vec![(String::new(), root)];
        while let Some((_, top)) = stack.last_mut() {
            let next = match top {
                Children::Seq(items) => items.next().map(|(i, n)| (i.to_string(), n, None)),
                Children::Map(entries) => {
                    entries.next().map(|e| (e.key.clone(), &e.value, Some(e)))
                }
            };
            let Some((token, n, entry)) = next else {
                stack.pop();
                continue;
            };
            if let Some(e) = entry {
                let key = Text {
                    text: &e.key,
                    pos: e.key_pos,
                    is_key: true,
                };
                f(key, &|| stack_pointer(&stack, &token));
            }
            match children(n) {
                Some(grandchildren) => stack.push((token, grandchildren)),
                None => {
                    if let Some(text) = scalar(n) {
                        let t = Text {
                            text,
                            pos: n.pos,
                            is_key: false,
                        };
                        f(t, &|| stack_pointer(&stack, &token));
                    }
                }
            }
        }
    }
}

const MERGE_KEY: &str = "<<";

/// Resolves YAML merge keys bottom-up: `<<: *map` or `<<: [*a, *b]` in a mapping (keys of the
/// mapping win, then earlier merged maps; merged keys take the place of the `<<` entry), and
/// Woodpecker's list merge: a list item `- <<: *list` is replaced by the items of that list.
fn merge(node: Node) -> Result<Node, ParseError> {
    let pos = node.pos;
    match node.value {
        Value::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                // Woodpecker's list merge: `- <<: *list` stands for the items of that list.
                if let Value::Map(entries) = &item.value
                    && let [only] = entries.as_slice()
                    && only.key == MERGE_KEY
                    && let Value::Seq(_) = &only.value.value
                    && let Value::Seq(spliced) = merge(only.value.clone())?.value
                {
                    out.extend(spliced);
                    continue;
                }
                out.push(merge(item)?);
            }
            Ok(Node::new(Value::Seq(out), pos))
        }
        Value::Map(entries) => {
            let mut resolved: Vec<Entry> = Vec::with_capacity(entries.len());
            for e in entries {
                let value = merge(e.value)?;
                resolved.push(Entry { value, ..e });
            }
            if !resolved.iter().any(|e| e.key == MERGE_KEY) {
                return Ok(Node::new(Value::Map(resolved), pos));
            }
            // Sets, not lists: a hostile map of many keys must not make this quadratic.
            let own: HashSet<String> = resolved
                .iter()
                .filter(|e| e.key != MERGE_KEY)
                .map(|e| e.key.clone())
                .collect();
            let mut taken: HashSet<String> = HashSet::new();
            let mut out: Vec<Entry> = Vec::new();
            for e in resolved {
                if e.key != MERGE_KEY {
                    out.push(e);
                    continue;
                }
                let sources: Vec<Node> = match e.value.value {
                    Value::Map(_) => vec![e.value],
                    Value::Seq(items) if items.iter().all(|i| i.as_map().is_some()) => items,
                    _ => {
                        return Err(ParseError::syntax(
                            "invalid YAML/JSON: a merge key (<<) needs a map or a list of maps"
                                .to_string(),
                            e.value.pos,
                        ));
                    }
                };
                for src in sources {
                    if let Value::Map(merged) = src.value {
                        for m in merged {
                            if !own.contains(&m.key) && taken.insert(m.key.clone()) {
                                out.push(m);
                            }
                        }
                    }
                }
            }
            Ok(Node::new(Value::Map(out), pos))
        }
        other => Ok(Node::new(other, pos)),
    }
}

/// The place of the first tab from about `from` on (1-based line and column, in characters).
fn first_tab_from(text: &str, from: Pos) -> Option<Pos> {
    let (line, column) = (from.line? as usize, from.column? as usize);
    for (index, content) in text.lines().enumerate().skip(line.saturating_sub(1)) {
        let number = index + 1;
        // On the reported line, only what comes from just before the reported column: the
        // scanner may report the character after the tab it stopped at.
        let skip = if number == line {
            column.saturating_sub(2)
        } else {
            0
        };
        if let Some(offset) = content.chars().skip(skip).position(|c| c == '\t') {
            return Some(Pos::at(
                u32::try_from(number).unwrap_or(u32::MAX),
                u32::try_from(skip + offset + 1).unwrap_or(u32::MAX),
            ));
        }
    }
    None
}

fn clamp(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// serde-saphyr renders `error: line 3 column 4: <message>`; the position is reported in its
/// own fields, so only the message is kept.
fn clean_parse_message(rendered: &str) -> String {
    let first = rendered.lines().next().unwrap_or(rendered).trim();
    let s = first.strip_prefix("error: ").unwrap_or(first);
    let s = match s.strip_prefix("line ") {
        Some(rest) => match rest.find(": ") {
            Some(i) if rest[..i].contains("column") => &rest[i + 2..],
            _ => s,
        },
        None => s,
    };
    // Without snippets the position is appended as ` at line N, column M`.
    let s = match s.rfind(" at line ") {
        Some(i) if s[i..].contains(", column ") => &s[..i],
        _ => s,
    };
    format!("invalid YAML/JSON: {s}")
}

/// What serde-saphyr hands over: an untyped tree whose every node is `Spanned`.
enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Raw>>),
    Map(Vec<(Spanned<Raw>, Spanned<Raw>)>),
}

/// The error the visitor stops the parser with; `Node::parse` reports the place instead.
const TOO_DEEP: &str = "nested too deep";

impl Raw {
    /// A key as the path of a nesting refusal names it.
    fn key_text(&self) -> String {
        match self {
            Raw::Null => "null".to_string(),
            Raw::Bool(b) => b.to_string(),
            Raw::Int(i) => i.to_string(),
            Raw::Float(f) => f.to_string(),
            Raw::Str(s) => s.clone(),
            Raw::Seq(_) | Raw::Map(_) => "<complex key>".to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_none<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
        Raw::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
        Ok(Raw::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
        Ok(Raw::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
        Ok(Raw::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
        Ok(Raw::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Raw, E> {
        Ok(Raw::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Raw, E> {
        Ok(Raw::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        nesting::enter().map_err(|()| de::Error::custom(TOO_DEEP))?;
        let mut items = Vec::new();
        loop {
            nesting::push_index(items.len());
            let item = seq.next_element()?;
            nesting::pop();
            match item {
                Some(item) => items.push(item),
                None => break,
            }
        }
        nesting::leave();
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        nesting::enter().map_err(|()| de::Error::custom(TOO_DEEP))?;
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Raw>>()? {
            nesting::push_key(key.value.key_text());
            let value = map.next_value()?;
            nesting::pop();
            entries.push((key, value));
        }
        nesting::leave();
        Ok(Raw::Map(entries))
    }
}

fn pos_of<T>(s: &Spanned<T>) -> Pos {
    Pos::at(clamp(s.referenced.line()), clamp(s.referenced.column()))
}

/// The source text of a scalar: where it was defined (an alias points at its anchor).
fn source_text<T>(s: &Spanned<T>, text: &str) -> Option<String> {
    let span = s.defined.span();
    let start = usize::try_from(span.byte_offset()?).ok()?;
    let len = usize::try_from(span.byte_len()?).ok()?;
    let raw = text.get(start..start.checked_add(len)?)?.trim();
    (!raw.is_empty()).then(|| raw.to_string())
}

fn convert(raw: Spanned<Raw>, text: &str) -> Node {
    let pos = pos_of(&raw);
    let number_text = |fallback: String| {
        source_text(&raw, text)
            .filter(|t| !t.starts_with(['*', '&', '"', '\'']))
            .unwrap_or(fallback)
    };
    let value = match raw.value {
        Raw::Null => Value::Null,
        Raw::Bool(b) => Value::Bool(b),
        Raw::Int(i) => Value::Number(number_text(i.to_string())),
        Raw::Float(f) => Value::Number(number_text(f.to_string())),
        Raw::Str(ref s) => Value::String(s.clone()),
        Raw::Seq(_) | Raw::Map(_) => Value::Null,
    };
    match raw.value {
        Raw::Seq(items) => Node::new(
            Value::Seq(items.into_iter().map(|i| convert(i, text)).collect()),
            pos,
        ),
        Raw::Map(entries) => Node::new(
            Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| {
                        let key_node = convert(k, text);
                        let key = key_node
                            .scalar_text()
                            .unwrap_or_else(|| match key_node.value {
                                Value::Null => "null".to_string(),
                                _ => "<complex key>".to_string(),
                            });
                        Entry {
                            key,
                            key_pos: key_node.pos,
                            value: convert(v, text),
                        }
                    })
                    .collect(),
            ),
            pos,
        ),
        _ => Node::new(value, pos),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tab is reported where it is, not where the token before it began.
    #[test]
    fn a_tab_is_reported_at_its_place() {
        for (text, line, column) in [
            ("steps:\n  - name: a\n\timage: alpine\n", 3, 1),
            (
                "steps:\n  - name: a\n    image: alpine\n    commands:\n\t- echo\n",
                5,
                1,
            ),
        ] {
            let e = Node::parse(text, 32).expect_err("a tab is refused");
            assert!(e.message.contains("tab"), "{}", e.message);
            assert_eq!(e.pos, Pos::at(line, column), "{text:?}: {}", e.message);
        }
    }

    fn get<'a>(n: &'a Node, path: &[&str]) -> &'a Node {
        let mut cur = n;
        for p in path {
            cur = match &cur.value {
                Value::Map(_) => &cur.get(p).expect("key").value,
                Value::Seq(items) => &items[p.parse::<usize>().expect("index")],
                _ => panic!("not a collection"),
            };
        }
        cur
    }

    #[test]
    fn anchors_and_merge_keys_resolve_with_positions() {
        let text = "variables:\n  - &img golang:1.22\n  - &base\n    image: alpine\n    pull: true\nsteps:\n  build:\n    <<: *base\n    image: *img\n    v: 1.20\n    n: x\n";
        let n = Node::parse(text, 32).expect("parses");
        let build = get(&n, &["steps", "build"]);
        assert_eq!(
            get(build, &["image"]).value,
            Value::String("golang:1.22".into())
        );
        assert_eq!(get(build, &["pull"]).value, Value::Bool(true));
        assert_eq!(get(build, &["v"]).value, Value::Number("1.20".into()));
        assert!(build.get("n").is_some(), "`n` is a key, not a boolean");
        assert_eq!(get(build, &["image"]).pos, Pos::at(9, 12));
    }

    #[test]
    fn woodpecker_list_merge_and_merge_precedence() {
        let text = "x: &l [a, b]\ny:\n  - <<: *l\n  - c\nd1: &d1 {k: 1, j: 1}\nd2: &d2 {k: 2, m: 2}\nz:\n  k: 0\n  <<: [*d1, *d2]\n";
        let n = Node::parse(text, 32).expect("parses");
        let y: Vec<String> = match &get(&n, &["y"]).value {
            Value::Seq(items) => items.iter().filter_map(Node::scalar_text).collect(),
            _ => panic!("seq"),
        };
        assert_eq!(y, ["a", "b", "c"]);
        let z = get(&n, &["z"]);
        let keys: Vec<(&str, String)> = z
            .as_map()
            .expect("map")
            .iter()
            .map(|e| (e.key.as_str(), e.value.scalar_text().unwrap_or_default()))
            .collect();
        assert_eq!(
            keys,
            [("k", "0".into()), ("j", "1".into()), ("m", "2".into())]
        );
        let e = Node::parse("a: &s [x]\nb:\n  <<: *s\n", 32).expect_err("bad merge");
        assert_eq!(
            e.message,
            "invalid YAML/JSON: a merge key (<<) needs a map or a list of maps"
        );
    }

    #[test]
    fn json_text_gets_positions() {
        let n =
            Node::parse("{\"steps\": [\n  {\"name\": \"a\", \"x\": 1.50}\n]}", 32).expect("parses");
        let x = get(&n, &["steps", "0", "x"]);
        assert_eq!(x.value, Value::Number("1.50".into()));
        assert_eq!(x.pos, Pos::at(2, 22));
    }

    #[test]
    fn parse_error_has_position() {
        let e = Node::parse("steps:\n  - name: a\n   bad: [", 32).expect_err("fails");
        assert_eq!(e.pos, Pos::at(3, 4));
        assert!(
            e.message.starts_with("invalid YAML/JSON: "),
            "{}",
            e.message
        );
        assert!(!e.message.contains("line 3"), "{}", e.message);
    }

    #[test]
    fn json_value_round_trips() {
        let v = serde_json::json!({"a": [1, "x", true, null, {"b": 2.5}]});
        let n = Node::from_json(&v);
        assert_eq!(n.to_json(), v);
        assert_eq!(n.pos, Pos::NONE);
    }
}
