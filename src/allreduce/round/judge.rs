//! The adjudication that ends an audited round with an adjudicator (see
//! `allreduce::ruling`): once its data phase is over a member sends the
//! adjudicator its testimony and waits for the ruling; the adjudicator
//! waits for every member still in the round, rules, and sends the same
//! ruling to everyone. Part of `Round` (round/mod.rs).

use super::*;
use crate::allreduce::audit::verdict;
use crate::allreduce::ruling::{encode_ruling, parse_ruling, ruling, verify_summary};

impl Round<'_> {
    pub(super) fn adjudicator(&self) -> Option<usize> {
        self.audit.and_then(|a| a.adjudicator)
    }

    /// Whether member `j`'s testimony (we adjudicate) or ruling (it does)
    /// is still due.
    pub(super) fn expects_judgement(&self, j: usize) -> bool {
        match self.adjudicator() {
            Some(a) if a == self.me => self.testimonies[j].is_none(),
            Some(a) => a == j && self.ruling.is_none(),
            None => false,
        }
    }

    /// Per owner, SHA-256 of its span summary as this member holds it and
    /// the owner's signature (zeros: none); its own, of the summary it
    /// sends everyone.
    fn summary_digests(&self) -> Vec<([u8; 32], [u8; 64])> {
        (0..self.n())
            .map(|j| match j == self.me {
                true if !self.finalized.is_empty() => self.signed_summary(&self.done_body(None)),
                true => ([0; 32], [0; 64]),
                false => self.members[j].done_signed.unwrap_or(([0; 32], [0; 64])),
            })
            .collect()
    }

    /// Testifies, or rules, once the data phase is over.
    pub(super) fn judge_step(&mut self, now: Instant) {
        let (Some(a), Some(audit)) = (self.adjudicator(), self.audit) else { return };
        if self.ruling.is_some() {
            return;
        }
        if a == self.me {
            self.keep_waiting(now);
        }
        if !self.data_done() || (a != self.me && self.settings.fault == Some(Fault::StallTestimony)) {
            if a != self.me {
                self.still_receiving(a, now);
            }
            return;
        }
        self.data_done_at.get_or_insert(now);
        let n = self.n();
        if a == self.me {
            if !(0..n).all(|j| j == self.me || self.members[j].failure.is_some() || self.testimonies[j].is_some()) {
                return;
            }
            let own = verdict(audit, &self.report(), self.codec);
            let gone: Vec<Option<String>> = self.members.iter().map(|m| m.failure.as_ref().map(ToString::to_string)).collect();
            let digests: Vec<[u8; 32]> = self.summary_digests().into_iter().map(|d| d.0).collect();
            let (group, round, digest) = (self.group, self.round, self.digest);
            let signed = |i: usize, d: &[u8; 32], sig: &[u8; 64]| verify_summary(&group.members[i].key, round, &digest, i, d, sig);
            let r = ruling(self.me, own, &digests, &self.testimonies, &gone, signed);
            let payload = encode_ruling(n, &r);
            for conn in self.conns.iter_mut().flatten().filter(|c| c.ready) {
                let header = Header::for_payload(Kind::Ruling, self.me as u16, self.round, 0, 0, &payload);
                conn.queue(Out::new(&header, Body::Owned(payload.clone())), now);
            }
            self.ruling = Some(r);
        } else if !self.testified
            && let Some(id) = self.members[a].conn.filter(|_| self.members[a].failure.is_none())
        {
            let mut named = verdict(audit, &self.report(), self.codec);
            if let Some(Fault::FalseTestimony { member }) = self.settings.fault {
                named.push(Accusation { member: member as usize, why: "(a false testimony)".into(), proven: true });
            }
            self.testified = true;
            if self.settings.fault == Some(Fault::WithholdTestimony) {
                return;
            }
            let payload = Testimony::new(self.summary_digests(), &named).encode();
            let header = Header::for_payload(Kind::Testimony, self.me as u16, self.round, a as u32, 0, &payload);
            if let Some(conn) = self.conns[id].as_mut() {
                conn.queue(Out::new(&header, Body::Owned(payload)), now);
            }
        }
    }

    /// Since when member `j`'s testimony (we adjudicate) or ruling (it
    /// does) counts as overdue: its last frame, our last frame to it but
    /// Waiting ones (until it has all of ours its data phase is not over)
    /// and, for the adjudicator, the end of its own data phase (until
    /// then `j` may still be receiving a slow third member's data, as
    /// it is). `None`: not yet.
    pub(super) fn judgement_wait_from(&self, conn: &Conn) -> Option<Instant> {
        let own = match self.adjudicator() == Some(self.me) {
            true => self.data_done_at?,
            false => self.start,
        };
        Some(conn.last_read.max(conn.last_data_write).max(own))
    }

    /// The adjudicator, not ruling yet: every half stall timeout, a
    /// Waiting frame to every member still in the round. A member's wait
    /// for the ruling would otherwise run out while the adjudicator itself
    /// still receives a slow member's data (a 1 Mbit/s uplink uploading
    /// its span), which it needs before it can rule. A dead adjudicator
    /// sends nothing and is still noticed.
    fn keep_waiting(&mut self, now: Instant) {
        if self.waiting_sent.is_some_and(|t| now.duration_since(t) < self.settings.stall_timeout / 2) {
            return;
        }
        self.waiting_sent = Some(now);
        for j in 0..self.n() {
            let m = &self.members[j];
            let Some(id) = m.conn.filter(|_| j != self.me && m.failure.is_none()) else { continue };
            if let Some(conn) = self.conns[id].as_mut().filter(|c| c.ready) {
                let header = Header::for_payload(Kind::Waiting, self.me as u16, self.round, 0, 0, &[]);
                conn.queue(Out::new(&header, Body::Owned(Vec::new())), now);
            }
        }
    }

    /// A member whose inputs are not all in yet, with nothing else to send
    /// the adjudicator: a Waiting frame every half stall timeout, so that
    /// the adjudicator, whose own inputs may have come seconds earlier
    /// (flows out of one slow uplink finish far apart), does not take it
    /// for one withholding its testimony. Bounded: `testimony_overdue`.
    fn still_receiving(&mut self, a: usize, now: Instant) {
        let half = self.settings.stall_timeout / 2;
        let Some(id) = self.members[a].conn.filter(|_| self.members[a].failure.is_none()) else { return };
        let Some(conn) = self.conns[id].as_mut().filter(|c| c.ready && !c.has_output()) else { return };
        if now.duration_since(conn.last_write) < half || self.waiting_sent.is_some_and(|t| now.duration_since(t) < half) {
            return;
        }
        self.waiting_sent = Some(now);
        let header = Header::for_payload(Kind::Waiting, self.me as u16, self.round, 0, 0, &[]);
        conn.queue(Out::new(&header, Body::Owned(Vec::new())), now);
    }

    /// The adjudicator: members' Waiting frames (`still_receiving`) no
    /// longer hold it. A member's inputs may lag the adjudicator's by as
    /// much as the other n − 2 members' data phases together would take,
    /// so: n − 1 times its own data phase past its end, plus the usual
    /// wait. Without the bound a member could hold every round to its
    /// deadline with Waiting frames instead of testifying.
    pub(super) fn testimony_overdue(&self, now: Instant) -> bool {
        let s = self.settings;
        match (self.adjudicator() == Some(self.me), self.data_done_at) {
            (true, Some(done)) => {
                let own = done.duration_since(self.start);
                now > done + own * (self.n() as u32 - 1) + s.connect_timeout.max(s.stall_timeout) + 2 * s.stall_timeout
            }
            _ => false,
        }
    }

    /// A testimony (to us, the adjudicator), the ruling (from it) or a
    /// word that the sender still waits (the adjudicator for the other
    /// testimonies, a member for its inputs; nothing to do: the frame
    /// itself resets the connection's idle time).
    pub(super) fn on_judgement(&mut self, j: usize, h: Header, payload: &[u8]) {
        let n = self.n();
        match h.kind {
            Kind::Testimony if self.adjudicator() == Some(self.me) && self.testimonies[j].is_none() => match Testimony::parse(payload, n) {
                Some(t) => self.testimonies[j] = Some(t),
                None => self.fail(j, Failure::Invalid("malformed testimony".into())),
            },
            Kind::Ruling if self.adjudicator() == Some(j) && self.ruling.is_none() => match parse_ruling(payload, n) {
                Some(r) => self.ruling = Some(r),
                None => self.fail(j, Failure::Invalid("malformed ruling".into())),
            },
            Kind::Waiting if self.adjudicator() == Some(j) && self.ruling.is_none() && payload.is_empty() => {}
            Kind::Waiting if self.adjudicator() == Some(self.me) && self.testimonies[j].is_none() && payload.is_empty() => {}
            kind => self.fail(j, Failure::Invalid(format!("{kind:?} frame unexpected here"))),
        }
    }
}
