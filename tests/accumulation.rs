//! Batch-size invariances: a big batch (whose output head runs in several
//! chunks) must agree with the same sequences run one at a time, and
//! gradient accumulation must weight micro-batches by their sample counts.

mod common;
use common::*;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::{Gpt, checkpoint};
use dtrain::rng::Rng;

fn model() -> Gpt<CpuEngine> {
    checkpoint::load_model(&fixture_dir().join("model"), CpuEngine::new()).unwrap()
}

/// `b` random sequences of `t + 1` tokens → (inputs, targets) per sequence.
fn sequences(b: usize, t: usize, seed: u64) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut rng = Rng::new(seed);
    (0..b)
        .map(|_| {
            let s: Vec<u32> = (0..=t).map(|_| rng.below(300) as u32).collect();
            (s[..t].to_vec(), s[1..].to_vec())
        })
        .collect()
}

fn concat(seqs: &[(Vec<u32>, Vec<u32>)]) -> (Vec<u32>, Vec<u32>) {
    (seqs.iter().flat_map(|s| s.0.clone()).collect(), seqs.iter().flat_map(|s| s.1.clone()).collect())
}

#[test]
fn a_chunked_output_head_equals_sequence_by_sequence() {
    // 9 × 64 = 576 tokens: the head runs as 512 + 64 rows.
    let (b, t) = (9, 64);
    let seqs = sequences(b, t, 1);
    let (inputs, targets) = concat(&seqs);
    let mut m = model();
    let (loss, logits) = m.forward_logits(&inputs, &targets, b, t).unwrap();
    m.zero_grads();
    assert_eq!(m.forward_backward(&inputs, &targets, b, t, b as f32).unwrap(), loss);
    m.finish_accumulation();
    let big = m.read_grads();

    let (mut losses, mut each_logits) = (0f64, Vec::new());
    m.zero_grads();
    for (x, y) in &seqs {
        let (l, lg) = m.forward_logits(x, y, 1, t).unwrap();
        losses += l as f64;
        each_logits.extend(lg);
        m.forward_backward(x, y, 1, t, 1.0).unwrap();
    }
    assert_eq!(m.finish_accumulation(), b as f64);
    let small = m.read_grads();
    assert!((loss as f64 - losses / b as f64).abs() < 1e-5, "{loss} vs {}", losses / b as f64);
    assert!(rel_err(&logits, &each_logits) < 1e-6);
    for tensor in &m.layout.tensors {
        let r = tensor.offset..tensor.offset + tensor.numel();
        let err = rel_err(&big[r.clone()], &small[r]);
        assert!(err < 1e-5, "{}: relative error {err:e}", tensor.name);
    }
}

#[test]
fn accumulation_weights_micro_batches_by_samples() {
    // Micro-batches of 1 and 3 sequences, accumulated, equal one batch of 4.
    let t = 16;
    let seqs = sequences(4, t, 2);
    let mut m = model();
    let (x, y) = concat(&seqs);
    m.zero_grads();
    m.forward_backward(&x, &y, 4, t, 4.0).unwrap();
    m.finish_accumulation();
    let whole = m.read_grads();

    m.zero_grads();
    let (x1, y1) = concat(&seqs[..1]);
    let (x3, y3) = concat(&seqs[1..]);
    m.forward_backward(&x1, &y1, 1, t, 1.0).unwrap();
    m.forward_backward(&x3, &y3, 3, t, 3.0).unwrap();
    assert_eq!(m.grad_weight(), 4.0);
    m.finish_accumulation();
    let err = rel_err(&m.read_grads(), &whole);
    assert!(err < 1e-5, "relative error {err:e}");
}

#[test]
fn recomputing_activations_gives_the_same_gradients() {
    // 9 × 64 tokens: several head chunks in both modes (512 and 256 rows).
    let (b, t) = (9, 64);
    let (inputs, targets) = concat(&sequences(b, t, 3));
    let mut m = model();
    let mut grads = Vec::new();
    for recompute in [false, true] {
        m.set_recompute(recompute);
        m.zero_grads();
        let loss = m.forward_backward(&inputs, &targets, b, t, 1.0).unwrap();
        grads.push((loss, m.read_grads()));
    }
    assert_eq!(grads[0].0, grads[1].0);
    for tensor in &m.layout.tensors {
        let r = tensor.offset..tensor.offset + tensor.numel();
        let err = rel_err(&grads[1].1[r.clone()], &grads[0].1[r]);
        // Only the head's chunking differs (summation order of its weight gradient).
        let tol = if tensor.name.ends_with("wte.weight") { 1e-6 } else { 0.0 };
        assert!(err <= tol, "{}: relative error {err:e}", tensor.name);
    }
}
