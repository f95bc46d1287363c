//! The validator's scoring, as pure functions over what it measured (see
//! ../shared/REFERENCE.md, "Scoring"): no I/O here, so every rule is tested
//! against hand-computed cases.
//!
//! Where the reference had a bug this follows the fix: all-reduce
//! participation is looked up by uid in a map keyed by uid (the reference
//! looked uids up in a set of peer ids, so nobody was ever marked failed).

use crate::allreduce::projection::Proj;
use std::collections::{BTreeMap, HashSet};

/// A miner's index in the registry.
pub type Uid = u16;

/// Relative difference under which a replayed batch agrees with the
/// miner's claim, averaged over the replayed batches.
pub const GRADIENT_FLOOR: f64 = 0.75;
/// Moving-average weight of a round's rewards.
pub const EMA_ALPHA: f64 = 0.05;
/// Consecutive IsAlive failures after which a miner's score drops to 0.
pub const MAX_ISALIVE_FAILURES: u32 = 10;
/// What a failed check leaves of a miner's moving score, on top of the
/// round's zero reward: three failures cost 87.5% of it, not the EMA's
/// 14% (a cheater must not live off its past for dozens of rounds).
pub const FAILURE_KEEP: f64 = 0.5;
/// Default relative tolerance of a replayed batch's projections, as a
/// fraction of the replayed gradient's norm over the sampled elements (the
/// projections' scale, see `allreduce::projection`): on the same engine and
/// precision the miner's and the validator's projections differ by
/// ~2e-5 (measured in tests/work.rs: the miner's come from differences
/// of an f32 accumulator), 50× below it; another model state, other rows,
/// a scaled or partial gradient differ by 1e-2 and more.
pub const PROJECTION_TOLERANCE: f64 = 1e-3;

/// How well the miner's reported Σ|grad| agree with the validator's replay:
/// pairs of (miner's value, validator's value) for the replayed batches.
/// `1 − mean(|m − v| / max(|m|, |v|, 1e-8))`, floored at 0 and set to 0
/// below [`GRADIENT_FLOOR`]. No pairs, or a non-finite value, score 0.
pub fn gradient_score(pairs: &[(f64, f64)]) -> f64 {
    if pairs.is_empty() || pairs.iter().any(|(m, v)| !(m.is_finite() && v.is_finite())) {
        return 0.0;
    }
    let mean_rel = pairs.iter().map(|&(m, v)| (m - v).abs() / m.abs().max(v.abs()).max(1e-8)).sum::<f64>() / pairs.len() as f64;
    let score = (1.0 - mean_rel).max(0.0);
    if score < GRADIENT_FLOOR { 0.0 } else { score }
}

/// The gradient score of a Train response: `batches` is how many batches
/// the validator rebuilt from the response's rows and batch size (0 when it
/// could not), `sums` the miner's `gradient_sums`, `replayed` the batches
/// the validator recomputed as (batch index, its Σ|grad|). A batch count
/// that differs from the number of sums, or a replayed index outside them,
/// scores 0.
pub fn train_gradient_score(batches: usize, sums: &[f64], replayed: &[(usize, f64)]) -> f64 {
    if batches == 0 || batches != sums.len() || replayed.iter().any(|&(k, _)| k >= sums.len()) {
        return 0.0;
    }
    gradient_score(&replayed.iter().map(|&(k, v)| (sums[k], v)).collect::<Vec<_>>())
}

/// Whether a Train answer's per-batch projections agree with the
/// validator's replays: `claimed` has one entry per batch, `replayed` holds
/// (batch index, the replay's projections, its gradient's sampled norm). Every
/// replayed batch must agree within `tolerance × norm` in every
/// projection; none replayed, a missing batch or a non-finite number fail.
pub fn projections_agree(batches: usize, claimed: &[Proj], replayed: &[(usize, Proj, f64)], tolerance: f64) -> bool {
    batches > 0
        && claimed.len() == batches
        && !replayed.is_empty()
        && claimed.iter().flatten().all(|v| v.is_finite())
        && replayed.iter().all(|&(k, ref v, norm)| {
            k < claimed.len() && norm.is_finite() && v.iter().zip(&claimed[k]).all(|(a, b)| (a - b).abs() <= tolerance * norm)
        })
}

/// Steps: distinct rows trained on.
pub fn steps_score(dataset_indices: &[u64]) -> f64 {
    dataset_indices.iter().collect::<HashSet<_>>().len() as f64
}

/// How a miner fared in the last all-reduce, as the master recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Participation {
    Success,
    Fail,
    NonParticipating,
    /// A check of the all-reduce named it (a contribution other than its
    /// verified work, a dishonest average or report, a false weight): it
    /// earns nothing in the next epoch's Train rounds either.
    Caught,
}

