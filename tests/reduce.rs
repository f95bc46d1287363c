//! Owner-side reduction against a naive weighted mean: any arrival order,
//! senders missing some chunks, zero weights, bad input refused.

use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::reduce::{ReduceError, SpanReducer};
use dtrain::rng::Rng;

fn encode(codec: Codec, x: &[f32]) -> Vec<u8> {
    let mut b = vec![0u8; codec.encoded_len(x.len())];
    codec.encode(x, &mut b);
    b
}

#[test]
fn out_of_order_chunks_give_the_weighted_mean_of_who_delivered() {
    let (len, elems, senders) = (1003, 100, 5);
    let mut rng = Rng::new(1);
    let data: Vec<Vec<f32>> = (0..senders).map(|_| (0..len).map(|_| rng.normal()).collect()).collect();
    let weights = [4.0f32, 0.0, 1.5, 8.0, 2.0];
    let fallback: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let mut r = SpanReducer::new(len, elems, senders);
    let chunks = r.num_chunks();
    assert_eq!(chunks, 11);
    // Every (sender, chunk) pair, shuffled; sender 3 never delivers chunks 2
    // and 7; nobody delivers chunk 9 except the zero-weight sender 1.
    let mut jobs: Vec<(usize, usize)> = (0..senders).flat_map(|s| (0..chunks).map(move |c| (s, c))).collect();
    jobs.retain(|&(s, c)| !(s == 3 && (c == 2 || c == 7)) && !(c == 9 && s != 1));
    for i in (1..jobs.len()).rev() {
        jobs.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for &(s, c) in &jobs {
        let range = c * elems..((c + 1) * elems).min(len);
        r.add(s, c, weights[s], Codec::F32, &encode(Codec::F32, &data[s][range]), &[]).unwrap();
    }
    assert!(!r.complete());
    assert_eq!(r.contributors(2), vec![0, 1, 2, 4]);
    let out = r.finish(&fallback);
    for c in 0..chunks {
        for i in c * elems..((c + 1) * elems).min(len) {
            let who: Vec<usize> = (0..senders).filter(|&s| jobs.contains(&(s, c))).collect();
            let w: f64 = who.iter().map(|&s| weights[s] as f64).sum();
            let want = if w > 0.0 { who.iter().map(|&s| weights[s] as f64 * data[s][i] as f64).sum::<f64>() / w } else { fallback[i] as f64 };
            assert!((out[i] as f64 - want).abs() < 1e-5, "chunk {c} element {i}: {} vs {want}", out[i]);
        }
    }
}

#[test]
fn bad_contributions_are_refused_and_change_nothing() {
    let mut r = SpanReducer::new(10, 4, 2);
    let ok = encode(Codec::F32, &[1.0; 4]);
    r.add(0, 0, 1.0, Codec::F32, &ok, &[]).unwrap();
    assert_eq!(r.add(0, 0, 1.0, Codec::F32, &ok, &[]), Err(ReduceError::Duplicate { sender: 0, chunk: 0 }));
    assert_eq!(r.add(2, 0, 1.0, Codec::F32, &ok, &[]), Err(ReduceError::Sender(2)));
    assert_eq!(r.add(1, 3, 1.0, Codec::F32, &ok, &[]), Err(ReduceError::Chunk(3)));
    assert_eq!(r.add(1, 0, f32::NAN, Codec::F32, &ok, &[]).unwrap_err().to_string(), "weight NaN is not a finite non-negative number");
    assert_eq!(r.add(1, 0, -1.0, Codec::F32, &ok, &[]), Err(ReduceError::Weight(-1.0)));
    let nan = encode(Codec::F32, &[1.0, f32::NAN, 1.0, 1.0]);
    assert!(matches!(r.add(1, 0, 1.0, Codec::F32, &nan, &[]), Err(ReduceError::Codec(_))));
    // The refused chunk can still come properly afterwards.
    r.add(1, 0, 3.0, Codec::F32, &encode(Codec::F32, &[5.0; 4]), &[]).unwrap();
    let out = r.finish(&[0.0; 10]);
    assert_eq!(&out[..4], &[4.0; 4]); // (1·1 + 3·5) / 4
    assert_eq!(&out[4..], &[0.0; 6]); // nothing arrived: the fallback
}

#[test]
fn the_owners_own_values_count_with_their_weight_in_every_chunk() {
    let (len, elems) = (250, 64);
    let mut rng = Rng::new(3);
    let own: Vec<f32> = (0..len).map(|_| rng.normal()).collect();
    let peer: Vec<f32> = (0..len).map(|_| rng.normal()).collect();
    // Stale values in a reused buffer must not leak into the result.
    let mut r = SpanReducer::reusing(vec![1e30; len], len, elems, 3);
    r.set_own(1, 2.0);
    // The peer (weight 0.5) delivers chunks 0 and 2 only; sender 2 nothing.
    for c in [2, 0] {
        let range = c * elems..((c + 1) * elems).min(len);
        r.add(0, c, 0.5, Codec::F32, &encode(Codec::F32, &peer[range]), &own).unwrap();
    }
    assert_eq!(r.contributors(1), vec![1]);
    let out = r.finish(&own);
    for i in 0..len {
        let c = i / elems;
        let want = if c == 0 || c == 2 { (2.0 * own[i] as f64 + 0.5 * peer[i] as f64) / 2.5 } else { own[i] as f64 };
        assert!((out[i] as f64 - want).abs() < 1e-6, "{i}: {} vs {want}", out[i]);
    }
}

#[test]
fn the_last_contribution_yields_the_same_mean_as_accumulating() {
    let (len, elems) = (300, 100);
    let mut rng = Rng::new(9);
    let own: Vec<f32> = (0..len).map(|_| rng.normal()).collect();
    let peers: Vec<Vec<f32>> = (0..2).map(|_| (0..len).map(|_| rng.normal()).collect()).collect();
    for with_own in [false, true] {
        let (mut a, mut b) = (SpanReducer::new(len, elems, 3), SpanReducer::new(len, elems, 3));
        if with_own {
            a.set_own(2, 1.5);
            b.set_own(2, 1.5);
        }
        let own_arg: &[f32] = if with_own { &own } else { &[] };
        for c in 0..3 {
            let r = c * elems..(c + 1) * elems;
            for (s, w) in [(0, 2.0), (1, 0.25)] {
                a.add(s, c, w, Codec::F32, &encode(Codec::F32, &peers[s][r.clone()]), own_arg).unwrap();
            }
        }
        let want = a.finish(&own);
        for c in 0..3 {
            let r = c * elems..(c + 1) * elems;
            b.add(0, c, 2.0, Codec::F32, &encode(Codec::F32, &peers[0][r.clone()]), own_arg).unwrap();
            let mut out = vec![0f32; elems];
            assert!(b.add_final(1, c, 0.25, Codec::F32, &encode(Codec::F32, &peers[1][r.clone()]), own_arg, &mut out).unwrap());
            for (i, (&got, &w)) in out.iter().zip(&want[r]).enumerate() {
                assert!((got - w).abs() <= 1e-6 * (1.0 + w.abs()), "chunk {c} value {i}: {got} vs {w}");
            }
        }
    }
}
