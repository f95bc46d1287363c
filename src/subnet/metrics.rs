//! Live metrics for node operators: miners and validators serve
//! `GET /metrics` (`--metrics-addr HOST:PORT`) in the OpenMetrics text
//! format, which Prometheus scrapes natively.
//!
//! The metrics live in one `NodeMetrics` per process, encoded by the
//! `prometheus-client` crate (the Prometheus project's own Rust client:
//! names, `_total` suffixes, units, escaping and `# EOF` as the format
//! wants them). The endpoint is its own small listener, not a route of the
//! query server (`endpoint`): scrapes carry no signature, and a scraper
//! must never be able to take a query slot.

use super::endpoint::{Endpoint, Reply};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabel {
    pub query: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UidLabel {
    pub uid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: String,
}

/// Every metric a node exports (each under `dtrain_`).
#[derive(Debug)]
pub struct NodeMetrics {
    registry: Registry,
    /// The model version this node holds.
    pub epoch: Gauge,
    /// Mean training loss: a miner's last Train answer, the master
    /// validator's epoch (over the miners' answers).
    pub train_loss: FloatGauge,
    /// The master validator's held-out loss after its last epoch.
    pub eval_loss: FloatGauge,
    /// Tokens per second of a miner's last Train answer.
    pub train_tokens_per_second: FloatGauge,
    pub train_seconds: Histogram,
    pub train_tokens: Counter,
    /// A miner's Train query in progress (or its last): batches assigned
    /// and done (what `dtrain swarm` shows as each miner's progress).
    pub train_batches_assigned: Gauge,
    pub train_batches_done: Gauge,
    pub allreduce_seconds: Histogram,
    pub allreduce_bytes: Family<DirectionLabel, Counter>,
    /// Members that failed in this node's all-reduce rounds, by failure.
    pub allreduce_failures: Family<KindLabel, Counter>,
    /// Queries answered, by query.
    pub queries: Family<QueryLabel, Counter>,
    /// Queries refused or failed, by reason.
    pub query_refusals: Family<ReasonLabel, Counter>,
    /// The master validator's score and weight of each miner.
    pub miner_score: Family<UidLabel, FloatGauge>,
    pub miner_weight: Family<UidLabel, FloatGauge>,
}

impl NodeMetrics {
    /// The metrics of a node in `role` (miner, validator) on `engine`.
    pub fn new(role: &str, engine: &str) -> NodeMetrics {
        let mut m = NodeMetrics {
            registry: Registry::with_prefix("dtrain"),
            epoch: Gauge::default(),
            train_loss: FloatGauge::default(),
            eval_loss: FloatGauge::default(),
            train_tokens_per_second: FloatGauge::default(),
            // 0.1 s to ~30 min.
            train_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 15)),
            train_tokens: Counter::default(),
            train_batches_assigned: Gauge::default(),
            train_batches_done: Gauge::default(),
            allreduce_seconds: Histogram::new(exponential_buckets(0.1, 2.0, 15)),
            allreduce_bytes: Family::default(),
            allreduce_failures: Family::default(),
            queries: Family::default(),
            query_refusals: Family::default(),
            miner_score: Family::default(),
            miner_weight: Family::default(),
        };
        let build = Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("revision", env!("DTRAIN_GIT_REV").to_string()),
            ("role", role.to_string()),
            ("engine", engine.to_string()),
        ]);
        m.registry.register("build", "dtrain's version and revision, this node's role and compute engine", build);
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register("epoch", "The model version (epoch) this node holds", self.epoch.clone());
        r.register("train_loss", "Mean training loss of the last Train answer (a miner) or epoch (the master validator)", self.train_loss.clone());
        r.register("eval_loss", "Loss on the dataset's held-out rows after the last epoch (the master validator)", self.eval_loss.clone());
        r.register("train_tokens_per_second", "Tokens per second of the last Train answer", self.train_tokens_per_second.clone());
        r.register_with_unit(
            "train_duration",
            "Time to answer a Train query (a miner) or run a Train round (a validator)",
            Unit::Seconds,
            self.train_seconds.clone(),
        );
        r.register("train_tokens", "Tokens trained on", self.train_tokens.clone());
        r.register("train_batches_assigned", "Batches of the Train query in progress, or of the last one", self.train_batches_assigned.clone());
        r.register("train_batches_done", "Batches of it done so far", self.train_batches_done.clone());
        r.register_with_unit("allreduce_duration", "Time of an all-reduce (reruns included)", Unit::Seconds, self.allreduce_seconds.clone());
        r.register_with_unit("allreduce", "All-reduce bytes sent and received", Unit::Bytes, self.allreduce_bytes.clone());
        r.register("allreduce_member_failures", "Members that failed in this node's all-reduce rounds, by failure", self.allreduce_failures.clone());
        r.register("queries", "Queries answered, by query", self.queries.clone());
        r.register("query_refusals", "Queries refused or failed, by reason", self.query_refusals.clone());
        r.register("miner_score", "The master validator's moving-average score of each miner", self.miner_score.clone());
        r.register("miner_weight", "The weight the master validator sets for each miner", self.miner_weight.clone());
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts what an all-reduce round did.
    pub fn record_allreduce(&self, report: &crate::allreduce::Report, seconds: f64) {
        self.allreduce_seconds.observe(seconds);
        self.allreduce_bytes.get_or_create(&DirectionLabel { direction: "sent".into() }).inc_by(report.bytes_sent);
        self.allreduce_bytes.get_or_create(&DirectionLabel { direction: "received".into() }).inc_by(report.bytes_received);
        for (_, f) in report.failures() {
            self.allreduce_failures.get_or_create(&KindLabel { kind: failure_kind(f) }).inc();
        }
    }

    /// Counts a query answered (`Ok`) or refused with an HTTP status.
    pub fn record_query(&self, query: Option<&str>, status: u16) {
        if status == 200 {
            self.queries.get_or_create(&QueryLabel { query: query.unwrap_or("unknown").to_string() }).inc();
        } else {
            self.query_refusals.get_or_create(&ReasonLabel { reason: refusal_reason(status).to_string() }).inc();
        }
    }
}

