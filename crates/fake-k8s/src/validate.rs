//! The fake API server's validation of what is created: the rules of the real
//! one (`pkg/apis/core/validation`, v1.34) over the JSON of the request, each
//! failure a `Status` cause `(field, reason, message)` in the real server's
//! words and order. Written apart from piculet's own checks on purpose: this
//! is the oracle piculet's renderer is held to, so it must not share its code.

use serde_json::Value;

pub type Cause = (String, &'static str, String);

/// The causes found so far, in the order the real server finds them.
#[derive(Default)]
pub struct Causes(pub Vec<Cause>);

/// Go's `%q` of a string, as the API server prints a bad value.
fn go_string(s: &str) -> String {
    let mut q = String::from("\"");
    for ch in s.chars() {
        match ch {
            '\\' | '"' => {
                q.push('\\');
                q.push(ch);
            }
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            '\r' => q.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                q.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

impl Causes {
    fn add(&mut self, field: String, reason: &'static str, message: String) {
        self.0.push((field, reason, message));
    }
    fn invalid(&mut self, field: impl Into<String>, value: &str, why: &str) {
        self.add(
            field.into(),
            "FieldValueInvalid",
            format!("Invalid value: {}: {why}", go_string(value)),
        );
    }
    fn invalid_raw(&mut self, field: impl Into<String>, shown: String, why: &str) {
        self.add(
            field.into(),
            "FieldValueInvalid",
            format!("Invalid value: {shown}: {why}"),
        );
    }
    fn required(&mut self, field: impl Into<String>, why: &str) {
        let message = if why.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {why}")
        };
        self.add(field.into(), "FieldValueRequired", message);
    }
    fn forbidden(&mut self, field: impl Into<String>, why: &str) {
        self.add(
            field.into(),
            "FieldValueForbidden",
            format!("Forbidden: {why}"),
        );
    }
    fn unsupported(&mut self, field: impl Into<String>, value: &str, supported: &[&str]) {
        let list: Vec<String> = supported.iter().map(|s| go_string(s)).collect();
        self.add(
            field.into(),
            "FieldValueNotSupported",
            format!(
                "Unsupported value: {}: supported values: {}",
                go_string(value),
                list.join(", ")
            ),
        );
    }
    fn too_long(&mut self, field: impl Into<String>, bytes: usize) {
        self.add(
            field.into(),
            "FieldValueTooLong",
            format!("Too long: must have at most {bytes} bytes"),
        );
    }
    fn duplicate(&mut self, field: impl Into<String>, value: &str) {
        self.add(
            field.into(),
            "FieldValueDuplicate",
            format!("Duplicate value: {}", go_string(value)),
        );
    }
    fn not_found(&mut self, field: impl Into<String>, value: &str) {
        self.add(
            field.into(),
            "FieldValueNotFound",
            format!("Not found: {}", go_string(value)),
        );
    }
    fn all(&mut self, field: &str, value: &str, messages: Vec<String>) {
        for m in messages {
            self.invalid(field.to_string(), value, &m);
        }
    }
}

// ---------------------------------------------------------------------------
// The formats of apimachinery's util/validation, by hand.

fn example_list(examples: &[&str]) -> String {
    // "(e.g. 'a',  or 'b', regex …": every example followed by ", ", joined by " or ".
    examples
        .iter()
        .map(|e| format!("'{e}', "))
        .collect::<Vec<_>>()
        .join(" or ")
}

fn with_regex(what: &str, regex: &str, examples: &[&str]) -> String {
    format!(
        "{what} (e.g. {}regex used for validation is '{regex}')",
        example_list(examples)
    )
}

fn too_many_chars(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn label_ok(s: &str, underscore: bool) -> bool {
    let s = if underscore {
        s.strip_prefix('_').unwrap_or(s)
    } else {
        s
    };
    let ends = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.starts_with(ends)
        && s.ends_with(ends)
        && s.chars()
            .all(|c| ends(c) || c == '-' || (underscore && c == '_'))
}

pub fn rfc1123_label(s: &str) -> Vec<String> {
    let mut m = Vec::new();
    if s.len() > 63 {
        m.push(too_many_chars(63));
    }
    if !label_ok(s, false) {
        if s.split('.').all(|p| label_ok(p, false)) {
            m.push("must not contain dots".into());
        } else {
            m.push(with_regex("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character", "[a-z0-9]([-a-z0-9]*[a-z0-9])?", &["my-name", "123-abc"]));
        }
    }
    m
}

pub fn rfc1123_subdomain(s: &str) -> Vec<String> {
    let mut m = Vec::new();
    if s.len() > 253 {
        m.push(too_many_chars(253));
    }
    if !s.split('.').all(|p| label_ok(p, false)) {
        m.push(with_regex("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character", "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", &["example.com"]));
    }
    m
}

fn search_domain(s: &str) -> Vec<String> {
    let mut m = Vec::new();
    if s.len() > 253 {
        m.push(too_many_chars(253));
    }
    if !s.split('.').all(|p| label_ok(p, true)) {
        m.push(with_regex("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '_', '-' or '.', and must start and end with an alphanumeric character", "_?[a-z0-9]([-_a-z0-9]*[a-z0-9])?(\\._?[a-z0-9]([-_a-z0-9]*[a-z0-9])?)*", &["example.com"]));
    }
    m
}

fn name_part_ok(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(|c| alnum(c) || "-_.".contains(c))
}

const NAME_PART: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const NAME_PART_REGEX: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";

/// A label key, or "qualified name".
pub fn qualified_name(s: &str) -> Vec<String> {
    let parts: Vec<&str> = s.split('/').collect();
    let mut m = Vec::new();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                m.push("prefix part must be non-empty".to_string());
            } else {
                for msg in rfc1123_subdomain(prefix) {
                    m.push(format!("prefix part {msg}"));
                }
            }
            *name
        }
        _ => {
            m.push(format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                with_regex(NAME_PART, NAME_PART_REGEX, &["MyName", "my.name", "123-abc"])
            ));
            return m;
        }
    };
    if name.is_empty() {
        m.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        m.push(format!("name part {}", too_many_chars(63)));
    }
    if !name_part_ok(name) {
        m.push(format!(
            "name part {}",
            with_regex(
                NAME_PART,
                NAME_PART_REGEX,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    m
}

pub fn label_value(s: &str) -> Vec<String> {
    let mut m = Vec::new();
    if s.len() > 63 {
        m.push(too_many_chars(63));
    }
    if !s.is_empty() && !name_part_ok(s) {
        m.push(with_regex("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character", "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", &["MyValue", "my_value", "12345"]));
    }
    m
}

fn secret_key(s: &str) -> Vec<String> {
    let mut m = Vec::new();
    if s.len() > 253 {
        m.push(too_many_chars(253));
    }
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        m.push(with_regex(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            "[-._a-zA-Z0-9]+",
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if s == "." {
        m.push("must not be '.'".into());
    } else if s == ".." {
        m.push("must not be '..'".into());
    } else if s.starts_with("..") {
        m.push("must not start with '..'".into());
    }
    m
}

fn ip_ok(s: &str) -> bool {
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return true;
    }
    // Go's sloppy IPv4 parse: four decimal parts up to 255, leading zeros allowed.
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            (1..=3).contains(&p.len())
                && p.chars().all(|c| c.is_ascii_digit())
                && p.parse::<u32>().map(|n| n < 256).unwrap_or(false)
        })
}

const BAD_IP: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}

fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn relative_no_backsteps(c: &mut Causes, field: &str, path: &str) {
    if path.starts_with('/') {
        c.invalid(field, path, "must be a relative path");
    }
    if path.split('/').any(|p| p == "..") {
        c.invalid(field, path, "must not contain '..'");
    }
}

// ---------------------------------------------------------------------------
// Objects.

/// Labels-like maps: every key a qualified name, every value a label value.
pub fn label_map(c: &mut Causes, field: &str, map: &Value) {
    for (k, v) in map.as_object().into_iter().flatten() {
        c.all(field, k, qualified_name(k));
        let value = v.as_str().unwrap_or_default();
        c.all(field, value, label_value(value));
    }
}

/// Annotations: keys are qualified names whatever their case; 256 KiB in all.
pub fn annotations(c: &mut Causes, map: &Value) {
    let mut total = 0;
    for (k, v) in map.as_object().into_iter().flatten() {
        c.all("metadata.annotations", k, qualified_name(&k.to_lowercase()));
        total += k.len() + v.as_str().map(str::len).unwrap_or_default();
    }
    if total > 256 * 1024 {
        c.too_long("metadata.annotations", 256 * 1024);
    }
}

pub fn pod_spec(c: &mut Causes, spec: &Value) {
    let volumes = items(spec, "volumes");
    let mut seen = Vec::new();
    for (i, vol) in volumes.iter().enumerate() {
        let f = format!("spec.volumes[{i}]");
        let name = text(vol, "name");
        if name.is_empty() {
            c.required(format!("{f}.name"), "");
        } else {
            c.all(&format!("{f}.name"), name, rfc1123_label(name));
        }
        if seen.contains(&name) {
            c.duplicate(format!("{f}.name"), name);
        } else {
            seen.push(name);
        }
        if vol["persistentVolumeClaim"].is_object()
            && text(&vol["persistentVolumeClaim"], "claimName").is_empty()
        {
            c.required(format!("{f}.persistentVolumeClaim.claimName"), "");
        }
        let secret = &vol["secret"];
        if secret.is_object() {
            if text(secret, "secretName").is_empty() {
                c.required(format!("{f}.secret.secretName"), "");
            }
            for (j, item) in items(secret, "items").iter().enumerate() {
                let g = format!("{f}.secret.items[{j}]");
                if text(item, "key").is_empty() {
                    c.required(format!("{g}.key"), "");
                }
                let path = text(item, "path");
                if path.is_empty() {
                    c.required(format!("{g}.path"), "");
                } else {
                    relative_no_backsteps(c, &format!("{g}.path"), path);
                    if path.starts_with("..") {
                        c.invalid(format!("{g}.path"), path, "must not start with '..'");
                    }
                }
            }
        }
    }
    for (i, ctr) in items(spec, "containers").iter().enumerate() {
        container(c, &format!("spec.containers[{i}]"), ctr, &seen);
    }
    let node_selector = &spec["nodeSelector"];
    label_map(c, "spec.nodeSelector", node_selector);
    security_context(c, &spec["securityContext"]);
    affinity(c, &spec["affinity"]);
    dns(c, &spec["dnsConfig"], text(spec, "dnsPolicy"));
    for key in [
        "serviceAccountName",
        "priorityClassName",
        "runtimeClassName",
    ] {
        let v = text(spec, key);
        if !v.is_empty() {
            c.all(&format!("spec.{key}"), v, rfc1123_subdomain(v));
        }
    }
    if let Some(d) = spec["activeDeadlineSeconds"].as_i64()
        && !(1..=2147483647).contains(&d)
    {
        c.invalid_raw(
            "spec.activeDeadlineSeconds",
            d.to_string(),
            "must be between 1 and 2147483647, inclusive",
        );
    }
    for key in ["hostname", "subdomain"] {
        let v = text(spec, key);
        if !v.is_empty() {
            c.all(&format!("spec.{key}"), v, rfc1123_label(v));
        }
    }
    for (i, t) in items(spec, "tolerations").iter().enumerate() {
        toleration(c, &format!("spec.tolerations[{i}]"), t);
    }
    for (i, alias) in items(spec, "hostAliases").iter().enumerate() {
        let ip = text(alias, "ip");
        if !ip_ok(ip) {
            c.invalid(format!("spec.hostAliases[{i}].ip"), ip, BAD_IP);
        }
        for (j, h) in items(alias, "hostnames").iter().enumerate() {
            let h = h.as_str().unwrap_or_default();
            c.all(
                &format!("spec.hostAliases[{i}].hostnames[{j}]"),
                h,
                rfc1123_subdomain(h),
            );
        }
    }
    // Pods only (not templates): the image as sent.
    for (i, ctr) in items(spec, "containers").iter().enumerate() {
        let image = text(ctr, "image");
        if image != image.trim() {
            c.invalid(
                format!("spec.containers[{i}].image"),
                image,
                "must not have leading or trailing whitespace",
            );
        }
    }
}

fn container(c: &mut Causes, f: &str, ctr: &Value, volumes: &[&str]) {
    for (j, port) in items(ctr, "ports").iter().enumerate() {
        let p = port["containerPort"].as_i64().unwrap_or(0);
        if p == 0 {
            c.required(format!("{f}.ports[{j}].containerPort"), "");
        } else if !(1..=65535).contains(&p) {
            c.invalid_raw(
                format!("{f}.ports[{j}].containerPort"),
                p.to_string(),
                "must be between 1 and 65535, inclusive",
            );
        }
        let proto = text(port, "protocol");
        if !proto.is_empty() && !["SCTP", "TCP", "UDP"].contains(&proto) {
            c.unsupported(
                format!("{f}.ports[{j}].protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            );
        }
    }
    for (j, var) in items(ctr, "env").iter().enumerate() {
        let name = text(var, "name");
        let g = format!("{f}.env[{j}]");
        if name.is_empty() {
            c.required(format!("{g}.name"), "");
        } else if name
            .chars()
            .any(|ch| !(' '..='~').contains(&ch) || ch == '=')
        {
            c.invalid(
                format!("{g}.name"),
                name,
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            );
        }
        let reference = &var["valueFrom"]["secretKeyRef"];
        if reference.is_object() {
            let n = text(reference, "name");
            c.all(
                &format!("{g}.valueFrom.secretKeyRef.name"),
                n,
                rfc1123_subdomain(n),
            );
            let k = text(reference, "key");
            if k.is_empty() {
                c.required(format!("{g}.valueFrom.secretKeyRef.key"), "");
            } else {
                c.all(&format!("{g}.valueFrom.secretKeyRef.key"), k, secret_key(k));
            }
        }
    }
    let mut paths: Vec<&str> = Vec::new();
    for (j, m) in items(ctr, "volumeMounts").iter().enumerate() {
        let g = format!("{f}.volumeMounts[{j}]");
        let name = text(m, "name");
        if name.is_empty() {
            c.required(format!("{g}.name"), "");
        }
        if !volumes.contains(&name) {
            c.not_found(format!("{g}.name"), name);
        }
        let path = text(m, "mountPath");
        if path.is_empty() {
            c.required(format!("{g}.mountPath"), "");
        }
        if paths.contains(&path) {
            c.invalid(format!("{g}.mountPath"), path, "must be unique");
        }
        paths.push(path);
        let sub = text(m, "subPath");
        if !sub.is_empty() {
            // The real server names the list, not the mount, here.
            relative_no_backsteps(c, &format!("{f}.volumeMounts.subPath"), sub);
        }
    }
    let pull = text(ctr, "imagePullPolicy");
    if !pull.is_empty() && !["Always", "IfNotPresent", "Never"].contains(&pull) {
        c.unsupported(
            format!("{f}.imagePullPolicy"),
            pull,
            &["Always", "IfNotPresent", "Never"],
        );
    }
    resources(c, &format!("{f}.resources"), &ctr["resources"]);
    let sc = &ctr["securityContext"];
    ids(
        c,
        &format!("{f}.securityContext"),
        sc,
        &["runAsUser", "runAsGroup"],
    );
    if sc["seccompProfile"].is_object() {
        seccomp(
            c,
            &format!("{f}.securityContext.seccompProfile"),
            &sc["seccompProfile"],
        );
    }
    if sc["allowPrivilegeEscalation"] == Value::Bool(false) && sc["privileged"] == Value::Bool(true)
    {
        c.invalid_raw(
            format!("{f}.securityContext"),
            sc.to_string(),
            "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
        );
    }
    if sc["appArmorProfile"].is_object() {
        apparmor(
            c,
            &format!("{f}.securityContext.appArmorProfile"),
            &sc["appArmorProfile"],
        );
    }
}

/// A quantity in milli-units, enough to compare what piculet sends (the real
/// server keeps more precision).
fn millis(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.' || ch == '+' || ch == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * factor * 1000.0)
}

fn native(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

fn resources(c: &mut Causes, f: &str, r: &Value) {
    let limits = &r["limits"];
    for (which, map) in [("limits", limits), ("requests", &r["requests"])] {
        for (name, q) in map.as_object().into_iter().flatten() {
            let field = format!("{f}.{which}[{name}]");
            c.all(&field, name, qualified_name(name));
            if !name.contains('/') {
                if !["cpu", "memory", "ephemeral-storage"].contains(&name.as_str())
                    && !name.starts_with("hugepages-")
                {
                    c.invalid(
                        field.clone(),
                        name,
                        "must be a standard resource for containers",
                    );
                }
            } else if !native(name)
                && (name.starts_with("requests.")
                    || !qualified_name(&format!("requests.{name}")).is_empty())
            {
                c.invalid(
                    field.clone(),
                    name,
                    "doesn't follow extended resource name standard",
                );
            }
            let text = q.as_str().unwrap_or_default();
            let Some(value) = millis(text) else {
                continue;
            };
            if value < 0.0 {
                c.invalid(field.clone(), text, "must be greater than or equal to 0");
                continue;
            }
            if !native(name) && value % 1000.0 != 0.0 {
                c.invalid(field.clone(), text, "must be an integer");
            }
            if which == "requests" {
                let overcommit = native(name) && !name.starts_with("hugepages-");
                match limits[name.as_str()].as_str() {
                    Some(l) => {
                        let limit = millis(l).unwrap_or(f64::MAX);
                        if value != limit && !overcommit {
                            c.invalid(
                                format!("{f}.requests"),
                                text,
                                &format!("must be equal to {name} limit of {l}"),
                            );
                        } else if value > limit {
                            c.invalid(
                                format!("{f}.requests"),
                                text,
                                &format!("must be less than or equal to {name} limit of {l}"),
                            );
                        }
                    }
                    None if !overcommit => c.required(
                        format!("{f}.limits"),
                        "Limit must be set for non overcommitable resources",
                    ),
                    None => {}
                }
            }
        }
    }
}

fn ids(c: &mut Causes, f: &str, sc: &Value, keys: &[&str]) {
    for key in keys {
        if let Some(id) = sc[*key].as_i64()
            && !(0..=2147483647).contains(&id)
        {
            c.invalid_raw(
                format!("{f}.{key}"),
                id.to_string(),
                "must be between 0 and 2147483647, inclusive",
            );
        }
    }
}

const PROFILE_TYPES: [&str; 3] = ["Localhost", "RuntimeDefault", "Unconfined"];

fn seccomp(c: &mut Causes, f: &str, p: &Value) {
    let kind = text(p, "type");
    if kind.is_empty() {
        c.required(
            format!("{f}.type"),
            "type is required when seccompProfile is set",
        );
    } else if !PROFILE_TYPES.contains(&kind) {
        c.unsupported(format!("{f}.type"), kind, &PROFILE_TYPES);
    }
    let local = p["localhostProfile"].as_str();
    if kind == "Localhost" {
        match local {
            None => c.required(
                format!("{f}.localhostProfile"),
                "must be set when seccomp type is Localhost",
            ),
            Some(path) => relative_no_backsteps(c, &format!("{f}.localhostProfile"), path),
        }
    } else if local.is_some() {
        c.invalid_raw(
            format!("{f}.localhostProfile"),
            p.to_string(),
            "can only be set when seccomp type is Localhost",
        );
    }
}

fn apparmor(c: &mut Causes, f: &str, p: &Value) {
    let kind = text(p, "type");
    let local = p["localhostProfile"].as_str();
    let field = format!("{f}.localhostProfile");
    match kind {
        "Localhost" => match local {
            None => c.required(field, "must be set when AppArmor type is Localhost"),
            Some(profile) => {
                if profile.trim() != profile {
                    c.invalid(field.clone(), profile, "must not be padded with whitespace");
                } else if profile.is_empty() {
                    c.required(field.clone(), "must be set when AppArmor type is Localhost");
                }
                if profile.len() > 4095 {
                    c.too_long(field, 4095);
                }
            }
        },
        "RuntimeDefault" | "Unconfined" => {
            if let Some(profile) = local {
                c.invalid(
                    field,
                    profile,
                    "can only be set when AppArmor type is Localhost",
                );
            }
        }
        "" => c.required(
            format!("{f}.type"),
            "type is required when appArmorProfile is set",
        ),
        other => c.unsupported(format!("{f}.type"), other, &PROFILE_TYPES),
    }
}

fn security_context(c: &mut Causes, sc: &Value) {
    let f = "spec.securityContext";
    ids(c, f, sc, &["fsGroup", "runAsUser", "runAsGroup"]);
    let policy = text(sc, "fsGroupChangePolicy");
    if !policy.is_empty() && !["Always", "OnRootMismatch"].contains(&policy) {
        c.unsupported(
            format!("{f}.fsGroupChangePolicy"),
            policy,
            &["Always", "OnRootMismatch"],
        );
    }
    if sc["seccompProfile"].is_object() {
        seccomp(c, &format!("{f}.seccompProfile"), &sc["seccompProfile"]);
    }
    if sc["appArmorProfile"].is_object() {
        apparmor(c, &format!("{f}.appArmorProfile"), &sc["appArmorProfile"]);
    }
}

fn toleration(c: &mut Causes, f: &str, t: &Value) {
    let (key, op, value, effect) = (
        text(t, "key"),
        text(t, "operator"),
        text(t, "value"),
        text(t, "effect"),
    );
    if !key.is_empty() {
        c.all(&format!("{f}.key"), key, qualified_name(key));
    }
    if key.is_empty() && op != "Exists" {
        c.invalid(
            format!("{f}.operator"),
            op,
            "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
        );
    }
    if !t["tolerationSeconds"].is_null() && effect != "NoExecute" {
        c.invalid(
            format!("{f}.effect"),
            effect,
            "effect must be 'NoExecute' when `tolerationSeconds` is set",
        );
    }
    match op {
        "" | "Equal" => {
            let problems = label_value(value);
            if !problems.is_empty() {
                c.invalid(format!("{f}.operator"), value, &problems.join(";"));
            }
        }
        "Exists" if !value.is_empty() => c.invalid(
            format!("{f}.operator"),
            value,
            "value must be empty when `operator` is 'Exists'",
        ),
        "Exists" => {}
        other => c.unsupported(format!("{f}.operator"), other, &["Equal", "Exists"]),
    }
    if !effect.is_empty() && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        c.unsupported(
            format!("{f}.effect"),
            effect,
            &["NoSchedule", "PreferNoSchedule", "NoExecute"],
        );
    }
}

fn selector_requirement(c: &mut Causes, f: &str, r: &Value, nodes: bool, values_are_labels: bool) {
    let values = items(r, "values");
    match text(r, "operator") {
        "In" | "NotIn" if values.is_empty() => c.required(
            format!("{f}.values"),
            "must be specified when `operator` is 'In' or 'NotIn'",
        ),
        "Exists" | "DoesNotExist" if !values.is_empty() => c.forbidden(
            format!("{f}.values"),
            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
        ),
        "Gt" | "Lt" if nodes && values.len() != 1 => c.required(
            format!("{f}.values"),
            "must be specified single value when `operator` is 'Lt' or 'Gt'",
        ),
        "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
        "Gt" | "Lt" if nodes => {}
        other => c.invalid(
            format!("{f}.operator"),
            other,
            "not a valid selector operator",
        ),
    }
    let key = text(r, "key");
    c.all(&format!("{f}.key"), key, qualified_name(key));
    if values_are_labels {
        for (k, v) in values.iter().enumerate() {
            let v = v.as_str().unwrap_or_default();
            c.all(&format!("{f}.values[{k}]"), v, label_value(v));
        }
    }
}

fn node_term(c: &mut Causes, f: &str, term: &Value, required: bool) {
    for (j, r) in items(term, "matchExpressions").iter().enumerate() {
        selector_requirement(c, &format!("{f}.matchExpressions[{j}]"), r, true, required);
    }
    for (j, r) in items(term, "matchFields").iter().enumerate() {
        let g = format!("{f}.matchFields[{j}]");
        let values = items(r, "values");
        match text(r, "operator") {
            "In" | "NotIn" if values.len() != 1 => c.required(
                format!("{g}.values"),
                "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
            ),
            "In" | "NotIn" => {}
            other => c.invalid(
                format!("{g}.operator"),
                other,
                "not a valid selector operator",
            ),
        }
        if text(r, "key") != "metadata.name" {
            c.invalid(
                format!("{g}.key"),
                text(r, "key"),
                "not a valid field selector key",
            );
        } else {
            for (k, v) in values.iter().enumerate() {
                let v = v.as_str().unwrap_or_default();
                c.all(&format!("{g}.values[{k}]"), v, rfc1123_subdomain(v));
            }
        }
    }
}

fn weight(c: &mut Causes, f: &str, term: &Value) {
    let w = term["weight"].as_i64().unwrap_or(0);
    if !(1..=100).contains(&w) {
        c.invalid_raw(
            format!("{f}.weight"),
            w.to_string(),
            "must be in the range 1-100",
        );
    }
}

fn pod_term(c: &mut Causes, f: &str, term: &Value) {
    for selector in ["labelSelector", "namespaceSelector"] {
        let s = &term[selector];
        if s.is_object() {
            label_map(c, &format!("{f}.{selector}.matchLabels"), &s["matchLabels"]);
            for (j, r) in items(s, "matchExpressions").iter().enumerate() {
                selector_requirement(
                    c,
                    &format!("{f}.{selector}.matchExpressions[{j}]"),
                    r,
                    false,
                    true,
                );
            }
        }
    }
    for ns in items(term, "namespaces") {
        let ns = ns.as_str().unwrap_or_default();
        c.all(&format!("{f}.namespace"), ns, rfc1123_label(ns));
    }
    let key = text(term, "topologyKey");
    if key.is_empty() {
        c.required(format!("{f}.topologyKey"), "can not be empty");
    }
    c.all(&format!("{f}.topologyKey"), key, qualified_name(key));
}

fn affinity(c: &mut Causes, a: &Value) {
    let node = &a["nodeAffinity"];
    let req = &node["requiredDuringSchedulingIgnoredDuringExecution"];
    if req.is_object() {
        let f = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms";
        let terms = items(req, "nodeSelectorTerms");
        if terms.is_empty() {
            c.required(f, "must have at least one node selector term");
        }
        for (i, t) in terms.iter().enumerate() {
            node_term(c, &format!("{f}[{i}]"), t, true);
        }
    }
    for (i, t) in items(node, "preferredDuringSchedulingIgnoredDuringExecution")
        .iter()
        .enumerate()
    {
        let f = format!(
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}]"
        );
        weight(c, &f, t);
        node_term(c, &format!("{f}.preference"), &t["preference"], false);
    }
    for kind in ["podAffinity", "podAntiAffinity"] {
        let p = &a[kind];
        for (i, t) in items(p, "requiredDuringSchedulingIgnoredDuringExecution")
            .iter()
            .enumerate()
        {
            pod_term(
                c,
                &format!(
                    "spec.affinity.{kind}.requiredDuringSchedulingIgnoredDuringExecution[{i}]"
                ),
                t,
            );
        }
        for (i, t) in items(p, "preferredDuringSchedulingIgnoredDuringExecution")
            .iter()
            .enumerate()
        {
            let f = format!(
                "spec.affinity.{kind}.preferredDuringSchedulingIgnoredDuringExecution[{i}]"
            );
            weight(c, &f, t);
            pod_term(c, &format!("{f}.podAffinityTerm"), &t["podAffinityTerm"]);
        }
    }
}

fn go_string_list(list: &[Value]) -> String {
    let inner: Vec<String> = list
        .iter()
        .map(|v| go_string(v.as_str().unwrap_or_default()))
        .collect();
    format!("[]string{{{}}}", inner.join(", "))
}

fn dns(c: &mut Causes, config: &Value, policy: &str) {
    let f = "spec.dnsConfig";
    let nameservers = items(config, "nameservers");
    if policy == "None" {
        if !config.is_object() {
            c.required(f, "must provide `dnsConfig` when `dnsPolicy` is None");
            return;
        }
        if nameservers.is_empty() {
            c.required(
                format!("{f}.nameservers"),
                "must provide at least one DNS nameserver when `dnsPolicy` is None",
            );
            return;
        }
    }
    if !config.is_object() {
        return;
    }
    if nameservers.len() > 3 {
        c.invalid_raw(
            format!("{f}.nameservers"),
            go_string_list(nameservers),
            "must not have more than 3 nameservers",
        );
    }
    for (i, ns) in nameservers.iter().enumerate() {
        let ns = ns.as_str().unwrap_or_default();
        if !ip_ok(ns) {
            c.invalid(format!("{f}.nameservers[{i}]"), ns, BAD_IP);
        }
    }
    let searches = items(config, "searches");
    if searches.len() > 32 {
        c.invalid_raw(
            format!("{f}.searches"),
            go_string_list(searches),
            "must not have more than 32 search paths",
        );
    }
    let joined: usize = searches
        .iter()
        .map(|s| s.as_str().unwrap_or_default().len())
        .sum::<usize>()
        + searches.len().saturating_sub(1);
    if joined > 2048 {
        c.invalid_raw(
            format!("{f}.searches"),
            go_string_list(searches),
            "must not have more than 2048 characters (including spaces) in the search list",
        );
    }
    for (i, s) in searches.iter().enumerate() {
        let s = s.as_str().unwrap_or_default();
        if s != "." {
            let s = s.strip_suffix('.').unwrap_or(s);
            c.all(&format!("{f}.searches[{i}]"), s, search_domain(s));
        }
    }
    for (i, o) in items(config, "options").iter().enumerate() {
        if text(o, "name").is_empty() {
            c.required(format!("{f}.options[{i}]"), "must not be empty");
        }
    }
}

/// A Secret: `stringData` joins `data` before validation; keys are config keys
/// and the data at most 1 MiB.
pub fn secret(c: &mut Causes, secret: &Value) {
    let mut total = 0;
    let mut keys: Vec<(&str, usize)> = Vec::new();
    for (k, v) in secret["data"].as_object().into_iter().flatten() {
        let decoded =
            super::objects::base64_decode(v.as_str().unwrap_or_default()).unwrap_or_default();
        keys.push((k, decoded.len()));
    }
    for (k, v) in secret["stringData"].as_object().into_iter().flatten() {
        keys.push((k, v.as_str().map(str::len).unwrap_or_default()));
    }
    for (k, len) in keys {
        c.all(&format!("data[{k}]"), k, secret_key(k));
        total += len;
    }
    if total > 1024 * 1024 {
        c.too_long("data", 1024 * 1024);
    }
}

pub fn service(c: &mut Causes, svc: &Value) {
    label_map(c, "spec.selector", &svc["spec"]["selector"]);
}

pub fn claim(c: &mut Causes, pvc: &Value) {
    let spec = &pvc["spec"];
    let modes = items(spec, "accessModes");
    if modes.is_empty() {
        c.required("spec.accessModes", "at least 1 access mode is required");
    }
    const MODES: [&str; 4] = [
        "ReadOnlyMany",
        "ReadWriteMany",
        "ReadWriteOnce",
        "ReadWriteOncePod",
    ];
    for m in modes {
        let m = m.as_str().unwrap_or_default();
        if !MODES.contains(&m) {
            c.unsupported("spec.accessModes", m, &MODES);
        }
    }
    let class = text(spec, "storageClassName");
    if !class.is_empty() {
        c.all("spec.storageClassName", class, rfc1123_subdomain(class));
    }
    match spec["resources"]["requests"]["storage"].as_str() {
        None => c.required("spec.resources[storage]", ""),
        Some(q) if millis(q).is_none_or(|m| m <= 0.0) => {
            c.invalid("spec.resources[storage]", q, "must be greater than zero")
        }
        Some(_) => {}
    }
}
