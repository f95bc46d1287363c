//! Unequal links: the validator cuts the all-reduce's spans in proportion
//! to what each miner's link carried in its bandwidth probes, so a slow
//! member does not set everyone's pace (the reference's bandwidth
//! fractions), and sends the fractions in the AllReduce query, where they
//! enter the group digest.

use super::scoring::Uid;
use crate::allreduce::Group;
use std::collections::{BTreeMap, VecDeque};

/// Probes a link's rate is judged by.
pub const PROBES: usize = 3;

/// Each miner's link rates as its last `PROBES` probes measured them. A
/// probe is only ever slowed by noise (a loss burst, a loaded CPU: on a
/// loaded test machine one measured 1.5× below its twin), never sped
/// up, so a link is judged by the upper median of its recent probes: one
/// bad probe in three moves nothing, and a link that really slowed
/// counts as slow from its second slow probe.
#[derive(Debug, Default)]
pub struct LinkRates(BTreeMap<Uid, VecDeque<f64>>);

impl LinkRates {
    /// A probe of `uid`'s link: `bytes_per_s` (ignored unless finite and
    /// positive).
    pub fn record(&mut self, uid: Uid, bytes_per_s: f64) {
        if !(bytes_per_s.is_finite() && bytes_per_s > 0.0) {
            return;
        }
        let probes = self.0.entry(uid).or_default();
        if probes.len() == PROBES {
            probes.pop_front();
        }
        probes.push_back(bytes_per_s);
    }