/// A failure's kind: its variant's name in snake case (`Disconnected` →
/// `disconnected`), a label value of few distinct values.
fn failure_kind(f: &crate::allreduce::Failure) -> String {
    let debug = format!("{f:?}");
    let name = debug.split(|c: char| !c.is_alphanumeric()).next().unwrap_or("other");
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Why a query was refused, from the status the server answered with.
fn refusal_reason(status: u16) -> &'static str {
    match status {
        503 => "busy",
        401 => "unauthenticated",
        403 => "unknown_caller",
        413 | 431 => "too_large",
        400 | 404 | 405 | 411 => "malformed",
        _ => "failed",
    }
}

/// The `/metrics` listener (see `endpoint`); stops when dropped.
pub struct MetricsServer(Endpoint);

impl MetricsServer {
    /// Serves `metrics` on `addr` (port 0 picks one).
    pub fn start(addr: SocketAddr, metrics: Arc<NodeMetrics>) -> std::io::Result<MetricsServer> {
        let handler = move |path: &str| match path == "/metrics" || path.starts_with("/metrics?") {
            true => Reply::ok("application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.encode()),
            false => Reply::not_found("metrics are at GET /metrics"),
        };
        Endpoint::start(addr, "metrics endpoint", Arc::new(handler)).map(MetricsServer)
    }

    pub fn addr(&self) -> SocketAddr {
        self.0.addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_kinds_are_snake_case_variant_names() {
        use crate::allreduce::Failure;
        assert_eq!(failure_kind(&Failure::Disconnected("x".into())), "disconnected");
        assert_eq!(refusal_reason(503), "busy");
        assert_eq!(refusal_reason(500), "failed");
    }
}
