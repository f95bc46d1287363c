//! The `dtrain` command line: parses, builds configuration, calls the library.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use dtrain::engine::Engine;
use dtrain::engine::cpu::CpuEngine;
use dtrain::engine::cuda::device::GemmMath;
use dtrain::engine::cuda::emu::Emu;
use dtrain::engine::cuda::gpu::Gpu;
use dtrain::engine::cuda::nccl::Nccl;
use dtrain::engine::cuda::{CudaOptions, DeviceChoice, Precision};
use dtrain::model::GptConfig;
use dtrain::model::config::PRESET_NAMES;
use dtrain::optim::OptimizerKind;
use dtrain::train::{self, Plan, RunOptions, Start};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "dtrain", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DTRAIN_GIT_REV"), ")"), about = "Decentralized training of GPT-2 language models", long_about = None)]
struct Cli {
    /// Worker threads for the CPU engine (default: every core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Only print warnings and errors.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a GPT-2 model on one machine from a text file or llm.c token shards.
    Train(TrainArgs),
    /// Turn text or parquet files into llm.c token shards (GPT-2 tokenizer, in parallel) for `dtrain train --data DIR`.
    Tokenize {
        /// Output directory (must not hold shards yet).
        #[arg(long)]
        out: PathBuf,
        /// Tokens per shard (the last one may be shorter).
        #[arg(long, default_value_t = 100_000_000)]
        shard_tokens: usize,
        /// Text files (each one document) and fineweb-shaped .parquet files (each row of
        /// the `text` column one document); every document is opened by <|endoftext|>.
        #[arg(required_unless_present_any = ["parquet_url", "rows_api"])]
        inputs: Vec<PathBuf>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Measure a model: its loss and perplexity on the dataset's held-out rows (which no
    /// miner trains on), from a checkpoint directory, a hub tag or the newest published epoch.
    Eval(dtrain::eval::EvalArgs),
    /// Write text with a model (a checkpoint directory, a hub tag or the newest published
    /// epoch), streamed as it comes: greedy or sampled (temperature, top-k, top-p, seed).
    Generate(dtrain::generate::GenerateArgs),
    /// Print a model preset's size, memory and FLOPs.
    Info {
        /// Model preset.
        #[arg(long, default_value = "small", value_parser = clap::builder::PossibleValuesParser::new(PRESET_NAMES))]
        model: String,
        /// Sequence length for the FLOPs estimate.
        #[arg(long, default_value_t = 1024)]
        seq: usize,
    },
    /// Benchmarks (ratios against anchors measured in the same run).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a small network on this machine: a master validator and N miners as
    /// processes on 127.0.0.1 over the bundled sample, for a few epochs.
    Swarm(dtrain::subnet::swarm::SwarmArgs),
    /// Run a miner: answers IsAlive/Train/AllReduce queries from the registry's validators.
    Miner(dtrain::subnet::node::MinerArgs),
    /// Run a validator: the master runs Train rounds, scoring, the all-reduce, publishing and
    /// weights; `--follower` scores against the master's published epochs.
    Validator(dtrain::subnet::node::ValidatorArgs),
    /// Publish, list and fetch model versions in a local model store or on the Hugging Face Hub.
    #[command(subcommand)]
    Hub(HubCommand),
    /// Check the CUDA setup: the kernels against the CPU engine, or their compilation.
    #[command(subcommand)]
    Check(CheckCommand),
    /// One all-reduce peer driven over stdin/stdout (used by `bench allreduce` and the tests).
    #[command(hide = true)]
    AllreducePeer(dtrain::bench::allreduce::PeerArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Training data: a UTF-8 text file, a fineweb-shaped .parquet file, an llm.c `.bin` token shard,
    /// or a directory of shards or of parquet files.
    #[arg(long)]
    data: PathBuf,
    /// Model preset for a fresh model.
    #[arg(long, default_value = "small", value_parser = clap::builder::PossibleValuesParser::new(PRESET_NAMES))]
    model: String,
    /// Start from the weights of a Hugging Face GPT-2 checkpoint directory instead of a fresh model.
    #[arg(long, conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// Continue a run: a run directory (uses its latest checkpoint) or a checkpoint directory.
    /// The run's own plan (batch, schedule, optimizer) continues.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Micro-batches accumulated per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Optimizer steps in the run.
    #[arg(long, default_value_t = 50)]
    steps: u64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 6e-4)]
    lr: f32,
    /// Learning rate at the last step (cosine decay from the peak).
    #[arg(long, default_value_t = 6e-5)]
    min_lr: f32,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adamw)]
    optimizer: OptimizerKind,
    /// Recompute the MLP pre-activation and the attention output in backward
    /// instead of storing them: about 40% less activation memory for about 10% more time.
    #[arg(long)]
    recompute: bool,
    /// Run directory: metrics.jsonl, checkpoints/, latest.
    #[arg(long, default_value = "runs/train")]
    out: PathBuf,
    /// Save a checkpoint every N steps (the last step is always saved; 0 = only the last).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u64,
    /// Seed of the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to train: auto (the first GPU if one is found, else the CPU),
    /// cpu, cuda, cuda:N, or emulated (the CUDA kernels emulated on the CPU).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Train on several GPUs of this machine at once, e.g. --gpus 0,1,2,3:
    /// a replica on each, gradients summed by NCCL (data parallel). Each
    /// step's --grad-accum micro-batches are shared among them, so it must
    /// be a multiple of their number.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    gpus: Vec<usize>,
    #[command(flatten)]
    cuda: CudaOptions,
}

