//! `btauth/1`, the signed-HTTP scheme of the Bittensor SDK 11.x
//! (`bittensor.http_auth`), which replaced the axon/dendrite stack: any
//! request proves "sent by hotkey X, to hotkey Y, with exactly this body,
//! recently" with a few headers. The signed payload is the newline-joined
//! UTF-8 of: `btauth/1`, the scheme (`sr25519` or `ed25519`), the uppercase
//! method, the request target (path and query as sent), the lowercase-hex
//! SHA-256 of the raw body, the decimal nanosecond nonce, the sender's
//! SS58, and the receiver's SS58 (`-` when unbound).
//!
//! dtrain verifies as the SDK's `verify` does — receiver bound and equal to
//! this node, nonce at most `max_age` old and `allowed_skew` ahead, the
//! signature under the declared scheme only, then the replay cache (written
//! only after the signature verifies) — and signs sr25519 requests.

use super::hotkey::{self, Hotkey};
use crate::subnet::auth::{AuthError, ReplayGuard};
use sha2::{Digest, Sha256};
use std::time::Duration;

pub const VERSION: &str = "1";
pub const H_VERSION: &str = "x-bittensor-version";
pub const H_HOTKEY: &str = "x-bittensor-hotkey";
pub const H_RECEIVER: &str = "x-bittensor-receiver";
pub const H_NONCE: &str = "x-bittensor-nonce";
pub const H_CRYPTO: &str = "x-bittensor-crypto";
pub const H_SIGNATURE: &str = "x-bittensor-signature";
/// The SDK's defaults: requests up to 10 s old, 2 s ahead.
pub const MAX_AGE: Duration = Duration::from_secs(10);
pub const ALLOWED_SKEW: Duration = Duration::from_secs(2);

/// Whether a request is signed with `btauth/1`.
pub fn is_btauth_request(get: impl Fn(&str) -> Option<String>) -> bool {
    get(H_VERSION).is_some()
}

/// The exact bytes signed.
pub fn payload(scheme: &str, method: &str, path: &str, body: &[u8], nonce: u64, sender: &str, receiver: Option<&str>) -> Vec<u8> {
    let hash: String = Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect();
    ["btauth/1", scheme, &method.to_ascii_uppercase(), path, &hash, &nonce.to_string(), sender, receiver.unwrap_or("-")].join("\n").into_bytes()
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The headers that sign a request (sr25519) to `receiver`.
pub fn sign(me: &Hotkey, method: &str, path: &str, body: &[u8], receiver: &str) -> Vec<(&'static str, String)> {
    let nonce = now_ns();
    let sig = me.sign(&payload("sr25519", method, path, body, nonce, &me.ss58(), Some(receiver)));
    vec![
        (H_VERSION, VERSION.to_string()),
        (H_HOTKEY, me.ss58()),
        (H_NONCE, nonce.to_string()),
        (H_RECEIVER, receiver.to_string()),
        (H_SIGNATURE, format!("0x{}", sig.iter().map(|b| format!("{b:02x}")).collect::<String>())),
    ]
}

fn verify_ed25519(ss58: &str, message: &[u8], sig: &str) -> Result<bool, AuthError> {
    let key = hotkey::ss58_decode(ss58).map_err(|_| AuthError::Malformed(H_HOTKEY))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| AuthError::Malformed(H_HOTKEY))?;
    let bytes: [u8; 64] = (0..128)
        .step_by(2)
        .map(|i| sig.strip_prefix("0x").unwrap_or(sig).get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .filter(|_| sig.strip_prefix("0x").unwrap_or(sig).len() == 128)
        .and_then(|v| v.try_into().ok())
        .ok_or(AuthError::Malformed(H_SIGNATURE))?;
    Ok(key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&bytes)).is_ok())
}

/// Verifies a `btauth/1` request to this node (`me`); returns the caller's
/// SS58. `known` says whether a hotkey may call.
pub fn verify(
    get: impl Fn(&str) -> Option<String>,
    body: &[u8],
    method: &str,
    path: &str,
    me: &str,
    guard: &ReplayGuard,
    known: impl Fn(&str) -> bool,
) -> Result<String, AuthError> {
    if get(H_VERSION).as_deref() != Some(VERSION) {
        return Err(AuthError::Malformed(H_VERSION));
    }
    let sender = get(H_HOTKEY).filter(|s| !s.is_empty()).ok_or(AuthError::Unsigned(H_HOTKEY))?;
    let nonce: u64 = get(H_NONCE).ok_or(AuthError::Unsigned(H_NONCE))?.trim().parse().map_err(|_| AuthError::Malformed(H_NONCE))?;
    let scheme = match get(H_CRYPTO).map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("sr25519") | Some("1") => "sr25519",
        Some("ed25519") | Some("0") => "ed25519",
        Some(_) => return Err(AuthError::Malformed(H_CRYPTO)),
    };
    let signature = get(H_SIGNATURE).ok_or(AuthError::Unsigned(H_SIGNATURE))?;
    // Receiver-bound requests only, to this node.
    let receiver = get(H_RECEIVER).ok_or(AuthError::Unsigned(H_RECEIVER))?;
    if receiver != me {
        return Err(AuthError::Malformed(H_RECEIVER));
    }
    let now = now_ns();
    if now.saturating_sub(nonce) > MAX_AGE.as_nanos() as u64 || nonce.saturating_sub(now) > ALLOWED_SKEW.as_nanos() as u64 {
        let skew_s = (now as f64 - nonce as f64) / 1e9;
        return Err(AuthError::Stale { skew_s, window_s: MAX_AGE.as_secs() });
    }
    if !known(&sender) {
        return Err(AuthError::Unknown(sender));
    }
    let message = payload(scheme, method, path, body, nonce, &sender, Some(&receiver));
    let valid = match scheme {
        "sr25519" => hotkey::verify(&sender, &message, &signature).map_err(|_| AuthError::Malformed(H_SIGNATURE))?,
        _ => verify_ed25519(&sender, &message, &signature)?,
    };
    if !valid {
        return Err(AuthError::Signature);
    }
    guard.remember((sender.clone(), nonce, String::new()), now)?;
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_layout() {
        let p = payload("sr25519", "post", "/Train?x=1", b"", 42, "5A", None);
        let want = "btauth/1\nsr25519\nPOST\n/Train?x=1\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n42\n5A\n-";
        assert_eq!(String::from_utf8(p).unwrap(), want);
    }

    #[test]
    fn signed_requests_verify_once_and_only_as_sent() {
        let (caller, me) = (Hotkey::generate(), Hotkey::generate());
        let guard = ReplayGuard::new(Duration::from_secs(60), 1000);
        let headers = sign(&caller, "POST", "/IsAlive", b"{}", &me.ss58());
        let get = |h: &[(&'static str, String)], k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        let check = |h: &[(&'static str, String)], body: &[u8], path: &str| verify(|k| get(h, k), body, "POST", path, &me.ss58(), &guard, |_| true);
        assert_eq!(check(&headers, b"{ }", "/IsAlive"), Err(AuthError::Signature), "another body");
        assert_eq!(check(&headers, b"{}", "/Train"), Err(AuthError::Signature), "another path");
        assert_eq!(check(&headers, b"{}", "/IsAlive"), Ok(caller.ss58()));
        assert_eq!(check(&headers, b"{}", "/IsAlive"), Err(AuthError::Replayed));
        let other = sign(&caller, "POST", "/IsAlive", b"{}", &Hotkey::generate().ss58());
        assert_eq!(check(&other, b"{}", "/IsAlive"), Err(AuthError::Malformed(H_RECEIVER)));
    }
}
