//! K-fold selection of `gamma`, with one corpus pass for all folds.
//!
//! The labelled queries (the query rows that at least one qrels row names, whatever its grade,
//! in ascending row order) are dealt into `K` seeded folds with [`crate::split::folds`]:
//! fold `f` holds the labelled queries at positions `p[f::K]` of
//! `np.random.seed(seed); p = np.random.permutation(n_labelled_queries)`. For every fold `f`:
//! `G_f` is built from the queries of the other folds (its moving set: the records they label
//! relevant), and the metric is measured on the queries of fold `f`, at every candidate
//! `gamma`. The chosen `gamma` maximises the mean out-of-fold metric, defined as the mean over
//! the `K` folds of each fold's mean metric over its evaluated queries (those with a relevant
//! record); grid and tie rule are those of [`Selection::Best`]: 1001 points over `[0, 2]`
//! (NUDGE-N with `Move`: 2001 over `[0, 4]`; NUDGE-M: `[0, 2]` doubled up to `[0, 16]` while
//! the best region of the mean curve touches the upper end), then the middle point of the
//! widest run of maximal mean values (the first such run on a tie). The final update uses `G`
//! from ALL labelled queries, at that `gamma`.
//!
//! One scan serves every fold. A record that no query labels relevant is static in every fold;
//! a record some query labels relevant (a *labelled record*, the moving set of the final fit)
//! is moving in fold `f` if a query outside `f` labels it, and static in fold `f` otherwise.
//! The scan ([`push_batch`](KFoldPass::push_batch), each corpus row exactly once) keeps, for
//! every evaluated query, the top-k of the records that are static in every fold, and captures
//! the original vectors of all labelled records (they are few). [`finish`](KFoldPass::finish)
//! then builds, per fold, a [`FitPass`] fed with that fold's queries' static lists (as a
//! [`Partial`]) and the captured labelled records (as one batch: those static in the fold are
//! scored exactly as the scan would have scored them, the others are its moving records). Each
//! fold's pass is therefore the same as a [`FitPass`] that scanned the whole corpus with `G_f`
//! and fold `f` as validation (scores are bitwise independent of batching, see
//! [`crate::partial`]), which the tests check against exactly that brute force.
//!
//! Cost: the scan costs what one [`FitPass`] with every labelled query as validation costs; the
//! gamma search scores every labelled query against (nearly) the whole moving set once, i.e.
//! about `n_queries / n_validation` times a one-fold search, plus `K` times the per-record
//! geometry of the moving set.
//!
//! The pass can be split across shards like a [`FitPass`]: [`shard_spec`](KFoldPass::shard_spec)
//! and [`push_partial`](KFoldPass::push_partial).

use ndarray::{Array2, ArrayView2, Axis};

use crate::error::{invalid, NudgeError, Result};
use crate::exec::{install, Hooks};
use crate::gamma::{
    best_grid, dense_groups, first_range, widest_best_run, FitConfig, FitOutcome, FitPass,
    PassParts, Selection, M_RANGE_CAP,
};
use crate::per_partition::{apply_by_partition, choose as choose_per_partition, mean_after, PartitionGamma};
use crate::knn::check_query_parts;
use crate::gradient::{gradients, Qrel};
use crate::metrics::{Judged, Metric};
use crate::nudge::{apply, Method};
use crate::partial::{Partial, ShardSpec};
use crate::split::folds;

/// Result of a k-fold fit.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldOutcome {
    /// The chosen `gamma` (also `fit.gamma`).
    pub gamma: f64,
    /// The metric that was maximised.
    pub metric: Metric,
    /// Mean out-of-fold metric at `gamma = 0`.
    pub cv_metric_before: f64,
    /// Mean out-of-fold metric at the chosen `gamma`.
    pub cv_metric_after: f64,
    /// `(gamma, mean out-of-fold metric)` over the final grid.
    pub curve: Vec<(f64, f64)>,
    /// Per fold, its mean metric at every `gamma` of `curve`.
    pub fold_curves: Vec<Vec<f64>>,
    /// Per fold, its query rows (rows of the query matrix), in fold order.
    pub folds: Vec<Vec<usize>>,
    /// Per fold, how many of its queries were evaluated (those with a relevant record).
    pub fold_evaluated: Vec<usize>,
    /// The final fit: every labelled record, `G` from all labelled queries, at `gamma`
    /// (`validation_before/after` are the cross-validated values, `curve` the mean curve).
    pub fit: FitOutcome,
}

