//! Wire codecs for gradient chunks: what a peer sends instead of its f32
//! values, and the error each one may introduce (tested in `tests`).
//!
//! | codec | bytes/value | error bound per value |
//! |---|---|---|
//! | `F32` | 4 | exact |
//! | `F16` | 2 | `|x| ≤ 65504`: relative 2⁻¹¹ for `|x| ≥ 2⁻¹⁴`, absolute 2⁻²⁵ below; larger values saturate to ±65504 (never inf) |
//! | `Bf16` | 2 | relative 2⁻⁸ (round to nearest even), for normal values |
//! | `Int8 { block }` | 1 + 4/block | absolute `max|x| / 254` over the value's block (scale per block, stored as f32) |
//! | `TopK { block, k, wide: false }` | (4 + 3k)/block | all but the k largest |x| of each block dropped; the kept ones as `Int8` (see `topk`) |
//! | `TopK { block, k, wide: true }` | 4k/block | all but the k largest dropped; the kept ones as `F16` |
//!
//! Inputs must be finite: the all-reduce rejects contributions with NaN or
//! inf before encoding. Decoding first checks the whole chunk — its length,
//! that no value is NaN or inf, that every `Int8` scale is finite and
//! non-negative and small enough that no decoded value overflows — and only
//! then writes anything, so bytes from a peer can
//! neither produce non-finite values nor leave a half-added chunk behind.

use super::convert;
use super::projection::{K, Proj, Projector, dot_serial, sum_squares_serial};
use super::topk;
use crate::engine::cpu::simd::multiversion;
use std::ops::Range;

/// Largest finite f16.
pub const F16_MAX: f32 = 65504.0;
/// Largest valid int8 scale: 127 × it is still finite.
const INT8_MAX_SCALE: f32 = f32::MAX / 127.0;
/// Values converted per step through a stack buffer.
/// (As long as a run of `projection::sum_squares_serial`, so the audit's sums of
/// squares come out the same whichever path decoded the values.)
const STEP: usize = super::projection::SQUARES_RUN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    F32,
    F16,
    Bf16,
    /// 8-bit integers, one f32 scale per `block` values (the block's max |x| / 127).
    Int8 {
        block: usize,
    },
    /// Sparse: the `k` largest |x| of every `block` values, as (u16 index,
    /// value); values in 8 bits with a scale per block, or in fp16
    /// (`wide`, what owners average into). See `topk`.
    TopK {
        block: usize,
        k: usize,
        wide: bool,
    },
}

/// Where an audited round adds up Σx² of the values it decodes
/// (`decoded`) and of the base values it folds in with them (`base`: the
/// owner's own, when `with_base`), a run at a time while they are in
/// cache. (Projections are per chunk, from the sampled blocks alone:
/// per run they cost more than the run's sum of squares.)
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Squares {
    pub decoded: f64,
    pub base: f64,
    pub with_base: bool,
}

impl Default for Squares {
    fn default() -> Squares {
        Squares { decoded: 0.0, base: 0.0, with_base: true }
    }
}

impl Squares {
    /// Where the decoded values' and (when measured) the base's sums go.
    fn split(sq: Option<&mut Squares>) -> (Option<&mut f64>, Option<&mut f64>) {
        match sq {
            Some(Squares { decoded, base, with_base }) => (Some(decoded), with_base.then_some(base)),
            None => (None, None),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("{got} bytes, expected {want} for {n} values")]
    Length { got: usize, want: usize, n: usize },
    #[error("block {0} has an invalid scale")]
    Scale(usize),
    #[error("value {0} is not finite")]
    NonFinite(usize),
    #[error("index {0} of a sparse block is out of order or outside it")]
    Index(usize),
}

impl Codec {
    /// Bytes that `n` values take on the wire.
    pub fn encoded_len(&self, n: usize) -> usize {
        match *self {
            Codec::F32 => 4 * n,
            Codec::F16 | Codec::Bf16 => 2 * n,
            Codec::Int8 { block } => n + 4 * n.div_ceil(block.max(1)),
            Codec::TopK { .. } => self.sparse().expect("sparse").encoded_len(n),
        }
    }

    /// The sparse codec's shape (`None` for the dense ones).
    fn sparse(&self) -> Option<topk::Shape> {
        match *self {
            Codec::TopK { block, k, wide } => Some(topk::Shape { block, k, wide }),
            _ => None,
        }
    }

