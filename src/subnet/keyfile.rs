//! A node's ed25519 key on disk: created on first start, readable by its
//! owner only, the 32-byte seed as 64 hex digits on one line.

use crate::allreduce::Identity;
use std::fs;
use std::io::Write;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a key file ({why})")]
    Invalid { path: String, why: String },
    #[error("{path}: readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: String, mode: u32 },
}

/// Loads the key at `path`, creating it (mode 0600, parent directories
/// 0700) if there is none.
pub fn load_or_create(path: &Path) -> Result<Identity, KeyFileError> {
    let p = path.display().to_string();
    let io = |source| KeyFileError::Io { path: p.clone(), source };
    match fs::read_to_string(path) {
        Ok(text) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyFileError::Permissions { path: p, mode });
            }
            Identity::from_seed_hex(text.trim()).map_err(|e| KeyFileError::Invalid { path: p, why: e.to_string() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
            }
            let id = Identity::generate();
            // create_new: two nodes starting at once cannot both write a key.
            let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io)?;
            writeln!(f, "{}", id.seed_hex()).and_then(|_| f.sync_all()).map_err(io)?;
            tracing::info!("created node key {} (public {})", path.display(), id.public().to_hex());
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}
