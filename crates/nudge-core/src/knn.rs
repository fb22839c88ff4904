//! Exact streaming top-k: blocked GEMM of the queries against each corpus batch, with the
//! top-k selection fused into the tiles (a bounded heap per query, a vectorisable threshold test
//! before any heap work).
//!
//! Scores are "higher is better": inner product `q.d`; cosine `q.d / (|q| |d|)` (a zero query
//! or a zero record scores 0); L2 `-|q - d|^2` (computed as `2 q.d - |d|^2 - |q|^2`, clamped to
//! at most 0; callers print `-score` or its square root as the distance). Ties are broken by
//! key, descending. Keys are not checked for uniqueness across batches.

use std::fmt;
use std::str::FromStr;

use ndarray::{s, Array2, ArrayView2};
use rayon::prelude::*;

use crate::error::{invalid, mismatch, NudgeError, Result};
use crate::exec::{install, threads, Hooks};
use crate::la::abt_into;

/// Similarity used by [`TopK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distance {
    InnerProduct,
    Cosine,
    L2,
}

impl FromStr for Distance {
    type Err = NudgeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "inner_product" | "ip" | "dot" => Ok(Distance::InnerProduct),
            "cosine" | "cos" => Ok(Distance::Cosine),
            "l2" | "euclidean" => Ok(Distance::L2),
            _ => Err(invalid(
                "distance",
                format!("unknown distance \"{s}\" (expected inner_product, cosine or l2)"),
            )),
        }
    }
}

impl fmt::Display for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Distance::InnerProduct => "inner_product",
            Distance::Cosine => "cosine",
            Distance::L2 => "l2",
        })
    }
}

/// `A . B^T` (rows of `a` against rows of `b`), an `a.nrows() x b.nrows()` matrix, computed
/// with the GEMM kernels on the current rayon pool.
pub fn dot_rows(a: ArrayView2<f32>, b: ArrayView2<f32>) -> Result<Array2<f32>> {
    if a.ncols() != b.ncols() {
        return Err(mismatch("vector dimensions", a.ncols(), b.ncols()));
    }
    let (m, n) = (a.nrows(), b.nrows());
    let mut out = vec![0f32; m * n];
    let t = if (m * n * a.ncols()) > (1 << 20) {
        rayon::current_num_threads()
    } else {
        1
    };
    abt_into(a, b, &mut out, n, 1, t);
    Ok(Array2::from_shape_vec((m, n), out).expect("shape"))
}

// ---------------------------------------------------------------------------------------------
// The engine (shared with the fit pass).

/// How a raw product `q.d` becomes a score: `raw * scale[d] + bias[d]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// scale 1, bias 0.
    Ip,
    /// scale `1/|d|` (0 for a zero record), bias 0.
    Normalised,
    /// scale 2, bias `-|d|^2` (the caller subtracts `|q|^2`).
    L2,
}

#[inline(always)]
fn score(raw: f32, scale: f32, bias: f32) -> f32 {
    raw * scale + bias
}

/// Bounded min-heap keeping the `k` best `(score, key)`; root = the worst kept.
#[derive(Debug, Clone)]
pub(crate) struct Heap {
    k: usize,
    items: Vec<(f32, u64)>,
}

#[inline(always)]
fn worse(a: (f32, u64), b: (f32, u64)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
}

impl Heap {
    pub fn new(k: usize) -> Self {
        // grows with the candidates offered: a heap per query of a request must not reserve
        // k entries up front (queries x k can be far more than the corpus has rows)
        Heap {
            k,
            items: Vec::new(),
        }
    }

    /// Any score below this cannot enter (`-inf` while not full).
    #[inline]
    pub fn threshold(&self) -> f32 {
        if self.items.len() < self.k {
            f32::NEG_INFINITY
        } else {
            self.items[0].0
        }
    }

    /// Offers a candidate; NaN never enters. Returns whether it was kept.
    #[inline]
    pub fn offer(&mut self, s: f32, key: u64) -> bool {
        if s.is_nan() || self.k == 0 {
            return false;
        }
        let e = (s, key);
        if self.items.len() < self.k {
            self.items.push(e);
            let mut i = self.items.len() - 1;
            while i > 0 {
                let p = (i - 1) / 2;
                if worse(self.items[i], self.items[p]) {
                    self.items.swap(i, p);
                    i = p;
                } else {
                    break;
                }
            }
            return true;
        }
        if !worse(self.items[0], e) {
            return false;
        }
        self.items[0] = e;
        let n = self.items.len();
        let mut i = 0;
        loop {
            let l = 2 * i + 1;
            if l >= n {
                break;
            }
            let r = l + 1;
            let c = if r < n && worse(self.items[r], self.items[l]) {
                r
            } else {
                l
            };
            if worse(self.items[c], self.items[i]) {
                self.items.swap(c, i);
                i = c;
            } else {
                break;
            }
        }
        true
    }

