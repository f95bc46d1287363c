//! dtrain against the Bittensor Python SDK (bittensor 10.5.0, installed by
//! scripts/bittensor-env.sh into a virtual environment under target/):
//! hotkeys and signatures made by either side verify on the other; a
//! wallet's hotkey file loads; tampered messages and wrong keys fail.

use dtrain::subnet::bittensor::hotkey::{Hotkey, verify};
use std::path::{Path, PathBuf};

fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = std::process::Command::new(root.join("scripts/bittensor-env.sh")).output().unwrap();
    assert!(run.status.success(), "installing bittensor: {}", String::from_utf8_lossy(&run.stderr));
    String::from_utf8(run.stdout).unwrap().trim().into()
}

fn bt(py: &Path, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/bt_keys.py");
    let run = std::process::Command::new(py).arg(script).args(args).output().unwrap();
    assert!(run.status.success(), "bt_keys.py {args:?}: {}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_slice(run.stdout.trim_ascii()).unwrap()
}

#[test]
fn hotkeys_and_signatures_agree_with_the_python_sdk() {
    let py = python();
    let dir = std::env::temp_dir().join(format!("dtrain-bt-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let made = bt(&py, &["new-hotkey", dir.to_str().unwrap()]);
    // The SDK's wallet file loads, to the same address.
    let key = Hotkey::load(Path::new(made["path"].as_str().unwrap())).unwrap();
    assert_eq!(key.ss58(), made["ss58"].as_str().unwrap());

    // The SDK's signature verifies in dtrain; a tampered message does not.
    let msg = "1732000000000000000.5Dendrite.5Axon.uuid-1.a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a";
    let signed = bt(&py, &["sign", made["path"].as_str().unwrap(), msg]);
    let sig = signed["signature"].as_str().unwrap();
    assert_eq!(verify(&key.ss58(), msg.as_bytes(), sig), Ok(true));
    assert_eq!(verify(&key.ss58(), format!("{msg}x").as_bytes(), sig), Ok(false));
    assert_eq!(verify(&Hotkey::generate().ss58(), msg.as_bytes(), sig), Ok(false));

    // dtrain's signature verifies in the SDK; under another key it does not.
    let ours = Hotkey::generate();
    let sig = format!("0x{}", ours.sign(msg.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>());
    assert_eq!(bt(&py, &["verify", &ours.ss58(), msg, &sig])["valid"], true);
    assert_eq!(bt(&py, &["verify", &key.ss58(), msg, &sig])["valid"], false);
    assert_eq!(bt(&py, &["verify", &ours.ss58(), &format!("{msg}x"), &sig])["valid"], false);
    std::fs::remove_dir_all(&dir).unwrap();
}
