//! Single-node training: `dtrain train`.
//!
//! A run directory holds `metrics.jsonl` (one JSON object per step) and
//! `checkpoints/step_NNNNNN/` (Hugging Face layout + optimizer state +
//! `trainer.json`), with `latest` naming the newest. Resuming restores the
//! model, the optimizer moments and the data position, so the resumed run
//! computes bit-for-bit what the uninterrupted one would have.

use crate::data::DataError;
use crate::data::loader::{BatchLoader, LoaderState, Tokens};
use crate::engine::Engine;
use crate::model::checkpoint::{self, CheckpointError};
use crate::model::{Gpt, GptConfig, ModelError};
use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind, lr_schedule};
use crate::parallel::{Collective, HostSum, MicroBatch, Replicas};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    // A second signal gets the default action: stop at once.
    // SAFETY: signal() is async-signal-safe.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// Makes SIGINT and SIGTERM finish the current step, save a checkpoint and
/// return, instead of killing the process and losing the steps since the
/// last checkpoint. A second signal kills as usual.
pub fn stop_on_interrupt() {
    // SAFETY: installs a handler that only stores to an atomic and resets itself.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT or SIGTERM arrived since `stop_on_interrupt`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// What a run trains and how; saved in every checkpoint as `trainer.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub batch: usize,
    pub seq_len: usize,
    /// Micro-batches accumulated per optimizer step.
    pub grad_accum: usize,
    /// Total optimizer steps of the run.
    pub steps: u64,
    pub lr: f32,
    pub min_lr: f32,
    pub warmup: u64,
    pub clip: f32,
    pub optimizer: OptimizerKind,
    /// Recompute activations in backward to save memory (see `Gpt::set_recompute`).
    #[serde(default)]
    pub recompute: bool,
}

/// The trainer's own part of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub plan: Plan,
    /// Optimizer steps completed.
    pub step: u64,
    pub loader: LoaderState,
    pub data: PathBuf,
}

pub const TRAINER_FILE: &str = "trainer.json";

/// How a run starts.
pub enum Start {
    /// A fresh model of this shape, initialised from `seed`.
    Fresh { config: GptConfig, seed: u64 },
    /// Weights (and only weights) from a Hugging Face-layout checkpoint.
    Init(PathBuf),
    /// Continue a run from a checkpoint directory (or a run directory's latest).
    Resume(PathBuf),
}

pub struct RunOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    /// Save every this many steps (0 = only at the end).
    pub checkpoint_every: u64,
    pub progress: bool,
}

#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Mean loss of every step this invocation ran, in order.
    pub losses: Vec<f32>,
    pub first_step: u64,
    pub tokens_per_s: f64,
    pub last_checkpoint: Option<PathBuf>,
    /// Stopped early by a signal (see [`stop_on_interrupt`]).
    pub interrupted: bool,
}