/// A k-fold fit: create, push every corpus batch once, finish.
pub struct KFoldPass {
    config: FitConfig,
    metric: Metric,
    queries: Array2<f32>,
    qrels: Vec<Qrel>,
    n_labelled: u64,
    /// Query rows per fold.
    folds: Vec<Vec<usize>>,
    /// Per fold, the range of the scan's evaluated queries that belong to it.
    ranges: Vec<(usize, usize)>,
    /// The scan: moving = every labelled record (G from all labelled queries), validation = all
    /// labelled queries in fold-major order.
    pass: FitPass,
    /// A partitioned pass: per query row, its partition.
    query_parts: Option<Vec<u32>>,
    /// One gamma per partition with at least this many evaluated queries (over all folds).
    per_partition: Option<usize>,
}

impl KFoldPass {
    /// `queries`: query vectors; `qrels`: judgements with `query` = row of `queries` and
    /// `record` = labelled key (below `n_labelled`); `k_folds` folds dealt with `seed`;
    /// `config.selection` must be `Selection::Best(metric)`.
    ///
    /// Errors: the checks of [`gradients`] and [`FitPass::new`]; `InvalidParameter` named
    /// `"selection"` for another selection, and named `"folds"` for fewer than 2 folds, more
    /// folds than labelled queries, or a fold none of whose queries has a relevant record.
    pub fn new(
        queries: Array2<f32>,
        qrels: Vec<Qrel>,
        n_labelled: u64,
        k_folds: usize,
        seed: u32,
        config: FitConfig,
    ) -> Result<Self> {
        if k_folds < 2 {
            return Err(invalid(
                "folds",
                format!("at least 2 folds are needed, got {k_folds}"),
            ));
        }
        let labelled = labelled_rows(queries.nrows(), &qrels)?;
        if k_folds > labelled.len() {
            return Err(invalid(
                "folds",
                format!(
                    "{k_folds} folds need at least {k_folds} labelled queries, there are {}",
                    labelled.len()
                ),
            ));
        }
        let fold_rows: Vec<Vec<usize>> = folds(labelled.len(), k_folds, seed)?
            .into_iter()
            .map(|f| f.into_iter().map(|i| labelled[i]).collect())
            .collect();
        Self::with_folds(queries, qrels, n_labelled, fold_rows, k_folds, config)
    }

    /// A held-out split that refits on every label: gamma chosen on the queries
    /// `validation` (rows of `queries`) with `G` from the others, the final update with `G`
    /// from all of them. The same as [`KFoldPass::new`] with one evaluated fold.
    pub fn held_out(
        queries: Array2<f32>,
        qrels: Vec<Qrel>,
        n_labelled: u64,
        validation: Vec<usize>,
        config: FitConfig,
    ) -> Result<Self> {
        let mut is_val = vec![false; queries.nrows()];
        for &r in &validation {
            if r >= is_val.len() {
                return Err(invalid("validation", format!("query row {r} is out of range")));
            }
            is_val[r] = true;
        }
        let train: Vec<usize> = (0..queries.nrows()).filter(|&r| !is_val[r]).collect();
        Self::with_folds(queries, qrels, n_labelled, vec![validation, train], 1, config)
    }

