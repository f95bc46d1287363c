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

    /// Adds `weight ·` the decoded chunk `chunk` from `sender`. Nothing is
    /// added unless the whole chunk is valid.
    pub fn add(&mut self, sender: usize, chunk: usize, weight: f32, codec: Codec, bytes: &[u8]) -> Result<(), ReduceError> {
        if sender >= self.senders {
            return Err(ReduceError::Sender(sender));
        }
        let range = self.chunks.get(chunk).ok_or(ReduceError::Chunk(chunk))?.clone();
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(ReduceError::Weight(weight));
        }
        let slot = chunk * self.senders + sender;
        if self.seen[slot] {
            return Err(ReduceError::Duplicate { sender, chunk });
        }
        codec.decode_add(bytes, weight, &mut self.acc[range])?;
        self.seen[slot] = true;
        self.weight[chunk] += weight as f64;
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

    /// The weighted mean of each chunk over the senders it heard from. A
    /// chunk with no weight at all takes `fallback`'s values (the owner's
    /// own, as the reference keeps a span whose reduction failed).
    pub fn finish(mut self, fallback: &[f32]) -> Vec<f32> {
        assert_eq!(fallback.len(), self.acc.len(), "fallback covers the span");
        for (range, &w) in self.chunks.iter().zip(&self.weight) {
            let out = &mut self.acc[range.clone()];
            if w > 0.0 {
                let inv = (1.0 / w) as f32;
                out.iter_mut().for_each(|x| *x *= inv);
            } else {
                out.copy_from_slice(&fallback[range.clone()]);
            }
        }
        self.acc
    }
}
