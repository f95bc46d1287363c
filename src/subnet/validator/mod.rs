//! The validator: checks on the registry's miners, sends them Train
//! queries, scores the answers by replaying part of the work, and (the
//! master) runs the all-reduce, steps its own copy of the model with the
//! averaged gradient and records who took part.
//!
//! The validator's model must be the miners' model for the replay to mean
//! anything: the master keeps it in step by joining every all-reduce (with
//! weight 0, receiving only) and applying the same optimizer step.
//!
//! What it checks (docs/SECURITY.md): each Train query names the rows to
//! train on and carries the epoch's projection challenge; the answer's
//! per-batch projections of the whole gradient must agree with replays of
//! sampled batches; what verified answers add up to (weight, projections)
//! is the credit the AllReduce query hands every member, so that the
//! all-reduce admits exactly the verified work (`allreduce::audit`).

mod allreduce_round;
mod diloco;
mod prefetch;

use super::bittensor::hotkey::Hotkey;
use super::client::send;
use super::inner_check::InnerReplay;
use super::protocol::hex32;
use super::protocol::{IsAlive, Query, Train};
use super::registry::{Node, Registry, Role};
use super::scoring::{
    PROJECTION_TOLERANCE, Participation, Scores, TrainMeasure, Uid, allreduce_score, projections_agree, steps_score, train_gradient_score,
    train_round_rewards,
};
use super::work::{replay_batch, test_indices, test_tensor};
use crate::allreduce::identity::random_bytes;
use crate::allreduce::projection::{K, Proj, Projector, axpy};
use crate::allreduce::{Identity, Peer, Settings};
use crate::data::loader::RowBatches;
use crate::data::source::{RowSource, fetch_rows};
use crate::diloco::{DilocoSettings, OuterState};
use crate::engine::Engine;
use crate::engine::cpu::CpuEngine;
use crate::hub::{ModelHub, Published, commit_message};
use crate::model::{Gpt, checkpoint};
use crate::optim::Optimizer;
use crate::rng::Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ValidatorConfig {
    /// The sequence length miners train with (their batch size comes back
    /// in each answer).
    pub seq: usize,
    /// Batches replayed per answer (the reference: 10).
    pub replays: usize,
    pub isalive_timeout: Duration,
    pub train_timeout: Duration,
    /// Largest `dataset_indices` accepted.
    pub max_rows: usize,
    pub learning_rate: f64,
    pub allreduce: Settings,
    pub allreduce_timeout: Duration,
    pub max_grad_norm: f32,
    /// Rows named in each Train query; 0 lets miners choose (the
    /// reference's mode, whose answers can be copied).
    pub rows_per_train: u64,
    /// A replayed batch's projections must agree within this fraction of
    /// its gradient's norm (see `scoring::PROJECTION_TOLERANCE`).
    pub projection_tolerance: f64,
    /// Once half the miners answered a Train query, the rest get this
    /// long or twice the time taken so far, whichever is more (never past
    /// `train_timeout`): a silent miner holds nobody up.
    pub train_grace: Duration,
    /// Whether miners add this validator's Train work to what they
    /// contribute (the master's); a follower's queries are for scoring only.
    pub accumulate: bool,
    /// DiLoCo mode (`diloco`): one Train query per miner per epoch of
    /// `inner_steps` inner steps, then the outer step on the averaged
    /// pseudo-gradients. None: the synchronous mode (one averaged gradient
    /// per epoch, the reference's).
    pub diloco: Option<DilocoSettings>,
    /// DiLoCo: snapshot downloads in flight at once, from different miners
    /// (see `prefetch`; 1: one after another).
    pub snapshot_fetches: usize,
}

impl Default for ValidatorConfig {
    fn default() -> ValidatorConfig {
        ValidatorConfig {
            seq: 1024,
            replays: 10,
            isalive_timeout: Duration::from_millis(2300),
            train_timeout: Duration::from_secs(600),
            max_rows: 100_000,
            learning_rate: 6e-4,
            allreduce: Settings::default(),
            allreduce_timeout: Duration::from_secs(420),
            max_grad_norm: 1.0,
            rows_per_train: 500,
            projection_tolerance: PROJECTION_TOLERANCE,
            train_grace: Duration::from_secs(30),
            accumulate: true,
            diloco: None,
            snapshot_fetches: prefetch::PARALLEL,
        }
    }
}

