//! The fit: one streaming pass over the corpus, then the choice of `gamma` on the moving
//! records alone, then the closed form at that `gamma`.
//!
//! During the pass every validation query keeps the top-k of the STATIC records (keys that are
//! not moving), scored `q . d^` (raw query, normalised record). The original vectors of the
//! moving records are captured. Afterwards, per block of validation queries, two GEMMs give
//! `a = q . d^` and `b = q . dir` for every moving record (`dir = g` for NUDGE-M, `z` for
//! NUDGE-N), and the score of a moving record at any `gamma` is one-dimensional:
//!
//! * NUDGE-M: `a + gamma * b` (a line);
//! * NUDGE-N: `a cos(psi) + b sin(psi)` with `psi = min(phi, theta)`, `cos(phi) = 1 - gamma/2`
//!   (computed without trigonometry from `cos/sin theta` and `cos/sin phi`).
//!
//! A moving record is only scored for a query if its upper bound over the searched range
//! (`sqrt(a^2 + b^2)` for NUDGE-N, `a + gamma_max * max(b, 0)` for NUDGE-M) reaches the k-th
//! static score. All of this is exact: it ranks every record as a full re-rank with the nudged
//! vectors would (up to float rounding), which the tests check against brute force.
//!
//! Gamma selection (see the README for the reasoning):
//! * `Fixed(g)`: `g`.
//! * `Parity`: the reference's rules. NUDGE-M: for each (validation query, relevant record) the
//!   interval of `gamma >= 0` on which that record ranks first, and the left end of the first
//!   region covered by the most intervals (0 if none). NUDGE-N: grid `0, 0.02, ..., 0.48`, the
//!   first value with the best top-1 accuracy. Reported metric: `Metric::Top1`.
//! * `Best(metric)`: the metric on a grid of 1001 points (step 0.002) over `[0, 2]`
//!   (NUDGE-N with `Skip`: nothing changes beyond 2; with `Move`: `[0, 4]`, 2001 points;
//!   NUDGE-M: `[0, 2]`, doubled up to `[0, 16]` while the best region touches the upper end),
//!   then the middle grid point of the widest run of maximal values (the first such run on a tie).
//! * K-fold cross-validated `Best` (the mean out-of-fold metric, one corpus pass for all
//!   folds): [`crate::kfold::KFoldPass`].
//!
//! Validation metrics are averages over the validation queries that have at least one
//! relevant record (others are ignored); ties are broken by key, descending.

use std::sync::{Arc, OnceLock};

use ndarray::{Array2, ArrayView2, Axis};
use rayon::prelude::*;

use crate::error::{invalid, mismatch, NudgeError, Result};
use crate::exec::{install, threads, Hooks};
use crate::gradient::{MovingSet, Qrel};
use crate::batch::check_batch;
use crate::knn::{check_query_parts, check_row_parts, row_norms2, Engine, Mode, NO_PARTITION};
use crate::la::abt_into;
use crate::metrics::{better_first, Judged, Metric};
use crate::nudge::{apply, check_gamma, nudge_n_angle, row_geom, Geom, Method, NegativeRule};
use crate::partial::{Partial, ShardSpec};
use crate::per_partition::{apply_by_partition, choose as choose_per_partition, mean_after, PartitionGamma};

/// How `gamma` is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// Use this value (validation metrics are still reported, as NDCG@10, when there are
    /// validation queries).
    Fixed(f64),
    /// The reference implementation's rule (top-1 accuracy).
    Parity,
    /// Maximise this metric on the validation queries.
    Best(Metric),
}

/// What to fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    pub method: Method,
    pub selection: Selection,
    pub negative_rule: NegativeRule,
}

impl FitConfig {
    /// `method` with `selection` and the default (reference) negative rule.
    pub fn new(method: Method, selection: Selection) -> Self {
        FitConfig {
            method,
            selection,
            negative_rule: NegativeRule::default(),
        }
    }
}

/// Result of a fit.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOutcome {
    pub gamma: f64,
    /// The validation metric at `gamma = 0` (None without validation queries).
    pub validation_before: Option<f64>,
    /// The validation metric at the chosen `gamma`.
    pub validation_after: Option<f64>,
    /// What `validation_*` measure: the `Best` metric, `Top1` for `Parity`, `Ndcg(10)` for
    /// `Fixed`; None without validation queries.
    pub metric: Option<Metric>,
    /// Moving keys, sorted.
    pub keys: Vec<u64>,
    /// Their original vectors as read.
    pub original: Array2<f32>,
    /// Their new vectors (the original row where `!changed`).
    pub vectors: Array2<f32>,
    pub changed: Vec<bool>,
    /// `(gamma, validation metric)` pairs evaluated, for diagnostics (for NUDGE-M `Parity`:
    /// the top-1 accuracy of the interval sweep just right of each end point).
    pub curve: Vec<(f64, f64)>,
    /// With one gamma per partition: each evaluated partition's (else empty); `gamma` is then
    /// the joint one, used by the other partitions.
    pub partition_gammas: Vec<PartitionGamma>,
}

/// Work for one validation query: (query index, `q . d^` row, `q . dir` row).
type PerQuery<'a, R> = dyn Fn(usize, &[f32], &[f32]) -> R + Sync + 'a;

/// Geometry of the moving records, computed once after the pass.
pub(crate) struct Prepared {
    geoms: Vec<Geom>,
    /// NUDGE-N: records with bit-identical `G` end at the same `x = g`; `rep[j]` is the first
    /// moving record with `j`'s `G`, whose decomposition scores `q . g` for all of them, so
    /// such records tie exactly as they do in a full re-rank.
    rep: Vec<usize>,
    dh: Array2<f32>,
    dir: Array2<f32>,
    /// Static top-k per evaluated validation query, best first.
    statics: Vec<Vec<(f32, u64)>>,
}

