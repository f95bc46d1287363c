//! The node processes behind `dtrain miner` and `dtrain validator`:
//! configuration (every option also from the environment), start-up (keys,
//! registry, hub, model, metrics), and the master validator's epoch loop.
//! (`dtrain swarm`, which runs them all, is swarm.rs.)

use super::bittensor::hotkey::Hotkey;
use super::epoch_record::{allreduce_bound, outcome_json, record_epoch, span_shares};
use super::keyfile;
use super::metrics::{MetricsServer, NodeMetrics};
use super::miner::{Miner, MinerConfig};
use super::registry::Role;
use super::server::{QueryServer, ServerConfig};
use super::validator::{Validator, ValidatorConfig};
use crate::allreduce::codec::Codec;
use crate::allreduce::{Peer, Settings};
use crate::data::held_out::TrainRows;
use crate::data::source::{ParquetRows, RowSource};
use crate::data::used_rows::UsedRows;
use crate::engine::Engine;
use crate::engine::cuda::gpu::Gpu;
use crate::engine::cuda::nccl::Nccl;
use crate::engine::cuda::{CudaEngine, DeviceChoice, Precision};
use crate::model::config::GPT2_VOCAB;
use crate::model::{Gpt, GptConfig};
use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use crate::parallel::{Collective, HostSum};
use crate::train::{interrupted, stop_on_interrupt};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every node shares.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeArgs {
    /// This node's key file (created on first start, mode 0600).
    #[arg(long, env = "DTRAIN_KEY")]
    pub key: PathBuf,
    /// A Bittensor hotkey file (a wallet's `hotkeys/<name>`; created when
    /// missing): with it, a miner also answers queries from the registry's
    /// validator hotkeys in the Bittensor axon convention (SDK 10.x) and
    /// signed with btauth/1 (SDK 11.x), and a validator also queries miners
    /// registered by hotkey alone (Python miners) in the axon convention.
    #[arg(long, env = "DTRAIN_BT_HOTKEY")]
    pub bt_hotkey: Option<PathBuf>,
    /// The registry: a file shared by the network's nodes, or one served by
    /// the master validator, `dtrain://KEY@HOST:PORT`.
    #[arg(long, env = "DTRAIN_REGISTRY")]
    pub registry: String,
    /// The model hub: a local store directory…
    #[arg(long, env = "DTRAIN_HUB_STORE", required_unless_present = "hf_repo", conflicts_with = "hf_repo")]
    pub hub_store: Option<PathBuf>,
    /// …or a Hugging Face model repository `owner/name` (endpoint from
    /// HF_ENDPOINT, token from HF_TOKEN).
    #[arg(long, env = "DTRAIN_HF_REPO")]
    pub hf_repo: Option<String>,
    /// Tries of each Hugging Face request before a publish or download fails.
    #[arg(long, env = "DTRAIN_HUB_TRIES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub hub_tries: u32,
    /// Seconds between those tries.
    #[arg(long, env = "DTRAIN_HUB_RETRY_S", default_value_t = 10.0)]
    pub hub_retry_s: f64,
    /// This node's own files (used rows, downloaded models).
    #[arg(long, env = "DTRAIN_STATE")]
    pub state: PathBuf,
    /// The dataset: a directory of fineweb-shaped parquet files.
    #[arg(long, env = "DTRAIN_DATA", default_value = "data/fineweb-sample")]
    pub data: PathBuf,
    /// Model preset (every node of a network uses the same).
    #[arg(long, env = "DTRAIN_MODEL", default_value = "small")]
    pub model: String,
    /// Tokens per sequence.
    #[arg(long, env = "DTRAIN_SEQ", default_value_t = 64)]
    pub seq: usize,
    /// Address to listen on (and that the registry gives the other nodes):
    /// 0.0.0.0 or this machine's address on a real network.
    #[arg(long, env = "DTRAIN_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// The address other nodes reach this one at, when it is not --host:
    /// behind NAT, or listening on 0.0.0.0. What the registry records.
    #[arg(long, env = "DTRAIN_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// Port of the all-reduce (0: any free one; fix it for a firewall).
    #[arg(long, env = "DTRAIN_ALLREDUCE_PORT", default_value_t = 0)]
    pub allreduce_port: u16,
    /// Wire codec of the all-reduce: fp32, fp16, bf16, int8[:BLOCK], or
    /// topk[:BLOCK:K] — only the K largest of every BLOCK values, with error
    /// feedback (DiLoCo only, best with --outer-momentum 0; `topk` = 32 of
    /// 4096).
    #[arg(long, env = "DTRAIN_CODEC", default_value = "fp16")]
    pub codec: Codec,
    /// Seed of the initial weights (only used to publish epoch 0) and of
    /// this node's random choices.
    #[arg(long, env = "DTRAIN_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Where to train and score: auto (the first GPU if one is found, else
    /// the CPU), cpu, cuda, cuda:N, or emulated.
    #[arg(long, env = "DTRAIN_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// On the CUDA engine: bf16 (mixed precision; the default on a GPU) or
    /// fp32 (the default of the emulated device). The CPU engine is fp32.
    #[arg(long, env = "DTRAIN_PRECISION")]
    pub precision: Option<Precision>,
    /// Serve live metrics for Prometheus at http://ADDR/metrics (OpenMetrics
    /// text), e.g. 0.0.0.0:9100; port 0 picks one. The address is logged and
    /// written to STATE/metrics.url.
    #[arg(long, env = "DTRAIN_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// This node's metrics, and their endpoint when `--metrics-addr` asks for one.
fn start_metrics(n: &NodeArgs, role: &str, engine: &str) -> Result<(Arc<NodeMetrics>, Option<MetricsServer>)> {
    let metrics = Arc::new(NodeMetrics::new(role, engine));
    let Some(addr) = n.metrics_addr else { return Ok((metrics, None)) };
    let server = MetricsServer::start(addr, metrics.clone()).with_context(|| format!("--metrics-addr {addr}"))?;
    let url = format!("http://{}/metrics", server.addr());
    std::fs::create_dir_all(&n.state).with_context(|| format!("creating {}", n.state.display()))?;
    write_atomic(&n.state.join("metrics.url"), url.as_bytes())?;
    tracing::info!("metrics for Prometheus at {url}");
    Ok((metrics, Some(server)))
}

#[derive(Debug, Clone, clap::Args)]
pub struct MinerArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Progress bars on the terminal (not an option: set unless -q).
    #[arg(skip)]
    pub progress: bool,
    /// Port validators send queries to (0: any free one; fix it for a firewall).
    #[arg(long, env = "DTRAIN_QUERY_PORT", default_value_t = 0)]
    pub query_port: u16,
    /// Sequences per batch.
    #[arg(long, env = "DTRAIN_BATCH", default_value_t = 2)]
    pub batch: usize,
    /// Rows per Train query (the reference: 500).
    #[arg(long, env = "DTRAIN_ROWS", default_value_t = 500)]
    pub rows: u64,
    /// Train only on the i-th of k equal parts of the dataset (`i/k`):
    /// on a small dataset, miners picking runs at random would often pick
    /// the same rows, which the validator credits to nobody.
    #[arg(long, env = "DTRAIN_SHARD", value_parser = parse_shard)]
    pub shard: Option<(u64, u64)>,
    /// Train on several GPUs of this machine, e.g. --gpus 0,1: a replica
    /// on each sharing every Train query's batches, their gradients summed
    /// by NCCL before the butterfly all-reduce with the other miners.
    #[arg(long, env = "DTRAIN_GPUS", value_delimiter = ',', conflicts_with = "device")]
    pub gpus: Vec<usize>,
}