    /// What an owner encodes the average of `senders` contributions in:
    /// the dense codecs themselves; for top-k the fp16 union of their
    /// parts (at most `senders`·k values per block).
    pub fn for_mean(&self, senders: usize) -> Codec {
        match *self {
            Codec::TopK { block, k, .. } => Codec::TopK { block, k: (k * senders.max(1)).min(block), wide: true },
            c => c,
        }
    }

    /// Elements every span and chunk boundary must be a multiple of, so
    /// that every encoder cuts the same blocks of the flat vector.
    pub fn alignment(&self) -> usize {
        match *self {
            Codec::TopK { block, .. } => block.clamp(1, topk::MAX_BLOCK),
            _ => 1,
        }
    }

    /// Replaces `x` by what its encoding decodes to (blocks cut from its
    /// start): a miner's contribution after error feedback, an owner's own
    /// part. Returns whether every value was finite (`x` is untouched
    /// otherwise).
    pub fn roundtrip(&self, x: &mut [f32]) -> bool {
        let mut enc = vec![0u8; self.encoded_len(x.len())];
        if self.encode_checked(x, &mut enc).is_some() {
            return false;
        }
        self.decode(&enc, x).expect("own encoding decodes");
        true
    }

    /// Encodes `src` into `dst` (exactly `encoded_len(src.len())` bytes).
    pub fn encode(&self, src: &[f32], dst: &mut [u8]) {
        assert_eq!(dst.len(), self.encoded_len(src.len()), "destination sized by encoded_len");
        match *self {
            Codec::F32 => match words_mut::<f32>(dst) {
                Some(d) => d.copy_from_slice(src),
                None => dst.chunks_exact_mut(4).zip(src).for_each(|(d, v)| d.copy_from_slice(&v.to_le_bytes())),
            },
            Codec::F16 => {
                convert::f32_to_f16(src, dst);
            }
            Codec::Bf16 => convert::f32_to_bf16(src, dst),
            Codec::Int8 { block } => {
                int8_encode(src, dst, block.max(1));
            }
            Codec::TopK { .. } => {
                self.sparse().expect("sparse").encode(src, dst);
            }
        }
    }

    /// Like `encode`, and returns the index of the first NaN or inf in
    /// `src` (checked in the same pass where the codec allows, while `src`
    /// is in cache otherwise).
    pub fn encode_checked(&self, src: &[f32], dst: &mut [u8]) -> Option<usize> {
        assert_eq!(dst.len(), self.encoded_len(src.len()), "destination sized by encoded_len");
        let bad = match *self {
            Codec::F16 => convert::f32_to_f16(src, dst),
            Codec::Int8 { block } => int8_encode(src, dst, block.max(1)),
            Codec::TopK { .. } => self.sparse().expect("sparse").encode(src, dst),
            _ => {
                self.encode(src, dst);
                return first_nonfinite(src);
            }
        };
        if bad { first_nonfinite(src) } else { None }
    }

    /// Like `encode_checked`, and also returns Σx² of what the encoding
    /// holds (within the codec's error: fp16 measures the clamped input in
    /// the same pass; the others decode what they wrote, in cache).
    pub fn encode_checked_squares(&self, src: &[f32], dst: &mut [u8]) -> (Option<usize>, f64) {
        if *self == Codec::F16 {
            assert_eq!(dst.len(), self.encoded_len(src.len()), "destination sized by encoded_len");
            let (bad, sq) = convert::f32_to_f16_squares(src, dst);
            return (if bad { first_nonfinite(src) } else { None }, sq);
        }
        let bad = self.encode_checked(src, dst);
        (bad, if bad.is_none() { self.sum_squares_decoded(dst, src.len()) } else { 0.0 })
    }

    /// Checks a chunk of `n` encoded values without decoding it: the length,
    /// every value finite, every int8 scale valid.
    pub fn validate(&self, src: &[u8], n: usize) -> Result<(), CodecError> {
        if let Some(s) = self.sparse() {
            return s.validate(src, n);
        }
        let want = self.encoded_len(n);
        if src.len() != want {
            return Err(CodecError::Length { got: src.len(), want, n });
        }
        // A value is NaN or inf exactly when its exponent bits are all ones.
        let bad = match *self {
            Codec::F32 => first_all_ones_u32(src, 0x7f80_0000),
            Codec::F16 => first_all_ones_u16(src, 0x7c00),
            Codec::Bf16 => first_all_ones_u16(src, 0x7f80),
            Codec::Int8 { block } => {
                let scales = &src[..4 * n.div_ceil(block.max(1))];
                if let Some(b) = scales
                    .chunks_exact(4)
                    .map(|s| f32::from_le_bytes([s[0], s[1], s[2], s[3]]))
                    .position(|s| !(s.is_finite() && (0.0..=INT8_MAX_SCALE).contains(&s)))
                {
                    return Err(CodecError::Scale(b));
                }
                None
            }
            Codec::TopK { .. } => unreachable!("validated above"),
        };
        bad.map_or(Ok(()), |i| Err(CodecError::NonFinite(i)))
    }

