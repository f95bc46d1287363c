//! The CUDA kernels, compiled as C++ with the project's emulation header
//! (kernels/emu/cuda_emu.h) and launched through the CUDA engine's own
//! host code, against the CPU engine on small shapes with awkward sizes
//! (rows and channels that are not multiples of the block or warp size,
//! repeated tokens, padded vocabulary); then the whole model: training
//! steps of a tiny GPT-2 on the emulated engine against the CPU engine.

use dtrain::engine::cpu::CpuEngine;
use dtrain::engine::cuda::emu::Emu;
use dtrain::engine::cuda::{CudaEngine, Precision, View};
use dtrain::engine::{AdamHyper, ArenaKind, Engine, WeightLayout};
use dtrain::model::{Gpt, GptConfig};
use dtrain::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use dtrain::rng::Rng;

fn emulated() -> CudaEngine<Emu> {
    assert!(Emu::available(), "the kernels' CPU emulation was not built: build.rs needs a C++ compiler (g++ or clang++)");
    CudaEngine::new(Emu)
}

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() * scale).collect()
}

/// The same buffers on both engines; `run` gets the pointers of each.
struct Pair {
    cpu: CpuEngine,
    gpu: CudaEngine<Emu>,
    c: Vec<dtrain::engine::cpu::CpuArena>,
    g: Vec<dtrain::engine::cuda::CudaArena<Emu>>,
}

impl Pair {
    fn new(inputs: &[&[f32]]) -> Pair {
        let (cpu, gpu) = (CpuEngine, emulated());
        let mut c = Vec::new();
        let mut g = Vec::new();
        for x in inputs {
            let a = cpu.alloc(ArenaKind::Acts, x.len()).unwrap();
            let b = gpu.alloc(ArenaKind::Acts, x.len()).unwrap();
            unsafe {
                cpu.write(cpu.at(&a, 0), x);
                gpu.write(gpu.at(&b, 0), x);
            }
            c.push(a);
            g.push(b);
        }
        Pair { cpu, gpu, c, g }
    }
    fn cp(&self, i: usize) -> dtrain::engine::cpu::CpuPtr {
        self.cpu.at(&self.c[i], 0)
    }
    fn gp(&self, i: usize) -> View {
        self.gpu.at(&self.g[i], 0)
    }
    /// Buffer `i` as (cpu, emulated).
    fn get(&self, i: usize) -> (Vec<f32>, Vec<f32>) {
        let n = self.cpu.arena_len(&self.c[i]);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        unsafe {
            self.cpu.read(self.cp(i), &mut a);
            self.gpu.read(self.gp(i), &mut b);
        }
        (a, b)
    }
}

#[track_caller]
fn close(what: &str, cpu: &[f32], gpu: &[f32], tol: f32) {
    assert_eq!(cpu.len(), gpu.len());
    for (i, (&a, &b)) in cpu.iter().zip(gpu).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + a.abs()), "{what}[{i}]: cpu {a}, emulated {b}");
    }
}

/// ‖cpu − gpu‖ ≤ tol·‖cpu‖, for vectors whose entries span magnitudes.
#[track_caller]
fn relative(what: &str, cpu: &[f32], gpu: &[f32], tol: f64) {
    let norm = cpu.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let diff = cpu.iter().zip(gpu).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>().sqrt();
    assert!(norm > 0.0 && diff <= tol * norm, "{what}: ‖difference‖ {diff:e} against ‖cpu‖ {norm:e}");
}

#[track_caller]
fn identical(what: &str, cpu: &[f32], gpu: &[f32]) {
    for (i, (&a, &b)) in cpu.iter().zip(gpu).enumerate() {
        assert!(a.to_bits() == b.to_bits(), "{what}[{i}]: cpu {a}, emulated {b}");
    }
}

#[test]
fn fill_scale_and_sum_squares() {
    let n = 40_000; // three blocks of sum_squares, the last one partial
    let x = random(n, 1, 1.0);
    let p = Pair::new(&[&x, &x]);
    unsafe {
        let (a, b) = (p.cpu.sum_squares(p.cp(0), n), p.gpu.sum_squares(p.gp(0), n));
        assert!((a - b).abs() <= 1e-12 * a, "sum of squares: cpu {a}, emulated {b}");
        p.cpu.scale(p.cp(0), n - 3, 0.37);
        p.gpu.scale(p.gp(0), n - 3, 0.37);
        p.cpu.fill(p.cp(1), 1001, 2.5);
        p.gpu.fill(p.gp(1), 1001, 2.5);
    }
    let (a, b) = p.get(0);
    identical("scaled", &a, &b);
    assert_eq!(b[n - 1], x[n - 1], "scale stops at its length");
    let (a, b) = p.get(1);
    identical("filled", &a, &b);
}

