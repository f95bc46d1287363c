//! The dendrite side of Bittensor 10.x's axon convention: dtrain's
//! validator querying miners that run the Python SDK (or dtrain miners
//! with a hotkey). The request is what the SDK's `Dendrite.call` sends — the
//! synapse as JSON, `bt_header_*` headers, the sr25519 signature over
//! `"{nonce}.{dendrite_hotkey}.{axon_hotkey}.{uuid}.{body_hash}"` — with the
//! body hash over the fields dtrain's synapse classes list
//! (`python/dtrain_synapses.py`). An answer's axon signature, when it has
//! one, is checked too (the SDK's dendrite does not): it must come from the
//! hotkey asked.

use super::axon::body_hash;
use super::hotkey::{self, Hotkey};
use crate::subnet::client::{MAX_ANSWER, QueryError};
use crate::subnet::protocol::Query;
use std::time::Duration;

/// The SDK version dtrain announces (10.5.0 as the SDK encodes it): at least
/// 7.2, so SDK axons apply their nonce-freshness rule.
pub const SDK_VERSION: u64 = 10_005_000;

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Sends `query` to the axon at `addr` (host:port) whose hotkey is
/// `axon_hotkey`; returns its answer (the same query kind).
pub fn call(me: &Hotkey, axon_hotkey: &str, addr: &str, query: &Query, timeout: Duration) -> Result<Query, QueryError> {
    let transport = |msg: String| QueryError::Transport { addr: addr.to_string(), msg };
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| transport("expected host:port".into()))?;
    let body = query.to_json();
    let nonce = now_ns();
    let uuid: String = crate::allreduce::identity::random_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect();
    let hash = body_hash(query);
    let signature = me.sign(format!("{nonce}.{}.{axon_hotkey}.{uuid}.{hash}", me.ss58()).as_bytes());
    let headers = [
        ("name", query.name().to_string()),
        ("timeout", timeout.as_secs_f64().to_string()),
        ("bt_header_axon_ip", host.to_string()),
        ("bt_header_axon_port", port.to_string()),
        ("bt_header_axon_hotkey", axon_hotkey.to_string()),
        ("bt_header_dendrite_ip", "127.0.0.1".to_string()),
        ("bt_header_dendrite_version", SDK_VERSION.to_string()),
        ("bt_header_dendrite_nonce", nonce.to_string()),
        ("bt_header_dendrite_uuid", uuid),
        ("bt_header_dendrite_hotkey", me.ss58()),
        ("bt_header_dendrite_signature", format!("0x{}", signature.iter().map(|b| format!("{b:02x}")).collect::<String>())),
        ("header_size", "0".to_string()),
        ("total_size", body.len().to_string()),
        ("computed_body_hash", hash),
    ];
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
    let mut req = agent.post(&format!("http://{addr}/{}", query.name())).header("Content-Type", "application/json");
    for (k, v) in &headers {
        req = req.header(*k, v);
    }
    let mut resp = req.send(&body[..]).map_err(|e| transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let get = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (axon_nonce, axon_uuid, axon_sig, axon_key) =
        (get("bt_header_axon_nonce"), get("bt_header_axon_uuid"), get("bt_header_axon_signature"), get("bt_header_axon_hotkey"));
    let bytes = resp.body_mut().with_config().limit(MAX_ANSWER).read_to_vec().map_err(|e| transport(format!("reading the answer: {e}")))?;
    if status != 200 {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let msg = v["message"]
            .as_str()
            .or(v["error"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
        return Err(QueryError::Refused { addr: addr.to_string(), status, msg });
    }
    // The axon's signature, where it signs its answer (dtrain's axons do;
    // the SDK 10.5.0's answer headers carry only the status, because it
    // builds them from the synapse its handler returns): it must come from
    // the hotkey asked. An unsigned answer is accepted like the SDK's
    // dendrite accepts it; the validator re-checks the work anyway.
    let answer_err = |msg: &str| QueryError::Answer { addr: addr.to_string(), msg: msg.to_string() };
    if let Some(sig) = axon_sig {
        let (Some(n), Some(u), Some(key)) = (axon_nonce, axon_uuid, axon_key) else {
            return Err(answer_err("the axon signature comes without its nonce, uuid or hotkey"));
        };
        if key != axon_hotkey {
            return Err(answer_err(&format!("answered by hotkey {key}, not {axon_hotkey}")));
        }
        if !hotkey::verify(&key, format!("{n}.{}.{key}.{u}", me.ss58()).as_bytes(), &sig).unwrap_or(false) {
            return Err(answer_err("the axon's signature does not verify"));
        }
    }
    Query::parse(query.name(), &bytes).expect("a known query name").map_err(|e| answer_err(&e.to_string()))
}
