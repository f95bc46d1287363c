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
//! - a member that saw another summary from an owner than the adjudicator
//!   did is left out with that owner, both unproven (either the owner
//!   equivocated or the member lies about it; nobody else can tell), and
//!   its accusations are set aside (it judged on other data);
//! - an accusation the adjudicator cannot confirm (an average only the
//!   accuser received, say) leaves out the accuser and the accused, both
//!   unproven — the framer pays what its victim pays, as in BTARD;
//! - a member that left the round or sent no testimony is left out.
//!
//! Members that do not follow the ruling merely leave themselves out.

use super::audit::Accusation;

/// Longest text of reasons a ruling carries.
pub const REASONS_MAX: usize = 16 << 10;

/// What a member tells the adjudicator after its data phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Testimony {
    /// Per owner, SHA-256 of its span summary as received (zeros: none
    /// came; its own: the summary it sent).
    pub summaries: Vec<[u8; 32]>,
    /// Per member: whom its own verdict names (0 nobody, 1 left out
    /// unproven, 2 accused).
    pub named: Vec<u8>,
}

impl Testimony {
    pub fn len(n: usize) -> usize {
        33 * n
    }

    pub fn new(summaries: Vec<[u8; 32]>, verdict: &[Accusation]) -> Testimony {
        let n = summaries.len();
        let mut named = vec![0u8; n];
        for a in verdict.iter().filter(|a| a.member < n) {
            named[a.member] = 1 + u8::from(a.proven);
        }
        Testimony { summaries, named }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.summaries.iter().flatten().copied().collect();
        out.extend_from_slice(&self.named);
        out
    }

    /// `None` unless `b` is the testimony of a group of `n`.
    pub fn parse(b: &[u8], n: usize) -> Option<Testimony> {
        if b.len() != Testimony::len(n) || b[32 * n..].iter().any(|&v| v > 2) {
            return None;
        }
        Some(Testimony { summaries: b[..32 * n].chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect(), named: b[32 * n..].to_vec() })
    }
}

/// The adjudicator's ruling (see the module doc). `me` is the adjudicator;
/// `own` its verdict; `summaries` its digests of the summaries it received
/// (zeros: none); per member, its testimony and why it left the round.
pub fn ruling(
    me: usize,
    own: Vec<Accusation>,
    summaries: &[[u8; 32]],
    testimonies: &[Option<Testimony>],
    gone: &[Option<String>],
) -> Vec<Accusation> {
    let n = summaries.len();
    let mut out = own.clone();
    let mut name = |member: usize, why: String| {
        if member != me && !out.iter().any(|a| a.member == member) {
            out.push(Accusation { member, why, proven: false });
        }
    };
    // (A member the adjudicator's own verdict leaves out testifies to
    // nothing: a cheat's word must not cost anyone their place.)
    for j in (0..n).filter(|&j| j != me && !own.iter().any(|a| a.member == j)) {
        let t = match (&gone[j], &testimonies[j]) {
            (Some(why), _) => {
                name(j, format!("left the round before its testimony: {why}"));
                continue;
            }
            (None, None) => {
                name(j, "sent the adjudicator no testimony".into());
                continue;
            }
            (None, Some(t)) => t,
        };
        // (Owners whose summary the adjudicator lacks are out already.)
        let differ: Vec<usize> = (0..n).filter(|&i| summaries[i] != [0; 32] && t.summaries[i] != summaries[i]).collect();
        if !differ.is_empty() {
            name(j, format!("saw other summaries of span(s) {differ:?} than the adjudicator"));
            for &i in differ.iter().filter(|&&i| i != j) {
                name(i, format!("span {i}: its summary differs between members (member {j} saw another)"));
            }
            continue;
        }
        for a in (0..n).filter(|&a| t.named[a] != 0 && !own.iter().any(|o| o.member == a)) {
            if a != j && a != me {
                name(a, format!("named by member {j}, which the adjudicator could not confirm"));
            }
            name(j, format!("named member {a}, which the adjudicator could not confirm"));
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

    #[test]
    fn the_adjudicators_verdict_stands_and_unconfirmed_accusations_cost_the_accuser() {
        // Six members, the adjudicator is member 5; its own verdict
        // accuses member 3.
        let sums: Vec<[u8; 32]> = (0..6).map(|i| [i as u8 + 1; 32]).collect();
        let own = vec![acc(3, true)];
        let honest = Testimony::new(sums.clone(), &own);
        // Member 1 also names member 2 (unconfirmed); member 4 saw another
        // summary of span 2 (and so judged on other data); member 0 left;
        // member 3, accused, names member 1 (and counts for nothing).
        let liar = Testimony::new(sums.clone(), &[acc(2, true), acc(3, true)]);
        let mut other = sums.clone();
        other[2] = [9; 32];
        let fooled = Testimony::new(other, &[acc(0, false)]);
        let cheat = Testimony::new(sums.clone(), &[acc(1, true)]);
        let testimonies = [None, Some(liar), Some(honest), Some(cheat), Some(fooled), None];
        let gone = [Some("stalled".to_string()), None, None, None, None, None];
        let r = ruling(5, own, &sums, &testimonies, &gone);
        // 3 accused, as the adjudicator found; 0 gone; 1 and 2 for the
        // unconfirmed accusation; 4 and owner 2 for the differing summary.
        assert_eq!(named(&r), vec![(0, false), (1, false), (2, false), (3, true), (4, false)]);
        let back = parse_ruling(&encode_ruling(6, &r), 6).unwrap();
        assert_eq!(named(&back), named(&r));
        for a in &r {
            let b = back.iter().find(|b| b.member == a.member).unwrap();
            assert!(b.why.ends_with(&a.why), "{} / {}", a.why, b.why);
        }
    }

    #[test]
    fn the_adjudicator_is_never_named_and_accusing_it_costs_only_the_accuser() {
        let sums: Vec<[u8; 32]> = (0..3).map(|i| [i as u8 + 1; 32]).collect();
        let t = Testimony::new(sums.clone(), &[acc(0, true)]);
        let r = ruling(0, vec![], &sums, &[None, Some(t.clone()), Some(Testimony::new(sums.clone(), &[]))], &[None, None, None]);
        assert_eq!(named(&r), vec![(1, false)]);
        // A summary the adjudicator never got is not held against anyone
        // here (its owner is out by the adjudicator's own verdict).
        let mut lacking = sums.clone();
        lacking[2] = [0; 32];
        let r = ruling(0, vec![acc(2, false)], &lacking, &[None, Some(Testimony::new(sums.clone(), &[])), None], &[None, None, None]);
        assert_eq!(named(&r), vec![(2, false)]);
    }

    #[test]
    fn malformed_testimonies_and_rulings_are_refused() {
        let t = Testimony::new(vec![[1; 32]; 3], &[acc(1, true)]);
        let b = t.encode();
        assert_eq!(Testimony::parse(&b, 3), Some(t));
        assert!(Testimony::parse(&b[1..], 3).is_none());
        let mut bad = b.clone();
        bad[32 * 3] = 7;
        assert!(Testimony::parse(&bad, 3).is_none());
        assert!(parse_ruling(&[0, 3, 0], 3).is_none());
        assert!(parse_ruling(&[0], 3).is_none());
        assert!(parse_ruling(&vec![0; 3 + REASONS_MAX + 1], 3).is_none());
        assert_eq!(parse_ruling(&[0, 2, 0], 3).unwrap()[0].why, "(no reason given)");
    }
}