/// One fit: create, push every corpus batch, finish.
pub struct FitPass {
    config: FitConfig,
    moving: MovingSet,
    dim: usize,
    original: Array2<f32>,
    seen: Vec<bool>,
    n_seen: usize,
    /// Validation queries that have at least one relevant record, and their judgements.
    eval_q: Array2<f32>,
    /// Row of `val_queries` of each evaluated query.
    eval_rows: Vec<usize>,
    judged: Vec<Judged>,
    metric: Option<Metric>,
    engine: Option<Engine>,
    /// Rows of the validation query matrix given to `new`.
    n_val: usize,
    /// A partitioned pass (see [`FitPass::partitioned`]): per evaluated query its partition,
    /// and per moving record the partition its row had in the pass.
    parts: Option<Partitions>,
    /// One gamma per partition with at least this many evaluated queries.
    per_partition: Option<usize>,
    rows_seen: u64,
    prepared: OnceLock<std::result::Result<Arc<Prepared>, NudgeError>>,
}

/// The partitions of a partitioned pass.
#[derive(Debug, Clone)]
pub(crate) struct Partitions {
    /// Per evaluated validation query.
    pub query: Vec<u32>,
    /// Per moving record ([`NO_PARTITION`] until its row is seen).
    pub moving: Vec<u32>,
}

impl Partitions {
    /// Whether moving record `j` is in evaluated query `e`'s partition.
    #[inline]
    fn same(&self, e: usize, j: usize) -> bool {
        self.query[e] == self.moving[j]
    }
}

pub(crate) const GRID_POINTS: usize = 1001;
pub(crate) const M_RANGE_START: f64 = 2.0;
pub(crate) const M_RANGE_CAP: f64 = 16.0;

impl FitPass {
    /// `moving`: from [`gradients`](crate::gradient::gradients); `val_queries`: validation query
    /// vectors (may be empty only with `Selection::Fixed`); `val_qrels`: judgements with
    /// `query` = row of `val_queries` and `record` = labelled key.
    pub fn new(
        moving: MovingSet,
        val_queries: Array2<f32>,
        val_qrels: Vec<Qrel>,
        config: FitConfig,
    ) -> Result<Self> {
        let dim = check_moving(&moving)?;
        let nv = val_queries.nrows();
        check_val_queries(val_queries.view(), dim)?;
        let (rows, judged) = judge(&val_qrels, nv)?;
        let metric = selection_metric(&config, !rows.is_empty())?;
        let eval_q = val_queries.select(Axis(0), &rows);
        let engine = metric
            .filter(|_| !rows.is_empty())
            .map(|m| Engine::new(eval_q.clone(), m.k(), Mode::Normalised));
        let n = moving.keys.len();
        Ok(FitPass {
            config,
            dim,
            original: Array2::zeros((n, dim)),
            seen: vec![false; n],
            n_seen: 0,
            moving,
            eval_q,
            eval_rows: rows,
            judged,
            metric,
            engine,
            n_val: nv,
            parts: None,
            per_partition: None,
            rows_seen: 0,
            prepared: OnceLock::new(),
        })
    }

    /// Makes the pass partitioned: every validation query ranks only the corpus rows of its
    /// partition (`val_parts[i]` is row `i`'s of the validation query matrix; any id but
    /// [`NO_PARTITION`]), statics and moving records alike; rows are then pushed with their
    /// partitions ([`push_batch_in`](Self::push_batch_in)). Validation metrics stay means over
    /// all evaluated queries. Call before the first row.
    pub fn partitioned(mut self, val_parts: Vec<u32>) -> Result<Self> {
        self.set_partitions(&val_parts)?;
        Ok(self)
    }

    /// [`partitioned`](Self::partitioned) in place.
    pub(crate) fn set_partitions(&mut self, val_parts: &[u32]) -> Result<()> {
        check_query_parts(val_parts, self.n_val)?;
        if self.rows_seen > 0 {
            return Err(invalid("partitions", "set before the first batch"));
        }
        let query: Vec<u32> = self.eval_rows.iter().map(|&r| val_parts[r]).collect();
        if let Some(e) = self.engine.as_mut() {
            e.set_query_parts(query.clone());
        }
        self.parts = Some(Partitions {
            query,
            moving: vec![NO_PARTITION; self.moving.keys.len()],
        });
        Ok(())
    }

    /// One gamma per partition (see [`crate::per_partition`]): a partition with at least
    /// `min_queries` evaluated queries gets the best gamma of its own curve, the others the
    /// joint one. Needs a [`partitioned`](Self::partitioned) pass and [`Selection::Best`].
    pub fn gamma_per_partition(mut self, min_queries: usize) -> Result<Self> {
        if self.parts.is_none() {
            return Err(invalid("gamma_per_partition", "needs a partitioned pass"));
        }
        if !matches!(self.config.selection, Selection::Best(_)) {
            return Err(invalid("gamma_per_partition", "needs Selection::Best (a gamma search)"));
        }
        self.per_partition = Some(min_queries.max(1));
        Ok(self)
    }

    /// Per evaluated query, its partition (a partitioned pass).
    pub(crate) fn query_partitions(&self) -> Option<&[u32]> {
        self.parts.as_ref().map(|p| p.query.as_slice())
    }

    /// Whether the pass is partitioned.
    pub fn is_partitioned(&self) -> bool {
        self.parts.is_some()
    }

    /// Per moving record (as [`moving_keys`](Self::moving_keys)), the partition its row had
    /// (None unless partitioned; [`NO_PARTITION`] for a record not seen yet).
    pub fn moving_partitions(&self) -> Option<&[u32]> {
        self.parts.as_ref().map(|p| p.moving.as_slice())
    }

    /// The metric that validation values measure (see [`FitOutcome::metric`]).
    pub fn metric(&self) -> Option<Metric> {
        self.metric
    }

    /// Number of validation queries used (those with a relevant record).
    pub fn n_validation_queries(&self) -> usize {
        self.judged.len()
    }

    /// Moving keys, sorted.
    pub fn moving_keys(&self) -> &[u64] {
        &self.moving.keys
    }

    /// Whether every moving key has been seen.
    pub fn all_moving_seen(&self) -> bool {
        self.n_seen == self.seen.len()
    }

    /// Corpus rows pushed so far.
    pub fn rows_seen(&self) -> u64 {
        self.rows_seen
    }

    /// One corpus batch, in any order; every key must be pushed once (a repeated key within a
    /// batch, or a moving key seen twice, is `InvalidParameter`; a repeated static key is caught
    /// where it would change a result). Rejects the whole batch on bad input (NaN/Inf:
    /// `NonFinite`, zero vector of a moving record: `ZeroVector`, index = row of the batch).
    pub fn push_batch(
        &mut self,
        keys: &[u64],
        vectors: ArrayView2<f32>,
        hooks: &mut Hooks,
    ) -> Result<()> {
        self.push_batch_in(keys, vectors, None, hooks)
    }

