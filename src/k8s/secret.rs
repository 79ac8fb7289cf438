//! Secrets: the workflow's Secret holding the submission's secret values its steps use (steps
//! read them through `secretKeyRef`, so no value is ever in a pod spec), and the
//! `kubernetes.io/dockerconfigjson` pull Secret for submitted registry credentials.

use std::collections::BTreeMap;

use base64::Engine;
use k8s_openapi::api::core::v1::Secret;

use super::names;
use super::policy::{RULE_SUBMISSION, Violations};
use super::render::Ctx;
use crate::pipeline::{EnvValue, SettingValue, StepSpec};

/// What a dry-run shows in place of a secret value.
pub const REDACTED: &str = "<redacted>";

/// The Secret key of a submission secret: its name when that is a valid key, else a hash.
pub fn secret_key(name: &str) -> String {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name != "."
        && name != "..";
    if valid {
        name.to_string()
    } else {
        format!("secret-{}", names::short_hash(&[name], 16))
    }
}

/// The secrets the workflow uses, with their key; a secret the submission does not carry is a
/// violation (the planner normally refuses it first).
pub(crate) fn keys_used(
    steps: &[&StepSpec],
    values: &BTreeMap<String, String>,
    v: &mut Violations,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for step in steps {
        let from_env = step.environment.iter().filter_map(|(k, e)| match e {
            EnvValue::FromSecret(s) => Some((format!("environment.{k}"), s)),
            EnvValue::Literal(_) => None,
        });
        let from_settings = step.settings.iter().filter_map(|(k, s)| match s {
            SettingValue::FromSecret(s) => Some((format!("settings.{k}"), s)),
            SettingValue::Value(_) => None,
        });
        for (field, name) in from_env.chain(from_settings) {
            if values.contains_key(name) {
                out.insert(name.clone(), secret_key(name));
            } else {
                v.push(
                    &step.name,
                    &format!("{field}.from_secret"),
                    name,
                    RULE_SUBMISSION,
                    "is not a secret of the submission; add it to the submission's secrets",
                );
            }
        }
    }
    out
}

/// The Secret of the secret values the workflow uses, if it uses any.
pub(crate) fn values_secret(ctx: &Ctx) -> Option<Secret> {
    if ctx.secret_keys.is_empty() {
        return None;
    }
    let data: BTreeMap<String, String> = ctx
        .secret_keys
        .iter()
        .map(|(name, key)| {
            let value = if ctx.input.redact_secrets {
                REDACTED.to_string()
            } else {
                ctx.input.secrets.get(name).cloned().unwrap_or_default()
            };
            (key.clone(), value)
        })
        .collect();
    Some(Secret {
        metadata: ctx.metadata(&ctx.names.secret),
        type_: Some("Opaque".to_string()),
        string_data: Some(data),
        ..Default::default()
    })
}

/// The pull Secret for the submission's registries, if it has any.
pub(crate) fn registry_secret(ctx: &Ctx) -> Option<Secret> {
    if ctx.input.registries.is_empty() {
        return None;
    }
    let mut by_address: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
    for r in &ctx.input.registries {
        let (password, auth) = if ctx.input.redact_secrets {
            (REDACTED.to_string(), REDACTED.to_string())
        } else {
            (
                r.password.clone(),
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", r.username, r.password)),
            )
        };
        by_address.insert(
            &r.address,
            serde_json::json!({"username": r.username, "password": password, "auth": auth}),
        );
    }
    let auths: serde_json::Map<String, serde_json::Value> = by_address
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let config = serde_json::json!({ "auths": auths }).to_string();
    Some(Secret {
        metadata: ctx.metadata(&ctx.names.registry_secret),
        type_: Some("kubernetes.io/dockerconfigjson".to_string()),
        string_data: Some(BTreeMap::from([(".dockerconfigjson".to_string(), config)])),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(secret_key("registry_password"), "registry_password");
        assert_eq!(secret_key("a.b-C"), "a.b-C");
        let k = secret_key("with space");
        assert!(k.starts_with("secret-") && k.len() == 23, "{k}");
        assert_ne!(secret_key("with space"), secret_key("with  space"));
        assert!(secret_key("..").starts_with("secret-"));
    }
}
