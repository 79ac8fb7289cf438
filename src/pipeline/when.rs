//! `when` conditions against what the submission says (its variables, the workflow's platform,
//! the matrix element), with Woodpecker's rules: glob patterns where `*` stops at `/` and `**`
//! does not, `include`/`exclude` lists, `branch` ignored for tags, `cron` only for cron events,
//! `path` only for push and pull request events. What cannot be evaluated here is treated as
//! met and draws a warning, never a silent difference.

use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::diagnostic::{Sink, child};
use super::model::{Conclusion, Condition, GlobList, PathCondition};

/// What a submission brings to condition matching.
pub(crate) struct Facts<'a> {
    pub vars: &'a BTreeMap<String, String>,
    pub platform: &'a str,
    pub matrix: &'a BTreeMap<String, String>,
    /// The changed files (`CI_PIPELINE_FILES`, a JSON list), read once per submission.
    pub files: Option<&'a [String]>,
}

/// `CI_PIPELINE_FILES` as the list it holds; `None` when absent or not a JSON list of strings.
pub(crate) fn changed_files(vars: &BTreeMap<String, String>) -> Option<Vec<String>> {
    vars.get("CI_PIPELINE_FILES")
        .and_then(|f| serde_json::from_str::<Vec<String>>(f).ok())
}

#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Kept; runs when the workflow status so far is one of these.
    Run(Vec<Conclusion>),
    /// Dropped before planning, with the reason shown to the user.
    Skip(String),
}

/// Glob match as Woodpecker's doublestar does it; an invalid pattern matches only itself.
pub(crate) fn glob_match(pattern: &str, value: &str) -> bool {
    match GlobBuilder::new(pattern).literal_separator(true).build() {
        Ok(g) => g.compile_matcher().is_match(value),
        Err(_) => pattern == value,
    }
}

impl GlobList {
    pub(crate) fn matches(&self, value: &str) -> bool {
        if self.exclude.iter().any(|p| glob_match(p, value)) {
            return false;
        }
        self.include.is_empty() || self.include.iter().any(|p| glob_match(p, value))
    }
}

/// Patterns compiled into one set, so that each file is matched once against all of them (not
/// once per pattern); an invalid pattern matches only itself, as in [`glob_match`].
struct Patterns<'p> {
    set: GlobSet,
    literal: Vec<&'p str>,
}

