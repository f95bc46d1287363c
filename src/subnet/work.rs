//! A miner's work for one `Train` query and the validator's replay of it.
//!
//! The miner runs forward and backward over every batch, accumulating
//! gradients without a weight update, and after each batch records
//! Σ|∇L| of the requested 1-D parameter *for that batch alone* (the change
//! its backward made, divided by the batch's weight): the same number the
//! validator gets by recomputing that one batch from zeroed gradients, and
//! what PyTorch's `loss.backward()` of the batch's mean loss would give.
//!
//! With a challenge (dtrain's validators send one) it also records, per
//! batch, the projections of that batch's *whole* gradient on the
//! challenge's vectors (`allreduce::projection`): computed as the change in
//! the accumulator's projections, so they sum (weighted) to the projections
//! of the mean gradient the miner later contributes to the all-reduce.

use crate::allreduce::projection::{Proj, Projector};
use crate::data::loader::RowBatches;
use crate::engine::Engine;
use crate::model::{Gpt, ModelError, ParamTensor};

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("gradient_test_index {index}: {why}")]
    TestIndex { index: usize, why: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A DiLoCo snapshot could not be kept (a full disk, say).
    #[error("keeping a snapshot: {0}")]
    Keep(String),
}

/// The parameter a `gradient_test_index` names: an index into the model's
/// parameters in transformers' `named_parameters()` order, which must be a
/// 1-D tensor (a bias or layernorm vector).
pub fn test_tensor<E: Engine>(model: &Gpt<E>, index: usize) -> Result<ParamTensor, WorkError> {
    let t = model
        .layout
        .tensors
        .get(index)
        .ok_or_else(|| WorkError::TestIndex { index, why: format!("the model has {} parameter tensors", model.layout.tensors.len()) })?;
    if t.shape.len() != 1 {
        return Err(WorkError::TestIndex { index, why: format!("{} is not a 1-D tensor", t.name) });
    }
    Ok(t.clone())
}

/// Indices of the 1-D parameter tensors (what a validator picks from).
pub fn test_indices<E: Engine>(model: &Gpt<E>) -> Vec<usize> {
    model.layout.tensors.iter().enumerate().filter(|(_, t)| t.shape.len() == 1).map(|(i, _)| i).collect()
}

pub(crate) fn abs_sum(x: &[f32]) -> f64 {
    x.iter().map(|&v| v.abs() as f64).sum()
}

/// What training on some batches reports, per batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchWork {
    /// Σ|∇L| of the test tensor.
    pub sums: Vec<f64>,
    /// Projections of the whole gradient (empty without a projector).
    pub projections: Vec<Proj>,
    /// Σ of the batches' mean losses.
    pub loss_sum: f64,
}

/// Trains on batches `ks` (gradients accumulate, weighted by the batch's
/// `b` sequences; no weight update) and reports each batch alone: Σ|∇L|
/// of `test` and, with `projector`, the projections of its gradient.
pub fn train_batches<E: Engine>(
    model: &mut Gpt<E>,
    batches: &RowBatches,
    ks: std::ops::Range<usize>,
    b: usize,
    t: usize,
    test: &ParamTensor,
    projector: Option<&Projector>,
) -> Result<BatchWork, WorkError> {
    train_batches_with(model, batches, ks, b, t, test, projector, &|| {})
}

/// [`train_batches`], calling `on_batch` after each batch (progress).
#[allow(clippy::too_many_arguments)]
pub fn train_batches_with<E: Engine>(
    model: &mut Gpt<E>,
    batches: &RowBatches,
    ks: std::ops::Range<usize>,
    b: usize,
    t: usize,
    test: &ParamTensor,
    projector: Option<&Projector>,
    on_batch: &(dyn Fn() + Sync),
) -> Result<BatchWork, WorkError> {
    let weight = b as f32;
    let n = ks.len();
    let mut work = BatchWork { sums: Vec::with_capacity(n), projections: Vec::with_capacity(n), loss_sum: 0.0 };
    let mut before = model.read_grad_range(test.offset, test.len);
    // The engine projects the accumulator where it lives (a GPU's never
    // crosses the bus for this).
    let mut proj_before = projector.map(|p| model.grad_projection(p).0);
    for k in ks {
        let (inputs, targets) = batches.batch(k);
        work.loss_sum += model.forward_backward(inputs, targets, b, t, weight)? as f64;
        let after = model.read_grad_range(test.offset, test.len);
        let delta: f64 = after.iter().zip(&before).map(|(&a, &p)| (a - p).abs() as f64).sum();
        work.sums.push(delta / weight as f64);
        before = after;
        if let (Some(p), Some(pb)) = (projector, proj_before.as_mut()) {
            let pa = model.grad_projection(p).0;
            work.projections.push(std::array::from_fn(|j| (pa[j] - pb[j]) / weight as f64));
            *pb = pa;
        }
        on_batch();
    }
    Ok(work)
}

/// The validator's replay of one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// Σ|∇L| of the test tensor.
    pub sum: f64,
    /// Projections of the batch's gradient and their scale, the norm over
    /// the sampled elements (with a projector).
    pub projection: Option<(Proj, f64)>,
}

/// The validator's replay of batch `k`: its gradient alone, from zeroed
/// gradients (a validator's model holds no accumulation of its own).
pub fn replay_batch<E: Engine>(
    model: &mut Gpt<E>,
    batches: &RowBatches,
    k: usize,
    b: usize,
    t: usize,
    test: &ParamTensor,
    projector: Option<&Projector>,
) -> Result<Replay, WorkError> {
    model.zero_grads();
    let (inputs, targets) = batches.batch(k);
    model.forward_backward(inputs, targets, b, t, 1.0)?;
    let sum = abs_sum(&model.read_grad_range(test.offset, test.len));
    let projection = projector.map(|p| {
        let (proj, sq) = model.grad_projection(p);
        (proj, sq.sqrt())
    });
    Ok(Replay { sum, projection })
}