    /// Entries best first (score descending, key descending).
    pub fn sorted(&self) -> Vec<(f32, u64)> {
        let mut v = self.items.clone();
        v.sort_by(|a, b| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.1.cmp(&a.1))
        });
        v
    }
}

/// Query tile height and corpus tile width of the fused GEMM + selection.
const QB: usize = 128;
const NB: usize = 512;
/// Fewest corpus rows per GEMM call. `gemm` picks its kernel (and its blocking of the inner
/// dimension) from the shape: products of at most 256 entries, a single row or column, and
/// both sides at most 64 take other paths, whose rounding differs in the last bits. With at
/// least 257 corpus rows and 2 queries every call takes the main kernel, so a score does not
/// depend on how rows are batched or sharded (which an exact merge of shards needs).
const MIN_ROWS: usize = 257;
/// Work per round between interrupt checks: ~2.5e9 flops per thread (~25 ms), at most 16M
/// floats of corpus.
const ROUND_FLOPS_PER_THREAD: f64 = 2.5e9;
const ROUND_MAX_FLOATS: usize = 1 << 24;

/// The partition of a row that no query has: it is never offered to any heap.
pub const NO_PARTITION: u32 = u32::MAX;

pub(crate) struct Engine {
    q: Array2<f32>,
    k: usize,
    mode: Mode,
    heaps: Vec<Heap>,
    /// Per query (in the engine's order), its partition: a row is offered to a query's heap
    /// only if the row's partition (given per pushed row) is the query's. None: every row to
    /// every query. The queries are then held sorted by partition, so that a row's queries are
    /// one contiguous range.
    qpart: Option<Vec<u32>>,
    /// With partitions: the caller's index of each query in the engine's order, and back.
    order: Option<(Vec<usize>, Vec<usize>)>,
    pub rows_seen: u64,
}

/// Checks per-query partitions: one per query, none [`NO_PARTITION`].
pub(crate) fn check_query_parts(parts: &[u32], n_queries: usize) -> Result<()> {
    if parts.len() != n_queries {
        return Err(mismatch("numbers of queries and query partitions", n_queries, parts.len()));
    }
    if parts.contains(&NO_PARTITION) {
        return Err(invalid("partitions", "a query's partition cannot be NO_PARTITION"));
    }
    Ok(())
}

/// Checks per-row partitions of a batch against whether the search is partitioned.
pub(crate) fn check_row_parts(parts: Option<&[u32]>, partitioned: bool, rows: usize) -> Result<()> {
    match (parts, partitioned) {
        (Some(p), true) if p.len() != rows => {
            Err(mismatch("numbers of corpus rows and row partitions", rows, p.len()))
        }
        (Some(_), true) | (None, false) => Ok(()),
        (None, true) => Err(invalid("partitions", "a partitioned search needs every row's partition")),
        (Some(_), false) => Err(invalid("partitions", "row partitions given to a search without query partitions")),
    }
}

/// Per-row sum of squares in f64 (parallel); the index of the first row with NaN/Inf on error.
pub(crate) fn row_norms2(v: ArrayView2<f32>) -> std::result::Result<Vec<f64>, usize> {
    let n = v.nrows();
    let mut out = vec![0f64; n];
    let f = |(i, o): (usize, &mut f64)| {
        let mut s = 0f64;
        for &x in v.row(i).iter() {
            s += (x as f64) * (x as f64);
        }
        *o = s;
    };
    if n * v.ncols() > 1 << 16 {
        out.par_iter_mut().enumerate().with_min_len(256).for_each(f);
    } else {
        out.iter_mut().enumerate().for_each(f);
    }
    match out.iter().position(|s| !s.is_finite()) {
        Some(i) => Err(i),
        None => Ok(out),
    }
}

impl Engine {
    /// `q` must already be validated (finite, `nrows >= 1`, `ncols >= 1`), `k >= 1`.
    pub fn new(q: Array2<f32>, k: usize, mode: Mode) -> Self {
        let q = q.as_standard_layout().into_owned();
        let m = q.nrows();
        Engine {
            q,
            k,
            mode,
            heaps: (0..m).map(|_| Heap::new(k)).collect(),
            qpart: None,
            order: None,
            rows_seen: 0,
        }
    }

    /// Restricts every query to the rows of its partition (`parts` checked by the caller with
    /// [`check_query_parts`]); call before the first row.
    pub fn set_query_parts(&mut self, parts: Vec<u32>) {
        debug_assert_eq!(parts.len(), self.q.nrows());
        let mut by_part: Vec<usize> = (0..parts.len()).collect();
        by_part.sort_by_key(|&i| parts[i]);
        let mut back = vec![0; parts.len()];
        for (at, &i) in by_part.iter().enumerate() {
            back[i] = at;
        }
        self.q = self.q.select(ndarray::Axis(0), &by_part);
        self.qpart = Some(by_part.iter().map(|&i| parts[i]).collect());
        self.order = Some((by_part, back));
    }

