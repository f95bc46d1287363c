//! Signed queries. The caller signs
//! `"{nonce}.{caller}.{receiver}.{uuid}.{sha256(body)}"` (keys as hex) —
//! the shape of Bittensor's axon signatures, with ed25519 keys — and sends
//! the parts as headers. The receiver refuses a query that is unsigned,
//! from a key it does not know, older or newer than its clock window,
//! badly signed, or seen before (same caller, nonce and uuid).

use crate::allreduce::{Identity, PublicKey};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const H_CALLER: &str = "x-dtrain-caller";
pub const H_NONCE: &str = "x-dtrain-nonce";
pub const H_UUID: &str = "x-dtrain-uuid";
pub const H_SIGNATURE: &str = "x-dtrain-signature";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("unsigned request (missing header {0})")]
    Unsigned(&'static str),
    #[error("malformed header {0}")]
    Malformed(&'static str),
    #[error("unknown caller {0}")]
    Unknown(String),
    #[error("stale request: nonce {skew_s:.0} s away from this node's clock (window {window_s} s)")]
    Stale { skew_s: f64, window_s: u64 },
    #[error("bad signature")]
    Signature,
    #[error("replayed request")]
    Replayed,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn message(nonce: u64, caller: &str, receiver: &str, uuid: &str, body: &[u8]) -> String {
    format!("{nonce}.{caller}.{receiver}.{uuid}.{}", hex(&Sha256::digest(body)))
}

/// The headers that sign `body` from `caller` to `receiver`.
pub fn sign(caller: &Identity, receiver: &PublicKey, body: &[u8]) -> Vec<(&'static str, String)> {
    let nonce = now_ns();
    let uuid = hex(&crate::allreduce::identity::random_bytes()[..16]);
    let me = caller.public().to_hex();
    let sig = caller.sign(message(nonce, &me, &receiver.to_hex(), &uuid, body).as_bytes());
    vec![(H_CALLER, me), (H_NONCE, nonce.to_string()), (H_UUID, uuid), (H_SIGNATURE, hex(&sig))]
}

/// (caller, nonce, uuid): what makes a signed query unique.
type QueryId = (String, u64, String);

/// The ids seen, and the same ids by arrival time (for forgetting).
type Seen = (HashMap<QueryId, u64>, VecDeque<(u64, QueryId)>);

/// Remembers recent (caller, nonce, uuid) triples to refuse replays; entries
/// older than the clock window are forgotten (a replay that old is refused
/// as stale anyway). Bounded: at most `cap` entries are kept.
pub struct ReplayGuard {
    window: Duration,
    cap: usize,
    seen: Mutex<Seen>,
}

impl ReplayGuard {
    pub fn new(window: Duration, cap: usize) -> ReplayGuard {
        ReplayGuard { window, cap, seen: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    /// Checks a query's signature headers (`get` looks one up by lower-case
    /// name); returns the caller's key. `known` says whether a key may call.
    pub fn verify(
        &self,
        get: impl Fn(&str) -> Option<String>,
        receiver: &PublicKey,
        body: &[u8],
        known: impl Fn(&PublicKey) -> bool,
    ) -> Result<PublicKey, AuthError> {
        let header = |name: &'static str| get(name).ok_or(AuthError::Unsigned(name));
        let caller_hex = header(H_CALLER)?;
        let nonce_text = header(H_NONCE)?;
        let uuid = header(H_UUID)?;
        let sig_hex = header(H_SIGNATURE)?;
        let caller = PublicKey::from_hex(&caller_hex).map_err(|_| AuthError::Malformed(H_CALLER))?;
        let nonce: u64 = nonce_text.trim().parse().map_err(|_| AuthError::Malformed(H_NONCE))?;
        if uuid.is_empty() || uuid.len() > 64 || !uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(AuthError::Malformed(H_UUID));
        }
        let sig: [u8; 64] = decode_hex(&sig_hex).and_then(|v| v.try_into().ok()).ok_or(AuthError::Malformed(H_SIGNATURE))?;
        if !known(&caller) {
            return Err(AuthError::Unknown(caller.to_hex()));
        }
        let now = self.fresh(nonce, Duration::ZERO)?;
        if !caller.verify(message(nonce, &caller.to_hex(), &receiver.to_hex(), &uuid, body).as_bytes(), &sig) {
            return Err(AuthError::Signature);
        }
        self.remember((caller.to_hex(), nonce, uuid), now)?;
        Ok(caller)
    }

    /// The current time, if `nonce` (ns since the epoch) lies within the
    /// clock window (widened by `extra`) of it.
    pub fn fresh(&self, nonce: u64, extra: Duration) -> Result<u64, AuthError> {
        let now = now_ns();
        let window = self.window + extra;
        let skew = now.abs_diff(nonce);
        if skew > window.as_nanos() as u64 {
            return Err(AuthError::Stale { skew_s: skew as f64 / 1e9, window_s: window.as_secs() });
        }
        Ok(now)
    }

    /// Records a signed query's (caller, nonce, uuid); refuses one seen before.
    pub fn remember(&self, key: (String, u64, String), now: u64) -> Result<(), AuthError> {
        let mut guard = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, order) = &mut *guard;
        let horizon = now.saturating_sub(2 * self.window.as_nanos() as u64);
        while order.front().is_some_and(|(t, _)| *t < horizon) || order.len() >= self.cap {
            if let Some((_, k)) = order.pop_front() {
                seen.remove(&k);
            }
        }
        if seen.contains_key(&key) {
            return Err(AuthError::Replayed);
        }
        seen.insert(key.clone(), now);
        order.push_back((now, key));
        Ok(())
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}
