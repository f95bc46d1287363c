//! Parquet files read over HTTP with range requests from a server on
//! 127.0.0.1: the same rows as the local files, only the needed bytes
//! fetched, transient failures retried, a server without ranges refused.

use dtrain::data::http::RetryPolicy;
use dtrain::data::source::{ParquetRows, RowSource};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Status500,
    IgnoreRange,
    ShortBody,
}

struct Server {
    base: String,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    served: Arc<AtomicU64>,
}

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")
}

fn handle(mut s: TcpStream, fault: Option<Fault>, served: &AtomicU64) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 && s.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split(' ').nth(1).unwrap_or("/").trim_start_matches('/').to_string();
    let Ok(file) = std::fs::read(sample_dir().join(&path)) else {
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let range = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(String::from)).and_then(|r| {
        let (a, b) = r.trim().split_once('-')?;
        Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
    });
    if fault == Some(Fault::Status500) {
        let _ = s.write_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let (status, body, extra) = match range {
        Some((a, b)) if fault != Some(Fault::IgnoreRange) && a <= b && b < file.len() => {
            (206, &file[a..=b], format!("Content-Range: bytes {a}-{b}/{}\r\n", file.len()))
        }
        _ => (200, &file[..], String::new()),
    };
    let declared = body.len();
    let body = if fault == Some(Fault::ShortBody) { &body[..body.len() / 2] } else { body };
    served.fetch_add(body.len() as u64, Ordering::SeqCst);
    let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: {declared}\r\n{extra}Connection: close\r\n\r\n");
    let _ = s.write_all(body);
}

fn serve() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let faults: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
    let served: Arc<AtomicU64> = Arc::default();
    let (f, sv) = (faults.clone(), served.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let fault = f.lock().unwrap().pop_front();
            let sv = sv.clone();
            std::thread::spawn(move || handle(stream, fault, &sv));
        }
    });
    Server { base, faults, served }
}

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
    assert!(e.contains("HTTP 404") && e.contains("after 1 tries"), "{e}");
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
