//! The all-reduce between test hosts (src/testnet) with internet-shaped
//! links, and the drills: delay and loss, a host cut off mid-round, a
//! partition that heals, a member ten times slower than the rest. Every
//! round must end by its deadline with the right report, and the members
//! left must hold the same bits. Root only (CI runs as root); elsewhere
//! each test says SKIPPED.

use dtrain::allreduce::audit::{Audit, Verified, run_verified};
use dtrain::allreduce::codec::Codec;
use dtrain::allreduce::projection::Projector;
use dtrain::allreduce::{Failure, Group, Identity, Member, Peer, Report, Settings};
mod common;

use common::testnet::hosts;
use dtrain::testnet::Net;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn inputs(n: usize, len: usize) -> Vec<Vec<f32>> {
    (0..n).map(|i| (0..len).map(|e| ((e % 13) as f32 - 6.0) * 0.01 * (i + 1) as f32).collect()).collect()
}

/// One all-reduce round, member i on host i contributing `x[i]` with
/// `weights[i]`; `during` runs beside it (cutting links, say) once every
/// member has the group.
fn round_on_hosts(net: &Net, x: &[Vec<f32>], weights: &[f32], settings: &Settings, during: impl FnOnce(&Net) + Send) -> Vec<(Vec<f32>, Report)> {
    let results = rounds_on_hosts(net, x, weights, settings, None, during);
    results.into_iter().map(|(grad, v)| (grad, v.report)).collect()
}

/// [`round_on_hosts`], audited when `audit` is given (credited with every
/// member's own vector; reruns as a node would).
fn rounds_on_hosts(
    net: &Net,
    x: &[Vec<f32>],
    weights: &[f32],
    settings: &Settings,
    audit: Option<Audit>,
    during: impl FnOnce(&Net) + Send,
) -> Vec<(Vec<f32>, Verified)> {
    let n = x.len();
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (tx, x, w, audit) = (tx.clone(), &x[i], weights[i], &audit);
                let (gtx, grx) = mpsc::channel::<Group>();
                let h = s.spawn(move || {
                    net.enter(i).unwrap();
                    let mut peer = Peer::bind(Identity::from_seed([i as u8 + 1; 32]), (net.addr(i), 0).into()).unwrap();
                    tx.send((i, peer.local_addr().unwrap(), peer.public_key())).unwrap();
                    let group = grx.recv().unwrap();
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let mut grad = x.clone();
                    let v = match audit {
                        Some(audit) => run_verified(&group, audit, settings, 2, |g, a, s| {
                            grad = x.clone();
                            peer.all_reduce_audited(g, 1, &mut grad, w, deadline, s, Some(a))
                        }),
                        None => peer.all_reduce(&group, 1, &mut grad, w, deadline, settings).map(|report| Verified {
                            clean: true,
                            report,
                            group,
                            accused: vec![],
                            dropped: vec![],
                        }),
                    };
                    (grad, v.unwrap())
                });
                (h, gtx)
            })
            .collect();
        let mut members: Vec<(usize, SocketAddr, _)> = (0..n).map(|_| rx.recv().unwrap()).collect();
        members.sort_by_key(|m| m.0);
        let group = Group { members: members.into_iter().map(|(i, addr, key)| Member { id: format!("h{i}"), addr, key, fraction: 1.0 }).collect() };
        for (_, gtx) in &handles {
            gtx.send(group.clone()).unwrap();
        }
        during(net);
        handles.into_iter().map(|(h, _)| h.join().unwrap()).collect()
    })
}

fn settings(stall: Duration) -> Settings {
    Settings { codec: Codec::F16, connect_timeout: Duration::from_secs(30), stall_timeout: stall, ..Settings::default() }
}

/// Every member holds the weighted mean (fp16's rounding apart), the same
/// bits everywhere, and nobody failed.
fn assert_complete(x: &[Vec<f32>], weights: &[f32], results: &[(Vec<f32>, Report)]) {
    let total: f32 = weights.iter().sum();
    for (i, (grad, report)) in results.iter().enumerate() {
        assert!(report.failures().is_empty(), "host {i}: {}", report.summary());
        assert!(grad == &results[0].0, "host {i} differs from host 0");
        let err = (0..grad.len()).map(|e| (grad[e] - (0..x.len()).map(|j| weights[j] * x[j][e]).sum::<f32>() / total).abs()).fold(0f32, f32::max);
        assert!(err < 1e-3, "host {i}: {err} from the mean");
    }
}

#[test]
fn the_all_reduce_runs_between_hosts_with_delay_and_loss() {
    // 100 Mbit/s, 20 ms round trips, 0.5% loss each way.
    let Some(net) = hosts(4, "rate=100mbit,rtt=20ms,loss=0.5%") else { return };
    let (x, weights) = (inputs(4, 1 << 20), [1.0, 2.0, 1.0, 3.0]);
    let results = round_on_hosts(&net, &x, &weights, &settings(Duration::from_secs(30)), |_| {});
    assert_complete(&x, &weights, &results);
    eprintln!("{}", results[0].1.summary());
}