    /// The general form: `fold_rows` partition (some of) the query rows; the first `evaluated`
    /// folds are each measured with `G` from every other fold, the rest only train.
    fn with_folds(
        queries: Array2<f32>,
        qrels: Vec<Qrel>,
        n_labelled: u64,
        fold_rows: Vec<Vec<usize>>,
        evaluated: usize,
        config: FitConfig,
    ) -> Result<Self> {
        let metric = match config.selection {
            Selection::Best(m) => m,
            _ => {
                return Err(invalid(
                    "selection",
                    "k-fold selection of gamma needs Selection::Best(metric)",
                ))
            }
        };
        metric.validate()?;
        let nq = queries.nrows();
        let labelled = labelled_rows(nq, &qrels)?;
        // validates queries, qrels and grades; the moving set of the final fit
        let all = gradients(queries.view(), &qrels, &labelled, n_labelled)?;
        let mut per_query: Vec<Vec<(u64, f64)>> = vec![Vec::new(); nq];
        for q in &qrels {
            per_query[q.query as usize].push((q.record, q.grade));
        }
        let has_rel: Vec<bool> = per_query
            .iter()
            .map(|r| !r.is_empty() && Judged::new(r).n_rel > 0)
            .collect();
        for (f, rows) in fold_rows[..evaluated].iter().enumerate() {
            if !rows.iter().any(|&r| has_rel[r]) {
                return Err(invalid(
                    "folds",
                    format!(
                        "fold {f} ({} queries) has no query with a relevant record; use fewer \
                         folds or another seed",
                        rows.len()
                    ),
                ));
            }
        }
        // validation of the scan: the evaluated folds' queries, fold-major
        let order: Vec<usize> = fold_rows[..evaluated].concat();
        let mut pos = vec![usize::MAX; nq];
        for (i, &r) in order.iter().enumerate() {
            pos[r] = i;
        }
        let vq = queries.select(Axis(0), &order);
        let vr: Vec<Qrel> = qrels
            .iter()
            .filter(|q| pos[q.query as usize] != usize::MAX)
            .map(|q| Qrel {
                query: pos[q.query as usize] as u32,
                ..*q
            })
            .collect();
        let pass = FitPass::new(all, vq, vr, config)?;
        let eval = pass.eval_rows();
        let mut ranges = Vec::with_capacity(evaluated);
        let (mut start, mut e) = (0usize, 0usize);
        for rows in &fold_rows[..evaluated] {
            let end = start + rows.len();
            let e0 = e;
            while e < eval.len() && eval[e] < end {
                e += 1;
            }
            ranges.push((e0, e));
            start = end;
        }
        Ok(KFoldPass {
            config,
            metric,
            queries,
            qrels,
            n_labelled,
            folds: fold_rows,
            ranges,
            pass,
            query_parts: None,
            per_partition: None,
        })
    }

    /// One gamma per partition (see [`crate::per_partition`]): each partition's curve is the
    /// mean over its evaluated queries of their out-of-fold metric; a partition with at least
    /// `min_queries` of them gets the best gamma of its curve, the others the joint one. Needs
    /// a [`partitioned`](Self::partitioned) pass.
    pub fn gamma_per_partition(mut self, min_queries: usize) -> Result<Self> {
        if self.query_parts.is_none() {
            return Err(invalid("gamma_per_partition", "needs a partitioned pass"));
        }
        self.per_partition = Some(min_queries.max(1));
        Ok(self)
    }

    /// Makes every fold's search partitioned (see [`FitPass::partitioned`]): `query_parts[r]`
    /// is query row `r`'s partition; rows are then pushed with
    /// [`push_batch_in`](Self::push_batch_in). The mean out-of-fold metric still averages over
    /// every evaluated query of a fold. Call before the first row.
    pub fn partitioned(mut self, query_parts: Vec<u32>) -> Result<Self> {
        check_query_parts(&query_parts, self.queries.nrows())?;
        let order: Vec<u32> = self.folds[..self.ranges.len()]
            .iter()
            .flatten()
            .map(|&r| query_parts[r])
            .collect();
        self.pass.set_partitions(&order)?;
        self.query_parts = Some(query_parts);
        Ok(self)
    }

    /// Query rows per fold, in fold order.
    pub fn folds(&self) -> &[Vec<usize>] {
        &self.folds
    }

