//! Whole all-reduce rounds over loopback TCP, every peer a thread of this
//! test: results against a naive weighted mean (f64) for N = 1…8, awkward
//! lengths and chunk sizes, zero-fraction and zero-weight members and every
//! codec; bit-identical results on every peer; the reports.

use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::{Group, Identity, Member, Peer, Report, Settings, SpanStatus};
use dtrain::rng::Rng;
use std::time::{Duration, Instant};

struct Case {
    n: usize,
    len: usize,
    fractions: Vec<f64>,
    weights: Vec<f32>,
    settings: Settings,
}

fn case(n: usize, len: usize, codec: Codec, chunk_bytes: usize) -> Case {
    Case { n, len, fractions: vec![1.0; n], weights: vec![1.0; n], settings: Settings { codec, chunk_bytes, ..Settings::default() } }
}

fn data(n: usize, len: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng::new(seed);
    (0..n).map(|i| (0..len).map(|_| rng.normal() * (1.0 + i as f32)).collect()).collect()
}

/// Runs one round on `case.n` threads; returns each peer's vector and report.
fn run(case: &Case, inputs: &[Vec<f32>], round: u64) -> Vec<(Vec<f32>, Report)> {
    let peers: Vec<Peer> = (0..case.n).map(|i| Peer::bind(Identity::from_seed([i as u8 + 1; 32]), "127.0.0.1:0".parse().unwrap()).unwrap()).collect();
    let group = Group {
        members: peers
            .iter()
            .enumerate()
            .map(|(i, p)| Member { id: format!("peer{i}"), addr: p.local_addr().unwrap(), key: p.public_key(), fraction: case.fractions[i] })
            .collect(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .into_iter()
            .enumerate()
            .map(|(i, mut peer)| {
                let (group, settings, mut x, w) = (&group, &case.settings, inputs[i].clone(), case.weights[i]);
                s.spawn(move || {
                    let report = peer.all_reduce(group, round, &mut x, w, deadline, settings).unwrap();
                    (x, report)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Per-value error bound of one encode/decode of `x` (see codec.rs).
fn codec_err(codec: Codec, x: f64, block_max: f64) -> f64 {
    match codec {
        Codec::F32 => x.abs() * 2f64.powi(-23),
        Codec::F16 => (x.abs() * 2f64.powi(-11)).max(2f64.powi(-25)),
        Codec::Bf16 => x.abs() * 2f64.powi(-8),
        Codec::Int8 { .. } => block_max / 254.0,
        Codec::TopK { .. } => unreachable!("a sparse codec drops values: tests/allreduce_audit.rs checks it against its own parts"),
    }
}

fn check_mean(case: &Case, inputs: &[Vec<f32>], results: &[(Vec<f32>, Report)]) {
    let codec = case.settings.codec;
    let total: f64 = case.weights.iter().map(|&w| w as f64).sum();
    let block_max: f64 = inputs.iter().flatten().fold(0.0, |m, &v| m.max(v.abs() as f64));
    let mean: Vec<f64> = (0..case.len).map(|e| inputs.iter().zip(&case.weights).map(|(x, &w)| w as f64 * x[e] as f64).sum::<f64>() / total).collect();
    let (first, _) = &results[0];
    for (i, (x, report)) in results.iter().enumerate() {
        assert!(report.failures().is_empty(), "peer {i}: {}", report.summary());
        assert_eq!(x, first, "peer {i} differs from peer 0: results must be bit-identical");
        for m in &report.members {
            assert!(matches!(m.span_status, SpanStatus::Averaged | SpanStatus::Empty), "{m:?}");
        }
    }
    for (e, &want) in mean.iter().enumerate() {
        let contrib: f64 = inputs.iter().zip(&case.weights).map(|(x, &w)| w as f64 * codec_err(codec, x[e] as f64, block_max)).sum::<f64>() / total;
        let bound = contrib + codec_err(codec, want, block_max * 1.01) + 1e-6 * want.abs() + 1e-12;
        let got = first[e] as f64;
        assert!((got - want).abs() <= bound, "element {e}: got {got}, want {want}, bound {bound} ({codec:?}, n {})", case.n);
    }
    // Every peer holding a whole averaged span reports the same hash for it.
    for j in 0..case.n {
        let hashes: Vec<_> = results.iter().map(|(_, r)| r.members[j].hash).collect();
        let span = results[0].1.members[j].span;
        if span.1 > span.0 {
            assert!(hashes.iter().all(|h| h.is_some() && *h == hashes[0]), "span {j}: {hashes:?}");
        }
    }
}

#[test]
fn matches_the_weighted_mean_for_one_to_eight_peers() {
    for n in 1..=8 {
        // Not divisible by n, nor by the chunk (1000 f16 values).
        let c = case(n, 12_347, Codec::F16, 2000);
        let inputs = data(n, c.len, n as u64);
        let results = run(&c, &inputs, 7);
        check_mean(&c, &inputs, &results);
        for (i, (_, r)) in results.iter().enumerate() {
            assert_eq!(r.me, i);
            for (j, m) in r.members.iter().enumerate() {
                assert_eq!(m.contributors, (0..n).collect::<Vec<_>>(), "peer {i} span {j}");
            }
        }
    }
}

#[test]
fn every_codec_stays_within_its_documented_error() {
    for codec in [Codec::F32, Codec::F16, Codec::Bf16, Codec::Int8 { block: 64 }] {
        let c = case(3, 10_001, codec, 4096);
        let inputs = data(3, c.len, 11);
        check_mean(&c, &inputs, &run(&c, &inputs, 1));
    }
}

#[test]
fn zero_fraction_and_zero_weight_members() {
    let mut c = case(5, 9_999, Codec::F32, 1024);
    c.fractions = vec![1.0, 0.0, 2.0, 1.0, 0.0];
    c.weights = vec![3.0, 1.0, 0.0, 2.5, 0.0];
    let inputs = data(5, c.len, 5);
    let results = run(&c, &inputs, 3);
    check_mean(&c, &inputs, &results);
    let r = &results[1].1;
    assert_eq!(r.members[1].span_status, SpanStatus::Empty);
    assert!((4999..=5000).contains(&(r.members[2].span.1 - r.members[2].span.0)), "{:?}", r.members[2].span);
    // Zero-weight members receive but contribute nothing.
    assert_eq!(r.members[0].contributors, vec![0, 1, 3]);
}

#[test]
fn tiny_and_empty_vectors() {
    for len in [0, 1, 3] {
        let c = case(4, len, Codec::F16, 64);
        let inputs = data(4, len, 2);
        check_mean(&c, &inputs, &run(&c, &inputs, 9));
    }
}

#[test]
fn consecutive_rounds_reuse_the_listeners() {
    let c = case(3, 5000, Codec::Bf16, 1000);
    let peers: Vec<Peer> = (0..3).map(|i| Peer::bind(Identity::from_seed([i as u8 + 40; 32]), "127.0.0.1:0".parse().unwrap()).unwrap()).collect();
    let group = Group::equal(peers.iter().enumerate().map(|(i, p)| (format!("p{i}"), p.local_addr().unwrap(), p.public_key())));
    let inputs = data(3, c.len, 4);
    std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .into_iter()
            .enumerate()
            .map(|(i, mut peer)| {
                let (group, settings, input) = (&group, &c.settings, &inputs[i]);
                s.spawn(move || {
                    let mut outs = Vec::new();
                    for round in 100..104 {
                        let mut x = input.clone();
                        let deadline = Instant::now() + Duration::from_secs(30);
                        let r = peer.all_reduce(group, round, &mut x, 1.0, deadline, settings).unwrap();
                        assert!(r.failures().is_empty(), "{}", r.summary());
                        outs.push(x);
                    }
                    outs
                })
            })
            .collect();
        let outs: Vec<Vec<Vec<f32>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for round in 0..4 {
            assert_eq!(outs[0][round], outs[1][round]);
            assert_eq!(outs[0][round], outs[2][round]);
            assert_eq!(outs[0][round], outs[0][0]);
        }
    });
}

#[test]
fn the_benchmark_command_runs_peer_processes_end_to_end() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dtrain"))
        .args([
            "-q",
            "bench",
            "allreduce",
            "--peers",
            "3",
            "--elems",
            "70K",
            "--codec",
            "fp16",
            "int8:64",
            "--iters",
            "2",
            "--warmup",
            "0",
            "--no-gloo",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("TCP pump") && text.contains("fp16") && text.contains("int8:64"), "{text}");
}

#[test]
fn groups_and_codecs_parse_with_clear_errors() {
    let key = Identity::from_seed([3; 32]).public().to_hex();
    let ok = format!(r#"[{{"id":"a","addr":"127.0.0.1:5000","key":"{key}"}}]"#);
    let g = Group::from_json(&ok).unwrap();
    assert_eq!(g.members[0].fraction, 1.0);
    assert_eq!(Group::from_json(&g.to_json()).unwrap(), g);
    for (bad, why) in [
        ("[]".to_string(), "no members"),
        ("{".to_string(), "group JSON"),
        (ok.replace("127.0.0.1:5000", "nowhere"), "address"),
        (ok.replace(&key, "abcd"), "key"),
        (ok.replace(r#""key""#, r#""fraction":-1,"key""#), "fraction"),
    ] {
        let e = format!("{:#}", Group::from_json(&bad).unwrap_err());
        assert!(e.contains(why), "{bad}: {e}");
    }
    assert_eq!("fp16".parse::<Codec>(), Ok(Codec::F16));
    assert_eq!("int8:32".parse::<Codec>(), Ok(Codec::Int8 { block: 32 }));
    assert!("int8:0".parse::<Codec>().is_err() && "fp8".parse::<Codec>().is_err());
}

#[test]
fn a_sum_that_overflows_is_not_averaged_but_kept_local() {
    // fp16 saturates at 65504 before anything is summed; the others keep
    // the range of f32 (and int8's last run is partial: 3000 = 11·256 + 184).
    for codec in [Codec::F32, Codec::Bf16, Codec::Int8 { block: 256 }] {
        let c = case(2, 3000, codec, 4000);
        let inputs = vec![vec![3e38f32; 3000], vec![3e38f32; 3000]];
        for (i, (x, r)) in run(&c, &inputs, 5).into_iter().enumerate() {
            assert!(r.failures().is_empty(), "{codec}: {}", r.summary());
            assert!(x.iter().zip(&inputs[i]).all(|(v, w)| v == w), "{codec}: peer {i} keeps its values");
            assert_eq!(r.members[i].span_status, SpanStatus::KeptLocal, "{codec}: peer {i}");
        }
    }
}

/// Rounds back to back on the same peers, each peer a thread that runs
/// `rounds[r]` (the members taking part, by peer index) in turn; between
/// rounds `between(r, i, peer)` may touch peer i. Returns, per round, each
/// taking-part peer's (index, vector, report).
fn rounds_on_same_peers(
    n: usize,
    len: usize,
    rounds: &[Vec<usize>],
    keep: bool,
    between: impl Fn(usize, usize, &mut Peer) + Sync,
) -> Vec<Vec<(usize, Vec<f32>, Report)>> {
    let peers: Vec<Peer> = (0..n).map(|i| Peer::bind(Identity::from_seed([i as u8 + 1; 32]), "127.0.0.1:0".parse().unwrap()).unwrap()).collect();
    let all: Vec<Member> = peers
        .iter()
        .enumerate()
        .map(|(i, p)| Member { id: format!("peer{i}"), addr: p.local_addr().unwrap(), key: p.public_key(), fraction: 1.0 })
        .collect();
    let settings = Settings { codec: Codec::F16, chunk_bytes: 4096, keep_connections: keep, ..Settings::default() };
    let inputs = data(n, len, 31);
    let between = &between;
    let per_peer: Vec<Vec<(usize, Vec<f32>, Report)>> = std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .into_iter()
            .enumerate()
            .map(|(i, mut peer)| {
                let (all, settings, inputs) = (&all, &settings, &inputs);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for (r, members) in rounds.iter().enumerate() {
                        between(r, i, &mut peer);
                        if !members.contains(&i) {
                            continue;
                        }
                        let group = Group { members: members.iter().map(|&m| all[m].clone()).collect() };
                        let mut x = inputs[i].clone();
                        let deadline = Instant::now() + Duration::from_secs(60);
                        let report = peer.all_reduce(&group, 7, &mut x, 1.0, deadline, settings).unwrap();
                        out.push((r, x, report));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (0..rounds.len())
        .map(|r| {
            let mut got: Vec<(usize, Vec<f32>, Report)> =
                per_peer.iter().enumerate().flat_map(|(i, v)| v.iter().filter(|e| e.0 == r).map(move |e| (i, e.1.clone(), e.2.clone()))).collect();
            got.sort_by_key(|g| g.0);
            // Every round is a whole, correct round: the same bits
            // everywhere, within fp16's rounding of the naive mean.
            let members = &rounds[r];
            let sub: Vec<Vec<f32>> = members.iter().map(|&m| inputs[m].clone()).collect();
            let case =
                Case { n: members.len(), len, fractions: vec![1.0; members.len()], weights: vec![1.0; members.len()], settings: settings.clone() };
            let results: Vec<(Vec<f32>, Report)> = got.iter().map(|g| (g.1.clone(), g.2.clone())).collect();
            check_mean(&case, &sub, &results);
            // A kept connection that fails is not a refusal. (A fresh
            // dial may be: one that reaches a peer still finishing the
            // round before is refused by it, and dialed again.)
            for (i, _, report) in got.iter().filter(|g| g.2.reused + 1 == members.len()) {
                assert!(report.refused.is_empty(), "round {r}, peer {i}: {:?}", report.refused);
            }
            got
        })
        .collect()
}

#[test]
fn connections_are_kept_for_the_next_round_and_a_peer_that_kept_none_is_dialed_afresh() {
    // Round 0 dials the mesh; round 1 runs its handshakes on the kept
    // connections; before round 2 peer 2 closes its kept connections, so
    // the others' kept ones to it fail (quietly: no refusal reported) and
    // it is dialed afresh; round 3 leaves peer 1 out, so the others'
    // indices shift and the kept connections are found by key.
    let rounds = [vec![0, 1, 2, 3], vec![0, 1, 2, 3], vec![0, 1, 2, 3], vec![0, 2, 3]];
    let out = rounds_on_same_peers(4, 50_000, &rounds, true, |r, i, peer| {
        if r == 2 && i == 2 {
            peer.close_kept();
        }
    });
    let reused = |r: usize| out[r].iter().map(|g| g.2.reused).collect::<Vec<_>>();
    assert_eq!(reused(0), [0, 0, 0, 0]);
    assert_eq!(reused(1), [3, 3, 3, 3]);
    assert_eq!(reused(2), [2, 2, 0, 2]);
    assert_eq!(reused(3), [2, 2, 2]);
}

#[test]
fn without_keep_connections_every_round_dials() {
    let out = rounds_on_same_peers(3, 10_000, &[vec![0, 1, 2], vec![0, 1, 2]], false, |_, _, _| {});
    let reused: Vec<Vec<usize>> = (0..3).map(|i| out.iter().map(|round| round[i].2.reused).collect()).collect();
    assert_eq!(reused, vec![vec![0, 0]; 3]);
}

#[test]
fn connections_run_the_congestion_control_asked_for() {
    // The kernel's own lists are the reference: what it offers to every
    // process, and its default for sockets that ask for nothing.
    let read =
        |f: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/{f}")).map(|s| s.split_whitespace().map(String::from).collect::<Vec<_>>());
    let (Ok(allowed), Ok(default)) = (read("tcp_allowed_congestion_control"), read("tcp_congestion_control")) else {
        eprintln!("SKIPPED: no /proc/sys/net/ipv4 congestion control files here");
        return;
    };
    let x = data(3, 10_000, 8);
    let mut c = case(3, 10_000, Codec::F16, 4096);
    // Nothing asked: the kernel's default.
    c.settings.congestion_control = None;
    for (_, report) in run(&c, &x, 1) {
        assert_eq!(report.congestion, default, "{}", report.summary());
    }
    // Asked for, and allowed to any process (or we are root): granted.
    let root = unsafe { libc::geteuid() } == 0;
    for name in ["bbr", "cubic", "reno"] {
        if !allowed.iter().any(|a| a == name) && !root {
            eprintln!("SKIPPED: {name} is not allowed to unprivileged sockets here");
            continue;
        }
        c.settings.congestion_control = Some(name.into());
        let results = run(&c, &x, 2);
        if results[0].1.congestion != [name]
            && !std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control").unwrap_or_default().contains(name)
        {
            eprintln!("SKIPPED: this kernel has no {name}");
            continue;
        }
        for (_, report) in results {
            assert_eq!(report.congestion, [name], "{}", report.summary());
        }
    }
    // One the kernel does not have: its default, and the round runs.
    c.settings.congestion_control = Some("no-such-algorithm".into());
    for (_, report) in run(&c, &x, 3) {
        assert_eq!(report.congestion, default);
        assert!(report.failures().is_empty());
    }
}
