//! GPT-2: configuration, arena layout, the forward and backward call lists,
//! and Hugging Face checkpoints.

pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod layout;

pub use config::GptConfig;
pub use layout::{ActLayout, LayerActs, LayerParams, ParamLayout, ParamTensor};

use crate::allreduce::codec::{Codec, CodecError};
use crate::engine::{ArenaKind, Engine, EngineError, WeightLayout};
use crate::rng::Rng;
use std::ops::Range;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("invalid batch: {0}")]
    Batch(String),
}

/// Activations for one batch shape, allocated on first use and kept while
/// the shape stays the same (no allocation inside a training step).
struct Activations<E: Engine> {
    lay: ActLayout,
    acts: E::Arena,
    dacts: E::Arena,
    stats: E::Arena,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    losses: Vec<f32>,
    /// The classifier's backward already ran (inside the forward pass):
    /// `backward` continues from the final layernorm.
    head_done: bool,
}

/// What the forward pass does with the output head.
enum Head<'a> {
    /// Only the loss.
    Loss,
    /// The loss, and the logits copied out.
    Logits(&'a mut Vec<f32>),
    /// The loss, and the head's backward with `∂loss/∂logits` scaled by this.
    Grad(f32),
}

/// A GPT-2 model on an engine: parameters, gradients and activations.
pub struct Gpt<E: Engine> {
    pub config: GptConfig,
    pub layout: ParamLayout,
    pub engine: E,
    pub params: E::Arena,
    pub grads: E::Arena,
    /// Sum of the weights of the micro-batches accumulated in `grads`.
    grad_weight: f64,
    acts: Option<Activations<E>>,
    /// Recompute the MLP pre-activation and attention output in backward.
    recompute: bool,
}

impl<E: Engine> Gpt<E> {
    /// A model with all parameters zero; load or [`Gpt::init_random`] next.
    pub fn new(engine: E, config: GptConfig) -> Result<Self, ModelError> {
        config.validate().map_err(ModelError::Config)?;
        let layout = ParamLayout::new(&config);
        let params = engine.alloc(ArenaKind::Params, layout.total)?;
        let grads = engine.alloc(ArenaKind::Grads, layout.total)?;
        Ok(Gpt { config, layout, engine, params, grads, grad_weight: 0.0, acts: None, recompute: false })
    }

    /// Trade time for memory: with `recompute`, backward recomputes the MLP
    /// pre-activation and the attention output instead of keeping them from
    /// the forward pass (see [`ActLayout`]). Gradients are the same.
    pub fn set_recompute(&mut self, recompute: bool) {
        if recompute != self.recompute {
            self.recompute = recompute;
            self.acts = None;
        }
    }

    pub fn num_params(&self) -> usize {
        self.config.num_params()
    }

    /// GPT-2's initialisation (as transformers does it): N(0, 0.02) for
    /// matrices and embeddings, 0.02/√(2L) for the projections that feed the
    /// residual stream, zero biases, unit layernorm gains.
    pub fn init_random(&mut self, seed: u64) {
        let mut host = vec![0f32; self.layout.total];
        let mut rng = Rng::new(seed);
        let resid_std = 0.02 / ((2 * self.config.n_layer) as f32).sqrt();
        for t in &self.layout.tensors {
            let dst = &mut host[t.offset..t.offset + t.numel()];
            if t.name.ends_with("ln_1.weight") || t.name.ends_with("ln_2.weight") || t.name.ends_with("ln_f.weight") {
                dst.fill(1.0);
            } else if t.decays() {
                let std = if t.name.ends_with("c_proj.weight") { resid_std } else { 0.02 };
                dst.iter_mut().for_each(|x| *x = rng.normal() * std);
            }
        }
        self.write_params(&host);
    }

    pub fn read_params(&self) -> Vec<f32> {
        read_arena(&self.engine, &self.params, self.layout.total)
    }

    pub fn write_params(&mut self, host: &[f32]) {
        assert_eq!(host.len(), self.layout.total);
        // SAFETY: the arena holds `layout.total` floats.
        unsafe { self.engine.write(self.engine.at(&self.params, 0), host) }
    }