/// The checkpoint directory a `--resume` path designates.
pub fn resolve_checkpoint(path: &Path) -> Result<PathBuf, TrainError> {
    let latest = path.join("latest");
    if latest.is_file() {
        let name = std::fs::read_to_string(&latest).map_err(io_err(&latest))?;
        return Ok(path.join("checkpoints").join(name.trim()));
    }
    if path.join(checkpoint::CONFIG_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    Err(TrainError::Invalid(format!("{}: neither a checkpoint directory nor a run directory with a `latest` checkpoint", path.display())))
}

fn read_trainer_state(dir: &Path) -> Result<TrainerState, TrainError> {
    let path = dir.join(TRAINER_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}

/// Trains on `engine` following `plan` (ignored when resuming: the
/// checkpoint's plan continues).
pub fn run<E: Engine>(engine: E, start: Start, plan: Plan, opts: &RunOptions) -> Result<RunSummary, TrainError> {
    run_replicated(vec![engine], Box::new(HostSum), start, plan, opts)
}

/// A model, its optimizer, the plan, the step and the data position to start from.
type Started<E> = (Gpt<E>, Optimizer<E>, Plan, u64, LoaderState);

fn start_on<E: Engine>(engine: E, start: &Start, plan: &Plan) -> Result<Started<E>, TrainError> {
    Ok(match start {
        Start::Fresh { config, seed } => {
            let mut model = Gpt::new(engine, *config)?;
            model.init_random(*seed);
            let opt = Optimizer::new(&model, OptimizerConfig::new(plan.optimizer)).map_err(ModelError::from)?;
            (model, opt, plan.clone(), 0, LoaderState::default())
        }
        Start::Init(dir) => {
            let model = checkpoint::load_model(dir, engine)?;
            let opt = Optimizer::new(&model, OptimizerConfig::new(plan.optimizer)).map_err(ModelError::from)?;
            (model, opt, plan.clone(), 0, LoaderState::default())
        }
        Start::Resume(path) => {
            let dir = resolve_checkpoint(path)?;
            let state = read_trainer_state(&dir)?;
            let model = checkpoint::load_model(&dir, engine)?;
            let opt = checkpoint::load_optimizer(&dir, &model)?;
            if opt.step != state.step {
                return Err(TrainError::Invalid(format!("{}: optimizer is at step {}, trainer at {}", dir.display(), opt.step, state.step)));
            }
            (model, opt, state.plan, state.step, state.loader)
        }
    })
}

/// Trains one replica per engine (data parallel; `collective` sums their
/// gradients, see [`crate::parallel`]); each step's `grad_accum`
/// micro-batches are shared out among the replicas.
pub fn run_replicated<E: Engine>(
    engines: Vec<E>,
    collective: Box<dyn Collective<E>>,
    start: Start,
    plan: Plan,
    opts: &RunOptions,
) -> Result<RunSummary, TrainError> {
    let n = engines.len();
    let mut models = Vec::with_capacity(n);
    let mut optimizers = Vec::with_capacity(n);
    let mut first = None;
    for engine in engines {
        let (model, opt, plan, step, loader) = start_on(engine, &start, &plan)?;
        first.get_or_insert((plan, step, loader));
        models.push(model);
        optimizers.push(opt);
    }
    let (plan, step0, loader_state) = first.ok_or_else(|| TrainError::Invalid("no device to train on".into()))?;
    if let Start::Resume(path) = &start {
        tracing::info!("resuming {} at step {step0}", path.display());
        let state = read_trainer_state(&resolve_checkpoint(path)?)?;
        if state.data != opts.data {
            tracing::warn!(
                "the run trained on {} and continues on {}: its data position may not mean the same",
                state.data.display(),
                opts.data.display()
            );
        }
    }
    if !plan.grad_accum.is_multiple_of(n) {
        return Err(TrainError::Invalid(format!(
            "--grad-accum {} must be a multiple of the {n} replicas (each takes an equal share)",
            plan.grad_accum
        )));
    }
    let model = &models[0];
    validate_plan(&plan, &model.config)?;
    models.iter_mut().for_each(|m| m.set_recompute(plan.recompute));
    let model = &models[0];
    let tokens = Tokens::open(&opts.data)?;
    let mut loader = BatchLoader::new(tokens, plan.batch, plan.seq_len, &opts.data)?;
    loader.set_state(loader_state);

    std::fs::create_dir_all(&opts.out).map_err(io_err(&opts.out))?;
    let metrics_path = opts.out.join("metrics.jsonl");
    let mut metrics = std::fs::OpenOptions::new().create(true).append(true).open(&metrics_path).map_err(io_err(&metrics_path))?;

    let tokens_per_step = (plan.batch * plan.seq_len * plan.grad_accum) as f64;
    let on = if n == 1 { model.engine.name() } else { format!("{n} × {} ({})", model.engine.name(), collective.name()) };
    tracing::info!(
        "model {} params on {on} | {} tokens of data | {}×{}×{} tokens per step | {} steps",
        model.num_params(),
        loader.total_tokens(),
        plan.grad_accum,
        plan.batch,
        plan.seq_len,
        plan.steps
    );
    let bar = progress_bar(opts.progress, plan.steps, step0);
    let mut summary = RunSummary { losses: Vec::new(), first_step: step0, tokens_per_s: 0.0, last_checkpoint: None, interrupted: false };
    let run_start = Instant::now();
    let mut replicas = Replicas::new(models, optimizers, collective);
    for step in step0..plan.steps {
        let t0 = Instant::now();
        let batches: Vec<MicroBatch> = (0..plan.grad_accum)
            .map(|_| {
                let (inputs, targets) = loader.next_batch();
                (inputs.to_vec(), targets.to_vec())
            })
            .collect();
        let lr = lr_schedule(step, plan.warmup, plan.steps, plan.lr, plan.min_lr);
        let (loss, norm) = replicas.step(&batches, plan.batch, plan.seq_len, lr, plan.clip)?;
        if !loss.is_finite() {
            return Err(TrainError::Invalid(format!(
                "loss became {loss} at step {step}; the last checkpoint is {}",
                summary.last_checkpoint.as_ref().map_or("none".into(), |p| p.display().to_string())
            )));
        }
        let dt = t0.elapsed().as_secs_f64();
        let tps = tokens_per_step / dt;
        summary.losses.push(loss);
        let line = serde_json::json!({"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm, "step_s": dt, "tokens_per_s": tps});
        writeln!(metrics, "{line}").map_err(io_err(&metrics_path))?;
        bar.set_position(step + 1);
        bar.set_message(format!("loss {loss:.4} | {tps:.0} tok/s"));
        if bar.is_hidden() {
            tracing::info!("step {}/{} loss {loss:.4} lr {lr:.2e} grad norm {norm:.3} {tps:.0} tok/s", step + 1, plan.steps);
        }
        let done = step + 1;
        summary.interrupted = INTERRUPTED.load(Ordering::SeqCst);
        if done == plan.steps || summary.interrupted || (opts.checkpoint_every > 0 && done % opts.checkpoint_every == 0) {
            let state = TrainerState { plan: plan.clone(), step: done, loader: loader.state(), data: opts.data.clone() };
            summary.last_checkpoint = Some(save_checkpoint(&opts.out, &replicas.models[0], &replicas.opts[0], &state)?);
        }
        if summary.interrupted {
            bar.abandon();
            tracing::warn!("interrupted after step {done}; continue with --resume {}", opts.out.display());
            break;
        }
    }
    bar.finish_and_clear();
    let ran = summary.losses.len() as f64;
    summary.tokens_per_s = ran * tokens_per_step / run_start.elapsed().as_secs_f64().max(1e-9);
    Ok(summary)
}

fn validate_plan(plan: &Plan, config: &GptConfig) -> Result<(), TrainError> {
    if plan.batch == 0 || plan.seq_len == 0 || plan.grad_accum == 0 {
        return Err(TrainError::Invalid("batch, sequence length and gradient accumulation must be positive".into()));
    }
    if plan.batch.saturating_mul(plan.seq_len) > 1 << 24 {
        return Err(TrainError::Invalid(format!("a {}×{} batch is too large; accumulate micro-batches instead", plan.batch, plan.seq_len)));
    }
    if plan.seq_len > config.max_seq_len {
        return Err(TrainError::Invalid(format!("sequence length {} exceeds the model's {} positions", plan.seq_len, config.max_seq_len)));
    }
    if !(plan.lr.is_finite() && plan.lr >= 0.0 && plan.min_lr.is_finite() && plan.min_lr >= 0.0 && plan.clip > 0.0) {
        return Err(TrainError::Invalid("learning rates must be finite and non-negative, the clip norm positive".into()));
    }
    Ok(())
}

/// Saves `out/checkpoints/step_NNNNNN` and points `out/latest` at it.
fn save_checkpoint<E: Engine>(out: &Path, model: &Gpt<E>, opt: &Optimizer<E>, state: &TrainerState) -> Result<PathBuf, TrainError> {
    let name = format!("step_{:06}", state.step);
    let dir = out.join("checkpoints").join(&name);
    let trainer = serde_json::to_vec_pretty(state).expect("serialisable");
    checkpoint::save(&dir, model, Some(opt), &[(TRAINER_FILE, trainer)])?;
    let latest = out.join("latest");
    let tmp = out.join(format!(".latest.tmp-{}", std::process::id()));
    std::fs::write(&tmp, &name).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &latest).map_err(io_err(&latest))?;
    tracing::info!("saved {}", dir.display());
    Ok(dir)
}

fn progress_bar(enabled: bool, total: u64, pos: u64) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} steps  {msg}  (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_position(pos);
    bar
}
