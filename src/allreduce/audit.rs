//! The verified all-reduce: what the validator credits each member with,
//! what every member checks after a round, and the reruns that leave the
//! culprits out. docs/SECURITY.md has the threat model.
//!
//! The validator's AllReduce query names, per member, the weight it
//! credited (samples in verified Train answers; 0 = receive only) and the
//! projections of the mean gradient those answers add up to
//! (`projection`). Both are folded into the group digest, so a member
//! given other numbers refuses every handshake, and a member whose Hello
//! declares any weight but 0 or its credited one is refused by everyone.
//!
//! During the round each sender signs, for every owner, a statement of
//! its part of that owner's span (projections, their scale, squared norm:
//! a [`Statement`]) and sends it ahead of its chunks. The owner measures
//! what it decodes, and its span summary forwards every sender's statement,
//! marking a part *disputed* when the bytes do not match it. After the
//! round every member runs the same [`verdict`]:
//! - *forged*: a forwarded statement whose signature fails names the owner;
//! - *disputed*: a part its owner disputes leaves both out, unproven (only
//!   the two of them saw the bytes), or the sender alone when two owners or
//!   more dispute it;
//! - *averages*: each averaged span as received must project to the
//!   weighted mean of the parts stated for it, be no longer than they
//!   allow, and — dense, where the projections do not look — the parts'
//!   products with it, which the owner states and each sender checks for
//!   its own, must add up to W·‖average‖² (an owner that averages
//!   dishonestly fails);
//! - *contribution*: for each sender, its statements summed over the spans
//!   must equal what the validator credited (a scaled, sign-flipped,
//!   noisy, zero or other-work vector fails) — signed, so no owner can make
//!   an honest sender fail this, and no sender can blame an owner for it;
//! - *norms*: no contribution far beyond the group's median.
//!
//! A failed check names the culprit; the round then runs again without
//! the culprits (every honest member computes the same verdict from the
//! same summaries, so they rerun in the same group and stay
//! bit-identical).

use super::codec::Codec;
use super::group::{Group, Settings};
use super::identity::{Identity, PublicKey};
use super::projection::{GROUP_BLOCKS, K, Proj, Projector, axpy, max_diff};
use super::report::Report;
use sha2::{Digest, Sha256};

/// What the validator credited, per member of the group in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    /// Seeds the projection vectors (the epoch's Train challenge).
    pub challenge: [u8; 32],
    /// Credited weight (0: the member only receives).
    pub weights: Vec<f32>,
    /// Projections of the credited mean gradient (ignored at weight 0).
    pub expected: Vec<Proj>,
    /// The member whose ruling every member follows (the master
    /// validator, trusted): each member sends it what it saw, it rules
    /// who is left out, and so every honest member reruns in the same
    /// group even when someone showed different members different things
    /// (see `ruling`). `None`: each member follows its own verdict.
    pub adjudicator: Option<usize>,
}

/// One part of a span as its owner reports it: the projections of a
/// sender's decoded part, their scale (Σx² over the sampled elements, see
/// `projection`) and the part's squared norm over all its elements.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Part {
    pub proj: Proj,
    pub scale: f64,
    pub sum_squares: f64,
}

impl Part {
    pub const BYTES: usize = 8 * (K + 2);

    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in self.proj.iter().chain([&self.scale, &self.sum_squares]) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// `None` for a non-finite part or a negative sum of squares.
    pub fn parse(b: &[u8]) -> Option<Part> {
        let v: Vec<f64> = b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        (v.len() == K + 2 && v.iter().all(|x| x.is_finite()) && v[K] >= 0.0 && v[K + 1] >= 0.0).then(|| Part {
            proj: std::array::from_fn(|j| v[j]),
            scale: v[K],
            sum_squares: v[K + 1],
        })
    }

    /// Adds `other` (a further run of the same part) into this one.
    pub fn add(&mut self, other: &Part) {
        axpy(&mut self.proj, 1.0, &other.proj);
        self.scale += other.scale;
        self.sum_squares += other.sum_squares;
    }
}

/// A sender's signed claim about its part of one owner's span, sent to
/// the owner before its chunks and forwarded by the owner in its span
/// summary. Because the sender signed it, an owner cannot report another
/// part for it (a forged statement names the owner), and a sender cannot
/// deny what it claimed (statements that do not add up to its credit name
/// the sender, whatever any owner says). Whether the bytes it sent match
/// the claim only the owner can see: it *disputes* the part when they do
/// not (see [`verdict`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Statement {
    pub part: Part,
    pub sig: [u8; 64],
}