    pub fn read_grads(&self) -> Vec<f32> {
        read_arena(&self.engine, &self.grads, self.layout.total)
    }

    /// `len` gradients from `offset` of the arena (one tensor's, say).
    pub fn read_grad_range(&self, offset: usize, len: usize) -> Vec<f32> {
        let mut host = vec![0f32; len];
        self.read_grad_range_into(offset, &mut host);
        host
    }

    /// `out.len()` gradients from `offset` into `out`.
    pub fn read_grad_range_into(&self, offset: usize, out: &mut [f32]) {
        assert!(offset + out.len() <= self.layout.total, "range inside the arena");
        // SAFETY: bounds checked above.
        unsafe { self.engine.read(self.engine.at(&self.grads, offset), out) };
    }

    /// Gradients `range` encoded with `codec` into `out` (on a GPU only the
    /// encoded bytes cross the bus).
    pub fn read_grads_encoded(&self, codec: Codec, range: Range<usize>, out: &mut [u8]) {
        assert!(range.end <= self.layout.total, "range inside the arena");
        // SAFETY: bounds checked above; `read_encoded` checks `out`'s length.
        unsafe { self.engine.read_encoded(codec, self.engine.at(&self.grads, range.start), range.len(), out) }
    }

    /// All gradients from `bytes` encoded with `codec` (checked first;
    /// nothing is written when they do not decode).
    pub fn write_grads_decoded(&mut self, codec: Codec, bytes: &[u8]) -> Result<(), CodecError> {
        // SAFETY: the whole arena; the length is checked against `bytes`.
        unsafe { self.engine.write_decoded(codec, bytes, self.layout.total, self.engine.at(&self.grads, 0)) }
    }

    /// The projections of the whole gradient arena on `p`'s vectors and
    /// Σ g², computed by the engine (on a GPU, without a copy to the host).
    pub fn grad_projection(&self, p: &crate::allreduce::projection::Projector) -> (crate::allreduce::projection::Proj, f64) {
        // SAFETY: the whole gradient arena.
        unsafe { self.engine.project(self.engine.at(&self.grads, 0), self.layout.total, 0, p) }
    }

    /// The projections of the weights on `p`'s vectors and their scale (a
    /// DiLoCo miner's commitment to where each inner step left them).
    pub fn param_projection(&self, p: &crate::allreduce::projection::Projector) -> (crate::allreduce::projection::Proj, f64) {
        // SAFETY: the whole parameter arena.
        unsafe { self.engine.project(self.engine.at(&self.params, 0), self.layout.total, 0, p) }
    }

    /// Σ g² over the gradients, in f64 (infinite or NaN when one is).
    pub fn grad_sum_squares(&self) -> f64 {
        // SAFETY: the whole gradient arena.
        unsafe { self.engine.sum_squares(self.engine.at(&self.grads, 0), self.layout.total) }
    }

    pub fn write_grads(&mut self, host: &[f32]) {
        assert_eq!(host.len(), self.layout.total);
        // SAFETY: as in `write_params`.
        unsafe { self.engine.write(self.engine.at(&self.grads, 0), host) }
    }

    pub fn zero_grads(&mut self) {
        // SAFETY: the whole gradient arena.
        unsafe { self.engine.fill(self.engine.at(&self.grads, 0), self.layout.total, 0.0) }
        self.grad_weight = 0.0;
    }

    /// Weight of the micro-batches accumulated since the last reset.
    pub fn grad_weight(&self) -> f64 {
        self.grad_weight
    }

    /// After the gradients were replaced by a sum over replicas: the weight
    /// of everything summed.
    pub fn set_grad_weight(&mut self, weight: f64) {
        self.grad_weight = weight;
    }

