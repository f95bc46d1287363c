//! GPT-2 hyper-parameters and the named presets.

use serde::{Deserialize, Serialize};

/// GPT-2's published vocabulary size (byte-level BPE, `<|endoftext|>` = 50256).
pub const GPT2_VOCAB: usize = 50_257;

/// Shape of a GPT-2 model. `vocab_size` is the real vocabulary; the arenas pad
/// it to [`GptConfig::padded_vocab`] so CPU and GPU engines share one layout
/// (the padding never appears in checkpoints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GptConfig {
    pub vocab_size: usize,
    pub max_seq_len: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
}

/// Names accepted by `--model`.
pub const PRESET_NAMES: &[&str] = &["tiny", "small", "124m", "350m", "774m", "1558m"];

impl GptConfig {
    /// A named preset. `tiny` is for tests (small vocabulary so that gradient
    /// checks are cheap); the others use GPT-2's vocabulary.
    pub fn preset(name: &str) -> Option<GptConfig> {
        let (vocab_size, max_seq_len, n_layer, n_head, n_embd) = match name {
            "tiny" => (300, 64, 2, 2, 32),
            "small" => (GPT2_VOCAB, 1024, 4, 4, 256),
            "124m" => (GPT2_VOCAB, 1024, 12, 12, 768),
            "350m" => (GPT2_VOCAB, 1024, 24, 16, 1024),
            "774m" => (GPT2_VOCAB, 1024, 36, 20, 1280),
            "1558m" => (GPT2_VOCAB, 1024, 48, 25, 1600),
            _ => return None,
        };
        Some(GptConfig { vocab_size, max_seq_len, n_layer, n_head, n_embd })
    }

    /// Vocabulary rounded up to a multiple of 128: GEMM-friendly on every engine.
    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.div_ceil(128) * 128
    }

    /// Checks the invariants the kernels rely on.
    pub fn validate(&self) -> Result<(), String> {
        let c = self;
        if c.vocab_size == 0 || c.max_seq_len == 0 || c.n_layer == 0 || c.n_head == 0 || c.n_embd == 0 {
            return Err(format!("every dimension must be positive: {c:?}"));
        }
        if !c.n_embd.is_multiple_of(c.n_head) {
            return Err(format!("n_embd {} is not a multiple of n_head {}", c.n_embd, c.n_head));
        }
        // Bounds keep arena sizes far from overflow on hostile config files.
        if c.vocab_size > 1 << 20 || c.max_seq_len > 1 << 16 || c.n_layer > 1024 || c.n_embd > 1 << 16 {
            return Err(format!("model dimensions out of range: {c:?}"));
        }
        Ok(())
    }

    /// Parameter count as transformers counts it (tied head counted once, no padding).
    pub fn num_params(&self) -> usize {
        let (v, t, l, c) = (self.vocab_size, self.max_seq_len, self.n_layer, self.n_embd);
        v * c + t * c + l * (12 * c * c + 13 * c) + 2 * c
    }

    /// Training FLOPs per token: 6N for the weight matmuls plus 12·L·C·T for
    /// the two attention matmuls (forward + backward over the full T×T score
    /// matrix): the nanoGPT/PaLM convention the PyTorch anchor script uses, so
    /// the two programs' FLOP/s compare directly.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        6.0 * self.num_params() as f64 + 12.0 * (self.n_layer * self.n_embd * seq_len) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parameter counts transformers reports for the published GPT-2 models.
    #[test]
    fn parameter_counts_match_the_published_models() {
        assert_eq!(GptConfig::preset("124m").unwrap().num_params(), 124_439_808);
        assert_eq!(GptConfig::preset("350m").unwrap().num_params(), 354_823_168);
        assert_eq!(GptConfig::preset("774m").unwrap().num_params(), 774_030_080);
        assert_eq!(GptConfig::preset("1558m").unwrap().num_params(), 1_557_611_200);
        assert_eq!(GptConfig::preset("124m").unwrap().padded_vocab(), 50_304);
    }
}
