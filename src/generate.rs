//! `dtrain generate`: text from a checkpoint directory, a hub tag or the
//! newest published model, streamed to the terminal token by token
//! (`model::generate` keeps every position's keys and values, so a token
//! costs one position). Greedy with `--temperature 0`; otherwise sampled
//! with temperature, top-k and top-p from `--seed`.

use crate::data::tokenizer::{EOT, gpt2};
use crate::engine::Engine;
use crate::engine::cuda::{DeviceChoice, Precision};
use crate::eval::{ModelArgs, model_dir};
use crate::model::checkpoint;
use crate::model::generate::{Sampling, generate};
use anyhow::{Context, Result};
use std::io::Write;
use std::time::Instant;

/// `dtrain generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to continue (empty: start a new document after <|endoftext|>).
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// New tokens at most (fewer if <|endoftext|> comes or the context fills).
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token every time (greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Sample only among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample only among the most likely tokens holding this much probability (1: all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampling (the same seed, prompt and model give the same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Go on past <|endoftext|> instead of stopping there.
    #[arg(long)]
    pub ignore_eot: bool,
    /// Where to run: auto (a GPU if one is found, else the CPU), cpu, cuda, cuda:N, emulated.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// On the CUDA engine: bf16 (default on a GPU) or fp32.
    #[arg(long)]
    pub precision: Option<Precision>,
}

/// Runs `dtrain generate`: the prompt, then each new piece of text as it
/// comes, on stdout; the speed on stderr (unless `quiet`).
pub fn run_generate(a: &GenerateArgs, quiet: bool) -> Result<()> {
    crate::engine::on_device!(a.device, a.precision, generate_on, (a, quiet))
}

fn generate_on<E: Engine>((a, quiet): (&GenerateArgs, bool), engine: E) -> Result<()> {
    anyhow::ensure!(a.temperature.is_finite() && a.temperature >= 0.0, "--temperature must be 0 or more");
    anyhow::ensure!(a.top_p > 0.0 && a.top_p <= 1.0, "--top-p must be in (0, 1]");
    let (dir, what, _scratch) = model_dir(&a.model)?;
    let mut model = checkpoint::load_model(&dir, engine).with_context(|| format!("loading {}", dir.display()))?;
    let tok = gpt2();
    let prompt = if a.prompt.is_empty() { vec![EOT] } else { tok.encode(&a.prompt) };
    let ctx = model.config.max_seq_len;
    anyhow::ensure!(prompt.len() < ctx, "the prompt is {} tokens: the model's context holds {ctx}", prompt.len());
    if !quiet {
        eprintln!("{what} on {}: {} prompt tokens", model.engine.name(), prompt.len());
    }
    let mut out = std::io::stdout().lock();
    write!(out, "{}", a.prompt)?;
    out.flush()?;
    // Text is printed as the decoded difference: a character may take
    // several tokens, so the tail waits until it decodes whole.
    let (mut ids, mut shown) = (Vec::new(), 0usize);
    let sampling = Sampling { temperature: a.temperature, top_k: a.top_k, top_p: a.top_p };
    let stop = (!a.ignore_eot).then_some(EOT);
    let start = Instant::now();
    let mut first_at = None;
    let new = generate(&mut model, &prompt, a.max_tokens, sampling, a.seed, stop, |t| {
        first_at.get_or_insert_with(|| start.elapsed());
        if t == EOT {
            return;
        }
        ids.push(t);
        let text = tok.decode(&ids);
        if let Some(piece) = text.get(shown..).filter(|p| !p.is_empty() && !text.ends_with('\u{FFFD}')) {
            let _ = write!(out, "{piece}");
            let _ = out.flush();
            shown = text.len();
        }
    })?;
    writeln!(out)?;
    if !quiet {
        let secs = start.elapsed().as_secs_f64();
        let first = first_at.map_or(0.0, |d| d.as_secs_f64());
        let rest = new.len().saturating_sub(1);
        eprintln!(
            "{} tokens in {secs:.2} s: the prompt and first token {first:.2} s, then {:.1} tokens/s",
            new.len(),
            if rest > 0 { rest as f64 / (secs - first).max(1e-9) } else { 0.0 }
        );
    }
    Ok(())
}
