//! One all-reduce round: a single-threaded mio event loop over non-blocking
//! TCP connections to every other member (member `i` dials every `j > i`;
//! the listener takes the rest), the handshake, scatter-reduce and
//! all-gather, failures, and the report.
//!
//! Why it is shaped this way:
//! - *One loop, no threads per peer*: the work per byte is a decode-add,
//!   far cheaper than the kernel's copy, so one thread keeps every socket
//!   busy and nothing needs locking.
//! - *Per-chunk pipeline*: the owner finalizes a chunk as soon as every
//!   expected sender delivered it (or failed), and sends it out at once, so
//!   all-gather overlaps scatter and a slow sender delays only itself.
//! - *One encoded vector*: this peer's contribution is encoded once into
//!   `wire`, its own span's region of which later holds the averaged chunks;
//!   every outgoing frame is a header plus a range of it, written with
//!   vectored writes.
//! - *Encode once, everyone decodes*: the owner decodes its own encoded
//!   average too, so every peer holding a span holds the same bits.
//!
//! Here: the round's state, its setup (the contribution encoded, and
//! measured when audited), the loop, timers and faults; connect.rs the
//! connections and the handshake; data.rs the data plane (chunks reduced,
//! published and received, span summaries); judge.rs the adjudication that
//! ends an audited round with an adjudicator; summary.rs the report.

mod connect;
mod data;
mod judge;
mod keep;
mod summary;

use super::audit::{Accusation, Audit, AuditData, Contribution, Part, Statement};
use super::codec::{Codec, first_nonfinite};
use super::conn::{Body, Conn, Got, Out, Sources};
use super::group::{Fault, Group, Settings};
use super::handshake::{AUTH_LEN, HELLO_LEN, Hello, sign_auth, verify_auth};
use super::identity::{Identity, PublicKey, random_bytes};
use super::plan::{PlanError, chunk_elems, chunks, spans_aligned};
use super::projection::Projector;
use super::reduce::{ReduceError, SpanReducer};
use super::report::{Failure, MemberReport, Report, SpanStatus};
use super::ruling::{REASONS_MAX, Testimony};
use super::wire::{Header, Kind, checksum};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rayon::prelude::*;
use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);
/// Members per group at most (the frame's sender field is 16 bits; beyond
/// a few hundred a flat all-to-all is the wrong algorithm anyway).
pub const MAX_MEMBERS: usize = 1024;
/// Connections still in their handshake at most, beyond one per member:
/// a flood of junk connections cannot grow memory.
const MAX_PENDING: usize = 64;
/// Longest reason an Abort frame may carry.
const ABORT_MAX: usize = 1024;
/// Refusals kept for the report.
const MAX_REFUSED: usize = 64;
/// Frames read from one connection before the others (and the writes)
/// get a turn: a fast sender must not starve our own sending.
const FRAMES_PER_TURN: usize = 4;
/// Vectors from this size on (f32 bytes) get the all-gather's values with
/// streaming stores: measured 5–7% faster at 256 MB (fp16, fp32; int8
/// even), and far beyond any cache the optimizer reads them from memory
/// anyway. Smaller vectors keep them in cache for the next step.
const STREAMING_BYTES: usize = 64 << 20;
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(10);
const DIAL_BACKOFF_MAX: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("this peer's public key is not in the group exactly once")]
    NotMember,
    #[error("the group has {0} members, at most {MAX_MEMBERS} are supported")]
    TooManyMembers(usize),
    #[error("weight {0} is not a finite number between 0 and the maximum {1}")]
    Weight(f32, f32),
    #[error("weight {0}: the validator credited {1} (a member joins with that or 0)")]
    NotCredited(f32, f32),
    #[error("audit: {0}")]
    Audit(String),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("setting up the event loop: {0}")]
    Io(#[from] io::Error),
}

/// A member of all-reduce groups: its key and its listening socket, kept
/// across rounds.
pub struct Peer {
    identity: Identity,
    listener: TcpListener,
    /// The encoded vector and the owner's accumulator, kept between rounds
    /// so that a round touches no fresh pages (at 64M values, first-touch
    /// page faults cost more than the network).
    wire: Vec<u8>,
    acc: Vec<f32>,
    /// Connections left open by the last round for the next (keep.rs).
    kept: Vec<keep::Kept>,
}

