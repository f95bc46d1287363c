//! Checkpoints in the Hugging Face GPT-2 layout.
//!
//! A checkpoint is a directory holding `config.json` and `model.safetensors`
//! exactly as `GPT2LMHeadModel.save_pretrained` writes them (Conv1D weights
//! input-major, tied head omitted), so transformers loads it and dtrain loads
//! transformers' own, plus `optimizer.safetensors` (Adam moments per tensor,
//! step and hyper-parameters in the metadata) so training resumes exactly.
//!
//! Directories are published atomically: everything is written and synced
//! in a sibling temporary directory, which is then renamed into place.

use super::{Gpt, GptConfig, ParamLayout};
use crate::engine::Engine;
use crate::optim::{Optimizer, OptimizerConfig};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const CONFIG_FILE: &str = "config.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// DiLoCo's outer momentum (`diloco::OuterState`), one tensor per
/// parameter tensor, named `<param>.momentum_buffer` as torch's SGD state.
pub const OUTER_FILE: &str = "outer.safetensors";
/// Largest `config.json` read (real ones are about 1 KB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid safetensors file: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },
    #[error("{path}: tensor {name}: {msg}")]
    Tensor { path: PathBuf, name: String, msg: String },
    #[error("{path}: checkpoint is missing tensor {name}")]
    Missing { path: PathBuf, name: String },
    #[error(transparent)]
    Model(#[from] super::ModelError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// transformers' `config.json` for a GPT-2 model.
pub fn hf_config_json(cfg: &GptConfig) -> serde_json::Value {
    serde_json::json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_ctx": cfg.max_seq_len,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": null,
        "activation_function": "gelu_new",
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": true,
        "scale_attn_by_inverse_layer_idx": false,
        "reorder_and_upcast_attn": false,
        "tie_word_embeddings": true,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "float32",
    })
}

/// Reads a GPT-2 `config.json`, refusing variants dtrain does not compute.
pub fn read_config(path: &Path) -> Result<GptConfig, CheckpointError> {
    let bad = |msg: String| CheckpointError::Config { path: path.to_path_buf(), msg };
    let len = fs::metadata(path).map_err(io_err(path))?.len();
    if len > MAX_CONFIG_BYTES {
        return Err(bad(format!("{len} bytes is too large for a config file")));
    }
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let int = |key: &str| -> Result<usize, CheckpointError> {
        v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize).ok_or_else(|| bad(format!("missing or non-integer \"{key}\"")))
    };
    if let Some(mt) = v.get("model_type").and_then(|x| x.as_str())
        && mt != "gpt2"
    {
        return Err(bad(format!("model_type \"{mt}\" is not gpt2")));
    }
    let cfg = GptConfig {
        vocab_size: int("vocab_size")?,
        max_seq_len: int("n_positions").or_else(|_| int("n_ctx"))?,
        n_layer: int("n_layer")?,
        n_head: int("n_head")?,
        n_embd: int("n_embd")?,
    };
    cfg.validate().map_err(&bad)?;
    if let Some(act) = v.get("activation_function").and_then(|x| x.as_str())
        && !matches!(act, "gelu_new" | "gelu_pytorch_tanh")
    {
        return Err(bad(format!("activation_function \"{act}\" is not supported (dtrain computes the tanh GELU)")));
    }
    if let Some(inner) = v.get("n_inner").and_then(|x| x.as_u64())
        && inner as usize != 4 * cfg.n_embd
    {
        return Err(bad(format!("n_inner {inner} is not 4 × n_embd")));
    }
    if let Some(eps) = v.get("layer_norm_epsilon").and_then(|x| x.as_f64())
        && (eps - 1e-5).abs() > 1e-12
    {
        return Err(bad(format!("layer_norm_epsilon {eps} is not 1e-5")));
    }
    for flag in ["scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"] {
        if v.get(flag).and_then(|x| x.as_bool()) == Some(true) {
            return Err(bad(format!("\"{flag}\": true is not supported")));
        }
    }
    if v.get("tie_word_embeddings").and_then(|x| x.as_bool()) == Some(false) {
        return Err(bad("untied output head is not supported".into()));
    }
    Ok(cfg)
}

