//! Sequential batches from a token stream, llm.c style: each batch is the
//! next `b·t + 1` tokens, inputs the first `b·t`, targets the same shifted by
//! one; a shard too short for another batch hands over to the next, and the
//! last wraps to the first. The position is saved in checkpoints so a resumed
//! run sees exactly the batches an uninterrupted one would.

use super::shard::Shard;
use super::source::{ParquetRows, RowSource};
use super::tokenizer::{EOT, gpt2};
use super::{DataError, io_err};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Where tokens come from.
pub enum Tokens {
    /// A tokenized text, held in memory.
    Memory(Vec<u32>),
    /// Memory-mapped shards, in order.
    Shards(Vec<Shard>),
}

impl Tokens {
    /// A directory of `.bin` shards or of `.parquet` files, one `.bin` shard,
    /// one `.parquet` file, or a UTF-8 text file. Text files and parquet rows
    /// are tokenized with GPT-2's tokenizer, each document opened by
    /// `<|endoftext|>` (llm.c's convention for training streams).
    pub fn open(path: &Path) -> Result<Tokens, DataError> {
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        let has_ext = |p: &Path, ext: &str| p.extension().is_some_and(|x| x == ext);
        if meta.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path).map_err(io_err(path))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            let shards: Vec<_> = files.iter().filter(|p| has_ext(p, "bin")).collect();
            if !shards.is_empty() {
                return Ok(Tokens::Shards(shards.iter().map(|f| Shard::open(f)).collect::<Result<_, _>>()?));
            }
            if files.iter().any(|p| has_ext(p, "parquet")) {
                return Tokens::from_rows(&ParquetRows::open_dir(path)?);
            }
            return Err(DataError::Invalid { path: path.into(), msg: "directory holds neither .bin token shards nor .parquet files".into() });
        }
        if has_ext(path, "bin") {
            return Ok(Tokens::Shards(vec![Shard::open(path)?]));
        }
        if has_ext(path, "parquet") {
            return Tokens::from_rows(&ParquetRows::open(&[path.to_path_buf()])?);
        }
        let text = super::read_text(path)?;
        if text.trim().is_empty() {
            return Err(DataError::Invalid { path: path.into(), msg: "the text file is empty".into() });
        }
        Ok(Tokens::Memory(documents_to_stream(&[text])))
    }

    /// Every row of a source, tokenized in parallel into one stream.
    pub fn from_rows(src: &dyn RowSource) -> Result<Tokens, DataError> {
        const ROWS_AT_ONCE: usize = 4096;
        let mut tokens = Vec::new();
        let mut offset = 0;
        while offset < src.num_rows() {
            let n = ROWS_AT_ONCE.min((src.num_rows() - offset) as usize);
            tokens.extend(documents_to_stream(&src.rows(offset, n)?));
            offset += n as u64;
        }
        Ok(Tokens::Memory(tokens))
    }

    fn parts(&self) -> usize {
        match self {
            Tokens::Memory(_) => 1,
            Tokens::Shards(s) => s.len(),
        }
    }

    fn part_len(&self, i: usize) -> usize {
        match self {
            Tokens::Memory(t) => t.len(),
            Tokens::Shards(s) => s[i].len(),
        }
    }

    pub fn total(&self) -> usize {
        (0..self.parts()).map(|i| self.part_len(i)).sum()
    }

    fn read(&self, part: usize, start: usize, out: &mut [u32]) {
        match self {
            Tokens::Memory(t) => out.copy_from_slice(&t[start..start + out.len()]),
            Tokens::Shards(s) => s[part].read(start, out),
        }
    }
}

/// `<|endoftext|>` + tokens of each document, concatenated.
fn documents_to_stream<S: AsRef<str> + Sync>(docs: &[S]) -> Vec<u32> {
    let mut out = Vec::new();
    for doc in gpt2().encode_batch(docs) {
        out.push(EOT);
        out.extend(doc);
    }
    out
}

/// The loader's position: shard index and token offset in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderState {
    pub part: usize,
    pub pos: usize,
}

pub struct BatchLoader {
    tokens: Tokens,
    b: usize,
    t: usize,
    state: LoaderState,
    window: Vec<u32>,
    inputs: Vec<u32>,
    targets: Vec<u32>,
}

impl BatchLoader {
    pub fn new(tokens: Tokens, b: usize, t: usize, source: &Path) -> Result<BatchLoader, DataError> {
        let need = b * t + 1;
        if !(0..tokens.parts()).any(|i| tokens.part_len(i) >= need) {
            return Err(DataError::Invalid {
                path: source.into(),
                msg: format!("{} tokens, but a {b}×{t} batch needs at least {need} in one piece", tokens.total()),
            });
        }
        Ok(BatchLoader { tokens, b, t, state: LoaderState::default(), window: vec![0; need], inputs: vec![0; b * t], targets: vec![0; b * t] })
    }