fn parse_shard(s: &str) -> std::result::Result<(u64, u64), String> {
    let (i, k) = s.split_once('/').ok_or("expected i/k")?;
    let (i, k): (u64, u64) = (i.parse().map_err(|e| format!("{e}"))?, k.parse().map_err(|e| format!("{e}"))?);
    if k == 0 || i >= k { Err(format!("{i}/{k}: need 0 ≤ i < k")) } else { Ok((i, k)) }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ValidatorArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// Progress bars on the terminal (not an option: set unless -q).
    #[arg(skip)]
    pub progress: bool,
    /// Epochs to run, then exit (0: until interrupted).
    #[arg(long, env = "DTRAIN_EPOCHS", default_value_t = 0)]
    pub epochs: u64,
    /// Samples (rows) the miners must accumulate before each all-reduce.
    #[arg(long, env = "DTRAIN_GLOBAL_BATCH", default_value_t = 2000)]
    pub global_batch: u64,
    /// Live miners to wait for before an epoch starts.
    #[arg(long, env = "DTRAIN_MIN_MINERS", default_value_t = 1)]
    pub min_miners: usize,
    /// Learning rate of the step every member takes after each all-reduce
    /// (sent to the miners with the AllReduce query).
    #[arg(long, env = "DTRAIN_LR", default_value_t = 6e-4)]
    pub lr: f64,
    /// Seconds an all-reduce may take.
    #[arg(long, env = "DTRAIN_ALLREDUCE_TIMEOUT", default_value_t = 120.0)]
    pub allreduce_timeout: f64,
    /// One JSON line per epoch.
    #[arg(long, env = "DTRAIN_METRICS")]
    pub metrics: Option<PathBuf>,
    /// The miners' weights (JSON), rewritten every epoch.
    #[arg(long, env = "DTRAIN_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// Score miners without running the all-reduce: follow the epochs the
    /// master publishes to the hub (a second, third… validator). Its Train
    /// queries are for scoring only: miners do not add that work to what
    /// they contribute.
    #[arg(long, env = "DTRAIN_FOLLOWER")]
    pub follower: bool,
    /// Rows each Train query names for the miner to train on (0: miners
    /// choose their own, the reference's mode, whose answers can be copied).
    #[arg(long, env = "DTRAIN_ROWS", default_value_t = 500)]
    pub rows: u64,
    /// A replayed batch's gradient projections must agree with the miner's
    /// within this fraction of the gradient's norm. The default suits
    /// miners on the validator's engine and precision (they agree to
    /// ~2e-5); miners in bf16 on a GPU checked by an fp32
    /// validator need more, not yet measured.
    #[arg(long, env = "DTRAIN_PROJECTION_TOLERANCE", default_value_t = crate::subnet::scoring::PROJECTION_TOLERANCE)]
    pub projection_tolerance: f64,
    /// Seconds the slower half of the miners get to answer a Train query
    /// once the faster half has (or twice the time taken so far, if more).
    #[arg(long, env = "DTRAIN_TRAIN_GRACE", default_value_t = 30.0)]
    pub train_grace: f64,
    /// Serve this validator's registry to the network on HOST:PORT (port 0
    /// picks one); its `dtrain://KEY@HOST:PORT` address is logged and
    /// written to STATE/registry.url.
    #[arg(long, env = "DTRAIN_SERVE_REGISTRY")]
    pub serve_registry: Option<String>,
    /// After every epoch, measure the model's loss on the first N rows of the
    /// dataset's held-out tail (rows no miner trains on; `dtrain eval` measures
    /// all of them): `eval_loss` in --metrics. 0: never.
    #[arg(long, env = "DTRAIN_EVAL_ROWS", default_value_t = 8)]
    pub eval_rows: u64,
    /// Serve the dashboard (loss, weights and scores per miner, every
    /// all-reduce) at http://ADDR/, e.g. 127.0.0.1:8080; port 0 picks one.
    /// The address is logged and written to STATE/dashboard.url. The
    /// master validator's only.
    #[arg(long, env = "DTRAIN_DASHBOARD")]
    pub dashboard: Option<SocketAddr>,
    #[command(flatten)]
    pub diloco: DilocoArgs,
}

