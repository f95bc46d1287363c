//! The codecs' conversion loops: f32 ⇄ 16-bit floats straight between f32
//! slices and little-endian wire bytes, and the streaming-store decoders
//! (fp16, fp32, int8) for destinations far larger than the cache.
//!
//! Why not `half`'s slice conversions: they convert 8 values per call of a
//! function that is not inlined into the caller, and only when the crate
//! was compiled for F16C; on the baseline build the profile of a 64M fp16
//! all-reduce showed them, with the separate clamp and NaN passes around
//! them, as the largest user-space cost. Here the conversion is one loop of
//! F16C instructions picked at run time (unaligned loads, so any wire
//! offset works), with the fp16 clamp and the non-finite check fused into
//! the same pass. bf16 is a shift and a rounding add, written so it
//! vectorises under [`multiversion!`].
//!
//! Results are bit-identical to `half`'s scalar conversions (round to
//! nearest even), which the tests use as the reference; the streaming
//! decoders write exactly what the plain ones do (tests/codec.rs, fuzz).

use super::codec::F16_MAX;
use super::projection::{SQUARES_RUN, fold_lanes, sum_squares_serial};
use crate::engine::cpu::simd::multiversion;
use half::f16;

#[cfg(target_arch = "x86_64")]
/// AVX2 and F16C (every CPU since 2013 has both or neither).
fn has_f16c() -> bool {
    use std::sync::OnceLock;
    static F16C: OnceLock<bool> = OnceLock::new();
    *F16C.get_or_init(|| std::env::var_os("DTRAIN_NO_SIMD").is_none() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"))
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

/// Decodes `dst.len()` fp16 values from `src` (2 bytes each, little-endian).
pub fn f16_to_f32(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len(), "two bytes per value");
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has AVX2 and F16C; lengths checked above.
        return unsafe { x86::f16_to_f32::<false>(src, dst) };
    }
    f16_tail(src, dst)
}

/// Like [`f16_to_f32`], writing with non-temporal stores where the CPU has
/// them: for a destination far larger than the cache whose old contents
/// are not needed, it saves reading every line before overwriting it.
pub fn f16_to_f32_streaming(src: &[u8], dst: &mut [f32]) {
    assert_eq!(src.len(), 2 * dst.len(), "two bytes per value");
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // Plain stores up to the first 32-byte boundary, then aligned streaming ones.
        let head = dst.as_ptr().align_offset(32).min(dst.len());
        f16_tail(&src[..2 * head], &mut dst[..head]);
        // SAFETY: the CPU has AVX2 and F16C; lengths checked above; the
        // rest of `dst` starts 32-byte aligned.
        return unsafe { x86::f16_to_f32::<true>(&src[2 * head..], &mut dst[head..]) };
    }
    f16_tail(src, dst)
}

/// `dst = src` (as [`f16_to_f32_streaming`], for fp32 on the wire).
pub fn copy_streaming(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "same length");
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        let head = dst.as_ptr().align_offset(32).min(dst.len());
        dst[..head].copy_from_slice(&src[..head]);
        // SAFETY: the CPU has AVX2; lengths checked; aligned as required.
        return unsafe { x86::copy_streaming(&src[head..], &mut dst[head..]) };
    }
    dst.copy_from_slice(src)
}

/// Decodes int8 values (one f32 scale per `block`) into `dst` with
/// streaming stores (as [`f16_to_f32_streaming`]).
pub fn int8_to_f32_streaming(scales: &[u8], values: &[u8], block: usize, dst: &mut [f32]) {
    assert!(values.len() == dst.len() && scales.len() == 4 * dst.len().div_ceil(block), "int8 layout");
    let scalar = |q: &[u8], scale: f32, out: &mut [f32]| out.iter_mut().zip(q).for_each(|(o, &q)| *o = q as i8 as f32 * scale);
    for ((sc, q), out) in scales.chunks_exact(4).zip(values.chunks(block)).zip(dst.chunks_mut(block)) {
        let scale = f32::from_le_bytes([sc[0], sc[1], sc[2], sc[3]]);
        #[cfg(target_arch = "x86_64")]
        if has_f16c() {
            let head = out.as_ptr().align_offset(32).min(out.len());
            scalar(&q[..head], scale, &mut out[..head]);
            // SAFETY: the CPU has AVX2; lengths match; aligned as required.
            unsafe { x86::int8_to_f32_nt(&q[head..], scale, &mut out[head..]) };
            continue;
        }
        scalar(q, scale, out);
    }
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has SSE (every x86-64 does).
        unsafe { std::arch::x86_64::_mm_sfence() };
    }
}

