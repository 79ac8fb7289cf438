//! The API server's own validation of the objects piculet renders: the rules of Kubernetes'
//! `pkg/apis/core/validation` (v1.34, the version of recording 82) that bear on what a pipeline
//! can put into a pod, a Secret, the headless Service or the workspace claim. Rendering holds
//! every object to them before anything is sent, so what the API server would refuse with 422
//! when a step starts is refused at submission instead, naming the field as the API server names
//! it and saying the rule in its words. Pure: objects in, field errors out.
//!
//! The rules, in our words (each is a function below, in the order the API server applies them):
//! - names: pods, Secrets and claims are DNS subdomains (at most 253 characters), the Service a
//!   DNS-1035 label, the namespace, container, volumes, `hostname` and `subdomain` DNS labels
//!   (at most 63); service account, runtime class and priority class names are DNS subdomains;
//! - labels (and `nodeSelector`, the Service's selector): keys are `[prefix/]name`, the prefix a
//!   DNS subdomain, the name at most 63 letters, digits, `-`, `_` and `.`, starting and ending
//!   with a letter or digit; values empty or the same alphabet, at most 63;
//! - annotations: keys as label keys (case does not matter); keys and values together at most
//!   256 KiB;
//! - tolerations: an empty key needs `operator: Exists`; `Exists` takes no value, `Equal` a
//!   label value; `effect` is `NoSchedule`, `PreferNoSchedule` or `NoExecute`, and must be
//!   `NoExecute` when `tolerationSeconds` is set;
//! - affinity: `In`/`NotIn` need values, `Exists`/`DoesNotExist` take none, `Gt`/`Lt` exactly
//!   one; keys are label keys; required node terms at least one, their values label values;
//!   field selectors only `metadata.name` with `In`/`NotIn` and one node name; weights 1 to 100;
//!   pod (anti-)affinity terms need a topology key and valid label selectors and namespaces;
//! - quantities: not negative; a request at most its limit; resources are `cpu`, `memory`,
//!   `ephemeral-storage`, `hugepages-*` or extended (`domain/name`), extended ones whole numbers
//!   with request equal to limit;
//! - environment variables: a name of printable ASCII other than `=`, not empty; a Secret
//!   reference names a DNS subdomain and a key of letters, digits, `-`, `_` and `.`;
//! - mounts: each names a volume of the pod, has a path, and no two share one; a `subPath` is
//!   relative and has no `..` (the API server does not require absolute mount paths nor refuse
//!   `:`; the container runtime does, at start);
//! - DNS config: at most 3 nameservers, each an IP address; at most 32 search domains of at most
//!   2048 characters in all, each a DNS subdomain (underscores allowed); options named;
//!   `dnsPolicy: None` needs a nameserver;
//! - security contexts: user and group ids 0 to 2147483647; `fsGroupChangePolicy` `Always` or
//!   `OnRootMismatch`; seccomp and AppArmor types `RuntimeDefault`, `Localhost` or `Unconfined`,
//!   a `localhostProfile` exactly with `Localhost` (seccomp: relative, no `..`; AppArmor: not
//!   padded with white space, at most 4095 characters); `allowPrivilegeEscalation: false` not
//!   with `privileged: true`;
//! - host aliases: an IP address and hostnames that are DNS subdomains;
//! - the rest of what piculet sets: an image without surrounding white space, ports 1 to 65535
//!   over TCP, UDP or SCTP, pull and restart policies, `activeDeadlineSeconds` 1 to 2147483647;
//!   Secret keys and at most 1 MiB of data; claims with access modes and a positive storage
//!   request.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{
    Affinity, AppArmorProfile, Container, NodeSelectorRequirement, NodeSelectorTerm,
    PersistentVolumeClaim, Pod, PodAffinityTerm, PodDNSConfig, PodSecurityContext, PodSpec,
    ResourceRequirements, SeccompProfile, Secret, SecurityContext, Service, Toleration, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::quantity::Quantity;

/// The largest total size of an object's annotations, keys and values together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// The largest total size of a Secret's data.
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;
/// At most this many nameservers (glibc's limit).
pub const MAX_NAMESERVERS: usize = 3;
/// At most this many search domains.
pub const MAX_SEARCHES: usize = 32;
/// At most this many characters in the search list, spaces included.
pub const MAX_SEARCH_CHARS: usize = 2048;
const MAX_APPARMOR_PROFILE: usize = 4095;
const MAX_ID: i64 = 2_147_483_647;

/// How the API server classes a refused field (a `Status` cause's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Invalid,
    Required,
    Forbidden,
    NotSupported,
    TooLong,
    Duplicate,
    NotFound,
}

impl Kind {
    /// The cause's `reason`, e.g. `FieldValueInvalid`.
    pub fn reason(self) -> &'static str {
        match self {
            Kind::Invalid => "FieldValueInvalid",
            Kind::Required => "FieldValueRequired",
            Kind::Forbidden => "FieldValueForbidden",
            Kind::NotSupported => "FieldValueNotSupported",
            Kind::TooLong => "FieldValueTooLong",
            Kind::Duplicate => "FieldValueDuplicate",
            Kind::NotFound => "FieldValueNotFound",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Kind::Invalid => "Invalid value",
            Kind::Required => "Required value",
            Kind::Forbidden => "Forbidden",
            Kind::NotSupported => "Unsupported value",
            Kind::TooLong => "Too long",
            Kind::Duplicate => "Duplicate value",
            Kind::NotFound => "Not found",
        }
    }

    /// Kinds whose message shows no value.
    fn shows_value(self) -> bool {
        !matches!(self, Kind::Required | Kind::Forbidden | Kind::TooLong)
    }
}

/// One field the API server would refuse, as a cause of its 422 `Status` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The API server's field path, e.g. `spec.tolerations[0].effect`.
    pub field: String,
    pub kind: Kind,
    /// The refused value as text (`NoSchedule`, `3600`); empty where there is none.
    pub value: String,
    /// The value as the API server prints it (`"NoSchedule"`, `3600`, `[]string{"a"}`).
    shown: String,
    /// The rule, in the API server's words.
    pub detail: String,
    /// For an error about one key of a map field (labels, annotations, `nodeSelector`,
    /// resources, Secret data): that key.
    pub key: Option<String>,
}

impl FieldError {
    /// The cause's message: `Invalid value: "NoSchedule": effect must be 'NoExecute' when …`.
    pub fn message(&self) -> String {
        let mut s = self.kind.words().to_string();
        if self.kind.shows_value() {
            s.push_str(": ");
            s.push_str(&self.shown);
        }
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }

    /// The rule in the API server's words: the detail, or what the kind says where there is
    /// none (`Duplicate value`).
    pub fn rule(&self) -> String {
        if self.detail.is_empty() {
            self.kind.words().to_string()
        } else {
            self.detail.clone()
        }
    }
}

/// A value as the API server prints it in a message (Go's `%q` for text, `%v` for numbers).
enum Shown<'a> {
    Text(&'a str),
    Int(i64),
    List(&'a [String]),
    /// A structure: shown as its JSON.
    Json(String),
}

impl Shown<'_> {
    fn render(&self) -> (String, String) {
        match self {
            Shown::Text(s) => (s.to_string(), go_quote(s)),
            Shown::Int(i) => (i.to_string(), i.to_string()),
            Shown::List(items) => {
                let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
                (
                    serde_json::to_string(items).unwrap_or_default(),
                    format!("[]string{{{}}}", quoted.join(", ")),
                )
            }
            Shown::Json(j) => (j.clone(), j.clone()),
        }
    }
}