    /// [`push_batch`](Self::push_batch) with each row's partition (`parts[j]`; required by a
    /// [`partitioned`](Self::partitioned) pass, refused otherwise). A row of a partition no
    /// validation query has (e.g. [`NO_PARTITION`]) ranks for none.
    pub fn push_batch_in(
        &mut self,
        keys: &[u64],
        vectors: ArrayView2<f32>,
        parts: Option<&[u32]>,
        hooks: &mut Hooks,
    ) -> Result<()> {
        check_row_parts(parts, self.parts.is_some(), keys.len())?;
        let (norms2, hits, skip) = check_batch(
            &self.moving.keys,
            &self.seen,
            self.dim,
            keys,
            vectors,
            hooks,
        )?;
        for &(row, p) in &hits {
            self.original.row_mut(p).assign(&vectors.row(row));
            self.seen[p] = true;
            if let (Some(pp), Some(rp)) = (self.parts.as_mut(), parts) {
                pp.moving[p] = rp[row];
            }
        }
        self.n_seen += hits.len();
        self.prepared = OnceLock::new();
        self.rows_seen += keys.len() as u64;
        match self.engine.as_mut() {
            Some(e) => e.push(
                keys,
                vectors,
                &norms2,
                Some(&skip),
                parts,
                hooks,
                "scanning corpus",
            )?,
            None => hooks.report("scanning corpus", self.rows_seen, None),
        }
        Ok(())
    }

    /// What each shard needs to compute its [`Partial`] (see [`crate::partial`]).
    pub fn shard_spec(&self) -> ShardSpec {
        let (k, queries) = match &self.engine {
            Some(e) => (Some(e.k()), self.eval_q.clone()),
            None => (None, Array2::zeros((0, self.dim))),
        };
        // (a pass without static search needs no query partitions)
        let query_parts = match (&self.parts, &self.engine) {
            (Some(p), Some(_)) => Some(p.query.clone()),
            _ => None,
        };
        ShardSpec {
            dim: self.dim,
            k,
            queries,
            moving_keys: self.moving.keys.clone(),
            query_parts,
            partition_values: Vec::new(),
        }
    }

    /// Adds one shard's result (or a merge of several), as if its rows had been pushed with
    /// [`push_batch`](Self::push_batch): the same duplicate and zero-vector checks, and the whole
    /// partial is rejected on bad input. The partial must come from this pass's
    /// [`shard_spec`](Self::shard_spec).
    pub fn push_partial(&mut self, p: Partial) -> Result<()> {
        let k = self.engine.as_ref().map_or(0, |e| e.k());
        let nq = self.engine.as_ref().map_or(0, |e| e.n_queries());
        if p.k != k {
            return Err(mismatch("partial result k", k, p.k));
        }
        if p.statics.len() != nq {
            return Err(mismatch(
                "partial result validation queries",
                nq,
                p.statics.len(),
            ));
        }
        for list in &p.statics {
            if list.len() > k {
                return Err(invalid(
                    "partial",
                    format!("more than k = {k} static records"),
                ));
            }
            for &(s, key) in list {
                if s.is_nan() {
                    return Err(invalid("partial", "a static score is NaN"));
                }
                if self.moving.position(key).is_some() {
                    return Err(invalid(
                        "partial",
                        format!("key {key} is a moving record but was sent as a static one"),
                    ));
                }
            }
        }
        if self.parts.is_some() && p.moving_parts.len() != p.moving.len() {
            return Err(mismatch(
                "partial moving records' partitions",
                p.moving.len(),
                p.moving_parts.len(),
            ));
        }
        if self.parts.is_none() && !p.moving_parts.is_empty() {
            return Err(invalid("partial", "partitions given to a pass without partitions"));
        }
        let mut pos = Vec::with_capacity(p.moving.len());
        let mut taken = vec![false; self.seen.len()];
        for (i, (key, v)) in p.moving.iter().enumerate() {
            let at = self
                .moving
                .position(*key)
                .ok_or_else(|| invalid("partial", format!("key {key} is not a moving record")))?;
            if self.seen[at] || taken[at] {
                return Err(invalid("keys", format!("key {key} appears more than once")));
            }
            if v.len() != self.dim {
                return Err(mismatch(
                    "partial moving vector dimensions",
                    self.dim,
                    v.len(),
                ));
            }
            let what = || "partial moving vectors".to_string();
            if v.iter().any(|x| !x.is_finite()) {
                return Err(NudgeError::NonFinite {
                    what: what(),
                    index: i,
                });
            }
            if v.iter().all(|&x| x == 0.0) {
                return Err(NudgeError::ZeroVector {
                    what: what(),
                    index: i,
                });
            }
            taken[at] = true;
            pos.push(at);
        }
        for (i, ((_, v), at)) in p.moving.into_iter().zip(pos).enumerate() {
            self.original
                .row_mut(at)
                .assign(&ndarray::ArrayView1::from(&v));
            self.seen[at] = true;
            self.n_seen += 1;
            if let Some(pp) = self.parts.as_mut() {
                pp.moving[at] = p.moving_parts[i];
            }
        }
        if let Some(e) = self.engine.as_mut() {
            for (q, list) in p.statics.into_iter().enumerate() {
                for (s, key) in list {
                    e.offer(q, s, key);
                }
            }
            e.rows_seen += p.rows_seen;
        }
        self.rows_seen += p.rows_seen;
        self.prepared = OnceLock::new();
        Ok(())
    }

