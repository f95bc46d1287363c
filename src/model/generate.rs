//! Text generation: one new position per step, the keys and values of
//! every earlier position kept in a cache, so a token costs one position's
//! forward pass (the call list of `forward_impl` for a single row, with
//! `attention_decode` in place of causal attention), not the whole
//! sequence's.
//!
//! The cache is an activation arena (bf16 on a GPU in bf16, like the
//! activations it is made from) laid out `[layer][position][k | v]`. The
//! prompt goes through the same step, a position at a time.

use super::{Gpt, ModelError};
use crate::engine::{ArenaKind, Engine, WeightLayout};
use crate::rng::Rng;

/// Keys and values of the positions generated so far, every layer.
pub struct KvCache<E: Engine> {
    kv: E::Arena,
    /// Positions filled.
    len: usize,
    /// Positions it holds at most (the model's context).
    max: usize,
}

impl<E: Engine> KvCache<E> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<E: Engine> Gpt<E> {
    /// An empty cache for up to the model's context of positions.
    pub fn kv_cache(&self) -> Result<KvCache<E>, ModelError> {
        let (max, c, l) = (self.config.max_seq_len, self.config.n_embd, self.config.n_layer);
        Ok(KvCache { kv: self.engine.alloc(ArenaKind::Acts, l * max * 2 * c)?, len: 0, max })
    }

    /// The logits (`vocab_size` of them) of the token after `token`, which
    /// takes the cache's next position; its keys and values join the cache.
    pub fn decode_step(&mut self, cache: &mut KvCache<E>, token: u32) -> Result<Vec<f32>, ModelError> {
        use WeightLayout::{InOut, OutIn};
        let cfg = self.config;
        let (c, nh, v, vp) = (cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.padded_vocab());
        if cache.len >= cache.max {
            return Err(ModelError::Batch(format!("the context is full ({} positions)", cache.max)));
        }
        if token as usize >= v {
            return Err(ModelError::Batch(format!("token {token} outside the vocabulary of {v}")));
        }
        self.ensure_acts(1, 1)?;
        let pos = cache.len;
        let e = &self.engine;
        let a = self.acts.as_mut().expect("allocated above");
        let (lay, pl) = (&a.lay, &self.layout);
        let p = |off: usize| e.at(&self.params, off);
        let x = |off: usize| e.at(&a.acts, off);
        let st = |off: usize| e.at(&a.stats, off);
        let kv = |l: usize, at: usize| e.at(&cache.kv, (l * cache.max + at) * 2 * c);
        let (ln, gelu) = (x(lay.ln), x(lay.gelu));
        let mut logits = vec![0f32; vp];
        // SAFETY: the views are disjoint regions of the parameters, the
        // (1, 1) activations and the cache, sized by their layouts; the
        // cache's layer block holds `max` positions and `pos < max`.
        unsafe {
            // The position embedding of `pos`: the table from its row on.
            e.encoder_forward(x(lay.encoded), &[token], p(pl.wte), p(pl.wpe + pos * c), 1, 1, c);
            for l in 0..cfg.n_layer {
                let (w, y) = (pl.layer(l, c), lay.layer(l));
                e.layernorm_forward(ln, st(y.ln1_mean), st(y.ln1_rstd), x(y.residual), p(w.ln1w), p(w.ln1b), 1, c);
                e.matmul_forward(x(y.qkv), ln, p(w.qkvw), InOut, Some(p(w.qkvb)), None, 1, c, 3 * c);
                e.copy(kv(l, pos), x(y.qkv + c), 2 * c);
                e.attention_decode(x(y.atty), x(y.qkv), kv(l, 0), pos + 1, c, nh);
                e.matmul_forward(x(y.res2), x(y.atty), p(w.attprojw), InOut, Some(p(w.attprojb)), Some(x(y.residual)), 1, c, c);
                e.layernorm_forward(ln, st(y.ln2_mean), st(y.ln2_rstd), x(y.res2), p(w.ln2w), p(w.ln2b), 1, c);
                e.matmul_forward(x(y.fch), ln, p(w.fcw), InOut, Some(p(w.fcb)), None, 1, c, 4 * c);
                e.gelu_forward(gelu, x(y.fch), 4 * c);
                e.matmul_forward(x(y.res3), gelu, p(w.fcprojw), InOut, Some(p(w.fcprojb)), Some(x(y.res2)), 1, 4 * c, c);
            }
            let last = x(lay.layer(cfg.n_layer - 1).res3);
            e.layernorm_forward(x(lay.lnf), st(lay.lnf_mean), st(lay.lnf_rstd), last, p(pl.lnfw), p(pl.lnfb), 1, c);
            e.matmul_forward(x(lay.logits), x(lay.lnf), p(pl.wte), OutIn, None, None, 1, c, vp);
            e.read(x(lay.logits), &mut logits);
        }
        cache.len += 1;
        logits.truncate(v);
        Ok(logits)
    }
}

/// How the next token is picked from the logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0: greedy (the most likely token, the lowest id on a tie).
    pub temperature: f32,
    /// Only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Only the most likely tokens whose probabilities add up to p (1: all).
    pub top_p: f32,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0 };

    /// The next token from `logits`, drawing with `rng` unless greedy.
    pub fn pick(&self, logits: &[f32], rng: &mut Rng) -> u32 {
        if self.temperature <= 0.0 {
            let best = logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b });
            return best.0 as u32;
        }
        // Candidates by falling logit (ties by id), cut to top-k.
        let mut order: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.top_k > 0 {
            order.truncate(self.top_k);
        }
        let Some(&first) = order.first() else { return 0 };
        let max = logits[first];
        let mut probs: Vec<f64> = order.iter().map(|&i| (((logits[i] - max) / self.temperature) as f64).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        // Top-p: the shortest head of the order holding p of the mass.
        if self.top_p < 1.0 {
            let (mut mass, mut keep) = (0.0, 0);
            while keep < probs.len() && (keep == 0 || mass < self.top_p as f64) {
                mass += probs[keep];
                keep += 1;
            }
            order.truncate(keep);
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let mut u = rng.uniform();
        for (&i, &p) in order.iter().zip(&probs) {
            if u < p {
                return i as u32;
            }
            u -= p;
        }
        *order.last().expect("at least one candidate") as u32
    }
}

/// Generates up to `max_new` tokens after `prompt` (at least one token),
/// stopping early at `stop` or when the context is full; `on_token` gets
/// each new token as it comes. Returns the new tokens.
pub fn generate<E: Engine>(
    model: &mut Gpt<E>,
    prompt: &[u32],
    max_new: usize,
    sampling: Sampling,
    seed: u64,
    stop: Option<u32>,
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, ModelError> {
    let (first, rest) = prompt.split_first().ok_or_else(|| ModelError::Batch("an empty prompt".into()))?;
    let mut cache = model.kv_cache()?;
    let mut rng = Rng::new(seed);
    let mut logits = model.decode_step(&mut cache, *first)?;
    for &t in rest {
        logits = model.decode_step(&mut cache, t)?;
    }
    let mut out = Vec::with_capacity(max_new);
    while out.len() < max_new {
        let next = sampling.pick(&logits, &mut rng);
        out.push(next);
        on_token(next);
        if Some(next) == stop || out.len() == max_new || cache.len() == cache.max {
            break;
        }
        logits = model.decode_step(&mut cache, next)?;
    }
    Ok(out)
}
