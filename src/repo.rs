//! What a submission may hand to `git`: the repository's URL, ref and commit id reach the clone
//! step's `git` commands (the host's `git` on the local backend, the clone image's on
//! Kubernetes), so each must be something git reads as a value and never as an option, a
//! command or a file of the host.
//!
//! The rules, each refused with a 422 naming the field:
//! - a ref (`repo.ref`, and the branch and ref variables the clone image reads) is a git ref
//!   name as `git check-ref-format --allow-onelevel` accepts it, not starting with `-`, and at
//!   most [`MAX_REF_LEN`] bytes;
//! - a commit id (`repo.sha`, `CI_COMMIT_SHA`) is 40 (SHA-1) or 64 (SHA-256) hex digits;
//! - a clone URL (`repo.clone_url`, `CI_REPO_CLONE_URL`, `CI_REPO_CLONE_SSH_URL`) is
//!   `https://`, `http://`, `ssh://` or `git://` with a host, or scp-like `[user@]host:path`,
//!   at most [`MAX_URL_LEN`] bytes, without control characters and not starting with `-`:
//!   `file://`, local paths and remote helpers (`ext::`, `fd::`) are refused, since they read
//!   the host's files or run commands.
//!
//! A pipeline's own `clone:` steps hand git the same kinds of value through their settings
//! (see [`clone_setting_problems`]); the same rules apply to them, at the setting.

use std::collections::BTreeMap;

use crate::k8s::pod::{plugin_value, plugin_variable};
use crate::pipeline::Diagnostic;
use crate::run::Repo;
use crate::submission::SUBMISSION;

/// The longest ref name accepted, in bytes: far above any real branch or tag (GitHub allows
/// 255 bytes), small enough that a ref is never a way to send a large body.
pub const MAX_REF_LEN: usize = 1024;

/// The longest clone URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// The URL schemes the clone step may fetch from.
pub const ALLOWED_SCHEMES: [&str; 4] = ["https", "http", "ssh", "git"];

/// What a value handed to git must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ref,
    Sha,
    Url,
}

/// The submission variables the clone step's `git` reads (the local clone script takes
/// `CI_COMMIT_REF`, `CI_COMMIT_SHA` and `CI_REPO_CLONE_URL`; the plugin-git image of the
/// Kubernetes backend also the branch variables, which it passes to `git switch` and
/// `git fetch` as they are).
const GIT_VARIABLES: [(&str, Kind); 8] = [
    ("CI_COMMIT_REF", Kind::Ref),
    ("CI_COMMIT_BRANCH", Kind::Ref),
    ("CI_COMMIT_SOURCE_BRANCH", Kind::Ref),
    ("CI_COMMIT_TARGET_BRANCH", Kind::Ref),
    ("CI_REPO_DEFAULT_BRANCH", Kind::Ref),
    ("CI_COMMIT_SHA", Kind::Sha),
    ("CI_REPO_CLONE_URL", Kind::Url),
    ("CI_REPO_CLONE_SSH_URL", Kind::Url),
];

/// The settings of a `clone:` step that reach `git`, by the variable each becomes
/// (`PLUGIN_<KEY>`, as plugin-git reads them, so `remote-ssh` and `remote_ssh` are one). The
/// local clone script takes `remote`, `ref` and `sha`; plugin-git also passes `remote_ssh` to
/// `git remote add`, `branch` to `git init -b`, `git fetch` and `git switch`, and
/// `target_branch` to `git fetch` and `git merge`. Its other settings are flags, numbers,
/// paths of its own container or values after an option, which git never reads as one.
const GIT_SETTINGS: [(&str, Kind); 6] = [
    ("PLUGIN_REMOTE", Kind::Url),
    ("PLUGIN_REMOTE_SSH", Kind::Url),
    ("PLUGIN_REF", Kind::Ref),
    ("PLUGIN_SHA", Kind::Sha),
    ("PLUGIN_BRANCH", Kind::Ref),
    ("PLUGIN_TARGET_BRANCH", Kind::Ref),
];

/// plugin-git's map of submodule name to the URL `git submodule update` clones it from: a JSON
/// object, given as a map or as its text.
const SUBMODULE_OVERRIDE: &str = "PLUGIN_SUBMODULE_OVERRIDE";

