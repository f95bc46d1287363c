//! A DiLoCo miner's inner steps: one AdamW step per batch, from the
//! weights the previous step left.
//!
//! Each batch's report is what the synchronous mode reports for it (Σ|∇L|
//! of the test tensor and, with a challenge, the projections of the whole
//! gradient), but of the gradient *at that step's weights*: the validator
//! replaying batch k from the same weights gets the same numbers
//! (`subnet::work::replay_batch`), since both compute one batch from
//! zeroed gradients with weight 1.

use crate::allreduce::projection::Projector;
use crate::data::loader::RowBatches;
use crate::engine::Engine;
use crate::model::{Gpt, ParamTensor};
use crate::optim::Optimizer;
use crate::subnet::work::{BatchWork, WorkError, abs_sum};

/// The optimizer settings of the inner steps.
#[derive(Debug, Clone, Copy)]
pub struct InnerStep {
    pub lr: f32,
    /// Each batch's gradient is clipped to this global norm (the subnet: 1).
    pub max_grad_norm: f32,
}

/// Trains batches `ks` of `batches`, one inner optimizer step each, and
/// reports every batch as `subnet::work::train_batches` does. Leaves the
/// gradients zeroed.
#[allow(clippy::too_many_arguments)]
pub fn train_inner<E: Engine>(
    model: &mut Gpt<E>,
    opt: &mut Optimizer<E>,
    batches: &RowBatches,
    ks: std::ops::Range<usize>,
    test: &ParamTensor,
    projector: Option<&Projector>,
    step: InnerStep,
    on_batch: &dyn Fn(),
) -> Result<BatchWork, WorkError> {
    let (b, t) = batches.shape();
    let mut work = BatchWork { sums: Vec::with_capacity(ks.len()), projections: Vec::with_capacity(ks.len()), loss_sum: 0.0 };
    for k in ks {
        model.zero_grads();
        let (inputs, targets) = batches.batch(k);
        work.loss_sum += model.forward_backward(inputs, targets, b, t, 1.0)? as f64;
        work.sums.push(abs_sum(&model.read_grad_range(test.offset, test.len)));
        if let Some(p) = projector {
            work.projections.push(model.grad_projection(p).0);
        }
        opt.clip_and_step(model, step.lr, step.max_grad_norm);
        on_batch();
    }
    model.zero_grads();
    Ok(work)
}
