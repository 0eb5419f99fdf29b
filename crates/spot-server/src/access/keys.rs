//! API keys, sans-IO: the token format, its hash, roles, and the verification of a
//! presented token against the set of active keys.
//!
//! A token is `spot_<id>_<secret>`: `spot_` makes a leaked key recognisable (secret
//! scanners, logs), `<id>` (12 hex digits) names the key in lists, audits and revocations
//! without revealing it, and `<secret>` is 32 random bytes (base64url, 43 characters). Only
//! the SHA-256 of the whole token is stored: with 256 random bits a fast hash is enough
//! (no password stretching needed), and it keeps a check far below a REST request's cost.
//! A check looks the key up by its id and compares the hashes in constant time.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use subtle::ConstantTimeEq;

/// The prefix of every API key.
pub const KEY_PREFIX: &str = "spot_";
/// Random bytes of a key id.
pub const ID_BYTES: usize = 6;
/// Random bytes of a key's (or a spot's) secret.
pub const SECRET_BYTES: usize = 32;

/// What a key may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Read resources (GET) and follow the push streams (`/api/ws`, `/api/stream`).
    Read,
    /// Also change resources (PUT, POST, DELETE), enrol spots, queue commands to spots.
    Write,
    /// Also manage API keys and webhook subscriptions.
    Admin,
}

impl Role {
    /// The role's name (`read`, `write`, `admin`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A role name that is not `read`, `write` or `admin`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("role {0:?} is not one of read, write, admin")]
pub struct BadRole(pub String);

impl FromStr for Role {
    type Err = BadRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            _ => Err(BadRole(s.to_string())),
        }
    }
}

/// SHA-256 of a token (or a spot secret): what is stored.
pub type TokenHash = [u8; 32];

/// The hash of `token`.
pub fn hash_token(token: &str) -> TokenHash {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Whether two hashes are equal, in time independent of where they differ.
pub fn hashes_equal(a: &TokenHash, b: &TokenHash) -> bool {
    a.ct_eq(b).into()
}

/// A secret's text: `bytes` in base64url without padding.
pub fn secret_text(bytes: &[u8; SECRET_BYTES]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new key made of `random` bytes (the caller draws them from the system's generator).
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The key's id (12 hex digits).
    pub id: String,
    /// The whole token, shown once.
    pub token: String,
    /// What is stored.
    pub hash: TokenHash,
}

impl NewKey {
    /// The key built from `random`.
    pub fn from_random(random: &[u8; ID_BYTES + SECRET_BYTES]) -> NewKey {
        let mut id = String::with_capacity(2 * ID_BYTES);
        for b in &random[..ID_BYTES] {
            id.push_str(&format!("{b:02x}"));
        }
        let secret: &[u8; SECRET_BYTES] = random[ID_BYTES..].try_into().expect("32 bytes");
        let token = format!("{KEY_PREFIX}{id}_{}", secret_text(secret));
        let hash = hash_token(&token);
        NewKey { id, token, hash }
    }
}

/// The id part of a token of the right shape.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = id.len() == 2 * ID_BYTES && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && !secret.is_empty()).then_some(id)
}

/// Why a presented token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// No token was presented.
    Missing,
    /// Not of the shape `spot_<id>_<secret>`.
    Malformed,
    /// No active key has this id and secret (unknown, wrong secret or revoked: not told
    /// apart, so a guess learns nothing).
    Invalid,
}

impl KeyRefusal {
    /// The label of the refusal in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRefusal::Missing => "missing",
            KeyRefusal::Malformed => "malformed",
            KeyRefusal::Invalid => "invalid",
        }
    }
}

/// An active key as a check needs it.
#[derive(Debug, Clone)]
struct ActiveKey {
    role: Role,
    hash: TokenHash,
}

/// The active (not revoked) keys, by id.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, ActiveKey>,
}

impl KeySet {
    /// Adds an active key.
    pub fn insert(&mut self, id: String, role: Role, hash: TokenHash) {
        self.keys.insert(id, ActiveKey { role, hash });
    }

    /// Whether the key `id` is active.
    pub fn is_active(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }

    /// Number of active keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is active.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id and role of the active key `token` is, if any.
    pub fn verify<'t>(&self, token: Option<&'t str>) -> Result<(&'t str, Role), KeyRefusal> {
        let token = token.ok_or(KeyRefusal::Missing)?;
        let id = token_id(token).ok_or(KeyRefusal::Malformed)?;
        let hash = hash_token(token);
        match self.keys.get(id) {
            Some(key) if hashes_equal(&key.hash, &hash) => Ok((id, key.role)),
            _ => Err(KeyRefusal::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> NewKey {
        NewKey::from_random(&[seed; ID_BYTES + SECRET_BYTES])
    }

    #[test]
    fn a_token_has_the_prefix_its_id_and_a_43_character_secret() {
        let k = key(0xab);
        assert_eq!(k.id, "abababababab");
        assert!(k.token.starts_with("spot_abababababab_"), "{}", k.token);
        assert_eq!(k.token.len(), "spot_".len() + 12 + 1 + 43);
        assert_eq!(token_id(&k.token), Some("abababababab"));
        assert_eq!(k.hash, hash_token(&k.token));
    }

    #[test]
    fn verify_accepts_the_token_and_refuses_a_changed_secret_an_unknown_id_and_junk() {
        let (a, b) = (key(1), key(2));
        let mut set = KeySet::default();
        set.insert(a.id.clone(), Role::Write, a.hash);
        assert_eq!(set.verify(Some(&a.token)), Ok((a.id.as_str(), Role::Write)));
        let mut changed = a.token.clone();
        changed.pop();
        changed.push('x');
        assert_eq!(set.verify(Some(&changed)), Err(KeyRefusal::Invalid));
        assert_eq!(set.verify(Some(&b.token)), Err(KeyRefusal::Invalid));
        // b's secret with a's id: the hash covers the whole token.
        let spliced = format!("spot_{}_{}", a.id, &b.token[18..]);
        assert_eq!(set.verify(Some(&spliced)), Err(KeyRefusal::Invalid));
        assert_eq!(set.verify(Some("hunter2")), Err(KeyRefusal::Malformed));
        assert_eq!(set.verify(None), Err(KeyRefusal::Missing));
    }

    #[test]
    fn roles_are_ordered_and_parse_from_their_names() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        for role in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().is_err());
    }
}
