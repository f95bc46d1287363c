//! A master validator, three honest miners and miners that cheat at Train
//! (invented work, rows other than reported, other rows than given, a
//! copied answer, one batch passed off as all) or skip the all-reduce, in
//! one process over five epochs: each cheat is caught every round and ends
//! with under 10% of an honest miner's weight (the skipper trains honestly,
//! but on a model that falls behind), honest miners get at least their
//! all-honest share, and hold exactly the validator's model.

mod common;

use common::network::{Behaviour, network, network_with_grace};
use dtrain::subnet::scoring::Participation;
use std::time::Duration;

#[test]
fn cheating_miners_are_caught_and_end_with_a_small_share_of_the_weight() {
    let behaviours = [
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::Honest,
        Behaviour::InventsWork,
        Behaviour::LiesAboutRows,
        Behaviour::TrainsOtherRows,
        Behaviour::Copies,
        Behaviour::Partial,
        Behaviour::SkipsAllReduce,
    ];
    let net = network("validator", &behaviours, 1);
    for round in 1..=5u64 {
        let outcomes = net.epoch(round);
        for (o, b) in outcomes.iter().zip(behaviours) {
            match b {
                Behaviour::Honest => assert!(o.verified() && o.gradient > 0.99 && o.steps == 1.0, "{b:?} scored {o:?}"),
                // Honest work in the first epoch; after that its model is
                // an epoch stale (it never stepped), which the projections see.
                Behaviour::SkipsAllReduce => assert_eq!(o.verified(), round == 1, "{b:?} scored {o:?}"),
                // The copier has nothing to copy before the first answer.
                Behaviour::Copies if o.error.is_some() => {}
                _ => assert!(!o.verified() && o.check.is_some(), "{b:?} passed: {o:?}"),
            }
        }
        let part = net.validator.last_allreduce.lock().unwrap().clone();
        for (uid, b) in (1u16..).zip(behaviours) {
            let want = if b == Behaviour::Honest { Participation::Success } else { Participation::Fail };
            assert_eq!(part[&uid], want, "uid {uid} {b:?}");
        }
        net.assert_honest_agree(round);
    }
    net.assert_cheats_starved();
}

#[test]
fn a_miner_that_never_answers_train_holds_nobody_up() {
    // The train timeout is an hour; the round must end once the honest
    // miner (the first half) answered and the grace passed. Two miners, so
    // the one that answers is always the honest one: no honest answer can
    // be cut off however loaded the machine is.
    let net = network_with_grace("stall", &[Behaviour::Honest, Behaviour::Silent], 1, Duration::from_secs(2));
    let live: Vec<_> = net.validator.live_miners().into_iter().map(|(n, _)| n).collect();
    assert_eq!(live.len(), 2, "the silent miner answers IsAlive");
    let outcomes = net.validator.train_round(&live);
    assert!(outcomes[0].verified(), "{:?}", outcomes[0]);
    let e = outcomes[1].error.as_deref().unwrap_or_default();
    assert!(e.contains("no answer by the round's deadline"), "{:?}", outcomes[1]);
    // It earns nothing, and the round was scored.
    let weights = net.weights();
    assert_eq!(weights[&2], 0.0);
    assert!(weights[&1] > 0.0);
}

#[test]
fn an_answer_the_validator_never_credited_does_not_cost_the_epoch() {
    use dtrain::allreduce::Identity;
    use dtrain::subnet::protocol::{Query, Train};
    use dtrain::subnet::registry::{FileRegistry, Registry};
    let net = network("uncredited", &[Behaviour::Honest, Behaviour::Honest], 1);
    let live: Vec<_> = net.validator.live_miners().into_iter().map(|(n, _)| n).collect();
    let outcomes = net.validator.train_round(&live);
    assert!(outcomes.iter().all(|o| o.verified()), "{outcomes:?}");
    // Miner 1 then trains once more for a query whose answer the validator
    // never scores (as when it arrives after the round's deadline).
    let node = FileRegistry::new(&net.dir.join("registry.json")).nodes().unwrap()[1].clone();
    let q = Query::Train(Train { gradient_test_index: Some(3), rows: Some(vec![300]), challenge: Some("ab".repeat(32)), ..Train::default() });
    let a = dtrain::subnet::client::send(&Identity::from_seed([1; 32]), &node.public_key().unwrap(), &node.query_addr, &q, Duration::from_secs(600));
    assert!(matches!(a, Ok(Query::Train(_))), "{a:?}");
    // It contributes the credited work, not nothing, and everyone steps alike.
    net.validator.allreduce_round(&live, 1).unwrap();
    let part = net.validator.last_allreduce.lock().unwrap().clone();
    assert_eq!(part[&1], dtrain::subnet::scoring::Participation::Success);
    assert_eq!(part[&2], dtrain::subnet::scoring::Participation::Success);
    let want = net.validator.read_params();
    assert!(net.miners.iter().all(|m| m.read_params() == want));
}
