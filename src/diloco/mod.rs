//! DiLoCo (Douillard et al., 2023): train more per byte sent.
//!
//! Instead of averaging one gradient per epoch, every miner starts the
//! epoch from the published model θₑ, takes H inner optimizer steps on the
//! rows it was assigned ([`inner`]), and joins the all-reduce with its
//! *pseudo-gradient* Δ = θₑ − θ_local, weighted by its samples. Every member
//! then applies the same outer step ([`outer_step`]: SGD with Nesterov
//! momentum, as `torch.optim.SGD(nesterov=True)`) to θₑ with the averaged Δ̄,
//! so all models stay bit-identical. One exchange carries H steps' work:
//! the wire cost per token falls by about H.
//!
//! The outer momentum is part of the published model (`outer.safetensors`
//! beside the weights), so a late joiner or a follower resumes exactly.
//! The inner AdamW state is each miner's own: kept across epochs (the
//! DiLoCo paper's rule, and what makes H = 1 with outer lr 1 and no
//! momentum the synchronous mode step for step), reset to zero whenever a
//! miner loads a published model instead of computing it (joining late or
//! after missing a round).

pub mod inner;
pub mod schedule;
pub mod snapshot;

pub use schedule::LrSchedule;

use rayon::prelude::*;

/// What the validator decides for a DiLoCo network and sends with its
/// queries (the inner learning rate with Train, the outer step with
/// AllReduce).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DilocoSettings {
    /// Inner steps per epoch: the most batches a miner trains per Train
    /// query (one query per epoch).
    pub inner_steps: u64,
    /// AdamW learning rate of the inner steps (the subnet: 2.5e-4).
    pub inner_lr: f64,
    /// The outer SGD step's learning rate (0.7–1.0 in the literature).
    pub outer_lr: f64,
    /// Nesterov momentum of the outer step (0.9).
    pub outer_momentum: f64,
    /// Inner steps between the snapshots a miner keeps for the validator
    /// to replay from (0: an eighth of `inner_steps`, rounded up — the
    /// validator replays one such stretch per answer).
    pub snapshot_every: u64,
    /// Seconds of inner steps per epoch (0: none): a miner stops after the
    /// step that passes them, whatever `inner_steps` allows, and is
    /// credited the steps it took — epochs bounded by time, as the current
    /// subnet bounds them, so a slow miner trains less instead of holding
    /// everyone up.
    pub inner_seconds: f64,
    /// The inner learning rate over epochs (`inner_lr` is its peak).
    pub inner_lr_schedule: LrSchedule,
    /// The outer learning rate over epochs (`outer_lr` is its peak).
    pub outer_lr_schedule: LrSchedule,
}

impl Default for DilocoSettings {
    fn default() -> DilocoSettings {
        DilocoSettings {
            inner_steps: 50,
            inner_lr: 2.5e-4,
            outer_lr: 0.7,
            outer_momentum: 0.9,
            snapshot_every: 0,
            inner_seconds: 0.0,
            inner_lr_schedule: LrSchedule::Constant,
            outer_lr_schedule: LrSchedule::Constant,
        }
    }
}

impl DilocoSettings {
    /// The inner learning rate of the epoch after `outer_steps` outer steps.
    pub fn inner_lr_at(&self, outer_steps: u64) -> f64 {
        self.inner_lr * self.inner_lr_schedule.factor(outer_steps)
    }

    /// The outer learning rate of the step after `outer_steps` outer steps.
    pub fn outer_lr_at(&self, outer_steps: u64) -> f64 {
        self.outer_lr * self.outer_lr_schedule.factor(outer_steps)
    }

    /// Inner steps between snapshots (see `snapshot_every`).
    pub fn every(&self) -> u64 {
        if self.snapshot_every > 0 { self.snapshot_every } else { self.inner_steps.div_ceil(8).max(1) }
    }

