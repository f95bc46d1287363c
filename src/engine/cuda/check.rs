//! `dtrain check gpu`: every op of the CUDA engine on random inputs against
//! the CPU engine, then training steps of a small GPT on both; a table of
//! relative errors, each against its tolerance. The first thing to run on a
//! GPU, and what proves a user's setup. With the emulated device it runs the
//! same code on the CPU (small shapes), which is how CI exercises it.

use super::device::{Device, GemmMath};
use super::{CudaEngine, Precision, View};
use crate::engine::cpu::{CpuArena, CpuEngine, CpuPtr};
use crate::engine::{AdamHyper, ArenaKind, Engine, WeightLayout};
use crate::model::{Gpt, GptConfig};
use crate::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use crate::rng::Rng;

/// One line of the table: ‖gpu − cpu‖ / ‖cpu‖ against `tolerance`.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub error: f64,
    pub tolerance: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance
    }
}

fn relative(cpu: &[f32], gpu: &[f32]) -> f64 {
    let norm = cpu.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt();
    let diff = cpu.iter().zip(gpu).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum::<f64>().sqrt();
    if gpu.iter().any(|x| !x.is_finite()) || cpu.len() != gpu.len() {
        return f64::INFINITY;
    }
    if norm == 0.0 { diff } else { diff / norm }
}

/// The same buffers on both engines, each of an arena kind: where the CUDA
/// engine stores that kind in bf16, the values are rounded to bf16 first,
/// so both engines compute from the same inputs and what differs is the
/// rounding of the outputs.
struct Both<'a, D: Device> {
    gpu: &'a CudaEngine<D>,
    c: Vec<CpuArena>,
    g: Vec<super::CudaArena<D>>,
}

impl<'a, D: Device> Both<'a, D> {
    fn new(gpu: &'a CudaEngine<D>, inputs: &[(ArenaKind, &[f32])]) -> Result<Self, String> {
        let mut both = Both { gpu, c: Vec::new(), g: Vec::new() };
        for &(kind, x) in inputs {
            let a = CpuEngine.alloc(kind, x.len()).map_err(|e| e.to_string())?;
            let b = gpu.alloc(kind, x.len()).map_err(|e| e.to_string())?;
            let x: Vec<f32> = if gpu.elem_bytes(kind) == 2 { x.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect() } else { x.to_vec() };
            // SAFETY: both arenas hold x.len() floats.
            unsafe {
                CpuEngine.write(CpuEngine.at(&a, 0), &x);
                gpu.write(gpu.at(&b, 0), &x);
            }
            both.c.push(a);
            both.g.push(b);
        }
        Ok(both)
    }
    fn c(&self, i: usize) -> CpuPtr {
        CpuEngine.at(&self.c[i], 0)
    }
    fn g(&self, i: usize) -> View {
        self.gpu.at(&self.g[i], 0)
    }
    /// Relative error of buffer `i`.
    fn error(&self, i: usize) -> f64 {
        let n = CpuEngine.arena_len(&self.c[i]);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        // SAFETY: both arenas hold n floats.
        unsafe {
            CpuEngine.read(self.c(i), &mut a);
            self.gpu.read(self.g(i), &mut b);
        }
        relative(&a, &b)
    }
    /// Relative error of the bf16 copy of parameters `i` (whose reads come
    /// from the fp32 master) against the CPU's values rounded to bf16.
    fn copy_error(&self, i: usize) -> f64 {
        let n = CpuEngine.arena_len(&self.c[i]);
        let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
        // SAFETY: both arenas hold n floats; the view without its master
        // reads the bf16 copy.
        unsafe {
            CpuEngine.read(self.c(i), &mut a);
            self.gpu.read(View { master: 0, ..self.g(i) }, &mut b);
        }
        a.iter_mut().for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
        relative(&a, &b)
    }
}

fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() * scale).collect()
}

/// Shapes of the op checks: GPT-2 124M's widths on a GPU, small ones when emulated.
#[derive(Debug, Clone, Copy)]
pub struct Shapes {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
    pub v: usize,
    pub vp: usize,
}

impl Shapes {
    pub const GPU: Shapes = Shapes { b: 4, t: 256, c: 768, nh: 12, v: 50_257, vp: 50_304 };
    pub const EMULATED: Shapes = Shapes { b: 2, t: 37, c: 48, nh: 3, v: 300, vp: 384 };
}