    /// Calls `f(offset, values)` for consecutive decoded runs of values, in
    /// order, once the whole chunk has been validated.
    /// With `squares`, adds Σx² of the decoded values to it (see
    /// `decode_runs_valid`).
    fn decode_runs(&self, src: &[u8], n: usize, squares: Option<&mut f64>, f: impl FnMut(usize, &[f32])) -> Result<(), CodecError> {
        self.validate(src, n)?;
        self.decode_runs_valid(src, n, squares, f);
        Ok(())
    }

    /// The projections of `decode(src)` (`n` values, the first being
    /// element `offset` of the vector) and their scale (Σx² over the
    /// sampled elements), decoding only the sampled blocks. `src` must be a
    /// chunk that passed validation already (every accepted one has); a
    /// wrong length gives zeros, never a panic.
    pub fn project_decoded(&self, src: &[u8], n: usize, p: &Projector, offset: usize) -> (Proj, f64) {
        let (mut proj, mut sq) = ([0f64; K], 0f64);
        if src.len() == self.encoded_len(n) {
            let mut buf = [0f32; 64];
            for r in p.sampled_runs(offset, n) {
                let out = &mut buf[..r.len()];
                self.decode_range_valid(src, n, r.clone(), out);
                let (q, s) = p.project_run(out, offset + r.start);
                for (a, q) in proj.iter_mut().zip(q) {
                    *a += q as f64;
                }
                sq += s as f64;
            }
        }
        (proj, sq)
    }

    /// Σx² of `decode(src)` (`n` values of a validated chunk), in runs
    /// whose sums do not depend on where anything lies in memory.
    pub fn sum_squares_decoded(&self, src: &[u8], n: usize) -> f64 {
        let mut sq = 0f64;
        if *self == Codec::F16 && src.len() == self.encoded_len(n) {
            return convert::f16_sum_squares(src);
        }
        if src.len() == self.encoded_len(n) {
            self.decode_runs_valid(src, n, Some(&mut sq), |_, _| {});
        }
        sq
    }