impl<'p> Patterns<'p> {
    fn new(patterns: &'p [String]) -> Patterns<'p> {
        let mut builder = GlobSetBuilder::new();
        let mut literal = Vec::new();
        for p in patterns {
            match GlobBuilder::new(p).literal_separator(true).build() {
                Ok(g) => {
                    builder.add(g);
                }
                Err(_) => literal.push(p.as_str()),
            }
        }
        let set = builder.build().unwrap_or_else(|_| {
            // Too large for the matcher: fall back to matching every pattern as text.
            literal = patterns.iter().map(String::as_str).collect();
            GlobSet::empty()
        });
        Patterns { set, literal }
    }

    fn any(&self, files: &[String]) -> bool {
        files
            .iter()
            .any(|f| self.set.is_match(f) || self.literal.contains(&f.as_str()))
    }
}

impl PathCondition {
    fn matches(&self, files: &[String], message: &str) -> bool {
        if let Some(ignore) = &self.ignore_message
            && !ignore.is_empty()
            && message.to_lowercase().contains(&ignore.to_lowercase())
        {
            return true;
        }
        if files.is_empty() {
            return self.on_empty;
        }
        if !self.exclude.is_empty() && Patterns::new(&self.exclude).any(files) {
            return false;
        }
        self.include.is_empty() || Patterns::new(&self.include).any(files)
    }
}

/// Evaluates a `when` (a list of condition maps; the step or workflow runs when any matches).
pub(crate) fn evaluate(
    conditions: &[Condition],
    facts: &Facts<'_>,
    step_level: bool,
    sink: &mut Sink,
) -> Outcome {
    if conditions.is_empty() {
        return Outcome::Run(vec![Conclusion::Success]);
    }
    let mut statuses = Vec::new();
    let mut reasons = Vec::new();
    for c in conditions {
        match unmet(c, facts, step_level, sink) {
            None => {
                if c.status.is_empty() {
                    statuses.push(Conclusion::Success);
                } else {
                    statuses.extend(c.status.iter().copied());
                }
            }
            Some(reason) => reasons.push(reason),
        }
    }
    if statuses.is_empty() {
        return Outcome::Skip(match reasons.as_slice() {
            [one] => one.clone(),
            _ => "none of the when conditions is met".to_string(),
        });
    }
    statuses.sort();
    statuses.dedup();
    Outcome::Run(statuses)
}

/// The first unmet key of one condition map, as a reason; `None` when every key is met.
fn unmet(c: &Condition, facts: &Facts<'_>, step_level: bool, sink: &mut Sink) -> Option<String> {
    let var = |name: &str| facts.vars.get(name).map(String::as_str);
    let cannot = |sink: &mut Sink, key: &str, what: &str| {
        sink.warn(
            &child(&c.pointer, key),
            c.pos,
            format!(
                "when.{key} cannot be evaluated: the submission carries no {what}; the condition is treated as met"
            ),
        );
    };

    if step_level {
        let value = |k: &String| facts.matrix.get(k).map(String::as_str).unwrap_or("");
        if !c.matrix_exclude.is_empty()
            && c.matrix_exclude
                .iter()
                .all(|(k, p)| glob_match(p, value(k)))
        {
            return Some("when.matrix excludes this matrix element".to_string());
        }
        if let Some((k, _)) = c
            .matrix_include
            .iter()
            .find(|(k, p)| !glob_match(p, value(k)))
        {
            return Some(format!("when.matrix does not match {k}=\"{}\"", value(k)));
        }
    }

    if !c.platform.matches(facts.platform) {
        return Some(format!(
            "when.platform does not match \"{}\"",
            facts.platform
        ));
    }

    let event = var("CI_PIPELINE_EVENT");
    let check = |sink: &mut Sink, key: &str, list: &GlobList, value: Option<&str>, what: &str| {
        if list.is_empty() {
            return None;
        }
        match value {
            Some(v) if !list.matches(v) => Some(format!("when.{key} does not match \"{v}\"")),
            Some(_) => None,
            None => {
                cannot(sink, key, what);
                None
            }
        }
    };
    if let Some(r) = check(sink, "event", &c.event, event, "CI_PIPELINE_EVENT") {
        return Some(r);
    }
    let repo = var("CI_REPO").map(str::to_string).or_else(|| {
        Some(format!(
            "{}/{}",
            var("CI_REPO_OWNER")?,
            var("CI_REPO_NAME")?
        ))
    });
    if let Some(r) = check(sink, "repo", &c.repo, repo.as_deref(), "CI_REPO") {
        return Some(r);
    }
    if let Some(r) = check(
        sink,
        "ref",
        &c.reference,
        var("CI_COMMIT_REF"),
        "CI_COMMIT_REF",
    ) {
        return Some(r);
    }
    if let Some(r) = check(
        sink,
        "instance",
        &c.instance,
        var("CI_SYSTEM_HOST"),
        "CI_SYSTEM_HOST",
    ) {
        return Some(r);
    }
    if event != Some("tag")
        && let Some(r) = check(
            sink,
            "branch",
            &c.branch,
            var("CI_COMMIT_BRANCH"),
            "CI_COMMIT_BRANCH",
        )
    {
        return Some(r);
    }
    if event == Some("cron")
        && let Some(r) = check(
            sink,
            "cron",
            &c.cron,
            var("CI_PIPELINE_CRON"),
            "CI_PIPELINE_CRON",
        )
    {
        return Some(r);
    }

    if let Some(path) = &c.path
        && matches!(event, Some("push" | "pull_request") | None)
    {
        match facts.files {
            Some(files) => {
                if !path.matches(files, var("CI_COMMIT_MESSAGE").unwrap_or("")) {
                    return Some("when.path matches none of the changed files".to_string());
                }
            }
            None => cannot(
                sink,
                "path",
                "changed-file list (CI_PIPELINE_FILES, a JSON list)",
            ),
        }
    }

    if c.evaluate.is_some() {
        sink.warn(
            &child(&c.pointer, "evaluate"),
            c.pos,
            "when.evaluate is not supported: piculet has no expression engine; the condition is treated as met",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn list(include: &[&str], exclude: &[&str]) -> GlobList {
        GlobList {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn globs_follow_doublestar() {
        assert!(glob_match("feature/*", "feature/x"));
        assert!(!glob_match("feature/*", "feature/x/y"));
        assert!(glob_match("feature/**", "feature/x/y"));
        assert!(glob_match("release-{1,2}", "release-2"));
        assert!(list(&[], &["main"]).matches("dev"));
        assert!(!list(&["*"], &["main"]).matches("main"));
        assert!(!list(&["main"], &[]).matches("dev"));
    }

    #[test]
    fn branch_is_ignored_for_tags_and_reasons_are_given() {
        let mut sink = Sink::new("t");
        let empty = BTreeMap::new();
        let c = Condition {
            branch: list(&["main"], &[]),
            ..Condition::default()
        };
        let v = vars(&[("CI_PIPELINE_EVENT", "push"), ("CI_COMMIT_BRANCH", "dev")]);
        let fl = changed_files(&v);
        let f = Facts {
            vars: &v,
            platform: "linux/amd64",
            matrix: &empty,
            files: fl.as_deref(),
        };
        assert_eq!(
            evaluate(std::slice::from_ref(&c), &f, true, &mut sink),
            Outcome::Skip("when.branch does not match \"dev\"".into())
        );
        let v = vars(&[("CI_PIPELINE_EVENT", "tag"), ("CI_COMMIT_BRANCH", "dev")]);
        let fl = changed_files(&v);
        let f = Facts {
            vars: &v,
            platform: "linux/amd64",
            matrix: &empty,
            files: fl.as_deref(),
        };
        assert_eq!(
            evaluate(&[c], &f, true, &mut sink),
            Outcome::Run(vec![Conclusion::Success])
        );
    }

    #[test]
    fn path_uses_changed_files_or_warns() {
        let mut sink = Sink::new("t");
        let empty = BTreeMap::new();
        let c = Condition {
            pointer: "/when".into(),
            path: Some(PathCondition {
                include: vec!["src/**".into()],
                exclude: vec![],
                ignore_message: None,
                on_empty: true,
            }),
            ..Condition::default()
        };
        let v = vars(&[
            ("CI_PIPELINE_EVENT", "push"),
            ("CI_PIPELINE_FILES", "[\"docs/a.md\"]"),
        ]);
        let fl = changed_files(&v);
        let f = Facts {
            vars: &v,
            platform: "",
            matrix: &empty,
            files: fl.as_deref(),
        };
        assert_eq!(
            evaluate(std::slice::from_ref(&c), &f, true, &mut sink),
            Outcome::Skip("when.path matches none of the changed files".into())
        );
        let v = vars(&[
            ("CI_PIPELINE_EVENT", "push"),
            ("CI_PIPELINE_FILES", "[\"src/a/b.rs\"]"),
        ]);
        let fl = changed_files(&v);
        let f = Facts {
            vars: &v,
            platform: "",
            matrix: &empty,
            files: fl.as_deref(),
        };
        assert_eq!(
            evaluate(std::slice::from_ref(&c), &f, true, &mut sink),
            Outcome::Run(vec![Conclusion::Success])
        );
        assert!(sink.warnings.is_empty());
        let v = vars(&[("CI_PIPELINE_EVENT", "push")]);
        let fl = changed_files(&v);
        let f = Facts {
            vars: &v,
            platform: "",
            matrix: &empty,
            files: fl.as_deref(),
        };
        assert_eq!(
            evaluate(&[c], &f, true, &mut sink),
            Outcome::Run(vec![Conclusion::Success])
        );
        assert_eq!(
            sink.warnings[0].message,
            "when.path cannot be evaluated: the submission carries no changed-file list (CI_PIPELINE_FILES, a JSON list); the condition is treated as met"
        );
        assert_eq!(sink.warnings[0].pointer, "/when/path");
    }

    #[test]
    fn cron_and_evaluate_warn() {
        let mut sink = Sink::new("t");
        let empty = BTreeMap::new();
        let c = Condition {
            pointer: "/when".into(),
            cron: list(&["nightly"], &[]),
            evaluate: Some("CI_COMMIT_AUTHOR == 'x'".into()),
            ..Condition::default()
        };
        let v = vars(&[("CI_PIPELINE_EVENT", "cron")]);
        let fl = changed_files(&v);
        let f = Facts {
            vars: &v,
            platform: "",
            matrix: &empty,
            files: fl.as_deref(),
        };
        assert_eq!(
            evaluate(&[c], &f, true, &mut sink),
            Outcome::Run(vec![Conclusion::Success])
        );
        let w: Vec<&str> = sink.warnings.iter().map(|d| d.message.as_str()).collect();
        assert_eq!(
            w,
            [
                "when.cron cannot be evaluated: the submission carries no CI_PIPELINE_CRON; the condition is treated as met",
                "when.evaluate is not supported: piculet has no expression engine; the condition is treated as met",
            ]
        );
    }

    #[test]
    fn matrix_and_status_union() {
        let mut sink = Sink::new("t");
        let m = vars(&[("GO", "1.22")]);
        let v = vars(&[]);
        let f = Facts {
            vars: &v,
            platform: "",
            matrix: &m,
            files: None,
        };
        let a = Condition {
            matrix_include: vars(&[("GO", "1.21")]),
            ..Condition::default()
        };
        let b = Condition {
            status: vec![Conclusion::Success, Conclusion::Failure],
            ..Condition::default()
        };
        assert_eq!(
            evaluate(std::slice::from_ref(&a), &f, true, &mut sink),
            Outcome::Skip("when.matrix does not match GO=\"1.22\"".into())
        );
        assert_eq!(
            evaluate(&[a, b], &f, true, &mut sink),
            Outcome::Run(vec![Conclusion::Success, Conclusion::Failure])
        );
    }
}
