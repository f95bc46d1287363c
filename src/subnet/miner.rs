//! The miner: answers IsAlive, Train and AllReduce queries from the
//! registry's validators.
//!
//! - Train: takes the next run of unused rows (the used-rows bitmap),
//!   trains on them with gradient accumulation and no weight update, and
//!   answers with the rows, the per-batch Σ|∇L| of the requested 1-D
//!   parameter, the mean loss and the batch size.
//! - AllReduce: joins the butterfly with the group the validator names
//!   (weight = samples accumulated), then clips the averaged gradient to
//!   norm 1, takes one optimizer step at the sent learning rate, resets the
//!   accumulators, checks that the weights changed and are finite, and
//!   advances its epoch.
//! - In DiLoCo mode (the queries carry `inner_lr` and `outer_lr`; see
//!   `crate::diloco`) each Train batch is an inner AdamW step instead, and
//!   the all-reduce averages Δ = θₑ − θ before the outer Nesterov step.

use super::grad_transfer::GradTransfer;
use super::metrics::NodeMetrics;
use super::protocol::parse_hex32;
use super::protocol::{AllReduce, IsAlive, Query, Train};
use super::registry::{Registry, Role};
use super::server::Handler;
use super::work::{BatchWork, test_tensor, train_batches_with};
use crate::allreduce::audit::{Audit, run_verified};
use crate::allreduce::plan::spans;
use crate::allreduce::projection::Projector;
use crate::allreduce::{Group, Peer, PublicKey, Settings};
use crate::data::loader::RowBatches;
use crate::data::source::RowSource;
use crate::data::source::fetch_rows;
use crate::data::used_rows::UsedRows;
use crate::diloco::OuterState;
use crate::diloco::inner::{InnerStep, train_inner};
use crate::diloco::snapshot::{Kept, SnapshotStore};
use crate::engine::Engine;
use crate::engine::cpu::CpuEngine;
use crate::hub::ModelHub;
use crate::model::{Gpt, checkpoint};
use crate::optim::Optimizer;
use crate::parallel::{Collective, HostSum, Replicas};
use crate::rng::Rng;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most rows a validator may assign in one Train query.
pub const MAX_ASSIGNED_ROWS: usize = 100_000;

#[derive(Debug, Clone)]
pub struct MinerConfig {
    /// Sequences per batch and tokens per sequence.
    pub batch: usize,
    pub seq: usize,
    /// Rows per Train query (the reference: 500).
    pub rows_per_train: u64,
    pub allreduce: Settings,
    /// Used when the query sends no `all_reduce_timeout`.
    pub allreduce_timeout: Duration,
    /// Clip the averaged gradient to this global norm (the reference: 1.0).
    pub max_grad_norm: f32,
    /// Show each Train query's batches on the terminal (stderr, when it
    /// is one).
    pub progress: bool,
}

impl Default for MinerConfig {
    fn default() -> MinerConfig {
        MinerConfig {
            batch: 8,
            seq: 1024,
            rows_per_train: 500,
            allreduce: Settings::default(),
            allreduce_timeout: Duration::from_secs(420),
            max_grad_norm: 1.0,
            progress: false,
        }
    }
}

struct State<E: Engine> {
    /// The model on each device of this node (one, or several summed by
    /// NCCL); replica 0 stands for it.
    replicas: Replicas<E>,
    used: UsedRows,
    rng: Rng,
    /// The hub epoch last loaded.
    loaded: Option<u64>,
    transfer: GradTransfer,
    /// Every replica's accumulator (gradients, weight) before the last
    /// accumulating Train query: if the validator never credited that
    /// answer (it missed the round's deadline), the all-reduce contributes
    /// the work before it instead of nothing.
    before_last: Option<Vec<(Vec<f32>, f64)>>,
    /// DiLoCo mode: this epoch's starting weights θₑ and the samples of
    /// the inner steps taken since (None until the epoch's first Train).
    anchor: Option<(Vec<f32>, f64)>,
    /// DiLoCo's outer momentum (the same on every member: published with
    /// the model).
    outer: OuterState,
    /// DiLoCo with the sparse codec: what the codec dropped of the last
    /// contributions, added to the next pseudo-gradient (error feedback).
    /// This miner's own; zero after a model from the hub.
    feedback: Vec<f32>,
    /// DiLoCo: the snapshots of the last Train queries (by SHA-256), which
    /// the validators that asked may fetch to replay from.
    snapshots: std::collections::VecDeque<Vec<(String, Kept)>>,
}