    /// Turns the accumulated `Σ wᵢ·∇Lᵢ` into the weighted mean gradient and
    /// returns the total weight (the sample count an all-reduce weighs by).
    pub fn finish_accumulation(&mut self) -> f64 {
        let w = self.grad_weight;
        if w > 0.0 && w != 1.0 {
            // SAFETY: the whole gradient arena.
            unsafe { self.engine.scale(self.engine.at(&self.grads, 0), self.layout.total, (1.0 / w) as f32) }
        }
        self.grad_weight = if w > 0.0 { 1.0 } else { 0.0 };
        w
    }

    fn check_batch(&self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<(), ModelError> {
        let cfg = &self.config;
        if b == 0 || t == 0 || t > cfg.max_seq_len {
            return Err(ModelError::Batch(format!("batch {b}×{t} (sequence length must be 1..={})", cfg.max_seq_len)));
        }
        if inputs.len() != b * t || targets.len() != b * t {
            return Err(ModelError::Batch(format!("{} inputs and {} targets for a {b}×{t} batch", inputs.len(), targets.len())));
        }
        if let Some(&bad) = inputs.iter().chain(targets).find(|&&x| x as usize >= cfg.vocab_size) {
            return Err(ModelError::Batch(format!("token id {bad} outside the vocabulary of {}", cfg.vocab_size)));
        }
        Ok(())
    }

    fn ensure_acts(&mut self, b: usize, t: usize) -> Result<(), ModelError> {
        if self.acts.as_ref().is_some_and(|a| a.lay.b == b && a.lay.t == t) {
            return Ok(());
        }
        self.acts = None; // free the old shape first
        let att_len = self.engine.attention_cache_len(b, t, self.config.n_head);
        let lay = ActLayout::new(&self.config, b, t, att_len, self.recompute);
        let acts = self.engine.alloc(ArenaKind::Acts, lay.total)?;
        let dacts = self.engine.alloc(ArenaKind::Acts, lay.grad_total)?;
        let stats = self.engine.alloc(ArenaKind::Stats, lay.stats_total)?;
        self.acts = Some(Activations {
            lay,
            acts,
            dacts,
            stats,
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
            losses: vec![0.0; b * t],
            head_done: false,
        });
        Ok(())
    }

    /// Mean cross-entropy of a `b × t` batch, without touching gradients.
    pub fn forward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f32, ModelError> {
        self.forward_impl(inputs, targets, b, t, Head::Loss)
    }

    /// Mean loss and the logits, `b·t` rows of `vocab_size`, copied to the host.
    pub fn forward_logits(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<(f32, Vec<f32>), ModelError> {
        let mut logits = Vec::with_capacity(b * t * self.config.vocab_size);
        let loss = self.forward_impl(inputs, targets, b, t, Head::Logits(&mut logits))?;
        Ok((loss, logits))
    }

    /// Forward and backward of one micro-batch: adds `weight · ∇(mean loss)`
    /// to the gradients (weight = its sample count when accumulating) and
    /// returns the mean loss.
    pub fn forward_backward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize, weight: f32) -> Result<f32, ModelError> {
        let loss = self.forward_impl(inputs, targets, b, t, Head::Grad(weight / (b * t) as f32))?;
        self.backward();
        self.grad_weight += weight as f64;
        Ok(loss)
    }

    /// The forward call list.
    ///
    /// The output head runs over chunks of `cls_rows` tokens so that the
    /// `tokens × 50,304` logits never exist at once: each chunk's logits are
    /// made, turned into the loss and (when training) into their gradient
    /// in place, and consumed right away by the head's two weight products.
    /// So with [`Head::Grad`] the classifier's backward happens here, leaving
    /// `∂loss/∂lnf` in `dbtc` for [`Gpt::backward`].
    fn forward_impl(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize, mut head: Head) -> Result<f32, ModelError> {
        use WeightLayout::InOut;
        use WeightLayout::OutIn;
        self.check_batch(inputs, targets, b, t)?;
        self.ensure_acts(b, t)?;
        let cfg = self.config;
        let (c, nh, v, vp) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.padded_vocab());
        let n = b * t;
        let e = &self.engine;
        let a = self.acts.as_mut().expect("allocated above");
        a.inputs.copy_from_slice(inputs);
        a.targets.copy_from_slice(targets);
        let (lay, pl) = (&a.lay, &self.layout);
        let p = |off: usize| e.at(&self.params, off);
        let g = |off: usize| e.at(&self.grads, off);
        let x = |off: usize| e.at(&a.acts, off);
        let d = |off: usize| e.at(&a.dacts, off);
        let st = |off: usize| e.at(&a.stats, off);
        let (ln, gelu) = (x(lay.ln), x(lay.gelu));
        let dscale = if let Head::Grad(s) = head { Some(s) } else { None };
        // SAFETY: every view below is a disjoint region of `self.params`,
        // `self.grads`, `a.acts`, `a.dacts` or `a.stats`, each sized by the layout the
        // offsets come from.
        unsafe {
            e.encoder_forward(x(lay.encoded), &a.inputs, p(pl.wte), p(pl.wpe), b, t, c);
            for l in 0..cfg.n_layer {
                let (w, y) = (pl.layer(l, c), lay.layer(l));
                e.layernorm_forward(ln, st(y.ln1_mean), st(y.ln1_rstd), x(y.residual), p(w.ln1w), p(w.ln1b), n, c);
                e.matmul_forward(x(y.qkv), ln, p(w.qkvw), InOut, Some(p(w.qkvb)), None, n, c, 3 * c);
                e.attention_forward(x(y.atty), st(y.att), x(y.qkv), b, t, c, nh);
                e.matmul_forward(x(y.res2), x(y.atty), p(w.attprojw), InOut, Some(p(w.attprojb)), Some(x(y.residual)), n, c, c);
                e.layernorm_forward(ln, st(y.ln2_mean), st(y.ln2_rstd), x(y.res2), p(w.ln2w), p(w.ln2b), n, c);
                e.matmul_forward(x(y.fch), ln, p(w.fcw), InOut, Some(p(w.fcb)), None, n, c, 4 * c);
                e.gelu_forward(gelu, x(y.fch), n * 4 * c);
                e.matmul_forward(x(y.res3), gelu, p(w.fcprojw), InOut, Some(p(w.fcprojb)), Some(x(y.res2)), n, 4 * c, c);
            }
            let last = x(lay.layer(cfg.n_layer - 1).res3);
            e.layernorm_forward(x(lay.lnf), st(lay.lnf_mean), st(lay.lnf_rstd), last, p(pl.lnfw), p(pl.lnfb), n, c);
            let logits = x(lay.logits);
            for r0 in (0..n).step_by(lay.cls_rows) {
                let (r, lnf) = (lay.cls_rows.min(n - r0), x(lay.lnf + r0 * c));
                e.matmul_forward(logits, lnf, p(pl.wte), OutIn, None, None, r, c, vp);
                if let Head::Logits(out) = &mut head {
                    let mut rows = vec![0f32; r * vp];
                    e.read(logits, &mut rows);
                    out.extend(rows.chunks(vp).flat_map(|row| &row[..v]));
                }
                e.crossentropy(st(lay.losses + r0), logits, &a.targets[r0..r0 + r], dscale, r, v, vp);
                if dscale.is_some() {
                    e.matmul_backward(d(lay.dbtc + r0 * c), g(pl.wte), None, logits, lnf, p(pl.wte), OutIn, r, c, vp);
                }
            }
            e.read(st(lay.losses), &mut a.losses);
        }
        a.head_done = dscale.is_some();
        let sum: f64 = a.losses.iter().map(|&l| l as f64).sum();
        Ok((sum / n as f64) as f32)
    }