/// 1 if the miner took part successfully in the last all-reduce.
pub fn allreduce_score(last: &BTreeMap<Uid, Participation>, uid: Uid) -> f64 {
    if last.get(&uid) == Some(&Participation::Success) { 1.0 } else { 0.0 }
}

/// `1 − elapsed/timeout` for a download of part of the miner's state that
/// finished in `elapsed` seconds; 0 when it failed (`None`) or took longer.
pub fn bandwidth_score(elapsed: Option<f64>, timeout: f64) -> f64 {
    match elapsed {
        Some(t) if t.is_finite() && t >= 0.0 && timeout > 0.0 => (1.0 - t / timeout).clamp(0.0, 1.0),
        _ => 0.0,
    }
}

/// `x / ‖x‖₂` (all zeros stay zeros).
pub fn l2_normalised(x: &[f64]) -> Vec<f64> {
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
    x.iter().map(|v| if norm > 0.0 { v / norm } else { 0.0 }).collect()
}

/// One sampled miner's measurements in a Train round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainMeasure {
    pub uid: Uid,
    pub member: bool,
    pub gradient: f64,
    pub steps: f64,
    pub allreduce: f64,
}

/// Train round rewards: `membership × (0.5·ĝ·ŝ + 0.5·allreduce)` with
/// gradient and steps L2-normalised across the sampled miners — except
/// that a miner whose Train answer failed verification (gradient score 0)
/// earns nothing that round. The reference paid the all-reduce half
/// regardless, so a miner that invented its gradient sums but joined the
/// all-reduce kept ~80% of an honest miner's reward.
pub fn train_round_rewards(m: &[TrainMeasure]) -> Vec<(Uid, f64)> {
    let g = l2_normalised(&m.iter().map(|x| x.gradient).collect::<Vec<_>>());
    let s = l2_normalised(&m.iter().map(|x| x.steps).collect::<Vec<_>>());
    m.iter().enumerate().map(|(i, x)| (x.uid, if x.member && x.gradient > 0.0 { 0.5 * g[i] * s[i] + 0.5 * x.allreduce } else { 0.0 })).collect()
}

/// All-reduce round rewards: `membership × bandwidth`.
pub fn allreduce_round_rewards(m: &[(Uid, bool, f64)]) -> Vec<(Uid, f64)> {
    m.iter().map(|&(uid, member, bw)| (uid, if member { bw } else { 0.0 })).collect()
}

/// The validator's moving scores.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    pub score: BTreeMap<Uid, f64>,
    pub isalive_failures: BTreeMap<Uid, u32>,
}

impl Scores {
    /// Folds one round's rewards in: rewards are divided by their sum, then
    /// every known miner moves by `α·reward + (1−α)·score` (a miner not
    /// rewarded this round decays, as in the reference's template).
    pub fn fold_round(&mut self, rewards: &[(Uid, f64)]) {
        let clean = |r: f64| if r.is_finite() && r > 0.0 { r } else { 0.0 };
        let total: f64 = rewards.iter().map(|&(_, r)| clean(r)).sum();
        let mut this: BTreeMap<Uid, f64> = BTreeMap::new();
        for &(uid, r) in rewards {
            *this.entry(uid).or_default() += if total > 0.0 { clean(r) / total } else { 0.0 };
            self.score.entry(uid).or_default();
        }
        for (uid, s) in self.score.iter_mut() {
            *s = EMA_ALPHA * this.get(uid).copied().unwrap_or(0.0) + (1.0 - EMA_ALPHA) * *s;
        }
    }

    /// A failed check: the miner keeps [`FAILURE_KEEP`] of its score.
    pub fn penalize(&mut self, uid: Uid) {
        *self.score.entry(uid).or_default() *= FAILURE_KEEP;
    }

    /// Records an IsAlive answer; more than [`MAX_ISALIVE_FAILURES`]
    /// failures in a row drop the miner's score to 0.
    pub fn isalive(&mut self, uid: Uid, alive: bool) {
        let n = self.isalive_failures.entry(uid).or_default();
        *n = if alive { 0 } else { *n + 1 };
        if *n > MAX_ISALIVE_FAILURES {
            self.score.insert(uid, 0.0);
        }
    }

    /// Weights: the scores L1-normalised (all zero if every score is 0).
    pub fn weights(&self) -> BTreeMap<Uid, f64> {
        let total: f64 = self.score.values().map(|s| s.max(0.0)).sum();
        self.score.iter().map(|(&u, &s)| (u, if total > 0.0 { s.max(0.0) / total } else { 0.0 })).collect()
    }
}
