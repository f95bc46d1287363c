//! `dtrain train`: learning, exact resume, and clear errors on bad data.

use dtrain::data::shard;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::GptConfig;
use dtrain::optim::OptimizerKind;
use dtrain::rng::Rng;
use dtrain::train::{self, Plan, RunOptions, Start};
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dtrain-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A token shard the tiny model can learn: a fixed random "sentence" of 37
/// tokens repeated with a little noise.
fn learnable_shard(dir: &Path) -> PathBuf {
    let mut rng = Rng::new(3);
    let sentence: Vec<u32> = (0..37).map(|_| rng.below(300) as u32).collect();
    let tokens: Vec<u32> = (0..20_000).map(|i| if rng.below(20) == 0 { rng.below(300) as u32 } else { sentence[i % 37] }).collect();
    let path = dir.join("data.bin");
    shard::write(&path, &tokens).unwrap();
    path
}

fn plan(optimizer: OptimizerKind, steps: u64) -> Plan {
    Plan { batch: 4, seq_len: 32, grad_accum: 2, steps, lr: 1e-2, min_lr: 1e-3, warmup: 2, clip: 1.0, optimizer, recompute: false }
}

fn fresh() -> Start {
    Start::Fresh { config: GptConfig::preset("tiny").unwrap(), seed: 1 }
}

fn opts(data: &Path, out: &Path, every: u64) -> RunOptions {
    RunOptions { data: data.into(), out: out.into(), checkpoint_every: every, progress: false }
}

#[test]
fn the_tiny_model_learns_a_repeated_sentence() {
    let dir = tmpdir("learn");
    let data = learnable_shard(&dir);
    for kind in [OptimizerKind::Adamw, OptimizerKind::Lamb] {
        // LAMB moves each tensor by about lr·‖w‖ per step, so it wants a larger rate.
        let lr = if kind == OptimizerKind::Lamb { 5e-2 } else { 1e-2 };
        let p = Plan { lr, min_lr: lr / 10.0, ..plan(kind, 60) };
        let s = train::run(CpuEngine::new(), fresh(), p, &opts(&data, &dir.join(format!("{kind:?}")), 0)).unwrap();
        let (first, last) = (s.losses[0], *s.losses.last().unwrap());
        assert!(first > 5.0, "{kind:?}: an untrained model starts near ln(300) = 5.7, got {first}");
        assert!(last < 2.5, "{kind:?}: loss only fell from {first} to {last}");
    }
}