impl Statement {
    pub const BYTES: usize = Part::BYTES + 64;

    fn message(round: u64, digest: &[u8; 32], sender: usize, owner: usize, part: &Part) -> Vec<u8> {
        let mut m = Vec::with_capacity(24 + 8 + 32 + 4 + Part::BYTES);
        m.extend_from_slice(b"dtrain-allreduce-part-v1");
        m.extend_from_slice(&round.to_le_bytes());
        m.extend_from_slice(digest);
        m.extend_from_slice(&(sender as u16).to_le_bytes());
        m.extend_from_slice(&(owner as u16).to_le_bytes());
        part.encode(&mut m);
        m
    }

    /// `sender`'s statement of its part of `owner`'s span in this round
    /// (the digest binds it to the group, its audit and the attempt).
    pub fn sign(id: &Identity, round: u64, digest: &[u8; 32], sender: usize, owner: usize, part: Part) -> Statement {
        Statement { part, sig: id.sign(&Statement::message(round, digest, sender, owner, &part)) }
    }

    pub fn verify(&self, key: &PublicKey, round: u64, digest: &[u8; 32], sender: usize, owner: usize) -> bool {
        key.verify(&Statement::message(round, digest, sender, owner, &self.part), &self.sig)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        self.part.encode(out);
        out.extend_from_slice(&self.sig);
    }

    /// `None` unless `b` is [`Statement::BYTES`] long with a valid part.
    pub fn parse(b: &[u8]) -> Option<Statement> {
        (b.len() == Statement::BYTES).then_some(())?;
        Some(Statement { part: Part::parse(&b[..Part::BYTES])?, sig: b[Part::BYTES..].try_into().expect("64 bytes") })
    }
}

/// A part's place in its owner's summary (the byte sent per sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Contribution {
    /// Nothing of it entered the span.
    None = 0,
    /// Some chunks did, not all.
    Partial = 1,
    /// Every chunk did, and the bytes match the sender's statement.
    Full = 2,
    /// Every chunk did, but the bytes the owner decoded do not match the
    /// statement (beyond the codec's error): one of the two lies.
    Disputed = 3,
}

/// What a round measured for its audit (in [`Report::audit`]).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditData {
    /// Per owner, the parts its summary forwards for every member: the
    /// senders' signed statements, verified (`None` when no summary
    /// arrived; a part not stated is zero). This peer's own entry is the
    /// summary it sent.
    pub parts: Vec<Option<Vec<Part>>>,
    /// Per owner, a sender whose statement its summary forwards with a
    /// signature that does not check out: the owner forged it.
    pub forged: Vec<Option<usize>>,
    /// Per span, the averaged values as this member holds them (its own
    /// span's left empty: see `verdict`).
    pub averaged: Vec<Part>,
    /// Per owner, per sender, the sender's part · the averaged span, as
    /// the owner's signed summary states them (`None`: no summary came).
    pub dots: Vec<Option<Vec<f64>>>,
    /// Per span, this member's own part · the average as it received it
    /// (0 for its own span and where it contributed nothing).
    pub my_dots: Vec<f64>,
}

/// Whether `measured` (what an owner decoded of `elems` elements) and
/// `stated` (the sender's claim) agree within the codec's error.
pub fn parts_agree(codec: Codec, measured: &Part, stated: &Part, elems: usize) -> bool {
    let tol = tolerance(codec);
    let floor = |n: usize| 4.0 * (n as f64).sqrt() * absolute_error(codec);
    let bound = tol * measured.scale.sqrt().max(stated.scale.sqrt()) + floor(elems / GROUP_BLOCKS + 64) + 1e-30;
    let (mn, sn) = (measured.sum_squares.sqrt(), stated.sum_squares.sqrt());
    max_diff(&measured.proj, &stated.proj) <= bound && (mn - sn).abs() <= tol * mn.max(sn) + floor(elems) + 1e-30
}

/// A member named by a failed check.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Accusation {
    /// The member's index in the round's group.
    pub member: usize,
    pub why: String,
    /// False for an owner that only failed to report (it may have
    /// crashed): left out of the rerun like a cheat, but not a proven one.
    pub proven: bool,
}