/// Remote sources for `dtrain tokenize` (instead of local files).
#[derive(Args)]
struct RemoteArgs {
    /// Parquet files over HTTP(S), read with range requests, e.g.
    /// https://huggingface.co/datasets/HuggingFaceFW/fineweb/resolve/main/sample/350BT/000_00000.parquet
    #[arg(long, conflicts_with_all = ["inputs", "rows_api"])]
    parquet_url: Vec<String>,
    /// The dataset viewer's rows endpoint, e.g. https://datasets-server.huggingface.co
    #[arg(long, conflicts_with = "inputs")]
    rows_api: Option<String>,
    #[arg(long, default_value = "HuggingFaceFW/fineweb")]
    dataset: String,
    #[arg(long, default_value = "sample-350BT")]
    config: String,
    #[arg(long, default_value = "train")]
    split: String,
    /// Rows in the split (the rows endpoint does not say).
    #[arg(long, default_value_t = 519_000_000)]
    num_rows: u64,
    /// Rows to take from a remote source: START:COUNT (default: all of a parquet source; required for --rows-api).
    #[arg(long, value_parser = parse_rows)]
    rows: Option<(u64, u64)>,
    /// Tries per request.
    #[arg(long, default_value_t = 10)]
    tries: u32,
    /// Seconds between tries.
    #[arg(long, default_value_t = 5.0)]
    retry_delay: f64,
}

fn parse_rows(s: &str) -> std::result::Result<(u64, u64), String> {
    let (a, b) = s.split_once(':').ok_or("expected START:COUNT")?;
    Ok((a.parse().map_err(|e| format!("{e}"))?, b.parse().map_err(|e| format!("{e}"))?))
}

#[derive(Subcommand)]
enum HubCommand {
    /// Publish the files of a checkpoint directory as a new revision with a tag
    /// (an existing tag is never moved: its revision is reported instead).
    Publish {
        #[command(flatten)]
        hub: HubArgs,
        #[arg(long)]
        tag: String,
        #[arg(long, default_value = "")]
        message: String,
        /// The directory whose files are published.
        dir: PathBuf,
    },
    /// List the tags, highest epoch first.
    Tags {
        #[command(flatten)]
        hub: HubArgs,
    },
    /// Copy the revision with a tag into a new directory (every file's size and hash checked).
    Download {
        #[command(flatten)]
        hub: HubArgs,
        #[arg(long)]
        tag: String,
        /// Destination; must not exist yet.
        dest: PathBuf,
    },
}

/// Which model hub: a local store directory or a Hugging Face repository.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct HubArgs {
    /// A local store's directory (created if missing).
    #[arg(long, env = "DTRAIN_HUB_STORE")]
    store: Option<PathBuf>,
    /// A Hugging Face model repository, `owner/name` (token from HF_TOKEN).
    #[arg(long, env = "DTRAIN_HF_REPO")]
    hf_repo: Option<String>,
}

fn open_hub(a: &HubArgs) -> Result<std::sync::Arc<dyn dtrain::hub::ModelHub>> {
    Ok(dtrain::hub::open(a.store.as_deref(), a.hf_repo.as_deref(), dtrain::hub::HfHub::default_policy())?)
}