    pub(crate) fn prepare(&self) -> Result<Arc<Prepared>> {
        self.prepared
            .get_or_init(|| {
                if let Some(p) = self.seen.iter().position(|s| !s) {
                    return Err(NudgeError::UnknownRecord {
                        what: "moving record".into(),
                        key: self.moving.keys[p],
                    });
                }
                let n = self.moving.keys.len();
                let dim = self.dim;
                let mut dh = Array2::<f32>::zeros((n, dim));
                let mut dir = Array2::<f32>::zeros((n, dim));
                let mut geoms = vec![Geom::Fixed; n];
                let (method, rule) = (self.config.method, self.config.negative_rule);
                let res: Vec<std::result::Result<(), (usize, bool)>> = dh
                    .axis_iter_mut(Axis(0))
                    .into_par_iter()
                    .zip(dir.axis_iter_mut(Axis(0)))
                    .zip(geoms.par_iter_mut())
                    .enumerate()
                    .map(|(i, ((mut h, mut z), geo))| {
                        let d: Vec<f32> = self.original.row(i).to_vec();
                        let g: Vec<f32> = self.moving.g.row(i).to_vec();
                        let mut h64 = vec![0f64; dim];
                        let mut z64 = vec![0f64; dim];
                        let r = row_geom(method, rule, &d, &g, &mut h64, &mut z64)
                            .map_err(|e| (i, e))?;
                        *geo = r;
                        h.iter_mut().zip(&h64).for_each(|(o, &x)| *o = x as f32);
                        z.iter_mut().zip(&z64).for_each(|(o, &x)| *o = x as f32);
                        Ok(())
                    })
                    .collect();
                for r in res {
                    match r {
                        Err((i, true)) => {
                            return Err(NudgeError::NonFinite {
                                what: "moving record vectors".into(),
                                index: i,
                            })
                        }
                        Err((i, false)) => {
                            return Err(NudgeError::ZeroVector {
                                what: "moving record vectors".into(),
                                index: i,
                            })
                        }
                        Ok(()) => {}
                    }
                }
                let mut first: std::collections::HashMap<Vec<u32>, usize> =
                    std::collections::HashMap::new();
                let rep: Vec<usize> = (0..n)
                    .map(|j| match geoms[j] {
                        Geom::Moves { .. } => {
                            let bits: Vec<u32> =
                                self.moving.g.row(j).iter().map(|x| x.to_bits()).collect();
                            *first.entry(bits).or_insert(j)
                        }
                        Geom::Fixed => j,
                    })
                    .collect();
                let statics = self.engine.as_ref().map(|e| e.sorted()).unwrap_or_default();
                check_static_lists(&statics)?;
                Ok(Arc::new(Prepared {
                    geoms,
                    rep,
                    dh,
                    dir,
                    statics,
                }))
            })
            .clone()
    }

    /// Runs `per_query(e, a_row, b_row)` for every evaluated validation query `e` (parallel, in
    /// blocks of queries) and hands the results to `sink` in query order on the caller's thread,
    /// checking interrupts between groups of blocks.
    fn run_queries<R: Send>(
        &self,
        prep: &Prepared,
        hooks: &mut Hooks,
        per_query: &PerQuery<R>,
        sink: &mut dyn FnMut(R),
    ) -> Result<()> {
        let nq = self.judged.len();
        let m = self.moving.keys.len();
        // Two (block x m) f32 products per block: keep them near 32 MB.
        let qb = ((1usize << 22) / m.max(1)).clamp(1, 64);
        let nblocks = nq.div_ceil(qb);
        let group = 4 * threads(hooks.pool);
        let mut b0 = 0;
        while b0 < nblocks {
            hooks.check()?;
            let b1 = (b0 + group).min(nblocks);
            let results: Vec<Vec<R>> = install(hooks.pool, || {
                (b0..b1)
                    .into_par_iter()
                    .map(|b| {
                        let q0 = b * qb;
                        let q1 = (q0 + qb).min(nq);
                        let vq = self.eval_q.slice(ndarray::s![q0..q1, ..]);
                        let rows = q1 - q0;
                        let mut a = vec![0f32; rows * m];
                        let mut bb = vec![0f32; rows * m];
                        abt_into(vq, prep.dh.view(), &mut a, m, 1, 1);
                        abt_into(vq, prep.dir.view(), &mut bb, m, 1, 1);
                        (0..rows)
                            .map(|r| {
                                per_query(q0 + r, &a[r * m..(r + 1) * m], &bb[r * m..(r + 1) * m])
                            })
                            .collect()
                    })
                    .collect()
            });
            for r in results.into_iter().flatten() {
                sink(r);
            }
            let done = ((b1 * qb).min(nq)) as u64;
            hooks.report("choosing gamma", done, Some(nq as u64));
            b0 = b1;
        }
        Ok(())
    }

    /// The mean of `metric` over the evaluated validation queries at each of `gammas`.
    pub(crate) fn eval_grid(
        &self,
        prep: &Prepared,
        gammas: &[f64],
        metric: Metric,
        hooks: &mut Hooks,
    ) -> Result<Vec<f64>> {
        let sums = self.eval_sums(prep, gammas, metric, None, hooks)?;
        let n = self.judged.len().max(1) as f64;
        Ok(sums[0].iter().map(|s| s / n).collect())
    }

    /// Per group of evaluated queries (`group[e]`, below `n_groups`; one group of all without
    /// it) the sum of `metric` over its queries at each of `gammas` (ascending).
    pub(crate) fn eval_sums(
        &self,
        prep: &Prepared,
        gammas: &[f64],
        metric: Metric,
        group: Option<(&[usize], usize)>,
        hooks: &mut Hooks,
    ) -> Result<Vec<Vec<f64>>> {
        debug_assert!(
            gammas.windows(2).all(|w| w[0] <= w[1]),
            "gammas must be ascending"
        );
        let n_groups = group.map_or(1, |g| g.1);
        let mut sums = vec![vec![0f64; gammas.len()]; n_groups];
        if gammas.is_empty() || self.judged.is_empty() {
            return Ok(sums);
        }
        let grid = Grid {
            gammas,
            angles: gammas.iter().map(|&g| nudge_n_angle(g)).collect(),
            gmax: gammas.iter().cloned().fold(0.0, f64::max),
            metric,
        };
        let per_query = |e: usize, a: &[f32], b: &[f32]| -> (usize, Vec<f64>) {
            let g = group.map_or(0, |g| g.0[e]);
            (g, self.query_curve(prep, &grid, e, a, b))
        };
        self.run_queries(prep, hooks, &per_query, &mut |(g, v): (usize, Vec<f64>)| {
            for (s, x) in sums[g].iter_mut().zip(v) {
                *s += x;
            }
        })?;
        Ok(sums)
    }

