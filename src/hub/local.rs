//! The embedded model hub: a directory of content-addressed revisions and
//! tags, safe against a kill at any moment.
//!
//! ```text
//! root/revisions/<id>/            the files + COMMIT.json (message, SHA-256 per file)
//! root/tags/<tag>                 the revision id
//! root/staging/                   work in progress; a dead process's is removed on open
//! ```
//!
//! A publish copies and hashes the files into `staging/`, syncs them, and
//! renames the directory to `revisions/<id>` (id = SHA-256 of the
//! manifest); only then is the tag created, by hard-linking a synced file
//! to `tags/<tag>`, which fails rather than overwrite if the tag exists. So
//! a tag always names a complete revision, a tag is never moved, and two
//! publishers racing for one tag cannot both win. Downloads verify every
//! file's hash.

use super::{HubError, ModelHub, Published, check_name, io_err, sha256_file};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

const MANIFEST: &str = "COMMIT.json";
/// Largest manifest read back (names and hashes of a few files).
const MANIFEST_MAX: u64 = 1 << 20;

pub struct LocalStore {
    root: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Manifest {
    message: String,
    /// (file name, SHA-256 hex, bytes), sorted by name.
    files: Vec<(String, String, u64)>,
}

/// Whether process `pid` exists (signal 0 probes without sending).
fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sync_dir(dir: &Path) -> Result<(), HubError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl LocalStore {
    /// Opens (creating if needed) the store at `root` and clears what an
    /// interrupted publish left in `staging/`.
    pub fn open(root: &Path) -> Result<LocalStore, HubError> {
        for sub in ["revisions", "tags"] {
            fs::create_dir_all(root.join(sub)).map_err(io_err(root))?;
        }
        let staging = root.join("staging");
        fs::create_dir_all(&staging).map_err(io_err(&staging))?;
        // Leftovers of publishes whose process is gone (named `<pid>-<nonce>`);
        // a publish still running in another process is left alone.
        for entry in fs::read_dir(&staging).map_err(io_err(&staging))? {
            let entry = entry.map_err(io_err(&staging))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
            if pid.is_none_or(|p| !process_alive(p)) {
                let path = entry.path();
                let gone = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                gone.map_err(io_err(&path))?;
            }
        }
        Ok(LocalStore { root: root.to_path_buf() })
    }

    fn tag_path(&self, tag: &str) -> Result<PathBuf, HubError> {
        check_name("tag", tag)?;
        Ok(self.root.join("tags").join(tag))
    }

    /// The revision id a tag names.
    pub fn revision_of(&self, tag: &str) -> Result<String, HubError> {
        let path = self.tag_path(tag)?;
        let id = match fs::read_to_string(&path) {
            Ok(id) => id.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(HubError::NoTag(tag.to_string())),
            Err(e) => return Err(HubError::Io { path, source: e }),
        };
        if id.len() != 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(HubError::Corrupt(format!("tag {tag} names {id:?}, not a revision id")));
        }
        Ok(id)
    }

    fn manifest(&self, id: &str) -> Result<Manifest, HubError> {
        let path = self.root.join("revisions").join(id).join(MANIFEST);
        let mut text = String::new();
        fs::File::open(&path).and_then(|f| f.take(MANIFEST_MAX).read_to_string(&mut text)).map_err(io_err(&path))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| HubError::Corrupt(format!("{}: {e}", path.display())))?;
        for (name, _, _) in &m.files {
            check_name("file name", name)?;
        }
        Ok(m)
    }

    /// The commit message of the revision tagged `tag`.
    pub fn message(&self, tag: &str) -> Result<String, HubError> {
        Ok(self.manifest(&self.revision_of(tag)?)?.message)
    }

    fn staging_dir(&self) -> PathBuf {
        let nonce: String = crate::allreduce::identity::random_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
        self.root.join("staging").join(format!("{}-{nonce}", std::process::id()))
    }
}

impl ModelHub for LocalStore {
    fn publish(&self, dir: &Path, tag: &str, message: &str) -> Result<Published, HubError> {
        let tag_path = self.tag_path(tag)?;
        if tag_path.exists() {
            return Ok(Published { tag: tag.to_string(), revision: self.revision_of(tag)?, existed: true });
        }
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let entry = entry.map_err(io_err(dir))?;
            if entry.file_type().map_err(io_err(&entry.path()))?.is_file() {
                let name = entry.file_name().to_string_lossy().into_owned();
                check_name("file name", &name)?;
                if name == MANIFEST {
                    return Err(HubError::Name { what: "file name", value: name, why: "is reserved for the store's manifest" });
                }
                names.push(name);
            }
        }
        names.sort();

        let staging = self.staging_dir();
        fs::create_dir(&staging).map_err(io_err(&staging))?;
        let mut files = Vec::new();
        for name in names {
            let (sha, len) = sha256_file(&dir.join(&name), Some(&staging.join(&name)))?;
            files.push((name, sha, len));
        }
        let manifest = serde_json::to_vec_pretty(&Manifest { message: message.to_string(), files }).expect("plain data serializes");
        let manifest_path = staging.join(MANIFEST);
        fs::write(&manifest_path, &manifest).and_then(|_| fs::File::open(&manifest_path)?.sync_all()).map_err(io_err(&manifest_path))?;
        sync_dir(&staging)?;

        let id = hex(&Sha256::digest(&manifest));
        let revision = self.root.join("revisions").join(&id);
        if revision.exists() {
            // The same files and message were published before: reuse them.
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        } else {
            fs::rename(&staging, &revision).map_err(io_err(&revision))?;
            sync_dir(&self.root.join("revisions"))?;
        }

        let pending = self.staging_dir();
        fs::write(&pending, format!("{id}\n")).and_then(|_| fs::File::open(&pending)?.sync_all()).map_err(io_err(&pending))?;
        let linked = fs::hard_link(&pending, &tag_path);
        let _ = fs::remove_file(&pending);
        match linked {
            Ok(()) => {
                sync_dir(&self.root.join("tags"))?;
                Ok(Published { tag: tag.to_string(), revision: id, existed: false })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok(Published { tag: tag.to_string(), revision: self.revision_of(tag)?, existed: true })
            }
            Err(e) => Err(HubError::Io { path: tag_path, source: e }),
        }
    }

    fn tags(&self) -> Result<Vec<String>, HubError> {
        let dir = self.root.join("tags");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let name = entry.map_err(io_err(&dir))?.file_name().to_string_lossy().into_owned();
            if check_name("tag", &name).is_ok() {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn download(&self, tag: &str, dest: &Path) -> Result<(), HubError> {
        let id = self.revision_of(tag)?;
        let manifest = self.manifest(&id)?;
        let src = self.root.join("revisions").join(&id);
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(io_err(parent))?;
        let tmp = parent.join(format!(".{}.partial", dest.file_name().map_or("download".into(), |n| n.to_string_lossy())));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;
        for (name, sha, len) in &manifest.files {
            let (got_sha, got_len) = sha256_file(&src.join(name), Some(&tmp.join(name)))?;
            if &got_sha != sha || got_len != *len {
                let _ = fs::remove_dir_all(&tmp);
                return Err(HubError::Corrupt(format!("revision {id}: {name} does not match its hash")));
            }
        }
        fs::rename(&tmp, dest).map_err(io_err(dest))
    }
}