const TOL: f64 = 1e-5;
/// One rounding to bf16 of every output value: a relative error of at most
/// 2⁻⁹ each, about 1e-3 over a tensor.
const BF16_TOL: f64 = 5e-3;

/// Tolerance of an output of the storage type (activations): the fp32
/// tolerance, or a bf16 rounding.
fn stored<D: Device>(gpu: &CudaEngine<D>, fp32: f64) -> f64 {
    match gpu.precision() {
        Precision::Fp32 => fp32,
        Precision::Bf16 => fp32.max(BF16_TOL),
    }
}

/// Tolerance of what goes through the GEMMs: exact-ish for fp32 operands
/// in fp32 math, the operands' rounding in tf32 or bf16 math (TF32 keeps
/// 10 mantissa bits, bf16 7). bf16 operands are the same values on both
/// engines, and their products accumulate in fp32: exact-ish too.
fn gemm_tol<D: Device>(gpu: &CudaEngine<D>, fp32: f64) -> f64 {
    match (gpu.precision(), gpu.gemm_math()) {
        (Precision::Bf16, _) | (Precision::Fp32, GemmMath::Fp32) => fp32,
        (Precision::Fp32, GemmMath::Tf32) => fp32.max(2e-3),
        (Precision::Fp32, GemmMath::Bf16) => fp32.max(2e-2),
    }
}