    /// One evaluated query's metric at every gamma of `grid` (`a = q . d^`, `b = q . dir` of
    /// every moving record).
    fn query_curve(&self, prep: &Prepared, grid: &Grid, e: usize, a: &[f32], b: &[f32]) -> Vec<f64> {
        let k = grid.metric.k();
        let st = &prep.statics[e];
        let sk = if st.len() >= k {
            st[k - 1].0 as f64
        } else {
            f64::NEG_INFINITY
        };
        let cand = self.candidates(prep, e, a, b, sk, grid.gmax);
        let mut ranker = Ranker::new(st, k, cand.len(), &self.judged[e], grid.metric);
        match self.config.method {
            Method::NudgeM => self.curve_m(prep, grid, &cand, sk, &mut ranker),
            Method::NudgeN => self.curve_n(prep, grid, &cand, a, b, sk, &mut ranker),
        }
    }

    /// The moving records of query `e`'s partition that can reach its top k somewhere on the
    /// searched range: `(a, b, moving index)`.
    fn candidates(
        &self,
        prep: &Prepared,
        e: usize,
        a: &[f32],
        b: &[f32],
        sk: f64,
        gmax: f64,
    ) -> Vec<(f64, f64, usize)> {
        let mut cand = Vec::new();
        for j in 0..a.len() {
            if self.parts.as_ref().is_some_and(|p| !p.same(e, j)) {
                continue;
            }
            let (aj, bj) = (a[j] as f64, b[j] as f64);
            let ub = match (prep.geoms[j], self.config.method) {
                (Geom::Fixed, _) => aj,
                (Geom::Moves { .. }, Method::NudgeN) => (aj * aj + bj * bj).sqrt().max(aj),
                (Geom::Moves { .. }, Method::NudgeM) => aj + gmax * bj.max(0.0),
            };
            // (slack: rounding of the bound, and NUDGE-N's shared q.g of identical G rows)
            if ub + 1e-6 * (ub.abs() + 1.0) >= sk {
                cand.push((aj, bj, j));
            }
        }
        cand
    }

    /// NUDGE-M: lines `a + gamma c`; each candidate is at or above the k-th static score on one
    /// run of grid indices (widened by one for rounding; the exact test is per gamma).
    fn curve_m(
        &self,
        prep: &Prepared,
        grid: &Grid,
        cand: &[(f64, f64, usize)],
        sk: f64,
        ranker: &mut Ranker,
    ) -> Vec<f64> {
        let gammas = grid.gammas;
        let p = gammas.len();
        let keys = &self.moving.keys;
        let mut items: Vec<(usize, usize, f64, f64, u64)> = Vec::with_capacity(cand.len());
        for &(aj, bj, j) in cand {
            let c = match prep.geoms[j] {
                Geom::Fixed => 0.0,
                Geom::Moves { .. } => bj,
            };
            let (i0, i1) = if !sk.is_finite() {
                (0, p - 1)
            } else if c > 0.0 {
                let t = (sk - aj) / c;
                (gammas.partition_point(|&g| g < t).saturating_sub(1), p - 1)
            } else if c < 0.0 {
                let t = (sk - aj) / c;
                (0, gammas.partition_point(|&g| g <= t).min(p - 1))
            } else if aj >= sk {
                (0, p - 1)
            } else {
                continue;
            };
            if i0 <= i1 && i0 < p {
                items.push((i0, i1, aj, c, keys[j]));
            }
        }
        items.sort_by_key(|it| it.0);
        let mut active: Vec<(usize, f64, f64, u64)> = Vec::new();
        let mut scored: Vec<(f64, u64)> = Vec::with_capacity(cand.len());
        let mut out = Vec::with_capacity(p);
        let mut next = 0;
        for (gi, &gamma) in gammas.iter().enumerate() {
            while next < items.len() && items[next].0 <= gi {
                let it = items[next];
                active.push((it.1, it.2, it.3, it.4));
                next += 1;
            }
            active.retain(|it| it.0 >= gi);
            scored.clear();
            for &(_, aj, c, key) in &active {
                let s = if gamma == 0.0 { aj } else { aj + gamma * c };
                if s >= sk {
                    scored.push((s, key));
                }
            }
            out.push(ranker.value(&mut scored));
        }
        out
    }

    /// NUDGE-N: `a cos(psi) + b sin(psi)`, records whose angle is reached at `x = g` scored
    /// through their group's representative.
    #[allow(clippy::too_many_arguments)]
    fn curve_n(
        &self,
        prep: &Prepared,
        grid: &Grid,
        cand: &[(f64, f64, usize)],
        a: &[f32],
        b: &[f32],
        sk: f64,
        ranker: &mut Ranker,
    ) -> Vec<f64> {
        let keys = &self.moving.keys;
        let mut scored: Vec<(f64, u64)> = Vec::with_capacity(cand.len());
        let mut out = Vec::with_capacity(grid.gammas.len());
        for (gi, &gamma) in grid.gammas.iter().enumerate() {
            scored.clear();
            let (cp, sp) = grid.angles[gi];
            for &(aj, bj, j) in cand {
                let s = match prep.geoms[j] {
                    _ if gamma == 0.0 => aj,
                    Geom::Fixed => aj,
                    Geom::Moves { cos_t, sin_t } => {
                        if cos_t >= cp {
                            // x = g: q.g through the group's representative
                            let r = prep.rep[j];
                            match prep.geoms[r] {
                                Geom::Moves { cos_t, sin_t } => {
                                    a[r] as f64 * cos_t + b[r] as f64 * sin_t
                                }
                                Geom::Fixed => aj * cos_t + bj * sin_t,
                            }
                        } else {
                            aj * cp + bj * sp
                        }
                    }
                };
                // below the k-th static score it cannot reach the top k
                if s >= sk {
                    scored.push((s, keys[j]));
                }
            }
            out.push(ranker.value(&mut scored));
        }
        out
    }

