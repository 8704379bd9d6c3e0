//! API keys: what a key may do ([`Scope`]), how the catalog keeps it ([`ApiKey`]: only the
//! SHA-256 of its secret), how a config declares one ([`ConfiguredKey`]), and why a request's
//! key is refused ([`AuthError`]).
//!
//! Secrets are random and at least 128 bits, so one round of SHA-256 is enough to keep them
//! (as GitHub and Stripe keep tokens): the catalog, its old generations and its backups
//! hold nothing a caller could send. A key is found by the hash of the secret sent; the
//! lookup compares hashes, whose timing says nothing about any secret.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::event::Millis;

/// The fewest characters a secret may have: 128 bits written in hex.
pub const MIN_SECRET_LEN: usize = 32;

/// What an API key may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send events.
    Write,
    /// Query views and raw events.
    Read,
    /// Change the registry, views and keys.
    Admin,
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Write => "write",
            Scope::Read => "read",
            Scope::Admin => "admin",
        })
    }
}

/// Why a request's key was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("missing Authorization: Bearer <{0} key>")]
    Missing(Scope),
    /// The key is not known, or it expired.
    #[error("unknown API key")]
    Unknown,
    /// The key is known but lacks the scope.
    #[error("API key '{key}' lacks the {scope} scope")]
    Lacks {
        /// The key's name (its source).
        key: String,
        /// The scope it lacks.
        scope: Scope,
    },
}

impl AuthError {
    /// The HTTP status this refusal deserves: 401 without a valid key, 403 with one.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing(_) | AuthError::Unknown => 401,
            AuthError::Lacks { .. } => 403,
        }
    }
}

/// An API key as the catalog keeps it, bound to one tenant; its name is the `source` stamped
/// on what it sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The SHA-256 of the secret the client sends as `Authorization: Bearer <secret>`, in hex.
    pub secret_sha256: String,
    /// The tenant it acts for.
    pub tenant: String,
    /// Its name, recorded as the `source` of the events it sends.
    pub source: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it stops working (epoch ms): set on the old key while a rotation's grace runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
}

impl ApiKey {
    /// A key with this secret, kept as its hash.
    pub fn new(secret: &str, tenant: &str, source: &str, scopes: Vec<Scope>) -> ApiKey {
        ApiKey {
            secret_sha256: secret_sha256(secret),
            tenant: tenant.to_owned(),
            source: source.to_owned(),
            scopes,
            expires_at: None,
        }
    }

    /// Whether the key carries `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// Whether the key still works at `now`.
    pub fn live_at(&self, now: Millis) -> bool {
        self.expires_at.is_none_or(|expiry| now < expiry)
    }

    /// A short name for the key in listings and logs: the start of its hash, which reveals
    /// nothing of the secret.
    pub fn id(&self) -> &str {
        self.secret_sha256.get(..12).unwrap_or(&self.secret_sha256)
    }
}

/// The SHA-256 of a secret, in hex: how the catalog finds a key.
pub fn secret_sha256(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The secret of an `Authorization` header's value: `Bearer <secret>`, the scheme in any
/// case (RFC 7235).
pub fn bearer_secret(header: &str) -> Option<&str> {
    let (scheme, secret) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| secret.trim())
        .filter(|secret| !secret.is_empty())
}

/// Whether `secret` is long enough to be one: at least [`MIN_SECRET_LEN`] characters, not
/// all the same. A config's and the demo's keys are checked with it at start.
pub fn check_secret(what: &str, secret: &str) -> Result<(), String> {
    let first = secret.chars().next();
    if secret.chars().count() < MIN_SECRET_LEN || secret.chars().all(|c| Some(c) == first) {
        return Err(format!(
            "{what} is too weak: a key needs at least {MIN_SECRET_LEN} random characters (128 bits in hex); make one with `openssl rand -hex 16`"
        ));
    }
    Ok(())
}

/// An API key as a config file declares it: its secret in clear (`key`), or only its hash
/// (`key_sha256`) so that the config holds no secret either.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfiguredKey {
    /// The secret, at least [`MIN_SECRET_LEN`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The SHA-256 of the secret in hex (`printf %s "$KEY" | sha256sum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    /// The tenant it acts for.
    pub tenant: String,
    /// Its name, recorded as the `source` of the events it sends.
    pub source: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
}

impl ConfiguredKey {
    /// The key as the catalog keeps it; an error names the key and what to fix.
    pub fn to_api_key(&self) -> Result<ApiKey, String> {
        let what = format!("api_key '{}' of tenant '{}'", self.source, self.tenant);
        let secret_sha256 = match (&self.key, &self.key_sha256) {
            (Some(secret), None) => {
                check_secret(&what, secret)?;
                secret_sha256(secret)
            }
            (None, Some(hash))
                if hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()) =>
            {
                hash.to_ascii_lowercase()
            }
            (None, Some(_)) => {
                return Err(format!("{what}: key_sha256 must be 64 hex digits"));
            }
            _ => return Err(format!("{what}: give exactly one of key and key_sha256")),
        };
        Ok(ApiKey {
            secret_sha256,
            tenant: self.tenant.clone(),
            source: self.source.clone(),
            scopes: self.scopes.clone(),
            expires_at: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive_and_the_secret_required() {
        for header in ["Bearer abc", "bearer abc", "BEARER  abc ", " Bearer abc"] {
            assert_eq!(bearer_secret(header), Some("abc"), "{header:?}");
        }
        for header in ["Bearer", "Bearer ", "Basic abc", "abc", ""] {
            assert_eq!(bearer_secret(header), None, "{header:?}");
        }
    }

    #[test]
    fn keys_are_kept_as_hashes_with_an_id_outside_the_secret() {
        let secret = "tk_00112233445566778899aabbccddeeff";
        let key = ApiKey::new(secret, "t", "s", vec![Scope::Read]);
        assert_eq!(key.secret_sha256.len(), 64);
        assert!(!key.secret_sha256.contains(secret));
        assert!(
            !secret.contains(key.id()),
            "the id is no part of the secret"
        );
        let stored = serde_json::to_string(&key).unwrap();
        assert!(!stored.contains(secret), "{stored}");
        assert!(key.live_at(0));
        let expiring = ApiKey {
            expires_at: Some(10),
            ..key
        };
        assert!(expiring.live_at(9) && !expiring.live_at(10));
    }

    #[test]
    fn configured_keys_must_be_strong_or_given_as_hashes() {
        let configured = |key: Option<&str>, hash: Option<&str>| ConfiguredKey {
            key: key.map(str::to_owned),
            key_sha256: hash.map(str::to_owned),
            tenant: "acme".into(),
            source: "web".into(),
            scopes: vec![Scope::Write],
        };
        let strong = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            configured(Some(strong), None)
                .to_api_key()
                .unwrap()
                .secret_sha256,
            secret_sha256(strong)
        );
        let hash = secret_sha256(strong).to_ascii_uppercase();
        assert_eq!(
            configured(None, Some(&hash))
                .to_api_key()
                .unwrap()
                .secret_sha256,
            secret_sha256(strong)
        );
        for (key, hash, expected) in [
            (Some("k1"), None, "too weak"),
            (Some(&"a".repeat(40)[..]), None, "too weak"),
            (None, Some("abc"), "64 hex digits"),
            (None, None, "exactly one of key and key_sha256"),
            (Some(strong), Some(&hash[..]), "exactly one"),
        ] {
            let err = configured(key, hash).to_api_key().unwrap_err();
            assert!(err.contains(expected), "{err}");
            assert!(err.starts_with("api_key 'web' of tenant 'acme'"), "{err}");
        }
    }
}
