//! Structured pipelines: workflows of steps and services with names from a small alphabet (so
//! that `depends_on` finds real steps and forms chains and cycles), matrices, `when` conditions,
//! paths and environment, given both as YAML text and as an already-parsed object. Linting and
//! planning must answer with a report and agree with each other.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use piculet::pipeline::{self, Context, Source, SourceContent};
use serde_json::{Map, Value, json};

const NAMES: [&str; 12] = [
    "a", "b", "c", "d", "build", "test", "lint", "deploy", "clone", "n", "x-y", "${X}",
];
const WORDS: [&str; 16] = [
    "main", "push", "pull_request", "tag", "success", "failure", "linux/amd64", "*", "**/*.rs",
    "${MATRIX}", "$${X}", "../..", "/abs", "a\u{0}b", "", "{{ }}",
];

#[derive(Arbitrary, Debug)]
struct Submission {
    workflows: Vec<Workflow>,
    variables: Vec<(u8, u8)>,
}

#[derive(Arbitrary, Debug)]
struct Workflow {
    steps: Vec<Step>,
    services: Vec<Step>,
    list_form: bool,
    matrix: Vec<(u8, Vec<u8>)>,
    include: Vec<Vec<(u8, u8)>>,
    when: Vec<When>,
    depends_on: Vec<u8>,
    runs_on: Vec<u8>,
    workspace: Option<(u8, u8)>,
    skip_clone: bool,
    labels: Vec<(u8, u8)>,
    extra: Vec<(u8, Json)>,
}

#[derive(Arbitrary, Debug)]
struct Step {
    name: u8,
    image: Option<u8>,
    commands: Vec<u8>,
    depends_on: Option<Vec<u8>>,
    when: Vec<When>,
    directory: Option<u8>,
    environment: Vec<(u8, Env)>,
    settings: Option<Vec<(u8, Json)>>,
    failure: Option<u8>,
    volumes: Vec<u8>,
    extra: Vec<(u8, Json)>,
}

#[derive(Arbitrary, Debug)]
enum Env {
    Text(u8),
    Secret(u8),
    Other(Json),
}

#[derive(Arbitrary, Debug)]
enum When {
    Branch(Vec<u8>),
    Event(Vec<u8>),
    Status(Vec<u8>),
    Evaluate(u8),
    Matrix(Vec<(u8, u8)>),
    Path(Vec<u8>, Vec<u8>),
    Platform(u8),
    Raw(u8, Json),
}

/// Any small JSON value, bounded in depth by construction of the fuzzer's input size.
#[derive(Arbitrary, Debug)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Word(u8),
    List(Vec<Json>),
    Map(Vec<(u8, Json)>),
}

const KEYS: [&str; 16] = [
    "image", "commands", "when", "depends_on", "matrix", "environment", "settings", "steps",
    "services", "backend_options", "kubernetes", "resources", "failure", "detach", "include",
    "workspace",
];

fn name(i: u8) -> &'static str {
    NAMES[i as usize % NAMES.len()]
}
fn word(i: u8) -> &'static str {
    WORDS[i as usize % WORDS.len()]
}
fn key(i: u8) -> &'static str {
    KEYS[i as usize % KEYS.len()]
}

impl Json {
    fn value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => json!(b),
            Json::Int(i) => json!(i),
            Json::Float(f) => json!(f),
            Json::Word(w) => json!(word(*w)),
            Json::List(items) => Value::Array(items.iter().map(Json::value).collect()),
            Json::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (key(*k).to_string(), v.value()))
                    .collect(),
            ),
        }
    }
}

impl When {
    fn value(&self) -> Value {
        let words = |v: &Vec<u8>| Value::Array(v.iter().map(|w| json!(word(*w))).collect());
        match self {
            When::Branch(v) => json!({"branch": words(v)}),
            When::Event(v) => json!({"event": words(v)}),
            When::Status(v) => json!({"status": words(v)}),
            When::Evaluate(w) => json!({"evaluate": word(*w)}),
            When::Matrix(m) => {
                let m: Map<String, Value> = m
                    .iter()
                    .map(|(k, v)| (name(*k).to_string(), json!(word(*v))))
                    .collect();
                json!({"matrix": m})
            }
            When::Path(inc, exc) => json!({"path": {"include": words(inc), "exclude": words(exc)}}),
            When::Platform(w) => json!({"platform": word(*w)}),
            When::Raw(k, v) => json!({key(*k): v.value()}),
        }
    }
}

fn when(conditions: &[When]) -> Option<Value> {
    match conditions {
        [] => None,
        [one] => Some(one.value()),
        many => Some(Value::Array(many.iter().map(When::value).collect())),
    }
}

