//! The Hugging Face dataset viewer's rows endpoint, exactly as the
//! reference network used it:
//! `GET {base}/rows?dataset=D&config=C&split=S&offset=O&length=L` (L ≤ 100)
//! answering `{"rows": [{"row_idx": i, "row": {"text": …}}, …]}`.
//!
//! Every answer is checked (status, size, JSON shape, the row indices asked
//! for); any failure but a client error is retried, `tries` times
//! `retry_delay` apart (the reference: 10 tries, 5 s), and the last error is
//! reported. Bodies are bounded, so a hostile server cannot exhaust memory.

use super::DataError;
use super::http::{self, Failure, RetryPolicy};
use super::source::RowSource;
use serde::Deserialize;
use std::time::Duration;

/// Most rows the endpoint serves per request.
pub const MAX_LENGTH: usize = 100;
/// Largest response body read (100 long web pages are a few MB).
const MAX_BODY: u64 = 256 << 20;

#[derive(Debug, Clone)]
pub struct RowsApiConfig {
    pub base_url: String,
    pub dataset: String,
    pub config: String,
    pub split: String,
    /// Rows in the split (the endpoint does not say; fineweb sample-350BT has about 519M).
    pub num_rows: u64,
    pub retry: RetryPolicy,
}

impl Default for RowsApiConfig {
    /// The reference network's settings.
    fn default() -> Self {
        RowsApiConfig {
            base_url: "https://datasets-server.huggingface.co".into(),
            dataset: "HuggingFaceFW/fineweb".into(),
            config: "sample-350BT".into(),
            split: "train".into(),
            num_rows: 519_000_000,
            retry: RetryPolicy { tries: 10, delay: Duration::from_secs(5), timeout: Duration::from_secs(60) },
        }
    }
}

pub struct RowsApi {
    cfg: RowsApiConfig,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct Answer {
    rows: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    row_idx: u64,
    row: Row,
}

#[derive(Deserialize)]
struct Row {
    text: String,
}

/// Percent-encodes a query value (RFC 3986 unreserved characters and `/` pass).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl RowsApi {
    pub fn new(cfg: RowsApiConfig) -> RowsApi {
        RowsApi { agent: http::agent(&cfg.retry), cfg }
    }

    fn url(&self, offset: u64, length: usize) -> String {
        let c = &self.cfg;
        format!(
            "{}/rows?dataset={}&config={}&split={}&offset={offset}&length={length}",
            c.base_url.trim_end_matches('/'),
            encode(&c.dataset),
            encode(&c.config),
            encode(&c.split)
        )
    }

    fn fetch(&self, url: &str, offset: u64, length: usize) -> Result<Vec<String>, Failure> {
        let body = http::get(&self.agent, url, None, MAX_BODY)?;
        let answer: Answer = serde_json::from_slice(&body).map_err(|e| Failure::retry(format!("malformed answer: {e}")))?;
        if answer.rows.len() != length {
            return Err(Failure::retry(format!("{} rows in the answer, {length} asked for", answer.rows.len())));
        }
        let mut texts = Vec::with_capacity(length);
        for (i, entry) in answer.rows.into_iter().enumerate() {
            if entry.row_idx != offset + i as u64 {
                return Err(Failure::retry(format!("row {} answered where row {} was asked for", entry.row_idx, offset + i as u64)));
            }
            texts.push(entry.row.text);
        }
        Ok(texts)
    }

    /// One request with retries.
    fn fetch_retrying(&self, offset: u64, length: usize) -> Result<Vec<String>, DataError> {
        let url = self.url(offset, length);
        http::retrying(&self.cfg.retry, &url, || self.fetch(&url, offset, length))
    }
}

impl RowSource for RowsApi {
    fn num_rows(&self) -> u64 {
        self.cfg.num_rows
    }

    fn rows(&self, offset: u64, count: usize) -> Result<Vec<String>, DataError> {
        if offset.checked_add(count as u64).is_none_or(|end| end > self.cfg.num_rows) {
            return Err(DataError::Remote {
                url: self.cfg.base_url.clone(),
                msg: format!("rows {offset}..{offset}+{count} are outside the dataset's {} rows", self.cfg.num_rows),
            });
        }
        let mut out = Vec::with_capacity(count.min(1 << 16));
        let mut at = offset;
        while out.len() < count {
            let n = MAX_LENGTH.min(count - out.len());
            out.extend(self.fetch_retrying(at, n)?);
            at += n as u64;
        }
        Ok(out)
    }
}
