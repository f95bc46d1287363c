//! How good a model is: its mean loss (and perplexity) on held-out rows,
//! rows no miner is assigned or may choose (`data::held_out`).
//!
//! `dtrain eval` measures a checkpoint directory, a hub tag or the newest
//! published model; the master validator measures its own model after
//! every epoch (`metrics.jsonl`'s `eval_loss`, the swarm's table and
//! chart). Forward passes only, batched, on any engine. Only batches with
//! no padding count (`RowBatches::unpadded`): padding is end-of-text
//! tokens, trivially predicted after each other, and would flatter the
//! model.

use crate::data::held_out::held_out;
use crate::data::loader::RowBatches;
use crate::data::source::{ParquetRows, RowSource};
use crate::engine::Engine;
use crate::engine::cuda::{DeviceChoice, Precision};
use crate::model::{Gpt, ModelError, checkpoint};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A measured loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eval {
    /// Mean cross-entropy per token, in nats.
    pub loss: f64,
    pub tokens: usize,
    pub batches: usize,
    pub seconds: f64,
}

impl Eval {
    pub fn perplexity(&self) -> f64 {
        self.loss.exp()
    }
}

/// The mean loss of `model` over the unpadded batches of `batches` (the
/// only, padded one when there is no other), calling `progress(done,
/// total)` after each.
pub fn evaluate<E: Engine>(model: &mut Gpt<E>, batches: &RowBatches, mut progress: impl FnMut(usize, usize)) -> Result<Eval, ModelError> {
    let start = Instant::now();
    let (b, t) = batches.shape();
    let n = batches.unpadded().max(batches.len().min(1));
    let mut sum = 0f64;
    for k in 0..n {
        let (x, y) = batches.batch(k);
        sum += model.forward(x, y, b, t)? as f64;
        progress(k + 1, n);
    }
    Ok(Eval { loss: if n == 0 { f64::NAN } else { sum / n as f64 }, tokens: n * b * t, batches: n, seconds: start.elapsed().as_secs_f64() })
}

/// The first `rows` held-out rows of `src` (all of them when `None`) as
/// batches of `b × t`.
pub fn held_out_batches(src: &dyn RowSource, rows: Option<u64>, b: usize, t: usize) -> Result<(RowBatches, std::ops::Range<u64>)> {
    let all = held_out(src.num_rows());
    if all.is_empty() {
        bail!("the dataset has {} row(s): none to hold out", src.num_rows());
    }
    let range = all.start..all.end.min(all.start.saturating_add(rows.unwrap_or(u64::MAX).max(1)));
    let batches = RowBatches::from_source(src, range.clone(), b, t).context("reading the held-out rows")?;
    Ok((batches, range))
}

/// Which model a command loads (`dtrain eval`, `dtrain generate`).
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A checkpoint directory (what `dtrain train` saves, `dtrain hub download` fetches, or any
    /// Hugging Face GPT-2 directory), or a `dtrain train` run directory (its latest checkpoint).
    #[arg(long, conflicts_with_all = ["hub_store", "hf_repo", "tag"])]
    pub checkpoint: Option<PathBuf>,
    /// A local model store (a validator's --hub-store; `dtrain swarm` writes OUT/hub).
    #[arg(long)]
    pub hub_store: Option<PathBuf>,
    /// A Hugging Face model repository (`owner/name`; endpoint from HF_ENDPOINT, token from HF_TOKEN).
    #[arg(long, conflicts_with = "hub_store")]
    pub hf_repo: Option<String>,
    /// The hub tag to load (an epoch number); default: the newest epoch.
    #[arg(long)]
    pub tag: Option<String>,
}

