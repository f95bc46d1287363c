//! The signed control plane: queries round-trip with the reference's
//! fields; unsigned, unknown, stale, replayed, tampered, oversized,
//! malformed and mistyped requests are refused with a clear error while the
//! node keeps serving; the concurrency bound; node key files.

use dtrain::allreduce::{Identity, PublicKey};
use dtrain::subnet::auth::{H_NONCE, H_SIGNATURE, sign};
use dtrain::subnet::client::{QueryError, send};
use dtrain::subnet::keyfile;
use dtrain::subnet::protocol::{AllReduce, IsAlive, Query, Train};
use dtrain::subnet::server::{Handler, QueryServer, ServerConfig};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

struct Miner {
    validator: PublicKey,
}

impl Handler for Miner {
    fn known(&self, caller: &PublicKey) -> bool {
        *caller == self.validator
    }
    fn handle(&self, _caller: &PublicKey, q: Query) -> Result<Query, String> {
        Ok(match q {
            Query::IsAlive(_) => Query::IsAlive(IsAlive { completion: Some("True".into()), epoch: Some(7) }),
            Query::Train(t) => Query::Train(Train {
                dataset_indices: Some(vec![10, 11, 12]),
                gradient_sums: Some(vec![0.5, 0.25]),
                loss: Some(3.25),
                batch_size: Some(2),
                ..t
            }),
            Query::AllReduce(a) if a.learning_rate.is_some() => Query::AllReduce(AllReduce { completion: Some("True".into()), ..a }),
            Query::AllReduce(_) => return Err("no learning rate".into()),
        })
    }
}

fn node(cfg: ServerConfig) -> (QueryServer, Identity, PublicKey) {
    let validator = Identity::from_seed([1; 32]);
    let miner = Identity::from_seed([2; 32]);
    let miner_key = miner.public();
    let server = QueryServer::start("127.0.0.1:0".parse().unwrap(), miner, Arc::new(Miner { validator: validator.public() }), cfg).unwrap();
    (server, validator, miner_key)
}

const T: Duration = Duration::from_secs(5);

/// Sends raw bytes, returns (status, body).
fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let _ = s.write_all(request);
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

