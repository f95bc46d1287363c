//! The axon side of Bittensor 10.x's wire convention, learned from the SDK:
//! `POST /<SynapseName>` with the synapse as JSON, and headers
//! `bt_header_dendrite_{hotkey,nonce,uuid,signature,version,...}`,
//! `bt_header_axon_{hotkey,...}`, `computed_body_hash`, `timeout`, `name`.
//! The dendrite signs `"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{body_hash}"`
//! with sr25519; the body hash is SHA3-256 over the concatenated SHA3-256
//! hex digests of `str(value)` of each field the synapse class lists in
//! `required_hash_fields`, in that order.
//!
//! Where the SDK is weak, dtrain does not follow it:
//! - the SDK hashes only the fields a synapse class lists (none by default)
//!   and compares the header with the body it parses; dtrain always hashes
//!   the request fields it acts on ([`hashed_fields`]; the matching Python
//!   classes are in `python/dtrain_synapses.py`), so a body altered in
//!   transit is refused;
//! - the SDK checks a nonce's age only when the dendrite claims version ≥
//!   7.2 (an unsigned header) and its first time; dtrain always checks that
//!   the nonce is within its clock window (plus the synapse's timeout) and
//!   refuses an exact replay.
//!
//! Answers go back the same way: status code, the filled synapse as JSON,
//! and `bt_header_axon_*` headers (status, message, process time, this
//! axon's hotkey, a nonce, a uuid, and its signature over
//! `"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}"`).

use super::hotkey::{self, Hotkey};
use crate::subnet::auth::{AuthError, ReplayGuard};
use crate::subnet::protocol::Query;
use sha3::{Digest, Sha3_256};
use std::time::Duration;

/// Header names (lower case, as the server stores them).
pub const H_DENDRITE_HOTKEY: &str = "bt_header_dendrite_hotkey";
const H_DENDRITE_NONCE: &str = "bt_header_dendrite_nonce";
const H_DENDRITE_UUID: &str = "bt_header_dendrite_uuid";
const H_DENDRITE_SIGNATURE: &str = "bt_header_dendrite_signature";
const H_AXON_HOTKEY: &str = "bt_header_axon_hotkey";
const H_BODY_HASH: &str = "computed_body_hash";
const H_TIMEOUT: &str = "timeout";

/// Whether a request follows the axon convention.
pub fn is_axon_request(get: impl Fn(&str) -> Option<String>) -> bool {
    get(H_DENDRITE_HOTKEY).is_some()
}

