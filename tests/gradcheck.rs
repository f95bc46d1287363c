//! Finite-difference check of the backward pass: for every parameter tensor,
//! the central difference of the loss along a direction must equal the
//! analytic directional derivative.

mod common;
use common::*;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::{Gpt, checkpoint};
use dtrain::rng::Rng;

fn loss_at(model: &mut Gpt<CpuEngine>, params: &[f32], inputs: &[u32], targets: &[u32], b: usize, t: usize) -> f64 {
    model.write_params(params);
    model.forward(inputs, targets, b, t).unwrap() as f64
}

#[test]
fn every_parameter_tensor_passes_finite_differences() {
    let r = Reference::load();
    let (all, shape) = r.batches();
    let (inputs, targets) = split_batch(&all, &shape, 3);
    let (b, t) = (shape[1], shape[2] - 1);
    let mut model = checkpoint::load_model(&fixture_dir().join("model"), CpuEngine::new()).unwrap();
    // Parameters of order one (not GPT-2's 0.02 init), so that every
    // nonlinearity works away from its linear region and a wrong term in any
    // derivative shows.
    let mut rng = Rng::new(11);
    let mut params = model.read_params();
    for tensor in &model.layout.tensors {
        let gain = tensor.name.contains("ln_") && tensor.name.ends_with("weight");
        for x in &mut params[tensor.offset..tensor.offset + tensor.numel()] {
            *x = if gain { 1.0 + 0.3 * rng.normal() } else { 0.3 * rng.normal() };
        }
    }
    model.write_params(&params);
    model.zero_grads();
    model.forward_backward(&inputs, &targets, b, t, 1.0).unwrap();
    let grads = model.read_grads();
    let base = model.read_params();
    let mut rng = Rng::new(7);
    let tensors = model.layout.tensors.clone();
    for tensor in &tensors {
        let range = tensor.offset..tensor.offset + tensor.numel();
        let g = &grads[range.clone()];
        let g_norm = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        // Two unit directions: along the gradient (largest signal) and a
        // random one with a component along it (checks the other coordinates).
        let random: Vec<f64> = (0..g.len()).map(|_| rng.normal() as f64).collect();
        let r_norm = random.iter().map(|x| x * x).sum::<f64>().sqrt();
        let along: Vec<f64> = g.iter().map(|&x| x as f64 / g_norm).collect();
        let mixed: Vec<f64> = along.iter().zip(&random).map(|(a, r)| 0.7 * a + 0.7 * r / r_norm).collect();
        for (label, dir) in [("gradient", &along), ("mixed", &mixed)] {
            let eps = 1e-2;
            let mut plus = base.clone();
            let mut minus = base.clone();
            for (i, d) in range.clone().zip(dir.iter()) {
                plus[i] += (eps * d) as f32;
                minus[i] -= (eps * d) as f32;
            }
            let numeric = (loss_at(&mut model, &plus, &inputs, &targets, b, t) - loss_at(&mut model, &minus, &inputs, &targets, b, t)) / (2.0 * eps);
            let analytic: f64 = g.iter().zip(dir.iter()).map(|(&g, d)| g as f64 * d).sum();
            let err = (numeric - analytic).abs() / analytic.abs().max(1e-3);
            assert!(
                err < 2e-3,
                "{} ({label} direction): finite difference {numeric:e} vs backward {analytic:e} (relative error {err:e})",
                tensor.name
            );
        }
    }
}