/// The problem of an `environment` variable of a `clone:` step, when it is one that reaches
/// `git` (a `PLUGIN_*` setting, or a `CI_*` variable the clone image reads): the same rules as
/// the setting or the submission's variable, since the environment comes first in the pod.
pub fn clone_environment_problem(name: &str, value: &str) -> Option<String> {
    let (_, kind) = GIT_SETTINGS
        .iter()
        .chain(GIT_VARIABLES.iter())
        .find(|(v, _)| *v == name)?;
    (!value.is_empty())
        .then(|| problem(*kind, value))
        .flatten()
        .map(|m| format!("{m} (the clone step hands {name} to git)"))
}

/// Problems of the setting `key` of a `clone:` step, whose value the backends hand over as its
/// text ([`plugin_value`]; an empty one counts as not given). Each is the key inside the
/// setting it is at (a submodule of `submodule_override` given as a map), if any, and what to
/// write instead; the value is not repeated.
pub fn clone_setting_problems(
    key: &str,
    value: &serde_json::Value,
) -> Vec<(Option<String>, String)> {
    let variable = plugin_variable(key);
    let hands = |m: String| format!("{m} (the clone step hands setting {key:?} to git)");
    if let Some((_, kind)) = GIT_SETTINGS.iter().find(|(v, _)| *v == variable) {
        let text = plugin_value(value);
        return (!text.is_empty())
            .then(|| problem(*kind, &text))
            .flatten()
            .map(|m| vec![(None, hands(m))])
            .unwrap_or_default();
    }
    if variable != SUBMODULE_OVERRIDE {
        return Vec::new();
    }
    // Given as text, the map is one value: a problem is reported at the setting.
    let (urls, at_key) = match value {
        serde_json::Value::Object(map) => (map.clone(), true),
        serde_json::Value::String(text) => match serde_json::from_str(text) {
            Ok(map) => (map, false),
            // plugin-git refuses text that is not a map before running git.
            Err(_) => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    urls.iter()
        .filter_map(|(name, url)| {
            let url = url.as_str().filter(|u| !u.is_empty())?;
            let m = problem(Kind::Url, url)?;
            Some((at_key.then(|| name.clone()), hands(m)))
        })
        .collect()
}

/// Problems of the repository to clone and of the variables git reads; an empty `ref` or
/// `sha` (or variable) counts as not given.
pub fn check(repo: Option<&Repo>, variables: &BTreeMap<String, String>) -> Vec<Diagnostic> {
    let mut found: Vec<(String, String)> = Vec::new();
    if let Some(repo) = repo {
        found.extend(problem(Kind::Url, &repo.clone_url).map(|m| ("/repo/clone_url".into(), m)));
        for (field, value, kind) in [
            ("ref", &repo.git_ref, Kind::Ref),
            ("sha", &repo.sha, Kind::Sha),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                found.extend(problem(kind, value).map(|m| (format!("/repo/{field}"), m)));
            }
        }
    }
    for (name, kind) in GIT_VARIABLES {
        if let Some(value) = variables.get(name).filter(|v| !v.is_empty()) {
            found.extend(problem(kind, value).map(|m| {
                (
                    format!("/variables/{name}"),
                    format!("{m} (the clone step hands {name} to git)"),
                )
            }));
        }
    }
    found
        .into_iter()
        .map(|(pointer, message)| Diagnostic {
            config: SUBMISSION.into(),
            pointer,
            line: None,
            column: None,
            message,
        })
        .collect()
}

/// What is wrong with `value` and what to write instead; the value itself is not repeated, as
/// it may be long or carry a token.
fn problem(kind: Kind, value: &str) -> Option<String> {
    match kind {
        Kind::Ref => ref_name_problem(value).map(|p| {
            format!(
                "is not a git ref name: it {p}; write a branch, tag or ref such as main, v1.2 or \
                 refs/heads/main (the rules of git check-ref-format)"
            )
        }),
        Kind::Sha => (!is_commit_id(value)).then(|| {
            "is not a full commit id; write the 40 hexadecimal digits of a SHA-1 commit (64 for \
             SHA-256), and put a branch or tag name in the ref instead"
                .to_string()
        }),
        Kind::Url => clone_url_problem(value).map(|p| {
            format!(
                "is not a clone URL piculet accepts: it {p}; write https://host/owner/repo.git, \
                 ssh://git@host/owner/repo.git or git@host:owner/repo.git"
            )
        }),
    }
}

/// Why `name` is not a ref name git accepts (`git check-ref-format --allow-onelevel`, as a
/// branch name must also not start with `-`), or `None` when it is one.
pub fn ref_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.len() > MAX_REF_LEN {
        return Some(format!("is longer than {MAX_REF_LEN} bytes"));
    }
    if name.starts_with('-') {
        return Some("starts with '-', which git would read as an option".into());
    }
    if name == "@" {
        return Some("is the single character '@'".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_ascii_control()) {
        return Some(format!("contains the control character U+{:04X}", c as u32));
    }
    if let Some(c) = name.chars().find(|c| " ~^:?*[\\".contains(*c)) {
        return Some(format!("contains {c:?}"));
    }
    for bad in ["..", "@{", "//"] {
        if name.contains(bad) {
            return Some(format!("contains {bad:?}"));
        }
    }
    if name.starts_with('/') || name.ends_with('/') {
        return Some("starts or ends with '/'".into());
    }
    if name.ends_with('.') {
        return Some("ends with '.'".into());
    }
    if name.split('/').any(|c| c.starts_with('.')) {
        return Some("has a part (between '/') starting with '.'".into());
    }
    if name.split('/').any(|c| c.ends_with(".lock")) {
        return Some("has a part (between '/') ending with \".lock\"".into());
    }
    None
}

/// A full commit id: 40 hex digits (SHA-1) or 64 (SHA-256).
pub fn is_commit_id(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why `url` is not a clone URL piculet accepts, or `None` when it is one.
pub fn clone_url_problem(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some("is empty".into());
    }
    if url.len() > MAX_URL_LEN {
        return Some(format!("is longer than {MAX_URL_LEN} bytes"));
    }
    if url.chars().any(|c| c.is_control()) {
        return Some("contains a control character".into());
    }
    if url.starts_with('-') {
        return Some("starts with '-', which git would read as an option".into());
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if !ALLOWED_SCHEMES
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
        {
            return Some(format!(
                "has a scheme other than {}",
                ALLOWED_SCHEMES.join(", ")
            ));
        }
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (user, host) = match authority.rsplit_once('@') {
            Some((user, host)) => (Some(user), host),
            None => (None, authority),
        };
        return authority_problem(user, host);
    }
    // `transport::address` asks git for a remote helper: `ext::` runs a command.
    if let Some((helper, _)) = url.split_once("::")
        && helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
    {
        return Some("names a remote helper (transport::address), which can run commands".into());
    }
    // scp-like `[user@]host:path`, as git reads it: a ':' before any '/'.
    let local = || {
        Some("has no scheme and is not user@host:path; local paths are not cloned from".to_string())
    };
    let Some((before, path)) = split_scp(url) else {
        return local();
    };
    if path.is_empty() {
        return Some("has no path after the ':'".into());
    }
    let (user, host) = match before.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, before),
    };
    authority_problem(user, host)
}