/// How one miner's Train answer scored.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainScore {
    pub uid: Uid,
    /// `None` when the query failed; the reason.
    pub error: Option<String>,
    pub gradient: f64,
    pub steps: f64,
    pub loss: Option<f64>,
    /// Samples the miner accumulated (rows it reported).
    pub samples: u64,
    /// Tokens in the batches it trained (batches × batch size × seq).
    pub tokens: u64,
    /// Batches in the answer, batches replayed, seconds spent scoring the
    /// answer (fetching its rows, tokenizing, replaying) and replaying.
    pub batches: usize,
    pub replayed: usize,
    pub score_s: f64,
    pub replay_s: f64,
    /// Why the answer failed verification, if it did (a query that failed
    /// is in `error` instead).
    pub check: Option<String>,
    /// DiLoCo with the sparse codec: the loss check's gains.
    pub gauntlet: Option<super::gauntlet::Gains>,
    /// DiLoCo: seconds the replayed snapshot's download took.
    pub fetch_s: f64,
}

impl TrainScore {
    /// Answered, and the answer verified.
    pub fn verified(&self) -> bool {
        self.error.is_none() && self.check.is_none() && self.gradient > 0.0
    }

    /// The miner's work, estimated as its batch count times this
    /// validator's measured cost per replayed batch (the same forward and
    /// backward on the same shapes), in seconds.
    pub fn miner_work_s(&self) -> Option<f64> {
        (self.replayed > 0).then(|| self.batches as f64 * self.replay_s / self.replayed as f64)
    }
}

/// What scoring one answer found and cost.
struct Scored {
    gradient: f64,
    steps: f64,
    samples: u64,
    batches: usize,
    tokens: u64,
    replayed: usize,
    replay_s: f64,
    check: Option<String>,
    /// The answer's weight (batches × batch size) and Σ weight·projections.
    weight: f64,
    proj_sum: Proj,
    /// DiLoCo: the projections of the miner's pseudo-gradient after it.
    delta: Option<Proj>,
    gauntlet: Option<super::gauntlet::Gains>,
    fetch_s: f64,
}

/// What a miner's verified answers since the last all-reduce add up to.
#[derive(Debug, Clone, Copy, Default)]
struct Credit {
    weight: f64,
    proj_sum: Proj,
    /// An answer failed a check: nothing of this epoch is credited.
    failed: bool,
    /// DiLoCo: the projections of the pseudo-gradient the miner stated in
    /// its last answer (what its contribution must be).
    delta: Option<Proj>,
}