impl Peer {
    /// Listens on `addr` (port 0 picks a free port).
    pub fn bind(identity: Identity, addr: SocketAddr) -> io::Result<Peer> {
        Ok(Peer { identity, listener: TcpListener::bind(addr)?, wire: Vec::new(), acc: Vec::new(), kept: Vec::new() })
    }

    /// Closes the connections kept from earlier rounds (the next round
    /// dials its whole mesh).
    pub fn close_kept(&mut self) {
        self.kept.clear();
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn public_key(&self) -> PublicKey {
        self.identity.public()
    }

    /// Frees the buffers kept between rounds (about 1.5× the vector's
    /// encoded size plus this peer's span); the next round allocates anew.
    pub fn release_buffers(&mut self) {
        (self.wire, self.acc) = (Vec::new(), Vec::new());
    }

    /// Replaces `grad` by the weighted mean over the group of every
    /// member's vector (`weight` = samples behind this one; 0 = receive
    /// only) and reports what happened. Returns by `deadline`; failures of
    /// other members are in the report, never an error.
    pub fn all_reduce(
        &mut self,
        group: &Group,
        round: u64,
        grad: &mut [f32],
        weight: f32,
        deadline: Instant,
        settings: &Settings,
    ) -> Result<Report, SetupError> {
        self.all_reduce_audited(group, round, grad, weight, deadline, settings, None)
    }

    /// [`Peer::all_reduce`] with the validator's credit (see `audit`):
    /// `weight` must be 0 or the credited weight, every other member's
    /// likewise, and the report carries what `audit::verdict` checks.
    #[allow(clippy::too_many_arguments)]
    pub fn all_reduce_audited(
        &mut self,
        group: &Group,
        round: u64,
        grad: &mut [f32],
        weight: f32,
        deadline: Instant,
        settings: &Settings,
        audit: Option<&Audit>,
    ) -> Result<Report, SetupError> {
        let me = group.index_of(&self.identity.public()).ok_or(SetupError::NotMember)?;
        if let Some(a) = audit {
            a.check(group.len()).map_err(SetupError::Audit)?;
            if weight != 0.0 && weight != a.weights[me] {
                return Err(SetupError::NotCredited(weight, a.weights[me]));
            }
        }
        if group.len() > MAX_MEMBERS {
            return Err(SetupError::TooManyMembers(group.len()));
        }
        if !(weight.is_finite() && weight >= 0.0 && weight <= settings.max_weight) {
            return Err(SetupError::Weight(weight, settings.max_weight));
        }
        let start = Instant::now();
        let poll = Poll::new()?;
        poll.registry().register(&mut self.listener, LISTENER, Interest::READABLE)?;
        let kept = keep::take_for(&mut self.kept, group, me, start);
        let bufs = (std::mem::take(&mut self.wire), std::mem::take(&mut self.acc));
        let r = Round::new(&self.identity, &mut self.listener, poll, group, me, round, grad, weight, settings, audit, bufs, start)?;
        let (report, wire, acc, kept) = r.run(deadline, kept);
        (self.wire, self.acc, self.kept) = (wire, acc, kept);
        tracing::debug!("{}", report.summary());
        Ok(report)
    }
}

/// Where a chunk's mean is when it is published.
enum Mean {
    /// No contribution at all, or the mean overflowed: not averaged.
    Nothing,
    /// In `scratch`, as f32.
    Scratch,
    /// Already encoded in the chunk's place in `wire` (and finite).
    Encoded,
}

struct ChunkInfo {
    /// Elements of the vector.
    elems: Range<usize>,
    /// Bytes of the encoded vector.
    bytes: Range<usize>,
}

struct MemberState {
    /// Declared in the handshake.
    weight: Option<f32>,
    /// The authenticated connection.
    conn: Option<usize>,
    failure: Option<Failure>,
    last_refusal: Option<String>,
    /// The connection being dialed (only for members this peer dials).
    dialing: Option<usize>,
    next_dial: Instant,
    backoff: Duration,
    /// Chunks of this peer's span received from the member.
    scatter_got: usize,
    /// The member's averaged chunks received, their checksums, and how many
    /// carried values (an empty one means "nobody contributed").
    gather_got: Vec<bool>,
    /// Audited: each averaged chunk's projections, as received.
    gather_parts: Vec<Part>,
    /// Audited: Σ over its averaged chunks received of this peer's part ·
    /// the average (what its summary must state for this peer).
    gather_dot: f64,
    gather_sums: Vec<u64>,
    gather_count: usize,
    gather_averaged: usize,
    /// The owner's summary: contributor status per member, span hash.
    done: Option<(Vec<u8>, u64)>,
    /// In an audited round, the parts its summary forwards for every
    /// member (the senders' statements, verified), and a sender whose
    /// statement it forged, if any.
    done_parts: Option<Vec<Part>>,
    done_forged: Option<usize>,
    /// In an audited round, per sender, its part · the average, as the
    /// owner's summary states them.
    done_dots: Option<Vec<f64>>,
    /// In an audited round, its signed statement of its part of this
    /// peer's span (it comes before its chunks).
    statement: Option<Statement>,
    /// Audited: SHA-256 of its span summary as received, and its signature.
    done_signed: Option<([u8; 32], [u8; 64])>,
    /// Its connection ended after everything due from it had arrived.
    closed_clean: bool,
    /// It sent an invalid contribution (well framed, bad values): its
    /// further contributions are ignored, but the connection stays open
    /// for the averaged chunks both ways — so every peer still gets its
    /// span and sees the same result, whoever caught it.
    excluded: Option<String>,
}

struct Round<'a> {
    id: &'a Identity,
    listener: &'a mut TcpListener,
    poll: Poll,
    group: &'a Group,
    settings: &'a Settings,
    audit: Option<&'a Audit>,
    projector: Option<Projector>,
    /// Audited: this peer's contribution per span, as sent.
    sent: Vec<Part>,
    me: usize,
    round: u64,
    digest: [u8; 32],
    /// What senders' parts travel in, and what owners' averages do (the
    /// same but for top-k: see `Codec::for_mean`).
    codec: Codec,
    mean_codec: Codec,
    grad: &'a mut [f32],
    weight: f32,
    local_rejected: Option<String>,
    /// Chunks of every member's span.
    chunks: Vec<Vec<ChunkInfo>>,
    /// This peer's contribution encoded; its own span's region receives the
    /// averaged chunks.
    wire: Vec<u8>,
    reducer: SpanReducer,
    /// This peer's span of the vector.
    own_span: Range<usize>,
    /// One chunk's mean, between averaging and encoding.
    scratch: Vec<f32>,
    /// fp32 on a little-endian host: frames are sent from `grad` itself.
    zero_copy: bool,
    /// The vector is far larger than a cache: other members' averaged
    /// chunks are written past it (see `Codec::decode_into`).
    streaming: bool,
    finalized: Vec<bool>,
    averaged: Vec<bool>,
    my_sums: Vec<u64>,
    members: Vec<MemberState>,
    conns: Vec<Option<Conn>>,
    /// Connections that may have more to read (see `FRAMES_PER_TURN`).
    unread: Vec<usize>,
    seen_nonces: HashSet<[u8; 32]>,
    refused: Vec<String>,
    data_max_len: u32,
    start: Instant,
    setup_s: f64,
    connect_s: Option<f64>,
    reduced_s: Option<f64>,
    bytes_sent: u64,
    bytes_received: u64,
    scatter_written: u64,
    gather_written: u64,
    /// Adjudicated rounds (see judge.rs): this member's testimony sent;
    /// the adjudicator's testimonies received; the ruling, received or made.
    testified: bool,
    /// When this member last sent Waiting frames: the adjudicator to
    /// everyone, a member to the adjudicator (see judge.rs).
    waiting_sent: Option<Instant>,
    /// When this member's own data phase ended (`data_done`).
    data_done_at: Option<Instant>,
    /// Members whose handshake ran on a connection kept from a round before.
    reused: usize,
    /// The congestion controls the admitted connections run (`Report`).
    congestion: Vec<String>,
    testimonies: Vec<Option<Testimony>>,
    ruling: Option<Vec<Accusation>>,
}

