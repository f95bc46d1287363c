//! `dtrain bench diloco`: the synchronous mode against DiLoCo at several
//! H, each a `dtrain swarm` of the same miners on the same test hosts
//! (every node behind its own shaped link) and at equal tokens per epoch,
//! one after the other in one run. Reads each swarm's metrics.jsonl and
//! writes held-out loss against tokens, wall-clock and all-reduce bytes
//! (three charts), a table, and the targets checked.
//!
//! Equal tokens: DiLoCo at H steps of `batch · Hmax / H` sequences; the
//! synchronous mode is given about as many rows as make that many tokens
//! (rows are documents of uneven length, so the tokens each epoch really
//! trained are read back and plotted).

use crate::plot::{XySeries, xy_chart};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, clap::Args)]
pub struct DilocoBenchArgs {
    /// Every node's link on its own test host (root; see `testnet`), or
    /// `loopback` for 127.0.0.1.
    #[arg(long, default_value = "rate=100mbit,rtt=20ms")]
    pub net: String,
    #[arg(long, default_value_t = 4)]
    pub miners: usize,
    /// Epochs of the synchronous mode (its last held-out loss is the mark).
    #[arg(long, default_value_t = 10)]
    pub sync_epochs: u64,
    /// Epochs of each DiLoCo run.
    #[arg(long, default_value_t = 4)]
    pub diloco_epochs: u64,
    /// The H of each DiLoCo run.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    pub steps: Vec<u64>,
    /// Sequences per inner step at the largest H (smaller H take
    /// proportionally larger batches: the same tokens per epoch).
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    #[arg(long, default_value_t = 64)]
    pub seq: usize,
    /// The synchronous mode's learning rate and DiLoCo's inner one.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.7)]
    pub outer_lr: f64,
    #[arg(long, default_value_t = 0.9)]
    pub outer_momentum: f64,
    /// The all-reduce's codec in every run.
    #[arg(long, default_value = "fp16")]
    pub codec: String,
    /// One more run at the largest H with this sparse codec (error
    /// feedback), against the same H in `--codec`; `none` to skip.
    #[arg(long, default_value = "topk")]
    pub sparse: String,
    /// The sparse run's outer learning rate and momentum (SparseLoCo's:
    /// its decayed error feedback takes the momentum's place).
    #[arg(long, default_value_t = 1.0)]
    pub sparse_outer_lr: f64,
    #[arg(long, default_value_t = 0.0)]
    pub sparse_outer_momentum: f64,
    /// Read the runs already in --out (their metrics.jsonl) instead of
    /// running them again.
    #[arg(long)]
    pub reuse: bool,
    /// Held-out rows evaluated after every epoch (the sample holds 20).
    #[arg(long, default_value_t = 20)]
    pub eval_rows: u64,
    #[arg(long, default_value = "data/fineweb-sample")]
    pub data: PathBuf,
    #[arg(long, default_value = "runs/bench-diloco")]
    pub out: PathBuf,
    /// The validator's snapshot downloads in flight at once (DiLoCo runs).
    #[arg(long, default_value_t = 4)]
    pub snapshot_fetches: u16,
}

/// One epoch of one run, from the master validator's metrics.jsonl.
#[derive(Debug, Clone, Copy)]
struct Point {
    epoch: u64,
    tokens: f64,
    seconds: f64,
    megabytes: f64,
    held_out: f64,
}

fn read_points(path: &Path) -> Result<Vec<Point>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = 0.0;
    text.lines()
        .map(|l| {
            let m: serde_json::Value = serde_json::from_str(l).with_context(|| format!("{}: {l}", path.display()))?;
            let f = |k: &str| m[k].as_f64().with_context(|| format!("{}: no {k} in {l}", path.display()));
            bytes += f("allreduce_bytes_in")?;
            Ok(Point {
                epoch: m["epoch"].as_u64().unwrap_or(0),
                tokens: f("tokens")?,
                seconds: f("elapsed_s")?,
                megabytes: bytes / 1e6,
                held_out: f("eval_loss")?,
            })
        })
        .collect()
}

