//! The master validator's all-reduce round and the bandwidth round that
//! rewards it: who took part, with what credit, and the step after it.

use super::{Validator, lock};
use crate::allreduce::audit::{Audit, run_verified};
use crate::allreduce::identity::random_bytes;
use crate::allreduce::projection::K;
use crate::allreduce::{Report, SpanStatus};
use crate::engine::Engine;
use crate::subnet::protocol::{AllReduce, Query, hex32};
use crate::subnet::registry::{Node, Role};
use crate::subnet::scoring::{Participation, Uid, allreduce_round_rewards, bandwidth_score};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

impl<E: Engine> Validator<E> {
    /// The all-reduce round's rewards: each miner's bandwidth, timing a
    /// download of its token embedding in fp16 (one miner at a time, so
    /// they do not share the link), worth 0 unless the bytes equal this
    /// validator's own copy — a miner must actually hold the model. Only
    /// miners whose last Train answer verified and who took part
    /// successfully in the last all-reduce are rewarded. Returns each
    /// miner's bandwidth score.
    pub fn bandwidth_round(&self, miners: &[Node], tensor: &str, timeout: Duration) -> Vec<(Uid, f64)> {
        let want = match crate::subnet::miner::tensor_fp16(&lock(&self.model).0, tensor) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("bandwidth test: {e}");
                return Vec::new();
            }
        };
        let scores: Vec<(Uid, bool, f64)> = miners
            .iter()
            .map(|n| {
                let t = Instant::now();
                let got =
                    n.public_key().ok().and_then(|k| crate::subnet::client::fetch_state(&self.identity, &k, &n.query_addr, tensor, timeout).ok());
                let elapsed = t.elapsed().as_secs_f64();
                let ok = got.is_some_and(|g| g == want);
                if ok && elapsed > 0.0 {
                    lock(&self.rates).record(n.uid, want.len() as f64 / elapsed);
                }
                // As with Train rewards: a miner whose last Train answer
                // failed verification earns nothing for its bandwidth
                // either, and neither does one that did not take part
                // successfully in the all-reduce this round rewards.
                let verified = lock(&self.last_verified).get(&n.uid).copied().unwrap_or(false)
                    && lock(&self.last_allreduce).get(&n.uid) == Some(&Participation::Success);
                (n.uid, verified, bandwidth_score(ok.then_some(elapsed), timeout.as_secs_f64()))
            })
            .collect();
        let rewards = allreduce_round_rewards(&scores);
        lock(&self.scores).fold_round(&rewards);
        scores.into_iter().map(|(u, _, s)| (u, s)).collect()
    }

    /// Each miner's link rate (bytes/s) as its recent bandwidth probes
    /// measured it (`links::LinkRates`).
    pub fn link_rates(&self) -> BTreeMap<Uid, f64> {
        lock(&self.rates).all()
    }

    /// The master's all-reduce: sends AllReduce to `miners` with each
    /// one's credit, joins with weight 0, runs the audited round (reruns
    /// without culprits included), steps its own model copy with the
    /// average, and records who took part (by uid). Success needs a
    /// credited, non-zero contribution that every check passed.
    pub fn allreduce_round(&self, miners: &[Node], round: u64) -> Result<Report, String> {
        let nodes = self.registry.nodes().map_err(|e| e.to_string())?;
        let me = nodes.iter().find(|n| n.key == self.identity.public().to_hex()).ok_or("this validator is not registered")?.clone();
        let mut uids: Vec<Uid> = miners.iter().map(|n| n.uid).collect();
        uids.push(me.uid);
        uids.sort();
        let mut group = crate::subnet::registry::group_of(&nodes, &uids).map_err(|e| e.to_string())?;
        // Spans by the miners' measured links (the validator owns none).
        let rates = self.link_rates();
        let miner_rates: Vec<Option<f64>> = uids.iter().filter(|u| **u != me.uid).map(|u| rates.get(u).copied()).collect();
        let mut shares = crate::subnet::links::span_fractions(&miner_rates).into_iter();
        let mut settings = self.cfg.allreduce.clone();
        settings.chunk_bytes = crate::subnet::links::chunk_bytes_for(&miner_rates, settings.chunk_bytes);
        for (u, m) in uids.iter().zip(group.members.iter_mut()) {
            m.fraction = if *u == me.uid { 0.0 } else { shares.next().unwrap_or(1.0) };
        }
        let timeout = self.cfg.allreduce_timeout;
        // This epoch's credit, which the next epoch starts without.
        let credit = std::mem::take(&mut *lock(&self.credit));
        let challenge = std::mem::replace(&mut *lock(&self.challenge), random_bytes());
        let credited = |u: &Uid| credit.get(u).filter(|c| !c.failed && c.weight > 0.0);
        let audit = Audit {
            challenge,
            weights: uids.iter().map(|u| credited(u).map_or(0.0, |c| c.weight as f32)).collect(),
            // The contribution: the mean of the verified gradients, or in
            // DiLoCo the pseudo-gradient the miner stated.
            expected: uids.iter().map(|u| credited(u).map_or([0.0; K], |c| c.delta.unwrap_or(c.proj_sum.map(|v| v / c.weight)))).collect(),
            // This validator judges the round: every member follows its ruling.
            adjudicator: uids.iter().position(|u| *u == me.uid),
        };
        let q = AllReduce {
            learning_rate: Some(self.cfg.learning_rate),
            round: Some(round),
            group: Some(uids.clone()),
            all_reduce_timeout: Some(timeout.as_secs_f64()),
            challenge: Some(hex32(&audit.challenge)),
            weights: Some(audit.weights.clone()),
            expected: Some(audit.expected.clone()),
            adjudicator: audit.adjudicator.map(|a| a as u16),
            fractions: Some(group.fractions()),
            chunk_bytes: Some(settings.chunk_bytes as u64),
            // (This epoch's rate: the step count moves only after the round.)
            outer_lr: self.cfg.diloco.map(|d| d.outer_lr_at(lock(&self.outer).steps)),
            outer_momentum: self.cfg.diloco.map(|d| d.outer_momentum),
            ..AllReduce::default()
        };
        let mut guard = lock(&self.model);
        let (model, opt) = &mut *guard;
        let mut grad = vec![0f32; model.layout.total];
        let deadline = Instant::now() + timeout;
        let shares: Vec<String> = uids.iter().zip(group.fractions()).map(|(u, f)| format!("{u}: {f:.2}")).collect();
        tracing::info!(
            "round {round}: all-reduce of uids {uids:?} (span fractions {}; chunks of {} KiB)",
            shares.join(", "),
            settings.chunk_bytes >> 10
        );
        // The queries only start the miners' rounds: their answers are not
        // waited for (a miner cut off before it got its query would hold
        // the epoch for the query's whole timeout; the round itself
        // leaves it out by the connect timeout).
        for n in miners {
            let (id, hotkey, n, q) = (self.identity.clone(), self.hotkey.clone(), n.clone(), Query::AllReduce(q.clone()));
            std::thread::spawn(move || {
                if let Err(e) = super::ask_node(&id, hotkey.as_ref(), &n, &q, timeout + Duration::from_secs(30)) {
                    tracing::warn!("AllReduce to uid {}: {e}", n.uid);
                }
            });
        }
        let mut peer = lock(&self.peer);
        let verified = run_verified(&group, &audit, &settings, crate::subnet::miner::VERIFY_ATTEMPTS, |g, a, s| {
            grad.fill(0.0);
            peer.all_reduce_audited(g, round, &mut grad, 0.0, deadline, s, Some(a))
        })
        .map_err(|e| e.to_string())?;
        let report = verified.report.clone();
        if verified.clean {
            // Spans nobody averaged are not applied (see Report::unaveraged_spans).
            for r in report.unaveraged_spans() {
                grad[r].fill(0.0);
            }
            match self.cfg.diloco {
                // The outer step from θₑ, which this validator holds.
                Some(d) => {
                    let start = model.read_params();
                    let mut params = vec![0f32; start.len()];
                    let mut outer = lock(&self.outer);
                    let lr = d.outer_lr_at(outer.steps) as f32;
                    outer.step(&mut params, &start, &grad, lr, d.outer_momentum as f32);
                    model.write_params(&params);
                }
                None => {
                    model.write_grads(&grad);
                    opt.clip_and_step(model, self.cfg.learning_rate as f32, self.cfg.max_grad_norm);
                }
            }
        } else {
            tracing::error!("round {round}: the all-reduce did not verify after {} attempts; nobody steps", crate::subnet::miner::VERIFY_ATTEMPTS);
        }
        model.zero_grads();
        for (id, why) in &verified.accused {
            tracing::warn!("round {round}: uid {id} accused: {why}");
        }
        // Success: credited, joined with that weight, no failure, in every
        // averaged span's contributors, never accused, in a clean round.
        let accused: std::collections::HashSet<&str> = verified.accused.iter().map(|(id, _)| id.as_str()).collect();
        let mut part = BTreeMap::new();
        for n in self.registry.nodes().unwrap_or_default().iter().filter(|n| n.role == Role::Miner) {
            let id = n.uid.to_string();
            let status = match (uids.contains(&n.uid), verified.group.members.iter().position(|m| m.id == id)) {
                (false, _) => Participation::NonParticipating,
                (true, None) => Participation::Fail,
                (true, Some(i)) => {
                    let m = &report.members[i];
                    let want = credited(&n.uid).map(|c| c.weight as f32);
                    let everywhere = report.members.iter().filter(|s| s.span_status == SpanStatus::Averaged).all(|s| s.contributors.contains(&i));
                    let ok = verified.clean && want.is_some() && m.weight == want && m.failure.is_none() && everywhere;
                    if ok { Participation::Success } else { Participation::Fail }
                }
            };
            // Named by a check, or refused by everyone for declaring a
            // weight other than its credit.
            let refused = verified
                .group
                .members
                .iter()
                .position(|m| m.id == id)
                .is_some_and(|i| matches!(report.members[i].failure, Some(crate::allreduce::Failure::FalseWeight { .. })));
            let status = if accused.contains(id.as_str()) || refused { Participation::Caught } else { status };
            if status == Participation::Caught {
                lock(&self.scores).penalize(n.uid);
            }
            part.insert(n.uid, status);
        }
        *lock(&self.last_allreduce) = part;
        let named = verified.accused.iter().map(|(id, why)| (id.clone(), why.clone(), true));
        *lock(&self.last_left_out) = named.chain(verified.dropped.iter().map(|(id, why)| (id.clone(), why.clone(), false))).collect();
        Ok(report)
    }
}
