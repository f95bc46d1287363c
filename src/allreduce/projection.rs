//! Random projections: the fingerprints that tie a contribution to the
//! work it claims to be.
//!
//! From a 32-byte challenge come `K` pseudo-random sparse sign vectors
//! r₀…r_{K−1} over the whole flat gradient, never stored. The vector is cut
//! into groups of [`GROUP`] elements; in each group one 64-element block,
//! picked by a hash of (pick seed, group), is *sampled*: there rⱼ[e] = ±1,
//! bit `e mod 64` of a hash of (seedⱼ, e div 64); everywhere else rⱼ[e] = 0.
//! Any part of a vector can be projected on its own, knowing only where it
//! starts, and the parts' projections add up to the whole vector's
//! (linearity). So a miner reports ⟨g_b, rⱼ⟩ per batch, the validator
//! checks replayed batches and sums the rest, and in the all-reduce each
//! span owner projects every sender's part, and every member adds the
//! parts up and compares the sum with what the validator credited (see
//! `audit`).
//!
//! Why signs: ⟨x, r⟩ with ±1 entries has standard deviation ‖x_S‖₂ (x on
//! the sampled elements S) over the draw of r, so a tolerance is a fraction
//! of ‖x_S‖₂ whatever the vector's size, and a projection costs one XOR and
//! one add per sampled element.
//!
//! Why sampled: the all-reduce projects about three vector-lengths per
//! member per round; dense, that cost twice the round itself (docs/
//! BENCHMARKS.md). One block in 64 still samples every tensor of more than
//! 8192 values (every weight matrix of a GPT-2: thousands of blocks each;
//! a scaled, flipped, noisy, stale or other-rows gradient differs on every
//! block), touches 1/64 of the memory, and loses nothing against an
//! attacker who knows the challenge: such an attacker can add a vector
//! orthogonal to dense signs as easily as one that is zero on the sampled
//! blocks. What bounds that attack is the *dense* norm every owner
//! measures of every part (`audit::NORM_BOUND`). Measured in
//! docs/BENCHMARKS.md: 1 in 16 cost 15–25% of a 64M fp16 round on loopback,
//! 1 in 64 cost 3–9%.
//!
//! Sums run in f32 within a 64-element block and in f64 across blocks, in
//! a fixed order: the same input gives the same bits everywhere.

use crate::engine::cpu::simd::multiversion;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::ops::Range;

/// Projections per vector.
pub const K: usize = 4;
/// ⟨x, rⱼ⟩ for j < K.
pub type Proj = [f64; K];
/// 64-element blocks per group, one of which is sampled (a power of two;
/// kernels/projection.cu has the same).
pub const GROUP_BLOCKS: usize = 64;
/// Elements per group.
pub const GROUP: usize = 64 * GROUP_BLOCKS;

/// Elements per parallel job (a multiple of `GROUP`, so jobs split on
/// group boundaries and the order of the f64 sum never depends on the
/// split; large, since a job touches only 1/64 of its elements).
const JOB: usize = 1 << 22;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projector {
    seeds: [u64; K],
    /// Seeds which block of each group is sampled.
    pick: u64,
}

