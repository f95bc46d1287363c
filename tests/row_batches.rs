//! The reference batch semantics, on hand-computed cases.

use dtrain::data::loader::{ROW_TOKENS, RowBatches};
use dtrain::data::tokenizer::EOT;

const E: u32 = EOT;

#[test]
fn a_hand_computed_case() {
    let rows = vec![vec![1, 2, 3], vec![4, 5, 6, 7, 8]];
    // Buffer: 1 2 3 E 4 5 6 7 8 E (10 tokens) → 3 batches of 4, padded to 13.
    let b = RowBatches::new(&rows, 1, 4).unwrap();
    assert_eq!(b.len(), 3);
    assert_eq!(b.batch(0), (&[1, 2, 3, E][..], &[2, 3, E, 4][..]));
    assert_eq!(b.batch(1), (&[4, 5, 6, 7][..], &[5, 6, 7, 8][..]));
    assert_eq!(b.batch(2), (&[8, E, E, E][..], &[E, E, E, E][..]));
    // The same buffer as 2 sequences of 2: row-major, sequences back to back.
    let b2 = RowBatches::new(&rows, 2, 2).unwrap();
    assert_eq!(b2.len(), 3);
    assert_eq!(b2.batch(1), b.batch(1));
}

#[test]
fn an_exact_multiple_still_gets_its_last_target() {
    let b = RowBatches::new(&[vec![9, 8, 7]], 1, 4).unwrap(); // 9 8 7 E: exactly one batch
    assert_eq!(b.len(), 1);
    assert_eq!(b.batch(0), (&[9, 8, 7, E][..], &[8, 7, E, E][..]));
}

#[test]
fn long_rows_are_truncated_and_nothing_is_empty() {
    let long: Vec<u32> = (0..1500).collect();
    let b = RowBatches::new(&[long, vec![5]], 1, 1024).unwrap();
    // 1024 + E + 5 + E = 1027 tokens → 2 batches.
    assert_eq!(b.len(), 2);
    let (x0, y0) = b.batch(0);
    assert_eq!(x0[1023], ROW_TOKENS as u32 - 1);
    assert_eq!(y0[1023], E);
    let (x1, _) = b.batch(1);
    assert_eq!(&x1[..4], &[E, 5, E, E]);
    assert!(RowBatches::new(&[], 4, 1024).unwrap().is_empty());
}

#[test]
fn texts_give_the_same_batches_every_time() {
    let texts = ["First row of text.", "Second row, a little longer than the first one.", "Third."];
    let a = RowBatches::from_texts(&texts, 2, 8).unwrap();
    let b = RowBatches::from_texts(&texts, 2, 8).unwrap();
    assert_eq!(a.len(), b.len());
    for k in 0..a.len() {
        assert_eq!(a.batch(k), b.batch(k));
    }
    let bpe = tiktoken_rs::r50k_base_singleton();
    let mut want: Vec<u32> = Vec::new();
    for t in texts {
        want.extend(bpe.encode_with_special_tokens(t));
        want.push(E);
    }
    assert_eq!(&a.batch(0).0[..want.len().min(16)], &want[..want.len().min(16)]);
}

#[test]
fn batches_from_a_source_equal_batches_from_its_texts() {
    use dtrain::data::source::{ParquetRows, RowSource};
    let src = ParquetRows::open_dir(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")).unwrap();
    let a = RowBatches::from_source(&src, 200..260, 4, 1024).unwrap();
    let b = RowBatches::from_texts(&src.rows(200, 60).unwrap(), 4, 1024).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a.len() > 1);
    for k in 0..a.len() {
        assert_eq!(a.batch(k), b.batch(k));
    }
    assert!(RowBatches::from_source(&src, 370..380, 4, 1024).is_err());
}

#[test]
fn a_hostile_batch_shape_is_an_error_not_a_crash() {
    for (b, t) in [(0, 1024), (4, 0), (usize::MAX, 2), (1 << 20, 1 << 20)] {
        let e = RowBatches::new(&[vec![1, 2, 3]], b, t).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("invalid batch shape"), "{b}×{t}: {e}");
    }
}
