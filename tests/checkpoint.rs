//! Hugging Face checkpoints: round trips, compatibility with transformers'
//! own files, and clear errors on damaged input.

mod common;
use common::*;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::checkpoint::{self, CheckpointError};
use dtrain::model::{Gpt, GptConfig};
use dtrain::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dtrain-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny(seed: u64) -> Gpt<CpuEngine> {
    let mut m = Gpt::new(CpuEngine::new(), GptConfig::preset("tiny").unwrap()).unwrap();
    m.init_random(seed);
    m
}

fn batch(cfg: &GptConfig, b: usize, t: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rng = dtrain::rng::Rng::new(5);
    let toks: Vec<u32> = (0..b * t + 1).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    (toks[..b * t].to_vec(), toks[1..].to_vec())
}

#[test]
fn save_then_load_gives_identical_forward() {
    let dir = tmpdir("roundtrip");
    let mut a = tiny(1);
    let (x, y) = batch(&a.config, 2, 16);
    let (loss_a, logits_a) = a.forward_logits(&x, &y, 2, 16).unwrap();
    checkpoint::save(&dir.join("ck"), &a, None, &[]).unwrap();
    let mut b = checkpoint::load_model(&dir.join("ck"), CpuEngine::new()).unwrap();
    assert_eq!(a.read_params(), b.read_params());
    let (loss_b, logits_b) = b.forward_logits(&x, &y, 2, 16).unwrap();
    assert_eq!(loss_a.to_bits(), loss_b.to_bits());
    assert_eq!(logits_a, logits_b);
    // Saving over an existing checkpoint replaces it and leaves no temporary files.
    let c = tiny(2);
    checkpoint::save(&dir.join("ck"), &c, None, &[]).unwrap();
    let d = checkpoint::load_model(&dir.join("ck"), CpuEngine::new()).unwrap();
    assert_eq!(c.read_params(), d.read_params());
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(names, vec!["ck".to_string()]);
}

#[test]
fn optimizer_state_round_trips() {
    let dir = tmpdir("optstate");
    let mut m = tiny(3);
    let (x, y) = batch(&m.config, 2, 8);
    let mut opt = Optimizer::new(&m, OptimizerConfig::new(OptimizerKind::Lamb)).unwrap();
    for _ in 0..2 {
        m.zero_grads();
        m.forward_backward(&x, &y, 2, 8, 2.0).unwrap();
        m.finish_accumulation();
        opt.step(&mut m, 1e-3);
    }
    checkpoint::save(&dir.join("ck"), &m, Some(&opt), &[]).unwrap();
    let back = checkpoint::load_optimizer(&dir.join("ck"), &m).unwrap();
    assert_eq!(back.step, 2);
    assert_eq!(back.config, opt.config);
    assert_eq!(back.read_state(&m), opt.read_state(&m));
}

type Header = BTreeMap<String, (String, Vec<usize>)>;
type Meta = Option<std::collections::HashMap<String, String>>;
/// A named tensor: (name, shape, data).
type Named = (String, Vec<usize>, Vec<f32>);

/// name → (dtype, shape) of a safetensors file, plus its metadata.
fn header(path: &Path) -> (Header, Meta) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let names = st.iter().map(|(n, v)| (n.to_string(), (format!("{:?}", v.dtype()), v.shape().to_vec()))).collect();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    (names, meta.metadata().clone())
}

#[test]
fn written_files_match_what_transformers_writes() {
    let dir = tmpdir("layout");
    let m = checkpoint::load_model(&fixture_dir().join("model"), CpuEngine::new()).unwrap();
    checkpoint::save(&dir.join("ck"), &m, None, &[]).unwrap();
    let (ours, our_meta) = header(&dir.join("ck/model.safetensors"));
    let (theirs, their_meta) = header(&fixture_dir().join("model/model.safetensors"));
    assert_eq!(ours, theirs, "tensor names, dtypes and shapes differ from transformers' save_pretrained");
    assert_eq!(our_meta, their_meta);
    assert_eq!(checkpoint::read_config(&dir.join("ck/config.json")).unwrap(), m.config);
    let back = checkpoint::load_model(&dir.join("ck"), CpuEngine::new()).unwrap();
    assert_eq!(back.read_params(), m.read_params());
}

