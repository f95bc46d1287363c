//! The validator's scoring of a DiLoCo answer: the replay of one stretch
//! of inner steps (`inner_check`) and, with the sparse codec, the check of
//! the contribution the miner committed to (`gauntlet`).

use super::prefetch::Prefetched;
use super::{Validator, lock};
use crate::allreduce::projection::{Proj, Projector, max_diff};
use crate::data::loader::RowBatches;
use crate::data::source::fetch_rows;
use crate::diloco::DilocoSettings;
use crate::diloco::snapshot::{CONTRIBUTION_PREFIX, STATE_PREFIX, digest};
use crate::engine::Engine;
use crate::model::{Gpt, ParamTensor};
use crate::optim::OptimizerConfig;
use crate::subnet::gauntlet;
use crate::subnet::inner_check::{InnerClaim, InnerReplay, InnerSettings, check_inner};
use crate::subnet::protocol::Train;
use crate::subnet::registry::Node;

impl<E: Engine> Validator<E> {
    /// Replays one stretch of the answer's inner steps from its committed
    /// snapshot and, with the sparse codec, checks its contribution: the
    /// outer `Err` is the validator's own trouble, the inner one why the
    /// answer fails.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn score_inner(
        &self,
        node: &Node,
        model: &mut Gpt<E>,
        config: OptimizerConfig,
        d: DilocoSettings,
        batches: &RowBatches,
        n: usize,
        test: &ParamTensor,
        projector: &Projector,
        a: &Train,
        claimed: &[Proj],
        delta: Proj,
        pre: Option<Prefetched>,
    ) -> Result<Result<InnerReplay, String>, String> {
        let every = usize::try_from(d.every()).unwrap_or(usize::MAX);
        let params_after = a.param_projections.as_deref().unwrap_or_default();
        let digests = a.snapshot_digests.as_deref().unwrap_or_default();
        if n == 0 || params_after.len() != n || params_after.iter().flatten().any(|v| !v.is_finite()) {
            return Ok(Err(format!("{} weight projections for {n} inner steps", params_after.len())));
        }
        if digests.len() != n.div_ceil(every) {
            return Ok(Err(format!("{} snapshots for {n} inner steps, one every {every}", digests.len())));
        }
        let sparse = self.cfg.allreduce.codec.alignment() > 1;
        let contribution = match (sparse, a.contribution_projections, a.contribution_digest.as_deref()) {
            (false, ..) => None,
            (true, Some(p), Some(digest)) if p.iter().all(|v| v.is_finite()) => Some((p, digest)),
            (true, ..) => return Ok(Err("no finite projections or digest of its sparse contribution".into())),
        };
        // The stretch was drawn when its download started (`prefetch`).
        let (pick, snapshot, fetch_s, fetched_contribution) = match pre {
            Some(p) if p.pick < digests.len() => (p.pick, Some(p.snapshot), Some(p.fetch_s), p.contribution),
            _ => (lock(&self.rng).below(digests.len() as u64) as usize, None, None, None),
        };
        let settings = InnerSettings {
            config,
            lr: d.inner_lr_at(lock(&self.outer).steps) as f32,
            max_grad_norm: self.cfg.max_grad_norm,
            every,
            tolerance: self.cfg.projection_tolerance,
        };
        let claim = InnerClaim { projections: claimed, params_after, digests, delta };
        let fetch = |digest: &str| match snapshot {
            Some(bytes) => bytes,
            None => self.fetch_from(node, &format!("{STATE_PREFIX}{digest}")),
        };
        let mut r = check_inner(model, batches, n, test, projector, &settings, &claim, pick, fetch).map_err(|e| e.to_string())?;
        if let Some(s) = fetch_s {
            r.fetch_s = s;
        }
        if let Some(why) = r.failure.take() {
            return Ok(Err(why));
        }
        if let Some((stated, want)) = contribution {
            let bytes = match fetched_contribution.unwrap_or_else(|| self.fetch_from(node, &format!("{CONTRIBUTION_PREFIX}{want}"))) {
                Ok(b) => b,
                Err(e) => return Ok(Err(format!("did not serve its sparse contribution: {e}"))),
            };
            if digest(&bytes) != want {
                return Ok(Err("served a sparse contribution other than the one it committed to".into()));
            }
            let mut c = vec![0f32; model.layout.total];
            if let Err(e) = self.cfg.allreduce.codec.decode(&bytes, &mut c) {
                return Ok(Err(format!("its sparse contribution: {e}")));
            }
            let (p, sq) = projector.project_with_scale(&c, 0);
            if max_diff(&p, &stated) > 1e-6 * sq.sqrt() + 1e-30 {
                return Ok(Err("its sparse contribution is not the one whose projections it stated".into()));
            }
            let own_rows = a.dataset_indices.as_deref().unwrap_or_default();
            let g = self.gauntlet(model, &c, d.outer_lr_at(lock(&self.outer).steps) as f32, batches, n, own_rows)?;
            tracing::debug!("uid {}: the contribution lowers the loss by {:.4} on its rows, {:.4} on others", node.uid, g.own, g.other);
            r.gauntlet = Some(g);
            if !g.passes() {
                return Ok(Err(format!(
                    "its contribution lowers the loss on its own rows by {:.4}, no more than on rows nobody was handed ({:.4})",
                    g.own, g.other
                )));
            }
        }
        Ok(Ok(r))
    }

    /// The loss gains of contribution `c` on the answer's batches (of
    /// `own_rows`) and on as many rows nobody was handed yet (`gauntlet`).
    fn gauntlet(&self, model: &mut Gpt<E>, c: &[f32], scale: f32, own: &RowBatches, n: usize, own_rows: &[u64]) -> Result<gauntlet::Gains, String> {
        let control = self.unhanded_rows(own_rows);
        if control.is_empty() {
            return Err("no rows left that nobody was handed, for the loss check".into());
        }
        let texts = fetch_rows(self.source.as_ref(), &control).map_err(|e| e.to_string())?;
        let (b, t) = own.shape();
        let other = RowBatches::from_texts(&texts, b, t).map_err(|e| e.to_string())?;
        let (own_picks, other_picks) = {
            let mut rng = lock(&self.rng);
            (gauntlet::picks(n, &mut rng), gauntlet::picks(other.len().min(n), &mut rng))
        };
        gauntlet::gains(model, c, scale, (own, &own_picks), (&other, &other_picks)).map_err(|e| e.to_string())
    }

    /// A run of as many rows as `own` that nobody was handed in this pass
    /// over the dataset, left unmarked: the loss check's control rows.
    /// Late in a pass no such run may be left: then any run outside `own`
    /// (rows the miner trained on would make its own gain look common).
    fn unhanded_rows(&self, own: &[u64]) -> Vec<u64> {
        let n = self.source.num_rows();
        let len = (own.len() as u64).min(n);
        let start = lock(&self.rng).below(n.max(1));
        let mut bits = lock(&self.handed_out).clone();
        bits.resize(n.div_ceil(64) as usize, 0);
        let first = super::free_run(&bits, n, start, len).or_else(|| {
            let mut mine = vec![0u64; bits.len()];
            own.iter().filter(|&&r| r < n).for_each(|&r| mine[(r / 64) as usize] |= 1 << (r % 64));
            super::free_run(&mine, n, start, len)
        });
        let first = first.unwrap_or(start.min(n - len));
        (first..first + len).collect()
    }
}
