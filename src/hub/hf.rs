//! The Hugging Face Hub over its HTTP API (the subset the reference used):
//!
//! - publish: `GET /api/models/{repo}/refs` (is the tag there already?),
//!   `POST /api/models/{repo}/preupload/main` (which files go through LFS),
//!   the LFS batch API (`POST /{repo}.git/info/lfs/objects/batch`, then a
//!   PUT of each object not already stored and its verify callback),
//!   `POST /api/models/{repo}/commit/main` (NDJSON: header, small files
//!   inline, LFS pointers), and last `POST /api/models/{repo}/tag/{commit}`;
//! - download: `GET /api/models/{repo}/tree/{tag}`, then
//!   `GET /{repo}/resolve/{tag}/{file}` for each file, size and (for LFS
//!   files) SHA-256 checked.
//!
//! Every request is retried by the policy (the reference: 3 tries, 10 s
//! apart). The tag is created only after the commit succeeded, so a publish
//! that fails leaves no tag; one that finds the tag already there (a
//! concurrent publisher won) reports the existing commit.

use super::{HubError, ModelHub, Published, check_name, io_err, sha256_file};
use crate::data::http::{Failure, RetryPolicy};
use serde_json::{Value, json};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Answers of the API (not file downloads) are read up to this size.
const JSON_LIMIT: u64 = 16 << 20;
/// Bytes of a file sent as `sample` to the preupload endpoint.
const SAMPLE: usize = 512;

pub struct HfHub {
    /// `https://huggingface.co` or a test server.
    pub endpoint: String,
    /// `owner/name`.
    pub repo: String,
    token: Option<String>,
    pub policy: RetryPolicy,
    agent: ureq::Agent,
}

impl HfHub {
    /// The reference's retries: 3 tries, 10 s apart; 10 minutes per request
    /// (checkpoints are large).
    pub fn default_policy() -> RetryPolicy {
        RetryPolicy { tries: 3, delay: Duration::from_secs(10), timeout: Duration::from_secs(600) }
    }

