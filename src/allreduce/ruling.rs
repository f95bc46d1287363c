//! One ruling for everyone: how the members of an audited round with an
//! adjudicator (the master validator, a weight-0 member, trusted) end up
//! leaving out the same members even when someone showed different
//! members different things.
//!
//! Each member's [`verdict`](super::audit::verdict) is computed from what
//! it received. An owner that sends different members different span
//! summaries or averages, a link that broke between two members only, or
//! a member that simply lies about what it saw, would make honest members'
//! verdicts differ: they would rerun in different groups and none would
//! step. So after its data phase every member sends the adjudicator its
//! [`Testimony`] — the digest of every span summary as it received it, and
//! whom its own verdict names — and follows the adjudicator's [`ruling`]:
//! - the adjudicator's own verdict stands (it received every summary and
//!   every average as any member did), and the testimony of a member it
//!   leaves out counts for nothing;
//! - span summaries are signed by their owners, and a testimony carries
//!   the owner's signature of each summary it names: a member holding
//!   another summary of a span than the adjudicator, signed by its owner,
//!   proves that the owner equivocated — the owner is accused, and
//!   everything else set aside (the adjudicator's own verdict may rest on
//!   a summary shown to it alone), for the rerun to check again; a
//!   signature that does not check out names the member that forwarded
//!   it; a member that got no summary where the adjudicator did leaves
//!   with that owner, both unproven (nobody else can tell who lost it);
//! - an accusation the adjudicator cannot confirm (an average only the
//!   accuser received, say) leaves out the accuser and the accused, both
//!   unproven — the framer pays what its victim pays, as in BTARD;
//! - a member that left the round or sent no testimony is left out.
//!
//! Members that do not follow the ruling merely leave themselves out.

use super::audit::Accusation;
use super::identity::{Identity, PublicKey};

/// What an owner signs of its span summary: the round, the group (digest)
/// and the SHA-256 of the summary.
fn summary_message(round: u64, group: &[u8; 32], owner: usize, summary: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(27 + 8 + 32 + 2 + 32);
    m.extend_from_slice(b"dtrain-allreduce-summary-v1");
    m.extend_from_slice(&round.to_le_bytes());
    m.extend_from_slice(group);
    m.extend_from_slice(&(owner as u16).to_le_bytes());
    m.extend_from_slice(summary);
    m
}

/// `owner`'s signature of its span summary with this SHA-256.
pub fn sign_summary(id: &Identity, round: u64, group: &[u8; 32], owner: usize, summary: &[u8; 32]) -> [u8; 64] {
    id.sign(&summary_message(round, group, owner, summary))
}

pub fn verify_summary(key: &PublicKey, round: u64, group: &[u8; 32], owner: usize, summary: &[u8; 32], sig: &[u8; 64]) -> bool {
    key.verify(&summary_message(round, group, owner, summary), sig)
}

/// Longest text of reasons a ruling carries.
pub const REASONS_MAX: usize = 16 << 10;

/// What a member tells the adjudicator after its data phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Testimony {
    /// Per owner, SHA-256 of its span summary as received (zeros: none
    /// came; its own: the summary it sent) and the owner's signature of it.
    pub summaries: Vec<[u8; 32]>,
    pub signatures: Vec<[u8; 64]>,
    /// Per member: whom its own verdict names (0 nobody, 1 left out
    /// unproven, 2 accused).
    pub named: Vec<u8>,
}

impl Testimony {
    pub fn len(n: usize) -> usize {
        97 * n
    }

    pub fn new(summaries: Vec<([u8; 32], [u8; 64])>, verdict: &[Accusation]) -> Testimony {
        let n = summaries.len();
        let mut named = vec![0u8; n];
        for a in verdict.iter().filter(|a| a.member < n) {
            named[a.member] = 1 + u8::from(a.proven);
        }
        let (summaries, signatures) = summaries.into_iter().unzip();
        Testimony { summaries, signatures, named }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.summaries.iter().flatten().copied().collect();
        out.extend(self.signatures.iter().flatten());
        out.extend_from_slice(&self.named);
        out
    }

