//! What a round reports: per member, whether it took part and why not, who
//! contributed to its span and what happened to that span; refused
//! connections; bytes and times. Network trouble never makes the call fail
//! — it ends up here.

use serde::Serialize;

/// Why a member did not (fully) take part, as seen by this peer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Failure {
    /// No authenticated connection before the connect timeout; with the
    /// last reason a connection attempt was refused or failed, if any.
    NeverConnected(Option<String>),
    /// The connection closed or broke while data from it was still due.
    Disconnected(String),
    /// No progress for longer than the stall timeout.
    Stalled(String),
    /// It sent something invalid (bad frame, checksum, NaN/inf, wrong chunk).
    Invalid(String),
    /// It told us it gave up on the round.
    Aborted(String),
    /// The round's deadline passed while data from it was still due.
    Deadline,
    /// Its signed Hello declared a weight other than 0 and the one the
    /// validator credited it with (an audited round).
    FalseWeight { declared: f32, credited: f32 },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::NeverConnected(None) => write!(f, "never connected"),
            Failure::NeverConnected(Some(why)) => write!(f, "never connected ({why})"),
            Failure::Disconnected(why) => write!(f, "disconnected: {why}"),
            Failure::Stalled(why) => write!(f, "stalled: {why}"),
            Failure::Invalid(why) => write!(f, "sent invalid data: {why}"),
            Failure::Aborted(why) => write!(f, "aborted: {why}"),
            Failure::Deadline => write!(f, "round deadline passed"),
            Failure::FalseWeight { declared, credited } => write!(f, "declared weight {declared}, the validator credited {credited}"),
        }
    }
}

/// What this peer's copy of a member's span holds after the round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum SpanStatus {
    /// The member owns no elements.
    Empty,
    /// Every chunk is the owner's average.
    Averaged,
    /// Some chunks are averaged; the rest kept this peer's local values
    /// (the owner failed mid-way, or nobody contributed to them).
    Partial { averaged: usize, chunks: usize },
    /// Nothing arrived: the span keeps this peer's local values.
    KeptLocal,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberReport {
    pub id: String,
    /// Elements of the vector this member owns.
    pub span: (usize, usize),
    /// The weight it declared in its handshake (this peer: its own).
    pub weight: Option<f32>,
    pub failure: Option<Failure>,
    pub span_status: SpanStatus,
    /// Members whose contributions are in every chunk of this span, and
    /// those in only some (as the owner reported it; exact for our own span).
    pub contributors: Vec<usize>,
    pub partial_contributors: Vec<usize>,
    /// Audited: members whose chunks are all in the span but whose bytes,
    /// as the owner decoded them, are not what they signed they sent.
    pub disputed: Vec<usize>,
    /// XXH3-64 over the checksums of the averaged chunks, in order: equal on
    /// every peer that holds the whole averaged span. `None` unless the
    /// owner confirmed it.
    pub hash: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub round: u64,
    /// This peer's index.
    pub me: usize,
    pub members: Vec<MemberReport>,
    /// Why this peer did not contribute its own vector, if it did not.
    pub local_rejected: Option<String>,
    /// Connections refused during the handshake, with the reason (at most
    /// 64 kept).
    pub refused: Vec<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Seconds from the call until this peer's vector was encoded.
    pub setup_s: f64,
    /// Seconds from the call until every member was connected or failed.
    pub connect_s: Option<f64>,
    /// Members connected over a connection kept from an earlier round.
    pub reused: usize,
    /// The TCP congestion control the round's connections ran, as the
    /// kernel reports it for each (sorted, without repeats; empty where
    /// the OS does not say): `Settings::congestion_control` asks, the
    /// kernel may refuse.
    pub congestion: Vec<String>,
    /// Seconds from the call until this peer's own span was averaged.
    pub reduced_s: Option<f64>,
    pub elapsed_s: f64,
    /// An audited round's measurements (see `audit::verdict`).
    pub audit: Option<super::audit::AuditData>,
    /// An adjudicated round's ruling, as the adjudicator sent it (or, for
    /// the adjudicator, made it); `None` if none came (see `ruling`).
    pub ruling: Option<Vec<super::audit::Accusation>>,
}

impl Report {
    /// Members that failed, with the reason.
    pub fn failures(&self) -> Vec<(usize, &Failure)> {
        self.members.iter().enumerate().filter_map(|(i, m)| m.failure.as_ref().map(|f| (i, f))).collect()
    }

    /// Element ranges of the spans that were not fully averaged (their owner
    /// failed, or nobody contributed): a trainer that zeroes these before its
    /// optimizer step stays bit-identical with every peer that does the same,
    /// instead of applying its own unaveraged values there.
    pub fn unaveraged_spans(&self) -> Vec<std::ops::Range<usize>> {
        self.members.iter().filter(|m| !matches!(m.span_status, SpanStatus::Averaged | SpanStatus::Empty)).map(|m| m.span.0..m.span.1).collect()
    }

    /// One line per failed member, for logs.
    pub fn summary(&self) -> String {
        let failed: Vec<String> = self.failures().iter().map(|(i, f)| format!("{} ({i}): {f}", self.members[*i].id)).collect();
        let averaged = self.members.iter().filter(|m| matches!(m.span_status, SpanStatus::Averaged | SpanStatus::Empty)).count();
        format!(
            "round {}: {}/{} spans averaged, {:.1} MB out, {:.1} MB in, {:.3} s{}",
            self.round,
            averaged,
            self.members.len(),
            self.bytes_sent as f64 / 1e6,
            self.bytes_received as f64 / 1e6,
            self.elapsed_s,
            if failed.is_empty() { String::new() } else { format!("; failed: {}", failed.join("; ")) }
        )
    }
}