#[test]
fn a_member_ten_times_slower_still_takes_part() {
    let Some(net) = hosts(4, "rate=100mbit,slow=3:10mbit") else { return };
    let (x, weights) = (inputs(4, 1 << 20), [1.0; 4]);
    let results = round_on_hosts(&net, &x, &weights, &settings(Duration::from_secs(30)), |_| {});
    assert_complete(&x, &weights, &results);
    eprintln!("{}", results[0].1.summary());
}

#[test]
fn a_member_behind_a_slow_uplink_keeps_its_place_in_an_audited_round() {
    // Host 2 (weight 0, as a member still unverified: it owns a span and
    // receives everything) sends at 1 Mbit/s but receives at 100: its
    // inputs are in within a second, its span's averages take ~13 s to
    // upload. Host 3 (weight 0, the validator's part) adjudicates. Neither
    // may wait the ruling out while that upload, which the adjudicator
    // needs before it can rule, still runs (the wait is 3 × 3 s here).
    // Its three uploads share the line unevenly (one that loses a
    // retransmission backs off for seconds), so members get their last
    // input seconds apart: host 2's sockets hold seconds of data, and a
    // member whose input still comes tells the adjudicator so. The
    // internet's MTU: at the hosts' default 65000 bytes the uplink's
    // 8-packet queue would hold 4 s at 1 Mbit/s.
    let Some(net) = hosts(4, "rate=100mbit,rtt=20ms,up=2:1mbit,mtu=1500") else { return };
    let (x, weights) = (inputs(4, 1 << 20), [1.0, 2.0, 0.0, 0.0]);
    let challenge = [7u8; 32];
    let p = Projector::new(&challenge);
    let audit = Audit { challenge, weights: weights.to_vec(), expected: x.iter().map(|v| p.project(v, 0)).collect(), adjudicator: Some(3) };
    let t = Instant::now();
    let s = Settings { connect_timeout: Duration::from_secs(3), ..settings(Duration::from_secs(3)) };
    let results = rounds_on_hosts(&net, &x, &weights, &s, Some(audit), |_| {});
    eprintln!("ended after {:.1} s: {}", t.elapsed().as_secs_f64(), results[2].1.report.summary());
    for (i, (_, v)) in results.iter().enumerate() {
        assert!(v.clean && v.accused.is_empty() && v.dropped.is_empty(), "host {i}: {:?} {:?}: {}", v.accused, v.dropped, v.report.summary());
        assert_eq!(v.report.ruling.as_deref(), Some(&[][..]), "host {i}");
    }
    let plain: Vec<(Vec<f32>, Report)> = results.into_iter().map(|(g, v)| (g, v.report)).collect();
    assert_complete(&x, &weights, &plain);
}

#[test]
fn a_partition_that_heals_within_the_stall_timeout_costs_nothing() {
    // Hosts {0, 1} and {2, 3} lose each other for 1.5 s mid-round; TCP
    // retransmits once the links are back.
    let Some(net) = hosts(4, "rate=100mbit,rtt=10ms") else { return };
    let (x, weights) = (inputs(4, 1 << 21), [1.0, 1.0, 2.0, 1.0]);
    let results = round_on_hosts(&net, &x, &weights, &settings(Duration::from_secs(30)), |net| {
        std::thread::sleep(Duration::from_millis(200));
        net.partition(&[0, 1], &[2, 3], true);
        std::thread::sleep(Duration::from_millis(1500));
        net.partition(&[0, 1], &[2, 3], false);
    });
    assert_complete(&x, &weights, &results);
    assert!(net.stats().cut.load(std::sync::atomic::Ordering::Relaxed) > 0, "the partition never met a packet");
}

#[test]
fn a_host_cut_off_mid_round_is_left_out_and_the_rest_agree() {
    // Host 3 loses its link for good 300 ms into a round of about a
    // second: no FIN, no RST — the others notice by the stall timeout,
    // finish without it, report it, and hold the same bits wherever a
    // span was averaged (a trainer zeroes the others: `unaveraged_spans`).
    let Some(net) = hosts(4, "rate=100mbit,rtt=20ms") else { return };
    let (x, weights) = (inputs(4, 1 << 22), [1.0; 4]);
    let stall = Duration::from_secs(3);
    let t = Instant::now();
    let results = round_on_hosts(&net, &x, &weights, &settings(stall), |net| {
        std::thread::sleep(Duration::from_millis(300));
        net.cut(3, true);
    });
    eprintln!("ended after {:.1} s: {}", t.elapsed().as_secs_f64(), results[0].1.summary());
    let survivors = &results[..3];
    let zeroed = |(grad, report): &(Vec<f32>, Report)| {
        let mut g = grad.clone();
        for r in report.unaveraged_spans() {
            g[r].fill(0.0);
        }
        g
    };
    let first = zeroed(&survivors[0]);
    for (i, r) in survivors.iter().enumerate() {
        let failed: Vec<usize> = r.1.failures().iter().map(|f| f.0).collect();
        assert_eq!(failed, [3], "host {i}: {}", r.1.summary());
        assert!(matches!(r.1.members[3].failure, Some(Failure::Stalled(_) | Failure::Disconnected(_))), "host {i}: {:?}", r.1.members[3].failure);
        assert_eq!(r.1.unaveraged_spans(), survivors[0].1.unaveraged_spans(), "host {i}");
        assert!(zeroed(r) == first, "host {i} differs from host 0");
    }
}
