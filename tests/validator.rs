//! A master validator, three honest miners and four dishonest ones in one
//! process, over two Train rounds and an all-reduce: each dishonest miner
//! ends with a small fraction of an honest miner's weight, honest miners
//! keep theirs, and the honest miners' weights equal the validator's.

use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::{Identity, Peer, PublicKey, Settings};
use dtrain::data::source::{ParquetRows, RowSource};
use dtrain::data::used_rows::UsedRows;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::{Gpt, GptConfig};
use dtrain::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use dtrain::subnet::miner::{Miner, MinerConfig};
use dtrain::subnet::protocol::{Query, Train};
use dtrain::subnet::registry::{FileRegistry, Registry, Role};
use dtrain::subnet::scoring::Participation;
use dtrain::subnet::server::{Handler, QueryServer, ServerConfig};
use dtrain::subnet::validator::{Validator, ValidatorConfig};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn model() -> Gpt<CpuEngine> {
    let mut m = Gpt::new(CpuEngine::new(), GptConfig::preset("small").unwrap()).unwrap();
    m.init_random(3);
    m
}

fn source() -> ParquetRows {
    ParquetRows::open_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")).unwrap()
}

fn settings() -> Settings {
    Settings { codec: Codec::F16, connect_timeout: Duration::from_secs(2), stall_timeout: Duration::from_secs(5), ..Settings::default() }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    Honest,
    /// Makes up its gradient sums.
    InventsSums,
    /// Reports rows other than those it trained on.
    LiesAboutRows,
    /// Answers Train with another miner's earlier answer.
    Replays,
    /// Never takes part in the all-reduce.
    SkipsAllReduce,
    /// Sends garbage (well-framed NaNs) into the all-reduce.
    SendsGarbage,
}

struct Node {
    inner: Arc<Miner>,
    behaviour: Behaviour,
    /// The honest miner 1's last answer (for the replayer).
    spied: Arc<Mutex<Option<Train>>>,
    spy: bool,
}