/// Every op, on `s`'s shapes.
pub fn check_ops<D: Device>(gpu: &CudaEngine<D>, s: Shapes) -> Result<Vec<Check>, String> {
    use ArenaKind::{Acts as A, Grads as G, Params as P, State as O, Stats as S};
    let what = match gpu.precision() {
        Precision::Fp32 => gpu.gemm_math().to_string(),
        Precision::Bf16 => "bf16 storage".to_string(),
    };
    let (b, t, c, nh) = (s.b, s.t, s.c, s.nh);
    let n = b * t;
    let mut out = Vec::new();
    let mut push = |name: &str, error: f64, tolerance: f64| out.push(Check { name: name.to_string(), error, tolerance });
    let cpu = CpuEngine;

    let x = random(n * c, 1, 1.0);
    let p = Both::new(gpu, &[(G, &x)])?;
    // SAFETY (all blocks below): every view lies inside the arenas just made.
    let (a, g) = unsafe { (cpu.sum_squares(p.c(0), n * c), gpu.sum_squares(p.g(0), n * c)) };
    push("sum of squares", (a - g).abs() / a, 1e-9);
    // Gradient projections (kernels/projection.cu), from a mid-block offset:
    // error as a fraction of the norm, the unit every tolerance uses.
    let proj = crate::allreduce::projection::Projector::new(&[5; 32]);
    let (a, g) = unsafe { (cpu.project(p.c(0), n * c, 37, &proj), gpu.project(p.g(0), n * c, 37, &proj)) };
    let err = (0..crate::allreduce::projection::K).map(|j| (a.0[j] - g.0[j]).abs()).fold(0.0, f64::max);
    push("gradient projections", err / a.1.sqrt(), 1e-6);
    push("gradient projections (Σx²)", (a.1 - g.1).abs() / a.1, 1e-6);

    let tokens: Vec<u32> = (0..n).map(|i| ((i * 7919) % s.v) as u32).collect();
    let (wte, wpe, dout) = (random(s.vp * c, 2, 0.02), random(t * c, 3, 0.01), random(n * c, 4, 1.0));
    let zeros = vec![0f32; n * c];
    let p = Both::new(gpu, &[(P, &wte), (P, &wpe), (A, &zeros), (A, &dout), (G, &vec![0.0; s.vp * c]), (G, &vec![0.0; t * c])])?;
    unsafe {
        cpu.encoder_forward(p.c(2), &tokens, p.c(0), p.c(1), b, t, c);
        gpu.encoder_forward(p.g(2), &tokens, p.g(0), p.g(1), b, t, c);
        cpu.encoder_backward(p.c(4), p.c(5), p.c(3), &tokens, b, t, c);
        gpu.encoder_backward(p.g(4), p.g(5), p.g(3), &tokens, b, t, c);
    }
    push("encoder forward", p.error(2), stored(gpu, TOL));
    push("encoder backward (wte)", p.error(4), TOL);
    push("encoder backward (wpe)", p.error(5), TOL);

    let (w, bias) = (random(c, 5, 1.0), random(c, 6, 1.0));
    let p = Both::new(
        gpu,
        &[(A, &x), (P, &w), (P, &bias), (A, &zeros), (S, &zeros[..n]), (S, &zeros[..n]), (A, &dout), (A, &zeros), (G, &zeros[..c]), (G, &zeros[..c])],
    )?;
    unsafe {
        cpu.layernorm_forward(p.c(3), p.c(4), p.c(5), p.c(0), p.c(1), p.c(2), n, c);
        gpu.layernorm_forward(p.g(3), p.g(4), p.g(5), p.g(0), p.g(1), p.g(2), n, c);
        cpu.layernorm_backward(p.c(7), p.c(8), p.c(9), p.c(6), p.c(0), p.c(1), p.c(4), p.c(5), n, c);
        gpu.layernorm_backward(p.g(7), p.g(8), p.g(9), p.g(6), p.g(0), p.g(1), p.g(4), p.g(5), n, c);
    }
    push("layernorm forward", p.error(3).max(p.error(4)).max(p.error(5)), stored(gpu, TOL));
    push("layernorm backward (input)", p.error(7), stored(gpu, 1e-4));
    push("layernorm backward (weight, bias)", p.error(8).max(p.error(9)), 1e-4);

    for (layout, oc) in [(WeightLayout::InOut, 3 * c), (WeightLayout::OutIn, s.vp.min(4 * c))] {
        let (wm, bm, dy) = (random(c * oc, 7, 0.02), random(oc, 8, 0.1), random(n * oc, 9, 1.0));
        let res = random(n * oc, 16, 1.0);
        let p = Both::new(
            gpu,
            &[
                (A, &x),
                (P, &wm),
                (P, &bm),
                (A, &vec![0.0; n * oc]),
                (A, &dy),
                (A, &zeros),
                (G, &vec![0.0; c * oc]),
                (G, &vec![0.0; oc]),
                (A, &res),
                (A, &vec![0.0; n * oc]),
            ],
        )?;
        unsafe {
            cpu.matmul_forward(p.c(3), p.c(0), p.c(1), layout, Some(p.c(2)), None, n, c, oc);
            gpu.matmul_forward(p.g(3), p.g(0), p.g(1), layout, Some(p.g(2)), None, n, c, oc);
            cpu.matmul_forward(p.c(9), p.c(0), p.c(1), layout, Some(p.c(2)), Some(p.c(8)), n, c, oc);
            gpu.matmul_forward(p.g(9), p.g(0), p.g(1), layout, Some(p.g(2)), Some(p.g(8)), n, c, oc);
            cpu.matmul_backward(p.c(5), p.c(6), Some(p.c(7)), p.c(4), p.c(0), p.c(1), layout, n, c, oc);
            gpu.matmul_backward(p.g(5), p.g(6), Some(p.g(7)), p.g(4), p.g(0), p.g(1), layout, n, c, oc);
        }
        push(&format!("matmul forward ({layout:?}, {what})"), p.error(3), stored(gpu, gemm_tol(gpu, TOL)));
        // The residual must come through untouched, and be added.
        push(&format!("matmul forward + residual ({layout:?}, {what})"), p.error(9).max(p.error(8)), stored(gpu, gemm_tol(gpu, TOL)));
        push(&format!("matmul backward input ({layout:?}, {what})"), p.error(5), stored(gpu, gemm_tol(gpu, 1e-4)));
        push(&format!("matmul backward weight, bias ({layout:?}, {what})"), p.error(6).max(p.error(7)), gemm_tol(gpu, 1e-4));
    }

    let qkv = random(n * 3 * c, 10, 1.0);
    let cache = vec![0f32; cpu.attention_cache_len(b, t, nh)];
    let p = Both::new(gpu, &[(A, &qkv), (A, &zeros), (S, &cache), (A, &dout), (A, &vec![0.0; n * 3 * c])])?;
    unsafe {
        cpu.attention_forward(p.c(1), p.c(2), p.c(0), b, t, c, nh);
        gpu.attention_forward(p.g(1), p.g(2), p.g(0), b, t, c, nh);
        cpu.attention_backward(p.c(4), p.c(3), p.c(0), p.c(2), b, t, c, nh);
        gpu.attention_backward(p.g(4), p.g(3), p.g(0), p.g(2), b, t, c, nh);
    }
    push("attention forward", p.error(1), stored(gpu, 1e-4));
    push("attention forward (log-sum-exp)", p.error(2), 1e-5);
    push("attention backward", p.error(4), stored(gpu, 1e-4));

    // Generation: one query over t cached positions, and the cache's copy.
    let (q, kv) = (random(c, 12, 1.0), random(2 * c * t, 13, 1.0));
    let p = Both::new(gpu, &[(A, &q), (A, &kv), (A, &vec![0.0; c]), (A, &vec![0.0; 2 * c])])?;
    unsafe {
        cpu.attention_decode(p.c(2), p.c(0), p.c(1), t, c, nh);
        gpu.attention_decode(p.g(2), p.g(0), p.g(1), t, c, nh);
        cpu.copy(p.c(3), p.c(1), 2 * c);
        gpu.copy(p.g(3), p.g(1), 2 * c);
    }
    push("attention decode (generation)", p.error(2), stored(gpu, 1e-4));
    push("copy", p.error(3), stored(gpu, TOL));

    let p = Both::new(gpu, &[(A, &x), (A, &zeros), (A, &dout)])?;
    unsafe {
        cpu.gelu_forward(p.c(1), p.c(0), n * c);
        gpu.gelu_forward(p.g(1), p.g(0), n * c);
        cpu.gelu_backward(p.c(2), p.c(0), p.c(2), n * c);
        gpu.gelu_backward(p.g(2), p.g(0), p.g(2), n * c);
    }
    push("gelu forward", p.error(1), stored(gpu, TOL));
    push("gelu backward", p.error(2), stored(gpu, TOL));

    let rows = n.min(64);
    let logits = random(rows * s.vp, 11, 3.0);
    let targets: Vec<u32> = (0..rows).map(|i| ((i * 31) % s.v) as u32).collect();
    let p = Both::new(gpu, &[(A, &logits), (S, &vec![0.0; rows])])?;
    unsafe {
        cpu.crossentropy(p.c(1), p.c(0), &targets, Some(1.0 / rows as f32), rows, s.v, s.vp);
        gpu.crossentropy(p.g(1), p.g(0), &targets, Some(1.0 / rows as f32), rows, s.v, s.vp);
    }
    push("cross-entropy loss", p.error(1), TOL);
    push("cross-entropy dlogits", p.error(0), stored(gpu, TOL));
    for c in check_mma(gpu, !gpu.device().is_emulated())? {
        push(&c.name, c.error, c.tolerance);
    }

    let len = n * c;
    let (wv, gv, mv, vv) = (random(len, 12, 1.0), random(len, 13, 0.1), random(len, 14, 0.01), random(len, 15, 0.01));
    let vv: Vec<f32> = vv.iter().map(|x| x.abs()).collect();
    let hp = AdamHyper { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, grad_scale: 0.5 };
    let bf16 = gpu.precision() == Precision::Bf16;
    let p = Both::new(gpu, &[(P, &wv), (G, &gv), (O, &mv), (O, &vv)])?;
    unsafe {
        cpu.adamw(p.c(0), p.c(1), p.c(2), p.c(3), len, &hp, 3);
        gpu.adamw(p.g(0), p.g(1), p.g(2), p.g(3), len, &hp, 3);
    }
    push("adamw", p.error(0).max(p.error(2)).max(p.error(3)), TOL);
    if bf16 {
        push("adamw (bf16 copy of the weights)", p.copy_error(0), BF16_TOL);
    }
    let p = Both::new(gpu, &[(P, &wv), (G, &gv), (O, &mv), (O, &vv)])?;
    let (na, ng) = unsafe {
        let na = cpu.lamb_moments(p.c(0), p.c(1), p.c(2), p.c(3), len, &hp, 3);
        let ng = gpu.lamb_moments(p.g(0), p.g(1), p.g(2), p.g(3), len, &hp, 3);
        cpu.lamb_apply(p.c(0), p.c(2), p.c(3), len, &hp, 3, 1e-3);
        gpu.lamb_apply(p.g(0), p.g(2), p.g(3), len, &hp, 3, 1e-3);
        (na, ng)
    };
    let norms = ((na.0 - ng.0) / na.0).abs().max(((na.1 - ng.1) / na.1).abs());
    push("lamb", p.error(0).max(p.error(2)).max(p.error(3)).max(norms), TOL);
    if bf16 {
        push("lamb (bf16 copy of the weights)", p.copy_error(0), BF16_TOL);
    }

    // The all-reduce's codecs: the device's bytes must be the CPU codec's.
    use crate::allreduce::codec::Codec;
    let p = Both::new(gpu, &[(G, &gv)])?;
    for codec in [Codec::F16, Codec::Bf16, Codec::Int8 { block: 256 }] {
        let mut want = vec![0u8; codec.encoded_len(len)];
        codec.encode(&gv, &mut want);
        let mut got = vec![0u8; want.len()];
        unsafe { gpu.read_encoded(codec, p.g(0), len, &mut got) };
        let differing = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        push(&format!("codec {codec} encode (bytes differing)"), differing as f64, 0.0);
        let mut cpu_values = vec![0f32; len];
        codec.decode(&want, &mut cpu_values).map_err(|e| e.to_string())?;
        let dst = gpu.alloc(G, len).map_err(|e| e.to_string())?;
        unsafe { gpu.write_decoded(codec, &want, len, gpu.at(&dst, 0)) }.map_err(|e| e.to_string())?;
        let mut values = vec![0f32; len];
        // SAFETY: `dst` holds len floats.
        unsafe { gpu.read(gpu.at(&dst, 0), &mut values) };
        push(&format!("codec {codec} decode"), relative(&cpu_values, &values), 0.0);
    }
    Ok(out)
}

