//! What a round reports when it ends (see `allreduce::report`), with an
//! audited round's measurements. Part of `Round` (round/mod.rs).

use super::*;

impl Round<'_> {
    // ---- report -------------------------------------------------------------

    pub(super) fn report(&self) -> Report {
        let n = self.n();
        let k = self.finalized.len();
        let status = |averaged: usize, chunks: usize| match (averaged, chunks) {
            (_, 0) => SpanStatus::Empty,
            (a, c) if a == c => SpanStatus::Averaged,
            (0, _) => SpanStatus::KeptLocal,
            (averaged, chunks) => SpanStatus::Partial { averaged, chunks },
        };
        let members = (0..n)
            .map(|j| {
                let m = &self.members[j];
                let info = &self.chunks[j];
                let span = info.first().map_or((0, 0), |f| (f.elems.start, info.last().expect("nonempty").elems.end));
                let (span_status, contributors, hash) = if j == self.me {
                    let averaged = self.averaged.iter().filter(|&&a| a).count();
                    let st = status(averaged, k);
                    let hash = (st == SpanStatus::Averaged).then(|| span_hash(&self.my_sums));
                    (st, self.summary_status(), hash)
                } else {
                    let st = status(m.gather_averaged, m.gather_got.len());
                    let (contrib, hash) = m.done.clone().unwrap_or_default();
                    let hash = (st == SpanStatus::Averaged && m.done.is_some()).then_some(hash);
                    (st, contrib, hash)
                };
                let pick = |v: u8| contributors.iter().enumerate().filter(|&(_, &s)| s == v).map(|(i, _)| i).collect();
                MemberReport {
                    id: self.group.members[j].id.clone(),
                    span,
                    weight: m.weight,
                    // Caught lying is the reason, even if it later also stalled.
                    failure: m.excluded.clone().map(Failure::Invalid).or_else(|| m.failure.clone()),
                    contributors: pick(2),
                    partial_contributors: pick(1),
                    disputed: pick(3),
                    span_status,
                    hash,
                }
            })
            .collect();
        // Averaged spans' projections: the chunks' (projected on arrival),
        // summed in chunk order so the result never depends on it.
        let sum_parts = |parts: &[Part]| {
            parts.iter().fold(Part::default(), |mut a, p| {
                a.add(p);
                a
            })
        };
        let audit = self.projector.map(|_| {
            // Its own span's parts are the statements its summary forwards.
            let (status, statements) = self.summary_statements();
            let own: Vec<Part> = statements.iter().map(|st| st.map_or(Part::default(), |st| st.part)).collect();
            AuditData {
                parts: (0..n).map(|j| if j == self.me { Some(own.clone()) } else { self.members[j].done_parts.clone() }).collect(),
                forged: (0..n).map(|j| self.members[j].done_forged).collect(),
                // (Its own average is not checked by itself: an honest
                // owner's agrees, a lying one's verdict matters to nobody.)
                averaged: (0..n).map(|j| if j == self.me { Part::default() } else { sum_parts(&self.members[j].gather_parts) }).collect(),
                dots: (0..n).map(|j| if j == self.me { Some(self.summary_dots(&status)) } else { self.members[j].done_dots.clone() }).collect(),
                my_dots: (0..n).map(|j| if j == self.me { 0.0 } else { self.members[j].gather_dot }).collect(),
            }
        });
        Report {
            round: self.round,
            me: self.me,
            audit,
            ruling: self.ruling.clone(),
            members,
            local_rejected: self.local_rejected.clone(),
            refused: self.refused.clone(),
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            setup_s: self.setup_s,
            connect_s: self.connect_s,
            reused: self.reused,
            congestion: {
                let mut names = self.congestion.clone();
                names.sort();
                names
            },
            reduced_s: self.reduced_s,
            elapsed_s: self.start.elapsed().as_secs_f64(),
        }
    }
}