/// How the network trains: what the validator decides and sends with its
/// queries (miners follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Algorithm {
    /// One averaged gradient and one optimizer step per epoch (the
    /// reference's mode).
    Sync,
    /// DiLoCo: each miner takes --inner-steps AdamW steps per epoch, the
    /// all-reduce averages the pseudo-gradients θₑ − θ, and every member
    /// takes the same outer Nesterov step: far fewer bytes per token.
    Diloco,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DilocoArgs {
    /// sync or diloco (see `diloco` in the docs: inner steps, then an outer
    /// step on the averaged pseudo-gradients).
    #[arg(long, env = "DTRAIN_ALGORITHM", value_enum, default_value = "sync")]
    pub algorithm: Algorithm,
    /// DiLoCo: inner steps (batches) per miner per epoch; one Train query
    /// each epoch assigns the rows for them.
    #[arg(long, env = "DTRAIN_INNER_STEPS", default_value_t = 50)]
    pub inner_steps: u64,
    /// DiLoCo: AdamW learning rate of the inner steps (β 0.9/0.95, weight
    /// decay 0.1, each batch's gradient clipped to norm 1).
    #[arg(long, env = "DTRAIN_INNER_LR", default_value_t = 2.5e-4)]
    pub inner_lr: f64,
    /// DiLoCo: learning rate of the outer SGD step (--lr is unused).
    #[arg(long, env = "DTRAIN_OUTER_LR", default_value_t = 0.7)]
    pub outer_lr: f64,
    /// DiLoCo: Nesterov momentum of the outer step (published with the
    /// model, so late joiners resume exactly).
    #[arg(long, env = "DTRAIN_OUTER_MOMENTUM", default_value_t = 0.9)]
    pub outer_momentum: f64,
    /// DiLoCo: inner steps between the snapshots a miner keeps; the
    /// validator replays one such stretch of every answer from its snapshot
    /// (0: an eighth of --inner-steps, rounded up: 12.5% of the miner's
    /// work, plus the snapshot's download).
    #[arg(long, env = "DTRAIN_SNAPSHOT_EVERY", default_value_t = 0)]
    pub snapshot_every: u64,
    /// DiLoCo: bound each epoch's inner steps by time as well — a miner
    /// stops after the step that passes this many seconds (at most
    /// --inner-steps) and is credited the samples it trained (0: steps
    /// only).
    #[arg(long, env = "DTRAIN_INNER_SECONDS", default_value_t = 0.0)]
    pub inner_seconds: f64,
    /// DiLoCo: the inner learning rate over epochs: constant, or
    /// cosine:EPOCHS[:WARMUP] (linear warmup, then cosine decay to a tenth
    /// of --inner-lr at epoch EPOCHS). Counted in published outer steps, so
    /// followers and restarts agree.
    #[arg(long, env = "DTRAIN_INNER_LR_SCHEDULE", default_value = "constant")]
    pub inner_lr_schedule: crate::diloco::LrSchedule,
    /// DiLoCo: the outer learning rate over epochs (as --inner-lr-schedule,
    /// with --outer-lr its peak).
    #[arg(long, env = "DTRAIN_OUTER_LR_SCHEDULE", default_value = "constant")]
    pub outer_lr_schedule: crate::diloco::LrSchedule,
    /// DiLoCo, the validator: snapshot downloads in flight at once, each
    /// from another miner, while it replays what has arrived (each holds a
    /// snapshot, 3× the model, in memory; 1: one after another).
    #[arg(long, env = "DTRAIN_SNAPSHOT_FETCHES", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub snapshot_fetches: u16,
}

