//! Secret values at rest: sealed with ChaCha20-Poly1305 before they reach the database, opened
//! only by the engine that hands them to a step.
//!
//! The key is the administrator's (`PICULET_SECRET_KEY`), or, for a single embedded replica,
//! generated once into the data directory with owner-only permissions.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng};
use chacha20poly1305::{AeadCore, ChaCha20Poly1305, Nonce};

const NONCE_LEN: usize = 12;
const KEY_FILE: &str = "secret.key";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("sealed secrets are corrupt or were sealed with another key (PICULET_SECRET_KEY)")]
    Open,
    #[error("secret key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("secret key file {path}: {message}")]
    KeyFormat { path: String, message: String },
}

/// Seals and opens secret values with one key.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

/// Parses a key given as base64 of 32 bytes.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| "is not base64; generate one with `openssl rand -base64 32`".to_string())?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        format!(
            "decodes to {} bytes, not 32; generate one with `openssl rand -base64 32`",
            b.len()
        )
    })
}

impl SecretBox {
    pub fn new(key: [u8; 32]) -> Self {
        SecretBox {
            cipher: ChaCha20Poly1305::new(&key.into()),
        }
    }

    /// The configured key, else the one in `data_dir/secret.key`, created on first use.
    pub fn from_config(key: Option<[u8; 32]>, data_dir: &Path) -> Result<Self, SecretError> {
        if let Some(key) = key {
            return Ok(Self::new(key));
        }
        let path = data_dir.join(KEY_FILE);
        let io = |source| SecretError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_key(&text)
                .map(Self::new)
                .map_err(|message| SecretError::KeyFormat {
                    path: path.display().to_string(),
                    message,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(io)?;
                let key: [u8; 32] = ChaCha20Poly1305::generate_key(&mut OsRng).into();
                write_private(&path, STANDARD.encode(key).as_bytes()).map_err(io)?;
                Ok(Self::new(key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Nonce followed by ciphertext; a fresh nonce every time.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption only fails for inputs beyond 256 GiB, far past the request size limit.
        let ciphertext = self.cipher.encrypt(&nonce, plaintext).unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretError::Open)
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open() {
        let b = SecretBox::new([7; 32]);
        let sealed = b.seal(b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(b.open(&sealed).unwrap(), b"hunter2");
        assert!(SecretBox::new([8; 32]).open(&sealed).is_err());
        assert!(b.open(&sealed[..5]).is_err());
    }

    #[test]
    fn key_file_is_created_once() {
        let dir = std::env::temp_dir().join(format!("piculet-key-{}", uuid::Uuid::now_v7()));
        let a = SecretBox::from_config(None, &dir).unwrap();
        let b = SecretBox::from_config(None, &dir).unwrap();
        assert_eq!(b.open(&a.seal(b"x")).unwrap(), b"x");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_keys_say_how_to_make_one() {
        assert_eq!(
            parse_key("abc").unwrap_err(),
            "is not base64; generate one with `openssl rand -base64 32`"
        );
        assert_eq!(
            parse_key("YWJj").unwrap_err(),
            "decodes to 3 bytes, not 32; generate one with `openssl rand -base64 32`"
        );
    }
}
