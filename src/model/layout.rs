//! Where every tensor lives inside the parameter and activation arenas.
//!
//! Parameters are grouped by kind across layers (all `ln_1.weight`s, then all
//! `c_attn.weight`s, …), llm.c's order, so each kind is one contiguous block
//! for the GPU engine. Weight matrices are stored `(in, out)`, the layout of
//! GPT-2's Conv1D in Hugging Face checkpoints, so loading and saving are
//! plain copies. The gradient arena has the same layout: it is the flat
//! vector the all-reduce averages.

use super::config::GptConfig;

/// One Hugging Face tensor and its place in the parameter arena.
#[derive(Debug, Clone)]
pub struct ParamTensor {
    /// transformers' name, e.g. `transformer.h.3.attn.c_attn.weight`.
    pub name: String,
    pub offset: usize,
    /// Floats the tensor spans in the arena (the token embedding includes the
    /// zero padding rows; the optimizer updates them, and they stay zero).
    pub len: usize,
    /// Shape in checkpoints (never padded).
    pub shape: Vec<usize>,
}

impl ParamTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Weight decay applies to matrices and embeddings, not to biases and
    /// layernorm parameters.
    pub fn decays(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// Offsets of each parameter kind; per-layer tensors are `base + l·size`.
#[derive(Debug, Clone)]
pub struct ParamLayout {
    pub wte: usize,
    pub wpe: usize,
    pub ln1w: usize,
    pub ln1b: usize,
    pub qkvw: usize,
    pub qkvb: usize,
    pub attprojw: usize,
    pub attprojb: usize,
    pub ln2w: usize,
    pub ln2b: usize,
    pub fcw: usize,
    pub fcb: usize,
    pub fcprojw: usize,
    pub fcprojb: usize,
    pub lnfw: usize,
    pub lnfb: usize,
    pub total: usize,
    pub tensors: Vec<ParamTensor>,
}

/// A bump allocator over an arena.
struct Bump(usize);
impl Bump {
    fn take(&mut self, n: usize) -> usize {
        let o = self.0;
        self.0 += n;
        o
    }
}

impl ParamLayout {
    pub fn new(cfg: &GptConfig) -> ParamLayout {
        let (vp, t, l, c) = (cfg.padded_vocab(), cfg.max_seq_len, cfg.n_layer, cfg.n_embd);
        let mut a = Bump(0);
        let mut p = ParamLayout {
            wte: a.take(vp * c),
            wpe: a.take(t * c),
            ln1w: a.take(l * c),
            ln1b: a.take(l * c),
            qkvw: a.take(l * c * 3 * c),
            qkvb: a.take(l * 3 * c),
            attprojw: a.take(l * c * c),
            attprojb: a.take(l * c),
            ln2w: a.take(l * c),
            ln2b: a.take(l * c),
            fcw: a.take(l * c * 4 * c),
            fcb: a.take(l * 4 * c),
            fcprojw: a.take(l * 4 * c * c),
            fcprojb: a.take(l * c),
            lnfw: a.take(c),
            lnfb: a.take(c),
            total: 0,
            tensors: Vec::new(),
        };
        p.total = a.0;
        let mut ts = vec![
            ParamTensor { name: "transformer.wte.weight".into(), offset: p.wte, len: vp * c, shape: vec![cfg.vocab_size, c] },
            ParamTensor { name: "transformer.wpe.weight".into(), offset: p.wpe, len: t * c, shape: vec![t, c] },
        ];
        // Offsets come from `layer()`, the same function the forward and
        // backward call lists use, so checkpoints and kernels cannot disagree.
        for layer in 0..l {
            let w = p.layer(layer, c);
            let per_layer: [(&str, usize, Vec<usize>); 12] = [
                ("ln_1.weight", w.ln1w, vec![c]),
                ("ln_1.bias", w.ln1b, vec![c]),
                ("attn.c_attn.weight", w.qkvw, vec![c, 3 * c]),
                ("attn.c_attn.bias", w.qkvb, vec![3 * c]),
                ("attn.c_proj.weight", w.attprojw, vec![c, c]),
                ("attn.c_proj.bias", w.attprojb, vec![c]),
                ("ln_2.weight", w.ln2w, vec![c]),
                ("ln_2.bias", w.ln2b, vec![c]),
                ("mlp.c_fc.weight", w.fcw, vec![c, 4 * c]),
                ("mlp.c_fc.bias", w.fcb, vec![4 * c]),
                ("mlp.c_proj.weight", w.fcprojw, vec![4 * c, c]),
                ("mlp.c_proj.bias", w.fcprojb, vec![c]),
            ];
            for (suffix, offset, shape) in per_layer {
                let len = shape.iter().product();
                ts.push(ParamTensor { name: format!("transformer.h.{layer}.{suffix}"), offset, len, shape });
            }
        }
        ts.push(ParamTensor { name: "transformer.ln_f.weight".into(), offset: p.lnfw, len: c, shape: vec![c] });
        ts.push(ParamTensor { name: "transformer.ln_f.bias".into(), offset: p.lnfb, len: c, shape: vec![c] });
        p.tensors = ts;
        p
    }

    pub fn tensor(&self, name: &str) -> Option<&ParamTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Offsets of one layer's parameters (in the parameter and gradient arenas).
#[derive(Debug, Clone, Copy)]
pub struct LayerParams {
    pub ln1w: usize,
    pub ln1b: usize,
    pub qkvw: usize,
    pub qkvb: usize,
    pub attprojw: usize,
    pub attprojb: usize,
    pub ln2w: usize,
    pub ln2b: usize,
    pub fcw: usize,
    pub fcb: usize,
    pub fcprojw: usize,
    pub fcprojb: usize,
}

impl ParamLayout {
    pub fn layer(&self, l: usize, c: usize) -> LayerParams {
        LayerParams {
            ln1w: self.ln1w + l * c,
            ln1b: self.ln1b + l * c,
            qkvw: self.qkvw + l * 3 * c * c,
            qkvb: self.qkvb + l * 3 * c,
            attprojw: self.attprojw + l * c * c,
            attprojb: self.attprojb + l * c,
            ln2w: self.ln2w + l * c,
            ln2b: self.ln2b + l * c,
            fcw: self.fcw + l * 4 * c * c,
            fcb: self.fcb + l * 4 * c,
            fcprojw: self.fcprojw + l * 4 * c * c,
            fcprojb: self.fcprojb + l * c,
        }
    }
}

/// Offsets into the activation arenas for a batch of `b × t` tokens: the
/// activations, their gradients, and the statistics (layernorm means and
/// inverse deviations, the attention cache, the losses), which stay fp32
/// when an engine stores activations in bf16.
///
/// Kept per layer: what backward cannot cheaply recompute (the residual
/// stream, `qkv`, the attention output and cache, the MLP pre-activation,
/// layernorm statistics). Recomputed in backward into buffers shared by all
/// layers: the layernorm outputs (`ln`) and the GELU output (`gelu`) — one
/// extra element-wise pass each, for a third less activation memory.
///
/// With `recompute`, the MLP pre-activation and the attention output are
/// not kept either: backward recomputes them (one more `C×4C` product and
/// one more attention forward per layer, about a tenth more time) for
/// another 40% less activation memory.
#[derive(Debug, Clone)]
pub struct ActLayout {
    pub b: usize,
    pub t: usize,
    c: usize,
    pub encoded: usize,
    ln1_mean: usize,
    ln1_rstd: usize,
    qkv: usize,
    atty: usize,
    /// Per-layer stride of `atty` and `fch` (0 when recomputed: one shared buffer).
    atty_stride: usize,
    fch_stride: usize,
    /// Backward must recompute `atty` and `fch`.
    pub recompute: bool,
    att: usize,
    pub att_len: usize,
    res2: usize,
    ln2_mean: usize,
    ln2_rstd: usize,
    fch: usize,
    res3: usize,
    /// Shared scratch: a layernorm output (`n × c`).
    pub ln: usize,
    /// Shared scratch: a GELU output (`n × 4c`).
    pub gelu: usize,
    pub lnf: usize,
    pub lnf_mean: usize,
    pub lnf_rstd: usize,
    /// Logits of one chunk of `cls_rows` tokens.
    pub logits: usize,
    pub cls_rows: usize,
    pub losses: usize,
    pub total: usize,
    /// Floats of the statistics arena.
    pub stats_total: usize,
    // Gradient buffers, in a second arena, reused by every layer.
    pub dres: usize,
    pub dbtc: usize,
    pub dqkv: usize,
    pub dfch: usize,
    pub grad_total: usize,
}

/// Offsets of one layer's activations (`*_mean`, `*_rstd` and `att` in the
/// statistics arena).
#[derive(Debug, Clone, Copy)]
pub struct LayerActs {
    /// The layer's input: the embeddings or the previous layer's `res3`.
    pub residual: usize,
    pub ln1_mean: usize,
    pub ln1_rstd: usize,
    pub qkv: usize,
    pub atty: usize,
    pub att: usize,
    pub res2: usize,
    pub ln2_mean: usize,
    pub ln2_rstd: usize,
    pub fch: usize,
    pub res3: usize,
}

impl ActLayout {
    /// `att_len`: the engine's per-layer attention cache size for this batch.
    pub fn new(cfg: &GptConfig, b: usize, t: usize, att_len: usize, recompute: bool) -> ActLayout {
        let (l, c, vp) = (cfg.n_layer, cfg.n_embd, cfg.padded_vocab());
        let n = b * t;
        // 512 rows keep the head's three products within a few percent of
        // the GEMM peak (k = 512 for the weight gradient) at 100 MB of logits.
        let cls_rows = n.min(if recompute { 256 } else { 512 });
        let (atty_stride, fch_stride) = if recompute { (0, 0) } else { (n * c, n * 4 * c) };
        let kept = |per_layer: usize| if recompute { per_layer } else { l * per_layer };
        let mut a = Bump(0);
        let mut g = Bump(0);
        let mut st = Bump(0);
        let mut s = ActLayout {
            b,
            t,
            c,
            encoded: a.take(n * c),
            ln1_mean: st.take(l * n),
            ln1_rstd: st.take(l * n),
            qkv: a.take(l * n * 3 * c),
            atty: a.take(kept(n * c)),
            atty_stride,
            fch_stride,
            recompute,
            att: st.take(l * att_len),
            att_len,
            res2: a.take(l * n * c),
            ln2_mean: st.take(l * n),
            ln2_rstd: st.take(l * n),
            fch: a.take(kept(n * 4 * c)),
            res3: a.take(l * n * c),
            ln: a.take(n * c),
            gelu: a.take(n * 4 * c),
            lnf: a.take(n * c),
            lnf_mean: st.take(n),
            lnf_rstd: st.take(n),
            logits: a.take(cls_rows * vp),
            cls_rows,
            losses: st.take(n),
            total: 0,
            stats_total: 0,
            dres: g.take(n * c),
            dbtc: g.take(n * c),
            dqkv: g.take(n * 3 * c),
            dfch: g.take(n * 4 * c),
            grad_total: 0,
        };
        s.total = a.0;
        s.grad_total = g.0;
        s.stats_total = st.0;
        s
    }

    pub fn layer(&self, l: usize) -> LayerActs {
        let (n, c) = (self.b * self.t, self.c);
        LayerActs {
            residual: if l == 0 { self.encoded } else { self.res3 + (l - 1) * n * c },
            ln1_mean: self.ln1_mean + l * n,
            ln1_rstd: self.ln1_rstd + l * n,
            qkv: self.qkv + l * n * 3 * c,
            atty: self.atty + l * self.atty_stride,
            att: self.att + l * self.att_len,
            res2: self.res2 + l * n * c,
            ln2_mean: self.ln2_mean + l * n,
            ln2_rstd: self.ln2_rstd + l * n,
            fch: self.fch + l * self.fch_stride,
            res3: self.res3 + l * n * c,
        }
    }
}