/// A miner on engine `E` (the CPU by default, a GPU with `CudaEngine`).
pub struct Miner<E: Engine = CpuEngine> {
    cfg: MinerConfig,
    /// Where published models come from, and where downloads go.
    hub: Option<(Arc<dyn ModelHub>, std::path::PathBuf)>,
    state: Mutex<State<E>>,
    /// Outside `state`, so that IsAlive answers at once even while a long
    /// Train or AllReduce holds the model.
    epoch: AtomicU64,
    peer: Mutex<Peer>,
    source: Box<dyn RowSource>,
    registry: Arc<dyn Registry>,
    metrics: Option<Arc<NodeMetrics>>,
    /// Where DiLoCo snapshots wait for a validator's fetch (memory unless
    /// `with_snapshot_dir`).
    store: SnapshotStore,
}

/// XXH3-64 of the weights' bytes.
pub fn params_hash(params: &[f32]) -> u64 {
    // SAFETY: any f32 is 4 readable bytes.
    xxh3::hash64_with_seed(unsafe { std::slice::from_raw_parts(params.as_ptr() as *const u8, 4 * params.len()) }, 0)
}

impl<E: Engine> Miner<E> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: MinerConfig,
        model: Gpt<E>,
        opt: Optimizer<E>,
        source: Box<dyn RowSource>,
        used: UsedRows,
        peer: Peer,
        registry: Arc<dyn Registry>,
        seed: u64,
    ) -> Miner<E> {
        let replicas = Replicas::new(vec![model], vec![opt], Box::new(HostSum));
        let state = State {
            replicas,
            used,
            rng: Rng::new(seed),
            loaded: None,
            transfer: GradTransfer::new(),
            before_last: None,
            anchor: None,
            outer: OuterState::default(),
            feedback: Vec::new(),
            snapshots: Default::default(),
        };
        let (epoch, peer, store) = (AtomicU64::new(0), Mutex::new(peer), SnapshotStore::memory());
        Miner { cfg, hub: None, state: Mutex::new(state), epoch, peer, source, registry, metrics: None, store }
    }

    /// Keeps DiLoCo snapshots in files under `dir` (emptied first) instead
    /// of memory: an epoch's snapshots are H/S times 3× the model.
    pub fn with_snapshot_dir(mut self, dir: &std::path::Path) -> std::io::Result<Miner<E>> {
        self.store = SnapshotStore::in_dir(dir)?;
        Ok(self)
    }

    /// Loads published models from `hub` (downloads under `dir/models`)
    /// whenever the hub's epoch is ahead of this miner's, and records the
    /// XXH3 of its weights after every step in `dir/params.json` (what a
    /// person or a test compares with the published model).
    pub fn with_hub(mut self, hub: Arc<dyn ModelHub>, dir: std::path::PathBuf) -> Miner<E> {
        self.hub = Some((hub, dir));
        self
    }

    /// Records what this miner does into `metrics` (its /metrics endpoint).
    pub fn with_metrics(mut self, metrics: Arc<NodeMetrics>) -> Miner<E> {
        metrics.epoch.set(self.epoch() as i64);
        self.metrics = Some(metrics);
        self
    }

    /// Trains on more devices of this node: `extra` replicas (started like
    /// the first; the hub's model is loaded into all), each Train query's
    /// batches shared among them, their gradients summed by `collective`
    /// before the all-reduce.
    pub fn with_replicas(self, extra: Vec<(Gpt<E>, Optimizer<E>)>, collective: Box<dyn Collective<E>>) -> Miner<E> {
        {
            let mut st = self.lock();
            let (mut models, mut opts) = (std::mem::take(&mut st.replicas.models), std::mem::take(&mut st.replicas.opts));
            for (m, o) in extra {
                models.push(m);
                opts.push(o);
            }
            st.replicas = Replicas::new(models, opts, collective);
        }
        self
    }

    /// Loads the hub's latest epoch if it is ahead of ours (or if we have
    /// never loaded one); returns the epoch loaded.
    pub fn sync_from_hub(&self) -> Result<Option<u64>, String> {
        let Some((hub, dir)) = &self.hub else { return Ok(None) };
        let Some(latest) = hub.latest_epoch().map_err(|e| e.to_string())? else { return Ok(None) };
        let mut st = self.lock();
        if st.loaded.is_some() && latest <= self.epoch() {
            return Ok(None);
        }
        let path = dir.join("models").join(format!("epoch-{latest}"));
        if !path.exists() {
            hub.download(&latest.to_string(), &path).map_err(|e| e.to_string())?;
        }
        let outer = checkpoint::load_outer(&path, &st.replicas.models[0].layout).map_err(|e| e.to_string())?;
        let r = &mut st.replicas;
        for (model, opt) in r.models.iter_mut().zip(r.opts.iter_mut()) {
            checkpoint::load_params_into(&path, model).map_err(|e| e.to_string())?;
            if checkpoint::has_optimizer(&path) {
                *opt = checkpoint::load_optimizer(&path, model).map_err(|e| e.to_string())?;
            } else if outer.is_some() {
                // A DiLoCo model: the inner state is this miner's own and
                // starts again from zero with a model it did not compute.
                *opt = Optimizer::new(model, opt.config).map_err(|e| e.to_string())?;
            }
            model.zero_grads();
        }
        st.outer = outer.unwrap_or_default();
        st.anchor = None;
        st.feedback = Vec::new();
        self.epoch.store(latest, Ordering::SeqCst);
        if let Some(m) = &self.metrics {
            m.epoch.set(latest as i64);
        }
        st.loaded = Some(latest);
        tracing::info!("loaded the published model of epoch {latest}");
        Ok(Some(latest))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<E>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether every replica of the model holds the same weights (they
    /// must: each takes the same step from the same gradients).
    pub fn replicas_agree(&self) -> bool {
        let st = self.lock();
        let first = st.replicas.models[0].read_params();
        st.replicas.models[1..].iter().all(|m| m.read_params() == first)
    }

    /// DiLoCo's outer momentum as this miner holds it.
    pub fn outer_state(&self) -> OuterState {
        self.lock().outer.clone()
    }

    /// ‖e‖ of the error feedback (DiLoCo with the sparse codec: what the
    /// codec dropped, still to be sent).
    pub fn feedback_norm(&self) -> f64 {
        self.lock().feedback.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt()
    }

    /// The model's parameters (the flat arena).
    pub fn read_params(&self) -> Vec<f32> {
        self.lock().replicas.models[0].read_params()
    }

    /// The rows a Train query names (still recorded as used here), or the
    /// next run of unused ones when it names none.
    fn take_rows(&self, used: &mut UsedRows, rng: &mut Rng, assigned: Option<&[u64]>) -> Result<Vec<u64>, String> {
        match assigned {
            Some(rows) => {
                if rows.is_empty() || rows.len() > MAX_ASSIGNED_ROWS {
                    return Err(format!("{} rows assigned (1..={MAX_ASSIGNED_ROWS} accepted)", rows.len()));
                }
                if let Some(bad) = rows.iter().find(|&&r| r >= used.rows()) {
                    return Err(format!("row {bad} assigned, the dataset has {}", used.rows()));
                }
                for &r in rows {
                    used.mark(r..r + 1).map_err(|e| e.to_string())?;
                }
                Ok(rows.to_vec())
            }
            None => Ok(used.take_run(rng, self.cfg.rows_per_train).map_err(|e| e.to_string())?.collect()),
        }
    }

    /// A progress bar over a Train query's `n` batches (hidden unless
    /// asked for), and the metrics' count of them.
    fn batch_progress(&self, n: usize) -> indicatif::ProgressBar {
        let bar = if self.cfg.progress { indicatif::ProgressBar::new(n as u64) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] Train: batch {pos}/{len} (ETA {eta})").expect("valid template"),
        );
        if let Some(m) = &self.metrics {
            m.train_batches_assigned.set(n as i64);
            m.train_batches_done.set(0);
        }
        bar
    }

    fn batch_done(&self, bar: &indicatif::ProgressBar) {
        bar.inc(1);
        if let Some(m) = &self.metrics {
            m.train_batches_done.inc();
        }
    }

    /// Logs a Train query's work and records it in the metrics.
    fn record_train(&self, rows: usize, batches: usize, started: Instant, loss: f64) {
        let (b, t) = (self.cfg.batch, self.cfg.seq);
        let (secs, tokens) = (started.elapsed().as_secs_f64(), (batches * b * t) as u64);
        tracing::info!(
            "Train: {rows} rows, {batches} batches of {b}×{t} in {secs:.1} s ({:.0} tokens/s), loss {loss:.4}",
            tokens as f64 / secs.max(1e-9)
        );
        if let Some(m) = &self.metrics {
            m.train_seconds.observe(secs);
            m.train_tokens.inc_by(tokens);
            m.train_tokens_per_second.set(tokens as f64 / secs.max(1e-9));
            m.train_loss.set(loss);
        }
    }

    fn train(&self, q: Train) -> Result<Train, String> {
        if let Some(lr) = q.inner_lr {
            return self.train_diloco(q, lr);
        }
        if let Err(e) = self.sync_from_hub() {
            tracing::warn!("model hub: {e}");
        }
        let started = Instant::now();
        let index = q.gradient_test_index.ok_or("Train needs gradient_test_index")? as usize;
        let projector = q.challenge.as_deref().map(parse_hex32).transpose().map_err(|e| format!("challenge: {e}"))?.map(|c| Projector::new(&c));
        let (b, t) = (self.cfg.batch, self.cfg.seq);
        let mut st = self.lock();
        let test = test_tensor(&st.replicas.models[0], index).map_err(|e| e.to_string())?;
        let State { used, rng, replicas, before_last, .. } = &mut *st;
        let rows = self.take_rows(used, rng, q.rows.as_deref())?;
        let texts = fetch_rows(self.source.as_ref(), &rows).map_err(|e| e.to_string())?;
        let batches = RowBatches::from_texts(&texts, b, t).map_err(|e| e.to_string())?;
        // Scoring only: the accumulators are put back afterwards. Otherwise
        // they are kept as they were, in case this answer is never credited.
        let snapshot: Vec<(Vec<f32>, f64)> = replicas.models.iter().map(|m| (m.read_grads(), m.grad_weight())).collect();
        let saved = if q.accumulate == Some(false) {
            Some(snapshot)
        } else {
            *before_last = Some(snapshot);
            None
        };
        // Each replica trains a contiguous run of the batches; their
        // per-batch reports, in order, are the answer.
        let bar = self.batch_progress(batches.len());
        let on_batch = || self.batch_done(&bar);
        let shares =
            replicas.map_shared(batches.len(), |model, ks| train_batches_with(model, &batches, ks, b, t, &test, projector.as_ref(), &on_batch));
        bar.finish_and_clear();
        if let Some(saved) = saved {
            for (model, (grads, weight)) in replicas.models.iter_mut().zip(saved) {
                model.write_grads(&grads);
                model.set_grad_weight(weight);
            }
        }
        let mut work = BatchWork::default();
        for share in shares {
            let w = share.map_err(|e| e.to_string())?;
            work.sums.extend(w.sums);
            work.projections.extend(w.projections);
            work.loss_sum += w.loss_sum;
        }
        let loss = if batches.is_empty() { 0.0 } else { work.loss_sum / batches.len() as f64 };
        self.record_train(rows.len(), batches.len(), started, loss);
        Ok(Train {
            dataset_indices: Some(rows),
            gradient_sums: Some(work.sums),
            projections: projector.is_some().then_some(work.projections),
            loss: Some(loss),
            batch_size: Some(b as u32),
            ..q
        })
    }

    /// A Train query in DiLoCo mode: each batch (at most `inner_steps`) is
    /// one inner AdamW step at `inner_lr`, from where the last one left the
    /// weights; the epoch's first query records θₑ. The answer reports each
    /// batch's gradient at its step and the projections of Δ = θₑ − θ so
    /// far. A scoring-only query (a follower's) trains from θₑ and puts the
    /// weights and the inner state back.
    fn train_diloco(&self, q: Train, inner_lr: f64) -> Result<Train, String> {
        if !(inner_lr.is_finite() && inner_lr >= 0.0) {
            return Err(format!("inner_lr {inner_lr} must be a finite number ≥ 0"));
        }
        let max_steps = q.inner_steps.unwrap_or(crate::diloco::MAX_INNER_STEPS);
        if max_steps == 0 || max_steps > crate::diloco::MAX_INNER_STEPS {
            return Err(format!("inner_steps {max_steps} (1..={} accepted)", crate::diloco::MAX_INNER_STEPS));
        }
        let seconds = match q.inner_seconds {
            Some(s) if s.is_finite() && s > 0.0 && s <= crate::diloco::MAX_INNER_SECONDS => Some(Duration::from_secs_f64(s)),
            None => None,
            Some(s) => return Err(format!("inner_seconds {s} (0 < s ≤ {} accepted)", crate::diloco::MAX_INNER_SECONDS)),
        };
        if let Err(e) = self.sync_from_hub() {
            tracing::warn!("model hub: {e}");
        }
        let started = Instant::now();
        let index = q.gradient_test_index.ok_or("Train needs gradient_test_index")? as usize;
        let projector = q.challenge.as_deref().map(parse_hex32).transpose().map_err(|e| format!("challenge: {e}"))?.map(|c| Projector::new(&c));
        let (b, t) = (self.cfg.batch, self.cfg.seq);
        let mut st = self.lock();
        if st.replicas.models.len() != 1 {
            return Err(format!("DiLoCo mode trains on one device per miner for now (this miner has {})", st.replicas.models.len()));
        }
        let test = test_tensor(&st.replicas.models[0], index).map_err(|e| e.to_string())?;
        let every = match q.snapshot_every {
            Some(0) => return Err("snapshot_every 0".into()),
            Some(e) => usize::try_from(e).unwrap_or(usize::MAX),
            None => 0,
        };
        let State { used, rng, replicas, before_last, anchor, snapshots, feedback, .. } = &mut *st;
        let rows = self.take_rows(used, rng, q.rows.as_deref())?;
        let texts = fetch_rows(self.source.as_ref(), &rows).map_err(|e| e.to_string())?;
        let batches = RowBatches::from_texts(&texts, b, t).map_err(|e| e.to_string())?;
        let n = batches.len().min(usize::try_from(max_steps).unwrap_or(usize::MAX));
        let (model, opt) = (&mut replicas.models[0], &mut replicas.opts[0]);
        *before_last = None;
        let scoring_only = q.accumulate == Some(false);
        let saved = scoring_only.then(|| (model.read_params(), opt.read_state(model), opt.step));
        let start = match (&*anchor, scoring_only) {
            (Some((a, _)), true) => {
                model.write_params(a);
                a.clone()
            }
            (Some((a, _)), false) => a.clone(),
            (None, _) => model.read_params(),
        };
        let bar = self.batch_progress(n);
        let step = InnerStep { lr: inner_lr as f32, max_grad_norm: self.cfg.max_grad_norm };
        let deadline = seconds.map(|s| Instant::now() + s);
        let work = train_inner(model, opt, &batches, 0..n, &test, projector.as_ref(), step, every, &self.store, deadline, &|| self.batch_done(&bar));
        bar.finish_and_clear();
        // Bounded by time: the steps it took.
        let n = work.as_ref().map_or(n, |w| w.work.sums.len());
        let pseudo = projector.as_ref().map(|_| crate::diloco::pseudo_gradient(&start, &model.read_params()));
        let delta = projector.as_ref().zip(pseudo.as_ref()).map(|(p, d)| p.project(d, 0));
        // With the sparse codec the all-reduce carries the contribution
        // after error feedback, not Δ: committed here, as it will be sent.
        let codec = self.cfg.allreduce.codec;
        // Its encoding is kept, by digest, for the validator's loss check.
        let contribution = match (&projector, pseudo) {
            (Some(p), Some(d)) if codec.alignment() > 1 => {
                let c = crate::diloco::with_feedback(d, feedback, codec).0;
                let mut bytes = vec![0u8; codec.encoded_len(c.len())];
                codec.encode(&c, &mut bytes);
                Some((p.project(&c, 0), crate::diloco::snapshot::digest(&bytes), bytes))
            }
            _ => None,
        };
        match saved {
            Some((params, (m, v), steps)) => {
                model.write_params(&params);
                opt.write_state(model, &m, &v, steps);
            }
            None if work.is_ok() => anchor.get_or_insert((start, 0.0)).1 += (n * b) as f64,
            // Steps taken, none credited: contributing them would not
            // match the credit, so the all-reduce will take nothing from
            // this miner this epoch.
            None => {
                anchor.get_or_insert((start, 0.0));
            }
        }
        let inner = work.map_err(|e| e.to_string())?;
        // Kept for this query's validator and one other's (a follower's
        // query may come between the master's and its fetch).
        let digests: Vec<String> = inner.snapshots.iter().map(|(d, _)| d.clone()).collect();
        if !scoring_only {
            // The master's query of a new epoch: older snapshots are of
            // weights nobody will replay again.
            snapshots.clear();
        }
        let mut kept = inner.snapshots;
        let (contribution, contribution_digest) = match contribution {
            Some((p, digest, bytes)) => {
                kept.push((digest.clone(), Kept::Memory(Arc::new(bytes))));
                (Some(p), Some(digest))
            }
            None => (None, None),
        };
        snapshots.push_back(kept);
        while snapshots.len() > MAX_SNAPSHOT_SETS {
            snapshots.pop_front();
        }
        let work = inner.work;
        let loss = if n == 0 { 0.0 } else { work.loss_sum / n as f64 };
        self.record_train(rows.len(), n, started, loss);
        Ok(Train {
            dataset_indices: Some(rows),
            gradient_sums: Some(work.sums),
            projections: projector.is_some().then_some(work.projections),
            delta_projections: delta,
            contribution_projections: contribution,
            contribution_digest,
            param_projections: projector.is_some().then_some(inner.params_after),
            snapshot_digests: (every > 0).then_some(digests),
            loss: Some(loss),
            batch_size: Some(b as u32),
            ..q
        })
    }

    /// The group the validator named, from the registry.
    fn group(&self, uids: &[u16]) -> Result<Group, String> {
        let nodes = self.registry.nodes().map_err(|e| e.to_string())?;
        super::registry::group_of(&nodes, uids).map_err(|e| e.to_string())
    }

    fn allreduce(&self, q: AllReduce) -> Result<AllReduce, String> {
        // DiLoCo: the outer step on the averaged pseudo-gradients.
        let outer = match (q.outer_lr, q.outer_momentum) {
            (None, None) => None,
            (Some(lr), mu) => {
                let mu = mu.unwrap_or(0.0);
                crate::diloco::check_outer(lr, mu)?;
                Some((lr as f32, mu as f32))
            }
            (None, Some(_)) => return Err("AllReduce has outer_momentum without outer_lr".into()),
        };
        let lr = match outer {
            Some(_) => 0.0,
            None => q.learning_rate.filter(|lr| lr.is_finite() && *lr >= 0.0).ok_or("AllReduce needs a finite learning_rate ≥ 0")? as f32,
        };
        let round = q.round.ok_or("AllReduce needs a round")?;
        let mut group = self.group(q.group.as_deref().ok_or("AllReduce needs a group")?)?;
        if let Some(f) = &q.fractions {
            super::links::set_fractions(&mut group, f)?;
        }
        let timeout = q.all_reduce_timeout.filter(|t| t.is_finite() && *t > 0.0).map_or(self.cfg.allreduce_timeout, Duration::from_secs_f64);
        let mut settings = self.cfg.allreduce.clone();
        if let Some(t) = q.next_chunk_timeout.filter(|t| t.is_finite() && *t > 0.0) {
            settings.stall_timeout = Duration::from_secs_f64(t);
        }
        if let Some(b) = q.chunk_bytes {
            if !CHUNK_BYTES.contains(&b) {
                return Err(format!("AllReduce chunk_bytes {b}: not within {CHUNK_BYTES:?}"));
            }
            settings.chunk_bytes = b as usize;
        }
        let audit = audit_of(&q, group.len())?;
        // Only a validator may judge the round (miners are not trusted).
        if let Some(a) = audit.as_ref().and_then(|a| a.adjudicator)
            && !matches!(self.registry.by_key(&group.members[a].key), Ok(Some(n)) if n.role == Role::Validator)
        {
            return Err(format!("the adjudicator, member {a}, is not a registered validator"));
        }
        let mut st = self.lock();
        let mut peer = self.peer.lock().unwrap_or_else(|p| p.into_inner());
        let me = group.index_of(&peer.public_key()).ok_or("this miner is not in the group")?;
        tracing::info!("round {round}: joining the all-reduce of {} members as member {me}", group.len());
        let State { replicas, transfer, before_last, anchor, outer: outer_state, snapshots, feedback, .. } = &mut *st;
        let mut pending_feedback = None;
        let (mut weight, base) = match outer {
            None => {
                // An answer the validator never credited (it came too late): go back
                // to the accumulator before it, if that is what was credited. (The
                // snapshot is of this epoch only: taken here whatever happens.)
                let accumulated: f64 = replicas.models.iter().map(|m| m.grad_weight()).sum();
                if let (Some(a), Some(snap)) = (&audit, before_last.take())
                    && accumulated as f32 != a.weights[me]
                    && snap.iter().map(|(_, w)| w).sum::<f64>() as f32 == a.weights[me]
                {
                    tracing::warn!("the validator did not credit the last Train answer: contributing the work before it");
                    for (model, (grads, w)) in replicas.models.iter_mut().zip(snap) {
                        model.write_grads(&grads);
                        model.set_grad_weight(w);
                    }
                }
                replicas.sum_into_first()?;
                (replicas.models[0].finish_accumulation() as f32, None)
            }
            Some(_) => {
                if replicas.models.len() != 1 {
                    return Err(format!("DiLoCo mode runs on one device per miner for now (this miner has {})", replicas.models.len()));
                }
                // The contribution is Δ = θₑ − θ, in the gradient arena the
                // all-reduce reads; a miner that did no inner step this epoch
                // (θ = θₑ) only receives.
                let model = &mut replicas.models[0];
                let (start, w) = anchor.take().unwrap_or_else(|| (model.read_params(), 0.0));
                let delta = crate::diloco::pseudo_gradient(&start, &model.read_params());
                let codec = settings.codec;
                let contribution = if codec.alignment() > 1 && w > 0.0 {
                    // Sparse: Δ plus what earlier rounds dropped, cut to what
                    // the codec carries; the rest waits for the next round
                    // (kept only if this one succeeds).
                    let (c, rest) = crate::diloco::with_feedback(delta, feedback, codec);
                    pending_feedback = Some(rest);
                    c
                } else {
                    delta
                };
                model.write_grads(&contribution);
                model.set_grad_weight(1.0);
                (w as f32, Some(start))
            }
        };
        let model = &mut replicas.models[0];
        if let Some(a) = &audit
            && weight != a.weights[me]
        {
            // Work the validator did not credit (an answer it never got,
            // say) is in the accumulator: this miner can only receive.
            tracing::warn!("accumulated weight {weight}, the validator credited {}: receiving only this round", a.weights[me]);
            weight = 0.0;
        }
        let before = params_hash(base.as_deref().unwrap_or(&model.read_params()));
        let started = Instant::now();
        let deadline = started + timeout;
        let result = match &audit {
            None => (|| {
                let own = spans(model.layout.total, &group.fractions()).map_err(|e| e.to_string())?.swap_remove(me);
                let grad = transfer.download(model, settings.codec, own);
                peer.all_reduce(&group, round, grad, weight, deadline, &settings).map_err(|e| e.to_string())
            })(),
            Some(a) => {
                // Every attempt starts again from this miner's own gradient.
                run_verified(&group, a, &settings, VERIFY_ATTEMPTS, |g, a, s| {
                    let me = g.index_of(&peer.public_key()).ok_or("this miner is not in the group")?;
                    let own = spans(model.layout.total, &g.fractions()).map_err(|e| e.to_string())?.swap_remove(me);
                    let grad = transfer.download(model, settings.codec, own);
                    peer.all_reduce_audited(g, round, grad, weight, deadline, s, Some(a)).map_err(|e| e.to_string())
                })
                .and_then(|v| {
                    if v.clean {
                        return Ok(v.report);
                    }
                    let named: Vec<String> = v.accused.iter().map(|(id, why)| format!("{id}: {why}")).collect();
                    Err(format!("the all-reduce did not verify, not stepping: {}", named.join("; ")))
                })
            }
        };
        drop(peer);
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                // Nobody steps: a DiLoCo miner goes back to θₑ, as everyone
                // stays (its inner steps are lost with the round).
                if let Some(start) = &base {
                    model.write_params(start);
                    model.zero_grads();
                }
                return Err(e);
            }
        };
        tracing::info!("{}", report.summary());
        if let Some(m) = &self.metrics {
            m.record_allreduce(&report, started.elapsed().as_secs_f64());
        }
        // Spans nobody averaged are not applied (see Report::unaveraged_spans).
        let unaveraged = report.unaveraged_spans();
        match (outer, base) {
            (Some((lr, mu)), Some(start)) => {
                let model = &mut replicas.models[0];
                transfer.upload(model, &unaveraged);
                let delta = model.read_grads();
                let mut params = vec![0f32; start.len()];
                outer_state.step(&mut params, &start, &delta, lr, mu);
                model.write_params(&params);
                model.zero_grads();
                snapshots.clear();
                if let Some(rest) = pending_feedback {
                    *feedback = rest;
                }
            }
            _ => {
                // Every replica gets the same averaged gradient and takes the same step.
                let grad_weight = model.grad_weight();
                for (model, opt) in replicas.models.iter_mut().zip(replicas.opts.iter_mut()) {
                    transfer.upload(model, &unaveraged);
                    model.set_grad_weight(grad_weight);
                    opt.clip_and_step(model, lr, self.cfg.max_grad_norm);
                    model.zero_grads();
                }
            }
        }
        let after = replicas.models[0].read_params();
        if after.iter().any(|v| !v.is_finite()) || params_hash(&after) == before {
            return Err("the step left the weights unchanged or non-finite".into());
        }
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(m) = &self.metrics {
            m.epoch.set(epoch as i64);
        }
        if let Some((_, dir)) = &self.hub {
            let line = serde_json::json!({"epoch": epoch, "xxh3": params_hash(&after)}).to_string();
            if let Err(e) = std::fs::write(dir.join("params.json"), line) {
                tracing::warn!("{}: {e}", dir.join("params.json").display());
            }
        }
        Ok(AllReduce { completion: Some("True".into()), ..q })
    }
}

