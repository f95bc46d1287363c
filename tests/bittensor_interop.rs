//! dtrain against the Bittensor Python SDK (bittensor 10.5.0, installed by
//! scripts/bittensor-env.sh into a virtual environment under target/):
//! hotkeys and signatures made by either side verify on the other; a
//! wallet's hotkey file loads; tampered messages and wrong keys fail. A
//! stock `bittensor.Dendrite` queries a dtrain miner (IsAlive, Train) and
//! gets answers that deserialize into dtrain's Python synapse classes; a
//! tampered body, a stale nonce, a replay and an unknown hotkey are refused.
//! dtrain's dendrite (and dtrain's validator through it) queries a stock
//! Python Axon. With bittensor 11.3.0's
//! `http_auth` (btauth/1): SDK-signed requests reach a dtrain miner (stale,
//! replayed, misaddressed ones do not), and dtrain's signatures verify in
//! the SDK.

use dtrain::allreduce::{Identity, Peer};
use dtrain::data::source::{ParquetRows, RowSource};
use dtrain::data::used_rows::UsedRows;
use dtrain::engine::cpu::CpuEngine;
use dtrain::model::{Gpt, GptConfig};
use dtrain::optim::{Optimizer, OptimizerConfig, OptimizerKind};
use dtrain::subnet::bittensor::hotkey::{Hotkey, verify};
use dtrain::subnet::miner::{Miner, MinerConfig};
use dtrain::subnet::registry::{FileRegistry, Registry, Role};
use dtrain::subnet::server::{QueryServer, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

fn python() -> PathBuf {
    python_of("10.5.0")
}

fn python_of(version: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = std::process::Command::new(root.join("scripts/bittensor-env.sh")).arg(version).output().unwrap();
    assert!(run.status.success(), "installing bittensor: {}", String::from_utf8_lossy(&run.stderr));
    String::from_utf8(run.stdout).unwrap().trim().into()
}

/// Sets registry entry `uid`'s Bittensor hotkey (and, with `hotkey_only`,
/// drops its dtrain key: a node of the Python tooling).
fn set_hotkey(registry_path: &Path, uid: usize, hotkey: &str, hotkey_only: bool) {
    let mut nodes: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(registry_path).unwrap()).unwrap();
    nodes[uid]["hotkey"] = hotkey.into();
    if hotkey_only {
        nodes[uid]["key"] = "".into();
    }
    std::fs::write(registry_path, serde_json::to_string(&nodes).unwrap()).unwrap();
}

/// A dtrain miner (small model, 4 rows per Train, batches of 2×64) behind a
/// query server with its own Bittensor hotkey.
fn miner_with_hotkey(dir: &Path, registry: Arc<dyn Registry>) -> (QueryServer, Hotkey) {
    let mut model = Gpt::new(CpuEngine::new(), GptConfig::preset("small").unwrap()).unwrap();
    model.init_random(5);
    let opt = Optimizer::new(&model, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let src = ParquetRows::open_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")).unwrap();
    let used = UsedRows::open(&dir.join("used.bin"), src.num_rows()).unwrap();
    let peer = Peer::bind(Identity::from_seed([9; 32]), "127.0.0.1:0".parse().unwrap()).unwrap();
    let cfg = MinerConfig { batch: 2, seq: 64, rows_per_train: 4, ..MinerConfig::default() };
    let miner = Arc::new(Miner::new(cfg, model, opt, Box::new(src), used, peer, registry, 3));
    let me = Hotkey::generate();
    let server_cfg = ServerConfig { hotkey: Some(me.clone()), ..ServerConfig::default() };
    (QueryServer::start("127.0.0.1:0".parse().unwrap(), Identity::from_seed([9; 32]), miner, server_cfg).unwrap(), me)
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

fn dendrite(py: &Path, hotkey_file: &str, axon: &str, port: u16, case: &str) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/bt_dendrite.py");
    let run = std::process::Command::new(py).arg(script).args([hotkey_file, axon, &port.to_string(), case]).output().unwrap();
    assert!(run.status.success(), "bt_dendrite.py {case}: {}", String::from_utf8_lossy(&run.stderr));
    serde_json::from_slice(run.stdout.trim_ascii()).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&run.stdout)))
}