    /// `None` unless `b` is the testimony of a group of `n`.
    pub fn parse(b: &[u8], n: usize) -> Option<Testimony> {
        if b.len() != Testimony::len(n) || b[96 * n..].iter().any(|&v| v > 2) {
            return None;
        }
        Some(Testimony {
            summaries: b[..32 * n].chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect(),
            signatures: b[32 * n..96 * n].chunks_exact(64).map(|c| c.try_into().expect("64 bytes")).collect(),
            named: b[96 * n..].to_vec(),
        })
    }
}

/// The adjudicator's ruling (see the module doc). `me` is the adjudicator;
/// `own` its verdict; `summaries` its digests of the summaries it received
/// (zeros: none); per member, its testimony and why it left the round;
/// `signed(owner, digest, sig)` checks an owner's signature of a summary.
pub fn ruling(
    me: usize,
    own: Vec<Accusation>,
    summaries: &[[u8; 32]],
    testimonies: &[Option<Testimony>],
    gone: &[Option<String>],
    signed: impl Fn(usize, &[u8; 32], &[u8; 64]) -> bool,
) -> Vec<Accusation> {
    let n = summaries.len();
    // Proof first: a summary its owner signed that differs from the
    // adjudicator's copy proves that the owner equivocated, whoever shows
    // it. The adjudicator's unproven findings may then rest on a summary
    // shown to it alone (an honest part "disputed" there, a sender said to
    // be missing), so they are set aside for the rerun to check again; its
    // proven ones stand, each resting on what its culprit signed or sent
    // the adjudicator itself (statements, a Hello, an average).
    let mut equivocators: Vec<usize> = Vec::new();
    for t in testimonies.iter().flatten() {
        for i in (0..n).filter(|&i| summaries[i] != [0; 32] && t.summaries[i] != [0; 32] && t.summaries[i] != summaries[i]) {
            if !equivocators.contains(&i) && signed(i, &t.summaries[i], &t.signatures[i]) {
                equivocators.push(i);
            }
        }
    }
    let set_aside = !equivocators.is_empty();
    let mut out: Vec<Accusation> = match set_aside {
        false => own.clone(),
        true => equivocators
            .iter()
            .map(|&i| Accusation { member: i, why: format!("span {i}: signed two different summaries"), proven: true })
            .chain(own.iter().filter(|a| a.proven && !equivocators.contains(&a.member)).cloned())
            .collect(),
    };
    let mut name = |member: usize, why: String, proven: bool| {
        if member != me && !out.iter().any(|a| a.member == member) {
            out.push(Accusation { member, why, proven });
        }
    };
    for j in (0..n).filter(|&j| j != me) {
        // (A member the adjudicator's own verdict leaves out testifies to
        // nothing: a cheat's word must not cost anyone their place.)
        if !set_aside && own.iter().any(|a| a.member == j) {
            continue;
        }
        let t = match (&gone[j], &testimonies[j]) {
            (Some(why), _) => {
                name(j, format!("left the round before its testimony: {why}"), false);
                continue;
            }
            (None, None) => {
                name(j, "sent the adjudicator no testimony".into(), false);
                continue;
            }
            (None, Some(t)) => t,
        };
        // (Owners whose summary the adjudicator lacks are out already.)
        let differ: Vec<usize> = (0..n).filter(|&i| summaries[i] != [0; 32] && t.summaries[i] != summaries[i]).collect();
        for &i in &differ {
            if t.summaries[i] == [0; 32] {
                // None came to j: lost on their link, withheld, or j lies
                // (the rerun after an equivocation shows it again if so).
                if !set_aside {
                    name(j, format!("got no summary of span {i}, which the adjudicator got"), false);
                    name(i, format!("span {i}: member {j} got no summary of it"), false);
                }
            } else if !signed(i, &t.summaries[i], &t.signatures[i]) {
                name(j, format!("forwarded a signature of span {i}'s summary that its owner never made"), true);
            }
        }
        if set_aside || !differ.is_empty() {
            continue; // (judged on other data: its accusations count for nothing)
        }
        for a in (0..n).filter(|&a| t.named[a] != 0 && !own.iter().any(|o| o.member == a)) {
            if a != j && a != me {
                name(a, format!("named by member {j}, which the adjudicator could not confirm"), false);
            }
            name(j, format!("named member {a}, which the adjudicator could not confirm"), false);
        }
    }
    out
}