    pub fn state(&self) -> LoaderState {
        self.state
    }

    pub fn set_state(&mut self, state: LoaderState) {
        self.state = state;
    }

    pub fn total_tokens(&self) -> usize {
        self.tokens.total()
    }

    /// The next batch: `(inputs, targets)`, each `b·t` tokens.
    pub fn next_batch(&mut self) -> (&[u32], &[u32]) {
        let bt = self.b * self.t;
        while self.state.part >= self.tokens.parts() || self.state.pos + bt + 1 > self.tokens.part_len(self.state.part) {
            self.state = LoaderState { part: (self.state.part + 1) % self.tokens.parts(), pos: 0 };
        }
        self.tokens.read(self.state.part, self.state.pos, &mut self.window);
        self.inputs.copy_from_slice(&self.window[..bt]);
        self.targets.copy_from_slice(&self.window[1..]);
        self.state.pos += bt;
        (&self.inputs, &self.targets)
    }
}

/// Tokens a row contributes at most (the reference truncates each row to 1024).
pub const ROW_TOKENS: usize = 1024;

/// The reference network's batches for a set of dataset rows, which a
/// validator must be able to rebuild from the row indices alone:
///
/// 1. each row is tokenized and truncated to [`ROW_TOKENS`], then `EOT` is appended;
/// 2. the rows are concatenated, in the order given, into one buffer;
/// 3. the buffer is cut into `⌈len / (b·t)⌉` batches of `b × t` tokens, the
///    targets being the buffer shifted by one; the tail of the last batch
///    (and the last target) is padded with `EOT`.
///
/// Batch `k`'s inputs are `buf[k·b·t .. (k+1)·b·t]`, its targets the same
/// window one token later.
pub struct RowBatches {
    buf: Vec<u32>,
    b: usize,
    t: usize,
    count: usize,
    /// Tokens before the padding.
    real: usize,
}

impl RowBatches {
    /// Largest `b·t` accepted: shapes may come from the network.
    pub const MAX_BATCH_TOKENS: usize = 1 << 24;

    /// From tokenized rows. The shape is checked, not trusted.
    pub fn new(rows: &[Vec<u32>], b: usize, t: usize) -> Result<RowBatches, DataError> {
        if b == 0 || t == 0 || b.saturating_mul(t) > Self::MAX_BATCH_TOKENS {
            return Err(DataError::Shape(format!("{b} × {t} (each positive, at most {} tokens)", Self::MAX_BATCH_TOKENS)));
        }
        let mut buf: Vec<u32> = Vec::with_capacity(rows.iter().map(|r| r.len().min(ROW_TOKENS) + 1).sum::<usize>() + b * t + 1);
        for row in rows {
            buf.extend_from_slice(&row[..row.len().min(ROW_TOKENS)]);
            buf.push(EOT);
        }
        let (real, count) = (buf.len(), buf.len().div_ceil(b * t));
        buf.resize(count * b * t + 1, EOT);
        Ok(RowBatches { buf, b, t, count, real })
    }

    /// From row texts, tokenized in parallel with GPT-2's tokenizer.
    pub fn from_texts<S: AsRef<str> + Sync>(texts: &[S], b: usize, t: usize) -> Result<RowBatches, DataError> {
        RowBatches::new(&super::tokenizer::gpt2().encode_batch(texts), b, t)
    }

    /// Rows `rows` of a source, fetched and tokenized: what a miner trains
    /// on for a `Train` request and what a validator rebuilds from the
    /// reported row indices.
    pub fn from_source(src: &dyn RowSource, rows: std::ops::Range<u64>, b: usize, t: usize) -> Result<RowBatches, DataError> {
        let count = usize::try_from(rows.end.saturating_sub(rows.start)).unwrap_or(usize::MAX);
        RowBatches::from_texts(&src.rows(rows.start, count)?, b, t)
    }

    /// Number of batches.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The first batches, whose inputs and targets are all text (no
    /// padding): what an evaluation averages over, padding being easy to
    /// predict.
    pub fn unpadded(&self) -> usize {
        self.real.saturating_sub(1) / (self.b * self.t)
    }

    /// Sequences per batch and tokens per sequence.
    pub fn shape(&self) -> (usize, usize) {
        (self.b, self.t)
    }

    /// `(inputs, targets)` of batch `k`, each `b·t` tokens.
    pub fn batch(&self, k: usize) -> (&[u32], &[u32]) {
        assert!(k < self.count, "batch {k} of {}", self.count);
        let n = self.b * self.t;
        (&self.buf[k * n..(k + 1) * n], &self.buf[k * n + 1..(k + 1) * n + 1])
    }
}
