//! Sending a signed query to a node and reading its bounded answer.

use super::auth::sign;
use super::protocol::Query;
use crate::allreduce::{Identity, PublicKey};
use std::time::Duration;

/// Largest answer read (a Train answer lists ~500 row ids and sums).
pub const MAX_ANSWER: u64 = 16 << 20;
/// Largest state download (a 1.5B model's token embedding in fp16 is 154 MB).
pub const MAX_STATE: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{addr}: {msg}")]
    Transport { addr: String, msg: String },
    #[error("{addr} refused the query (HTTP {status}): {msg}")]
    Refused { addr: String, status: u16, msg: String },
    #[error("{addr}: malformed answer: {msg}")]
    Answer { addr: String, msg: String },
}

/// POSTs `body` to `http://{addr}/{name}` signed by `caller` for `receiver`;
/// returns the answer's bytes (at most `limit`) when the status is 200.
fn signed_post(
    caller: &Identity,
    receiver: &PublicKey,
    addr: &str,
    name: &str,
    body: &[u8],
    timeout: Duration,
    limit: u64,
) -> Result<Vec<u8>, QueryError> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
    let mut req = agent.post(&format!("http://{addr}/{name}")).header("Content-Type", "application/json");
    for (k, v) in sign(caller, receiver, body) {
        req = req.header(k, &v);
    }
    let transport = |msg: String| QueryError::Transport { addr: addr.to_string(), msg };
    let mut resp = req.send(body).map_err(|e| transport(e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = resp.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| transport(format!("reading the answer: {e}")))?;
    if status != 200 {
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let msg = v["error"].as_str().map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned());
        return Err(QueryError::Refused { addr: addr.to_string(), status, msg });
    }
    Ok(bytes)
}

/// Sends `query` to the node at `addr` (host:port) whose key is `receiver`,
/// signed by `caller`; returns the node's answer (the same query kind).
pub fn send(caller: &Identity, receiver: &PublicKey, addr: &str, query: &Query, timeout: Duration) -> Result<Query, QueryError> {
    let bytes = signed_post(caller, receiver, addr, query.name(), &query.to_json(), timeout, MAX_ANSWER)?;
    Query::parse(query.name(), &bytes).expect("a known query name").map_err(|e| QueryError::Answer { addr: addr.to_string(), msg: e.to_string() })
}

/// Downloads parameter tensor `tensor` in fp16 from the node at `addr`
/// (`POST /State`, signed); returns the bytes.
pub fn fetch_state(caller: &Identity, receiver: &PublicKey, addr: &str, tensor: &str, timeout: Duration) -> Result<Vec<u8>, QueryError> {
    let body = serde_json::to_vec(&super::protocol::StateRequest { tensor: tensor.to_string() }).expect("plain data serializes");
    signed_post(caller, receiver, addr, "State", &body, timeout, MAX_STATE)
}

/// Registers `caller` at the registry served by `addr` (key `receiver`).
pub fn join_registry(
    caller: &Identity,
    receiver: &PublicKey,
    addr: &str,
    req: &super::protocol::JoinRequest,
    timeout: Duration,
) -> Result<u16, QueryError> {
    let bytes = signed_post(caller, receiver, addr, "Join", &serde_json::to_vec(req).expect("plain data serializes"), timeout, MAX_ANSWER)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| QueryError::Answer { addr: addr.to_string(), msg: e.to_string() })?;
    v["uid"].as_u64().and_then(|u| u16::try_from(u).ok()).ok_or_else(|| QueryError::Answer { addr: addr.to_string(), msg: format!("no uid in {v}") })
}

/// The node list of the registry served by `addr`.
pub fn fetch_registry(caller: &Identity, receiver: &PublicKey, addr: &str, timeout: Duration) -> Result<Vec<super::registry::Node>, QueryError> {
    let bytes = signed_post(caller, receiver, addr, "Registry", b"{}", timeout, MAX_ANSWER)?;
    serde_json::from_slice(&bytes).map_err(|e| QueryError::Answer { addr: addr.to_string(), msg: e.to_string() })
}