    /// NUDGE-M parity: per (query, relevant record) the interval of gamma >= 0 where that record
    /// ranks first (ties count as first), then the reference's sweep.
    fn parity_m(&self, prep: &Prepared, hooks: &mut Hooks) -> Result<(f64, Vec<(f64, f64)>)> {
        let per_query = |e: usize, a: &[f32], c: &[f32]| -> Vec<(f64, f64)> {
            let st = &prep.statics[e];
            let judged = &self.judged[e];
            let m = a.len();
            let line = |j: usize| -> (f64, f64) {
                match prep.geoms[j] {
                    Geom::Fixed => (a[j] as f64, 0.0),
                    Geom::Moves { .. } => (a[j] as f64, c[j] as f64),
                }
            };
            let static_top = st.first().map(|&(s, key)| (s as f64, key));
            let own = |j: usize| self.parts.as_ref().is_none_or(|p| p.same(e, j));
            let mut answers: Vec<(f64, f64, Option<usize>)> = Vec::new();
            for (key, _) in judged.relevant() {
                if let Some(p) = self.moving.position(key).filter(|&p| own(p)) {
                    let (ax, cx) = line(p);
                    answers.push((ax, cx, Some(p)));
                } else if let Some((s1, k1)) = static_top {
                    if k1 == key {
                        answers.push((s1, 0.0, None));
                    }
                }
            }
            let mut out = Vec::new();
            for (ax, cx, who) in answers {
                let mut lo = 0f64;
                let mut hi = f64::INFINITY;
                let mut ok = true;
                let mut constrain = |ay: f64, cy: f64| {
                    // x >= y  <=>  gamma * (cx - cy) >= ay - ax
                    let sd = ay - ax;
                    let gd = cx - cy;
                    if gd > 0.0 {
                        lo = lo.max(sd / gd);
                    } else if gd < 0.0 {
                        hi = hi.min(sd / gd);
                    } else if sd > 0.0 {
                        ok = false;
                    }
                };
                for j in 0..m {
                    if who == Some(j) || !own(j) {
                        continue;
                    }
                    let (ay, cy) = line(j);
                    constrain(ay, cy);
                }
                if who.is_some() {
                    if let Some((s1, _)) = static_top {
                        constrain(s1, 0.0);
                    }
                }
                if ok && hi >= lo {
                    out.push((lo, hi));
                }
            }
            out
        };
        let mut intervals = Vec::new();
        self.run_queries(prep, hooks, &per_query, &mut |v: Vec<(f64, f64)>| {
            intervals.extend(v)
        })?;
        let (gamma, curve) = most_covered_point(&intervals);
        let n = self.judged.len().max(1) as f64;
        Ok((
            gamma,
            curve.into_iter().map(|(g, c)| (g, c as f64 / n)).collect(),
        ))
    }

    /// Rows of the validation query matrix that are evaluated (those with a relevant record),
    /// in order; `statics` of [`PassParts`] follow this order.
    pub(crate) fn eval_rows(&self) -> &[usize] {
        &self.eval_rows
    }

    /// The result of the corpus pass without choosing gamma: every moving record must have been
    /// seen (else `UnknownRecord`), static lists are checked for repeated keys.
    pub(crate) fn into_parts(self) -> Result<PassParts> {
        if let Some(p) = self.seen.iter().position(|s| !s) {
            return Err(NudgeError::UnknownRecord {
                what: "moving record".into(),
                key: self.moving.keys[p],
            });
        }
        let statics = self.engine.as_ref().map(|e| e.sorted()).unwrap_or_default();
        check_static_lists(&statics)?;
        Ok(PassParts {
            k: self.engine.as_ref().map_or(0, |e| e.k()),
            statics,
            moving_parts: self.parts.map(|p| p.moving),
            moving: self.moving,
            original: self.original,
            rows_seen: self.rows_seen,
        })
    }

    /// The validation metric (see [`FitPass::metric`]) at `gamma`, computed the one-pass way:
    /// static top-k from the pass merged with the moving records at `gamma`. Call it only after
    /// all batches were pushed (a moving key not seen yet is `UnknownRecord`). Runs on rayon's
    /// global pool without interrupt checks.
    pub fn validation_metric_at(&self, gamma: f64) -> Result<f64> {
        check_gamma(self.config.method, gamma)?;
        let metric = match (self.metric, self.judged.is_empty()) {
            (Some(m), false) => m,
            _ => {
                return Err(NudgeError::Empty {
                    what: "validation queries with a relevant record".into(),
                })
            }
        };
        let prep = self.prepare()?;
        Ok(self.eval_grid(&prep, &[gamma], metric, &mut Hooks::noop())?[0])
    }

    /// Chooses gamma (see the module doc) and applies the method at it (with
    /// [`gamma_per_partition`](Self::gamma_per_partition): each record at its partition's).
    pub fn finish(self, hooks: &mut Hooks) -> Result<FitOutcome> {
        hooks.check()?;
        let prep = install(hooks.pool, || self.prepare())?;
        let has_val = !self.judged.is_empty();
        let choice = self.choose(&prep, hooks)?;
        let n = self.moving.keys.len() as u64;
        hooks.check()?;
        hooks.report("applying gamma", 0, Some(n));
        let (method, rule) = (self.config.method, self.config.negative_rule);
        let (d, g) = (self.original.view(), self.moving.g.view());
        let (vectors, changed) = install(hooks.pool, || match (&self.parts, choice.by_partition.is_empty()) {
            (Some(p), false) => {
                apply_by_partition(method, d, g, rule, &p.moving, &choice.by_partition, choice.gamma)
            }
            _ => apply(method, choice.gamma, d, g, rule),
        })?;
        hooks.report("applying gamma", n, Some(n));
        let metric = if has_val { self.metric } else { None };
        Ok(FitOutcome {
            gamma: choice.gamma,
            validation_before: choice.before,
            validation_after: choice.after,
            metric,
            keys: self.moving.keys,
            original: self.original,
            vectors,
            changed,
            curve: choice.curve,
            partition_gammas: choice.by_partition,
        })
    }