/// Go's `strconv.Quote` for the characters a field can hold.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Collects field errors, in the order the API server finds them.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: &str, kind: Kind, value: Shown, detail: &str, key: Option<&str>) {
        let (value, shown) = value.render();
        self.0.push(FieldError {
            field: field.to_string(),
            kind,
            value,
            shown,
            detail: detail.to_string(),
            key: key.map(str::to_string),
        });
    }

    fn invalid(&mut self, field: &str, value: &str, detail: &str) {
        self.push(field, Kind::Invalid, Shown::Text(value), detail, None);
    }

    fn invalid_key(&mut self, field: &str, value: &str, detail: &str, key: &str) {
        self.push(field, Kind::Invalid, Shown::Text(value), detail, Some(key));
    }

    fn invalid_int(&mut self, field: &str, value: i64, detail: &str) {
        self.push(field, Kind::Invalid, Shown::Int(value), detail, None);
    }

    fn required(&mut self, field: &str, detail: &str) {
        self.push(field, Kind::Required, Shown::Text(""), detail, None);
    }

    fn forbidden(&mut self, field: &str, detail: &str) {
        self.push(field, Kind::Forbidden, Shown::Text(""), detail, None);
    }

    fn not_supported(&mut self, field: &str, value: &str, supported: &[&str]) {
        let quoted: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
        let detail = format!("supported values: {}", quoted.join(", "));
        self.push(field, Kind::NotSupported, Shown::Text(value), &detail, None);
    }

    fn duplicate(&mut self, field: &str, value: &str) {
        self.push(field, Kind::Duplicate, Shown::Text(value), "", None);
    }

    /// Each message of a format check of `value` at `field`.
    fn each(&mut self, field: &str, value: &str, messages: Vec<String>) {
        for m in messages {
            self.invalid(field, value, &m);
        }
    }
}

// ---- formats (apimachinery's `util/validation`) -------------------------------------------------

const DNS1123_LABEL: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_UNDERSCORE: &str =
    "_?[a-z0-9]([-_a-z0-9]*[a-z0-9])?(\\._?[a-z0-9]([-_a-z0-9]*[a-z0-9])?)*";
const DNS1035_LABEL: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const LABEL_KEY_NAME: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const CONFIG_KEY: &str = "[-._a-zA-Z0-9]+";

/// `RegexError` of apimachinery: the message, examples and the expression.
fn regex_error(message: &str, expression: &str, examples: &[&str]) -> String {
    let examples: Vec<String> = examples.iter().map(|e| format!("'{e}', ")).collect();
    format!(
        "{message} (e.g. {}regex used for validation is '{expression}')",
        examples.join(" or ")
    )
}

fn max_len(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// Whether `s` has the form of a lowercase RFC 1123 label (`_` allowed too, and to start it,
/// when `underscore`), whatever its length.
pub(crate) fn lower_label(s: &str, underscore: bool) -> bool {
    let b = s.as_bytes();
    let body = if underscore && b.first() == Some(&b'_') {
        &b[1..]
    } else {
        b
    };
    let ok_end = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !body.is_empty()
        && body.first().is_some_and(ok_end)
        && body.last().is_some_and(ok_end)
        && body
            .iter()
            .all(|c| ok_end(c) || *c == b'-' || (underscore && *c == b'_'))
}

/// Whether `s` has the form of a lowercase RFC 1123 subdomain, whatever its length.
pub(crate) fn subdomain_matches(s: &str, underscore: bool) -> bool {
    s.split('.').all(|l| lower_label(l, underscore))
}

/// A lowercase RFC 1123 label (container, volume, namespace names; `hostname`).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(max_len(63));
    }
    if !lower_label(s, false) {
        if subdomain_matches(s, false) {
            out.push("must not contain dots".to_string());
        } else {
            out.push(regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character",
                DNS1123_LABEL,
                &["my-name", "123-abc"],
            ));
        }
    }
    out
}

/// A lowercase RFC 1123 subdomain (pod, Secret, claim names; host alias names).
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push(max_len(253));
    }
    if !subdomain_matches(s, false) {
        out.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            DNS1123_SUBDOMAIN,
            &["example.com"],
        ));
    }
    out
}

fn dns1123_subdomain_underscore(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push(max_len(253));
    }
    if !subdomain_matches(s, true) {
        out.push(regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '_', '-' or '.', and must start and end with an alphanumeric character",
            DNS1123_SUBDOMAIN_UNDERSCORE,
            &["example.com"],
        ));
    }
    out
}

/// An RFC 1035 label (Service names).
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(max_len(63));
    }
    if !(lower_label(s, false) && s.starts_with(|c: char| c.is_ascii_lowercase())) {
        out.push(regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            DNS1035_LABEL,
            &["my-name", "abc-123"],
        ));
    }
    out
}

/// Whether `s` has the form of a label's name part or value, whatever its length.
pub(crate) fn label_name_matches(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter()
            .all(|c| is_alnum(*c) || matches!(c, b'-' | b'_' | b'.'))
}

const LABEL_KEY_MESSAGE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";

