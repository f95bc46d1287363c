//! Everything a peer reads from an unauthenticated or authenticated
//! connection before trusting it: the frame header, the payload checksum,
//! the handshake messages and signature check, the audit's statements,
//! testimonies and rulings, and every codec's validate-then-decode. None
//! of it may panic, whatever the bytes.
#![no_main]

use dtrain::allreduce::audit::Statement;
use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::ruling::{Testimony, parse_ruling};
use dtrain::allreduce::handshake::{Hello, verify_auth};
use dtrain::allreduce::wire::{HEADER_LEN, Header};
use dtrain::allreduce::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<HEADER_LEN>() else { return };
    let max = 1 << 16;
    if let Ok(h) = Header::parse(head, max) {
        assert!(h.len <= max);
        let payload = &rest[..rest.len().min(h.len as usize)];
        let _ = h.verify(payload);
    }
    if let Ok(hello) = Hello::parse(&rest[..rest.len().min(68)]) {
        let key = Identity::from_seed([7; 32]).public();
        let auth = rest.get(68..132).unwrap_or(&[]);
        let _ = verify_auth(&key, 1, 0, 1, &hello, &[3; 32], auth);
        assert_eq!(Hello::parse(&hello.encode()).unwrap().nonce, hello.nonce);
    }
    if let Some(st) = Statement::parse(&rest[..rest.len().min(Statement::BYTES)]) {
        let _ = st.verify(&Identity::from_seed([7; 32]).public(), 1, &[2; 32], 0, 1);
    }
    let members = usize::from(head[6]) % 9;
    if let Some(t) = Testimony::parse(rest, members) {
        assert_eq!(Testimony::parse(&t.encode(), members), Some(t));
    }
    if let Some(r) = parse_ruling(rest, members) {
        assert!(r.iter().all(|a| a.member < members));
    }
    let n = rest.len() / 2;
    let mut out = vec![0f32; n];
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 7 }] {
        let n = n.min(rest.len() / 4 + 1);
        if codec.decode(rest, &mut out[..n]).is_ok() {
            assert!(out[..n].iter().all(|v| v.is_finite()), "{codec:?} decoded a non-finite value");
        }
        let _ = codec.decode_add(rest, 0.5, &mut out[..n], None);
    }
    // The same bytes taken as a whole chunk of each codec (the length
    // that fits, if one does): every decoding path agrees to the bit, and
    // the fused mean encodes as the mean then the encoder.
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 7 }, Codec::Int8 { block: 256 }] {
        let len = rest.len();
        let Some(n) = ((len * 7 / 11).saturating_sub(8)..=len).find(|&n| codec.encoded_len(n) == len) else { continue };
        let mut plain = vec![0f32; n];
        let ok = codec.decode(rest, &mut plain).is_ok();
        // At an odd offset from any alignment, with streaming stores.
        let mut big = vec![1.5f32; n + 3];
        assert_eq!(codec.decode_into(rest, &mut big[3..], true).is_ok(), ok);
        if ok {
            assert!(big[3..].iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()), "{codec:?}: streaming decode differs");
            let base: Vec<f32> = (0..n).map(|i| i as f32 - 3.0).collect();
            let mut mean = vec![0f32; n];
            codec.decode_mean(rest, 0.75, 2.0, &base, 0.3, &mut mean, None).unwrap();
            let mut want = vec![0u8; len];
            let bad = codec.encode_checked(&mean, &mut want).is_some();
            let mut got = vec![0u8; len];
            assert_eq!(codec.decode_mean_encode(rest, n, 0.75, 2.0, &base, 0.3, &mut got, None), Ok(!bad));
            if !bad {
                assert_eq!(got, want, "{codec:?}: fused mean differs");
            }
        } else {
            assert!(big[3..].iter().all(|&v| v == 1.5), "{codec:?}: written despite an error");
        }
        // Arbitrary f32s (NaN, inf, huge) through every encoder: flagged, never a panic.
        let values: Vec<f32> = rest.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let mut enc = vec![0u8; codec.encoded_len(values.len())];
        let first = codec.encode_checked(&values, &mut enc);
        assert_eq!(first, values.iter().position(|v| !v.is_finite()), "{codec:?}");
    }
});
