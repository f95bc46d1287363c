//! A miner's Train work against the validator's replay: honest gradient
//! sums score about 1, invented ones 0; honest per-batch projections of the
//! whole gradient agree with replays to ~1e-6 of its norm, while scaled,
//! partial, other-row, stale-model and other-challenge ones fail; the test
//! index is checked.

use dtrain::allreduce::projection::{K, Proj, Projector, axpy, max_diff};
use dtrain::data::loader::RowBatches;
use dtrain::data::source::ParquetRows;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::{Gpt, GptConfig};
use dtrain::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use dtrain::subnet::scoring::{PROJECTION_TOLERANCE, projections_agree, train_gradient_score};
use dtrain::subnet::work::{WorkError, replay_batch, test_indices, test_tensor, train_batches};
use std::path::Path;

fn model() -> Gpt<CpuEngine> {
    let mut m = Gpt::new(CpuEngine::new(), GptConfig::preset("small").unwrap()).unwrap();
    m.init_random(7);
    m
}

fn source() -> ParquetRows {
    ParquetRows::open_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")).unwrap()
}

#[test]
fn honest_sums_match_the_replay_and_invented_ones_do_not() {
    let src = source();
    let (b, t) = (2, 64);
    let batches = RowBatches::from_source(&src, 10..14, b, t).unwrap();
    assert!(batches.len() >= 3, "{} batches", batches.len());
    let mut miner = model();
    let idx = test_indices(&miner)[5];
    let test = test_tensor(&miner, idx).unwrap();
    let work = train_batches(&mut miner, &batches, 0..batches.len(), b, t, &test, None).unwrap();
    let sums = work.sums;
    assert_eq!(sums.len(), batches.len());
    assert!(work.projections.is_empty());
    let loss = work.loss_sum / batches.len() as f64;
    assert!(loss > 5.0 && loss < 20.0, "loss {loss}");
    assert_eq!(miner.grad_weight(), (b * batches.len()) as f64);

    let mut validator = model();
    let replayed: Vec<(usize, f64)> =
        (0..batches.len()).map(|k| (k, replay_batch(&mut validator, &batches, k, b, t, &test, None).unwrap().sum)).collect();
    for &(k, v) in &replayed {
        assert!((sums[k] - v).abs() <= 1e-3 * v.abs().max(1e-6), "batch {k}: miner {} vs replay {v}", sums[k]);
    }
    assert!(train_gradient_score(batches.len(), &sums, &replayed) > 0.999);
    // Inflated, shuffled or mis-counted sums score 0.
    let inflated: Vec<f64> = sums.iter().map(|s| s * 1.5).collect();
    assert_eq!(train_gradient_score(batches.len(), &inflated, &replayed), 0.0);
    let mut reversed = sums.clone();
    reversed.reverse();
    assert!(train_gradient_score(batches.len(), &reversed, &replayed) < 0.999);
    assert_eq!(train_gradient_score(batches.len() + 1, &sums, &replayed), 0.0);
}

/// The validator's replays of every batch: (index, projections, norm).
fn replays(batches: &RowBatches, p: &Projector, model: &mut Gpt<CpuEngine>) -> Vec<(usize, Proj, f64)> {
    let test = test_tensor(model, test_indices(model)[0]).unwrap();
    (0..batches.len())
        .map(|k| {
            let (proj, norm) = replay_batch(model, batches, k, 2, 64, &test, Some(p)).unwrap().projection.unwrap();
            (k, proj, norm)
        })
        .collect()
}

