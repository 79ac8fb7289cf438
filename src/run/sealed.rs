//! The secret values and registry credentials of a run: sealed by the service's key when a
//! pipeline is stored, kept apart from the rest of its submission, opened by the engine (and by
//! a retry, which submits them again).

use serde::{Deserialize, Serialize};

use super::{RegistryCredential, SecretValue};
use crate::secrets::SecretBox;

/// What is sealed: the secret values and registry credentials of a submission.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub secrets: Vec<SecretValue>,
    pub registries: Vec<RegistryCredential>,
}

impl Sealed {
    /// Sealed for storing; `None` when there is nothing to seal.
    pub fn seal(&self, secret_box: &SecretBox) -> Option<Vec<u8>> {
        if self.secrets.is_empty() && self.registries.is_empty() {
            return None;
        }
        Some(secret_box.seal(&serde_json::to_vec(self).unwrap_or_default()))
    }

    /// Opens what [`Sealed::seal`] stored; nothing stored opens as nothing.
    pub fn open(secret_box: &SecretBox, sealed: Option<&[u8]>) -> Result<Sealed, String> {
        let Some(sealed) = sealed else {
            return Ok(Sealed::default());
        };
        let plain = secret_box.open(sealed).map_err(|e| e.to_string())?;
        // Not serde's message, which may quote a secret value.
        serde_json::from_slice(&plain).map_err(|e| {
            format!(
                "sealed secrets are unreadable ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_sealed_opens_as_it_was() {
        let secret_box = SecretBox::new([7; 32]);
        assert_eq!(Sealed::default().seal(&secret_box), None);
        assert_eq!(Sealed::open(&secret_box, None).unwrap(), Sealed::default());
        let sealed = Sealed {
            secrets: vec![SecretValue {
                name: "token".into(),
                value: "s3cr3t".into(),
            }],
            registries: vec![RegistryCredential {
                address: "registry.example.com".into(),
                username: "ci".into(),
                password: "pw".into(),
            }],
        };
        let stored = sealed.seal(&secret_box).unwrap();
        assert!(!String::from_utf8_lossy(&stored).contains("s3cr3t"));
        assert_eq!(Sealed::open(&secret_box, Some(&stored)).unwrap(), sealed);
    }
}
