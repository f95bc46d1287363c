//! Token shards in llm.c's `.bin` format: a 1024-byte header of 256
//! little-endian i32 (magic 20240520, version 1, token count), then the
//! tokens as little-endian u16. Read through a memory map, never loaded.

use super::{DataError, io_err};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MAGIC: i32 = 20_240_520;
pub const VERSION: i32 = 1;
pub const HEADER_BYTES: usize = 1024;

/// A memory-mapped, validated shard.
pub struct Shard {
    pub path: PathBuf,
    map: memmap2::Mmap,
    len: usize,
}

impl Shard {
    pub fn open(path: &Path) -> Result<Shard, DataError> {
        let bad = |msg: String| DataError::Invalid { path: path.to_path_buf(), msg };
        let f = fs::File::open(path).map_err(io_err(path))?;
        let size = f.metadata().map_err(io_err(path))?.len() as usize;
        if size < HEADER_BYTES {
            return Err(bad(format!("{size} bytes is shorter than the {HEADER_BYTES}-byte shard header")));
        }
        // SAFETY: read-only map of a file we do not modify.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io_err(path))?;
        let word = |i: usize| i32::from_le_bytes(map[4 * i..4 * i + 4].try_into().expect("4 bytes"));
        if word(0) != MAGIC {
            return Err(bad(format!("not an llm.c token shard (magic {} instead of {MAGIC})", word(0))));
        }
        if word(1) != VERSION {
            return Err(bad(format!("shard version {} is not supported (expected {VERSION})", word(1))));
        }
        let len = usize::try_from(word(2)).map_err(|_| bad(format!("negative token count {}", word(2))))?;
        if size != HEADER_BYTES + 2 * len {
            return Err(bad(format!("header promises {len} tokens but the file holds {} bytes of tokens", size - HEADER_BYTES)));
        }
        Ok(Shard { path: path.to_path_buf(), map, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies tokens `start..start + out.len()` into `out`.
    pub fn read(&self, start: usize, out: &mut [u32]) {
        let bytes = &self.map[HEADER_BYTES + 2 * start..HEADER_BYTES + 2 * (start + out.len())];
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = u16::from_le_bytes([b[0], b[1]]) as u32;
        }
    }
}

/// Writes `tokens` as a shard, atomically (temporary file, then rename).
pub fn write(path: &Path, tokens: &[u32]) -> Result<(), DataError> {
    let bad = |msg: String| DataError::Invalid { path: path.to_path_buf(), msg };
    if let Some(&t) = tokens.iter().find(|&&t| t > u16::MAX as u32) {
        return Err(bad(format!("token {t} does not fit the shard format's u16")));
    }
    let n = i32::try_from(tokens.len()).map_err(|_| bad(format!("{} tokens exceed one shard's i32 count", tokens.len())))?;
    let mut buf = Vec::with_capacity(HEADER_BYTES + 2 * tokens.len());
    for w in [MAGIC, VERSION, n] {
        buf.extend_from_slice(&w.to_le_bytes());
    }
    buf.resize(HEADER_BYTES, 0);
    for &t in tokens {
        buf.extend_from_slice(&(t as u16).to_le_bytes());
    }
    let tmp = path.with_extension(format!("bin.tmp-{}", std::process::id()));
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&buf).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}