fn mix(mut z: u64) -> u64 {
    // SplitMix64's finaliser: every input bit flips about half the output bits.
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The golden-ratio multiplier that spreads consecutive indices.
const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

impl Projector {
    /// The projector of a challenge (SHA-256 separates it from any other use
    /// of the same bytes).
    pub fn new(challenge: &[u8; 32]) -> Projector {
        let d: [u8; 32] = Sha256::new().chain_update(b"dtrain-projection-v2").chain_update(challenge).finalize().into();
        let seeds = std::array::from_fn(|j| u64::from_le_bytes(d[8 * j..8 * j + 8].try_into().expect("8 bytes")));
        let p: [u8; 32] = Sha256::new().chain_update(b"dtrain-projection-pick-v2").chain_update(challenge).finalize().into();
        Projector { seeds, pick: u64::from_le_bytes(p[..8].try_into().expect("8 bytes")) }
    }

    pub fn seeds(&self) -> &[u64; K] {
        &self.seeds
    }

    pub fn pick(&self) -> u64 {
        self.pick
    }

    /// The 64 signs of block `block` of vector `j` (bit set = −1).
    fn signs(&self, j: usize, block: u64) -> u64 {
        mix(self.seeds[j] ^ block.wrapping_mul(PHI))
    }

    /// The sampled block of group `group` (a block index of the vector).
    pub fn sampled_block(&self, group: u64) -> u64 {
        group * GROUP_BLOCKS as u64 + (mix(self.pick ^ group.wrapping_mul(PHI)) >> (64 - GROUP_BLOCKS.trailing_zeros()))
    }

    /// rⱼ[e], for tests and readers: ±1 on sampled blocks, else 0.
    pub fn sign(&self, j: usize, e: usize) -> f32 {
        let block = (e / 64) as u64;
        if self.sampled_block(block / GROUP_BLOCKS as u64) != block {
            0.0
        } else if self.signs(j, block) >> (e % 64) & 1 == 1 {
            -1.0
        } else {
            1.0
        }
    }

    /// The sampled runs of the `len` elements from element `offset`, as
    /// ranges relative to `offset` (each within one block), in order.
    pub fn sampled_runs(&self, offset: usize, len: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let end = offset + len;
        let groups = if len == 0 { 0..0 } else { (offset / GROUP) as u64..end.div_ceil(GROUP) as u64 };
        groups.filter_map(move |g| {
            let b = self.sampled_block(g) as usize * 64;
            let (s, e) = (b.max(offset), (b + 64).min(end));
            (s < e).then(|| s - offset..e - offset)
        })
    }

    /// ⟨x, rⱼ⟩ where `x[i]` is element `offset + i` of the vector.
    pub fn project(&self, x: &[f32], offset: usize) -> Proj {
        self.project_with_scale(x, offset).0
    }

    /// The projections and Σ x² over the sampled elements (the square of
    /// the projections' spread, the scale their tolerances are set by), in
    /// one pass over the sampled blocks of `x`.
    pub fn project_with_scale(&self, x: &[f32], offset: usize) -> (Proj, f64) {
        // The head up to the first group boundary, then whole jobs.
        let head = ((GROUP - offset % GROUP) % GROUP).min(x.len());
        let mut total = self.project_seq(&x[..head], offset);
        let rest = &x[head..];
        let parts: Vec<(Proj, f64)> = rest.par_chunks(JOB).enumerate().map(|(k, c)| self.project_seq(c, offset + head + k * JOB)).collect();
        for (p, sq) in parts {
            axpy(&mut total.0, 1.0, &p);
            total.1 += sq;
        }
        total
    }

    /// [`Projector::project_with_scale`] on this thread alone (for short
    /// runs, where a parallel split costs more than it saves).
    pub fn project_serial(&self, x: &[f32], offset: usize) -> (Proj, f64) {
        self.project_seq(x, offset)
    }

    /// Sequential projection: the sampled runs in order.
    fn project_seq(&self, x: &[f32], offset: usize) -> (Proj, f64) {
        let (mut out, mut sq) = ([0f64; K], 0f64);
        for r in self.sampled_runs(offset, x.len()) {
            let e = offset + r.start;
            let (p, s) = self.project_run(&x[r], e);
            for (o, p) in out.iter_mut().zip(p) {
                *o += p as f64;
            }
            sq += s as f64;
        }
        (out, sq)
    }

    /// The projections (in f32) and Σx² of a run of values that lies
    /// within one sampled block, starting at element `e` (one of the runs
    /// of [`Projector::sampled_runs`]).
    #[inline]
    pub fn project_run(&self, run: &[f32], e: usize) -> ([f32; K], f32) {
        let (block, bit) = ((e / 64) as u64, e % 64);
        let w: [u64; K] = std::array::from_fn(|j| self.signs(j, block) >> bit);
        block_projection(run, &w)
    }
}

multiversion! {
    /// The K signed sums and the sum of squares of a run of at most 64
    /// values, bit t of `w[j]` negating x[t] in vector j (the lanes of
    /// `block_sum` vectorise with whatever the CPU has; the order of every
    /// addition is fixed, so the bits do not depend on it).
    fn block_projection(run: &[f32], w: &[u64; K]) -> ([f32; K], f32) {
        match <&[f32; 64]>::try_from(run) {
            Ok(b) => (std::array::from_fn(|j| block_sum(b, w[j])), block_sum_squares(b)),
            Err(_) => (std::array::from_fn(|j| run_sum(run, w[j])), run.iter().map(|v| v * v).sum()),
        }
    }
}

/// Σ x² over a whole block, in 16 fixed lanes.
#[inline]
fn block_sum_squares(x: &[f32; 64]) -> f32 {
    let mut lanes = [0f32; 16];
    for c in 0..4 {
        for (l, lane) in lanes.iter_mut().enumerate() {
            let v = x[16 * c + l];
            *lane += v * v;
        }
    }
    lanes.iter().sum()
}

/// Σ ±x over a partial block, bit t of `w` negating x[t].
fn run_sum(x: &[f32], w: u64) -> f32 {
    x.iter().enumerate().map(|(t, &v)| f32::from_bits(v.to_bits() ^ (((w >> t) as u32 & 1) << 31))).sum()
}

/// Sign masks of a byte of signs: lane l of entry b is the f32 sign bit
/// when bit l of b is set.
const fn sign_masks() -> [[u32; 8]; 256] {
    let mut t = [[0u32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut l = 0;
        while l < 8 {
            if (b >> l) & 1 == 1 {
                t[b][l] = 1 << 31;
            }
            l += 1;
        }
        b += 1;
    }
    t
}

static SIGN_MASKS: [[u32; 8]; 256] = sign_masks();

/// Σ ±x over a whole block in 8 fixed lanes: the signs come from a table a
/// byte at a time, so the XOR and the add run in vector registers (about
/// ten times the bit-by-bit loop); the order is fixed, the result the same
/// everywhere.
#[inline]
fn block_sum(x: &[f32; 64], w: u64) -> f32 {
    let mut lanes = [0f32; 8];
    for b in 0..8 {
        let m = &SIGN_MASKS[(w >> (8 * b) & 0xff) as usize];
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane += f32::from_bits(x[8 * b + l].to_bits() ^ m[l]);
        }
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6])) + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
}

