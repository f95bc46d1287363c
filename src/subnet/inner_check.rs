//! The validator's check of a DiLoCo miner's inner steps.
//!
//! A DiLoCo answer commits, before the validator picks anything, to
//! - per step k: the projections of the batch's gradient at the weights θₖ
//!   (as in the synchronous mode) and of the weights θₖ₊₁ the step left;
//! - the SHA-256 of a snapshot (θ, AdamW m and v, step count) before every
//!   S-th step;
//! - the projections of Δ = θₑ − θ_H it will contribute.
//!
//! The validator then picks one stretch of S steps at random, fetches the
//! snapshot that starts it (its hash must be the committed one; the first
//! must be θₑ itself, a later one must sit where the previous step said
//! the weights were), replays those steps — forward, backward, the same
//! AdamW step — and compares every gradient's projections and every step's
//! *update* (θₖ₊₁ − θₖ, projected) with the answer. The stated Δ must be
//! θₑ − θ_H by the committed projections, and the all-reduce binds the
//! contribution to it. A miner that fakes any stretch (skips steps, trains
//! other rows, scales or redirects an update, starts from another model)
//! is caught when that stretch is picked: with H/S stretches, one in H/S
//! per answer, and a caught answer forfeits the epoch (docs/SECURITY.md).

use super::work::{WorkError, abs_sum};
use crate::allreduce::projection::{Proj, Projector, max_diff};
use crate::data::loader::RowBatches;
use crate::diloco::snapshot::{Snapshot, digest};
use crate::engine::Engine;
use crate::model::{Gpt, ParamTensor};
use crate::optim::{Optimizer, OptimizerConfig};

/// What a DiLoCo answer committed to (lengths checked by the caller: one
/// entry per step, one digest per stretch).
pub struct InnerClaim<'a> {
    pub projections: &'a [Proj],
    pub params_after: &'a [Proj],
    pub digests: &'a [String],
    pub delta: Proj,
}

/// The replay of one stretch: per replayed step its Σ|∇L| and gradient
/// projections (with their scale) for the synchronous mode's scoring, or
/// why the answer fails.
#[derive(Debug, Default)]
pub struct InnerReplay {
    pub sums: Vec<(usize, f64)>,
    pub projections: Vec<(usize, Proj, f64)>,
    pub failure: Option<String>,
    /// Seconds the replayed steps took (the snapshot's download and
    /// checks not counted: what the miner's own steps are estimated by).
    pub replay_s: f64,
    /// With the sparse codec: what the contribution did to the loss.
    pub gauntlet: Option<super::gauntlet::Gains>,
    /// Seconds the snapshot's download took (what verification costs the
    /// validator's link: docs/SECURITY.md).
    pub fetch_s: f64,
}

/// The inner steps' optimizer, as every miner runs it.
pub struct InnerSettings {
    pub config: OptimizerConfig,
    pub lr: f32,
    pub max_grad_norm: f32,
    /// Steps per stretch (S).
    pub every: usize,
    /// A step's update must agree within this fraction of its (sampled) norm.
    pub tolerance: f64,
}

