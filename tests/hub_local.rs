//! The local model store: round trips, tags that never move, racing
//! publishers, damaged revisions, bad names, and a publisher killed midway.

mod common;

use dtrain::hub::{HubError, LocalStore, ModelHub, commit_message};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn tmp(name: &str) -> PathBuf {
    common::fresh_dir(&format!("hub-{name}"))
}

fn checkpoint(dir: &Path, seed: u8) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.json"), format!("{{\"epoch\": {seed}}}")).unwrap();
    fs::write(dir.join("model.safetensors"), vec![seed; 100_000]).unwrap();
    fs::create_dir_all(dir.join("subdir-ignored")).unwrap();
}

fn same_files(a: &Path, b: &Path) {
    for name in ["config.json", "model.safetensors"] {
        assert_eq!(fs::read(a.join(name)).unwrap(), fs::read(b.join(name)).unwrap(), "{name}");
    }
}

#[test]
fn publish_tag_and_download_round_trip() {
    let root = tmp("roundtrip");
    let store = LocalStore::open(&root.join("store")).unwrap();
    assert_eq!(store.latest_epoch().unwrap(), None);
    for epoch in [1u8, 2, 10] {
        checkpoint(&root.join(format!("ck{epoch}")), epoch);
        let p = store.publish(&root.join(format!("ck{epoch}")), &epoch.to_string(), &commit_message(epoch as u64, 512, 4)).unwrap();
        assert!(!p.existed);
        assert_eq!(p.revision.len(), 64);
    }
    assert_eq!(store.latest_epoch().unwrap(), Some(10));
    assert_eq!(store.message("2").unwrap(), "Epoch 2. Batch Size 512. Peers 4.");
    store.download("2", &root.join("got2")).unwrap();
    same_files(&root.join("ck2"), &root.join("got2"));
    assert!(!root.join("got2/subdir-ignored").exists());
    assert!(matches!(store.download("3", &root.join("got3")), Err(HubError::NoTag(_))));
    // A second handle on the same directory sees the same thing.
    assert_eq!(LocalStore::open(&root.join("store")).unwrap().revision_of("10").unwrap(), store.revision_of("10").unwrap());
}

#[test]
fn an_existing_tag_is_never_moved() {
    let root = tmp("nomove");
    let store = LocalStore::open(&root.join("store")).unwrap();
    checkpoint(&root.join("a"), 1);
    checkpoint(&root.join("b"), 2);
    let first = store.publish(&root.join("a"), "5", "first").unwrap();
    let second = store.publish(&root.join("b"), "5", "second").unwrap();
    assert!(second.existed);
    assert_eq!(second.revision, first.revision);
    store.download("5", &root.join("got")).unwrap();
    same_files(&root.join("a"), &root.join("got"));
    assert_eq!(store.message("5").unwrap(), "first");
}

#[test]
fn racing_publishers_agree_on_one_revision() {
    let root = tmp("race");
    let store = LocalStore::open(&root.join("store")).unwrap();
    for i in 0..4u8 {
        checkpoint(&root.join(format!("c{i}")), i);
    }
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u8)
            .map(|i| {
                let (store, root) = (&store, &root);
                s.spawn(move || store.publish(&root.join(format!("c{i}")), "7", "race").unwrap())
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|p| !p.existed).count(), 1, "{results:?}");
    assert!(results.iter().all(|p| p.revision == results[0].revision));
}

#[test]
fn a_damaged_revision_fails_its_download() {
    let root = tmp("damaged");
    let store = LocalStore::open(&root.join("store")).unwrap();
    checkpoint(&root.join("a"), 3);
    let p = store.publish(&root.join("a"), "1", "m").unwrap();
    let file = root.join("store/revisions").join(&p.revision).join("model.safetensors");
    let mut bytes = fs::read(&file).unwrap();
    bytes[500] ^= 1;
    fs::write(&file, bytes).unwrap();
    let e = store.download("1", &root.join("got")).unwrap_err();
    assert!(matches!(e, HubError::Corrupt(ref w) if w.contains("model.safetensors")), "{e}");
    assert!(!root.join("got").exists());
    fs::write(root.join("store/tags/2"), "../../etc\n").unwrap();
    assert!(matches!(store.download("2", &root.join("got")), Err(HubError::Corrupt(_))));
}

#[test]
fn bad_tags_and_file_names_are_refused() {
    let root = tmp("names");
    let store = LocalStore::open(&root.join("store")).unwrap();
    checkpoint(&root.join("a"), 1);
    for tag in ["", "..", "a/b", "x y", &"9".repeat(200)] {
        assert!(matches!(store.publish(&root.join("a"), tag, "m"), Err(HubError::Name { .. })), "{tag:?}");
    }
    fs::write(root.join("a/bad name.txt"), "x").unwrap();
    assert!(matches!(store.publish(&root.join("a"), "1", "m"), Err(HubError::Name { .. })));
    assert!(store.tags().unwrap().is_empty());
}

#[test]
fn a_publisher_killed_midway_leaves_no_tag_and_no_debris() {
    let root = tmp("kill");
    let src = root.join("big");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("model.safetensors"), vec![7u8; 400 << 20]).unwrap();
    let store_dir = root.join("store");
    LocalStore::open(&store_dir).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["-q", "hub", "publish", "--store"])
        .arg(&store_dir)
        .args(["--tag", "1", "--message", "killed"])
        .arg(&src)
        .spawn()
        .unwrap();
    // Kill it once the copy is under way.
    let deadline = Instant::now() + Duration::from_secs(30);
    let staged = || {
        fs::read_dir(store_dir.join("staging"))
            .unwrap()
            .flatten()
            .any(|e| fs::metadata(e.path().join("model.safetensors")).map(|m| m.len() > 0).unwrap_or(false))
    };
    while !staged() && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(child.try_wait().unwrap().is_none(), "the publish finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
    let store = LocalStore::open(&store_dir).unwrap();
    assert!(store.tags().unwrap().is_empty(), "a tag survived the kill");
    assert_eq!(fs::read_dir(store_dir.join("staging")).unwrap().count(), 0, "staging not cleaned");
    // The store works normally afterwards.
    let p = store.publish(&src, "1", "again").unwrap();
    assert!(!p.existed);
    store.download("1", &root.join("got")).unwrap();
    assert_eq!(fs::metadata(root.join("got/model.safetensors")).unwrap().len(), 400 << 20);
    fs::remove_dir_all(&root).unwrap();
}