impl DilocoArgs {
    /// The validator's DiLoCo settings (None in the synchronous mode).
    pub fn settings(&self) -> Result<Option<crate::diloco::DilocoSettings>> {
        if self.algorithm == Algorithm::Sync {
            return Ok(None);
        }
        let d = crate::diloco::DilocoSettings {
            inner_steps: self.inner_steps,
            inner_lr: self.inner_lr,
            outer_lr: self.outer_lr,
            outer_momentum: self.outer_momentum,
            snapshot_every: self.snapshot_every,
            inner_seconds: self.inner_seconds,
            inner_lr_schedule: self.inner_lr_schedule,
            outer_lr_schedule: self.outer_lr_schedule,
        };
        d.check().map_err(|e| anyhow::anyhow!("--algorithm diloco: {e}"))?;
        Ok(Some(d))
    }

    /// The same settings as arguments for another process.
    pub fn to_args(&self) -> Vec<String> {
        let alg = match self.algorithm {
            Algorithm::Sync => "sync",
            Algorithm::Diloco => "diloco",
        };
        [
            ("--algorithm", alg.to_string()),
            ("--inner-steps", self.inner_steps.to_string()),
            ("--inner-lr", self.inner_lr.to_string()),
            ("--outer-lr", self.outer_lr.to_string()),
            ("--outer-momentum", self.outer_momentum.to_string()),
            ("--snapshot-every", self.snapshot_every.to_string()),
            ("--inner-seconds", self.inner_seconds.to_string()),
            ("--inner-lr-schedule", self.inner_lr_schedule.to_string()),
            ("--outer-lr-schedule", self.outer_lr_schedule.to_string()),
            ("--snapshot-fetches", self.snapshot_fetches.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect()
    }
}

/// A preset nodes can train: they read GPT-2 tokens, so its vocabulary
/// must hold them (the `tiny` test preset does not).
pub(crate) fn node_preset(name: &str) -> Result<GptConfig> {
    let cfg = GptConfig::preset(name).with_context(|| format!("unknown model preset {name:?}"))?;
    anyhow::ensure!(
        cfg.vocab_size >= GPT2_VOCAB,
        "model preset {name:?} has a vocabulary of {} tokens, but nodes train on GPT-2's {GPT2_VOCAB}: use small or a larger preset",
        cfg.vocab_size
    );
    Ok(cfg)
}

fn model_of<E: Engine>(a: &NodeArgs, engine: E) -> Result<(Gpt<E>, Optimizer<E>)> {
    let cfg = node_preset(&a.model)?;
    let mut model = Gpt::new(engine, cfg)?;
    model.init_random(a.seed);
    let opt = Optimizer::new(&model, OptimizerConfig::new(OptimizerKind::Adamw))?;
    Ok((model, opt))
}

fn settings(a: &NodeArgs) -> Settings {
    Settings { codec: a.codec, connect_timeout: Duration::from_secs(10), stall_timeout: Duration::from_secs(20), ..Settings::default() }
}

fn addr(host: &str, port: u16) -> Result<SocketAddr> {
    format!("{host}:{port}").parse().with_context(|| format!("listen address {host:?}"))
}

/// Where other nodes reach a socket of this node bound at `bound`: the
/// advertised host when there is one, else the bound address, which must
/// then be a reachable one.
fn advertised(n: &NodeArgs, bound: SocketAddr) -> Result<SocketAddr> {
    match &n.advertise_host {
        Some(h) => addr(h, bound.port()).context("--advertise-host"),
        None if bound.ip().is_unspecified() => {
            bail!("listening on {}: give --advertise-host, the address other nodes reach this one at", bound.ip())
        }
        None => Ok(bound),
    }
}

/// `dtrain miner`: serves queries until SIGINT/SIGTERM.
pub fn run_miner(a: &MinerArgs) -> Result<()> {
    match a.gpus.as_slice() {
        [] => crate::engine::on_device!(a.node.device, a.node.precision, miner_on, a),
        &[g] => miner_on(a, CudaEngine::new(Gpu::open(g).map_err(anyhow::Error::msg)?).with_precision(a.node.precision.unwrap_or(Precision::Bf16))),
        gpus => {
            let nccl = Nccl::new(gpus).map_err(anyhow::Error::msg)?;
            let engines = gpus
                .iter()
                .map(|&g| Ok(CudaEngine::new(Gpu::open(g).map_err(anyhow::Error::msg)?).with_precision(a.node.precision.unwrap_or(Precision::Bf16))))
                .collect::<Result<Vec<_>>>()?;
            tracing::info!("engines: {}; gradients summed by {}", engines.iter().map(|e| e.name()).collect::<Vec<_>>().join("; "), nccl.name());
            miner_on_replicas(a, engines, Box::new(nccl))
        }
    }
}

fn miner_on<E: Engine + 'static>(a: &MinerArgs, engine: E) -> Result<()> {
    miner_on_replicas(a, vec![engine], Box::new(HostSum))
}

fn miner_on_replicas<E: Engine + 'static>(a: &MinerArgs, engines: Vec<E>, collective: Box<dyn Collective<E>>) -> Result<()> {
    stop_on_interrupt();
    let n = &a.node;
    let id = keyfile::load_or_create(&n.key)?;
    let registry = super::registry::open(&n.registry, &id)?;
    let hub = hub_of(n)?;
    // The held-out tail is for evaluation only: no row of it is ever trained on.
    let src = TrainRows::new(ParquetRows::open_dir(&n.data)?);
    std::fs::create_dir_all(&n.state).with_context(|| format!("creating {}", n.state.display()))?;
    let mut used = UsedRows::open(&n.state.join("used-rows.bin"), src.num_rows())?;
    if let Some((i, k)) = a.shard {
        // Only rows i·N/k .. (i+1)·N/k stay available to this miner.
        let rows = src.num_rows();
        let (lo, hi) = (rows * i / k, rows * (i + 1) / k);
        used.mark(0..lo)?;
        used.mark(hi..rows)?;
    }
    let mut replicas = engines.into_iter().map(|e| model_of(n, e)).collect::<Result<Vec<_>>>()?;
    let (model, opt) = replicas.remove(0);
    let peer = Peer::bind(id.clone(), addr(&n.host, n.allreduce_port)?).with_context(|| format!("the all-reduce's port {}", n.allreduce_port))?;
    let peer_addr = peer.local_addr()?;
    let cfg =
        MinerConfig { batch: a.batch, seq: n.seq, rows_per_train: a.rows, allreduce: settings(n), progress: a.progress, ..MinerConfig::default() };
    let (metrics, _metrics_server) = start_metrics(n, "miner", &model.engine.name())?;
    let miner =
        Miner::new(cfg, model, opt, Box::new(src), used, peer, registry.clone(), n.seed).with_hub(hub, n.state.clone()).with_metrics(metrics.clone());
    // DiLoCo snapshots wait on disk, not in memory, for a validator's fetch.
    let snapshot_dir = n.state.join("snapshots");
    let mut miner = miner.with_snapshot_dir(&snapshot_dir).with_context(|| format!("keeping DiLoCo snapshots in {}", snapshot_dir.display()))?;
    if !replicas.is_empty() {
        miner = miner.with_replicas(replicas, collective);
    }
    let miner = Arc::new(miner);
    // Every node starts from the published model (epoch 0 at least).
    let start = Instant::now();
    while miner.sync_from_hub().map_err(anyhow::Error::msg)?.is_none() && miner.epoch() == 0 {
        if interrupted() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("no model was published to the hub within 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let hotkey = bt_hotkey_of(n)?;
    if let Some(k) = &hotkey {
        tracing::info!("Bittensor hotkey {}: answering the axon convention and btauth/1", k.ss58());
    }
    let server = QueryServer::start(
        addr(&n.host, a.query_port)?,
        id.clone(),
        miner.clone(),
        ServerConfig { hotkey, metrics: Some(metrics), ..ServerConfig::default() },
    )?;
    let uid = registry.join(&id.public(), &advertised(n, server.addr())?.to_string(), advertised(n, peer_addr)?, Role::Miner)?;
    tracing::info!("miner uid {uid}: queries on {}, all-reduce on {peer_addr}, epoch {}", server.addr(), miner.epoch());
    while !interrupted() {
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("miner uid {uid}: stopping");
    Ok(())
}

pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path)).with_context(|| format!("writing {}", path.display()))
}

