//! Training data: GPT-2 tokenization of text, llm.c token shards, and the
//! batch loader both feed.

pub mod held_out;
pub mod http;
pub mod http_file;
pub mod loader;
pub mod rows_api;
pub mod shard;
pub mod source;
pub mod tokenize;
pub mod tokenizer;
pub mod used_rows;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{url}: {msg}")]
    Remote { url: String, msg: String },
    #[error("invalid batch shape: {0}")]
    Shape(String),
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// The whole of a UTF-8 text file.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, DataError> {
    let raw = std::fs::read(path).map_err(io_err(path))?;
    String::from_utf8(raw).map_err(|e| DataError::Invalid { path: path.into(), msg: format!("not UTF-8 text ({e})") })
}
