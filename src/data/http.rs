//! What every HTTP data source shares: a bounded GET (optionally of a byte
//! range) that classifies failures as worth retrying or not, and the retry
//! loop (the reference: 10 tries, 5 s apart).

use super::DataError;
use std::ops::Range;
use std::time::Duration;

/// How hard to try.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub tries: u32,
    pub delay: Duration,
    /// Per request, connection to last byte.
    pub timeout: Duration,
}

/// Why one request failed, and whether asking again can help.
pub struct Failure {
    pub msg: String,
    pub retry: bool,
}

impl Failure {
    pub fn retry(msg: String) -> Failure {
        Failure { msg, retry: true }
    }
}

pub fn agent(policy: &RetryPolicy) -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(Some(policy.timeout)).http_status_as_error(false).build().into()
}

/// GETs `url` (or the byte `range` of it) and returns the body, at most `limit` bytes.
pub fn get(agent: &ureq::Agent, url: &str, range: Option<Range<u64>>, limit: u64) -> Result<Vec<u8>, Failure> {
    let mut req = agent.get(url);
    if let Some(r) = &range {
        req = req.header("Range", &format!("bytes={}-{}", r.start, r.end.saturating_sub(1)));
    }
    let mut resp = req.call().map_err(|e| Failure::retry(format!("request failed: {e}")))?;
    let status = resp.status().as_u16();
    let expected = if range.is_some() { 206 } else { 200 };
    if range.is_some() && status == 200 {
        return Err(Failure { msg: "the server ignores byte ranges (HTTP 200 to a Range request)".into(), retry: false });
    }
    if status != expected {
        // Client errors other than rate limiting will not go away by asking again.
        return Err(Failure { msg: format!("HTTP {status}"), retry: status >= 500 || status == 429 });
    }
    let body = resp.body_mut().with_config().limit(limit).read_to_vec().map_err(|e| Failure::retry(format!("reading the body: {e}")))?;
    if let Some(r) = range
        && body.len() as u64 != r.end - r.start
    {
        return Err(Failure::retry(format!("{} bytes for a range of {}", body.len(), r.end - r.start)));
    }
    Ok(body)
}

/// Runs `attempt` until it succeeds, fails for good, or `policy.tries` run out.
pub fn retrying<T>(policy: &RetryPolicy, url: &str, mut attempt: impl FnMut() -> Result<T, Failure>) -> Result<T, DataError> {
    let mut n = 1;
    loop {
        match attempt() {
            Ok(v) => return Ok(v),
            Err(f) if f.retry && n < policy.tries => {
                tracing::warn!("{url}: {} (try {n} of {}); retrying in {:?}", f.msg, policy.tries, policy.delay);
                std::thread::sleep(policy.delay);
                n += 1;
            }
            Err(f) => {
                return Err(DataError::Remote { url: url.into(), msg: format!("{} (after {n} {})", f.msg, if n == 1 { "try" } else { "tries" }) });
            }
        }
    }
}

/// Size of the resource at `url`, from the `Content-Range` of a one-byte range request.
pub fn total_length(agent: &ureq::Agent, url: &str) -> Result<u64, Failure> {
    let resp = agent.get(url).header("Range", "bytes=0-0").call().map_err(|e| Failure::retry(format!("request failed: {e}")))?;
    let status = resp.status().as_u16();
    if status == 200 {
        return Err(Failure { msg: "the server ignores byte ranges (HTTP 200 to a Range request)".into(), retry: false });
    }
    if status != 206 {
        return Err(Failure { msg: format!("HTTP {status}"), retry: status >= 500 || status == 429 });
    }
    let header = resp.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("");
    header
        .rsplit_once('/')
        .and_then(|(_, total)| total.trim().parse().ok())
        .ok_or_else(|| Failure::retry(format!("no usable Content-Range in the answer ({header:?})")))
}
