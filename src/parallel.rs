//! Data parallelism inside one machine: a replica of the model on each
//! device, each running its share of a step's micro-batches on a thread of
//! its own; the replicas' gradients summed across devices (NCCL between
//! GPUs, [`HostSum`] elsewhere); then every replica takes the same
//! optimizer step from the same summed gradients, so they stay identical
//! and replica 0 stands for the model (checkpoints, metrics). Between
//! machines, the butterfly all-reduce averages what replica 0 holds.
//!
//! The result is single-device training on the same micro-batches up to
//! the order of additions: one device adds each micro-batch's products into
//! the gradient as it goes, replicas sum whole gradients ([`HostSum`] in
//! rank order, NCCL in its own — the same on every rank, so the replicas
//! never drift apart).

use crate::engine::Engine;
use crate::model::{Gpt, ModelError};
use crate::optim::Optimizer;
use std::ops::Range;

/// Sums gradients across replicas of one model.
pub trait Collective<E: Engine>: Send + Sync {
    fn name(&self) -> String;
    /// Replaces each replica's gradient arena by the sum over the replicas.
    fn sum_grads(&self, models: &mut [Gpt<E>]) -> Result<(), String>;
}

/// Through the host, adding in rank order: any engine (the CPU's, the
/// emulated device's), and the reference the NCCL path is checked against.
pub struct HostSum;

impl<E: Engine> Collective<E> for HostSum {
    fn name(&self) -> String {
        "host sum".into()
    }

    fn sum_grads(&self, models: &mut [Gpt<E>]) -> Result<(), String> {
        let Some((first, rest)) = models.split_first() else { return Ok(()) };
        let mut acc = first.read_grads();
        for m in rest {
            acc.iter_mut().zip(m.read_grads()).for_each(|(a, g)| *a += g);
        }
        models.iter_mut().for_each(|m| m.write_grads(&acc));
        Ok(())
    }
}

/// One model on several devices.
pub struct Replicas<E: Engine> {
    pub models: Vec<Gpt<E>>,
    pub opts: Vec<Optimizer<E>>,
    collective: Box<dyn Collective<E>>,
}

/// One micro-batch: inputs and targets of `b × t` tokens.
pub type MicroBatch = (Vec<u32>, Vec<u32>);

impl<E: Engine> Replicas<E> {
    /// Replicas that must start identical (the same weights and optimizer
    /// state); `collective` sums their gradients.
    pub fn new(models: Vec<Gpt<E>>, opts: Vec<Optimizer<E>>, collective: Box<dyn Collective<E>>) -> Replicas<E> {
        assert!(!models.is_empty() && models.len() == opts.len(), "one optimizer per replica, at least one replica");
        Replicas { models, opts, collective }
    }

    pub fn len(&self) -> usize {
        self.models.len()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// What sums the gradients, for logs.
    pub fn collective_name(&self) -> String {
        self.collective.name()
    }

    /// Runs `f` on each replica with its share of `0..n` — contiguous runs
    /// in replica order, as even as can be — in parallel; the results in
    /// replica order.
    pub fn map_shared<R: Send>(&mut self, n: usize, f: impl Fn(&mut Gpt<E>, Range<usize>) -> R + Sync) -> Vec<R> {
        let r = self.models.len();
        let share = |i: usize| n * i / r..n * (i + 1) / r;
        if r == 1 {
            return vec![f(&mut self.models[0], 0..n)];
        }
        let f = &f;
        std::thread::scope(|s| {
            let runs: Vec<_> = self.models.iter_mut().enumerate().map(|(i, model)| s.spawn(move || f(model, share(i)))).collect();
            runs.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        })
    }

    /// Replaces every replica's accumulated gradients, and their weight, by
    /// the sums over the replicas.
    pub fn sum_grads(&mut self) -> Result<(), String> {
        if self.models.len() > 1 {
            self.collective.sum_grads(&mut self.models)?;
            let total = self.models.iter().map(|m| m.grad_weight()).sum::<f64>();
            self.models.iter_mut().for_each(|m| m.set_grad_weight(total));
        }
        Ok(())
    }

    /// The replicas' accumulated gradients summed into replica 0 (with
    /// their total weight), the others' reset: what a miner hands to the
    /// all-reduce. Kept in one place only, so a round that fails and is
    /// followed by more training does not count them twice.
    pub fn sum_into_first(&mut self) -> Result<(), String> {
        self.sum_grads()?;
        self.models[1..].iter_mut().for_each(|m| m.zero_grads());
        Ok(())
    }

    /// One optimizer step over `batches` (a multiple of the replica count,
    /// dealt out in contiguous runs: replica r gets the r-th run), each
    /// weighted by its `b` sequences. Returns the mean loss and the
    /// gradient norm before clipping.
    pub fn step(&mut self, batches: &[MicroBatch], b: usize, t: usize, lr: f32, clip: f32) -> Result<(f32, f32), ModelError> {
        let r = self.models.len();
        if batches.is_empty() || !batches.len().is_multiple_of(r) {
            return Err(ModelError::Batch(format!("{} micro-batches cannot be shared evenly by {r} replicas", batches.len())));
        }
        let losses = self.map_shared(batches.len(), |model, run| {
            model.zero_grads();
            batches[run].iter().try_fold(0f64, |sum, (x, y)| Ok::<f64, ModelError>(sum + model.forward_backward(x, y, b, t, b as f32)? as f64))
        });
        let mut loss = 0f64;
        for l in losses {
            loss += l?;
        }
        self.sum_grads().map_err(|e| ModelError::Batch(format!("summing gradients across replicas: {e}")))?;
        let mut norm = 0f32;
        for (model, opt) in self.models.iter_mut().zip(&mut self.opts) {
            norm = opt.clip_and_step(model, lr, clip);
        }
        Ok(((loss / batches.len() as f64) as f32, norm))
    }
}
