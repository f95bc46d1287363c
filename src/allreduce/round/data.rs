//! The data plane of a round: scatter chunks reduced as they arrive,
//! averaged chunks published and received, span summaries sent and read
//! (with an audited round's measurements). Part of `Round` (round/mod.rs).

use super::*;
use crate::allreduce::audit::parts_agree;
use crate::allreduce::projection::dot_serial;
use crate::allreduce::ruling::{sign_summary, verify_summary};
use sha2::Digest;

impl Round<'_> {
    pub(super) fn on_data(&mut self, id: usize, h: Header, payload: &[u8]) {
        let j = self.conns[id].as_ref().and_then(|c| c.peer).expect("a ready connection has a peer");
        if h.kind == Kind::Hello && self.next_rounds_hello(id, j, h, payload) {
            return;
        }
        if h.sender as usize != j || h.round != self.round {
            return self.fail(j, Failure::Invalid(format!("{:?} frame claims sender {} round {}", h.kind, h.sender, h.round)));
        }
        let (c, span) = (h.chunk as usize, h.span as usize);
        match h.kind {
            Kind::Scatter => {
                let w = self.members[j].weight.unwrap_or(0.0);
                if span != self.me || w == 0.0 {
                    return self.fail(j, Failure::Invalid(format!("scatter chunk for span {span} with weight {w}")));
                }
                if self.members[j].excluded.is_some() {
                    return; // already caught: the rest of its contribution is ignored
                }
                if self.audit.is_some() && self.members[j].statement.is_none() {
                    return self.fail(j, Failure::Invalid(format!("scatter chunk {c} before its signed part statement")));
                }
                let own = &self.grad[self.own_span.clone()];
                // The chunk's last expected contribution goes straight into
                // the mean (no trip through the accumulator).
                let last =
                    c < self.finalized.len() && !self.finalized[c] && (0..self.n()).all(|s| s == j || !self.contributes(s) || self.reducer.has(c, s));
                let lies = matches!(self.settings.fault, Some(Fault::WrongAverage | Fault::HiddenAverage { .. }));
                let added = if last && !self.zero_copy && self.codec.encodes_mean_in_runs() && self.mean_codec == self.codec && !lies {
                    // Averaged and encoded in one pass, straight into the wire.
                    let enc = &mut self.wire[self.chunks[self.me][c].bytes.clone()];
                    let finite = self.reducer.add_final_encoded(j, c, w, self.codec, payload, own, enc);
                    finite.map(|f| Some(if f == Some(true) { Mean::Encoded } else { Mean::Nothing }))
                } else if last {
                    let mean = &mut self.scratch[..self.reducer.chunk_range(c).len()];
                    let has_mean = self.reducer.add_final(j, c, w, self.codec, payload, own, mean);
                    has_mean.map(|m| Some(if m { Mean::Scratch } else { Mean::Nothing }))
                } else {
                    self.reducer.add(j, c, w, self.codec, payload, own).map(|()| None)
                };
                match added {
                    Err(e @ ReduceError::Codec(_)) => {
                        tracing::debug!("round {}: member {j} excluded: scatter chunk {c}: {e}", self.round);
                        self.members[j].excluded = Some(format!("scatter chunk {c}: {e}"));
                        self.finalize_ready_chunks();
                    }
                    Err(e) => self.fail(j, Failure::Invalid(format!("scatter chunk {c}: {e}"))),
                    Ok(Some(mean)) => {
                        self.members[j].scatter_got += 1;
                        self.finalized[c] = true;
                        self.publish(c, mean, Some((j, payload)));
                    }
                    Ok(None) => {
                        self.members[j].scatter_got += 1;
                        self.finalize_ready_chunks();
                    }
                }
            }
            Kind::Gather => {
                let Some(info) = self.chunks.get(span).and_then(|s| s.get(c)).filter(|_| span == j) else {
                    return self.fail(j, Failure::Invalid(format!("averaged chunk {c} of span {span}")));
                };
                let m = &self.members[j];
                if m.gather_got[c] || m.done.is_some() {
                    return self.fail(j, Failure::Invalid(format!("averaged chunk {c} sent twice or after the summary")));
                }
                // Audited: the norm measured as it is decoded, in runs whose
                // sums do not depend on where `grad` lies in memory, and the
                // projections from the payload while it is in cache (every
                // member gets the same bits).
                let dst = &mut self.grad[info.elems.clone()];
                // Audited, contributing: this peer's part of the chunk times
                // the average, as the owner must state it (see
                // `audit::verdict`), from the payload while it is in cache
                // and the part as the owner decoded it: the bytes sent,
                // still in `wire`, or (fp32) the values themselves.
                let contributes = self.projector.is_some() && self.weight > 0.0 && !payload.is_empty();
                let dot = match (contributes, self.zero_copy) {
                    (false, _) => 0.0,
                    (true, true) => self.mean_codec.dot_decoded(payload, dst),
                    (true, false) => self.mean_codec.dot_pair(payload, self.codec, &self.wire[info.bytes.clone()], dst.len()),
                };
                let decoded = match (payload.is_empty(), self.projector) {
                    (true, _) => Ok(None),
                    (false, None) => self.mean_codec.decode_into(payload, dst, self.streaming).map(|()| None),
                    (false, Some(_)) => self.mean_codec.decode_into_squares(payload, dst, self.streaming).map(Some),
                };
                let sq = match decoded {
                    Ok(sq) => sq,
                    Err(e) => return self.fail(j, Failure::Invalid(format!("averaged chunk {c}: {e}"))),
                };
                let part = self.projector.zip(sq).map(|(p, sq)| decoded_part(self.mean_codec, &p, payload, info.elems.clone(), sq));
                let m = &mut self.members[j];
                m.gather_dot += dot;
                m.gather_got[c] = true;
                m.gather_sums[c] = h.checksum;
                m.gather_count += 1;
                m.gather_averaged += usize::from(!payload.is_empty());
                if let Some(part) = part {
                    m.gather_parts[c] = part;
                }
            }
            Kind::Statement => {
                let w = self.members[j].weight.unwrap_or(0.0);
                let m = &self.members[j];
                if self.audit.is_none() || span != self.me || w == 0.0 || m.statement.is_some() || m.scatter_got > 0 {
                    return self.fail(j, Failure::Invalid("part statement unexpected here".into()));
                }
                let key = self.group.members[j].key;
                let Some(st) = Statement::parse(payload).filter(|st| st.verify(&key, self.round, &self.digest, j, self.me)) else {
                    return self.fail(j, Failure::Invalid("part statement malformed or not signed with its key".into()));
                };
                self.members[j].statement = Some(st);
                if self.settings.fault == Some(Fault::DenyPart { member: j as u16 }) {
                    self.members[j].excluded = Some("(its part denied)".into());
                    self.finalize_ready_chunks();
                }
            }
            Kind::Done => {
                let n = self.n();
                let m = &self.members[j];
                let (len, max_status) = match self.audit {
                    Some(_) => (n + 8 + n * (Statement::BYTES + 8) + 64, Contribution::Disputed),
                    None => (n + 8, Contribution::Full),
                };
                if m.done.is_some()
                    || m.gather_count != m.gather_got.len()
                    || payload.len() != len
                    || payload[..n].iter().any(|&s| s > max_status as u8)
                {
                    return self.fail(j, Failure::Invalid("malformed or early span summary".into()));
                }
                let hash = u64::from_le_bytes(payload[n..n + 8].try_into().expect("8 bytes"));
                if hash != span_hash(&m.gather_sums) {
                    return self.fail(j, Failure::Invalid("span hash differs from the chunks received".into()));
                }
                if self.audit.is_some() {
                    // Signed by its owner (evidence for the adjudicator,
                    // should the owner show others another one).
                    let (body, sig) = payload.split_at(len - 64);
                    let (digest, sig): ([u8; 32], [u8; 64]) = (sha2::Sha256::digest(body).into(), sig.try_into().expect("64 bytes"));
                    if !verify_summary(&self.group.members[j].key, self.round, &self.digest, j, &digest, &sig) {
                        return self.fail(j, Failure::Invalid("span summary not signed with its owner's key".into()));
                    }
                    self.members[j].done_signed = Some((digest, sig));
                    // The statements of the parts in the span wholly, each
                    // checked against its sender's key (a forged one names
                    // the owner, by everyone alike).
                    let (mut parts, mut forged) = (vec![Part::default(); n], None);
                    let (statements, dots) = payload[n + 8..len - 64].split_at(n * Statement::BYTES);
                    let dots: Vec<f64> = dots.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
                    if dots.iter().any(|d| !d.is_finite()) {
                        return self.fail(j, Failure::Invalid("span summary states a non-finite product".into()));
                    }
                    for (s, b) in statements.chunks_exact(Statement::BYTES).enumerate() {
                        if payload[s] < Contribution::Full as u8 {
                            continue;
                        }
                        let Some(st) = Statement::parse(b) else {
                            return self.fail(j, Failure::Invalid("span summary states a non-finite part".into()));
                        };
                        if !st.verify(&self.group.members[s].key, self.round, &self.digest, s, j) {
                            forged = forged.or(Some(s));
                        }
                        parts[s] = st.part;
                    }
                    self.members[j].done_parts = Some(parts);
                    self.members[j].done_forged = forged;
                    self.members[j].done_dots = Some(dots);
                }
                self.members[j].done = Some((payload[..n].to_vec(), hash));
            }
            Kind::Testimony | Kind::Ruling | Kind::Waiting => self.on_judgement(j, h, payload),
            Kind::Abort => {
                let why: String = String::from_utf8_lossy(payload).chars().take(200).collect();
                self.fail(j, Failure::Aborted(why));
            }
            Kind::Hello | Kind::Auth => self.fail(j, Failure::Invalid("handshake frame after the handshake".into())),
        }
    }

    /// Audited: every sender's part of this peer's span as it reports
    /// them, measured by the reducer as they entered the average.
    pub(super) fn own_parts(&self) -> Vec<Part> {
        self.reducer.measured().map_or_else(|| vec![Part::default(); self.n()], <[Part]>::to_vec)
    }

    /// Whether a member is still expected to contribute to this peer's span.
    pub(super) fn contributes(&self, s: usize) -> bool {
        let m = &self.members[s];
        s != self.me && m.failure.is_none() && m.excluded.is_none() && m.weight.is_none_or(|w| w > 0.0)
    }

    pub(super) fn finalize_ready_chunks(&mut self) {
        for c in 0..self.finalized.len() {
            if !self.finalized[c] && (0..self.n()).all(|s| !self.contributes(s) || self.reducer.has(c, s)) {
                self.finalize(c);
            }
        }
    }

    /// Averages chunk `c` of this peer's span, encodes it once, decodes it
    /// into `grad` and sends the same bytes to every connected member.
    fn finalize(&mut self, c: usize) {
        self.finalized[c] = true;
        // The mean lands in a chunk-sized scratch that stays in cache while
        // it is encoded; the encoding is decoded back into `grad`.
        let mean = &mut self.scratch[..self.reducer.chunk_range(c).len()];
        let has_mean = self.reducer.mean_into(c, &self.grad[self.own_span.clone()], mean);
        self.publish(c, if has_mean { Mean::Scratch } else { Mean::Nothing }, None);
    }

    /// Sends chunk `c`'s mean to everyone.
    /// Audited: `last` is the chunk's last part (its sender and payload),
    /// which the reducer did not keep (see `SpanReducer::dots_with`).
    fn publish(&mut self, c: usize, mean: Mean, last: Option<(usize, &[u8])>) {
        let info = &self.chunks[self.me][c];
        let now = Instant::now();
        let elems = info.elems.clone();
        if matches!(mean, Mean::Scratch) {
            let x = &mut self.scratch[..elems.len()];
            match (self.settings.fault, &self.projector) {
                (Some(Fault::WrongAverage), _) => x.iter_mut().for_each(|v| *v = -*v),
                (Some(Fault::HiddenAverage { factor: f, .. }), Some(p)) => {
                    let sampled: Vec<(Range<usize>, Vec<f32>)> = p.sampled_runs(elems.start, x.len()).map(|r| (r.clone(), x[r].to_vec())).collect();
                    x.iter_mut().for_each(|v| *v *= f);
                    for (r, v) in sampled {
                        x[r].copy_from_slice(&v);
                    }
                }
                _ => {}
            }
        }
        let scratch = &self.scratch[..elems.len()];
        // Audited: the owner's own part · the average, measured as the
        // average replaces the part in `grad`.
        let audited = self.projector.is_some();
        let mut own_dot = 0.0;
        let mut decode = |enc: &[u8], dst: &mut [f32]| match audited {
            true => own_dot = self.mean_codec.decode_into_dot(enc, dst).expect("own encoding decodes"),
            false => self.mean_codec.decode(enc, dst).expect("own encoding decodes"),
        };
        // Huge (finite) contributions can still overflow the sum: such a
        // chunk is not averaged rather than sent as inf.
        let sum = match mean {
            Mean::Scratch if self.zero_copy => first_nonfinite(scratch).is_none().then(|| {
                let dst = &mut self.grad[elems.clone()];
                if audited {
                    own_dot = dot_serial(dst, scratch);
                }
                dst.copy_from_slice(scratch);
                checksum(f32_bytes(scratch))
            }),
            Mean::Scratch => self.mean_codec.encode_checked(scratch, &mut self.wire[info.bytes.clone()]).is_none().then(|| {
                let enc = &self.wire[info.bytes.clone()];
                decode(enc, &mut self.grad[elems.clone()]);
                checksum(enc)
            }),
            Mean::Encoded => {
                let enc = &self.wire[info.bytes.clone()];
                decode(enc, &mut self.grad[elems.clone()]);
                Some(checksum(enc))
            }
            Mean::Nothing => None,
        };
        self.averaged[c] = sum.is_some();
        self.my_sums[c] = sum.unwrap_or_else(|| checksum(&[]));
        if audited {
            let mean = sum.is_some().then(|| &self.grad[elems.clone()]);
            self.reducer.dots_with(c, self.codec, mean, last, own_dot);
        }
        let complete = self.finalized.iter().all(|&f| f);
        if complete {
            self.reduced_s = Some(self.start.elapsed().as_secs_f64());
        }
        for id in 0..self.conns.len() {
            if let Some(to) = self.conns[id].as_ref().filter(|c| c.ready).and_then(|c| c.peer) {
                let out = self.gather_out(c, to);
                let done = complete.then(|| self.done_out(to));
                let conn = self.conns[id].as_mut().expect("checked");
                conn.queue(out, now);
                if let Some(done) = done {
                    conn.queue(done, now);
                }
            }
        }
    }

    /// Averaged chunk `c`, for member `to`.
    pub(super) fn gather_out(&self, c: usize, to: usize) -> Out {
        let info = &self.chunks[self.me][c];
        let bytes = if self.zero_copy { 4 * info.elems.start..4 * info.elems.end } else { info.bytes.clone() };
        let range = if self.averaged[c] { bytes } else { bytes.start..bytes.start };
        if self.settings.fault == Some(Fault::EquivocateAverage { to: to as u16 }) && self.codec == Codec::F16 {
            // fp16's sign is the high bit of each little-endian pair.
            let mut neg = self.wire[range].to_vec();
            neg.iter_mut().skip(1).step_by(2).for_each(|b| *b ^= 0x80);
            let header = Header::for_payload(Kind::Gather, self.me as u16, self.round, self.me as u32, c as u32, &neg);
            return Out::new(&header, Body::Owned(neg));
        }
        let header = Header {
            kind: Kind::Gather,
            sender: self.me as u16,
            round: self.round,
            span: self.me as u32,
            chunk: c as u32,
            len: range.len() as u32,
            checksum: self.my_sums[c],
        };
        Out::new(&header, if self.zero_copy { Body::Grad(range) } else { Body::Wire(range) })
    }

    /// Per member 0 (no contribution), 1 (some chunks), 2 (every chunk).
    pub(super) fn contributor_status(&self) -> Vec<u8> {
        let k = self.finalized.len();
        (0..self.n())
            .map(|s| {
                let got = (0..k).filter(|&c| self.reducer.has(c, s)).count();
                if got == 0 {
                    0
                } else if got == k {
                    2
                } else {
                    1
                }
            })
            .collect()
    }

    /// Audited: per member its place in this span (a `Contribution`) and
    /// the statement this summary forwards for it: the sender's own, as
    /// received (disputed when what was decoded does not match it), and
    /// this peer's own part signed by itself.
    pub(super) fn summary_statements(&self) -> (Vec<u8>, Vec<Option<Statement>>) {
        let mut status = self.contributor_status();
        let measured = self.own_parts();
        let mut statements = vec![None; self.n()];
        for s in 0..self.n() {
            if status[s] == Contribution::None as u8 {
                continue;
            }
            if s == self.me {
                statements[s] = Some(Statement::sign(self.id, self.round, &self.digest, s, s, measured[s]));
                continue;
            }
            let Some(mut st) = self.members[s].statement else { continue };
            let lies = self.settings.fault == Some(Fault::DisputePart { member: s as u16 });
            if status[s] == Contribution::Full as u8 && (lies || !parts_agree(self.codec, &measured[s], &st.part, self.own_span.len())) {
                status[s] = Contribution::Disputed as u8;
            }
            if let Some(Fault::MisreportPart { member, scale }) = self.settings.fault
                && member as usize == s
            {
                st.part.proj.iter_mut().for_each(|v| *v *= scale as f64);
            }
            statements[s] = Some(st);
        }
        (status, statements)
    }

    /// Audited: per sender, its part of this span · the span's average, as
    /// the summary states them (0 for a sender not in it wholly). Under
    /// a balanced `Fault::HiddenAverage` and `Fault::MisstateDot` the owner's own is
    /// made to balance the rest, as a lying owner that knows the check
    /// would (see `audit::verdict`: the bound on the products catches it).
    pub(super) fn summary_dots(&self, status: &[u8]) -> Vec<f64> {
        let n = self.n();
        let whole = |s: usize| status[s] >= Contribution::Full as u8;
        let mut dots: Vec<f64> = (0..n).map(|s| if whole(s) { self.reducer.dots().map_or(0.0, |d| d[s]) } else { 0.0 }).collect();
        let cover = match self.settings.fault {
            Some(Fault::MisstateDot { member }) if (member as usize) < n => {
                dots[member as usize] *= 1.1;
                true
            }
            Some(Fault::HiddenAverage { balanced, .. }) => balanced,
            _ => false,
        };
        if cover && self.weight > 0.0 {
            let w = |s: usize| if s == self.me { self.weight } else { self.members[s].weight.unwrap_or(0.0) } as f64;
            let total: f64 = (0..n).filter(|&s| whole(s)).map(w).sum();
            let others: f64 = (0..n).filter(|&s| whole(s) && s != self.me).map(|s| w(s) * dots[s]).sum();
            let norm2 = super::super::projection::sum_squares(&self.grad[self.own_span.clone()]);
            dots[self.me] = (total * norm2 - others) / w(self.me);
        }
        dots
    }

    /// This span's contributor status as the summary gives it (see
    /// `Contribution`).
    pub(super) fn summary_status(&self) -> Vec<u8> {
        if self.audit.is_some() { self.summary_statements().0 } else { self.contributor_status() }
    }

    /// The span summary frame for member `to`.
    pub(super) fn done_out(&self, to: usize) -> Out {
        if self.settings.fault == Some(Fault::WithholdSummary) {
            let why = b"(withholding its summary)".to_vec();
            let header = Header::for_payload(Kind::Abort, self.me as u16, self.round, self.me as u32, 0, &why);
            return Out::new(&header, Body::Owned(why));
        }
        let payload = self.done_payload(Some(to));
        let header = Header::for_payload(Kind::Done, self.me as u16, self.round, self.me as u32, 0, &payload);
        Out::new(&header, Body::Owned(payload))
    }

    /// The span summary, as sent to member `to`: audited, signed.
    pub(super) fn done_payload(&self, to: Option<usize>) -> Vec<u8> {
        let mut payload = self.done_body(to);
        if self.audit.is_some() {
            let (digest, sig) = self.signed_summary(&payload);
            debug_assert_eq!(digest, <[u8; 32]>::from(sha2::Sha256::digest(&payload)));
            payload.extend_from_slice(&sig);
        }
        payload
    }

    /// SHA-256 of a summary body of ours and our signature of it.
    pub(super) fn signed_summary(&self, body: &[u8]) -> ([u8; 32], [u8; 64]) {
        let digest: [u8; 32] = sha2::Sha256::digest(body).into();
        (digest, sign_summary(self.id, self.round, &self.digest, self.me, &digest))
    }

    /// The span summary's body, as sent to member `to` (the same for
    /// everyone but under `Fault::EquivocateSummary`).
    pub(super) fn done_body(&self, to: Option<usize>) -> Vec<u8> {
        if self.audit.is_some() {
            let (mut payload, statements) = self.summary_statements();
            if let Some(Fault::EquivocateSummary { to: victim }) = self.settings.fault
                && to == Some(victim as usize)
                && let Some(s) = (0..self.n()).find(|&s| s != self.me && s != victim as usize && payload[s] == Contribution::Full as u8)
            {
                payload[s] = Contribution::Disputed as u8;
            }
            payload.extend_from_slice(&span_hash(&self.my_sums).to_le_bytes());
            // Members in no chunk of the span: zeros in their place.
            let dots = self.summary_dots(&payload[..self.n()]);
            for st in statements {
                st.unwrap_or(Statement { part: Part::default(), sig: [0; 64] }).encode(&mut payload);
            }
            dots.iter().for_each(|d| payload.extend_from_slice(&d.to_le_bytes()));
            payload
        } else {
            let mut payload = self.contributor_status();
            payload.extend_from_slice(&span_hash(&self.my_sums).to_le_bytes());
            payload
        }
    }
}