/// Σ x² in f64 (dense), in parallel.
pub fn sum_squares(x: &[f32]) -> f64 {
    x.par_chunks(1 << 16).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect::<Vec<_>>().into_iter().sum()
}

/// Σ x² (dense) on this thread, in runs of [`SQUARES_RUN`] values from
/// the start of `x`: the same bits for the same values, wherever they lie
/// in memory and whatever the CPU's vectors (what the all-reduce measures
/// of every part it decodes, a run at a time as it decodes them).
pub fn sum_squares_serial(x: &[f32]) -> f64 {
    x.chunks(SQUARES_RUN).map(run_sum_squares).sum()
}

/// Values per run of [`sum_squares_serial`] (the codecs' decoding step).
pub const SQUARES_RUN: usize = 1024;

multiversion! {
    /// Σ x² of at most `SQUARES_RUN` values: 64 f32 lanes (value i in lane
    /// i mod 64, so four or eight vector accumulators run side by side),
    /// added up pairwise at the end.
    fn run_sum_squares(x: &[f32]) -> f64 {
        let mut lanes = [0f32; 64];
        let mut blocks = x.chunks_exact(64);
        for b in &mut blocks {
            for (lane, &v) in lanes.iter_mut().zip(b) {
                *lane += v * v;
            }
        }
        for (lane, &v) in lanes.iter_mut().zip(blocks.remainder()) {
            *lane += v * v;
        }
        fold_lanes(&mut lanes)
    }
}

