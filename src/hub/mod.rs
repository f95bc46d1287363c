//! Where the network's model versions live: each published revision is a
//! checkpoint directory (HF layout + optimizer state + config), tagged with
//! its epoch. Behind one trait so the embedded local store and the Hugging
//! Face Hub are interchangeable (issue 5).

mod hf;
mod local;

pub use hf::{HfHub, base64};
pub use local::LocalStore;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("tag {0:?} does not exist")]
    NoTag(String),
    #[error("invalid {what} {value:?}: {why}")]
    Name { what: &'static str, value: String, why: &'static str },
    #[error("{0}")]
    Corrupt(String),
    #[error("model hub: {0}")]
    Remote(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |source| HubError::Io { path: path.to_path_buf(), source }
}

/// The hub a command line names: a local store directory, or a Hugging
/// Face repository (endpoint from `HF_ENDPOINT`, default
/// https://huggingface.co; token from `HF_TOKEN`; requests tried by `policy`).
pub fn open(store: Option<&Path>, hf_repo: Option<&str>, policy: crate::data::http::RetryPolicy) -> Result<std::sync::Arc<dyn ModelHub>, HubError> {
    match (store, hf_repo) {
        (Some(dir), _) => Ok(std::sync::Arc::new(LocalStore::open(dir)?)),
        (None, Some(repo)) => {
            let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
            Ok(std::sync::Arc::new(HfHub::new(&endpoint, repo, std::env::var("HF_TOKEN").ok(), policy)?))
        }
        (None, None) => {
            Err(HubError::Name { what: "model hub", value: String::new(), why: "give a local store directory or a Hugging Face repository" })
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub tag: String,
    pub revision: String,
    /// The tag existed already: nothing was written and `revision` is the
    /// existing one, which the caller should load instead.
    pub existed: bool,
}

pub trait ModelHub: Send + Sync {
    /// Publishes the regular files directly inside `dir` as a new revision
    /// with `message`, then creates `tag` for it. A tag that exists already
    /// is never moved: the existing revision is returned with `existed`.
    fn publish(&self, dir: &Path, tag: &str, message: &str) -> Result<Published, HubError>;

    /// Every tag, in no particular order.
    fn tags(&self) -> Result<Vec<String>, HubError>;

    /// Copies the revision tagged `tag` into the new directory `dest`.
    fn download(&self, tag: &str, dest: &Path) -> Result<(), HubError>;

    /// The highest tag that is an epoch number.
    fn latest_epoch(&self) -> Result<Option<u64>, HubError> {
        Ok(self.tags()?.iter().filter_map(|t| t.parse::<u64>().ok()).max())
    }
}

/// The commit message the reference writes: "Epoch E. Batch Size B. Peers P."
pub fn commit_message(epoch: u64, batch_size: u64, peers: usize) -> String {
    format!("Epoch {epoch}. Batch Size {batch_size}. Peers {peers}.")
}

/// Tags and file names: short, of `[A-Za-z0-9._-]`, not `.` or `..` —
/// safe as one path component on every system and in a URL.
pub fn check_name(what: &'static str, value: &str) -> Result<(), HubError> {
    let bad = |why| Err(HubError::Name { what, value: value.to_string(), why });
    if value.is_empty() || value.len() > 128 {
        return bad("must be 1 to 128 characters");
    }
    if value == "." || value == ".." {
        return bad("is a relative path");
    }
    if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        return bad("may only hold letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// SHA-256 (hex) and size of the file at `src`, copying it to `dst` (a new
/// file, synced) on the way when given.
pub(crate) fn sha256_file(src: &Path, dst: Option<&Path>) -> Result<(String, u64), HubError> {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let mut input = std::fs::File::open(src).map_err(io_err(src))?;
    let mut out = match dst {
        Some(d) => Some(std::fs::File::create_new(d).map_err(io_err(d))?),
        None => None,
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io_err(src))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let (Some(f), Some(d)) = (out.as_mut(), dst) {
            f.write_all(&buf[..n]).map_err(io_err(d))?;
        }
        total += n as u64;
    }
    if let (Some(f), Some(d)) = (out, dst) {
        f.sync_all().map_err(io_err(d))?;
    }
    Ok((hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(), total))
}