#[test]
fn encoder_forward_and_backward_are_identical() {
    let (b, t, c, v) = (3, 7, 45, 11);
    // Few distinct tokens, so most repeat.
    let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 7) % 5 + (i % 3)) as u32).collect();
    let wte = random(v * c, 2, 0.1);
    let wpe = random(t * c, 3, 0.1);
    let dout = random(b * t * c, 4, 1.0);
    let dwte = random(v * c, 5, 0.1);
    let dwpe = random(t * c, 6, 0.1);
    let out = vec![0f32; b * t * c];
    let p = Pair::new(&[&wte, &wpe, &out, &dout, &dwte, &dwpe]);
    unsafe {
        p.cpu.encoder_forward(p.cp(2), &tokens, p.cp(0), p.cp(1), b, t, c);
        p.gpu.encoder_forward(p.gp(2), &tokens, p.gp(0), p.gp(1), b, t, c);
        p.cpu.encoder_backward(p.cp(4), p.cp(5), p.cp(3), &tokens, b, t, c);
        p.gpu.encoder_backward(p.gp(4), p.gp(5), p.gp(3), &tokens, b, t, c);
    }
    for (i, what) in [(2, "out"), (4, "dwte"), (5, "dwpe")] {
        let (a, g) = p.get(i);
        identical(what, &a, &g);
    }
}

#[test]
fn layernorm_forward_and_backward() {
    let (n, c) = (77, 100); // rows not a multiple of 8 (rows per block) or 64 (chunk)
    let inp: Vec<f32> = random(n * c, 7, 2.0).iter().map(|x| x + 0.5).collect();
    let w = random(c, 8, 1.0);
    let bias = random(c, 9, 1.0);
    let dout = random(n * c, 10, 1.0);
    let dinp = random(n * c, 11, 1.0); // accumulated into
    let dw = random(c, 12, 1.0);
    let db = random(c, 13, 1.0);
    let zeros = vec![0f32; n * c];
    let p = Pair::new(&[&inp, &w, &bias, &zeros, &zeros[..n], &zeros[..n], &dout, &dinp, &dw, &db]);
    unsafe {
        p.cpu.layernorm_forward(p.cp(3), p.cp(4), p.cp(5), p.cp(0), p.cp(1), p.cp(2), n, c);
        p.gpu.layernorm_forward(p.gp(3), p.gp(4), p.gp(5), p.gp(0), p.gp(1), p.gp(2), n, c);
    }
    close("out", &p.get(3).0, &p.get(3).1, 1e-5);
    close("mean", &p.get(4).0, &p.get(4).1, 1e-6);
    close("rstd", &p.get(5).0, &p.get(5).1, 1e-5);
    // The backward pass from the same statistics on both sides.
    let (mean, rstd) = (p.get(4).0, p.get(5).0);
    unsafe {
        p.gpu.write(p.gp(4), &mean);
        p.gpu.write(p.gp(5), &rstd);
        p.cpu.layernorm_backward(p.cp(7), p.cp(8), p.cp(9), p.cp(6), p.cp(0), p.cp(1), p.cp(4), p.cp(5), n, c);
        p.gpu.layernorm_backward(p.gp(7), p.gp(8), p.gp(9), p.gp(6), p.gp(0), p.gp(1), p.gp(4), p.gp(5), n, c);
    }
    close("dinp", &p.get(7).0, &p.get(7).1, 1e-5);
    // Same summation order as the CPU engine.
    identical("dw", &p.get(8).0, &p.get(8).1);
    identical("dbias", &p.get(9).0, &p.get(9).1);
}

#[test]
fn gelu_forward_and_backward_in_place() {
    let n = 3000;
    let x = random(n, 14, 3.0);
    let d = random(n, 15, 1.0);
    let p = Pair::new(&[&x, &x, &d]);
    unsafe {
        // Forward in place on copy 1; backward in place on the gradient.
        p.cpu.gelu_forward(p.cp(1), p.cp(1), n);
        p.gpu.gelu_forward(p.gp(1), p.gp(1), n);
        p.cpu.gelu_backward(p.cp(2), p.cp(0), p.cp(2), n);
        p.gpu.gelu_backward(p.gp(2), p.gp(0), p.gp(2), n);
    }
    close("gelu", &p.get(1).0, &p.get(1).1, 1e-6);
    close("dgelu", &p.get(2).0, &p.get(2).1, 1e-6);
}