    /// The rate `uid`'s link is judged by, if it was ever probed.
    pub fn rate(&self, uid: Uid) -> Option<f64> {
        let mut v: Vec<f64> = self.0.get(&uid)?.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    /// Every probed link's rate.
    pub fn all(&self) -> BTreeMap<Uid, f64> {
        self.0.keys().filter_map(|&u| self.rate(u).map(|r| (u, r))).collect()
    }
}

/// Links within this factor of the fastest count as the fastest: a
/// probe's noise (on loopback, the miners' CPUs) should not reshuffle the
/// spans — with few owners the split is steep in the rates (two owners
/// measured 10% apart would split 43/57) — and the time an unequal split
/// saves between near-equal links is small.
pub const RATE_SPREAD: f64 = 1.5;

/// The span fractions of miners whose links measured `rates` (bytes/s;
/// `None` = not measured yet, taken as the median of the rest): the split
/// that makes every owner take the same time
/// (`allreduce::plan::link_fractions`), every rate within `RATE_SPREAD`
/// of the fastest counted as the fastest — so equal spans while the links
/// are near equal, and a miner too slow to help owns nothing. (The
/// validator, a member that owns nothing and sends nothing, is left out of
/// the model: it only adds one more receiver.)
pub fn span_fractions(rates: &[Option<f64>]) -> Vec<f64> {
    let mut known: Vec<f64> = rates.iter().flatten().copied().filter(|r| r.is_finite() && *r > 0.0).collect();
    if known.is_empty() {
        return vec![1.0; rates.len()];
    }
    known.sort_by(f64::total_cmp);
    let (median, fastest) = (known[known.len() / 2], known[known.len() - 1]);
    let rates: Vec<f64> = rates
        .iter()
        .map(|r| r.filter(|r| r.is_finite() && *r > 0.0).unwrap_or(median))
        .map(|r| if r * RATE_SPREAD >= fastest { fastest } else { r })
        .collect();
    if rates.iter().all(|&r| r == fastest) {
        return vec![1.0; rates.len()];
    }
    cap_shares(crate::allreduce::plan::link_fractions(&rates).0, MAX_SHARE / rates.len() as f64)
}

/// The longest a chunk should take on the slowest member's link. A
/// round's tail is about one chunk per owner arriving over it after its
/// own last part went up (and its start one chunk before any average
/// exists): on the test hosts, one member at 10 Mbit/s among 100 Mbit/s
/// links took 1.41× the optimum with 512 KiB chunks, 1.29× with 64 KiB
/// (and 1.20× with 1500-byte packets). Short chunks cost on fast links
/// (on loopback 128 KiB chunks made a 64M fp16 round ~10% slower than
/// 512 KiB), so only a slow link shortens them.
pub const CHUNK_TIME_S: f64 = 0.05;

/// Fewest encoded bytes in a chunk, however slow a link.
pub const MIN_CHUNK_BYTES: usize = 64 << 10;

/// The chunk size for members whose links measured `rates` (bytes/s;
/// `None`: not probed): what the slowest probed link carries in
/// `CHUNK_TIME_S`, between `MIN_CHUNK_BYTES` and `ceiling` (the
/// configured size; 4 KiB steps, so that every codec cuts whole blocks
/// of it).
pub fn chunk_bytes_for(rates: &[Option<f64>], ceiling: usize) -> usize {
    let slowest = rates.iter().flatten().copied().filter(|r| r.is_finite() && *r > 0.0).reduce(f64::min);
    slowest.map_or(ceiling, |r| (((r * CHUNK_TIME_S) as usize) & !4095).clamp(MIN_CHUNK_BYTES.min(ceiling), ceiling))
}

/// The least time an all-reduce moving `bytes` (the encoded vector) could
/// take over the links as probed, with the spans cut as they were: member
/// i with share fᵢ of n members moves (1 + (n − 2)·fᵢ)·bytes each way
/// (`plan::link_fractions`' model) at its rate (bytes/s). Members without
/// a probed rate (the validator itself) are left out; `None` when no rate
/// is known. What the dashboard sets each round's time against.
pub fn round_bound(members: &[(f64, Option<f64>)], bytes: f64) -> Option<f64> {
    let k = members.len().saturating_sub(2) as f64;
    members.iter().filter_map(|&(share, rate)| rate.filter(|r| r.is_finite() && *r > 0.0).map(|r| (1.0 + k * share) * bytes / r)).reduce(f64::max)
}

/// No miner owns more than this many equal shares of the vector, however
/// fast its probe: an owner can turn its span's average the wrong way off
/// the sampled blocks within the norm bound (docs/SECURITY.md), so a fast
/// link must not buy a large part of the model.
pub const MAX_SHARE: f64 = 2.0;

/// `fractions` unchanged when no share of their sum is above `cap`, else as
/// shares of 1 with none above `cap`:
/// the excess goes to the others in proportion to their shares (equally
/// if they had none), those reaching the cap in turn held there.
fn cap_shares(fractions: Vec<f64>, cap: f64) -> Vec<f64> {
    let total: f64 = fractions.iter().sum();
    let mut f: Vec<f64> = fractions.iter().map(|x| x / total).collect();
    if f.iter().all(|&x| x <= cap) {
        return fractions;
    }
    // Each pass holds at least one more member at the cap, or ends.
    for _ in 0..f.len() {
        let excess: f64 = f.iter().map(|x| (x - cap).max(0.0)).sum();
        if excess <= 1e-12 {
            break;
        }
        // In proportion to the others' shares, or equally when they had none
        // (the link split left them out: now they must take some).
        let below: f64 = f.iter().filter(|x| **x < cap).sum();
        let under = f.iter().filter(|x| **x < cap).count() as f64;
        if under == 0.0 {
            break;
        }
        let part = |x: f64| if below > 0.0 { excess * x / below } else { excess / under };
        f = f.iter().map(|&x| if x >= cap { cap } else { x + part(x) }).collect();
    }
    f
}

/// Gives the group's members the span fractions an AllReduce query names
/// (one per member, finite, non-negative, some positive). They enter the
/// group digest, so members told different fractions never connect.
pub fn set_fractions(group: &mut Group, fractions: &[f64]) -> Result<(), String> {
    if fractions.len() != group.len() {
        return Err(format!("{} span fractions for a group of {}", fractions.len(), group.len()));
    }
    if let Some(bad) = fractions.iter().find(|f| !(f.is_finite() && **f >= 0.0)) {
        return Err(format!("span fraction {bad} is not a finite non-negative number"));
    }
    if !fractions.iter().any(|f| *f > 0.0) {
        return Err("no member owns a span (every fraction is 0)".into());
    }
    for (m, &f) in group.members.iter_mut().zip(fractions) {
        m.fraction = f;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allreduce::plan::link_fractions;

    #[test]
    fn chunks_shorten_only_for_a_slow_link() {
        let default = crate::allreduce::plan::DEFAULT_CHUNK_BYTES;
        assert_eq!(chunk_bytes_for(&[], default), default);
        assert_eq!(chunk_bytes_for(&[None, Some(f64::NAN), Some(0.0)], default), default);
        // 1 Gbit/s and 100 Mbit/s links: the default.
        assert_eq!(chunk_bytes_for(&[Some(125e6), Some(12.5e6)], default), default);
        // 25 Mbit/s: 156 250 bytes in 50 ms, in 4 KiB steps.
        assert_eq!(chunk_bytes_for(&[Some(12.5e6), None, Some(3.125e6)], default), 155_648);
        // 10 Mbit/s and below: the floor.
        assert_eq!(chunk_bytes_for(&[Some(1.25e6), Some(12.5e6)], default), MIN_CHUNK_BYTES);
        assert_eq!(chunk_bytes_for(&[Some(1.0)], default), MIN_CHUNK_BYTES);
        // Never above the configured size.
        assert_eq!(chunk_bytes_for(&[Some(3.125e6)], 16 << 10), 16 << 10);
        assert_eq!(chunk_bytes_for(&[None], 16 << 10), 16 << 10);
    }

    #[test]
    fn a_link_is_judged_by_the_upper_median_of_its_last_probes() {
        let mut r = LinkRates::default();
        assert_eq!(r.rate(1), None);
        r.record(1, 100.0);
        assert_eq!(r.rate(1), Some(100.0));
        // One slow probe (noise) does not move it, with one or two before.
        r.record(1, 40.0);
        assert_eq!(r.rate(1), Some(100.0));
        r.record(1, 110.0);
        assert_eq!(r.rate(1), Some(100.0));
        // A link that really slowed: from its second slow probe on.
        r.record(1, 30.0);
        assert_eq!(r.rate(1), Some(40.0));
        r.record(1, 35.0);
        assert_eq!(r.rate(1), Some(35.0));
        // Nonsense is not a probe; links are apart.
        r.record(1, f64::NAN);
        r.record(1, 0.0);
        r.record(2, 7.0);
        assert_eq!(r.all(), BTreeMap::from([(1, 35.0), (2, 7.0)]));
    }

    #[test]
    fn near_equal_links_get_equal_spans_and_a_slow_one_owns_nothing() {
        assert_eq!(span_fractions(&[None, None, None]), [1.0; 3]);
        assert_eq!(span_fractions(&[Some(100.0), Some(120.0), None, Some(80.0)]), [1.0; 4]);
        // One member at a tenth of the others: it cannot keep up even
        // owning nothing; the others split the vector equally.
        // The others' noise (here 10%) does not tilt their spans.
        let f = span_fractions(&[Some(100.0), Some(90.0), Some(10.0), Some(95.0)]);
        assert_eq!(f[2], 0.0);
        assert!((f[0] - 1.0 / 3.0).abs() < 1e-12 && f[0] == f[1] && f[1] == f[3], "{f:?}");
        // A somewhat slower link: a smaller span, as link_fractions computes
        // it; an unmeasured member counts as the median.
        let f = span_fractions(&[Some(100.0), None, Some(80.0), Some(100.0), Some(100.0), Some(60.0)]);
        assert_eq!(f, link_fractions(&[100.0, 100.0, 100.0, 100.0, 100.0, 60.0]).0);
        assert!(f[5] > 0.0 && f[5] < 0.5 * f[0], "{f:?}");
        // A very fast miner does not get the model: at most twice an equal
        // share, the rest split as the links say.
        let f = span_fractions(&[Some(1000.0), Some(100.0), Some(100.0), Some(100.0)]);
        assert!((f[0] - 0.5).abs() < 1e-12, "{f:?}");
        assert!((f.iter().sum::<f64>() - 1.0).abs() < 1e-12 && f[1] == f[2] && f[2] == f[3], "{f:?}");
        // Nonsense rates are ignored, never propagated.
        assert_eq!(span_fractions(&[Some(f64::NAN), Some(-1.0), Some(0.0)]), [1.0; 3]);
    }

    #[test]
    fn a_rounds_bound_is_its_slowest_members_bytes_over_its_rate() {
        // Three miners at 10 MB/s with equal shares and the validator
        // (owning nothing, not probed), 4 members: each miner moves
        // (1 + 2/3)·bytes — the usual 2(n−1)/n bound among the three
        // owners plus the validator's copy.
        let eq = [(1.0 / 3.0, Some(1e7)), (1.0 / 3.0, Some(1e7)), (1.0 / 3.0, Some(1e7)), (0.0, None)];
        let b = round_bound(&eq, 3e7).unwrap();
        assert!((b - 5.0).abs() < 1e-9, "{b}");
        // A slow miner that owns nothing still moves the vector once.
        let slow = [(0.5, Some(1e7)), (0.5, Some(1e7)), (0.0, Some(1e6)), (0.0, None)];
        assert!((round_bound(&slow, 1e7).unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(round_bound(&[(1.0, None), (0.0, None)], 1e6), None);
    }

    #[test]
    fn fractions_from_a_query_are_checked() {
        let key = crate::allreduce::Identity::from_seed([1; 32]).public();
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut g = Group::equal((0..3).map(|i| (i.to_string(), addr, key)));
        assert!(set_fractions(&mut g, &[1.0, 2.0]).unwrap_err().contains("2 span fractions for a group of 3"));
        assert!(set_fractions(&mut g, &[1.0, f64::NAN, 1.0]).unwrap_err().contains("not a finite"));
        assert!(set_fractions(&mut g, &[1.0, -1.0, 1.0]).unwrap_err().contains("not a finite"));
        assert!(set_fractions(&mut g, &[0.0; 3]).unwrap_err().contains("no member owns"));
        assert_eq!(g.fractions(), [1.0; 3], "a refused query changes nothing");
        set_fractions(&mut g, &[0.5, 0.0, 0.5]).unwrap();
        assert_eq!(g.fractions(), [0.5, 0.0, 0.5]);
    }
}