#[test]
fn resuming_reproduces_the_uninterrupted_run_bit_for_bit() {
    let dir = tmpdir("resume");
    let data = learnable_shard(&dir);
    let whole = train::run(CpuEngine::new(), fresh(), plan(OptimizerKind::Adamw, 8), &opts(&data, &dir.join("a"), 4)).unwrap();
    assert_eq!(whole.losses.len(), 8);
    // Continue from the step-4 checkpoint in a new run directory.
    let ck = dir.join("a/checkpoints/step_000004");
    let resumed = train::run(CpuEngine::new(), Start::Resume(ck), plan(OptimizerKind::Lamb, 99), &opts(&data, &dir.join("b"), 0)).unwrap();
    assert_eq!(resumed.first_step, 4);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&resumed.losses), bits(&whole.losses[4..]), "the checkpoint's plan (AdamW, 8 steps) must continue");
    let end_a = std::fs::read(dir.join("a/checkpoints/step_000008/model.safetensors")).unwrap();
    let end_b = std::fs::read(dir.join("b/checkpoints/step_000008/model.safetensors")).unwrap();
    assert!(end_a == end_b, "final weights differ");
    // A run directory resumes from its `latest`.
    assert_eq!(std::fs::read_to_string(dir.join("a/latest")).unwrap(), "step_000008");
    let again = train::run(CpuEngine::new(), Start::Resume(dir.join("a")), plan(OptimizerKind::Adamw, 8), &opts(&data, &dir.join("a"), 0)).unwrap();
    assert!(again.losses.is_empty());
    // metrics.jsonl holds one parseable line per step.
    let metrics = std::fs::read_to_string(dir.join("a/metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 8);
    assert_eq!(lines[7]["step"], 8);
    assert_eq!(lines[7]["loss"].as_f64().unwrap() as f32, whole.losses[7]);
}

fn run_err(data: &Path, name: &str) -> String {
    let out = tmpdir(name);
    match train::run(CpuEngine::new(), fresh(), plan(OptimizerKind::Adamw, 2), &opts(data, &out, 0)) {
        Ok(_) => panic!("{} trained", data.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_data_gives_clear_errors() {
    let dir = tmpdir("bad");
    assert!(run_err(&dir.join("missing.txt"), "e1").contains("missing.txt"));
    std::fs::write(dir.join("empty.txt"), "  \n").unwrap();
    assert!(run_err(&dir.join("empty.txt"), "e2").contains("empty"));
    std::fs::write(dir.join("latin1.txt"), [0x63, 0x61, 0x66, 0xe9]).unwrap();
    assert!(run_err(&dir.join("latin1.txt"), "e3").contains("UTF-8"));
    std::fs::write(dir.join("short.txt"), "Too short for a batch.").unwrap();
    assert!(run_err(&dir.join("short.txt"), "e4").contains("needs at least 129"));
    // GPT-2 token ids do not fit the tiny model's 300-token vocabulary.
    std::fs::write(dir.join("text.txt"), "All the world's a stage, and all the men and women merely players. ".repeat(40)).unwrap();
    assert!(run_err(&dir.join("text.txt"), "e5").contains("outside the vocabulary"));
    // Damaged shards.
    shard::write(&dir.join("ok.bin"), &[1, 2, 3]).unwrap();
    let good = std::fs::read(dir.join("ok.bin")).unwrap();
    std::fs::write(dir.join("trunc.bin"), &good[..good.len() - 1]).unwrap();
    assert!(run_err(&dir.join("trunc.bin"), "e6").contains("header promises 3 tokens"));
    let mut magic = good.clone();
    magic[0] ^= 1;
    std::fs::write(dir.join("magic.bin"), &magic).unwrap();
    assert!(run_err(&dir.join("magic.bin"), "e7").contains("not an llm.c token shard"));
    std::fs::write(dir.join("tiny.bin"), &good[..10]).unwrap();
    assert!(run_err(&dir.join("tiny.bin"), "e8").contains("shorter than"));
    std::fs::create_dir_all(dir.join("nobins")).unwrap();
    assert!(run_err(&dir.join("nobins"), "e9").contains("neither .bin token shards nor .parquet"));
}

#[test]
fn the_cli_trains_on_the_bundled_text() {
    let dir = tmpdir("cli");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["--threads", "2", "train", "--data"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare.txt"))
        .args(["--model", "small", "--steps", "2", "--batch", "2", "--seq", "32", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("trained steps 1..2"), "{stdout}");
    assert_eq!(std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap().lines().count(), 2);
    assert!(dir.join("checkpoints/step_000002/model.safetensors").is_file());

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain")).args(["train", "--data", "/nonexistent/file.txt"]).output().unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("error: /nonexistent/file.txt"), "{err}");
}

#[test]
fn ctrl_c_saves_a_checkpoint_of_every_finished_step() {
    let dir = tmpdir("interrupt");
    let data = learnable_shard(&dir);
    let out = dir.join("run");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["--threads", "1", "train", "--model", "tiny", "--batch", "2", "--seq", "16", "--steps", "1000000", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) < 3 {
        assert!(start.elapsed().as_secs() < 120, "no training progress");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let result = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "{stdout}");
    assert!(stdout.contains("interrupted after"), "{stdout}");
    let steps = std::fs::read_to_string(&metrics).unwrap().lines().count();
    let latest = std::fs::read_to_string(out.join("latest")).unwrap();
    assert_eq!(latest, format!("step_{steps:06}"), "the checkpoint holds every step that was logged");
    let ck = train::resolve_checkpoint(&out).unwrap();
    let model = dtrain::model::checkpoint::load_model(&ck, CpuEngine::new()).unwrap();
    assert_eq!(dtrain::model::checkpoint::load_optimizer(&ck, &model).unwrap().step, steps as u64);
}

/// Data parallel training (`dtrain::parallel`): two replicas, each taking
/// one of a step's two micro-batches, their gradients summed on the host —
/// the same training as one device accumulating both, up to the order of
/// the additions (one device adds the second micro-batch's products into
/// the first's as it goes): losses and weights agree to float rounding.
/// A step that two replicas cannot share evenly is refused.
#[test]
fn two_replicas_train_like_one_device() {
    use dtrain::model::checkpoint;
    use dtrain::parallel::HostSum;
    let dir = tmpdir("replicas");
    let data = learnable_shard(&dir);
    let one = train::run(CpuEngine::new(), fresh(), plan(OptimizerKind::Adamw, 6), &opts(&data, &dir.join("one"), 0)).unwrap();
    let two = train::run_replicated(
        vec![CpuEngine::new(), CpuEngine::new()],
        Box::new(HostSum),
        fresh(),
        plan(OptimizerKind::Adamw, 6),
        &opts(&data, &dir.join("two"), 0),
    )
    .unwrap();
    assert_eq!(two.losses.len(), 6);
    for (a, b) in one.losses.iter().zip(&two.losses) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "losses {:?} vs {:?}", one.losses, two.losses);
    }
    // The gradient norms (before clipping) say the summed gradient is the
    // mean over both micro-batches, not a sum of means.
    let norms = |d: &str| -> Vec<f64> {
        std::fs::read_to_string(dir.join(d).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["grad_norm"].as_f64().unwrap())
            .collect()
    };
    for (a, b) in norms("one").iter().zip(norms("two")) {
        assert!((a - b).abs() <= 1e-5 * a, "gradient norms {a} vs {b}");
    }
    let weights = |d: &str| checkpoint::load_model(&dir.join(d).join("checkpoints/step_000006"), CpuEngine::new()).unwrap().read_params();
    let (a, b) = (weights("one"), weights("two"));
    let diff = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt();
    let norm = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    assert!(diff <= 1e-5 * norm, "weights differ by {:.3e} relative", diff / norm);
    let uneven = Plan { grad_accum: 3, ..plan(OptimizerKind::Adamw, 1) };
    let e = train::run_replicated(vec![CpuEngine::new(), CpuEngine::new()], Box::new(HostSum), fresh(), uneven, &opts(&data, &dir.join("three"), 0))
        .unwrap_err();
    assert!(e.to_string().contains("multiple of the 2 replicas"), "{e}");
}

/// The replicas stay identical to each other through steps (the step is
/// taken by each from the same summed gradients).
#[test]
fn replicas_stay_identical() {
    use dtrain::model::Gpt;
    use dtrain::optim::{Optimizer, OptimizerConfig};
    use dtrain::parallel::{HostSum, Replicas};
    let cfg = GptConfig::preset("tiny").unwrap();
    let (mut models, mut opts) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut m = Gpt::new(CpuEngine::new(), cfg).unwrap();
        m.init_random(9);
        opts.push(Optimizer::new(&m, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap());
        models.push(m);
    }
    let mut r = Replicas::new(models, opts, Box::new(HostSum));
    let mut rng = Rng::new(4);
    for _ in 0..3 {
        let batches: Vec<(Vec<u32>, Vec<u32>)> = (0..6)
            .map(|_| {
                let t: Vec<u32> = (0..2 * 16 + 1).map(|_| rng.below(300) as u32).collect();
                (t[..32].to_vec(), t[1..].to_vec())
            })
            .collect();
        let (loss, norm) = r.step(&batches, 2, 16, 1e-3, 1.0).unwrap();
        assert!(loss.is_finite() && norm > 0.0);
    }
    let p0 = r.models[0].read_params();
    assert!(r.models.iter().all(|m| m.read_params() == p0), "replicas diverged");
    // A miner's hand-over: each replica's share accumulated, summed into
    // replica 0 alone (the others reset, so nothing is counted twice).
    let t: Vec<u32> = (0..3 * 33).map(|_| rng.below(300) as u32).collect();
    r.map_shared(3, |m, ks| {
        m.zero_grads();
        for k in ks {
            m.forward_backward(&t[33 * k..33 * k + 32], &t[33 * k + 1..33 * k + 33], 1, 32, 1.0).unwrap();
        }
    });
    let each: Vec<Vec<f32>> = r.models.iter().map(|m| m.read_grads()).collect();
    r.sum_into_first().unwrap();
    let want: Vec<f32> = (0..each[0].len()).map(|i| each[0][i] + each[1][i] + each[2][i]).collect();
    assert_eq!(r.models[0].read_grads(), want);
    assert_eq!(r.models[0].grad_weight(), 3.0);
    assert!(r.models[1..].iter().all(|m| m.grad_weight() == 0.0 && m.read_grads().iter().all(|&g| g == 0.0)));
    assert_ne!(
        p0,
        {
            let mut m = Gpt::new(CpuEngine::new(), cfg).unwrap();
            m.init_random(9);
            m.read_params()
        },
        "no step was taken"
    );
}
