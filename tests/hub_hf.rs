//! The Hugging Face Hub client against a stand-in server on 127.0.0.1:
//! publish (LFS for the large file, inline for the small), tag, download;
//! an existing tag; injected 5xx, hangs and a connection dropped
//! mid-upload, retried; retries running out with a clear error and no tag.

mod common;

use common::hf_server::{self, Fault, REPO, TOKEN};
use dtrain::data::http::RetryPolicy;
use dtrain::hub::{HfHub, HubError, ModelHub, base64};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn tmp(name: &str) -> PathBuf {
    common::fresh_dir(&format!("hf-{name}"))
}

fn checkpoint(dir: &Path, seed: u8) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.json"), format!("{{\"epoch\": {seed}}}")).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i as u8).wrapping_mul(seed)).collect();
    fs::write(dir.join("model.safetensors"), big).unwrap();
}

fn hub(base: &str, tries: u32) -> HfHub {
    let policy = RetryPolicy { tries, delay: Duration::from_millis(20), timeout: Duration::from_secs(2) };
    HfHub::new(base, REPO, Some(TOKEN.into()), policy).unwrap()
}

#[test]
fn base64_matches_the_rfc_examples() {
    for (plain, enc) in
        [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")]
    {
        assert_eq!(base64(plain.as_bytes()), enc);
    }
}

#[test]
fn publish_then_download_through_lfs_and_inline_files() {
    let server = hf_server::serve();
    let root = tmp("roundtrip");
    checkpoint(&root.join("ck"), 3);
    let hub = hub(&server.base, 3);
    let p = hub.publish(&root.join("ck"), "1", "Epoch 1. Batch Size 8. Peers 2.").unwrap();
    assert!(!p.existed);
    assert_eq!(hub.tags().unwrap(), vec!["1".to_string()]);
    assert_eq!(hub.latest_epoch().unwrap(), Some(1));
    {
        let st = server.state.lock().unwrap();
        assert_eq!(st.lfs.len(), 1, "the safetensors file goes through LFS");
        assert!(st.log.iter().any(|l| l.starts_with("PUT /lfs-upload/")));
    }
    hub.download("1", &root.join("got")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        assert_eq!(fs::read(root.join("ck").join(f)).unwrap(), fs::read(root.join("got").join(f)).unwrap(), "{f}");
    }
    // Publishing the same tag again moves nothing.
    checkpoint(&root.join("ck2"), 5);
    let again = hub.publish(&root.join("ck2"), "1", "other").unwrap();
    assert!(again.existed);
    assert_eq!(again.revision, p.revision);
    assert_eq!(server.state.lock().unwrap().commits.len(), 1);
}

#[test]
fn transient_failures_are_retried() {
    let server = hf_server::serve();
    let root = tmp("retry");
    checkpoint(&root.join("ck"), 7);
    {
        let mut st = server.state.lock().unwrap();
        st.faults.push_back(("/refs".into(), Fault::Status(503)));
        st.faults.push_back(("/lfs-upload/".into(), Fault::DropMidBody));
        st.faults.push_back(("/commit/".into(), Fault::Hang(Duration::from_secs(3))));
        st.faults.push_back(("/tag/".into(), Fault::Status(500)));
        st.faults.push_back(("/resolve/".into(), Fault::Status(502)));
    }
    let hub = hub(&server.base, 3);
    assert!(!hub.publish(&root.join("ck"), "4", "m").unwrap().existed);
    hub.download("4", &root.join("got")).unwrap();
    assert_eq!(fs::read(root.join("ck/model.safetensors")).unwrap(), fs::read(root.join("got/model.safetensors")).unwrap());
    let st = server.state.lock().unwrap();
    assert!(st.faults.is_empty(), "every fault was hit");
    assert_eq!(st.commits.len(), 1, "the hung commit was not applied twice");
}

#[test]
fn retries_running_out_leave_no_tag_and_say_why() {
    let server = hf_server::serve();
    let root = tmp("giveup");
    checkpoint(&root.join("ck"), 9);
    for _ in 0..3 {
        server.state.lock().unwrap().faults.push_back(("/commit/".into(), Fault::Status(500)));
    }
    let hub = hub(&server.base, 3);
    let e = hub.publish(&root.join("ck"), "2", "m").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, HubError::Remote(_)) && msg.contains("HTTP 500") && msg.contains("after 3 tries"), "{msg}");
    assert!(hub.tags().unwrap().is_empty());
    // A client error is not retried.
    let bad = HfHub::new(
        &server.base,
        REPO,
        Some("wrong".into()),
        RetryPolicy { tries: 3, delay: Duration::from_millis(20), timeout: Duration::from_secs(2) },
    )
    .unwrap();
    let e = bad.publish(&root.join("ck"), "2", "m").unwrap_err().to_string();
    assert!(e.contains("HTTP 401") && e.contains("after 1 try"), "{e}");
    assert!(matches!(hub.download("3", &root.join("none")), Err(HubError::Remote(_))));
    assert!(!root.join("none").exists());
}

#[test]
fn bad_repository_names_are_refused() {
    for repo in ["noslash", "a/b/c", "a/../b", "a/b c"] {
        assert!(HfHub::new("http://127.0.0.1:1", repo, None, HfHub::default_policy()).is_err(), "{repo}");
    }
}

#[test]
fn the_hub_command_talks_to_the_hub_given_by_the_environment() {
    let server = hf_server::serve();
    let root = tmp("cli");
    checkpoint(&root.join("ck"), 4);
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
            .args(["-q", "hub"])
            .args(args)
            .env("HF_ENDPOINT", &server.base)
            .env("HF_TOKEN", TOKEN)
            .env("DTRAIN_HF_REPO", REPO)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&["publish", "--tag", "12", "--message", "Epoch 12.", root.join("ck").to_str().unwrap()]).contains("as tag 12"));
    assert_eq!(run(&["tags"]).trim(), "12");
    run(&["download", "--tag", "12", root.join("got").to_str().unwrap()]);
    assert_eq!(fs::read(root.join("ck/config.json")).unwrap(), fs::read(root.join("got/config.json")).unwrap());
}