fn hub_of(n: &NodeArgs) -> Result<Arc<dyn crate::hub::ModelHub>> {
    anyhow::ensure!(n.hub_retry_s.is_finite() && (0.0..=3600.0).contains(&n.hub_retry_s), "--hub-retry-s: 0 to 3600");
    let policy =
        crate::data::http::RetryPolicy { tries: n.hub_tries, delay: Duration::from_secs_f64(n.hub_retry_s), ..crate::hub::HfHub::default_policy() };
    Ok(crate::hub::open(n.hub_store.as_deref(), n.hf_repo.as_deref(), policy)?)
}

/// The node's Bittensor hotkey (`--bt-hotkey`), created when the file is missing.
fn bt_hotkey_of(n: &NodeArgs) -> Result<Option<Hotkey>> {
    Ok(match &n.bt_hotkey {
        Some(path) if path.exists() => Some(Hotkey::load(path)?),
        Some(path) => {
            let k = Hotkey::generate();
            k.save(path)?;
            tracing::info!("created Bittensor hotkey {} in {}", k.ss58(), path.display());
            Some(k)
        }
        None => None,
    })
}

/// `dtrain validator` (the master): per epoch, Train rounds until the global
/// batch is reached, then the all-reduce, the publish and the weights.
pub fn run_validator(a: &ValidatorArgs) -> Result<()> {
    crate::engine::on_device!(a.node.device, a.node.precision, validator_on, a)
}

