//! Wire codecs for gradient chunks: what a peer sends instead of its f32
//! values, and the error each one may introduce (tested in `tests`).
//!
//! | codec | bytes/value | error bound per value |
//! |---|---|---|
//! | `F32` | 4 | exact |
//! | `F16` | 2 | `|x| ≤ 65504`: relative 2⁻¹¹ for `|x| ≥ 2⁻¹⁴`, absolute 2⁻²⁵ below; larger values saturate to ±65504 (never inf) |
//! | `Bf16` | 2 | relative 2⁻⁸ (round to nearest even), for normal values |
//! | `Int8 { block }` | 1 + 4/block | absolute `max|x| / 254` over the value's block (scale per block, stored as f32) |
//!
//! Inputs must be finite: the all-reduce rejects contributions with NaN or
//! inf before encoding. Decoding first checks the whole chunk — its length,
//! that no value is NaN or inf, that every `Int8` scale is finite and
//! non-negative — and only then writes anything, so bytes from a peer can
//! neither produce non-finite values nor leave a half-added chunk behind.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// Largest finite f16.
pub const F16_MAX: f32 = 65504.0;
/// Values converted per step through a stack buffer.
const STEP: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    F32,
    F16,
    Bf16,
    /// 8-bit integers, one f32 scale per `block` values (the block's max |x| / 127).
    Int8 {
        block: usize,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("{got} bytes, expected {want} for {n} values")]
    Length { got: usize, want: usize, n: usize },
    #[error("block {0} has an invalid scale")]
    Scale(usize),
    #[error("value {0} is not finite")]
    NonFinite(usize),
}

impl Codec {
    /// Bytes that `n` values take on the wire.
    pub fn encoded_len(&self, n: usize) -> usize {
        match *self {
            Codec::F32 => 4 * n,
            Codec::F16 | Codec::Bf16 => 2 * n,
            Codec::Int8 { block } => n + 4 * n.div_ceil(block.max(1)),
        }
    }

    /// Encodes `src` into `dst` (exactly `encoded_len(src.len())` bytes).
    pub fn encode(&self, src: &[f32], dst: &mut [u8]) {
        assert_eq!(dst.len(), self.encoded_len(src.len()), "destination sized by encoded_len");
        match *self {
            Codec::F32 => dst.chunks_exact_mut(4).zip(src).for_each(|(d, v)| d.copy_from_slice(&v.to_le_bytes())),
            Codec::F16 => {
                let mut clamped = [0f32; STEP];
                let mut half = [f16::ZERO; STEP];
                for (s, d) in src.chunks(STEP).zip(dst.chunks_mut(2 * STEP)) {
                    let n = s.len();
                    for (c, &v) in clamped[..n].iter_mut().zip(s) {
                        *c = v.clamp(-F16_MAX, F16_MAX);
                    }
                    half[..n].convert_from_f32_slice(&clamped[..n]);
                    d.chunks_exact_mut(2).zip(&half[..n]).for_each(|(d, h)| d.copy_from_slice(&h.to_le_bytes()));
                }
            }
            Codec::Bf16 => {
                let mut half = [bf16::ZERO; STEP];
                for (s, d) in src.chunks(STEP).zip(dst.chunks_mut(2 * STEP)) {
                    let n = s.len();
                    half[..n].convert_from_f32_slice(s);
                    d.chunks_exact_mut(2).zip(&half[..n]).for_each(|(d, h)| d.copy_from_slice(&h.to_le_bytes()));
                }
            }
            Codec::Int8 { block } => {
                let block = block.max(1);
                let (scales, values) = dst.split_at_mut(4 * src.len().div_ceil(block));
                for ((s, sc), q) in src.chunks(block).zip(scales.chunks_exact_mut(4)).zip(values.chunks_mut(block)) {
                    let max = s.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = max / 127.0;
                    sc.copy_from_slice(&scale.to_le_bytes());
                    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    for (q, &v) in q.iter_mut().zip(s) {
                        *q = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8;
                    }
                }
            }
        }
    }

    /// Checks a chunk of `n` encoded values without decoding it.
    fn validate(&self, src: &[u8], n: usize) -> Result<(), CodecError> {
        let want = self.encoded_len(n);
        if src.len() != want {
            return Err(CodecError::Length { got: src.len(), want, n });
        }
        // A value is NaN or inf exactly when its exponent bits are all ones.
        let bad = match *self {
            Codec::F32 => src.chunks_exact(4).position(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) >> 23 & 0xff == 0xff),
            Codec::F16 => src.chunks_exact(2).position(|b| u16::from_le_bytes([b[0], b[1]]) >> 10 & 0x1f == 0x1f),
            Codec::Bf16 => src.chunks_exact(2).position(|b| u16::from_le_bytes([b[0], b[1]]) >> 7 & 0xff == 0xff),
            Codec::Int8 { block } => {
                let scales = &src[..4 * n.div_ceil(block.max(1))];
                if let Some(b) =
                    scales.chunks_exact(4).map(|s| f32::from_le_bytes([s[0], s[1], s[2], s[3]])).position(|s| !(s.is_finite() && s >= 0.0))
                {
                    return Err(CodecError::Scale(b));
                }
                None
            }
        };
        bad.map_or(Ok(()), |i| Err(CodecError::NonFinite(i)))
    }

    /// Calls `f(i, value)` for every decoded value, in order, once the whole
    /// chunk has been validated.
    fn decode_each(&self, src: &[u8], n: usize, mut f: impl FnMut(usize, f32)) -> Result<(), CodecError> {
        self.validate(src, n)?;
        match *self {
            Codec::F32 => src.chunks_exact(4).enumerate().for_each(|(i, b)| f(i, f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
            Codec::F16 | Codec::Bf16 => {
                let mut out = [0f32; STEP];
                for (k, bytes) in src.chunks(2 * STEP).enumerate() {
                    let n = bytes.len() / 2;
                    if *self == Codec::F16 {
                        let mut h = [f16::ZERO; STEP];
                        h.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(h, b)| *h = f16::from_le_bytes([b[0], b[1]]));
                        h[..n].convert_to_f32_slice(&mut out[..n]);
                    } else {
                        let mut h = [bf16::ZERO; STEP];
                        h.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(h, b)| *h = bf16::from_le_bytes([b[0], b[1]]));
                        h[..n].convert_to_f32_slice(&mut out[..n]);
                    }
                    out[..n].iter().enumerate().for_each(|(i, &v)| f(k * STEP + i, v));
                }
            }
            Codec::Int8 { block } => {
                let block = block.max(1);
                let (scales, values) = src.split_at(4 * n.div_ceil(block));
                for (b, (sc, q)) in scales.chunks_exact(4).zip(values.chunks(block)).enumerate() {
                    let scale = f32::from_le_bytes([sc[0], sc[1], sc[2], sc[3]]);
                    q.iter().enumerate().for_each(|(i, &q)| f(b * block + i, q as i8 as f32 * scale));
                }
            }
        }
        Ok(())
    }

    /// Decodes `src` into `dst` (`dst.len()` values).
    pub fn decode(&self, src: &[u8], dst: &mut [f32]) -> Result<(), CodecError> {
        let n = dst.len();
        self.decode_each(src, n, |i, v| dst[i] = v)
    }

    /// `acc += weight · decode(src)`: how an owner accumulates a sender's chunk.
    pub fn decode_add(&self, src: &[u8], weight: f32, acc: &mut [f32]) -> Result<(), CodecError> {
        let n = acc.len();
        self.decode_each(src, n, |i, v| acc[i] += weight * v)
    }
}