    /// The labelled records (the moving set of the final fit), sorted; their vectors are
    /// captured during the scan.
    pub fn labelled_keys(&self) -> &[u64] {
        self.pass.moving_keys()
    }

    /// Corpus rows pushed so far.
    pub fn rows_seen(&self) -> u64 {
        self.pass.rows_seen()
    }

    /// Whether every labelled record has been seen.
    pub fn all_labelled_seen(&self) -> bool {
        self.pass.all_moving_seen()
    }

    /// One corpus batch; every row must be pushed exactly once over the whole pass (the same
    /// checks as [`FitPass::push_batch`]).
    pub fn push_batch(
        &mut self,
        keys: &[u64],
        vectors: ArrayView2<f32>,
        hooks: &mut Hooks,
    ) -> Result<()> {
        self.pass.push_batch(keys, vectors, hooks)
    }

    /// [`push_batch`](Self::push_batch) with each row's partition, as
    /// [`FitPass::push_batch_in`].
    pub fn push_batch_in(
        &mut self,
        keys: &[u64],
        vectors: ArrayView2<f32>,
        parts: Option<&[u32]>,
        hooks: &mut Hooks,
    ) -> Result<()> {
        self.pass.push_batch_in(keys, vectors, parts, hooks)
    }

    /// What each shard needs for its part of the scan (see [`crate::partial`]).
    pub fn shard_spec(&self) -> ShardSpec {
        self.pass.shard_spec()
    }

    /// One shard's result, as [`FitPass::push_partial`].
    pub fn push_partial(&mut self, p: Partial) -> Result<()> {
        self.pass.push_partial(p)
    }

    /// Chooses gamma by k-fold cross-validation (see the module doc) and applies the method at
    /// it with `G` from all labelled queries. Every labelled record must have been pushed
    /// (`UnknownRecord` otherwise).
    pub fn finish(self, hooks: &mut Hooks) -> Result<FoldOutcome> {
        hooks.check()?;
        let parts = self.pass.into_parts()?;
        let KFoldPass {
            config,
            metric,
            queries,
            qrels,
            n_labelled,
            folds,
            ranges,
            pass: _,
            query_parts,
            per_partition,
        } = self;
        let labels = FoldLabels {
            queries: &queries,
            qrels: &qrels,
            n_labelled,
            folds: &folds,
            query_parts: query_parts.as_deref(),
        };
        let mut passes = Vec::with_capacity(ranges.len());
        for (f, &range) in ranges.iter().enumerate() {
            hooks.check()?;
            passes.push(labels.fold_pass(f, range, &parts, config, hooks)?);
        }
        let search = search_folds(&passes, config, metric, per_partition, hooks)?;
        drop(passes);
        let fit = final_fit(parts, config, metric, &search, hooks)?;
        Ok(FoldOutcome {
            gamma: search.gamma,
            metric,
            cv_metric_before: search.curve[0].1,
                    cv_metric_after: search.after,
            fold_evaluated: ranges.iter().map(|r| r.1 - r.0).collect(),
            folds,
            fold_curves: search.fold_curves,
            fit,
            curve: search.curve,
        })
    }
}

/// The labelled queries as the folds deal them.
struct FoldLabels<'a> {
    queries: &'a Array2<f32>,
    qrels: &'a [Qrel],
    n_labelled: u64,
    folds: &'a [Vec<usize>],
    query_parts: Option<&'a [u32]>,
}

