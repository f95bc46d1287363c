//! The validator's scoring rules against hand-computed cases.

use dtrain::subnet::scoring::*;
use std::collections::BTreeMap;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn gradient_score_follows_the_relative_difference() {
    // rel = 0 and 0.1 → mean 0.05 → 0.95.
    assert!(close(gradient_score(&[(2.0, 2.0), (10.0, 9.0)]), 0.95));
    // rel = 0.2, 0.4 → 0.7 < 0.75 → 0.
    assert_eq!(gradient_score(&[(1.0, 0.8), (1.0, 0.6)]), 0.0);
    // exactly at the floor stays: rel 0.25 → 0.75.
    assert!(close(gradient_score(&[(4.0, 3.0)]), 0.75));
    // opposite signs: |1 − (−1)| / 1 = 2 → floored at 0.
    assert_eq!(gradient_score(&[(1.0, -1.0)]), 0.0);
    // both zero: 0/1e-8 = 0 → 1.
    assert_eq!(gradient_score(&[(0.0, 0.0)]), 1.0);
    assert_eq!(gradient_score(&[]), 0.0);
    assert_eq!(gradient_score(&[(f64::NAN, 1.0)]), 0.0);
    assert_eq!(gradient_score(&[(f64::INFINITY, 1.0)]), 0.0);
}

#[test]
fn batch_counts_and_steps() {
    let sums = [1.0, 2.0, 4.0];
    // Batches 0 and 2 replayed: rel 0 and 0.2 → 0.9.
    assert!(close(train_gradient_score(3, &sums, &[(0, 1.0), (2, 5.0)]), 0.9));
    // The rebuilt batch count must match the number of sums.
    assert_eq!(train_gradient_score(4, &sums, &[(0, 1.0)]), 0.0);
    assert_eq!(train_gradient_score(0, &[], &[]), 0.0);
    assert_eq!(train_gradient_score(3, &sums, &[(3, 1.0)]), 0.0);
    assert_eq!(steps_score(&[5, 6, 6, 7, 5]), 3.0);
    assert_eq!(steps_score(&[]), 0.0);
}

#[test]
fn allreduce_participation_is_looked_up_by_uid() {
    let last = BTreeMap::from([(3, Participation::Success), (4, Participation::Fail), (5, Participation::NonParticipating)]);
    assert_eq!(allreduce_score(&last, 3), 1.0);
    assert_eq!(allreduce_score(&last, 4), 0.0);
    assert_eq!(allreduce_score(&last, 5), 0.0);
    assert_eq!(allreduce_score(&last, 6), 0.0);
}

#[test]
fn bandwidth_score_is_the_unused_share_of_the_timeout() {
    assert!(close(bandwidth_score(Some(2.5), 10.0), 0.75));
    assert_eq!(bandwidth_score(Some(12.0), 10.0), 0.0);
    assert_eq!(bandwidth_score(None, 10.0), 0.0);
    assert_eq!(bandwidth_score(Some(f64::NAN), 10.0), 0.0);
    assert_eq!(bandwidth_score(Some(1.0), 0.0), 0.0);
}

#[test]
fn train_round_rewards_normalise_gradient_and_steps() {
    // g = (3, 4) → (0.6, 0.8); s = (1, 1) → (1/√2, 1/√2).
    let m = [
        TrainMeasure { uid: 1, member: true, gradient: 3.0, steps: 500.0, allreduce: 1.0 },
        TrainMeasure { uid: 2, member: true, gradient: 4.0, steps: 500.0, allreduce: 0.0 },
        TrainMeasure { uid: 3, member: false, gradient: 0.0, steps: 0.0, allreduce: 1.0 },
    ];
    let r = train_round_rewards(&m);
    let h = std::f64::consts::FRAC_1_SQRT_2;
    assert_eq!(r[0].0, 1);
    assert!(close(r[0].1, 0.5 * 0.6 * h + 0.5));
    assert!(close(r[1].1, 0.5 * 0.8 * h));
    assert_eq!(r[2].1, 0.0);
    // A failed verification (gradient 0) earns nothing, all-reduce or not.
    let cheat = [TrainMeasure { uid: 4, member: true, gradient: 0.0, steps: 500.0, allreduce: 1.0 }, m[0]];
    assert_eq!(train_round_rewards(&cheat)[0].1, 0.0);
    assert_eq!(allreduce_round_rewards(&[(1, true, 0.5), (2, false, 0.9)]), vec![(1, 0.5), (2, 0.0)]);
}

#[test]
fn scores_move_by_the_moving_average_and_weights_sum_to_one() {
    let mut s = Scores::default();
    // Rewards 3 and 1 → 0.75 and 0.25 → scores 0.0375 and 0.0125.
    s.fold_round(&[(1, 3.0), (2, 1.0)]);
    assert!(close(s.score[&1], 0.05 * 0.75));
    assert!(close(s.score[&2], 0.05 * 0.25));
    // Next round only uid 2 is rewarded: uid 1 decays.
    s.fold_round(&[(2, 5.0)]);
    assert!(close(s.score[&1], 0.95 * 0.05 * 0.75));
    assert!(close(s.score[&2], 0.05 + 0.95 * 0.05 * 0.25));
    let w = s.weights();
    assert!(close(w.values().sum::<f64>(), 1.0));
    assert!(close(w[&1] / w[&2], s.score[&1] / s.score[&2]));
    // NaN or negative rewards count as 0.
    let before = s.clone();
    s.fold_round(&[(1, f64::NAN), (2, -1.0)]);
    assert!(close(s.score[&1], 0.95 * before.score[&1]));
    // More than ten IsAlive failures in a row drop a miner to 0; an answer resets the count.
    for _ in 0..10 {
        s.isalive(2, false);
    }
    assert!(s.score[&2] > 0.0);
    s.isalive(2, true);
    for _ in 0..10 {
        s.isalive(2, false);
    }
    assert!(s.score[&2] > 0.0);
    s.isalive(2, false);
    assert_eq!(s.score[&2], 0.0);
    assert_eq!(s.weights()[&1], 1.0);
    assert!(Scores::default().weights().is_empty());
}