/// A label key ("qualified name"): `[prefix/]name`.
pub fn label_key(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let name = match s.split_once('/') {
        None => s,
        Some((_, rest)) if rest.contains('/') => {
            out.push(format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    LABEL_KEY_MESSAGE,
                    LABEL_KEY_NAME,
                    &["MyName", "my.name", "123-abc"]
                )
            ));
            return out;
        }
        Some((prefix, name)) => {
            if prefix.is_empty() {
                out.push("prefix part must be non-empty".to_string());
            } else {
                out.extend(
                    dns1123_subdomain(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            name
        }
    };
    if name.is_empty() {
        out.push("name part must be non-empty".to_string());
    } else if name.len() > 63 {
        out.push(format!("name part {}", max_len(63)));
    }
    if !label_name_matches(name) {
        out.push(format!(
            "name part {}",
            regex_error(
                LABEL_KEY_MESSAGE,
                LABEL_KEY_NAME,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    out
}

/// A label value: empty, or at most 63 of the label-name alphabet.
pub fn label_value(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(max_len(63));
    }
    if !(s.is_empty() || label_name_matches(s)) {
        out.push(regex_error(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
            LABEL_VALUE,
            &["MyValue", "my_value", "12345"],
        ));
    }
    out
}

/// A key of a Secret or ConfigMap.
pub fn config_key(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push(max_len(253));
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.'))
    {
        out.push(regex_error(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            CONFIG_KEY,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    match s {
        "." => out.push("must not be '.'".to_string()),
        ".." => out.push("must not be '..'".to_string()),
        _ if s.starts_with("..") => out.push("must not start with '..'".to_string()),
        _ => {}
    }
    out
}

/// An environment variable name, as Kubernetes has taken them since v1.34 (relaxed
/// validation): printable ASCII other than `=`.
pub fn env_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.is_empty() {
        out.push("environment variable name must be non-empty".to_string());
    }
    if s.chars().any(|c| !(' '..='~').contains(&c) || c == '=') {
        out.push(
            "a valid environment variable name must consist only of printable ASCII characters other than '='"
                .to_string(),
        );
    }
    out
}

/// An IP address as the API server reads it (Go's `ParseIPSloppy`: IPv4 parts may have
/// leading zeros).
pub fn is_ip(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) && {
                p.parse::<u16>().is_ok_and(|n| n <= 255)
            }
        })
}

const IP_MESSAGE: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

fn range(lo: i64, hi: i64) -> String {
    format!("must be between {lo} and {hi}, inclusive")
}

/// A path that stays below its root: relative, without a `..` element.
fn descending_path(e: &mut Errors, field: &str, path: &str) {
    if path.starts_with('/') {
        e.invalid(field, path, "must be a relative path");
    }
    if path.split('/').any(|p| p == "..") {
        e.invalid(field, path, "must not contain '..'");
    }
}

// ---- objects ------------------------------------------------------------------------------------

/// How an object's name is checked.
#[derive(Clone, Copy)]
enum NameRule {
    Subdomain,
    Dns1035,
}

fn object_meta(e: &mut Errors, meta: &ObjectMeta, rule: NameRule) {
    match meta.name.as_deref().unwrap_or_default() {
        "" => e.required("metadata.name", "name or generateName is required"),
        name => {
            let messages = match rule {
                NameRule::Subdomain => dns1123_subdomain(name),
                NameRule::Dns1035 => dns1035_label(name),
            };
            e.each("metadata.name", name, messages);
        }
    }
    if let Some(ns) = meta.namespace.as_deref() {
        e.each("metadata.namespace", ns, dns1123_label(ns));
    }
    labels(e, "metadata.labels", meta.labels.as_ref());
    if let Some(annotations) = &meta.annotations {
        let mut size = 0usize;
        for (k, v) in annotations {
            for m in label_key(&k.to_lowercase()) {
                e.invalid_key("metadata.annotations", k, &m, k);
            }
            size = size.saturating_add(k.len()).saturating_add(v.len());
        }
        if size > MAX_ANNOTATIONS_BYTES {
            e.push(
                "metadata.annotations",
                Kind::TooLong,
                Shown::Text(""),
                &format!("must have at most {MAX_ANNOTATIONS_BYTES} bytes"),
                None,
            );
        }
    }
}

/// A map of labels (also `nodeSelector` and a Service's selector): keys and values.
fn labels(e: &mut Errors, field: &str, map: Option<&BTreeMap<String, String>>) {
    for (k, v) in map.into_iter().flatten() {
        for m in label_key(k) {
            e.invalid_key(field, k, &m, k);
        }
        for m in label_value(v) {
            e.invalid_key(field, v, &m, k);
        }
    }
}

/// Everything the API server would refuse in a pod piculet renders.
pub fn pod(pod: &Pod) -> Vec<FieldError> {
    let mut e = Errors::default();
    object_meta(&mut e, &pod.metadata, NameRule::Subdomain);
    let Some(spec) = &pod.spec else {
        e.required("spec.containers", "");
        return e.0;
    };
    pod_spec(&mut e, spec);
    for (i, c) in spec.containers.iter().enumerate() {
        let image = c.image.as_deref().unwrap_or_default();
        if !image.is_empty() && image.trim() != image {
            e.invalid(
                &format!("spec.containers[{i}].image"),
                image,
                "must not have leading or trailing whitespace",
            );
        }
    }
    e.0
}

fn pod_spec(e: &mut Errors, spec: &PodSpec) {
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    pod_volumes(e, volumes);
    // Sets, not lists: a step may have thousands of volumes and mounts, and checking each
    // against a list costs the square of their number.
    let volume_names: HashSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    if spec.containers.is_empty() {
        e.required("spec.containers", "");
    }
    let mut names: HashSet<&str> = HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let path = format!("spec.containers[{i}]");
        container(e, &path, c, &volume_names);
        if !names.insert(&c.name) {
            e.duplicate(&format!("{path}.name"), &c.name);
        }
    }
    if let Some(p) = &spec.restart_policy {
        const POLICIES: [&str; 3] = ["Always", "OnFailure", "Never"];
        if p.is_empty() {
            e.required("spec.restartPolicy", "");
        } else if !POLICIES.contains(&p.as_str()) {
            e.not_supported("spec.restartPolicy", p, &POLICIES);
        }
    }
    if let Some(p) = &spec.dns_policy {
        const POLICIES: [&str; 4] = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
        if !POLICIES.contains(&p.as_str()) {
            e.not_supported("spec.dnsPolicy", p, &POLICIES);
        }
    }
    labels(e, "spec.nodeSelector", spec.node_selector.as_ref());
    if let Some(sc) = &spec.security_context {
        pod_security_context(e, sc);
    }
    if let Some(a) = &spec.affinity {
        affinity(e, a);
    }
    dns_config(e, spec.dns_config.as_ref(), spec.dns_policy.as_deref());
    for (field, value) in [
        ("spec.serviceAccountName", &spec.service_account_name),
        ("spec.priorityClassName", &spec.priority_class_name),
        ("spec.runtimeClassName", &spec.runtime_class_name),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            e.each(field, v, dns1123_subdomain(v));
        }
    }
    if let Some(d) = spec.active_deadline_seconds
        && !(1..=MAX_ID).contains(&d)
    {
        e.invalid_int("spec.activeDeadlineSeconds", d, &range(1, MAX_ID));
    }
    for (field, value) in [
        ("spec.hostname", &spec.hostname),
        ("spec.subdomain", &spec.subdomain),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            e.each(field, v, dns1123_label(v));
        }
    }
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        toleration(e, &format!("spec.tolerations[{i}]"), t);
    }
    for (i, alias) in spec.host_aliases.iter().flatten().enumerate() {
        let path = format!("spec.hostAliases[{i}]");
        if !is_ip(&alias.ip) {
            e.invalid(&format!("{path}.ip"), &alias.ip, IP_MESSAGE);
        }
        for (j, host) in alias.hostnames.iter().flatten().enumerate() {
            e.each(
                &format!("{path}.hostnames[{j}]"),
                host,
                dns1123_subdomain(host),
            );
        }
    }
}

fn pod_volumes(e: &mut Errors, volumes: &[Volume]) {
    let mut names: HashSet<&str> = HashSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let path = format!("spec.volumes[{i}]");
        let name_path = format!("{path}.name");
        if v.name.is_empty() {
            e.required(&name_path, "");
        } else {
            e.each(&name_path, &v.name, dns1123_label(&v.name));
        }
        if !names.insert(&v.name) {
            e.duplicate(&name_path, &v.name);
        }
        if let Some(claim) = &v.persistent_volume_claim
            && claim.claim_name.is_empty()
        {
            e.required(&format!("{path}.persistentVolumeClaim.claimName"), "");
        }
        if let Some(secret) = &v.secret {
            let secret_path = format!("{path}.secret");
            if secret.secret_name.as_deref().unwrap_or_default().is_empty() {
                e.required(&format!("{secret_path}.secretName"), "");
            }
            for (j, item) in secret.items.iter().flatten().enumerate() {
                let item_path = format!("{secret_path}.items[{j}]");
                if item.key.is_empty() {
                    e.required(&format!("{item_path}.key"), "");
                }
                if item.path.is_empty() {
                    e.required(&format!("{item_path}.path"), "");
                } else {
                    let field = format!("{item_path}.path");
                    descending_path(e, &field, &item.path);
                    if item.path.starts_with("..") {
                        e.invalid(&field, &item.path, "must not start with '..'");
                    }
                }
            }
        }
    }
}

