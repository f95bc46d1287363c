//! The all-reduce wire codecs keep their documented error bounds.

use dtrain::allreduce::codec::{Codec, CodecError, F16_MAX};
use dtrain::rng::Rng;

/// Values over a wide dynamic range, both signs, some exact zeros.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| if i % 97 == 0 { 0.0 } else { rng.normal() * 10f32.powi(rng.below(12) as i32 - 8) }).collect()
}

fn round_trip(codec: Codec, x: &[f32]) -> Vec<f32> {
    let mut bytes = vec![0u8; codec.encoded_len(x.len())];
    codec.encode(x, &mut bytes);
    let mut y = vec![0f32; x.len()];
    codec.decode(&bytes, &mut y).unwrap();
    y
}

#[test]
fn f32_is_exact() {
    let x = values(5000, 1);
    assert_eq!(round_trip(Codec::F32, &x), x);
}

#[test]
fn f16_meets_its_bound_and_saturates() {
    let mut x = values(5003, 2);
    x.extend([1e6, -1e6, F16_MAX, 70000.0, 1e-30, -3e-8]);
    let y = round_trip(Codec::F16, &x);
    for (&a, &b) in x.iter().zip(&y) {
        assert!(b.is_finite(), "{a} became {b}");
        let a_sat = a.clamp(-F16_MAX, F16_MAX);
        let bound = if a_sat.abs() >= 2f32.powi(-14) { a_sat.abs() * 2f32.powi(-11) } else { 2f32.powi(-25) };
        assert!((a_sat - b).abs() <= bound, "{a} -> {b} (bound {bound})");
    }
    assert_eq!(y[y.len() - 6], F16_MAX);
    assert_eq!(y[y.len() - 5], -F16_MAX);
}

#[test]
fn bf16_meets_its_bound() {
    let x = values(4099, 3);
    let y = round_trip(Codec::Bf16, &x);
    for (&a, &b) in x.iter().zip(&y) {
        assert!((a - b).abs() <= a.abs() * 2f32.powi(-8), "{a} -> {b}");
    }
}

#[test]
fn int8_meets_its_blockwise_bound() {
    for block in [1, 7, 64, 4096] {
        let codec = Codec::Int8 { block };
        let x = values(10_001, 4); // not a multiple of any block but 1
        assert_eq!(codec.encoded_len(x.len()), x.len() + 4 * x.len().div_ceil(block));
        let y = round_trip(codec, &x);
        for (xs, ys) in x.chunks(block).zip(y.chunks(block)) {
            let bound = xs.iter().fold(0f32, |m, v| m.max(v.abs())) / 254.0 * 1.0001;
            for (&a, &b) in xs.iter().zip(ys) {
                assert!((a - b).abs() <= bound, "block {block}: {a} -> {b} (bound {bound})");
            }
        }
    }
    // An all-zero block stays zero.
    assert_eq!(round_trip(Codec::Int8 { block: 4 }, &[0.0; 8]), vec![0.0; 8]);
}

#[test]
fn decode_add_accumulates_weighted_values() {
    let x = values(3000, 5);
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 256 }] {
        let mut bytes = vec![0u8; codec.encoded_len(x.len())];
        codec.encode(&x, &mut bytes);
        let decoded = round_trip(codec, &x);
        let mut acc = vec![1.0f32; x.len()];
        codec.decode_add(&bytes, 3.0, &mut acc, None).unwrap();
        for (a, d) in acc.iter().zip(&decoded) {
            assert_eq!(*a, 1.0 + 3.0 * d, "{codec:?}");
        }
    }
}