/// Train queries whose DiLoCo snapshots a miner keeps (the master's and a
/// follower's).
pub const MAX_SNAPSHOT_SETS: usize = 2;

/// The chunk sizes an AllReduce query may ask for (encoded bytes).
pub const CHUNK_BYTES: std::ops::RangeInclusive<u64> = (4 << 10)..=(16 << 20);

/// Rounds an audited all-reduce may take (the first and two reruns).
pub const VERIFY_ATTEMPTS: usize = 3;

/// The validator's credit in an AllReduce query, if it sent one.
pub fn audit_of(q: &AllReduce, n: usize) -> Result<Option<Audit>, String> {
    match (&q.challenge, &q.weights, &q.expected) {
        (None, None, None) => Ok(None),
        (Some(c), Some(w), Some(e)) => {
            let a = Audit {
                challenge: parse_hex32(c).map_err(|e| format!("challenge: {e}"))?,
                weights: w.clone(),
                expected: e.clone(),
                adjudicator: q.adjudicator.map(usize::from),
            };
            a.check(n)?;
            Ok(Some(a))
        }
        _ => Err("AllReduce needs all of challenge, weights and expected, or none".into()),
    }
}

/// One parameter tensor of `model` in fp16 (little-endian).
pub fn tensor_fp16<E: Engine>(model: &Gpt<E>, name: &str) -> Result<Vec<u8>, String> {
    let t = model.layout.tensor(name).ok_or_else(|| format!("no tensor {name:?}"))?;
    let params = model.read_params();
    let values = &params[t.offset..t.offset + t.numel()];
    let codec = crate::allreduce::codec::Codec::F16;
    let mut out = vec![0u8; codec.encoded_len(values.len())];
    codec.encode(values, &mut out);
    Ok(out)
}