/// Mean tokens per row of the dataset's first rows (to size the
/// synchronous mode's Train queries).
fn tokens_per_row(data: &Path) -> Result<f64> {
    use crate::data::source::RowSource;
    let rows = crate::data::source::ParquetRows::open_dir(data)?;
    let n = rows.num_rows().min(100);
    let texts = rows.rows(0, n as usize)?;
    let tokens: usize = crate::data::tokenizer::gpt2().encode_batch(&texts).iter().map(|t| t.len()).sum();
    Ok(tokens as f64 / n.max(1) as f64)
}

/// y of the piecewise-linear curve through `points` at x (None outside).
fn at(points: &[(f64, f64)], x: f64) -> Option<f64> {
    points.windows(2).find(|w| w[0].0 <= x && x <= w[1].0).map(|w| {
        let f = if w[1].0 > w[0].0 { (x - w[0].0) / (w[1].0 - w[0].0) } else { 0.0 };
        w[0].1 + f * (w[1].1 - w[0].1)
    })
}

pub fn diloco_bench(a: &DilocoBenchArgs) -> Result<()> {
    let h_max = *a.steps.iter().max().context("--steps: at least one H")?;
    if a.steps.iter().any(|&h| h == 0 || !(h_max * a.batch as u64).is_multiple_of(h)) {
        bail!("every H in --steps must divide {} (the largest H × --batch) to keep the tokens per epoch equal", h_max * a.batch as u64);
    }
    let per_row = tokens_per_row(&a.data)?;
    let tokens = (h_max as usize * a.batch * a.seq) as f64;
    let sync_rows = (tokens / per_row).round().max(1.0) as u64;
    let diloco_rows = (1.5 * tokens / per_row).ceil() as u64 + 1;
    println!("{tokens} tokens per miner per epoch: the synchronous mode gets {sync_rows} rows (~{per_row:.0} tokens each), DiLoCo {diloco_rows}");
    let exe = std::env::current_exe()?;
    let mut runs: Vec<(String, Vec<Point>)> = Vec::new();
    let mut plan: Vec<(String, &str, Vec<String>)> = vec![(
        "sync".into(),
        &a.codec,
        vec!["--epochs".into(), a.sync_epochs.to_string(), "--rows".into(), sync_rows.to_string(), "--batch".into(), a.batch.to_string()],
    )];
    let sparse = (a.sparse != "none").then_some(a.sparse.as_str());
    if let Some(c) = sparse {
        c.parse::<crate::allreduce::codec::Codec>().map_err(|e| anyhow::anyhow!("--sparse: {e}"))?;
    }
    let (dense_outer, sparse_outer) = ((a.outer_lr, a.outer_momentum), (a.sparse_outer_lr, a.sparse_outer_momentum));
    let runs_of = a
        .steps
        .iter()
        .map(|&h| (h, &a.codec[..], format!("diloco-h{h}"), dense_outer))
        .chain(sparse.map(|c| (h_max, c, format!("diloco-h{h_max}-{c}"), sparse_outer)));
    for (h, codec, name, (outer_lr, outer_momentum)) in runs_of {
        let batch = (h_max as usize * a.batch) / h as usize;
        plan.push((
            name,
            codec,
            [
                ["--epochs", &a.diloco_epochs.to_string()],
                ["--rows", &diloco_rows.to_string()],
                ["--batch", &batch.to_string()],
                ["--algorithm", "diloco"],
                ["--inner-steps", &h.to_string()],
                ["--inner-lr", &a.lr.to_string()],
                ["--outer-lr", &outer_lr.to_string()],
                ["--outer-momentum", &outer_momentum.to_string()],
                ["--snapshot-fetches", &a.snapshot_fetches.to_string()],
            ]
            .concat()
            .into_iter()
            .map(String::from)
            .collect(),
        ));
    }
    for (name, codec, args) in &plan {
        let out = a.out.join(name);
        if a.reuse && out.join("metrics.jsonl").exists() {
            eprintln!("{name}: reusing {}", out.join("metrics.jsonl").display());
            runs.push((name.clone(), read_points(&out.join("metrics.jsonl"))?));
            continue;
        }
        eprintln!("running {name}…");
        let mut cmd = Command::new(&exe);
        cmd.args(["-q", "swarm", "--device", "cpu", "--miners", &a.miners.to_string(), "--seq", &a.seq.to_string()])
            .args(["--lr", &a.lr.to_string(), "--codec", codec, "--eval-rows", &a.eval_rows.to_string()])
            .args(args)
            .arg("--data")
            .arg(&a.data)
            .arg("--out")
            .arg(&out);
        if a.net != "loopback" {
            cmd.args(["--net", &a.net]);
        }
        let status = cmd.status().with_context(|| format!("starting {}", exe.display()))?;
        if !status.success() {
            bail!("the {name} swarm failed ({status}); see {}", out.display());
        }
        runs.push((name.clone(), read_points(&out.join("metrics.jsonl"))?));
    }
    println!("\n{:<12} {:>5} {:>10} {:>9} {:>10} {:>9}", "run", "epoch", "tokens", "seconds", "MB in", "held-out");
    for (name, points) in &runs {
        for p in points {
            println!("{name:<12} {:>5} {:>10.0} {:>9.1} {:>10.1} {:>9.4}", p.epoch, p.tokens, p.seconds, p.megabytes, p.held_out);
        }
    }
    std::fs::create_dir_all(&a.out)?;
    let curves =
        |x: fn(&Point) -> f64| -> Vec<Vec<(f64, f64)>> { runs.iter().map(|(_, ps)| ps.iter().map(|p| (x(p), p.held_out)).collect()).collect() };
    for (file, x_name, x) in [
        ("held-out-vs-tokens.png", "tokens", (|p: &Point| p.tokens) as fn(&Point) -> f64),
        ("held-out-vs-seconds.png", "seconds", |p: &Point| p.seconds),
        ("held-out-vs-megabytes.png", "MB in", |p: &Point| p.megabytes),
    ] {
        let c = curves(x);
        let series: Vec<XySeries> = runs.iter().zip(&c).map(|((n, _), p)| XySeries { name: n, points: p }).collect();
        std::fs::write(a.out.join(file), xy_chart(&series, x_name, "held-out loss"))?;
    }
    // The targets.
    let sync = &runs[0].1;
    let mark = sync.last().context("the synchronous run recorded no epoch")?;
    println!("\nthe synchronous mode's held-out loss after {} epochs: {:.4} ({:.1} MB)", mark.epoch, mark.held_out, mark.megabytes);
    let sync_time: Vec<(f64, f64)> = sync.iter().map(|p| (p.seconds, p.held_out)).collect();
    for (name, points) in &runs[1..] {
        match points.iter().find(|p| p.held_out <= mark.held_out) {
            Some(p) => println!(
                "{name}: reaches it at epoch {} with {:.1} MB ({:.1}× fewer bytes)",
                p.epoch,
                p.megabytes,
                mark.megabytes / p.megabytes.max(1e-9)
            ),
            None => println!("{name}: does not reach it in {} epochs", points.len()),
        }
        let compared: Vec<(f64, f64, f64)> =
            points.iter().skip(1).filter_map(|p| at(&sync_time, p.seconds).map(|s| (p.seconds, p.held_out, s))).collect();
        let lower = compared.iter().filter(|(_, d, s)| d < s).count();
        println!("{name}: lower than the synchronous mode at equal wall-clock at {lower} of {} points after its first epoch", compared.len());
    }
    if let (Some(c), Some((_, dense)), Some((_, sparse))) = (sparse, runs.iter().find(|(n, _)| *n == format!("diloco-h{h_max}")), runs.last()) {
        let (Some(d), Some(s)) = (dense.last(), sparse.last()) else { bail!("a DiLoCo run recorded no epoch") };
        println!(
            "diloco-h{h_max}, {c} against {}: {:.1}× fewer bytes per epoch, held-out loss {:.4} against {:.4} after {} epochs ({:+.2}%)",
            a.codec,
            (d.megabytes / d.epoch as f64) / (s.megabytes / s.epoch.max(1) as f64).max(1e-9),
            s.held_out,
            d.held_out,
            s.epoch,
            100.0 * (s.held_out / d.held_out - 1.0)
        );
    }
    println!("\ncharts: {}", a.out.join("held-out-vs-{tokens,seconds,megabytes}.png").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn interpolation_between_points_and_none_outside() {
        let c = [(0.0, 10.0), (10.0, 8.0), (20.0, 7.0)];
        assert_eq!(super::at(&c, 5.0), Some(9.0));
        assert_eq!(super::at(&c, 20.0), Some(7.0));
        assert_eq!(super::at(&c, 25.0), None);
    }
}