    /// Gamma by the configured selection, the validation values and the curve.
    fn choose(&self, prep: &Prepared, hooks: &mut Hooks) -> Result<Choice> {
        let has_val = !self.judged.is_empty();
        let plain = |gamma, before, after, curve| Choice { gamma, before, after, curve, by_partition: Vec::new() };
        Ok(match (self.config.selection, self.metric) {
            (Selection::Fixed(g), Some(m)) if has_val => {
                let v = self.eval_grid(prep, &[0.0, g], m, hooks)?;
                plain(g, Some(v[0]), Some(v[1]), vec![(0.0, v[0]), (g, v[1])])
            }
            (Selection::Fixed(g), _) => plain(g, None, None, Vec::new()),
            (Selection::Parity, _) if self.config.method == Method::NudgeN => {
                let grid: Vec<f64> = (0..25).map(|i| 0.02 * i as f64).collect();
                let v = self.eval_grid(prep, &grid, Metric::Top1, hooks)?;
                let mut best = 0;
                for (i, &x) in v.iter().enumerate() {
                    if x > v[best] {
                        best = i;
                    }
                }
                plain(grid[best], Some(v[0]), Some(v[best]), grid.into_iter().zip(v).collect())
            }
            (Selection::Parity, _) => {
                let (g, curve) = self.parity_m(prep, hooks)?;
                let v = self.eval_grid(prep, &[0.0, g], Metric::Top1, hooks)?;
                plain(g, Some(v[0]), Some(v[1]), curve)
            }
            (Selection::Best(m), _) => self.search_best(prep, m, hooks)?,
        })
    }

    /// [`Selection::Best`]: the grid (NUDGE-M's doubled while the best region touches its upper
    /// end), the middle of the widest run of maximal values; per partition too when asked.
    fn search_best(&self, prep: &Prepared, m: Metric, hooks: &mut Hooks) -> Result<Choice> {
        let (method, rule) = (self.config.method, self.config.negative_rule);
        let mut hi = first_range(method, rule);
        let groups = self.per_partition.and(self.parts.as_ref()).map(|p| dense_groups(&p.query));
        loop {
            let grid = best_grid(method, hi);
            let (v, sums) = match &groups {
                Some((group, ids)) => {
                    let sums = self.eval_sums(prep, &grid, m, Some((group, ids.len())), hooks)?;
                    let n = self.judged.len() as f64;
                    let joint = (0..grid.len()).map(|i| sums.iter().map(|s| s[i]).sum::<f64>() / n).collect();
                    (joint, sums)
                }
                None => (self.eval_grid(prep, &grid, m, hooks)?, Vec::new()),
            };
            let (s, e) = widest_best_run(&v);
            if method == Method::NudgeM && e == grid.len() - 1 && hi < M_RANGE_CAP {
                hi *= 2.0;
                continue;
            }
            let mid = s + (e - s) / 2;
            let (before, mut after) = (Some(v[0]), Some(v[mid]));
            let by_partition = match (&groups, self.per_partition) {
                (Some((group, ids)), Some(min)) => {
                    let mut counts = vec![0usize; ids.len()];
                    group.iter().for_each(|&g| counts[g] += 1);
                    let mut chosen = choose_per_partition(&grid, &sums, &counts, mid, min);
                    chosen.iter_mut().for_each(|c| c.partition = ids[c.partition as usize]);
                    after = Some(mean_after(&chosen));
                    chosen
                }
                _ => Vec::new(),
            };
            return Ok(Choice {
                gamma: grid[mid],
                before,
                after,
                curve: grid.into_iter().zip(v).collect(),
                by_partition,
            });
        }
    }
}

/// What [`FitPass::choose`] found.
struct Choice {
    /// The joint gamma.
    gamma: f64,
    before: Option<f64>,
    after: Option<f64>,
    curve: Vec<(f64, f64)>,
    by_partition: Vec<PartitionGamma>,
}

/// The first upper end of the [`Selection::Best`] range.
pub(crate) fn first_range(method: Method, rule: NegativeRule) -> f64 {
    match (method, rule) {
        (Method::NudgeN, NegativeRule::Skip) => 2.0,
        (Method::NudgeN, NegativeRule::Move) => 4.0,
        (Method::NudgeM, _) => M_RANGE_START,
    }
}

/// The [`Selection::Best`] grid over `[0, hi]`.
pub(crate) fn best_grid(method: Method, hi: f64) -> Vec<f64> {
    let points = if method == Method::NudgeN {
        (GRID_POINTS - 1) * (hi / 2.0) as usize + 1
    } else {
        GRID_POINTS
    };
    (0..points).map(|i| hi * i as f64 / (points - 1) as f64).collect()
}

/// Partition ids renumbered densely: each one's group index, and the ids by group.
pub(crate) fn dense_groups(parts: &[u32]) -> (Vec<usize>, Vec<u32>) {
    let mut ids = parts.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let group = parts.iter().map(|p| ids.binary_search(p).expect("listed")).collect();
    (group, ids)
}

/// What a finished corpus pass holds (see [`FitPass::into_parts`]).
pub(crate) struct PassParts {
    /// `k` of the static search (0: none).
    pub k: usize,
    /// Static top-k per evaluated validation query, best first.
    pub statics: Vec<Vec<(f32, u64)>>,
    pub moving: MovingSet,
    /// A partitioned pass: each moving record's partition.
    pub moving_parts: Option<Vec<u32>>,
    /// Original vectors of the moving records, rows as `moving.keys`.
    pub original: Array2<f32>,
    pub rows_seen: u64,
}

/// A static key listed twice for one query means a key was pushed twice.
fn check_static_lists(statics: &[Vec<(f32, u64)>]) -> Result<()> {
    for list in statics {
        let mut ks: Vec<u64> = list.iter().map(|p| p.1).collect();
        ks.sort_unstable();
        if let Some(w) = ks.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(
                "keys",
                format!("key {} appears more than once", w[0]),
            ));
        }
    }
    Ok(())
}

/// The moving set's shape and values; its dimension.
fn check_moving(moving: &MovingSet) -> Result<usize> {
    if moving.keys.is_empty() {
        return Err(NudgeError::Empty {
            what: "moving records".into(),
        });
    }
    if moving.g.nrows() != moving.keys.len() {
        return Err(mismatch(
            "numbers of moving keys and gradient rows",
            moving.keys.len(),
            moving.g.nrows(),
        ));
    }
    if moving.keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err(invalid(
            "moving",
            "keys must be sorted ascending and unique",
        ));
    }
    let dim = moving.g.ncols();
    if dim == 0 {
        return Err(invalid(
            "moving",
            "gradients must have at least one dimension",
        ));
    }
    for (i, row) in moving.g.outer_iter().enumerate() {
        if row.iter().any(|x| !x.is_finite()) {
            return Err(NudgeError::NonFinite {
                what: "gradients".into(),
                index: i,
            });
        }
    }
    Ok(dim)
}