impl<E: Engine + 'static> Handler for Miner<E> {
    fn state(&self, _caller: &PublicKey, tensor: &str) -> Result<Vec<u8>, String> {
        use crate::diloco::snapshot::{CONTRIBUTION_PREFIX, STATE_PREFIX};
        if let Some(digest) = tensor.strip_prefix(STATE_PREFIX).or_else(|| tensor.strip_prefix(CONTRIBUTION_PREFIX)) {
            let found = self.lock().snapshots.iter().flatten().find(|(d, _)| d == digest).map(|(_, b)| b.clone());
            let kept = found.ok_or_else(|| format!("no DiLoCo snapshot {digest} (they last until the next all-reduce)"))?;
            return kept.bytes().map_err(|e| format!("reading DiLoCo snapshot {digest}: {e}"));
        }
        tensor_fp16(&self.lock().replicas.models[0], tensor)
    }

    fn known(&self, caller: &PublicKey) -> bool {
        matches!(self.registry.by_key(caller), Ok(Some(n)) if n.role == Role::Validator)
    }

    fn known_hotkey(&self, ss58: &str) -> bool {
        self.registry.nodes().is_ok_and(|nodes| nodes.iter().any(|n| n.role == Role::Validator && n.hotkey.as_deref() == Some(ss58)))
    }

    fn handle_hotkey(&self, _ss58: &str, query: Query) -> Result<Query, String> {
        self.answer(query)
    }

    fn handle(&self, _caller: &PublicKey, query: Query) -> Result<Query, String> {
        self.answer(query)
    }
}

impl<E: Engine> Miner<E> {
    /// A query's answer, whoever asked (a dtrain node or a Bittensor hotkey).
    fn answer(&self, query: Query) -> Result<Query, String> {
        match query {
            Query::IsAlive(_) => Ok(Query::IsAlive(IsAlive { completion: Some("True".into()), epoch: Some(self.epoch()) })),
            Query::Train(q) => self.train(q).map(Query::Train),
            Query::AllReduce(q) => self.allreduce(q).map(Query::AllReduce),
        }
    }
}