#[test]
fn bytes_from_a_peer_are_checked() {
    let mut out = vec![0f32; 10];
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 4 }] {
        let want = codec.encoded_len(10);
        for len in [0, want - 1, want + 1] {
            assert_eq!(codec.decode(&vec![0u8; len], &mut out), Err(CodecError::Length { got: len, want, n: 10 }), "{codec:?}");
        }
    }
    // An int8 block whose scale is NaN, inf, negative or so large that 127×
    // it overflows is refused.
    let codec = Codec::Int8 { block: 4 };
    for bad in [f32::NAN, f32::INFINITY, -1.0, f32::MAX / 100.0] {
        let mut bytes = vec![0u8; codec.encoded_len(10)];
        bytes[4..8].copy_from_slice(&bad.to_le_bytes());
        assert_eq!(codec.decode(&bytes, &mut out), Err(CodecError::Scale(1)), "{bad}");
    }
}

#[test]
fn non_finite_values_from_a_peer_are_refused_before_anything_is_added() {
    let x = values(100, 6);
    for (codec, width, bad_bits) in [
        (Codec::F32, 4, f32::NAN.to_bits().to_le_bytes().to_vec()),
        (Codec::F32, 4, f32::INFINITY.to_bits().to_le_bytes().to_vec()),
        (Codec::F16, 2, 0x7c00u16.to_le_bytes().to_vec()),
        (Codec::F16, 2, 0xfe00u16.to_le_bytes().to_vec()),
        (Codec::Bf16, 2, 0x7f80u16.to_le_bytes().to_vec()),
        (Codec::Bf16, 2, 0xffc1u16.to_le_bytes().to_vec()),
    ] {
        let mut bytes = vec![0u8; codec.encoded_len(x.len())];
        codec.encode(&x, &mut bytes);
        bytes[57 * width..58 * width].copy_from_slice(&bad_bits);
        let mut acc = vec![2.0f32; x.len()];
        assert_eq!(codec.decode_add(&bytes, 1.0, &mut acc, None), Err(CodecError::NonFinite(57)), "{codec:?}");
        assert!(acc.iter().all(|&a| a == 2.0), "{codec:?}: a rejected chunk was partly added");
    }
}

#[test]
fn encoding_names_the_first_non_finite_input() {
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 256 }, Codec::Int8 { block: 7 }] {
        let x = values(3001, 6);
        let mut bytes = vec![0u8; codec.encoded_len(x.len())];
        assert_eq!(codec.encode_checked(&x, &mut bytes), None, "{codec}");
        let mut plain = vec![0u8; bytes.len()];
        codec.encode(&x, &mut plain);
        assert_eq!(bytes, plain, "{codec}: the checked encoding is the plain one");
        for at in [0, 15, 16, 1000, 3000] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut y = x.clone();
                y[at] = bad;
                let second = (at + 7) % y.len();
                y[second] = bad; // a second one, after or before it
                let first = y.iter().position(|v| !v.is_finite());
                assert_eq!(codec.encode_checked(&y, &mut bytes), first, "{codec}: {bad} at {at}");
            }
        }
    }
}

#[test]
fn streaming_decoding_writes_the_same_values() {
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 256 }, Codec::Int8 { block: 7 }] {
        let x = values(4099, 7);
        let mut bytes = vec![0u8; codec.encoded_len(x.len())];
        codec.encode(&x, &mut bytes);
        let mut plain = vec![0f32; x.len()];
        codec.decode(&bytes, &mut plain).unwrap();
        // Destinations at every alignment within a vector register.
        let mut big = vec![f32::NAN; x.len() + 8];
        for skip in 0..8 {
            let dst = &mut big[skip..skip + x.len()];
            codec.decode_into(&bytes, dst, true).unwrap();
            assert!(dst.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "{codec} at offset {skip}");
        }
        let mut bad = bytes.clone();
        if let Codec::F32 | Codec::F16 | Codec::Bf16 = codec {
            // A NaN as the first value.
            let nan: &[u8] = if codec == Codec::F32 { &[0xff, 0xff, 0xff, 0x7f] } else { &[0xff, 0x7f] };
            bad[..nan.len()].copy_from_slice(nan);
            let mut dst = vec![1.5f32; x.len()];
            assert!(codec.decode_into(&bad, &mut dst, true).is_err(), "{codec}");
            assert!(dst.iter().all(|&v| v == 1.5), "{codec}: untouched on error");
        }
    }
}

