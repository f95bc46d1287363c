//! GPT-2's byte-level BPE (50,257 tokens; `<|endoftext|>` = 50256), built
//! with the `tokenizers` crate from the official vocabulary compiled into
//! the binary (`assets/gpt2/`), so nothing is downloaded at run time.
//!
//! It behaves like the Hugging Face tokenizer of `gpt2`/`distilgpt2` that
//! the reference network used: `<|endoftext|>` written in a text is the
//! special token, not five pieces of punctuation.
//!
//! Encoding does not go through `Tokenizer::encode`, whose per-token
//! bookkeeping (offsets, strings, normalized views) costs more than the BPE
//! itself. The pipeline is spelled out instead: split off `<|endoftext|>`,
//! cut the text with GPT-2's pre-tokenizer regex, map each piece's bytes to
//! GPT-2's printable alphabet, and have the crate's BPE model merge it —
//! through a per-thread cache of pieces, since web text repeats most of
//! its words. `Tokenizer` still decodes.

use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::OnceLock;
use tokenizers::Model;
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
/// GPT-2's pre-tokenizer is `'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+|
/// ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`. The look-ahead would need a
/// backtracking engine (fancy-regex, most of the encoding time), so this is
/// the same without `\s+(?!\S)`, for the linear-time `regex` crate, and
/// [`Gpt2Tokenizer::pieces`] restores the look-ahead's effect: a whitespace
/// run followed by a non-space gives up its last character to what follows.
const SPLIT: &str = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
const SPECIAL: &str = "<|endoftext|>";
/// Pieces remembered per thread before the cache starts over.
const CACHE_PIECES: usize = 1 << 17;

pub struct Gpt2Tokenizer {
    /// Decodes; also the reference the pipeline below reproduces.
    inner: Tokenizer,
    bpe: BPE,
    split: regex::Regex,
    /// GPT-2's byte → printable character map.
    byte_chars: [char; 256],
}

thread_local! {
    static PIECES: RefCell<HashMap<String, Vec<u32>>> = RefCell::new(HashMap::new());
}

/// GPT-2's reversible map from bytes to printable characters: printable
/// Latin-1 bytes map to themselves, the rest to code points from 256 up.
fn byte_chars() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        out[b as usize] = if printable(b) {
            char::from_u32(b).expect("Latin-1")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("below the surrogates")
        };
    }
    out
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
        let mut inner = Tokenizer::new(bpe.clone());
        // GPT-2: no prefix space, the GPT-2 split regex, bytes mapped to printable characters.
        inner.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        inner.add_special_tokens([AddedToken::from(SPECIAL, true)]).map_err(|e| e.to_string())?;
        let split = regex::Regex::new(SPLIT).map_err(|e| e.to_string())?;
        Ok(Gpt2Tokenizer { inner, bpe, split, byte_chars: byte_chars() })
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

    /// Empties every thread's piece cache (benchmarks time a cold start with it).
    pub fn clear_cache(&self) {
        rayon::broadcast(|_| PIECES.with(|c| c.borrow_mut().clear()));
        PIECES.with(|c| c.borrow_mut().clear());
    }

    /// Token ids of many texts, in parallel.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u32>> {
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    fn encode_piece(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3);
        PIECES.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() > CACHE_PIECES {
                cache.clear();
            }
            for (i, segment) in text.split(SPECIAL).enumerate() {
                if i > 0 {
                    ids.push(EOT);
                }
                for piece in self.pieces(segment) {
                    if let Some(hit) = cache.get(piece) {
                        ids.extend_from_slice(hit);
                        continue;
                    }
                    let mapped: String = piece.bytes().map(|b| self.byte_chars[b as usize]).collect();
                    let merged: Vec<u32> = self.bpe.tokenize(&mapped).map(|t| t.into_iter().map(|t| t.id).collect()).unwrap_or_default();
                    ids.extend_from_slice(&merged);
                    cache.insert(piece.to_string(), merged);
                }
            }
        });
        ids
    }

    /// GPT-2's pre-tokens of `text` (see [`SPLIT`]).
    fn pieces<'t>(&self, text: &'t str) -> impl Iterator<Item = &'t str> + use<'t, '_> {
        let mut at = 0;
        std::iter::from_fn(move || {
            let m = self.split.find_at(text, at)?;
            let mut end = m.end();
            let piece = m.as_str();
            // `\s+(?!\S)`: a run of 2+ whitespace characters followed by a
            // non-space stops one character short.
            if end < text.len() && piece.chars().all(char::is_whitespace) {
                let last = piece.chars().next_back().map_or(0, char::len_utf8);
                if last < piece.len() {
                    end -= last;
                }
            }
            at = end;
            Some(&text[m.start()..end])
        })
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