/// Encodes `src` as fp16 into `dst` (2 bytes each, little-endian),
/// saturating to ±65504 so nothing becomes inf. Returns whether any input
/// was NaN or inf (their encodings are meaningless then).
pub fn f32_to_f16(src: &[f32], dst: &mut [u8]) -> bool {
    assert_eq!(dst.len(), 2 * src.len(), "two bytes per value");
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has AVX2 and F16C; lengths checked above.
        return unsafe { x86::f32_to_f16::<false>(src, dst).0 };
    }
    f32_to_f16_tail(src, dst)
}

/// Σx² of the fp16 values in `src` as decoded, with exactly the bits of
/// `projection::sum_squares_serial` over the decoded values (its runs, its
/// 64 lanes, its pairwise sum): the audit's norm of an averaged chunk,
/// read from the payload while it is in cache, without storing anything.
pub fn f16_sum_squares(src: &[u8]) -> f64 {
    assert_eq!(src.len() % 2, 0, "two bytes per value");
    let run = 2 * SQUARES_RUN;
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has AVX2 and F16C.
        return src.chunks(run).map(|r| unsafe { x86::f16_run_squares::<false>(r, &mut []) }).sum();
    }
    let mut buf = [0f32; SQUARES_RUN];
    src.chunks(run)
        .map(|r| {
            let v = &mut buf[..r.len() / 2];
            f16_tail(r, v);
            sum_squares_serial(v)
        })
        .sum()
}

/// Σ decode(a)·y for fp16 bytes `a` and as many f32 values `y`, a run at
/// a time (the audit's products of parts and averages: converted in
/// registers, nothing stored).
pub fn f16_dot_f32(a: &[u8], y: &[f32]) -> f64 {
    assert_eq!(a.len(), 2 * y.len(), "two bytes per value");
    #[cfg(target_arch = "x86_64")]
    if has_f16c() && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2, FMA and F16C; the runs are as long.
        return a.chunks(2 * SQUARES_RUN).zip(y.chunks(SQUARES_RUN)).map(|(a, y)| unsafe { x86::f16_run_dot(a, y.as_ptr(), false) }).sum();
    }
    let mut buf = [0f32; SQUARES_RUN];
    a.chunks(2 * SQUARES_RUN)
        .zip(y.chunks(SQUARES_RUN))
        .map(|(a, y)| {
            let v = &mut buf[..y.len()];
            f16_tail(a, v);
            super::projection::dot_serial(v, y)
        })
        .sum()
}

/// Σ decode(a)·decode(b) for two runs of fp16 bytes of one length.
pub fn f16_dot_f16(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "as many values");
    #[cfg(target_arch = "x86_64")]
    if has_f16c() && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2, FMA and F16C; the runs are as long.
        return a
            .chunks(2 * SQUARES_RUN)
            .zip(b.chunks(2 * SQUARES_RUN))
            .map(|(a, b)| unsafe { x86::f16_run_dot(a, b.as_ptr() as *const f32, true) })
            .sum();
    }
    let (mut u, mut v) = ([0f32; SQUARES_RUN], [0f32; SQUARES_RUN]);
    a.chunks(2 * SQUARES_RUN)
        .zip(b.chunks(2 * SQUARES_RUN))
        .map(|(a, b)| {
            let (u, v) = (&mut u[..a.len() / 2], &mut v[..a.len() / 2]);
            f16_tail(a, u);
            f16_tail(b, v);
            super::projection::dot_serial(u, v)
        })
        .sum()
}

