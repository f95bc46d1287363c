//! The verified all-reduce against cheating members, every peer a thread
//! of this test over loopback TCP. The "validator" here is the test: it
//! credits each member with the weight and projections of the vector it
//! should contribute; one or two members then cheat (a poisoned, flipped,
//! noisy or zero contribution, an inflated weight, a wrong average, a
//! misreported part, a poisoner and an owner covering for it, a vector
//! crafted orthogonal to the projections but far too large). Every
//! honest member must name exactly the culprits, rerun without them and
//! end bit-identical with the weighted mean of the honest contributions.

use dtrain::allreduce::audit::{Audit, Verified, run_verified, verdict};
use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::projection::Projector;
use dtrain::allreduce::{Failure, Fault, Group, Identity, Member, Peer, Settings};
use dtrain::rng::Rng;
use std::time::{Duration, Instant};

const LEN: usize = 50_000;

fn settings(codec: Codec) -> Settings {
    // Generous timeouts: every member here connects at once, so only a
    // member that never joins costs this long, and none does.
    Settings { codec, chunk_bytes: 16 << 10, connect_timeout: Duration::from_secs(20), stall_timeout: Duration::from_secs(60), ..Settings::default() }
}

fn inputs(n: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(5);
    (0..n).map(|i| (0..LEN).map(|e| 0.01 * rng.normal() + 1e-3 * ((e % 7) as f32 - 3.0) * (i as f32 + 1.0)).collect()).collect()
}

/// Runs an audited all-reduce with reruns on every member; member `i`
/// contributes `x[i]` with `weights[i]` and injects `faults[i]`.
fn run(x: &[Vec<f32>], weights: &[f32], faults: &[Option<Fault>], codec: Codec) -> (Audit, Vec<(Vec<f32>, Verified)>) {
    run_credited(x, x, weights, faults, codec)
}

/// [`run`] where the validator credited member `i` with `credited[i]`.
fn run_credited(
    x: &[Vec<f32>],
    credited: &[Vec<f32>],
    weights: &[f32],
    faults: &[Option<Fault>],
    codec: Codec,
) -> (Audit, Vec<(Vec<f32>, Verified)>) {
    run_with(x, credited, weights, faults, codec, settings(codec).stall_timeout, Duration::from_secs(120), None)
}

/// [`run`] with member `adjudicator` (of weight 0) judging every attempt.
fn run_judged(x: &[Vec<f32>], weights: &[f32], faults: &[Option<Fault>], adjudicator: usize) -> (Audit, Vec<(Vec<f32>, Verified)>) {
    let stall = settings(Codec::F16).stall_timeout;
    run_with(x, x, weights, faults, Codec::F16, stall, Duration::from_secs(120), Some(adjudicator))
}

