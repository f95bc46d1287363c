//! What the validator records of each epoch beside its JSON line in
//! metrics.jsonl (built in node.rs): the Prometheus gauges, the
//! all-reduce's shares and link bound, each miner's Train outcome.

use super::metrics::NodeMetrics;
use super::validator::Validator;
use crate::engine::Engine;
use std::collections::BTreeMap;

/// What the master validator's epoch did, into its metrics.
#[allow(clippy::too_many_arguments)]
pub(super) fn record_epoch<E: Engine>(
    m: &NodeMetrics,
    v: &Validator<E>,
    epoch: u64,
    loss: f64,
    eval: Option<crate::eval::Eval>,
    train_s: f64,
    report: &crate::allreduce::Report,
    allreduce_s: f64,
) {
    use super::metrics::UidLabel;
    m.epoch.set(epoch as i64);
    m.train_loss.set(loss);
    if let Some(e) = eval {
        m.eval_loss.set(e.loss);
    }
    m.train_seconds.observe(train_s);
    m.record_allreduce(report, allreduce_s);
    let scores = v.scores.lock().unwrap_or_else(|p| p.into_inner());
    for (uid, s) in &scores.score {
        m.miner_score.get_or_create(&UidLabel { uid: uid.to_string() }).set(*s);
    }
    for (uid, w) in scores.weights() {
        m.miner_weight.get_or_create(&UidLabel { uid: uid.to_string() }).set(w);
    }
}

/// The round's link bound (`links::round_bound`) from the miners' probed
/// rates and the bytes this validator received (the whole encoded vector).
pub(super) fn allreduce_bound(report: &crate::allreduce::Report, rates: &BTreeMap<super::scoring::Uid, f64>) -> Option<f64> {
    let shares = span_shares(report);
    let members: Vec<(f64, Option<f64>)> =
        report.members.iter().map(|m| (shares[&m.id], m.id.parse().ok().and_then(|u: super::scoring::Uid| rates.get(&u).copied()))).collect();
    super::links::round_bound(&members, report.bytes_received as f64)
}

/// Each member's share of the vector in an all-reduce, by id (uid).
pub(super) fn span_shares(report: &crate::allreduce::Report) -> BTreeMap<String, f64> {
    let total = report.members.iter().map(|m| m.span.1.saturating_sub(m.span.0)).sum::<usize>().max(1) as f64;
    report.members.iter().map(|m| (m.id.clone(), m.span.1.saturating_sub(m.span.0) as f64 / total)).collect()
}

/// One miner's Train outcome as metrics.jsonl records it (with the
/// verification's costs: scoring, replaying, the snapshot's download).
pub(super) fn outcome_json(o: &super::validator::TrainScore) -> serde_json::Value {
    serde_json::json!({
        "uid": o.uid, "gradient": o.gradient, "steps": o.steps, "loss": o.loss, "error": o.error, "check": o.check,
        "gauntlet": o.gauntlet, "score_s": o.score_s, "replay_s": o.replay_s, "fetch_s": o.fetch_s,
    })
}
