//! The benchmarks (`dtrain bench …`); `allreduce` has the all-reduce's.
//!
//! `dtrain bench train`: the CPU engine's training step beside its anchors,
//! all measured in one run on the same machine — the `gemm` crate's fp32
//! rate on a large square product (the physical ceiling for a step made of
//! matrix products) and PyTorch's step on the same configuration
//! (`benches/anchors/torch_cpu_train.py`). Results are ratios, because the
//! machine is shared and absolute times drift.

pub mod allreduce;
pub mod diloco;

use crate::engine::Engine;
use crate::engine::cpu::CpuEngine;
use crate::engine::cpu::matmul_gflops;
use crate::engine::cuda::device::Device;
use crate::engine::cuda::emu::Emu;
use crate::engine::cuda::gpu::Gpu;
use crate::engine::cuda::{CudaOptions, DeviceChoice, Precision};
use crate::engine::profiled::{OpProfile, Profiled};
use crate::model::{Gpt, GptConfig};
use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use crate::rng::Rng;
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone, clap::Args)]
pub struct TrainBenchArgs {
    /// Model preset (`small` or `124m` have PyTorch anchors).
    #[arg(long, default_value = "small")]
    pub model: String,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Skip the PyTorch anchor.
    #[arg(long)]
    pub no_torch: bool,
    /// Recompute activations in backward (`dtrain train --recompute`).
    #[arg(long)]
    pub recompute: bool,
    /// Also print the time of each kernel over the timed steps (a separate
    /// run after the measured one, so timing overhead does not skew it).
    #[arg(long)]
    pub profile: bool,
    /// Python interpreter with torch and transformers.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Append the results as one JSON line to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// cpu, cuda or cuda:N (the anchor is then PyTorch on the same GPU,
    /// benches/anchors/torch_gpu_train.py, in dtrain's precision: bf16
    /// autocast or fp32).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
    /// The GPU's peak dense TFLOP/s for MFU (default: by its name, bf16
    /// tensor-core peak: H100/H200 989, A100 312).
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    #[command(flatten)]
    pub cuda: CudaOptions,
}

#[derive(Debug, Clone, clap::Args)]
pub struct KernelsBenchArgs {
    /// auto (a GPU if one is found, else the CPU), cpu, cuda, cuda:N or emulated.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// Model preset (default: 124m on a GPU, small elsewhere).
    #[arg(long)]
    pub model: Option<String>,
    /// Sequences per step (default: 8 on a GPU, 2 elsewhere).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens per sequence (default: 1024 on a GPU, 64 elsewhere).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Profiled steps (after one untimed step).
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    #[command(flatten)]
    pub cuda: CudaOptions,
}

