//! A stand-in for the Hugging Face Hub on 127.0.0.1: the API subset dtrain
//! uses (refs, preupload, LFS batch/upload/verify, NDJSON commit, tag,
//! tree, resolve), with faults injected on demand.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answer with this status.
    Status(u16),
    /// Say nothing for this long, then close.
    Hang(Duration),
    /// Read half of the request body, then close the connection.
    DropMidBody,
}

#[derive(Default)]
pub struct State {
    /// (commit id, files: path → bytes), oldest first; the last is `main`.
    pub commits: Vec<(String, BTreeMap<String, Vec<u8>>)>,
    pub lfs: HashMap<String, Vec<u8>>,
    pub tags: BTreeMap<String, String>,
    /// (path substring, fault): the next request whose path contains it.
    pub faults: VecDeque<(String, Fault)>,
    /// "METHOD path" of every request.
    pub log: Vec<String>,
}

pub struct HfServer {
    pub base: String,
    pub state: Arc<Mutex<State>>,
}

pub const TOKEN: &str = "hf_test_token";
pub const REPO: &str = "dtrain/test-model";

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

fn b64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for c in bytes.chunks(4) {
        let v = c.iter().enumerate().fold(0u32, |v, (i, &x)| v | (val(x) as u32) << (18 - 6 * i));
        out.extend_from_slice(&v.to_be_bytes()[1..c.len()]);
    }
    out
}

fn respond(s: &mut TcpStream, status: u16, body: &[u8]) {
    let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n", body.len());
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
}

