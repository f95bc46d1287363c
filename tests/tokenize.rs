//! `dtrain tokenize`: text files → shards that hold exactly the reference
//! tokens, and that `dtrain train` reads.

use dtrain::data::shard::Shard;
use dtrain::data::tokenize::tokenize_files;
use std::path::{Path, PathBuf};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dtrain-tokenize-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/shakespeare.txt")
}

/// One training step of the small model on `data` through the CLI.
fn train_one_step(data: &Path, out: &Path) {
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["-q", "train", "--model", "small", "--steps", "1", "--batch", "1", "--seq", "32", "--data"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn shards_hold_the_reference_tokens_in_order() {
    let dir = tmpdir("ok");
    let second = dir.join("second.txt");
    std::fs::write(&second, "A second document.\r\nWith <|endoftext|> inside and émojis 👍.").unwrap();
    let out = dir.join("shards");
    let summary = tokenize_files(&[sample(), second.clone()], &out, 40_000, |_, _| {}).unwrap();

    let bpe = tiktoken_rs::r50k_base_singleton();
    let mut want = vec![50256];
    want.extend(bpe.encode_with_special_tokens(&std::fs::read_to_string(sample()).unwrap()));
    want.push(50256);
    want.extend(bpe.encode_with_special_tokens(&std::fs::read_to_string(&second).unwrap()));

    assert_eq!(summary.documents, 2);
    assert_eq!(summary.tokens, want.len());
    assert_eq!(summary.shards.len(), want.len().div_ceil(40_000));
    let mut got = Vec::new();
    for (i, path) in summary.shards.iter().enumerate() {
        let shard = Shard::open(path).unwrap();
        if i + 1 < summary.shards.len() {
            assert_eq!(shard.len(), 40_000);
        }
        let mut tokens = vec![0; shard.len()];
        shard.read(0, &mut tokens);
        got.extend(tokens);
    }
    assert!(got == want, "shard contents differ from the reference tokens");

    // dtrain train reads the directory.
    train_one_step(&out, &dir.join("run"));

    // A second run into the same directory refuses to mix shards.
    let e = tokenize_files(&[second], &out, 40_000, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("already holds shards"), "{e}");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let dir = tmpdir("bad");
    let e = tokenize_files(&[dir.join("missing.txt")], &dir.join("o1"), 1000, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("missing.txt"), "{e}");
    std::fs::write(dir.join("bin.txt"), [0xff, 0xfe, 0x00]).unwrap();
    let e = tokenize_files(&[dir.join("bin.txt")], &dir.join("o2"), 1000, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("UTF-8"), "{e}");
    let e = tokenize_files(std::slice::from_ref(&dir), &dir.join("o3"), 1000, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("directory"), "{e}");
    let e = tokenize_files(&[sample()], &dir.join("o4"), 0, |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("shard size"), "{e}");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain")).args(["tokenize", "--out"]).arg(dir.join("o5")).output().unwrap();
    assert!(!cli.status.success());
}

#[test]
fn parquet_rows_become_one_document_each() {
    let dir = tmpdir("parquet");
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample");
    let inputs = [sample.join("part-00000.parquet"), sample.join("part-00001.parquet")];
    let summary = tokenize_files(&inputs, &dir.join("shards"), 1 << 20, |_, _| {}).unwrap();
    // 374 rows holding 424,334 GPT-2 tokens by the generator's count (HF
    // tokenizers' Python binding, data/make_fineweb_sample.py), one EOT each.
    assert_eq!(summary.documents, 374);
    assert_eq!(summary.tokens, 424_334 + 374);

    // dtrain train reads the parquet directory directly.
    train_one_step(&sample, &dir.join("run"));
}