impl Step {
    fn value(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("name".into(), json!(name(self.name)));
        if let Some(i) = self.image {
            m.insert("image".into(), json!(format!("alpine:{}", word(i))));
        }
        if !self.commands.is_empty() {
            let c: Vec<Value> = self.commands.iter().map(|w| json!(word(*w))).collect();
            m.insert("commands".into(), Value::Array(c));
        }
        if let Some(deps) = &self.depends_on {
            let d: Vec<Value> = deps.iter().map(|n| json!(name(*n))).collect();
            m.insert("depends_on".into(), Value::Array(d));
        }
        if let Some(w) = when(&self.when) {
            m.insert("when".into(), w);
        }
        if let Some(d) = self.directory {
            m.insert("directory".into(), json!(word(d)));
        }
        if !self.environment.is_empty() {
            let env: Map<String, Value> = self
                .environment
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Env::Text(w) => json!(word(*w)),
                        Env::Secret(n) => json!({"from_secret": name(*n)}),
                        Env::Other(j) => j.value(),
                    };
                    (name(*k).to_uppercase(), v)
                })
                .collect();
            m.insert("environment".into(), Value::Object(env));
        }
        if let Some(settings) = &self.settings {
            let s: Map<String, Value> = settings
                .iter()
                .map(|(k, v)| (name(*k).to_string(), v.value()))
                .collect();
            m.insert("settings".into(), Value::Object(s));
        }
        if let Some(f) = self.failure {
            m.insert("failure".into(), json!(word(f)));
        }
        if !self.volumes.is_empty() {
            let v: Vec<Value> = self
                .volumes
                .iter()
                .map(|w| json!(format!("cache:{}", word(*w))))
                .collect();
            m.insert("volumes".into(), Value::Array(v));
        }
        for (k, v) in &self.extra {
            m.insert(key(*k).to_string(), v.value());
        }
        m
    }
}

fn section(steps: &[Step], list_form: bool) -> Value {
    if list_form {
        Value::Array(steps.iter().map(|s| Value::Object(s.value())).collect())
    } else {
        Value::Object(
            steps
                .iter()
                .map(|s| {
                    let mut m = s.value();
                    let n = m.remove("name").unwrap_or(Value::Null);
                    (n.as_str().unwrap_or("").to_string(), Value::Object(m))
                })
                .collect(),
        )
    }
}

impl Workflow {
    fn value(&self) -> Value {
        let mut m = Map::new();
        m.insert("steps".into(), section(&self.steps, self.list_form));
        if !self.services.is_empty() {
            m.insert("services".into(), section(&self.services, true));
        }
        if !self.matrix.is_empty() || !self.include.is_empty() {
            let mut matrix: Map<String, Value> = self
                .matrix
                .iter()
                .map(|(axis, values)| {
                    let v: Vec<Value> = values.iter().map(|w| json!(word(*w))).collect();
                    (name(*axis).to_uppercase(), Value::Array(v))
                })
                .collect();
            if !self.include.is_empty() {
                let inc: Vec<Value> = self
                    .include
                    .iter()
                    .map(|e| {
                        Value::Object(
                            e.iter()
                                .map(|(k, v)| (name(*k).to_uppercase(), json!(word(*v))))
                                .collect(),
                        )
                    })
                    .collect();
                matrix.insert("include".into(), Value::Array(inc));
            }
            m.insert("matrix".into(), Value::Object(matrix));
        }
        if let Some(w) = when(&self.when) {
            m.insert("when".into(), w);
        }
        if !self.depends_on.is_empty() {
            let d: Vec<Value> = self.depends_on.iter().map(|n| json!(name(*n))).collect();
            m.insert("depends_on".into(), Value::Array(d));
        }
        if !self.runs_on.is_empty() {
            let r: Vec<Value> = self.runs_on.iter().map(|w| json!(word(*w))).collect();
            m.insert("runs_on".into(), Value::Array(r));
        }
        if let Some((base, path)) = self.workspace {
            m.insert("workspace".into(), json!({"base": word(base), "path": word(path)}));
        }
        if self.skip_clone {
            m.insert("skip_clone".into(), json!(true));
        }
        if !self.labels.is_empty() {
            let l: Map<String, Value> = self
                .labels
                .iter()
                .map(|(k, v)| (name(*k).to_string(), json!(word(*v))))
                .collect();
            m.insert("labels".into(), Value::Object(l));
        }
        for (k, v) in &self.extra {
            m.insert(key(*k).to_string(), v.value());
        }
        Value::Object(m)
    }
}

fuzz_target!(|input: Submission| {
    let mut ctx = Context::default();
    for (k, v) in &input.variables {
        ctx.variables
            .insert(name(*k).to_uppercase(), word(*v).to_string());
    }
    ctx.secret_names.insert("a".into());
    let values: Vec<Value> = input.workflows.iter().map(Workflow::value).collect();
    let as_text: Vec<Source> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Source {
            name: name(i as u8).to_string(),
            content: SourceContent::Text(serde_json::to_string_pretty(v).unwrap()),
        })
        .collect();
    let as_value: Vec<Source> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Source {
            name: name(i as u8).to_string(),
            content: SourceContent::Value(v.clone()),
        })
        .collect();
    let text = pipeline::lint(&as_text, &ctx);
    let value = pipeline::lint(&as_value, &ctx);
    // The same pipeline as text or as an object gets the same verdict.
    assert_eq!(
        text.errors.is_empty(),
        value.errors.is_empty(),
        "text: {:?}\nvalue: {:?}",
        text.errors,
        value.errors
    );
    assert_eq!(text.errors.is_empty(), pipeline::plan(&as_text, &ctx).is_ok());
});
