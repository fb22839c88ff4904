//! Phase 3 of a fit: labelled queries read and split into training and validation queries,
//! and the records the training labels move (their summed queries, G).

use std::collections::HashMap;

use ndarray::Array2;
use nudge_core::gradient::{MovingSet, Qrel};

use super::config::{FitArgs, Split};
use super::partition::Partitions;
use crate::columns;
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};
use crate::read::{self, Vectors};

/// Queries of one role (train or validation) and their labels over record keys.
pub struct QuerySet {
    pub vectors: Array2<f32>,
    pub qrels: Vec<Qrel>,
    /// Query ids and (with `partition =>`) partition values, by row.
    pub ids: Vec<String>,
    pub parts: Vec<String>,
}

impl QuerySet {
    fn of(mut v: Vectors, qrels: Vec<Qrel>) -> QuerySet {
        let (ids, parts) = (v.ids.clone(), std::mem::take(&mut v.parts));
        QuerySet { vectors: v.into_array(), qrels, ids, parts }
    }
}

/// The labelled side of a fit.
pub struct Labels {
    pub train: QuerySet,
    /// Only queries with at least one relevant label.
    pub validation: QuerySet,
    /// Record key of every labelled doc id: keys `0..keys.len()`; unlabelled corpus rows get
    /// keys from `keys.len()` on, in scan order.
    pub keys: HashMap<String, u64>,
    pub dim: usize,
    /// With `partition =>`: the partitions, numbered by the queries' values.
    pub partitions: Option<Partitions>,
}

impl Labels {
    pub fn n_labelled(&self) -> u64 {
        self.keys.len() as u64
    }
}

/// Read queries and labels; split them (the given validation tables, or a seeded fraction).
pub fn read_and_split(a: &FitArgs, split: Split, validation_required: bool) -> Labels {
    let queries_rel = columns::relation(a.queries);
    let qrels_rel = columns::relation(a.qrels);
    let (queries_sql, qrels_sql) = (queries_rel.sql.clone(), qrels_rel.sql.clone());
    let mut dim = 0usize;
    let q_all = read::read_queries_in(&queries_rel, &mut dim, a.partition);
    let labels = read::read_qrels(&qrels_rel);
    let mut keys: HashMap<String, u64> = HashMap::new();
    let (train, validation) = match (a.validation, split) {
        (Some((vq, vr)), _) => {
            let (vq_rel, vr_rel) = (columns::relation(vq), columns::relation(vr));
            let (vq_sql, vr_sql) = (vq_rel.sql.clone(), vr_rel.sql.clone());
            let q_val = read::read_queries_in(&vq_rel, &mut dim, a.partition);
            let val_labels = read::read_qrels(&vr_rel);
            let train_index = index_ids(q_all.ids.iter(), &queries_sql);
            let train_qrels = read::qrels_for(&labels, &train_index, &mut keys, &qrels_sql, &queries_sql);
            let val_index = index_ids(q_val.ids.iter(), &vq_sql);
            let val_qrels = read::qrels_for(&val_labels, &val_index, &mut keys, &vr_sql, &vq_sql);
            (QuerySet::of(q_all, train_qrels), QuerySet::of(q_val, val_qrels))
        }
        (None, Split::Folds(_)) => {
            // k-fold: every query trains and validates (the core deals them into folds)
            let all_index = index_ids(q_all.ids.iter(), &queries_sql);
            let all_qrels = read::qrels_for(&labels, &all_index, &mut keys, &qrels_sql, &queries_sql);
            let dim = q_all.dim;
            (
                QuerySet::of(q_all, all_qrels),
                QuerySet { vectors: Array2::zeros((0, dim)), qrels: Vec::new(), ids: Vec::new(), parts: Vec::new() },
            )
        }
        (None, Split::Fraction(f)) => seeded_split(a, f, q_all, &labels, &mut keys, &queries_sql, &qrels_sql),
        (None, Split::Tables) => unreachable!("validation tables without tables"),
    };
    let validation = only_judged(validation);
    if validation.vectors.nrows() == 0 && validation_required {
        raise_with(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "no validation query has a relevant record",
            None,
            Some("Choosing gamma needs labelled validation queries; give more queries, a larger validation_fraction, or a fixed gamma.".into()),
        );
    }
    if !train.qrels.iter().any(|q| q.grade > 0.0) {
        raise_with(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "no training query has a relevant record",
            Some(format!("{} training queries, {} labels", train.vectors.nrows(), train.qrels.len())),
            Some("Check that qrels.query_id matches queries.id and that scores are > 0.".into()),
        );
    }
    let partitions = a.partition.map(|p| Partitions::new(a.corpus, p, &[&train.parts, &validation.parts]));
    Labels { train, validation, keys, dim, partitions }
}