#[test]
fn crossentropy_loss_and_fused_gradient() {
    let (n, v, vp) = (5, 1000, 1024);
    let logits = random(n * vp, 16, 4.0);
    let targets: Vec<u32> = vec![0, 999, 17, 500, 17];
    let p = Pair::new(&[&logits, &logits, &[0.0; 5], &[0.0; 5]]);
    unsafe {
        p.cpu.crossentropy(p.cp(2), p.cp(0), &targets, None, n, v, vp);
        p.gpu.crossentropy(p.gp(2), p.gp(0), &targets, None, n, v, vp);
        p.cpu.crossentropy(p.cp(3), p.cp(1), &targets, Some(0.25), n, v, vp);
        p.gpu.crossentropy(p.gp(3), p.gp(1), &targets, Some(0.25), n, v, vp);
    }
    close("loss", &p.get(2).0, &p.get(2).1, 1e-5);
    close("loss (training)", &p.get(3).0, &p.get(3).1, 1e-5);
    identical("untouched logits", &p.get(0).1, &logits);
    let (a, g) = p.get(1);
    close("dlogits", &a, &g, 1e-6);
    for r in 0..n {
        assert!(g[r * vp + v..(r + 1) * vp].iter().all(|&x| x == 0.0), "padding of row {r} is zeroed");
    }
}

#[test]
fn adamw_is_identical() {
    let n = 5000;
    let (w, g, m, v) =
        (random(n, 17, 1.0), random(n, 18, 0.1), random(n, 19, 0.01), random(n, 20, 0.001).iter().map(|x| x.abs()).collect::<Vec<_>>());
    let p = Pair::new(&[&w, &g, &m, &v]);
    let hp = AdamHyper { lr: 6e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, grad_scale: 0.5 };
    for step in 1..=3 {
        unsafe {
            p.cpu.adamw(p.cp(0), p.cp(1), p.cp(2), p.cp(3), n, &hp, step);
            p.gpu.adamw(p.gp(0), p.gp(1), p.gp(2), p.gp(3), n, &hp, step);
        }
    }
    for (i, what) in [(0, "w"), (2, "m"), (3, "v")] {
        let (a, b) = p.get(i);
        identical(what, &a, &b);
    }
}

/// The emulation itself: shuffles as CUDA defines them, block reductions,
/// and a barrier in divergent code reported instead of hanging.
#[test]
fn the_emulation_shuffles_and_catches_divergent_barriers() {
    use dtrain::engine::cuda::device::{Args, Device, Shape};
    let gpu = emulated();
    let n = 64usize;
    let input: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let inp = gpu.alloc(ArenaKind::Acts, n).unwrap();
    let out = gpu.alloc(ArenaKind::Acts, 5 * n).unwrap();
    unsafe {
        gpu.write(gpu.at(&inp, 0), &input);
        gpu.device()
            .launch("emu_selftest_shuffles", Shape::linear(1, n as u32), Args::new().ptr(gpu.at(&out, 0).addr).ptr(gpu.at(&inp, 0).addr))
            .unwrap();
    }
    let mut got = vec![0f32; 5 * n];
    unsafe { gpu.read(gpu.at(&out, 0), &mut got) };
    for i in 0..n {
        let (lane, warp) = (i % 32, i / 32 * 32);
        assert_eq!(got[i], (warp + (lane ^ 5)) as f32, "xor, thread {i}");
        let down = if lane + 3 < 32 { i + 3 } else { i };
        assert_eq!(got[n + i], down as f32, "down, thread {i}");
        assert_eq!(got[2 * n + i], (warp + lane / 16 * 16 + 7) as f32, "idx width 16, thread {i}");
        assert_eq!(got[3 * n + i], (n * (n - 1) / 2) as f32, "block sum, thread {i}");
        assert_eq!(got[4 * n + i], (32 * warp + 31 * 32 / 2) as f32, "warp sum, thread {i}");
    }
    // A missing barrier shows in one of the two thread orders.
    unsafe { gpu.device().launch("emu_selftest_missing_barrier", Shape::linear(2, 64), Args::new().ptr(gpu.at(&out, 0).addr)).unwrap() };
    let mut raced = vec![0f32; 128];
    unsafe { gpu.read(gpu.at(&out, 0), &mut raced) };
    assert!(raced[..64].iter().enumerate().all(|(i, &v)| v == i.saturating_sub(1) as f32), "forward order: {:?}", &raced[..64]);
    assert!(raced[65..].iter().all(|v| v.is_nan()), "the reverse order exposes the race: {:?}", &raced[64..]);
    let e =
        unsafe { gpu.device().launch("emu_selftest_divergent_barrier", Shape::linear(2, 32), Args::new().ptr(gpu.at(&out, 0).addr)) }.unwrap_err();
    assert!(e.to_string().contains("deadlock"), "{e}");
}