    pub fn new(endpoint: &str, repo: &str, token: Option<String>, policy: RetryPolicy) -> Result<HfHub, HubError> {
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 {
            return Err(HubError::Name { what: "repository", value: repo.into(), why: "must be owner/name" });
        }
        for p in parts {
            check_name("repository", p)?;
        }
        let agent = crate::data::http::agent(&policy);
        Ok(HfHub { endpoint: endpoint.trim_end_matches('/').to_string(), repo: repo.to_string(), token, policy, agent })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint)
    }

    fn auth<B>(&self, req: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(t) => req.header("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    /// Runs one request under the retry policy.
    fn retrying<T>(&self, what: &str, mut attempt: impl FnMut() -> Result<T, Failure>) -> Result<T, HubError> {
        crate::data::http::retrying(&self.policy, what, &mut attempt).map_err(|e| HubError::Remote(e.to_string()))
    }

    fn get_json(&self, path: &str) -> Result<Value, HubError> {
        let url = self.url(path);
        self.retrying(&url, || {
            let resp = self.auth(self.agent.get(&url)).call().map_err(|e| Failure::retry(format!("request failed: {e}")))?;
            json_answer(resp, &[200])
        })
    }

    fn post_json(&self, path: &str, body: &Value, ok: &[u16]) -> Result<(u16, Value), HubError> {
        let url = self.url(path);
        let text = body.to_string();
        self.retrying(&url, || {
            let resp = self
                .auth(self.agent.post(&url))
                .header("Content-Type", "application/json")
                .send(text.as_bytes())
                .map_err(|e| Failure::retry(format!("request failed: {e}")))?;
            let status = resp.status().as_u16();
            json_answer(resp, ok).map(|v| (status, v))
        })
    }

    /// The commit a tag points at, if the tag exists.
    fn tag_commit(&self, tag: &str) -> Result<Option<String>, HubError> {
        let refs = self.get_json(&format!("/api/models/{}/refs", self.repo))?;
        let tags = refs["tags"].as_array().ok_or_else(|| HubError::Remote("refs answer without a \"tags\" list".into()))?;
        Ok(tags.iter().find(|t| t["name"].as_str() == Some(tag)).map(|t| t["targetCommit"].as_str().unwrap_or("").to_string()))
    }

    fn upload_lfs(&self, path: &Path, oid: &str, size: u64) -> Result<(), HubError> {
        let batch = json!({
            "operation": "upload", "transfers": ["basic"], "hash_algo": "sha256",
            "objects": [{"oid": oid, "size": size}],
        });
        let url = self.url(&format!("/{}.git/info/lfs/objects/batch", self.repo));
        let answer = self.retrying(&url, || {
            let resp = self
                .auth(self.agent.post(&url))
                .header("Accept", "application/vnd.git-lfs+json")
                .header("Content-Type", "application/vnd.git-lfs+json")
                .send(batch.to_string().as_bytes())
                .map_err(|e| Failure::retry(format!("request failed: {e}")))?;
            json_answer(resp, &[200])
        })?;
        let object = &answer["objects"][0];
        if let Some(err) = object.get("error") {
            return Err(HubError::Remote(format!("LFS refused {}: {err}", path.display())));
        }
        let Some(upload) = object["actions"].get("upload") else { return Ok(()) }; // already stored
        let href = upload["href"].as_str().ok_or_else(|| HubError::Remote("LFS upload action without href".into()))?;
        self.retrying(href, || {
            let mut file = fs::File::open(path).map_err(|e| Failure { msg: format!("{}: {e}", path.display()), retry: false })?;
            let mut req = self.agent.put(href).header("Content-Length", &size.to_string());
            for (k, v) in upload["header"].as_object().into_iter().flatten() {
                req = req.header(k.as_str(), v.as_str().unwrap_or(""));
            }
            let resp = req.send(ureq::SendBody::from_reader(&mut file)).map_err(|e| Failure::retry(format!("upload failed: {e}")))?;
            status_ok(resp.status().as_u16(), &[200, 201])
        })?;
        if let Some(verify) = object["actions"].get("verify") {
            let href = verify["href"].as_str().ok_or_else(|| HubError::Remote("LFS verify action without href".into()))?;
            let body = json!({"oid": oid, "size": size}).to_string();
            self.retrying(href, || {
                let mut req = self.auth(self.agent.post(href)).header("Content-Type", "application/vnd.git-lfs+json");
                for (k, v) in verify["header"].as_object().into_iter().flatten() {
                    req = req.header(k.as_str(), v.as_str().unwrap_or(""));
                }
                let resp = req.send(body.as_bytes()).map_err(|e| Failure::retry(format!("request failed: {e}")))?;
                status_ok(resp.status().as_u16(), &[200])
            })?;
        }
        Ok(())
    }
}

fn status_ok(status: u16, ok: &[u16]) -> Result<(), Failure> {
    if ok.contains(&status) { Ok(()) } else { Err(Failure { msg: format!("HTTP {status}"), retry: status >= 500 || status == 429 }) }
}

fn json_answer(mut resp: ureq::http::Response<ureq::Body>, ok: &[u16]) -> Result<Value, Failure> {
    let status = resp.status().as_u16();
    let body = resp.body_mut().with_config().limit(JSON_LIMIT).read_to_vec().map_err(|e| Failure::retry(format!("reading the answer: {e}")))?;
    if !ok.contains(&status) {
        let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err(Failure { msg: format!("HTTP {status}: {text}"), retry: status >= 500 || status == 429 });
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&body).map_err(|e| Failure::retry(format!("answer is not JSON: {e}")))
}

/// Standard base64 with padding (for inline files and samples).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let v = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            out.push(if i <= c.len() { T[(v >> (18 - 6 * i) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

impl ModelHub for HfHub {
    fn publish(&self, dir: &Path, tag: &str, message: &str) -> Result<Published, HubError> {
        check_name("tag", tag)?;
        if let Some(commit) = self.tag_commit(tag)? {
            return Ok(Published { tag: tag.into(), revision: commit, existed: true });
        }
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if entry.file_type().map_err(io_err(&entry.path()))?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                check_name("file name", &name)?;
                let path = entry.path();
                let (oid, size) = sha256_file(&path, None)?;
                let mut sample = vec![0u8; SAMPLE];
                let k = fs::File::open(&path).and_then(|mut f| f.read(&mut sample)).map_err(io_err(&path))?;
                files.push((name, path, oid, size, base64(&sample[..k])));
            }
        }
        files.sort();

        // Which files the hub wants through LFS.
        let pre =
            json!({"files": files.iter().map(|(n, _, _, size, sample)| json!({"path": n, "size": size, "sample": sample})).collect::<Vec<_>>()});
        let (_, modes) = self.post_json(&format!("/api/models/{}/preupload/main", self.repo), &pre, &[200])?;
        let lfs = |name: &str| {
            modes["files"].as_array().into_iter().flatten().any(|f| f["path"].as_str() == Some(name) && f["uploadMode"].as_str() == Some("lfs"))
        };

        let mut ndjson = json!({"key": "header", "value": {"summary": message, "description": ""}}).to_string();
        for (name, path, oid, size, _) in &files {
            let line = if lfs(name) {
                self.upload_lfs(path, oid, *size)?;
                json!({"key": "lfsFile", "value": {"path": name, "algo": "sha256", "oid": oid, "size": size}})
            } else {
                let bytes = fs::read(path).map_err(io_err(path))?;
                json!({"key": "file", "value": {"path": name, "content": base64(&bytes), "encoding": "base64"}})
            };
            ndjson.push('\n');
            ndjson.push_str(&line.to_string());
        }
        let url = self.url(&format!("/api/models/{}/commit/main", self.repo));
        let commit = self.retrying(&url, || {
            let resp = self
                .auth(self.agent.post(&url))
                .header("Content-Type", "application/x-ndjson")
                .send(ndjson.as_bytes())
                .map_err(|e| Failure::retry(format!("request failed: {e}")))?;
            json_answer(resp, &[200])
        })?;
        let commit = commit["commitOid"].as_str().ok_or_else(|| HubError::Remote("commit answer without commitOid".into()))?.to_string();

        let (status, _) =
            self.post_json(&format!("/api/models/{}/tag/{commit}", self.repo), &json!({"tag": tag, "message": message}), &[200, 409])?;
        if status == 409 {
            let existing = self.tag_commit(tag)?.unwrap_or_default();
            return Ok(Published { tag: tag.into(), revision: existing, existed: true });
        }
        Ok(Published { tag: tag.into(), revision: commit, existed: false })
    }

    fn tags(&self) -> Result<Vec<String>, HubError> {
        let refs = self.get_json(&format!("/api/models/{}/refs", self.repo))?;
        Ok(refs["tags"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str().map(str::to_string)).collect())
    }

    fn download(&self, tag: &str, dest: &Path) -> Result<(), HubError> {
        check_name("tag", tag)?;
        let tree = self.get_json(&format!("/api/models/{}/tree/{tag}", self.repo))?;
        let entries = tree.as_array().ok_or_else(|| HubError::Remote(format!("no file list for tag {tag}")))?;
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let tmp: PathBuf = parent.join(format!(".{}.partial", dest.file_name().map_or("download".into(), |n| n.to_string_lossy())));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        for e in entries.iter().filter(|e| e["type"].as_str() == Some("file")) {
            let name = e["path"].as_str().unwrap_or_default();
            if check_name("file name", name).is_err() {
                // A checkpoint is flat: files in folders (or odd names) are not ours.
                tracing::warn!("skipping {name:?} of tag {tag}");
                continue;
            }
            let size = e["size"].as_u64().ok_or_else(|| HubError::Remote(format!("{name}: no size in the file list")))?;
            let sha = e["lfs"]["oid"].as_str().map(str::to_string);
            let url = self.url(&format!("/{}/resolve/{tag}/{name}", self.repo));
            let path = tmp.join(name);
            self.retrying(&url, || {
                let mut resp = self.auth(self.agent.get(&url)).call().map_err(|e| Failure::retry(format!("request failed: {e}")))?;
                status_ok(resp.status().as_u16(), &[200])?;
                let mut out = fs::File::create(&path).map_err(|e| Failure { msg: format!("{}: {e}", path.display()), retry: false })?;
                let mut reader = resp.body_mut().with_config().limit(size + 1).reader();
                let got = std::io::copy(&mut reader, &mut out).map_err(|e| Failure::retry(format!("downloading: {e}")))?;
                if got != size {
                    return Err(Failure::retry(format!("{got} bytes, the file list says {size}")));
                }
                out.sync_all().map_err(|e| Failure::retry(e.to_string()))
            })?;
            if let Some(sha) = sha
                && sha256_file(&path, None)?.0 != sha
            {
                let _ = fs::remove_dir_all(&tmp);
                return Err(HubError::Corrupt(format!("{name} of tag {tag} does not match its SHA-256")));
            }
        }
        fs::rename(&tmp, dest).map_err(io_err(dest))
    }
}
