//! The position-annotated tree every config is read into first, whatever its syntax: YAML text,
//! JSON text (parsed by the same YAML parser, so it gets positions too) or an already-parsed
//! `serde_json::Value` (no positions). Anchors, aliases and merge keys are resolved by the parser;
//! the tree keeps the original text of numbers (`1.20` stays `1.20`, as Woodpecker keeps it).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::diagnostic::Pos;

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

/// A parse failure of the text itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseError {
    pub message: String,
    pub pos: Pos,
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

    /// Parses YAML (or JSON) text into a tree with positions.
    pub fn parse(text: &str) -> Result<Node, ParseError> {
        let mut options = serde_saphyr::Options::default();
        // YAML 1.2 booleans only: `on`, `yes`, `n` stay strings (a step or key named `n` is
        // not `false`), as in Woodpecker's Go YAML decoder.
        options.strict_booleans = true;
        options.with_snippet = false;
        // Merge keys are resolved on the tree (`merge`), because Woodpecker's YAML dialect also
        // merges a list into a list (`- <<: *paths`), which serde-saphyr rejects.
        options.merge_keys = serde_saphyr::MergeKeyPolicy::AsOrdinary;
        match serde_saphyr::from_str_with_options::<Spanned<Raw>>(text, options) {
            Ok(raw) => merge(convert(raw, text)),
            Err(e) => {
                let pos = e
                    .location()
                    .map(|l| Pos::at(clamp(l.line()), clamp(l.column())))
                    .unwrap_or(Pos::NONE);
                Err(ParseError {
                    message: clean_parse_message(&e.to_string()),
                    pos,
                })
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
            let own: Vec<String> = resolved
                .iter()
                .filter(|e| e.key != MERGE_KEY)
                .map(|e| e.key.clone())
                .collect();
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
                        return Err(ParseError {
                            message:
                                "invalid YAML/JSON: a merge key (<<) needs a map or a list of maps"
                                    .to_string(),
                            pos: e.value.pos,
                        });
                    }
                };
                for src in sources {
                    if let Value::Map(merged) = src.value {
                        for m in merged {
                            if !own.contains(&m.key) && !out.iter().any(|o| o.key == m.key) {
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
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
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
        let n = Node::parse(text).expect("parses");
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
        let n = Node::parse(text).expect("parses");
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
        let e = Node::parse("a: &s [x]\nb:\n  <<: *s\n").expect_err("bad merge");
        assert_eq!(
            e.message,
            "invalid YAML/JSON: a merge key (<<) needs a map or a list of maps"
        );
    }

    #[test]
    fn json_text_gets_positions() {
        let n = Node::parse("{\"steps\": [\n  {\"name\": \"a\", \"x\": 1.50}\n]}").expect("parses");
        let x = get(&n, &["steps", "0", "x"]);
        assert_eq!(x.value, Value::Number("1.50".into()));
        assert_eq!(x.pos, Pos::at(2, 22));
    }

    #[test]
    fn parse_error_has_position() {
        let e = Node::parse("steps:\n  - name: a\n   bad: [").expect_err("fails");
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
