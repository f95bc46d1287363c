//! All-reduce rounds with a misbehaving member, each fault in its own
//! test: killed before connecting, during scatter, during gather (real
//! processes that really exit), stalled, garbage and oversized frames, a
//! wrong key, a replayed handshake, a wrong round, NaN contributions. Each
//! round must end before its deadline with the average over the survivors
//! and a report that names the culprit; nothing panics.

use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::handshake::{AUTH_LEN, HELLO_LEN, Hello, sign_auth};
use dtrain::allreduce::identity::random_bytes;
use dtrain::allreduce::wire::{HEADER_LEN, Header, Kind};
use dtrain::allreduce::{Failure, Group, Identity, Member, Peer, Report, Settings, SpanStatus};
use dtrain::bench::allreduce::{PeerProcess, fill, key_seed};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const LEN: usize = 50_000;
const ROUND: u64 = 42;

fn settings() -> Settings {
    Settings {
        codec: Codec::F32,
        chunk_bytes: 16 << 10,
        connect_timeout: Duration::from_secs(2),
        stall_timeout: Duration::from_secs(1),
        ..Settings::default()
    }
}

fn identity(i: usize) -> Identity {
    Identity::from_seed(key_seed(500 + i as u64))
}

/// What each member of the test group is.
enum Role {
    /// An honest peer on a thread of this test (its input, its weight).
    Thread,
    /// A `dtrain allreduce-peer` process with these extra arguments.
    Child(Vec<String>),
    /// Listed in the group, but nobody listens at its address.
    Absent,
    /// Listed in the group; the test itself plays it (see `Rogue`).
    Rogue,
}

struct Outcome {
    /// (member index, final vector, report) of every thread peer.
    results: Vec<(usize, Vec<f32>, Report)>,
    group: Group,
    wall: Duration,
}

fn unused_addr() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap() // dropped: nothing listens there any more
}

/// Runs one round with these roles; `rogue` plays the Rogue member (index
/// 0, which dials everybody) while the threads run.
fn run(roles: &[Role], inputs: &[Vec<f32>], rogue: impl FnOnce(&Group) + Send, deadline: Duration) -> Outcome {
    let exe = Path::new(env!("CARGO_BIN_EXE_dtrain"));
    let mut peers = Vec::new();
    let mut children = Vec::new();
    let mut members = Vec::new();
    for (i, role) in roles.iter().enumerate() {
        let (addr, key) = match role {
            Role::Thread => {
                let p = Peer::bind(identity(i), "127.0.0.1:0".parse().unwrap()).unwrap();
                let r = (p.local_addr().unwrap(), p.public_key());
                peers.push((i, p));
                r
            }
            Role::Child(extra) => {
                let mut args: Vec<String> = vec![
                    "--key-seed".into(),
                    (500 + i).to_string(),
                    "--index".into(),
                    i.to_string(),
                    "--elems".into(),
                    LEN.to_string(),
                    "--codec".into(),
                    "fp32".into(),
                    "--chunk-bytes".into(),
                    (16 << 10).to_string(),
                    "--round".into(),
                    ROUND.to_string(),
                    "--connect-s".into(),
                    "2".into(),
                    "--stall-s".into(),
                    "1".into(),
                    "--deadline-s".into(),
                    deadline.as_secs_f64().to_string(),
                ];
                args.extend(extra.iter().cloned());
                let p = PeerProcess::spawn(exe, &args).unwrap();
                let r = (p.addr.parse().unwrap(), dtrain::allreduce::PublicKey::from_hex(&p.key).unwrap());
                children.push(p);
                r
            }
            Role::Absent | Role::Rogue => (unused_addr(), identity(i).public()),
        };
        members.push(Member { id: format!("m{i}"), addr, key, fraction: 1.0 });
    }
    let group = Group { members };
    for c in &mut children {
        c.send(&group.to_json()).unwrap();
        c.recv().unwrap(); // ready
        c.send("go").unwrap();
    }
    let settings = settings();
    let start = Instant::now();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = peers
            .into_iter()
            .map(|(i, mut peer)| {
                let (group, settings, mut x) = (&group, &settings, inputs[i].clone());
                s.spawn(move || {
                    let report = peer.all_reduce(group, ROUND, &mut x, 1.0, start + deadline, settings).unwrap();
                    (i, x, report)
                })
            })
            .collect();
        rogue(&group);
        handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
    });
    let wall = start.elapsed();
    for mut c in children {
        let _ = c.child.kill();
        let _ = c.child.wait();
    }
    Outcome { results, group, wall }
}

