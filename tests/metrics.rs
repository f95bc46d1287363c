//! The nodes' /metrics, read as Prometheus reads them: the Prometheus
//! project's own OpenMetrics parser (prometheus_client, installed by
//! scripts/prometheus-env.sh) must accept every scrape, with the types,
//! names and values the node recorded; the endpoint refuses what it does
//! not serve and survives malformed requests; and in a running swarm the
//! master validator's and the miners' endpoints report the epoch, losses,
//! weights, Train work, queries and all-reduce bytes that metrics.jsonl and
//! the rest of the run show.

use dtrain::subnet::metrics::{DirectionLabel, MetricsServer, NodeMetrics, UidLabel};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn python() -> PathBuf {
    let run = std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/prometheus-env.sh")).output().unwrap();
    assert!(run.status.success(), "installing prometheus_client: {}", String::from_utf8_lossy(&run.stderr));
    String::from_utf8(run.stdout).unwrap().trim().into()
}

/// The metric families of an OpenMetrics text, as prometheus_client's
/// parser reads them: name → (type, [(sample name, labels, value)]).
fn parse(python: &Path, text: &str) -> serde_json::Map<String, Value> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the OpenMetrics parser refused the scrape: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_object().unwrap().clone()
}

/// The status line and body of `request` sent to `addr`.
fn http(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request).unwrap();
    let mut reply = Vec::new();
    // A refusal may come with a reset (the server closing on unread bytes):
    // what arrived before it counts.
    let _ = s.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    (head.lines().next().unwrap_or("").to_string(), body.to_string())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(status.contains("200"), "{status}: {body}");
    body
}

/// The value of the sample `sample` whose labels include `labels`.
fn value(families: &serde_json::Map<String, Value>, family: &str, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families.get(family)?["samples"].as_array()?.iter().find_map(|s| {
        let matches = s[0] == sample && labels.iter().all(|(k, v)| s[1][k] == *v);
        matches.then(|| s[2].as_f64()).flatten()
    })
}

fn kind(families: &serde_json::Map<String, Value>, family: &str) -> String {
    families.get(family).map_or_else(|| format!("(no family {family})"), |f| f["type"].as_str().unwrap().to_string())
}

#[test]
fn a_scrape_parses_with_the_types_names_and_values_recorded() {
    let py = python();
    let m = Arc::new(NodeMetrics::new("miner", "cpu (2 threads)"));
    m.epoch.set(7);
    m.train_loss.set(3.25);
    m.train_seconds.observe(1.5);
    m.train_seconds.observe(0.05);
    m.train_tokens.inc_by(4096);
    m.record_query(Some("Train"), 200);
    m.record_query(Some("Train"), 200);
    m.record_query(Some("IsAlive"), 401);
    m.record_query(None, 503);
    m.miner_weight.get_or_create(&UidLabel { uid: "3".into() }).set(0.25);
    m.allreduce_bytes.get_or_create(&DirectionLabel { direction: "sent".into() }).inc_by(1 << 20);
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), m.clone()).unwrap();
    let f = parse(&py, &scrape(server.addr()));

    assert_eq!(kind(&f, "dtrain_build"), "info");
    assert_eq!(value(&f, "dtrain_build", "dtrain_build_info", &[("role", "miner"), ("engine", "cpu (2 threads)")]), Some(1.0));
    assert_eq!(kind(&f, "dtrain_epoch"), "gauge");
    assert_eq!(value(&f, "dtrain_epoch", "dtrain_epoch", &[]), Some(7.0));
    assert_eq!(value(&f, "dtrain_train_loss", "dtrain_train_loss", &[]), Some(3.25));
    assert_eq!(kind(&f, "dtrain_train_duration_seconds"), "histogram");
    assert_eq!(value(&f, "dtrain_train_duration_seconds", "dtrain_train_duration_seconds_count", &[]), Some(2.0));
    assert_eq!(value(&f, "dtrain_train_duration_seconds", "dtrain_train_duration_seconds_sum", &[]), Some(1.55));
    // The first bucket (0.1 s) holds the 0.05 s observation only.
    assert_eq!(value(&f, "dtrain_train_duration_seconds", "dtrain_train_duration_seconds_bucket", &[("le", "0.1")]), Some(1.0));
    assert_eq!(kind(&f, "dtrain_train_tokens"), "counter");
    assert_eq!(value(&f, "dtrain_train_tokens", "dtrain_train_tokens_total", &[]), Some(4096.0));
    assert_eq!(value(&f, "dtrain_queries", "dtrain_queries_total", &[("query", "Train")]), Some(2.0));
    assert_eq!(value(&f, "dtrain_query_refusals", "dtrain_query_refusals_total", &[("reason", "unauthenticated")]), Some(1.0));
    assert_eq!(value(&f, "dtrain_query_refusals", "dtrain_query_refusals_total", &[("reason", "busy")]), Some(1.0));
    assert_eq!(value(&f, "dtrain_miner_weight", "dtrain_miner_weight", &[("uid", "3")]), Some(0.25));
    assert_eq!(kind(&f, "dtrain_allreduce_bytes"), "counter");
    assert_eq!(value(&f, "dtrain_allreduce_bytes", "dtrain_allreduce_bytes_total", &[("direction", "sent")]), Some((1 << 20) as f64));

    // What it does not serve, and what it cannot read, it refuses — and
    // it goes on serving.
    assert!(http(server.addr(), b"GET / HTTP/1.1\r\n\r\n").0.contains("404"));
    assert!(http(server.addr(), b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0.contains("405"));
    let huge = [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &vec![b'a'; 20_000], b"\r\n\r\n"].concat();
    assert!(http(server.addr(), &huge).0.contains("400"));
    assert!(http(server.addr(), b"\r\n\r\n").0.contains("400"));
    // A client that connects and says nothing holds the endpoint for its
    // read timeout at most, not forever.
    let idle = TcpStream::connect(server.addr()).unwrap();
    let f = parse(&py, &scrape(server.addr()));
    assert_eq!(value(&f, "dtrain_epoch", "dtrain_epoch", &[]), Some(7.0));
    drop(idle);
}