#[test]
fn flash_attention_forward_and_backward() {
    // T = 45: a full tile of 32 keys and a partial one; blocks of 8 rows
    // with a partial last block; heads of 16 (the tiny preset) and 40 (two
    // dimensions per lane for some lanes, one for others).
    for (b, t, c, nh) in [(2, 45, 32, 2), (1, 37, 80, 2)] {
        let qkv = random(b * t * 3 * c, 21, 1.0);
        let dout = random(b * t * c, 22, 1.0);
        let out = vec![0f32; b * t * c];
        let cache = vec![0f32; b * nh * t];
        let dqkv = random(b * t * 3 * c, 23, 1.0); // overwritten
        let p = Pair::new(&[&qkv, &dout, &out, &cache, &dqkv]);
        assert_eq!(p.gpu.attention_cache_len(b, t, nh), p.cpu.attention_cache_len(b, t, nh));
        unsafe {
            p.cpu.attention_forward(p.cp(2), p.cp(3), p.cp(0), b, t, c, nh);
            p.gpu.attention_forward(p.gp(2), p.gp(3), p.gp(0), b, t, c, nh);
            p.cpu.attention_backward(p.cp(4), p.cp(1), p.cp(0), p.cp(3), b, t, c, nh);
            p.gpu.attention_backward(p.gp(4), p.gp(1), p.gp(0), p.gp(3), b, t, c, nh);
        }
        close("attention out", &p.get(2).0, &p.get(2).1, 2e-5);
        close("log-sum-exp", &p.get(3).0, &p.get(3).1, 2e-5);
        close("dqkv", &p.get(4).0, &p.get(4).1, 1e-4);
    }
}

#[test]
fn linear_layers_in_both_layouts() {
    let (n, c, oc) = (70, 24, 36);
    for layout in [WeightLayout::InOut, WeightLayout::OutIn] {
        let inp = random(n * c, 24, 1.0);
        let w = random(c * oc, 25, 0.2);
        let bias = random(oc, 26, 0.5);
        let residual = random(n * oc, 27, 1.0);
        let dout = random(n * oc, 28, 1.0);
        let out = vec![0f32; n * oc];
        let dinp = random(n * c, 29, 1.0); // overwritten
        let dw = random(c * oc, 30, 0.1); // accumulated into
        let db = random(oc, 31, 0.1);
        let p = Pair::new(&[&inp, &w, &bias, &residual, &out, &out, &dout, &dinp, &dw, &db]);
        unsafe {
            for (cpu_bias, gpu_bias, cpu_res, gpu_res, o) in
                [(Some(p.cp(2)), Some(p.gp(2)), Some(p.cp(3)), Some(p.gp(3)), 4), (None, None, None, None, 5)]
            {
                p.cpu.matmul_forward(p.cp(o), p.cp(0), p.cp(1), layout, cpu_bias, cpu_res, n, c, oc);
                p.gpu.matmul_forward(p.gp(o), p.gp(0), p.gp(1), layout, gpu_bias, gpu_res, n, c, oc);
            }
            p.cpu.matmul_backward(p.cp(7), p.cp(8), Some(p.cp(9)), p.cp(6), p.cp(0), p.cp(1), layout, n, c, oc);
            p.gpu.matmul_backward(p.gp(7), p.gp(8), Some(p.gp(9)), p.gp(6), p.gp(0), p.gp(1), layout, n, c, oc);
        }
        // The emulated device uses the CPU engine's GEMM; the rest is the
        // kernels, in the CPU engine's order: all bit-identical.
        for (i, what) in [(4, "out with bias and residual"), (5, "out"), (7, "dinp"), (8, "dw"), (9, "dbias")] {
            let (a, b) = p.get(i);
            identical(&format!("{layout:?} {what}"), &a, &b);
        }
    }
}

#[test]
fn lamb_phases() {
    let n = 20_000;
    let (w, g, m, v) =
        (random(n, 32, 1.0), random(n, 33, 0.1), random(n, 34, 0.01), random(n, 35, 0.001).iter().map(|x| x.abs()).collect::<Vec<_>>());
    let p = Pair::new(&[&w, &g, &m, &v]);
    let hp = AdamHyper { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-6, weight_decay: 0.01, grad_scale: 2.0 };
    for step in 1..=2 {
        let (a, b) = unsafe {
            (
                p.cpu.lamb_moments(p.cp(0), p.cp(1), p.cp(2), p.cp(3), n, &hp, step),
                p.gpu.lamb_moments(p.gp(0), p.gp(1), p.gp(2), p.gp(3), n, &hp, step),
            )
        };
        assert!((a.0 - b.0).abs() <= 1e-6 * a.0 && (a.1 - b.1).abs() <= 1e-6 * a.1, "norms: cpu {a:?}, emulated {b:?}");
        unsafe {
            p.cpu.lamb_apply(p.cp(0), p.cp(2), p.cp(3), n, &hp, step, 0.003);
            p.gpu.lamb_apply(p.gp(0), p.gp(2), p.gp(3), n, &hp, step, 0.003);
        }
    }
    for (i, what) in [(0, "w"), (2, "m"), (3, "v")] {
        let (a, b) = p.get(i);
        identical(what, &a, &b);
    }
}