/// The tensor-core building block (kernels/mma.cu): one m16n8k16 bf16
/// product through the fragment loaders, against the product on the host;
/// on a GPU both the hardware instruction and its shuffle twin (which is
/// what the emulation runs), so a wrong fragment layout shows on either.
pub fn check_mma<D: Device>(gpu: &CudaEngine<D>, hardware: bool) -> Result<Vec<Check>, String> {
    use super::device::{Args, Shape};
    let round = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| half::bf16::from_f32(x).to_f32()).collect() };
    let (a, b, bt, c) = (round(random(256, 21, 1.0)), round(random(128, 22, 1.0)), round(random(128, 23, 1.0)), random(128, 24, 1.0));
    let mut want = vec![0f32; 256];
    for i in 0..16 {
        for j in 0..8 {
            let dot = |f: &dyn Fn(usize) -> f32| (0..16).map(|k| a[i * 16 + k] as f64 * f(k) as f64).sum::<f64>();
            want[i * 8 + j] = (c[i * 8 + j] as f64 + dot(&|k| b[k * 8 + j])) as f32;
            want[128 + i * 8 + j] = dot(&|k| bt[j * 16 + k]) as f32;
        }
    }
    let bits = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|&x| half::bf16::from_f32(x).to_bits().to_le_bytes()).collect() };
    let floats = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let dev = gpu.device();
    let buf = |bytes: usize| dev.alloc(bytes).map_err(|e| e.to_string());
    let (da, db, dbt, dc, dd) = (buf(512)?, buf(256)?, buf(256)?, buf(512)?, buf(1024)?);
    let mut out = Vec::new();
    for shuffled in if hardware { vec![false, true] } else { vec![true] } {
        let mut got = vec![0u8; 1024];
        // SAFETY: every buffer is sized for the kernel's one warp.
        unsafe {
            dev.copy_in(dev.addr(&da), &bits(&a));
            dev.copy_in(dev.addr(&db), &bits(&b));
            dev.copy_in(dev.addr(&dbt), &bits(&bt));
            dev.copy_in(dev.addr(&dc), &floats(&c));
            let args =
                Args::new().ptr(dev.addr(&dd)).ptr(dev.addr(&da)).ptr(dev.addr(&db)).ptr(dev.addr(&dbt)).ptr(dev.addr(&dc)).i32(shuffled as i32);
            dev.launch("mma_selftest", Shape::linear(1, 32), args).map_err(|e| e.to_string())?;
            dev.copy_out(dev.addr(&dd), &mut got);
        }
        let got: Vec<f32> = got.chunks(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        let what = if shuffled { "warp-shuffle twin" } else { "tensor core" };
        out.push(Check { name: format!("mma m16n8k16 bf16 ({what})"), error: relative(&want, &got), tolerance: TOL });
    }
    Ok(out)
}

