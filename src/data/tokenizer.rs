//! GPT-2's byte-level BPE (the `r50k_base` encoding, 50,257 tokens), with the
//! vocabulary compiled into the binary so nothing is downloaded.

/// `<|endoftext|>`, GPT-2's document separator.
pub const EOT: u32 = 50_256;

/// Token ids of `text`, special tokens treated as plain text.
pub fn encode(text: &str) -> Vec<u32> {
    tiktoken_rs::r50k_base_singleton().encode_ordinary(text)
}

/// Text of token ids; bytes that do not form UTF-8 become U+FFFD, and ids
/// outside the vocabulary are dropped.
pub fn decode(tokens: &[u32]) -> String {
    let bpe = tiktoken_rs::r50k_base_singleton();
    let bytes: Vec<u8> = tokens.iter().filter_map(|&t| bpe.decode_bytes(&[t]).ok()).flatten().collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
