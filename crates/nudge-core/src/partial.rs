//! The corpus pass of a fit, split across database shards and merged exactly.
//!
//! The coordinator builds its [`FitPass`](crate::FitPass) (it knows `G`, the validation
//! judgements and the method) and sends every shard a [`ShardSpec`]: the evaluated validation
//! query vectors, the metric's `k` and the sorted moving keys, nothing about `G`. Each shard runs
//! a [`ShardPass`] over its rows (the same checks and the same static top-k as
//! [`FitPass::push_batch`](crate::FitPass::push_batch)) and returns a [`Partial`]. What crosses
//! the network back is, per evaluated validation query, at most `k` `(score, key)` pairs of
//! static records, plus the original vectors of the moving records the shard holds, and a row
//! count; nothing else. Partials merge associatively and commutatively ([`Partial::merge`]), so
//! they can be combined in any tree, and [`FitPass::push_partial`](crate::FitPass::push_partial)
//! feeds the result to the coordinator's pass: `finish` then gives the same outcome as one pass
//! that saw every row.
//!
//! Exactness rests on two things:
//! * Scores are bitwise the same on every shard. They are computed by the same engine, which
//!   pads its GEMM calls so that they always take `gemm`'s main kernel (see `knn::MIN_ROWS`):
//!   a score does not depend on how rows are batched or sharded, nor on the thread count. It
//!   can depend on the CPU (instruction set; cache sizes for dimensions above 512), so shards
//!   and coordinator should run on the same kind of hardware for bitwise-equal results.
//! * Keys are globally unique. Exact score ties between static records are broken by key
//!   (descending), so the caller assigns the keys; shards that number their unlabelled rows
//!   themselves must use disjoint ranges at or above `n_labelled`. Then renumbering unlabelled
//!   rows changes nothing: among tied records it can only reorder unlabelled (never relevant)
//!   ones, and labelled keys keep their order relative to all others.
//!
//! Wire formats (little-endian, hand-written, version 2): `ShardSpec`: `"NDGS" 2 dim k nq nm
//! queries[nq*dim]:f32 keys[nm]:u64 np {value:text}*np partitioned:0|1 [qparts[nq]:u32]`;
//! `Partial`: `"NDGP" 2 k rows_seen nq {len (score:f32 key:u64)*len}*nq nm {key len
//! v[len]:f32}*nm partitioned:0|1 [parts[nm]:u32]`; unmarked counts are u64, `k = 0` means no
//! static search, text is a length and UTF-8 bytes. Decoding validates everything and never panics; sizes are checked against
//! the bytes present and the limits of [`crate::wire`] before anything is allocated
//! (`Malformed`, `TooLarge`).

use std::cmp::Ordering;
use std::collections::HashMap;

use ndarray::{Array2, ArrayView2};

use crate::error::{at_most, invalid, mismatch, NudgeError, Result};
use crate::exec::Hooks;
use crate::batch::check_batch;
use crate::knn::{check_query_parts, check_row_parts, row_norms2, Engine, Mode, NO_PARTITION};
use crate::wire::{
    check_dim, check_top_k, Reader, Writer, MAX_DIM, MAX_K, MAX_QUERIES, MAX_RECORDS,
};

const SPEC_MAGIC: &[u8; 4] = b"NDGS";
const PARTIAL_MAGIC: &[u8; 4] = b"NDGP";

/// What a shard needs for its part of a fit pass (from [`FitPass::shard_spec`](crate::FitPass::shard_spec)).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardSpec {
    /// Vector dimension.
    pub dim: usize,
    /// Size of the static top-k; None when nothing is evaluated (then `queries` has no rows).
    pub k: Option<usize>,
    /// The evaluated validation queries, `nq x dim`.
    pub queries: Array2<f32>,
    /// Moving keys, sorted ascending, unique.
    pub moving_keys: Vec<u64>,
    /// A partitioned pass: per query its partition id, an index into `partition_values`.
    pub query_parts: Option<Vec<u32>>,
    /// The partitions' values as the caller knows them (text), by id: a shard maps each row's
    /// value to its id with [`partition_ids`](Self::partition_ids) (a value not listed ranks
    /// for no query: [`NO_PARTITION`]). Empty unless partitioned.
    pub partition_values: Vec<String>,
}

