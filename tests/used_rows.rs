//! The used-rows bitmap: runs are the first free ones after a random start,
//! never handed out twice, persist across restarts, and exhaustion is a
//! clear error.

use dtrain::data::used_rows::UsedRows;
use dtrain::rng::Rng;
use std::path::PathBuf;

fn tmpfile(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dtrain-rows-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// First run of `len` free rows at or after `start`, else from 0: the slow way.
fn naive_run(used: &[bool], start: usize, len: usize) -> Option<usize> {
    let free_at = |i: usize| i + len <= used.len() && used[i..i + len].iter().all(|u| !u);
    (start..used.len()).find(|&i| free_at(i)).or_else(|| (0..used.len()).find(|&i| free_at(i)))
}

#[test]
fn runs_are_the_first_free_ones_and_never_overlap() {
    let path = tmpfile("small");
    let rows = 10_007u64; // not a multiple of 64
    let mut bm = UsedRows::open(&path, rows).unwrap();
    let mut used = vec![false; rows as usize];
    let mut rng = Rng::new(1);
    // Some scattered rows used already, so runs have gaps to skip.
    for r in [3u64, 64, 65, 700, 1999, 5000, 10_006] {
        bm.mark(r..r + 1).unwrap();
        used[r as usize] = true;
    }
    let mut runs = 0;
    loop {
        let len = [500u64, 37, 64, 1][runs % 4];
        let start = rng.clone().below(rows) as usize;
        match bm.take_run(&mut rng, len) {
            Ok(run) => {
                assert_eq!(Some(run.start as usize), naive_run(&used, start, len as usize), "run {runs}");
                for r in run.clone() {
                    assert!(!used[r as usize], "row {r} handed out twice");
                    used[r as usize] = true;
                }
                runs += 1;
            }
            Err(e) => {
                assert_eq!(naive_run(&used, 0, len as usize), None, "a run was left: {e}");
                assert!(e.to_string().contains("exhausted"), "{e}");
                break;
            }
        }
    }
    assert!(runs > 20);
    assert_eq!(bm.used(), used.iter().filter(|&&u| u).count() as u64);
}

#[test]
fn the_bitmap_survives_a_restart_and_rejects_a_foreign_file() {
    let path = tmpfile("restart");
    let mut rng = Rng::new(2);
    let taken: Vec<_> = {
        let mut bm = UsedRows::open(&path, 100_000).unwrap();
        (0..20).map(|_| bm.take_run(&mut rng, 500).unwrap()).collect()
    };
    let mut bm = UsedRows::open(&path, 100_000).unwrap();
    assert_eq!(bm.used(), 20 * 500);
    for run in &taken {
        assert!(run.clone().all(|r| bm.is_used(r)));
    }
    for _ in 0..50 {
        let run = bm.take_run(&mut rng, 500).unwrap();
        assert!(taken.iter().all(|t| run.end <= t.start || run.start >= t.end), "{run:?} overlaps an earlier run");
    }
    drop(bm);
    // Another row count: a different file size, or (same size) a different header.
    for other in [99_999, 100_001, 1_000_000] {
        let e = UsedRows::open(&path, other).err().unwrap().to_string();
        assert!(e.contains("another dataset"), "{e}");
    }
    std::fs::write(&path, vec![7u8; 64 + 8 * 100_000usize.div_ceil(64)]).unwrap();
    let e = UsedRows::open(&path, 100_000).err().unwrap().to_string();
    assert!(e.contains("not a used-rows bitmap"), "{e}");
}

#[test]
fn a_full_size_nearly_exhausted_bitmap_still_answers() {
    // fineweb sample-350BT: about 519M rows, a 65 MB file. Everything is used
    // but the last 1,000 rows, so each search scans the whole bitmap.
    let rows = 519_000_000u64;
    let path = tmpfile("full");
    let mut bm = UsedRows::open(&path, rows).unwrap();
    bm.mark(0..rows - 1000).unwrap();
    let mut rng = Rng::new(3);
    let t0 = std::time::Instant::now();
    let a = bm.take_run(&mut rng, 500).unwrap();
    let b = bm.take_run(&mut rng, 500).unwrap();
    eprintln!("two searches over a full-size bitmap: {:?}", t0.elapsed());
    let mut got = [a.start, b.start];
    got.sort();
    assert_eq!(got, [rows - 1000, rows - 500]);
    assert!(bm.take_run(&mut rng, 1).unwrap_err().to_string().contains("exhausted"));
    assert_eq!(bm.used(), rows);
    std::fs::remove_file(&path).unwrap();
}