fn container(e: &mut Errors, path: &str, c: &Container, volumes: &HashSet<&str>) {
    let name_path = format!("{path}.name");
    if c.name.is_empty() {
        e.required(&name_path, "");
    } else {
        e.each(&name_path, &c.name, dns1123_label(&c.name));
    }
    if c.image.as_deref().unwrap_or_default().is_empty() {
        e.required(&format!("{path}.image"), "");
    }
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let port_path = format!("{path}.ports[{i}]");
        if p.container_port == 0 {
            e.required(&format!("{port_path}.containerPort"), "");
        } else if !(1..=65535).contains(&p.container_port) {
            e.invalid_int(
                &format!("{port_path}.containerPort"),
                i64::from(p.container_port),
                &range(1, 65535),
            );
        }
        const PROTOCOLS: [&str; 3] = ["SCTP", "TCP", "UDP"];
        match p.protocol.as_deref() {
            Some(proto) if !PROTOCOLS.contains(&proto) => {
                e.not_supported(&format!("{port_path}.protocol"), proto, &PROTOCOLS)
            }
            _ => {}
        }
    }
    for (i, var) in c.env.iter().flatten().enumerate() {
        let var_path = format!("{path}.env[{i}]");
        if var.name.is_empty() {
            e.required(&format!("{var_path}.name"), "");
        } else {
            e.each(&format!("{var_path}.name"), &var.name, env_name(&var.name));
        }
        if let Some(reference) = var
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
        {
            let ref_path = format!("{var_path}.valueFrom.secretKeyRef");
            e.each(
                &format!("{ref_path}.name"),
                &reference.name,
                dns1123_subdomain(&reference.name),
            );
            if reference.key.is_empty() {
                e.required(&format!("{ref_path}.key"), "");
            } else {
                e.each(
                    &format!("{ref_path}.key"),
                    &reference.key,
                    config_key(&reference.key),
                );
            }
        }
    }
    let mut paths: HashSet<&str> = HashSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mount_path = format!("{path}.volumeMounts[{i}]");
        if m.name.is_empty() {
            e.required(&format!("{mount_path}.name"), "");
        }
        if !volumes.contains(m.name.as_str()) {
            e.push(
                &format!("{mount_path}.name"),
                Kind::NotFound,
                Shown::Text(&m.name),
                "",
                None,
            );
        }
        if m.mount_path.is_empty() {
            e.required(&format!("{mount_path}.mountPath"), "");
        }
        if !paths.insert(&m.mount_path) {
            e.invalid(
                &format!("{mount_path}.mountPath"),
                &m.mount_path,
                "must be unique",
            );
        }
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            // The API server names the list here, not the mount (`volumeMounts.subPath`).
            descending_path(e, &format!("{path}.volumeMounts.subPath"), sub);
        }
    }
    if let Some(p) = &c.image_pull_policy {
        const POLICIES: [&str; 3] = ["Always", "IfNotPresent", "Never"];
        if !POLICIES.contains(&p.as_str()) {
            e.not_supported(&format!("{path}.imagePullPolicy"), p, &POLICIES);
        }
    }
    if let Some(r) = &c.resources {
        resources(e, &format!("{path}.resources"), r);
    }
    if let Some(sc) = &c.security_context {
        container_security_context(e, &format!("{path}.securityContext"), sc);
    }
}

fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

fn is_hugepages(name: &str) -> bool {
    name.starts_with("hugepages-")
}

/// Resources whose request may be below their limit: native ones but huge pages.
fn overcommit_allowed(name: &str) -> bool {
    is_native_resource(name) && !is_hugepages(name)
}

fn resource_name(e: &mut Errors, field: &str, name: &str) {
    for m in label_key(name) {
        e.invalid_key(field, name, &m, name);
    }
    if !name.contains('/') {
        if !matches!(name, "cpu" | "memory" | "ephemeral-storage") && !is_hugepages(name) {
            e.invalid_key(
                field,
                name,
                "must be a standard resource for containers",
                name,
            );
        }
    } else if !is_native_resource(name)
        && (name.starts_with("requests.") || !label_key(&format!("requests.{name}")).is_empty())
    {
        e.invalid_key(
            field,
            name,
            "doesn't follow extended resource name standard",
            name,
        );
    }
}

/// A resource's quantity, or why it is none.
fn quantity(e: &mut Errors, field: &str, name: &str, text: &str) -> Option<Quantity> {
    if let Some(positive) = text.trim().strip_prefix('-')
        && Quantity::parse(positive).is_ok()
    {
        e.invalid_key(field, text, "must be greater than or equal to 0", name);
        return None;
    }
    match Quantity::parse(text) {
        Ok(q) => {
            // Extended resources are counted in whole units.
            if !is_native_resource(name) && q.nanos() % 1_000_000_000 != 0 {
                e.invalid_key(field, text, "must be an integer", name);
            }
            Some(q)
        }
        Err(_) => {
            e.invalid_key(
                field,
                text,
                "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                name,
            );
            None
        }
    }
}

fn resources(e: &mut Errors, path: &str, r: &ResourceRequirements) {
    let limits_path = format!("{path}.limits");
    let requests_path = format!("{path}.requests");
    let mut limits: BTreeMap<&str, Quantity> = BTreeMap::new();
    for (name, q) in r.limits.iter().flatten() {
        let field = format!("{limits_path}[{name}]");
        resource_name(e, &field, name);
        if let Some(q) = quantity(e, &field, name, &q.0) {
            limits.insert(name, q);
        }
    }
    for (name, q) in r.requests.iter().flatten() {
        let field = format!("{requests_path}[{name}]");
        resource_name(e, &field, name);
        let Some(request) = quantity(e, &field, name, &q.0) else {
            continue;
        };
        match limits.get(name.as_str()) {
            Some(limit) if request != *limit && !overcommit_allowed(name) => e.invalid_key(
                &requests_path,
                &q.0,
                &format!("must be equal to {name} limit of {limit}"),
                name,
            ),
            Some(limit) if request > *limit => e.invalid_key(
                &requests_path,
                &q.0,
                &format!("must be less than or equal to {name} limit of {limit}"),
                name,
            ),
            None if !overcommit_allowed(name) => e.push(
                &limits_path,
                Kind::Required,
                Shown::Text(""),
                "Limit must be set for non overcommitable resources",
                Some(name),
            ),
            _ => {}
        }
    }
}

fn ids(e: &mut Errors, path: &str, fields: &[(&str, Option<i64>)]) {
    for (name, value) in fields {
        if let Some(v) = *value
            && !(0..=MAX_ID).contains(&v)
        {
            e.invalid_int(&format!("{path}.{name}"), v, &range(0, MAX_ID));
        }
    }
}

fn pod_security_context(e: &mut Errors, sc: &PodSecurityContext) {
    let path = "spec.securityContext";
    ids(
        e,
        path,
        &[
            ("fsGroup", sc.fs_group),
            ("runAsUser", sc.run_as_user),
            ("runAsGroup", sc.run_as_group),
        ],
    );
    if let Some(p) = &sc.fs_group_change_policy {
        const POLICIES: [&str; 2] = ["Always", "OnRootMismatch"];
        if !POLICIES.contains(&p.as_str()) {
            e.not_supported(&format!("{path}.fsGroupChangePolicy"), p, &POLICIES);
        }
    }
    if let Some(p) = &sc.seccomp_profile {
        seccomp(e, &format!("{path}.seccompProfile"), p);
    }
    if let Some(p) = &sc.app_armor_profile {
        apparmor(e, &format!("{path}.appArmorProfile"), p);
    }
}

fn container_security_context(e: &mut Errors, path: &str, sc: &SecurityContext) {
    ids(
        e,
        path,
        &[
            ("runAsUser", sc.run_as_user),
            ("runAsGroup", sc.run_as_group),
        ],
    );
    if let Some(p) = &sc.seccomp_profile {
        seccomp(e, &format!("{path}.seccompProfile"), p);
    }
    if sc.allow_privilege_escalation == Some(false) && sc.privileged == Some(true) {
        e.push(
            path,
            Kind::Invalid,
            Shown::Json(serde_json::to_string(sc).unwrap_or_default()),
            "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
            None,
        );
    }
    if let Some(p) = &sc.app_armor_profile {
        apparmor(e, &format!("{path}.appArmorProfile"), p);
    }
}

const PROFILE_TYPES: [&str; 3] = ["Localhost", "RuntimeDefault", "Unconfined"];

