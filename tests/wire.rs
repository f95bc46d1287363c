//! The all-reduce frame header: round trips, and every kind of damage is a
//! clear error, never a panic.

use dtrain::allreduce::wire::{HEADER_LEN, Header, Kind, VERSION, WireError};
use dtrain::rng::Rng;

#[test]
fn headers_round_trip_and_verify_their_payload() {
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    for kind in
        [Kind::Hello, Kind::Scatter, Kind::Gather, Kind::Abort, Kind::Auth, Kind::Done, Kind::Statement, Kind::Testimony, Kind::Ruling, Kind::Waiting]
    {
        let h = Header::for_payload(kind, 7, u64::MAX - 3, 5, 123_456, &payload);
        let parsed = Header::parse(&h.encode(), 1 << 20).unwrap();
        assert_eq!(parsed, h);
        parsed.verify(&payload).unwrap();
        let mut flipped = payload.clone();
        flipped[500] ^= 1;
        assert_eq!(parsed.verify(&flipped), Err(WireError::Checksum));
        assert_eq!(parsed.verify(&payload[..999]), Err(WireError::Checksum));
    }
}

#[test]
fn damaged_headers_are_refused() {
    let good = Header::for_payload(Kind::Scatter, 1, 9, 2, 3, &[1, 2, 3]).encode();
    let with = |i: usize, v: u8| {
        let mut b = good;
        b[i] = v;
        b
    };
    assert!(matches!(Header::parse(&with(0, b'X'), 100), Err(WireError::Magic(_))));
    assert_eq!(Header::parse(&with(4, 1), 100), Err(WireError::Version(1)));
    assert_eq!(Header::parse(&with(5, 0), 100), Err(WireError::Kind(0)));
    assert_eq!(Header::parse(&with(5, 11), 100), Err(WireError::Kind(11)));
    assert_eq!(Header::parse(&with(30, 1), 100), Err(WireError::Reserved));
    assert_eq!(Header::parse(&with(27, 0x80), 100), Err(WireError::TooLong { len: 0x8000_0003, max: 100 }));
    assert_eq!(Header::parse(&good, 2), Err(WireError::TooLong { len: 3, max: 2 }));
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng::new(8);
    let mut accepted = 0;
    for _ in 0..100_000 {
        let mut b = [0u8; HEADER_LEN];
        b.iter_mut().for_each(|x| *x = rng.below(256) as u8);
        if rng.below(2) == 0 {
            b[0..4].copy_from_slice(b"DTAR"); // get past the first checks half the time
            (b[4], b[5]) = (VERSION, 2);
            b[28..32].fill(0);
        }
        if let Ok(h) = Header::parse(&b, 1 << 20) {
            accepted += 1;
            assert!(h.len <= 1 << 20);
        }
    }
    assert!(accepted > 0);
}

#[test]
fn the_checksum_is_standard_xxh3() {
    use dtrain::allreduce::wire::checksum;
    // Reference values of XXH3_64bits (seed 0) from the xxHash project.
    assert_eq!(checksum(b""), 0x2D06_8005_38D3_94C2);
    // Every length class of the algorithm gives the same as a second implementation.
    let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 + i / 7) as u8).collect();
    for n in [1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 1025, 5000] {
        assert_eq!(checksum(&data[..n]), xxhash_rust::xxh3::xxh3_64(&data[..n]), "length {n}");
    }
}
