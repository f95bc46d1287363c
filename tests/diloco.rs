//! DiLoCo mode through the real miner and validator (in one process, each
//! miner behind its own query server): with one miner, H = 1, outer lr 1
//! and no momentum it is the synchronous mode step for step; with several
//! miners every member holds the same bits after every outer step, and the
//! published model carries the outer momentum so that a validator or miner
//! loading it resumes exactly; cheats of the Train answer and of the
//! all-reduce are caught as in the synchronous mode.

mod common;

use common::network::{Behaviour, Network, model, network_with};
use dtrain::allreduce::Fault;
use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::{Identity, Peer};
use dtrain::data::source::RowSource;
use dtrain::data::used_rows::UsedRows;
use dtrain::diloco::{DilocoSettings, LrSchedule};
use dtrain::hub::LocalStore;
use dtrain::hub::ModelHub;
use dtrain::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use dtrain::subnet::miner::{Miner, MinerConfig};
use dtrain::subnet::scoring::Participation;
use dtrain::subnet::validator::{Validator, ValidatorConfig};
use std::sync::Arc;
use std::time::Duration;

const GRACE: Duration = Duration::from_secs(120);

/// Runs `epochs` epochs of one batch per miner; returns the validator's
/// weights after each.
/// DiLoCo with `inner_steps` steps, a snapshot every `every`, inner lr
/// 1e-3 and the default outer step (0.7, Nesterov 0.9), bounded by steps.
fn settings(inner_steps: u64, every: u64) -> DilocoSettings {
    DilocoSettings { inner_steps, inner_lr: 1e-3, snapshot_every: every, ..DilocoSettings::default() }
}

fn run_one_batch_epochs(net: &Network, epochs: u64) -> Vec<Vec<f32>> {
    (1..=epochs)
        .map(|round| {
            let outcomes = net.epoch(round);
            assert!(outcomes.iter().all(|o| o.verified()), "round {round}: {outcomes:?}");
            assert!(outcomes.iter().all(|o| o.batches == 1), "round {round}: {outcomes:?}");
            net.assert_honest_agree(round);
            net.validator.read_params()
        })
        .collect()
}

#[test]
fn one_miner_with_one_inner_step_outer_lr_1_and_no_momentum_is_the_synchronous_mode() {
    // One batch per epoch in both modes (one row, packed into 8 × 256
    // tokens), so the synchronous step averages exactly that batch's
    // gradient; fp32 on the wire and a weight of 8 make the average exact.
    let tweak = |diloco: Option<DilocoSettings>| {
        move |v: &mut ValidatorConfig, m: &mut MinerConfig| {
            v.seq = 256;
            m.seq = 256;
            m.batch = 8;
            v.learning_rate = 1e-3;
            v.allreduce.codec = Codec::F32;
            m.allreduce.codec = Codec::F32;
            v.diloco = diloco;
        }
    };
    let sync = network_with("diloco-equiv-sync", &[Behaviour::Honest], 1, GRACE, tweak(None));
    let start = sync.validator.read_params();
    let sync_params = run_one_batch_epochs(&sync, 3);
    drop(sync);
    let d = DilocoSettings { outer_lr: 1.0, outer_momentum: 0.0, ..settings(1, 1) };
    let diloco = network_with("diloco-equiv-diloco", &[Behaviour::Honest], 1, GRACE, tweak(Some(d)));
    let diloco_params = run_one_batch_epochs(&diloco, 3);
    for (epoch, (s, d)) in sync_params.iter().zip(&diloco_params).enumerate() {
        let norm = |x: &mut dyn Iterator<Item = f32>| x.map(|v| (v as f64).powi(2)).sum::<f64>().sqrt();
        let moved = norm(&mut s.iter().zip(&start).map(|(a, b)| a - b));
        let diff = norm(&mut s.iter().zip(d).map(|(a, b)| a - b));
        let apart = s.iter().zip(d).filter(|(a, b)| (*a - *b).abs() > 1e-6).count();
        eprintln!("epoch {}: moved {moved:.3e} (L2), DiLoCo vs synchronous {diff:.3e}, {apart} weights apart by > 1e-6", epoch + 1);
        assert!(moved > 1e-3, "epoch {}: the model did not train", epoch + 1);
        // θₑ − (θₑ − θ) rounds once per step, so the first step agrees to
        // an ulp. After it, Adam's first steps are nearly sign(g): a weight
        // whose gradient is ~0 can turn either way on an ulp, a full step
        // apart; a handful of such weights, nothing more.
        if epoch == 0 {
            assert!(diff < 1e-8 * moved.max(1.0) && apart == 0, "epoch 1: {diff:e}, {apart} apart");
        }
        assert!(diff < 1e-2 * moved, "epoch {}: DiLoCo is {diff:e} from the synchronous mode", epoch + 1);
        assert!(apart * 10_000 < s.len(), "epoch {}: {apart} of {} weights apart", epoch + 1, s.len());
    }
}