#[test]
fn a_swarms_validator_and_miners_serve_what_the_run_did() {
    let py = python();
    let out = std::env::temp_dir().join(format!("dtrain-swarm-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // Every node inherits DTRAIN_METRICS_ADDR: each serves on a port of its
    // own and writes its address to its state directory.
    let mut swarm = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args(["-q", "swarm", "--miners", "2", "--epochs", "2", "--rows", "3", "--data"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fineweb-sample"))
        .arg("--out")
        .arg(&out)
        .env("DTRAIN_METRICS_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = |node: &str| -> Option<SocketAddr> {
        let url = std::fs::read_to_string(out.join(format!("nodes/{node}/metrics.url"))).ok()?;
        url.trim().strip_prefix("http://")?.strip_suffix("/metrics")?.parse().ok()
    };
    let epoch_lines = || std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default().lines().count();
    // Scrape once the first epoch is in metrics.jsonl (the swarm runs on
    // into its second, so every node is still up).
    let started = Instant::now();
    while epoch_lines() == 0 {
        assert!(swarm.try_wait().unwrap().is_none(), "the swarm ended early; see {}", out.display());
        assert!(started.elapsed() < Duration::from_secs(900), "no epoch in 15 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
    let validator = parse(&py, &scrape(url("validator-0").expect("the validator's metrics address")));
    // A miner steps after its part of the round, which may end just after
    // the validator's: scraped until it reports the epoch.
    let miners: Vec<_> = (0..2)
        .map(|i| {
            loop {
                let f = parse(&py, &scrape(url(&format!("miner-{i}")).expect("a miner's metrics address")));
                if value(&f, "dtrain_epoch", "dtrain_epoch", &[]).is_some_and(|e| e >= 1.0) {
                    break f;
                }
                assert!(swarm.try_wait().unwrap().is_none(), "the swarm ended before miner {i} reported an epoch");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .collect();
    assert!(swarm.wait().unwrap().success(), "the swarm failed; see {}", out.display());

    let metrics: Vec<Value> = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let epoch = value(&validator, "dtrain_epoch", "dtrain_epoch", &[]).unwrap();
    assert!(epoch >= 1.0, "{epoch}");
    let line = &metrics[epoch as usize - 1];
    assert_eq!(value(&validator, "dtrain_build", "dtrain_build_info", &[("role", "validator")]), Some(1.0));
    assert_eq!(value(&validator, "dtrain_eval_loss", "dtrain_eval_loss", &[]), line["eval_loss"].as_f64());
    assert_eq!(value(&validator, "dtrain_train_loss", "dtrain_train_loss", &[]), line["loss"].as_f64());
    let weights = line["weights"].as_object().unwrap();
    for (uid, w) in weights {
        assert_eq!(value(&validator, "dtrain_miner_weight", "dtrain_miner_weight", &[("uid", uid.as_str())]), w.as_f64(), "uid {uid}");
    }
    assert!(value(&validator, "dtrain_allreduce_bytes", "dtrain_allreduce_bytes_total", &[("direction", "received")]).unwrap() > 0.0);
    assert_eq!(value(&validator, "dtrain_allreduce_duration_seconds", "dtrain_allreduce_duration_seconds_count", &[]), Some(epoch));
    for (i, m) in miners.iter().enumerate() {
        assert_eq!(value(m, "dtrain_build", "dtrain_build_info", &[("role", "miner")]), Some(1.0), "miner {i}");
        assert!(value(m, "dtrain_queries", "dtrain_queries_total", &[("query", "Train")]).unwrap() >= 1.0, "miner {i}");
        assert!(value(m, "dtrain_queries", "dtrain_queries_total", &[("query", "IsAlive")]).unwrap() >= 1.0, "miner {i}");
        assert!(value(m, "dtrain_train_tokens", "dtrain_train_tokens_total", &[]).unwrap() > 0.0, "miner {i}");
        assert!(value(m, "dtrain_train_tokens_per_second", "dtrain_train_tokens_per_second", &[]).unwrap() > 0.0, "miner {i}");
        let loss = value(m, "dtrain_train_loss", "dtrain_train_loss", &[]).unwrap();
        assert!(loss > 5.0 && loss < 12.0, "miner {i}: {loss}");
        // It stepped, having sent its part.
        assert!(value(m, "dtrain_allreduce_bytes", "dtrain_allreduce_bytes_total", &[("direction", "sent")]).unwrap() > 0.0, "miner {i}");
    }
    std::fs::remove_dir_all(&out).unwrap();
}
