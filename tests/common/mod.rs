//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod hf_server;
pub mod network;
pub mod servers;
pub mod testnet;

use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2_tiny")
}

/// The PyTorch reference tensors (see tests/fixtures/make_gpt2_fixtures.py).
pub struct Reference {
    bytes: Vec<u8>,
    pub json: serde_json::Value,
}

impl Reference {
    pub fn load() -> Reference {
        let dir = fixture_dir();
        let bytes = std::fs::read(dir.join("reference.safetensors")).expect("fixture present");
        let json = serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap()).unwrap();
        Reference { bytes, json }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let v = st.tensor(name).unwrap_or_else(|_| panic!("fixture lacks {name}"));
        assert_eq!(v.dtype(), Dtype::F32);
        v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    /// Reference batches: `[steps][B][T+1]` token ids.
    pub fn batches(&self) -> (Vec<u32>, Vec<usize>) {
        let st = self.st();
        let v = st.tensor("batches").unwrap();
        assert_eq!(v.dtype(), Dtype::I32);
        (v.data().chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().unwrap()) as u32).collect(), v.shape().to_vec())
    }

    pub fn num(&self, key: &str) -> f64 {
        self.json[key].as_f64().unwrap()
    }

    pub fn list(&self, key: &str) -> Vec<f64> {
        self.json[key].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }
}

/// Inputs and targets of batch `k` (targets = inputs shifted by one).
pub fn split_batch(all: &[u32], shape: &[usize], k: usize) -> (Vec<u32>, Vec<u32>) {
    let (b, t1) = (shape[1], shape[2]);
    let batch = &all[k * b * t1..(k + 1) * b * t1];
    let inputs = batch.chunks(t1).flat_map(|r| r[..t1 - 1].iter().copied()).collect();
    let targets = batch.chunks(t1).flat_map(|r| r[1..].iter().copied()).collect();
    (inputs, targets)
}

/// max |a − b| / max |b|: an error relative to the tensor's scale.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f64, |m, &x| m.max(x.abs() as f64)).max(1e-12);
    a.iter().zip(b).fold(0f64, |m, (&x, &y)| m.max((x as f64 - y as f64).abs())) / scale
}

/// A fresh, empty directory under the system's temp dir for one test.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dtrain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
