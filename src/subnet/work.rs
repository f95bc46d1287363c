//! A miner's work for one `Train` query and the validator's replay of it.
//!
//! The miner runs forward and backward over every batch, accumulating
//! gradients without a weight update, and after each batch records
//! Σ|∇L| of the requested 1-D parameter *for that batch alone* (the change
//! its backward made, divided by the batch's weight): the same number the
//! validator gets by recomputing that one batch from zeroed gradients, and
//! what PyTorch's `loss.backward()` of the batch's mean loss would give.

use crate::data::loader::RowBatches;
use crate::engine::Engine;
use crate::model::{Gpt, ModelError, ParamTensor};

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error("gradient_test_index {index}: {why}")]
    TestIndex { index: usize, why: String },
    #[error(transparent)]
    Model(#[from] ModelError),
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

fn abs_sum(x: &[f32]) -> f64 {
    x.iter().map(|&v| v.abs() as f64).sum()
}

/// Trains on batches `ks` (gradients accumulate, weighted by the batch's
/// `b` sequences; no weight update) and returns Σ|∇L| of `test` for each
/// batch alone, and the mean loss.
pub fn train_batches<E: Engine>(
    model: &mut Gpt<E>,
    batches: &RowBatches,
    ks: std::ops::Range<usize>,
    b: usize,
    t: usize,
    test: &ParamTensor,
) -> Result<(Vec<f64>, f64), WorkError> {
    let weight = b as f32;
    let n = ks.len();
    let (mut sums, mut loss) = (Vec::with_capacity(n), 0f64);
    let mut before = model.read_grad_range(test.offset, test.len);
    for k in ks {
        let (inputs, targets) = batches.batch(k);
        loss += model.forward_backward(inputs, targets, b, t, weight)? as f64;
        let after = model.read_grad_range(test.offset, test.len);
        let delta: f64 = after.iter().zip(&before).map(|(&a, &p)| (a - p).abs() as f64).sum();
        sums.push(delta / weight as f64);
        before = after;
    }
    Ok((sums, if n == 0 { 0.0 } else { loss / n as f64 }))
}

/// The validator's replay of batch `k`: Σ|∇L| of `test` for that batch
/// alone. Zeroes the model's gradients first (a validator's model holds no
/// accumulation of its own).
pub fn replay_batch<E: Engine>(model: &mut Gpt<E>, batches: &RowBatches, k: usize, b: usize, t: usize, test: &ParamTensor) -> Result<f64, WorkError> {
    model.zero_grads();
    let (inputs, targets) = batches.batch(k);
    model.forward_backward(inputs, targets, b, t, 1.0)?;
    Ok(abs_sum(&model.read_grad_range(test.offset, test.len)))
}