fn seccomp(e: &mut Errors, path: &str, p: &SeccompProfile) {
    match p.type_.as_str() {
        "" => e.required(
            &format!("{path}.type"),
            "type is required when seccompProfile is set",
        ),
        t if !PROFILE_TYPES.contains(&t) => {
            e.not_supported(&format!("{path}.type"), t, &PROFILE_TYPES)
        }
        _ => {}
    }
    let field = format!("{path}.localhostProfile");
    match (p.type_.as_str(), p.localhost_profile.as_deref()) {
        ("Localhost", None) => e.required(&field, "must be set when seccomp type is Localhost"),
        ("Localhost", Some(profile)) => descending_path(e, &field, profile),
        (_, Some(_)) => e.push(
            &field,
            Kind::Invalid,
            Shown::Json(serde_json::to_string(p).unwrap_or_default()),
            "can only be set when seccomp type is Localhost",
            None,
        ),
        (_, None) => {}
    }
}

fn apparmor(e: &mut Errors, path: &str, p: &AppArmorProfile) {
    let field = format!("{path}.localhostProfile");
    match p.type_.as_str() {
        "Localhost" => match p.localhost_profile.as_deref() {
            None => e.required(&field, "must be set when AppArmor type is Localhost"),
            Some(profile) => {
                if profile.trim() != profile {
                    e.invalid(&field, profile, "must not be padded with whitespace");
                } else if profile.is_empty() {
                    e.required(&field, "must be set when AppArmor type is Localhost");
                }
                if profile.len() > MAX_APPARMOR_PROFILE {
                    e.push(
                        &field,
                        Kind::TooLong,
                        Shown::Text(""),
                        &format!("must have at most {MAX_APPARMOR_PROFILE} bytes"),
                        None,
                    );
                }
            }
        },
        "RuntimeDefault" | "Unconfined" => {
            if let Some(profile) = &p.localhost_profile {
                e.invalid(
                    &field,
                    profile,
                    "can only be set when AppArmor type is Localhost",
                );
            }
        }
        "" => e.required(
            &format!("{path}.type"),
            "type is required when appArmorProfile is set",
        ),
        t => e.not_supported(&format!("{path}.type"), t, &PROFILE_TYPES),
    }
}

fn toleration(e: &mut Errors, path: &str, t: &Toleration) {
    let key = t.key.as_deref().unwrap_or_default();
    let operator = t.operator.as_deref().unwrap_or_default();
    let value = t.value.as_deref().unwrap_or_default();
    let effect = t.effect.as_deref().unwrap_or_default();
    if !key.is_empty() {
        e.each(&format!("{path}.key"), key, label_key(key));
    }
    if key.is_empty() && operator != "Exists" {
        e.invalid(
            &format!("{path}.operator"),
            operator,
            "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
        );
    }
    if t.toleration_seconds.is_some() && effect != "NoExecute" {
        e.invalid(
            &format!("{path}.effect"),
            effect,
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        );
    }
    match operator {
        "Equal" | "" => {
            let messages = label_value(value);
            if !messages.is_empty() {
                e.invalid(&format!("{path}.operator"), value, &messages.join(";"));
            }
        }
        "Exists" => {
            if !value.is_empty() {
                e.invalid(
                    &format!("{path}.operator"),
                    value,
                    "value must be empty when `operator` is 'Exists'",
                );
            }
        }
        other => e.not_supported(&format!("{path}.operator"), other, &["Equal", "Exists"]),
    }
    const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];
    if !effect.is_empty() && !EFFECTS.contains(&effect) {
        e.not_supported(&format!("{path}.effect"), effect, &EFFECTS);
    }
}

fn affinity(e: &mut Errors, a: &Affinity) {
    let path = "spec.affinity";
    if let Some(node) = &a.node_affinity {
        let node_path = format!("{path}.nodeAffinity");
        if let Some(required) = &node.required_during_scheduling_ignored_during_execution {
            let terms = format!(
                "{node_path}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
            );
            if required.node_selector_terms.is_empty() {
                e.required(&terms, "must have at least one node selector term");
            }
            for (i, term) in required.node_selector_terms.iter().enumerate() {
                node_selector_term(e, &format!("{terms}[{i}]"), term, true);
            }
        }
        for (i, preferred) in node
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .enumerate()
        {
            let term_path =
                format!("{node_path}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
            weight(e, &term_path, preferred.weight);
            node_selector_term(
                e,
                &format!("{term_path}.preference"),
                &preferred.preference,
                false,
            );
        }
    }
    let pod_affinities = [
        (
            "podAffinity",
            a.pod_affinity.as_ref().map(|p| {
                (
                    &p.required_during_scheduling_ignored_during_execution,
                    &p.preferred_during_scheduling_ignored_during_execution,
                )
            }),
        ),
        (
            "podAntiAffinity",
            a.pod_anti_affinity.as_ref().map(|p| {
                (
                    &p.required_during_scheduling_ignored_during_execution,
                    &p.preferred_during_scheduling_ignored_during_execution,
                )
            }),
        ),
    ];
    for (name, terms) in pod_affinities {
        let Some((required, preferred)) = terms else {
            continue;
        };
        let p = format!("{path}.{name}");
        for (i, term) in required.iter().flatten().enumerate() {
            pod_affinity_term(
                e,
                &format!("{p}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"),
                term,
            );
        }
        for (i, w) in preferred.iter().flatten().enumerate() {
            let term_path = format!("{p}.preferredDuringSchedulingIgnoredDuringExecution[{i}]");
            weight(e, &term_path, w.weight);
            pod_affinity_term(
                e,
                &format!("{term_path}.podAffinityTerm"),
                &w.pod_affinity_term,
            );
        }
    }
}

fn weight(e: &mut Errors, path: &str, w: i32) {
    if !(1..=100).contains(&w) {
        e.invalid_int(
            &format!("{path}.weight"),
            i64::from(w),
            "must be in the range 1-100",
        );
    }
}

fn node_selector_term(e: &mut Errors, path: &str, term: &NodeSelectorTerm, required: bool) {
    for (j, r) in term.match_expressions.iter().flatten().enumerate() {
        node_selector_requirement(e, &format!("{path}.matchExpressions[{j}]"), r, required);
    }
    for (j, r) in term.match_fields.iter().flatten().enumerate() {
        let p = format!("{path}.matchFields[{j}]");
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" | "NotIn" => {
                if values.len() != 1 {
                    e.required(
                        &format!("{p}.values"),
                        "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
                    );
                }
            }
            other => e.invalid(
                &format!("{p}.operator"),
                other,
                "not a valid selector operator",
            ),
        }
        if r.key != "metadata.name" {
            e.invalid(
                &format!("{p}.key"),
                &r.key,
                "not a valid field selector key",
            );
        } else {
            for (k, v) in values.iter().enumerate() {
                e.each(&format!("{p}.values[{k}]"), v, dns1123_subdomain(v));
            }
        }
    }
}

fn node_selector_requirement(
    e: &mut Errors,
    path: &str,
    r: &NodeSelectorRequirement,
    check_values: bool,
) {
    let values = r.values.as_deref().unwrap_or_default();
    let values_path = format!("{path}.values");
    match r.operator.as_str() {
        "In" | "NotIn" => {
            if values.is_empty() {
                e.required(
                    &values_path,
                    "must be specified when `operator` is 'In' or 'NotIn'",
                );
            }
        }
        "Exists" | "DoesNotExist" => {
            if !values.is_empty() {
                e.forbidden(
                    &values_path,
                    "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                );
            }
        }
        "Gt" | "Lt" => {
            if values.len() != 1 {
                e.required(
                    &values_path,
                    "must be specified single value when `operator` is 'Lt' or 'Gt'",
                );
            }
        }
        other => e.invalid(
            &format!("{path}.operator"),
            other,
            "not a valid selector operator",
        ),
    }
    e.each(&format!("{path}.key"), &r.key, label_key(&r.key));
    // Values of required terms must be label values; preferred ones may be anything (a
    // single-node cluster schedules them anyway).
    if check_values {
        for (i, v) in values.iter().enumerate() {
            e.each(&format!("{values_path}[{i}]"), v, label_value(v));
        }
    }
}

fn label_selector(e: &mut Errors, path: &str, s: &LabelSelector) {
    labels(e, &format!("{path}.matchLabels"), s.match_labels.as_ref());
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    e.required(
                        &format!("{p}.values"),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    );
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    e.forbidden(
                        &format!("{p}.values"),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    );
                }
            }
            other => e.invalid(
                &format!("{p}.operator"),
                other,
                "not a valid selector operator",
            ),
        }
        e.each(&format!("{p}.key"), &r.key, label_key(&r.key));
        for (j, v) in values.iter().enumerate() {
            e.each(&format!("{p}.values[{j}]"), v, label_value(v));
        }
    }
}

