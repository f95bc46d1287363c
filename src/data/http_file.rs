//! A remote file read with HTTP range requests, as the `parquet` crate's
//! `ChunkReader`: parquet files of the dataset are read straight from the
//! hub, footer first, then only the byte ranges of the column chunks needed.
//!
//! The parquet reader asks for page headers through an open-ended `Read`
//! and for page bodies by exact range, one small request each if served
//! naively. So the caller [`HttpFile::prefetch`]es a whole column chunk (one
//! request) into a window that later reads are served from; reads outside
//! the window fall back to range requests (64 KiB for an open-ended read,
//! enough for any page header).

use super::DataError;
use super::http::{self, RetryPolicy};
use bytes::Bytes;
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};
use std::io::Cursor;
use std::sync::Mutex;

/// Bytes fetched for a read with no stated length.
const OPEN_READ: u64 = 64 << 10;
/// Largest single range fetched (a column chunk of a fineweb row group is tens of MB).
const MAX_RANGE: u64 = 1 << 30;

pub struct HttpFile {
    url: String,
    len: u64,
    agent: ureq::Agent,
    policy: RetryPolicy,
    window: Mutex<(u64, Bytes)>,
}

impl HttpFile {
    pub fn open(url: &str, policy: RetryPolicy) -> Result<HttpFile, DataError> {
        let agent = http::agent(&policy);
        let len = http::retrying(&policy, url, || http::total_length(&agent, url))?;
        Ok(HttpFile { url: url.into(), len, agent, policy, window: Mutex::new((0, Bytes::new())) })
    }

    fn fetch(&self, start: u64, len: u64) -> Result<Bytes, DataError> {
        let end = start.checked_add(len).filter(|&e| e <= self.len && len <= MAX_RANGE).ok_or_else(|| DataError::Remote {
            url: self.url.clone(),
            msg: format!("range {start}+{len} is outside the file's {} bytes", self.len),
        })?;
        let body = http::retrying(&self.policy, &self.url, || http::get(&self.agent, &self.url, Some(start..end), len))?;
        Ok(Bytes::from(body))
    }

    /// Fetches `start..start + len` in one request and keeps it for later reads.
    pub fn prefetch(&self, start: u64, len: u64) -> Result<(), DataError> {
        let bytes = self.fetch(start, len)?;
        *self.window.lock().unwrap_or_else(|e| e.into_inner()) = (start, bytes);
        Ok(())
    }

    /// Whether the window holds `start..start + len`.
    pub fn covers(&self, start: u64, len: u64) -> bool {
        self.in_window(start, len).is_some()
    }

    /// `start..start + len` from the window, if it holds them.
    fn in_window(&self, start: u64, len: u64) -> Option<Bytes> {
        let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (ws, ref bytes) = *w;
        (start >= ws && start + len <= ws + bytes.len() as u64).then(|| bytes.slice((start - ws) as usize..(start - ws + len) as usize))
    }
}

fn to_parquet(e: DataError) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl Length for HttpFile {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for HttpFile {
    type T = Cursor<Bytes>;

    fn get_read(&self, start: u64) -> Result<Cursor<Bytes>, ParquetError> {
        {
            let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            let (ws, ref wb) = *w;
            if start >= ws && start < ws + wb.len() as u64 {
                return Ok(Cursor::new(wb.slice((start - ws) as usize..)));
            }
        }
        let len = OPEN_READ.min(self.len.saturating_sub(start));
        Ok(Cursor::new(self.fetch(start, len).map_err(to_parquet)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        match self.in_window(start, length as u64) {
            Some(b) => Ok(b),
            None => self.fetch(start, length as u64).map_err(to_parquet),
        }
    }
}

/// Shares one [`HttpFile`] between the parquet reader and the prefetching code.
pub struct SharedHttpFile(pub std::sync::Arc<HttpFile>);

impl Length for SharedHttpFile {
    fn len(&self) -> u64 {
        self.0.len
    }
}

impl ChunkReader for SharedHttpFile {
    type T = Cursor<Bytes>;
    fn get_read(&self, start: u64) -> Result<Cursor<Bytes>, ParquetError> {
        self.0.get_read(start)
    }
    fn get_bytes(&self, start: u64, length: usize) -> Result<Bytes, ParquetError> {
        self.0.get_bytes(start, length)
    }
}