#[test]
fn a_python_dendrite_queries_a_dtrain_miner() {
    let py = python();
    let dir = std::env::temp_dir().join(format!("dtrain-bt-axon-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The Python validator's wallet, registered as a validator by hotkey.
    let made = bt(&py, &["new-hotkey", dir.join("wallets").to_str().unwrap()]);
    let validator_hotkey = made["ss58"].as_str().unwrap().to_string();
    let hotkey_file = made["path"].as_str().unwrap().to_string();
    let registry_path = dir.join("registry.json");
    let registry: Arc<dyn Registry> = Arc::new(FileRegistry::new(&registry_path));
    registry.join(&Identity::from_seed([1; 32]).public(), "127.0.0.1:1", "127.0.0.1:2".parse().unwrap(), Role::Validator).unwrap();
    set_hotkey(&registry_path, 0, &validator_hotkey, false);
    // A second validator, dtrain's own dendrite with a hotkey.
    let rust_validator = Hotkey::generate();
    registry.join(&Identity::from_seed([2; 32]).public(), "127.0.0.1:3", "127.0.0.1:4".parse().unwrap(), Role::Validator).unwrap();
    set_hotkey(&registry_path, 1, &rust_validator.ss58(), false);

    // A dtrain miner with its own hotkey.
    let (server, me) = miner_with_hotkey(&dir, registry.clone());
    let port = server.addr().port();

    let alive = dendrite(&py, &hotkey_file, &me.ss58(), port, "isalive");
    assert_eq!(alive["status_code"], 200, "{alive}");
    assert_eq!(alive["fields"]["completion"], "True", "{alive}");
    assert_eq!(alive["fields"]["epoch"], 0, "{alive}");
    assert_eq!(alive["axon_hotkey"], me.ss58().as_str(), "{alive}");

    let train = dendrite(&py, &hotkey_file, &me.ss58(), port, "train");
    assert_eq!(train["status_code"], 200, "{train}");
    let f = &train["fields"];
    assert_eq!(f["dataset_indices"].as_array().map(|a| a.len()), Some(4), "{train}");
    // One sum per batch of 2×64 tokens cut from the 4 rows' text.
    assert!(f["gradient_sums"].as_array().is_some_and(|a| !a.is_empty()), "{train}");
    assert!(f["gradient_sums"].as_array().unwrap().iter().all(|v| v.as_f64().unwrap() > 0.0), "{train}");
    assert!(f["loss"].as_f64().is_some_and(|l| l > 5.0 && l < 12.0), "{train}");
    assert_eq!(f["batch_size"], 2, "{train}");

    // A body changed after signing, an hour-old nonce, a replay: refused.
    let tampered = dendrite(&py, &hotkey_file, &me.ss58(), port, "tampered");
    assert_eq!(tampered["status_code"], 401, "{tampered}");
    assert!(tampered["body"].as_str().unwrap().contains("computed_body_hash"), "{tampered}");
    let stale = dendrite(&py, &hotkey_file, &me.ss58(), port, "stale");
    assert_eq!(stale["status_code"], 401, "{stale}");
    assert!(stale["body"].as_str().unwrap().contains("stale"), "{stale}");
    let replayed = dendrite(&py, &hotkey_file, &me.ss58(), port, "replayed");
    assert_eq!(replayed["first"], 200, "{replayed}");
    assert_eq!(replayed["status_code"], 401, "{replayed}");
    assert!(replayed["body"].as_str().unwrap().contains("replayed"), "{replayed}");

    // dtrain's dendrite: the answer is signed by the miner's hotkey.
    {
        use dtrain::subnet::bittensor::dendrite;
        use dtrain::subnet::protocol::{IsAlive, Query};
        let t = std::time::Duration::from_secs(10);
        let addr = server.addr().to_string();
        let got = dendrite::call(&rust_validator, &me.ss58(), &addr, &Query::IsAlive(IsAlive::default()), t).unwrap();
        assert_eq!(got, Query::IsAlive(IsAlive { completion: Some("True".into()), epoch: Some(0) }));
        let e = dendrite::call(&rust_validator, &Hotkey::generate().ss58(), &addr, &Query::IsAlive(IsAlive::default()), t).unwrap_err();
        assert!(matches!(e, dtrain::subnet::client::QueryError::Refused { status: 401, .. }), "signed for another axon: {e}");
    }

    // A hotkey that is not a registered validator: refused.
    let stranger = bt(&py, &["new-hotkey", dir.join("strangers").to_str().unwrap()]);
    let refused = dendrite(&py, stranger["path"].as_str().unwrap(), &me.ss58(), port, "isalive");
    assert_eq!(refused["status_code"], 403, "{refused}");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dtrains_dendrite_queries_a_python_axon() {
    use dtrain::subnet::bittensor::dendrite;
    use dtrain::subnet::protocol::{IsAlive, Query, Train};
    use std::io::BufRead;
    let py = python();
    let dir = std::env::temp_dir().join(format!("dtrain-bt-dendrite-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let me = Hotkey::generate();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/bt_axon.py");
    let mut child = std::process::Command::new(&py)
        .arg(script)
        .arg(&dir)
        .arg(me.ss58())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    // Kept open to the end: the axon logs to it.
    let mut axon_out = std::io::BufReader::new(child.stdout.take().unwrap());
    axon_out.read_line(&mut line).unwrap();
    let info: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    let (axon, addr) = (info["ss58"].as_str().unwrap().to_string(), format!("127.0.0.1:{}", info["port"]));
    let t = std::time::Duration::from_secs(30);
    // uvicorn may take a moment to accept.
    let start = std::time::Instant::now();
    let alive = loop {
        match dendrite::call(&me, &axon, &addr, &Query::IsAlive(IsAlive::default()), t) {
            Err(dtrain::subnet::client::QueryError::Transport { .. }) if start.elapsed() < t => {
                std::thread::sleep(std::time::Duration::from_millis(200))
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(alive, Query::IsAlive(IsAlive { completion: Some("True".into()), epoch: Some(7) }));
    let q = Query::Train(Train { gradient_test_index: Some(3), model_name: Some("dtrain".into()), ..Train::default() });
    let Query::Train(a) = dendrite::call(&me, &axon, &addr, &q, t).unwrap() else { panic!() };
    assert_eq!(a.dataset_indices, Some(vec![10, 11, 12]));
    assert_eq!(a.gradient_sums, Some(vec![0.25, 0.5]));
    assert_eq!((a.loss, a.batch_size), (Some(3.5), Some(3)));
    // The SDK's axon refuses a hotkey it does not allow, and a request
    // signed for another axon hotkey.
    let stranger = Hotkey::generate();
    let e = dendrite::call(&stranger, &axon, &addr, &Query::IsAlive(IsAlive::default()), t).unwrap_err();
    assert!(matches!(e, dtrain::subnet::client::QueryError::Refused { status: 403, .. }), "{e}");
    let e = dendrite::call(&me, &Hotkey::generate().ss58(), &addr, &Query::IsAlive(IsAlive::default()), t).unwrap_err();
    assert!(matches!(e, dtrain::subnet::client::QueryError::Refused { .. }), "{e}");

    // dtrain's validator, with a hotkey, finds the Python miner (registered
    // by its hotkey alone) alive and scores its (canned, unverifiable) work.
    let registry_path = dir.join("registry.json");
    let registry: Arc<dyn Registry> = Arc::new(FileRegistry::new(&registry_path));
    let vpeer = Peer::bind(Identity::from_seed([1; 32]), "127.0.0.1:0".parse().unwrap()).unwrap();
    registry.join(&Identity::from_seed([1; 32]).public(), "127.0.0.1:1", vpeer.local_addr().unwrap(), Role::Validator).unwrap();
    registry.join(&Identity::from_seed([3; 32]).public(), &addr, "127.0.0.1:9".parse().unwrap(), Role::Miner).unwrap();
    set_hotkey(&registry_path, 1, &axon, true);
    let mut vm = Gpt::new(CpuEngine::new(), GptConfig::preset("tiny").unwrap()).unwrap();
    vm.init_random(1);
    let vopt = Optimizer::new(&vm, OptimizerConfig::new(OptimizerKind::Adamw)).unwrap();
    let src = ParquetRows::open_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample")).unwrap();
    // Generous timeouts: the Python axon is slow on a loaded machine.
    let cfg = dtrain::subnet::validator::ValidatorConfig { seq: 32, isalive_timeout: Duration::from_secs(30), ..Default::default() };
    let v = dtrain::subnet::validator::Validator::new(cfg, Identity::from_seed([1; 32]), registry, Box::new(src), vm, vopt, vpeer, 4)
        .with_hotkey(me.clone());
    let live = v.live_miners();
    assert_eq!(live.iter().map(|(n, e)| (n.uid, *e)).collect::<Vec<_>>(), vec![(1, 7)], "the Python miner answers IsAlive");
    let outcomes = v.train_round(&live.into_iter().map(|(n, _)| n).collect::<Vec<_>>());
    assert_eq!(outcomes[0].loss, Some(3.5), "its Train answer arrived: {:?}", outcomes[0]);
    assert!(outcomes[0].gradient < 0.5, "canned gradient sums do not replay: {:?}", outcomes[0]);

    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    drop(axon_out);
    let _ = std::fs::remove_dir_all(&dir);
}

fn http_auth(py: &Path, args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/bt_http_auth.py");
    let run = std::process::Command::new(py).arg(script).args(args).output().unwrap();
    assert!(run.status.success(), "bt_http_auth.py {:?}: {}", &args[..1], String::from_utf8_lossy(&run.stderr));
    serde_json::from_slice(run.stdout.trim_ascii()).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&run.stdout)))
}

#[test]
fn btauth_requests_from_the_sdk_11_reach_a_dtrain_miner_and_back() {
    use dtrain::subnet::bittensor::btauth;
    let py = python_of("11.3.0");
    let dir = std::env::temp_dir().join(format!("dtrain-btauth-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The Python caller's key from a seed both sides know: same address.
    let seed = [0x5au8; 32];
    let seed_hex = format!("0x{}", seed.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let caller = Hotkey::from_seed(seed);
    assert_eq!(http_auth(&py, &["address", &seed_hex])["ss58"], caller.ss58().as_str());

    let registry_path = dir.join("registry.json");
    let registry: Arc<dyn Registry> = Arc::new(FileRegistry::new(&registry_path));
    registry.join(&Identity::from_seed([1; 32]).public(), "127.0.0.1:1", "127.0.0.1:2".parse().unwrap(), Role::Validator).unwrap();
    set_hotkey(&registry_path, 0, &caller.ss58(), false);
    let (server, me) = miner_with_hotkey(&dir, registry);
    let url = format!("http://{}", server.addr());

    let ok = http_auth(&py, &["call", &seed_hex, &url, "/IsAlive", "{}", &me.ss58()]);
    assert_eq!(ok["status"], 200, "{ok}");
    let answer: serde_json::Value = serde_json::from_str(ok["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["completion"], "True", "{ok}");
    let stale = http_auth(&py, &["call", &seed_hex, &url, "/IsAlive", "{}", &me.ss58(), "stale"]);
    assert_eq!(stale["status"], 401, "{stale}");
    let replay = http_auth(&py, &["call", &seed_hex, &url, "/IsAlive", "{}", &me.ss58(), "replay"]);
    assert_eq!((replay["first"].as_u64(), replay["status"].as_u64()), (Some(200), Some(401)), "{replay}");
    let elsewhere = http_auth(&py, &["call", &seed_hex, &url, "/IsAlive", "{}", &Hotkey::generate().ss58()]);
    assert_eq!(elsewhere["status"], 401, "{elsewhere}");
    let stranger = format!("0x{}", "77".repeat(32));
    let unknown = http_auth(&py, &["call", &stranger, &url, "/IsAlive", "{}", &me.ss58()]);
    assert_eq!(unknown["status"], 403, "{unknown}");

    // dtrain signs; the SDK verifies (and refuses a changed body).
    let receiver = Hotkey::generate().ss58();
    let headers: serde_json::Map<String, serde_json::Value> =
        btauth::sign(&me, "POST", "/Train", br#"{"gradient_test_index":3}"#, &receiver).into_iter().map(|(k, v)| (k.to_string(), v.into())).collect();
    let headers = serde_json::Value::Object(headers).to_string();
    let v = http_auth(&py, &["verify", &headers, r#"{"gradient_test_index":3}"#, "POST", "/Train", &receiver]);
    assert_eq!(v["caller"], me.ss58().as_str(), "{v}");
    let v = http_auth(&py, &["verify", &headers, r#"{"gradient_test_index":4}"#, "POST", "/Train", &receiver]);
    assert_eq!(v["error"], "BadSignature", "{v}");
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}