fn pod_affinity_term(e: &mut Errors, path: &str, t: &PodAffinityTerm) {
    if let Some(s) = &t.label_selector {
        label_selector(e, &format!("{path}.labelSelector"), s);
    }
    if let Some(s) = &t.namespace_selector {
        label_selector(e, &format!("{path}.namespaceSelector"), s);
    }
    for ns in t.namespaces.iter().flatten() {
        e.each(&format!("{path}.namespace"), ns, dns1123_label(ns));
    }
    let key_path = format!("{path}.topologyKey");
    if t.topology_key.is_empty() {
        e.required(&key_path, "can not be empty");
    }
    e.each(&key_path, &t.topology_key, label_key(&t.topology_key));
}

fn dns_config(e: &mut Errors, config: Option<&PodDNSConfig>, policy: Option<&str>) {
    let path = "spec.dnsConfig";
    let nameservers = config
        .and_then(|c| c.nameservers.as_deref())
        .unwrap_or_default();
    if policy == Some("None") {
        if config.is_none() {
            e.required(path, "must provide `dnsConfig` when `dnsPolicy` is None");
            return;
        }
        if nameservers.is_empty() {
            e.required(
                &format!("{path}.nameservers"),
                "must provide at least one DNS nameserver when `dnsPolicy` is None",
            );
            return;
        }
    }
    let Some(config) = config else {
        return;
    };
    if nameservers.len() > MAX_NAMESERVERS {
        e.push(
            &format!("{path}.nameservers"),
            Kind::Invalid,
            Shown::List(nameservers),
            &format!("must not have more than {MAX_NAMESERVERS} nameservers"),
            None,
        );
    }
    for (i, ns) in nameservers.iter().enumerate() {
        if !is_ip(ns) {
            e.invalid(&format!("{path}.nameservers[{i}]"), ns, IP_MESSAGE);
        }
    }
    let searches = config.searches.as_deref().unwrap_or_default();
    if searches.len() > MAX_SEARCHES {
        e.push(
            &format!("{path}.searches"),
            Kind::Invalid,
            Shown::List(searches),
            &format!("must not have more than {MAX_SEARCHES} search paths"),
            None,
        );
    }
    if searches.join(" ").len() > MAX_SEARCH_CHARS {
        e.push(
            &format!("{path}.searches"),
            Kind::Invalid,
            Shown::List(searches),
            &format!(
                "must not have more than {MAX_SEARCH_CHARS} characters (including spaces) in the search list"
            ),
            None,
        );
    }
    for (i, search) in searches.iter().enumerate() {
        if search != "." {
            let s = search.strip_suffix('.').unwrap_or(search);
            e.each(
                &format!("{path}.searches[{i}]"),
                s,
                dns1123_subdomain_underscore(s),
            );
        }
    }
    for (i, option) in config.options.iter().flatten().enumerate() {
        if option.name.as_deref().unwrap_or_default().is_empty() {
            e.required(&format!("{path}.options[{i}]"), "must not be empty");
        }
    }
}

/// Everything the API server would refuse in a Secret piculet renders (its `stringData` is
/// merged into `data` before the API server validates it).
pub fn secret(secret: &Secret) -> Vec<FieldError> {
    let mut e = Errors::default();
    object_meta(&mut e, &secret.metadata, NameRule::Subdomain);
    let mut size = 0usize;
    let mut keys: Vec<(&str, usize)> = Vec::new();
    for (k, v) in secret.data.iter().flatten() {
        keys.push((k, v.0.len()));
    }
    for (k, v) in secret.string_data.iter().flatten() {
        keys.push((k, v.len()));
    }
    for (k, len) in keys {
        for m in config_key(k) {
            e.invalid_key(&format!("data[{k}]"), k, &m, k);
        }
        size = size.saturating_add(len);
    }
    if size > MAX_SECRET_BYTES {
        e.push(
            "data",
            Kind::TooLong,
            Shown::Text(""),
            &format!("must have at most {MAX_SECRET_BYTES} bytes"),
            None,
        );
    }
    e.0
}

/// Everything the API server would refuse in the headless Service piculet renders.
pub fn service(service: &Service) -> Vec<FieldError> {
    let mut e = Errors::default();
    object_meta(&mut e, &service.metadata, NameRule::Dns1035);
    if let Some(spec) = &service.spec {
        labels(&mut e, "spec.selector", spec.selector.as_ref());
    }
    e.0
}

