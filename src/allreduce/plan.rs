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
    spans_aligned(len, fractions, 1)
}

/// Like `spans`, with every boundary but the vector's end a multiple of
/// `align` elements (`Codec::alignment`: the sparse codec's blocks), each
/// span then within `align` of its share.
pub fn spans_aligned(len: usize, fractions: &[f64], align: usize) -> Result<Vec<Range<usize>>, PlanError> {
    let align = align.max(1);
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
        let end = if i + 1 == fractions.len() { len } else { ((((cum / total) * len as f64) / align as f64).round() as usize * align).min(len) };
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

/// Span fractions for members whose links carry `rates` (each way, any
/// unit), and the round's time then, per encoded byte of the vector and
/// unit of rate: the fastest any split can be.
///
/// Member i with fraction fᵢ of n members sends (and receives) its
/// contribution to the others' spans, (1 − fᵢ) of the vector, and its
/// averaged span to the n − 1 others, (n − 1)·fᵢ: 1 + (n − 2)·fᵢ in all,
/// taking (1 + (n − 2)·fᵢ)/rᵢ. The slowest member sets the pace, so the
/// owners' times are made equal, τ, with Σfᵢ = 1; a member whose link is
/// too slow for even fᵢ = 0 to reach τ owns nothing (it still sends and
/// receives the whole vector once: 1/rᵢ). Equal rates give equal spans
/// and 2(n − 1)/(n·r), the usual bound.
pub fn link_fractions(rates: &[f64]) -> (Vec<f64>, f64) {
    let n = rates.len();
    if n <= 2 {
        // Every member moves the whole vector whatever its span.
        let t = rates.iter().map(|r| 1.0 / r).fold(0.0, f64::max);
        return (rates.to_vec(), t);
    }
    let k = (n - 2) as f64;
    let mut owners: Vec<usize> = (0..n).collect();
    loop {
        let tau = (k + owners.len() as f64) / owners.iter().map(|&i| rates[i]).sum::<f64>();
        // The slowest owner that cannot keep up even owning nothing.
        let worst = owners.iter().copied().filter(|&i| tau * rates[i] < 1.0).min_by(|&a, &b| rates[a].total_cmp(&rates[b]));
        match worst {
            Some(i) if owners.len() > 1 => owners.retain(|&o| o != i),
            _ => {
                let fractions = (0..n).map(|i| if owners.contains(&i) { ((tau * rates[i] - 1.0) / k).max(0.0) } else { 0.0 }).collect();
                let slowest_other = (0..n).filter(|i| !owners.contains(i)).map(|i| 1.0 / rates[i]).fold(0.0, f64::max);
                return (fractions, tau.max(slowest_other));
            }
        }
    }
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
        // Whole blocks, as many values as fp16 would carry in the chunk
        // (the sparse encoding is far smaller: chunks stay a unit of work,
        // not of bytes).
        Codec::TopK { .. } => {
            let block = codec.alignment();
            (chunk_bytes / 2 / block).max(usize::from(chunk_bytes >= 4)) * block
        }
    };
    if elems == 0 { Err(PlanError::ChunkSize(chunk_bytes)) } else { Ok(elems) }
}

/// The chunks of a span.
pub fn chunks(span: Range<usize>, elems: usize) -> impl Iterator<Item = Range<usize>> {
    let end = span.end;
    (span.start..end).step_by(elems.max(1)).map(move |s| s..(s + elems.max(1)).min(end))
}