#[derive(Subcommand)]
enum CheckCommand {
    /// Run every CUDA kernel and training steps of a small GPT on a GPU against the CPU
    /// engine and print a pass/fail table of relative errors. The first thing to run on a GPU.
    Gpu {
        /// cuda, cuda:N, or emulated (the same checks on the CPU emulation of the kernels, small shapes).
        #[arg(long, default_value = "cuda")]
        device: DeviceChoice,
        /// Check only this precision (fp32 or bf16); by default both, fp32 first.
        #[arg(long)]
        precision: Option<Precision>,
        /// Arithmetic of the matrix products in fp32 precision: fp32, tf32 or bf16 (tensor cores; fp32 storage).
        #[arg(long, default_value = "fp32")]
        gemm_math: GemmMath,
    },
    /// Compile the kernels with NVRTC for GPU architectures (no GPU needed) and report.
    Kernels {
        /// Compute capabilities, e.g. 80 (A100), 90 (H100).
        #[arg(long, value_delimiter = ',', default_value = "80,90")]
        arch: Vec<u32>,
        /// Write each architecture's PTX here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Training-step throughput of the CPU engine, side by side with PyTorch
    /// (when `python3 -c 'import torch, transformers'` works) and with this
    /// machine's own fp32 GEMM rate.
    Train(dtrain::bench::TrainBenchArgs),
    /// GPT-2 tokenization throughput beside HF tokenizers' Python binding and tiktoken.
    Tokenize(dtrain::bench::TokenizeBenchArgs),
    /// Butterfly all-reduce between N peer processes on 127.0.0.1 (time, algbw, busbw),
    /// beside torch.distributed gloo and a plain TCP pump.
    Allreduce(dtrain::bench::allreduce::AllreduceBenchArgs),
    /// Per-kernel time, GB/s and TFLOP/s of training steps on a device.
    Kernels(dtrain::bench::KernelsBenchArgs),
    /// The synchronous mode against DiLoCo at several H, each a swarm on
    /// the same test hosts: held-out loss against tokens, wall-clock and
    /// all-reduce bytes.
    Diloco(dtrain::bench::diloco::DilocoBenchArgs),
}

fn main() {
    let cli = Cli::parse();
    let level = if cli.quiet { tracing::Level::WARN } else { tracing::Level::INFO };
    tracing_subscriber::fmt().with_max_level(level).with_target(false).with_writer(std::io::stderr).init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global().context("starting the thread pool")?;
    }
    match cli.command {
        Command::Train(a) => train_cmd(a, !cli.quiet),
        Command::Tokenize { out, shard_tokens, inputs, remote } => tokenize_cmd(&inputs, &remote, &out, shard_tokens, !cli.quiet),
        Command::Info { model, seq } => {
            let cfg = GptConfig::preset(&model).expect("clap checked the name");
            let n = cfg.num_params();
            println!("{model}: {cfg:?}");
            println!("parameters: {n} ({:.1} M)", n as f64 / 1e6);
            println!("parameter + gradient + AdamW state (fp32): {:.2} GB", 16.0 * n as f64 / 1e9);
            println!("training FLOPs per token at T={seq}: {:.3e}", cfg.flops_per_token(seq));
            Ok(())
        }
        Command::Bench(BenchCommand::Train(a)) => dtrain::bench::train_bench(&a),
        Command::Bench(BenchCommand::Tokenize(a)) => dtrain::bench::tokenize_bench(&a),
        Command::Bench(BenchCommand::Allreduce(a)) => dtrain::bench::allreduce::allreduce_bench(&a),
        Command::Bench(BenchCommand::Kernels(a)) => dtrain::bench::kernels_bench(&a),
        Command::Bench(BenchCommand::Diloco(a)) => dtrain::bench::diloco::diloco_bench(&a),
        Command::Eval(a) => dtrain::eval::run_eval(&a, !cli.quiet),
        Command::Generate(a) => dtrain::generate::run_generate(&a, cli.quiet),
        Command::Hub(cmd) => hub_cmd(cmd),
        Command::Check(cmd) => check_cmd(cmd),
        Command::Swarm(a) => dtrain::subnet::swarm::run_swarm(&a, !cli.quiet),
        Command::Miner(mut a) => {
            a.progress = !cli.quiet;
            dtrain::subnet::node::run_miner(&a)
        }
        Command::Validator(mut a) => {
            a.progress = !cli.quiet;
            dtrain::subnet::node::run_validator(&a)
        }
        Command::AllreducePeer(a) => dtrain::bench::allreduce::peer_main(&a),
    }
}