fn f32_bytes(x: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 readable bytes; the view borrows `x`.
    unsafe { std::slice::from_raw_parts(x.as_ptr() as *const u8, 4 * x.len()) }
}

fn span_hash(sums: &[u64]) -> u64 {
    let bytes: Vec<u8> = sums.iter().flat_map(|s| s.to_le_bytes()).collect();
    checksum(&bytes)
}

/// The projections of `x` (elements `offset..`) and their scale, with a
/// squared norm measured elsewhere.
fn sampled_part(p: &Projector, x: &[f32], offset: usize, sum_squares: f64) -> Part {
    let (proj, scale) = p.project_with_scale(x, offset);
    Part { proj, scale, sum_squares }
}

/// The projections of the encoded chunk `enc` (elements `elems` of the
/// vector) and their scale, with a squared norm measured elsewhere.
fn decoded_part(codec: Codec, p: &Projector, enc: &[u8], elems: Range<usize>, sum_squares: f64) -> Part {
    let (proj, scale) = codec.project_decoded(enc, elems.len(), p, elems.start);
    Part { proj, scale, sum_squares }
}

/// Fault injection on this peer's own contribution (see `Fault`).
fn inflict_on_contribution(fault: Option<Fault>, grad: &mut [f32]) {
    match fault {
        Some(Fault::Scale(f) | Fault::Unstated(f)) => grad.iter_mut().for_each(|v| *v *= f),
        Some(Fault::Noise) => {
            let rms = (super::projection::sum_squares(grad) / grad.len().max(1) as f64).sqrt() as f32;
            let mut rng = crate::rng::Rng::new(0x006e_6f69_7365);
            grad.iter_mut().for_each(|v| *v += rms * rng.normal());
        }
        _ => {}
    }
}