/// The seeded split of one queries table: `validation_fraction` of the queries (numpy's
/// permutation with `seed`) validate, the rest train.
fn seeded_split(
    a: &FitArgs,
    fraction: f64,
    q_all: Vectors,
    labels: &[read::Label],
    keys: &mut HashMap<String, u64>,
    queries_sql: &str,
    qrels_sql: &str,
) -> (QuerySet, QuerySet) {
    let all_index = index_ids(q_all.ids.iter(), queries_sql);
    if q_all.len() < 2 {
        raise(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{queries_sql} has {} queries; a seeded split needs at least 2", q_all.len()),
        );
    }
    let (tr, va) = nudge_core::split::split(q_all.len(), fraction, a.seed as u32).or_raise();
    // position of each original row within its part
    let mut part = vec![(false, 0u32); q_all.len()];
    for (i, &r) in tr.iter().enumerate() {
        part[r] = (true, i as u32);
    }
    for (i, &r) in va.iter().enumerate() {
        part[r] = (false, i as u32);
    }
    let all_qrels = read::qrels_for(labels, &all_index, keys, qrels_sql, queries_sql);
    let (mut tq, mut vq) = (Vec::new(), Vec::new());
    for q in all_qrels {
        let (is_train, pos) = part[q.query as usize];
        let q = Qrel { query: pos, ..q };
        if is_train { tq.push(q) } else { vq.push(q) }
    }
    (select_rows(&q_all, &tr, tq), select_rows(&q_all, &va, vq))
}

/// Training and validation queries as one set (validation rows after the training rows), its
/// labels, and the validation rows: for a held-out choice of gamma with the update from all.
pub fn train_then_validation(labels: &Labels) -> (Array2<f32>, Vec<Qrel>, Vec<usize>) {
    // (partitions of these rows: `labels.train.parts` then `labels.validation.parts`)
    let (t, v) = (&labels.train, &labels.validation);
    let n_train = t.vectors.nrows();
    let queries = ndarray::concatenate(ndarray::Axis(0), &[t.vectors.view(), v.vectors.view()]).expect("same dimension");
    let qrels = t.qrels.iter().copied().chain(v.qrels.iter().map(|q| Qrel { query: q.query + n_train as u32, ..*q })).collect();
    (queries, qrels, (n_train..n_train + v.vectors.nrows()).collect())
}

/// The partition ids of the rows of `sets` (concatenated), with `partition =>`.
pub fn partition_ids(labels: &Labels, sets: &[&QuerySet]) -> Option<Vec<u32>> {
    let p = labels.partitions.as_ref()?;
    Some(sets.iter().flat_map(|s| p.ids(&s.parts)).collect())
}

/// The number of queries some label names (the queries k folds deal).
pub fn labelled_queries(labels: &Labels) -> usize {
    let mut named: Vec<u32> = labels.train.qrels.iter().map(|q| q.query).collect();
    named.sort_unstable();
    named.dedup();
    named.len()
}

/// The records the training labels move, with G (the sum of their relevant training queries).
pub fn moving_set(labels: &Labels) -> MovingSet {
    let train = &labels.train;
    let rows: Vec<usize> = (0..train.vectors.nrows()).collect();
    nudge_core::gradient::gradients(train.vectors.view(), &train.qrels, &rows, labels.n_labelled()).or_raise()
}

fn index_ids<'a>(ids: impl Iterator<Item = &'a String>, rel_sql: &str) -> HashMap<&'a str, u32> {
    let mut map = HashMap::new();
    for (i, id) in ids.enumerate() {
        if map.insert(id.as_str(), i as u32).is_some() {
            raise(Code::ERRCODE_UNIQUE_VIOLATION, format!("query id {id:?} appears more than once in {rel_sql}"));
        }
    }
    map
}

fn select_rows(v: &Vectors, rows: &[usize], qrels: Vec<Qrel>) -> QuerySet {
    let mut out = Array2::<f32>::zeros((rows.len(), v.dim));
    for (i, &r) in rows.iter().enumerate() {
        out.row_mut(i).assign(&ndarray::ArrayView1::from(v.row(r)));
    }
    QuerySet { vectors: out, qrels, ids: pick(&v.ids, rows), parts: pick(&v.parts, rows) }
}

/// `v[rows]` (empty stays empty).
fn pick(v: &[String], rows: &[usize]) -> Vec<String> {
    if v.is_empty() {
        return Vec::new();
    }
    rows.iter().map(|&r| v[r].clone()).collect()
}

/// Keep only validation queries with at least one relevant label; renumber them.
fn only_judged(set: QuerySet) -> QuerySet {
    let n = set.vectors.nrows();
    let mut has = vec![false; n];
    for q in &set.qrels {
        if q.grade > 0.0 {
            has[q.query as usize] = true;
        }
    }
    if has.iter().all(|h| *h) {
        return set;
    }
    let keep: Vec<usize> = (0..n).filter(|&i| has[i]).collect();
    let mut renum = vec![u32::MAX; n];
    for (new, &old) in keep.iter().enumerate() {
        renum[old] = new as u32;
    }
    let vectors = set.vectors.select(ndarray::Axis(0), &keep);
    let (ids, parts) = (pick(&set.ids, &keep), pick(&set.parts, &keep));
    let qrels = set
        .qrels
        .into_iter()
        .filter(|q| renum[q.query as usize] != u32::MAX)
        .map(|q| Qrel { query: renum[q.query as usize], ..q })
        .collect();
    QuerySet { vectors, qrels, ids, parts }
}