/// `[user@]host:path` split at the ':' that ends the host (a bracketed IPv6 host holds ':'
/// itself), or `None` when a '/' comes first: then git reads a local path.
fn split_scp(url: &str) -> Option<(&str, &str)> {
    let host_start = url.find('@').map_or(0, |i| i + 1);
    let colon = if url[host_start..].starts_with('[') {
        host_start + url[host_start..].find("]:")? + 1
    } else {
        url.find(':')?
    };
    let before = &url[..colon];
    (!before.contains('/')).then(|| (before, &url[colon + 1..]))
}

/// The user and host of a URL: a host git passes to `ssh` must not read as an option.
fn authority_problem(user: Option<&str>, host: &str) -> Option<String> {
    if let Some(user) = user {
        if user.is_empty() {
            return Some("has an empty user name before '@'".into());
        }
        if user.starts_with('-') {
            return Some("has a user name starting with '-'".into());
        }
    }
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        // A port after the host; a bracketed IPv6 address has ':' of its own.
        if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') {
            h
        } else {
            host
        }
    });
    let valid = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|ip| {
            !ip.is_empty()
                && ip
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.%".contains(&b))
        })
    } else {
        !host.is_empty()
            && !host.starts_with('-')
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
    };
    (!valid).then(|| {
        "has no valid host name (letters, digits, '.', '-' and '_', not starting with '-', or \
         an IPv6 address in brackets)"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names_as_git_check_ref_format() {
        for good in [
            "main",
            "v1.2",
            "HEAD",
            "refs/heads/main",
            "refs/pull/1/head",
            "refs/tags/v1.0.0-rc.1",
            "feature/add-thing",
            "release_2024",
            "üñïcödé",
            "a+b",
            "a@b",
            "a.b",
            &"x".repeat(MAX_REF_LEN),
        ] {
            assert_eq!(ref_name_problem(good), None, "{good:?}");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("--upload-pack=touch /tmp/x", "starts with '-'"),
            ("-b", "starts with '-'"),
            ("@", "single character '@'"),
            ("a\u{0}b", "control character U+0000"),
            ("a\nb", "control character U+000A"),
            ("a\u{7f}b", "control character U+007F"),
            ("a b", "' '"),
            ("a~1", "'~'"),
            ("a^", "'^'"),
            ("a:b", "':'"),
            ("a?", "'?'"),
            ("a*", "'*'"),
            ("a[b", "'['"),
            ("a\\b", "'\\\\'"),
            ("a..b", "\"..\""),
            ("a@{1}", "\"@{\""),
            ("refs//heads", "\"//\""),
            ("/main", "starts or ends with '/'"),
            ("main/", "starts or ends with '/'"),
            ("main.", "ends with '.'"),
            (".hidden", "starting with '.'"),
            ("refs/.x/y", "starting with '.'"),
            ("main.lock", "\".lock\""),
            ("refs/heads.lock/x", "\".lock\""),
            (&"x".repeat(MAX_REF_LEN + 1), "longer than 1024 bytes"),
        ] {
            let p = ref_name_problem(bad).unwrap_or_else(|| panic!("accepted {bad:?}"));
            assert!(p.contains(why), "{bad:?}: {p}");
        }
    }

    /// The rules agree with the host's git on random names made of the characters that
    /// matter (a leading '-', which git only refuses for branches, aside).
    #[test]
    fn ref_names_agree_with_git() {
        let alphabet: Vec<char> = "ab/.-@{}~^:?*[\\ \tlock".chars().collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let names: Vec<String> = (0..400)
            .map(|_| {
                let len = 1 + next(8);
                (0..len).map(|_| alphabet[next(alphabet.len())]).collect()
            })
            .filter(|n: &String| !n.starts_with('-'))
            .collect();
        let mut accepted = 0;
        for name in &names {
            let git = std::process::Command::new("git")
                .args(["check-ref-format", "--allow-onelevel", name])
                .status()
                .expect("git")
                .success();
            assert_eq!(ref_name_problem(name).is_none(), git, "{name:?}");
            accepted += usize::from(git);
        }
        // Both verdicts are exercised.
        assert!(
            accepted > 20 && names.len() - accepted > 20,
            "{accepted}/{}",
            names.len()
        );
    }

    #[test]
    fn commit_ids_are_full_hex() {
        assert!(is_commit_id(&"a".repeat(40)));
        assert!(is_commit_id(&"0123456789abcdefABCDEF".repeat(3)[..64]));
        for bad in [
            "",
            "abc1234",
            &"a".repeat(39),
            &"a".repeat(41),
            &"a".repeat(63),
            &"g".repeat(40),
            "--upload-pack=touch /tmp/x-----------------",
        ] {
            assert!(!is_commit_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn clone_urls_of_allowed_forms() {
        for good in [
            "https://example.com/acme/api.git",
            "HTTPS://example.com/acme/api.git",
            "https://user:tok%40en@example.com:8443/a/b.git",
            "http://10.0.0.5/r.git",
            "ssh://git@example.com:2222/acme/api.git",
            "git://example.com/r",
            "https://[2001:db8::1]:443/r.git",
            "git@github.com:acme/api.git",
            "example.com:acme/api.git",
            "git@[2001:db8::1]:r.git",
            "https://example.com/a repo.git",
        ] {
            assert_eq!(clone_url_problem(good), None, "{good:?}");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("--upload-pack=touch /tmp/x", "starts with '-'"),
            ("-oProxyCommand=x:y", "starts with '-'"),
            ("file:///etc", "scheme other than https, http, ssh, git"),
            ("ftp://example.com/r", "scheme other than"),
            ("ext::sh -c touch% /tmp/x", "remote helper"),
            ("fd::3", "remote helper"),
            ("/srv/git/repo.git", "local paths"),
            ("../repo", "local paths"),
            ("repo", "local paths"),
            ("./a:b", "local paths"),
            ("https://example.com/a\nb", "control character"),
            ("https:///path", "no valid host"),
            ("ssh://-oProxyCommand=touch%20x/r", "no valid host"),
            ("ssh://-u@example.com/r", "user name starting with '-'"),
            ("https://@example.com/r", "empty user name"),
            ("git@-host:r", "no valid host"),
            ("git@host:", "no path"),
            ("git@ho st:r", "no valid host"),
            (
                &format!("https://e.com/{}", "a".repeat(MAX_URL_LEN)),
                "longer",
            ),
        ] {
            let p = clone_url_problem(bad).unwrap_or_else(|| panic!("accepted {bad:?}"));
            assert!(p.contains(why), "{bad:?}: {p}");
        }
    }

    /// Settings are read as the backends render them: numbers and lists as their JSON text.
    #[test]
    fn clone_settings_by_their_rendered_text() {
        use serde_json::json;
        let pointers = |key: &str, value: serde_json::Value| -> Vec<Option<String>> {
            clone_setting_problems(key, &value)
                .into_iter()
                .map(|(at, _)| at)
                .collect()
        };
        assert_eq!(pointers("ref", json!(-5)), [None]);
        assert_eq!(pointers("ref", json!(["main"])), [None]);
        assert_eq!(pointers("REF", json!("a..b")), [None]);
        assert_eq!(pointers("sha", json!(1234)), [None]);
        assert!(pointers("ref", json!(2024)).is_empty());
        assert!(pointers("ref", json!(true)).is_empty());
        assert!(pointers("ref", json!("")).is_empty());
        assert!(pointers("ref", json!(null)).is_empty());
        assert!(pointers("depth", json!("--x")).is_empty());
        assert_eq!(
            pointers(
                "submodule-override",
                json!({"a": "https://e.com/a.git", "b": "-x", "c": 3})
            ),
            [Some("b".to_string())]
        );
        assert_eq!(
            pointers("submodule_override", json!(r#"{"a": "fd::3"}"#)),
            [None]
        );
        assert!(pointers("submodule_override", json!("not json")).is_empty());
    }

    fn repo(url: &str, r#ref: Option<&str>, sha: Option<&str>) -> Repo {
        Repo {
            clone_url: url.into(),
            git_ref: r#ref.map(String::from),
            sha: sha.map(String::from),
        }
    }

    #[test]
    fn each_problem_names_its_field() {
        let hostile = "--upload-pack=touch /tmp/x";
        let found = check(
            Some(&repo(hostile, Some(hostile), Some(hostile))),
            &BTreeMap::from([
                ("CI_COMMIT_BRANCH".to_string(), hostile.to_string()),
                ("CI_COMMIT_SHA".to_string(), "abc".to_string()),
                ("CI_REPO_CLONE_URL".to_string(), "ext::sh".to_string()),
                ("OTHER".to_string(), hostile.to_string()),
            ]),
        );
        let pointers: Vec<&str> = found.iter().map(|d| d.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/repo/clone_url",
                "/repo/ref",
                "/repo/sha",
                "/variables/CI_COMMIT_BRANCH",
                "/variables/CI_COMMIT_SHA",
                "/variables/CI_REPO_CLONE_URL",
            ]
        );
        for d in &found {
            assert_eq!(d.config, SUBMISSION);
            assert!(!d.message.contains("upload-pack"), "{}", d.message);
        }
        assert!(
            found[1].message.contains("such as main"),
            "{}",
            found[1].message
        );
        assert!(
            found[2].message.contains("40 hexadecimal"),
            "{}",
            found[2].message
        );
        assert!(found[3].message.contains("hands CI_COMMIT_BRANCH to git"));
    }

    #[test]
    fn a_valid_repo_and_empty_values_pass() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert!(
            check(
                Some(&repo(
                    "https://e.com/r.git",
                    Some("refs/heads/main"),
                    Some(sha)
                )),
                &BTreeMap::from([
                    ("CI_COMMIT_BRANCH".to_string(), "main".to_string()),
                    ("CI_COMMIT_SHA".to_string(), String::new()),
                ]),
            )
            .is_empty()
        );
        assert!(
            check(
                Some(&repo("git@e.com:r.git", Some(""), None)),
                &BTreeMap::new()
            )
            .is_empty()
        );
        assert!(check(None, &BTreeMap::new()).is_empty());
    }
}