/// Everything the API server would refuse in the workspace claim piculet renders.
pub fn claim(claim: &PersistentVolumeClaim) -> Vec<FieldError> {
    let mut e = Errors::default();
    object_meta(&mut e, &claim.metadata, NameRule::Subdomain);
    let Some(spec) = &claim.spec else {
        e.required("spec.accessModes", "at least 1 access mode is required");
        return e.0;
    };
    let modes = spec.access_modes.as_deref().unwrap_or_default();
    if modes.is_empty() {
        e.required("spec.accessModes", "at least 1 access mode is required");
    }
    const MODES: [&str; 4] = [
        "ReadOnlyMany",
        "ReadWriteMany",
        "ReadWriteOnce",
        "ReadWriteOncePod",
    ];
    for m in modes {
        if !MODES.contains(&m.as_str()) {
            e.not_supported("spec.accessModes", m, &MODES);
        }
    }
    if let Some(class) = spec.storage_class_name.as_deref().filter(|c| !c.is_empty()) {
        e.each("spec.storageClassName", class, dns1123_subdomain(class));
    }
    let storage = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    match storage {
        None => e.required("spec.resources[storage]", ""),
        Some(q) => {
            if Quantity::parse(&q.0).map_or(true, |q| q.nanos() == 0) {
                e.invalid_key(
                    "spec.resources[storage]",
                    &q.0,
                    "must be greater than zero",
                    "storage",
                );
            }
        }
    }
    e.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EnvVar, EnvVarSource, HostAlias, NodeAffinity, NodeSelector, PodDNSConfigOption,
        PreferredSchedulingTerm, SecretKeySelector, VolumeMount,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

    /// A pod that passes every rule; each test breaks one thing.
    fn good() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "build-1a2b3c", "namespace": "ci", "labels": {"app": "x"}, "annotations": {"note": "y"}},
            "spec": {
                "restartPolicy": "Never",
                "hostname": "build",
                "subdomain": "piculet-1",
                "containers": [{
                    "name": "step",
                    "image": "alpine",
                    "env": [{"name": "CI", "value": "woodpecker"}],
                    "volumeMounts": [{"name": "workspace", "mountPath": "/woodpecker"}],
                    "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}}
                }],
                "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": "w"}}],
                "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute", "tolerationSeconds": 60}],
                "dnsConfig": {"nameservers": ["10.0.0.10"], "searches": ["svc.cluster.local"]},
                "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}
            }
        }))
        .expect("pod")
    }

    fn fields(pod: &Pod) -> Vec<String> {
        super::pod(pod).into_iter().map(|e| e.field).collect()
    }

    fn spec(p: &mut Pod) -> &mut PodSpec {
        p.spec.as_mut().expect("spec")
    }

    #[test]
    fn a_good_pod_passes() {
        assert_eq!(super::pod(&good()), []);
    }

    #[test]
    fn the_recorded_toleration_is_refused_in_the_api_servers_words() {
        let mut p = good();
        spec(&mut p).tolerations = Some(vec![Toleration {
            key: Some("key1".into()),
            operator: Some("Equal".into()),
            value: Some("value1".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: Some(3600),
        }]);
        let errors = super::pod(&p);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "spec.tolerations[0].effect");
        assert_eq!(errors[0].kind.reason(), "FieldValueInvalid");
        assert_eq!(errors[0].value, "NoSchedule");
        // Byte for byte the cause of recording 82.
        assert_eq!(
            errors[0].message(),
            "Invalid value: \"NoSchedule\": effect must be 'NoExecute' when `tolerationSeconds` is set"
        );
    }

    #[test]
    fn toleration_rules() {
        let t = |key: &str, op: &str, value: &str, effect: &str| Toleration {
            key: (!key.is_empty()).then(|| key.into()),
            operator: (!op.is_empty()).then(|| op.into()),
            value: (!value.is_empty()).then(|| value.into()),
            effect: (!effect.is_empty()).then(|| effect.into()),
            toleration_seconds: None,
        };
        let cases = [
            (t("", "Equal", "", ""), "spec.tolerations[0].operator"),
            (t("k", "Exists", "v", ""), "spec.tolerations[0].operator"),
            (t("k", "Equal", "a b", ""), "spec.tolerations[0].operator"),
            (t("k", "Gt", "1", ""), "spec.tolerations[0].operator"),
            (
                t("k", "Equal", "v", "Sometimes"),
                "spec.tolerations[0].effect",
            ),
            (t("bad key!", "Exists", "", ""), "spec.tolerations[0].key"),
        ];
        for (toleration, field) in cases {
            let mut p = good();
            spec(&mut p).tolerations = Some(vec![toleration.clone()]);
            assert_eq!(fields(&p), [field], "{toleration:?}");
        }
        let mut p = good();
        spec(&mut p).tolerations = Some(vec![t("", "Exists", "", "")]);
        assert_eq!(fields(&p), Vec::<String>::new(), "match everything");
        spec(&mut p).tolerations = Some(vec![t("k", "Exists", "v", "")]);
        assert_eq!(
            super::pod(&p)[0].message(),
            "Invalid value: \"v\": value must be empty when `operator` is 'Exists'"
        );
        spec(&mut p).tolerations = Some(vec![t("k", "Equal", "v", "Sometimes")]);
        assert_eq!(
            super::pod(&p)[0].message(),
            "Unsupported value: \"Sometimes\": supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
        );
    }

    #[test]
    fn names_and_labels() {
        let mut p = good();
        p.metadata.name = Some("Bad_Name".into());
        let e = super::pod(&p);
        assert_eq!(e[0].field, "metadata.name");
        // The message of recording 04.
        assert_eq!(
            e[0].message(),
            "Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
        );
        let mut p = good();
        p.metadata.labels = Some(BTreeMap::from([("a/b/c".into(), "x y".into())]));
        let e = super::pod(&p);
        assert_eq!(
            e.iter()
                .map(|e| (e.field.as_str(), e.value.as_str()))
                .collect::<Vec<_>>(),
            [("metadata.labels", "a/b/c"), ("metadata.labels", "x y")]
        );
        assert_eq!(e[1].key.as_deref(), Some("a/b/c"));
        let mut p = good();
        spec(&mut p).hostname = Some("my.host".into());
        spec(&mut p).node_selector = Some(BTreeMap::from([("disk".into(), "-ssd".into())]));
        spec(&mut p).service_account_name = Some("Builder".into());
        spec(&mut p).runtime_class_name = Some("g_visor".into());
        assert_eq!(
            fields(&p),
            [
                "spec.nodeSelector",
                "spec.serviceAccountName",
                "spec.runtimeClassName",
                "spec.hostname"
            ]
        );
        assert_eq!(
            super::pod(&p)[3].message(),
            "Invalid value: \"my.host\": must not contain dots"
        );
    }

    #[test]
    fn annotations_keys_and_total_size() {
        let mut p = good();
        p.metadata.annotations = Some(BTreeMap::from([
            ("Example.com/Key".into(), "x".into()),
            ("a".into(), "b".repeat(MAX_ANNOTATIONS_BYTES - 17)),
        ]));
        assert_eq!(
            fields(&p),
            Vec::<String>::new(),
            "at the limit; case does not matter"
        );
        p.metadata.annotations = Some(BTreeMap::from([
            ("bad key".into(), String::new()),
            ("a".into(), "b".repeat(MAX_ANNOTATIONS_BYTES)),
        ]));
        let e = super::pod(&p);
        assert_eq!(
            e.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [Kind::Invalid, Kind::TooLong]
        );
        assert_eq!(e[1].message(), "Too long: must have at most 262144 bytes");
    }

    #[test]
    fn environment_names_and_secret_references() {
        let mut p = good();
        spec(&mut p).containers[0].env = Some(vec![
            EnvVar {
                name: "MY.VAR-1 ok".into(),
                ..Default::default()
            },
            EnvVar {
                name: "A=B".into(),
                ..Default::default()
            },
            EnvVar {
                name: "ÜBER".into(),
                ..Default::default()
            },
            EnvVar {
                name: "T".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: "Not_A_Secret".into(),
                        key: "a/b".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
            },
        ]);
        assert_eq!(
            fields(&p),
            [
                "spec.containers[0].env[1].name",
                "spec.containers[0].env[2].name",
                "spec.containers[0].env[3].valueFrom.secretKeyRef.name",
                "spec.containers[0].env[3].valueFrom.secretKeyRef.key"
            ]
        );
    }

    #[test]
    fn mounts() {
        let mut p = good();
        spec(&mut p).containers[0].volume_mounts = Some(vec![
            VolumeMount {
                name: "workspace".into(),
                mount_path: "/w".into(),
                ..Default::default()
            },
            VolumeMount {
                name: "workspace".into(),
                mount_path: "/w".into(),
                sub_path: Some("../x".into()),
                ..Default::default()
            },
            VolumeMount {
                name: "nowhere".into(),
                mount_path: "relative:with:colons".into(),
                ..Default::default()
            },
        ]);
        assert_eq!(
            fields(&p),
            [
                "spec.containers[0].volumeMounts[1].mountPath",
                "spec.containers[0].volumeMounts.subPath",
                "spec.containers[0].volumeMounts[2].name"
            ],
            "relative paths and colons are the runtime's business, not the API server's"
        );
    }

    /// Each mount was looked for in a list of the volumes and of the paths before it, each
    /// volume in a list of the names before it: 50000 claims took minutes to check.
    #[test]
    fn checking_is_linear_in_volumes_and_mounts() {
        let claims = |n: usize| {
            let mut p = good();
            let s = spec(&mut p);
            s.volumes = Some(
                (0..n)
                    .map(|i| Volume {
                        name: format!("claim-{i}"),
                        ..Default::default()
                    })
                    .collect(),
            );
            s.containers[0].volume_mounts = Some(
                (0..n)
                    .map(|i| VolumeMount {
                        name: format!("claim-{i}"),
                        mount_path: format!("/c/{i}"),
                        ..Default::default()
                    })
                    .collect(),
            );
            p
        };
        // Allocations counted: twice the claims, about twice the bytes (a check that copied
        // what it had seen for every claim would allocate the square).
        let refused = crate::work::linear(50_000, |n| {
            let p = claims(n);
            fields(&p)
        });
        assert_eq!(refused, Vec::<String>::new());
    }

    #[test]
    fn quantities() {
        let q = |s: &str| K8sQuantity(s.into());
        let mut p = good();
        spec(&mut p).containers[0].resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), q("2")),
                ("memory".into(), q("-1Gi")),
                ("nvidia.com/gpu".into(), q("500m")),
                ("gpu".into(), q("1")),
            ])),
            limits: Some(BTreeMap::from([("cpu".into(), q("1"))])),
            claims: None,
        });
        let e = super::pod(&p);
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.field.as_str(), e.detail.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "spec.containers[0].resources.requests",
                    "must be less than or equal to cpu limit of 1"
                ),
                (
                    "spec.containers[0].resources.requests[gpu]",
                    "must be a standard resource for containers"
                ),
                (
                    "spec.containers[0].resources.requests[memory]",
                    "must be greater than or equal to 0"
                ),
                (
                    "spec.containers[0].resources.requests[nvidia.com/gpu]",
                    "must be an integer"
                ),
                (
                    "spec.containers[0].resources.limits",
                    "Limit must be set for non overcommitable resources"
                ),
            ]
        );
    }

    #[test]
    fn dns_config_limits() {
        let mut p = good();
        let search = |n: usize| {
            (0..n)
                .map(|i| format!("d{i}.example.com"))
                .collect::<Vec<_>>()
        };
        spec(&mut p).dns_config = Some(PodDNSConfig {
            nameservers: Some(vec![
                "1.1.1.1".into(),
                "8.8.8.8".into(),
                "9.9.9.9".into(),
                "x".into(),
            ]),
            searches: Some(search(33)),
            options: Some(vec![PodDNSConfigOption::default()]),
        });
        assert_eq!(
            fields(&p),
            [
                "spec.dnsConfig.nameservers",
                "spec.dnsConfig.nameservers[3]",
                "spec.dnsConfig.searches",
                "spec.dnsConfig.options[0]"
            ]
        );
        assert!(super::pod(&p)[0].message().starts_with(
            "Invalid value: []string{\"1.1.1.1\", \"8.8.8.8\", \"9.9.9.9\", \"x\"}: must not have more than 3 nameservers"
        ));
        // At most 2048 characters in all, spaces included; underscores and a trailing dot
        // are fine.
        let long = |c: char| format!("{}.{}", c.to_string().repeat(30), "b".repeat(33));
        let mut searches: Vec<String> = (0..32).map(|_| long('a')).collect();
        searches[0] = "_srv.example.com.".into();
        spec(&mut p).dns_config = Some(PodDNSConfig {
            nameservers: None,
            searches: Some(searches.clone()),
            options: None,
        });
        assert_eq!(fields(&p), Vec::<String>::new(), "17 + 31 * 64 + 31 spaces");
        searches[0] = long('c');
        spec(&mut p).dns_config = Some(PodDNSConfig {
            nameservers: None,
            searches: Some(searches),
            options: None,
        });
        assert_eq!(
            fields(&p),
            ["spec.dnsConfig.searches"],
            "32 * 64 + 31 spaces"
        );
        spec(&mut p).dns_policy = Some("None".into());
        assert_eq!(fields(&p)[0], "spec.dnsConfig.nameservers");
    }

    #[test]
    fn seccomp_and_apparmor() {
        let mut p = good();
        let sc = spec(&mut p).security_context.as_mut().expect("sc");
        sc.seccomp_profile = Some(SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: None,
        });
        sc.app_armor_profile = Some(AppArmorProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: Some("x".into()),
        });
        assert_eq!(
            fields(&p),
            [
                "spec.securityContext.seccompProfile.localhostProfile",
                "spec.securityContext.appArmorProfile.localhostProfile"
            ]
        );
        let sc = spec(&mut p).security_context.as_mut().expect("sc");
        sc.seccomp_profile = Some(SeccompProfile {
            type_: "Localhost".into(),
            localhost_profile: Some("/etc/profile.json".into()),
        });
        sc.app_armor_profile = Some(AppArmorProfile {
            type_: "Localhost".into(),
            localhost_profile: Some(" padded ".into()),
        });
        sc.run_as_user = Some(-1);
        sc.fs_group_change_policy = Some("Sometimes".into());
        assert_eq!(
            fields(&p),
            [
                "spec.securityContext.runAsUser",
                "spec.securityContext.fsGroupChangePolicy",
                "spec.securityContext.seccompProfile.localhostProfile",
                "spec.securityContext.appArmorProfile.localhostProfile"
            ]
        );
        let mut p = good();
        spec(&mut p).containers[0].security_context = Some(SecurityContext {
            privileged: Some(true),
            allow_privilege_escalation: Some(false),
            ..Default::default()
        });
        assert_eq!(fields(&p), ["spec.containers[0].securityContext"]);
    }

    #[test]
    fn affinity_operators_values_and_weights() {
        let req = |op: &str, values: &[&str]| NodeSelectorRequirement {
            key: "zone".into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        };
        let mut p = good();
        spec(&mut p).affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![
                            req("In", &[]),
                            req("Exists", &["a"]),
                            req("Gt", &["1", "2"]),
                            req("Near", &["a"]),
                            req("In", &["not a label"]),
                        ]),
                        match_fields: Some(vec![NodeSelectorRequirement {
                            key: "metadata.labels".into(),
                            operator: "In".into(),
                            values: Some(vec!["n".into()]),
                        }]),
                    }],
                }),
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 0,
                        preference: NodeSelectorTerm {
                            match_expressions: Some(vec![req("In", &["any value at all"])]),
                            match_fields: None,
                        },
                    },
                ]),
            }),
            ..Default::default()
        });
        let t = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]";
        let got = fields(&p);
        assert_eq!(
            got,
            [
                format!("{t}.matchExpressions[0].values"),
                format!("{t}.matchExpressions[1].values"),
                format!("{t}.matchExpressions[2].values"),
                format!("{t}.matchExpressions[3].operator"),
                format!("{t}.matchExpressions[4].values[0]"),
                format!("{t}.matchFields[0].key"),
                "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight".to_string(),
            ]
        );
    }

    #[test]
    fn host_aliases() {
        let mut p = good();
        spec(&mut p).host_aliases = Some(vec![
            HostAlias {
                ip: "010.0.0.1".into(),
                hostnames: Some(vec!["db.local".into()]),
            },
            HostAlias {
                ip: "db".into(),
                hostnames: Some(vec!["Not_A_Host".into()]),
            },
        ]);
        assert_eq!(
            fields(&p),
            ["spec.hostAliases[1].ip", "spec.hostAliases[1].hostnames[0]"]
        );
    }

    #[test]
    fn secrets_services_and_claims() {
        let mut s = Secret::default();
        s.metadata.name = Some("piculet-1-secrets".into());
        s.string_data = Some(BTreeMap::from([
            ("ok.key".into(), "v".into()),
            ("bad key".into(), "x".repeat(MAX_SECRET_BYTES)),
        ]));
        let fields: Vec<String> = secret(&s).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["data[bad key]", "data"]);
        let mut svc = Service::default();
        svc.metadata.name = Some("1-piculet".into());
        assert_eq!(service(&svc)[0].field, "metadata.name");
        let mut c = PersistentVolumeClaim::default();
        c.metadata.name = Some("w".into());
        let fields: Vec<String> = claim(&c).into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["spec.accessModes"]);
    }

    #[test]
    fn quoting_as_go_does() {
        assert_eq!(go_quote("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\x01é\"");
    }
}
