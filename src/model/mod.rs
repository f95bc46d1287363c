//! GPT-2: configuration, arena layout, the forward and backward call lists,
//! and Hugging Face checkpoints.

pub mod checkpoint;
pub mod config;
pub mod layout;

pub use config::GptConfig;
pub use layout::{ActLayout, LayerActs, LayerParams, ParamLayout, ParamTensor};

use crate::engine::{Engine, EngineError, WeightLayout};
use crate::rng::Rng;

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
    inputs: Vec<u32>,
    targets: Vec<u32>,
    losses: Vec<f32>,
    /// The logits buffer holds dlogits, ready for `backward`.
    dlogits_ready: bool,
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
}

impl<E: Engine> Gpt<E> {
    /// A model with all parameters zero; load or [`Gpt::init_random`] next.
    pub fn new(engine: E, config: GptConfig) -> Result<Self, ModelError> {
        config.validate().map_err(ModelError::Config)?;
        let layout = ParamLayout::new(&config);
        let params = engine.alloc(layout.total)?;
        let grads = engine.alloc(layout.total)?;
        Ok(Gpt { config, layout, engine, params, grads, grad_weight: 0.0, acts: None })
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

    /// Σ|g| of one parameter tensor's gradient.
    pub fn grad_sum_abs(&self, t: &ParamTensor) -> f64 {
        // SAFETY: the tensor lies inside the gradient arena.
        unsafe { self.engine.sum_abs(self.engine.at(&self.grads, t.offset), t.numel()) }
    }

    /// Weight of the micro-batches accumulated since the last reset.
    pub fn grad_weight(&self) -> f64 {
        self.grad_weight
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
        let lay = ActLayout::new(&self.config, b, t, att_len);
        let acts = self.engine.alloc(lay.total)?;
        let dacts = self.engine.alloc(lay.grad_total)?;
        self.acts =
            Some(Activations { lay, acts, dacts, inputs: vec![0; b * t], targets: vec![0; b * t], losses: vec![0.0; b * t], dlogits_ready: false });
        Ok(())
    }

    /// Mean cross-entropy of a `b × t` batch, without touching gradients.
    pub fn forward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> Result<f32, ModelError> {
        self.forward_impl(inputs, targets, b, t, None)
    }

    /// Forward and backward of one micro-batch: adds `weight · ∇(mean loss)`
    /// to the gradients (weight = its sample count when accumulating) and
    /// returns the mean loss.
    pub fn forward_backward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize, weight: f32) -> Result<f32, ModelError> {
        let loss = self.forward_impl(inputs, targets, b, t, Some(weight / (b * t) as f32))?;
        self.backward();
        self.grad_weight += weight as f64;
        Ok(loss)
    }

    /// Logits of the last [`Gpt::forward`] call, `b·t` rows of `vocab_size`.
    pub fn logits(&self) -> Option<Vec<f32>> {
        let a = self.acts.as_ref()?;
        if a.dlogits_ready {
            return None;
        }
        let (n, v, vp) = (a.lay.b * a.lay.t, self.config.vocab_size, self.config.padded_vocab());
        let all = read_arena_at(&self.engine, &a.acts, a.lay.logits, n * vp);
        Some(all.chunks(vp).flat_map(|r| r[..v].iter().copied()).collect())
    }

    /// The forward call list. With `dscale`, the fused classifier leaves
    /// `dscale · ∂loss/∂logits` in the logits buffer for [`Gpt::backward`].
    fn forward_impl(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize, dscale: Option<f32>) -> Result<f32, ModelError> {
        use WeightLayout::InOut;
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
        let x = |off: usize| e.at(&a.acts, off);
        let (ln, gelu) = (x(lay.ln), x(lay.gelu));
        // SAFETY: every view below is a disjoint region of `self.params` or
        // `a.acts`, both sized by the layouts the offsets come from.
        unsafe {
            e.encoder_forward(x(lay.encoded), &a.inputs, p(pl.wte), p(pl.wpe), b, t, c);
            for l in 0..cfg.n_layer {
                let (w, y) = (pl.layer(l, c), lay.layer(l));
                e.layernorm_forward(ln, x(y.ln1_mean), x(y.ln1_rstd), x(y.residual), p(w.ln1w), p(w.ln1b), n, c);
                e.matmul_forward(x(y.qkv), ln, p(w.qkvw), InOut, Some(p(w.qkvb)), None, n, c, 3 * c);
                e.attention_forward(x(y.atty), x(y.att), x(y.qkv), b, t, c, nh);
                e.matmul_forward(x(y.res2), x(y.atty), p(w.attprojw), InOut, Some(p(w.attprojb)), Some(x(y.residual)), n, c, c);
                e.layernorm_forward(ln, x(y.ln2_mean), x(y.ln2_rstd), x(y.res2), p(w.ln2w), p(w.ln2b), n, c);
                e.matmul_forward(x(y.fch), ln, p(w.fcw), InOut, Some(p(w.fcb)), None, n, c, 4 * c);
                e.gelu_forward(gelu, x(y.fch), n * 4 * c);
                e.matmul_forward(x(y.res3), gelu, p(w.fcprojw), InOut, Some(p(w.fcprojb)), Some(x(y.res2)), n, 4 * c, c);
            }
            let last = x(lay.layer(cfg.n_layer - 1).res3);
            e.layernorm_forward(x(lay.lnf), x(lay.lnf_mean), x(lay.lnf_rstd), last, p(pl.lnfw), p(pl.lnfb), n, c);
            e.matmul_forward(x(lay.logits), x(lay.lnf), p(pl.wte), WeightLayout::OutIn, None, None, n, c, vp);
            e.crossentropy(x(lay.losses), x(lay.logits), &a.targets, dscale, n, v, vp);
            e.read(x(lay.losses), &mut a.losses);
        }
        a.dlogits_ready = dscale.is_some();
        let sum: f64 = a.losses.iter().map(|&l| l as f64).sum();
        Ok((sum / n as f64) as f32)
    }