    /// Clear errors for settings no network should run with.
    pub fn check(&self) -> Result<(), String> {
        if self.inner_steps == 0 || self.inner_steps > MAX_INNER_STEPS {
            return Err(format!("inner steps {} (1..={MAX_INNER_STEPS})", self.inner_steps));
        }
        check_outer(self.outer_lr, self.outer_momentum)?;
        if !(self.inner_lr.is_finite() && self.inner_lr >= 0.0) {
            return Err(format!("inner learning rate {} must be a finite number ≥ 0", self.inner_lr));
        }
        if !(self.inner_seconds.is_finite() && (0.0..=MAX_INNER_SECONDS).contains(&self.inner_seconds)) {
            return Err(format!("inner seconds {} (0..={MAX_INNER_SECONDS}; 0: bounded by steps only)", self.inner_seconds));
        }
        Ok(())
    }
}

/// Longest time-bounded epoch one Train query may ask for (a day).
pub const MAX_INNER_SECONDS: f64 = 86_400.0;

/// Most inner steps one Train query may ask for (the subnet uses ~500).
pub const MAX_INNER_STEPS: u64 = 100_000;

/// The outer step's learning rate and momentum as a miner accepts them
/// from a validator's query.
pub fn check_outer(lr: f64, momentum: f64) -> Result<(), String> {
    if !(lr.is_finite() && (0.0..=10.0).contains(&lr)) {
        return Err(format!("outer learning rate {lr} (0..=10 accepted)"));
    }
    if !(momentum.is_finite() && (0.0..1.0).contains(&momentum)) {
        return Err(format!("outer momentum {momentum} (0 ≤ μ < 1 accepted)"));
    }
    Ok(())
}

/// The outer optimizer's state: Nesterov's momentum buffer (laid out
/// like the parameters; empty until the first outer step, which is the
/// same as zeros) and the outer steps taken. Published with the model
/// (`checkpoint::OUTER_FILE`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OuterState {
    pub momentum: Vec<f32>,
    pub steps: u64,
}

impl OuterState {
    /// One outer step of `params` (holding θₑ, `anchor`'s bits, or not:
    /// they are overwritten) with the averaged pseudo-gradient `delta`.
    pub fn step(&mut self, params: &mut [f32], anchor: &[f32], delta: &[f32], lr: f32, momentum: f32) {
        self.momentum.resize(params.len(), 0.0);
        outer_step(params, anchor, delta, &mut self.momentum, lr, momentum);
        self.steps += 1;
    }
}

/// Elements per parallel task of the outer step.
const CHUNK: usize = 1 << 16;

/// The outer step, in place: with the averaged pseudo-gradient Δ̄ (`delta`),
/// the momentum buffer `u` and the epoch's starting weights `anchor`,
///
/// ```text
/// u ← μ·u + Δ̄            (torch's buffer; dampening 0)
/// θ ← θₑ − lr·(Δ̄ + μ·u)  (Nesterov)
/// ```
///
/// written into `params`. Elementwise in f32 in a fixed order, so every
/// member computing it from the same bits gets the same bits (rayon only
/// splits the elements, never reorders a sum).
pub fn outer_step(params: &mut [f32], anchor: &[f32], delta: &[f32], u: &mut [f32], lr: f32, momentum: f32) {
    assert!(params.len() == anchor.len() && anchor.len() == delta.len() && delta.len() == u.len());
    params.par_chunks_mut(CHUNK).zip(anchor.par_chunks(CHUNK)).zip(delta.par_chunks(CHUNK)).zip(u.par_chunks_mut(CHUNK)).for_each(
        |(((p, a), d), u)| {
            for i in 0..p.len() {
                u[i] = momentum * u[i] + d[i];
                p[i] = a[i] - lr * (d[i] + momentum * u[i]);
            }
        },
    );
}

/// How much of what the sparse codec dropped a miner carries into the
/// next round: SparseLoCo's decayed error-feedback accumulator, which
/// also plays the part of the outer momentum (run the sparse codec with
/// `--outer-momentum 0`: momentum on top of undecayed feedback overshoots
/// — measured in docs/BENCHMARKS.md).
pub const FEEDBACK_DECAY: f32 = 0.95;

/// Error feedback for the sparse codec: `delta` plus `FEEDBACK_DECAY` ×
/// what the codec dropped before (`feedback`; empty or of another length
/// = nothing), split into what `codec` carries (blocks cut from element 0,
/// as the all-reduce aligns them) and the rest, which waits for the next
/// round.
pub fn with_feedback(mut delta: Vec<f32>, feedback: &[f32], codec: crate::allreduce::codec::Codec) -> (Vec<f32>, Vec<f32>) {
    if feedback.len() == delta.len() {
        delta.iter_mut().zip(feedback).for_each(|(d, e)| *d += FEEDBACK_DECAY * e);
    }
    let mut sent = delta.clone();
    if !codec.roundtrip(&mut sent) {
        // Non-finite: the all-reduce refuses it whole; nothing is kept.
        return (delta, Vec::new());
    }
    delta.iter_mut().zip(&sent).for_each(|(x, c)| *x -= c);
    (sent, delta)
}

