//! A DiLoCo miner's inner steps: one AdamW step per batch, from the
//! weights the previous step left.
//!
//! Each batch's report is what the synchronous mode reports for it (Σ|∇L|
//! of the test tensor and, with a challenge, the projections of the whole
//! gradient), but of the gradient *at that step's weights*: the validator
//! replaying batch k from the same weights gets the same numbers
//! (`subnet::work::replay_batch`), since both compute one batch from
//! zeroed gradients with weight 1.

use super::snapshot::{Kept, Snapshot, SnapshotStore};
use crate::allreduce::projection::{Proj, Projector};
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

/// What a miner's inner steps report beyond the synchronous mode's
/// per-batch work: the commitments a validator checks a replay against.
#[derive(Debug, Default)]
pub struct InnerWork {
    pub work: BatchWork,
    /// Per step, the projections of the weights it left (with a projector).
    pub params_after: Vec<Proj>,
    /// The snapshots taken before steps 0, every, 2·every, …, by digest.
    pub snapshots: Vec<(String, Kept)>,
}

/// Trains batches `ks` of `batches`, one inner optimizer step each, and
/// reports every batch as `subnet::work::train_batches` does, plus where
/// each step left the weights; with `every` > 0, a [`Snapshot`] before
/// every `every`-th step (counted from `ks.start`) into `store`; with a `deadline`, no
/// step starts after it (the first always runs). Leaves the gradients
/// zeroed.
#[allow(clippy::too_many_arguments)]
pub fn train_inner<E: Engine>(
    model: &mut Gpt<E>,
    opt: &mut Optimizer<E>,
    batches: &RowBatches,
    ks: std::ops::Range<usize>,
    test: &ParamTensor,
    projector: Option<&Projector>,
    step: InnerStep,
    every: usize,
    store: &SnapshotStore,
    deadline: Option<std::time::Instant>,
    on_batch: &dyn Fn(),
) -> Result<InnerWork, WorkError> {
    let (b, t) = batches.shape();
    let n = ks.len();
    let mut out = InnerWork {
        work: BatchWork { sums: Vec::with_capacity(n), projections: Vec::with_capacity(n), loss_sum: 0.0 },
        params_after: Vec::with_capacity(n),
        snapshots: Vec::new(),
    };
    for k in ks.clone() {
        if k > ks.start && deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        if every > 0 && (k - ks.start).is_multiple_of(every) {
            let (m, v) = opt.read_state(model);
            let bytes = Snapshot { step: k as u64, opt_step: opt.step, params: model.read_params(), m, v }.to_bytes();
            out.snapshots.push(store.keep(bytes).map_err(|e| WorkError::Keep(e.to_string()))?);
        }
        model.zero_grads();
        let (inputs, targets) = batches.batch(k);
        out.work.loss_sum += model.forward_backward(inputs, targets, b, t, 1.0)? as f64;
        out.work.sums.push(abs_sum(&model.read_grad_range(test.offset, test.len)));
        if let Some(p) = projector {
            out.work.projections.push(model.grad_projection(p).0);
        }
        opt.clip_and_step(model, step.lr, step.max_grad_norm);
        if let Some(p) = projector {
            out.params_after.push(model.param_projection(p).0);
        }
        on_batch();
    }
    model.zero_grads();
    Ok(out)
}