#[test]
fn the_fused_mean_encodes_as_the_mean_then_the_encoder() {
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 256 }, Codec::Int8 { block: 7 }, Codec::Int8 { block: 1024 }] {
        assert!(codec.encodes_mean_in_runs(), "{codec}");
        let (x, base) = (values(5003, 8), values(5003, 9));
        let mut bytes = vec![0u8; codec.encoded_len(x.len())];
        codec.encode(&x, &mut bytes);
        for (bw, base) in [(0.0, &[][..]), (2.5, &base[..])] {
            let mut mean = vec![0f32; x.len()];
            codec.decode_mean(&bytes, 1.5, bw, base, 0.25, &mut mean, None).unwrap();
            let mut want = vec![0u8; bytes.len()];
            codec.encode(&mean, &mut want);
            let mut got = vec![0u8; bytes.len()];
            assert_eq!(codec.decode_mean_encode(&bytes, x.len(), 1.5, bw, base, 0.25, &mut got, None), Ok(true), "{codec}");
            assert_eq!(got, want, "{codec} with base weight {bw}");
        }
    }
    assert!(!Codec::Int8 { block: 4096 }.encodes_mean_in_runs(), "a block longer than a run needs the whole block");
}

/// What an audited round measures while it decodes: Σx² of the decoded
/// values and of the base folded in, the projections of the decoded chunk
/// from its sampled blocks alone, and the sender's Σx² of what it encodes —
/// each against a naive computation over the decoded values.
#[test]
fn audit_measurements_match_the_decoded_values() {
    use dtrain::allreduce::codec::Squares;
    use dtrain::allreduce::projection::{Projector, max_diff, sum_squares_serial};
    let sq = |v: &[f32]| v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
    let p = Projector::new(&[21; 32]);
    for codec in [
        Codec::F32,
        Codec::F16,
        Codec::Bf16,
        Codec::Int8 { block: 256 },
        Codec::Int8 { block: 7 },
        Codec::TopK { block: 1000, k: 40, wide: false },
        Codec::TopK { block: 64, k: 9, wide: true },
    ] {
        let (x, base) = (values(5003, 10), values(5003, 11));
        let mut bytes = vec![0u8; codec.encoded_len(x.len())];
        let (bad, sent) = codec.encode_checked_squares(&x, &mut bytes);
        assert_eq!(bad, None);
        let mut dec = vec![0f32; x.len()];
        codec.decode(&bytes, &mut dec).unwrap();
        let want = sq(&dec);
        // The sender measures what the encoding holds, to the codec's error.
        assert!((sent.sqrt() - want.sqrt()).abs() <= 1e-3 * want.sqrt(), "{codec}: sent {sent} decoded {want}");
        assert!((codec.sum_squares_decoded(&bytes, x.len()) - want).abs() <= 1e-5 * want, "{codec}");
        // A part's product with an average, from the bytes: the decoded
        // values' naive dot (f64), to the f32 lanes' rounding; a wrong
        // length gives 0.
        let naive_dot: f64 = dec.iter().zip(&base).map(|(&a, &b)| a as f64 * b as f64).sum();
        let abs_dot: f64 = dec.iter().zip(&base).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
        let dot = codec.dot_decoded(&bytes, &base);
        assert!((dot - naive_dot).abs() <= 1e-6 * abs_dot, "{codec}: {dot} vs {naive_dot}");
        assert_eq!(codec.dot_decoded(&bytes[1..], &base), 0.0, "{codec}");
        // Two encodings against each other (a sender's part as it sent it,
        // an average), and a decode that measures the values it replaces.
        for other in [Codec::F16, codec] {
            let mut other_bytes = vec![0u8; other.encoded_len(x.len())];
            assert_eq!(other.encode_checked(&base, &mut other_bytes), None);
            let mut other_dec = vec![0f32; x.len()];
            other.decode(&other_bytes, &mut other_dec).unwrap();
            let want: f64 = dec.iter().zip(&other_dec).map(|(&a, &b)| a as f64 * b as f64).sum();
            let size: f64 = dec.iter().zip(&other_dec).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            let got = codec.dot_pair(&bytes, other, &other_bytes, x.len());
            assert!((got - want).abs() <= 1e-6 * size, "{codec} · {other}: {got} vs {want}");
        }
        let mut dst = base.clone();
        let replaced = codec.decode_into_dot(&bytes, &mut dst).unwrap();
        assert_eq!(dst, dec, "{codec}: decoded as decode does");
        assert!((replaced - naive_dot).abs() <= 1e-6 * abs_dot, "{codec}: {replaced} vs {naive_dot}");
        // Projections from the sampled blocks equal the projection of the
        // whole decoded chunk, at any offset.
        for offset in [0usize, 37, 1000] {
            let (a, sa) = codec.project_decoded(&bytes, x.len(), &p, offset);
            let (b, sb) = p.project_with_scale(&dec, offset);
            assert!(max_diff(&a, &b) <= 1e-9 * sb.sqrt() && (sa - sb).abs() <= 1e-9 * sb, "{codec} at {offset}");
        }
        // The reducer's decodes measure the decoded values and the base —
        // with the bits of the plain sums, whichever path measured them —
        // and compute exactly what they compute unmeasured.
        // (int8 decodes a scale block at a time: its base sums run per block.)
        let base_runs = |b: &[f32]| match codec {
            Codec::Int8 { block } => b.chunks(block).map(sum_squares_serial).sum::<f64>(),
            _ => sum_squares_serial(b),
        };
        let (want_bits, base_bits) = (codec.sum_squares_decoded(&bytes, x.len()).to_bits(), base_runs(&base).to_bits());
        let mut acc = vec![0f32; x.len()];
        let mut s = Squares::default();
        codec.decode_blend(&bytes, 1.5, 2.0, &base, &mut acc, Some(&mut s)).unwrap();
        assert!((s.decoded - want).abs() <= 1e-5 * want && (s.base - sq(&base)).abs() <= 1e-5 * sq(&base), "{codec}: {s:?}");
        assert_eq!((s.decoded.to_bits(), s.base.to_bits()), (want_bits, base_bits), "{codec}");
        let mut plain = vec![0f32; x.len()];
        codec.decode_blend(&bytes, 1.5, 2.0, &base, &mut plain, None).unwrap();
        assert_eq!(acc, plain, "{codec}");
        let mut s = Squares::default();
        codec.decode_add(&bytes, 1.5, &mut acc, Some(&mut s)).unwrap();
        assert!((s.decoded - want).abs() <= 1e-5 * want && s.base == 0.0, "{codec}");
        let mut s = Squares { with_base: false, ..Squares::default() };
        let mut mean = vec![0f32; x.len()];
        codec.decode_mean(&bytes, 1.5, 2.0, &base, 0.25, &mut mean, Some(&mut s)).unwrap();
        assert!((s.decoded - want).abs() <= 1e-5 * want && s.base == 0.0, "{codec}: an accumulator as base is not measured");
        let mut s = Squares::default();
        let mut measured = vec![0f32; x.len()];
        codec.decode_mean(&bytes, 1.5, 2.0, &base, 0.25, &mut measured, Some(&mut s)).unwrap();
        assert_eq!((s.decoded.to_bits(), s.base.to_bits()), (want_bits, base_bits), "{codec}");
        assert_eq!(measured, mean, "{codec}");
        if codec.encodes_mean_in_runs() {
            let mut s = Squares::default();
            let mut enc = vec![0u8; bytes.len()];
            codec.decode_mean_encode(&bytes, x.len(), 1.5, 2.0, &base, 0.25, &mut enc, Some(&mut s)).unwrap();
            assert!((s.decoded - want).abs() <= 1e-5 * want && (s.base - sq(&base)).abs() <= 1e-5 * sq(&base), "{codec}");
            let mut plain = vec![0u8; bytes.len()];
            codec.decode_mean_encode(&bytes, x.len(), 1.5, 2.0, &base, 0.25, &mut plain, None).unwrap();
            assert_eq!(enc, plain, "{codec}");
        }
    }
}