fn request(path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

fn still_serving(server: &QueryServer, validator: &Identity, miner: &PublicKey) {
    let a = send(validator, miner, &server.addr().to_string(), &Query::IsAlive(IsAlive::default()), T).unwrap();
    assert_eq!(a, Query::IsAlive(IsAlive { completion: Some("True".into()), epoch: Some(7) }));
}

#[test]
fn queries_round_trip_with_the_reference_fields() {
    let (server, validator, miner) = node(ServerConfig::default());
    let addr = server.addr().to_string();
    still_serving(&server, &validator, &miner);
    let t = send(
        &validator,
        &miner,
        &addr,
        &Query::Train(Train { gradient_test_index: Some(4), model_name: Some("gpt2".into()), ..Train::default() }),
        T,
    )
    .unwrap();
    let Query::Train(t) = t else { panic!("{t:?}") };
    assert_eq!((t.gradient_test_index, t.model_name.as_deref(), t.batch_size), (Some(4), Some("gpt2"), Some(2)));
    assert_eq!(t.dataset_indices, Some(vec![10, 11, 12]));
    let a = send(
        &validator,
        &miner,
        &addr,
        &Query::AllReduce(AllReduce { learning_rate: Some(1e-4), min_group_size: Some(5), ..AllReduce::default() }),
        T,
    )
    .unwrap();
    assert_eq!(
        a,
        Query::AllReduce(AllReduce { learning_rate: Some(1e-4), min_group_size: Some(5), completion: Some("True".into()), ..AllReduce::default() })
    );
    // A handler error comes back as a clear refusal.
    let e = send(&validator, &miner, &addr, &Query::AllReduce(AllReduce::default()), T).unwrap_err();
    assert!(matches!(e, QueryError::Refused { status: 500, ref msg, .. } if msg == "no learning rate"), "{e}");
    // The wire JSON is the reference's field names.
    let json: serde_json::Value = serde_json::from_slice(&Query::Train(t).to_json()).unwrap();
    for f in ["gradient_test_index", "model_name", "dataset_indices", "gradient_sums", "loss", "batch_size"] {
        assert!(json.get(f).is_some(), "{f}");
    }
}

#[test]
fn bad_requests_are_refused_and_the_node_keeps_serving() {
    let (server, validator, miner) = node(ServerConfig { max_body: 4096, ..ServerConfig::default() });
    let addr = server.addr();
    let body = br#"{"gradient_test_index": 3}"#.to_vec();
    let signed = sign(&validator, &miner, &body);
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (request("/Train", &[], &body), 401, "unsigned"),
        (request("/Train", &sign(&Identity::from_seed([9; 32]), &miner, &body), &body), 403, "unknown caller"),
        (request("/Train", &signed, br#"{"gradient_test_index": 4}"#), 401, "bad signature"),
        (
            request(
                "/Train",
                &signed.iter().map(|(k, v)| (*k, if *k == H_NONCE { "1000".to_string() } else { v.clone() })).collect::<Vec<_>>(),
                &body,
            ),
            401,
            "stale",
        ),
        (
            request("/Train", &signed.iter().map(|(k, v)| (*k, if *k == H_SIGNATURE { "zz".into() } else { v.clone() })).collect::<Vec<_>>(), &body),
            401,
            "malformed header",
        ),
        (request("/Train", &sign(&validator, &miner, b"{not json"), b"{not json"), 400, "malformed Train body"),
        (
            request("/Train", &sign(&validator, &miner, br#"{"gradient_test_index": "three"}"#), br#"{"gradient_test_index": "three"}"#),
            400,
            "invalid type",
        ),
        (request("/Nope", &signed, &body), 404, "no query"),
        (request("/Train", &sign(&validator, &miner, &vec![b' '; 5000]), &vec![b' '; 5000]), 413, "exceeds the limit"),
        (b"GET /IsAlive HTTP/1.1\r\n\r\n".to_vec(), 405, "not allowed"),
        (format!("POST /Train HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)).into_bytes(), 431, "too long"),
        (b"POST /Train HTTP/1.1\r\n\r\n".to_vec(), 411, "Content-Length"),
        (b"\x16\x03\x01garbage\r\n\r\n".to_vec(), 405, "not allowed"),
    ];
    for (req, status, what) in cases {
        let (got, text) = raw(addr, &req);
        assert_eq!(got, status, "{what}: {text}");
        assert!(text.contains(what), "{what}: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"].is_string());
    }
    // The same signed request twice: the second is a replay.
    let (ok, _) = raw(addr, &request("/Train", &signed, &body));
    assert_eq!(ok, 200);
    let (again, text) = raw(addr, &request("/Train", &signed, &body));
    assert_eq!((again, text.contains("replayed")), (401, true), "{text}");
    still_serving(&server, &validator, &miner);
}

#[test]
fn at_most_max_concurrent_requests_are_served_at_once() {
    let (server, validator, miner) = node(ServerConfig { max_concurrent: 2, io_timeout: Duration::from_millis(500), ..ServerConfig::default() });
    // Two connections that never finish their request hold both slots.
    let idle: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(server.addr()).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let e = send(&validator, &miner, &server.addr().to_string(), &Query::IsAlive(IsAlive::default()), T).unwrap_err();
    assert!(matches!(e, QueryError::Refused { status: 503, .. }), "{e}");
    // Once they time out, the node answers again.
    std::thread::sleep(Duration::from_millis(700));
    still_serving(&server, &validator, &miner);
    drop(idle);
}

#[test]
fn node_keys_are_created_once_and_kept_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("dtrain-keys-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("sub/node.key");
    let a = keyfile::load_or_create(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(keyfile::load_or_create(&path).unwrap().public(), a.public());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(keyfile::load_or_create(&path), Err(keyfile::KeyFileError::Permissions { .. })));
    std::fs::write(dir.join("bad.key"), "not a key").unwrap();
    std::fs::set_permissions(dir.join("bad.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(keyfile::load_or_create(&dir.join("bad.key")), Err(keyfile::KeyFileError::Invalid { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_request_that_stops_midway_times_out() {
    let (server, validator, miner) = node(ServerConfig { io_timeout: Duration::from_millis(300), ..ServerConfig::default() });
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(b"POST /Train HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"grad").unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let start = std::time::Instant::now();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(start.elapsed() < Duration::from_secs(3));
    still_serving(&server, &validator, &miner);
}