#[test]
fn projections_of_honest_work_replay_and_every_shortcut_is_caught() {
    let src = source();
    let (b, t) = (2, 64);
    let p = Projector::new(&[3; 32]);
    let batches = RowBatches::from_source(&src, 10..16, b, t).unwrap();
    let n = batches.len();
    assert!(n >= 4, "{n} batches");
    let mut validator = model();
    let replayed = replays(&batches, &p, &mut validator);

    let mut miner = model();
    let test = test_tensor(&miner, test_indices(&miner)[0]).unwrap();
    let honest = train_batches(&mut miner, &batches, 0..n, b, t, &test, Some(&p)).unwrap().projections;
    assert_eq!(honest.len(), n);
    // Measured agreement on the same engine and precision: the tolerance's
    // basis (scoring::PROJECTION_TOLERANCE is 1e-3 of the norm).
    let worst = replayed.iter().map(|(k, v, norm)| max_diff(&honest[*k], v) / norm).fold(0.0, f64::max);
    eprintln!("honest projections differ from the replays by at most {worst:.2e} of the gradient norm");
    assert!(worst < 1e-4, "{worst}");
    assert!(projections_agree(n, &honest, &replayed, PROJECTION_TOLERANCE));
    // The accumulated mean gradient projects to the weighted mean of the
    // per-batch projections: what the all-reduce holds a contribution to.
    let w = miner.finish_accumulation();
    let mut mean = [0f64; K];
    honest.iter().for_each(|q| axpy(&mut mean, b as f64 / w, q));
    let g = miner.read_grads();
    let norm = dtrain::allreduce::projection::sum_squares(&g).sqrt();
    assert!(max_diff(&p.project(&g, 0), &mean) < 1e-5 * norm, "{:?} vs {mean:?}", p.project(&g, 0));

    // Scaled by 1.15.
    let scaled: Vec<Proj> = honest.iter().map(|q| q.map(|v| v * 1.15)).collect();
    assert!(!projections_agree(n, &scaled, &replayed, PROJECTION_TOLERANCE));
    // Trained on other rows than reported.
    let other = RowBatches::from_source(&src, 30..36, b, t).unwrap();
    let mut m2 = model();
    let wrong_rows = train_batches(&mut m2, &other, 0..n.min(other.len()), b, t, &test, Some(&p)).unwrap().projections;
    let wrong_rows: Vec<Proj> = (0..n).map(|k| wrong_rows[k % wrong_rows.len()]).collect();
    assert!(!projections_agree(n, &wrong_rows, &replayed, PROJECTION_TOLERANCE));
    // One batch computed, reported for all.
    let partial: Vec<Proj> = vec![honest[0]; n];
    for r in &replayed[1..] {
        assert!(!projections_agree(n, &partial, &[*r], PROJECTION_TOLERANCE), "batch {}", r.0);
    }
    // A stale model (one optimizer step behind).
    let mut stale = model();
    let mut opt = Optimizer::new(&stale, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let (x, y) = batches.batch(0);
    stale.forward_backward(x, y, b, t, 1.0).unwrap();
    opt.clip_and_step(&mut stale, 1e-4, 1.0);
    stale.zero_grads();
    let old = train_batches(&mut stale, &batches, 0..n, b, t, &test, Some(&p)).unwrap().projections;
    assert!(!projections_agree(n, &old, &replayed, PROJECTION_TOLERANCE));
    // Another challenge's projections, a missing batch, NaN.
    let other_p = train_batches(&mut model(), &batches, 0..n, b, t, &test, Some(&Projector::new(&[4; 32]))).unwrap().projections;
    assert!(!projections_agree(n, &other_p, &replayed, PROJECTION_TOLERANCE));
    assert!(!projections_agree(n, &honest[1..], &replayed, PROJECTION_TOLERANCE));
    let mut nan = honest.clone();
    nan[0][0] = f64::NAN;
    assert!(!projections_agree(n, &nan, &replayed[1..], PROJECTION_TOLERANCE));
    assert!(!projections_agree(n, &honest, &[], PROJECTION_TOLERANCE), "nothing replayed proves nothing");
}

#[test]
fn the_test_index_must_name_a_1d_parameter() {
    let m = model();
    assert!(matches!(test_tensor(&m, 0), Err(WorkError::TestIndex { .. })), "wte is 2-D");
    assert!(matches!(test_tensor(&m, 10_000), Err(WorkError::TestIndex { .. })));
    let idx = test_indices(&m);
    assert!(!idx.is_empty() && idx.iter().all(|&i| test_tensor(&m, i).is_ok()));
    assert_eq!(test_tensor(&m, idx[0]).unwrap().name, "transformer.h.0.ln_1.weight");
}