/// The k largest |x| of each block, larger first then the lower index: a
/// sort, independent of the codec's selection.
fn naive_top(x: &[f32], block: usize, k: usize) -> Vec<bool> {
    let mut keep = vec![false; x.len()];
    for (b, blk) in x.chunks(block).enumerate() {
        let mut order: Vec<usize> = (0..blk.len()).collect();
        order.sort_by(|&i, &j| blk[j].abs().total_cmp(&blk[i].abs()).then(i.cmp(&j)));
        for &i in order.iter().take(k) {
            keep[b * block + i] = true;
        }
    }
    keep
}

#[test]
fn topk_keeps_the_largest_of_each_block_within_its_bound() {
    // 1050 = ten blocks of 100 and a short one of 50.
    let x = values(1050, 12);
    for (k, wide) in [(7, false), (7, true), (1, false), (100, false), (150, true)] {
        let codec = Codec::TopK { block: 100, k, wide };
        let want_len = 10 * if wide { 4 * k.min(100) } else { 4 + 3 * k.min(100) } + if wide { 4 * k.min(50) } else { 4 + 3 * k.min(50) };
        assert_eq!(codec.encoded_len(x.len()), want_len, "{codec}");
        let y = round_trip(codec, &x);
        let keep = naive_top(&x, 100, k);
        for (b, (xb, yb)) in x.chunks(100).zip(y.chunks(100)).enumerate() {
            let max = xb.iter().zip(&keep[b * 100..]).filter(|(_, k)| **k).fold(0f32, |m, (v, _)| m.max(v.abs()));
            for (i, (&v, &d)) in xb.iter().zip(yb).enumerate() {
                if !keep[b * 100 + i] {
                    assert_eq!(d, 0.0, "{codec}: dropped value {i} of block {b} decoded as {d}");
                } else if wide {
                    assert!((d - v).abs() <= v.abs() * 2f32.powi(-11) + 2f32.powi(-25), "{codec}: {v} → {d}");
                } else {
                    assert!((d - v).abs() <= max / 254.0 * 1.0001, "{codec}: {v} → {d} (block max {max})");
                }
            }
        }
    }
}

