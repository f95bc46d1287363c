//! Everything a peer reads from an unauthenticated or authenticated
//! connection before trusting it: the frame header, the payload checksum,
//! the handshake messages and signature check, and every codec's
//! validate-then-decode. None of it may panic, whatever the bytes.
#![no_main]

use dtrain::allreduce::codec::Codec;
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
    let n = rest.len() / 2;
    let mut out = vec![0f32; n];
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 7 }] {
        let n = n.min(rest.len() / 4 + 1);
        if codec.decode(rest, &mut out[..n]).is_ok() {
            assert!(out[..n].iter().all(|v| v.is_finite()), "{codec:?} decoded a non-finite value");
        }
        let _ = codec.decode_add(rest, 0.5, &mut out[..n]);
    }
});
