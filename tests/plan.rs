//! The all-reduce plan: spans cover the vector exactly, in proportion to
//! the fractions; chunks fit their byte budget.

use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::plan::{PlanError, chunk_elems, chunks, link_fractions, spans, spans_aligned};

fn check_spans(len: usize, fractions: &[f64]) {
    let s = spans(len, fractions).unwrap();
    assert_eq!(s.len(), fractions.len());
    assert_eq!(s[0].start, 0);
    assert_eq!(s.last().unwrap().end, len);
    for w in s.windows(2) {
        assert_eq!(w[0].end, w[1].start, "{fractions:?}: not contiguous");
    }
    let total: f64 = fractions.iter().sum();
    for (span, &f) in s.iter().zip(fractions) {
        let exact = len as f64 * f / total;
        assert!((span.len() as f64 - exact).abs() <= 1.0 + 1e-9, "{len} {fractions:?}: {span:?} vs {exact}");
        if f == 0.0 {
            assert!(span.is_empty(), "a zero-fraction member owns {span:?}");
        }
    }
}

#[test]
fn spans_cover_the_vector_in_proportion() {
    for n in 1..=8 {
        for len in [0, 1, 7, 1000, 1001, 65_537, 124_475_904] {
            check_spans(len, &vec![1.0; n]);
        }
    }
    check_spans(1000, &[0.0, 1.0, 0.0, 3.0, 0.0]);
    check_spans(10, &[0.1, 0.7, 0.2]);
    check_spans(3, &[1.0, 1.0, 1.0, 1.0, 1.0]);
    check_spans(999_999, &[0.25, 0.5, 0.0, 0.25]);
}

#[test]
fn sparse_spans_and_chunks_are_whole_blocks() {
    // Every encoder must cut the same blocks of the flat vector.
    let codec = Codec::TopK { block: 4096, k: 32, wide: false };
    for (len, fractions) in [(1_000_000, vec![1.0; 3]), (124_475_904, vec![0.2, 0.0, 0.5, 0.3]), (5000, vec![1.0; 4]), (100, vec![1.0, 1.0])] {
        let s = spans_aligned(len, &fractions, codec.alignment()).unwrap();
        assert_eq!((s[0].start, s.last().unwrap().end), (0, len));
        let total: f64 = fractions.iter().sum();
        for (span, f) in s.iter().zip(&fractions) {
            assert!(span.start % 4096 == 0 && (span.end % 4096 == 0 || span.end == len), "{len} {fractions:?}: {span:?}");
            assert!((span.len() as f64 - len as f64 * f / total).abs() <= 4096.0, "{len} {fractions:?}: {span:?}");
        }
        assert!(s.windows(2).all(|w| w[0].end == w[1].start));
    }
    for budget in [512 << 10, 1000] {
        let elems = chunk_elems(codec, budget).unwrap();
        assert_eq!(elems % 4096, 0, "{budget}");
    }
}

#[test]
fn bad_fractions_are_refused() {
    assert_eq!(spans(10, &[0.0, 0.0]), Err(PlanError::NoOwner));
    assert_eq!(spans(10, &[]), Err(PlanError::NoOwner));
    assert_eq!(spans(10, &[1.0, -0.5]), Err(PlanError::Fraction(-0.5, 1)));
    assert!(matches!(spans(10, &[f64::NAN]), Err(PlanError::Fraction(_, 0))));
}

#[test]
fn chunks_fit_their_budget_and_cover_the_span() {
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 64 }, Codec::Int8 { block: 1 }] {
        for budget in [512 << 10, 1000, 68] {
            let elems = chunk_elems(codec, budget).unwrap();
            assert!(codec.encoded_len(elems) <= budget, "{codec:?} {budget}");
            if let Codec::Int8 { block } = codec {
                assert_eq!(elems % block, 0);
            }
            let span = 123..10_123;
            let cs: Vec<_> = chunks(span.clone(), elems).collect();
            assert_eq!(cs.first().unwrap().start, span.start);
            assert_eq!(cs.last().unwrap().end, span.end);
            assert!(cs.windows(2).all(|w| w[0].end == w[1].start));
            assert!(cs.iter().all(|c| codec.encoded_len(c.len()) <= budget));
        }
    }
    assert_eq!(chunk_elems(Codec::F32, 3), Err(PlanError::ChunkSize(3)));
    assert_eq!(chunks(5..5, 10).count(), 0);
}

/// The round's time for a split: the slowest member's load over its rate.
fn round_time(rates: &[f64], f: &[f64]) -> f64 {
    let n = rates.len() as f64;
    rates.iter().zip(f).map(|(r, f)| (1.0 + (n - 2.0) * f) / r).fold(0.0, f64::max)
}

#[test]
fn link_fractions_are_as_fast_as_any_split_a_search_finds() {
    // Against a grid search over every split of 3 and 4 members.
    let mut rng = dtrain::rng::Rng::new(11);
    for case in 0..40 {
        let n = 3 + case % 2;
        let rates: Vec<f64> = (0..n).map(|_| if rng.below(4) == 0 { 0.05 + 0.2 * rng.uniform() } else { 0.5 + rng.uniform() }).collect();
        let (f, t) = link_fractions(&rates);
        assert!((f.iter().sum::<f64>() - 1.0).abs() < 1e-9 && f.iter().all(|&v| v >= 0.0), "{rates:?}: {f:?}");
        assert!((round_time(&rates, &f) - t).abs() < 1e-9, "{rates:?}: the time it states is not its split's");
        let steps = if n == 3 { 200 } else { 60 };
        let mut best = f64::MAX;
        for a in 0..=steps {
            for b in 0..=steps - a {
                if n == 3 {
                    let g = [a as f64, b as f64, (steps - a - b) as f64].map(|v| v / steps as f64);
                    best = best.min(round_time(&rates, &g));
                } else {
                    for c in 0..=steps - a - b {
                        let g = [a as f64, b as f64, c as f64, (steps - a - b - c) as f64].map(|v| v / steps as f64);
                        best = best.min(round_time(&rates, &g));
                    }
                }
            }
        }
        assert!(t <= best + 1e-9, "{rates:?}: {t} but a split takes {best}");
        assert!(best <= t * 1.05, "{rates:?}: the grid's best {best} is far from {t}");
    }
}

#[test]
fn equal_links_split_equally_and_a_slow_member_owns_nothing() {
    let (f, t) = link_fractions(&[1.0; 4]);
    assert!(f.iter().all(|v| (v - 0.25).abs() < 1e-12));
    assert!((t - 2.0 * 3.0 / 4.0).abs() < 1e-12);
    // One member at a tenth of the others' rate: it owns nothing, and the
    // round takes what its own contribution and the average take over its
    // link (1/0.1), against (1 + 2/4)/0.1 with equal spans.
    let (f, t) = link_fractions(&[1.0, 1.0, 1.0, 0.1]);
    assert_eq!(f[3], 0.0);
    assert!((t - 10.0).abs() < 1e-9 && round_time(&[1.0, 1.0, 1.0, 0.1], &[0.25; 4]) > 14.9);
}
