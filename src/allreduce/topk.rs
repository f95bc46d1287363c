//! The sparse codec (`Codec::TopK`): per block of `block` values, only the
//! `k` largest in magnitude travel, as (index in the block, value) — the
//! chunked top-k of DeMo and SparseLoCo.
//!
//! Why: a DiLoCo pseudo-gradient with error feedback (the miner keeps what
//! the codec dropped and adds it to the next epoch's) keeps its direction
//! with about one entry in a hundred, so an exchange moves ~20× fewer bytes
//! than fp16 and the all-reduce stops dominating an epoch on slow links.
//!
//! Two widths, one per phase of the all-reduce:
//! - 8-bit, what senders send: per block an f32 scale (the kept max |x| /
//!   127), the kept indices (u16, ascending), their values as i8 — 3 bytes
//!   per kept value, 4 per block.
//! - 16-bit, the owners' averages: indices then fp16 values, no scale.
//!   An average of m senders' blocks holds at most m·k non-zeros, so an
//!   owner encodes it with k' = m·k (`Codec::for_mean`) and the union of
//!   the parts travels whole; its values go in fp16 because a second 8-bit
//!   rounding (half a step of the block's largest value, on every value)
//!   would be far coarser than the averages check can allow on the small
//!   ones.
//!
//! Blocks are cut from the start of each chunk, and the all-reduce aligns
//! spans and chunks to whole blocks (`Codec::alignment`), so every encoder
//! sees the same blocks of the flat vector and a vector that is already
//! k-sparse per block (what a miner sends after its error feedback)
//! crosses the sender's encoder without loss. The last block of a chunk
//! may be shorter; it keeps min(k, len) values. The selection is
//! deterministic (larger |x| first, then the lower index), so every member
//! encoding the same values writes the same bytes.

use super::codec::CodecError;
use super::convert;
use std::ops::Range;

/// Largest valid 8-bit scale: 127 × it is still finite (the encoder never
/// writes −128, and validation refuses it).
const MAX_SCALE: f32 = f32::MAX / 127.0;
/// Block lengths an index of 16 bits can address.
pub const MAX_BLOCK: usize = 1 << 16;

/// The shape of one codec: block length, values kept per block, width.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub block: usize,
    pub k: usize,
    pub wide: bool,
}

impl Shape {
    fn block(&self) -> usize {
        self.block.clamp(1, MAX_BLOCK)
    }

    /// Bytes of a block of `len` values.
    fn record_len(&self, len: usize) -> usize {
        let kept = self.k.min(len);
        if self.wide { 4 * kept } else { 4 + 3 * kept }
    }

