//! A miner's Train work against the validator's replay: honest gradient
//! sums score about 1, invented ones 0; the test index is checked.

use dtrain::data::loader::RowBatches;
use dtrain::data::source::ParquetRows;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::{Gpt, GptConfig};
use dtrain::subnet::scoring::train_gradient_score;
use dtrain::subnet::work::{WorkError, replay_batch, test_indices, test_tensor, train_batches};
use std::path::Path;

fn model() -> Gpt<CpuEngine> {
    let mut m = Gpt::new(CpuEngine::new(), GptConfig::preset("small").unwrap()).unwrap();
    m.init_random(7);
    m
}

#[test]
fn honest_sums_match_the_replay_and_invented_ones_do_not() {
    let src = ParquetRows::open_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")).unwrap();
    let (b, t) = (2, 64);
    let batches = RowBatches::from_source(&src, 10..14, b, t).unwrap();
    assert!(batches.len() >= 3, "{} batches", batches.len());
    let mut miner = model();
    let idx = test_indices(&miner)[5];
    let test = test_tensor(&miner, idx).unwrap();
    let (sums, loss) = train_batches(&mut miner, &batches, 0..batches.len(), b, t, &test).unwrap();
    assert_eq!(sums.len(), batches.len());
    assert!(loss > 5.0 && loss < 20.0, "loss {loss}");
    assert_eq!(miner.grad_weight(), (b * batches.len()) as f64);

    let mut validator = model();
    let replayed: Vec<(usize, f64)> = (0..batches.len()).map(|k| (k, replay_batch(&mut validator, &batches, k, b, t, &test).unwrap())).collect();
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

#[test]
fn the_test_index_must_name_a_1d_parameter() {
    let m = model();
    assert!(matches!(test_tensor(&m, 0), Err(WorkError::TestIndex { .. })), "wte is 2-D");
    assert!(matches!(test_tensor(&m, 10_000), Err(WorkError::TestIndex { .. })));
    let idx = test_indices(&m);
    assert!(!idx.is_empty() && idx.iter().all(|&i| test_tensor(&m, i).is_ok()));
    assert_eq!(test_tensor(&m, idx[0]).unwrap().name, "transformer.h.0.ln_1.weight");
}
