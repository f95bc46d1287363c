//! Random projections: the fingerprints that tie a contribution to the
//! work it claims to be.
//!
//! From a 32-byte challenge come `K` pseudo-random sign vectors r₀…r_{K−1}
//! over the whole flat gradient (rⱼ[e] = ±1, bit `e mod 64` of a hash of
//! (seedⱼ, e div 64)), never stored: any part of a vector can be projected
//! on its own, knowing only where it starts, and the parts' projections
//! add up to the whole vector's (linearity). So a miner reports ⟨g_b, rⱼ⟩
//! per batch, the validator checks replayed batches and sums the rest, and
//! in the all-reduce each span owner projects every sender's part, and
//! every member adds the parts up and compares the sum with what the
//! validator credited (see `audit`).
//!
//! Why signs: ⟨x, r⟩ with ±1 entries has standard deviation ‖x‖₂ over
//! the draw of r, so a tolerance is a fraction of ‖x‖₂ whatever the
//! vector's size, and a projection costs one XOR and one add per element.
//! Sums run in f32 within a 64-element block and in f64 across blocks, in
//! a fixed order: the same input gives the same bits everywhere.

use rayon::prelude::*;
use sha2::{Digest, Sha256};

/// Projections per vector.
pub const K: usize = 4;
/// ⟨x, rⱼ⟩ for j < K.
pub type Proj = [f64; K];

/// Elements per parallel job (a multiple of 64, so jobs split on block
/// boundaries and the order of the f64 sum never depends on the split).
const JOB: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Projector {
    seeds: [u64; K],
}

fn mix(mut z: u64) -> u64 {
    // SplitMix64's finaliser: every input bit flips about half the output bits.
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Projector {
    /// The projector of a challenge (SHA-256 separates it from any other use
    /// of the same bytes).
    pub fn new(challenge: &[u8; 32]) -> Projector {
        let d: [u8; 32] = Sha256::new().chain_update(b"dtrain-projection-v1").chain_update(challenge).finalize().into();
        let seeds = std::array::from_fn(|j| u64::from_le_bytes(d[8 * j..8 * j + 8].try_into().expect("8 bytes")));
        Projector { seeds }
    }

    /// The projector with these seeds (what an engine's `project` gets).
    pub fn from_seeds(seeds: [u64; K]) -> Projector {
        Projector { seeds }
    }

    pub fn seeds(&self) -> &[u64; K] {
        &self.seeds
    }

    /// The 64 signs of block `block` of vector `j` (bit set = −1).
    fn signs(&self, j: usize, block: u64) -> u64 {
        mix(self.seeds[j] ^ block.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// rⱼ[e], for tests and readers.
    pub fn sign(&self, j: usize, e: usize) -> f32 {
        if self.signs(j, (e / 64) as u64) >> (e % 64) & 1 == 1 { -1.0 } else { 1.0 }
    }

    /// ⟨x, rⱼ⟩ where `x[i]` is element `offset + i` of the vector.
    pub fn project(&self, x: &[f32], offset: usize) -> Proj {
        self.project_with_norm(x, offset).0
    }

    /// The projections and Σ x², in one pass over `x`.
    pub fn project_with_norm(&self, x: &[f32], offset: usize) -> (Proj, f64) {
        // The head up to the first block boundary, then whole jobs.
        let head = ((64 - offset % 64) % 64).min(x.len());
        let mut total = self.project_seq(&x[..head], offset);
        let rest = &x[head..];
        let parts: Vec<(Proj, f64)> = rest.par_chunks(JOB).enumerate().map(|(k, c)| self.project_seq(c, offset + head + k * JOB)).collect();
        for (p, sq) in parts {
            axpy(&mut total.0, 1.0, &p);
            total.1 += sq;
        }
        total
    }

    /// [`Projector::project_with_norm`] on this thread alone (for short
    /// runs, where a parallel split costs more than it saves).
    pub fn project_serial(&self, x: &[f32], offset: usize) -> (Proj, f64) {
        self.project_seq(x, offset)
    }

    /// Sequential projection of a run of blocks (the first may be partial).
    fn project_seq(&self, x: &[f32], offset: usize) -> (Proj, f64) {
        let (mut out, mut sq) = ([0f64; K], 0f64);
        let mut i = 0;
        while i < x.len() {
            let e = offset + i;
            let (block, bit) = ((e / 64) as u64, e % 64);
            let n = (64 - bit).min(x.len() - i);
            let run = &x[i..i + n];
            for (j, o) in out.iter_mut().enumerate() {
                let w = self.signs(j, block) >> bit;
                *o += if n == 64 { block_sum(run.try_into().expect("64"), w) } else { run_sum(run, w) } as f64;
            }
            sq += if n == 64 { block_sum_squares(run.try_into().expect("64")) } else { run.iter().map(|v| v * v).sum() } as f64;
            i += n;
        }
        (out, sq)
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

/// Σ x² in f64.
pub fn sum_squares(x: &[f32]) -> f64 {
    x.par_chunks(JOB).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect::<Vec<_>>().into_iter().sum()
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
        let (proj, sq) = p.project_with_norm(&x[5..], 5);
        assert_eq!(proj, p.project(&x[5..], 5));
        assert!((sq - sum_squares(&x[5..])).abs() < 1e-6 * sq, "{sq}");
        // Deterministic, and a different challenge gives different vectors.
        assert_eq!(p.project(&x, 0), whole);
        assert!(max_diff(&Projector::new(&[8; 32]).project(&x, 0), &whole) > 1.0);
        // About half the signs are negative, independently across vectors.
        let neg = (0..10_000).filter(|&e| p.sign(0, e) < 0.0).count();
        assert!((4_700..5_300).contains(&neg), "{neg}");
        let agree = (0..10_000).filter(|&e| p.sign(0, e) == p.sign(1, e)).count();
        assert!((4_700..5_300).contains(&agree), "{agree}");
    }

    #[test]
    fn a_projection_spreads_like_the_norm() {
        // Over many challenges ⟨x, r⟩ has mean 0 and standard deviation ‖x‖.
        let x: Vec<f32> = (0..5000).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let norm = sum_squares(&x).sqrt();
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
