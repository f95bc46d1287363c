//! A master validator and miners in one process, each miner behind its own
//! query server, some of them cheating: the harness of tests/validator.rs
//! and tests/validator_allreduce.rs.

use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::{Fault, Identity, Peer, PublicKey, Settings};
use dtrain::data::source::{ParquetRows, RowSource};
use dtrain::data::used_rows::UsedRows;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::{Gpt, GptConfig};
use dtrain::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use dtrain::subnet::miner::{Miner, MinerConfig};
use dtrain::subnet::protocol::{Query, Train};
use dtrain::subnet::registry::{FileRegistry, Registry, Role};
use dtrain::subnet::server::{Handler, QueryServer, ServerConfig};
use dtrain::subnet::validator::{Validator, ValidatorConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn model() -> Gpt<CpuEngine> {
    let mut m = Gpt::new(CpuEngine::new(), GptConfig::preset("small").unwrap()).unwrap();
    m.init_random(3);
    m
}

pub fn source() -> ParquetRows {
    ParquetRows::open_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")).unwrap()
}

/// Timeouts far beyond what a loaded machine needs: a member that joins
/// never waits for them, only one that never does.
pub fn settings() -> Settings {
    Settings { codec: Codec::F16, connect_timeout: Duration::from_secs(15), stall_timeout: Duration::from_secs(60), ..Settings::default() }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Behaviour {
    Honest,
    /// Makes up its gradient sums and projections.
    InventsWork,
    /// Trains on the rows it was given but reports others.
    LiesAboutRows,
    /// Trains on other rows than it was given, and reports the given ones.
    TrainsOtherRows,
    /// Answers Train with the first honest miner's latest answer.
    Copies,
    /// Reports the first batch's projections (and sum) for every batch, as
    /// a miner computing one batch of many would.
    Partial,
    /// Never takes part in the all-reduce.
    SkipsAllReduce,
    /// Answers IsAlive, never answers Train.
    Silent,
    /// Trains honestly, then cheats in the all-reduce.
    AllReduce(Fault),
    /// DiLoCo: states and contributes its pseudo-gradient × 1.5, both
    /// consistently (so the all-reduce alone would not see it).
    ScalesDelta,
    /// DiLoCo: serves snapshots other than the ones it committed to.
    ForgesSnapshot,
    /// DiLoCo with the sparse codec: trains honestly, then commits to and
    /// serves its sparse contribution negated (consistently: projections,
    /// digest and bytes agree, at the honest norm).
    FlipsSparseContribution,
}

pub struct Node {
    pub inner: Arc<Miner>,
    pub behaviour: Behaviour,
    /// The first honest miner's last answer (for the copier).
    spied: Arc<Mutex<Option<Train>>>,
    spy: bool,
    /// The all-reduce's codec, and the contribution it made up (digest,
    /// encoding) for `FlipsSparseContribution`.
    codec: dtrain::allreduce::codec::Codec,
    forged: Mutex<Option<(String, Vec<u8>)>>,
}

impl Node {
    /// `FlipsSparseContribution`: the answer's sparse contribution negated,
    /// with projections on the query's challenge and a digest to match.
    fn flip_contribution(&self, caller: &PublicKey, challenge: Option<&str>, mut t: Train) -> Result<Train, String> {
        let (Some(digest), Some(challenge)) = (t.contribution_digest.clone(), challenge) else { return Ok(t) };
        let bytes = self.inner.state(caller, &format!("{}{digest}", dtrain::diloco::snapshot::CONTRIBUTION_PREFIX))?;
        let mut c = vec![0f32; self.inner.read_params().len()];
        self.codec.decode(&bytes, &mut c).map_err(|e| e.to_string())?;
        c.iter_mut().for_each(|v| *v = -*v);
        let mut flipped = vec![0u8; bytes.len()];
        self.codec.encode(&c, &mut flipped);
        let p = dtrain::allreduce::projection::Projector::new(&dtrain::subnet::protocol::parse_hex32(challenge)?);
        t.contribution_projections = Some(p.project(&c, 0));
        let d = dtrain::diloco::snapshot::digest(&flipped);
        t.contribution_digest = Some(d.clone());
        *self.forged.lock().unwrap() = Some((d, flipped));
        Ok(t)
    }
}

impl Handler for Node {
    fn known(&self, caller: &PublicKey) -> bool {
        self.inner.known(caller)
    }
    fn state(&self, caller: &PublicKey, tensor: &str) -> Result<Vec<u8>, String> {
        if let Some((d, b)) = self.forged.lock().unwrap().as_ref()
            && tensor.ends_with(d.as_str())
        {
            return Ok(b.clone());
        }
        let mut bytes = self.inner.state(caller, tensor)?;
        if self.behaviour == Behaviour::ForgesSnapshot && tensor.starts_with(dtrain::diloco::snapshot::STATE_PREFIX) {
            // A weight of the snapshot nudged: a state it never had.
            let at = bytes.len() - 4;
            let v = f32::from_le_bytes(bytes[at..].try_into().unwrap()) + 1e-3;
            bytes[at..].copy_from_slice(&v.to_le_bytes());
        }
        Ok(bytes)
    }
    fn handle(&self, caller: &PublicKey, q: Query) -> Result<Query, String> {
        match (self.behaviour, q) {
            (Behaviour::Copies, Query::Train(_)) => self.spied.lock().unwrap().clone().map(Query::Train).ok_or_else(|| "nothing to copy yet".into()),
            (Behaviour::SkipsAllReduce, Query::AllReduce(_)) => Err("busy".into()),
            (Behaviour::Silent, Query::Train(_)) => loop {
                std::thread::park();
            },
            (Behaviour::FlipsSparseContribution, Query::Train(t)) => {
                let challenge = t.challenge.clone();
                let Query::Train(a) = self.inner.handle(caller, Query::Train(t))? else { unreachable!() };
                Ok(Query::Train(self.flip_contribution(caller, challenge.as_deref(), a)?))
            }
            (Behaviour::TrainsOtherRows, Query::Train(mut t)) => {
                let given = t.rows.clone();
                t.rows = given.as_ref().map(|r| r.iter().map(|x| (x + 150) % 374).collect());
                let Query::Train(mut a) = self.inner.handle(caller, Query::Train(t))? else { unreachable!() };
                a.dataset_indices = given;
                Ok(Query::Train(a))
            }
            (b, q) => {
                let a = self.inner.handle(caller, q)?;
                Ok(match (b, a) {
                    (Behaviour::InventsWork, Query::Train(mut t)) => {
                        t.gradient_sums = t.gradient_sums.map(|s| s.iter().enumerate().map(|(i, _)| 0.01 * (i + 1) as f64).collect());
                        t.projections = t.projections.map(|p| p.iter().enumerate().map(|(i, _)| [0.1 * i as f64; 4]).collect());
                        Query::Train(t)
                    }
                    (Behaviour::LiesAboutRows, Query::Train(mut t)) => {
                        t.dataset_indices = t.dataset_indices.map(|r| r.iter().map(|x| (x + 150) % 374).collect());
                        Query::Train(t)
                    }
                    (Behaviour::ScalesDelta, Query::Train(mut t)) => {
                        t.delta_projections = t.delta_projections.map(|d| d.map(|v| 1.5 * v));
                        Query::Train(t)
                    }
                    (Behaviour::Partial, Query::Train(mut t)) => {
                        t.gradient_sums = t.gradient_sums.map(|s| vec![s[0]; s.len()]);
                        t.projections = t.projections.map(|p| vec![p[0]; p.len()]);
                        Query::Train(t)
                    }
                    (_, Query::Train(t)) if self.spy => {
                        *self.spied.lock().unwrap() = Some(t.clone());
                        Query::Train(t)
                    }
                    (_, a) => a,
                })
            }
        }
    }
}

pub struct Network {
    pub dir: PathBuf,
    pub validator: Validator,
    pub miners: Vec<Arc<Miner>>,
    pub behaviours: Vec<Behaviour>,
    _servers: Vec<QueryServer>,
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A master validator (uid 0) and one miner per behaviour (uids 1…), each
/// Train query naming `rows` rows.
pub fn network(name: &str, behaviours: &[Behaviour], rows: u64) -> Network {
    // Long enough for any loaded machine: only a silent miner waits it out.
    network_with_grace(name, behaviours, rows, Duration::from_secs(120))
}

/// [`network`] whose Train rounds give the slower half of the miners
/// `grace` (and never end before the whole train timeout of an hour
/// otherwise).
pub fn network_with_grace(name: &str, behaviours: &[Behaviour], rows: u64, grace: Duration) -> Network {
    network_with(name, behaviours, rows, grace, |_, _| {})
}

/// [`network_with_grace`] with the validator's and the miners' settings
/// changed by `tweak` first.
pub fn network_with(
    name: &str,
    behaviours: &[Behaviour],
    rows: u64,
    grace: Duration,
    tweak: impl Fn(&mut ValidatorConfig, &mut MinerConfig),
) -> Network {
    let dir = std::env::temp_dir().join(format!("dtrain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let registry: Arc<dyn Registry> = Arc::new(FileRegistry::new(&dir.join("registry.json")));
    let vid = Identity::from_seed([1; 32]);
    let vpeer = Peer::bind(vid.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    registry.join(&vid.public(), "127.0.0.1:1", vpeer.local_addr().unwrap(), Role::Validator).unwrap();
    let vm = model();
    let vopt = Optimizer::new(&vm, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let mut vcfg = ValidatorConfig {
        seq: 64,
        replays: 3,
        learning_rate: 1e-3,
        allreduce: settings(),
        allreduce_timeout: Duration::from_secs(600),
        rows_per_train: rows,
        train_grace: grace,
        train_timeout: Duration::from_secs(3600),
        ..ValidatorConfig::default()
    };
    let mut cfg = MinerConfig { batch: 2, seq: 64, rows_per_train: rows, allreduce: settings(), ..MinerConfig::default() };
    tweak(&mut vcfg, &mut cfg);
    let validator = Validator::new(vcfg, vid, registry.clone(), Box::new(source()), vm, vopt, vpeer, 9);
    let spied = Arc::new(Mutex::new(None));
    let first_honest = behaviours.iter().position(|b| *b == Behaviour::Honest);
    let (mut servers, mut miners) = (Vec::new(), Vec::new());
    for (i, &behaviour) in behaviours.iter().enumerate() {
        let seed = [20 + i as u8; 32];
        let peer = Peer::bind(Identity::from_seed(seed), "127.0.0.1:0".parse().unwrap()).unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let m = model();
        let opt = Optimizer::new(&m, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
        let src = source();
        let used = UsedRows::open(&dir.join(format!("used{i}.bin")), src.num_rows()).unwrap();
        let mut cfg = cfg.clone();
        if let Behaviour::AllReduce(f) = behaviour {
            cfg.allreduce.fault = Some(f);
        }
        if behaviour == Behaviour::ScalesDelta {
            cfg.allreduce.fault = Some(Fault::Scale(1.5));
        }
        let codec = cfg.allreduce.codec;
        let inner = Arc::new(Miner::new(cfg, m, opt, Box::new(src), used, peer, registry.clone(), 100 + i as u64));
        miners.push(inner.clone());
        let node = Arc::new(Node { inner, behaviour, spied: spied.clone(), spy: Some(i) == first_honest, codec, forged: Mutex::new(None) });
        let server = QueryServer::start("127.0.0.1:0".parse().unwrap(), Identity::from_seed(seed), node, ServerConfig::default()).unwrap();
        registry.join(&Identity::from_seed(seed).public(), &server.addr().to_string(), peer_addr, Role::Miner).unwrap();
        servers.push(server);
    }
    Network { dir, validator, miners, behaviours: behaviours.to_vec(), _servers: servers }
}

impl Network {
    /// One epoch: a Train round, the all-reduce, the bandwidth round.
    /// Returns the Train outcomes.
    pub fn epoch(&self, round: u64) -> Vec<dtrain::subnet::validator::TrainScore> {
        let live: Vec<_> = self.validator.live_miners().into_iter().map(|(n, _)| n).collect();
        assert_eq!(live.len(), self.behaviours.len());
        let outcomes = self.validator.train_round(&live);
        for (o, b) in outcomes.iter().zip(&self.behaviours) {
            eprintln!("round {round} uid {} {b:?}: gradient {:.3} steps {} error {:?} check {:?}", o.uid, o.gradient, o.steps, o.error, o.check);
        }
        let report = self.validator.allreduce_round(&live, round).unwrap();
        eprintln!("{}", report.summary());
        self.validator.bandwidth_round(&live, "transformer.wte.weight", Duration::from_secs(30));
        outcomes
    }

    /// Miner weights by uid (the validator's L1-normalised scores).
    pub fn weights(&self) -> std::collections::BTreeMap<u16, f64> {
        self.validator.scores.lock().unwrap().weights()
    }

    /// Honest miners hold exactly the validator's model.
    pub fn assert_honest_agree(&self, round: u64) {
        let want = self.validator.read_params();
        for (i, (m, b)) in self.miners.iter().zip(&self.behaviours).enumerate() {
            assert!(*b != Behaviour::Honest || m.read_params() == want, "round {round}: honest miner {i} diverged");
        }
    }

    /// Every honest miner holds at least 95% of its all-honest share (1/N),
    /// every other one under 10% of the least honest miner's weight.
    pub fn assert_cheats_starved(&self) {
        let weights = self.weights();
        eprintln!("{weights:?}");
        let honest = |b: &Behaviour| *b == Behaviour::Honest;
        let uids = (1u16..).zip(&self.behaviours);
        let honest_min = uids.clone().filter(|(_, b)| honest(b)).map(|(u, _)| weights[&u]).fold(f64::INFINITY, f64::min);
        assert!(honest_min >= 0.95 / self.behaviours.len() as f64, "honest {honest_min}");
        for (uid, b) in uids.filter(|(_, b)| !honest(b)) {
            assert!(weights[&uid] < 0.1 * honest_min, "uid {uid} {b:?} has {} against an honest {honest_min}", weights[&uid]);
        }
    }
}