/// Like [`f16_to_f32`], and returns Σx² of the decoded values as
/// [`f16_sum_squares`] sums them (the same bits), from the registers the
/// conversion holds them in.
pub fn f16_to_f32_squares(src: &[u8], dst: &mut [f32]) -> f64 {
    assert_eq!(src.len(), 2 * dst.len(), "two bytes per value");
    src.chunks(2 * SQUARES_RUN)
        .zip(dst.chunks_mut(SQUARES_RUN))
        .map(|(s, d)| {
            #[cfg(target_arch = "x86_64")]
            if has_f16c() {
                // SAFETY: the CPU has AVX2 and F16C; lengths checked above.
                return unsafe { x86::f16_run_squares::<true>(s, d) };
            }
            f16_tail(s, d);
            sum_squares_serial(d)
        })
        .sum()
}

/// Like [`f32_to_f16`], and also returns Σc² of the clamped values c (what
/// the encoding holds, to fp16's rounding), summed in the same pass: the
/// audited all-reduce's norm of what a member sends, for free.
pub fn f32_to_f16_squares(src: &[f32], dst: &mut [u8]) -> (bool, f64) {
    assert_eq!(dst.len(), 2 * src.len(), "two bytes per value");
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: the CPU has AVX2 and F16C; lengths checked above.
        return unsafe { x86::f32_to_f16::<true>(src, dst) };
    }
    (f32_to_f16_tail(src, dst), clamped_squares(src))
}

/// Σc² (f64) of the values clamped to fp16's range.
fn clamped_squares(x: &[f32]) -> f64 {
    x.iter().map(|v| (v.clamp(-F16_MAX, F16_MAX) as f64).powi(2)).sum()
}

multiversion! {
    /// Decodes `dst.len()` bf16 values from `src`: the top half of an f32.
    pub fn bf16_to_f32(src: &[u8], dst: &mut [f32]) {
        assert_eq!(src.len(), 2 * dst.len(), "two bytes per value");
        dst.iter_mut().zip(src.chunks_exact(2)).for_each(|(d, b)| *d = f32::from_bits((le_u16(b) as u32) << 16));
    }
}

