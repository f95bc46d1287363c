//! `dtrain tokenize`: text files and parquet rows → llm.c token shards.
//!
//! Each text file, and each row of a `.parquet` input (fineweb's `text`
//! column), is one document, written as `<|endoftext|>` followed by its
//! tokens (llm.c's convention: the separator opens each document). Text
//! files are read in batches of about [`BATCH_BYTES`], parquet rows
//! [`BATCH_ROWS`] at a time, and each batch is encoded in parallel; tokens fill shards of `shard_tokens` in input order, a document
//! spilling over into the next shard, so the output does not depend on the
//! thread count. Each shard is written atomically.

use super::shard;
use super::source::{ParquetRows, RowSource};
use super::tokenizer::{EOT, gpt2};
use super::{DataError, io_err};
use std::path::{Path, PathBuf};

/// Text read and encoded at a time.
const BATCH_BYTES: u64 = 64 << 20;
/// Parquet rows read and encoded at a time.
const BATCH_ROWS: usize = 8192;

#[derive(Debug, Clone)]
pub struct TokenizeSummary {
    pub documents: usize,
    pub tokens: usize,
    pub shards: Vec<PathBuf>,
}

/// Name of shard `i` in an output directory.
pub fn shard_name(i: usize) -> String {
    format!("shard_{i:06}.bin")
}

struct ShardWriter {
    dir: PathBuf,
    capacity: usize,
    buf: Vec<u32>,
    written: Vec<PathBuf>,
}

impl ShardWriter {
    fn push(&mut self, mut tokens: &[u32]) -> Result<(), DataError> {
        while !tokens.is_empty() {
            let take = (self.capacity - self.buf.len()).min(tokens.len());
            self.buf.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
            if self.buf.len() == self.capacity {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), DataError> {
        if !self.buf.is_empty() {
            let path = self.dir.join(shard_name(self.written.len()));
            shard::write(&path, &self.buf)?;
            self.written.push(path);
            self.buf.clear();
        }
        Ok(())
    }
}

impl ShardWriter {
    /// A writer into `out`, which is created if needed and must hold no shards yet.
    fn create(out: &Path, shard_tokens: usize) -> Result<ShardWriter, DataError> {
        if shard_tokens == 0 || shard_tokens > i32::MAX as usize {
            return Err(DataError::Invalid { path: out.into(), msg: format!("shard size {shard_tokens} must be in 1..={}", i32::MAX) });
        }
        std::fs::create_dir_all(out).map_err(io_err(out))?;
        let mut entries = std::fs::read_dir(out).map_err(io_err(out))?.filter_map(|e| e.ok());
        if let Some(existing) = entries.find(|e| e.path().extension().is_some_and(|x| x == "bin")) {
            return Err(DataError::Invalid { path: existing.path(), msg: "the output directory already holds shards; use an empty one".into() });
        }
        Ok(ShardWriter { dir: out.into(), capacity: shard_tokens, buf: Vec::new(), written: Vec::new() })
    }
}

/// Tokenizes rows `rows` of any row source (remote parquet files, the rows
/// endpoint, …) into shards in `out`, each row one document. `progress` is
/// called with the rows done so far and the total.
pub fn tokenize_rows(
    src: &dyn RowSource,
    rows: std::ops::Range<u64>,
    out: &Path,
    shard_tokens: usize,
    progress: impl Fn(u64, u64),
) -> Result<TokenizeSummary, DataError> {
    if rows.end > src.num_rows() || rows.start > rows.end {
        return Err(DataError::Invalid { path: out.into(), msg: format!("rows {rows:?} are outside the source's {} rows", src.num_rows()) });
    }
    let mut writer = ShardWriter::create(out, shard_tokens)?;
    let mut tokens = 0;
    let mut at = rows.start;
    while at < rows.end {
        let n = BATCH_ROWS.min((rows.end - at) as usize);
        for doc in gpt2().encode_batch(&src.rows(at, n)?) {
            writer.push(&[EOT])?;
            writer.push(&doc)?;
            tokens += doc.len() + 1;
        }
        at += n as u64;
        progress(at - rows.start, rows.end - rows.start);
    }
    writer.flush()?;
    Ok(TokenizeSummary { documents: (rows.end - rows.start) as usize, tokens, shards: writer.written })
}

/// Tokenizes local text and parquet files into shards in `out` (created if
/// needed). `progress` is called with the bytes of input done so far and the total.
pub fn tokenize_files(inputs: &[PathBuf], out: &Path, shard_tokens: usize, progress: impl Fn(u64, u64)) -> Result<TokenizeSummary, DataError> {
    let sizes = inputs.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).map_err(io_err(p))).collect::<Result<Vec<_>, _>>()?;
    if let Some(i) = inputs.iter().position(|p| p.is_dir()) {
        return Err(DataError::Invalid { path: inputs[i].clone(), msg: "is a directory; pass the text files".into() });
    }
    let total: u64 = sizes.iter().sum();
    let mut writer = ShardWriter::create(out, shard_tokens)?;
    let (mut done, mut tokens, mut documents, mut next) = (0u64, 0usize, 0usize, 0usize);
    let mut write_docs = |docs: Vec<Vec<u32>>, writer: &mut ShardWriter| -> Result<(), DataError> {
        for doc in docs {
            writer.push(&[EOT])?;
            writer.push(&doc)?;
            tokens += doc.len() + 1;
            documents += 1;
        }
        Ok(())
    };
    let is_parquet = |p: &PathBuf| p.extension().is_some_and(|x| x == "parquet");
    while next < inputs.len() {
        if is_parquet(&inputs[next]) {
            let src = ParquetRows::open(std::slice::from_ref(&inputs[next]))?;
            let mut offset = 0;
            while offset < src.num_rows() {
                let n = BATCH_ROWS.min((src.num_rows() - offset) as usize);
                write_docs(gpt2().encode_batch(&src.rows(offset, n)?), &mut writer)?;
                offset += n as u64;
                progress(done + sizes[next] * offset / src.num_rows(), total);
            }
            done += sizes[next];
            next += 1;
            continue;
        }
        // One batch: at least one file, up to BATCH_BYTES of text.
        let mut end = next + 1;
        let mut bytes = sizes[next];
        while end < inputs.len() && !is_parquet(&inputs[end]) && bytes + sizes[end] <= BATCH_BYTES {
            bytes += sizes[end];
            end += 1;
        }
        let texts = inputs[next..end].iter().map(|p| super::read_text(p)).collect::<Result<Vec<_>, _>>()?;
        write_docs(gpt2().encode_batch(&texts), &mut writer)?;
        done += bytes;
        progress(done, total);
        next = end;
    }
    writer.flush()?;
    Ok(TokenizeSummary { documents, tokens, shards: writer.written })
}