fn inputs(n: usize) -> Vec<Vec<f32>> {
    (0..n).map(|i| fill("random", i, LEN)).collect()
}

fn mean_of(inputs: &[Vec<f32>], who: &[usize], e: usize) -> f64 {
    who.iter().map(|&i| inputs[i][e] as f64).sum::<f64>() / who.len() as f64
}

/// Every thread peer: `failed` named with a failure of the expected kind;
/// spans of survivors averaged over `survivors` (or, where `partial`, over
/// `survivors` plus the failed member for the chunks it delivered) and
/// bit-identical across peers; the failed member's span kept local.
fn check(o: &Outcome, inputs: &[Vec<f32>], survivors: &[usize], failed: usize, partial: bool, kind: impl Fn(&Failure) -> bool) {
    let mut with_failed = survivors.to_vec();
    with_failed.push(failed);
    for (i, x, r) in &o.results {
        let f = r.members[failed].failure.as_ref().unwrap_or_else(|| panic!("peer {i} did not name member {failed}: {}", r.summary()));
        assert!(kind(f), "peer {i}: member {failed} failed with an unexpected reason: {f}");
        for (j, m) in r.members.iter().enumerate() {
            if j != failed && j != *i && survivors.contains(&j) {
                assert!(m.failure.is_none(), "peer {i}: survivor {j} failed: {}", r.summary());
            }
            let (a, b) = m.span;
            if j == failed {
                match m.span_status {
                    SpanStatus::KeptLocal => assert_eq!(&x[a..b], &inputs[*i][a..b], "peer {i}: span of the failed member is local"),
                    SpanStatus::Partial { .. } if partial => {}
                    ref s => panic!("peer {i}: span of the failed member is {s:?}"),
                }
                continue;
            }
            if !survivors.contains(&j) {
                continue;
            }
            for (e, &got) in x.iter().enumerate().take(b).skip(a) {
                let got = got as f64;
                let ok = |want: f64| (got - want).abs() <= 1e-5 * (1.0 + want.abs());
                assert!(
                    ok(mean_of(inputs, survivors, e)) || (partial && ok(mean_of(inputs, &with_failed, e))),
                    "peer {i} element {e} (span {j}): {got} is no mean over the survivors"
                );
            }
        }
    }
    // Survivors decode the same bytes for the survivors' spans.
    let (first_i, first, _) = &o.results[0];
    for (i, x, _) in &o.results[1..] {
        for &j in survivors {
            let (a, b) = o.results[0].2.members[j].span;
            assert_eq!(&x[a..b], &first[a..b], "peers {first_i} and {i} differ on span {j}");
        }
    }
    let limit = Duration::from_secs(20);
    assert!(o.wall < limit, "the round took {:?}", o.wall);
    let _ = &o.group;
}

#[test]
fn a_peer_that_never_connects_is_left_out() {
    let data = inputs(4);
    let roles = [Role::Thread, Role::Absent, Role::Thread, Role::Thread];
    let o = run(&roles, &data, |_| {}, Duration::from_secs(20));
    check(&o, &data, &[0, 2, 3], 1, false, |f| matches!(f, Failure::NeverConnected(_)));
    assert!(o.wall < Duration::from_secs(6), "connect timeout is 2 s, took {:?}", o.wall);
}

#[test]
fn a_peer_killed_during_scatter_is_dropped() {
    let data = inputs(4);
    let roles = [Role::Thread, Role::Thread, Role::Child(vec!["--fault".into(), "exit-scatter:1".into()]), Role::Thread];
    let o = run(&roles, &data, |_| {}, Duration::from_secs(20));
    // Killed after its first scatter frame: members it had not finished its
    // handshake with see it as never connected.
    check(&o, &data, &[0, 1, 3], 2, true, |f| matches!(f, Failure::Disconnected(_) | Failure::NeverConnected(_)));
}

#[test]
fn a_peer_killed_during_gather_is_dropped() {
    let data = inputs(4);
    let roles = [Role::Thread, Role::Child(vec!["--fault".into(), "exit-gather:1".into()]), Role::Thread, Role::Thread];
    let o = run(&roles, &data, |_| {}, Duration::from_secs(20));
    check(&o, &data, &[0, 2, 3], 1, true, |f| matches!(f, Failure::Disconnected(_)));
}