multiversion! {
    /// Encodes finite `src` as bf16 (round to nearest even), saturating at
    /// the largest finite bf16 instead of rounding up to inf.
    pub fn f32_to_bf16(src: &[f32], dst: &mut [u8]) {
        assert_eq!(dst.len(), 2 * src.len(), "two bytes per value");
        for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
            let x = v.to_bits();
            let r = (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16;
            let w = (r & 0x8000) | (r & 0x7fff).min(0x7f7f);
            d.copy_from_slice(&w.to_le_bytes());
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::F16_MAX;
    use std::arch::x86_64::*;

    /// `STREAM`: non-temporal stores; `dst` must then be 32-byte aligned.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f16_to_f32<const STREAM: bool>(src: &[u8], dst: &mut [f32]) {
        let n = dst.len();
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        // SAFETY (all pointer accesses): i + 16 ≤ n values, 2n bytes of src.
        unsafe {
            while i + 16 <= n {
                let a = _mm_loadu_si128(s.add(2 * i) as *const __m128i);
                let b = _mm_loadu_si128(s.add(2 * i + 16) as *const __m128i);
                if STREAM {
                    _mm256_stream_ps(d.add(i), _mm256_cvtph_ps(a));
                    _mm256_stream_ps(d.add(i + 8), _mm256_cvtph_ps(b));
                } else {
                    _mm256_storeu_ps(d.add(i), _mm256_cvtph_ps(a));
                    _mm256_storeu_ps(d.add(i + 8), _mm256_cvtph_ps(b));
                }
                i += 16;
            }
            if STREAM {
                // Streaming stores are weakly ordered: fence before anyone reads.
                _mm_sfence();
            }
        }
        super::f16_tail(&src[2 * i..], &mut dst[i..]);
    }

    /// Σx² of one run (at most `SQUARES_RUN` values) of fp16 bytes: value i
    /// in lane i mod 64 (eight vectors of eight), mul then add as the
    /// scalar lanes do, the remainder lane by lane, then `fold_lanes`.
    /// `STORE`: also writes the values into `dst` (as long as the run).
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f16_run_squares<const STORE: bool>(src: &[u8], dst: &mut [f32]) -> f64 {
        let n = src.len() / 2;
        assert!(!STORE || dst.len() == n, "a destination as long as the run");
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        // SAFETY (all pointer accesses): i + 64 ≤ n values, 2n bytes of
        // src, n values of dst when storing.
        unsafe {
            while i + 64 <= n {
                for (g, a) in acc.iter_mut().enumerate() {
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(s.add(2 * (i + 8 * g)) as *const __m128i));
                    if STORE {
                        _mm256_storeu_ps(d.add(i + 8 * g), x);
                    }
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(x, x));
                }
                i += 64;
            }
        }
        if STORE {
            super::f16_tail(&src[2 * i..], &mut dst[i..]);
        }
        let mut lanes = [0f32; 64];
        for (g, a) in acc.iter().enumerate() {
            // SAFETY: 8 floats into 8 floats of the array.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * g), *a) };
        }
        for (lane, b) in lanes.iter_mut().zip(src[2 * i..].chunks_exact(2)) {
            let v = half::f16::from_bits(super::le_u16(b)).to_f32();
            *lane += v * v;
        }
        super::fold_lanes(&mut lanes)
    }

    /// Σ decode(a)·y over one run (at most `SQUARES_RUN` values) of fp16
    /// bytes `a`, `y` pointing at as many values: f32 when `!Y_F16`, else
    /// fp16 bytes (cast). Eight FMA accumulators, the remainder scalar.
    /// Caller: `y` valid for `a.len() / 2` values of its kind.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_run_dot(a: &[u8], y: *const f32, y_f16: bool) -> f64 {
        let n = a.len() / 2;
        let s = a.as_ptr();
        let mut acc = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        // SAFETY (all pointer accesses): i + 64 ≤ n values of both.
        let load_y = |at: usize| unsafe {
            match y_f16 {
                true => _mm256_cvtph_ps(_mm_loadu_si128((y as *const u8).add(2 * at) as *const __m128i)),
                false => _mm256_loadu_ps(y.add(at)),
            }
        };
        unsafe {
            while i + 64 <= n {
                for (g, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_cvtph_ps(_mm_loadu_si128(s.add(2 * (i + 8 * g)) as *const __m128i));
                    *acc = _mm256_fmadd_ps(x, load_y(i + 8 * g), *acc);
                }
                i += 64;
            }
        }
        let mut lanes = [0f32; 64];
        for (g, a) in acc.iter().enumerate() {
            // SAFETY: 8 floats into 8 floats of the array.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * g), *a) };
        }
        let mut tail = 0f64;
        for (k, b) in a[2 * i..].chunks_exact(2).enumerate() {
            let x = half::f16::from_bits(super::le_u16(b)).to_f32();
            // SAFETY: value i + k < n of y.
            let v = unsafe {
                match y_f16 {
                    true => half::f16::from_bits(u16::from_le_bytes([*(y as *const u8).add(2 * (i + k)), *(y as *const u8).add(2 * (i + k) + 1)]))
                        .to_f32(),
                    false => *y.add(i + k),
                }
            };
            tail += x as f64 * v as f64;
        }
        super::fold_lanes(&mut lanes) + tail
    }

    /// `dst` must be 32-byte aligned.
    #[target_feature(enable = "avx2")]
    pub unsafe fn copy_streaming(src: &[f32], dst: &mut [f32]) {
        let n = dst.len();
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        // SAFETY (all pointer accesses): i + 16 ≤ n; d + i stays aligned.
        unsafe {
            while i + 16 <= n {
                _mm256_stream_ps(d.add(i), _mm256_loadu_ps(s.add(i)));
                _mm256_stream_ps(d.add(i + 8), _mm256_loadu_ps(s.add(i + 8)));
                i += 16;
            }
            _mm_sfence();
        }
        dst[i..].copy_from_slice(&src[i..]);
    }

    /// `dst` must be 32-byte aligned; the caller fences once after all blocks.
    #[target_feature(enable = "avx2")]
    pub unsafe fn int8_to_f32_nt(q: &[u8], scale: f32, dst: &mut [f32]) {
        let n = dst.len();
        let (s, d) = (q.as_ptr(), dst.as_mut_ptr());
        let k = _mm256_set1_ps(scale);
        let mut i = 0;
        // SAFETY (all pointer accesses): i + 8 ≤ n; d + i stays aligned.
        unsafe {
            while i + 8 <= n {
                let v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(s.add(i) as *const __m128i));
                _mm256_stream_ps(d.add(i), _mm256_mul_ps(_mm256_cvtepi32_ps(v), k));
                i += 8;
            }
        }
        dst[i..].iter_mut().zip(&q[i..]).for_each(|(o, &q)| *o = q as i8 as f32 * scale);
    }

    /// `SQUARES`: also Σc² of the clamped values, in f32 lanes flushed to
    /// f64 every 1024 values (so the f32 sums stay short).
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f32_to_f16<const SQUARES: bool>(src: &[f32], dst: &mut [u8]) -> (bool, f64) {
        let n = src.len();
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let exp = _mm256_set1_epi32(0x7f80_0000);
        let (lo, hi) = (_mm256_set1_ps(-F16_MAX), _mm256_set1_ps(F16_MAX));
        let mut bad = _mm256_setzero_si256();
        let (mut lanes, mut total) = (_mm256_setzero_ps(), 0f64);
        let flush = |lanes: __m256, total: &mut f64| {
            let mut l = [0f32; 8];
            // SAFETY: 8 floats into an 8-float array.
            unsafe { _mm256_storeu_ps(l.as_mut_ptr(), lanes) };
            *total += l.iter().map(|&v| v as f64).sum::<f64>();
        };
        let mut i = 0;
        // SAFETY (all pointer accesses): i + 8 ≤ n values, 2n bytes of dst.
        unsafe {
            while i + 8 <= n {
                let x = _mm256_loadu_ps(s.add(i));
                // NaN or inf: every exponent bit set.
                let e = _mm256_and_si256(_mm256_castps_si256(x), exp);
                bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(e, exp));
                let c = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
                _mm_storeu_si128(d.add(2 * i) as *mut __m128i, _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(c));
                if SQUARES {
                    lanes = _mm256_add_ps(lanes, _mm256_mul_ps(c, c));
                    if i % 1024 == 1016 {
                        flush(lanes, &mut total);
                        lanes = _mm256_setzero_ps();
                    }
                }
                i += 8;
            }
        }
        let tail_bad = super::f32_to_f16_tail(&src[i..], &mut dst[2 * i..]);
        if SQUARES {
            flush(lanes, &mut total);
            total += super::clamped_squares(&src[i..]);
        }
        (_mm256_testz_si256(bad, bad) == 0 || tail_bad, total)
    }
}