#[test]
fn topk_carries_its_own_output_without_loss() {
    // What error feedback and the owner's own part rely on: a vector that
    // is already k-sparse per block and quantized crosses the encoder again
    // unchanged (to a rounding of the scale).
    let codec = Codec::TopK { block: 256, k: 9, wide: false };
    let once = round_trip(codec, &values(5000, 13));
    let twice = round_trip(codec, &once);
    for (a, b) in once.iter().zip(&twice) {
        assert!((a - b).abs() <= a.abs() * 1e-6, "{a} → {b}");
    }
    assert_eq!(once.iter().filter(|v| **v != 0.0).count(), twice.iter().filter(|v| **v != 0.0).count());
}

#[test]
fn the_union_of_sparse_parts_travels_whole_in_the_owners_codec() {
    let codec = Codec::TopK { block: 128, k: 5, wide: false };
    let parts: Vec<Vec<f32>> = (0..4).map(|s| round_trip(codec, &values(1000, 20 + s))).collect();
    let weights = [1.0f32, 3.0, 0.5, 2.0];
    let total: f32 = weights.iter().sum();
    let mean: Vec<f32> = (0..1000).map(|e| parts.iter().zip(&weights).map(|(p, w)| w * p[e]).sum::<f32>() / total).collect();
    let owners = codec.for_mean(4);
    assert_eq!(owners, Codec::TopK { block: 128, k: 20, wide: true });
    let got = round_trip(owners, &mean);
    for (e, (&m, &g)) in mean.iter().zip(&got).enumerate() {
        assert!((g - m).abs() <= m.abs() * 2f32.powi(-11) + 2f32.powi(-25), "value {e}: mean {m}, decoded {g}");
    }
    // The dense codecs average in themselves.
    assert_eq!(Codec::F16.for_mean(4), Codec::F16);
}

