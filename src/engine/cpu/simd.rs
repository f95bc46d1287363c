//! Vector-friendly building blocks for the CPU kernels.
//!
//! The crate is compiled for baseline x86-64 (SSE2) so the binary runs
//! anywhere; hot loops are instead compiled several times by
//! [`multiversion!`] — for AVX-512, for AVX2+FMA and for the baseline — and
//! the best one for the running CPU is picked once at run time. Inside those
//! loops everything must inline and stay branch-free for LLVM to vectorise:
//! hence the polynomial `exp` instead of libm's, and reductions written over
//! [`LANES`] independent accumulators (a fixed order, so results are still
//! deterministic, and one that does not depend on the instruction set).

/// Independent accumulators in reductions: one AVX-512 register of f32.
pub const LANES: usize = 16;

/// 4 = AVX-512, 3 = AVX2 + FMA, 0 = baseline.
#[cfg(target_arch = "x86_64")]
pub fn level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if std::env::var_os("DTRAIN_NO_SIMD").is_some() {
            0
        } else if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") && is_x86_feature_detected!("avx512dq") {
            4
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            3
        } else {
            0
        }
    })
}

/// Defines a function compiled for AVX-512, AVX2+FMA and the baseline,
/// dispatching on [`level`]. The body must only call `#[inline(always)]`
/// helpers for the wider instruction sets to reach into them.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                fn v4($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) $(-> $ret)? { imp($($arg),*) }
                match $crate::engine::cpu::simd::level() {
                    // SAFETY: the level says the CPU has these features.
                    4 => return unsafe { v4($($arg),*) },
                    3 => return unsafe { v3($($arg),*) },
                    _ => {}
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// eˣ within 2 ulp for x in [−87, 88] (clamped outside; e⁻⁸⁷ ≈ 1.6e-38
/// stands in for 0). Cody–Waite reduction to r ∈ [−ln2/2, ln2/2], Cephes'
/// degree-6 polynomial, exponent bits assembled directly.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Σ x over [`LANES`] accumulators.
#[inline(always)]
pub fn sum(x: &[f32]) -> f32 {
    sum_map(x, |v| v)
}

/// Σ f(x) over [`LANES`] accumulators.
#[inline(always)]
pub fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    for (i, &v) in tail.iter().enumerate() {
        acc[i] += f(v);
    }
    reduce(acc)
}

/// Σ a·b over [`LANES`] accumulators.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let full = n / LANES * LANES;
    for (ca, cb) in a[..full].chunks_exact(LANES).zip(b[..full].chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    for i in full..n {
        acc[i - full] += a[i] * b[i];
    }
    reduce(acc)
}

/// max x (−∞ for an empty slice).
#[inline(always)]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    for (i, &v) in tail.iter().enumerate() {
        acc[i] = if v > acc[i] { v } else { acc[i] };
    }
    acc.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// Pairwise sum of the lanes (fixed order).
#[inline(always)]
fn reduce(mut acc: [f32; LANES]) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            acc[i] += acc[i + w];
        }
        w /= 2;
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_its_range() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
            x += 0.001_7;
        }
        assert!(worst < 3e-7, "relative error {worst:e}");
        assert!(exp(-1000.0) < 2e-38 && exp(-1000.0) >= 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn reductions_match_naive_sums() {
        let x: Vec<f32> = (0..1003).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let y: Vec<f32> = (0..1003).map(|i| ((i * 11 % 13) as f32) / 3.0).collect();
        let naive_sum: f64 = x.iter().map(|&v| v as f64).sum();
        let naive_dot: f64 = x.iter().zip(&y).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((sum(&x) as f64 - naive_sum).abs() < 1e-3);
        assert!((dot(&x, &y) as f64 - naive_dot).abs() < 1e-2);
        assert_eq!(max(&x), x.iter().cloned().fold(f32::MIN, f32::max));
        assert_eq!(max(&x[..5]), x[..5].iter().cloned().fold(f32::MIN, f32::max));
    }
}