/// A contribution's norm may be at most this many times the median of the
/// group's: honest mean gradients of similar sample counts differ by tens
/// of percent, a crafted addition that slipped past the projections
/// cannot weigh more than about this many honest contributions.
pub const NORM_BOUND: f64 = 3.0;

/// Relative error of a projection that the codec's rounding may cause, as
/// a fraction of the vector's norm: the codecs' documented per-element
/// bounds (fp16 2⁻¹¹, bf16 2⁻⁸ relative; int8 half a step of a block's
/// max/127), times 4 for headroom. fp32 still carries the miner's
/// accumulation rounding (~1e-7 × batches).
pub fn tolerance(codec: Codec) -> f64 {
    match codec {
        Codec::F32 => 1e-4,
        Codec::F16 => 2e-3,
        Codec::Bf16 => 1.6e-2,
        Codec::Int8 { .. } | Codec::TopK { wide: false, .. } => 5e-2,
        // The averages: fp16 values of the parts' union.
        Codec::TopK { wide: true, .. } => 2e-3,
    }
}

/// The codec's absolute error per element, beyond the relative one: fp16
/// rounds values below 2⁻¹⁴ (gradients often are) to multiples of 2⁻²⁴.
pub fn absolute_error(codec: Codec) -> f64 {
    match codec {
        Codec::F16 | Codec::TopK { wide: true, .. } => 2f64.powi(-25),
        _ => 0.0,
    }
}

impl Audit {
    pub fn projector(&self) -> Projector {
        Projector::new(&self.challenge)
    }

    /// Folds the audit into the group digest.
    pub fn digest(&self, base: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"dtrain-allreduce-audit-v1");
        h.update(base);
        h.update(self.challenge);
        h.update((self.weights.len() as u64).to_le_bytes());
        for (w, e) in self.weights.iter().zip(&self.expected) {
            h.update(w.to_le_bytes());
            for v in e {
                h.update(v.to_le_bytes());
            }
        }
        if let Some(a) = self.adjudicator {
            h.update(b"adjudicator");
            h.update((a as u64).to_le_bytes());
        }
        h.finalize().into()
    }

    /// Checks that it fits a group of `n`, with finite numbers.
    pub fn check(&self, n: usize) -> Result<(), String> {
        if self.weights.len() != n || self.expected.len() != n {
            return Err(format!("audit for {} weights and {} projections in a group of {n}", self.weights.len(), self.expected.len()));
        }
        if self.weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || self.expected.iter().flatten().any(|v| !v.is_finite()) {
            return Err("audit holds a negative or non-finite number".into());
        }
        if let Some(a) = self.adjudicator
            && (a >= n || self.weights[a] != 0.0)
        {
            return Err(format!("adjudicator {a} is not a weight-0 member of a group of {n}"));
        }
        Ok(())
    }

    /// The audit of the group without `drop` (indices into this group).
    pub fn without(&self, drop: &[usize]) -> Audit {
        let keep = |i: &usize| !drop.contains(i);
        Audit {
            challenge: self.challenge,
            weights: (0..self.weights.len()).filter(keep).map(|i| self.weights[i]).collect(),
            expected: (0..self.expected.len()).filter(keep).map(|i| self.expected[i]).collect(),
            // (Never left out: see `ruling`.)
            adjudicator: self.adjudicator.filter(|a| !drop.contains(a)).map(|a| a - drop.iter().filter(|&&d| d < a).count()),
        }
    }
}

/// The group without members `drop`.
pub fn group_without(group: &Group, drop: &[usize]) -> Group {
    Group { members: group.members.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, m)| m.clone()).collect() }
}

