//! GPT-2's byte-level BPE (50,257 tokens; `<|endoftext|>` = 50256), built
//! with the `tokenizers` crate from the official vocabulary compiled into
//! the binary (`assets/gpt2/`), so nothing is downloaded at run time.
//!
//! It behaves like the Hugging Face tokenizer of `gpt2`/`distilgpt2` that
//! the reference network used: `<|endoftext|>` written in a text is the
//! special token, not five pieces of punctuation.

use rayon::prelude::*;
use std::sync::OnceLock;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// `<|endoftext|>`, GPT-2's document separator.
pub const EOT: u32 = 50_256;
pub const VOCAB_SIZE: usize = 50_257;

const ENCODER_JSON: &str = include_str!("../../assets/gpt2/encoder.json");
const MERGES: &str = include_str!("../../assets/gpt2/vocab.bpe");

/// Texts longer than this are cut (at safe points) and encoded in parallel.
const PIECE_BYTES: usize = 64 << 10;

pub struct Gpt2Tokenizer {
    inner: Tokenizer,
}

/// The process-wide tokenizer (built on first use, about 100 ms).
pub fn gpt2() -> &'static Gpt2Tokenizer {
    static TOKENIZER: OnceLock<Gpt2Tokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| Gpt2Tokenizer::build().expect("the embedded GPT-2 vocabulary is valid"))
}

impl Gpt2Tokenizer {
    fn build() -> Result<Gpt2Tokenizer, String> {
        let vocab: std::collections::HashMap<String, u32> = serde_json::from_str(ENCODER_JSON).map_err(|e| e.to_string())?;
        let vocab: Vocab = vocab.into_iter().collect();
        let merges = MERGES
            .lines()
            .skip(1) // "#version: 0.2"
            .filter(|l| !l.is_empty())
            .map(|l| l.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| format!("bad merge line {l:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| e.to_string())?;
        let mut inner = Tokenizer::new(bpe);
        // GPT-2: no prefix space, the GPT-2 split regex, bytes mapped to printable characters.
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.add_special_tokens([AddedToken::from("<|endoftext|>", true)]).map_err(|e| e.to_string())?;
        Ok(Gpt2Tokenizer { inner })
    }

    /// Token ids of one text. Long texts are cut where GPT-2's pre-tokenizer
    /// splits anyway (after a newline that a non-space follows) and encoded
    /// in parallel, with the same result as one piece.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        if text.len() <= PIECE_BYTES {
            return self.encode_piece(text);
        }
        let pieces: Vec<Vec<u32>> = split_pieces(text, PIECE_BYTES).par_iter().map(|p| self.encode_piece(p)).collect();
        pieces.concat()
    }

    /// Token ids of many texts, in parallel.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    fn encode_piece(&self, text: &str) -> Vec<u32> {
        match self.inner.encode_fast(text, false) {
            Ok(e) => e.get_ids().to_vec(),
            // The byte-level BPE covers every byte, so this cannot happen on a
            // valid `&str`; an empty result is the safe answer if it ever did.
            Err(_) => Vec::new(),
        }
    }

    /// Text of token ids; ids outside the vocabulary are skipped and byte
    /// sequences that are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let ids: Vec<u32> = ids.iter().copied().filter(|&i| (i as usize) < VOCAB_SIZE).collect();
        self.inner.decode(&ids, false).unwrap_or_default()
    }
}

/// Cuts `text` into pieces of about `target` bytes, each cut right after a
/// lone `\n` between two non-whitespace characters: GPT-2's pre-tokenizer
/// makes such a newline a token of its own both inside the text and at the
/// end of a piece, so encoding the pieces separately gives the same tokens.
/// (After a longer whitespace run it would not: `"\n\nA"` is `\n`,`\n`,`A`
/// but a piece ending in `"\n\n"` would give one `\n\n` token.)
fn split_pieces(text: &str, target: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    while text.len() - start > target {
        let from = start + target;
        let solid = |c: Option<char>| c.is_some_and(|c| !c.is_whitespace());
        let cut = (from..bytes.len())
            .find(|&i| bytes[i] == b'\n' && i > start && solid(text[..i].chars().next_back()) && solid(text[i + 1..].chars().next()));
        let Some(i) = cut else { break };
        pieces.push(&text[start..=i]);
        start = i + 1;
    }
    pieces.push(&text[start..]);
    pieces
}

/// Token ids of `text` with the process-wide tokenizer.
pub fn encode(text: &str) -> Vec<u32> {
    gpt2().encode(text)
}

/// Text of token ids with the process-wide tokenizer.
pub fn decode(tokens: &[u32]) -> String {
    gpt2().decode(tokens)
}