impl FoldLabels<'_> {
    /// Fold `f`'s pass: `G` from the other folds, fold `f`'s queries as validation, fed with
    /// the scan's static lists of those queries (`range` of the scan's evaluated queries) and
    /// the captured labelled records.
    fn fold_pass(
        &self,
        f: usize,
        range: (usize, usize),
        parts: &PassParts,
        config: FitConfig,
        hooks: &mut Hooks,
    ) -> Result<FitPass> {
        let rows = &self.folds[f];
        let train: Vec<usize> = self
            .folds
            .iter()
            .enumerate()
            .filter(|&(g, _)| g != f)
            .flat_map(|(_, r)| r.iter().copied())
            .collect();
        let ms = gradients(self.queries.view(), self.qrels, &train, self.n_labelled)?;
        let mut pos = vec![u32::MAX; self.queries.nrows()];
        for (i, &r) in rows.iter().enumerate() {
            pos[r] = i as u32;
        }
        let vq = self.queries.select(Axis(0), rows);
        let vr: Vec<Qrel> = self
            .qrels
            .iter()
            .filter(|q| pos[q.query as usize] != u32::MAX)
            .map(|q| Qrel {
                query: pos[q.query as usize],
                ..*q
            })
            .collect();
        let mut fp = FitPass::new(ms, vq, vr, config)?;
        if let Some(qp) = self.query_parts {
            let fold_parts: Vec<u32> = rows.iter().map(|&r| qp[r]).collect();
            fp.set_partitions(&fold_parts)?;
        }
        let (r0, r1) = range;
        debug_assert_eq!(fp.n_validation_queries(), r1 - r0);
        let n_cap = parts.moving.len() as u64;
        fp.push_partial(Partial {
            k: parts.k,
            statics: parts.statics[r0..r1].to_vec(),
            moving: Vec::new(),
            moving_parts: Vec::new(),
            rows_seen: parts.rows_seen - n_cap,
        })?;
        // the captured records, not the corpus: no "scanning corpus" progress
        let mut quiet = |_: crate::exec::Progress<'_>| {};
        let mut inner = Hooks {
            pool: hooks.pool,
            check_interrupts: &mut *hooks.check_interrupts,
            progress: &mut quiet,
        };
        let row_parts = parts.moving_parts.as_deref();
        fp.push_batch_in(&parts.moving.keys, parts.original.view(), row_parts, &mut inner)?;
        Ok(fp)
    }
}

/// The grid search over the folds' mean curve.
struct Search {
    gamma: f64,
    /// `(gamma, mean out-of-fold metric)`.
    curve: Vec<(f64, f64)>,
    fold_curves: Vec<Vec<f64>>,
    /// The validation after: the mean curve at `gamma`, or with one gamma per partition the
    /// mean over all evaluated queries at their partition's gamma.
    after: f64,
    by_partition: Vec<PartitionGamma>,
}

/// The grid and tie rule of [`Selection::Best`] on the mean of the folds' curves (and, with
/// one gamma per partition, on each partition's curve).
fn search_folds(
    passes: &[FitPass],
    config: FitConfig,
    metric: Metric,
    per_partition: Option<usize>,
    hooks: &mut Hooks,
) -> Result<Search> {
    let method = config.method;
    let kf = passes.len() as f64;
    let mut hi = first_range(method, config.negative_rule);
    loop {
        let grid = best_grid(method, hi);
        let points = grid.len();
        let mut fold_curves = Vec::with_capacity(passes.len());
        let mut by_part = PartSums::default();
        for fp in passes {
            let prep = install(hooks.pool, || fp.prepare())?;
            match fp.query_partitions().filter(|_| per_partition.is_some()) {
                Some(qp) => {
                    let (group, ids) = dense_groups(qp);
                    let sums = fp.eval_sums(&prep, &grid, metric, Some((&group, ids.len())), hooks)?;
                    let n = fp.n_validation_queries().max(1) as f64;
                    fold_curves.push((0..points).map(|i| sums.iter().map(|s| s[i]).sum::<f64>() / n).collect());
                    by_part.add(&group, &ids, sums);
                }
                None => fold_curves.push(fp.eval_grid(&prep, &grid, metric, hooks)?),
            }
        }
        let mean = mean_curve(&fold_curves, points, kf);
        let (s, e) = widest_best_run(&mean);
        if method == Method::NudgeM && e == points - 1 && hi < M_RANGE_CAP {
            hi *= 2.0;
            continue;
        }
        let mid = s + (e - s) / 2;
        let (after, by_partition) = match per_partition {
            Some(min) => {
                let chosen = by_part.choose(&grid, mid, min);
                (mean_after(&chosen), chosen)
            }
            None => (mean[mid], Vec::new()),
        };
        return Ok(Search {
            gamma: grid[mid],
            curve: grid.into_iter().zip(mean).collect(),
            fold_curves,
            after,
            by_partition,
        });
    }
}

