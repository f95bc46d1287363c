//! A DiLoCo miner's state at an inner step — weights, AdamW moments, the
//! optimizer's step count — as the bytes a validator downloads to replay
//! the steps after it (`docs/SECURITY.md`, DiLoCo).
//!
//! The miner commits to each snapshot's SHA-256 in its Train answer, before
//! the validator picks which one it will fetch, so the bytes it serves
//! later cannot be chosen to suit the pick. Layout (little-endian):
//! `DLSN`, version 1, the inner step k (u64), the optimizer's step (u64),
//! the element count n (u64), then θ, m and v, n f32 each.

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"DLSN";
const VERSION: u32 = 1;
const HEADER: usize = 4 + 4 + 8 + 8 + 8;

/// The `State` request's name for snapshot `i` of the current epoch.
pub const STATE_PREFIX: &str = "diloco-snapshot:";
/// The `State` request's name for a sparse contribution a miner committed
/// to (its encoding in the all-reduce's codec, by the same digest).
pub const CONTRIBUTION_PREFIX: &str = "diloco-contribution:";

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The inner step it was taken before (0 = the epoch's start, θₑ).
    pub step: u64,
    /// The AdamW step count (its bias correction).
    pub opt_step: u64,
    pub params: Vec<f32>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

fn f32s(out: &mut Vec<u8>, x: &[f32]) {
    for v in x {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

impl Snapshot {
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.params.len();
        assert!(self.m.len() == n && self.v.len() == n);
        let mut out = Vec::with_capacity(HEADER + 12 * n);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.step.to_le_bytes());
        out.extend_from_slice(&self.opt_step.to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        f32s(&mut out, &self.params);
        f32s(&mut out, &self.m);
        f32s(&mut out, &self.v);
        out
    }

    /// Parses bytes from a peer: exactly `n` elements each (the model's),
    /// every value finite.
    pub fn from_bytes(b: &[u8], n: usize) -> Result<Snapshot, String> {
        if b.len() != HEADER + 12 * n {
            return Err(format!("a snapshot of {} bytes, expected {} for {n} weights", b.len(), HEADER + 12 * n));
        }
        if &b[..4] != MAGIC || u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")) != VERSION {
            return Err("not a version-1 DiLoCo snapshot".into());
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        if u64_at(24) != n as u64 {
            return Err(format!("a snapshot of {} weights, the model has {n}", u64_at(24)));
        }
        let read = |part: usize| -> Result<Vec<f32>, String> {
            let bytes = &b[HEADER + 4 * n * part..HEADER + 4 * n * (part + 1)];
            let x: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
            match x.iter().position(|v| !v.is_finite()) {
                Some(i) => Err(format!("a non-finite value at element {i} of part {part}")),
                None => Ok(x),
            }
        };
        Ok(Snapshot { step: u64_at(8), opt_step: u64_at(16), params: read(0)?, m: read(1)?, v: read(2)? })
    }
}

/// The commitment to a snapshot's bytes.
pub fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Where a miner keeps what a validator may still fetch (snapshots, a
/// sparse contribution) until the next all-reduce: in memory, or — a
/// directory given, as a node's state directory gives it — in files, so
/// that an epoch's H/S snapshots of 3× the model cost disk, not memory
/// (12 GB for GPT-2 124M at S = H/8). A kept file is removed when the
/// last handle on it goes.
#[derive(Debug, Clone, Default)]
pub struct SnapshotStore {
    dir: Option<std::path::PathBuf>,
}

/// One kept item (cheap to clone).
#[derive(Debug, Clone)]
pub enum Kept {
    Memory(std::sync::Arc<Vec<u8>>),
    File(std::sync::Arc<KeptFile>),
}

/// A kept file; removed on drop.
#[derive(Debug)]
pub struct KeptFile(std::path::PathBuf);

impl Drop for KeptFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Kept {
    /// The kept bytes (read back from disk for a file).
    pub fn bytes(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Kept::Memory(b) => Ok(b.as_ref().clone()),
            Kept::File(f) => std::fs::read(&f.0),
        }
    }
}

impl SnapshotStore {
    /// Keeps everything in memory.
    pub fn memory() -> SnapshotStore {
        SnapshotStore { dir: None }
    }

    /// Keeps everything in files under `dir`, emptied first: what an
    /// earlier run left there is of weights nobody will replay.
    pub fn in_dir(dir: &std::path::Path) -> std::io::Result<SnapshotStore> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        std::fs::create_dir_all(dir)?;
        Ok(SnapshotStore { dir: Some(dir.to_path_buf()) })
    }

    /// Keeps `bytes` under their digest.
    pub fn keep(&self, bytes: Vec<u8>) -> std::io::Result<(String, Kept)> {
        let d = digest(&bytes);
        let Some(dir) = &self.dir else { return Ok((d, Kept::Memory(std::sync::Arc::new(bytes)))) };
        // A name of its own even for bytes kept twice (two queries' first
        // snapshots may be the same): each file goes with its own handle.
        static KEPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = dir.join(format!("{d}-{}", KEPT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        let kept = KeptFile(path);
        std::fs::write(&kept.0, &bytes)?;
        Ok((d, Kept::File(std::sync::Arc::new(kept))))
    }
}

/// Snapshots of an epoch of `steps` inner steps, one every `every`: their
/// steps (0, every, 2·every, … below `steps`).
pub fn snapshot_steps(steps: usize, every: usize) -> Vec<usize> {
    (0..steps).step_by(every.max(1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_round_trip_and_refuse_what_is_not_one() {
        let s = Snapshot { step: 10, opt_step: 37, params: vec![1.0, -2.0, 0.5], m: vec![0.1, 0.2, 0.3], v: vec![1e-8, 2e-8, 0.0] };
        let b = s.to_bytes();
        assert_eq!(Snapshot::from_bytes(&b, 3).unwrap(), s);
        assert!(Snapshot::from_bytes(&b, 4).is_err(), "another model's size");
        assert!(Snapshot::from_bytes(&b[..b.len() - 1], 3).is_err(), "truncated");
        let mut bad = b.clone();
        bad[0] = b'X';
        assert!(Snapshot::from_bytes(&bad, 3).is_err(), "magic");
        let mut nan = b.clone();
        let at = HEADER + 4;
        nan[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Snapshot::from_bytes(&nan, 3).is_err(), "non-finite");
        assert_ne!(digest(&b), digest(&nan));
        assert_eq!(digest(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(snapshot_steps(50, 10), vec![0, 10, 20, 30, 40]);
        assert_eq!(snapshot_steps(3, 10), vec![0]);
    }

    #[test]
    fn kept_files_hold_the_bytes_under_their_digest_and_go_with_the_last_handle() {
        let dir = std::env::temp_dir().join(format!("dtrain-snapshots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("stale"), b"old").unwrap();
        let store = SnapshotStore::in_dir(&dir).unwrap();
        assert!(!dir.join("stale").exists(), "an earlier run's files are cleared");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 31) as u8).collect();
        let (d, kept) = store.keep(bytes.clone()).unwrap();
        assert_eq!(d, digest(&bytes));
        assert_eq!(kept.bytes().unwrap(), bytes);
        let Kept::File(f) = &kept else { panic!("kept in memory") };
        let path = f.0.clone();
        assert!(path.starts_with(&dir) && path.exists());
        // The same bytes again: a file of their own.
        let (_, again) = store.keep(bytes.clone()).unwrap();
        drop(again);
        assert!(path.exists(), "the first copy stays with its handle");
        let other = kept.clone();
        drop(kept);
        assert!(path.exists(), "a handle is left");
        drop(other);
        assert!(!path.exists(), "removed with the last handle");
        let (m, in_memory) = SnapshotStore::memory().keep(bytes.clone()).unwrap();
        assert_eq!((m, in_memory.bytes().unwrap()), (d, bytes));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
