//! The group a round runs in and the settings every member must share.
//! Members are ordered: a member's index is its position, the `sender`
//! field of its frames and the owner of span `index`. The group digest
//! (SHA-256 over the members, the vector length and the wire settings) is
//! signed in every handshake, so two peers that disagree about the group or
//! the plan refuse each other instead of exchanging misaligned chunks.

use super::codec::Codec;
use super::identity::PublicKey;
use super::plan::DEFAULT_CHUNK_BYTES;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// A name for reports (a hotkey, a host name).
    pub id: String,
    pub addr: SocketAddr,
    pub key: PublicKey,
    /// Share of the vector this member owns (0 = it only sends and receives).
    pub fraction: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub members: Vec<Member>,
}

/// Settings of a round. `codec` and `chunk_bytes` shape the wire and are
/// part of the group digest; the timeouts are each peer's own business.
#[derive(Debug, Clone)]
pub struct Settings {
    pub codec: Codec,
    /// Encoded bytes per chunk at most.
    pub chunk_bytes: usize,
    /// How long a member may take to connect and complete the handshake
    /// before it is counted as failed and the round goes on without it.
    pub connect_timeout: Duration,
    /// How long a connection may make no progress while this peer waits for
    /// that member's contribution or while data to it is queued. Waiting for
    /// an owner's averaged chunks tolerates `max(connect_timeout,
    /// stall_timeout) + stall_timeout`: the owner itself may be waiting that
    /// long for a third member that never connects or stalls. Data queued
    /// to a member whose kernel still has unacknowledged bytes in flight
    /// (a slow path, not a peer that stopped reading) waits
    /// `max(connect_timeout, stall_timeout) + 2 × stall_timeout`.
    pub stall_timeout: Duration,
    /// Largest accepted contribution weight (samples accumulated).
    pub max_weight: f32,
    /// SO_SNDBUF/SO_RCVBUF for every connection; `None` leaves the kernel's
    /// autotuning alone (the better choice on Linux loopback and most links).
    pub socket_buffer: Option<usize>,
    /// TCP congestion control asked for on every connection (Linux's
    /// TCP_CONGESTION; where the kernel lacks it or does not allow it, its
    /// default stays). BBR by default: loss-based algorithms take random
    /// loss for congestion — with CUBIC, 1% loss at 40 ms made a round
    /// 2× as long on the test hosts, with BBR no longer (BENCHMARKS.md).
    pub congestion_control: Option<String>,
    /// Keep the connections of a round that ended well open for the next
    /// round with the same members (round/keep.rs): no dial, no TCP
    /// handshake, a warm congestion window.
    pub keep_connections: bool,
    /// Fault injection for tests and drills: this process dies or stalls
    /// mid-round. Never set in normal operation.
    pub fault: Option<Fault>,
}

/// A failure this peer inflicts on itself, to test how the others cope.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Exit the process (as if killed) once this many bytes of scatter
    /// (`gather == false`) or gather payload have been written.
    ExitAfter { gather: bool, bytes: u64 },
    /// Stop reading and writing (sockets stay open) after that many bytes.
    StallAfter { gather: bool, bytes: u64 },
    /// Send all-ones bytes (NaN in every codec but int8, whose scales then
    /// are NaN) as its scatter chunks, correctly framed and checksummed:
    /// the lying sender the owners must catch.
    Garbage,
    /// Contribute the gradient times this factor (−100: poison; −1: sign
    /// flipped at the honest norm; 0: a zero vector).
    Scale(f32),
    /// Contribute the gradient plus Gaussian noise of the same norm.
    Noise,
    /// Declare this weight in every Hello instead of the real one.
    DeclareWeight(f32),
    /// As a span owner: send the negated average of the span (while
    /// reporting the parts honestly).
    WrongAverage,
    /// As a span owner, knowing the challenge: scale its average by
    /// `factor` everywhere but the blocks the projections sample (−1: turn
    /// it against the true one); `balanced`: and state its own part's
    /// product with it so that the products add up (see `audit::verdict`).
    HiddenAverage { factor: f32, balanced: bool },
    /// Contribute the gradient times this factor, but sign statements of
    /// the honest gradient's parts (the bytes lie, the claims do not).
    Unstated(f32),
    /// As a span owner: forward member `member`'s statement with its
    /// projections scaled by `scale` (a forgery: the signature fails).
    MisreportPart { member: u16, scale: f32 },
    /// As a span owner: state member `member`'s product with the average
    /// 10% larger in its summary (and its own product so that they still add
    /// up): only `member` can tell.
    MisstateDot { member: u16 },
    /// As a span owner: dispute member `member`'s honest part.
    DisputePart { member: u16 },
    /// As a span owner: report that member `member` contributed nothing,
    /// though it did (and average without it).
    DenyPart { member: u16 },
    /// As a span owner: abort instead of sending its span summary (the
    /// accomplice that keeps a poisoner's parts from being summed).
    WithholdSummary,
    /// As a span owner: send member `to` another summary than everyone
    /// else (one honest part marked disputed in it).
    EquivocateSummary { to: u16 },
    /// As a span owner (fp16): send member `to` its averages negated, and
    /// everyone else the true ones.
    EquivocateAverage { to: u16 },
    /// Testify to the adjudicator that member `member` cheated.
    FalseTestimony { member: u16 },
    /// Never testify (while still reading and answering everything else).
    WithholdTestimony,
    /// Never testify, and tell the adjudicator with Waiting frames that
    /// its inputs are still coming (a member holding the round open).
    StallTestimony,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            codec: Codec::F16,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(10),
            max_weight: 1e9,
            socket_buffer: None,
            congestion_control: Some("bbr".into()),
            keep_connections: true,
            fault: None,
        }
    }
}

