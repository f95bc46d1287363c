//! Who a peer is: an ed25519 signing key. The group lists every member's
//! public key; a connection counts only once its far end has signed the
//! handshake (see `handshake`) with the key the group gives its index.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// A member's public key (32 bytes, ed25519).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a key is 64 hex digits, got {0} characters")]
    Length(usize),
    #[error("not a hex digit in key: {0:?}")]
    Hex(char),
    #[error("not a valid ed25519 public key")]
    Point,
}

fn hex_to_32(s: &str) -> Result<[u8; 32], KeyError> {
    let s = s.trim();
    if s.len() != 64 {
        return Err(KeyError::Length(s.chars().count()));
    }
    let mut out = [0u8; 32];
    let digit = |c: char| c.to_digit(16).map(|d| d as u8).ok_or(KeyError::Hex(c));
    let chars: Vec<char> = s.chars().collect();
    for (i, b) in out.iter_mut().enumerate() {
        *b = digit(chars[2 * i])? << 4 | digit(chars[2 * i + 1])?;
    }
    Ok(out)
}

fn to_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

impl PublicKey {
    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    /// Parses 64 hex digits and checks that they are a curve point.
    pub fn from_hex(s: &str) -> Result<PublicKey, KeyError> {
        let bytes = hex_to_32(s)?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Point)?;
        Ok(PublicKey(bytes))
    }

    /// Whether `sig` is this key's (strict) signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let Ok(key) = VerifyingKey::from_bytes(&self.0) else { return false };
        key.verify_strict(msg, &Signature::from_bytes(sig)).is_ok()
    }
}

/// This peer's signing key.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Identity {
        Identity::from_seed(random_bytes())
    }

    /// The key whose secret seed is `seed` (deterministic: for tests and
    /// benchmarks, and for keys stored as their seed).
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        Identity { key: SigningKey::from_bytes(&seed) }
    }

    /// Parses a seed written as 64 hex digits.
    pub fn from_seed_hex(s: &str) -> Result<Identity, KeyError> {
        Ok(Identity::from_seed(hex_to_32(s)?))
    }

    pub fn seed_hex(&self) -> String {
        to_hex(self.key.as_bytes())
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }
}

/// 32 bytes from the operating system's random source.
pub fn random_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system's random source is available");
    b
}