/// Bytes of an `f32` slice (checkpoints are little-endian, as is every target).
fn as_bytes(x: &[f32]) -> &[u8] {
    const _: () = assert!(cfg!(target_endian = "little"));
    // SAFETY: f32 has no padding and any byte pattern is a valid u8.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), std::mem::size_of_val(x)) }
}

/// Writes a safetensors file of named `(shape, data)` tensors and syncs it.
fn write_safetensors(path: &Path, tensors: Vec<(String, Vec<usize>, &[f32])>, meta: HashMap<String, String>) -> Result<(), CheckpointError> {
    let views: Vec<(String, TensorView)> = tensors
        .into_iter()
        .map(|(name, shape, data)| (name, TensorView::new(Dtype::F32, shape, as_bytes(data)).expect("shape matches data")))
        .collect();
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| CheckpointError::Format { path: path.into(), msg: e.to_string() })?;
    fs::File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut f = fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io_err(path))
}

/// Writes a complete checkpoint directory at `dir` atomically. `extra` files
/// (name, bytes) are written alongside, e.g. the trainer's state.
pub fn save<E: Engine>(dir: &Path, model: &Gpt<E>, opt: Option<&Optimizer<E>>, extra: &[(&str, Vec<u8>)]) -> Result<(), CheckpointError> {
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io_err(parent))?;
    let name = dir.file_name().ok_or_else(|| CheckpointError::Config { path: dir.into(), msg: "not a directory name".into() })?;
    let tmp = parent.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    fs::create_dir(&tmp).map_err(io_err(&tmp))?;

    let config = serde_json::to_vec_pretty(&hf_config_json(&model.config)).expect("JSON value serialises");
    write_file(&tmp.join(CONFIG_FILE), &config)?;
    let params = model.read_params();
    let tensors = model.layout.tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), &params[t.offset..t.offset + t.numel()])).collect();
    write_safetensors(&tmp.join(MODEL_FILE), tensors, HashMap::from([("format".into(), "pt".into())]))?;
    if let Some(opt) = opt {
        let (m, v) = opt.read_state(model);
        let mut tensors = Vec::new();
        for t in &model.layout.tensors {
            tensors.push((format!("{}.exp_avg", t.name), t.shape.clone(), &m[t.offset..t.offset + t.numel()]));
            tensors.push((format!("{}.exp_avg_sq", t.name), t.shape.clone(), &v[t.offset..t.offset + t.numel()]));
        }
        let c = &opt.config;
        let meta = HashMap::from([
            ("format".to_string(), "dtrain-optimizer".to_string()),
            ("step".into(), opt.step.to_string()),
            ("config".into(), serde_json::to_string(c).expect("serialisable")),
        ]);
        write_safetensors(&tmp.join(OPTIMIZER_FILE), tensors, meta)?;
    }
    for (file, bytes) in extra {
        write_file(&tmp.join(file), bytes)?;
    }
    fs::File::open(&tmp).and_then(|d| d.sync_all()).map_err(io_err(&tmp))?;
    // Swap into place: an existing checkpoint is moved aside first and removed last.
    let old = parent.join(format!(".{}.old-{}", name.to_string_lossy(), std::process::id()));
    let had_old = dir.exists();
    if had_old {
        fs::rename(dir, &old).map_err(io_err(dir))?;
    }
    fs::rename(&tmp, dir).map_err(io_err(dir))?;
    if had_old {
        fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    fs::File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent))
}

/// A memory-mapped safetensors file.
struct Mapped {
    path: PathBuf,
    map: memmap2::Mmap,
}

impl Mapped {
    fn open(path: &Path) -> Result<Mapped, CheckpointError> {
        let f = fs::File::open(path).map_err(io_err(path))?;
        // SAFETY: read-only map; checkpoints are replaced by rename, never rewritten in place.
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io_err(path))?;
        Ok(Mapped { path: path.into(), map })
    }
    fn parse(&self) -> Result<SafeTensors<'_>, CheckpointError> {
        SafeTensors::deserialize(&self.map).map_err(|e| CheckpointError::Format { path: self.path.clone(), msg: e.to_string() })
    }
}