/// Validation queries of the moving set's dimension (when any), finite.
fn check_val_queries(val_queries: ArrayView2<f32>, dim: usize) -> Result<()> {
    if val_queries.nrows() > 0 && val_queries.ncols() != dim {
        return Err(mismatch(
            "validation query dimensions",
            dim,
            val_queries.ncols(),
        ));
    }
    row_norms2(val_queries).map_err(|i| NudgeError::NonFinite {
        what: "validation queries".into(),
        index: i,
    })?;
    Ok(())
}

/// The evaluated validation queries (rows with a relevant record) and their judgements.
fn judge(val_qrels: &[Qrel], nv: usize) -> Result<(Vec<usize>, Vec<Judged>)> {
    let mut per_query: Vec<Vec<(u64, f64)>> = vec![Vec::new(); nv];
    for (i, q) in val_qrels.iter().enumerate() {
        if (q.query as usize) >= nv {
            return Err(invalid(
                "validation qrels",
                format!(
                    "query row {} is out of range (there are {nv} validation queries)",
                    q.query
                ),
            ));
        }
        if !q.grade.is_finite() {
            return Err(NudgeError::NonFinite {
                what: "validation qrel grades".into(),
                index: i,
            });
        }
        per_query[q.query as usize].push((q.record, q.grade));
    }
    let mut rows = Vec::new();
    let mut judged = Vec::new();
    for (i, rel) in per_query.iter().enumerate() {
        let j = Judged::new(rel);
        if j.n_rel > 0 {
            rows.push(i);
            judged.push(j);
        }
    }
    Ok((rows, judged))
}

/// What validation values measure under `config` (see [`FitOutcome::metric`]); `Empty` when a
/// search has no evaluated query.
fn selection_metric(config: &FitConfig, evaluated: bool) -> Result<Option<Metric>> {
    let metric = match config.selection {
        Selection::Fixed(g) => {
            check_gamma(config.method, g)?;
            evaluated.then_some(Metric::Ndcg(10))
        }
        Selection::Parity => Some(Metric::Top1),
        Selection::Best(m) => {
            m.validate()?;
            Some(m)
        }
    };
    if !evaluated && !matches!(config.selection, Selection::Fixed(_)) {
        return Err(NudgeError::Empty {
            what: "validation queries with a relevant record".into(),
        });
    }
    Ok(metric)
}

/// The gammas a curve is evaluated at.
struct Grid<'a> {
    gammas: &'a [f64],
    /// NUDGE-N's `(cos, sin)` of the angle at each gamma.
    angles: Vec<(f64, f64)>,
    gmax: f64,
    metric: Metric,
}

/// One query's ranking at one gamma: the top k of the moving scores merged with its static
/// list, then the metric.
struct Ranker<'a> {
    statics: Vec<(f64, u64)>,
    k: usize,
    judged: &'a Judged,
    metric: Metric,
    ranked: Vec<u64>,
}

impl<'a> Ranker<'a> {
    fn new(st: &[(f32, u64)], k: usize, n_cand: usize, judged: &'a Judged, metric: Metric) -> Self {
        let statics: Vec<(f64, u64)> = st.iter().take(k).map(|&(s, key)| (s as f64, key)).collect();
        // (k may be far larger than anything ranked: never reserve more than can be ranked)
        let ranked = Vec::with_capacity(k.min(n_cand + statics.len()));
        Ranker { statics, k, judged, metric, ranked }
    }

    /// The metric of the ranking whose moving scores are `scored` (reordered here).
    fn value(&mut self, scored: &mut Vec<(f64, u64)>) -> f64 {
        let (k, statics) = (self.k, &self.statics);
        let cmp = |x: &(f64, u64), y: &(f64, u64)| better_first(*x, *y);
        if scored.len() > k {
            scored.select_nth_unstable_by(k - 1, cmp);
            scored.truncate(k);
        }
        scored.sort_by(cmp);
        let (mut i, mut j) = (0, 0);
        self.ranked.clear();
        while self.ranked.len() < k && (i < scored.len() || j < statics.len()) {
            let take_moving = j >= statics.len()
                || (i < scored.len()
                    && better_first(scored[i], statics[j]) != std::cmp::Ordering::Greater);
            if take_moving {
                self.ranked.push(scored[i].1);
                i += 1;
            } else {
                self.ranked.push(statics[j].1);
                j += 1;
            }
        }
        self.judged.value_ranked(self.metric, self.ranked.iter().copied())
    }
}

/// Start and end (inclusive) of the widest run of maximal values (first on a tie).
pub(crate) fn widest_best_run(v: &[f64]) -> (usize, usize) {
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let tol = 1e-12 * max.abs().max(1.0);
    let (mut best, mut cur): ((usize, usize), Option<usize>) = ((0, 0), None);
    let mut best_len = 0;
    for i in 0..=v.len() {
        let on = i < v.len() && v[i] >= max - tol;
        match (on, cur) {
            (true, None) => cur = Some(i),
            (false, Some(s)) => {
                if i - s > best_len {
                    best_len = i - s;
                    best = (s, i - 1);
                }
                cur = None;
            }
            _ => {}
        }
    }
    best
}

/// The reference's sweep: the smallest end point after which the most intervals are open
/// (counting those starting there, not those ending there); 0 if there is none. Also returns
/// the coverage just right of every finite end point.
pub(crate) fn most_covered_point(intervals: &[(f64, f64)]) -> (f64, Vec<(f64, usize)>) {
    let mut ev: Vec<(f64, i64)> = Vec::with_capacity(2 * intervals.len());
    for &(lo, hi) in intervals {
        ev.push((lo, 1));
        ev.push((hi, -1));
    }
    ev.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total: i64 = 0;
    let mut best_total: i64 = 0;
    let mut best = 0.0;
    let mut curve = Vec::new();
    let mut i = 0;
    while i < ev.len() {
        let v = ev[i].0;
        while i < ev.len() && ev[i].0 == v {
            total += ev[i].1;
            i += 1;
        }
        if v.is_finite() {
            curve.push((v, total.max(0) as usize));
        }
        if total > best_total {
            best_total = total;
            best = v;
        }
    }
    (best, curve)
}

#[cfg(test)]
mod tests;
