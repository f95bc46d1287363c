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
        return unsafe { x86::f32_to_f16(src, dst) };
    }
    f32_to_f16_tail(src, dst)
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

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn f32_to_f16(src: &[f32], dst: &mut [u8]) -> bool {
        let n = src.len();
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let exp = _mm256_set1_epi32(0x7f80_0000);
        let (lo, hi) = (_mm256_set1_ps(-F16_MAX), _mm256_set1_ps(F16_MAX));
        let mut bad = _mm256_setzero_si256();
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
                i += 8;
            }
        }
        let tail_bad = super::f32_to_f16_tail(&src[i..], &mut dst[2 * i..]);
        _mm256_testz_si256(bad, bad) == 0 || tail_bad
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
