//! Scoring a Train round's answers with the DiLoCo downloads running
//! ahead: the snapshot each replay starts from (θ and both AdamW moments:
//! three times the model) and, with the sparse codec, the contribution.
//!
//! Why: fetched one miner after another, the downloads made a verified
//! DiLoCo epoch three times as long as its training on 100 Mbit/s links
//! (docs/BENCHMARKS.md): each download is paced by that miner's uplink,
//! the scoring waited for each in turn, and the replays sat idle during
//! them. Here up to `PARALLEL` downloads run at once, from different
//! miners, while the validator replays whatever has arrived, so a round
//! costs about the slowest miner's download plus the replays, as long as
//! the validator's own link is faster than one miner's. A fetcher hands
//! its bytes over before starting the next, so at most `PARALLEL` + 1
//! snapshots are held at a time (`--snapshot-fetches` sets how many run:
//! fewer where snapshots are large and memory short). The stretch to replay is drawn once
//! every answer is in, as before: no miner learns it before it committed.

use super::{Scored, Validator, lock};
use crate::allreduce::projection::Projector;
use crate::diloco::snapshot::{CONTRIBUTION_PREFIX, STATE_PREFIX};
use crate::engine::Engine;
use crate::subnet::protocol::Train;
use crate::subnet::registry::Node;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Downloads in flight at once by default (each from another miner):
/// `ValidatorConfig::snapshot_fetches`.
pub const PARALLEL: usize = 4;

/// What was fetched for one answer before it was scored.
pub(super) struct Prefetched {
    /// The stretch to replay (index into the answer's snapshot digests).
    pub pick: usize,
    pub snapshot: Result<Vec<u8>, String>,
    /// Seconds the snapshot's download took.
    pub fetch_s: f64,
    /// The sparse contribution by its committed digest, when there is one.
    pub contribution: Option<Result<Vec<u8>, String>>,
}

/// What to fetch for one answer.
struct Job {
    pick: usize,
    snapshot: String,
    contribution: Option<String>,
}

/// One answer's scoring: what it found (with the answer's loss), or why it
/// could not be scored; and the seconds it took.
pub(super) type ScoredAnswer = (Result<(Scored, Option<f64>), String>, f64);

impl<E: Engine> Validator<E> {
    /// What to download for answer `a` (DiLoCo only); draws the stretch.
    fn job(&self, a: &Train) -> Option<Job> {
        self.cfg.diloco?;
        let digests = a.snapshot_digests.as_deref().filter(|d| !d.is_empty())?;
        let pick = lock(&self.rng).below(digests.len() as u64) as usize;
        let sparse = self.cfg.allreduce.codec.alignment() > 1;
        Some(Job {
            pick,
            snapshot: format!("{STATE_PREFIX}{}", digests[pick]),
            contribution: a.contribution_digest.as_deref().filter(|_| sparse).map(|d| format!("{CONTRIBUTION_PREFIX}{d}")),
        })
    }

    /// Downloads `name` from `node` (a `State` query).
    pub(super) fn fetch_from(&self, node: &Node, name: &str) -> Result<Vec<u8>, String> {
        let key = node.public_key().map_err(|e| e.to_string())?;
        crate::subnet::client::fetch_state(&self.identity, &key, &node.query_addr, name, self.cfg.train_timeout).map_err(|e| e.to_string())
    }

    fn download(&self, node: &Node, job: &Job) -> Prefetched {
        let t = Instant::now();
        let snapshot = self.fetch_from(node, &job.snapshot);
        let fetch_s = t.elapsed().as_secs_f64();
        let contribution = job.contribution.as_ref().map(|name| self.fetch_from(node, name));
        Prefetched { pick: job.pick, snapshot, fetch_s, contribution }
    }

    /// Scores every answer (`answers[i]` of `miners[i]`, assigned
    /// `assigned[i]`), the DiLoCo downloads running ahead of the replays.
    pub(super) fn score_answers(
        &self,
        miners: &[Node],
        answers: &[Result<Train, String>],
        assigned: &[Option<Vec<u64>>],
        index: usize,
        projector: &Projector,
    ) -> Vec<ScoredAnswer> {
        let jobs: Vec<Option<Job>> = answers.iter().map(|a| a.as_ref().ok().and_then(|a| self.job(a))).collect();
        let score = |i: usize, pre: Option<Prefetched>| -> ScoredAnswer {
            let t = Instant::now();
            let scored = match &answers[i] {
                Ok(a) => self.score_answer(&miners[i], index, a, assigned[i].as_deref(), projector, pre).map(|s| (s, a.loss)),
                Err(e) => Err(e.clone()),
            };
            (scored, t.elapsed().as_secs_f64())
        };
        let mut out: Vec<Option<ScoredAnswer>> = (0..answers.len()).map(|_| None).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            // A rendezvous channel: a fetcher holds its bytes until the
            // scorer takes them, then starts its next download.
            let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Prefetched)>(0);
            let (jobs, next) = (&jobs, &next);
            for _ in 0..self.cfg.snapshot_fetches.max(1).min(jobs.iter().flatten().count()) {
                let tx = tx.clone();
                s.spawn(move || {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(slot) = jobs.get(i) else { break };
                        if let Some(job) = slot
                            && tx.send((i, self.download(&miners[i], job))).is_err()
                        {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            // What needs no download is scored while the downloads run.
            for (i, job) in jobs.iter().enumerate() {
                if job.is_none() {
                    out[i] = Some(score(i, None));
                }
            }
            for (i, pre) in rx {
                out[i] = Some(score(i, Some(pre)));
            }
        });
        out.into_iter().map(|o| o.expect("every answer scored")).collect()
    }
}