#[test]
fn sparse_bytes_from_a_peer_are_checked() {
    let (narrow, wide) = (Codec::TopK { block: 16, k: 3, wide: false }, Codec::TopK { block: 16, k: 3, wide: true });
    let x = values(40, 14);
    let mut out = vec![7f32; 40];
    let encoded = |c: Codec| {
        let mut b = vec![0u8; c.encoded_len(40)];
        c.encode(&x, &mut b);
        b
    };
    // Narrow block records: 4 scale bytes, 3 u16 indices, 3 i8 values (13).
    let bad = |c: Codec, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut b = encoded(c);
        edit(&mut b);
        let mut out = vec![7f32; 40];
        let r = c.decode(&b, &mut out);
        assert!(r.is_ok() || out.iter().all(|&v| v == 7.0), "a refused chunk wrote something");
        r
    };
    assert_eq!(bad(narrow, &|b| b.truncate(b.len() - 1)), Err(CodecError::Length { got: 38, want: 39, n: 40 }));
    // Index out of order, repeated, or past the block.
    assert_eq!(bad(narrow, &|b| b[13 + 4..13 + 10].copy_from_slice(&[5, 0, 2, 0, 9, 0])), Err(CodecError::Index(17)));
    assert_eq!(bad(narrow, &|b| b[13 + 4..13 + 10].copy_from_slice(&[2, 0, 2, 0, 9, 0])), Err(CodecError::Index(17)));
    assert_eq!(bad(narrow, &|b| b[13 + 4..13 + 10].copy_from_slice(&[2, 0, 5, 0, 16, 0])), Err(CodecError::Index(18)));
    // The short last block (8 values) stops at 8.
    assert_eq!(bad(narrow, &|b| b[26 + 4..26 + 10].copy_from_slice(&[0, 0, 1, 0, 8, 0])), Err(CodecError::Index(34)));
    for scale in [f32::NAN, f32::INFINITY, -1.0, f32::MAX / 100.0] {
        assert_eq!(bad(narrow, &|b| b[13..17].copy_from_slice(&scale.to_le_bytes())), Err(CodecError::Scale(1)), "{scale}");
    }
    assert_eq!(bad(narrow, &|b| b[13 + 11] = 0x80), Err(CodecError::NonFinite(17)));
    // Wide records: 3 u16 indices then 3 fp16 values (12 bytes).
    assert_eq!(bad(wide, &|b| b[12 + 8..12 + 10].copy_from_slice(&0x7c00u16.to_le_bytes())), Err(CodecError::NonFinite(17)));
    // Random bytes of the right length: refused or decoded, never a panic.
    let mut rng = Rng::new(15);
    for c in [narrow, wide] {
        for _ in 0..2000 {
            let b: Vec<u8> = (0..c.encoded_len(40)).map(|_| rng.below(256) as u8).collect();
            if c.decode(&b, &mut out).is_ok() {
                assert!(out.iter().all(|v| v.is_finite()));
            }
        }
    }
    assert_eq!("topk".parse::<Codec>(), Ok(Codec::TopK { block: 4096, k: 32, wide: false }));
    assert_eq!("topk16:64:8".parse::<Codec>().map(|c| c.to_string()), Ok("topk16:64:8".into()));
    assert!("topk:64:65".parse::<Codec>().is_err() && "topk:70000:8".parse::<Codec>().is_err() && "topk:64".parse::<Codec>().is_err());
}