/// Per partition id, its evaluated queries and summed metric curve over all folds.
#[derive(Default)]
struct PartSums(std::collections::BTreeMap<u32, (usize, Vec<f64>)>);

impl PartSums {
    fn add(&mut self, group: &[usize], ids: &[u32], sums: Vec<Vec<f64>>) {
        for (g, s) in sums.into_iter().enumerate() {
            let n = group.iter().filter(|&&x| x == g).count();
            let e = self.0.entry(ids[g]).or_insert_with(|| (0, vec![0.0; s.len()]));
            e.0 += n;
            e.1.iter_mut().zip(s).for_each(|(a, b)| *a += b);
        }
    }

    fn choose(&self, grid: &[f64], joint: usize, min: usize) -> Vec<PartitionGamma> {
        let ids: Vec<u32> = self.0.keys().copied().collect();
        let counts: Vec<usize> = self.0.values().map(|v| v.0).collect();
        let sums: Vec<Vec<f64>> = self.0.values().map(|v| v.1.clone()).collect();
        let mut chosen = choose_per_partition(grid, &sums, &counts, joint, min);
        chosen.iter_mut().for_each(|c| c.partition = ids[c.partition as usize]);
        chosen
    }
}

/// The update of every labelled record, `G` from all labelled queries, at the chosen gamma.
fn final_fit(
    parts: PassParts,
    config: FitConfig,
    metric: Metric,
    search: &Search,
    hooks: &mut Hooks,
) -> Result<FitOutcome> {
    let n = parts.moving.len() as u64;
    let gamma = search.gamma;
    hooks.check()?;
    hooks.report("applying gamma", 0, Some(n));
    let (d, g) = (parts.original.view(), parts.moving.g.view());
    let (vectors, changed) = install(hooks.pool, || match (&parts.moving_parts, search.by_partition.is_empty()) {
        (Some(mp), false) => {
            apply_by_partition(config.method, d, g, config.negative_rule, mp, &search.by_partition, gamma)
        }
        _ => apply(config.method, gamma, d, g, config.negative_rule),
    })?;
    hooks.report("applying gamma", n, Some(n));
    let (before, after) = (search.curve[0].1, search.after);
    Ok(FitOutcome {
        gamma,
        validation_before: Some(before),
        validation_after: Some(after),
        metric: Some(metric),
        keys: parts.moving.keys,
        original: parts.original,
        vectors,
        changed,
        curve: search.curve.clone(),
        partition_gammas: search.by_partition.clone(),
    })
}

/// The query rows some qrels row names (whatever its grade), ascending.
fn labelled_rows(nq: usize, qrels: &[Qrel]) -> Result<Vec<usize>> {
    let mut is_labelled = vec![false; nq];
    for q in qrels {
        let row = q.query as usize;
        if row >= nq {
            return Err(invalid(
                "qrels",
                format!("query row {} is out of range (there are {nq} queries)", q.query),
            ));
        }
        is_labelled[row] = true;
    }
    let labelled: Vec<usize> = (0..nq).filter(|&r| is_labelled[r]).collect();
    if labelled.is_empty() {
        return Err(NudgeError::Empty {
            what: "labelled queries".into(),
        });
    }
    Ok(labelled)
}

/// Mean over folds at each grid point (summed in fold order, then divided by the fold count).
pub(crate) fn mean_curve(fold_curves: &[Vec<f64>], points: usize, kf: f64) -> Vec<f64> {
    (0..points)
        .map(|i| {
            let mut s = 0.0;
            for c in fold_curves {
                s += c[i];
            }
            s / kf
        })
        .collect()
}

#[cfg(test)]
mod tests;