impl<'a> Round<'a> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: &'a Identity,
        listener: &'a mut TcpListener,
        poll: Poll,
        group: &'a Group,
        me: usize,
        round: u64,
        grad: &'a mut [f32],
        weight: f32,
        settings: &'a Settings,
        audit: Option<&'a Audit>,
        (mut wire, acc): (Vec<u8>, Vec<f32>),
        start: Instant,
    ) -> Result<Round<'a>, SetupError> {
        let n = group.len();
        let codec = settings.codec;
        let mean_codec = codec.for_mean(n);
        let spans = spans_aligned(grad.len(), &group.fractions(), codec.alignment())?;
        inflict_on_contribution(settings.fault, grad);
        if codec != mean_codec && weight > 0.0 {
            // Sparse: the owner's own part enters its average as the
            // others' do, through the codec (k per block), so that the
            // average's union fits `mean_codec`. (Non-finite values are
            // left for the check below.)
            codec.roundtrip(&mut grad[spans[me].clone()]);
        }
        let per_chunk = chunk_elems(codec, settings.chunk_bytes)?;
        let mut offset = 0;
        let chunks: Vec<Vec<ChunkInfo>> = spans
            .iter()
            .enumerate()
            .map(|(owner, s)| {
                // This peer's own span's region receives its averages.
                let codec = if owner == me { mean_codec } else { codec };
                chunks(s.clone(), per_chunk)
                    .map(|elems| {
                        let len = codec.encoded_len(elems.len());
                        offset += len;
                        ChunkInfo { elems, bytes: offset - len..offset }
                    })
                    .collect()
            })
            .collect();
        let summary_len = n + 8 + if audit.is_some() { n * (Statement::BYTES + 8) + 64 } else { 0 };
        let ruling_len = if audit.is_some_and(|a| a.adjudicator.is_some()) { Testimony::len(n).max(n + REASONS_MAX) } else { 0 };
        let data_max_len = chunks
            .iter()
            .flatten()
            .map(|c| c.bytes.len().max(mean_codec.encoded_len(c.elems.len())))
            .max()
            .unwrap_or(0)
            .max(summary_len)
            .max(ruling_len)
            .max(ABORT_MAX) as u32;

        // Encode what the other owners need, in parallel, checking each
        // chunk for NaN/inf while it is in cache (the own span and fp32,
        // which is sent without a copy, are scanned on their own). Every
        // byte of `wire` is written before it is sent: no need to clear.
        let zero_copy = codec == Codec::F32 && cfg!(target_endian = "little");
        let scan = |range: Range<usize>| {
            let x = &grad[range.clone()];
            x.par_chunks(1 << 16).enumerate().find_map_first(|(k, c)| first_nonfinite(c).map(|i| range.start + (k << 16) + i))
        };
        let mut bad = if zero_copy { scan(0..grad.len()) } else { scan(spans[me].clone()) };
        wire.resize(if zero_copy { 0 } else { offset }, 0);
        // Audited: what this peer sends, per span, projected inside the
        // encoding jobs from the encoded bytes while they are in cache,
        // exactly as the owners will project what they decode.
        let projector = audit.map(Audit::projector);
        let mut sent = vec![Part::default(); n];
        let mut projected = vec![false; n];
        if weight > 0.0 && !zero_copy && bad.is_none() {
            let mut jobs = Vec::new();
            let mut rest: &mut [u8] = &mut wire;
            for (owner, span_chunks) in chunks.iter().enumerate() {
                for c in span_chunks {
                    let (dst, tail) = std::mem::take(&mut rest).split_at_mut(c.bytes.len());
                    rest = tail;
                    if owner != me {
                        jobs.push((owner, c.elems.clone(), dst));
                    }
                }
            }
            let src: &[f32] = grad;
            let done: Vec<(usize, Option<usize>, Option<Part>)> = jobs
                .into_par_iter()
                .map(|(owner, elems, dst)| {
                    let x = &src[elems.clone()];
                    let (bad, sum_squares) = match projector {
                        Some(_) => codec.encode_checked_squares(x, dst),
                        None => (codec.encode_checked(x, dst), 0.0),
                    };
                    let bad = bad.map(|i| elems.start + i);
                    // Projected as the owner will: decoded from these very
                    // bytes (in cache), so the two agree to the bit, however
                    // much the codec rounds (fp16 subnormals: a lot).
                    let part = projector.filter(|_| bad.is_none()).map(|p| {
                        let (proj, scale) = codec.project_decoded(dst, elems.len(), &p, elems.start);
                        Part { proj, scale, sum_squares }
                    });
                    (owner, bad, part)
                })
                .collect();
            bad = done.iter().filter_map(|d| d.1).min();
            // Summed in chunk order: the same bits however the jobs ran.
            for (owner, _, part) in done {
                if let Some(part) = part {
                    sent[owner].add(&part);
                    projected[owner] = true;
                }
            }
        }
        if let Some(Fault::Unstated(f)) = settings.fault {
            // Statements of the gradient before it was scaled.
            let f = f as f64;
            for p in &mut sent {
                p.proj.iter_mut().for_each(|v| *v /= f);
                (p.scale, p.sum_squares) = (p.scale / (f * f), p.sum_squares / (f * f));
            }
        }
        let (mut weight, mut local_rejected) = (weight, None);
        if let Some(i) = bad {
            local_rejected = Some(format!("local value {i} is {}: contributing nothing, receiving only", grad[i]));
            weight = 0.0;
        }

        // The spans no encoding job projected: for fp32 sent as is, all but
        // its own (which enters its average unencoded, and is measured and
        // projected as it does: see `own_parts`).
        if let Some(p) = &projector
            && weight > 0.0
        {
            for (i, s) in spans.iter().enumerate().filter(|(i, _)| !projected[*i] && *i != me) {
                let x = &grad[s.clone()];
                sent[i] = sampled_part(p, x, s.start, super::projection::sum_squares(x));
            }
        }

        let own_span = spans[me].clone();
        let mut reducer = SpanReducer::reusing(acc, own_span.len(), per_chunk, n);
        if let Some(p) = projector {
            reducer.audit(p, own_span.start);
        }
        if weight > 0.0 {
            reducer.set_own(me, weight);
        }
        let setup_s = start.elapsed().as_secs_f64();
        let members = (0..n)
            .map(|j| MemberState {
                weight: (j == me).then_some(weight),
                conn: None,
                failure: None,
                last_refusal: None,
                dialing: None,
                next_dial: start,
                backoff: DIAL_BACKOFF_MIN,
                scatter_got: 0,
                gather_got: vec![false; chunks[j].len()],
                gather_parts: if audit.is_some() { vec![Part::default(); chunks[j].len()] } else { Vec::new() },
                gather_dot: 0.0,
                gather_sums: vec![0; chunks[j].len()],
                gather_count: 0,
                gather_averaged: 0,
                done: None,
                done_parts: None,
                done_forged: None,
                done_dots: None,
                statement: None,
                done_signed: None,
                closed_clean: false,
                excluded: None,
            })
            .collect();
        let k = chunks[me].len();
        let streaming = 4 * grad.len() >= STREAMING_BYTES;
        Ok(Round {
            id,
            listener,
            poll,
            group,
            settings,
            audit,
            projector,
            sent,
            me,
            round,
            digest: match audit {
                Some(a) => a.digest(&group.digest(grad.len(), settings)),
                None => group.digest(grad.len(), settings),
            },
            codec,
            mean_codec,
            grad,
            weight,
            local_rejected,
            chunks,
            wire,
            reducer,
            own_span,
            scratch: vec![0.0; per_chunk],
            zero_copy,
            streaming,
            finalized: vec![false; k],
            averaged: vec![false; k],
            my_sums: vec![0; k],
            members,
            conns: Vec::new(),
            unread: Vec::new(),
            seen_nonces: HashSet::new(),
            refused: Vec::new(),
            data_max_len,
            start,
            setup_s,
            connect_s: None,
            reduced_s: None,
            bytes_sent: 0,
            bytes_received: 0,
            scatter_written: 0,
            gather_written: 0,
            testified: false,
            waiting_sent: None,
            data_done_at: None,
            reused: 0,
            congestion: Vec::new(),
            testimonies: vec![None; n],
            ruling: None,
        })
    }

    fn n(&self) -> usize {
        self.members.len()
    }

    /// Runs the round; returns the report and the buffers for the next one.
    fn run(mut self, deadline: Instant, kept: Vec<(usize, keep::Kept)>) -> (Report, Vec<u8>, Vec<f32>, Vec<keep::Kept>) {
        let mut events = Events::with_capacity(256);
        self.adopt(kept, Instant::now());
        self.note_connected();
        self.finalize_ready_chunks();
        loop {
            let now = Instant::now();
            self.timers(now, deadline);
            self.judge_step(now);
            self.flush_all(now, deadline);
            if self.finished() {
                break;
            }
            if now >= deadline {
                for j in 0..self.n() {
                    if j != self.me && self.members[j].failure.is_none() && !self.member_done(j) {
                        self.fail(j, Failure::Deadline);
                    }
                }
                break;
            }
            let timeout = if self.unread.is_empty() { (deadline - now).min(Duration::from_millis(10)) } else { Duration::ZERO };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::warn!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(1));
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(now),
                    Token(id) => self.on_event(id, ev.is_writable(), now),
                }
            }
            for id in std::mem::take(&mut self.unread) {
                self.on_event(id, false, now);
            }
        }
        self.finalize_ready_chunks();
        let _ = self.poll.registry().deregister(self.listener);
        let report = self.report();
        let kept = self.keep(Instant::now());
        (report, self.wire, self.reducer.into_buffer(), kept)
    }

    // ---- progress -----------------------------------------------------------

    /// Whether anything from member `j` is still due.
    fn expects_from(&self, j: usize) -> bool {
        self.expects_data(j) || self.expects_judgement(j)
    }

    /// Whether chunks or a summary from member `j` are still due.
    fn expects_data(&self, j: usize) -> bool {
        self.expects_scatter(j) || self.expects_gather(j)
    }

    fn expects_scatter(&self, j: usize) -> bool {
        self.contributes(j) && self.members[j].scatter_got < self.finalized.len()
    }

    fn expects_gather(&self, j: usize) -> bool {
        let m = &self.members[j];
        !m.gather_got.is_empty() && m.done.is_none()
    }

    /// Member `j` has nothing more to send us and we nothing more to it.
    fn member_done(&self, j: usize) -> bool {
        let m = &self.members[j];
        m.failure.is_some()
            || (m.closed_clean && self.all_finalized())
            || m.conn.is_some_and(|id| self.conns[id].as_ref().is_some_and(|c| !c.has_output()) && !self.expects_from(j) && self.all_finalized())
    }

    fn all_finalized(&self) -> bool {
        self.finalized.iter().all(|&f| f)
    }

    fn finished(&self) -> bool {
        let ruled = self.adjudicator() != Some(self.me) || self.ruling.is_some();
        ruled && self.all_finalized() && (0..self.n()).all(|j| j == self.me || self.member_done(j))
    }

    /// The data phase is over for this member's judgement: its span is
    /// averaged, and every chunk and summary due to it has come or failed.
    /// (What it still has to write does not change what it testifies, and
    /// waiting for that would make a member with a slow uplink testify
    /// late: its testimony goes ahead of its unsent data instead.)
    fn data_done(&self) -> bool {
        self.all_finalized()
            && (0..self.n()).all(|j| {
                let m = &self.members[j];
                j == self.me || m.failure.is_some() || m.closed_clean || (m.conn.is_some() && !self.expects_data(j))
            })
    }

    fn timers(&mut self, now: Instant, deadline: Instant) {
        let s = self.settings;
        for j in 0..self.n() {
            if j == self.me || self.members[j].failure.is_some() || self.members[j].closed_clean {
                continue;
            }
            match self.members[j].conn {
                None if now.duration_since(self.start) > s.connect_timeout => {
                    let why = self.members[j].last_refusal.clone();
                    self.fail(j, Failure::NeverConnected(why));
                }
                None => {
                    let m = &self.members[j];
                    if j > self.me && m.dialing.is_none() && now >= m.next_dial && now < deadline {
                        self.dial(j, now);
                    }
                }
                Some(id) => {
                    let conn = self.conns[id].as_mut().expect("a member's connection is live");
                    let in_flight = if conn.has_output() { conn.poll_delivery(now) } else { None };
                    let conn = self.conns[id].as_ref().expect("a member's connection is live");
                    let read_idle = now.duration_since(conn.last_read);
                    let write_idle = now.duration_since(conn.last_write.max(conn.last_acked));
                    if self.expects_scatter(j) && read_idle > s.stall_timeout {
                        self.fail(j, Failure::Stalled(format!("no data for {:.1} s while its contribution was due", read_idle.as_secs_f64())));
                    } else if self.expects_gather(j) && read_idle > s.connect_timeout.max(s.stall_timeout) + s.stall_timeout {
                        self.fail(j, Failure::Stalled(format!("no averaged chunks for {:.1} s", read_idle.as_secs_f64())));
                    } else if !self.expects_data(j)
                        && self.expects_judgement(j)
                        && !conn.has_output()
                        && (self
                            .judgement_wait_from(conn)
                            .is_some_and(|t| now.duration_since(t) > s.connect_timeout.max(s.stall_timeout) + 2 * s.stall_timeout)
                            || self.testimony_overdue(now))
                    {
                        // (Up to that long a member may wait for a third one
                        // before it testifies, and the adjudicator for all.
                        // The wait counts from when `j` has all of ours too:
                        // until then its own data phase is not over.)
                        self.fail(j, Failure::Stalled(format!("no testimony or ruling for {:.1} s", read_idle.as_secs_f64())));
                    } else if conn.has_output() && write_idle > s.stall_timeout {
                        // (Idle: nothing written to the socket and nothing
                        // of it acknowledged.) A peer that stopped reading
                        // has acknowledged all we sent; with bytes still in
                        // flight the path is what is slow — a lossy link, or
                        // this host's uplink shared by its connections —
                        // and gets the longer wait (past it: a link cut
                        // without a FIN or RST).
                        match in_flight {
                            Some(true) if write_idle <= s.connect_timeout.max(s.stall_timeout) + 2 * s.stall_timeout => {}
                            Some(true) => self.fail(j, Failure::Stalled(format!("nothing it acknowledged for {:.1} s", write_idle.as_secs_f64()))),
                            _ => self.fail(j, Failure::Stalled(format!("not reading: nothing written to it for {:.1} s", write_idle.as_secs_f64()))),
                        }
                    }
                }
            }
        }
        // Unauthenticated connections that stopped moving are dropped.
        for id in 0..self.conns.len() {
            if let Some(c) = &self.conns[id]
                && !c.ready
                && now.duration_since(c.last_read) > s.stall_timeout
            {
                self.refuse(id, "handshake stalled".into());
            }
        }
    }

    fn flush_all(&mut self, now: Instant, deadline: Instant) {
        for id in 0..self.conns.len() {
            let Some(conn) = self.conns[id].as_mut() else { continue };
            if !conn.connected || conn.write_blocked || !conn.has_output() {
                continue;
            }
            // Under fault injection, one frame per write so that the fault
            // strikes between frames.
            let max_frames = if self.settings.fault.is_some() { 1 } else { usize::MAX };
            let grad = f32_bytes(self.grad);
            match conn.flush(Sources { wire: &self.wire, grad }, now, max_frames) {
                Ok(w) => {
                    self.bytes_sent += w.bytes;
                    self.scatter_written += w.scatter_payload;
                    self.gather_written += w.gather_payload;
                }
                Err(e) => self.closed(id, format!("writing: {e}")),
            }
            self.inject_fault(deadline);
        }
    }

    fn inject_fault(&self, deadline: Instant) {
        let written = |gather: bool| if gather { self.gather_written } else { self.scatter_written };
        match self.settings.fault {
            Some(Fault::ExitAfter { gather, bytes }) if written(gather) >= bytes => {
                // SAFETY: ends the process at once, like a kill: no destructor
                // runs, the kernel closes the sockets.
                unsafe { libc::_exit(86) }
            }
            Some(Fault::StallAfter { gather, bytes }) if written(gather) >= bytes => {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            }
            _ => {}
        }
    }
}