/// `dtrain eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The dataset (a directory of fineweb-shaped parquet files), whose held-out tail is
    /// evaluated on: its last 1/20 of rows, at most 10,000 (see docs/ARCHITECTURE.md).
    #[arg(long, default_value = "data/fineweb-sample")]
    pub data: PathBuf,
    /// Evaluate on the first N held-out rows only (default: all).
    #[arg(long)]
    pub rows: Option<u64>,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Tokens per sequence; default: what the network trained with (a published model's
    /// dtrain.json), else the model's context, at most 1024.
    #[arg(long)]
    pub seq: Option<usize>,
    /// Where to run: auto (a GPU if one is found, else the CPU), cpu, cuda, cuda:N, emulated.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// On the CUDA engine: bf16 (default on a GPU) or fp32.
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// A directory removed when dropped (a hub download used once).
pub struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `dtrain eval`, printing the result; `progress` shows a bar on the terminal.
pub fn run_eval(a: &EvalArgs, progress: bool) -> Result<()> {
    crate::engine::on_device!(a.device, a.precision, eval_on, (a, progress))
}

fn eval_on<E: Engine>((a, progress): (&EvalArgs, bool), engine: E) -> Result<()> {
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    let (dir, what, _scratch) = model_dir(&a.model)?;
    let mut model = checkpoint::load_model(&dir, engine).with_context(|| format!("loading {}", dir.display()))?;
    let trained_seq = std::fs::read_to_string(dir.join("dtrain.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|m| m["seq"].as_u64())
        .map(|s| s as usize);
    let ctx = model.config.max_seq_len;
    let t = a.seq.or(trained_seq).unwrap_or(ctx.min(1024));
    anyhow::ensure!((1..=ctx).contains(&t), "--seq {t}: the model's context is 1 to {ctx} tokens");
    let src = ParquetRows::open_dir(&a.data)?;
    let (batches, rows) = held_out_batches(&src, a.rows, a.batch, t)?;
    let bar = if progress && !a.json { indicatif::ProgressBar::new(0) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] batch {pos}/{len} (ETA {eta})").expect("valid template"));
    let e = evaluate(&mut model, &batches, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    let line = serde_json::json!({
        "model": what, "data": a.data, "rows": [rows.start, rows.end], "batch": a.batch, "seq": t,
        "loss": e.loss, "perplexity": e.perplexity(), "tokens": e.tokens, "seconds": e.seconds,
        "tokens_per_s": e.tokens as f64 / e.seconds.max(1e-9), "engine": model.engine.name(),
    });
    if a.json {
        println!("{line}");
    } else {
        println!(
            "{what}: held-out loss {:.4}, perplexity {:.1}, on {} tokens of rows {}..{} of {} ({} × {} per batch) in {:.1} s ({:.0} tokens/s, {})",
            e.loss,
            e.perplexity(),
            e.tokens,
            rows.start,
            rows.end,
            a.data.display(),
            a.batch,
            t,
            e.seconds,
            e.tokens as f64 / e.seconds.max(1e-9),
            model.engine.name()
        );
    }
    Ok(())
}

/// The checkpoint directory to load, a name for it, and the scratch
/// directory to remove afterwards (a hub download).
pub fn model_dir(a: &ModelArgs) -> Result<(PathBuf, String, Option<Scratch>)> {
    if let Some(dir) = &a.checkpoint {
        return Ok((crate::train::resolve_checkpoint(dir)?, dir.display().to_string(), None));
    }
    if a.hub_store.is_none() && a.hf_repo.is_none() {
        bail!("name a model: --checkpoint DIR, or --hub-store DIR / --hf-repo OWNER/NAME (with --tag, or the newest epoch)");
    }
    let hub = crate::hub::open(a.hub_store.as_deref(), a.hf_repo.as_deref(), crate::hub::HfHub::default_policy())?;
    let tag = match &a.tag {
        Some(t) => t.clone(),
        None => hub.latest_epoch()?.context("the hub has no epoch tag yet")?.to_string(),
    };
    let scratch = Scratch(std::env::temp_dir().join(format!("dtrain-model-{}-{tag}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    hub.download(&tag, &scratch.0).with_context(|| format!("downloading tag {tag}"))?;
    let place = a.hub_store.as_deref().map_or_else(|| a.hf_repo.clone().unwrap_or_default(), |p: &Path| p.display().to_string());
    Ok((scratch.0.clone(), format!("{place} tag {tag}"), Some(scratch)))
}