    pub fn is_partitioned(&self) -> bool {
        self.qpart.is_some()
    }

    pub fn dim(&self) -> usize {
        self.q.ncols()
    }

    pub fn n_queries(&self) -> usize {
        self.q.nrows()
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Offers `(s, key)` to query `q`'s heap (as if scored in a batch).
    pub fn offer(&mut self, q: usize, s: f32, key: u64) -> bool {
        let at = self.order.as_ref().map_or(q, |o| o.1[q]);
        self.heaps[at].offer(s, key)
    }

    /// Per-query lists, best first.
    pub fn sorted(&self) -> Vec<Vec<(f32, u64)>> {
        match &self.order {
            Some((_, back)) => back.iter().map(|&at| self.heaps[at].sorted()).collect(),
            None => self.heaps.iter().map(|h| h.sorted()).collect(),
        }
    }

    /// Scores a batch whose shapes were checked and whose per-row `|d|^2` is `norms2`.
    /// Rows with `skip[j]` are ignored; `parts` (checked with [`check_row_parts`]) are the
    /// rows' partitions of a partitioned search.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        keys: &[u64],
        v: ArrayView2<f32>,
        norms2: &[f64],
        skip: Option<&[bool]>,
        parts: Option<&[u32]>,
        hooks: &mut Hooks,
        phase: &str,
    ) -> Result<()> {
        let n = v.nrows();
        if n == 0 {
            return Ok(());
        }
        let (scale, bias): (Vec<f32>, Vec<f32>) = match self.mode {
            Mode::Ip => (vec![1.0; n], vec![0.0; n]),
            Mode::Normalised => (
                norms2
                    .iter()
                    .map(|&s| {
                        if s > 0.0 {
                            (1.0 / s.sqrt()) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect(),
                vec![0.0; n],
            ),
            Mode::L2 => (vec![2.0; n], norms2.iter().map(|&s| -(s as f32)).collect()),
        };
        let pool = hooks.pool;
        let t = threads(pool);
        let m = self.q.nrows();
        let dim = self.q.ncols().max(1);
        let per_round_flops = ROUND_FLOPS_PER_THREAD * t as f64;
        let round = ((per_round_flops / (2.0 * m as f64 * dim as f64)) as usize)
            .min(ROUND_MAX_FLOATS / dim)
            .max(NB);
        let mut r0 = 0;
        while r0 < n {
            hooks.check()?;
            let r1 = (r0 + round).min(n);
            let ctx = Ctx {
                keys: &keys[r0..r1],
                v: v.slice(s![r0..r1, ..]),
                scale: &scale[r0..r1],
                bias: &bias[r0..r1],
                skip: skip.map(|sk| &sk[r0..r1]),
                parts: parts.map(|p| &p[r0..r1]),
            };
            let q = self.q.view();
            let heaps = &mut self.heaps;
            match self.qpart.as_deref() {
                Some(qpart) => install(pool, || run_round_partitioned(q, qpart, heaps, &ctx)),
                None => install(pool, || run_round(q, heaps, &ctx, t)),
            }
            self.rows_seen += (r1 - r0) as u64;
            hooks.report(phase, self.rows_seen, None);
            r0 = r1;
        }
        Ok(())
    }
}

struct Ctx<'a> {
    keys: &'a [u64],
    v: ArrayView2<'a, f32>,
    scale: &'a [f32],
    bias: &'a [f32],
    skip: Option<&'a [bool]>,
    /// Row partitions (with query partitions: a row reaches only its partition's queries, see
    /// [`run_round_partitioned`]).
    parts: Option<&'a [u32]>,
}

/// A partitioned round: the rows of each partition against that partition's queries only
/// (the engine holds its queries sorted by partition: one range per partition), as blocks of
/// at most `QB` queries in parallel. Skipped rows and rows of a partition no query has are left
/// out. The products have the shapes the unpartitioned scan uses (`MIN_ROWS` padding), so the
/// scores are the same bits.
fn run_round_partitioned(q: ArrayView2<f32>, qpart: &[u32], heaps: &mut [Heap], ctx: &Ctx) {
    let Some(rp) = ctx.parts else {
        return;
    };
    let mut rows: Vec<usize> = (0..rp.len()).filter(|&j| !ctx.skip.is_some_and(|sk| sk[j])).collect();
    rows.sort_by_key(|&j| rp[j]);
    // per partition with queries: its query range and its rows, gathered
    let mut groups: Vec<(usize, usize, Gathered)> = Vec::new();
    let mut a = 0;
    while a < rows.len() {
        let p = rp[rows[a]];
        let b = a + rows[a..].partition_point(|&j| rp[j] == p);
        let (lo, hi) = (qpart.partition_point(|&x| x < p), qpart.partition_point(|&x| x <= p));
        if lo < hi {
            groups.push((lo, hi, Gathered::of(ctx, &rows[a..b])));
        }
        a = b;
    }
    // disjoint heaps per block of a group's queries (ranges ascend with the partitions)
    let mut work: Vec<(usize, &mut [Heap], &Gathered)> = Vec::new();
    let (mut rest, mut at): (&mut [Heap], usize) = (heaps, 0);
    for (lo, hi, g) in &groups {
        let tail = std::mem::take(&mut rest).split_at_mut(lo - at).1;
        let (mut mine, tail) = tail.split_at_mut(hi - lo);
        rest = tail;
        at = *hi;
        let mut q0 = *lo;
        while !mine.is_empty() {
            let len = QB.min(hi - q0);
            let (blk, more) = std::mem::take(&mut mine).split_at_mut(len);
            work.push((q0, blk, g));
            q0 += len;
            mine = more;
        }
    }
    work.into_par_iter().for_each(|(q0, hs, g)| {
        let sub = Ctx {
            keys: &g.keys,
            v: g.v.view(),
            scale: &g.scale,
            bias: &g.bias,
            skip: None,
            parts: None,
        };
        let qblk = q.slice(s![q0..q0 + hs.len(), ..]);
        let mut thr: Vec<f32> = hs.iter().map(|h| h.threshold()).collect();
        let mut scratch = Vec::new();
        scan(qblk, &sub, 0, g.keys.len(), hs, &mut thr, None, &mut scratch);
    });
}

/// Some rows of a round, copied out: their keys, vectors and score transforms.
struct Gathered {
    keys: Vec<u64>,
    v: Array2<f32>,
    scale: Vec<f32>,
    bias: Vec<f32>,
}

impl Gathered {
    fn of(ctx: &Ctx, rows: &[usize]) -> Gathered {
        Gathered {
            keys: rows.iter().map(|&j| ctx.keys[j]).collect(),
            v: ctx.v.select(ndarray::Axis(0), rows),
            scale: rows.iter().map(|&j| ctx.scale[j]).collect(),
            bias: rows.iter().map(|&j| ctx.bias[j]).collect(),
        }
    }
}

fn run_round(q: ArrayView2<f32>, heaps: &mut [Heap], ctx: &Ctx, t: usize) {
    let m = q.nrows();
    let n = ctx.v.nrows();
    if m >= 16 * t || n <= NB || t == 1 {
        // Query-parallel: each task owns a block of queries and their heaps.
        let nblocks = t * m.div_ceil(t * QB);
        let qb = m.div_ceil(nblocks).max(1);
        heaps.par_chunks_mut(qb).enumerate().for_each(|(b, hs)| {
            let q0 = b * qb;
            let qblk = q.slice(s![q0..q0 + hs.len(), ..]);
            let mut thr: Vec<f32> = hs.iter().map(|h| h.threshold()).collect();
            let mut scratch = Vec::new();
            scan(qblk, ctx, 0, n, hs, &mut thr, None, &mut scratch);
        });
    } else {
        // Few queries: split the corpus, keep local heaps, merge.
        let chunks = (2 * t).min(n.div_ceil(NB));
        let per = n.div_ceil(chunks);
        let gthr: Vec<f32> = heaps.iter().map(|h| h.threshold()).collect();
        let k = heaps.first().map(|h| h.k).unwrap_or(1);
        let locals: Vec<Vec<Heap>> = (0..chunks)
            .into_par_iter()
            .map(|c| {
                let d0 = c * per;
                let d1 = ((c + 1) * per).min(n);
                let mut hs: Vec<Heap> = (0..m).map(|_| Heap::new(k)).collect();
                let mut thr = gthr.clone();
                let mut scratch = Vec::new();
                if d0 < d1 {
                    scan(q, ctx, d0, d1, &mut hs, &mut thr, Some(&gthr), &mut scratch);
                }
                hs
            })
            .collect();
        for local in locals {
            for (g, l) in heaps.iter_mut().zip(local) {
                for (s, key) in l.items {
                    g.offer(s, key);
                }
            }
        }
    }
}

/// Fused GEMM + selection of the queries `q` (a block) over corpus rows `d0..d1` of `ctx`.
/// `thr[i]` is the admission threshold of query i (kept in sync with `heaps[i]`, and never
/// below `floor[i]` when given).
#[allow(clippy::too_many_arguments)]
fn scan(
    q: ArrayView2<f32>,
    ctx: &Ctx,
    d0: usize,
    d1: usize,
    heaps: &mut [Heap],
    thr: &mut [f32],
    floor: Option<&[f32]>,
    scratch: &mut Vec<f32>,
) {
    let mq = q.nrows();
    if mq == 0 {
        return;
    }
    // Canonical GEMM shapes (see MIN_ROWS): a single query gets a zero second row, short tiles
    // are zero-padded.
    let q1 = (mq == 1).then(|| {
        let mut a = Array2::zeros((2, q.ncols()));
        a.row_mut(0).assign(&q.row(0));
        a
    });
    let qv = q1.as_ref().map_or(q.view(), |a| a.view());
    let w = qv.nrows();
    let mut pad: Option<Array2<f32>> = None;
    scratch.resize(NB * w, 0.0);
    let mut j0 = d0;
    while j0 < d1 {
        let j1 = (j0 + NB).min(d1);
        let nb = j1 - j0;
        let tile = ctx.v.slice(s![j0..j1, ..]);
        // tile[j * w + i] = d_j . q_i
        if nb >= MIN_ROWS {
            abt_into(tile, qv, scratch, w, 1, 1);
        } else {
            let p = pad.get_or_insert_with(|| Array2::zeros((MIN_ROWS, qv.ncols())));
            p.slice_mut(s![..nb, ..]).assign(&tile);
            p.slice_mut(s![nb.., ..]).fill(0.0);
            abt_into(p.view(), qv, scratch, w, 1, 1);
        }
        for jj in 0..nb {
            let j = j0 + jj;
            if let Some(sk) = ctx.skip {
                if sk[j] {
                    continue;
                }
            }
            let (sc, b, key) = (ctx.scale[j], ctx.bias[j], ctx.keys[j]);
            let row = &scratch[jj * w..jj * w + mq];
            let mut i0 = 0;
            while i0 < mq {
                let i1 = (i0 + 16).min(mq);
                let mut any = false;
                for i in i0..i1 {
                    any |= score(row[i], sc, b) >= thr[i];
                }
                if any {
                    for i in i0..i1 {
                        let sv = score(row[i], sc, b);
                        if sv >= thr[i] && heaps[i].offer(sv, key) {
                            let h = heaps[i].threshold();
                            thr[i] = match floor {
                                Some(f) => h.max(f[i]),
                                None => h,
                            };
                        }
                    }
                }
                i0 = i1;
            }
        }
        j0 = j1;
    }
}

// ---------------------------------------------------------------------------------------------

/// Streaming exact top-k over corpus batches.
pub struct TopK {
    engine: Engine,
    distance: Distance,
    qnorm2: Vec<f64>,
}

impl TopK {
    /// `queries`: one row per query (finite, at least one row and one column); `k >= 1`.
    /// Under cosine the queries are normalised here (a zero query scores 0 against everything).
    pub fn new(queries: Array2<f32>, k: usize, distance: Distance) -> Result<Self> {
        if k == 0 {
            return Err(invalid("k", "must be at least 1"));
        }
        if queries.nrows() == 0 {
            return Err(NudgeError::Empty {
                what: "queries".into(),
            });
        }
        if queries.ncols() == 0 {
            return Err(invalid(
                "queries",
                "query vectors must have at least one dimension",
            ));
        }
        let qnorm2 = row_norms2(queries.view()).map_err(|i| NudgeError::NonFinite {
            what: "queries".into(),
            index: i,
        })?;
        let (q, mode) = match distance {
            Distance::InnerProduct => (queries, Mode::Ip),
            Distance::L2 => (queries, Mode::L2),
            Distance::Cosine => {
                let mut q = queries;
                for (mut row, &s) in q.outer_iter_mut().zip(&qnorm2) {
                    if s > 0.0 {
                        let inv = 1.0 / s.sqrt();
                        row.iter_mut().for_each(|x| *x = (*x as f64 * inv) as f32);
                    }
                }
                (q, Mode::Normalised)
            }
        };
        Ok(TopK {
            engine: Engine::new(q, k, mode),
            distance,
            qnorm2,
        })
    }

    /// Restricts each query to the corpus rows of its partition: `query_parts[i]` is query
    /// `i`'s (any id but [`NO_PARTITION`]); rows are then pushed with
    /// [`push_batch_in`](Self::push_batch_in). Call before the first batch.
    pub fn with_partitions(mut self, query_parts: Vec<u32>) -> Result<Self> {
        check_query_parts(&query_parts, self.n_queries())?;
        if self.engine.rows_seen > 0 {
            return Err(invalid("partitions", "set before the first batch"));
        }
        self.engine.set_query_parts(query_parts);
        Ok(self)
    }

    pub fn k(&self) -> usize {
        self.engine.k
    }

    pub fn dim(&self) -> usize {
        self.engine.dim()
    }

    pub fn n_queries(&self) -> usize {
        self.engine.n_queries()
    }

    pub fn distance(&self) -> Distance {
        self.distance
    }

    /// Corpus rows pushed so far.
    pub fn rows_seen(&self) -> u64 {
        self.engine.rows_seen
    }

    /// Scores one corpus batch (`keys[j]` is the key of row `j` of `vectors`). Rejects the whole
    /// batch (nothing is scored) on a shape mismatch or a NaN/Inf (`NonFinite`, index = row of
    /// the batch). Interrupts are checked before every round of blocks; on `Err` the state is
    /// partially updated and the `TopK` should be dropped.
    pub fn push_batch(
        &mut self,
        keys: &[u64],
        vectors: ArrayView2<f32>,
        hooks: &mut Hooks,
    ) -> Result<()> {
        self.push_batch_in(keys, vectors, None, hooks)
    }

    /// [`push_batch`](Self::push_batch) with each row's partition (`parts[j]`; required after
    /// [`with_partitions`](Self::with_partitions), refused otherwise). A row whose partition
    /// no query has ([`NO_PARTITION`] or any other id) counts as seen and ranks nowhere.
    pub fn push_batch_in(
        &mut self,
        keys: &[u64],
        vectors: ArrayView2<f32>,
        parts: Option<&[u32]>,
        hooks: &mut Hooks,
    ) -> Result<()> {
        check_row_parts(parts, self.engine.is_partitioned(), keys.len())?;
        if keys.len() != vectors.nrows() {
            return Err(mismatch(
                "numbers of keys and corpus vectors",
                vectors.nrows(),
                keys.len(),
            ));
        }
        if vectors.ncols() != self.dim() {
            return Err(mismatch(
                "corpus vector dimensions",
                self.dim(),
                vectors.ncols(),
            ));
        }
        let norms2 =
            install(hooks.pool, || row_norms2(vectors)).map_err(|i| NudgeError::NonFinite {
                what: "corpus batch".into(),
                index: i,
            })?;
        self.engine
            .push(keys, vectors, &norms2, None, parts, hooks, "k-nn search")
    }

    /// Per query, the best `min(k, rows seen)` `(key, score)`, best first; ties by key descending.
    pub fn finish(self) -> Vec<Vec<(u64, f32)>> {
        let l2 = self.distance == Distance::L2;
        self.engine
            .sorted()
            .into_iter()
            .zip(&self.qnorm2)
            .map(|(list, &qn)| {
                let mut out: Vec<(u64, f32)> = list
                    .into_iter()
                    .map(|(s, key)| {
                        if l2 {
                            (key, ((s as f64) - qn).min(0.0) as f32)
                        } else {
                            (key, s)
                        }
                    })
                    .collect();
                if l2 {
                    out.sort_by(|a, b| {
                        b.1.partial_cmp(&a.1)
                            .unwrap_or(std::cmp::Ordering::Equal)
                            .then(b.0.cmp(&a.0))
                    });
                }
                out
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::Progress;
    use crate::testutil::Rng;

    fn brute(
        q: &Array2<f32>,
        d: &Array2<f32>,
        keys: &[u64],
        k: usize,
        dist: Distance,
    ) -> Vec<Vec<(u64, f64)>> {
        q.outer_iter()
            .map(|qi| {
                let qn = qi.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                let mut v: Vec<(u64, f64)> = d
                    .outer_iter()
                    .zip(keys)
                    .map(|(di, &key)| {
                        let dot: f64 = qi
                            .iter()
                            .zip(di.iter())
                            .map(|(&a, &b)| a as f64 * b as f64)
                            .sum();
                        let dn = di.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                        let s = match dist {
                            Distance::InnerProduct => dot,
                            Distance::Cosine => {
                                if qn == 0.0 || dn == 0.0 {
                                    0.0
                                } else {
                                    dot / (qn * dn)
                                }
                            }
                            Distance::L2 => -qi
                                .iter()
                                .zip(di.iter())
                                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                                .sum::<f64>(),
                        };
                        (key, s)
                    })
                    .collect();
                v.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(b.0.cmp(&a.0)));
                v.truncate(k);
                v
            })
            .collect()
    }

    fn run(
        q: &Array2<f32>,
        d: &Array2<f32>,
        keys: &[u64],
        k: usize,
        dist: Distance,
        batch: usize,
    ) -> Vec<Vec<(u64, f32)>> {
        let mut tk = TopK::new(q.clone(), k, dist).unwrap();
        let mut h = Hooks::noop();
        let mut r0 = 0;
        while r0 < d.nrows() {
            let r1 = (r0 + batch).min(d.nrows());
            tk.push_batch(&keys[r0..r1], d.slice(s![r0..r1, ..]), &mut h)
                .unwrap();
            r0 = r1;
        }
        tk.finish()
    }

    /// Same scores (within tolerance) and the same keys except where brute-force scores are
    /// within `tol` of each other.
    fn check(got: &[Vec<(u64, f32)>], want: &[Vec<(u64, f64)>], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!(g.len(), w.len());
            for (r, (gi, wi)) in g.iter().zip(w).enumerate() {
                assert!(
                    (gi.1 as f64 - wi.1).abs() <= tol * (1.0 + wi.1.abs()),
                    "rank {r}: {gi:?} vs {wi:?}"
                );
                if gi.0 != wi.0 {
                    // only allowed inside a near-tie
                    let near = w.iter().any(|x| {
                        x.0 == gi.0 && (x.1 - wi.1).abs() <= 2.0 * tol * (1.0 + wi.1.abs())
                    });
                    assert!(near, "rank {r}: key {} vs {}", gi.0, wi.0);
                }
            }
        }
    }

    #[test]
    fn matches_brute_force_all_distances() {
        let mut rng = Rng::new(1);
        for &(m, n, dim, k, batch) in &[
            (3usize, 50usize, 8usize, 5usize, 7usize),
            (40, 1300, 16, 10, 600),
            (1, 700, 5, 3, 1000),
            (5, 4, 3, 10, 2), // k > n
            (70, 2000, 33, 1, 2000),
            (20, 1100, 12, 17, 1100), // few queries, several corpus chunks
        ] {
            let q = rng.matrix(m, dim);
            let mut d = rng.matrix(n, dim);
            if n > 3 {
                d.row_mut(2).fill(0.0); // a zero record
            }
            let keys: Vec<u64> = (0..n as u64).map(|i| i * 3 + 1).collect();
            for dist in [Distance::InnerProduct, Distance::Cosine, Distance::L2] {
                let got = run(&q, &d, &keys, k, dist, batch);
                let want = brute(&q, &d, &keys, k, dist);
                check(&got, &want, 1e-5);
                for list in &got {
                    assert_eq!(list.len(), k.min(n));
                }
            }
        }
    }

    #[test]
    fn ties_by_key_descending_across_batches() {
        // integer-valued vectors: exact scores, many ties
        let q = Array2::from_shape_vec((2, 2), vec![1.0f32, 0.0, 0.0, 1.0]).unwrap();
        let d = Array2::from_shape_vec(
            (6, 2),
            vec![
                1.0f32, 1.0, 1.0, 2.0, 1.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0, 5.0,
            ],
        )
        .unwrap();
        let keys = [10u64, 11, 12, 13, 14, 15];
        for batch in [1, 2, 6] {
            let got = run(&q, &d, &keys, 4, Distance::InnerProduct, batch);
            assert_eq!(got[0], vec![(13, 2.0), (15, 1.0), (14, 1.0), (12, 1.0)]);
            assert_eq!(got[1], vec![(15, 5.0), (11, 2.0), (14, 1.0), (13, 1.0)]);
            // cosine with a zero query: all scores 0, ties by key
            let qz = Array2::<f32>::zeros((1, 2));
            let got = run(&qz, &d, &keys, 3, Distance::Cosine, batch);
            assert_eq!(got[0], vec![(15, 0.0), (14, 0.0), (13, 0.0)]);
            // L2: d=(1,1) x2 tie at distance^2 1 from (1,0)... query (1,0): (1,0) is at 0
            let got = run(&q, &d, &keys, 3, Distance::L2, batch);
            assert_eq!(got[0], vec![(12, 0.0), (14, -1.0), (10, -1.0)]);
        }
    }

    #[test]
    fn many_queries_parallel_paths_and_pools() {
        let mut rng = Rng::new(9);
        let q = rng.matrix(300, 24);
        let d = rng.matrix(3000, 24);
        let keys: Vec<u64> = (0..3000u64).rev().collect();
        let want = brute(&q, &d, &keys, 7, Distance::Cosine);
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut tk = TopK::new(q.clone(), 7, Distance::Cosine).unwrap();
            let mut h = Hooks::noop_on(&pool);
            tk.push_batch(&keys[..1234], d.slice(s![..1234, ..]), &mut h)
                .unwrap();
            tk.push_batch(&keys[1234..], d.slice(s![1234.., ..]), &mut h)
                .unwrap();
            check(&tk.finish(), &want, 1e-5);
        }
    }

    #[test]
    fn non_contiguous_views() {
        let mut rng = Rng::new(3);
        let q = rng.matrix(4, 6);
        let big = rng.matrix(200, 12);
        let d = big.slice(s![..;2, ..;2]).to_owned();
        let keys: Vec<u64> = (0..100).collect();
        let mut tk = TopK::new(q.clone(), 5, Distance::InnerProduct).unwrap();
        tk.push_batch(&keys, big.slice(s![..;2, ..;2]), &mut Hooks::noop())
            .unwrap();
        check(
            &tk.finish(),
            &brute(&q, &d, &keys, 5, Distance::InnerProduct),
            1e-5,
        );
    }

    #[test]
    fn errors_and_cancellation() {
        let q = Array2::<f32>::ones((2, 3));
        assert!(matches!(
            TopK::new(q.clone(), 0, Distance::Cosine),
            Err(NudgeError::InvalidParameter { name: "k", .. })
        ));
        assert!(matches!(
            TopK::new(Array2::zeros((0, 3)), 1, Distance::Cosine),
            Err(NudgeError::Empty { .. })
        ));
        assert!(matches!(
            TopK::new(Array2::zeros((2, 0)), 1, Distance::Cosine),
            Err(NudgeError::InvalidParameter { .. })
        ));
        let mut qn = q.clone();
        qn[[1, 2]] = f32::NAN;
        assert_eq!(
            TopK::new(qn, 1, Distance::L2).err(),
            Some(NudgeError::NonFinite {
                what: "queries".into(),
                index: 1
            })
        );
        let mut tk = TopK::new(q.clone(), 2, Distance::InnerProduct).unwrap();
        let d = Array2::<f32>::ones((4, 3));
        let mut h = Hooks::noop();
        assert!(matches!(
            tk.push_batch(&[1, 2, 3], d.view(), &mut h),
            Err(NudgeError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            tk.push_batch(&[1, 2], Array2::<f32>::ones((2, 4)).view(), &mut h),
            Err(NudgeError::DimensionMismatch { .. })
        ));
        let mut dn = d.clone();
        dn[[3, 0]] = f32::INFINITY;
        assert_eq!(
            tk.push_batch(&[1, 2, 3, 4], dn.view(), &mut h),
            Err(NudgeError::NonFinite {
                what: "corpus batch".into(),
                index: 3
            })
        );
        assert_eq!(tk.rows_seen(), 0);
        tk.push_batch(&[], Array2::<f32>::zeros((0, 3)).view(), &mut h)
            .unwrap();
        assert_eq!(tk.finish(), vec![Vec::<(u64, f32)>::new(), vec![]]);

        // cancellation stops the pass and reaches the caller
        let mut calls = 0;
        let mut progress = Vec::new();
        let mut tk = TopK::new(q.clone(), 2, Distance::InnerProduct).unwrap();
        let big = Array2::<f32>::ones((100, 3));
        let keys: Vec<u64> = (0..100).collect();
        {
            let mut ci = || {
                calls += 1;
                if calls >= 2 {
                    Err(NudgeError::Cancelled)
                } else {
                    Ok(())
                }
            };
            let mut pr = |p: Progress<'_>| progress.push(p.done);
            let mut h = Hooks::new(None, &mut ci, &mut pr);
            tk.push_batch(&keys, big.view(), &mut h).unwrap();
            assert_eq!(
                tk.push_batch(&keys, big.view(), &mut h),
                Err(NudgeError::Cancelled)
            );
        }
        assert_eq!(calls, 2);
        assert_eq!(progress, vec![100]);
        assert_eq!(tk.rows_seen(), 100);
    }

    #[test]
    fn parse_distance_and_dot_rows() {
        assert_eq!("Cosine".parse::<Distance>().unwrap(), Distance::Cosine);
        assert_eq!(
            "inner_product".parse::<Distance>().unwrap(),
            Distance::InnerProduct
        );
        assert_eq!("l2".parse::<Distance>().unwrap(), Distance::L2);
        assert!("manhattan".parse::<Distance>().is_err());
        assert_eq!(Distance::L2.to_string(), "l2");
        let a = Array2::from_shape_vec((2, 2), vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let b = Array2::from_shape_vec((3, 2), vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0]).unwrap();
        assert_eq!(
            dot_rows(a.view(), b.view()).unwrap(),
            Array2::from_shape_vec((2, 3), vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0]).unwrap()
        );
        assert!(dot_rows(a.view(), a.t()).is_ok());
        assert!(dot_rows(a.view(), Array2::<f32>::zeros((1, 3)).view()).is_err());
    }

    #[test]
    fn heap_keeps_best() {
        let mut h = Heap::new(3);
        for (s, k) in [
            (1.0, 1),
            (5.0, 2),
            (3.0, 3),
            (5.0, 1),
            (f32::NAN, 9),
            (0.5, 4),
            (3.0, 7),
        ] {
            h.offer(s, k);
        }
        assert_eq!(h.sorted(), vec![(5.0, 2), (5.0, 1), (3.0, 7)]);
        assert_eq!(h.threshold(), 3.0);
    }
}