#[test]
fn diloco_members_stay_bit_identical_and_the_published_outer_momentum_resumes_exactly() {
    let d = settings(3, 2);
    let net = network_with("diloco-identical", &[Behaviour::Honest; 3], 2, GRACE, |v, _| v.diloco = Some(d));
    let start = net.validator.read_params();
    let mut losses = Vec::new();
    for round in 1..=3u64 {
        let outcomes = net.epoch(round);
        for o in &outcomes {
            assert!(o.verified(), "round {round}: {o:?}");
            assert_eq!(o.batches, 3, "three inner steps each");
        }
        losses.push(outcomes.iter().filter_map(|o| o.loss).sum::<f64>() / outcomes.len() as f64);
        net.assert_honest_agree(round);
        let outer = net.validator.outer_state();
        assert_eq!(outer.steps, round);
        for m in &net.miners {
            assert_eq!(m.outer_state(), outer, "round {round}: a miner's outer momentum differs");
        }
    }
    eprintln!("mean Train loss per epoch: {losses:?}");
    assert!(losses[2] < losses[0], "DiLoCo epochs do not lower the loss: {losses:?}");
    assert_ne!(net.validator.read_params(), start);
    let outer = net.validator.outer_state();
    assert!(outer.momentum.iter().any(|&u| u != 0.0));

    // Published, then loaded by a fresh validator and a late-joining miner:
    // the same weights and the same momentum, bit for bit.
    let hub = Arc::new(LocalStore::open(&net.dir.join("hub")).unwrap());
    net.validator.publish(hub.as_ref(), &net.dir.join("v0"), 3, 6).unwrap();
    let registry: Arc<dyn dtrain::subnet::registry::Registry> = Arc::new(dtrain::subnet::registry::FileRegistry::new(&net.dir.join("registry.json")));
    let mut fresh = model();
    fresh.init_random(77);
    let opt = Optimizer::new(&fresh, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let id = Identity::from_seed([90; 32]);
    let peer = Peer::bind(id.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let cfg = ValidatorConfig { diloco: Some(d), ..ValidatorConfig::default() };
    let v2 = Validator::new(cfg, id, registry.clone(), Box::new(common::network::source()), fresh, opt, peer, 1);
    v2.load(hub.as_ref(), &net.dir.join("v2"), 3).unwrap();
    assert_eq!(v2.read_params(), net.validator.read_params());
    assert_eq!(v2.outer_state(), outer);

    let mut late = model();
    late.init_random(78);
    let opt = Optimizer::new(&late, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let src = common::network::source();
    let used = UsedRows::open(&net.dir.join("late-used.bin"), src.num_rows()).unwrap();
    let peer = Peer::bind(Identity::from_seed([91; 32]), "127.0.0.1:0".parse().unwrap()).unwrap();
    let miner: Miner = Miner::new(MinerConfig::default(), late, opt, Box::new(src), used, peer, registry, 5)
        .with_hub(hub.clone() as Arc<dyn ModelHub>, net.dir.join("late"));
    assert_eq!(miner.sync_from_hub().unwrap(), Some(3));
    assert_eq!(miner.read_params(), net.validator.read_params());
    assert_eq!(miner.outer_state(), outer);
}

#[test]
fn diloco_cheats_are_caught_and_starved() {
    // Two inner steps, one stretch: the validator replays both from the
    // miner's committed snapshot.
    let d = settings(2, 2);
    let behaviours = [
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Honest,
        // Train answers: made-up numbers; the first step's numbers for
        // every step (a step computed, the rest fabricated); the rows given
        // reported, others trained; Δ scaled ×1.5 in the statement and the
        // contribution alike; a snapshot other than the committed one.
        Behaviour::InventsWork,
        Behaviour::Partial,
        Behaviour::TrainsOtherRows,
        Behaviour::ScalesDelta,
        Behaviour::ForgesSnapshot,
        // The all-reduce: a poisoned and a zero Δ, a false weight.
        Behaviour::AllReduce(Fault::Scale(-100.0)),
        Behaviour::AllReduce(Fault::Scale(0.0)),
        Behaviour::AllReduce(Fault::DeclareWeight(1e8)),
    ];
    let net = network_with("diloco-cheats", &behaviours, 2, GRACE, |v, _| v.diloco = Some(d));
    for round in 1..=5u64 {
        let outcomes = net.epoch(round);
        for (o, b) in outcomes.iter().zip(behaviours) {
            // All-reduce cheats train honestly until their first round
            // leaves them on a stale model.
            let want = b == Behaviour::Honest || (round == 1 && matches!(b, Behaviour::AllReduce(_)));
            assert_eq!(o.verified(), want, "round {round} {b:?}: {o:?}");
        }
        let part = net.validator.last_allreduce.lock().unwrap().clone();
        for (uid, b) in (1u16..).zip(behaviours) {
            match (b, round) {
                (Behaviour::Honest, _) => assert_eq!(part[&uid], Participation::Success, "round {round} uid {uid}"),
                (Behaviour::AllReduce(_), 1) => assert_eq!(part[&uid], Participation::Caught, "round 1 uid {uid} {b:?}"),
                _ => assert_ne!(part[&uid], Participation::Success, "round {round} uid {uid} {b:?}"),
            }
        }
        net.assert_honest_agree(round);
    }
    net.assert_cheats_starved();
}

#[test]
fn epochs_bounded_by_time_credit_the_steps_each_miner_took() {
    // A nanosecond: every miner stops after its first step (the first
    // always runs), whatever --inner-steps allows; the validator rebuilds
    // that many batches, replays them and credits one step's samples.
    let d = DilocoSettings { inner_seconds: 1e-9, ..settings(3, 2) };
    let net = network_with("diloco-timed", &[Behaviour::Honest; 3], 3, GRACE, |v, _| v.diloco = Some(d));
    for round in 1..=2u64 {
        for o in net.epoch(round) {
            assert!(o.verified(), "round {round}: {o:?}");
            assert_eq!(o.batches, 1, "round {round}: one step within the time, not {}", o.batches);
        }
        net.assert_honest_agree(round);
    }
    // Bounded by steps alone, the same network trains all three.
    let d = DilocoSettings { inner_seconds: 0.0, ..d };
    let net = network_with("diloco-untimed", &[Behaviour::Honest; 2], 3, GRACE, |v, _| v.diloco = Some(d));
    assert!(net.epoch(1).iter().all(|o| o.verified() && o.batches == 3));
}

#[test]
fn scheduled_rates_are_sent_replayed_and_stepped_alike_every_epoch() {
    // Warmup then cosine: a different inner rate each epoch; a validator
    // replaying at any other rate than it sent would fail every honest
    // miner (the update projections would not match). The outer rate
    // follows the same schedule: every member steps alike.
    let schedule: LrSchedule = "cosine:3:1".parse().unwrap();
    let d = DilocoSettings { inner_lr_schedule: schedule, outer_lr_schedule: schedule, ..settings(2, 2) };
    let rates: Vec<f64> = (0..3).map(|e| d.inner_lr_at(e)).collect();
    assert!(rates[0] < rates[1] && rates[2] < rates[1], "{rates:?}");
    let net = network_with("diloco-schedule", &[Behaviour::Honest; 2], 2, GRACE, |v, _| v.diloco = Some(d));
    for round in 1..=3u64 {
        for o in net.epoch(round) {
            assert!(o.verified(), "round {round} (inner lr {:e}): {o:?}", rates[round as usize - 1]);
        }
        net.assert_honest_agree(round);
        assert_eq!(net.validator.outer_state().steps, round);
    }
}

#[test]
fn diloco_with_the_sparse_codec_keeps_members_identical_and_names_a_poisoner() {
    // Top-k with error feedback: every member applies the same sparse
    // average; a miner sending its contribution × −100 is caught.
    let d = settings(2, 2);
    let codec = Codec::TopK { block: 1024, k: 16, wide: false };
    let behaviours = [
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::AllReduce(Fault::Scale(-100.0)),
        // Its sparse contribution negated but consistently committed: only
        // the loss check can see it.
        Behaviour::FlipsSparseContribution,
    ];
    let net = network_with("diloco-topk", &behaviours, 2, GRACE, |v, m| {
        v.diloco = Some(d);
        v.allreduce.codec = codec;
        m.allreduce.codec = codec;
    });
    let start = net.validator.read_params();
    for round in 1..=3u64 {
        let outcomes = net.epoch(round);
        let part = net.validator.last_allreduce.lock().unwrap().clone();
        for ((o, b), uid) in outcomes.iter().zip(behaviours).zip(1u16..) {
            if b == Behaviour::Honest {
                assert!(o.verified(), "round {round}: {o:?}");
                assert_eq!(part[&uid], Participation::Success, "round {round} uid {uid}");
                let g = o.gauntlet.expect("the loss check ran");
                eprintln!("round {round} uid {uid}: the contribution lowers the loss by {:.4} on its rows, {:.4} on others", g.own, g.other);
            } else if b == Behaviour::FlipsSparseContribution {
                assert!(o.check.as_deref().is_some_and(|c| c.contains("lowers the loss")), "round {round}: {o:?}");
                assert_ne!(part[&uid], Participation::Success);
            } else {
                assert_ne!(part[&uid], Participation::Success, "round {round}: the poisoner was averaged");
            }
        }
        net.assert_honest_agree(round);
    }
    // The step is sparse: most weights of a tensor moved by the outer
    // momentum of a few entries per block, not all of them.
    let (after, moved) = (net.validator.read_params(), |a: &[f32], b: &[f32]| a.iter().zip(b).filter(|(x, y)| x != y).count());
    let n = moved(&start, &after);
    assert!(n > 0 && n < start.len() / 4, "{n} of {} weights moved after three sparse steps", start.len());
    for m in &net.miners[..3] {
        assert!(m.feedback_norm() > 0.0, "an honest miner keeps what the codec dropped");
    }
    net.assert_cheats_starved();
}

#[test]
fn a_stale_or_absent_diloco_miner_is_not_paid() {
    // A miner that never takes the outer step (it skips the all-reduce)
    // trains its next epochs from a stale model: its first snapshot is not
    // θₑ and its stated Δ does not start there.
    let d = settings(2, 1);
    let behaviours = [Behaviour::Honest, Behaviour::Honest, Behaviour::Honest, Behaviour::SkipsAllReduce];
    let net = network_with("diloco-stale", &behaviours, 2, GRACE, |v, _| v.diloco = Some(d));
    for round in 1..=5u64 {
        let outcomes = net.epoch(round);
        assert_eq!(outcomes[3].verified(), round == 1, "round {round}: {:?}", outcomes[3]);
        if round > 1 {
            let why = outcomes[3].check.as_deref().unwrap_or_default();
            assert!(why.contains("epoch's model") || why.contains("pseudo-gradient"), "round {round}: {why}");
        }
        net.assert_honest_agree(round);
    }
    net.assert_cheats_starved();
}