fn codec_tag(codec: Codec) -> [u8; 9] {
    let (tag, block) = match codec {
        Codec::F32 => (1u8, 0u64),
        Codec::F16 => (2, 0),
        Codec::Bf16 => (3, 0),
        Codec::Int8 { block } => (4, block as u64),
        Codec::TopK { block, k, wide } => (5, block as u64 | (k as u64) << 24 | u64::from(wide) << 48),
    };
    let mut out = [0u8; 9];
    out[0] = tag;
    out[1..].copy_from_slice(&block.to_le_bytes());
    out
}

impl Group {
    /// Members with equal fractions.
    pub fn equal(members: impl IntoIterator<Item = (String, SocketAddr, PublicKey)>) -> Group {
        Group { members: members.into_iter().map(|(id, addr, key)| Member { id, addr, key, fraction: 1.0 }).collect() }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn fractions(&self) -> Vec<f64> {
        self.members.iter().map(|m| m.fraction).collect()
    }

    /// The index of the member with this key, if exactly one has it.
    pub fn index_of(&self, key: &PublicKey) -> Option<usize> {
        let mut found = self.members.iter().enumerate().filter(|(_, m)| m.key == *key).map(|(i, _)| i);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    /// SHA-256 over everything the members must agree on for a vector of
    /// `len` values: the ordered members and the wire settings.
    pub fn digest(&self, len: usize, settings: &Settings) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"dtrain-allreduce-group-v1");
        h.update((self.members.len() as u64).to_le_bytes());
        for m in &self.members {
            h.update((m.id.len() as u64).to_le_bytes());
            h.update(m.id.as_bytes());
            let addr = m.addr.to_string();
            h.update((addr.len() as u64).to_le_bytes());
            h.update(addr.as_bytes());
            h.update(m.key.0);
            h.update(m.fraction.to_bits().to_le_bytes());
        }
        h.update((len as u64).to_le_bytes());
        h.update(codec_tag(settings.codec));
        h.update((settings.chunk_bytes as u64).to_le_bytes());
        h.finalize().into()
    }
}

/// A group as JSON (`[{"id", "addr", "key", "fraction"}]`): how the bench
/// hands groups to its peer processes, and a readable format for files.
#[derive(serde::Serialize, serde::Deserialize)]
struct MemberJson {
    id: String,
    addr: String,
    key: String,
    #[serde(default = "one")]
    fraction: f64,
}

fn one() -> f64 {
    1.0
}

impl Group {
    pub fn to_json(&self) -> String {
        let members: Vec<MemberJson> = self
            .members
            .iter()
            .map(|m| MemberJson { id: m.id.clone(), addr: m.addr.to_string(), key: m.key.to_hex(), fraction: m.fraction })
            .collect();
        serde_json::to_string(&members).expect("plain data serializes")
    }

    /// Parses and checks a group: addresses, keys that are curve points,
    /// fractions that are finite and non-negative, at most `MAX_MEMBERS`.
    pub fn from_json(s: &str) -> anyhow::Result<Group> {
        use anyhow::Context;
        let members: Vec<MemberJson> = serde_json::from_str(s).context("group JSON: expected [{\"id\", \"addr\", \"key\", \"fraction\"}]")?;
        anyhow::ensure!(!members.is_empty(), "the group has no members");
        anyhow::ensure!(members.len() <= super::round::MAX_MEMBERS, "the group has {} members, at most {}", members.len(), super::round::MAX_MEMBERS);
        let members = members
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                anyhow::ensure!(
                    m.fraction.is_finite() && m.fraction >= 0.0,
                    "member {i}: fraction {} is not a finite non-negative number",
                    m.fraction
                );
                Ok(Member {
                    addr: m.addr.parse().with_context(|| format!("member {i}: address {:?}", m.addr))?,
                    key: PublicKey::from_hex(&m.key).with_context(|| format!("member {i}: key"))?,
                    id: m.id,
                    fraction: m.fraction,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Group { members })
    }
}