/// The result of one shard (or a merge of several).
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    /// `k` of the spec (0: no static search, and `statics` is empty).
    pub k: usize,
    /// Per evaluated validation query, the best static `(score, key)`, best first, at most `k`.
    pub statics: Vec<Vec<(f32, u64)>>,
    /// The moving records seen, with their original vectors, sorted by key.
    pub moving: Vec<(u64, Vec<f32>)>,
    /// A partitioned pass: the partition id of each of `moving` (else empty).
    pub moving_parts: Vec<u32>,
    /// Corpus rows scanned.
    pub rows_seen: u64,
}

/// One shard's pass: create from the spec, push every local batch, finish.
pub struct ShardPass {
    spec: ShardSpec,
    engine: Option<Engine>,
    /// The moving records this shard holds: (position in `moving_keys`, original vector).
    /// Grows with the rows found, not with the spec's moving keys (most are on other shards).
    found: Vec<(usize, Vec<f32>, u32)>,
    seen: Vec<bool>,
    rows_seen: u64,
}

/// `(score, key)` order of the heaps: higher score first, then higher key.
fn best_first(a: &(f32, u64), b: &(f32, u64)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(b.1.cmp(&a.1))
}

fn dup_key(key: u64) -> NudgeError {
    invalid("keys", format!("key {key} appears more than once"))
}

impl ShardSpec {
    /// The spec's shape within the limits of a pushed-down pass (`TooLarge`), then its values.
    fn validate(&self) -> Result<()> {
        check_dim(self.dim)?;
        check_top_k(self.queries.nrows(), self.k.unwrap_or(0))?;
        at_most(
            "number of moving records of a pushed-down pass",
            self.moving_keys.len(),
            MAX_RECORDS,
        )?;
        if self.dim == 0 {
            return Err(invalid("spec", "dimension must be at least 1"));
        }
        if self.queries.ncols() != self.dim {
            return Err(mismatch(
                "spec query dimensions",
                self.dim,
                self.queries.ncols(),
            ));
        }
        match self.k {
            Some(0) => return Err(invalid("spec", "k must be at least 1")),
            Some(_) if self.queries.nrows() == 0 => {
                return Err(invalid("spec", "k is set but there are no queries"))
            }
            None if self.queries.nrows() > 0 => {
                return Err(invalid("spec", "queries are given without k"))
            }
            _ => {}
        }
        row_norms2(self.queries.view()).map_err(|i| NudgeError::NonFinite {
            what: "spec queries".into(),
            index: i,
        })?;
        if self.moving_keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(invalid(
                "spec",
                "moving keys must be sorted ascending and unique",
            ));
        }
        self.validate_partitions()
    }

    /// Values unique; query partitions (if any): one per query, each naming a listed value.
    fn validate_partitions(&self) -> Result<()> {
        let np = self.partition_values.len();
        at_most("number of partitions of a pushed-down pass", np, MAX_QUERIES)?;
        let mut v: Vec<&String> = self.partition_values.iter().collect();
        v.sort_unstable();
        if v.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("spec", "a partition value is listed twice"));
        }
        if let Some(qp) = &self.query_parts {
            check_query_parts(qp, self.queries.nrows())?;
            if qp.iter().any(|&p| p as usize >= np) {
                return Err(invalid("spec", "a query partition is not a listed value"));
            }
        }
        Ok(())
    }

    /// Partition value -> id, for a shard to map its rows' values ([`ShardPass::push_batch_in`]).
    pub fn partition_ids(&self) -> HashMap<&str, u32> {
        self.partition_values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_str(), i as u32))
            .collect()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(
            SPEC_MAGIC,
            8 * 4 + 4 * self.queries.len() + 8 * self.moving_keys.len(),
        );
        w.u64(self.dim as u64);
        w.u64(self.k.unwrap_or(0) as u64);
        w.u64(self.queries.nrows() as u64);
        w.u64(self.moving_keys.len() as u64);
        self.queries.iter().for_each(|&x| w.f32(x));
        self.moving_keys.iter().for_each(|&k| w.u64(k));
        w.u64(self.partition_values.len() as u64);
        self.partition_values.iter().for_each(|v| w.bytes(v.as_bytes()));
        w.u64(self.query_parts.is_some() as u64);
        if let Some(qp) = &self.query_parts {
            qp.iter().for_each(|&p| w.u32(p));
        }
        w.0
    }

    /// Decodes and validates [`to_bytes`](Self::to_bytes) output: `Malformed` if it is not a
    /// valid spec, `TooLarge` if a size is above a limit of [`crate::wire`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, SPEC_MAGIC, "shard spec")?;
        let dim = r.size()?;
        let k = r.size()?;
        let nq = r.size()?;
        let nm = r.size()?;
        check_dim(dim)?;
        check_top_k(nq, k)?;
        at_most(
            "number of moving records of a pushed-down pass",
            nm,
            MAX_RECORDS,
        )?;
        let nf = nq * dim; // at most 2^20 * 16000
        r.need(nf, 4)?;
        let q: Vec<f32> = (0..nf).map(|_| r.f32()).collect::<Result<_>>()?;
        r.need(nm, 8)?;
        let moving_keys = (0..nm).map(|_| r.u64()).collect::<Result<_>>()?;
        let np = r.count("number of partitions of a pushed-down pass", MAX_QUERIES, 8)?;
        let partition_values = (0..np).map(|_| r.text()).collect::<Result<_>>()?;
        let query_parts = if r.flag()? {
            r.need(nq, 4)?;
            Some((0..nq).map(|_| r.u32()).collect::<Result<_>>()?)
        } else {
            None
        };
        r.end()?;
        let spec = ShardSpec {
            dim,
            k: (k > 0).then_some(k),
            queries: Array2::from_shape_vec((nq, dim), q)
                .map_err(|_| r.malformed("query shape"))?,
            moving_keys,
            query_parts,
            partition_values,
        };
        spec.validate().map_err(|e| match e {
            NudgeError::TooLarge { .. } => e,
            e => r.malformed(e.to_string()),
        })?;
        Ok(spec)
    }
}