    /// (first element, length, first byte) of every block of a chunk of
    /// `n` values.
    fn blocks(&self, n: usize) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        let block = self.block();
        let mut at = 0;
        (0..n.div_ceil(block)).map(move |b| {
            let start = b * block;
            let len = block.min(n - start);
            let r = (start, len, at);
            at += self.record_len(len);
            r
        })
    }

    pub fn encoded_len(&self, n: usize) -> usize {
        let block = self.block();
        let full = n / block;
        full * self.record_len(block) + if !n.is_multiple_of(block) { self.record_len(n % block) } else { 0 }
    }

    /// Encodes `src` into `dst` (sized by `encoded_len`); returns whether
    /// some value was not finite (the bytes are then not to be used).
    pub fn encode(&self, src: &[f32], dst: &mut [u8]) -> bool {
        assert_eq!(dst.len(), self.encoded_len(src.len()), "destination sized by encoded_len");
        let mut order: Vec<u32> = Vec::with_capacity(self.block().min(src.len()));
        let mut kept = Vec::with_capacity(self.k.min(src.len()));
        let mut bad = false;
        for (start, len, at) in self.blocks(src.len()) {
            let x = &src[start..start + len];
            bad |= x.iter().any(|v| !v.is_finite());
            let k = self.k.min(len);
            order.clear();
            order.extend(0..len as u32);
            if k < len {
                // Larger magnitude first, then the lower index: a total
                // order, so the kept set does not depend on the algorithm.
                order.select_nth_unstable_by(k - 1, |&a, &b| x[b as usize].abs().total_cmp(&x[a as usize].abs()).then(a.cmp(&b)));
                order[..k].sort_unstable();
            }
            let rec = &mut dst[at..at + self.record_len(len)];
            let (rec, values) = if self.wide {
                rec.split_at_mut(2 * k)
            } else {
                let (scale, rest) = rec.split_at_mut(4);
                let max = order[..k].iter().fold(0f32, |m, &i| m.max(x[i as usize].abs()));
                let s = if max.is_finite() { max / 127.0 } else { 0.0 };
                scale.copy_from_slice(&s.to_le_bytes());
                kept.clear();
                kept.extend(order[..k].iter().map(|&i| x[i as usize]));
                let (idx, q) = rest.split_at_mut(2 * k);
                for (q, v) in q.iter_mut().zip(&kept) {
                    *q = if s > 0.0 { (v / s).round_ties_even().clamp(-127.0, 127.0) as i8 as u8 } else { 0 };
                }
                (idx, &mut [][..])
            };
            for (d, &i) in rec.chunks_exact_mut(2).zip(&order[..k]) {
                d.copy_from_slice(&(i as u16).to_le_bytes());
            }
            if self.wide {
                kept.clear();
                kept.extend(order[..k].iter().map(|&i| x[i as usize]));
                convert::f32_to_f16(&kept, values);
            }
        }
        bad
    }

    /// Checks a chunk of `n` values: its length, every block's scale,
    /// indices strictly ascending inside the block, every value finite.
    pub fn validate(&self, src: &[u8], n: usize) -> Result<(), CodecError> {
        let want = self.encoded_len(n);
        if src.len() != want {
            return Err(CodecError::Length { got: src.len(), want, n });
        }
        for (b, (start, len, at)) in self.blocks(n).enumerate() {
            let k = self.k.min(len);
            let rec = &src[at..at + self.record_len(len)];
            let (idx, values) = if self.wide {
                rec.split_at(2 * k)
            } else {
                let s = f32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
                if !(s.is_finite() && (0.0..=MAX_SCALE).contains(&s)) {
                    return Err(CodecError::Scale(b));
                }
                rec[4..].split_at(2 * k)
            };
            let mut next = 0usize;
            for (j, i) in idx.chunks_exact(2).enumerate() {
                let i = u16::from_le_bytes([i[0], i[1]]) as usize;
                if i < next || i >= len {
                    return Err(CodecError::Index(start + j));
                }
                next = i + 1;
            }
            let bad = if self.wide {
                values.chunks_exact(2).position(|v| u16::from_le_bytes([v[0], v[1]]) & 0x7c00 == 0x7c00)
            } else {
                values.iter().position(|&q| q == 0x80)
            };
            if let Some(j) = bad {
                return Err(CodecError::NonFinite(start + j));
            }
        }
        Ok(())
    }

    /// The kept entries of block `(start, len, at)` of a validated chunk:
    /// (position in the chunk, value), ascending.
    fn entries<'a>(&self, src: &'a [u8], (start, len, at): (usize, usize, usize)) -> impl Iterator<Item = (usize, f32)> + 'a {
        let k = self.k.min(len);
        let rec = &src[at..at + self.record_len(len)];
        let (scale, idx, values) = if self.wide {
            (None, &rec[..2 * k], &rec[2 * k..])
        } else {
            (Some(f32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]])), &rec[4..4 + 2 * k], &rec[4 + 2 * k..])
        };
        idx.chunks_exact(2).enumerate().map(move |(j, i)| {
            let pos = start + u16::from_le_bytes([i[0], i[1]]) as usize;
            let v = match scale {
                Some(s) => values[j] as i8 as f32 * s,
                None => half::f16::from_le_bytes([values[2 * j], values[2 * j + 1]]).to_f32(),
            };
            (pos, v)
        })
    }

    /// Decodes values `r` of a validated chunk of `n` into `out` (zeros
    /// where nothing was kept).
    pub fn decode_range(&self, src: &[u8], n: usize, r: Range<usize>, out: &mut [f32]) {
        out.fill(0.0);
        let block = self.block();
        if r.is_empty() {
            return;
        }
        let (first, last) = (r.start / block, (r.end - 1) / block);
        for blk in self.blocks(n).skip(first).take(last + 1 - first) {
            for (pos, v) in self.entries(src, blk).filter(|(p, _)| r.contains(p)) {
                out[pos - r.start] = v;
            }
        }
    }

    /// Calls `f(offset, values)` on consecutive runs of at most `step`
    /// decoded values of a validated chunk of `n`, in order.
    pub fn decode_runs(&self, src: &[u8], n: usize, step: usize, buf: &mut [f32], mut f: impl FnMut(usize, &[f32])) {
        let mut entries = self.blocks(n).flat_map(|b| self.entries(src, b)).peekable();
        for start in (0..n).step_by(step.max(1)) {
            let end = (start + step).min(n);
            let out = &mut buf[..end - start];
            out.fill(0.0);
            while let Some(&(pos, v)) = entries.peek().filter(|(p, _)| *p < end) {
                out[pos - start] = v;
                entries.next();
            }
            f(start, out);
        }
    }

    /// Decodes a validated chunk into `dst` (its length is the chunk's).
    pub fn decode(&self, src: &[u8], dst: &mut [f32]) {
        dst.fill(0.0);
        for b in self.blocks(dst.len()) {
            for (pos, v) in self.entries(src, b) {
                dst[pos] = v;
            }
        }
    }
}
