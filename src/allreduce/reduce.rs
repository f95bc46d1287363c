//! The owner's side of scatter-reduce for one span: chunks arrive from any
//! sender in any order (a slow sender never holds up the others' chunks)
//! and are added, weighted, into one f32 accumulator as they come. Each chunk
//! keeps its own total weight and the set of senders it has heard from, so
//! a sender that fails halfway simply leaves the chunks it never delivered
//! averaged over the senders that did.
//!
//! The owner's own contribution never crosses the wire and is never copied:
//! it is folded into a chunk's accumulator when the first peer chunk
//! arrives (`acc = w_own·own + w·peer`) or when the chunk is averaged, so
//! the accumulator needs no zeroing pass and no pass of its own.

use super::audit::Part;
use super::codec::{Codec, CodecError, Squares};
use super::plan::chunks;
use super::projection::{Projector, sum_squares_serial};
use std::ops::Range;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReduceError {
    #[error("sender {0} is not in the group")]
    Sender(usize),
    #[error("chunk {0} is outside the span")]
    Chunk(usize),
    #[error("sender {sender} sent chunk {chunk} twice")]
    Duplicate { sender: usize, chunk: usize },
    #[error("weight {0} is not a finite non-negative number")]
    Weight(f32),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// What a chunk's last contribution is added to.
enum Base {
    /// The accumulator (other contributions arrived before).
    Acc,
    /// The owner's own values, with their weight (nothing arrived before).
    Own(f32),
    /// Nothing: the last contribution is the only one.
    Nothing,
}

pub struct SpanReducer {
    chunks: Vec<Range<usize>>,
    senders: usize,
    /// Valid for a chunk only once `started[chunk]`.
    acc: Vec<f32>,
    started: Vec<bool>,
    /// The owner's own contribution: its sender index and weight.
    own: Option<(usize, f32)>,
    /// Σ weights added into each chunk.
    weight: Vec<f64>,
    /// `seen[chunk * senders + sender]`.
    seen: Vec<bool>,
    /// Audited: the projector, the span's first element in the vector, and
    /// per sender (the owner's own included) its values' projections and
    /// norm as they entered the average, measured while they are in cache.
    measured: Option<(Projector, usize, Vec<Part>)>,
    /// Audited: per chunk, the payloads it was averaged from (by sender),
    /// kept until its average exists, and per sender Σ part·average over
    /// the chunks averaged so far (see `dots_with`).
    kept: Vec<Vec<(usize, Vec<u8>)>>,
    dots: Vec<f64>,
    /// Buffers of payloads whose chunk was averaged, for the next ones (a
    /// fresh chunk-sized allocation per payload is fresh pages each time:
    /// the page faults cost more than the copy).
    spare: Vec<Vec<u8>>,
}

impl SpanReducer {
    /// A reducer for a span of `len` elements cut into chunks of `chunk_elems`.
    pub fn new(len: usize, chunk_elems: usize, senders: usize) -> SpanReducer {
        SpanReducer::reusing(Vec::new(), len, chunk_elems, senders)
    }

    /// Like `new`, accumulating in `buffer` (from `into_buffer`), so that
    /// rounds after the first touch no fresh pages. Its old contents are
    /// never read.
    pub fn reusing(mut buffer: Vec<f32>, len: usize, chunk_elems: usize, senders: usize) -> SpanReducer {
        buffer.truncate(len);
        buffer.resize(len, 0.0);
        let chunks: Vec<_> = chunks(0..len, chunk_elems).collect();
        let n = chunks.len();
        SpanReducer {
            chunks,
            senders,
            acc: buffer,
            started: vec![false; n],
            own: None,
            weight: vec![0.0; n],
            seen: vec![false; n * senders],
            measured: None,
            kept: Vec::new(),
            dots: Vec::new(),
            spare: Vec::new(),
        }
    }

    pub fn into_buffer(self) -> Vec<f32> {
        self.acc
    }

    /// Measures every contribution as it is added: its projections on
    /// `projector` and its norm (the span starts at element `span_start`
    /// of the vector; see `measured`).
    pub fn audit(&mut self, projector: Projector, span_start: usize) {
        self.measured = Some((projector, span_start, vec![Part::default(); self.senders]));
        self.kept = vec![Vec::new(); self.chunks.len()];
        self.dots = vec![0.0; self.senders];
    }

    /// Audited: per sender (own included), Σ over the chunks averaged so far
    /// of its part · the average as published (`None` unless audited).
    pub fn dots(&self) -> Option<&[f64]> {
        self.measured.is_some().then_some(&self.dots[..])
    }

    /// Audited: adds each part of chunk `chunk` times `mean` (the chunk's
    /// average as every member decodes it) to its sender's dot — the parts
    /// kept for it, the last one `last` (its sender and payload, never
    /// kept) and the owner's own, `own_dot` (measured as the average
    /// replaced it) — and drops the kept payloads. Call once the chunk's
    /// average is published; `mean: None` (nothing averaged) only drops them.
    pub fn dots_with(&mut self, chunk: usize, codec: Codec, mean: Option<&[f32]>, last: Option<(usize, &[u8])>, own_dot: f64) {
        let kept = self.kept.get_mut(chunk).map(std::mem::take).unwrap_or_default();
        if let Some(mean) = mean.filter(|_| self.measured.is_some()) {
            for (s, bytes) in kept.iter().map(|(s, b)| (*s, &b[..])).chain(last) {
                self.dots[s] += codec.dot_decoded(bytes, mean);
            }
            if let Some((o, _)) = self.own {
                self.dots[o] += own_dot;
            }
        }
        self.spare.extend(kept.into_iter().map(|(_, b)| b));
    }

    /// Per sender (own included), what its values that entered the average
    /// so far project to and their norm (`None` unless audited).
    pub fn measured(&self) -> Option<&[Part]> {
        self.measured.as_ref().map(|m| &m.2[..])
    }

    /// Squares to measure a decode into (`None` unless audited).
    fn squares(&self) -> Option<Squares> {
        self.measured.is_some().then(Squares::default)
    }

    /// Adds what a decode of chunk `chunk` measured to `sender`'s part and
    /// (when its base was the owner's values) the owner's, with the chunk's
    /// projections: the sender's from the sampled blocks of `bytes`, the
    /// owner's from its values, both still in cache. `last`: the chunk's
    /// last contribution (not kept: it comes with the average).
    #[allow(clippy::too_many_arguments)]
    fn note(&mut self, sender: usize, chunk: usize, codec: Codec, bytes: &[u8], own: &[f32], sq: Option<Squares>, base_is_own: bool, last: bool) {
        let owner = self.own.map(|(s, _)| s);
        let range = self.chunks[chunk].clone();
        let (Some((p, start, parts)), Some(sq)) = (self.measured.as_mut(), sq) else { return };
        // (The part's product with the average needs the average: kept
        // until then, at most the span's worth of payloads; the chunk's
        // last one comes with its average, see `dots_with`.)
        if !last {
            let mut copy = self.spare.pop().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(bytes);
            self.kept[chunk].push((sender, copy));
        }
        let (proj, scale) = codec.project_decoded(bytes, range.len(), p, *start + range.start);
        parts[sender].add(&Part { proj, scale, sum_squares: sq.decoded });
        if let (Some(o), true) = (owner, base_is_own) {
            let (proj, scale) = p.project_serial(&own[range.clone()], *start + range.start);
            parts[o].add(&Part { proj, scale, sum_squares: sq.base });
        }
    }

    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Counts `sender`'s own values (passed to `add` and `mean_into` as
    /// `own`; they must be finite) with `weight` in every chunk.
    pub fn set_own(&mut self, sender: usize, weight: f32) {
        assert!(sender < self.senders && weight.is_finite() && weight >= 0.0 && self.own.is_none(), "one valid own contribution");
        self.own = Some((sender, weight));
        for c in 0..self.chunks.len() {
            self.mark(sender, c, weight);
        }
    }

    /// Checks that `sender` may add chunk `chunk` with `weight`; returns
    /// the chunk's elements.
    fn admit(&self, sender: usize, chunk: usize, weight: f32) -> Result<Range<usize>, ReduceError> {
        if sender >= self.senders {
            return Err(ReduceError::Sender(sender));
        }
        let range = self.chunks.get(chunk).ok_or(ReduceError::Chunk(chunk))?.clone();
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(ReduceError::Weight(weight));
        }
        if self.seen[chunk * self.senders + sender] {
            return Err(ReduceError::Duplicate { sender, chunk });
        }
        Ok(range)
    }

    fn mark(&mut self, sender: usize, chunk: usize, weight: f32) {
        self.seen[chunk * self.senders + sender] = true;
        self.weight[chunk] += weight as f64;
    }

    /// Adds `weight ·` the decoded chunk `chunk` from `sender`. Nothing is
    /// added unless the whole chunk is valid. `own`: the span's own values
    /// (empty when `set_own` was not called).
    pub fn add(&mut self, sender: usize, chunk: usize, weight: f32, codec: Codec, bytes: &[u8], own: &[f32]) -> Result<(), ReduceError> {
        let range = self.admit(sender, chunk, weight)?;
        let mut sq = self.squares();
        let acc = &mut self.acc[range.clone()];
        let base_is_own = !self.started[chunk] && self.own.is_some();
        match (self.started[chunk], self.own) {
            (true, _) => codec.decode_add(bytes, weight, acc, sq.as_mut())?,
            (false, None) => codec.decode_scaled(bytes, weight, acc, sq.as_mut())?,
            (false, Some((_, w_own))) => codec.decode_blend(bytes, weight, w_own, &own[range], acc, sq.as_mut())?,
        }
        self.started[chunk] = true;
        self.mark(sender, chunk, weight);
        self.note(sender, chunk, codec, bytes, own, sq, base_is_own, false);
        Ok(())
    }

    /// Like `add`, for the chunk's last contribution: writes the chunk's
    /// weighted mean into `out` instead of accumulating, and returns
    /// whether there is one (any weight at all). The chunk is final after
    /// this: it must not be added to or averaged again.
    #[allow(clippy::too_many_arguments)]
    pub fn add_final(
        &mut self,
        sender: usize,
        chunk: usize,
        weight: f32,
        codec: Codec,
        bytes: &[u8],
        own: &[f32],
        out: &mut [f32],
    ) -> Result<bool, ReduceError> {
        let ((), inv) = self.take_last(sender, chunk, weight, codec, bytes, own, |base_weight, base, inv, sq| {
            codec.decode_mean(bytes, weight, base_weight, base, inv, out, sq)
        })?;
        Ok(inv > 0.0)
    }

    /// Like `add_final`, writing the mean's encoding into `enc` (see
    /// `Codec::decode_mean_encode`). Returns `Some(finite)` when there is
    /// a mean: whether all of it is finite (else `enc` is not to be sent).
    #[allow(clippy::too_many_arguments)]
    pub fn add_final_encoded(
        &mut self,
        sender: usize,
        chunk: usize,
        weight: f32,
        codec: Codec,
        bytes: &[u8],
        own: &[f32],
        enc: &mut [u8],
    ) -> Result<Option<bool>, ReduceError> {
        let n = self.chunks.get(chunk).map_or(0, |r| r.len());
        let (finite, inv) = self.take_last(sender, chunk, weight, codec, bytes, own, |base_weight, base, inv, sq| {
            codec.decode_mean_encode(bytes, n, weight, base_weight, base, inv, enc, sq)
        })?;
        Ok((inv > 0.0).then_some(finite))
    }

    /// Takes a chunk's last contribution: `mean(base_weight, base, inv, sq)`
    /// computes the mean from what it joins (the accumulator, the owner's
    /// own values, or nothing) and 1 / the total weight (0 when there is
    /// none), measuring into `sq` when given; only once it succeeded is the
    /// sender counted.
    #[allow(clippy::too_many_arguments)]
    fn take_last<T>(
        &mut self,
        sender: usize,
        chunk: usize,
        weight: f32,
        codec: Codec,
        bytes: &[u8],
        own: &[f32],
        mean: impl FnOnce(f32, &[f32], f32, Option<&mut Squares>) -> Result<T, CodecError>,
    ) -> Result<(T, f32), ReduceError> {
        let (range, base, inv) = self.final_terms(sender, chunk, weight)?;
        let mut sq = self.squares();
        // (The accumulator is no contribution: not measured.)
        let base_is_own = matches!(base, Base::Own(_));
        if let Some(sq) = sq.as_mut() {
            sq.with_base = base_is_own;
        }
        let out = match base {
            Base::Acc => mean(1.0, &self.acc[range], inv, sq.as_mut())?,
            Base::Own(w_own) => mean(w_own, &own[range], inv, sq.as_mut())?,
            Base::Nothing => mean(0.0, &[], inv, sq.as_mut())?,
        };
        self.mark(sender, chunk, weight);
        self.note(sender, chunk, codec, bytes, own, sq, base_is_own, true);
        Ok((out, inv))
    }

    /// A chunk's last contribution checked: its elements, what the
    /// incoming values join, and 1 / the total weight (0 when there is none).
    fn final_terms(&self, sender: usize, chunk: usize, weight: f32) -> Result<(Range<usize>, Base, f32), ReduceError> {
        let range = self.admit(sender, chunk, weight)?;
        let total = self.weight[chunk] + weight as f64;
        let inv = if total > 0.0 { (1.0 / total) as f32 } else { 0.0 };
        let base = match (self.started[chunk], self.own) {
            (true, _) => Base::Acc,
            (false, Some((_, w_own))) => Base::Own(w_own),
            (false, None) => Base::Nothing,
        };
        Ok((range, base, inv))
    }

    /// Whether every sender has delivered every chunk.
    pub fn complete(&self) -> bool {
        self.seen.iter().all(|&s| s)
    }

    /// Senders that delivered chunk `chunk`.
    pub fn contributors(&self, chunk: usize) -> Vec<usize> {
        (0..self.senders).filter(|&s| self.seen[chunk * self.senders + s]).collect()
    }

    /// Whether `sender` delivered chunk `chunk`.
    pub fn has(&self, chunk: usize, sender: usize) -> bool {
        self.seen[chunk * self.senders + sender]
    }

    /// Elements of chunk `chunk`, relative to the span.
    pub fn chunk_range(&self, chunk: usize) -> Range<usize> {
        self.chunks[chunk].clone()
    }

    /// Writes the weighted mean of chunk `chunk` into `out` (the chunk's
    /// length) and returns true, or returns false when nobody contributed.
    pub fn mean_into(&mut self, chunk: usize, own: &[f32], out: &mut [f32]) -> bool {
        let w = self.weight[chunk];
        if w <= 0.0 {
            return false;
        }
        let range = self.chunks[chunk].clone();
        let inv = (1.0 / w) as f32;
        match (self.started[chunk], self.own) {
            (true, _) => out.iter_mut().zip(&self.acc[range]).for_each(|(o, &a)| *o = a * inv),
            (false, Some((o, w_own))) => {
                // Only the owner's own values: they enter the mean here.
                let x = &own[range];
                out.iter_mut().zip(x).for_each(|(o, &x)| *o = w_own * x * inv);
                if let Some((p, start, parts)) = self.measured.as_mut() {
                    let (proj, scale) = p.project_serial(x, *start + self.chunks[chunk].start);
                    parts[o].add(&Part { proj, scale, sum_squares: sum_squares_serial(x) });
                }
            }
            (false, None) => unreachable!("a chunk with weight was started or has an own contribution"),
        }
        true
    }

    /// The weighted mean of every chunk over the senders it heard from. A
    /// chunk with no weight at all takes `own`'s values (the owner keeps its
    /// own, as the reference keeps a span whose reduction failed).
    pub fn finish(mut self, own: &[f32]) -> Vec<f32> {
        let mut out = own.to_vec();
        for c in 0..self.chunks.len() {
            let range = self.chunks[c].clone();
            self.mean_into(c, own, &mut out[range]);
        }
        out
    }
}