    /// Decodes values `r` of a validated chunk of `n` into `out`.
    fn decode_range_valid(&self, src: &[u8], n: usize, r: Range<usize>, out: &mut [f32]) {
        match *self {
            Codec::F32 => {
                out.iter_mut().zip(src[4 * r.start..4 * r.end].chunks_exact(4)).for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            Codec::F16 => convert::f16_to_f32(&src[2 * r.start..2 * r.end], out),
            Codec::Bf16 => convert::bf16_to_f32(&src[2 * r.start..2 * r.end], out),
            Codec::Int8 { block } => {
                let block = block.max(1);
                let (scales, values) = src.split_at(4 * n.div_ceil(block));
                for (o, i) in out.iter_mut().zip(r) {
                    let sc = &scales[4 * (i / block)..4 * (i / block) + 4];
                    *o = values[i] as i8 as f32 * f32::from_le_bytes([sc[0], sc[1], sc[2], sc[3]]);
                }
            }
            Codec::TopK { .. } => self.sparse().expect("sparse").decode_range(src, n, r, out),
        }
    }

    /// Σ decode(src)·x over a validated chunk of `x.len()` values (a wrong
    /// length gives 0, never a panic): a part against an average, without
    /// writing the decoded values anywhere.
    pub fn dot_decoded(&self, src: &[u8], x: &[f32]) -> f64 {
        let mut dot = 0f64;
        if src.len() == self.encoded_len(x.len()) {
            if *self == Codec::F16 {
                return convert::f16_dot_f32(src, x);
            }
            self.decode_runs_valid(src, x.len(), None, |i, v| dot += dot_serial(&x[i..i + v.len()], v));
        }
        dot
    }

    /// Σ decode(src)·other.decode(other_src) over two validated encodings
    /// of `n` values each, decoded a run at a time and never stored: a
    /// member's part as it sent it (2 bytes a value in fp16, against 4 for
    /// its f32 values) against an average while the payload is in cache.
    pub fn dot_pair(&self, src: &[u8], other: Codec, other_src: &[u8], n: usize) -> f64 {
        let (mut dot, mut buf) = (0f64, [0f32; STEP]);
        if src.len() == self.encoded_len(n) && other_src.len() == other.encoded_len(n) {
            if (*self, other) == (Codec::F16, Codec::F16) {
                return convert::f16_dot_f16(src, other_src);
            }
            // (fp32 comes as one run of everything: cut to the buffer.)
            self.decode_runs_valid(src, n, None, |i, v| {
                for (k, v) in v.chunks(STEP).enumerate() {
                    let (at, b) = (i + k * STEP, &mut buf[..v.len()]);
                    other.decode_range_valid(other_src, n, at..at + v.len(), b);
                    dot += dot_serial(b, v);
                }
            });
        }
        dot
    }

    /// Calls `f` on the decoded runs; with `squares`, adds their Σx² to it,
    /// a run at a time as `projection::sum_squares_serial` sums (fp16: in
    /// the conversion's registers, the same bits).
    fn decode_runs_valid(&self, src: &[u8], n: usize, mut squares: Option<&mut f64>, mut f: impl FnMut(usize, &[f32])) {
        let mut out = [0f32; STEP];
        let mut measure = |v: &[f32]| {
            if let Some(s) = squares.as_deref_mut() {
                *s += sum_squares_serial(v);
            }
        };
        match *self {
            Codec::F32 => match words::<f32>(src) {
                Some(v) => {
                    measure(v);
                    f(0, v)
                }
                None => {
                    for (k, b) in src.chunks(4 * STEP).enumerate() {
                        let m = b.len() / 4;
                        out[..m].iter_mut().zip(b.chunks_exact(4)).for_each(|(o, b)| *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                        measure(&out[..m]);
                        f(k * STEP, &out[..m]);
                    }
                }
            },
            Codec::F16 => {
                for (k, b) in src.chunks(2 * STEP).enumerate() {
                    let out = &mut out[..b.len() / 2];
                    match squares.as_deref_mut() {
                        Some(s) => *s += convert::f16_to_f32_squares(b, out),
                        None => convert::f16_to_f32(b, out),
                    }
                    f(k * STEP, out);
                }
            }
            Codec::Bf16 => {
                for (k, b) in src.chunks(2 * STEP).enumerate() {
                    let out = &mut out[..b.len() / 2];
                    convert::bf16_to_f32(b, out);
                    measure(out);
                    f(k * STEP, out);
                }
            }
            Codec::Int8 { block } => {
                let block = block.max(1);
                let (scales, values) = src.split_at(4 * n.div_ceil(block));
                for (b, (sc, q)) in scales.chunks_exact(4).zip(values.chunks(block)).enumerate() {
                    let scale = f32::from_le_bytes([sc[0], sc[1], sc[2], sc[3]]);
                    for (run, q) in q.chunks(STEP).enumerate() {
                        int8_decode(q, scale, &mut out[..q.len()]);
                        measure(&out[..q.len()]);
                        f(b * block + run * STEP, &out[..q.len()]);
                    }
                }
            }
            Codec::TopK { .. } => self.sparse().expect("sparse").decode_runs(src, n, STEP, &mut out, |i, v| {
                measure(v);
                f(i, v)
            }),
        }
    }

    /// Decodes `src` into `dst` (`dst.len()` values); on error `dst` is untouched.
    pub fn decode(&self, src: &[u8], dst: &mut [f32]) -> Result<(), CodecError> {
        self.decode_into(src, dst, false)
    }

    /// Like `decode`; `streaming` writes past the cache where the codec can
    /// (for a destination far larger than the cache whose old values are
    /// not needed: the all-gather's copies of other members' spans).
    pub fn decode_into(&self, src: &[u8], dst: &mut [f32], streaming: bool) -> Result<(), CodecError> {
        let n = dst.len();
        // Straight into place where possible, without the bounce through a
        // stack buffer.
        match (self, words::<f32>(src)) {
            (Codec::F16, _) => {
                self.validate(src, n)?;
                if streaming {
                    convert::f16_to_f32_streaming(src, dst);
                } else {
                    convert::f16_to_f32(src, dst);
                }
                return Ok(());
            }
            (Codec::Bf16, _) => {
                self.validate(src, n)?;
                convert::bf16_to_f32(src, dst);
                return Ok(());
            }
            (Codec::F32, Some(values)) => {
                self.validate(src, n)?;
                if streaming {
                    convert::copy_streaming(values, dst);
                } else {
                    dst.copy_from_slice(values);
                }
                return Ok(());
            }
            (Codec::Int8 { block }, _) => {
                self.validate(src, n)?;
                let block = (*block).max(1);
                let (scales, values) = src.split_at(4 * n.div_ceil(block));
                if streaming {
                    convert::int8_to_f32_streaming(scales, values, block, dst);
                    return Ok(());
                }
                for ((sc, q), out) in scales.chunks_exact(4).zip(values.chunks(block)).zip(dst.chunks_mut(block)) {
                    int8_decode(q, f32::from_le_bytes([sc[0], sc[1], sc[2], sc[3]]), out);
                }
                return Ok(());
            }
            (Codec::TopK { .. }, _) => {
                let s = self.sparse().expect("sparse");
                s.validate(src, n)?;
                s.decode(src, dst);
                return Ok(());
            }
            _ => {}
        }
        self.decode_runs(src, n, None, |i, v| dst[i..i + v.len()].copy_from_slice(v))
    }

    /// Like `decode_into`, and returns Σx² of the decoded values, summed as
    /// `sum_squares_decoded` sums them (the same bits, wherever `dst` lies):
    /// read from `src` again while it is in cache (for fp16 without storing
    /// anything, a fraction of the decode's cost).
    pub fn decode_into_squares(&self, src: &[u8], dst: &mut [f32], streaming: bool) -> Result<f64, CodecError> {
        self.decode_into(src, dst, streaming)?;
        Ok(self.sum_squares_decoded(src, dst.len()))
    }

    /// Like `decode_into` (never streaming), and returns Σ decoded·old over
    /// the values it replaces: a member's part against the average that
    /// replaces it, in the one pass the decode makes anyway (the old
    /// values are read by the store's cache fill regardless).
    pub fn decode_into_dot(&self, src: &[u8], dst: &mut [f32]) -> Result<f64, CodecError> {
        if *self == Codec::F16 {
            self.validate(src, dst.len())?;
            let dot = convert::f16_dot_f32(src, dst);
            convert::f16_to_f32(src, dst);
            return Ok(dot);
        }
        let mut dot = 0f64;
        self.decode_runs(src, dst.len(), None, |i, v| {
            let old = &mut dst[i..i + v.len()];
            dot += dot_serial(old, v);
            old.copy_from_slice(v);
        })?;
        Ok(dot)
    }

    /// `acc = weight · decode(src)`: a chunk's first contribution; on
    /// error `acc` is untouched.
    pub fn decode_scaled(&self, src: &[u8], weight: f32, acc: &mut [f32], sq: Option<&mut Squares>) -> Result<(), CodecError> {
        let n = acc.len();
        self.decode_runs(src, n, sq.map(|s| &mut s.decoded), |i, v| scale_into(&mut acc[i..i + v.len()], weight, v))
    }

    /// `acc = base_weight · base + weight · decode(src)`: a chunk's first
    /// peer contribution folded with the owner's own values in one pass.
    pub fn decode_blend(
        &self,
        src: &[u8],
        weight: f32,
        base_weight: f32,
        base: &[f32],
        acc: &mut [f32],
        sq: Option<&mut Squares>,
    ) -> Result<(), CodecError> {
        let n = acc.len();
        assert_eq!(base.len(), n, "base covers the chunk");
        let (decoded, mut base_sq) = Squares::split(sq);
        self.decode_runs(src, n, decoded, |i, v| {
            let (base, acc) = (&base[i..i + v.len()], &mut acc[i..i + v.len()]);
            blend_into(acc, base_weight, base, weight, v);
            if let Some(b) = base_sq.as_deref_mut() {
                *b += sum_squares_serial(base);
            }
        })
    }

    /// `out = (base_weight · base + weight · decode(src)) · inv`: a chunk's
    /// mean computed with its last contribution (`base` empty when
    /// `base_weight` is 0); on error `out` is untouched.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_mean(
        &self,
        src: &[u8],
        weight: f32,
        base_weight: f32,
        base: &[f32],
        inv: f32,
        out: &mut [f32],
        sq: Option<&mut Squares>,
    ) -> Result<(), CodecError> {
        let n = out.len();
        let (decoded, mut base_sq) = Squares::split(sq);
        self.decode_runs(src, n, decoded, |i, v| {
            let out = &mut out[i..i + v.len()];
            let base = if base_weight == 0.0 { v } else { &base[i..i + v.len()] };
            mean_into(out, base_weight, base, weight, v, inv);
            if let (Some(b), true) = (base_sq.as_deref_mut(), base_weight != 0.0) {
                *b += sum_squares_serial(base);
            }
        })
    }

    /// Whether `decode_mean_encode` handles this codec: every one whose
    /// encoding can be written a decoded run at a time (int8 blocks longer
    /// than a run cannot: their scale needs the whole block).
    pub fn encodes_mean_in_runs(&self) -> bool {
        !matches!(*self, Codec::Int8 { block } if block > STEP) && self.sparse().is_none()
    }

    /// `enc = encode((base_weight · base + weight · decode(src)) · inv)`
    /// for `n` values, one run at a time: the mean stays in a
    /// stack buffer between the two, so a chunk's working set is its input,
    /// its encoding and nothing else. Returns whether every mean value was
    /// finite (otherwise `enc` must not be used). On a `src` error nothing
    /// is written.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_mean_encode(
        &self,
        src: &[u8],
        n: usize,
        weight: f32,
        base_weight: f32,
        base: &[f32],
        inv: f32,
        enc: &mut [u8],
        sq: Option<&mut Squares>,
    ) -> Result<bool, CodecError> {
        assert!(self.encodes_mean_in_runs(), "{self} encodes whole blocks");
        assert_eq!(enc.len(), self.encoded_len(n), "destination sized by encoded_len");
        assert!(base_weight == 0.0 || base.len() == n, "base covers the chunk");
        let codec = *self;
        let mut mean = [0f32; STEP];
        let mut bad = false;
        let (decoded, mut base_sq) = Squares::split(sq);
        // (Runs of fp32 can be the whole chunk: cut them to the buffer.)
        let mut run = |i: usize, v: &[f32]| {
            let m = &mut mean[..v.len()];
            let b = if base_weight == 0.0 { v } else { &base[i..i + v.len()] };
            mean_into(m, base_weight, b, weight, v, inv);
            if let (Some(s), true) = (base_sq.as_deref_mut(), base_weight != 0.0) {
                *s += sum_squares_serial(b);
            }
            let end = i + m.len();
            bad |= match codec {
                Codec::F32 => {
                    enc[4 * i..4 * end].chunks_exact_mut(4).zip(m.iter()).for_each(|(d, x)| d.copy_from_slice(&x.to_le_bytes()));
                    any_nonfinite(m)
                }
                Codec::F16 => convert::f32_to_f16(m, &mut enc[2 * i..2 * end]),
                Codec::Bf16 => {
                    convert::f32_to_bf16(m, &mut enc[2 * i..2 * end]);
                    any_nonfinite(m)
                }
                Codec::TopK { .. } => unreachable!("sparse blocks are encoded whole"),
                Codec::Int8 { block } => {
                    // A run is a whole block here (block ≤ STEP), starting at i.
                    let (scales, values) = enc.split_at_mut(4 * n.div_ceil(block));
                    let b = i / block;
                    int8_encode_block(m, &mut scales[4 * b..4 * b + 4], &mut values[i..end])
                }
            };
        };
        self.decode_runs(src, n, decoded, |i, v| v.chunks(STEP).enumerate().for_each(|(k, v)| run(i + k * STEP, v)))?;
        Ok(!bad)
    }