    /// The backward call list, mirror image of the forward one. The
    /// layernorm and GELU outputs are recomputed into the shared scratch
    /// buffers right before the weight gradients that need them.
    fn backward(&mut self) {
        use WeightLayout::InOut;
        let cfg = self.config;
        let (c, nh) = (cfg.n_embd, cfg.n_head);
        let e = &self.engine;
        let a = self.acts.as_mut().expect("forward ran");
        assert!(a.head_done, "backward needs a forward with gradients");
        let (lay, pl) = (&a.lay, &self.layout);
        let (b, t) = (lay.b, lay.t);
        let n = b * t;
        let p = |off: usize| e.at(&self.params, off);
        let g = |off: usize| e.at(&self.grads, off);
        let x = |off: usize| e.at(&a.acts, off);
        let d = |off: usize| e.at(&a.dacts, off);
        let st = |off: usize| e.at(&a.stats, off);
        let (ln, gelu) = (x(lay.ln), x(lay.gelu));
        let (dres, dbtc, dqkv, dfch) = (d(lay.dres), d(lay.dbtc), d(lay.dqkv), d(lay.dfch));
        // SAFETY: as in the forward pass, plus `self.grads` and `a.dacts`.
        unsafe {
            e.fill(dres, n * c, 0.0);
            let last = x(lay.layer(cfg.n_layer - 1).res3);
            e.layernorm_backward(dres, g(pl.lnfw), g(pl.lnfb), dbtc, last, p(pl.lnfw), st(lay.lnf_mean), st(lay.lnf_rstd), n, c);
            for l in (0..cfg.n_layer).rev() {
                let (w, y) = (pl.layer(l, c), lay.layer(l));
                // With `recompute`, the shared fch/atty buffers still hold the
                // last layer's values from the forward pass.
                let recompute = lay.recompute && l + 1 != cfg.n_layer;
                // res3 = res2 + fc_proj(gelu(fc(ln2(res2)))); dres holds d(res3), which is also d(res2) so far.
                e.layernorm_forward(ln, st(y.ln2_mean), st(y.ln2_rstd), x(y.res2), p(w.ln2w), p(w.ln2b), n, c);
                if recompute {
                    e.matmul_forward(x(y.fch), ln, p(w.fcw), InOut, Some(p(w.fcb)), None, n, c, 4 * c);
                }
                e.gelu_forward(gelu, x(y.fch), n * 4 * c);
                e.matmul_backward(dfch, g(w.fcprojw), Some(g(w.fcprojb)), dres, gelu, p(w.fcprojw), InOut, n, 4 * c, c);
                e.gelu_backward(dfch, x(y.fch), dfch, n * 4 * c);
                e.matmul_backward(dbtc, g(w.fcw), Some(g(w.fcb)), dfch, ln, p(w.fcw), InOut, n, c, 4 * c);
                e.layernorm_backward(dres, g(w.ln2w), g(w.ln2b), dbtc, x(y.res2), p(w.ln2w), st(y.ln2_mean), st(y.ln2_rstd), n, c);
                // res2 = residual + attn_proj(attention(qkv(ln1(residual))))
                if recompute {
                    e.attention_forward(x(y.atty), st(y.att), x(y.qkv), b, t, c, nh);
                }
                e.matmul_backward(dbtc, g(w.attprojw), Some(g(w.attprojb)), dres, x(y.atty), p(w.attprojw), InOut, n, c, c);
                e.attention_backward(dqkv, dbtc, x(y.qkv), st(y.att), b, t, c, nh);
                e.layernorm_forward(ln, st(y.ln1_mean), st(y.ln1_rstd), x(y.residual), p(w.ln1w), p(w.ln1b), n, c);
                e.matmul_backward(dbtc, g(w.qkvw), Some(g(w.qkvb)), dqkv, ln, p(w.qkvw), InOut, n, c, 3 * c);
                e.layernorm_backward(dres, g(w.ln1w), g(w.ln1b), dbtc, x(y.residual), p(w.ln1w), st(y.ln1_mean), st(y.ln1_rstd), n, c);
            }
            e.encoder_backward(g(pl.wte), g(pl.wpe), dres, &a.inputs, b, t, c);
        }
        a.head_done = false;
    }
}

fn read_arena<E: Engine>(e: &E, arena: &E::Arena, len: usize) -> Vec<f32> {
    assert!(len <= e.arena_len(arena));
    let mut host = vec![0f32; len];
    // SAFETY: bounds checked above.
    unsafe { e.read(e.at(arena, 0), &mut host) };
    host
}