fn handle(mut s: TcpStream, base: &str, state: &Mutex<State>) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let (mut len, mut auth) = (0usize, String::new());
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or(("", ""));
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap_or(0),
            "authorization" => auth = v.trim().to_string(),
            _ => {}
        }
    }
    let fault = {
        let mut st = state.lock().unwrap();
        st.log.push(format!("{method} {path}"));
        let i = st.faults.iter().position(|(p, _)| path.contains(p.as_str()));
        i.and_then(|i| st.faults.remove(i)).map(|(_, f)| f)
    };
    match fault {
        Some(Fault::Status(code)) => {
            // Read the request first, as a server does: answering before
            // the client has sent its body can reset the connection under
            // it, and the client sees a disconnect instead of the status.
            let mut body = vec![0u8; len];
            let _ = r.read_exact(&mut body);
            return respond(&mut s, code, b"{\"error\":\"injected\"}");
        }
        Some(Fault::Hang(d)) => return std::thread::sleep(d),
        Some(Fault::DropMidBody) => {
            let mut half = vec![0u8; len / 2];
            let _ = r.read_exact(&mut half);
            return;
        }
        None => {}
    }
    let mut body = vec![0u8; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    let authed = auth == format!("Bearer {TOKEN}");
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    let mut st = state.lock().unwrap();
    let api = format!("/api/models/{REPO}");
    let head_files = st.commits.last().map(|c| c.1.clone()).unwrap_or_default();
    let (status, answer) = if method == "GET" && path == format!("{api}/refs") {
        let tags: Vec<_> = st.tags.iter().map(|(t, c)| serde_json::json!({"name": t, "ref": format!("refs/tags/{t}"), "targetCommit": c})).collect();
        (200, json(serde_json::json!({"branches": [], "tags": tags, "converts": []})))
    } else if method == "POST" && path == format!("{api}/preupload/main") {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let files: Vec<_> = v["files"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                let p = f["path"].as_str().unwrap_or("");
                let lfs = p.ends_with(".safetensors") || f["size"].as_u64().unwrap_or(0) >= 1 << 20;
                serde_json::json!({"path": p, "uploadMode": if lfs { "lfs" } else { "regular" }})
            })
            .collect();
        (200, json(serde_json::json!({"files": files})))
    } else if method == "POST" && path == format!("/{REPO}.git/info/lfs/objects/batch") {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let objects: Vec<_> = v["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| {
                let oid = o["oid"].as_str().unwrap_or("");
                if st.lfs.contains_key(oid) {
                    serde_json::json!({"oid": oid, "size": o["size"]})
                } else {
                    serde_json::json!({"oid": oid, "size": o["size"], "actions": {
                        "upload": {"href": format!("{base}/lfs-upload/{oid}"), "header": {"X-Test": "1"}},
                        "verify": {"href": format!("{base}/lfs-verify"), "header": {}},
                    }})
                }
            })
            .collect();
        if authed { (200, json(serde_json::json!({"transfer": "basic", "objects": objects}))) } else { (401, b"{}".to_vec()) }
    } else if method == "PUT" && path.starts_with("/lfs-upload/") {
        let oid = path.trim_start_matches("/lfs-upload/").to_string();
        if sha256_hex(&body) == oid {
            st.lfs.insert(oid, body);
            (200, Vec::new())
        } else {
            (400, b"{\"error\":\"hash mismatch\"}".to_vec())
        }
    } else if method == "POST" && path == "/lfs-verify" {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if st.lfs.contains_key(v["oid"].as_str().unwrap_or("")) { (200, b"{}".to_vec()) } else { (404, b"{}".to_vec()) }
    } else if method == "POST" && path == format!("{api}/commit/main") {
        if !authed {
            (401, b"{\"error\":\"unauthorized\"}".to_vec())
        } else {
            let mut files = head_files;
            let mut ok = true;
            for line in String::from_utf8_lossy(&body).lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                let val = &v["value"];
                match v["key"].as_str() {
                    Some("file") => {
                        files.insert(val["path"].as_str().unwrap_or("").into(), b64_decode(val["content"].as_str().unwrap_or("")));
                    }
                    Some("lfsFile") => match st.lfs.get(val["oid"].as_str().unwrap_or("")) {
                        Some(b) => {
                            files.insert(val["path"].as_str().unwrap_or("").into(), b.clone());
                        }
                        None => ok = false,
                    },
                    _ => {}
                }
            }
            if ok {
                let id = sha256_hex(format!("{}{}", st.commits.len(), String::from_utf8_lossy(&body)).as_bytes())[..40].to_string();
                st.commits.push((id.clone(), files));
                (200, json(serde_json::json!({"commitOid": id, "commitUrl": format!("{base}/{REPO}/commit/{id}")})))
            } else {
                (400, b"{\"error\":\"LFS object missing\"}".to_vec())
            }
        }
    } else if method == "POST" && path.starts_with(&format!("{api}/tag/")) {
        let commit = path.rsplit('/').next().unwrap_or("").to_string();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let tag = v["tag"].as_str().unwrap_or("").to_string();
        if !authed {
            (401, b"{}".to_vec())
        } else if st.tags.contains_key(&tag) {
            (409, b"{\"error\":\"tag exists\"}".to_vec())
        } else if !st.commits.iter().any(|c| c.0 == commit) {
            (404, b"{}".to_vec())
        } else {
            st.tags.insert(tag, commit);
            (200, b"{}".to_vec())
        }
    } else if let Some(rest) = path.strip_prefix(&format!("{api}/tree/")) {
        let files = st.tags.get(rest).and_then(|c| st.commits.iter().find(|x| &x.0 == c)).map(|c| c.1.clone());
        match files {
            Some(files) => {
                let list: Vec<_> = files
                    .iter()
                    .map(|(p, b)| {
                        let lfs = p.ends_with(".safetensors");
                        let mut e = serde_json::json!({"type": "file", "path": p, "size": b.len()});
                        if lfs {
                            e["lfs"] = serde_json::json!({"oid": sha256_hex(b), "size": b.len()});
                        }
                        e
                    })
                    .collect();
                (200, json(serde_json::Value::Array(list)))
            }
            None => (404, b"{}".to_vec()),
        }
    } else if let Some(rest) = path.strip_prefix(&format!("/{REPO}/resolve/")) {
        let (rev, file) = rest.split_once('/').unwrap_or(("", ""));
        let bytes = st.tags.get(rev).and_then(|c| st.commits.iter().find(|x| &x.0 == c)).and_then(|c| c.1.get(file).cloned());
        match bytes {
            Some(b) => (200, b),
            None => (404, b"{}".to_vec()),
        }
    } else {
        (404, b"{\"error\":\"no such endpoint\"}".to_vec())
    };
    drop(st);
    respond(&mut s, status, &answer);
}

pub fn serve() -> HfServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = Arc::new(Mutex::new(State::default()));
    let (st, b) = (state.clone(), base.clone());
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let (st, b) = (st.clone(), b.clone());
            std::thread::spawn(move || handle(s, &b, &st));
        }
    });
    HfServer { base, state }
}
