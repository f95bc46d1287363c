//! Held-out evaluation: the loss `eval::evaluate` reports is the mean
//! cross-entropy a naive log-softmax over the model's logits gives, over
//! unpadded batches of the dataset's held-out tail only; `dtrain eval`
//! prints the same number for a checkpoint directory and for hub tags (the
//! newest by default), and says clearly what is missing.

use dtrain::data::held_out::{TrainRows, held_out};
use dtrain::data::loader::RowBatches;
use dtrain::data::source::{ParquetRows, RowSource};
use dtrain::engine::cpu::CpuEngine;
use dtrain::eval::{evaluate, held_out_batches};
use dtrain::hub::{LocalStore, ModelHub};
use dtrain::model::{Gpt, GptConfig, checkpoint};
use std::path::{Path, PathBuf};
use std::process::Command;

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")
}

fn small(seed: u64) -> Gpt<CpuEngine> {
    let mut m = Gpt::new(CpuEngine::new(), GptConfig::preset("small").unwrap()).unwrap();
    m.init_random(seed);
    m
}

/// −log softmax(logits)[target], averaged, in f64 from the logits alone.
fn naive_cross_entropy(logits: &[f32], targets: &[u32], vocab: usize) -> f64 {
    let rows = targets.len();
    let mut sum = 0f64;
    for (r, &y) in targets.iter().enumerate() {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        sum += lse - row[y as usize] as f64;
    }
    sum / rows as f64
}

#[test]
fn the_loss_is_the_cross_entropy_of_the_logits_over_unpadded_held_out_batches() {
    let src = ParquetRows::open_dir(&sample()).unwrap();
    // The bundled sample's tail: 19 of its 374 rows, none of them trainable.
    assert_eq!(held_out(src.num_rows()), 355..374);
    assert_eq!(TrainRows::new(ParquetRows::open_dir(&sample()).unwrap()).num_rows(), 355);

    let (batches, rows) = held_out_batches(&src, Some(2), 2, 64).unwrap();
    assert_eq!(rows, 355..357);
    assert!(batches.unpadded() >= 2 && batches.unpadded() < batches.len(), "{} of {}", batches.unpadded(), batches.len());
    let mut m = small(3);
    let e = evaluate(&mut m, &batches, |_, _| {}).unwrap();
    assert_eq!((e.batches, e.tokens), (batches.unpadded(), batches.unpadded() * 128));

    let vocab = m.config.vocab_size;
    let mut want = 0f64;
    for k in 0..batches.unpadded() {
        let (x, y) = batches.batch(k);
        let (_, logits) = m.forward_logits(x, y, 2, 64).unwrap();
        want += naive_cross_entropy(&logits, y, vocab);
    }
    want /= batches.unpadded() as f64;
    assert!((e.loss - want).abs() < 1e-5 * want, "evaluate {} vs naive {want}", e.loss);
    assert!((e.perplexity() - want.exp()).abs() < 1e-4 * want.exp());
    // A random model predicts about uniformly over GPT-2's 50,257 tokens.
    assert!((e.loss - (50_257f64).ln()).abs() < 0.3, "{}", e.loss);
}

#[test]
fn a_single_short_row_is_still_evaluated_in_its_padded_batch() {
    let rows = vec![vec![10u32, 20, 30]];
    let batches = RowBatches::new(&rows, 1, 8).unwrap();
    assert_eq!((batches.len(), batches.unpadded()), (1, 0));
    let e = evaluate(&mut small(1), &batches, |_, _| {}).unwrap();
    assert_eq!(e.batches, 1);
    assert!(e.loss.is_finite());
}

fn eval_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dtrain")).args(["-q", "eval", "--device", "cpu"]).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn json_loss(stdout: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    v["loss"].as_f64().unwrap()
}

#[test]
fn dtrain_eval_measures_a_checkpoint_and_hub_tags() {
    let dir = std::env::temp_dir().join(format!("dtrain-eval-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = sample();
    let data = data.to_str().unwrap();
    // Two models: published as tags 1 and 2 of a local store.
    let (a, b) = (small(7), small(8));
    checkpoint::save(&dir.join("a"), &a, None, &[]).unwrap();
    checkpoint::save(&dir.join("b"), &b, None, &[("dtrain.json", br#"{"epoch":2,"seq":32}"#.to_vec())]).unwrap();
    let store = LocalStore::open(&dir.join("hub")).unwrap();
    store.publish(&dir.join("a"), "1", "Epoch 1.").unwrap();
    store.publish(&dir.join("b"), "2", "Epoch 2.").unwrap();

    // What the library measures on the same rows, batch and length.
    let src = ParquetRows::open_dir(&sample()).unwrap();
    let expect = |m: &mut Gpt<CpuEngine>, t: usize| evaluate(m, &held_out_batches(&src, Some(3), 4, t).unwrap().0, |_, _| {}).unwrap().loss;
    let (want_a, want_b) = (expect(&mut small(7), 64), expect(&mut small(8), 32));

    let common = ["--data", data, "--rows", "3", "--batch", "4", "--json"];
    let ckpt = dir.join("a");
    let (ok, out, err) = eval_cmd(&[&["--checkpoint", ckpt.to_str().unwrap(), "--seq", "64"][..], &common].concat());
    assert!(ok, "{err}");
    assert!((json_loss(&out) - want_a).abs() < 1e-6 * want_a, "{out} vs {want_a}");

    // The newest tag by default, at the length its dtrain.json names.
    let hub = dir.join("hub");
    let hub = hub.to_str().unwrap();
    let (ok, out, err) = eval_cmd(&[&["--hub-store", hub][..], &common].concat());
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["seq"], 32, "{v}");
    assert_eq!(v["rows"], serde_json::json!([355, 358]), "{v}");
    assert!((json_loss(&out) - want_b).abs() < 1e-6 * want_b, "{out} vs {want_b}");
    let (ok, out, err) = eval_cmd(&[&["--hub-store", hub, "--tag", "1", "--seq", "64"][..], &common].concat());
    assert!(ok, "{err}");
    assert!((json_loss(&out) - want_a).abs() < 1e-6 * want_a, "{out} vs {want_a}");
    // The download is not left behind.
    let left: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("dtrain-model-"))
        .filter(|e| e.metadata().is_ok_and(|m| m.modified().is_ok_and(|t| t.elapsed().is_ok_and(|d| d.as_secs() < 60))))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // Clear errors.
    let (ok, _, err) = eval_cmd(&["--data", data]);
    assert!(!ok && err.contains("name a model"), "{err}");
    let (ok, _, err) = eval_cmd(&["--hub-store", hub, "--tag", "9", "--data", data]);
    assert!(!ok && err.contains("tag 9"), "{err}");
    let (ok, _, err) = eval_cmd(&["--checkpoint", ckpt.to_str().unwrap(), "--seq", "5000", "--data", data]);
    assert!(!ok && err.contains("context"), "{err}");
    let (ok, _, err) = eval_cmd(&["--checkpoint", dir.join("nowhere").to_str().unwrap(), "--data", data]);
    assert!(!ok && err.contains("nowhere"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
