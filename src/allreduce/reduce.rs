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

use super::codec::{Codec, CodecError};
use super::plan::chunks;
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
        SpanReducer { chunks, senders, acc: buffer, started: vec![false; n], own: None, weight: vec![0.0; n], seen: vec![false; n * senders] }
    }

    pub fn into_buffer(self) -> Vec<f32> {
        self.acc
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
        let acc = &mut self.acc[range.clone()];
        match (self.started[chunk], self.own) {
            (true, _) => codec.decode_add(bytes, weight, acc)?,
            (false, None) => codec.decode_scaled(bytes, weight, acc)?,
            (false, Some((_, w_own))) => codec.decode_blend(bytes, weight, w_own, &own[range], acc)?,
        }
        self.started[chunk] = true;
        self.mark(sender, chunk, weight);
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
        let ((), inv) =
            self.take_last(sender, chunk, weight, own, |base_weight, base, inv| codec.decode_mean(bytes, weight, base_weight, base, inv, out))?;
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
        let (finite, inv) = self.take_last(sender, chunk, weight, own, |base_weight, base, inv| {
            codec.decode_mean_encode(bytes, n, weight, base_weight, base, inv, enc)
        })?;
        Ok((inv > 0.0).then_some(finite))
    }

    /// Takes a chunk's last contribution: `mean(base_weight, base, inv)`
    /// computes the mean from what it joins (the accumulator, the owner's
    /// own values, or nothing) and 1 / the total weight (0 when there is
    /// none); only once it succeeded is the sender counted.
    fn take_last<T>(
        &mut self,
        sender: usize,
        chunk: usize,
        weight: f32,
        own: &[f32],
        mean: impl FnOnce(f32, &[f32], f32) -> Result<T, CodecError>,
    ) -> Result<(T, f32), ReduceError> {
        let (range, base, inv) = self.final_terms(sender, chunk, weight)?;
        let out = match base {
            Base::Acc => mean(1.0, &self.acc[range], inv)?,
            Base::Own(w_own) => mean(w_own, &own[range], inv)?,
            Base::Nothing => mean(0.0, &[], inv)?,
        };
        self.mark(sender, chunk, weight);
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
    pub fn mean_into(&self, chunk: usize, own: &[f32], out: &mut [f32]) -> bool {
        let w = self.weight[chunk];
        if w <= 0.0 {
            return false;
        }
        let range = self.chunks[chunk].clone();
        let inv = (1.0 / w) as f32;
        match (self.started[chunk], self.own) {
            (true, _) => out.iter_mut().zip(&self.acc[range]).for_each(|(o, &a)| *o = a * inv),
            (false, Some((_, w_own))) => out.iter_mut().zip(&own[range]).for_each(|(o, &x)| *o = w_own * x * inv),
            (false, None) => unreachable!("a chunk with weight was started or has an own contribution"),
        }
        true
    }

    /// The weighted mean of every chunk over the senders it heard from. A
    /// chunk with no weight at all takes `own`'s values (the owner keeps its
    /// own, as the reference keeps a span whose reduction failed).
    pub fn finish(self, own: &[f32]) -> Vec<f32> {
        let mut out = own.to_vec();
        for (c, range) in self.chunks.iter().enumerate() {
            self.mean_into(c, own, &mut out[range.clone()]);
        }
        out
    }
}