/// The checks every member runs after an audited round (see the module
/// doc), all on what every member holds alike: the signed-in credit, the
/// owners' summaries with the senders' signed statements, and the
/// averages as received. `codec` sets the tolerance. Spans whose owner
/// sent no summary cannot be checked; their values are not applied
/// (`unaveraged_spans`).
pub fn verdict(audit: &Audit, report: &Report, codec: Codec) -> Vec<Accusation> {
    let Some(data) = &report.audit else { return Vec::new() };
    let n = report.members.len();
    let tol = tolerance(codec);
    // The absolute part of the codec's error (fp16 subnormals), over n
    // elements of random signs: 4·√n·(per-element bound); `sampled` for
    // the projections, which see about one element in GROUP_BLOCKS.
    let floor = |n: usize| 4.0 * (n as f64).sqrt() * absolute_error(codec);
    // The averages travel in the owners' codec (top-k: the fp16 union).
    let mean_codec = codec.for_mean(n);
    let tol_mean = tolerance(mean_codec);
    let floor_mean = |n: usize| 4.0 * (n as f64).sqrt() * absolute_error(mean_codec);
    let sampled = |n: usize| n / GROUP_BLOCKS + 64;
    let span_len = |i: usize| report.members[i].span.1 - report.members[i].span.0;
    let total_len: usize = (0..report.members.len()).map(span_len).sum();
    let mut accused: Vec<Accusation> = Vec::new();
    let name = |accused: &mut Vec<Accusation>, member: usize, why: String, proven: bool| {
        if !accused.iter().any(|a| a.member == member) {
            accused.push(Accusation { member, why, proven });
        }
    };
    // Refused for a false weight (a signed claim, the same to everyone who
    // checked it): out, so that its span is averaged by somebody else.
    for (j, m) in report.members.iter().enumerate() {
        if let Some(f @ super::report::Failure::FalseWeight { .. }) = &m.failure {
            name(&mut accused, j, f.to_string(), true);
        }
    }
    let spans: Vec<usize> = (0..n).filter(|&i| report.members[i].span.1 > report.members[i].span.0).collect();
    let summed: Vec<usize> = spans.iter().copied().filter(|&i| data.parts[i].is_some()).collect();
    let m = |i: usize| &report.members[i];
    // In the span wholly: its bytes matched its statement, or were disputed.
    let whole = |i: usize, s: usize| m(i).contributors.contains(&s) || m(i).disputed.contains(&s);
    let any_part = |i: usize, s: usize| whole(i, s) || m(i).partial_contributors.contains(&s);
    // A summary forwarding a statement its sender never signed: only the
    // owner can have made it up.
    for &i in &summed {
        if let Some(s) = data.forged[i] {
            name(&mut accused, i, format!("span {i}: its summary forwards a statement of member {s}'s part that {s} never signed"), true);
        }
    }
    // Disputed parts: the bytes an owner decoded are not what their sender
    // signed. Either may lie and nobody else can tell, so both are left
    // out, unproven — unless two owners or more dispute the same sender:
    // then the sender alone (an owner cannot make a second one dispute).
    for s in 0..n {
        let by: Vec<usize> = summed.iter().copied().filter(|&i| m(i).disputed.contains(&s)).collect();
        if by.is_empty() {
            continue;
        }
        name(&mut accused, s, format!("the part it sent to span(s) {by:?} is not the part it signed (disputed by the owners)"), false);
        if let [i] = by[..] {
            name(&mut accused, i, format!("span {i}: disputes member {s}'s part, alone (one of the two lies)"), false);
        }
    }
    // A sender some owners got wholly and others in part or not at all (it
    // stalled or died midway, or lost a link; or an owner claims so): no
    // check of its sum can hold, nor of an average it is partly in. It is
    // left out, unproven, and the rerun checks everyone; an accomplice
    // stalling on purpose only buys a rerun.
    let broken: Vec<usize> = (0..n)
        .filter(|&s| summed.iter().any(|&i| any_part(i, s)) && summed.iter().any(|&i| i != s && !whole(i, s)))
        .filter(|&s| audit.weights[s] > 0.0)
        .collect();
    for &s in &broken {
        name(&mut accused, s, "not every owner got its whole contribution".into(), false);
    }
    // Averages: each averaged span against the weighted mean of the parts
    // stated for it, in projection and in norm (the mean's norm is at most
    // the weighted mean of the parts' norms: whatever an owner adds where
    // the projections do not look makes its average longer than that).
    // An owner does not check its own span: an honest owner's agrees, a
    // lying one's verdict matters to nobody.
    let checkable = |i: usize| data.forged[i].is_none() && m(i).partial_contributors.is_empty() && m(i).disputed.is_empty();
    for &i in summed.iter().filter(|&&i| i != report.me && checkable(i)) {
        let (Some(parts), super::report::SpanStatus::Averaged) = (&data.parts[i], &m(i).span_status) else { continue };
        let (mut mean, mut norms, mut total) = ([0f64; K], 0f64, 0f64);
        for &s in &m(i).contributors {
            let w = audit.weights[s] as f64;
            axpy(&mut mean, w, &parts[s].proj);
            norms += w * parts[s].sum_squares.sqrt();
            total += w;
        }
        if total > 0.0 {
            mean.iter_mut().for_each(|v| *v /= total);
            norms /= total;
        }
        let got = &data.averaged[i];
        let bound = tol_mean * got.scale.sqrt() + floor_mean(sampled(span_len(i))) + 1e-30;
        let d = max_diff(&mean, &got.proj);
        let norm_bound = norms * (1.0 + tol_mean) + floor_mean(span_len(i)) + 1e-30;
        if d > bound {
            let why = format!("span {i}: the average it sent differs from the mean of the parts stated for it (by {d:.3e}, tolerance {bound:.3e})");
            name(&mut accused, i, why, true);
        } else if got.sum_squares.sqrt() > norm_bound {
            let norm = got.sum_squares.sqrt();
            let why = format!("span {i}: the average it sent has norm {norm:.3e}, more than the parts stated for it allow ({norm_bound:.3e})");
            name(&mut accused, i, why, true);
        } else if let Some(dots) = &data.dots[i] {
            // Dense, where the projections do not look (an owner knows
            // which blocks they sample): the parts' products with the
            // average as sent, which the owner states per sender in its
            // signed summary and each sender checks below. For the true
            // mean a, Σ wₛ⟨a', pₛ⟩ = W⟨a', a⟩; that must equal W‖a'‖², so
            // ⟨a', a − a'⟩ = 0: an average a' that passes lies on the
            // sphere over [0, a] — never against a, never longer, at most
            // ‖a‖/2 off its line. The one product nobody else can check,
            // the owner's own, is what a liar would bend to balance the
            // sum: no product may exceed ‖a'‖·‖part‖ (Cauchy–Schwarz), and
            // the part's norm is bounded with its contribution's (below).
            let avg = got.sum_squares.sqrt();
            let len = span_len(i);
            let (mut sum, mut total, mut spread) = (0f64, 0f64, 0f64);
            let mut stretched = None;
            for &s in &m(i).contributors {
                let (w, pn) = (audit.weights[s] as f64, parts[s].sum_squares.sqrt());
                sum += w * dots[s];
                total += w;
                spread += w * pn;
                if dots[s].abs() > avg * (pn * (1.0 + tol) + floor(len)) + 1e-30 {
                    stretched = stretched.or(Some((s, dots[s], avg * pn)));
                }
            }
            let expected = total * got.sum_squares;
            let bound = total * avg * (2.0 * tol_mean * avg + floor_mean(len)) + 1e-5 * avg * spread + 1e-30;
            if let Some((s, dot, most)) = stretched {
                let why = format!("span {i}: states member {s}'s part · its average as {dot:.3e}, more than their norms allow ({most:.3e})");
                name(&mut accused, i, why, true);
            } else if (sum - expected).abs() > bound {
                let why = format!(
                    "span {i}: the average it sent is not the mean of its parts where the projections do not look (Σ w·part·average {sum:.3e}, W·‖average‖² {expected:.3e}, tolerance {bound:.3e})"
                );
                name(&mut accused, i, why, true);
            } else if audit.weights[report.me] > 0.0 && m(i).contributors.contains(&report.me) {
                // Only this member can check its own product (it alone
                // holds its part besides the owner): not proven to others.
                let (mine, stated, pn) = (data.my_dots[i], dots[report.me], parts[report.me].sum_squares.sqrt());
                let bound = avg * (tol * pn + floor(len)) + 1e-5 * avg * pn + 1e-30;
                if (mine - stated).abs() > bound {
                    let why = format!("span {i}: states this member's part · its average as {stated:.3e}, not {mine:.3e}");
                    name(&mut accused, i, why, false);
                }
            }
        }
    }
    // An owner whose summary never came leaves every sender's sum
    // unchecked (an accomplice need only withhold it for a poisoner's other
    // parts to pass): it is left out of the rerun, so that the rerun checks
    // them — not as a proven cheat, since it may have crashed.
    let anyone_sends = (0..n).any(|s| audit.weights[s] > 0.0 && m(s).weight.is_some_and(|w| w > 0.0));
    for &i in spans.iter().filter(|&&i| i != report.me && data.parts[i].is_none()) {
        if anyone_sends {
            name(&mut accused, i, format!("span {i}: no span summary came, so no contribution could be checked"), false);
        }
    }
    // Contributions: each sender's signed statements, summed over the
    // spans, against the credit. Signed, so a sum that misses names the
    // sender whatever the owners did — as long as every span's summary
    // came and none was forged.
    if summed.len() == spans.len() && summed.iter().all(|&i| data.forged[i].is_none()) {
        let senders: Vec<usize> = (0..n).filter(|&s| audit.weights[s] > 0.0 && spans.iter().all(|&i| whole(i, s))).collect();
        let mut norms = Vec::with_capacity(senders.len());
        for &s in &senders {
            let mut sum = Part::default();
            for &i in &spans {
                sum.add(&data.parts[i].as_ref().expect("checked")[s]);
            }
            norms.push(sum.sum_squares.sqrt());
            let bound = tol * sum.scale.sqrt() + floor(sampled(total_len)) + 1e-30;
            let d = max_diff(&sum.proj, &audit.expected[s]);
            if d > bound {
                let why = format!("its contribution is not the work the validator verified (projections differ by {d:.3e}, tolerance {bound:.3e})");
                name(&mut accused, s, why, true);
            }
        }
        // Defence in depth: whatever passed the projections (a vector
        // crafted to be zero where they look, or orthogonal to them) still
        // may not be far larger than the group's typical contribution, so it
        // moves the average by at most a few honest contributions' worth.
        // A mean over fewer samples is noisier, so the norm is also
        // compared scaled by √weight (constant when noise dominates): only
        // a norm beyond both bounds is named.
        if senders.len() >= 3 {
            let scaled: Vec<f64> = senders.iter().zip(&norms).map(|(&s, &norm)| norm * (audit.weights[s] as f64).sqrt()).collect();
            let (med, med_scaled) = (median(&norms), median(&scaled));
            for ((&s, &norm), &sc) in senders.iter().zip(&norms).zip(&scaled) {
                if norm > NORM_BOUND * med && sc > NORM_BOUND * med_scaled {
                    name(&mut accused, s, format!("its contribution's norm {norm:.3e} is over {NORM_BOUND}× the group's median {med:.3e}"), true);
                }
            }
        }
    }
    accused
}