    /// `acc += weight · decode(src)`: how an owner accumulates a sender's
    /// chunk; on error `acc` is untouched.
    pub fn decode_add(&self, src: &[u8], weight: f32, acc: &mut [f32], sq: Option<&mut Squares>) -> Result<(), CodecError> {
        let n = acc.len();
        self.decode_runs(src, n, sq.map(|s| &mut s.decoded), |i, v| add_into(&mut acc[i..i + v.len()], weight, v))
    }
}

/// `b` as a slice of `T` when it is aligned for it. The wire is
/// little-endian, so only little-endian hosts may read it in place.
fn words<T: bytemuck_free::Word>(b: &[u8]) -> Option<&[T]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: `T` is a plain integer or float type: every bit pattern is a valid value.
    let (pre, mid, post) = unsafe { b.align_to::<T>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

fn words_mut<T: bytemuck_free::Word>(b: &mut [u8]) -> Option<&mut [T]> {
    if cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: as in `words`.
    let (pre, mid, post) = unsafe { b.align_to_mut::<T>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

mod bytemuck_free {
    /// Types whose every bit pattern is a value.
    pub trait Word: Copy {}
    impl Word for f32 {}
}

/// Index of the first 16-bit little-endian word whose `mask` bits are all
/// set. One branch-free pass over the whole chunk (the clean case, which
/// is the common one, vectorizes); the position only when there is a hit.
fn first_all_ones_u16(b: &[u8], mask: u16) -> Option<usize> {
    let hit = |x: &[u8]| u16::from_le_bytes([x[0], x[1]]) & mask == mask;
    if any_all_ones_u16(b, mask) { b.chunks_exact(2).position(hit) } else { None }
}

fn first_all_ones_u32(b: &[u8], mask: u32) -> Option<usize> {
    let hit = |x: &[u8]| u32::from_le_bytes([x[0], x[1], x[2], x[3]]) & mask == mask;
    if any_all_ones_u32(b, mask) { b.chunks_exact(4).position(hit) } else { None }
}

/// Index of the first NaN or infinity in `x` (as `first_all_ones_u32`).
pub fn first_nonfinite(x: &[f32]) -> Option<usize> {
    if any_nonfinite(x) { x.iter().position(|v| !v.is_finite()) } else { None }
}

// The element-wise loops, each compiled for AVX-512, AVX2 and the baseline
// (see `engine::cpu::simd`): branch-free so that they vectorize.

multiversion! {
    fn any_all_ones_u16(b: &[u8], mask: u16) -> bool {
        b.chunks_exact(2).fold(false, |a, x| a | (u16::from_le_bytes([x[0], x[1]]) & mask == mask))
    }
}

multiversion! {
    fn any_all_ones_u32(b: &[u8], mask: u32) -> bool {
        b.chunks_exact(4).fold(false, |a, x| a | (u32::from_le_bytes([x[0], x[1], x[2], x[3]]) & mask == mask))
    }
}

multiversion! {
    fn any_nonfinite(x: &[f32]) -> bool {
        x.iter().fold(false, |a, v| a | (v.to_bits() & 0x7f80_0000 == 0x7f80_0000))
    }
}

multiversion! {
    fn scale_into(acc: &mut [f32], w: f32, v: &[f32]) {
        acc.iter_mut().zip(v).for_each(|(a, &v)| *a = w * v);
    }
}

multiversion! {
    fn add_into(acc: &mut [f32], w: f32, v: &[f32]) {
        acc.iter_mut().zip(v).for_each(|(a, &v)| *a += w * v);
    }
}

multiversion! {
    fn blend_into(acc: &mut [f32], base_w: f32, base: &[f32], w: f32, v: &[f32]) {
        acc.iter_mut().zip(base).zip(v).for_each(|((a, &b), &v)| *a = base_w * b + w * v);
    }
}

multiversion! {
    fn mean_into(out: &mut [f32], base_w: f32, base: &[f32], w: f32, v: &[f32], inv: f32) {
        out.iter_mut().zip(base).zip(v).for_each(|((o, &b), &v)| *o = (base_w * b + w * v) * inv);
    }
}

multiversion! {
    fn int8_decode(q: &[u8], scale: f32, out: &mut [f32]) {
        out.iter_mut().zip(q).for_each(|(o, &q)| *o = q as i8 as f32 * scale);
    }
}

multiversion! {
    /// Scales first (all of them), then the values: `block` values share a
    /// scale. Returns whether any input was NaN or inf (checked in the same
    /// pass; the encoding is meaningless then, but still well-defined).
    fn int8_encode(src: &[f32], dst: &mut [u8], block: usize) -> bool {
        let (scales, values) = dst.split_at_mut(4 * src.len().div_ceil(block));
        let mut bad = false;
        for ((s, sc), q) in src.chunks(block).zip(scales.chunks_exact_mut(4)).zip(values.chunks_mut(block)) {
            bad |= int8_block(s, sc, q);
        }
        bad
    }
}

multiversion! {
    /// One block of `int8_encode`, its scale and values written apart.
    fn int8_encode_block(src: &[f32], scale: &mut [u8], values: &mut [u8]) -> bool {
        int8_block(src, scale, values)
    }
}

/// Encodes one block: its scale (max |x| / 127) into `sc`, the values
/// into `q`. Returns whether any input was NaN or inf.
#[inline(always)]
fn int8_block(s: &[f32], sc: &mut [u8], q: &mut [u8]) -> bool {
    // max |x| over 16 independent lanes, so that it vectorizes.
    let mut lanes = [0f32; 16];
    let mut inf_nan = [false; 16];
    let mut runs = s.chunks_exact(16);
    // (A plain comparison, not f32::max: max's NaN rules cost a
    // fix-up per vector; NaN and inf are flagged on their own.)
    let bigger = |m: f32, v: f32| if v > m { v } else { m };
    let nonfinite = |v: f32| v.to_bits() & 0x7f80_0000 == 0x7f80_0000;
    for run in &mut runs {
        for ((m, b), &v) in lanes.iter_mut().zip(&mut inf_nan).zip(run) {
            *m = bigger(*m, v.abs());
            *b |= nonfinite(v);
        }
    }
    let bad = inf_nan.iter().any(|&b| b) || runs.remainder().iter().any(|&v| nonfinite(v));
    let max = runs.remainder().iter().chain(&lanes).fold(0f32, |m, &v| bigger(m, v.abs()));
    let scale = max / 127.0;
    sc.copy_from_slice(&scale.to_le_bytes());
    let inv = if scale > 0.0 && scale.is_finite() { 1.0 / scale } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(s) {
        // Ties to even; |v·inv| ≤ 127 for finite input, and the clamp
        // (whose max drops NaN) keeps any input in range, so the unchecked
        // conversion is sound and vectorizes.
        // (Not `clamp`: it keeps NaN, which the conversion must never see.)
        #[allow(clippy::manual_clamp)]
        let r = (v * inv).round_ties_even().max(-127.0).min(127.0);
        // SAFETY: r is finite and within i32's range.
        *q = unsafe { r.to_int_unchecked::<i32>() } as i8 as u8;
    }
    bad
}

/// `topk`: 32 of every 4096 values (0.8%, as SparseLoCo keeps), 0.024
/// bytes per value from a sender.
pub const DEFAULT_TOPK: Codec = Codec::TopK { block: 4096, k: 32, wide: false };

/// Int8 block size when none is given: 4 scale bytes per 256 values keep
/// the wire at 1.016 bytes per value.
pub const DEFAULT_INT8_BLOCK: usize = 256;

impl std::str::FromStr for Codec {
    type Err = String;

    /// `fp32`/`f32`, `fp16`/`f16`, `bf16`, `int8`, `int8:BLOCK`, `topk`
    /// or `topk:BLOCK:K` (`topk16:BLOCK:K`: fp16 values).
    fn from_str(s: &str) -> Result<Codec, String> {
        let sparse = |rest: &str, wide: bool| -> Option<Codec> {
            let (block, k) = rest.split_once(':')?;
            let (block, k) = (block.parse::<usize>().ok()?, k.parse::<usize>().ok()?);
            ((1..=topk::MAX_BLOCK).contains(&block) && (1..=block).contains(&k)).then_some(Codec::TopK { block, k, wide })
        };
        let bad = || format!("unknown codec {s:?}: fp32, fp16, bf16, int8, int8:BLOCK, topk or topk:BLOCK:K (1 ≤ K ≤ BLOCK ≤ 65536)");
        let lower = s.to_ascii_lowercase();
        Ok(match lower.as_str() {
            "fp32" | "f32" => Codec::F32,
            "fp16" | "f16" => Codec::F16,
            "bf16" => Codec::Bf16,
            "int8" => Codec::Int8 { block: DEFAULT_INT8_BLOCK },
            "topk" => DEFAULT_TOPK,
            other => {
                if let Some(rest) = other.strip_prefix("int8:") {
                    match rest.parse::<usize>() {
                        Ok(block) if (1..=1 << 20).contains(&block) => Codec::Int8 { block },
                        _ => return Err(bad()),
                    }
                } else if let Some(rest) = other.strip_prefix("topk16:") {
                    sparse(rest, true).ok_or_else(bad)?
                } else if let Some(rest) = other.strip_prefix("topk:") {
                    sparse(rest, false).ok_or_else(bad)?
                } else {
                    return Err(bad());
                }
            }
        })
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Codec::F32 => write!(f, "fp32"),
            Codec::F16 => write!(f, "fp16"),
            Codec::Bf16 => write!(f, "bf16"),
            Codec::Int8 { block } => write!(f, "int8:{block}"),
            Codec::TopK { block, k, wide: false } => write!(f, "topk:{block}:{k}"),
            Codec::TopK { block, k, wide: true } => write!(f, "topk16:{block}:{k}"),
        }
    }
}