/// Converts a tensor to f32 into `dst` after checking its shape.
fn copy_tensor(path: &Path, name: &str, view: &TensorView, shape: &[usize], dst: &mut [f32]) -> Result<(), CheckpointError> {
    let err = |msg: String| CheckpointError::Tensor { path: path.into(), name: name.into(), msg };
    if view.shape() != shape {
        return Err(err(format!("shape {:?}, expected {:?}", view.shape(), shape)));
    }
    let data = view.data();
    match view.dtype() {
        Dtype::F32 => dst.iter_mut().zip(data.chunks_exact(4)).for_each(|(d, b)| *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::F16 => dst.iter_mut().zip(data.chunks_exact(2)).for_each(|(d, b)| *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::BF16 => dst.iter_mut().zip(data.chunks_exact(2)).for_each(|(d, b)| *d = half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        other => {
            return Err(err(format!("dtype {other:?} is not supported (F32, F16 or BF16)")));
        }
    }
    if let Some(i) = dst.iter().position(|x| !x.is_finite()) {
        return Err(err(format!("non-finite value at element {i}")));
    }
    Ok(())
}

/// transformers' names with or without the `transformer.` prefix (GPT2Model
/// vs GPT2LMHeadModel); buffers and the tied head are skipped.
fn canonical_name(name: &str) -> Option<String> {
    if name == "lm_head.weight" || name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
        return None;
    }
    Some(if name.starts_with("transformer.") { name.to_string() } else { format!("transformer.{name}") })
}

/// Reads `model.safetensors` into a host copy of the parameter arena.
fn read_params(path: &Path, layout: &ParamLayout) -> Result<Vec<f32>, CheckpointError> {
    let file = Mapped::open(path)?;
    let st = file.parse()?;
    let mut host = vec![0f32; layout.total];
    let mut seen = vec![false; layout.tensors.len()];
    for (name, view) in st.iter() {
        let Some(canon) = canonical_name(name) else {
            continue;
        };
        let Some(i) = layout.tensors.iter().position(|t| t.name == canon) else {
            return Err(CheckpointError::Tensor { path: path.into(), name: name.into(), msg: "not a GPT-2 parameter".into() });
        };
        if std::mem::replace(&mut seen[i], true) {
            return Err(CheckpointError::Tensor { path: path.into(), name: name.into(), msg: "appears twice".into() });
        }
        let t = &layout.tensors[i];
        copy_tensor(path, name, &view, &t.shape, &mut host[t.offset..t.offset + t.numel()])?;
    }
    if let Some(i) = seen.iter().position(|s| !s) {
        return Err(CheckpointError::Missing { path: path.into(), name: layout.tensors[i].name.clone() });
    }
    Ok(host)
}

/// Loads a model from a checkpoint directory.
pub fn load_model<E: Engine>(dir: &Path, engine: E) -> Result<Gpt<E>, CheckpointError> {
    let config = read_config(&dir.join(CONFIG_FILE))?;
    let mut model = Gpt::new(engine, config)?;
    let host = read_params(&dir.join(MODEL_FILE), &model.layout)?;
    model.write_params(&host);
    Ok(model)
}

/// Loads parameters from a checkpoint into an existing model of the same shape.
pub fn load_params_into<E: Engine>(dir: &Path, model: &mut Gpt<E>) -> Result<(), CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    let config = read_config(&path)?;
    if config != model.config {
        return Err(CheckpointError::Config { path, msg: format!("checkpoint is {config:?}, model is {:?}", model.config) });
    }
    let host = read_params(&dir.join(MODEL_FILE), &model.layout)?;
    model.write_params(&host);
    Ok(())
}

/// Loads the optimizer state saved with a checkpoint.
pub fn load_optimizer<E: Engine>(dir: &Path, model: &Gpt<E>) -> Result<Optimizer<E>, CheckpointError> {
    let path = dir.join(OPTIMIZER_FILE);
    let file = Mapped::open(&path)?;
    let st = file.parse()?;
    let bad = |msg: String| CheckpointError::Config { path: path.clone(), msg };
    let (_, meta) = SafeTensors::read_metadata(&file.map).map_err(|e| bad(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let step: u64 = meta.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| bad("metadata has no valid \"step\"".into()))?;
    let config: OptimizerConfig =
        meta.get("config").and_then(|s| serde_json::from_str(s).ok()).ok_or_else(|| bad("metadata has no valid \"config\"".into()))?;
    let mut opt = Optimizer::new(model, config).map_err(super::ModelError::from)?;
    let (mut m, mut v) = (vec![0f32; model.layout.total], vec![0f32; model.layout.total]);
    for t in &model.layout.tensors {
        for (suffix, dst) in [("exp_avg", &mut m), ("exp_avg_sq", &mut v)] {
            let name = format!("{}.{suffix}", t.name);
            let view = st.tensor(&name).map_err(|_| CheckpointError::Missing { path: path.clone(), name: name.clone() })?;
            copy_tensor(&path, &name, &view, &t.shape, &mut dst[t.offset..t.offset + t.numel()])?;
        }
    }
    if st.len() != 2 * model.layout.tensors.len() {
        return Err(bad(format!("{} tensors, expected {}", st.len(), 2 * model.layout.tensors.len())));
    }
    opt.write_state(model, &m, &v, step);
    Ok(opt)
}

/// Whether `dir` holds an optimizer state.
pub fn has_optimizer(dir: &Path) -> bool {
    dir.join(OPTIMIZER_FILE).is_file()
}

/// `outer.safetensors`' bytes for `state` (for `save`'s `extra` files).
pub fn outer_bytes(layout: &ParamLayout, state: &crate::diloco::OuterState) -> Vec<u8> {
    let zeros;
    let u = if state.momentum.is_empty() {
        zeros = vec![0f32; layout.total];
        &zeros
    } else {
        &state.momentum
    };
    assert_eq!(u.len(), layout.total, "the momentum is laid out like the parameters");
    let views: Vec<(String, TensorView)> = layout
        .tensors
        .iter()
        .map(|t| {
            let view = TensorView::new(Dtype::F32, t.shape.clone(), as_bytes(&u[t.offset..t.offset + t.numel()])).expect("shape matches data");
            (format!("{}.momentum_buffer", t.name), view)
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "dtrain-outer".to_string()), ("steps".to_string(), state.steps.to_string())]);
    safetensors::serialize(views, Some(meta)).expect("tensors serialise")
}

/// The outer momentum published with a checkpoint, if it holds one.
pub fn load_outer(dir: &Path, layout: &ParamLayout) -> Result<Option<crate::diloco::OuterState>, CheckpointError> {
    let path = dir.join(OUTER_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let file = Mapped::open(&path)?;
    let st = file.parse()?;
    let bad = |msg: String| CheckpointError::Config { path: path.clone(), msg };
    let (_, meta) = SafeTensors::read_metadata(&file.map).map_err(|e| bad(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let steps: u64 = meta.get("steps").and_then(|s| s.parse().ok()).ok_or_else(|| bad("metadata has no valid \"steps\"".into()))?;
    if st.len() != layout.tensors.len() {
        return Err(bad(format!("{} tensors, expected {}", st.len(), layout.tensors.len())));
    }
    let mut momentum = vec![0f32; layout.total];
    for t in &layout.tensors {
        let name = format!("{}.momentum_buffer", t.name);
        let view = st.tensor(&name).map_err(|_| CheckpointError::Missing { path: path.clone(), name: name.clone() })?;
        copy_tensor(&path, &name, &view, &t.shape, &mut momentum[t.offset..t.offset + t.numel()])?;
    }
    Ok(Some(crate::diloco::OuterState { momentum, steps }))
}