/// The scalar conversions: the fallback, and the vector loops' tails.
fn f16_tail(src: &[u8], dst: &mut [f32]) {
    dst.iter_mut().zip(src.chunks_exact(2)).for_each(|(d, b)| *d = f16::from_bits(le_u16(b)).to_f32());
}

fn f32_to_f16_tail(src: &[f32], dst: &mut [u8]) -> bool {
    let mut bad = false;
    for (d, &v) in dst.chunks_exact_mut(2).zip(src) {
        bad |= !v.is_finite();
        d.copy_from_slice(&f16::from_f32(v.clamp(-F16_MAX, F16_MAX)).to_bits().to_le_bytes());
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Every finite fp16 decodes as `half` decodes it.
    #[test]
    fn f16_decoding_matches_half_for_every_finite_value() {
        let words: Vec<u16> = (0..=u16::MAX).filter(|w| w & 0x7c00 != 0x7c00).collect();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        // Odd offsets too: wire chunks need not be aligned.
        for skip in [0, 1, 7] {
            let mut out = vec![0f32; words.len() - skip];
            f16_to_f32(&bytes[2 * skip..], &mut out);
            for (w, o) in words[skip..].iter().zip(&out) {
                assert_eq!(o.to_bits(), f16::from_bits(*w).to_f32().to_bits(), "fp16 {w:#06x}");
            }
        }
    }

    /// Encoding matches `half`'s round-to-nearest-even of the clamped
    /// value, ties and subnormals included, and flags non-finite input.
    #[test]
    fn f16_encoding_matches_half_and_flags_non_finite() {
        let mut x: Vec<f32> = (0..200_003u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761) & 0xc7ff_ffff)).collect();
        // Exact ties between two fp16 values, around 1 and in the subnormals.
        x.extend((0..64).map(|k| 1.0 + (2 * k + 1) as f32 * 2f32.powi(-11)));
        x.extend((0..64).map(|k| (2 * k + 1) as f32 * 2f32.powi(-25)));
        x.extend([65504.0, 65519.0, 65520.0, 1e30, -1e30, 0.0, -0.0]);
        assert!(x.iter().all(|v| v.is_finite()));
        let mut bytes = vec![0u8; 2 * x.len()];
        assert!(!f32_to_f16(&x, &mut bytes));
        for (v, b) in x.iter().zip(bytes.chunks_exact(2)) {
            let want = f16::from_f32(v.clamp(-F16_MAX, F16_MAX)).to_bits();
            assert_eq!(le_u16(b), want, "{v:e}");
        }
        for at in [0, 5, 8, 17, 1000, x.len() - 1] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut y = x.clone();
                y[at] = bad;
                assert!(f32_to_f16(&y, &mut bytes), "{bad} at {at} not flagged");
            }
        }
    }

    #[test]
    fn f16_squares_have_the_bits_of_the_decoded_sum() {
        // Lengths around runs and blocks, values across fp16's range.
        for n in [0usize, 1, 63, 64, 65, 1023, 1024, 1025, 5000] {
            let words: Vec<u16> = (0..n as u32).map(|i| (i.wrapping_mul(40_503) % 0x7c00) as u16 | if i % 3 == 0 { 0x8000 } else { 0 }).collect();
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let mut dec = vec![0f32; n];
            f16_to_f32(&bytes, &mut dec);
            let want = sum_squares_serial(&dec).to_bits();
            assert_eq!(f16_sum_squares(&bytes).to_bits(), want, "{n} values");
            let mut fused = vec![7f32; n];
            assert_eq!(f16_to_f32_squares(&bytes, &mut fused).to_bits(), want, "{n} values, decoding");
            assert_eq!(fused, dec, "{n} values: the decoded values too");
        }
    }

    #[test]
    fn f16_encoding_measures_the_clamped_squares() {
        let mut x: Vec<f32> = (0..5_003).map(|i| ((i * 7919) % 2001) as f32 / 100.0 - 10.0).collect();
        x.extend([7e4, -1e6, 3.0]);
        let (mut a, mut b) = (vec![0u8; 2 * x.len()], vec![0u8; 2 * x.len()]);
        let (bad, sq) = f32_to_f16_squares(&x, &mut a);
        assert!(!f32_to_f16(&x, &mut b) && !bad);
        assert_eq!(a, b, "the same encoding");
        let want = clamped_squares(&x);
        assert!((sq - want).abs() <= 1e-6 * want, "{sq} vs {want}");
    }

    #[test]
    fn bf16_matches_half_and_saturates() {
        let mut x: Vec<f32> = (0..100_003u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))).filter(|v| v.is_finite()).collect();
        x.extend([f32::MAX, -f32::MAX, 3.3961e38, 1.0 + 2f32.powi(-8), 1.0 + 3.0 * 2f32.powi(-8)]);
        let mut bytes = vec![0u8; 2 * x.len()];
        f32_to_bf16(&x, &mut bytes);
        let mut back = vec![0f32; x.len()];
        bf16_to_f32(&bytes, &mut back);
        for ((v, b), y) in x.iter().zip(bytes.chunks_exact(2)).zip(&back) {
            let want = bf16::from_f32(*v);
            if want.is_finite() {
                assert_eq!(le_u16(b), want.to_bits(), "{v:e}");
            } else {
                assert_eq!(y.abs(), bf16::MAX.to_f32(), "{v:e} saturates");
            }
            assert_eq!(y.to_bits(), bf16::from_bits(le_u16(b)).to_f32().to_bits());
        }
    }
}
