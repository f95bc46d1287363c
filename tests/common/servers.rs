//! Servers on 127.0.0.1 for the data-source tests and benchmarks: the
//! dataset viewer's rows endpoint and a static file server with byte
//! ranges, both serving the bundled sample and injecting faults on demand.

use std::sync::atomic::{AtomicU64, Ordering};

static LATENCY_MS: AtomicU64 = AtomicU64::new(0);

/// Delay every answer by this much (a wide-area round trip on loopback).
pub fn set_latency(ms: u64) {
    LATENCY_MS.store(ms, Ordering::SeqCst);
}

fn delay() {
    let ms = LATENCY_MS.load(Ordering::SeqCst);
    if ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// The rows endpoint (`/rows?...&offset=O&length=L`) over the sample's rows.
pub mod rows {
    use dtrain::data::source::{ParquetRows, RowSource};
    use std::collections::VecDeque;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone, Copy, Debug)]
    pub enum Fault {
        Status(u16),
        Hang,
        Truncate,
        Malformed,
        MissingRow,
        WrongIndex,
    }

    pub struct Server {
        pub base: String,
        pub faults: Arc<Mutex<VecDeque<Fault>>>,
        pub requests: Arc<AtomicUsize>,
    }

    pub fn sample_rows() -> Vec<String> {
        let src = ParquetRows::open_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")).unwrap();
        src.rows(0, src.num_rows() as usize).unwrap()
    }

    pub fn query(path: &str, key: &str) -> Option<u64> {
        path.split(['?', '&']).find_map(|kv| kv.strip_prefix(&format!("{key}=")).and_then(|v| v.parse().ok()))
    }

    pub fn handle(mut s: TcpStream, rows: &[String], fault: Option<Fault>) {
        super::delay();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        let path = head.split(' ').nth(1).unwrap_or("");
        let (offset, length) = (query(path, "offset").unwrap_or(0) as usize, query(path, "length").unwrap_or(0) as usize);
        let mut entries: Vec<serde_json::Value> = (offset..(offset + length).min(rows.len()))
            .map(|i| serde_json::json!({"row_idx": i, "row": {"text": rows[i], "id": format!("<urn:{i}>")}, "truncated_cells": []}))
            .collect();
        match fault {
            Some(Fault::MissingRow) => {
                entries.pop();
            }
            Some(Fault::WrongIndex) => entries[0]["row_idx"] = serde_json::json!(offset + 1),
            _ => {}
        }
        let mut body = serde_json::to_vec(&serde_json::json!({"features": [], "rows": entries})).unwrap();
        let mut status = 200;
        let mut declared = body.len();
        match fault {
            Some(Fault::Status(code)) => {
                status = code;
                body = b"{\"error\":\"injected\"}".to_vec();
                declared = body.len();
            }
            Some(Fault::Hang) => {
                std::thread::sleep(Duration::from_secs(3));
                return;
            }
            Some(Fault::Truncate) => body.truncate(body.len() / 2),
            Some(Fault::Malformed) => {
                body = b"{\"rows\": [{\"row_idx\": 0, \"row\": ".to_vec();
                declared = body.len();
            }
            _ => {}
        }
        let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n");
        let _ = s.write_all(&body);
    }

    pub fn serve() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let rows = Arc::new(sample_rows());
        let faults: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let requests: Arc<AtomicUsize> = Arc::default();
        let (f, r) = (faults.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                r.fetch_add(1, Ordering::SeqCst);
                let fault = f.lock().unwrap().pop_front();
                let rows = rows.clone();
                std::thread::spawn(move || handle(stream, &rows, fault));
            }
        });
        Server { base, faults, requests }
    }
}

/// The sample's files at `/<name>`, honouring `Range: bytes=a-b`.
pub mod files {
    use std::collections::VecDeque;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum Fault {
        Status500,
        IgnoreRange,
        ShortBody,
    }

    pub struct Server {
        pub base: String,
        pub faults: Arc<Mutex<VecDeque<Fault>>>,
        pub served: Arc<AtomicU64>,
        pub requests: Arc<AtomicU64>,
    }

    pub fn sample_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")
    }

    pub fn handle(mut s: TcpStream, fault: Option<Fault>, served: &AtomicU64) {
        super::delay();
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

    pub fn serve() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let faults: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let served: Arc<AtomicU64> = Arc::default();
        let requests: Arc<AtomicU64> = Arc::default();
        let (f, sv, rq) = (faults.clone(), served.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                rq.fetch_add(1, Ordering::SeqCst);
                let fault = f.lock().unwrap().pop_front();
                let sv = sv.clone();
                std::thread::spawn(move || handle(stream, fault, &sv));
            }
        });
        Server { base, faults, served, requests }
    }
}