/// A ruling on the wire: per member 0 (stays), 1 (left out unproven) or 2
/// (accused), then one line of reason per named member, in order.
pub fn encode_ruling(n: usize, ruling: &[Accusation]) -> Vec<u8> {
    let mut out = vec![0u8; n];
    for a in ruling.iter().filter(|a| a.member < n) {
        out[a.member] = 1 + u8::from(a.proven);
    }
    let mut text = String::new();
    for m in 0..n {
        if let Some(a) = ruling.iter().find(|a| a.member == m) {
            text.push_str(&a.why.replace('\n', " "));
            text.push('\n');
        }
    }
    let mut cut = text.len().min(REASONS_MAX);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    out.extend_from_slice(&text.as_bytes()[..cut]);
    out
}

/// The inverse of [`encode_ruling`]; `None` when malformed.
pub fn parse_ruling(b: &[u8], n: usize) -> Option<Vec<Accusation>> {
    if b.len() < n || b.len() > n + REASONS_MAX || b[..n].iter().any(|&v| v > 2) {
        return None;
    }
    let text = String::from_utf8_lossy(&b[n..]);
    let mut reasons = text.lines();
    Some(
        (0..n)
            .filter(|&m| b[m] != 0)
            .map(|member| Accusation {
                member,
                why: reasons.next().map_or("(no reason given)".into(), |r| format!("(by the adjudicator) {r}")),
                proven: b[member] == 2,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acc(member: usize, proven: bool) -> Accusation {
        Accusation { member, why: format!("m{member}"), proven }
    }

    fn named(r: &[Accusation]) -> Vec<(usize, bool)> {
        let mut v: Vec<(usize, bool)> = r.iter().map(|a| (a.member, a.proven)).collect();
        v.sort();
        v
    }

    /// In these tests a signature of all ones checks out, nothing else.
    const GOOD: [u8; 64] = [1; 64];
    fn signed(_: usize, _: &[u8; 32], sig: &[u8; 64]) -> bool {
        *sig == GOOD
    }

    fn testimony(sums: &[[u8; 32]], verdict: &[Accusation]) -> Testimony {
        Testimony::new(sums.iter().map(|&d| (d, GOOD)).collect(), verdict)
    }

    #[test]
    fn the_adjudicators_verdict_stands_and_unconfirmed_accusations_cost_the_accuser() {
        // Seven members, the adjudicator is member 6; its own verdict
        // accuses member 3.
        let sums: Vec<[u8; 32]> = (0..7).map(|i| [i as u8 + 1; 32]).collect();
        let own = vec![acc(3, true)];
        // Member 1 also names member 2 (unconfirmed); member 3, accused,
        // names member 1 (and counts for nothing); member 0 left; member 4
        // got no summary of span 5 (and names member 0 on that data, set
        // aside).
        let liar = testimony(&sums, &[acc(2, true), acc(3, true)]);
        let cheat = testimony(&sums, &[acc(1, true)]);
        let mut lacking = sums.clone();
        lacking[5] = [0; 32];
        let lost = testimony(&lacking, &[acc(0, false)]);
        let testimonies = [None, Some(liar), Some(testimony(&sums, &own)), Some(cheat), Some(lost), Some(testimony(&sums, &own)), None];
        let gone = [Some("stalled".to_string()), None, None, None, None, None, None];
        let r = ruling(6, own, &sums, &testimonies, &gone, signed);
        assert_eq!(named(&r), vec![(0, false), (1, false), (2, false), (3, true), (4, false), (5, false)]);
        let back = parse_ruling(&encode_ruling(7, &r), 7).unwrap();
        assert_eq!(named(&back), named(&r));
        for a in &r {
            let b = back.iter().find(|b| b.member == a.member).unwrap();
            assert!(b.why.ends_with(&a.why), "{} / {}", a.why, b.why);
        }
    }

    #[test]
    fn a_proven_equivocation_sets_the_adjudicators_own_verdict_aside() {
        // Member 5 signed two summaries; the one the adjudicator (member 6)
        // got disputes honest member 1, so its own verdict names 1 and 5
        // (unproven), besides member 3 (proven, on its own signatures).
        // Member 4 shows the other, signed: 5 is named (proven), 3 stays
        // named, 1 is not; member 0 left; the rerun checks everyone again.
        let sums: Vec<[u8; 32]> = (0..7).map(|i| [i as u8 + 1; 32]).collect();
        let own = vec![acc(1, false), acc(3, true), acc(5, false)];
        let mut other = sums.clone();
        other[5] = [9; 32];
        let testimonies = [
            None,
            Some(testimony(&sums, &own)),
            Some(testimony(&sums, &[acc(3, true)])),
            Some(testimony(&sums, &own)),
            Some(testimony(&other, &[])),
            Some(testimony(&sums, &own)),
            None,
        ];
        let gone = [Some("stalled".to_string()), None, None, None, None, None, None];
        let r = ruling(6, own, &sums, &testimonies, &gone, signed);
        assert_eq!(named(&r), vec![(0, false), (3, true), (5, true)]);
    }

    #[test]
    fn a_forged_summary_signature_names_its_bearer_and_a_missing_summary_costs_both() {
        let sums: Vec<[u8; 32]> = (0..4).map(|i| [i as u8 + 1; 32]).collect();
        let mut other = sums.clone();
        other[1] = [9; 32];
        let forger = Testimony::new(other.iter().map(|&d| (d, [2; 64])).collect(), &[]);
        let mut lacking = sums.clone();
        lacking[2] = [0; 32];
        let r = ruling(
            0,
            vec![],
            &sums,
            &[None, Some(testimony(&sums, &[])), Some(testimony(&sums, &[])), Some(forger)],
            &[None, None, None, None],
            signed,
        );
        assert_eq!(named(&r), vec![(3, true)]);
        let r =
            ruling(0, vec![], &sums, &[None, Some(testimony(&lacking, &[])), Some(testimony(&sums, &[])), None], &[None, None, None, None], signed);
        // Member 1 got no summary of span 2: both out, unproven; member 3
        // sent no testimony.
        assert_eq!(named(&r), vec![(1, false), (2, false), (3, false)]);
    }

    #[test]
    fn the_adjudicator_is_never_named_and_accusing_it_costs_only_the_accuser() {
        let sums: Vec<[u8; 32]> = (0..3).map(|i| [i as u8 + 1; 32]).collect();
        let t = testimony(&sums, &[acc(0, true)]);
        let r = ruling(0, vec![], &sums, &[None, Some(t), Some(testimony(&sums, &[]))], &[None, None, None], signed);
        assert_eq!(named(&r), vec![(1, false)]);
        // A summary the adjudicator never got is not held against anyone
        // here (its owner is out by the adjudicator's own verdict).
        let mut lacking = sums.clone();
        lacking[2] = [0; 32];
        let r = ruling(0, vec![acc(2, false)], &lacking, &[None, Some(testimony(&sums, &[])), None], &[None, None, None], signed);
        assert_eq!(named(&r), vec![(2, false)]);
    }

    #[test]
    fn summary_signatures_bind_round_group_owner_and_summary() {
        let id = Identity::from_seed([5; 32]);
        let sig = sign_summary(&id, 3, &[1; 32], 2, &[7; 32]);
        assert!(verify_summary(&id.public(), 3, &[1; 32], 2, &[7; 32], &sig));
        assert!(!verify_summary(&id.public(), 4, &[1; 32], 2, &[7; 32], &sig));
        assert!(!verify_summary(&id.public(), 3, &[2; 32], 2, &[7; 32], &sig));
        assert!(!verify_summary(&id.public(), 3, &[1; 32], 1, &[7; 32], &sig));
        assert!(!verify_summary(&id.public(), 3, &[1; 32], 2, &[8; 32], &sig));
    }

    #[test]
    fn malformed_testimonies_and_rulings_are_refused() {
        let t = testimony(&[[1; 32]; 3], &[acc(1, true)]);
        let b = t.encode();
        assert_eq!(Testimony::parse(&b, 3), Some(t));
        assert!(Testimony::parse(&b[1..], 3).is_none());
        let mut bad = b.clone();
        bad[96 * 3] = 7;
        assert!(Testimony::parse(&bad, 3).is_none());
        assert!(parse_ruling(&[0, 3, 0], 3).is_none());
        assert!(parse_ruling(&[0], 3).is_none());
        assert!(parse_ruling(&vec![0; 3 + REASONS_MAX + 1], 3).is_none());
        assert_eq!(parse_ruling(&[0, 2, 0], 3).unwrap()[0].why, "(no reason given)");
    }
}
