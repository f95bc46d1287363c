//! Parquet files read over HTTP with range requests from a server on
//! 127.0.0.1: the same rows as the local files, only the needed bytes
//! fetched, transient failures retried, a server without ranges refused.

mod common;
use common::servers::files::{Fault, Server, sample_dir, serve};
use dtrain::data::http::RetryPolicy;
use dtrain::data::source::{ParquetRows, RowSource};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn policy(tries: u32) -> RetryPolicy {
    RetryPolicy { tries, delay: Duration::from_millis(5), timeout: Duration::from_secs(5) }
}

fn urls(server: &Server) -> Vec<String> {
    ["part-00000.parquet", "part-00001.parquet"].iter().map(|f| format!("{}/{f}", server.base)).collect()
}

#[test]
fn remote_files_give_the_same_rows_as_local_ones() {
    let server = serve();
    let remote = ParquetRows::open_urls(&urls(&server), &policy(1)).unwrap();
    let local = ParquetRows::open_dir(&sample_dir()).unwrap();
    assert_eq!(remote.num_rows(), local.num_rows());
    for (offset, count) in [(0, 374), (40, 20), (221, 7), (373, 1)] {
        assert!(remote.rows(offset, count).unwrap() == local.rows(offset, count).unwrap(), "rows {offset}+{count}");
    }
}

#[test]
fn only_the_needed_bytes_are_fetched() {
    let server = serve();
    let remote = ParquetRows::open_urls(&urls(&server), &policy(1)).unwrap();
    let total: u64 = ["part-00000.parquet", "part-00001.parquet"].iter().map(|f| std::fs::metadata(sample_dir().join(f)).unwrap().len()).sum();
    let before = server.served.load(Ordering::SeqCst);
    remote.rows(100, 3).unwrap(); // one row group of one file
    let used = server.served.load(Ordering::SeqCst) - before;
    assert!(used > 0 && used < total / 4, "fetched {used} of {total} bytes for 3 rows");
    // All rows: the text chunks of each file's row groups come in one request.
    let before = server.requests.load(Ordering::SeqCst);
    remote.rows(0, remote.num_rows() as usize).unwrap();
    assert_eq!(server.requests.load(Ordering::SeqCst) - before, 2, "one request per file");
}

#[test]
fn failures_are_retried_or_reported() {
    let server = serve();
    let remote = ParquetRows::open_urls(&urls(&server), &policy(3)).unwrap();
    let local = ParquetRows::open_dir(&sample_dir()).unwrap();
    for fault in [Fault::Status500, Fault::ShortBody] {
        server.faults.lock().unwrap().push_back(fault);
        assert!(remote.rows(300, 4).unwrap() == local.rows(300, 4).unwrap(), "{fault:?}");
    }
    server.faults.lock().unwrap().extend([Fault::Status500; 3]);
    let e = remote.rows(0, 2).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("HTTP 500") && e.contains("after 3 tries"), "{e}");
    server.faults.lock().unwrap().clear();

    server.faults.lock().unwrap().push_back(Fault::IgnoreRange);
    let e = ParquetRows::open_urls(&urls(&server), &policy(3)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("ignores byte ranges"), "{e}");
    let e = ParquetRows::open_urls(&[format!("{}/missing.parquet", server.base)], &policy(3)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("HTTP 404") && e.contains("after 1 try"), "{e}");
}

/// Concatenated tokens of every shard in `dir`.
fn shard_tokens(dir: &Path) -> Vec<u32> {
    let mut paths: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        let shard = dtrain::data::shard::Shard::open(&p).unwrap();
        let mut t = vec![0; shard.len()];
        shard.read(0, &mut t);
        out.extend(t);
    }
    out
}

#[test]
fn dtrain_tokenize_reads_remote_parquet() {
    let server = serve();
    let dir = std::env::temp_dir().join(format!("dtrain-tok-remote-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"));
    cmd.args(["-q", "tokenize", "--rows", "200:50", "--out"]).arg(dir.join("remote"));
    for url in urls(&server) {
        cmd.args(["--parquet-url", &url]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let local = ParquetRows::open_dir(&sample_dir()).unwrap();
    dtrain::data::tokenize::tokenize_rows(&local, 200..250, &dir.join("local"), 1 << 20, |_, _| {}).unwrap();
    assert_eq!(shard_tokens(&dir.join("remote")), shard_tokens(&dir.join("local")));
}