/// [`run_credited`] with this stall timeout, time to the deadline and
/// adjudicator.
#[allow(clippy::too_many_arguments)]
fn run_with(
    x: &[Vec<f32>],
    credited: &[Vec<f32>],
    weights: &[f32],
    faults: &[Option<Fault>],
    codec: Codec,
    stall: Duration,
    limit: Duration,
    adjudicator: Option<usize>,
) -> (Audit, Vec<(Vec<f32>, Verified)>) {
    let n = x.len();
    let peers: Vec<Peer> = (0..n).map(|i| Peer::bind(Identity::from_seed([i as u8 + 40; 32]), "127.0.0.1:0".parse().unwrap()).unwrap()).collect();
    let group = Group {
        members: peers
            .iter()
            .enumerate()
            .map(|(i, p)| Member { id: format!("m{i}"), addr: p.local_addr().unwrap(), key: p.public_key(), fraction: 1.0 })
            .collect(),
    };
    let challenge = [9u8; 32];
    let p = Projector::new(&challenge);
    let audit = Audit { challenge, weights: weights.to_vec(), expected: credited.iter().map(|v| p.project(v, 0)).collect(), adjudicator };
    let deadline = Instant::now() + limit;
    let out = std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .into_iter()
            .enumerate()
            .map(|(i, mut peer)| {
                let (group, audit, mine) = (&group, &audit, &x[i]);
                let settings = Settings { fault: faults[i], stall_timeout: stall, ..settings(codec) };
                let w = weights[i];
                s.spawn(move || {
                    let mut grad = Vec::new();
                    let v = run_verified(group, audit, &settings, 4, |g, a, s| {
                        grad = mine.clone();
                        peer.all_reduce_audited(g, 1, &mut grad, w, deadline, s, Some(a))
                    })
                    .unwrap();
                    (grad, v)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (audit, out)
}

/// The weighted mean of the members not in `out`.
fn mean_without(x: &[Vec<f32>], weights: &[f32], out: &[usize]) -> Vec<f64> {
    let keep: Vec<usize> = (0..x.len()).filter(|i| !out.contains(i)).collect();
    let total: f64 = keep.iter().map(|&i| weights[i] as f64).sum();
    (0..LEN).map(|e| keep.iter().map(|&i| weights[i] as f64 * x[i][e] as f64).sum::<f64>() / total).collect()
}

/// Every member outside `culprits` named exactly the culprits (by id:
/// accused, refused, or left out for a missing summary), verified in the
/// end, and holds the honest mean, bit-identical.
fn check(x: &[Vec<f32>], weights: &[f32], results: &[(Vec<f32>, Verified)], culprits: &[usize]) {
    let want = mean_without(x, weights, culprits);
    let honest: Vec<usize> = (0..x.len()).filter(|i| !culprits.contains(i)).collect();
    let first = &results[honest[0]].0;
    let mut named: Vec<String> = culprits.iter().map(|i| format!("m{i}")).collect();
    named.sort();
    for &i in &honest {
        let (grad, v) = &results[i];
        let mut got: Vec<String> = v.accused.iter().chain(&v.dropped).map(|(id, _)| id.clone()).collect();
        got.sort();
        got.dedup();
        // A weight liar is refused in the handshake rather than accused.
        let refused: Vec<String> =
            v.report.members.iter().filter(|m| matches!(m.failure, Some(Failure::FalseWeight { .. }))).map(|m| m.id.clone()).collect();
        got.extend(refused);
        got.sort();
        assert_eq!(got, named, "member {i} named {:?} left out {:?}", v.accused, v.dropped);
        assert!(v.clean, "member {i}: the last round did not verify: {:?}", v.accused);
        assert!(v.report.unaveraged_spans().is_empty(), "member {i}: {}", v.report.summary());
        assert!(grad == first, "member {i} differs from member {}: honest members must hold the same bits", honest[0]);
        let err = grad.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "member {i}: {err} from the honest mean");
    }
}

#[test]
fn an_honest_round_verifies_in_one_attempt_in_every_codec() {
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 256 }] {
        let x = inputs(4);
        let weights = [3.0, 1.0, 2.0, 0.0];
        let (audit, results) = run(&x, &weights, &[None; 4], codec);
        for (i, (_, v)) in results.iter().enumerate() {
            assert!(v.clean && v.accused.is_empty(), "{codec:?} member {i}: {:?}", v.accused);
            assert!(verdict(&audit, &v.report, codec).is_empty());
        }
        // Gradients that small are fp16 subnormals, rounded by tens of
        // percent: the senders' and owners' views of a part must still agree.
        let tiny: Vec<Vec<f32>> = x.iter().map(|v| v.iter().map(|e| e * 1e-5).collect()).collect();
        let (_, tiny_results) = run(&tiny, &weights, &[None; 4], codec);
        for (i, (_, v)) in tiny_results.iter().enumerate() {
            assert!(v.clean && v.accused.is_empty(), "{codec:?} tiny values, member {i}: {:?}", v.accused);
        }
        let want = mean_without(&x, &weights, &[]);
        let tol = match codec {
            Codec::F32 => 1e-6,
            Codec::F16 => 1e-4,
            _ => 2e-3,
        };
        for (grad, _) in &results {
            assert!(grad == &results[0].0);
            assert!(grad.iter().zip(&want).all(|(&g, &w)| (g as f64 - w).abs() < tol), "{codec:?}");
        }
    }
}

#[test]
fn a_sparse_round_averages_the_union_of_the_parts_and_names_a_poisoner() {
    // Top-k: the senders' parts as the codec carries them (blocks of the
    // flat vector: spans are aligned to them), owners average the union in
    // fp16. Members contribute dense vectors; what enters — their own part
    // included — is each one's top-k, the credit the validator gave.
    let codec = Codec::TopK { block: 1024, k: 16, wide: false };
    let x = inputs(4);
    let sparse: Vec<Vec<f32>> = x
        .iter()
        .map(|v| {
            let mut s = v.clone();
            assert!(codec.roundtrip(&mut s));
            s
        })
        .collect();
    assert!(sparse[0].iter().filter(|v| **v != 0.0).count() <= LEN.div_ceil(1024) * 16);
    let weights = [3.0, 1.0, 2.0, 1.0];
    let (_, results) = run_credited(&x, &sparse, &weights, &[None; 4], codec);
    check(&sparse, &weights, &results, &[]);
    let mut faults = [None; 4];
    faults[2] = Some(Fault::Scale(-100.0));
    let (_, results) = run_credited(&x, &sparse, &weights, &faults, codec);
    check(&sparse, &weights, &results, &[2]);
}

#[test]
fn poisoned_contributions_are_named_and_left_out() {
    // Scaled (the −100 poison), sign-flipped at the honest norm, noise of
    // the honest norm, a zero vector: each alone among five.
    for fault in [Fault::Scale(-100.0), Fault::Scale(-1.0), Fault::Noise, Fault::Scale(0.0)] {
        let x = inputs(5);
        let weights = [2.0, 2.0, 2.0, 2.0, 2.0];
        let mut faults = [None; 5];
        faults[3] = Some(fault);
        let (_, results) = run(&x, &weights, &faults, Codec::F16);
        check(&x, &weights, &results, &[3]);
        assert!(results[0].1.accused.iter().any(|(id, why)| id == "m3" && why.contains("not the work")), "{fault:?}: {:?}", results[0].1.accused);
    }
}

#[test]
fn an_inflated_weight_is_refused_by_everyone() {
    let x = inputs(4);
    let weights = [1.0, 1.0, 1.0, 1.0];
    let mut faults = [None; 4];
    faults[1] = Some(Fault::DeclareWeight(1e8));
    let (_, results) = run(&x, &weights, &faults, Codec::F16);
    check(&x, &weights, &results, &[1]);
}

#[test]
fn a_lying_owner_is_named_whether_it_averages_or_reports_falsely() {
    let x = inputs(5);
    let weights = [1.0, 2.0, 1.0, 2.0, 1.0];
    // A wrong average (sent negated, parts reported honestly).
    let mut faults = [None; 5];
    faults[2] = Some(Fault::WrongAverage);
    let (_, results) = run(&x, &weights, &faults, Codec::F16);
    check(&x, &weights, &results, &[2]);
    // A misreported part (member 0's statement forwarded with its
    // projections ×1.5): the signature fails, so everyone names the
    // owner, as a proven cheat, and not the sender.
    let mut faults = [None; 5];
    faults[4] = Some(Fault::MisreportPart { member: 0, scale: 1.5 });
    let (_, results) = run(&x, &weights, &faults, Codec::F16);
    check(&x, &weights, &results, &[4]);
    for (i, (_, v)) in results.iter().enumerate().take(4) {
        assert!(v.accused.iter().any(|(id, why)| id == "m4" && why.contains("never signed")), "member {i}: {:?}", v.accused);
    }
}

/// Who member `i` left out, proven and unproven, by id.
fn named(v: &Verified) -> (Vec<&str>, Vec<&str>) {
    (v.accused.iter().map(|(id, _)| id.as_str()).collect(), v.dropped.iter().map(|(id, _)| id.as_str()).collect())
}

/// Five members, member 4 (weight 0) adjudicating, `fault` on member
/// `at`: members `pair` leave, neither as a proven cheat, and every other
/// member follows the same ruling.
fn both_leave_unproven(at: usize, fault: Fault, pair: [usize; 2]) {
    let x = inputs(5);
    let weights = [1.0, 1.0, 1.0, 1.0, 0.0];
    let mut faults = [None; 5];
    faults[at] = Some(fault);
    let (_, results) = run_judged(&x, &weights, &faults, 4);
    check(&x, &weights, &results, &pair);
    let ids = pair.map(|i| format!("m{i}"));
    for i in (0..5).filter(|i| !pair.contains(i)) {
        let (accused, dropped) = named(&results[i].1);
        assert!(accused.is_empty() && ids.iter().all(|id| dropped.contains(&id.as_str())), "member {i}: {accused:?} {dropped:?}");
    }
}

#[test]
fn an_owner_disputing_an_honest_part_loses_its_own_place_too() {
    // Member 3, an owner, claims member 0's bytes do not match what it
    // signed. Only the two of them saw the bytes: every honest member
    // leaves both out, neither as a proven cheat, and they agree.
    let x = inputs(5);
    let weights = [1.0, 2.0, 1.0, 2.0, 1.0];
    let mut faults = [None; 5];
    faults[3] = Some(Fault::DisputePart { member: 0 });
    let (_, results) = run(&x, &weights, &faults, Codec::F16);
    check(&x, &weights, &results, &[0, 3]);
    for i in [1, 2, 4] {
        let (accused, dropped) = named(&results[i].1);
        assert!(accused.is_empty(), "member {i} accused {accused:?}");
        assert!(dropped.contains(&"m0") && dropped.contains(&"m3"), "member {i}: {dropped:?}");
    }
}

#[test]
fn an_owner_denying_a_part_cannot_frame_its_sender() {
    // Member 2, an owner, ignores member 1's chunks and reports that it
    // sent nothing. Member 1's sum then misses a span: before statements
    // were signed, that named member 1 as a cheat. Now it is left out
    // unproven (it may have lost its link), and the owner, whose average
    // matches what it reports, stays.
    let x = inputs(5);
    let weights = [1.0; 5];
    let mut faults = [None; 5];
    faults[2] = Some(Fault::DenyPart { member: 1 });
    let (_, results) = run(&x, &weights, &faults, Codec::F16);
    check(&x, &weights, &results, &[1]);
    for i in [0, 2, 3, 4] {
        let (accused, dropped) = named(&results[i].1);
        assert!(accused.is_empty(), "member {i} accused {accused:?}");
        assert_eq!(dropped, ["m1"], "member {i}");
    }
}

#[test]
fn a_sender_whose_bytes_belie_its_statements_is_named_and_no_owner_pays() {
    // Member 1 sends its gradient ×−100 but signs statements of the honest
    // one, hoping an owner gets the blame. Every owner disputes its part
    // (two or more disputes: the sender alone is out), and its own span's
    // statement, of what it really averaged, makes its sum miss its credit.
    let x = inputs(5);
    let weights = [1.0; 5];
    let mut faults = [None; 5];
    faults[1] = Some(Fault::Unstated(-100.0));
    let (_, results) = run(&x, &weights, &faults, Codec::F16);
    check(&x, &weights, &results, &[1]);
    for i in [0, 2, 3, 4] {
        let (accused, dropped) = named(&results[i].1);
        assert!(accused.iter().chain(&dropped).all(|id| *id == "m1"), "member {i}: {accused:?} {dropped:?}");
    }
}

#[test]
fn a_poisoner_and_the_owner_covering_for_it_are_both_named() {
    let x = inputs(6);
    let weights = [1.0; 6];
    let mut faults = [None; 6];
    // Member 1 poisons; member 4, owning a span, reports member 1's part
    // there as if it were honest (undoing the ×−100).
    faults[1] = Some(Fault::Scale(-100.0));
    faults[4] = Some(Fault::MisreportPart { member: 1, scale: -0.01 });
    let (_, results) = run(&x, &weights, &faults, Codec::F16);
    check(&x, &weights, &results, &[1, 4]);
}

#[test]
fn credited_numbers_survive_the_query_to_the_bit() {
    // The AllReduce query carries the credit as JSON; every member must
    // read back the same bits, or their group digests differ.
    let mut rng = Rng::new(3);
    let q = dtrain::subnet::protocol::AllReduce {
        weights: Some((0..50).map(|_| rng.uniform() as f32 * 1e4).collect()),
        expected: Some((0..50).map(|_| std::array::from_fn(|_| rng.normal() as f64 * 1e-3 + rng.uniform() * 1e-9)).collect()),
        ..Default::default()
    };
    let back: dtrain::subnet::protocol::AllReduce = serde_json::from_slice(&serde_json::to_vec(&q).unwrap()).unwrap();
    assert_eq!(back, q);
    assert!(back.expected.unwrap().iter().flatten().zip(q.expected.unwrap().iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits()));
}

#[test]
fn a_vector_crafted_past_the_projections_is_bounded_by_its_norm() {
    // The attacker knows the challenge: it adds δ orthogonal to all four
    // projection vectors, so every projection still matches its credit.
    // Only its size can give it away: one 10× the honest norm is named.
    let mut x = inputs(5);
    let p = Projector::new(&[9u8; 32]);
    let credited: Vec<Vec<f32>> = x.clone();
    let mut delta: Vec<f32> = (0..LEN).map(|e| if e % 2 == 0 { 1.0 } else { -1.0 }).collect();
    // Project δ off the span of the sign vectors (Gram–Schmidt over K = 4).
    let r: Vec<Vec<f32>> = (0..4).map(|j| (0..LEN).map(|e| p.sign(j, e)).collect()).collect();
    let mut basis: Vec<Vec<f64>> = Vec::new();
    for rj in &r {
        let mut v: Vec<f64> = rj.iter().map(|&a| a as f64).collect();
        for b in &basis {
            let d: f64 = v.iter().zip(b).map(|(a, c)| a * c).sum();
            v.iter_mut().zip(b).for_each(|(a, c)| *a -= d * c);
        }
        let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        v.iter_mut().for_each(|a| *a /= n);
        basis.push(v);
    }
    for b in &basis {
        let d: f64 = delta.iter().zip(b).map(|(&a, c)| a as f64 * c).sum();
        delta.iter_mut().zip(b).for_each(|(a, c)| *a -= (d * c) as f32);
    }
    let honest_norm = dtrain::allreduce::projection::sum_squares(&x[2]).sqrt();
    let scale = 10.0 * honest_norm / dtrain::allreduce::projection::sum_squares(&delta).sqrt();
    x[2].iter_mut().zip(&delta).for_each(|(v, d)| *v += (scale * *d as f64) as f32);
    // Its projections still match the credit (to fp32 rounding of δ).
    let drift = dtrain::allreduce::projection::max_diff(&p.project(&x[2], 0), &p.project(&credited[2], 0));
    assert!(drift < 1e-3 * honest_norm, "{drift}");
    let weights = [1.0; 5];
    let (_, results) = run_credited(&x, &credited, &weights, &[None; 5], Codec::F32);
    check(&credited, &weights, &results, &[2]);
    assert!(results[0].1.accused.iter().any(|(id, why)| id == "m2" && why.contains("norm")), "{:?}", results[0].1.accused);
}

#[test]
fn an_owner_hiding_a_larger_average_from_the_projections_is_named() {
    // The owner knows which blocks the projections sample: it leaves them
    // honest and multiplies the rest of its average by 10. Its projections
    // agree; the average's norm exceeds what the parts it reported allow.
    owner_named([1.0, 2.0, 1.0, 2.0, 1.0], 1, Fault::HiddenAverage { factor: 10.0, balanced: false }, "norm");
}

/// Five members (weights `weights`), member `owner` under `fault`: it
/// alone is named by every honest member, for a reason containing `why`.
fn owner_named(weights: [f32; 5], owner: usize, fault: Fault, why: &str) {
    let x = inputs(5);
    let mut faults = [None; 5];
    faults[owner] = Some(fault);
    let (_, results) = run(&x, &weights, &faults, Codec::F16);
    check(&x, &weights, &results, &[owner]);
    let id = format!("m{owner}");
    for i in (0..5).filter(|&i| i != owner) {
        let v = &results[i].1;
        assert!(v.accused.iter().any(|(a, w)| *a == id && w.contains(why)), "member {i}: {:?}", v.accused);
    }
}

#[test]
fn an_owner_turning_its_average_around_off_the_sampled_blocks_is_named() {
    // The owner keeps the sampled blocks honest and negates the rest of
    // its average: every projection agrees and the norm is the honest
    // one. It states its own part's product with that average so that
    // the products add up to W·‖average‖²; the product it needs is far
    // beyond what its part's norm allows (Cauchy–Schwarz).
    let fault = Fault::HiddenAverage { factor: -1.0, balanced: true };
    owner_named([1.0, 2.0, 1.0, 2.0, 1.0], 1, fault, "more than their norms allow");
}

#[test]
fn an_owner_turning_its_average_around_without_balancing_the_products_is_named() {
    // The same owner, stating its own product honestly: the products no
    // longer add up to W·‖average‖².
    let fault = Fault::HiddenAverage { factor: -1.0, balanced: false };
    owner_named([1.0; 5], 2, fault, "where the projections do not look");
}

#[test]
fn an_owner_stretching_its_own_part_to_cover_a_turned_average_is_named() {
    // To balance the products within Cauchy–Schwarz the owner needs a
    // long own part in its own span: it makes its contribution longer
    // there, off the sampled blocks (the validator's credit still
    // matches), and turns its average around. Short of what the turn
    // needs, the product bound names it; beyond, its contribution's norm
    // bound does.
    for stretch in [2.0, 5.0, 9.0, 20.0] {
        let mut x = inputs(5);
        let p = Projector::new(&[9u8; 32]);
        for (e, v) in x[1].iter_mut().enumerate().take(2 * LEN / 5).skip(LEN / 5) {
            if p.sign(0, e) == 0.0 {
                *v *= stretch;
            }
        }
        let weights = [1.0; 5];
        let mut faults = [None; 5];
        faults[1] = Some(Fault::HiddenAverage { factor: -1.0, balanced: true });
        let (_, results) = run(&x, &weights, &faults, Codec::F16);
        check(&x, &weights, &results, &[1]);
        for i in [0, 2, 3, 4] {
            let v = &results[i].1;
            assert!(v.accused.iter().any(|(id, _)| id == "m1"), "stretch {stretch}, member {i}: {:?}", v.accused);
        }
    }
}

#[test]
fn an_owner_misstating_one_senders_product_leaves_with_it() {
    // The owner states member 2's part · its average 10% too large (and its
    // own so that the sum still holds). Only member 2 can tell; the
    // adjudicator cannot confirm it, so both leave, unproven, and every
    // other member follows the same ruling.
    both_leave_unproven(3, Fault::MisstateDot { member: 2 }, [2, 3]);
}

#[test]
fn a_sender_hiding_its_poison_from_the_projections_is_named() {
    // The sender knows which blocks are sampled: honest there, ×−100
    // everywhere else. Every projection matches its credit; the norm that
    // every owner measures over all its elements gives it away.
    let mut x = inputs(5);
    let credited = x.clone();
    let p = Projector::new(&[9u8; 32]);
    let sampled: Vec<bool> = (0..LEN).map(|e| p.sign(0, e) != 0.0).collect();
    x[3].iter_mut().zip(&sampled).filter(|(_, s)| !**s).for_each(|(v, _)| *v *= -100.0);
    assert_eq!(p.project(&x[3], 0), p.project(&credited[3], 0), "the projections cannot see it");
    let weights = [1.0; 5];
    let (_, results) = run_credited(&x, &credited, &weights, &[None; 5], Codec::F16);
    check(&credited, &weights, &results, &[3]);
    assert!(results[0].1.accused.iter().any(|(id, why)| id == "m3" && why.contains("norm")), "{:?}", results[0].1.accused);
}

#[test]
fn a_poisoner_whose_accomplice_withholds_its_summary_is_still_named() {
    // Member 1 poisons; member 4, an owner, aborts instead of sending its
    // span summary, so that no sender's parts can be summed. Nobody may step
    // on the unchecked round: member 4 is left out (not as a proven cheat:
    // it might have crashed), the rerun sums member 1's parts and names it.
    let x = inputs(6);
    let weights = [1.0; 6];
    let mut faults = [None; 6];
    faults[1] = Some(Fault::Scale(-100.0));
    faults[4] = Some(Fault::WithholdSummary);
    let (_, results) = run(&x, &weights, &faults, Codec::F16);
    check(&x, &weights, &results, &[1, 4]);
    for i in [0, 2, 3, 5] {
        let v = &results[i].1;
        assert!(v.accused.iter().any(|(id, why)| id == "m1" && why.contains("not the work")), "member {i}: {:?}", v.accused);
        assert!(
            v.dropped.iter().any(|(id, _)| id == "m4") && !v.accused.iter().any(|(id, _)| id == "m4"),
            "member {i}: {:?} {:?}",
            v.accused,
            v.dropped
        );
    }
}

#[test]
fn a_sender_that_stalls_midway_frames_no_owner() {
    // Member 2 stops sending partway through its scatter: the chunks of
    // some spans are then averaged without it, others with it. No honest
    // owner may be accused for that; member 2 is left out (unproven) and
    // the rest rerun, verified and bit-identical. (The stall timeout only
    // has to notice member 2; the honest members finish well before the
    // deadline, which bounds how long member 2's own thread lingers.)
    let x = inputs(5);
    let weights = [1.0; 5];
    let mut faults = [None; 5];
    faults[2] = Some(Fault::StallAfter { gather: false, bytes: 30_000 });
    // The rerun waits for members still finishing the attempt before
    // (`audit::rerun_settings`).
    let stall = Duration::from_secs(15);
    let (_, results) = run_with(&x, &x, &weights, &faults, Codec::F16, stall, Duration::from_secs(90), None);
    check(&x, &weights, &results, &[2]);
    for i in [0, 1, 3, 4] {
        let v = &results[i].1;
        assert!(v.accused.is_empty(), "member {i} accused {:?}", v.accused);
        assert!(v.dropped.iter().any(|(id, _)| id == "m2"), "member {i}: {:?}", v.dropped);
    }
}

// ---- with an adjudicator (the validator's part in the subnet) ------------

#[test]
fn an_adjudicated_round_names_the_same_culprits_as_every_member_would() {
    // Member 5 (weight 0) judges. Honest: one attempt, an empty ruling.
    let x = inputs(6);
    let weights = [1.0, 2.0, 1.0, 2.0, 1.0, 0.0];
    let (_, results) = run_judged(&x, &weights, &[None; 6], 5);
    check(&x, &weights, &results, &[]);
    for (i, (_, v)) in results.iter().enumerate() {
        assert_eq!(v.report.ruling.as_deref(), Some(&[][..]), "member {i}");
    }
    // The attacks each member's own verdict catches, caught the same way.
    for (fault, culprits) in [
        (Fault::Scale(-100.0), vec![2]),
        (Fault::WrongAverage, vec![2]),
        (Fault::MisreportPart { member: 0, scale: 1.5 }, vec![2]),
        (Fault::DisputePart { member: 0 }, vec![0, 2]),
        (Fault::WithholdSummary, vec![2]),
    ] {
        let mut faults = [None; 6];
        faults[2] = Some(fault);
        let (_, results) = run_judged(&x, &weights, &faults, 5);
        check(&x, &weights, &results, &culprits);
        let (accused, _) = named(&results[5].1);
        let proven = matches!(fault, Fault::Scale(_) | Fault::WrongAverage | Fault::MisreportPart { .. });
        assert_eq!(accused.contains(&"m2"), proven, "{fault:?}: {accused:?}");
    }
}

#[test]
fn an_owner_showing_members_different_summaries_is_proven_to_have_done_so() {
    // Member 2 sends member 0 a summary in which member 1's part is
    // disputed, and everyone else the true one, both signed. Member 0
    // alone would leave out members 1 and 2 while the rest left out
    // nobody: they would rerun in different groups. Member 0's testimony
    // carries member 2's signature of the summary it got, which differs
    // from the adjudicator's: two signed summaries, proof of equivocation.
    // Member 2 is accused; members 0 and 1, honest, stay.
    let x = inputs(6);
    let weights = [1.0, 2.0, 1.0, 2.0, 1.0, 0.0];
    let mut faults = [None; 6];
    faults[2] = Some(Fault::EquivocateSummary { to: 0 });
    let (_, results) = run_judged(&x, &weights, &faults, 5);
    check(&x, &weights, &results, &[2]);
    for i in [0, 1, 3, 4, 5] {
        let (accused, dropped) = named(&results[i].1);
        assert_eq!((accused.as_slice(), dropped.as_slice()), (&["m2"][..], &[][..]), "member {i}");
    }
}

#[test]
fn an_owner_fooling_the_adjudicator_itself_is_proven_and_frames_nobody() {
    // Member 2 shows the adjudicator (member 5) a summary disputing
    // honest member 0's part, and everyone else the true one. The
    // adjudicator's own verdict would leave out members 0 and 2; the
    // others' testimonies carry member 2's signature of the other summary,
    // so member 2 is proven to have equivocated, the adjudicator's verdict
    // is set aside, and member 0 stays.
    let x = inputs(6);
    let weights = [1.0, 2.0, 1.0, 2.0, 1.0, 0.0];
    let mut faults = [None; 6];
    faults[2] = Some(Fault::EquivocateSummary { to: 5 });
    let (_, results) = run_judged(&x, &weights, &faults, 5);
    check(&x, &weights, &results, &[2]);
    for i in [0, 1, 3, 4, 5] {
        let (accused, dropped) = named(&results[i].1);
        assert_eq!((accused.as_slice(), dropped.as_slice()), (&["m2"][..], &[][..]), "member {i}");
    }
}

#[test]
fn an_owner_sending_one_member_another_average_leaves_with_it() {
    // Member 3 sends member 1 its averages negated. Member 1 alone sees
    // it (its copy no longer matches the span summary): it and the owner
    // are left out by the ruling, and everyone else agrees and steps.
    both_leave_unproven(3, Fault::EquivocateAverage { to: 1 }, [1, 3]);
}

#[test]
fn a_false_testimony_costs_the_accuser_its_place_too() {
    // Member 1 tells the adjudicator that member 3 cheated. Nobody else
    // saw it, so the adjudicator cannot confirm it: both are left out,
    // unproven, and every other member follows the same ruling.
    both_leave_unproven(1, Fault::FalseTestimony { member: 3 }, [1, 3]);
}

#[test]
fn a_member_withholding_its_testimony_is_left_out_before_the_deadline() {
    // Member 2 reads and sends everything but never testifies. The
    // adjudicator's Waiting frames to it (which keep honest members
    // waiting for a slow third one) must not keep the adjudicator waiting
    // for it too: it is left out once its testimony is overdue
    // (connect + 2 × stall = 40 s here), well before the 120 s deadline,
    // and the rest rerun, verified and bit-identical.
    let x = inputs(5);
    let weights = [1.0, 1.0, 1.0, 1.0, 0.0];
    let mut faults = [None; 5];
    faults[2] = Some(Fault::WithholdTestimony);
    let (_, results) = run_with(&x, &x, &weights, &faults, Codec::F16, Duration::from_secs(10), Duration::from_secs(120), Some(4));
    check(&x, &weights, &results, &[2]);
    for i in [0, 1, 3, 4] {
        let (accused, dropped) = named(&results[i].1);
        assert!(accused.is_empty() && dropped.contains(&"m2"), "member {i}: {accused:?} {dropped:?}");
    }
}

#[test]
fn a_member_claiming_its_inputs_are_still_coming_cannot_hold_the_round_open() {
    // Member 2 never testifies and, instead, sends the adjudicator the
    // Waiting frames an honest member sends while a slow third one's data
    // still comes to it. Those hold the adjudicator only n − 1 times its
    // own data phase (under a second here) past its end, plus the usual
    // wait (connect + 2 × stall = 30 s): member 2 is left out well before
    // the 120 s deadline and the rest rerun, verified and bit-identical.
    let x = inputs(5);
    let weights = [1.0, 1.0, 1.0, 1.0, 0.0];
    let mut faults = [None; 5];
    faults[2] = Some(Fault::StallTestimony);
    let t = Instant::now();
    let (_, results) = run_with(&x, &x, &weights, &faults, Codec::F16, Duration::from_secs(5), Duration::from_secs(120), Some(4));
    eprintln!("ended after {:.1} s", t.elapsed().as_secs_f64());
    check(&x, &weights, &results, &[2]);
    for i in [0, 1, 3, 4] {
        let (accused, dropped) = named(&results[i].1);
        assert!(accused.is_empty() && dropped.contains(&"m2"), "member {i}: {accused:?} {dropped:?}");
    }
}