#[test]
fn a_stalled_peer_is_dropped_after_the_stall_timeout() {
    let data = inputs(3);
    let roles = [Role::Thread, Role::Thread, Role::Child(vec!["--fault".into(), "stall-scatter:1".into()])];
    let o = run(&roles, &data, |_| {}, Duration::from_secs(20));
    // It stalls after its first scatter frame: a member whose handshake it
    // had not answered by then sees a handshake that stalled (on a loaded
    // machine the child may reach its first frame before either answer).
    check(&o, &data, &[0, 1], 2, true, |f| {
        matches!(f, Failure::Stalled(_)) || matches!(f, Failure::NeverConnected(Some(why)) if why.contains("stalled"))
    });
    assert!(o.wall < Duration::from_secs(8), "stall timeout is 1 s, took {:?}", o.wall);
}

#[test]
fn a_peer_with_nan_contributes_nothing_but_still_averages() {
    let mut data = inputs(3);
    data[1][777] = f32::NAN;
    let roles = [Role::Thread, Role::Thread, Role::Thread];
    let o = run(&roles, &data, |_| {}, Duration::from_secs(20));
    for (i, x, r) in &o.results {
        assert!(r.failures().is_empty(), "{}", r.summary());
        if *i == 1 {
            assert!(r.local_rejected.as_deref().is_some_and(|w| w.contains("777")), "{:?}", r.local_rejected);
        }
        assert_eq!(r.members[1].weight, Some(0.0));
        for m in &r.members {
            assert_eq!(m.contributors, vec![0, 2], "peer {i}");
        }
        for (e, &v) in x.iter().enumerate() {
            let want = mean_of(&data, &[0, 2], e);
            assert!((v as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "peer {i} element {e}");
        }
    }
}

// ---- a rogue member, played by the test -------------------------------------

fn write_frame(s: &mut TcpStream, h: &Header, payload: &[u8]) -> std::io::Result<()> {
    s.write_all(&h.encode())?;
    s.write_all(payload)
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<(Header, Vec<u8>)> {
    let mut hb = [0u8; HEADER_LEN];
    s.read_exact(&mut hb)?;
    let h = Header::parse(&hb, 1 << 20).map_err(std::io::Error::other)?;
    let mut p = vec![0u8; h.len as usize];
    s.read_exact(&mut p)?;
    Ok((h, p))
}

/// Connects to member `to` as member 0 and runs the handshake, signing
/// with `key`; returns the stream and the Hello it sent.
fn handshake(group: &Group, to: usize, key: &Identity, round: u64) -> (TcpStream, Hello) {
    let addr = group.members[to].addr;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = loop {
        match TcpStream::connect(addr) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("connecting to {addr}: {e}"),
        }
    };
    let hello = Hello { digest: group.digest(LEN, &settings()), nonce: random_bytes(), weight: 1.0 };
    write_frame(&mut s, &Header::for_payload(Kind::Hello, 0, round, 0, 0, &hello.encode()), &hello.encode()).unwrap();
    let (h, p) = read_frame(&mut s).unwrap();
    assert_eq!((h.kind, p.len()), (Kind::Hello, HELLO_LEN));
    let theirs = Hello::parse(&p).unwrap();
    let sig = sign_auth(key, round, 0, to as u16, &hello, &theirs.nonce);
    write_frame(&mut s, &Header::for_payload(Kind::Auth, 0, round, 0, 0, &sig), &sig).unwrap();
    (s, hello)
}

/// Reads until the peer closes the connection (or 10 s pass).
fn until_closed(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// One round in which the test plays member 0 against three honest peers;
/// `act(group, to)` is what it does towards member `to`.
fn against_rogue(act: impl Fn(&Group, usize) + Send + Sync) -> (Outcome, Vec<Vec<f32>>) {
    let data = inputs(4);
    let roles = [Role::Rogue, Role::Thread, Role::Thread, Role::Thread];
    let o = run(
        &roles,
        &data,
        |g| {
            std::thread::scope(|s| {
                for to in 1..4 {
                    let act = &act;
                    s.spawn(move || act(g, to));
                }
            })
        },
        Duration::from_secs(20),
    );
    (o, data)
}

fn refused_with(o: &Outcome, what: &str) {
    for (i, _, r) in &o.results {
        match &r.members[0].failure {
            Some(Failure::NeverConnected(Some(why))) => assert!(why.contains(what), "peer {i}: {why}"),
            other => panic!("peer {i}: rogue member reported as {other:?}"),
        }
    }
}

#[test]
fn garbage_instead_of_a_handshake_is_refused() {
    let (o, data) = against_rogue(|g, to| {
        let mut s = TcpStream::connect(g.members[to].addr).unwrap();
        s.write_all(&[0xAB; 300]).unwrap();
        until_closed(&mut s);
    });
    check(&o, &data, &[1, 2, 3], 0, false, |f| matches!(f, Failure::NeverConnected(_)));
    for (i, _, r) in &o.results {
        assert!(r.refused.iter().any(|w| w.contains("not a dtrain all-reduce frame")), "peer {i}: {:?}", r.refused);
    }
}

#[test]
fn a_handshake_signed_with_the_wrong_key_is_refused() {
    let (o, data) = against_rogue(|g, to| {
        let (mut s, _) = handshake(g, to, &Identity::from_seed([9; 32]), ROUND);
        until_closed(&mut s);
    });
    check(&o, &data, &[1, 2, 3], 0, false, |f| matches!(f, Failure::NeverConnected(_)));
    refused_with(&o, "bad signature");
}

#[test]
fn a_handshake_for_another_round_is_refused() {
    let (o, data) = against_rogue(|g, to| {
        let mut s = TcpStream::connect(g.members[to].addr).unwrap();
        let hello = Hello { digest: g.digest(LEN, &settings()), nonce: random_bytes(), weight: 1.0 };
        write_frame(&mut s, &Header::for_payload(Kind::Hello, 0, ROUND - 1, 0, 0, &hello.encode()), &hello.encode()).unwrap();
        until_closed(&mut s);
    });
    check(&o, &data, &[1, 2, 3], 0, false, |f| matches!(f, Failure::NeverConnected(_)));
    refused_with(&o, "wrong round");
}

#[test]
fn a_replayed_handshake_is_refused() {
    let data = inputs(2);
    let roles = [Role::Rogue, Role::Thread];
    let o = run(
        &roles,
        &data,
        |g| {
            // A genuine handshake, then its Hello again on a second connection.
            let (first, hello) = handshake(g, 1, &identity(0), ROUND);
            let mut again = TcpStream::connect(g.members[1].addr).unwrap();
            write_frame(&mut again, &Header::for_payload(Kind::Hello, 0, ROUND, 0, 0, &hello.encode()), &hello.encode()).unwrap();
            until_closed(&mut again);
            drop(first.shutdown(std::net::Shutdown::Both));
        },
        Duration::from_secs(20),
    );
    let r = &o.results[0].2;
    assert!(r.refused.iter().any(|w| w.contains("replayed") || w.contains("already connected")), "{:?}", r.refused);
    assert!(r.members[0].failure.is_some(), "{}", r.summary());
}

#[test]
fn an_oversized_frame_drops_the_sender() {
    let (o, data) = against_rogue(|g, to| {
        let (mut s, _) = handshake(g, to, &identity(0), ROUND);
        let mut h = Header::for_payload(Kind::Scatter, 0, ROUND, to as u32, 0, &[]);
        h.len = u32::MAX;
        s.write_all(&h.encode()).unwrap();
        until_closed(&mut s);
    });
    check(&o, &data, &[1, 2, 3], 0, false, |f| matches!(f, Failure::Invalid(w) if w.contains("exceeds the limit")));
}

#[test]
fn a_nan_chunk_from_a_peer_is_rejected_and_named() {
    let (o, data) = against_rogue(|g, to| {
        let (mut s, _) = handshake(g, to, &identity(0), ROUND);
        // Consume the peer's Auth, then send its span's first chunk with a NaN.
        let (h, p) = read_frame(&mut s).unwrap();
        assert_eq!((h.kind, p.len()), (Kind::Auth, AUTH_LEN));
        let (a, b) = (0, 4096.min(LEN / 4));
        let mut vals: Vec<f32> = vec![0.5; b - a];
        vals[100] = f32::NAN;
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        write_frame(&mut s, &Header::for_payload(Kind::Scatter, 0, ROUND, to as u32, 0, &bytes), &bytes).unwrap();
        until_closed(&mut s);
    });
    check(&o, &data, &[1, 2, 3], 0, false, |f| matches!(f, Failure::Invalid(w) if w.contains("not finite")));
}