/// Per step, by kernel: time, share, achieved GB/s and TFLOP/s.
pub fn print_profile(ops: &[OpProfile], steps: usize) {
    let total: f64 = ops.iter().map(|o| o.seconds).sum();
    let steps = steps.max(1) as f64;
    println!("  per step, by kernel ({steps} steps; GB/s and TFLOP/s from each op's minimum traffic and FLOPs):");
    println!("    {:24} {:>9} {:>7} {:>7} {:>9} {:>9}", "kernel", "ms", "share", "calls", "GB/s", "TFLOP/s");
    for o in ops {
        let rate = |x: f64| if o.seconds > 0.0 { x / o.seconds } else { 0.0 };
        println!(
            "    {:24} {:9.3} {:6.1}% {:7} {:9.1} {:9.3}",
            o.name,
            o.seconds * 1e3 / steps,
            100.0 * o.seconds / total,
            (o.calls as f64 / steps).round(),
            rate(o.bytes) / 1e9,
            rate(o.flops) / 1e12
        );
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak resident memory of this process so far, in MB (Linux), else 0.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map_or(0.0, |kb| kb / 1024.0)
}

struct StepResult {
    median_s: f64,
    losses: Vec<f32>,
    peak_mb: f64,
}

/// Runs the warm-up and timed steps; `warmed` is called between the two.
fn dtrain_steps<E: Engine>(engine: E, cfg: GptConfig, a: &TrainBenchArgs, log: bool, warmed: impl Fn(&E)) -> Result<(StepResult, Gpt<E>)> {
    let mut model = Gpt::new(engine, cfg)?;
    model.set_recompute(a.recompute);
    model.init_random(0);
    let mut opt = Optimizer::new(&model, OptimizerConfig::new(OptimizerKind::Adamw))?;
    let mut rng = Rng::new(0);
    let tokens: Vec<u32> = (0..a.batch * a.seq).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let (mut times, mut losses) = (Vec::new(), Vec::new());
    for i in 0..a.warmup + a.steps {
        if i == a.warmup {
            warmed(&model.engine);
        }
        let t0 = Instant::now();
        model.zero_grads();
        // Labels = inputs, as the anchor script does.
        let loss = model.forward_backward(&tokens, &tokens, a.batch, a.seq, a.batch as f32)?;
        opt.clip_and_step(&mut model, 3e-4, 1.0);
        model.engine.synchronize();
        let dt = t0.elapsed().as_secs_f64();
        if log {
            eprintln!("dtrain step {i:2} loss {loss:.4} time {:8.1} ms", dt * 1e3);
        }
        losses.push(loss);
        if i >= a.warmup {
            times.push(dt);
        }
    }
    Ok((StepResult { median_s: median(times), losses, peak_mb: peak_rss_mb() }, model))
}

/// Runs a PyTorch anchor script (its stdout discarded) with `args` and
/// `--json FILE`; returns what it wrote there.
fn run_anchor(python: &str, script: &str, args: &[String], env: &[(&str, String)]) -> Result<serde_json::Value> {
    let out = std::env::temp_dir().join(format!("dtrain-anchor-{}.json", std::process::id()));
    let status = std::process::Command::new(python)
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/anchors").join(script))
        .args(args)
        .arg("--json")
        .arg(&out)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .status()
        .with_context(|| format!("running {python}"))?;
    anyhow::ensure!(status.success(), "the PyTorch anchor {script} failed ({status}); pass --no-torch to skip it");
    let v = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let _ = std::fs::remove_file(&out);
    Ok(v)
}

/// The anchor's arguments for the run `a` describes.
fn anchor_args(a: &TrainBenchArgs) -> Vec<String> {
    let mut v: Vec<String> = ["--preset", &a.model, "--batch", &a.batch.to_string(), "--seq", &a.seq.to_string()].map(String::from).to_vec();
    v.extend(["--steps".into(), a.steps.to_string(), "--warmup".into(), a.warmup.to_string()]);
    v
}

fn torch_steps(a: &TrainBenchArgs) -> Result<serde_json::Value> {
    let mut args = anchor_args(a);
    args.extend(["--threads".into(), rayon::current_num_threads().to_string()]);
    run_anchor(&a.python, "torch_cpu_train.py", &args, &[])
}

/// Appends `record` as one JSON line to `--json`, when given.
fn append_record(path: &Option<PathBuf>, record: &serde_json::Value) -> Result<()> {
    if let Some(path) = path {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        writeln!(f, "{record}")?;
    }
    Ok(())
}

/// PyTorch's own fp32 GEMM rate on the same product (its BLAS), for context.
fn torch_gemm_gflops(a: &TrainBenchArgs, n: usize) -> Result<f64> {
    let code = format!(
        "import torch, time\ntorch.set_num_threads({})\na = torch.ones({n}, {n}); b = torch.ones({n}, {n})\nbest = 1e9\n\
         for _ in range(3):\n    t = time.perf_counter(); c = a @ b; best = min(best, time.perf_counter() - t)\nprint(2 * {n}**3 / best / 1e9)",
        rayon::current_num_threads()
    );
    let out = std::process::Command::new(&a.python).args(["-c", &code]).output().with_context(|| format!("running {}", a.python))?;
    anyhow::ensure!(out.status.success(), "torch GEMM probe failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

#[derive(Debug, Clone, clap::Args)]
pub struct TokenizeBenchArgs {
    /// Documents: a directory of parquet files, parquet files, or text files.
    #[arg(long, default_value = "data/fineweb-sample")]
    pub input: Vec<PathBuf>,
    /// The documents are encoded this many times per timed run (a bigger workload;
    /// repeats hit dtrain's piece cache within a run).
    #[arg(long, default_value_t = 1)]
    pub repeat_docs: usize,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Skip the Python anchors (HF tokenizers' binding, tiktoken).
    #[arg(long)]
    pub no_python: bool,
    #[arg(long, default_value = "python3")]
    pub python: String,
}

/// `dtrain bench tokenize`: GPT-2 tokenization throughput beside HF
/// tokenizers' Python binding and tiktoken on the same documents, same threads.
pub fn tokenize_bench(a: &TokenizeBenchArgs) -> Result<()> {
    use crate::data::source::{ParquetRows, RowSource};
    let mut docs: Vec<String> = Vec::new();
    for path in &a.input {
        if path.is_dir() {
            let src = ParquetRows::open_dir(path)?;
            docs.extend(src.rows(0, src.num_rows() as usize)?);
        } else if path.extension().is_some_and(|x| x == "parquet") {
            let src = ParquetRows::open(std::slice::from_ref(path))?;
            docs.extend(src.rows(0, src.num_rows() as usize)?);
        } else {
            docs.push(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?);
        }
    }
    let docs: Vec<String> = (0..a.repeat_docs.max(1)).flat_map(|_| docs.iter().cloned()).collect();
    let bytes: usize = docs.iter().map(|d| d.len()).sum();
    let tok = crate::data::tokenizer::gpt2();
    // Each run starts with empty piece caches: the other encoders keep none.
    let count = || {
        tok.clear_cache();
        tok.encode_batch(&docs).iter().map(|d| d.len()).sum::<usize>()
    };
    count();
    let mut times = Vec::new();
    let mut tokens = 0;
    for _ in 0..a.runs.max(1) {
        let t0 = Instant::now();
        tokens = count();
        times.push(t0.elapsed().as_secs_f64());
    }
    let ours = median(times);
    let threads = rayon::current_num_threads();
    println!("dtrain bench tokenize: {} documents, {:.1} MB, threads {threads}", docs.len(), bytes as f64 / 1e6);
    println!("  dtrain (tokenizers crate):   {:10.0} tokens/s  ({tokens} tokens)", tokens as f64 / ours);
    if !a.no_python {
        let path = std::env::temp_dir().join(format!("dtrain-tok-bench-{}.json", std::process::id()));
        std::fs::write(&path, serde_json::to_vec(&docs)?)?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/anchors/tokenize_bench.py");
        let out = std::process::Command::new(&a.python).arg(script).arg(&path).arg(threads.to_string()).arg(a.runs.max(1).to_string()).output()?;
        let _ = std::fs::remove_file(&path);
        anyhow::ensure!(out.status.success(), "the Python anchors failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        for (key, label) in [("hf_tokenizers", "HF tokenizers (Python)"), ("tiktoken", "tiktoken (Python)")] {
            let (n, s) = (v[key]["tokens"].as_f64().unwrap_or(0.0), v[key]["seconds"].as_f64().unwrap_or(f64::NAN));
            anyhow::ensure!(n as usize == tokens, "{label} counted {n} tokens, dtrain {tokens}");
            println!("  {label:28} {:10.0} tokens/s  dtrain is {:.2}×", n / s, s / ours);
        }
    }
    Ok(())
}

/// `dtrain bench kernels`: training steps under the profiler on the chosen
/// device; the table of `print_profile`.
pub fn kernels_bench(a: &KernelsBenchArgs) -> Result<()> {
    let (device, why) = a.device.resolve();
    if let Some(why) = why {
        eprintln!("benchmarking the CPU engine ({why})");
    }
    let gpu = matches!(device, DeviceChoice::Cuda(_));
    let args = TrainBenchArgs {
        model: a.model.clone().unwrap_or_else(|| if gpu { "124m" } else { "small" }.into()),
        batch: a.batch.unwrap_or(if gpu { 8 } else { 2 }),
        seq: a.seq.unwrap_or(if gpu { 1024 } else { 64 }),
        steps: a.steps.max(1),
        warmup: 1,
        no_torch: true,
        recompute: false,
        profile: true,
        python: String::new(),
        json: None,
        device,
        peak_tflops: None,
        cuda: a.cuda,
    };
    let cfg = GptConfig::preset(&args.model).with_context(|| format!("unknown preset {}", args.model))?;
    anyhow::ensure!(args.seq <= cfg.max_seq_len, "--seq {} exceeds the preset's {}", args.seq, cfg.max_seq_len);
    fn run<E: Engine>(engine: E, cfg: GptConfig, a: &TrainBenchArgs) -> Result<()> {
        let (r, model) = dtrain_steps(Profiled::new(engine), cfg, a, false, |e| drop(e.take()))?;
        println!("dtrain bench kernels: {} preset {} batch {}×{}", model.engine.inner.name(), a.model, a.batch, a.seq);
        println!("  {:.2} ms per step (profiled, each kernel synchronised)", r.median_s * 1e3);
        print_profile(&model.engine.take(), a.steps);
        Ok(())
    }
    match device {
        DeviceChoice::Cuda(n) => run(a.cuda.engine(Gpu::open(n).map_err(anyhow::Error::msg)?, Precision::Bf16), cfg, &args),
        DeviceChoice::Emulated => run(a.cuda.engine(Emu, Precision::Fp32), cfg, &args),
        _ => {
            a.cuda.check_cpu().map_err(anyhow::Error::msg)?;
            run(CpuEngine::new(), cfg, &args)
        }
    }
}

/// The peak dense bf16 TFLOP/s of a GPU by its name, for MFU.
fn peak_tflops(name: &str) -> Option<f64> {
    [("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0)].iter().find(|(k, _)| name.contains(k)).map(|&(_, v)| v)
}

/// `dtrain bench train --device cuda`: dtrain's step beside PyTorch's in
/// the same precision on the same GPU, and MFU against the GPU's bf16 peak.
fn gpu_train_bench(a: &TrainBenchArgs, ordinal: usize) -> Result<()> {
    let cfg = GptConfig::preset(&a.model).with_context(|| format!("unknown preset {}", a.model))?;
    anyhow::ensure!(a.seq <= cfg.max_seq_len && a.steps > 0, "bad sequence length or step count");
    let gpu = Gpu::open(ordinal).map_err(anyhow::Error::msg)?;
    let name = gpu.name();
    let tokens = (a.batch * a.seq) as f64;
    let flops = cfg.flops_per_token(a.seq) * tokens;
    let peak = a.peak_tflops.or_else(|| peak_tflops(&name));
    let engine = a.cuda.engine(gpu, Precision::Bf16);
    let (precision, math) = (engine.precision(), engine.gemm_math());
    let (ours, model) = dtrain_steps(engine, cfg, a, true, |_| {})?;
    drop(model); // free the GPU for PyTorch
    let tflops = flops / ours.median_s / 1e12;
    let mfu = |t: f64| peak.map_or("?".to_string(), |p| format!("{:.1}%", 100.0 * t / p));
    println!("dtrain bench train: {name} preset {} batch {}×{} ({precision} storage, {math} GEMMs)", a.model, a.batch, a.seq);
    println!(
        "  dtrain:  {:8.2} ms/step {:10.0} tokens/s {:7.1} TFLOP/s  MFU {}  loss {:.4} -> {:.4}",
        ours.median_s * 1e3,
        tokens / ours.median_s,
        tflops,
        mfu(tflops),
        ours.losses[0],
        ours.losses[ours.losses.len() - 1]
    );
    let mut record = serde_json::json!({
        "device": name, "preset": a.model, "batch": a.batch, "seq": a.seq, "precision": precision.to_string(), "gemm_math": math.to_string(),
        "dtrain_step_s": ours.median_s, "dtrain_tokens_per_s": tokens / ours.median_s, "dtrain_tflops": tflops,
    });
    if !a.no_torch {
        let mut args = anchor_args(a);
        args.extend(["--precision".into(), precision.to_string()]);
        let t = run_anchor(&a.python, "torch_gpu_train.py", &args, &[("CUDA_VISIBLE_DEVICES", ordinal.to_string())])?;
        let t_step = t["median_step_s"].as_f64().unwrap_or(f64::NAN);
        let t_tflops = flops / t_step / 1e12;
        println!(
            "  pytorch: {:8.2} ms/step {:10.0} tokens/s {:7.1} TFLOP/s  MFU {}  (torch {})",
            t_step * 1e3,
            tokens / t_step,
            t_tflops,
            mfu(t_tflops),
            t["torch"].as_str().unwrap_or("?")
        );
        println!("  dtrain / pytorch: {:.2}× tokens/s", t_step / ours.median_s);
        record["torch_step_s"] = t_step.into();
        record["speedup_vs_torch"] = (t_step / ours.median_s).into();
    }
    append_record(&a.json, &record)
}

pub fn train_bench(a: &TrainBenchArgs) -> Result<()> {
    match a.device.resolve() {
        (DeviceChoice::Cuda(n), _) => return gpu_train_bench(a, n),
        (DeviceChoice::Emulated, _) => anyhow::bail!("bench train measures cpu or cuda; the emulated device is for checks"),
        (_, Some(why)) => eprintln!("benchmarking the CPU engine ({why})"),
        _ => {}
    }
    let cfg = GptConfig::preset(&a.model).with_context(|| format!("unknown preset {}", a.model))?;
    anyhow::ensure!(a.seq <= cfg.max_seq_len && a.steps > 0, "bad sequence length or step count");
    let threads = rayon::current_num_threads();
    let tokens = (a.batch * a.seq) as f64;
    let flops = cfg.flops_per_token(a.seq) * tokens;

    // The ceiling is measured before and after dtrain's steps and the higher
    // rate kept: a noisy neighbour can only lower it, and a lower ceiling
    // would flatter dtrain's percentage.
    let gemm_before = matmul_gflops(2048, 5);
    let (ours, _) = dtrain_steps(CpuEngine::new(), cfg, a, true, |_| {})?;
    let gemm = gemm_before.max(matmul_gflops(2048, 5));
    let torch = if a.no_torch { None } else { Some((torch_steps(a)?, torch_gemm_gflops(a, 2048)?)) };

    let our_gflops = flops / ours.median_s / 1e9;
    let mode = if a.recompute { " (--recompute)" } else { "" };
    println!("dtrain bench train: preset {} batch {}×{} threads {threads}{mode}", a.model, a.batch, a.seq);
    println!("  fp32 GEMM ceiling (2048³, gemm crate): {gemm:8.1} GFLOP/s");
    if let Some((_, torch_gemm)) = &torch {
        println!("  fp32 GEMM, PyTorch's BLAS (2048³):     {torch_gemm:8.1} GFLOP/s");
    }
    println!(
        "  dtrain:  {:8.1} ms/step  {:8.0} tokens/s  {:7.1} GFLOP/s = {:5.1}% of the GEMM ceiling  peak {:6.0} MB  loss {:.4} -> {:.4}",
        ours.median_s * 1e3,
        tokens / ours.median_s,
        our_gflops,
        100.0 * our_gflops / gemm,
        ours.peak_mb,
        ours.losses[0],
        ours.losses[ours.losses.len() - 1]
    );
    let mut record = serde_json::json!({
        "preset": a.model, "batch": a.batch, "seq": a.seq, "threads": threads, "recompute": a.recompute,
        "gemm_gflops": gemm, "dtrain_step_s": ours.median_s, "dtrain_tokens_per_s": tokens / ours.median_s,
        "dtrain_gflops": our_gflops, "dtrain_peak_mb": ours.peak_mb,
    });
    if let Some((t, torch_gemm)) = &torch {
        let t_step = t["median_step_s"].as_f64().unwrap_or(f64::NAN);
        let t_peak = t["peak_rss_MB"].as_f64().unwrap_or(f64::NAN);
        let t_gflops = flops / t_step / 1e9;
        println!(
            "  pytorch: {:8.1} ms/step  {:8.0} tokens/s  {:7.1} GFLOP/s = {:5.1}% of the GEMM ceiling  peak {:6.0} MB  (torch {})",
            t_step * 1e3,
            tokens / t_step,
            t_gflops,
            100.0 * t_gflops / gemm,
            t_peak,
            t["torch"].as_str().unwrap_or("?")
        );
        println!("  dtrain / pytorch: {:.2}× tokens/s, {:.2}× peak memory", t_step / ours.median_s, ours.peak_mb / t_peak);
        record["torch_step_s"] = t_step.into();
        record["torch_peak_mb"] = t_peak.into();
        record["speedup_vs_torch"] = (t_step / ours.median_s).into();
        record["torch_gemm_gflops"] = (*torch_gemm).into();
    }
    if a.profile {
        let (_, model) = dtrain_steps(Profiled::new(CpuEngine::new()), cfg, a, false, |e| drop(e.take()))?;
        print_profile(&model.engine.take(), a.steps);
    }
    append_record(&a.json, &record)
}