fn hub_cmd(cmd: HubCommand) -> Result<()> {
    match cmd {
        HubCommand::Publish { hub, tag, message, dir } => {
            let p = open_hub(&hub)?.publish(&dir, &tag, &message)?;
            if p.existed {
                println!("tag {} exists already: revision {} (nothing written)", p.tag, p.revision);
            } else {
                println!("published revision {} as tag {}", p.revision, p.tag);
            }
        }
        HubCommand::Tags { hub } => {
            let mut tags = open_hub(&hub)?.tags()?;
            tags.sort_by_key(|t| std::cmp::Reverse((t.parse::<u64>().ok(), t.clone())));
            for t in tags {
                println!("{t}");
            }
        }
        HubCommand::Download { hub, tag, dest } => {
            open_hub(&hub)?.download(&tag, &dest)?;
            println!("tag {tag} → {}", dest.display());
        }
    }
    Ok(())
}

fn tokenize_cmd(inputs: &[PathBuf], remote: &RemoteArgs, out: &std::path::Path, shard_tokens: usize, progress: bool) -> Result<()> {
    use dtrain::data::http::RetryPolicy;
    use dtrain::data::rows_api::{RowsApi, RowsApiConfig};
    use dtrain::data::source::{ParquetRows, RowSource};
    use dtrain::data::tokenize::{tokenize_files, tokenize_rows};
    let bar = if progress { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
    let unit = if inputs.is_empty() { "{pos}/{len} rows ({per_sec})" } else { "{bytes}/{total_bytes} ({bytes_per_sec})" };
    bar.set_style(indicatif::ProgressStyle::with_template(&format!("{{elapsed_precise}} [{{bar:30}}] {unit}")).expect("valid template"));
    let on_progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let retry = RetryPolicy {
        tries: remote.tries.max(1),
        delay: std::time::Duration::from_secs_f64(remote.retry_delay.clamp(0.0, 3600.0)),
        timeout: std::time::Duration::from_secs(120),
    };
    let start = std::time::Instant::now();
    let summary = if !remote.parquet_url.is_empty() {
        let src = ParquetRows::open_urls(&remote.parquet_url, &retry)?;
        let (first, count) = remote.rows.unwrap_or((0, src.num_rows()));
        tokenize_rows(&src, first..first.saturating_add(count), out, shard_tokens, on_progress)?
    } else if let Some(base_url) = &remote.rows_api {
        let (first, count) = remote.rows.context("--rows-api needs --rows START:COUNT")?;
        let cfg = RowsApiConfig {
            base_url: base_url.clone(),
            dataset: remote.dataset.clone(),
            config: remote.config.clone(),
            split: remote.split.clone(),
            num_rows: remote.num_rows,
            retry,
        };
        tokenize_rows(&RowsApi::new(cfg), first..first.saturating_add(count), out, shard_tokens, on_progress)?
    } else {
        tokenize_files(inputs, out, shard_tokens, on_progress)?
    };
    bar.finish_and_clear();
    println!(
        "{} documents, {} tokens in {} shard(s) in {} ({:.0} tokens/s)",
        summary.documents,
        summary.tokens,
        summary.shards.len(),
        out.display(),
        summary.tokens as f64 / start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check_cmd(cmd: CheckCommand) -> Result<()> {
    use dtrain::engine::cuda::check::{Shapes, check_ops, check_training, table};
    // Prints the table; whether every check passed.
    let checks = |device: &str, ops: Result<Vec<_>, String>, training: Result<Vec<_>, String>| -> Result<bool> {
        let mut all = ops.map_err(anyhow::Error::msg)?;
        all.extend(training.map_err(anyhow::Error::msg)?);
        print!("{}", table(device, &all));
        Ok(all.iter().all(|c| c.passed()))
    };
    match cmd {
        CheckCommand::Gpu { device, precision, gemm_math } => {
            let precisions = precision.map_or(vec![Precision::Fp32, Precision::Bf16], |p| vec![p]);
            let mut failed = false;
            for p in precisions {
                let opts = CudaOptions { precision: Some(p), gemm_math };
                let passed = match device {
                    DeviceChoice::Cuda(n) => {
                        let gpu = opts.engine(Gpu::open(n).map_err(anyhow::Error::msg)?, p);
                        let name = gpu.name();
                        let mut ops = check_ops(&gpu, Shapes::GPU);
                        if let Ok(ops) = &mut ops {
                            match dtrain::engine::cuda::nccl::check_one_rank(n) {
                                Ok(c) => ops.push(c),
                                Err(why) => println!("NCCL not checked: {why}"),
                            }
                        }
                        checks(&name, ops, check_training(gpu, "small", 4, 128, 3))?
                    }
                    DeviceChoice::Emulated => {
                        anyhow::ensure!(Emu::available(), "this dtrain was built without the CPU emulation (no C++ compiler)");
                        let emu = opts.engine(Emu, p);
                        let ops = check_ops(&emu, Shapes::EMULATED);
                        checks(&emu.name(), ops, check_training(emu, "tiny", 2, 40, 2))?
                    }
                    other => anyhow::bail!("check gpu runs on cuda, cuda:N or emulated, not {other:?}"),
                };
                failed |= !passed;
            }
            anyhow::ensure!(!failed, "some checks failed");
            Ok(())
        }
        CheckCommand::Kernels { arch, out } => {
            let embedded: Vec<String> = dtrain::engine::cuda::gpu::CUBINS.iter().map(|(c, b)| format!("sm_{c} ({} bytes)", b.len())).collect();
            println!("embedded cubins: {}", if embedded.is_empty() { "none (built without nvcc)".to_string() } else { embedded.join(", ") });
            println!("NVRTC: {}", dtrain::engine::cuda::gpu::nvrtc_version().unwrap_or_else(|| "not found".into()));
            for a in arch {
                anyhow::ensure!((50..=200).contains(&a), "--arch {a}: a compute capability such as 80 or 90");
                let ptx = dtrain::engine::cuda::gpu::compile_ptx((a as i32 / 10, a as i32 % 10)).map_err(anyhow::Error::msg)?;
                let entries = ptx.lines().filter(|l| l.contains(".entry")).count();
                let version = ptx.lines().find(|l| l.starts_with(".version")).unwrap_or("").to_string();
                println!("sm_{a}: {entries} kernels, {} bytes of PTX ({version})", ptx.len());
                if let Some(dir) = &out {
                    std::fs::create_dir_all(dir)?;
                    std::fs::write(dir.join(format!("kernels.sm_{a}.ptx")), &ptx)?;
                }
            }
            Ok(())
        }
    }
}

fn train_cmd(a: TrainArgs, progress: bool) -> Result<()> {
    let plan = Plan {
        batch: a.batch,
        seq_len: a.seq,
        grad_accum: a.grad_accum,
        steps: a.steps,
        lr: a.lr,
        min_lr: a.min_lr,
        warmup: a.warmup,
        clip: a.clip,
        optimizer: a.optimizer,
        recompute: a.recompute,
    };
    let start = match (a.resume, a.init) {
        (Some(dir), _) => Start::Resume(dir),
        (None, Some(dir)) => Start::Init(dir),
        (None, None) => Start::Fresh { config: GptConfig::preset(&a.model).expect("clap checked the name"), seed: a.seed },
    };
    let opts = RunOptions { data: a.data, out: a.out.clone(), checkpoint_every: a.checkpoint_every, progress };
    train::stop_on_interrupt();
    let device = if a.gpus.len() == 1 { DeviceChoice::Cuda(a.gpus[0]) } else { a.device };
    let summary = match device.resolve() {
        _ if a.gpus.len() > 1 => {
            let nccl = Nccl::new(&a.gpus).map_err(anyhow::Error::msg)?;
            let engines =
                a.gpus.iter().map(|&g| Ok(a.cuda.engine(Gpu::open(g).map_err(anyhow::Error::msg)?, Precision::Bf16))).collect::<Result<Vec<_>>>()?;
            eprintln!("training on {} GPUs: {}", engines.len(), engines.iter().map(|e| e.name()).collect::<Vec<_>>().join("; "));
            train::run_replicated(engines, Box::new(nccl), start, plan, &opts)?
        }
        (DeviceChoice::Cuda(n), _) => {
            let gpu = a.cuda.engine(Gpu::open(n).map_err(anyhow::Error::msg)?, Precision::Bf16);
            eprintln!("training on {}", gpu.name());
            train::run(gpu, start, plan, &opts)?
        }
        (DeviceChoice::Emulated, _) => train::run(a.cuda.engine(Emu, Precision::Fp32), start, plan, &opts)?,
        (_, why) => {
            a.cuda.check_cpu().map_err(anyhow::Error::msg)?;
            if let Some(why) = why {
                eprintln!("training on the CPU ({why})");
            }
            train::run(CpuEngine::new(), start, plan, &opts)?
        }
    };
    match (summary.losses.first(), summary.losses.last()) {
        (Some(first), Some(last)) => println!(
            "{} steps {}..{}: loss {first:.4} -> {last:.4}, {:.0} tokens/s; checkpoint {}",
            if summary.interrupted { "interrupted after" } else { "trained" },
            summary.first_step + 1,
            summary.first_step + summary.losses.len() as u64,
            summary.tokens_per_s,
            summary.last_checkpoint.map_or("none".into(), |p| p.display().to_string())
        ),
        _ => println!("nothing to do: the run is already at its last step ({})", summary.first_step),
    }
    Ok(())
}