/// Python's `str()` of a float: the shortest repr that round-trips, with an
/// exponent below 1e-4 and from 1e16 on (`1e-05`, `1.5e+16`, `5.0`).
pub fn py_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sci = format!("{:e}", x); // shortest digits: "-1.5e16", "6e-4"
    let (mant, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let neg = mant.starts_with('-');
    let digits: String = mant.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 { format!("{}.{}", &digits[..1], &digits[1..]) } else { digits };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

fn py_opt<T>(v: &Option<T>, f: impl Fn(&T) -> String) -> String {
    v.as_ref().map_or("None".into(), f)
}

fn py_list<T: ToString>(v: &[T]) -> String {
    format!("[{}]", v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
}

/// The request fields dtrain acts on, hashed into `computed_body_hash`, as
/// (name, Python `str()` of the value), in the order the Python classes
/// list them.
pub fn hashed_fields(q: &Query) -> Vec<(&'static str, String)> {
    match q {
        Query::IsAlive(_) => vec![],
        Query::Train(t) => {
            vec![("gradient_test_index", py_opt(&t.gradient_test_index, |v| v.to_string())), ("model_name", py_opt(&t.model_name, |v| v.clone()))]
        }
        Query::AllReduce(a) => vec![
            ("learning_rate", py_opt(&a.learning_rate, |v| py_float(*v))),
            ("round", py_opt(&a.round, |v| v.to_string())),
            ("group", py_opt(&a.group, |v| py_list(v))),
            ("all_reduce_timeout", py_opt(&a.all_reduce_timeout, |v| py_float(*v))),
        ],
    }
}

fn sha3_hex(s: &str) -> String {
    Sha3_256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The SDK's body hash over [`hashed_fields`].
pub fn body_hash(q: &Query) -> String {
    let inner: String = hashed_fields(q).iter().map(|(_, v)| sha3_hex(v)).collect();
    sha3_hex(&inner)
}

/// Who sent a verified request.
#[derive(Debug, Clone)]
pub struct Dendrite {
    pub hotkey: String,
    pub nonce: u64,
    pub uuid: String,
}

/// Verifies an axon-convention request addressed to `me` whose body parsed
/// as `query`: headers present, addressed to this hotkey, body hash over the
/// hashed fields, fresh, signed by the claimed hotkey, `known`, not seen before.
pub fn verify(
    get: impl Fn(&str) -> Option<String>,
    query: &Query,
    me: &Hotkey,
    guard: &ReplayGuard,
    known: impl Fn(&str) -> bool,
) -> Result<Dendrite, AuthError> {
    let header = |name: &'static str| get(name).ok_or(AuthError::Unsigned(name));
    let hotkey = header(H_DENDRITE_HOTKEY)?;
    let nonce: u64 = header(H_DENDRITE_NONCE)?.trim().parse().map_err(|_| AuthError::Malformed(H_DENDRITE_NONCE))?;
    let uuid = header(H_DENDRITE_UUID)?;
    let signature = header(H_DENDRITE_SIGNATURE)?;
    let claimed_hash = header(H_BODY_HASH)?;
    if uuid.is_empty() || uuid.len() > 64 || !uuid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(AuthError::Malformed(H_DENDRITE_UUID));
    }
    hotkey::ss58_decode(&hotkey).map_err(|_| AuthError::Malformed(H_DENDRITE_HOTKEY))?;
    if let Some(to) = get(H_AXON_HOTKEY)
        && to != me.ss58()
    {
        return Err(AuthError::Malformed(H_AXON_HOTKEY));
    }
    if claimed_hash != body_hash(query) {
        return Err(AuthError::Malformed(H_BODY_HASH));
    }
    if !known(&hotkey) {
        return Err(AuthError::Unknown(hotkey));
    }
    // The synapse's timeout widens the window, as the SDK's does (bounded).
    let timeout = get(H_TIMEOUT).and_then(|t| t.trim().parse::<f64>().ok()).filter(|t| t.is_finite()).unwrap_or(0.0).clamp(0.0, 600.0);
    let now = guard.fresh(nonce, Duration::from_secs_f64(timeout))?;
    let message = format!("{nonce}.{hotkey}.{}.{uuid}.{claimed_hash}", me.ss58());
    if !hotkey::verify(&hotkey, message.as_bytes(), &signature).unwrap_or(false) {
        return Err(AuthError::Signature);
    }
    guard.remember((hotkey.clone(), nonce, uuid.clone()), now)?;
    Ok(Dendrite { hotkey, nonce, uuid })
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The headers of an answer: the axon's terminal info, signed.
pub fn response_headers(
    me: &Hotkey,
    name: &str,
    dendrite: Option<&Dendrite>,
    status: u16,
    message: &str,
    process_time: f64,
) -> Vec<(String, String)> {
    let nonce = now_ns();
    let uuid: String = crate::allreduce::identity::random_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect();
    let mut h = vec![
        ("name".to_string(), name.to_string()),
        ("bt_header_axon_status_code".into(), status.to_string()),
        ("bt_header_axon_status_message".into(), message.chars().filter(|c| !c.is_control()).take(512).collect()),
        ("bt_header_axon_process_time".into(), format!("{process_time:.6}")),
        ("bt_header_axon_hotkey".into(), me.ss58()),
        ("bt_header_axon_nonce".into(), nonce.to_string()),
        ("bt_header_axon_uuid".into(), uuid.clone()),
    ];
    if let Some(d) = dendrite {
        let sig = me.sign(format!("{nonce}.{}.{}.{uuid}", d.hotkey, me.ss58()).as_bytes());
        h.push(("bt_header_axon_signature".into(), format!("0x{}", sig.iter().map(|b| format!("{b:02x}")).collect::<String>())));
        h.push(("bt_header_dendrite_hotkey".into(), d.hotkey.clone()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against Python's `str(float)` (values checked with CPython 3.11).
    #[test]
    fn floats_print_like_python() {
        for (x, want) in [
            (0.001, "0.001"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (5.0, "5.0"),
            (-2.5, "-2.5"),
            (123456.789, "123456.789"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (9999999999999998.0, "9999999999999998.0"),
            (6e-4, "0.0006"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e22, "1e+22"),
            (-0.0, "-0.0"),
            (3e-300, "3e-300"),
        ] {
            assert_eq!(py_float(x), want, "{x:e}");
        }
    }

    #[test]
    fn body_hash_of_a_synapse_without_hashed_fields_is_sha3_of_nothing() {
        // SHA3-256("") hashed once more, as the SDK does for an empty list.
        assert_eq!(body_hash(&Query::IsAlive(Default::default())), sha3_hex(""));
        assert_eq!(sha3_hex(""), "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a");
    }
}
