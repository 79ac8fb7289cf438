//! Object names. Every name piculet gives a Kubernetes object is a valid DNS label (RFC 1123,
//! at most 63 characters), unique within the namespace, and the same every time the same
//! step attempt is rendered — so a replica that adopts a workflow finds its objects by name.
//! Step names are free text (long, odd, unicode): they become a readable slug plus a short
//! hash of what makes the object unique.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The longest DNS label.
pub const MAX_LABEL: usize = 63;

/// The one container of every pod (logs are read from it).
pub const CONTAINER: &str = "step";

/// Name of the workspace volume inside a pod.
pub const WORKSPACE_VOLUME: &str = "workspace";

/// Whether `s` is an RFC 1123 label: lowercase alphanumerics and `-`, starting and ending
/// with an alphanumeric, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= MAX_LABEL && super::validation::lower_label(s, false)
}

/// Whether `s` is an RFC 1035 label (an RFC 1123 label starting with a letter), as Service
/// names must be.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// A readable DNS-label fragment of `name`: lowercase ASCII alphanumerics, every other run of
/// characters a single `-`, at most `max` characters, no `-` at either end. May be empty.
pub fn slug(name: &str, max: usize) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(max);
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The first `len` hex digits of the SHA-256 of `parts` (separated by NUL, so that
/// `("ab", "c")` and `("a", "bc")` differ).
pub fn short_hash(parts: &[&str], len: usize) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update([0u8]);
        }
        h.update(p.as_bytes());
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    hex.chars().take(len).collect()
}

/// Names of a workflow's own objects. The workflow key is a hash of the workflow id, not its
/// leading characters: UUIDv7 ids created in the same millisecond share their first digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowNames {
    /// `piculet-<key>`: the headless Service, and every pod's `subdomain`.
    pub service: String,
    pub workspace: String,
    pub secret: String,
    pub registry_secret: String,
}

impl WorkflowNames {
    pub fn new(workflow_id: &Uuid) -> WorkflowNames {
        let key = short_hash(&[&workflow_id.to_string()], 10);
        let service = format!("piculet-{key}");
        WorkflowNames {
            workspace: format!("{service}-workspace"),
            secret: format!("{service}-secrets"),
            registry_secret: format!("{service}-registry"),
            service,
        }
    }
}

/// The pod of one attempt of one step: `<slug>-<hash>`, the hash over workflow id, step name
/// and attempt. The slug starts with a letter (`s-` is put before a leading digit) so the
/// name reads the same everywhere; `step` stands in when nothing of the name is ASCII.
pub fn pod_name(workflow_id: &Uuid, step: &str, attempt: u32) -> String {
    let hash = short_hash(&[&workflow_id.to_string(), step, &attempt.to_string()], 10);
    let mut s = slug(step, MAX_LABEL - hash.len() - 3);
    if s.is_empty() {
        s = "step".to_string();
    } else if s.starts_with(|c: char| c.is_ascii_digit()) {
        s = format!("s-{s}");
    }
    format!("{s}-{hash}")
}

/// The pod's hostname, by which other pods of the workflow reach it: the step or service name
/// itself when that is a DNS label (`postgres`), else its slug (`Postgres DB` → `postgres-db`),
/// else (nothing ASCII in it) `h-` and a hash of the name. Two names with one hostname are
/// refused by the renderer.
pub fn hostname(name: &str) -> String {
    if is_dns_label(name) {
        return name.to_string();
    }
    let s = slug(name, MAX_LABEL);
    if s.is_empty() {
        format!("h-{}", short_hash(&[name], 10))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wf() -> Uuid {
        Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001)
    }

    #[test]
    fn labels_and_slugs() {
        assert!(is_dns_label("a"));
        assert!(is_dns_label("build-1"));
        assert!(!is_dns_label("Build"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns1035_label("piculet-1"));
        assert!(!is_dns1035_label("1abc"));
        assert_eq!(slug("Build & Test (Go 1.22)", 63), "build-test-go-1-22");
        assert_eq!(slug("ünïcødé ✓", 63), "n-c-d");
        assert_eq!(slug("日本語", 63), "");
        assert_eq!(slug("abc---def", 5), "abc-d");
        assert_eq!(slug("abc---def", 4), "abc");
    }

    #[test]
    fn pod_names_are_valid_unique_and_stable() {
        let long =
            "a very long step name that goes on and on well beyond sixty-three characters in total";
        let names = [
            "build",
            "Build",
            "build ",
            long,
            &format!("{long}!"),
            "日本語のステップ",
            "日本語のステップ2",
            "42",
            "---",
            "",
            "UPPER_case.with.dots",
        ];
        let mut seen = std::collections::BTreeSet::new();
        for n in names {
            let p = pod_name(&wf(), n, 1);
            assert!(is_dns1035_label(&p), "{n:?} -> {p:?}");
            assert!(seen.insert(p.clone()), "duplicate {p}");
            assert_eq!(p, pod_name(&wf(), n, 1), "stable");
            assert_ne!(p, pod_name(&wf(), n, 2), "new attempt, new pod");
            let other = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);
            assert_ne!(p, pod_name(&other, n, 1), "workflows do not clash");
        }
        assert_eq!(pod_name(&wf(), "build", 1), pod_name(&wf(), "build", 1));
        assert!(pod_name(&wf(), "build", 1).starts_with("build-"));
        assert!(pod_name(&wf(), "42", 1).starts_with("s-42-"));
        assert!(pod_name(&wf(), "日本語", 1).starts_with("step-"));
    }

    #[test]
    fn hostnames() {
        assert_eq!(hostname("postgres"), "postgres");
        assert_eq!(hostname("My DB"), "my-db");
        assert_eq!(hostname("my db"), "my-db", "the renderer refuses the clash");
        assert!(is_dns_label(&hostname("日本")));
        assert!(is_dns_label(&hostname(&"x".repeat(200))));
    }

    #[test]
    fn workflow_names() {
        let n = WorkflowNames::new(&wf());
        for s in [&n.service, &n.workspace, &n.secret, &n.registry_secret] {
            assert!(is_dns1035_label(s), "{s}");
        }
        assert!(n.workspace.starts_with(&n.service));
        let m = WorkflowNames::new(&Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002));
        assert_ne!(n.service, m.service);
    }
}