impl Handler for Node {
    fn known(&self, caller: &PublicKey) -> bool {
        self.inner.known(caller)
    }
    fn state(&self, caller: &PublicKey, tensor: &str) -> Result<Vec<u8>, String> {
        self.inner.state(caller, tensor)
    }
    fn handle(&self, caller: &PublicKey, q: Query) -> Result<Query, String> {
        match (self.behaviour, q) {
            (Behaviour::Replays, Query::Train(_)) => self.spied.lock().unwrap().clone().map(Query::Train).ok_or_else(|| "nothing to copy yet".into()),
            (Behaviour::SkipsAllReduce, Query::AllReduce(_)) => Err("busy".into()),
            (b, q) => {
                let a = self.inner.handle(caller, q)?;
                Ok(match (b, a) {
                    (Behaviour::InventsSums, Query::Train(mut t)) => {
                        t.gradient_sums = t.gradient_sums.map(|s| s.iter().enumerate().map(|(i, _)| 0.01 * (i + 1) as f64).collect());
                        Query::Train(t)
                    }
                    (Behaviour::LiesAboutRows, Query::Train(mut t)) => {
                        t.dataset_indices = t.dataset_indices.map(|r| r.iter().map(|x| (x + 150) % 374).collect());
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

#[test]
fn dishonest_miners_end_with_a_small_share_of_the_weight() {
    let dir = std::env::temp_dir().join(format!("dtrain-validator-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let registry: Arc<dyn Registry> = Arc::new(FileRegistry::new(&dir.join("registry.json")));
    let vpeer = Peer::bind(Identity::from_seed([1; 32]), "127.0.0.1:0".parse().unwrap()).unwrap();
    registry.join(&Identity::from_seed([1; 32]).public(), "127.0.0.1:1", vpeer.local_addr().unwrap(), Role::Validator).unwrap();
    let vm = model();
    let vopt = Optimizer::new(&vm, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let vcfg = ValidatorConfig {
        seq: 64,
        learning_rate: 1e-3,
        allreduce: settings(),
        allreduce_timeout: Duration::from_secs(60),
        ..ValidatorConfig::default()
    };
    let validator = Validator::new(vcfg, Identity::from_seed([1; 32]), registry.clone(), Box::new(source()), vm, vopt, vpeer, 9);

    let behaviours = [
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::InventsSums,
        Behaviour::LiesAboutRows,
        Behaviour::Replays,
        Behaviour::SkipsAllReduce,
        Behaviour::SendsGarbage,
    ];
    let spied = Arc::new(Mutex::new(None));
    let cfg = MinerConfig { batch: 2, seq: 64, rows_per_train: 4, allreduce: settings(), ..MinerConfig::default() };
    let mut servers = Vec::new();
    let mut miners = Vec::new();
    for (i, &behaviour) in behaviours.iter().enumerate() {
        let seed = [20 + i as u8; 32];
        let peer = Peer::bind(Identity::from_seed(seed), "127.0.0.1:0".parse().unwrap()).unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let m = model();
        let opt = Optimizer::new(&m, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
        let src = source();
        let mut used = UsedRows::open(&dir.join(format!("used{i}.bin")), src.num_rows()).unwrap();
        // 374 sample rows: give each miner its own share so that independent
        // random picks do not collide (on fineweb's 519M rows they do not).
        let per = src.num_rows() / behaviours.len() as u64;
        used.mark(0..per * i as u64).unwrap();
        used.mark(per * (i as u64 + 1)..src.num_rows()).unwrap();
        let mut cfg = cfg.clone();
        if behaviour == Behaviour::SendsGarbage {
            cfg.allreduce.fault = Some(dtrain::allreduce::Fault::Garbage);
        }
        let inner = Arc::new(Miner::new(cfg, m, opt, Box::new(src), used, peer, registry.clone(), 100 + i as u64));
        miners.push(inner.clone());
        let node = Arc::new(Node { inner, behaviour, spied: spied.clone(), spy: i == 0 });
        let server = QueryServer::start("127.0.0.1:0".parse().unwrap(), Identity::from_seed(seed), node, ServerConfig::default()).unwrap();
        registry.join(&Identity::from_seed(seed).public(), &server.addr().to_string(), peer_addr, Role::Miner).unwrap();
        servers.push(server);
    }

    for round in 1..=3u64 {
        let live: Vec<_> = validator.live_miners().into_iter().map(|(n, _)| n).collect();
        assert_eq!(live.len(), behaviours.len());
        let outcomes = validator.train_round(&live);
        for (o, b) in outcomes.iter().zip(behaviours) {
            eprintln!("round {round} uid {} {b:?}: gradient {:.3} steps {} error {:?}", o.uid, o.gradient, o.steps, o.error);
            if b == Behaviour::Honest {
                assert!(o.gradient > 0.99 && o.steps == 4.0, "honest miner scored {o:?}");
            }
        }
        let report = validator.allreduce_round(&live, round).unwrap();
        eprintln!("{}", report.summary());
        let bandwidth = validator.bandwidth_round(&live, "transformer.wte.weight", Duration::from_secs(10));
        for (&(uid, score), b) in bandwidth.iter().zip(behaviours) {
            // Whoever stepped with the group holds the validator's model;
            // the skipper does not. (The garbage sender was caught and
            // ignored as a sender, but still received the average.)
            let holds_model = !matches!(b, Behaviour::SkipsAllReduce);
            assert_eq!(score > 0.0, holds_model, "uid {uid} {b:?}: bandwidth {score}");
        }
        let part = validator.last_allreduce.lock().unwrap().clone();
        for (uid, b) in (1u16..).zip(behaviours) {
            // The replayer never trains, so it has nothing to contribute.
            let want = if matches!(b, Behaviour::SkipsAllReduce | Behaviour::Replays | Behaviour::SendsGarbage) {
                Participation::Fail
            } else {
                Participation::Success
            };
            assert_eq!(part[&uid], want, "uid {uid} {b:?}");
        }
    }
    let weights = validator.scores.lock().unwrap().weights();
    eprintln!("{weights:?}");
    let honest_min = (1..=3).map(|u| weights[&u]).fold(f64::INFINITY, f64::min);
    for (uid, b) in (1u16..).zip(behaviours).skip(3) {
        assert!(weights[&uid] < 0.35 * honest_min, "uid {uid} {b:?} has {} against an honest {honest_min}", weights[&uid]);
    }
    // Honest miners hold exactly the validator's model.
    let want = validator.read_params();
    for (i, m) in miners.iter().enumerate().take(3) {
        assert!(m.read_params() == want, "honest miner {i} diverged");
    }
    drop(servers);
    std::fs::remove_dir_all(&dir).unwrap();
}
