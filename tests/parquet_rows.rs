//! Rows of the bundled fineweb-shaped parquet sample, checked against the
//! SHA-256 of each row that pyarrow wrote (data/make_fineweb_sample.py).

use dtrain::data::source::{ParquetRows, RowSource};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")
}

fn hashes() -> Vec<String> {
    std::fs::read_to_string(sample_dir().join("rows.sha256")).unwrap().lines().map(String::from).collect()
}

fn sha(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_window_of_rows_matches_what_pyarrow_wrote() {
    let src = ParquetRows::open_dir(&sample_dir()).unwrap();
    let want = hashes();
    assert_eq!(src.num_rows(), want.len() as u64);
    let all: Vec<String> = src.rows(0, want.len()).unwrap().iter().map(|t| sha(t)).collect();
    assert!(all == want, "rows differ from the reference hashes");
    // Windows across row groups (48 rows each) and across the two files.
    let n = want.len() as u64;
    let first_file = 224;
    for (offset, count) in [(0, 1), (40, 20), (47, 2), (first_file - 3, 7), (first_file, 48), (n - 1, 1), (100, 0), (5, 300)] {
        let got: Vec<String> = src.rows(offset, count).unwrap().iter().map(|t| sha(t)).collect();
        assert_eq!(got, want[offset as usize..offset as usize + count], "rows {offset}+{count}");
    }
}

#[test]
fn bad_requests_and_damaged_files_give_clear_errors() {
    let src = ParquetRows::open_dir(&sample_dir()).unwrap();
    let e = src.rows(src.num_rows() - 2, 5).unwrap_err().to_string();
    assert!(e.contains("outside the dataset"), "{e}");
    assert!(src.rows(u64::MAX, 2).is_err());

    let dir = std::env::temp_dir().join(format!("dtrain-parquet-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(sample_dir().join("part-00001.parquet")).unwrap();
    for (name, bytes) in [
        ("truncated.parquet", good[..good.len() / 2].to_vec()),
        ("footer-only.parquet", good[good.len() - 8..].to_vec()),
        ("garbage.parquet", vec![0x50; 4096]),
        ("empty.parquet", vec![]),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let e = ParquetRows::open(std::slice::from_ref(&path)).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains(name), "{name}: {e}");
    }
    // Damage inside the data pages: the footer is intact, the pages are not.
    let mut corrupt = good.clone();
    for b in &mut corrupt[100..20_000] {
        *b ^= 0x5a;
    }
    let path = dir.join("corrupt-pages.parquet");
    std::fs::write(&path, corrupt).unwrap();
    if let Ok(src) = ParquetRows::open(std::slice::from_ref(&path)) {
        assert!(src.rows(0, 10).is_err());
    }
    assert!(ParquetRows::open_dir(&dir.join("nothing-here")).is_err());
}

#[test]
fn zstd_compressed_files_read_too() {
    // The sample's first 20 rows rewritten by pyarrow with zstd, row groups of 8.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/zstd-20-rows.parquet");
    let src = ParquetRows::open(&[path]).unwrap();
    assert_eq!(src.num_rows(), 20);
    let got: Vec<String> = src.rows(0, 20).unwrap().iter().map(|t| sha(t)).collect();
    assert_eq!(got, hashes()[..20]);
}

#[test]
fn text_files_are_rows_too() {
    use dtrain::data::source::TextFiles;
    let dir = std::env::temp_dir().join(format!("dtrain-textrows-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let paths: Vec<PathBuf> = (0..3).map(|i| dir.join(format!("{i}.txt"))).collect();
    for (i, p) in paths.iter().enumerate() {
        std::fs::write(p, format!("document {i}\nwith two lines")).unwrap();
    }
    let src = TextFiles::open(&paths).unwrap();
    assert_eq!(src.num_rows(), 3);
    assert_eq!(src.rows(1, 2).unwrap(), vec!["document 1\nwith two lines".to_string(), "document 2\nwith two lines".to_string()]);
    assert!(src.rows(2, 2).unwrap_err().to_string().contains("outside"));
    std::fs::write(&paths[0], [0xffu8, 0xfe]).unwrap();
    assert!(src.rows(0, 1).unwrap_err().to_string().contains("UTF-8"));
    assert!(TextFiles::open(&[dir.join("missing.txt")]).is_err());
    assert!(TextFiles::open(std::slice::from_ref(&dir)).err().unwrap().to_string().contains("not a file"));
}
