//! The loss check of a DiLoCo contribution — the current subnet's, and
//! Templar's "Gauntlet": a contribution computed on the miner's own rows
//! lowers the loss on those rows more than on rows nobody was handed.
//!
//! Why it is needed beside the replay: with the sparse codec the
//! contribution is Δ plus the miner's private error feedback, cut to k
//! values a block, so the replay of its inner steps no longer ties the
//! vector the all-reduce carries to the work (docs/SECURITY.md). That
//! vector is small (its encoding is ~1% of fp16's), so the validator
//! fetches it, checks it is the committed one, and measures its effect.
//!
//! The losses are paired (the same batches before and after), so the
//! batches' own difficulty cancels and the gains are far less noisy than
//! the losses; the step is the one an outer step would take with this
//! contribution alone and no momentum (θₑ − outer lr · c).

use crate::data::loader::RowBatches;
use crate::engine::Engine;
use crate::model::{Gpt, ModelError};

/// Batches of each set the losses are measured on.
pub const BATCHES: usize = 4;

/// How much one contribution lowered the loss (positive: lowered), per
/// token, on the miner's own rows and on rows nobody was handed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Gains {
    pub own: f64,
    pub other: f64,
}

impl Gains {
    /// The rule: the own rows gain more than the others. (A contribution
    /// from other data, a copied one, or noise gains about as much on
    /// either set, or less on the own rows.)
    pub fn passes(&self) -> bool {
        self.own > self.other
    }
}

/// Up to `BATCHES` distinct batch indices below `n`, one drawn from each
/// of as many equal parts of `0..n` (the contribution carries every
/// step's batches): drawn by the validator after the answer, so a miner
/// cannot tune its contribution to the batches measured.
pub fn picks(n: usize, rng: &mut crate::rng::Rng) -> Vec<usize> {
    let m = BATCHES.min(n);
    (0..m)
        .map(|i| {
            let (lo, hi) = (i * n / m, (i + 1) * n / m);
            lo + rng.below((hi - lo) as u64) as usize
        })
        .collect()
}

fn mean_loss<E: Engine>(model: &mut Gpt<E>, batches: &RowBatches, picks: &[usize]) -> Result<f64, ModelError> {
    let (b, t) = batches.shape();
    let mut sum = 0.0;
    for &k in picks {
        let (x, y) = batches.batch(k);
        sum += model.forward(x, y, b, t)? as f64;
    }
    Ok(sum / picks.len().max(1) as f64)
}

/// The gains of stepping `model` (holding θₑ, which it holds again after)
/// by −`scale`·`step`, on batches `own_picks` of `own` and `other_picks` of
/// `other`.
pub fn gains<E: Engine>(
    model: &mut Gpt<E>,
    step: &[f32],
    scale: f32,
    (own, own_picks): (&RowBatches, &[usize]),
    (other, other_picks): (&RowBatches, &[usize]),
) -> Result<Gains, ModelError> {
    let anchor = model.read_params();
    let before = (mean_loss(model, own, own_picks)?, mean_loss(model, other, other_picks)?);
    let stepped: Vec<f32> = anchor.iter().zip(step).map(|(a, c)| a - scale * c).collect();
    model.write_params(&stepped);
    let after = (mean_loss(model, own, own_picks), mean_loss(model, other, other_picks));
    model.write_params(&anchor);
    Ok(Gains { own: before.0 - after.0?, other: before.1 - after.1? })
}

#[cfg(test)]
mod tests {
    #[test]
    fn picks_are_distinct_one_from_each_part() {
        let mut rng = crate::rng::Rng::new(3);
        for n in [0usize, 1, 3, 4, 7, 50] {
            for _ in 0..50 {
                let p = super::picks(n, &mut rng);
                assert_eq!(p.len(), super::BATCHES.min(n));
                assert!(p.windows(2).all(|w| w[0] < w[1]) && p.iter().all(|&k| k < n), "{n}: {p:?}");
                for (i, &k) in p.iter().enumerate() {
                    assert!(k >= i * n / p.len() && k < (i + 1) * n / p.len(), "{n}: {p:?}");
                }
            }
        }
    }
}
