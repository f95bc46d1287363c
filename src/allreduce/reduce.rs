//! The owner's side of scatter-reduce for one span: chunks arrive from any
//! sender in any order (a slow sender never holds up the others' chunks)
//! and are added, weighted, into one f32 accumulator as they come. Each chunk
//! keeps its own total weight and the set of senders it has heard from, so
//! a sender that fails halfway simply leaves the chunks it never delivered
//! averaged over the senders that did.

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

pub struct SpanReducer {
    chunks: Vec<Range<usize>>,
    senders: usize,
    acc: Vec<f32>,
    /// Σ weights added into each chunk.
    weight: Vec<f64>,
    /// `seen[chunk * senders + sender]`.
    seen: Vec<bool>,
}

impl SpanReducer {
    /// A reducer for a span of `len` elements cut into chunks of `chunk_elems`.
    pub fn new(len: usize, chunk_elems: usize, senders: usize) -> SpanReducer {
        let chunks: Vec<_> = chunks(0..len, chunk_elems).collect();
        let n = chunks.len();
        SpanReducer { chunks, senders, acc: vec![0.0; len], weight: vec![0.0; n], seen: vec![false; n * senders] }
    }

    pub fn num_chunks(&self) -> usize {
        self.chunks.len()
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
    /// added unless the whole chunk is valid.
    pub fn add(&mut self, sender: usize, chunk: usize, weight: f32, codec: Codec, bytes: &[u8]) -> Result<(), ReduceError> {
        let range = self.admit(sender, chunk, weight)?;
        codec.decode_add(bytes, weight, &mut self.acc[range])?;
        self.mark(sender, chunk, weight);
        Ok(())
    }

    /// Adds `weight · values` as `sender`'s chunk `chunk` (the owner's own
    /// contribution, which never crosses the wire). Values must be finite.
    pub fn add_f32(&mut self, sender: usize, chunk: usize, weight: f32, values: &[f32]) -> Result<(), ReduceError> {
        let range = self.admit(sender, chunk, weight)?;
        if values.len() != range.len() {
            return Err(CodecError::Length { got: values.len(), want: range.len(), n: range.len() }.into());
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(CodecError::NonFinite(i).into());
        }
        self.acc[range].iter_mut().zip(values).for_each(|(a, &v)| *a += weight * v);
        self.mark(sender, chunk, weight);
        Ok(())
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

    /// Divides chunk `chunk` by its total weight and returns the mean, or
    /// `None` when nobody contributed to it. Call once per chunk.
    pub fn average_chunk(&mut self, chunk: usize) -> Option<&[f32]> {
        let w = self.weight[chunk];
        let out = &mut self.acc[self.chunks[chunk].clone()];
        if w > 0.0 {
            let inv = (1.0 / w) as f32;
            out.iter_mut().for_each(|x| *x *= inv);
            Some(out)
        } else {
            None
        }
    }

    /// The weighted mean of each chunk over the senders it heard from. A
    /// chunk with no weight at all takes `fallback`'s values (the owner's
    /// own, as the reference keeps a span whose reduction failed).
    pub fn finish(mut self, fallback: &[f32]) -> Vec<f32> {
        assert_eq!(fallback.len(), self.acc.len(), "fallback covers the span");
        for c in 0..self.chunks.len() {
            if self.average_chunk(c).is_none() {
                let range = self.chunks[c].clone();
                self.acc[range.clone()].copy_from_slice(&fallback[range]);
            }
        }
        self.acc
    }
}
