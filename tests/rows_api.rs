//! The rows-endpoint client against a server on 127.0.0.1 that serves the
//! bundled sample and injects faults: the same rows as the parquet path,
//! retries on transient failures, clear errors once retries run out.

mod common;
use common::servers::rows::{Fault, Server, sample_rows, serve};
use dtrain::data::http::RetryPolicy;
use dtrain::data::rows_api::{RowsApi, RowsApiConfig};
use dtrain::data::source::RowSource;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn client(server: &Server, tries: u32) -> RowsApi {
    RowsApi::new(RowsApiConfig {
        base_url: server.base.clone(),
        num_rows: 374,
        retry: RetryPolicy { tries, delay: Duration::from_millis(10), timeout: Duration::from_millis(500) },
        ..RowsApiConfig::default()
    })
}

#[test]
fn the_rows_endpoint_gives_the_same_rows_as_the_parquet_files() {
    let server = serve();
    let api = client(&server, 1);
    let want = sample_rows();
    assert!(api.rows(0, 374).unwrap() == want);
    assert_eq!(server.requests.load(Ordering::SeqCst), 4, "at most 100 rows per request");
    assert!(api.rows(150, 130).unwrap() == want[150..280]);
    assert!(api.rows(373, 1).unwrap() == want[373..]);
    let e = api.rows(370, 10).unwrap_err().to_string();
    assert!(e.contains("outside the dataset"), "{e}");
}

#[test]
fn transient_failures_are_retried() {
    let server = serve();
    let api = client(&server, 3);
    let want = sample_rows();
    for fault in [
        Fault::Status(500),
        Fault::Status(503),
        Fault::Status(429),
        Fault::Hang,
        Fault::Truncate,
        Fault::Malformed,
        Fault::MissingRow,
        Fault::WrongIndex,
    ] {
        server.faults.lock().unwrap().push_back(fault);
        let before = server.requests.load(Ordering::SeqCst);
        assert!(api.rows(10, 20).unwrap() == want[10..30], "{fault:?}");
        assert_eq!(server.requests.load(Ordering::SeqCst) - before, 2, "{fault:?}: one failure, one retry");
    }
}

#[test]
fn persistent_failures_end_with_a_clear_error() {
    let server = serve();
    let api = client(&server, 3);
    for (fault, expect, tries) in [
        (Fault::Status(500), "HTTP 500", 3),
        (Fault::Malformed, "malformed answer", 3),
        (Fault::Hang, "request failed", 3),
        (Fault::Status(404), "HTTP 404", 1),
    ] {
        server.faults.lock().unwrap().extend([fault; 5]);
        let before = server.requests.load(Ordering::SeqCst);
        let t0 = Instant::now();
        let e = api.rows(0, 5).unwrap_err().to_string();
        assert!(e.contains(expect) && e.contains(&format!("after {tries} {}", if tries == 1 { "try" } else { "tries" })), "{fault:?}: {e}");
        assert_eq!(server.requests.load(Ordering::SeqCst) - before, tries, "{fault:?}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{fault:?} took {:?}", t0.elapsed());
        server.faults.lock().unwrap().clear();
    }
    // Nothing listening at all.
    let retry = RetryPolicy { tries: 2, delay: Duration::from_millis(1), timeout: Duration::from_secs(5) };
    let gone = RowsApi::new(RowsApiConfig { base_url: "http://127.0.0.1:9".into(), num_rows: 10, retry, ..RowsApiConfig::default() });
    let e = gone.rows(0, 1).unwrap_err().to_string();
    assert!(e.contains("after 2 tries"), "{e}");
}

#[test]
fn dtrain_tokenize_reads_the_rows_endpoint() {
    let server = serve();
    let dir = std::env::temp_dir().join(format!("dtrain-tok-rows-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["-q", "tokenize", "--rows-api", &server.base, "--num-rows", "374", "--rows", "0:150", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shard = dtrain::data::shard::Shard::open(&dir.join("shard_000000.bin")).unwrap();
    let mut got = vec![0; shard.len()];
    shard.read(0, &mut got);
    let mut want = Vec::new();
    for text in &sample_rows()[..150] {
        want.push(50256);
        want.extend(tiktoken_rs::r50k_base_singleton().encode_with_special_tokens(text));
    }
    assert!(got == want, "tokens differ");
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["tokenize", "--rows-api", &server.base, "--out"])
        .arg(dir.join("x"))
        .output()
        .unwrap();
    assert!(!missing.status.success() && String::from_utf8_lossy(&missing.stderr).contains("--rows START:COUNT"));
}