/// `steps` AdamW steps of `preset` on both engines from the same weights and
/// batches: loss, gradients and the weights' total update.
pub fn check_training<D: Device>(gpu: CudaEngine<D>, preset: &str, b: usize, t: usize, steps: usize) -> Result<Vec<Check>, String> {
    // Tolerances of the loss, the gradients and the weights' update: from
    // fp32 (exact up to summation order) to bf16 storage, where every
    // activation is rounded to 8 significant bits and the error compounds
    // through the layers. Adam's update is nearly a sign for small second
    // moments, so gradient differences grow in it: the loosest bound.
    let (loss_tol, grad_tol, update_tol) = match (gpu.precision(), gpu.gemm_math()) {
        (Precision::Fp32, GemmMath::Fp32) => (TOL, 5e-4, 1e-2),
        (Precision::Fp32, GemmMath::Tf32) => (2e-3, 1e-2, 2e-2),
        (Precision::Fp32, GemmMath::Bf16) => (2e-2, 0.1, 0.2),
        (Precision::Bf16, _) => (5e-3, 3e-2, 0.2),
    };
    let cfg = GptConfig::preset(preset).ok_or_else(|| format!("no model preset {preset}"))?;
    let mut cm = Gpt::new(CpuEngine, cfg).map_err(|e| e.to_string())?;
    cm.init_random(7);
    let mut start = cm.read_params();
    if gpu.precision() == Precision::Bf16 {
        // Both start from weights that bf16 holds exactly.
        start.iter_mut().for_each(|w| *w = half::bf16::from_f32(*w).to_f32());
        cm.write_params(&start);
    }
    let mut gm = Gpt::new(gpu, cfg).map_err(|e| e.to_string())?;
    gm.write_params(&start);
    let mut co = Optimizer::new(&cm, OptimizerConfig::new(OptimizerKind::Adamw)).map_err(|e| e.to_string())?;
    let mut go = Optimizer::new(&gm, OptimizerConfig::new(OptimizerKind::Adamw)).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(99);
    let mut out = Vec::new();
    for step in 0..steps {
        let tokens: Vec<u32> = (0..b * t + 1).map(|_| rng.below(cfg.vocab_size as u64) as u32).collect();
        let (x, y) = (&tokens[..b * t], &tokens[1..]);
        let lc = cm.forward_backward(x, y, b, t, 1.0).map_err(|e| e.to_string())?;
        let lg = gm.forward_backward(x, y, b, t, 1.0).map_err(|e| e.to_string())?;
        let loss_error = ((lc - lg) / lc).abs() as f64;
        out.push(Check { name: format!("training step {} loss", step + 1), error: loss_error, tolerance: loss_tol });
        let error = relative(&cm.read_grads(), &gm.read_grads());
        out.push(Check { name: format!("training step {} gradients", step + 1), error, tolerance: grad_tol });
        co.clip_and_step(&mut cm, 1e-3, 1.0);
        go.clip_and_step(&mut gm, 1e-3, 1.0);
    }
    let moved = |p: Vec<f32>| p.iter().zip(&start).map(|(a, b)| a - b).collect::<Vec<f32>>();
    let error = relative(&moved(cm.read_params()), &moved(gm.read_params()));
    out.push(Check { name: format!("weights after {steps} steps (update)"), error, tolerance: update_tol });
    Ok(out)
}

/// The table `dtrain check gpu` prints.
pub fn table(device: &str, checks: &[Check]) -> String {
    let mut s = format!("{device}\n{:<52} {:>12} {:>12}  result\n", "check", "error", "tolerance");
    for c in checks {
        s.push_str(&format!("{:<52} {:>12.3e} {:>12.1e}  {}\n", c.name, c.error, c.tolerance, if c.passed() { "pass" } else { "FAIL" }));
    }
    let failed = checks.iter().filter(|c| !c.passed()).count();
    s.push_str(&if failed == 0 { format!("all {} checks passed\n", checks.len()) } else { format!("{failed} of {} checks FAILED\n", checks.len()) });
    s
}