impl ShardPass {
    /// Checks the spec (sizes within the limits of [`crate::wire`]: `TooLarge`; then its
    /// values). What it allocates is proportional to the spec's own size.
    pub fn new(spec: ShardSpec) -> Result<Self> {
        spec.validate()?;
        let engine = spec.k.map(|k| {
            let mut e = Engine::new(spec.queries.clone(), k, Mode::Normalised);
            if let Some(qp) = &spec.query_parts {
                e.set_query_parts(qp.clone());
            }
            e
        });
        let n = spec.moving_keys.len();
        Ok(ShardPass {
            found: Vec::new(),
            seen: vec![false; n],
            engine,
            spec,
            rows_seen: 0,
        })
    }

    /// One local corpus batch; the same rules and errors as
    /// [`FitPass::push_batch`](crate::FitPass::push_batch).
    pub fn push_batch(
        &mut self,
        keys: &[u64],
        vectors: ArrayView2<f32>,
        hooks: &mut Hooks,
    ) -> Result<()> {
        self.push_batch_in(keys, vectors, None, hooks)
    }

    /// One local batch with its rows' partition ids (required when the spec is partitioned,
    /// refused otherwise; map values with [`ShardSpec::partition_ids`]).
    pub fn push_batch_in(
        &mut self,
        keys: &[u64],
        vectors: ArrayView2<f32>,
        parts: Option<&[u32]>,
        hooks: &mut Hooks,
    ) -> Result<()> {
        check_row_parts(parts, self.spec.query_parts.is_some(), keys.len())?;
        let (norms2, hits, skip) = check_batch(
            &self.spec.moving_keys,
            &self.seen,
            self.spec.dim,
            keys,
            vectors,
            hooks,
        )?;
        for &(row, p) in &hits {
            let part = parts.map_or(NO_PARTITION, |rp| rp[row]);
            self.found.push((p, vectors.row(row).to_vec(), part));
            self.seen[p] = true;
        }
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
            ),
            None => {
                hooks.report("scanning corpus", self.rows_seen, None);
                Ok(())
            }
        }
    }

    pub fn finish(self) -> Partial {
        let mut found = self.found;
        found.sort_unstable_by_key(|f| f.0);
        let keys = &self.spec.moving_keys;
        let moving_parts = match self.spec.query_parts {
            Some(_) => found.iter().map(|f| f.2).collect(),
            None => Vec::new(),
        };
        let moving = found.into_iter().map(|(p, v, _)| (keys[p], v)).collect();
        Partial {
            k: self.spec.k.unwrap_or(0),
            statics: self.engine.map(|e| e.sorted()).unwrap_or_default(),
            moving,
            moving_parts,
            rows_seen: self.rows_seen,
        }
    }
}