/// Checks `claim` against `model` (holding θₑ, which it holds again after)
/// by replaying stretch `pick` of the `n` steps over `batches`; `fetch`
/// downloads a snapshot by its digest.
#[allow(clippy::too_many_arguments)]
pub fn check_inner<E: Engine>(
    model: &mut Gpt<E>,
    batches: &RowBatches,
    n: usize,
    test: &ParamTensor,
    projector: &Projector,
    s: &InnerSettings,
    claim: &InnerClaim,
    pick: usize,
    fetch: impl FnOnce(&str) -> Result<Vec<u8>, String>,
) -> Result<InnerReplay, WorkError> {
    let fail = |why: String| Ok(InnerReplay { failure: Some(why), ..InnerReplay::default() });
    let anchor = model.read_params();
    let (anchor_proj, anchor_sq) = model.param_projection(projector);
    // Rounding between a difference of projections and the projection of
    // a difference (f32 lanes over ~10⁵ sampled weights): far below any
    // real change.
    let floor = 1e-6 * anchor_sq.sqrt() + 1e-30;
    let end = claim.params_after[n - 1];
    let stated: Proj = std::array::from_fn(|j| anchor_proj[j] - end[j]);
    if max_diff(&stated, &claim.delta) > floor + s.tolerance * max_abs(&claim.delta) {
        return fail("its stated pseudo-gradient is not where its own steps ended".into());
    }
    let first = pick * s.every;
    let stretch = first..(first + s.every).min(n);
    let fetching = std::time::Instant::now();
    let bytes = match fetch(&claim.digests[pick]) {
        Ok(b) => b,
        Err(e) => return fail(format!("did not serve its snapshot before step {first}: {e}")),
    };
    let fetch_s = fetching.elapsed().as_secs_f64();
    if digest(&bytes) != claim.digests[pick] {
        return fail(format!("served a snapshot before step {first} other than the one it committed to"));
    }
    let snap = match Snapshot::from_bytes(&bytes, anchor.len()) {
        Ok(s) => s,
        Err(e) => return fail(format!("its snapshot before step {first}: {e}")),
    };
    drop(bytes);
    if snap.step != first as u64 {
        return fail(format!("its snapshot {pick} is of step {}, not {first}", snap.step));
    }
    let start_proj = if first == 0 {
        if snap.params != anchor {
            return fail("its first snapshot is not the epoch's model".into());
        }
        anchor_proj
    } else {
        claim.params_after[first - 1]
    };
    model.write_params(&snap.params);
    let result = replay_stretch(model, batches, stretch, test, projector, s, claim, start_proj, floor, snap);
    model.write_params(&anchor);
    model.zero_grads();
    result.map(|r| InnerReplay { fetch_s, ..r })
}

fn max_abs(p: &Proj) -> f64 {
    p.iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[allow(clippy::too_many_arguments)]
fn replay_stretch<E: Engine>(
    model: &mut Gpt<E>,
    batches: &RowBatches,
    stretch: std::ops::Range<usize>,
    test: &ParamTensor,
    projector: &Projector,
    s: &InnerSettings,
    claim: &InnerClaim,
    start_proj: Proj,
    floor: f64,
    snap: Snapshot,
) -> Result<InnerReplay, WorkError> {
    let mut out = InnerReplay::default();
    let (here, _) = model.param_projection(projector);
    if max_diff(&here, &start_proj) > floor {
        out.failure = Some(format!("its snapshot before step {} is not where its previous step said the weights were", stretch.start));
        return Ok(out);
    }
    let mut opt = Optimizer::new(model, s.config).map_err(crate::model::ModelError::from)?;
    opt.write_state(model, &snap.m, &snap.v, snap.opt_step);
    drop(snap);
    let (b, t) = batches.shape();
    let started = std::time::Instant::now();
    let mut before = model.read_params();
    let mut claimed_before = start_proj;
    for k in stretch {
        model.zero_grads();
        let (inputs, targets) = batches.batch(k);
        model.forward_backward(inputs, targets, b, t, 1.0)?;
        out.sums.push((k, abs_sum(&model.read_grad_range(test.offset, test.len))));
        let (p, sq) = model.grad_projection(projector);
        out.projections.push((k, p, sq.sqrt()));
        opt.clip_and_step(model, s.lr, s.max_grad_norm);
        let after = model.read_params();
        let update: Vec<f32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let (upd, upd_sq) = projector.project_with_scale(&update, 0);
        let claimed: Proj = std::array::from_fn(|j| claim.params_after[k][j] - claimed_before[j]);
        let d = max_diff(&upd, &claimed);
        if d > s.tolerance * upd_sq.sqrt() + floor {
            out.failure = Some(format!("its step {k} did not move the weights as the replayed step does (projections differ by {d:.3e})"));
            return Ok(out);
        }
        claimed_before = claim.params_after[k];
        before = after;
    }
    out.replay_s = started.elapsed().as_secs_f64();
    Ok(out)
}