/// The tensor-core building block: the m16n8k16 product's warp-shuffle
/// twin (what the emulation runs for the PTX instruction) through the
/// fragment loaders equals the host's product.
#[test]
fn the_tensor_core_twin_multiplies_like_the_host() {
    let checks = dtrain::engine::cuda::check::check_mma(&emulated(), false).unwrap();
    assert_eq!(checks.len(), 1);
    assert!(checks[0].passed(), "{checks:?}");
}

/// The model's whole call list on the emulated CUDA engine: three AdamW
/// steps of the tiny preset from the same weights and batches as the CPU
/// engine — losses, gradients and weights agree.
#[test]
fn training_steps_of_a_tiny_gpt_agree_with_the_cpu_engine() {
    let cfg = GptConfig::preset("tiny").unwrap();
    let mut cpu = Gpt::new(CpuEngine, cfg).unwrap();
    cpu.init_random(7);
    let mut gpu = Gpt::new(emulated(), cfg).unwrap();
    gpu.write_params(&cpu.read_params());
    let mut cpu_opt = Optimizer::new(&cpu, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let mut gpu_opt = Optimizer::new(&gpu, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let start = cpu.read_params();
    let (b, t) = (2, 40);
    let mut rng = Rng::new(99);
    for step in 0..3 {
        let tokens: Vec<u32> = (0..b * t + 1).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
        let (x, y) = (&tokens[..b * t], &tokens[1..]);
        let lc = cpu.forward_backward(x, y, b, t, 1.0).unwrap();
        let lg = gpu.forward_backward(x, y, b, t, 1.0).unwrap();
        assert!((lc - lg).abs() < 1e-5 * lc.abs(), "step {step}: loss cpu {lc}, emulated {lg}");
        relative(&format!("step {step} gradients"), &cpu.read_grads(), &gpu.read_grads(), 1e-5);
        let nc = cpu_opt.clip_and_step(&mut cpu, 1e-3, 1.0);
        let ng = gpu_opt.clip_and_step(&mut gpu, 1e-3, 1.0);
        assert!((nc - ng).abs() < 1e-4 * nc, "step {step}: gradient norm cpu {nc}, emulated {ng}");
    }
    // What the three steps changed, on each engine.
    let moved = |m: Vec<f32>| m.iter().zip(&start).map(|(a, b)| a - b).collect::<Vec<f32>>();
    relative("updates of three steps", &moved(cpu.read_params()), &moved(gpu.read_params()), 1e-4);
}

/// The bf16 mode: parameters and activations stored in bf16, an fp32
/// master copy of the weights. Training the tiny preset on one repeated
/// batch for 30 AdamW steps tracks the CPU engine's fp32 training (the
/// losses within bf16's rounding, both falling by the same amount), and
/// the weights read back are the fp32 master's, not their bf16 rounding.
#[test]
fn bf16_training_tracks_fp32_training() {
    let cfg = GptConfig::preset("tiny").unwrap();
    let mut cpu = Gpt::new(CpuEngine, cfg).unwrap();
    cpu.init_random(3);
    let gpu_engine = emulated().with_precision(Precision::Bf16);
    assert_eq!((gpu_engine.elem_bytes(ArenaKind::Params), gpu_engine.elem_bytes(ArenaKind::Acts)), (2, 2));
    assert_eq!((gpu_engine.elem_bytes(ArenaKind::Grads), gpu_engine.elem_bytes(ArenaKind::Stats)), (4, 4));
    let mut gpu = Gpt::new(gpu_engine, cfg).unwrap();
    let start = cpu.read_params();
    gpu.write_params(&start);
    assert!(gpu.read_params() == start, "parameters read back from the fp32 master exactly");
    let mut cpu_opt = Optimizer::new(&cpu, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let mut gpu_opt = Optimizer::new(&gpu, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let (b, t) = (2, 32);
    let mut rng = Rng::new(5);
    let tokens: Vec<u32> = (0..b * t + 1).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let (x, y) = (&tokens[..b * t], &tokens[1..]);
    let mut losses = Vec::new();
    for step in 0..30 {
        let lc = cpu.forward_backward(x, y, b, t, 1.0).unwrap();
        let lg = gpu.forward_backward(x, y, b, t, 1.0).unwrap();
        assert!((lc - lg).abs() < 1e-2 * lc, "step {step}: loss fp32 {lc}, bf16 {lg}");
        if step == 0 {
            relative("first gradients", &cpu.read_grads(), &gpu.read_grads(), 3e-2);
        }
        cpu_opt.clip_and_step(&mut cpu, 3e-3, 1.0);
        gpu_opt.clip_and_step(&mut gpu, 3e-3, 1.0);
        losses.push((lc, lg));
    }
    let ((c0, g0), (c1, g1)) = (losses[0], losses[losses.len() - 1]);
    assert!(c1 < 0.7 * c0, "fp32 training learns the batch: {c0} -> {c1}");
    assert!(g1 < 0.7 * g0, "bf16 training learns the batch: {g0} -> {g1}");
    assert!(((c0 - c1) - (g0 - g1)).abs() < 0.02 * (c0 - c1), "the losses fall alike: fp32 {c0} -> {c1}, bf16 {g0} -> {g1}");
}

/// The all-reduce's codecs on the device: the encoded bytes are the CPU
/// codec's, bit for bit (saturation, rounding ties, int8 scales with a
/// partial last block), and decoding gives the CPU codec's values; bytes
/// that fail the codec's checks are refused without writing anything.
#[test]
fn gradient_codecs_match_the_cpu_codec_bit_for_bit() {
    use dtrain::allreduce::codec::Codec;
    let gpu = emulated();
    let n = 10_000 + 37;
    let mut x = random(n, 40, 3.0);
    // Saturation, fp16 subnormals and exact ties for both half formats.
    x[0] = 70_000.0;
    x[1] = -1e9;
    x[2] = 3e-6;
    x[3] = 1.0 + 2f32.powi(-11); // fp16 tie → even
    x[4] = 1.0 + 2f32.powi(-8); // bf16 tie → even
    x[5] = 0.0;
    let src = gpu.alloc(ArenaKind::Acts, n).unwrap();
    let dst = gpu.alloc(ArenaKind::Acts, n).unwrap();
    unsafe { gpu.write(gpu.at(&src, 0), &x) };
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 256 }, Codec::Int8 { block: 100 }, Codec::Int8 { block: 1 }] {
        let mut want = vec![0u8; codec.encoded_len(n)];
        codec.encode(&x, &mut want);
        let mut got = vec![0u8; codec.encoded_len(n)];
        unsafe { gpu.read_encoded(codec, gpu.at(&src, 0), n, &mut got) };
        assert!(got == want, "{codec}: encoded bytes differ from the CPU codec's (first at {:?})", got.iter().zip(&want).position(|(a, b)| a != b));
        let mut cpu_values = vec![0f32; n];
        codec.decode(&want, &mut cpu_values).unwrap();
        unsafe { gpu.write_decoded(codec, &want, n, gpu.at(&dst, 0)) }.unwrap();
        let mut gpu_values = vec![0f32; n];
        unsafe { gpu.read(gpu.at(&dst, 0), &mut gpu_values) };
        identical(&format!("{codec} decoded"), &cpu_values, &gpu_values);
    }
    // A NaN in fp16 bytes from a peer: refused, the destination untouched.
    let mut bad = vec![0u8; 2 * n];
    Codec::F16.encode(&x, &mut bad);
    bad[20] = 0xff;
    bad[21] = 0x7f;
    unsafe { gpu.write(gpu.at(&dst, 0), &vec![1.5; n]) };
    assert!(unsafe { gpu.write_decoded(Codec::F16, &bad, n, gpu.at(&dst, 0)) }.is_err());
    assert!(unsafe { gpu.write_decoded(Codec::F16, &bad[1..], n, gpu.at(&dst, 0)) }.is_err(), "a short chunk is refused");
    let mut after = vec![0f32; n];
    unsafe { gpu.read(gpu.at(&dst, 0), &mut after) };
    assert!(after.iter().all(|&v| v == 1.5), "a refused chunk wrote nothing");
}

/// bf16 GEMM math on fp32 storage: the emulated device rounds both operands
/// to bf16 (to nearest even) and accumulates in fp32, which must equal the
/// CPU engine's product of operands rounded by the `half` crate.
#[test]
fn bf16_gemm_math_rounds_the_operands_like_the_half_crate() {
    use dtrain::engine::cuda::device::GemmMath;
    let (n, c, oc) = (33, 40, 24);
    let inp = random(n * c, 50, 1.0);
    let w = random(c * oc, 51, 0.3);
    let round = |v: &[f32]| v.iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect::<Vec<f32>>();
    let gpu = emulated().with_gemm_math(GemmMath::Bf16);
    let cpu = CpuEngine;
    let (gi, gw, go) =
        (gpu.alloc(ArenaKind::Acts, n * c).unwrap(), gpu.alloc(ArenaKind::Acts, c * oc).unwrap(), gpu.alloc(ArenaKind::Acts, n * oc).unwrap());
    let (ci, cw, co) =
        (cpu.alloc(ArenaKind::Acts, n * c).unwrap(), cpu.alloc(ArenaKind::Acts, c * oc).unwrap(), cpu.alloc(ArenaKind::Acts, n * oc).unwrap());
    unsafe {
        gpu.write(gpu.at(&gi, 0), &inp);
        gpu.write(gpu.at(&gw, 0), &w);
        cpu.write(cpu.at(&ci, 0), &round(&inp));
        cpu.write(cpu.at(&cw, 0), &round(&w));
        gpu.matmul_forward(gpu.at(&go, 0), gpu.at(&gi, 0), gpu.at(&gw, 0), WeightLayout::InOut, None, None, n, c, oc);
        cpu.matmul_forward(cpu.at(&co, 0), cpu.at(&ci, 0), cpu.at(&cw, 0), WeightLayout::InOut, None, None, n, c, oc);
    }
    let (mut a, mut b) = (vec![0f32; n * oc], vec![0f32; n * oc]);
    unsafe {
        cpu.read(cpu.at(&co, 0), &mut a);
        gpu.read(gpu.at(&go, 0), &mut b);
    }
    identical("bf16-math product", &a, &b);
    // And it is not the fp32 product.
    let exact = emulated();
    let (ei, ew, eo) =
        (exact.alloc(ArenaKind::Acts, n * c).unwrap(), exact.alloc(ArenaKind::Acts, c * oc).unwrap(), exact.alloc(ArenaKind::Acts, n * oc).unwrap());
    let mut e = vec![0f32; n * oc];
    unsafe {
        exact.write(exact.at(&ei, 0), &inp);
        exact.write(exact.at(&ew, 0), &w);
        exact.matmul_forward(exact.at(&eo, 0), exact.at(&ei, 0), exact.at(&ew, 0), WeightLayout::InOut, None, None, n, c, oc);
        exact.read(exact.at(&eo, 0), &mut e);
    }
    assert!(e != b, "bf16 math changed nothing");
}

/// One all-reduce round of two peers on loopback: the second on the host
/// with `theirs` (weight 3), the first running `first` (weight 1); returns
/// the second's result.
fn pair_round(
    codec: dtrain::allreduce::codec::Codec,
    round: u64,
    theirs: &[f32],
    first: impl FnOnce(&mut dtrain::allreduce::Peer, &dtrain::allreduce::Group, &dtrain::allreduce::Settings, std::time::Instant) + Send,
) -> Vec<f32> {
    use dtrain::allreduce::{Group, Identity, Member, Peer, Settings};
    use std::time::{Duration, Instant};
    let peers: Vec<Peer> = (0..2).map(|i| Peer::bind(Identity::from_seed([i + 60; 32]), "127.0.0.1:0".parse().unwrap()).unwrap()).collect();
    let group = Group {
        members: peers
            .iter()
            .enumerate()
            .map(|(i, p)| Member { id: format!("p{i}"), addr: p.local_addr().unwrap(), key: p.public_key(), fraction: 1.0 + i as f64 })
            .collect(),
    };
    let settings = Settings { codec, chunk_bytes: 4096, ..Settings::default() };
    let deadline = Instant::now() + Duration::from_secs(60);
    let [mut mine, mut other]: [Peer; 2] = peers.try_into().ok().unwrap();
    std::thread::scope(|s| {
        let host = s.spawn(|| {
            let mut x = theirs.to_vec();
            other.all_reduce(&group, round, &mut x, 3.0, deadline, &settings).unwrap();
            x
        });
        first(&mut mine, &group, &settings, deadline);
        host.join().unwrap()
    })
}

/// A GPU miner's gradient path: the device encodes (fp16/bf16) everything
/// but its own span, the host round runs on the decoded values, and the
/// result goes back encoded and is decoded on the device. The device ends
/// with the very bits the plain fp32 path gives (the same round with the
/// gradient read as fp32), which are also the other peer's — for every
/// codec, encoded or not — and a non-finite gradient still takes the fp32
/// path, where the round refuses it.
#[test]
fn a_device_miners_encoded_gradients_reduce_to_the_same_bits() {
    use dtrain::allreduce::codec::Codec;
    use dtrain::allreduce::plan::spans;
    use dtrain::subnet::grad_transfer::GradTransfer;
    let cfg = GptConfig::preset("tiny").unwrap();
    let mut model = Gpt::new(emulated(), cfg).unwrap();
    let total = model.layout.total;
    let own = spans(total, &[1.0, 2.0]).unwrap().swap_remove(0);
    let mut rng = Rng::new(77);
    let mut transfer = GradTransfer::new();
    for (round, codec) in [Codec::F16, Codec::Bf16, Codec::F32, Codec::Int8 { block: 64 }].into_iter().enumerate() {
        let mine: Vec<f32> = (0..total).map(|_| rng.normal() * 0.01).collect();
        let theirs: Vec<f32> = (0..total).map(|_| rng.normal() * 0.01).collect();
        let mut plain = mine.clone();
        pair_round(codec, 2 * round as u64, &theirs, |peer, group, settings, deadline| {
            peer.all_reduce(group, 2 * round as u64, &mut plain, 1.0, deadline, settings).unwrap();
        });
        model.write_grads(&mine);
        let other = pair_round(codec, 2 * round as u64 + 1, &theirs, |peer, group, settings, deadline| {
            let grad = transfer.download(&model, codec, own.clone());
            let report = peer.all_reduce(group, 2 * round as u64 + 1, grad, 1.0, deadline, settings).unwrap();
            assert!(report.unaveraged_spans().is_empty(), "{codec}: {}", report.summary());
            transfer.upload(&mut model, &[]);
        });
        let expect_encoded = matches!(codec, Codec::F16 | Codec::Bf16).then_some(codec);
        assert_eq!(transfer.encoded(), expect_encoded, "{codec}: the path taken");
        identical(&format!("{codec}: the device's result against the fp32 path's"), &plain, &model.read_grads());
        identical(&format!("{codec}: the device's result against the other peer's"), &other, &model.read_grads());
    }
    // An inf on the device: the fp32 path, so the round itself refuses it.
    let mut bad: Vec<f32> = (0..total).map(|_| rng.normal()).collect();
    bad[17] = f32::INFINITY;
    model.write_grads(&bad);
    let inf = transfer.download(&model, Codec::F16, own)[17];
    assert_eq!(transfer.encoded(), None, "non-finite gradients are not encoded on the device");
    assert!(inf.is_infinite());
}

#[test]
fn gradient_projections_agree_with_the_cpu() {
    // Three CUDA blocks of groups (256 groups of 4096 values each), the
    // vector starting mid-block.
    let n = 2 * 1024 * 1024 + 150_001;
    let x = random(n, 7, 1.0);
    let p = Pair::new(&[&x]);
    let proj = dtrain::allreduce::projection::Projector::new(&[5; 32]);
    for offset in [0usize, 37, 64 * 1000 + 5] {
        let (a, b) = unsafe { (p.cpu.project(p.cp(0), n, offset, &proj), p.gpu.project(p.gp(0), n, offset, &proj)) };
        let norm = a.1.sqrt();
        assert!((a.1 - b.1).abs() <= 1e-6 * a.1, "offset {offset}: Σx² cpu {} emulated {}", a.1, b.1);
        for j in 0..4 {
            assert!((a.0[j] - b.0[j]).abs() <= 1e-6 * norm, "offset {offset} vector {j}: cpu {} emulated {}", a.0[j], b.0[j]);
        }
        // And against the definition, element by element.
        let naive: f64 = x.iter().enumerate().map(|(i, &v)| v as f64 * proj.sign(1, offset + i) as f64).sum();
        assert!((b.0[1] - naive).abs() <= 1e-6 * norm, "offset {offset}: emulated {} naive {naive}", b.0[1]);
    }
    let empty = unsafe { p.gpu.project(p.gp(0), 0, 3, &proj) };
    assert_eq!(empty, ([0.0; 4], 0.0));
}

/// What a bf16 miner's projections look like to an fp32 validator: the
/// tiny preset's batch gradient on the emulated bf16 engine against the CPU
/// engine's (measured here at 0.6–1.0% of the projections' scale over four
/// batches, ten times the default `PROJECTION_TOLERANCE` of 1e-3, which
/// holds between fp32 engines: 2–6e-7). So a bf16 miner needs the
/// validator's `--projection-tolerance` near 3e-2, where a ×1.15 gradient
/// still fails.
#[test]
fn bf16_projections_disagree_with_fp32_by_about_a_percent() {
    use dtrain::allreduce::projection::{Projector, max_diff};
    use dtrain::subnet::scoring::PROJECTION_TOLERANCE;
    let cfg = GptConfig::preset("tiny").unwrap();
    let mut cpu = Gpt::new(CpuEngine, cfg).unwrap();
    cpu.init_random(3);
    let mut gpu = Gpt::new(emulated().with_precision(Precision::Bf16), cfg).unwrap();
    gpu.write_params(&cpu.read_params());
    let (b, t) = (4, 64);
    let mut rng = Rng::new(0);
    let tokens: Vec<u32> = (0..b * t + 1).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
    let (x, y) = (&tokens[..b * t], &tokens[1..]);
    cpu.zero_grads();
    cpu.forward_backward(x, y, b, t, 1.0).unwrap();
    gpu.zero_grads();
    gpu.forward_backward(x, y, b, t, 1.0).unwrap();
    let p = Projector::new(&[5; 32]);
    let ((a, scale), (g, _)) = (cpu.grad_projection(&p), gpu.grad_projection(&p));
    let d = max_diff(&a, &g) / scale.sqrt();
    eprintln!("bf16 projections differ from fp32 by {d:.2e} of their scale");
    assert!(d > PROJECTION_TOLERANCE && d < 3e-2, "{d}");
    let scaled: [f64; 4] = std::array::from_fn(|j| a[j] * 1.15);
    assert!(max_diff(&a, &scaled) / scale.sqrt() > 3e-2, "a scaled gradient still fails at 3e-2");
}