/// A validator on engine `E` (the CPU by default, a GPU with `CudaEngine`).
pub struct Validator<E: Engine = CpuEngine> {
    pub cfg: ValidatorConfig,
    identity: Identity,
    registry: Arc<dyn Registry>,
    source: Box<dyn RowSource>,
    model: Mutex<(Gpt<E>, Optimizer<E>)>,
    /// DiLoCo's outer momentum (published with the model).
    outer: Mutex<OuterState>,
    peer: Mutex<Peer>,
    rng: Mutex<Rng>,
    pub scores: Mutex<Scores>,
    pub last_allreduce: Mutex<BTreeMap<Uid, Participation>>,
    /// Who the last all-reduce's attempts left out (uid, why, whether a
    /// check proved it cheated): a rerun's report no longer lists them.
    pub last_left_out: Mutex<Vec<(String, String, bool)>>,
    /// Whether each miner's last Train answer passed verification.
    last_verified: Mutex<BTreeMap<Uid, bool>>,
    /// Each miner's link as the bandwidth probes measured it (bytes/s of
    /// its last correct downloads): what the next all-reduce's spans are
    /// cut by.
    rates: Mutex<crate::subnet::links::LinkRates>,
    /// Rows some miner was already credited with (one bit per dataset
    /// row): a row counts for steps once, so replaying another miner's
    /// answer earns nothing.
    hotkey: Option<Hotkey>,
    credited: Mutex<Vec<u64>>,
    /// Rows named in a Train query already (one bit per dataset row).
    handed_out: Mutex<Vec<u64>>,
    /// The projection challenge of this epoch's Train queries.
    challenge: Mutex<[u8; 32]>,
    credit: Mutex<BTreeMap<Uid, Credit>>,
    seed: u64,
    train_rounds: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends `q` to node `n`: dtrain's signed protocol to a node with a dtrain
/// key, the Bittensor axon convention to one registered by its hotkey
/// alone (the key left empty), when the validator has a hotkey.
fn ask_node(identity: &Identity, hotkey: Option<&Hotkey>, n: &Node, q: &Query, timeout: Duration) -> Result<Query, String> {
    match (n.key.is_empty(), &n.hotkey, hotkey) {
        (false, _, _) => {
            let key = n.public_key().map_err(|e| e.to_string())?;
            send(identity, &key, &n.query_addr, q, timeout).map_err(|e| e.to_string())
        }
        (true, Some(axon), Some(me)) => super::bittensor::dendrite::call(me, axon, &n.query_addr, q, timeout).map_err(|e| e.to_string()),
        (true, Some(_), None) => Err(format!("uid {} speaks only the Bittensor convention: give this validator --bt-hotkey", n.uid)),
        (true, None, _) => Err(format!("uid {} has neither a dtrain key nor a hotkey", n.uid)),
    }
}

/// The first run of `len` clear bits of `bits` (over `rows`) at or after
/// `start`, wrapping around once (whole used words are skipped, so a
/// mostly used bitmap of fineweb's 519M rows is scanned in milliseconds).
fn free_run(bits: &[u64], rows: u64, start: u64, len: u64) -> Option<u64> {
    let scan = |from: u64, to: u64| {
        let (mut r, mut run) = (from, 0u64);
        while r < to {
            let word = bits[(r / 64) as usize];
            if r % 64 == 0 && word == !0 {
                (r, run) = (r + 64, 0);
                continue;
            }
            run = if word >> (r % 64) & 1 == 1 { 0 } else { run + 1 };
            r += 1;
            if run == len {
                return Some(r - len);
            }
        }
        None
    };
    scan(start, rows).or_else(|| scan(0, (start + len).min(rows)))
}

impl<E: Engine> Validator<E> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: ValidatorConfig,
        identity: Identity,
        registry: Arc<dyn Registry>,
        source: Box<dyn RowSource>,
        model: Gpt<E>,
        opt: Optimizer<E>,
        peer: Peer,
        seed: u64,
    ) -> Validator<E> {
        Validator {
            cfg,
            identity,
            registry,
            source,
            model: Mutex::new((model, opt)),
            outer: Mutex::new(OuterState::default()),
            peer: Mutex::new(peer),
            rng: Mutex::new(Rng::new(seed)),
            scores: Mutex::new(Scores::default()),
            last_allreduce: Mutex::new(BTreeMap::new()),
            last_left_out: Mutex::new(Vec::new()),
            last_verified: Mutex::new(BTreeMap::new()),
            rates: Mutex::new(Default::default()),
            credited: Mutex::new(Vec::new()),
            hotkey: None,
            handed_out: Mutex::new(Vec::new()),
            challenge: Mutex::new(random_bytes()),
            credit: Mutex::new(BTreeMap::new()),
            seed,
            train_rounds: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub fn read_params(&self) -> Vec<f32> {
        lock(&self.model).0.read_params()
    }

    /// DiLoCo's outer momentum as this validator holds it.
    pub fn outer_state(&self) -> OuterState {
        lock(&self.outer).clone()
    }

    /// Publishes the validator's model (with optimizer state and
    /// `dtrain.json`: epoch and all-reduce participation) as tag `epoch`.
    /// If the tag exists already, that model is loaded instead (the
    /// reference's rule: the first publisher of an epoch wins).
    pub fn publish(&self, hub: &dyn ModelHub, work: &Path, epoch: u64, batch_size: u64) -> Result<Published, String> {
        let part = lock(&self.last_allreduce).clone();
        let peers = part.values().filter(|p| **p == Participation::Success).count();
        // `seq`: what `dtrain eval` measures a published model at by default.
        let algorithm = if self.cfg.diloco.is_some() { "diloco" } else { "sync" };
        let meta = serde_json::json!({"epoch": epoch, "batch_size": batch_size, "seq": self.cfg.seq, "algorithm": algorithm, "participation": part});
        let dir = work.join(format!("publish-{epoch}"));
        {
            let guard = lock(&self.model);
            let mut extra = vec![("dtrain.json", meta.to_string().into_bytes())];
            // DiLoCo publishes the outer momentum; the inner AdamW state is
            // each miner's own (this validator takes no inner step).
            let opt = match self.cfg.diloco {
                Some(_) => {
                    extra.push((checkpoint::OUTER_FILE, checkpoint::outer_bytes(&guard.0.layout, &lock(&self.outer))));
                    None
                }
                None => Some(&guard.1),
            };
            checkpoint::save(&dir, &guard.0, opt, &extra).map_err(|e| e.to_string())?;
        }
        let p = hub.publish(&dir, &epoch.to_string(), &commit_message(epoch, batch_size, peers)).map_err(|e| e.to_string())?;
        if p.existed {
            self.load(hub, work, epoch)?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(p)
    }

    /// The model's loss on `batches` (the held-out rows; see `eval`).
    pub fn evaluate(&self, batches: &RowBatches) -> Result<crate::eval::Eval, String> {
        crate::eval::evaluate(&mut lock(&self.model).0, batches, |_, _| {}).map_err(|e| e.to_string())
    }

    /// Replaces the validator's model and optimizer with the hub's `epoch`.
    pub fn load(&self, hub: &dyn ModelHub, work: &Path, epoch: u64) -> Result<(), String> {
        let dir = work.join(format!("epoch-{epoch}"));
        if !dir.exists() {
            hub.download(&epoch.to_string(), &dir).map_err(|e| e.to_string())?;
        }
        let mut guard = lock(&self.model);
        checkpoint::load_params_into(&dir, &mut guard.0).map_err(|e| e.to_string())?;
        if checkpoint::has_optimizer(&dir) {
            let opt = checkpoint::load_optimizer(&dir, &guard.0).map_err(|e| e.to_string())?;
            guard.1 = opt;
        }
        *lock(&self.outer) = checkpoint::load_outer(&dir, &guard.0.layout).map_err(|e| e.to_string())?.unwrap_or_default();
        guard.0.zero_grads();
        drop(guard);
        // The published participation map is what this validator's
        // all-reduce scores use when it did not run the all-reduce itself.
        if let Ok(text) = std::fs::read_to_string(dir.join("dtrain.json"))
            && let Ok(meta) = serde_json::from_str::<serde_json::Value>(&text)
            && let Ok(part) = serde_json::from_value::<BTreeMap<Uid, Participation>>(meta["participation"].clone())
        {
            *lock(&self.last_allreduce) = part;
        }
        Ok(())
    }

    /// Lets the validator query miners known only by a Bittensor hotkey
    /// (Python miners), in the SDK's axon convention.
    pub fn with_hotkey(mut self, hotkey: Hotkey) -> Self {
        self.hotkey = Some(hotkey);
        self
    }

    /// Sends `q` to node `n`: dtrain's signed protocol to a node with a
    /// dtrain key, the Bittensor axon convention to one registered by its
    /// hotkey alone (the key left empty), when this validator has a hotkey.
    fn ask(&self, n: &Node, q: &Query, timeout: Duration) -> Result<Query, String> {
        ask_node(&self.identity, self.hotkey.as_ref(), n, q, timeout)
    }

    /// Registered miners that answer IsAlive (failures are counted in the
    /// scores), with their epochs.
    pub fn live_miners(&self) -> Vec<(Node, u64)> {
        let nodes: Vec<Node> = self.registry.nodes().unwrap_or_default().into_iter().filter(|n| n.role == Role::Miner).collect();
        let answers: Vec<Option<u64>> = std::thread::scope(|s| {
            let hs: Vec<_> = nodes
                .iter()
                .map(|n| {
                    s.spawn(move || match self.ask(n, &Query::IsAlive(IsAlive::default()), self.cfg.isalive_timeout) {
                        Ok(Query::IsAlive(a)) if a.completion.as_deref() == Some("True") => Some(a.epoch.unwrap_or(0)),
                        _ => None,
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(None)).collect()
        });
        let mut scores = lock(&self.scores);
        nodes
            .into_iter()
            .zip(answers)
            .filter_map(|(n, a)| {
                scores.isalive(n.uid, a.is_some());
                a.map(|e| (n, e))
            })
            .collect()
    }

    /// Scores one Train answer by replaying up to `replays` of its batches:
    /// the rows must be the ones assigned (when rows were assigned), and
    /// with a projector the answer's per-batch projections must agree with
    /// every replay.
    /// DiLoCo: `pre` holds what `prefetch` downloaded for it.
    fn score_answer(
        &self,
        node: &Node,
        index: usize,
        a: &Train,
        assigned: Option<&[u64]>,
        projector: &Projector,
        pre: Option<prefetch::Prefetched>,
    ) -> Result<Scored, String> {
        let rows = a.dataset_indices.as_ref().ok_or("no dataset_indices")?;
        let sums = a.gradient_sums.as_ref().ok_or("no gradient_sums")?;
        let b = a.batch_size.ok_or("no batch_size")? as usize;
        if rows.is_empty() || rows.len() > self.cfg.max_rows {
            return Err(format!("{} rows (1..={} accepted)", rows.len(), self.cfg.max_rows));
        }
        if b == 0 || b > 1024 {
            return Err(format!("batch_size {b}"));
        }
        let steps = steps_score(rows);
        let samples = rows.len() as u64;
        let failed = |batches: usize, why: String| Scored {
            gradient: 0.0,
            steps,
            samples,
            batches,
            tokens: 0,
            replayed: 0,
            replay_s: 0.0,
            check: Some(why),
            weight: 0.0,
            proj_sum: [0.0; K],
            delta: None,
            gauntlet: None,
            fetch_s: 0.0,
        };
        if let Some(want) = assigned
            && want != rows.as_slice()
        {
            return Ok(failed(0, "reported rows other than the ones it was assigned".into()));
        }
        let texts = fetch_rows(self.source.as_ref(), rows).map_err(|e| e.to_string())?;
        let batches = RowBatches::from_texts(&texts, b, self.cfg.seq).map_err(|e| e.to_string())?;
        // DiLoCo: the miner trains the first `inner_steps` batches, or (with
        // epochs bounded by time) as many of them as it answers for.
        let n = match self.cfg.diloco {
            None => batches.len(),
            Some(d) => {
                let most = batches.len().min(usize::try_from(d.inner_steps).unwrap_or(usize::MAX));
                if d.inner_seconds > 0.0 && (1..=most).contains(&sums.len()) { sums.len() } else { most }
            }
        };
        if n != sums.len() {
            return Ok(failed(n, format!("{} gradient sums for {n} batches", sums.len())));
        }
        let claimed = a.projections.as_deref().unwrap_or_default();
        if claimed.len() != n {
            return Ok(failed(n, format!("{} projections for {n} batches", claimed.len())));
        }
        let delta = match (self.cfg.diloco, a.delta_projections) {
            (None, _) => None,
            (Some(_), Some(d)) if d.iter().all(|v| v.is_finite()) => Some(d),
            (Some(_), _) => return Ok(failed(n, "no finite projections of its pseudo-gradient".into())),
        };
        let mut guard = lock(&self.model);
        let (model, opt) = &mut *guard;
        let test = test_tensor(model, index).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let InnerReplay { sums: replayed_sums, projections: replayed_proj, replay_s: inner_s, gauntlet, fetch_s, .. } = match (self.cfg.diloco, delta)
        {
            (Some(d), Some(delta)) => match self.score_inner(node, model, opt.config, d, &batches, n, &test, projector, a, claimed, delta, pre)? {
                Ok(r) => r,
                Err(why) => return Ok(failed(n, why)),
            },
            _ => {
                let picks: Vec<usize> = {
                    let mut rng = lock(&self.rng);
                    let mut all: Vec<usize> = (0..batches.len()).collect();
                    for k in (1..all.len()).rev() {
                        all.swap(k, rng.below(k as u64 + 1) as usize);
                    }
                    all.truncate(self.cfg.replays);
                    all
                };
                let replays = picks
                    .into_iter()
                    .map(|k| replay_batch(model, &batches, k, b, self.cfg.seq, &test, Some(projector)).map(|r| (k, r)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                model.zero_grads();
                InnerReplay {
                    sums: replays.iter().map(|(k, r)| (*k, r.sum)).collect(),
                    projections: replays.iter().filter_map(|(k, r)| r.projection.map(|(p, norm)| (*k, p, norm))).collect(),
                    failure: None,
                    replay_s: t.elapsed().as_secs_f64(),
                    gauntlet: None,
                    fetch_s: 0.0,
                }
            }
        };
        let replay_s = inner_s;
        drop(guard);
        // The sparse codec: the all-reduce carries Δ after the miner's error
        // feedback, as the miner committed (checked in `score_inner`).
        let delta = if self.cfg.allreduce.codec.alignment() > 1 { a.contribution_projections.filter(|_| delta.is_some()) } else { delta };
        let mut gradient = train_gradient_score(n, sums, &replayed_sums);
        let mut check = None;
        if !projections_agree(n, claimed, &replayed_proj, self.cfg.projection_tolerance) {
            check = Some("its gradient projections do not match the replayed batches".to_string());
            gradient = 0.0;
        } else if gradient == 0.0 {
            check = Some("its gradient sums do not match the replayed batches".to_string());
        }
        let weight = (n * b) as f64;
        let mut proj_sum = [0f64; K];
        for p in claimed {
            axpy(&mut proj_sum, b as f64, p);
        }
        Ok(Scored {
            gradient,
            steps,
            samples,
            batches: n,
            tokens: (n * b * self.cfg.seq) as u64,
            replayed: replayed_sums.len(),
            replay_s,
            check,
            weight,
            proj_sum,
            delta,
            gauntlet,
            fetch_s,
        })
    }

    /// The rows miner `uid` is to train on in Train round `round`: a run of
    /// `rows_per_train` rows nobody was handed yet, after a start derived
    /// from this validator's seed, the uid and the round. When every row
    /// was handed out, a new pass over the dataset begins.
    fn assign_rows(&self, uid: Uid, round: u64) -> Vec<u64> {
        let n = self.source.num_rows();
        let len = self.cfg.rows_per_train.min(n);
        let mut bits = lock(&self.handed_out);
        bits.resize(n.div_ceil(64) as usize, 0);
        let mut rng = Rng::new(self.seed ^ ((uid as u64) << 48) ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let start = rng.below(n.max(1));
        let first = free_run(&bits, n, start, len).or_else(|| {
            tracing::info!("every row of the dataset was handed out: starting a new pass");
            bits.iter_mut().for_each(|w| *w = 0);
            free_run(&bits, n, start, len)
        });
        let Some(first) = first else { return Vec::new() };
        for r in first..first + len {
            bits[(r / 64) as usize] |= 1 << (r % 64);
        }
        (first..first + len).collect()
    }

    /// Sends every miner its query at once and collects the answers until
    /// all arrived or the round's deadline: `train_timeout` at most, and
    /// once half the miners answered, `train_grace` or twice the time
    /// taken so far, whichever is more. Late answers are dropped.
    fn ask_all(&self, miners: &[Node], queries: Vec<Query>) -> Vec<Result<Train, String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, (n, q)) in miners.iter().zip(queries).enumerate() {
            let (tx, n, identity, hotkey, timeout) = (tx.clone(), n.clone(), self.identity.clone(), self.hotkey.clone(), self.cfg.train_timeout);
            // Detached: a miner that never answers must not hold the round.
            std::thread::spawn(move || {
                let a = match ask_node(&identity, hotkey.as_ref(), &n, &q, timeout) {
                    Ok(Query::Train(a)) => Ok(a),
                    Ok(other) => Err(format!("answered {} to Train", other.name())),
                    Err(e) => Err(e),
                };
                let _ = tx.send((i, a));
            });
        }
        drop(tx);
        let start = Instant::now();
        let hard = start + self.cfg.train_timeout;
        let mut got: Vec<Option<Result<Train, String>>> = (0..miners.len()).map(|_| None).collect();
        let (mut count, mut soft) = (0, None::<Instant>);
        while count < miners.len() {
            let until = soft.map_or(hard, |s| s.min(hard));
            let Some(left) = until.checked_duration_since(Instant::now()) else { break };
            match rx.recv_timeout(left) {
                Ok((i, a)) => {
                    got[i] = Some(a);
                    count += 1;
                    if soft.is_none() && 2 * count >= miners.len() {
                        soft = Some(Instant::now() + self.cfg.train_grace.max(2 * start.elapsed()));
                    }
                }
                Err(_) => break,
            }
        }
        let waited = start.elapsed().as_secs_f64();
        got.into_iter().map(|a| a.unwrap_or_else(|| Err(format!("no answer by the round's deadline ({waited:.1} s)")))).collect()
    }

    /// One Train round: queries `miners` at once, scores each answer, folds
    /// the round's rewards into the scores.
    pub fn train_round(&self, miners: &[Node]) -> Vec<TrainScore> {
        self.train_round_if(miners, || true)
    }

    /// Like `train_round`, folding the rewards in only if `still_valid()`
    /// holds once the answers are scored (a follower checks that no new
    /// epoch began meanwhile: answers trained on another model than the
    /// one it replayed with would wrongly score 0).
    pub fn train_round_if(&self, miners: &[Node], still_valid: impl FnOnce() -> bool) -> Vec<TrainScore> {
        let index = {
            let model = &lock(&self.model).0;
            let idx = test_indices(model);
            idx[lock(&self.rng).below(idx.len() as u64) as usize]
        };
        let challenge = *lock(&self.challenge);
        let projector = Projector::new(&challenge);
        let round = self.train_rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let assigned: Vec<Option<Vec<u64>>> = miners.iter().map(|n| (self.cfg.rows_per_train > 0).then(|| self.assign_rows(n.uid, round))).collect();
        let queries = assigned
            .iter()
            .map(|rows| {
                Query::Train(Train {
                    gradient_test_index: Some(index as u32),
                    model_name: Some("gpt2".into()),
                    challenge: Some(hex32(&challenge)),
                    rows: rows.clone(),
                    accumulate: (!self.cfg.accumulate).then_some(false),
                    inner_lr: self.cfg.diloco.map(|d| d.inner_lr_at(lock(&self.outer).steps)),
                    inner_steps: self.cfg.diloco.map(|d| d.inner_steps),
                    inner_seconds: self.cfg.diloco.map(|d| d.inner_seconds).filter(|s| *s > 0.0),
                    snapshot_every: self.cfg.diloco.map(|d| d.every()),
                    ..Train::default()
                })
            })
            .collect();
        let answers = self.ask_all(miners, queries);
        let last = lock(&self.last_allreduce).clone();
        let rows_claimed: Vec<Vec<u64>> =
            answers.iter().map(|a| a.as_ref().ok().and_then(|a| a.dataset_indices.clone()).unwrap_or_default()).collect();
        let mut credits = Vec::with_capacity(miners.len());
        let mut outcomes: Vec<TrainScore> = miners
            .iter()
            .zip(self.score_answers(miners, &answers, &assigned, index, &projector))
            .map(|(n, (scored, score_s))| match scored {
                Ok((s, loss)) => {
                    credits.push(Some((s.weight, s.proj_sum, s.delta)));
                    TrainScore {
                        uid: n.uid,
                        error: None,
                        gradient: s.gradient,
                        steps: s.steps,
                        loss,
                        samples: s.samples,
                        batches: s.batches,
                        tokens: s.tokens,
                        replayed: s.replayed,
                        score_s,
                        replay_s: s.replay_s,
                        check: s.check,
                        gauntlet: s.gauntlet,
                        fetch_s: s.fetch_s,
                    }
                }
                Err(e) => {
                    credits.push(None);
                    TrainScore {
                        uid: n.uid,
                        error: Some(e),
                        gradient: 0.0,
                        steps: 0.0,
                        loss: None,
                        samples: 0,
                        batches: 0,
                        tokens: 0,
                        replayed: 0,
                        score_s,
                        replay_s: 0.0,
                        check: None,
                        gauntlet: None,
                        fetch_s: 0.0,
                    }
                }
            })
            .collect();
        if !still_valid() {
            return Vec::new();
        }
        self.credit_rows(&mut outcomes, &rows_claimed);
        // What verified answers add up to is the all-reduce's credit; a
        // failed check forfeits the whole epoch's and costs score.
        {
            let mut credit = lock(&self.credit);
            let mut scores = lock(&self.scores);
            for (o, c) in outcomes.iter().zip(credits) {
                let entry = credit.entry(o.uid).or_default();
                match (o.verified(), c) {
                    (true, Some((w, p, delta))) if self.cfg.accumulate => {
                        entry.weight += w;
                        axpy(&mut entry.proj_sum, 1.0, &p);
                        // Δ is cumulative: the last answer states it all.
                        entry.delta = delta;
                    }
                    _ if o.check.is_some() => {
                        tracing::warn!("uid {}: {}", o.uid, o.check.as_deref().unwrap_or_default());
                        entry.failed = true;
                        scores.penalize(o.uid);
                    }
                    _ => {}
                }
            }
        }
        let measures: Vec<TrainMeasure> = outcomes
            .iter()
            .map(|o| TrainMeasure {
                uid: o.uid,
                member: last.get(&o.uid) != Some(&Participation::Caught),
                gradient: if o.verified() { o.gradient } else { 0.0 },
                steps: o.steps,
                allreduce: allreduce_score(&last, o.uid),
            })
            .collect();
        lock(&self.scores).fold_round(&train_round_rewards(&measures));
        lock(&self.last_verified).extend(outcomes.iter().map(|o| (o.uid, o.verified())));
        outcomes
    }

    /// Steps count only rows no miner was credited with before and no other
    /// miner claims in this round; then this round's rows are credited.
    fn credit_rows(&self, outcomes: &mut [TrainScore], claimed: &[Vec<u64>]) {
        let n = self.source.num_rows();
        let mut credited = lock(&self.credited);
        credited.resize(n.div_ceil(64) as usize, 0);
        let bit = |c: &Vec<u64>, r: u64| r < n && c[(r / 64) as usize] >> (r % 64) & 1 == 1;
        let mut claims: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
        for rows in claimed {
            for r in rows.iter().collect::<std::collections::HashSet<_>>() {
                *claims.entry(*r).or_default() += 1;
            }
        }
        for (o, rows) in outcomes.iter_mut().zip(claimed) {
            if o.error.is_some() {
                continue;
            }
            let fresh: std::collections::HashSet<u64> = rows.iter().copied().filter(|&r| r < n && !bit(&credited, r) && claims[&r] == 1).collect();
            o.steps = fresh.len() as f64;
        }
        for (o, rows) in outcomes.iter().zip(claimed) {
            if o.verified() {
                for &r in rows.iter().filter(|&&r| r < n) {
                    credited[(r / 64) as usize] |= 1 << (r % 64);
                }
            }
        }
    }
}