/// The full check needs PyTorch; it runs wherever `python3` can import
/// torch and transformers (scripts/check_hf_interop.sh installs them) and
/// says so when it cannot.
#[test]
fn transformers_loads_a_dtrain_checkpoint() {
    let python = std::env::var("DTRAIN_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&python).args(["-c", "import torch, transformers"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED transformers_loads_a_dtrain_checkpoint: {python} cannot import torch and transformers (run scripts/check_hf_interop.sh)");
        return;
    }
    let dir = tmpdir("hf");
    let mut m = tiny(9);
    let (x, y) = batch(&m.config, 2, 12);
    let (_, logits) = m.forward_logits(&x, &y, 2, 12).unwrap();
    checkpoint::save(&dir.join("ck"), &m, None, &[]).unwrap();
    let tokens: Vec<u8> = x.iter().flat_map(|&t| (t as i32).to_le_bytes()).collect();
    let lbytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let v = m.config.vocab_size;
    let tensors = vec![
        ("tokens", safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![2, 12], &tokens).unwrap()),
        ("logits", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 12, v], &lbytes).unwrap()),
    ];
    safetensors::serialize_to_file(tensors, None, &dir.join("expected.safetensors")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/check_hf_load.py");
    let out = std::process::Command::new(&python).arg(script).arg(dir.join("ck")).arg(dir.join("expected.safetensors")).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "transformers check failed:\n{text}");
    eprintln!("{}", text.lines().find(|l| l.contains("relative")).unwrap_or_default());
}

fn copy_fixture(name: &str) -> PathBuf {
    let dir = tmpdir(name).join("ck");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir().join("model").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path) -> String {
    match checkpoint::load_model(dir, CpuEngine::new()) {
        Ok(_) => panic!("{} loaded although damaged", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn damaged_checkpoints_give_clear_errors() {
    // Truncated weights, at several lengths (inside the header and inside the data).
    let dir = copy_fixture("truncated");
    let full = std::fs::read(dir.join("model.safetensors")).unwrap();
    for cut in [0, 5, 100, full.len() / 2, full.len() - 1] {
        std::fs::write(dir.join("model.safetensors"), &full[..cut]).unwrap();
        let e = load_err(&dir);
        assert!(e.contains("model.safetensors"), "{e}");
    }
    std::fs::write(dir.join("model.safetensors"), &full).unwrap();

    // A config that does not match the tensors.
    let cfg_path = dir.join("config.json");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(&cfg_path, original.replace("\"n_embd\": 32", "\"n_embd\": 64")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("shape"), "{e}");
    // Invalid values and invalid JSON.
    std::fs::write(&cfg_path, original.replace("\"n_head\": 2", "\"n_head\": 3")).unwrap();
    assert!(load_err(&dir).contains("multiple of n_head"));
    std::fs::write(&cfg_path, "{ not json").unwrap();
    assert!(load_err(&dir).contains("invalid JSON"));
    std::fs::write(&cfg_path, original.replace("gelu_new", "relu")).unwrap();
    assert!(load_err(&dir).contains("activation_function"));
    std::fs::write(&cfg_path, &original).unwrap();

    // A wrong-shaped, a missing, a non-finite and an unknown tensor.
    let m = checkpoint::load_model(&dir, CpuEngine::new()).unwrap();
    let params = m.read_params();
    let write_with = |edit: &dyn Fn(&mut Vec<Named>)| {
        let mut ts: Vec<Named> =
            m.layout.tensors.iter().map(|t| (t.name.clone(), t.shape.clone(), params[t.offset..t.offset + t.numel()].to_vec())).collect();
        edit(&mut ts);
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> =
            ts.into_iter().map(|(n, s, d)| (n, s, d.iter().flat_map(|v| v.to_le_bytes()).collect())).collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            bytes.iter().map(|(n, s, d)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    };
    write_with(&|ts| {
        let t = ts.iter_mut().find(|t| t.0.ends_with("h.1.mlp.c_fc.weight")).unwrap();
        t.1 = vec![t.1[1], t.1[0]];
    });
    let e = load_err(&dir);
    assert!(e.contains("h.1.mlp.c_fc.weight") && e.contains("shape"), "{e}");
    write_with(&|ts| ts.retain(|t| !t.0.ends_with("ln_f.bias")));
    assert!(load_err(&dir).contains("missing tensor transformer.ln_f.bias"));
    write_with(&|ts| ts[3].2[7] = f32::NAN);
    assert!(load_err(&dir).contains("non-finite"));
    write_with(&|ts| ts.push(("transformer.h.9.mlp.extra".into(), vec![2], vec![0.0, 1.0])));
    assert!(load_err(&dir).contains("not a GPT-2 parameter"));

    // A directory that is not a checkpoint.
    let e = load_err(&dir.join("nope"));
    assert!(e.contains("config.json"), "{e}");
    assert!(matches!(checkpoint::load_model(&dir.join("nope"), CpuEngine::new()), Err(CheckpointError::Io { .. })));
}
