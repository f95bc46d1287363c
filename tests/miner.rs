//! Two miners behind their query servers and a validator, in one process:
//! Train answers check out against the validator's replay, and after an
//! AllReduce both miners hold weights bit-identical to the validator's own
//! copy stepped with the averaged gradient (what it would publish). The
//! second miner trains on two replicas (a node with two devices), sharing
//! each query's batches and summing their gradients before the all-reduce.

use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::{Identity, Peer, Settings};
use dtrain::data::loader::RowBatches;
use dtrain::data::source::{ParquetRows, RowSource};
use dtrain::data::used_rows::UsedRows;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::{Gpt, GptConfig};
use dtrain::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use dtrain::parallel::HostSum;
use dtrain::subnet::client::send;
use dtrain::subnet::miner::{Miner, MinerConfig};
use dtrain::subnet::protocol::{AllReduce, IsAlive, Query, Train};
use dtrain::subnet::registry::{FileRegistry, Registry, Role};
use dtrain::subnet::scoring::train_gradient_score;
use dtrain::subnet::server::{QueryServer, ServerConfig};
use dtrain::subnet::work::{replay_batch, test_indices, test_tensor};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn model() -> Gpt<CpuEngine> {
    let mut m = Gpt::new(CpuEngine::new(), GptConfig::preset("small").unwrap()).unwrap();
    m.init_random(11);
    m
}

fn source() -> ParquetRows {
    ParquetRows::open_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")).unwrap()
}

fn settings() -> Settings {
    Settings { codec: Codec::F16, connect_timeout: Duration::from_secs(10), stall_timeout: Duration::from_secs(10), ..Settings::default() }
}

#[test]
fn miners_train_and_average_into_identical_weights() {
    let dir = std::env::temp_dir().join(format!("dtrain-miner-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let registry: Arc<dyn Registry> = Arc::new(FileRegistry::new(&dir.join("registry.json")));
    let validator = Identity::from_seed([1; 32]);
    let mut validator_peer = Peer::bind(Identity::from_seed([1; 32]), "127.0.0.1:0".parse().unwrap()).unwrap();
    registry.join(&validator.public(), "127.0.0.1:1", validator_peer.local_addr().unwrap(), Role::Validator).unwrap();

    let cfg = MinerConfig { batch: 2, seq: 64, rows_per_train: 4, allreduce: settings(), ..MinerConfig::default() };
    let mut miners = Vec::new();
    for i in 0..2u8 {
        let seed = [10 + i; 32];
        let peer = Peer::bind(Identity::from_seed(seed), "127.0.0.1:0".parse().unwrap()).unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let m = model();
        let opt = Optimizer::new(&m, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
        let src = source();
        let used = UsedRows::open(&dir.join(format!("used{i}.bin")), src.num_rows()).unwrap();
        let mut miner = Miner::new(cfg.clone(), m, opt, Box::new(src), used, peer, registry.clone(), i as u64);
        if i == 1 {
            let m2 = model();
            let opt2 = Optimizer::new(&m2, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
            miner = miner.with_replicas(vec![(m2, opt2)], Box::new(HostSum));
        }
        let miner = Arc::new(miner);
        let server = QueryServer::start("127.0.0.1:0".parse().unwrap(), Identity::from_seed(seed), miner.clone(), ServerConfig::default()).unwrap();
        let key = Identity::from_seed(seed).public();
        let uid = registry.join(&key, &server.addr().to_string(), peer_addr, Role::Miner).unwrap();
        assert_eq!(uid, 1 + i as u16);
        miners.push((miner, server, key));
    }
    let t = Duration::from_secs(120);

    // Train: rows, sums that replay, loss, batch size.
    let mut replica = model();
    let index = test_indices(&replica)[3] as u32;
    let test = test_tensor(&replica, index as usize).unwrap();
    for (_, server, key) in &miners {
        let q = Query::Train(Train { gradient_test_index: Some(index), model_name: Some("small".into()), ..Train::default() });
        let Query::Train(a) = send(&validator, key, &server.addr().to_string(), &q, t).unwrap() else { panic!() };
        let rows = a.dataset_indices.unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(a.batch_size, Some(2));
        let sums = a.gradient_sums.unwrap();
        let texts = source().rows(rows[0], rows.len()).unwrap();
        assert_eq!(rows, (rows[0]..rows[0] + 4).collect::<Vec<_>>());
        let batches = RowBatches::from_texts(&texts, 2, 64).unwrap();
        let replayed = vec![(0, replay_batch(&mut replica, &batches, 0, 2, 64, &test, None).unwrap().sum)];
        assert!(train_gradient_score(batches.len(), &sums, &replayed) > 0.999, "{sums:?} vs {replayed:?}");
    }

    // AllReduce: the validator joins with weight 0 and steps its own copy.
    let group = vec![0u16, 1, 2];
    let group_of_all = dtrain::subnet::registry::group_of(&registry.nodes().unwrap(), &group).unwrap();
    let mut mine = model();
    let mut opt = Optimizer::new(&mine, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let lr = 1e-3;
    // The round's chunk size comes in the query (it is in the group
    // digest: a miner that kept its own would never connect); one outside
    // the bounds is refused.
    let chunk_bytes = 64 << 10;
    let (_, server, key) = &miners[0];
    let q = Query::AllReduce(AllReduce {
        learning_rate: Some(lr),
        round: Some(1),
        group: Some(group.clone()),
        chunk_bytes: Some(1),
        ..AllReduce::default()
    });
    let e = send(&validator, key, &server.addr().to_string(), &q, t).unwrap_err().to_string();
    assert!(e.contains("chunk_bytes 1"), "{e}");
    std::thread::scope(|s| {
        for (_, server, key) in &miners {
            let (validator, group) = (&validator, group.clone());
            s.spawn(move || {
                let q = Query::AllReduce(AllReduce {
                    learning_rate: Some(lr),
                    round: Some(1),
                    group: Some(group),
                    all_reduce_timeout: Some(60.0),
                    chunk_bytes: Some(chunk_bytes as u64),
                    ..AllReduce::default()
                });
                let Query::AllReduce(a) = send(validator, key, &server.addr().to_string(), &q, t).unwrap() else { panic!() };
                assert_eq!(a.completion.as_deref(), Some("True"));
            });
        }
        let mut grad = vec![0f32; mine.layout.total];
        let report = validator_peer
            .all_reduce(
                &group_of_all,
                1,
                &mut grad,
                0.0,
                std::time::Instant::now() + Duration::from_secs(60),
                &Settings { chunk_bytes, ..settings() },
            )
            .unwrap();
        assert!(report.failures().is_empty(), "{}", report.summary());
        assert_eq!(report.members[1].contributors, vec![1, 2]);
        mine.write_grads(&grad);
        opt.clip_and_step(&mut mine, lr as f32, 1.0);
    });
    let want = mine.read_params();
    for (i, (miner, server, key)) in miners.iter().enumerate() {
        assert!(miner.read_params() == want, "miner {i} differs from the validator's stepped copy");
        assert!(miner.replicas_agree(), "miner {i}'s replicas differ");
        let Query::IsAlive(a) = send(&validator, key, &server.addr().to_string(), &Query::IsAlive(IsAlive::default()), t).unwrap() else { panic!() };
        assert_eq!(a.epoch, Some(1));
    }
    assert!(want != model().read_params(), "the step changed nothing");
    std::fs::remove_dir_all(&dir).unwrap();
}