/// Σ x·y (dense) on this thread, in runs of [`SQUARES_RUN`] values, as
/// [`sum_squares_serial`] sums: what an owner and a sender each compute of
/// a part against the average it entered (see `audit::verdict`).
pub fn dot_serial(x: &[f32], y: &[f32]) -> f64 {
    assert_eq!(x.len(), y.len(), "dot of unequal lengths");
    x.chunks(SQUARES_RUN).zip(y.chunks(SQUARES_RUN)).map(|(x, y)| run_dot(x, y)).sum()
}

multiversion! {
    /// Σ x·y of at most `SQUARES_RUN` values, in 64 lanes like
    /// `run_sum_squares`.
    fn run_dot(x: &[f32], y: &[f32]) -> f64 {
        let mut lanes = [0f32; 64];
        let (mut xb, mut yb) = (x.chunks_exact(64), y.chunks_exact(64));
        for (a, b) in (&mut xb).zip(&mut yb) {
            for ((lane, &u), &v) in lanes.iter_mut().zip(a).zip(b) {
                *lane += u * v;
            }
        }
        for ((lane, &u), &v) in lanes.iter_mut().zip(xb.remainder()).zip(yb.remainder()) {
            *lane += u * v;
        }
        fold_lanes(&mut lanes)
    }
}

/// 64 lanes added up pairwise, halves onto halves (constant widths, so the
/// first steps run as vector adds).
#[inline(always)]
pub fn fold_lanes(lanes: &mut [f32; 64]) -> f64 {
    macro_rules! half {
        ($w:literal) => {
            for l in 0..$w {
                lanes[l] += lanes[l + $w];
            }
        };
    }
    half!(32);
    half!(16);
    half!(8);
    half!(4);
    half!(2);
    half!(1);
    lanes[0] as f64
}

/// `a + s·b`, element-wise.
pub fn axpy(a: &mut Proj, s: f64, b: &Proj) {
    for j in 0..K {
        a[j] += s * b[j];
    }
}

