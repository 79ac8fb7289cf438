//! Reading a config tree into the typed model while checking every key and shape, then the
//! semantic checks of a workflow (names, images, commands, dependencies, cycles). Nothing stops
//! at the first problem: each one becomes a diagnostic and reading goes on with what is usable.

use std::collections::{BTreeMap, HashMap};

use indexmap::IndexMap;

use super::diagnostic::{Pos, Sink, child, index};
use super::duration;
use super::graph;
use super::model::*;
use super::node::{Entry, Node, Value};
use super::paths;
use super::quantity;
use super::schema::{self, unknown_key};

pub(crate) struct Reader<'s> {
    pub sink: &'s mut Sink,
}

/// What a step's unknown key draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unknown {
    /// An error with a did-you-mean: the usual answer.
    Refused,
    /// A warning: the legacy `clone: {git: {…}}` form, whose old keys Woodpecker ignores.
    IgnoredAsWoodpeckerDoes,
}

impl Reader<'_> {
    // ---- shapes ------------------------------------------------------------------------------

    /// A mapping whose keys must be among `allowed`; unknown keys are reported.
    fn map<'n>(&mut self, n: &'n Node, ptr: &str, allowed: &[&str]) -> Option<&'n [Entry]> {
        let Some(entries) = n.as_map() else {
            self.sink.error(ptr, n.pos, "expected a map");
            return None;
        };
        for e in entries {
            if !allowed.contains(&e.key.as_str()) {
                let message = unknown_key(&e.key, self.sink.suggest(&e.key, allowed));
                self.sink.error(&child(ptr, &e.key), e.key_pos, message);
            }
        }
        Some(entries)
    }

    fn string(&mut self, n: &Node, ptr: &str) -> Option<String> {
        let s = n.scalar_text();
        if s.is_none() {
            self.sink.error(ptr, n.pos, "expected a string");
        }
        s
    }

    /// Reports a path that breaks `rule` (see [`paths`]).
    fn path(&mut self, path: &str, rule: fn(&str) -> Result<(), String>, ptr: &str, pos: Pos) {
        if let Err(problem) = rule(path) {
            self.sink.error(ptr, pos, problem);
        }
    }

    fn boolean(&mut self, n: &Node, ptr: &str) -> Option<bool> {
        match n.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.sink.error(ptr, n.pos, "expected a boolean");
                None
            }
        }
    }

    fn integer(&mut self, n: &Node, ptr: &str) -> Option<i64> {
        match &n.value {
            Value::Number(s) => match s.parse::<i64>() {
                Ok(i) => Some(i),
                Err(_) => {
                    self.sink.error(ptr, n.pos, "expected an integer");
                    None
                }
            },
            _ => {
                self.sink.error(ptr, n.pos, "expected an integer");
                None
            }
        }
    }

    fn string_list(&mut self, n: &Node, ptr: &str) -> Vec<String> {
        match &n.value {
            Value::Seq(items) => self.items(items, ptr),
            _ => {
                self.sink.error(ptr, n.pos, "expected a list of strings");
                Vec::new()
            }
        }
    }

    fn string_or_list(&mut self, n: &Node, ptr: &str) -> Vec<String> {
        match &n.value {
            Value::Seq(items) => self.items(items, ptr),
            _ => match n.scalar_text() {
                Some(s) => vec![s],
                None => {
                    self.sink
                        .error(ptr, n.pos, "expected a string or a list of strings");
                    Vec::new()
                }
            },
        }
    }

    fn items(&mut self, items: &[Node], ptr: &str) -> Vec<String> {
        items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.string(item, &index(ptr, i)))
            .collect()
    }

    /// A map of scalars (labels, annotations, nodeSelector).
    fn string_map(&mut self, n: &Node, ptr: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let Some(entries) = n.as_map() else {
            self.sink.error(ptr, n.pos, "expected a map");
            return out;
        };
        for e in entries {
            let p = child(ptr, &e.key);
            if e.value.is_null() {
                out.insert(e.key.clone(), String::new());
            } else if let Some(v) = self.string(&e.value, &p) {
                out.insert(e.key.clone(), v);
            }
        }
        out
    }

    fn one_of(&mut self, n: &Node, ptr: &str, allowed: &[&str]) -> Option<String> {
        let s = self.string(n, ptr)?;
        if allowed.contains(&s.as_str()) {
            Some(s)
        } else {
            let list = allowed
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ");
            self.sink
                .error(ptr, n.pos, format!("expected one of {list}, got \"{s}\""));
            None
        }
    }

    fn statuses(&mut self, n: &Node, ptr: &str) -> Vec<Conclusion> {
        let mut out = Vec::new();
        for s in self.string_or_list(n, ptr) {
            match s.as_str() {
                "success" => out.push(Conclusion::Success),
                "failure" => out.push(Conclusion::Failure),
                _ => self.sink.error(
                    ptr,
                    n.pos,
                    format!("unknown status \"{s}\": expected \"success\" or \"failure\""),
                ),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// `depends_on`: a name, or a list of names and `{name, optional}` maps. A step's entry may
    /// also be Woodpecker's `{workflow, step}`, a dependency on another workflow, which piculet
    /// does not run and refuses with the way to write it instead.
    pub(crate) fn dependencies(&mut self, n: &Node, ptr: &str, of_step: bool) -> Vec<Dependency> {
        let keys = if of_step {
            schema::STEP_DEPENDENCY_KEYS
        } else {
            schema::DEPENDENCY_KEYS
        };
        let one = |name: String, pointer: String, pos: Pos| Dependency {
            name,
            optional: false,
            pointer,
            pos,
        };
        match &n.value {
            Value::Seq(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let p = index(ptr, i);
                    if let Some(entries) = item.as_map() {
                        let _ = self.map(item, &p, keys);
                        let mut dep = one(String::new(), p.clone(), item.pos);
                        let mut other_workflow = None;
                        for e in entries {
                            let ep = child(&p, &e.key);
                            match e.key.as_str() {
                                "name" => dep.name = self.string(&e.value, &ep).unwrap_or_default(),
                                "optional" => {
                                    dep.optional = self.boolean(&e.value, &ep).unwrap_or(false)
                                }
                                "workflow" if of_step => {
                                    other_workflow = Some(e.value.scalar_text().unwrap_or_default())
                                }
                                _ => {}
                            }
                        }
                        if let Some(workflow) = other_workflow {
                            self.sink.error(
                                &p,
                                item.pos,
                                format!(
                                    "a step cannot wait for another workflow (\"{workflow}\") in piculet: write depends_on: [{workflow}] at the top level of this workflow, so that the whole workflow waits for it"
                                ),
                            );
                        } else if dep.name.is_empty() {
                            self.sink
                                .error(&p, item.pos, "a dependency needs a \"name\"");
                        } else {
                            out.push(dep);
                        }
                    } else if let Some(s) = self.string(item, &p) {
                        out.push(one(s, p, item.pos));
                    }
                }
                out
            }
            _ => match n.scalar_text() {
                Some(s) => vec![one(s, ptr.to_string(), n.pos)],
                None => {
                    self.sink
                        .error(ptr, n.pos, "expected a name or a list of names");
                    Vec::new()
                }
            },
        }
    }

    // ---- when --------------------------------------------------------------------------------

    pub(crate) fn conditions(&mut self, n: &Node, ptr: &str, keys: &[&str]) -> Vec<Condition> {
        match &n.value {
            Value::Map(_) => self.condition(n, ptr, keys).into_iter().collect(),
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, c)| self.condition(c, &index(ptr, i), keys))
                .collect(),
            _ => {
                self.sink
                    .error(ptr, n.pos, "expected a condition map or a list of them");
                Vec::new()
            }
        }
    }

    fn condition(&mut self, n: &Node, ptr: &str, keys: &[&str]) -> Option<Condition> {
        let entries = self.map(n, ptr, keys)?;
        let mut c = Condition {
            pointer: ptr.to_string(),
            pos: n.pos,
            ..Condition::default()
        };
        for e in entries {
            let p = child(ptr, &e.key);
            let v = &e.value;
            if v.is_null() {
                continue;
            }
            match e.key.as_str() {
                "repo" => c.repo = self.glob_list(v, &p),
                "branch" => c.branch = self.glob_list(v, &p),
                "ref" => c.reference = self.glob_list(v, &p),
                "cron" => c.cron = self.glob_list(v, &p),
                "platform" => c.platform = self.glob_list(v, &p),
                "instance" => c.instance = self.glob_list(v, &p),
                "event" => {
                    c.event = self.glob_list(v, &p);
                    for ev in c.event.include.iter().chain(&c.event.exclude) {
                        if !schema::EVENTS.contains(&ev.as_str()) {
                            let msg = match self.sink.suggest(ev, schema::EVENTS) {
                                Some(s) => {
                                    format!("unknown event \"{ev}\", did you mean \"{s}\"?")
                                }
                                None => format!(
                                    "unknown event \"{ev}\": expected one of {}",
                                    schema::EVENTS.join(", ")
                                ),
                            };
                            self.sink.error(&p, v.pos, msg);
                        }
                    }
                }
                "status" => c.status = self.statuses(v, &p),
                "matrix" => self.matrix_condition(v, &p, &mut c),
                "path" => c.path = self.path_condition(v, &p),
                "evaluate" => c.evaluate = self.string(v, &p),
                _ => {}
            }
        }
        Some(c)
    }

    fn glob_list(&mut self, n: &Node, ptr: &str) -> GlobList {
        match &n.value {
            Value::Map(entries) => {
                let _ = self.map(n, ptr, schema::INCLUDE_EXCLUDE_KEYS);
                let mut g = GlobList::default();
                for e in entries {
                    let p = child(ptr, &e.key);
                    match e.key.as_str() {
                        "include" => g.include = self.string_or_list(&e.value, &p),
                        "exclude" => g.exclude = self.string_or_list(&e.value, &p),
                        _ => {}
                    }
                }
                g
            }
            _ => GlobList {
                include: self.string_or_list(n, ptr),
                exclude: Vec::new(),
            },
        }
    }

    fn matrix_condition(&mut self, n: &Node, ptr: &str, c: &mut Condition) {
        let Some(entries) = n.as_map() else {
            self.sink.error(ptr, n.pos, "expected a map");
            return;
        };
        for e in entries {
            let p = child(ptr, &e.key);
            match (e.key.as_str(), &e.value.value) {
                ("include", Value::Map(_)) => {
                    c.matrix_include.extend(self.string_map(&e.value, &p))
                }
                ("exclude", Value::Map(_)) => {
                    c.matrix_exclude.extend(self.string_map(&e.value, &p))
                }
                _ => {
                    if let Some(v) = self.string(&e.value, &p) {
                        c.matrix_include.insert(e.key.clone(), v);
                    }
                }
            }
        }
    }

    fn path_condition(&mut self, n: &Node, ptr: &str) -> Option<PathCondition> {
        let mut pc = PathCondition {
            include: Vec::new(),
            exclude: Vec::new(),
            ignore_message: None,
            on_empty: true,
        };
        match &n.value {
            Value::Map(entries) => {
                self.map(n, ptr, schema::PATH_KEYS)?;
                for e in entries {
                    let p = child(ptr, &e.key);
                    match e.key.as_str() {
                        "include" => pc.include = self.string_or_list(&e.value, &p),
                        "exclude" => pc.exclude = self.string_or_list(&e.value, &p),
                        "ignore_message" => pc.ignore_message = self.string(&e.value, &p),
                        "on_empty" => pc.on_empty = self.boolean(&e.value, &p).unwrap_or(true),
                        _ => {}
                    }
                }
            }
            _ => pc.include = self.string_or_list(n, ptr),
        }
        Some(pc)
    }

    // ---- steps -------------------------------------------------------------------------------

    /// A `steps`, `services` or `clone` section: a list, or a map whose keys are the names.
    pub(crate) fn section(&mut self, n: &Node, ptr: &str, section: Section) -> Vec<StepModel> {
        match &n.value {
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let p = index(ptr, i);
                    // Steps are numbered when unnamed, as Woodpecker does; a service is reached
                    // by its name, so Woodpecker requires one, and so does piculet.
                    if section == Section::Service
                        && item.as_map().is_some()
                        && item.get("name").is_none_or(|e| e.value.is_null())
                    {
                        self.sink.error(
                            &p,
                            item.pos,
                            "a service in the list form needs a \"name\": steps reach it by that name",
                        );
                    }
                    let default = format!("{}-{i}", section.noun());
                    self.step(item, &p, default, item.pos, section, Unknown::Refused)
                })
                .collect(),
            Value::Map(entries) => entries
                .iter()
                .filter_map(|e| {
                    let p = child(ptr, &e.key);
                    // The map form of `clone` is Woodpecker's legacy `clone: {git: {…}}`: one
                    // step named git, whose other old keys (depth, path, …) Woodpecker ignores.
                    let unknown = if section == Section::Clone {
                        if e.key != "git" {
                            self.sink.error(
                                &p,
                                e.key_pos,
                                format!(
                                    "the map form of \"clone\" takes one step, \"git\"; write other clone steps in the list form (clone: [{{name: {}, image: …}}])",
                                    e.key
                                ),
                            );
                            return None;
                        }
                        Unknown::IgnoredAsWoodpeckerDoes
                    } else {
                        Unknown::Refused
                    };
                    self.step(&e.value, &p, e.key.clone(), e.key_pos, section, unknown)
                })
                .collect(),
            _ => {
                let what = match section {
                    Section::Service => "expected a list or a map of services",
                    _ => "expected a list or a map of steps",
                };
                self.sink.error(ptr, n.pos, what);
                Vec::new()
            }
        }
    }

    fn step(
        &mut self,
        n: &Node,
        ptr: &str,
        default_name: String,
        name_pos: Pos,
        section: Section,
        unknown: Unknown,
    ) -> Option<StepModel> {
        let keys = if section == Section::Service {
            schema::SERVICE_KEYS
        } else {
            schema::STEP_KEYS
        };
        let Some(entries) = n.as_map() else {
            self.sink.error(ptr, n.pos, "expected a map");
            return None;
        };
        let mut step = StepModel::new(section, default_name, ptr.to_string(), name_pos);
        for e in entries {
            let p = child(ptr, &e.key);
            let v = &e.value;
            step.key_pos.insert(e.key.clone(), e.key_pos);
            if !keys.contains(&e.key.as_str()) {
                if schema::DOCKER_ONLY_STEP_KEYS.contains(&e.key.as_str()) {
                    self.sink.warn(
                        &p,
                        e.key_pos,
                        format!("\"{}\" is a Docker-only option; piculet ignores it", e.key),
                    );
                } else if unknown == Unknown::IgnoredAsWoodpeckerDoes {
                    self.sink.warn(
                        &p,
                        e.key_pos,
                        format!(
                            "\"{}\" is ignored, as Woodpecker ignores it here: to hand it to the clone plugin, write it under \"settings\"",
                            e.key
                        ),
                    );
                } else {
                    let message = unknown_key(&e.key, self.sink.suggest(&e.key, keys));
                    self.sink.error(&p, e.key_pos, message);
                }
                continue;
            }
            if v.is_null() {
                continue;
            }
            match e.key.as_str() {
                "name" => {
                    if let Some(s) = self.string(v, &p) {
                        step.name = s;
                        step.pos = v.pos;
                    }
                }
                // A malformed image is reported once, not again as a missing one.
                "image" => {
                    let image = self.string(v, &p);
                    if image.as_deref().is_some_and(|i| i.trim().is_empty()) {
                        self.sink.error(
                            &p,
                            v.pos,
                            "\"image\" is empty: write the image to run, such as alpine",
                        );
                    }
                    step.image = Some(image.unwrap_or_default());
                }
                "commands" => step.commands = Some(self.string_or_list(v, &p)),
                "entrypoint" => step.entrypoint = Some(self.string_or_list(v, &p)),
                "environment" => self.environment(v, &p, &mut step),
                "settings" => self.settings(v, &p, &mut step),
                "directory" => {
                    step.directory = self.string(v, &p);
                    // A service's directory is only its working directory, anywhere in its
                    // container, as in Woodpecker; a step works in the workspace.
                    let rule = if section == Section::Service {
                        paths::service_directory
                    } else {
                        paths::inside_workspace
                    };
                    if let Some(d) = &step.directory {
                        self.path(d, rule, &p, v.pos);
                    }
                }
                "when" => step.when = self.conditions(v, &p, schema::STEP_WHEN_KEYS),
                "depends_on" => step.depends_on = Some(self.dependencies(v, &p, true)),
                "failure" => {
                    let values = if section == Section::Service {
                        schema::FAILURE_VALUES
                    } else {
                        schema::STEP_FAILURE_VALUES
                    };
                    step.failure = match self.one_of(v, &p, values).as_deref() {
                        Some("ignore") => Failure::Ignore,
                        Some("cancel") => Failure::Cancel,
                        _ => Failure::Fail,
                    }
                }
                "detach" => step.detach = self.boolean(v, &p).unwrap_or(false),
                "privileged" => step.privileged = self.boolean(v, &p).unwrap_or(false),
                "pull" => step.pull = self.boolean(v, &p).unwrap_or(false),
                "volumes" => {
                    step.volumes = self.string_list(v, &p);
                    if let Value::Seq(items) = &v.value {
                        for (i, item) in items.iter().enumerate() {
                            if let Some(entry) = item.scalar_text() {
                                self.path(&entry, paths::volume, &index(&p, i), item.pos);
                            }
                        }
                    }
                }
                "extra_hosts" => step.extra_hosts = self.string_list(v, &p),
                "dns" => step.dns = self.string_or_list(v, &p),
                "dns_search" => step.dns_search = self.string_or_list(v, &p),
                "ports" => step.ports = self.string_or_list(v, &p),
                "timeout" => {
                    if let Some(t) = self.string(v, &p) {
                        match duration::parse(&t) {
                            Ok(d) => step.timeout = Some(d),
                            Err(msg) => self.sink.error(&p, v.pos, msg),
                        }
                    }
                }
                "backend_options" => self.backend_options(v, &p, &mut step),
                _ => {}
            }
        }
        Some(step)
    }

    /// `{from_secret: NAME}`, if that is what the node is (`Some(None)`: it is, but malformed).
    fn secret_reference(&mut self, n: &Node, ptr: &str) -> Option<Option<(String, Pos)>> {
        let entries = n.as_map()?;
        let secret = entries.iter().find(|e| e.key == "from_secret")?;
        let _ = self.map(n, ptr, &["from_secret"]);
        let p = child(ptr, "from_secret");
        Some(
            self.string(&secret.value, &p)
                .map(|name| (name, secret.value.pos)),
        )
    }

    fn environment(&mut self, n: &Node, ptr: &str, step: &mut StepModel) {
        let Some(entries) = n.as_map() else {
            self.sink.error(ptr, n.pos, "expected a map");
            return;
        };
        for e in entries {
            let p = child(ptr, &e.key);
            let value = match self.secret_reference(&e.value, &p) {
                Some(Some((name, pos))) => {
                    step.secret_refs
                        .push((name.clone(), child(&p, "from_secret"), pos));
                    EnvValue::FromSecret(name)
                }
                Some(None) => continue,
                None => EnvValue::Literal(match &e.value.value {
                    Value::Null => String::new(),
                    Value::Seq(_) | Value::Map(_) => e.value.to_json().to_string(),
                    _ => e.value.scalar_text().unwrap_or_default(),
                }),
            };
            if step.section == Section::Clone
                && let EnvValue::Literal(text) = &value
                && let Some(message) = crate::repo::clone_environment_problem(&e.key, text)
            {
                self.sink.error(&p, e.value.pos, message);
            }
            step.environment.insert(e.key.clone(), value);
        }
    }

    fn settings(&mut self, n: &Node, ptr: &str, step: &mut StepModel) {
        let Some(entries) = n.as_map() else {
            self.sink.error(ptr, n.pos, "expected a map");
            return;
        };
        let mut out = IndexMap::new();
        for e in entries {
            let p = child(ptr, &e.key);
            let value = match self.secret_reference(&e.value, &p) {
                Some(Some((name, pos))) => {
                    step.secret_refs
                        .push((name.clone(), child(&p, "from_secret"), pos));
                    SettingValue::FromSecret(name)
                }
                Some(None) => continue,
                None => {
                    let value = e.value.to_json();
                    if step.section == Section::Clone {
                        self.clone_setting(e, &value, &p);
                    }
                    SettingValue::Value(value)
                }
            };
            out.insert(e.key.clone(), value);
        }
        step.settings = Some(out);
    }

    /// A clone step hands its URL, ref and commit settings to git, so they follow the rules of
    /// the submission's `repo` (see [`crate::repo`]), checked after `${NAME}` substitution. A
    /// value from a secret is the submitter's own and is not seen here.
    fn clone_setting(&mut self, e: &Entry, value: &serde_json::Value, ptr: &str) {
        for (inner, message) in crate::repo::clone_setting_problems(&e.key, value) {
            match inner {
                Some(key) => {
                    let pos = e.value.get(&key).map_or(e.value.pos, |c| c.value.pos);
                    self.sink.error(&child(ptr, &key), pos, message);
                }
                None => self.sink.error(ptr, e.value.pos, message),
            }
        }
    }

    // ---- backend options ---------------------------------------------------------------------

    /// `backend_options`: piculet reads `kubernetes`. Options for any other backend are
    /// accepted with a warning, as Woodpecker accepts them (a custom backend reads its own key).
    fn backend_options(&mut self, n: &Node, ptr: &str, step: &mut StepModel) {
        let Some(entries) = n.as_map() else {
            self.sink.error(ptr, n.pos, "expected a map");
            return;
        };
        for e in entries {
            let p = child(ptr, &e.key);
            match e.key.as_str() {
                "kubernetes" => {
                    if !e.value.is_null() {
                        step.kubernetes = self.kubernetes(&e.value, &p);
                    }
                }
                other => {
                    // A near miss of `kubernetes` is most likely a typo: say so.
                    let typo = match self.sink.suggest(other, &["kubernetes"]) {
                        Some(k) => format!(" (did you mean \"{k}\"?)"),
                        None => String::new(),
                    };
                    self.sink.warn(
                        &p,
                        e.key_pos,
                        format!(
                            "backend_options.{other} is ignored{typo}: piculet runs steps on Kubernetes or as local processes and reads only backend_options.kubernetes"
                        ),
                    );
                }
            }
        }
    }

    fn kubernetes(&mut self, n: &Node, ptr: &str) -> KubernetesOptions {
        let mut k = KubernetesOptions::default();
        let Some(entries) = self.map(n, ptr, schema::KUBERNETES_KEYS) else {
            return k;
        };
        for e in entries {
            let p = child(ptr, &e.key);
            let v = &e.value;
            if v.is_null() {
                continue;
            }
            match e.key.as_str() {
                "resources" => k.resources = self.resources(v, &p),
                "runtimeClassName" => k.runtime_class_name = self.string(v, &p),
                "serviceAccountName" => k.service_account_name = self.string(v, &p),
                "labels" => k.labels = self.string_map(v, &p),
                "annotations" => k.annotations = self.string_map(v, &p),
                "nodeSelector" => k.node_selector = self.string_map(v, &p),
                "tolerations" => k.tolerations = self.tolerations(v, &p),
                "affinity" => k.affinity = self.affinity(v, &p),
                "securityContext" => k.security_context = self.security_context(v, &p),
                "secrets" => k.secrets = self.secret_refs(v, &p),
                "hostUsers" => k.host_users = self.boolean(v, &p),
                "workspaceVolume" => k.workspace_volume = self.boolean(v, &p),
                _ => {}
            }
        }
        k
    }

    fn resources(&mut self, n: &Node, ptr: &str) -> Resources {
        let mut r = Resources::default();
        let Some(entries) = self.map(n, ptr, schema::RESOURCES_KEYS) else {
            return r;
        };
        for e in entries {
            let p = child(ptr, &e.key);
            let Some(values) = e.value.as_map() else {
                if !e.value.is_null() {
                    self.sink.error(&p, e.value.pos, "expected a map");
                }
                continue;
            };
            let mut out = BTreeMap::new();
            for q in values {
                let qp = child(&p, &q.key);
                if let Some(text) = self.string(&q.value, &qp) {
                    if quantity::is_valid(&text) {
                        out.insert(q.key.clone(), text);
                    } else {
                        self.sink.error(&qp, q.value.pos, quantity::message(&text));
                    }
                }
            }
            match e.key.as_str() {
                "requests" => r.requests = out,
                "limits" => r.limits = out,
                _ => {}
            }
        }
        r
    }

    fn tolerations(&mut self, n: &Node, ptr: &str) -> Vec<Toleration> {
        let Value::Seq(items) = &n.value else {
            self.sink
                .error(ptr, n.pos, "expected a list of tolerations");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = index(ptr, i);
            let Some(entries) = self.map(item, &p, schema::TOLERATION_KEYS) else {
                continue;
            };
            let mut t = Toleration::default();
            for e in entries {
                let ep = child(&p, &e.key);
                let v = &e.value;
                if v.is_null() {
                    continue;
                }
                match e.key.as_str() {
                    "key" => t.key = self.string(v, &ep),
                    "operator" => t.operator = self.one_of(v, &ep, &["Exists", "Equal"]),
                    "value" => t.value = self.string(v, &ep),
                    "effect" => {
                        t.effect =
                            self.one_of(v, &ep, &["NoSchedule", "PreferNoSchedule", "NoExecute"])
                    }
                    "tolerationSeconds" => t.toleration_seconds = self.integer(v, &ep),
                    _ => {}
                }
            }
            out.push(t);
        }
        out
    }

    fn affinity(&mut self, n: &Node, ptr: &str) -> Option<serde_json::Value> {
        let entries = self.map(n, ptr, schema::AFFINITY_KEYS)?;
        let mut ok = true;
        for e in entries {
            if e.value.as_map().is_none() && !e.value.is_null() {
                self.sink
                    .error(&child(ptr, &e.key), e.value.pos, "expected a map");
                ok = false;
            }
        }
        ok.then(|| n.to_json())
    }

    fn security_context(&mut self, n: &Node, ptr: &str) -> Option<SecurityContext> {
        let entries = self.map(n, ptr, schema::SECURITY_CONTEXT_KEYS)?;
        let mut s = SecurityContext::default();
        for e in entries {
            let p = child(ptr, &e.key);
            let v = &e.value;
            if v.is_null() {
                continue;
            }
            match e.key.as_str() {
                "privileged" => s.privileged = self.boolean(v, &p),
                "runAsNonRoot" => s.run_as_non_root = self.boolean(v, &p),
                "runAsUser" => s.run_as_user = self.integer(v, &p),
                "runAsGroup" => s.run_as_group = self.integer(v, &p),
                "fsGroup" => s.fs_group = self.integer(v, &p),
                "fsGroupChangePolicy" => {
                    s.fs_group_change_policy = self.one_of(v, &p, &["OnRootMismatch", "Always"])
                }
                "seccompProfile" => s.seccomp_profile = self.sec_profile(v, &p),
                "apparmorProfile" => s.apparmor_profile = self.sec_profile(v, &p),
                "allowPrivilegeEscalation" => s.allow_privilege_escalation = self.boolean(v, &p),
                "capabilities" => {
                    if let Some(entries) = self.map(v, &p, schema::CAPABILITIES_KEYS) {
                        let mut caps = Capabilities::default();
                        for c in entries {
                            if c.key == "drop" && !c.value.is_null() {
                                caps.drop = self.string_list(&c.value, &child(&p, "drop"));
                            }
                        }
                        s.capabilities = Some(caps);
                    }
                }
                _ => {}
            }
        }
        Some(s)
    }

    fn sec_profile(&mut self, n: &Node, ptr: &str) -> Option<SecProfile> {
        let entries = self.map(n, ptr, schema::SEC_PROFILE_KEYS)?;
        let mut kind = None;
        let mut localhost_profile = None;
        for e in entries {
            let p = child(ptr, &e.key);
            match e.key.as_str() {
                "type" => {
                    kind = self.one_of(&e.value, &p, &["RuntimeDefault", "Localhost", "Unconfined"])
                }
                "localhostProfile" => localhost_profile = self.string(&e.value, &p),
                _ => {}
            }
        }
        let kind = match kind {
            Some(k) => k,
            None => {
                if n.get("type").is_none() {
                    self.sink.error(ptr, n.pos, "a profile needs a \"type\"");
                }
                return None;
            }
        };
        if kind == "Localhost" && localhost_profile.is_none() {
            self.sink.error(
                ptr,
                n.pos,
                "\"localhostProfile\" is required when \"type\" is Localhost",
            );
        }
        Some(SecProfile {
            kind,
            localhost_profile,
        })
    }

    fn secret_refs(&mut self, n: &Node, ptr: &str) -> Vec<SecretRef> {
        let Value::Seq(items) = &n.value else {
            self.sink
                .error(ptr, n.pos, "expected a list of secret references");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = index(ptr, i);
            let Some(entries) = self.map(item, &p, schema::SECRET_REF_KEYS) else {
                continue;
            };
            let (mut name, mut key, mut target) = (None, None, None);
            for e in entries {
                let ep = child(&p, &e.key);
                match e.key.as_str() {
                    "name" => name = self.string(&e.value, &ep),
                    "key" => key = self.string(&e.value, &ep),
                    "target" => target = self.secret_target(&e.value, &ep),
                    _ => {}
                }
            }
            for (field, missing) in [("name", name.is_none()), ("key", key.is_none())] {
                if missing && item.get(field).is_none() {
                    self.sink.error(
                        &p,
                        item.pos,
                        format!("a secret reference needs \"{field}\""),
                    );
                }
            }
            if target.is_none() && item.get("target").is_none() {
                self.sink.error(
                    &p,
                    item.pos,
                    "a secret reference needs \"target\" with \"env\" or \"file\"",
                );
            }
            if let (Some(name), Some(key), Some(target)) = (name, key, target) {
                out.push(SecretRef { name, key, target });
            }
        }
        out
    }

    fn secret_target(&mut self, n: &Node, ptr: &str) -> Option<SecretTarget> {
        let entries = self.map(n, ptr, schema::SECRET_TARGET_KEYS)?;
        let known: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.key == "env" || e.key == "file")
            .collect();
        let [e] = known.as_slice() else {
            self.sink.error(
                ptr,
                n.pos,
                "\"target\" needs exactly one of \"env\" or \"file\"",
            );
            return None;
        };
        let v = self.string(&e.value, &child(ptr, &e.key))?;
        Some(if e.key == "env" {
            SecretTarget::Env(v)
        } else {
            SecretTarget::File(v)
        })
    }

    // ---- concurrency -------------------------------------------------------------------------

    /// `concurrency: N` or `{limit: N, group: NAME}`, as Woodpecker reads it; a group without a
    /// limit is refused, as Woodpecker's linter refuses it.
    fn concurrency(&mut self, n: &Node, ptr: &str) -> Option<ConcurrencyModel> {
        match &n.value {
            Value::Number(_) => {
                let limit = self.concurrency_limit(n, ptr)?;
                Some(ConcurrencyModel {
                    limit,
                    limit_pointer: ptr.to_string(),
                    limit_pos: n.pos,
                    group: None,
                    group_pointer: ptr.to_string(),
                    group_pos: n.pos,
                })
            }
            Value::Map(_) => {
                let entries = self.map(n, ptr, schema::CONCURRENCY_KEYS)?;
                let mut limit = None;
                let mut group = None;
                let mut group_place = (ptr.to_string(), n.pos);
                let mut saw_limit = false;
                for e in entries.iter().filter(|e| !e.value.is_null()) {
                    let p = child(ptr, &e.key);
                    match e.key.as_str() {
                        "limit" => {
                            saw_limit = true;
                            limit = self
                                .concurrency_limit(&e.value, &p)
                                .map(|l| (l, p, e.value.pos));
                        }
                        "group" => {
                            group = self.string(&e.value, &p);
                            group_place = (p, e.value.pos);
                        }
                        _ => {}
                    }
                }
                if !saw_limit {
                    self.sink.error(
                        ptr,
                        n.pos,
                        "\"concurrency\" needs a \"limit\": how many workflows of the group may run at once",
                    );
                }
                let (limit, limit_pointer, limit_pos) = limit?;
                let (group_pointer, group_pos) = group_place;
                Some(ConcurrencyModel {
                    limit,
                    limit_pointer,
                    limit_pos,
                    group,
                    group_pointer,
                    group_pos,
                })
            }
            _ => {
                self.sink.error(
                    ptr,
                    n.pos,
                    "expected an integer or a map with \"limit\" and \"group\"",
                );
                None
            }
        }
    }

    /// A concurrency limit: a whole number, at least 1.
    fn concurrency_limit(&mut self, n: &Node, ptr: &str) -> Option<i64> {
        let limit = self.integer(n, ptr)?;
        if limit < 1 {
            self.sink.error(
                ptr,
                n.pos,
                format!(
                    "expected a limit of 1 or more, found {limit}; to let every run start at once, leave \"concurrency\" out"
                ),
            );
            return None;
        }
        Some(limit)
    }

    // ---- workflow ----------------------------------------------------------------------------

    /// Reads a whole workflow (matrix already expanded and substituted).
    pub(crate) fn workflow(&mut self, n: &Node) -> Option<WorkflowModel> {
        let entries = self.map(n, "", schema::WORKFLOW_KEYS)?;
        let mut w = WorkflowModel::default();
        let mut saw_steps = false;
        for e in entries {
            let p = child("", &e.key);
            let v = &e.value;
            if v.is_null() {
                continue;
            }
            match e.key.as_str() {
                "steps" => {
                    saw_steps = true;
                    let empty = match &v.value {
                        Value::Seq(s) => s.is_empty(),
                        Value::Map(m) => m.is_empty(),
                        _ => false,
                    };
                    if empty {
                        self.sink.error(
                            &p,
                            v.pos,
                            "\"steps\" is empty: a workflow needs at least one step",
                        );
                    }
                    w.steps = self.section(v, &p, Section::Step);
                }
                "services" => w.services = self.section(v, &p, Section::Service),
                "clone" => w.clone = Some(self.section(v, &p, Section::Clone)),
                "skip_clone" => w.skip_clone = self.boolean(v, &p).unwrap_or(false),
                "workspace" => {
                    if let Some(ws) = self.map(v, &p, schema::WORKSPACE_KEYS) {
                        for f in ws {
                            let fp = child(&p, &f.key);
                            match f.key.as_str() {
                                "base" => {
                                    if let Some(s) = self.string(&f.value, &fp) {
                                        self.path(&s, paths::workspace_base, &fp, f.value.pos);
                                        w.workspace.base = s;
                                    }
                                }
                                "path" => {
                                    if let Some(s) = self.string(&f.value, &fp) {
                                        self.path(&s, paths::inside_workspace, &fp, f.value.pos);
                                        w.workspace.path = s;
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                }
                "labels" => w.labels = self.string_map(v, &p),
                "depends_on" => w.depends_on = self.dependencies(v, &p, false),
                "runs_on" => {
                    let r = self.statuses(v, &p);
                    if !r.is_empty() {
                        w.runs_on = Some(r);
                        w.runs_on_pos = Some(v.pos);
                    }
                }
                "compile" => {
                    saw_steps = true;
                    self.sink.error(
                        &p,
                        e.key_pos,
                        "piculet does not run compile workflows (steps that generate the pipeline's configuration): run the generator first and submit the configs it prints",
                    );
                }
                "when" => w.when = self.conditions(v, &p, schema::WORKFLOW_WHEN_KEYS),
                "concurrency" => w.concurrency = self.concurrency(v, &p),
                // `matrix` is expanded before reading; `variables` holds anchors only.
                _ => {}
            }
        }
        if !saw_steps {
            self.sink.error(
                "",
                n.pos,
                "missing \"steps\": a workflow needs at least one step",
            );
        }
        Some(w)
    }
}

// ---- semantic checks ------------------------------------------------------------------------

/// A step is a commands step or a plugin step (one that runs its image's own entrypoint,
/// configured through `settings`), as Woodpecker's schema and linter tell them apart; a step
/// that is neither is refused, with Woodpecker's own words where it has them.
fn check_step_form(s: &StepModel, sink: &mut Sink) {
    // Presence counts: a malformed value was already reported where it is.
    let has_commands = s.commands.is_some();
    let has_entrypoint = s.entrypoint.is_some();
    let has_environment = s.key_pos.contains_key("environment");
    if s.settings.is_some() && (has_commands || has_entrypoint) {
        let other = if has_commands {
            "commands"
        } else {
            "entrypoint"
        };
        sink.error(
            &s.pointer,
            s.pos,
            format!(
                "step \"{}\" has both \"settings\" and \"{other}\": a plugin step runs its image's own entrypoint",
                s.name
            ),
        );
        return;
    }
    if !s.is_plugin() {
        return;
    }
    let (pointer, pos) = s.place_of("environment");
    if s.settings.is_some() && has_environment {
        sink.error(
            &pointer,
            pos,
            format!(
                "step \"{}\" has both \"settings\" and \"environment\" (Woodpecker: \"Should not configure both `environment` and `settings`\"): a plugin step takes its configuration from \"settings\"; write the values there",
                s.name
            ),
        );
    } else if s.settings.is_none() && has_environment && !s.detach {
        sink.error(
            &pointer,
            pos,
            format!(
                "step \"{}\" has \"environment\" but neither \"commands\" nor \"entrypoint\": a step that runs its image's own entrypoint is a plugin step, configured through \"settings\"",
                s.name
            ),
        );
    }
    if s.failure == Failure::Cancel {
        let (pointer, pos) = s.place_of("failure");
        sink.error(
            &pointer,
            pos,
            format!(
                "step \"{}\" is a plugin step, which takes \"failure: fail\" or \"failure: ignore\"; \"cancel\" is for commands steps, as in Woodpecker",
                s.name
            ),
        );
    }
}

/// Checks a workflow as a whole: images, commands, unique names, dependency targets, cycles.
pub(crate) fn check_workflow(w: &WorkflowModel, sink: &mut Sink) {
    let clone_steps = w.clone.as_deref().unwrap_or(&[]);
    let all: Vec<&StepModel> = clone_steps
        .iter()
        .chain(&w.steps)
        .chain(&w.services)
        .collect();

    // Unique names among steps (clone steps included), and among services. A step may share
    // its name with a service, as Woodpecker allows (its own CI does): only services are
    // reached by name, so only their names must be unique as hostnames.
    let mut steps_seen: HashMap<&str, &StepModel> = HashMap::new();
    let mut services_seen: HashMap<&str, &StepModel> = HashMap::new();
    for s in &all {
        let seen = if s.section == Section::Service {
            &mut services_seen
        } else {
            &mut steps_seen
        };
        if let Some(first) = seen.get(s.name.as_str()) {
            sink.error(
                &s.pointer,
                s.pos,
                format!(
                    "duplicate name \"{}\": already used by the {} at {}",
                    s.name,
                    first.section.noun(),
                    first.pointer
                ),
            );
        } else {
            seen.insert(&s.name, s);
        }
    }

    for s in &all {
        if s.image.is_none() && s.section != Section::Clone {
            sink.error(
                &s.pointer,
                s.pos,
                format!("{} \"{}\" has no \"image\"", s.section.noun(), s.name),
            );
        }
        if s.section == Section::Step {
            check_step_form(s, sink);
        }
    }

    // depends_on targets: the steps (and clone steps) of this workflow.
    let graph_steps: Vec<&StepModel> = clone_steps.iter().chain(&w.steps).collect();
    let step_names: Vec<&str> = graph_steps.iter().map(|s| s.name.as_str()).collect();
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(step_names.len());
    for (i, name) in step_names.iter().enumerate() {
        position.entry(name).or_insert(i);
    }
    for s in &graph_steps {
        for d in s.depends_on.iter().flatten() {
            if !d.optional && !position.contains_key(d.name.as_str()) {
                let msg = match sink.suggest(&d.name, &step_names) {
                    Some(m) => format!(
                        "unknown step \"{}\" in depends_on, did you mean \"{m}\"?",
                        d.name
                    ),
                    None => format!("unknown step \"{}\" in depends_on", d.name),
                };
                sink.error(&d.pointer, d.pos, msg);
            }
        }
    }

    // Cycles, by position in declaration order (clone steps first).
    let edges: Vec<Vec<usize>> = graph_steps
        .iter()
        .map(|s| {
            s.depends_on
                .iter()
                .flatten()
                .filter_map(|d| position.get(d.name.as_str()).copied())
                .collect()
        })
        .collect();
    for cycle in graph::cycles(&edges) {
        let first = graph_steps[cycle[0]];
        let names: Vec<&str> = cycle.iter().map(|&i| step_names[i]).collect();
        sink.error(
            &format!("{}/depends_on", first.pointer),
            first.pos,
            format!("dependency cycle: {}", graph::describe(&names, "steps")),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(yaml: &str) -> (Option<WorkflowModel>, Sink) {
        let mut sink = Sink::new("test");
        let node = Node::parse(yaml, 32).expect("valid yaml");
        let w = Reader { sink: &mut sink }.workflow(&node);
        if let Some(w) = &w {
            check_workflow(w, &mut sink);
        }
        (w, sink)
    }

    fn errors(yaml: &str) -> Vec<(String, String)> {
        let (_, sink) = read(yaml);
        sink.errors
            .into_iter()
            .map(|d| (d.pointer, d.message))
            .collect()
    }

    fn one_error(yaml: &str) -> (String, String) {
        let e = errors(yaml);
        assert_eq!(e.len(), 1, "{e:#?}");
        e.into_iter().next().expect("one")
    }

    #[test]
    fn unknown_key_with_did_you_mean_and_position() {
        let (_, sink) =
            read("steps:\n  - name: a\n    image: x\n    comands: [ls]\n    commands: [ls]\n");
        let d = &sink.errors[0];
        assert_eq!(d.pointer, "/steps/0/comands");
        assert_eq!(
            d.message,
            "unknown key \"comands\", did you mean \"commands\"?"
        );
        assert_eq!((d.line, d.column), (Some(4), Some(5)));
    }

    #[test]
    fn unknown_key_without_suggestion() {
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], qqqqqq: 1}]"),
            ("/steps/0/qqqqqq".into(), "unknown key \"qqqqqq\"".into())
        );
    }

    #[test]
    fn wrong_shapes() {
        assert_eq!(
            one_error("steps: [{name: a, image: [x], commands: [ls]}]"),
            ("/steps/0/image".into(), "expected a string".into())
        );
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], volumes: v}]"),
            (
                "/steps/0/volumes".into(),
                "expected a list of strings".into()
            )
        );
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: {a: b}}]"),
            (
                "/steps/0/commands".into(),
                "expected a string or a list of strings".into()
            )
        );
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], detach: yes}]"),
            ("/steps/0/detach".into(), "expected a boolean".into())
        );
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], failure: maybe}]"),
            (
                "/steps/0/failure".into(),
                "expected one of \"fail\", \"ignore\", \"cancel\", got \"maybe\"".into()
            )
        );
        assert_eq!(
            one_error("steps: 3"),
            ("/steps".into(), "expected a list or a map of steps".into())
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let e = errors(
            "steps:\n  - name: a\n    comands: [ls]\n  - name: b\n    image: x\n    commands: [ls]\n    timeout: soon\n",
        );
        let messages: Vec<&str> = e.iter().map(|(_, m)| m.as_str()).collect();
        // The unknown key, the missing image, the bad duration. (Without "commands", step a
        // is a plugin step, as in Woodpecker, which is not an error of its own.)
        assert_eq!(messages.len(), 3, "{messages:#?}");
    }

    #[test]
    fn duplicate_step_names() {
        assert_eq!(
            one_error(
                "steps: [{name: a, image: x, commands: [ls]}, {name: a, image: x, commands: [ls]}]"
            ),
            (
                "/steps/1".into(),
                "duplicate name \"a\": already used by the step at /steps/0".into()
            )
        );
    }

    #[test]
    fn duplicate_service_names() {
        assert_eq!(
            one_error(
                "services: [{name: db, image: postgres}, {name: db, image: mysql}]\nsteps: {a: {image: x, commands: [ls]}}"
            ),
            (
                "/services/1".into(),
                "duplicate name \"db\": already used by the service at /services/0".into()
            )
        );
    }

    #[test]
    fn a_step_may_share_its_name_with_a_service() {
        let e =
            errors("services: {db: {image: postgres}}\nsteps: {db: {image: x, commands: [ls]}}");
        assert!(e.is_empty(), "{e:#?}");
    }

    #[test]
    fn unknown_depends_on_target() {
        assert_eq!(
            one_error(
                "steps: [{name: test, image: x, commands: [ls]}, {name: b, image: x, commands: [ls], depends_on: [tset]}]"
            ),
            (
                "/steps/1/depends_on/0".into(),
                "unknown step \"tset\" in depends_on, did you mean \"test\"?".into()
            )
        );
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], depends_on: zzz}]"),
            (
                "/steps/0/depends_on".into(),
                "unknown step \"zzz\" in depends_on".into()
            )
        );
    }

    #[test]
    fn optional_unknown_dependency_is_not_an_error() {
        assert!(errors("steps: [{name: a, image: x, commands: [ls], depends_on: [{name: zzz, optional: true}]}]").is_empty());
    }

    #[test]
    fn dependency_cycle_names_the_cycle() {
        assert_eq!(
            one_error(
                "steps:\n  a: {image: x, commands: [ls], depends_on: [c]}\n  b: {image: x, commands: [ls], depends_on: [a]}\n  c: {image: x, commands: [ls], depends_on: [b]}\n"
            ),
            (
                "/steps/a/depends_on".into(),
                "dependency cycle: a -> c -> b -> a".into()
            )
        );
        assert_eq!(
            one_error("steps: {a: {image: x, commands: [ls], depends_on: a}}"),
            (
                "/steps/a/depends_on".into(),
                "dependency cycle: a -> a".into()
            )
        );
    }

    #[test]
    fn step_without_image() {
        assert_eq!(
            one_error("steps: [{name: a, commands: [ls]}]"),
            ("/steps/0".into(), "step \"a\" has no \"image\"".into())
        );
    }

    #[test]
    fn step_without_commands_or_entrypoint() {
        // Only an image: a plugin step that runs the image's own entrypoint, as Woodpecker's
        // own CI writes them.
        let (w, sink) = read("steps: [{name: a, image: x}]");
        assert!(sink.errors.is_empty(), "{:#?}", sink.errors);
        assert!(w.expect("workflow").steps[0].is_plugin());
        assert!(errors("steps: [{name: a, image: x, entrypoint: [/bin/run]}]").is_empty());
        assert!(errors("steps: [{name: a, image: x, settings: {k: v}}]").is_empty());
    }

    #[test]
    fn a_plugin_step_takes_no_environment() {
        let (_, sink) = read(
            "steps:\n  - name: publish\n    image: plugins/docker\n    settings: {repo: a/b}\n    environment:\n      CGO: 0\n",
        );
        let d = &sink.errors[0];
        assert_eq!(sink.errors.len(), 1, "{:#?}", sink.errors);
        assert_eq!(d.pointer, "/steps/0/environment");
        assert_eq!((d.line, d.column), (Some(5), Some(5)));
        assert!(
            d.message
                .contains("Should not configure both `environment` and `settings`"),
            "{}",
            d.message
        );
        assert_eq!(
            one_error("steps: [{name: a, image: x, environment: {A: b}}]"),
            ("/steps/0/environment".into(), "step \"a\" has \"environment\" but neither \"commands\" nor \"entrypoint\": a step that runs its image's own entrypoint is a plugin step, configured through \"settings\"".into())
        );
        // Detached, it is a background helper with its environment, as Woodpecker's schema has it.
        assert!(
            errors("steps: [{name: a, image: redis, detach: true, environment: {A: b}}]")
                .is_empty()
        );
    }

    #[test]
    fn settings_with_commands() {
        assert_eq!(
            one_error("steps: [{name: a, image: x, settings: {k: v}, commands: [ls]}]"),
            ("/steps/0".into(), "step \"a\" has both \"settings\" and \"commands\": a plugin step runs its image's own entrypoint".into())
        );
    }

    #[test]
    fn bad_duration() {
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], timeout: 10 minutes please}]"),
            ("/steps/0/timeout".into(), "invalid duration \"10 minutes please\": expected a duration such as \"10m\" or \"1h30m\"".into())
        );
    }

    #[test]
    fn bad_quantity() {
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], backend_options: {kubernetes: {resources: {limits: {cpu: 1x}}}}}]"),
            ("/steps/0/backend_options/kubernetes/resources/limits/cpu".into(), "invalid quantity \"1x\": expected a Kubernetes quantity such as \"500m\", \"2\" or \"1Gi\"".into())
        );
    }

    #[test]
    fn steps_missing_or_empty() {
        assert_eq!(
            one_error("labels: {a: b}"),
            (
                "".into(),
                "missing \"steps\": a workflow needs at least one step".into()
            )
        );
        assert_eq!(
            one_error("steps: []"),
            (
                "/steps".into(),
                "\"steps\" is empty: a workflow needs at least one step".into()
            )
        );
    }

    #[test]
    fn unknown_event_and_status() {
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], when: {event: pushh}}]"),
            (
                "/steps/0/when/event".into(),
                "unknown event \"pushh\", did you mean \"push\"?".into()
            )
        );
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], when: {status: done}}]"),
            (
                "/steps/0/when/status".into(),
                "unknown status \"done\": expected \"success\" or \"failure\"".into()
            )
        );
    }

    #[test]
    fn docker_only_keys_warn() {
        let (_, sink) = read(
            "steps: [{name: a, image: x, commands: [ls], shm_size: 1g, backend_options: {docker: {user: 1}}}]",
        );
        assert!(sink.errors.is_empty(), "{:#?}", sink.errors);
        let w: Vec<&str> = sink.warnings.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            w,
            [
                "\"shm_size\" is a Docker-only option; piculet ignores it",
                "backend_options.docker is ignored: piculet runs steps on Kubernetes or as local processes and reads only backend_options.kubernetes"
            ]
        );
    }

    const ONE_STEP: &str = "steps: [{name: a, image: x, commands: [ls]}]";

    fn concurrency(yaml: &str) -> (Option<ConcurrencyModel>, Sink) {
        let (w, sink) = read(&format!("{yaml}\n{ONE_STEP}"));
        (w.and_then(|w| w.concurrency), sink)
    }

    #[test]
    fn concurrency_is_a_limit_or_a_limit_and_a_group_and_draws_no_warning() {
        let (c, sink) = concurrency("concurrency: 2");
        assert!(
            sink.errors.is_empty() && sink.warnings.is_empty(),
            "{sink:?}"
        );
        let c = c.unwrap();
        assert_eq!(
            (c.limit, c.group, c.limit_pointer.as_str()),
            (2, None, "/concurrency")
        );

        let (c, sink) = concurrency("concurrency:\n  limit: 1\n  group: deploy");
        assert!(
            sink.errors.is_empty() && sink.warnings.is_empty(),
            "{sink:?}"
        );
        let c = c.unwrap();
        assert_eq!((c.limit, c.group.as_deref()), (1, Some("deploy")));
        assert_eq!(c.limit_pointer, "/concurrency/limit");
        assert_eq!((c.limit_pos.line, c.limit_pos.column), (Some(2), Some(10)));

        let (c, sink) = concurrency("concurrency: {limit: 3}");
        assert!(sink.errors.is_empty(), "{sink:?}");
        assert_eq!(c.unwrap().group, None);
    }

    #[test]
    fn a_concurrency_group_without_a_limit_is_refused_where_it_stands() {
        let (c, sink) = concurrency("concurrency:\n  group: deploy");
        assert!(c.is_none());
        let [e] = sink.errors.as_slice() else {
            panic!("one error: {sink:?}")
        };
        assert_eq!(e.pointer, "/concurrency");
        assert_eq!((e.line, e.column), (Some(2), Some(3)));
        assert_eq!(
            e.message,
            "\"concurrency\" needs a \"limit\": how many workflows of the group may run at once"
        );
    }

    #[test]
    fn concurrency_limits_below_one_and_other_shapes_are_refused() {
        for (yaml, pointer, message) in [
            (
                "concurrency: 0",
                "/concurrency",
                "expected a limit of 1 or more, found 0; to let every run start at once, leave \"concurrency\" out",
            ),
            (
                "concurrency: {limit: -2, group: g}",
                "/concurrency/limit",
                "expected a limit of 1 or more, found -2; to let every run start at once, leave \"concurrency\" out",
            ),
            ("concurrency: 1.5", "/concurrency", "expected an integer"),
            (
                "concurrency: {limit: \"1\"}",
                "/concurrency/limit",
                "expected an integer",
            ),
            (
                "concurrency: [1]",
                "/concurrency",
                "expected an integer or a map with \"limit\" and \"group\"",
            ),
            (
                "concurrency: {limit: 1, group: [a]}",
                "/concurrency/group",
                "expected a string",
            ),
        ] {
            let (c, sink) = concurrency(yaml);
            let found: Vec<(&str, &str)> = sink
                .errors
                .iter()
                .map(|e| (e.pointer.as_str(), e.message.as_str()))
                .collect();
            assert_eq!(found, [(pointer, message)], "{yaml}");
            assert!(c.is_none() || yaml.contains("group: [a]"), "{yaml}");
        }
        let (_, sink) = concurrency("concurrency: {limit: 1, grup: g}");
        assert_eq!(sink.errors[0].pointer, "/concurrency/grup");
        assert!(
            sink.errors[0].message.contains("did you mean \"group\""),
            "{sink:?}"
        );
    }

    #[test]
    fn every_kubernetes_option_is_typed() {
        let yaml = include_str!("testdata/kubernetes.yaml");
        let (w, sink) = read(yaml);
        assert!(sink.errors.is_empty(), "{:#?}", sink.errors);
        let k = &w.expect("workflow").steps[0].kubernetes;
        assert_eq!(
            k.resources.requests.get("cpu").map(String::as_str),
            Some("100m")
        );
        assert_eq!(
            k.resources.requests.get("memory").map(String::as_str),
            Some("200Mi")
        );
        assert_eq!(
            k.resources
                .limits
                .get("ephemeral-storage")
                .map(String::as_str),
            Some("1Gi")
        );
        assert_eq!(k.resources.limits.get("cpu").map(String::as_str), Some("2"));
        assert_eq!(k.runtime_class_name.as_deref(), Some("gvisor"));
        assert_eq!(k.service_account_name.as_deref(), Some("builder"));
        assert_eq!(k.labels.get("team").map(String::as_str), Some("ci"));
        assert_eq!(k.annotations.get("note").map(String::as_str), Some("true"));
        assert_eq!(k.node_selector.get("disk").map(String::as_str), Some("ssd"));
        assert_eq!(
            k.tolerations,
            vec![Toleration {
                key: Some("dedicated".into()),
                operator: Some("Equal".into()),
                value: Some("ci".into()),
                effect: Some("NoSchedule".into()),
                toleration_seconds: Some(3600),
            }]
        );
        let affinity = k.affinity.as_ref().expect("affinity");
        assert!(affinity.get("nodeAffinity").is_some());
        let sc = k.security_context.as_ref().expect("securityContext");
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            (sc.run_as_user, sc.run_as_group, sc.fs_group),
            (Some(1000), Some(1000), Some(2000))
        );
        assert_eq!(sc.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
        assert_eq!(
            sc.seccomp_profile,
            Some(SecProfile {
                kind: "Localhost".into(),
                localhost_profile: Some("profiles/audit.json".into())
            })
        );
        assert_eq!(
            sc.apparmor_profile,
            Some(SecProfile {
                kind: "RuntimeDefault".into(),
                localhost_profile: None
            })
        );
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities,
            Some(Capabilities {
                drop: vec!["ALL".into()]
            })
        );
        assert_eq!(
            k.secrets,
            vec![
                SecretRef {
                    name: "aws".into(),
                    key: "id".into(),
                    target: SecretTarget::Env("AWS_ACCESS_KEY_ID".into())
                },
                SecretRef {
                    name: "ssh".into(),
                    key: "key".into(),
                    target: SecretTarget::File("/root/.ssh/id".into())
                },
            ]
        );
        assert_eq!(k.host_users, Some(false));
        assert_eq!(k.workspace_volume, Some(false));
        assert!(!k.mounts_workspace());
    }

    #[test]
    fn workspace_volume_is_a_boolean() {
        assert_eq!(
            errors(
                "steps: [{name: a, image: x, commands: [ls], backend_options: {kubernetes: {workspaceVolume: no}}}]"
            ),
            [(
                "/steps/0/backend_options/kubernetes/workspaceVolume".to_string(),
                "expected a boolean".to_string()
            )]
        );
        let (w, sink) = read("steps: [{name: a, image: x, commands: [ls]}]");
        assert!(sink.errors.is_empty());
        assert!(
            w.expect("w").steps[0].kubernetes.mounts_workspace(),
            "the default"
        );
    }

    #[test]
    fn kubernetes_option_errors() {
        let e = errors(
            "steps: [{name: a, image: x, commands: [ls], backend_options: {kubernetes: {tolerations: [{operator: Maybe}], secrets: [{name: s, target: {}}], securityContext: {seccompProfile: {type: Localhost}, runAsUser: me}, affinity: {nodeAfinity: {}}}}}]",
        );
        let messages: Vec<&str> = e.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(
            messages,
            [
                "expected one of \"Exists\", \"Equal\", got \"Maybe\"",
                "\"target\" needs exactly one of \"env\" or \"file\"",
                "a secret reference needs \"key\"",
                "\"localhostProfile\" is required when \"type\" is Localhost",
                "expected an integer",
                "unknown key \"nodeAfinity\", did you mean \"nodeAffinity\"?",
            ]
        );
    }

    #[test]
    fn a_clone_step_environment_is_held_to_the_git_rules() {
        let errs = errors(
            "clone:\n  git:\n    image: woodpeckerci/plugin-git\n    environment:\n      PLUGIN_REF: --upload-pack=x\n      CI_COMMIT_SHA: abc\n      OTHER: --anything\nsteps:\n  - name: a\n    image: alpine\n    commands: [true]\n",
        );
        let pointers: Vec<&str> = errs.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/clone/git/environment/PLUGIN_REF",
                "/clone/git/environment/CI_COMMIT_SHA"
            ],
            "{errs:?}"
        );
        assert!(
            errs.iter().all(|(_, m)| !m.contains("upload-pack")),
            "{errs:?}"
        );
        // A step of its own may set them: it hands nothing to git.
        assert!(errors("steps:\n  - name: a\n    image: alpine\n    commands: [true]\n    environment:\n      PLUGIN_REF: --x\n").is_empty());
    }

    #[test]
    fn list_and_map_step_forms_keep_order() {
        let (w, _) =
            read("steps:\n  z: {image: x, commands: [ls]}\n  a: {image: x, commands: [ls]}\n");
        let names: Vec<String> = w.expect("w").steps.into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["z", "a"]);
        let (w, _) = read(
            "steps:\n  - {name: z, image: x, commands: [ls]}\n  - {name: a, image: x, commands: [ls]}\n",
        );
        let names: Vec<String> = w.expect("w").steps.into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["z", "a"]);
    }

    #[test]
    fn paths_that_leave_the_workspace_are_refused_where_they_are() {
        assert_eq!(
            errors(
                "workspace: {base: /woodpecker, path: ../../etc}\nsteps: [{name: a, image: x, commands: [ls], directory: ../..}]"
            ),
            [
                (
                    "/workspace/path".to_string(),
                    "\"../../etc\" has a \"..\" segment; write the path without one: it must stay inside the workspace".to_string()
                ),
                (
                    "/steps/0/directory".to_string(),
                    "\"../..\" has a \"..\" segment; write the path without one: it must stay inside the workspace".to_string()
                ),
            ]
        );
        assert_eq!(
            one_error(
                "workspace: {base: woodpecker}\nsteps: [{name: a, image: x, commands: [ls]}]"
            ),
            (
                "/workspace/base".into(),
                "\"woodpecker\" is not an absolute path; write one such as /woodpecker".into()
            )
        );
        assert_eq!(
            one_error(
                "workspace: {base: /w/../../etc}\nsteps: [{name: a, image: x, commands: [ls]}]"
            )
            .0,
            "/workspace/base"
        );
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], directory: /etc}]").0,
            "/steps/0/directory"
        );
        assert_eq!(
            one_error("clone: {git: {image: x, directory: ../x}}\nsteps: [{name: a, image: x, commands: [ls]}]").0,
            "/clone/git/directory"
        );
        assert_eq!(
            one_error("steps: [{name: a, image: x, commands: [ls], volumes: [cache:/cache, 'cache:../x:ro']}]"),
            (
                "/steps/0/volumes/1".into(),
                "volume \"cache:../x:ro\" has no absolute mount path; write name:/mount/path or name:/mount/path:ro".into()
            )
        );
        assert_eq!(
            one_error("services: [{name: db, image: x, volumes: ['data:/a/../../etc']}]\nsteps: [{name: a, image: x, commands: [ls]}]").0,
            "/services/0/volumes/0"
        );
        let (_, sink) = read(
            "workspace: {base: /ci, path: src/app}\nsteps: [{name: a, image: x, commands: [ls], directory: sub/dir, volumes: ['cache:/cache:ro']}]",
        );
        assert!(sink.errors.is_empty(), "{:?}", sink.errors);
    }

    /// A clone step's URL, ref and commit settings reach git: each is refused where it is,
    /// in the map and list forms, and the value is never repeated.
    #[test]
    fn clone_settings_git_reads_follow_the_repo_rules() {
        let hostile = "--upload-pack=touch /tmp/pwned";
        let yaml = format!(
            "clone:\n  git:\n    image: woodpeckerci/plugin-git\n    settings:\n      remote: 'ext::sh -c touch% /tmp/x'\n      ref: '{hostile}'\n      sha: '--upload-pack=x'\n      depth: 1\nsteps: [{{name: a, image: x, commands: [ls]}}]\n"
        );
        let (_, sink) = read(&yaml);
        let found: Vec<(&str, Option<u32>, Option<u32>)> = sink
            .errors
            .iter()
            .map(|d| (d.pointer.as_str(), d.line, d.column))
            .collect();
        assert_eq!(
            found,
            [
                ("/clone/git/settings/remote", Some(5), Some(15)),
                ("/clone/git/settings/ref", Some(6), Some(12)),
                ("/clone/git/settings/sha", Some(7), Some(12)),
            ]
        );
        for d in &sink.errors {
            assert!(!d.message.contains("upload-pack"), "{}", d.message);
            assert!(!d.message.contains("ext::"), "{}", d.message);
        }
        assert!(sink.errors[0].message.contains("remote helper"));
        assert!(
            sink.errors[1]
                .message
                .contains("hands setting \"ref\" to git")
        );
        assert!(sink.errors[2].message.contains("40 hexadecimal"));

        // The list form; plugin-git's own names for the branches, in either spelling.
        let errors = errors(&format!(
            "clone:\n  - name: git\n    settings: {{branch: '-b', target-branch: 'a..b', remote_ssh: /srv/r.git, ref: '{hostile}'}}\nsteps: [{{name: a, image: x, commands: [ls]}}]\n"
        ));
        let pointers: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/clone/0/settings/branch",
                "/clone/0/settings/target-branch",
                "/clone/0/settings/remote_ssh",
                "/clone/0/settings/ref",
            ]
        );
    }

    #[test]
    fn submodule_override_urls_are_clone_urls() {
        let errors = errors(
            "clone:\n  git:\n    settings:\n      submodule_override: {good: 'https://e.com/a.git', bad: 'file:///etc'}\nsteps: [{name: a, image: x, commands: [ls]}]\n",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].0, "/clone/git/settings/submodule_override/bad");
        // As JSON text, the setting itself is blamed.
        let errors = errors_of(
            r#"clone:
  git:
    settings:
      submodule_override: '{"bad": "ext::sh -c x"}'
steps: [{name: a, image: x, commands: [ls]}]
"#,
        );
        assert_eq!(errors, ["/clone/git/settings/submodule_override"]);
    }

    fn errors_of(yaml: &str) -> Vec<String> {
        errors(yaml).into_iter().map(|(p, _)| p).collect()
    }

    /// Ordinary values pass; settings of other steps, other settings and values from secrets
    /// are not clone values.
    #[test]
    fn ordinary_clone_settings_pass() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let (_, sink) = read(&format!(
            "clone:\n  git:\n    settings: {{remote: 'https://e.com/r.git', ref: refs/heads/main, sha: '{sha}', branch: main, depth: 50, tags: true, lfs: false, remote_ssh: 'git@e.com:r.git', submodule_override: {{m: 'https://e.com/m.git'}}, path: '', home: /root, token: {{from_secret: t}}}}\nsteps:\n  - {{name: a, image: x, settings: {{ref: '--x', remote: 'file:///x', sha: abc}}}}\n"
        ));
        assert!(sink.errors.is_empty(), "{:#?}", sink.errors);
        let (_, sink) = read(
            "clone:\n  git:\n    settings: {remote: '', ref: {from_secret: r}, sha: null}\nsteps: [{name: a, image: x, commands: [ls]}]\n",
        );
        assert!(sink.errors.is_empty(), "{:#?}", sink.errors);
    }
}