/// The middle value (the upper one of an even count) of a nonempty list.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An audited all-reduce after its reruns.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The last round's report, over `group`.
    pub report: Report,
    /// The group of the last round (the original minus the culprits).
    pub group: Group,
    /// Every member named by a check, by id, with the reason, over all
    /// attempts.
    pub accused: Vec<(String, String)>,
    /// Members left out of a rerun without proof (no span summary came),
    /// by id, with the reason.
    pub dropped: Vec<(String, String)>,
    /// Whether the last round's verdict named nobody: only then may its
    /// result be applied.
    pub clean: bool,
}

/// Rounds of at most `attempts`: each runs `round` over the group and
/// audit left after the culprits of the previous ones, until a verdict
/// names nobody. A verdict that names this member itself ends it (the
/// others go on without it). `round` must start from this member's own
/// contribution each time, with the settings it is given: a rerun waits
/// longer for its members to connect (`rerun_settings`).
pub fn run_verified<E>(
    group: &Group,
    audit: &Audit,
    settings: &Settings,
    attempts: usize,
    mut round: impl FnMut(&Group, &Audit, &Settings) -> Result<Report, E>,
) -> Result<Verified, E> {
    let (mut group, mut audit) = (group.clone(), audit.clone());
    let codec = settings.codec;
    let mut accused: Vec<(String, String)> = Vec::new();
    let mut dropped: Vec<(String, String)> = Vec::new();
    let rerun = rerun_settings(settings);
    for attempt in 0..attempts.max(1) {
        let report = round(&group, &audit, if attempt == 0 { settings } else { &rerun })?;
        // With an adjudicator, its ruling (the same for everyone) decides;
        // without one, nobody may step.
        let named = match (audit.adjudicator, &report.ruling) {
            (None, _) => verdict(&audit, &report, codec),
            (Some(_), Some(ruling)) => ruling.clone(),
            (Some(a), None) => {
                tracing::warn!("round {} attempt {attempt}: no ruling came from the adjudicator (member {a}); not stepping", report.round);
                return Ok(Verified { clean: false, report, group, accused, dropped });
            }
        };
        for a in &named {
            let (id, why) = (group.members[a.member].id.clone(), a.why.clone());
            tracing::warn!("round {} attempt {attempt}: member {id} {}: {why}", report.round, if a.proven { "accused" } else { "left out" });
            if a.proven { &mut accused } else { &mut dropped }.push((id, why));
        }
        let me_named = named.iter().any(|a| a.member == report.me);
        if named.is_empty() || me_named || attempt + 1 == attempts.max(1) {
            return Ok(Verified { clean: named.is_empty(), report, group, accused, dropped });
        }
        let drop: Vec<usize> = named.iter().map(|a| a.member).collect();
        audit = audit.without(&drop);
        group = group_without(&group, &drop);
    }
    unreachable!("the loop returns on its last attempt")
}