/// The largest |aⱼ − bⱼ|.
pub fn max_diff(a: &Proj, b: &Proj) -> f64 {
    (0..K).map(|j| (a[j] - b[j]).abs()).fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(p: &Projector, x: &[f32], offset: usize) -> Proj {
        std::array::from_fn(|j| x.iter().enumerate().map(|(i, &v)| v as f64 * p.sign(j, offset + i) as f64).sum())
    }

    #[test]
    fn parts_add_up_to_the_whole_and_match_the_naive_sum() {
        let p = Projector::new(&[7; 32]);
        let mut rng = crate::rng::Rng::new(1);
        let x: Vec<f32> = (0..300_001).map(|_| rng.normal()).collect();
        let whole = p.project(&x, 0);
        let want = naive(&p, &x, 0);
        assert!(max_diff(&whole, &want) < 1e-3, "{whole:?} vs {want:?}");
        for cut in [1usize, 63, 64, 65, 131_071, 200_000] {
            let mut sum = p.project(&x[..cut], 0);
            axpy(&mut sum, 1.0, &p.project(&x[cut..], cut));
            assert!(max_diff(&sum, &whole) < 1e-3, "cut {cut}");
        }
        // The norm comes with it.
        let (proj, sq) = p.project_with_scale(&x[5..], 5);
        assert_eq!(proj, p.project(&x[5..], 5));
        let sampled: f64 = (5..x.len()).filter(|&e| p.sign(0, e) != 0.0).map(|e| (x[e] as f64).powi(2)).sum();
        assert!((sq - sampled).abs() < 1e-6 * sq, "{sq} vs {sampled}");
        // Deterministic, and a different challenge gives different vectors.
        assert_eq!(p.project(&x, 0), whole);
        assert!(max_diff(&Projector::new(&[8; 32]).project(&x, 0), &whole) > 1.0);
        // One block in GROUP_BLOCKS is sampled; there about half the signs
        // are negative, independently across vectors.
        let sampled: Vec<usize> = (0..65_536).filter(|&e| p.sign(0, e) != 0.0).collect();
        assert_eq!(sampled.len(), 65_536 / GROUP_BLOCKS);
        assert!((0..65_536).all(|e| (p.sign(0, e) == 0.0) == (p.sign(3, e) == 0.0)), "every vector samples the same blocks");
        let half = sampled.len() / 2..sampled.len() / 2;
        let around_half = half.start * 9 / 10..half.end * 11 / 10;
        let neg = sampled.iter().filter(|&&e| p.sign(0, e) < 0.0).count();
        assert!(around_half.contains(&neg), "{neg}");
        let agree = sampled.iter().filter(|&&e| p.sign(0, e) == p.sign(1, e)).count();
        assert!(around_half.contains(&agree), "{agree}");
    }

    #[test]
    fn one_block_per_group_is_sampled_uniformly() {
        let p = Projector::new(&[11; 32]);
        let mut at = [0usize; GROUP_BLOCKS];
        let groups = 500 * GROUP_BLOCKS as u64;
        for g in 0..groups {
            let b = p.sampled_block(g);
            assert_eq!(b / GROUP_BLOCKS as u64, g, "the sampled block lies in its group");
            at[(b % GROUP_BLOCKS as u64) as usize] += 1;
        }
        assert!(at.iter().all(|&c| (350..650).contains(&c)), "{at:?}");
        // The runs of a part are the sampled blocks cut to it, and the
        // scale is Σx² over exactly them.
        let x: Vec<f32> = (0..10_000).map(|i| (i % 13) as f32 - 6.0).collect();
        let runs: Vec<_> = p.sampled_runs(700, x.len()).collect();
        let want: Vec<usize> = (0..x.len()).filter(|&i| p.sign(0, 700 + i) != 0.0).collect();
        assert_eq!(runs.iter().flat_map(|r| r.clone()).collect::<Vec<_>>(), want);
        let scale: f64 = want.iter().map(|&i| (x[i] * x[i]) as f64).sum();
        assert_eq!(p.project_with_scale(&x, 700).1, scale);
        assert_eq!(sum_squares_serial(&x), sum_squares(&x));
        // Products, against a naive f64 sum, at lengths off the lanes.
        let y: Vec<f32> = (0..10_000).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        for len in [0usize, 1, 63, 64, 1023, 1025, 10_000] {
            let want: f64 = x[..len].iter().zip(&y[..len]).map(|(&a, &b)| a as f64 * b as f64).sum();
            assert_eq!(dot_serial(&x[..len], &y[..len]), want, "{len}");
        }
    }

    #[test]
    fn a_projection_spreads_like_the_norm() {
        // Over many challenges ⟨x, r⟩ has mean 0 and variance E‖x_S‖² =
        // ‖x‖² / GROUP_BLOCKS.
        let x: Vec<f32> = (0..8 * GROUP).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let norm = (sum_squares(&x) / GROUP_BLOCKS as f64).sqrt();
        let vals: Vec<f64> = (0..400u32)
            .flat_map(|c| {
                let mut ch = [0u8; 32];
                ch[..4].copy_from_slice(&c.to_le_bytes());
                Projector::new(&ch).project(&x, 0)
            })
            .collect();
        let var = vals.iter().map(|v| v * v).sum::<f64>() / vals.len() as f64;
        assert!((var.sqrt() / norm - 1.0).abs() < 0.1, "std {} vs norm {norm}", var.sqrt());
    }
}
