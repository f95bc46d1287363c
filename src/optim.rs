//! Optimizers over a model's parameter tensors: AdamW and LAMB, global-norm
//! clipping. The learning rate is an argument of every step because in the
//! network the validator decides it.

use crate::engine::{AdamHyper, ArenaKind, Engine, EngineError};
use crate::model::Gpt;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Lamb,
}

/// β₁, β₂, ε and weight decay; the learning rate comes per step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl OptimizerConfig {
    /// The subnet's settings: β 0.9/0.95, ε 1e-8, weight decay 0.1.
    pub fn new(kind: OptimizerKind) -> Self {
        OptimizerConfig { kind, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// Optimizer state: first and second moments laid out like the parameters.
pub struct Optimizer<E: Engine> {
    pub config: OptimizerConfig,
    pub m: E::Arena,
    pub v: E::Arena,
    /// Steps taken so far (bias correction uses `step + 1` for the next one).
    pub step: u64,
}

impl<E: Engine> Optimizer<E> {
    pub fn new(model: &Gpt<E>, config: OptimizerConfig) -> Result<Self, EngineError> {
        let state = || model.engine.alloc(ArenaKind::State, model.layout.total);
        Ok(Optimizer { config, m: state()?, v: state()?, step: 0 })
    }

    fn hyper(&self, lr: f32, decays: bool, grad_scale: f32) -> AdamHyper {
        let c = &self.config;
        AdamHyper { lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weight_decay: if decays { c.weight_decay } else { 0.0 }, grad_scale }
    }

    /// One update of every parameter tensor from the current gradients.
    ///
    /// LAMB follows You et al. (2019), Algorithm 2: Adam's bias-corrected
    /// direction plus decoupled decay, `u = m̂/(√v̂+ε) + λw`, scaled per tensor
    /// by the trust ratio ‖w‖/‖u‖ (1 where either norm is 0). The trust ratio
    /// applies to every tensor, biases and layernorm gains included.
    pub fn step(&mut self, model: &mut Gpt<E>, lr: f32) {
        self.step_scaled(model, lr, 1.0);
    }

    /// What a training step needs after accumulating micro-batches, in two
    /// passes over the gradients instead of four: the gradients hold
    /// `Σ wᵢ·∇Lᵢ`; their weighted mean is clipped to `max_norm` and applied
    /// on the fly, leaving the gradient arena as it was. Returns the norm of
    /// the mean gradient before clipping.
    pub fn clip_and_step(&mut self, model: &mut Gpt<E>, lr: f32, max_norm: f32) -> f32 {
        let w = model.grad_weight();
        let mean = if w > 0.0 { 1.0 / w } else { 1.0 };
        let norm = (model.grad_sum_squares().sqrt() * mean) as f32;
        self.step_scaled(model, lr, mean as f32 * clip_coef(norm, max_norm));
        norm
    }

    fn step_scaled(&mut self, model: &mut Gpt<E>, lr: f32, grad_scale: f32) {
        self.step += 1;
        let e = &model.engine;
        for t in &model.layout.tensors {
            let hp = self.hyper(lr, t.decays(), grad_scale);
            let (p, g, m, v) = (e.at(&model.params, t.offset), e.at(&model.grads, t.offset), e.at(&self.m, t.offset), e.at(&self.v, t.offset));
            // SAFETY: the four arenas share the parameter layout; `t` lies inside it.
            unsafe {
                match self.config.kind {
                    OptimizerKind::Adamw => e.adamw(p, g, m, v, t.len, &hp, self.step),
                    OptimizerKind::Lamb => {
                        let (w_sq, u_sq) = e.lamb_moments(p, g, m, v, t.len, &hp, self.step);
                        let trust = if w_sq > 0.0 && u_sq > 0.0 { (w_sq / u_sq).sqrt() } else { 1.0 };
                        e.lamb_apply(p, m, v, t.len, &hp, self.step, lr * trust as f32);
                    }
                }
            }
        }
    }

    /// (m, v) on the host, for checkpoints.
    pub fn read_state(&self, model: &Gpt<E>) -> (Vec<f32>, Vec<f32>) {
        let e = &model.engine;
        let mut m = vec![0f32; model.layout.total];
        let mut v = vec![0f32; model.layout.total];
        // SAFETY: both arenas hold `layout.total` floats.
        unsafe {
            e.read(e.at(&self.m, 0), &mut m);
            e.read(e.at(&self.v, 0), &mut v);
        }
        (m, v)
    }

    pub fn write_state(&mut self, model: &Gpt<E>, m: &[f32], v: &[f32], step: u64) {
        let e = &model.engine;
        assert!(m.len() == model.layout.total && v.len() == model.layout.total);
        // SAFETY: as in `read_state`.
        unsafe {
            e.write(e.at(&self.m, 0), m);
            e.write(e.at(&self.v, 0), v);
        }
        self.step = step;
    }
}

/// Global L2 norm of the gradients, as `torch.nn.utils.clip_grad_norm_`
/// computes it; scales them down to `max_norm` when above. Returns the norm
/// before clipping.
pub fn clip_grad_norm<E: Engine>(model: &mut Gpt<E>, max_norm: f32) -> f32 {
    let norm = model.grad_sum_squares().sqrt() as f32;
    let coef = clip_coef(norm, max_norm);
    if coef < 1.0 {
        let e = &model.engine;
        // SAFETY: the whole gradient arena.
        unsafe { e.scale(e.at(&model.grads, 0), model.layout.total, coef) }
    }
    norm
}

/// PyTorch's clipping factor: `max_norm / (norm + 1e-6)`, at most 1.
fn clip_coef(norm: f32, max_norm: f32) -> f32 {
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// Learning rate at `step` (0-based) of `total`: linear warm-up to `max` over
/// `warmup` steps, then cosine decay to `min` at the last step. (The
/// reference computed `(min + coeff)·(max − min)`; the intended formula is
/// `min + coeff·(max − min)`.)
pub fn lr_schedule(step: u64, warmup: u64, total: u64, max: f32, min: f32) -> f32 {
    if step < warmup {
        return max * (step + 1) as f32 / warmup as f32;
    }
    if total <= warmup + 1 {
        return max;
    }
    let progress = ((step - warmup) as f64 / (total - warmup - 1) as f64).min(1.0);
    let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    min + (coeff as f32) * (max - min)
}

#[cfg(test)]
mod tests {
    use super::lr_schedule;

    #[test]
    fn schedule_warms_up_then_decays_to_the_minimum() {
        let (max, min) = (6e-4, 6e-5);
        assert_eq!(lr_schedule(0, 10, 100, max, min), max / 10.0);
        assert_eq!(lr_schedule(9, 10, 100, max, min), max);
        assert_eq!(lr_schedule(10, 10, 100, max, min), max);
        assert!((lr_schedule(99, 10, 100, max, min) - min).abs() < 1e-12);
        // min + coeff·(max − min), not the reference's (min + coeff)·(max − min).
        let mid = lr_schedule(10 + 89 / 2, 10, 100, max, min) as f64;
        let coeff = 0.5 * (1.0 + (std::f64::consts::PI * (44.0 / 89.0)).cos());
        assert!((mid - (min as f64 + coeff * (max - min) as f64)).abs() < 1e-9);
        assert!(lr_schedule(1000, 10, 100, max, min) >= min);
    }
}