/// Δ = θₑ − θ, the pseudo-gradient a miner contributes (a step *down* the
/// loss, as a gradient is, so the outer SGD step subtracts it).
pub fn pseudo_gradient(anchor: &[f32], params: &[f32]) -> Vec<f32> {
    assert_eq!(anchor.len(), params.len());
    let mut d = vec![0f32; anchor.len()];
    d.par_chunks_mut(CHUNK).zip(anchor.par_chunks(CHUNK)).zip(params.par_chunks(CHUNK)).for_each(|((d, a), p)| {
        for i in 0..d.len() {
            d[i] = a[i] - p[i];
        }
    });
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook loop, in f64, step by step as `torch.optim.SGD` with
    /// `nesterov=True` writes it (buffer cloned from the first gradient,
    /// which μ·0 + g equals).
    fn naive(theta0: &[f64], deltas: &[Vec<f64>], lr: f64, mu: f64) -> Vec<f64> {
        let mut theta = theta0.to_vec();
        let mut buf: Option<Vec<f64>> = None;
        for g in deltas {
            let b = match buf.take() {
                None => g.clone(),
                Some(b) => b.iter().zip(g).map(|(b, g)| mu * b + g).collect(),
            };
            let step: Vec<f64> = g.iter().zip(&b).map(|(g, b)| g + mu * b).collect();
            theta = theta.iter().zip(&step).map(|(t, s)| t - lr * s).collect();
            buf = Some(b);
        }
        theta
    }

    #[test]
    fn outer_steps_match_the_textbook_nesterov_sgd() {
        let mut rng = crate::rng::Rng::new(7);
        let n = 3 * CHUNK + 17;
        let theta0: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        let deltas: Vec<Vec<f32>> = (0..5).map(|_| (0..n).map(|_| 0.01 * rng.normal()).collect()).collect();
        for (lr, mu) in [(0.7f32, 0.9f32), (1.0, 0.0), (0.3, 0.5)] {
            let (mut theta, mut u) = (theta0.clone(), vec![0f32; n]);
            for d in &deltas {
                let anchor = theta.clone();
                outer_step(&mut theta, &anchor, d, &mut u, lr, mu);
            }
            let want = naive(
                &theta0.iter().map(|&x| x as f64).collect::<Vec<_>>(),
                &deltas.iter().map(|d| d.iter().map(|&x| x as f64).collect()).collect::<Vec<_>>(),
                lr as f64,
                mu as f64,
            );
            let err = theta.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs()).fold(0.0, f64::max);
            assert!(err < 1e-5, "lr {lr} μ {mu}: max error {err}");
        }
    }

    #[test]
    fn outer_lr_one_without_momentum_lands_on_the_average() {
        // θₑ − 1·(θₑ − θ) is θ up to one rounding of the subtraction.
        let anchor = vec![1.0f32, -2.0, 0.5, 3.25];
        let local = vec![0.9f32, -1.8, 0.5, 3.0];
        let d = pseudo_gradient(&anchor, &local);
        let (mut p, mut u) = (vec![0f32; 4], vec![0f32; 4]);
        outer_step(&mut p, &anchor, &d, &mut u, 1.0, 0.0);
        for (a, b) in p.iter().zip(&local) {
            assert!((a - b).abs() <= f32::EPSILON * b.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(DilocoSettings::default().check().is_ok());
        for bad in [
            DilocoSettings { inner_steps: 0, ..Default::default() },
            DilocoSettings { outer_momentum: 1.0, ..Default::default() },
            DilocoSettings { outer_lr: f64::NAN, ..Default::default() },
            DilocoSettings { inner_lr: -1.0, ..Default::default() },
            DilocoSettings { inner_seconds: f64::INFINITY, ..Default::default() },
            DilocoSettings { inner_seconds: -1.0, ..Default::default() },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