fn validator_on<E: Engine>(a: &ValidatorArgs, engine: E) -> Result<()> {
    stop_on_interrupt();
    let n = &a.node;
    let id = keyfile::load_or_create(&n.key)?;
    let registry = super::registry::open(&n.registry, &id)?;
    let hub = hub_of(n)?;
    let hub = hub.as_ref();
    // Serve the registry to the network, if asked.
    let _registry_server = match &a.serve_registry {
        Some(host_port) => {
            let listen: SocketAddr = host_port.parse().with_context(|| format!("--serve-registry {host_port:?}"))?;
            let service = Arc::new(super::registry::RegistryService { registry: registry.clone() });
            let server = QueryServer::start(listen, id.clone(), service, ServerConfig::default())?;
            let url = format!("dtrain://{}@{}", id.public().to_hex(), advertised(n, server.addr())?);
            write_atomic(&n.state.join("registry.url"), url.as_bytes())?;
            tracing::info!("serving the registry at {url}");
            Some(server)
        }
        None => None,
    };
    let all_rows = ParquetRows::open_dir(&n.data)?;
    let eval_batches = match a.eval_rows {
        0 => None,
        rows => Some(crate::eval::held_out_batches(&all_rows, Some(rows), 8, n.seq)?.0),
    };
    // The held-out tail is for evaluation only: no row of it is ever assigned.
    let src = TrainRows::new(all_rows);
    std::fs::create_dir_all(&n.state)?;
    let (model, opt) = model_of(n, engine)?;
    let (metrics, _metrics_server) = start_metrics(n, if a.follower { "follower validator" } else { "validator" }, &model.engine.name())?;
    let peer = Peer::bind(id.clone(), addr(&n.host, n.allreduce_port)?).with_context(|| format!("the all-reduce's port {}", n.allreduce_port))?;
    let peer_addr = peer.local_addr()?;
    let cfg = ValidatorConfig {
        seq: n.seq,
        learning_rate: a.lr,
        allreduce: settings(n),
        allreduce_timeout: Duration::from_secs_f64(a.allreduce_timeout),
        rows_per_train: a.rows,
        projection_tolerance: a.projection_tolerance,
        train_grace: Duration::from_secs_f64(a.train_grace),
        accumulate: !a.follower,
        diloco: a.diloco.settings()?,
        snapshot_fetches: a.diloco.snapshot_fetches.into(),
        ..ValidatorConfig::default()
    };
    if cfg.allreduce.codec.alignment() > 1 && cfg.diloco.is_none() {
        // Owners would average the top-k of gradients whose full
        // projections the validator credited: every honest miner would fail.
        anyhow::bail!("--codec {} needs --algorithm diloco (its error feedback carries what the codec drops across epochs)", cfg.allreduce.codec);
    }
    if let Some(d) = cfg.diloco.filter(|d| cfg.allreduce.codec.alignment() > 1 && d.outer_momentum > 0.0) {
        tracing::warn!(
            "--codec {} with --outer-momentum {}: the miners' error feedback already acts as momentum (SparseLoCo runs it with 0); expect overshoot",
            cfg.allreduce.codec,
            d.outer_momentum
        );
    }
    if !(a.projection_tolerance.is_finite() && a.projection_tolerance > 0.0) {
        bail!("--projection-tolerance {} must be a positive number", a.projection_tolerance);
    }
    let mut v = Validator::new(cfg, id.clone(), registry.clone(), Box::new(src), model, opt, peer, n.seed);
    if let Some(k) = bt_hotkey_of(n)? {
        tracing::info!("Bittensor hotkey {}: querying hotkey-only miners in the axon convention", k.ss58());
        v = v.with_hotkey(k);
    }
    let uid = registry.join(&id.public(), "validator", advertised(n, peer_addr)?, Role::Validator)?;
    if a.follower {
        anyhow::ensure!(a.dashboard.is_none(), "--dashboard is the master validator's (a follower runs no all-reduce)");
        return follow(a, &v, hub);
    }
    let dashboard = a.dashboard.map(|addr| super::dashboard::Dashboard::serve(addr, &n.state)).transpose()?;
    let mut epoch = match hub.latest_epoch()? {
        Some(e) => {
            v.load(hub, &n.state, e).map_err(anyhow::Error::msg)?;
            e
        }
        None => {
            v.publish(hub, &n.state, 0, 0).map_err(anyhow::Error::msg)?;
            0
        }
    };
    tracing::info!("validator uid {uid}: all-reduce on {peer_addr}, epoch {epoch}");
    let first = epoch;
    // Wall-clock and verified tokens since this validator started training
    // (what held-out loss is plotted against, beside epochs and bytes).
    let (started, mut tokens) = (Instant::now(), 0u64);
    while (a.epochs == 0 || epoch < first + a.epochs) && !interrupted() {
        let live_nodes = || v.live_miners().into_iter().map(|(n, _)| n).collect::<Vec<_>>();
        let mut live = live_nodes();
        while live.len() < a.min_miners.max(1) {
            if interrupted() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(300));
            live = live_nodes();
        }
        let t0 = Instant::now();
        let (mut samples, mut losses, mut rounds) = (0u64, Vec::new(), Vec::new());
        // The epoch's samples toward the global batch, then its phases.
        let bar = if a.progress { indicatif::ProgressBar::new(a.global_batch) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] epoch {msg}: {pos}/{len} samples (ETA {eta})")
                .expect("valid template"),
        );
        bar.set_message((epoch + 1).to_string());
        // Rounds in which no miner delivered work back off (up to 10 s), so
        // refusing miners — an exhausted dataset, say — are not hammered.
        let mut idle = Duration::ZERO;
        // DiLoCo: one Train round (of --inner-steps steps) makes the epoch.
        let target = if a.diloco.algorithm == Algorithm::Diloco { 1 } else { a.global_batch };
        while samples < target && !interrupted() {
            if !idle.is_zero() {
                std::thread::sleep(idle);
            }
            let before = samples;
            let outcomes = v.train_round(&live);
            for o in &outcomes {
                if o.error.is_none() && o.gradient > 0.0 {
                    samples += o.samples;
                }
                if o.verified() {
                    tokens += o.tokens;
                }
                losses.extend(o.loss);
                if let Some(e) = &o.error {
                    tracing::warn!("uid {}: {e}", o.uid);
                }
            }
            rounds.push(outcomes);
            bar.set_position(samples.min(a.global_batch));
            idle = if samples > before { Duration::ZERO } else { (idle * 2).clamp(Duration::from_millis(500), Duration::from_secs(10)) };
            live = live_nodes();
            if live.is_empty() {
                break;
            }
        }
        if interrupted() {
            break;
        }
        bar.finish_and_clear();
        let train_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let report = v.allreduce_round(&live, epoch + 1).map_err(anyhow::Error::msg)?;
        let allreduce_s = t1.elapsed().as_secs_f64();
        let eval = match &eval_batches {
            Some(b) => match v.evaluate(b) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!("held-out evaluation: {e}");
                    None
                }
            },
            None => None,
        };
        let bandwidth: BTreeMap<String, f64> =
            v.bandwidth_round(&live, "transformer.wte.weight", Duration::from_secs(30)).into_iter().map(|(u, s)| (u.to_string(), s)).collect();
        epoch += 1;
        let t2 = Instant::now();
        // The hub has retried already. A hub that stays down must not stop
        // the network: the miners hold the same averaged model, the next
        // epoch publishes as usual, and this epoch's checkpoint stays on
        // disk for `dtrain hub publish`.
        let publish_error = match v.publish(hub, &n.state, epoch, samples) {
            Ok(_) => None,
            Err(e) => {
                let kept = n.state.join(format!("publish-{epoch}"));
                tracing::error!("publishing epoch {epoch} failed: {e}; its checkpoint stays in {}; training goes on", kept.display());
                Some(e)
            }
        };
        let publish_s = t2.elapsed().as_secs_f64();
        let weights = v.scores.lock().unwrap_or_else(|p| p.into_inner()).weights();
        let loss = if losses.is_empty() { f64::NAN } else { losses.iter().sum::<f64>() / losses.len() as f64 };
        record_epoch(&metrics, &v, epoch, loss, eval, train_s, &report, allreduce_s);
        if let Some(path) = &a.weights {
            write_atomic(path, serde_json::to_string_pretty(&weights)?.as_bytes())?;
        }
        // The validator's scoring cost against the miners' work it checked.
        let scored: Vec<&super::validator::TrainScore> = rounds.iter().flatten().filter(|o| o.miner_work_s().is_some()).collect();
        let score_s: f64 = scored.iter().map(|o| o.score_s).sum();
        let miner_work_s: f64 = scored.iter().filter_map(|o| o.miner_work_s()).sum();
        let last = rounds.last().cloned().unwrap_or_default();
        let line = serde_json::json!({
            "epoch": epoch, "loss": loss, "eval_loss": eval.map(|e| e.loss), "eval_tokens": eval.map(|e| e.tokens), "eval_s": eval.map(|e| e.seconds),
            "samples": samples, "train_rounds": rounds.len(), "tokens": tokens, "elapsed_s": started.elapsed().as_secs_f64(),
            "train_s": train_s, "allreduce_s": allreduce_s, "publish_s": publish_s, "publish_error": publish_error,
            "score_s": score_s, "miner_work_s": miner_work_s,
            "allreduce_bytes_in": report.bytes_received, "allreduce_failures": report.failures().len(),
            "allreduce_failed": report.failures().iter().map(|(i, f)| serde_json::json!({"id": report.members[*i].id, "why": f.to_string()})).collect::<Vec<_>>(),
            "allreduce_left_out": v.last_left_out.lock().unwrap_or_else(|p| p.into_inner()).iter()
                .map(|(id, why, proven)| serde_json::json!({"id": id, "why": why, "proven": proven})).collect::<Vec<_>>(),
            "allreduce_bound_s": allreduce_bound(&report, &v.link_rates()),
            "spans": span_shares(&report),
            "bandwidth": bandwidth,
            "participation": *v.last_allreduce.lock().unwrap_or_else(|p| p.into_inner()),
            "weights": weights,
            "scores": v.scores.lock().unwrap_or_else(|p| p.into_inner()).score,
            "last_round": last.iter().map(outcome_json).collect::<Vec<_>>(),
        });
        if let Some(d) = &dashboard {
            d.record(line.clone());
        }
        let held = eval.map_or(String::new(), |e| format!(", held-out loss {:.4}", e.loss));
        tracing::info!(
            "epoch {epoch}: loss {loss:.4}{held}, {samples} samples, train {train_s:.1} s, all-reduce {allreduce_s:.2} s, publish {publish_s:.2} s"
        );
        if let Some(path) = &a.metrics {
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}

