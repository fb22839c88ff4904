//! One gamma per partition (a partitioned pass with [`FitPass::gamma_per_partition`] or
//! [`KFoldPass::gamma_per_partition`]): on the grid of the joint search, every partition with
//! at least `min_queries` evaluated queries takes the gamma of the widest run of maximal
//! values of its own curve (the mean of the metric over its queries), the others the joint
//! gamma. Each moving record is then updated at its partition's gamma (a record of a partition
//! no evaluated query has: the joint gamma). The reported validation after is the mean over all
//! evaluated queries of the metric at their partition's gamma.
//!
//! [`FitPass::gamma_per_partition`]: crate::FitPass::gamma_per_partition
//! [`KFoldPass::gamma_per_partition`]: crate::KFoldPass::gamma_per_partition

use ndarray::{Array2, ArrayView2, Axis};

use crate::error::Result;
use crate::gamma::widest_best_run;
use crate::nudge::{apply, Method, NegativeRule};

/// The gamma one partition got.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionGamma {
    /// The partition id (as the caller numbered the query partitions).
    pub partition: u32,
    /// Its evaluated queries (summed over folds for k folds).
    pub queries: usize,
    pub gamma: f64,
    /// Whether the gamma is its own (false: too few queries, the joint gamma).
    pub own: bool,
    /// Its mean metric at gamma = 0 and at `gamma`.
    pub before: f64,
    pub after: f64,
}

/// Per partition (index = id, `n_queries[p]` evaluated queries, `sums[p][i]` their summed
/// metric at `grid[i]`), its gamma; `joint` is the index of the joint gamma in `grid`.
pub(crate) fn choose(
    grid: &[f64],
    sums: &[Vec<f64>],
    n_queries: &[usize],
    joint: usize,
    min_queries: usize,
) -> Vec<PartitionGamma> {
    sums.iter()
        .zip(n_queries)
        .enumerate()
        .filter(|(_, (_, &n))| n > 0)
        .map(|(p, (s, &n))| {
            let curve: Vec<f64> = s.iter().map(|x| x / n as f64).collect();
            let own = n >= min_queries;
            let at = if own {
                let (a, b) = widest_best_run(&curve);
                a + (b - a) / 2
            } else {
                joint
            };
            PartitionGamma {
                partition: p as u32,
                queries: n,
                gamma: grid[at],
                own,
                before: curve[0],
                after: curve[at],
            }
        })
        .collect()
}

/// The mean over all evaluated queries of the metric at their partition's gamma.
pub(crate) fn mean_after(chosen: &[PartitionGamma]) -> f64 {
    let n: usize = chosen.iter().map(|c| c.queries).sum();
    let s: f64 = chosen.iter().map(|c| c.after * c.queries as f64).sum();
    s / n.max(1) as f64
}

/// Every moving record (partition `parts[i]`, original `d[i]`, gradient `g[i]`) updated at its
/// partition's gamma (`joint` for a partition not in `chosen`).
pub(crate) fn apply_by_partition(
    method: Method,
    d: ArrayView2<f32>,
    g: ArrayView2<f32>,
    rule: NegativeRule,
    parts: &[u32],
    chosen: &[PartitionGamma],
    joint: f64,
) -> Result<(Array2<f32>, Vec<bool>)> {
    let gamma_of = |p: u32| chosen.iter().find(|c| c.partition == p).map_or(joint, |c| c.gamma);
    let gammas: Vec<f64> = parts.iter().map(|&p| gamma_of(p)).collect();
    let mut out = d.to_owned();
    let mut changed = vec![false; d.nrows()];
    let mut distinct = gammas.clone();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    for gamma in distinct {
        let rows: Vec<usize> = (0..gammas.len()).filter(|&i| gammas[i] == gamma).collect();
        let (v, c) = apply(method, gamma, d.select(Axis(0), &rows).view(), g.select(Axis(0), &rows).view(), rule)?;
        for (k, &r) in rows.iter().enumerate() {
            out.row_mut(r).assign(&v.row(k));
            changed[r] = c[k];
        }
    }
    Ok((out, changed))
}
