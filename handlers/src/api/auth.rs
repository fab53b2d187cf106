//! Who is calling: the `x-api-key` header checked locally, or the key id API Gateway already checked.
//!
//! The caller's key id becomes the actor of every event the request appends (`api-key:<id>`).

use std::fmt;

use axum::http::request::Parts;
use rand::Rng;
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The header a client sends its API key in.
pub const API_KEY_HEADER: &str = "x-api-key";

/// The shortest secret `ApiKeys` accepts: long enough that guessing is hopeless.
pub const MIN_SECRET_LEN: usize = 16;

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The API key's id (never the secret).
    pub key_id: String,
}

impl Caller {
    /// The actor recorded in events: `api-key:<id>`.
    pub fn actor(&self) -> String {
        format!("api-key:{}", self.key_id)
    }
}

/// The key id API Gateway resolved for a request (`requestContext.identity.apiKeyId`).
///
/// The Lambda binary copies it from `lambda_http`'s request context into the request's extensions,
/// so the core never imports Lambda types and no client-sent header can forge it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayKeyId(pub String);

/// Why a key table could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyConfigError {
    /// A key id that cannot be part of an actor.
    #[error("API key id {0:?} must be 1 to 64 characters of A-Z a-z 0-9 _ . -")]
    BadKeyId(String),
    /// A secret too short to be safe.
    #[error("the secret of API key {0:?} must be at least {MIN_SECRET_LEN} characters")]
    WeakSecret(String),
    /// Two keys with the same secret would be indistinguishable.
    #[error("API keys {0:?} and {1:?} have the same secret")]
    DuplicateSecret(String, String),
    /// An entry of `id=secret,…` without `=` (numbered from 1; not quoted, as it may be a secret).
    #[error("API key entry {0} is not of the form id=secret")]
    Malformed(usize),
}