/// A follower validator: loads each epoch the master publishes, scores
/// the miners that are at that epoch with Train rounds, writes weights and
/// one metrics line per round. Runs until interrupted or until `epochs`
/// new epochs were published.
fn follow<E: Engine>(a: &ValidatorArgs, v: &Validator<E>, hub: &dyn crate::hub::ModelHub) -> Result<()> {
    let n = &a.node;
    let mut current: Option<u64> = None;
    let mut first = None;
    while !interrupted() {
        let Some(latest) = hub.latest_epoch()? else {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        };
        if current != Some(latest) {
            v.load(hub, &n.state, latest).map_err(anyhow::Error::msg)?;
            current = Some(latest);
            tracing::info!("following epoch {latest}");
        }
        let start = *first.get_or_insert(latest);
        if a.epochs > 0 && latest >= start + a.epochs {
            break;
        }
        // Only miners at our epoch: the replay needs the same model.
        let live: Vec<_> = v.live_miners().into_iter().filter(|(_, e)| *e == latest).map(|(n, _)| n).collect();
        if live.is_empty() {
            std::thread::sleep(Duration::from_millis(300));
            continue;
        }
        // The round counts only if no miner moved to another epoch while
        // it ran (an all-reduce of the master's in between).
        let still = || hub.latest_epoch().ok().flatten() == Some(latest) && v.live_miners().iter().all(|(_, e)| *e == latest);
        let outcomes = v.train_round_if(&live, still);
        if outcomes.is_empty() {
            continue;
        }
        let weights = v.scores.lock().unwrap_or_else(|p| p.into_inner()).weights();
        if let Some(path) = &a.weights {
            write_atomic(path, serde_json::to_string_pretty(&weights)?.as_bytes())?;
        }
        if let Some(path) = &a.metrics {
            let line = serde_json::json!({
                "epoch": latest, "weights": weights,
                "round": outcomes.iter().map(outcome_json).collect::<Vec<_>>(),
            });
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
            writeln!(f, "{line}")?;
        }
    }
    Ok(())
}