impl Partial {
    /// Combines two partials of the same spec: per query the best `k` of both lists, the union
    /// of the moving records. A key in both moving lists, or in both static lists of one query,
    /// is `InvalidParameter` ("key ... appears more than once").
    pub fn merge(self, other: Partial) -> Result<Partial> {
        if self.k != other.k {
            return Err(mismatch("partial result k", self.k, other.k));
        }
        if self.statics.len() != other.statics.len() {
            return Err(mismatch(
                "partial result validation queries",
                self.statics.len(),
                other.statics.len(),
            ));
        }
        let k = self.k;
        let statics = self
            .statics
            .into_iter()
            .zip(other.statics)
            .map(|(a, b)| {
                let mut keys: Vec<u64> = a.iter().chain(&b).map(|e| e.1).collect();
                keys.sort_unstable();
                if let Some(w) = keys.windows(2).find(|w| w[0] == w[1]) {
                    return Err(dup_key(w[0]));
                }
                let mut v = a;
                v.extend(b);
                v.sort_by(best_first);
                v.truncate(k);
                Ok(v)
            })
            .collect::<Result<_>>()?;
        let (moving, moving_parts) = merge_moving(
            (self.moving, self.moving_parts),
            (other.moving, other.moving_parts),
        )?;
        let rows_seen = self
            .rows_seen
            .checked_add(other.rows_seen)
            .ok_or_else(|| invalid("partial", "row count overflows"))?;
        Ok(Partial {
            k,
            statics,
            moving,
            moving_parts,
            rows_seen,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let cap = 8 * 4
            + self.statics.iter().map(|l| 8 + 12 * l.len()).sum::<usize>()
            + self
                .moving
                .iter()
                .map(|m| 16 + 4 * m.1.len())
                .sum::<usize>();
        let mut w = Writer::new(PARTIAL_MAGIC, cap);
        w.u64(self.k as u64);
        w.u64(self.rows_seen);
        w.u64(self.statics.len() as u64);
        for list in &self.statics {
            w.u64(list.len() as u64);
            for &(s, key) in list {
                w.f32(s);
                w.u64(key);
            }
        }
        w.u64(self.moving.len() as u64);
        for (key, v) in &self.moving {
            w.u64(*key);
            w.u64(v.len() as u64);
            v.iter().for_each(|&x| w.f32(x));
        }
        w.u64(!self.moving_parts.is_empty() as u64);
        self.moving_parts.iter().for_each(|&p| w.u32(p));
        w.0
    }

    /// Decodes [`to_bytes`](Self::to_bytes) output, checking the structure (static lists of at
    /// most `k`, best first, no NaN; moving keys ascending, finite vectors of one dimension):
    /// `Malformed` if it is not a valid partial, `TooLarge` if a size is above a limit of
    /// [`crate::wire`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, PARTIAL_MAGIC, "shard partial result")?;
        let k = r.size()?;
        at_most("k of a pushed-down top-k", k, MAX_K)?;
        let rows_seen = r.u64()?;
        let nq = r.size()?;
        check_top_k(nq, k)?;
        r.need(nq, 8)?;
        if k == 0 && nq > 0 {
            return Err(r.malformed("static lists without k"));
        }
        let mut statics = Vec::with_capacity(nq);
        for _ in 0..nq {
            let len = r.size()?;
            if len > k {
                return Err(r.malformed("a static list is longer than k"));
            }
            r.need(len, 12)?;
            let list: Vec<(f32, u64)> = (0..len)
                .map(|_| Ok((r.f32()?, r.u64()?)))
                .collect::<Result<_>>()?;
            if list.iter().any(|e| e.0.is_nan())
                || list
                    .windows(2)
                    .any(|w| best_first(&w[0], &w[1]) != Ordering::Less)
            {
                return Err(r.malformed("a static list is not sorted best first"));
            }
            statics.push(list);
        }
        let nm = r.count(
            "number of moving records of a pushed-down pass",
            MAX_RECORDS,
            16,
        )?;
        let mut moving: Vec<(u64, Vec<f32>)> = Vec::with_capacity(nm);
        for _ in 0..nm {
            let key = r.u64()?;
            let v = r.f32s("dimension of a moving vector", MAX_DIM)?;
            if v.is_empty() || moving.first().is_some_and(|m| m.1.len() != v.len()) {
                return Err(r.malformed("moving vectors of different or zero dimensions"));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(r.malformed("a moving vector is not finite"));
            }
            if moving.last().is_some_and(|m| m.0 >= key) {
                return Err(r.malformed("moving keys are not sorted ascending"));
            }
            moving.push((key, v));
        }
        let moving_parts = if r.flag()? {
            if nm == 0 {
                return Err(r.malformed("partitions without moving records"));
            }
            r.need(nm, 4)?;
            (0..nm).map(|_| r.u32()).collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        r.end()?;
        Ok(Partial {
            k,
            statics,
            moving,
            moving_parts,
            rows_seen,
        })
    }
}

/// The union of two partials' moving records (and partitions, when both have them or
/// neither has moving records), sorted by key; a key in both is an error.
type Moving = (Vec<(u64, Vec<f32>)>, Vec<u32>);
fn merge_moving(a: Moving, b: Moving) -> Result<Moving> {
    let parted = |m: &Moving| !m.1.is_empty();
    if !a.0.is_empty() && !b.0.is_empty() && parted(&a) != parted(&b) {
        return Err(invalid("partial", "only one side has moving records' partitions"));
    }
    let with_parts = parted(&a) || parted(&b);
    let tag = |m: Moving| -> Vec<((u64, Vec<f32>), u32)> {
        let parts = m.1;
        m.0.into_iter()
            .enumerate()
            .map(|(i, x)| (x, parts.get(i).copied().unwrap_or(NO_PARTITION)))
            .collect()
    };
    let mut all = tag(a);
    all.extend(tag(b));
    all.sort_by_key(|m| m.0 .0);
    if let Some(w) = all.windows(2).find(|w| w[0].0 .0 == w[1].0 .0) {
        return Err(dup_key(w[0].0 .0));
    }
    let (moving, parts): (Vec<_>, Vec<_>) = all.into_iter().unzip();
    Ok((moving, if with_parts { parts } else { Vec::new() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gamma::{FitConfig, FitOutcome, FitPass, Selection};
    use crate::gradient::{gradients, Qrel};
    use crate::metrics::Metric;
    use crate::nudge::{Method, NegativeRule};
    use crate::testutil::Rng;
    use ndarray::Axis;

    /// Records, queries near their relevant (labelled) records, a train/validation split; the
    /// first `n_lab` rows are labelled (keys `0..n_lab`), the rest have keys `n_lab + row`.
    struct Data {
        corpus: Array2<f32>,
        queries: Array2<f32>,
        qrels: Vec<Qrel>,
        train: Vec<usize>,
        val: Vec<usize>,
        n_lab: usize,
    }

    fn make_data(seed: u64, n: usize, dim: usize, nq: usize) -> Data {
        let mut rng = Rng::new(seed);
        let mut corpus = rng.matrix(n, dim);
        for mut r in corpus.outer_iter_mut() {
            let f = 1.25 + 0.75 * rng.unif();
            r.iter_mut().for_each(|x| *x *= f);
        }
        let n_lab = n / 3;
        let mut queries = Array2::<f32>::zeros((nq, dim));
        let mut qrels = Vec::new();
        for qi in 0..nq {
            for _ in 0..1 + rng.below(3) {
                let r = rng.below(n_lab);
                let grade = 1.0 + rng.below(2) as f64;
                qrels.push(Qrel {
                    query: qi as u32,
                    record: r as u64,
                    grade,
                });
                let mut row = queries.row_mut(qi);
                row += &corpus.row(r);
            }
            queries
                .row_mut(qi)
                .iter_mut()
                .for_each(|x| *x += 0.9 * rng.unif());
        }
        let perm = crate::split::permutation(nq, seed as u32);
        let nv = nq / 3;
        Data {
            corpus,
            queries,
            qrels,
            train: perm[nv..].to_vec(),
            val: perm[..nv].to_vec(),
            n_lab,
        }
    }

    fn new_pass(d: &Data, cfg: FitConfig, with_val: bool) -> FitPass {
        let ms = gradients(d.queries.view(), &d.qrels, &d.train, d.n_lab as u64).unwrap();
        let val: &[usize] = if with_val { &d.val } else { &[] };
        let vq = d.queries.select(Axis(0), val);
        let vr = val
            .iter()
            .enumerate()
            .flat_map(|(i, &q)| {
                d.qrels
                    .iter()
                    .filter(move |r| r.query as usize == q)
                    .map(move |r| Qrel {
                        query: i as u32,
                        ..*r
                    })
            })
            .collect();
        FitPass::new(ms, vq, vr, cfg).unwrap()
    }

    fn single(d: &Data, cfg: FitConfig, with_val: bool) -> FitOutcome {
        let mut fp = new_pass(d, cfg, with_val);
        let keys: Vec<u64> = (0..d.corpus.nrows() as u64).collect();
        for (k, v) in keys.chunks(97).zip(d.corpus.axis_chunks_iter(Axis(0), 97)) {
            fp.push_batch(k, v, &mut Hooks::noop()).unwrap();
        }
        fp.finish(&mut Hooks::noop()).unwrap()
    }

    /// Rows dealt at random to `n_shards` shards; each shard renumbers its unlabelled rows in its
    /// own range when `renumber`. Returns every shard's partial, through bytes.
    fn shard_partials(
        d: &Data,
        spec: &ShardSpec,
        n_shards: usize,
        renumber: bool,
        rng: &mut Rng,
    ) -> Vec<Partial> {
        let spec = ShardSpec::from_bytes(&spec.to_bytes()).unwrap();
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); n_shards];
        for r in 0..d.corpus.nrows() {
            rows[rng.below(n_shards)].push(r);
        }
        rows.iter_mut().for_each(|v| {
            for i in (1..v.len()).rev() {
                v.swap(i, rng.below(i + 1));
            }
        });
        rows.iter()
            .enumerate()
            .map(|(s, rows)| {
                let keys: Vec<u64> = rows
                    .iter()
                    .enumerate()
                    .map(|(i, &r)| match r < d.n_lab || !renumber {
                        true => r as u64,
                        false => d.n_lab as u64 + ((s as u64) << 32) + i as u64,
                    })
                    .collect();
                let v = d.corpus.select(Axis(0), rows);
                let mut sp = ShardPass::new(spec.clone()).unwrap();
                let b = 1 + rng.below(200);
                for (k, v) in keys.chunks(b).zip(v.axis_chunks_iter(Axis(0), b)) {
                    sp.push_batch(k, v, &mut Hooks::noop()).unwrap();
                }
                Partial::from_bytes(&sp.finish().to_bytes()).unwrap()
            })
            .collect()
    }

    /// Three merge orders: left fold, right fold, a random pairwise tree (through bytes).
    fn merges(parts: &[Partial], rng: &mut Rng) -> Vec<Partial> {
        let left = parts[1..]
            .iter()
            .fold(parts[0].clone(), |a, p| a.merge(p.clone()).unwrap());
        let right = parts[..parts.len() - 1]
            .iter()
            .rev()
            .fold(parts[parts.len() - 1].clone(), |a, p| {
                p.clone().merge(a).unwrap()
            });
        let mut level = parts.to_vec();
        while level.len() > 1 {
            let i = rng.below(level.len() - 1);
            let (a, b) = (level.remove(i), level.remove(i));
            let m = if rng.below(2) == 0 {
                a.merge(b)
            } else {
                b.merge(a)
            };
            level.insert(i, Partial::from_bytes(&m.unwrap().to_bytes()).unwrap());
        }
        vec![left, right, level.pop().unwrap()]
    }

    fn assert_same(a: &FitOutcome, b: &FitOutcome) {
        assert_eq!(a.gamma, b.gamma);
        assert_eq!(a.changed, b.changed);
        assert_eq!(a.keys, b.keys);
        assert_eq!(a.original, b.original);
        assert_eq!(a.metric, b.metric);
        assert!(a
            .vectors
            .iter()
            .zip(&b.vectors)
            .all(|(x, y)| (x - y).abs() <= 1e-6));
        let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9,
            (x, y) => x == y,
        };
        assert!(close(a.validation_before, b.validation_before));
        assert!(close(a.validation_after, b.validation_after));
        assert_eq!(a.curve.len(), b.curve.len());
        for (x, y) in a.curve.iter().zip(&b.curve) {
            assert_eq!(x.0, y.0);
            assert!((x.1 - y.1).abs() <= 1e-9);
        }
    }

    #[test]
    fn sharded_pass_equals_single_pass() {
        let sels = [
            Selection::Best(Metric::Ndcg(10)),
            Selection::Parity,
            Selection::Fixed(0.3),
        ];
        let mut rng = Rng::new(7);
        for seed in [1, 2, 3] {
            let d = make_data(seed, 900, 12, 150);
            for method in [Method::NudgeN, Method::NudgeM] {
                for sel in sels {
                    let cfg = FitConfig::new(method, sel);
                    let want = single(&d, cfg, true);
                    let spec = new_pass(&d, cfg, true).shard_spec();
                    for n_shards in [1, 2, 5] {
                        let renumber = n_shards > 1;
                        let parts = shard_partials(&d, &spec, n_shards, renumber, &mut rng);
                        for merged in merges(&parts, &mut rng) {
                            let mut fp = new_pass(&d, cfg, true);
                            fp.push_partial(merged).unwrap();
                            assert_eq!(fp.rows_seen(), d.corpus.nrows() as u64);
                            assert_same(&fp.finish(&mut Hooks::noop()).unwrap(), &want);
                        }
                        // partials pushed one by one, without merging
                        let mut fp = new_pass(&d, cfg, true);
                        parts.into_iter().for_each(|p| fp.push_partial(p).unwrap());
                        assert_same(&fp.finish(&mut Hooks::noop()).unwrap(), &want);
                    }
                }
            }
        }
    }

    #[test]
    fn validation_relevant_records_are_moving_and_static() {
        // the data of the test above: validation queries judge both kinds of records
        let d = make_data(1, 900, 12, 150);
        let fp = new_pass(&d, FitConfig::new(Method::NudgeN, Selection::Parity), true);
        let spec = fp.shard_spec();
        let rel: Vec<u64> = d
            .qrels
            .iter()
            .filter(|r| d.val.contains(&(r.query as usize)))
            .map(|r| r.record)
            .collect();
        assert!(rel
            .iter()
            .any(|k| spec.moving_keys.binary_search(k).is_ok()));
        assert!(rel
            .iter()
            .any(|k| spec.moving_keys.binary_search(k).is_err()));
        assert_eq!(spec.k, Some(1));
        assert_eq!(spec.queries.nrows(), fp.n_validation_queries());
    }

    #[test]
    fn fixed_without_validation_has_no_statics() {
        let d = make_data(4, 300, 6, 60);
        let cfg = FitConfig {
            method: Method::NudgeN,
            selection: Selection::Fixed(0.5),
            negative_rule: NegativeRule::Move,
        };
        let want = single(&d, cfg, false);
        let spec = new_pass(&d, cfg, false).shard_spec();
        assert_eq!((spec.k, spec.queries.dim()), (None, (0, 6)));
        let mut rng = Rng::new(5);
        let parts = shard_partials(&d, &spec, 3, true, &mut rng);
        assert!(parts.iter().all(|p| p.k == 0 && p.statics.is_empty()));
        let mut fp = new_pass(&d, cfg, false);
        fp.push_partial(merges(&parts, &mut rng).pop().unwrap())
            .unwrap();
        assert_same(&fp.finish(&mut Hooks::noop()).unwrap(), &want);
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let d = make_data(2, 200, 5, 45);
        let cfg = FitConfig::new(Method::NudgeM, Selection::Best(Metric::Ndcg(10)));
        let spec = new_pass(&d, cfg, true).shard_spec();
        let mut rng = Rng::new(3);
        let part = shard_partials(&d, &spec, 2, false, &mut rng).pop().unwrap();
        let pb = part.to_bytes();
        let sb = spec.to_bytes();
        assert_eq!(Partial::from_bytes(&pb).unwrap(), part);
        assert_eq!(ShardSpec::from_bytes(&sb).unwrap(), spec);
        let bad = |r: Result<()>| {
            assert!(
                matches!(
                    r,
                    Err(NudgeError::Malformed { .. } | NudgeError::TooLarge { .. })
                ),
                "{r:?}"
            )
        };
        for n in 0..pb.len() {
            bad(Partial::from_bytes(&pb[..n]).map(|_| ()));
        }
        for n in 0..sb.len() {
            bad(ShardSpec::from_bytes(&sb[..n]).map(|_| ()));
        }
        let mut longer = pb.clone();
        longer.push(0);
        bad(Partial::from_bytes(&longer).map(|_| ()));
        for (i, x) in [(0usize, b'X'), (4, 1), (4, 3)] {
            let mut b = pb.clone();
            b[i] = x;
            bad(Partial::from_bytes(&b).map(|_| ()));
        }
        // a huge count must not allocate or panic
        let mut b = pb[..5].to_vec();
        b.extend_from_slice(&10u64.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        bad(Partial::from_bytes(&b).map(|_| ()));
        // random garbage and random corruptions: errors or valid values, never panics
        for _ in 0..2000 {
            let mut b = if rng.below(2) == 0 {
                pb.clone()
            } else {
                sb.clone()
            };
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                b[i] = rng.next() as u8;
            }
            let _ = Partial::from_bytes(&b);
            let _ = ShardSpec::from_bytes(&b);
            let g: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
            bad(Partial::from_bytes(&g).map(|_| ()));
            bad(ShardSpec::from_bytes(&g).map(|_| ()));
        }
        // unsorted static list
        let mut p = part.clone();
        let l = p.statics.iter_mut().find(|l| l.len() >= 2).unwrap();
        l.swap(0, 1);
        bad(Partial::from_bytes(&p.to_bytes()).map(|_| ()));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let d = make_data(3, 300, 6, 60);
        let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
        let spec = new_pass(&d, cfg, true).shard_spec();
        let dup = |r: Result<()>, key: u64| {
            assert_eq!(
                r,
                Err(NudgeError::InvalidParameter {
                    name: "keys",
                    message: format!("key {key} appears more than once")
                })
            )
        };
        let mk = spec.moving_keys[0];
        let row = d
            .corpus
            .slice(ndarray::s![mk as usize..mk as usize + 1, ..]);
        let mut h = Hooks::noop();
        // within one shard: a repeated key in a batch, a moving key in two batches
        let mut sp = ShardPass::new(spec.clone()).unwrap();
        dup(
            sp.push_batch(&[250, 250], d.corpus.slice(ndarray::s![..2, ..]), &mut h),
            250,
        );
        sp.push_batch(&[mk], row, &mut h).unwrap();
        dup(sp.push_batch(&[mk], row, &mut h), mk);
        // bad vectors, as in FitPass
        let mut sp2 = ShardPass::new(spec.clone()).unwrap();
        assert!(matches!(
            sp2.push_batch(&[mk], Array2::zeros((1, 6)).view(), &mut h),
            Err(NudgeError::ZeroVector { index: 0, .. })
        ));
        let mut nan = d.corpus.slice(ndarray::s![..2, ..]).to_owned();
        nan[[1, 3]] = f32::NAN;
        assert!(matches!(
            sp2.push_batch(&[280, 281], nan.view(), &mut h),
            Err(NudgeError::NonFinite { index: 1, .. })
        ));
        let a = sp.finish();
        // the same moving record on two shards
        let mut sp2 = ShardPass::new(spec.clone()).unwrap();
        sp2.push_batch(&[mk], row, &mut h).unwrap();
        let b = sp2.finish();
        dup(a.clone().merge(b.clone()).map(|_| ()), mk);
        let mut fp = new_pass(&d, cfg, true);
        fp.push_partial(a.clone()).unwrap();
        dup(fp.push_partial(b), mk);
        // ... or already pushed as a row
        let mut fp = new_pass(&d, cfg, true);
        fp.push_batch(&[mk], row, &mut h).unwrap();
        dup(fp.push_partial(a), mk);
        // the same static key on two shards
        let sk = 299u64;
        let srow = d.corpus.slice(ndarray::s![299..300, ..]);
        let part = || {
            let mut sp = ShardPass::new(spec.clone()).unwrap();
            sp.push_batch(&[sk], srow, &mut Hooks::noop()).unwrap();
            sp.finish()
        };
        dup(part().merge(part()).map(|_| ()), sk);
        // a moving key sent as static, a foreign moving key, a zero moving vector
        let mut fp = new_pass(&d, cfg, true);
        let mut p = part();
        p.statics[0][0].1 = mk;
        assert!(matches!(
            fp.push_partial(p),
            Err(NudgeError::InvalidParameter { .. })
        ));
        let mut p = part();
        p.moving.push((sk, vec![1.0; 6]));
        assert!(matches!(
            fp.push_partial(p),
            Err(NudgeError::InvalidParameter { .. })
        ));
        let mut p = part();
        p.moving.push((mk, vec![0.0; 6]));
        assert!(matches!(
            fp.push_partial(p),
            Err(NudgeError::ZeroVector { .. })
        ));
        assert_eq!(fp.rows_seen(), 0);
    }

    #[test]
    fn scores_do_not_depend_on_batching_or_threads() {
        let mut rng = Rng::new(11);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (nq, dim) in [(40, 12), (3, 12), (1, 12), (2, 700), (5, 1), (5, 2)] {
            let spec = ShardSpec {
                dim,
                k: Some(600),
                queries: rng.matrix(nq, dim),
                moving_keys: vec![],
                query_parts: None,
                partition_values: Vec::new(),
            };
            let d = rng.matrix(600, dim);
            let dt = d.t().to_owned(); // column-major views of the same rows
            let keys: Vec<u64> = (0..600).collect();
            let run = |v: ArrayView2<f32>, b: usize, h: &mut Hooks| {
                let mut sp = ShardPass::new(spec.clone()).unwrap();
                for (k, v) in keys.chunks(b).zip(v.axis_chunks_iter(Axis(0), b)) {
                    sp.push_batch(k, v, h).unwrap();
                }
                sp.finish().statics
            };
            let want = run(d.view(), 600, &mut Hooks::noop());
            for b in [1, 5, 64, 300] {
                assert_eq!(run(d.view(), b, &mut Hooks::noop()), want, "{nq} {dim} {b}");
                assert_eq!(
                    run(dt.t(), b, &mut Hooks::noop_on(&pool)),
                    want,
                    "{nq} {dim} {b}"
                );
            }
        }
    }
}