/// The settings of a rerun. Members reach the verdict at different times:
/// one that caught a stall at once starts the rerun while another still
/// waits out the stalled owner's averages (`max(connect, stall) + stall`,
/// see `Settings::stall_timeout`), so the rerun's connect timeout covers
/// that wait as well as its own.
pub fn rerun_settings(settings: &Settings) -> Settings {
    let (connect, stall) = (settings.connect_timeout, settings.stall_timeout);
    Settings { connect_timeout: connect + connect.max(stall) + stall, ..settings.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_checks_out_only_as_signed() {
        let id = Identity::from_seed([3; 32]);
        let digest = [7u8; 32];
        let part = Part { proj: [1.0, -2.0, 3.5, 0.25], scale: 4.0, sum_squares: 9.0 };
        let st = Statement::sign(&id, 5, &digest, 1, 2, part);
        let mut bytes = Vec::new();
        st.encode(&mut bytes);
        assert_eq!(bytes.len(), Statement::BYTES);
        let back = Statement::parse(&bytes).unwrap();
        assert_eq!(back, st);
        assert!(back.verify(&id.public(), 5, &digest, 1, 2));
        // Another round, group, sender, owner or key: no.
        assert!(!back.verify(&id.public(), 6, &digest, 1, 2));
        assert!(!back.verify(&id.public(), 5, &[8; 32], 1, 2));
        assert!(!back.verify(&id.public(), 5, &digest, 2, 2));
        assert!(!back.verify(&id.public(), 5, &digest, 1, 3));
        assert!(!back.verify(&Identity::from_seed([4; 32]).public(), 5, &digest, 1, 2));
        // Any changed number of the part: no.
        for at in 0..Part::BYTES / 8 {
            let mut b = bytes.clone();
            b[8 * at] ^= 1;
            assert!(!Statement::parse(&b).unwrap().verify(&id.public(), 5, &digest, 1, 2), "number {at}");
        }
        // Malformed: wrong length, non-finite or negative numbers.
        assert!(Statement::parse(&bytes[1..]).is_none());
        let mut b = bytes.clone();
        b[..8].copy_from_slice(&f64::NAN.to_le_bytes());
        assert!(Statement::parse(&b).is_none());
        b[..8].copy_from_slice(&0f64.to_le_bytes());
        b[8 * K..8 * K + 8].copy_from_slice(&(-1f64).to_le_bytes());
        assert!(Statement::parse(&b).is_none());
    }

    #[test]
    fn parts_agree_within_the_codecs_error_only() {
        let part = Part { proj: [10.0, -5.0, 2.0, 1.0], scale: 400.0, sum_squares: 25_600.0 };
        for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 256 }] {
            assert!(parts_agree(codec, &part, &part, 1 << 20));
            let tol = tolerance(codec);
            let mut near = part;
            near.proj[0] += 0.5 * tol * 20.0;
            assert!(parts_agree(codec, &near, &part, 1 << 20), "{codec:?}");
            let mut far = part;
            far.proj[2] += 2.0 * tol * 20.0;
            assert!(!parts_agree(codec, &far, &part, 1 << 20), "{codec:?}");
            let mut longer = part;
            longer.sum_squares *= (1.0 + 3.0 * tol) * (1.0 + 3.0 * tol);
            assert!(!parts_agree(codec, &longer, &part, 1 << 20), "{codec:?}");
        }
    }
}
