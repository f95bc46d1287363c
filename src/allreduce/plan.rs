//! How a group cuts the flat vector: one contiguous span per member, in
//! proportion to its bandwidth fraction (0 = the member only sends and
//! receives), and each span into chunks of at most `chunk_bytes` encoded
//! bytes — the unit that travels, is checksummed and is reduced.

use super::codec::Codec;
use std::ops::Range;

/// The reference's chunk size: 512 KiB of encoded bytes.
pub const DEFAULT_CHUNK_BYTES: usize = 512 << 10;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PlanError {
    #[error("fraction {0} of member {1} is not a finite non-negative number")]
    Fraction(f64, usize),
    #[error("no member has a positive fraction")]
    NoOwner,
    #[error("chunk size {0} bytes cannot hold a value")]
    ChunkSize(usize),
}

/// Spans of `len` elements for members with these fractions: contiguous,
/// in member order, covering `0..len`; span `i` has `len·fᵢ/Σf` elements,
/// rounded so that the boundaries are the rounded cumulative shares (every
/// span within one element of its exact share).
pub fn spans(len: usize, fractions: &[f64]) -> Result<Vec<Range<usize>>, PlanError> {
    if let Some((i, &f)) = fractions.iter().enumerate().find(|(_, f)| !(f.is_finite() && **f >= 0.0)) {
        return Err(PlanError::Fraction(f, i));
    }
    let total: f64 = fractions.iter().sum();
    if total <= 0.0 {
        return Err(PlanError::NoOwner);
    }
    let mut out = Vec::with_capacity(fractions.len());
    let (mut cum, mut start) = (0.0, 0usize);
    for (i, &f) in fractions.iter().enumerate() {
        cum += f;
        let end = if i + 1 == fractions.len() { len } else { ((cum / total) * len as f64).round().min(len as f64) as usize };
        let end = end.max(start);
        out.push(start..end);
        start = end;
    }
    // The last positive-fraction member absorbs rounding at the very end.
    if let Some(last) = fractions.iter().rposition(|&f| f > 0.0) {
        let tail = out[last].start..len;
        for s in out.iter_mut().skip(last + 1) {
            *s = len..len;
        }
        out[last] = tail;
    }
    Ok(out)
}

/// Elements per chunk so that a chunk encodes to at most `chunk_bytes`
/// (a whole number of int8 blocks, so every chunk decodes on its own).
pub fn chunk_elems(codec: Codec, chunk_bytes: usize) -> Result<usize, PlanError> {
    let elems = match codec {
        Codec::F32 => chunk_bytes / 4,
        Codec::F16 | Codec::Bf16 => chunk_bytes / 2,
        Codec::Int8 { block } => {
            let block = block.max(1);
            (chunk_bytes / (block + 4)) * block
        }
    };
    if elems == 0 { Err(PlanError::ChunkSize(chunk_bytes)) } else { Ok(elems) }
}

/// The chunks of a span.
pub fn chunks(span: Range<usize>, elems: usize) -> impl Iterator<Item = Range<usize>> {
    let end = span.end;
    (span.start..end).step_by(elems.max(1)).map(move |s| s..(s + elems.max(1)).min(end))
}