    /// The backward call list, mirror image of the forward one. The
    /// layernorm and GELU outputs are recomputed into the shared scratch
    /// buffers right before the weight gradients that need them.
    fn backward(&mut self) {
        use WeightLayout::InOut;
        let cfg = self.config;
        let (c, nh, vp) = (cfg.n_embd, cfg.n_head, cfg.padded_vocab());
        let e = &self.engine;
        let a = self.acts.as_mut().expect("forward ran");
        assert!(a.dlogits_ready, "backward needs a forward with gradients");
        let (lay, pl) = (&a.lay, &self.layout);
        let (b, t) = (lay.b, lay.t);
        let n = b * t;
        let p = |off: usize| e.at(&self.params, off);
        let g = |off: usize| e.at(&self.grads, off);
        let x = |off: usize| e.at(&a.acts, off);
        let d = |off: usize| e.at(&a.dacts, off);
        let (ln, gelu) = (x(lay.ln), x(lay.gelu));
        let (dres, dbtc, dqkv, dfch) = (d(lay.dres), d(lay.dbtc), d(lay.dqkv), d(lay.dfch));
        // SAFETY: as in the forward pass, plus `self.grads` and `a.dacts`.
        unsafe {
            e.fill(dres, n * c, 0.0);
            e.matmul_backward(dbtc, g(pl.wte), None, x(lay.logits), x(lay.lnf), p(pl.wte), WeightLayout::OutIn, n, c, vp);
            let last = x(lay.layer(cfg.n_layer - 1).res3);
            e.layernorm_backward(dres, g(pl.lnfw), g(pl.lnfb), dbtc, last, p(pl.lnfw), x(lay.lnf_mean), x(lay.lnf_rstd), n, c);
            for l in (0..cfg.n_layer).rev() {
                let (w, y) = (pl.layer(l, c), lay.layer(l));
                // res3 = res2 + fc_proj(gelu(fc(ln2(res2)))); dres holds d(res3), which is also d(res2) so far.
                e.gelu_forward(gelu, x(y.fch), n * 4 * c);
                e.matmul_backward(dfch, g(w.fcprojw), Some(g(w.fcprojb)), dres, gelu, p(w.fcprojw), InOut, n, 4 * c, c);
                e.gelu_backward(dfch, x(y.fch), dfch, n * 4 * c);
                e.layernorm_forward(ln, x(y.ln2_mean), x(y.ln2_rstd), x(y.res2), p(w.ln2w), p(w.ln2b), n, c);
                e.matmul_backward(dbtc, g(w.fcw), Some(g(w.fcb)), dfch, ln, p(w.fcw), InOut, n, c, 4 * c);
                e.layernorm_backward(dres, g(w.ln2w), g(w.ln2b), dbtc, x(y.res2), p(w.ln2w), x(y.ln2_mean), x(y.ln2_rstd), n, c);
                // res2 = residual + attn_proj(attention(qkv(ln1(residual))))
                e.matmul_backward(dbtc, g(w.attprojw), Some(g(w.attprojb)), dres, x(y.atty), p(w.attprojw), InOut, n, c, c);
                e.attention_backward(dqkv, dbtc, x(y.qkv), x(y.att), b, t, c, nh);
                e.layernorm_forward(ln, x(y.ln1_mean), x(y.ln1_rstd), x(y.residual), p(w.ln1w), p(w.ln1b), n, c);
                e.matmul_backward(dbtc, g(w.qkvw), Some(g(w.qkvb)), dqkv, ln, p(w.qkvw), InOut, n, c, 3 * c);
                e.layernorm_backward(dres, g(w.ln1w), g(w.ln1b), dbtc, x(y.residual), p(w.ln1w), x(y.ln1_mean), x(y.ln1_rstd), n, c);
            }
            e.encoder_backward(g(pl.wte), g(pl.wpe), dres, &a.inputs, b, t, c);
        }
        a.dlogits_ready = false;
    }
}

fn read_arena<E: Engine>(e: &E, arena: &E::Arena, len: usize) -> Vec<f32> {
    read_arena_at(e, arena, 0, len)
}

fn read_arena_at<E: Engine>(e: &E, arena: &E::Arena, offset: usize, len: usize) -> Vec<f32> {
    assert!(offset + len <= e.arena_len(arena));
    let mut host = vec![0f32; len];
    // SAFETY: bounds checked above.
    unsafe { e.read(e.at(arena, offset), &mut host) };
    host
}
