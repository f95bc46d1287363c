//! The control-plane queries with exactly the reference's fields. As in the
//! reference (Bittensor synapses), one object per query carries the
//! request fields out and comes back with the response fields filled in;
//! every field is optional on the wire and unknown fields are ignored.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IsAlive {
    /// "True" from a live miner.
    pub completion: Option<String>,
    /// The miner's local epoch.
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Train {
    /// Request: index of the 1-D parameter (a bias or layernorm vector)
    /// whose Σ|grad| the miner reports after each batch.
    pub gradient_test_index: Option<u32>,
    /// Request: the model's name.
    pub model_name: Option<String>,
    /// dtrain request: the epoch's projection challenge (64 hex digits);
    /// the answer then carries `projections`.
    pub challenge: Option<String>,
    /// dtrain request: the rows to train on, named by the validator (the
    /// reference let the miner choose; that mode remains when absent).
    pub rows: Option<Vec<u64>>,
    /// dtrain request: `false` asks the miner to train for scoring only and
    /// leave its accumulated gradient as it was (a follower validator's
    /// queries: the master credits only its own).
    pub accumulate: Option<bool>,
    /// dtrain request, DiLoCo mode (`diloco`): every batch is an inner
    /// AdamW step at this learning rate, from the weights the last one left,
    /// instead of a gradient accumulated without a step.
    pub inner_lr: Option<f64>,
    /// dtrain request, DiLoCo mode: train at most this many batches (inner
    /// steps) of the rows named.
    pub inner_steps: Option<u64>,
    /// dtrain request, DiLoCo mode: stop the inner steps after the one that
    /// passes this many seconds (answering with fewer batches).
    pub inner_seconds: Option<f64>,
    /// dtrain request, DiLoCo mode: keep a snapshot (weights, moments)
    /// before every this many inner steps, for the validator to replay from.
    pub snapshot_every: Option<u64>,
    /// Response: the dataset rows trained on.
    pub dataset_indices: Option<Vec<u64>>,
    /// Response: Σ|grad| of the test parameter after each batch's backward.
    pub gradient_sums: Option<Vec<f64>>,
    /// Response: mean loss.
    pub loss: Option<f64>,
    /// Response: rows per batch.
    pub batch_size: Option<u32>,
    /// dtrain response: per batch, the projections of the batch's whole
    /// gradient on the challenge's vectors (`allreduce::projection`).
    pub projections: Option<Vec<crate::allreduce::projection::Proj>>,
    /// dtrain response, DiLoCo mode: the projections of the pseudo-gradient
    /// Δ = θₑ − θ after this answer's steps (what the miner will contribute).
    pub delta_projections: Option<crate::allreduce::projection::Proj>,
    /// dtrain response, DiLoCo mode with the sparse codec: the projections
    /// of the contribution, Δ plus the miner's error feedback as the codec
    /// carries it (what the all-reduce must then carry).
    pub contribution_projections: Option<crate::allreduce::projection::Proj>,
    /// dtrain response, DiLoCo mode with the sparse codec: the SHA-256
    /// (hex) of that contribution's encoding, which the validator fetches
    /// (`State` of `diloco-contribution:<digest>`) for its loss check.
    pub contribution_digest: Option<String>,
    /// dtrain response, DiLoCo mode: per inner step, the projections of
    /// the weights it left.
    pub param_projections: Option<Vec<crate::allreduce::projection::Proj>>,
    /// dtrain response, DiLoCo mode: the SHA-256 (hex) of each snapshot,
    /// which the validator may fetch by it (`State` of
    /// `diloco-snapshot:<digest>`).
    pub snapshot_digests: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AllReduce {
    pub learning_rate: Option<f64>,
    pub next_chunk_timeout: Option<f64>,
    pub min_group_size: Option<u32>,
    pub request_timeout: Option<f64>,
    pub min_matchmaking_time: Option<f64>,
    pub all_reduce_timeout: Option<f64>,
    /// Response: "True" when the miner took part and stepped.
    pub completion: Option<String>,
    /// dtrain: the all-reduce round id (signed into every handshake).
    pub round: Option<u64>,
    /// dtrain: the group, as registry uids in order (the reference found
    /// its group through hivemind's DHT instead).
    pub group: Option<Vec<u16>>,
    /// dtrain: the verified all-reduce (`allreduce::audit`): the epoch's
    /// challenge (64 hex digits) and, per group member, the weight the
    /// validator credited and the projections of the credited gradient.
    pub challenge: Option<String>,
    pub weights: Option<Vec<f32>>,
    pub expected: Option<Vec<crate::allreduce::projection::Proj>>,
    /// dtrain: the group index of the member whose ruling every member
    /// follows (the validator itself; see `allreduce::ruling`).
    pub adjudicator: Option<u16>,
    /// dtrain: per group member, the share of the vector it owns (in
    /// proportion to its measured link; 0 = it only sends and receives).
    /// Absent: miners own equal spans, validators none.
    pub fractions: Option<Vec<f64>>,
    /// dtrain: the round's chunk size in encoded bytes
    /// (`links::chunk_bytes_for` the slowest probed link). Absent: the
    /// default, `plan::DEFAULT_CHUNK_BYTES`.
    pub chunk_bytes: Option<u64>,
    /// dtrain, DiLoCo mode: the members average their pseudo-gradients and
    /// take the outer step (SGD, Nesterov momentum) with this learning rate
    /// and momentum; `learning_rate` is then unused.
    pub outer_lr: Option<f64>,
    pub outer_momentum: Option<f64>,
}

/// 32 bytes as 64 lowercase hex digits.
pub fn hex32(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The inverse of [`hex32`].
pub fn parse_hex32(s: &str) -> Result<[u8; 32], String> {
    let bad = || format!("expected 64 hex digits, got {:?}", s.chars().take(80).collect::<String>());
    if s.len() != 64 || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// One query, as routed by its path (`POST /IsAlive`, `/Train`, `/AllReduce`).
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    IsAlive(IsAlive),
    Train(Train),
    AllReduce(AllReduce),
}

impl Query {
    pub fn name(&self) -> &'static str {
        match self {
            Query::IsAlive(_) => "IsAlive",
            Query::Train(_) => "Train",
            Query::AllReduce(_) => "AllReduce",
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        match self {
            Query::IsAlive(q) => serde_json::to_vec(q),
            Query::Train(q) => serde_json::to_vec(q),
            Query::AllReduce(q) => serde_json::to_vec(q),
        }
        .expect("plain data serializes")
    }

    /// Parses the body of a query named `name`; `None` for an unknown name.
    pub fn parse(name: &str, body: &[u8]) -> Option<Result<Query, serde_json::Error>> {
        Some(match name {
            "IsAlive" => serde_json::from_slice(body).map(Query::IsAlive),
            "Train" => serde_json::from_slice(body).map(Query::Train),
            "AllReduce" => serde_json::from_slice(body).map(Query::AllReduce),
            _ => return None,
        })
    }
}

/// dtrain: `POST /State` asks a miner for one of its parameter tensors in
/// fp16 (the answer is the raw bytes): the validator times the download to
/// score bandwidth and checks the bytes against its own copy of the model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StateRequest {
    /// transformers' name of the tensor.
    pub tensor: String,
}

/// dtrain: `POST /Join` registers the signing caller's key with these
/// addresses at a registry served by the master validator (any key may
/// join: the signature proves the caller holds it). The answer is
/// `{"uid": …}`; `POST /Registry` (any signed caller) answers the node list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub query_addr: String,
    pub allreduce_addr: std::net::SocketAddr,
    pub role: super::registry::Role,
}