/// Local API keys: secret → key id. Secrets are kept only as SHA-256 digests.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<([u8; 32], String)>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets, not even their digests.
        f.debug_struct("ApiKeys")
            .field(
                "key_ids",
                &self.keys.iter().map(|(_, id)| id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Compares two digests without an early exit, so timing does not tell how much of a guess was right.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl ApiKeys {
    /// Builds the table from `(key id, secret)` pairs.
    pub fn new<I, K, T>(pairs: I) -> Result<Self, KeyConfigError>
    where
        I: IntoIterator<Item = (K, T)>,
        K: Into<String>,
        T: AsRef<str>,
    {
        let mut keys: Vec<([u8; 32], String)> = Vec::new();
        for (id, secret) in pairs {
            let id = id.into();
            if !valid_key_id(&id) {
                return Err(KeyConfigError::BadKeyId(id));
            }
            if secret.as_ref().len() < MIN_SECRET_LEN {
                return Err(KeyConfigError::WeakSecret(id));
            }
            let d = digest(secret.as_ref().as_bytes());
            if let Some((_, other)) = keys.iter().find(|(k, _)| digests_equal(k, &d)) {
                return Err(KeyConfigError::DuplicateSecret(other.clone(), id));
            }
            keys.push((d, id));
        }
        Ok(ApiKeys { keys })
    }

    /// Parses `id=secret,id2=secret2` (the form of the `JOBLEDGER_API_KEYS` setting).
    pub fn parse(spec: &str) -> Result<Self, KeyConfigError> {
        let pairs = spec
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .enumerate()
            .map(|(i, entry)| {
                entry
                    .split_once('=')
                    .ok_or(KeyConfigError::Malformed(i + 1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(pairs)
    }

    /// A fresh random secret (32 bytes, hex), e.g. for `jobledger dev` to print at start.
    pub fn generate_secret() -> String {
        let bytes: [u8; 32] = rand::rng().random();
        hex::encode(bytes)
    }

    /// The key id a secret belongs to. Every entry is compared, in constant time each.
    pub fn key_id(&self, secret: &str) -> Option<&str> {
        let d = digest(secret.as_bytes());
        let mut found = None;
        for (k, id) in &self.keys {
            // No early return: the time taken does not depend on which entry matched.
            if digests_equal(k, &d) {
                found = Some(id.as_str());
            }
        }
        found
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys (every request is then refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// How the API learns the caller's key id.
#[derive(Clone, Debug)]
pub enum Authenticator {
    /// The server checks `x-api-key` itself (`jobledger dev`, `axum::serve`).
    Keys(ApiKeys),
    /// API Gateway checked the key; its id arrives as a [`GatewayKeyId`] request extension.
    Gateway,
}

impl Authenticator {
    /// The caller of a request: 401 without credentials, 403 with wrong ones.
    pub fn authenticate(&self, parts: &Parts) -> Result<Caller, ApiError> {
        match self {
            Authenticator::Keys(keys) => {
                let Some(value) = parts.headers.get(API_KEY_HEADER) else {
                    return Err(ApiError::unauthenticated(
                        "missing API key: send it in the x-api-key header",
                    ));
                };
                let secret = value.to_str().unwrap_or_default();
                match keys.key_id(secret) {
                    Some(id) => Ok(Caller {
                        key_id: id.to_string(),
                    }),
                    None => Err(ApiError::forbidden("the API key is not valid")),
                }
            }
            Authenticator::Gateway => match parts.extensions.get::<GatewayKeyId>() {
                Some(GatewayKeyId(id)) if valid_key_id(id) => Ok(Caller { key_id: id.clone() }),
                Some(_) => Err(ApiError::forbidden(
                    "the gateway passed an API key id this service cannot use",
                )),
                None => Err(ApiError::unauthenticated(
                    "missing API key: send it in the x-api-key header",
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = axum::http::Request::builder();
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_known_secret_resolves_to_its_key_id() {
        let keys = ApiKeys::parse("alice=aaaaaaaaaaaaaaaa1, bob=bbbbbbbbbbbbbbbb2").unwrap();
        assert_eq!(keys.key_id("bbbbbbbbbbbbbbbb2"), Some("bob"));
        assert_eq!(keys.key_id("aaaaaaaaaaaaaaaa1"), Some("alice"));
        assert_eq!(keys.key_id("aaaaaaaaaaaaaaaa"), None);
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn weak_duplicate_or_malformed_keys_are_refused() {
        assert_eq!(
            ApiKeys::parse("a=short").unwrap_err(),
            KeyConfigError::WeakSecret("a".into())
        );
        assert_eq!(
            ApiKeys::parse("a=0123456789abcdef,b=0123456789abcdef").unwrap_err(),
            KeyConfigError::DuplicateSecret("a".into(), "b".into())
        );
        assert_eq!(
            ApiKeys::parse("nosecret").unwrap_err(),
            KeyConfigError::Malformed(1)
        );
        assert!(matches!(
            ApiKeys::parse("a b=0123456789abcdef"),
            Err(KeyConfigError::BadKeyId(_))
        ));
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let keys = ApiKeys::new([("ci", "super-secret-value-1")]).unwrap();
        let shown = format!("{keys:?}");
        assert!(
            shown.contains("ci") && !shown.contains("super-secret"),
            "{shown}"
        );
    }

    #[test]
    fn local_keys_answer_401_without_a_key_and_403_with_a_wrong_one() {
        let auth = Authenticator::Keys(ApiKeys::new([("ci", "0123456789abcdef")]).unwrap());
        assert_eq!(auth.authenticate(&parts(&[])).unwrap_err().status(), 401);
        let wrong = auth
            .authenticate(&parts(&[("x-api-key", "nope")]))
            .unwrap_err();
        assert_eq!(wrong.status(), 403);
        let ok = auth
            .authenticate(&parts(&[("x-api-key", "0123456789abcdef")]))
            .unwrap();
        assert_eq!(ok.actor(), "api-key:ci");
    }

    #[test]
    fn behind_the_gateway_only_the_request_context_counts_not_the_header() {
        let auth = Authenticator::Gateway;
        // A client-sent header must not authenticate: only the gateway's context can.
        let err = auth
            .authenticate(&parts(&[("x-api-key", "0123456789abcdef")]))
            .unwrap_err();
        assert_eq!(err.status(), 401);
        let mut p = parts(&[]);
        p.extensions.insert(GatewayKeyId("k-123".into()));
        assert_eq!(auth.authenticate(&p).unwrap().key_id, "k-123");
    }

    #[test]
    fn generated_secrets_are_accepted_and_differ() {
        let (a, b) = (ApiKeys::generate_secret(), ApiKeys::generate_secret());
        assert_ne!(a, b);
        let keys = ApiKeys::new([("dev", a.as_str())]).unwrap();
        assert_eq!(keys.key_id(&a), Some("dev"));
    }
}
