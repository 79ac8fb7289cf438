//! The clone step on the local backend: what it fetches, with the host's `git`, from the
//! clone settings or the submission's variables.

use std::collections::BTreeMap;

use super::super::BackendError;
use super::launch::secret;
use crate::pipeline::{SettingValue, StepSpec};

/// How the clone step runs with the host's `git`.
///
/// The values come from the pipeline's clone settings or the submission (validated there, see
/// [`crate::repo`]), but the script does not rely on it: each value is passed as a variable
/// rather than pasted into the script, so the shell never parses it, and after
/// `--end-of-options` (git 2.24 or later; an older git refuses the script instead), so git never
/// reads it as an option such as `--upload-pack=<command>`.
pub(super) struct ClonePlan {
    pub(super) commands: Vec<String>,
    /// The values the commands refer to.
    pub(super) env: BTreeMap<String, String>,
    pub(super) notices: Vec<String>,
}

const CLONE_SETTINGS: [&str; 4] = ["remote", "ref", "sha", "depth"];

pub(super) fn clone_plan(
    spec: &StepSpec,
    ci_env: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Result<ClonePlan, BackendError> {
    let setting = |key: &str| -> Result<Option<String>, BackendError> {
        Ok(match spec.settings.get(key) {
            Some(SettingValue::Value(serde_json::Value::String(s))) => Some(s.clone()),
            Some(SettingValue::Value(serde_json::Value::Null)) | None => None,
            Some(SettingValue::Value(other)) => Some(other.to_string()),
            Some(SettingValue::FromSecret(name)) => Some(secret(spec, name, secrets)?),
        }
        .filter(|s| !s.is_empty()))
    };
    // A `clone:` section of the pipeline names no remote: the submission's variables do.
    let from_env = |key: &str| ci_env.get(key).filter(|s| !s.is_empty()).cloned();
    let remote = setting("remote")?
        .or_else(|| from_env("CI_REPO_CLONE_URL"))
        .ok_or_else(|| {
            BackendError::Refused(format!(
                "clone step {:?}: no repository to clone (neither a \"remote\" setting nor CI_REPO_CLONE_URL)",
                spec.name
            ))
        })?;
    let sha = setting("sha")?.or_else(|| from_env("CI_COMMIT_SHA"));
    let r#ref = setting("ref")?.or_else(|| from_env("CI_COMMIT_REF"));
    let depth = match setting("depth")? {
        None => 1,
        // The value is not repeated: it may come from a secret, and a reason is not masked.
        Some(d) => d.parse::<u32>().map_err(|_| {
            BackendError::Refused(format!(
                "clone step {:?}: setting \"depth\" must be a whole number",
                spec.name
            ))
        })?,
    };
    let depth_arg = if depth == 0 {
        String::new()
    } else {
        format!(" --depth={depth}")
    };

    let mut notices: Vec<String> = spec
        .settings
        .keys()
        .filter(|k| !CLONE_SETTINGS.contains(&k.as_str()))
        .map(|k| format!("piculet: the local backend ignores clone setting {k:?}\n"))
        .collect();
    let at = sha.as_deref().or(r#ref.as_deref()).unwrap_or("HEAD");
    notices.push(format!(
        "piculet: cloning {} at {at} with this host's git\n",
        redact_userinfo(&remote)
    ));

    let mut env = BTreeMap::from([("PICULET_CLONE_REMOTE".to_string(), remote)]);
    let mut commands = vec![
        "git init -q".to_string(),
        r#"git config --end-of-options remote.origin.url "$PICULET_CLONE_REMOTE""#.to_string(),
    ];
    match (sha, r#ref) {
        (Some(sha), r#ref) => {
            // Fetching a commit by its id needs the server's consent (GitHub and GitLab give
            // it); otherwise the whole ref is fetched, which holds the commit.
            let mut fetch =
                format!(r#"git fetch{depth_arg} --end-of-options origin "$PICULET_CLONE_SHA""#);
            if let Some(r#ref) = r#ref {
                fetch.push_str(r#" || git fetch --end-of-options origin "$PICULET_CLONE_REF""#);
                env.insert("PICULET_CLONE_REF".to_string(), r#ref);
            }
            env.insert("PICULET_CLONE_SHA".to_string(), sha);
            commands.push(fetch);
            // The trailing `--`: the commit is a revision, never a path.
            commands
                .push(r#"git checkout -q --end-of-options "$PICULET_CLONE_SHA" --"#.to_string());
        }
        (None, r#ref) => {
            env.insert(
                "PICULET_CLONE_REF".to_string(),
                r#ref.unwrap_or_else(|| "HEAD".to_string()),
            );
            commands.push(format!(
                r#"git fetch{depth_arg} --end-of-options origin "$PICULET_CLONE_REF""#
            ));
            commands.push("git checkout -q FETCH_HEAD".to_string());
        }
    }
    Ok(ClonePlan {
        commands,
        env,
        notices,
    })
}

/// `https://user:token@host/x` → `https://***@host/x`: a token in a clone URL is not
/// necessarily a submission secret, so the log masking would not catch it.
fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_clone_urls_are_not_shown() {
        assert_eq!(
            redact_userinfo("https://user:tok@example.com/a/b.git"),
            "https://***@example.com/a/b.git"
        );
        assert_eq!(
            redact_userinfo("https://example.com/a@b.git"),
            "https://example.com/a@b.git"
        );
        assert_eq!(redact_userinfo("/srv/repo"), "/srv/repo");
    }
}
