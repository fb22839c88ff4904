//! nudge_evaluate: exact k-NN of labelled queries over the stored vectors, scored with
//! trec_eval's definitions (NDCG@k, recall@k, capped recall@k, MRR@k).
//!
//! The corpus is streamed once in batches through the core's fused GEMM + top-k; no
//! index is used, so the numbers are those of exact search. Queries without a relevant
//! label are skipped, as trec_eval does.
//!
//! Phases: arguments -> corpus columns -> judged queries -> k-NN pass (local, or on the shards
//! of a Citus distributed table) -> metrics.

use std::collections::HashMap;
use std::str::FromStr;

use ndarray::Array2;
use nudge_core::knn::{Distance, TopK};
use nudge_core::wire::TopKPartitions;
use pgrx::prelude::*;
use crate::columns::RegClass;

use crate::citus::Placement;
use crate::columns::{self, Column, VecKind};
use crate::shard::TopKRequest;
use crate::ties::TieKeys;
use pgrx::spi::quote_literal;
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};
use crate::exec::{self, Reporter};
use crate::fit::partition::Partitions;
use crate::read::{self, push_embedding};

type EvalRow = (
    name!(queries, i64),
    name!(ndcg, f64),
    name!(recall, f64),
    name!(capped_recall, f64),
    name!(mrr, f64),
);

/// Score exact k-NN retrieval of `queries` over `corpus` against the labels in `qrels`; with
/// `partition`, every query ranks only the rows with its value of that column.
/// (The SQL function `nudge_evaluate`; its C symbol is this signature's own, so that a catalog
/// of an earlier version reaches [`nudge_evaluate`] below.)
#[allow(clippy::too_many_arguments)]
#[pg_extern(name = "nudge_evaluate", stable, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn nudge_evaluate_0_2(
    corpus: Option<RegClass>,
    embedding: Option<&str>,
    queries: Option<RegClass>,
    qrels: Option<RegClass>,
    k: default!(Option<i32>, 10),
    id_column: default!(Option<&str>, "'id'"),
    distance: default!(Option<&str>, "'cosine'"),
    partition: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(queries, i64),
        name!(ndcg, f64),
        name!(recall, f64),
        name!(capped_recall, f64),
        name!(mrr, f64),
    ),
> {
    // (NULL in any argument but partition: no row, as a STRICT function answers)
    let (Some(c), Some(e), Some(q), Some(r), Some(k), Some(id), Some(d)) = (corpus, embedding, queries, qrels, k, id_column, distance) else {
        return TableIterator::new(Vec::new());
    };
    TableIterator::once(evaluate(c.0, e, q.0, r.0, k, id, d, partition))
}

/// The entry point of 0.1.0's `nudge_evaluate` (STRICT, 7 arguments): evaluates as it did
/// until `ALTER EXTENSION nudge UPDATE` (it reads no catalog).
#[pg_extern(sql = false)]
#[search_path(pg_catalog, pg_temp)]
fn nudge_evaluate(corpus: RegClass, embedding: &str, queries: RegClass, qrels: RegClass, k: i32, id_column: &str, distance: &str) -> TableIterator<
    'static,
    (
        name!(queries, i64),
        name!(ndcg, f64),
        name!(recall, f64),
        name!(capped_recall, f64),
        name!(mrr, f64),
    ),
> {
    TableIterator::once(evaluate(corpus.0, embedding, queries.0, qrels.0, k, id_column, distance, None))
}

#[allow(clippy::too_many_arguments)]
fn evaluate(
    corpus: pg_sys::Oid,
    embedding: &str,
    queries: pg_sys::Oid,
    qrels: pg_sys::Oid,
    k: i32,
    id_column: &str,
    distance: &str,
    partition: Option<&str>,
) -> EvalRow {
    let (k, dist) = check_args(k, distance);
    let mut reporter = Reporter::new("nudge_evaluate");
    let corpus = Corpus::resolve(corpus, id_column, embedding);
    let judged = read_judged(corpus.oid, queries, qrels, partition);
    let runs = knn(&corpus, &judged, k, dist, None, &mut reporter);
    score(&runs, &judged, k)
}

/// Vectors to score in place of what some rows hold (by id): a candidate not written yet.
pub(crate) type Overrides = HashMap<String, Vec<f32>>;

/// The top-k (key, score) of every judged query, best first: on the workers of a Citus
/// distributed table (partitioned or not), else (and always with `overrides`) read here.
pub(crate) fn knn(corpus: &Corpus, judged: &Judged, k: usize, dist: Distance, overrides: Option<&Overrides>, reporter: &mut Reporter) -> Vec<Vec<(u64, f32)>> {
    match (crate::citus::placement(corpus.oid, &corpus.id), overrides) {
        (Placement::Citus { pushdown: true, .. }, None) => knn_shards(corpus, judged, k, dist, reporter),
        _ => knn_local(corpus, judged, k, dist, overrides, reporter),
    }
}

fn check_args(k: i32, distance: &str) -> (usize, Distance) {
    if k < 1 {
        raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("k must be at least 1, not {k}"));
    }
    let dist = Distance::from_str(&distance.to_ascii_lowercase()).unwrap_or_else(|_| {
        raise_with(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("unknown distance \"{distance}\""),
            None,
            Some("Use 'cosine' (<=>), 'inner_product' (<#>) or 'l2' (<->).".into()),
        )
    });
    (k as usize, dist)
}

/// The corpus and its id and embedding columns.
pub(crate) struct Corpus {
    oid: pg_sys::Oid,
    sql: String,
    id: Column,
    emb: Column,
    pub kind: VecKind,
}

impl Corpus {
    pub fn resolve(oid: pg_sys::Oid, id_column: &str, embedding: &str) -> Corpus {
        let rel = columns::relation(oid);
        let id = rel.column(id_column, "the id column that qrels.doc_id refers to");
        let (emb, kind) = rel.vector_column(embedding, "an embedding column");
        Corpus { oid, sql: rel.sql, id, emb, kind }
    }
}

/// Queries with at least one relevant label, their relevant (key, grade) lists, and the key
/// of every judged doc id (tie keys: src/ties.rs).
pub(crate) struct Judged {
    vectors: Array2<f32>,
    relevant: Vec<Vec<(u64, f64)>>,
    keys: HashMap<String, u64>,
    ties: TieKeys,
    /// With `partition =>`: the partitions, each judged query's, and the labels to check.
    partitions: Option<Partitions>,
    query_parts: Vec<u32>,
    labels: Vec<LabelPart>,
}

/// A label of a partitioned evaluation: (query id, its partition value, doc id).
type LabelPart = (String, String, String);

pub(crate) fn read_judged(corpus: pg_sys::Oid, queries: pg_sys::Oid, qrels: pg_sys::Oid, partition: Option<&str>) -> Judged {
    let (queries_rel, qrels_rel) = (columns::relation(queries), columns::relation(qrels));
    let (queries_sql, qrels_sql) = (queries_rel.sql.clone(), qrels_rel.sql.clone());
    let mut dim = 0usize;
    let q = read::read_queries_in(&queries_rel, &mut dim, partition);
    let labels = read::read_qrels(&qrels_rel);
    let mut index = HashMap::new();
    for (i, qid) in q.ids.iter().enumerate() {
        if index.insert(qid.as_str(), i as u32).is_some() {
            raise(Code::ERRCODE_UNIQUE_VIOLATION, format!("query id {qid:?} appears more than once in {queries_sql}"));
        }
    }
    let mut keys: HashMap<String, u64> = HashMap::new();
    let qrels = read::qrels_for(&labels, &index, &mut keys, &qrels_sql, &queries_sql);
    let (ties, tie_key) = TieKeys::renumber(&mut keys);
    // relevant (key, grade) lists per query
    let mut relevant: Vec<Vec<(u64, f64)>> = vec![Vec::new(); q.len()];
    for r in &qrels {
        relevant[r.query as usize].push((tie_key[r.record as usize], r.grade));
    }
    let judged: Vec<usize> = (0..q.len()).filter(|&i| relevant[i].iter().any(|(_, g)| *g > 0.0)).collect();
    if judged.is_empty() {
        raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("no query in {queries_sql} has a relevant record in {qrels_sql}"));
    }
    let partitions = partition.map(|p| Partitions::new(corpus, p, &[&q.parts]));
    let (query_parts, labels) = match &partitions {
        Some(p) => (
            judged.iter().map(|&i| p.ids(&q.parts[i..=i])[0]).collect(),
            labels.iter().map(|l| (l.query.clone(), q.parts[index[l.query.as_str()] as usize].clone(), l.doc.clone())).collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let vectors = q.into_array().select(ndarray::Axis(0), &judged);
    let relevant = judged.iter().map(|&i| std::mem::take(&mut relevant[i])).collect();
    Judged { vectors, relevant, keys, ties, partitions, query_parts, labels }
}

/// The local k-NN pass: rows read and decoded here, the maths one batch behind on a worker
/// (exec::Pusher). Rows whose id `overrides` lists are scored with its vector instead.
fn knn_local(
    corpus: &Corpus,
    judged: &Judged,
    k: usize,
    dist: Distance,
    overrides: Option<&Overrides>,
    reporter: &mut Reporter,
) -> Vec<Vec<(u64, f32)>> {
    let mut topk = TopK::new(judged.vectors.clone(), k, dist).or_raise();
    let partitions = judged.partitions.as_ref();
    if partitions.is_some() {
        topk = topk.with_partitions(judged.query_parts.clone()).or_raise();
    }
    let mut doc_parts: HashMap<String, Option<String>> = HashMap::new();
    let mut dim = judged.vectors.ncols();
    let total = read::estimated_rows(corpus.oid);
    let scan = read::scan_sql(&corpus.id, &corpus.emb, &corpus.sql, &partitions.map(|p| p.scan_column()).unwrap_or_default());
    let mut ordinal = 0u64;
    let pusher = exec::Pusher::start(topk, dim, |t: &mut TopK, keys, vectors, parts| {
        t.push_batch_in(keys, vectors, parts, &mut nudge_core::Hooks::noop())
    });
    let mut batch = pusher.empty_buffers();
    read::for_each_row(&scan, |r| {
        let rid = r.text(1).unwrap_or_default();
        if let Some(p) = partitions {
            let value = r.text(3);
            batch.2.push(p.id_of(value.as_deref()));
            if judged.keys.contains_key(&rid) {
                doc_parts.insert(rid.clone(), value);
            }
        }
        batch.0.push(judged.ties.key(&rid, ordinal));
        ordinal += 1;
        match overrides.and_then(|o| o.get(&rid)) {
            Some(v) if v.len() == dim => batch.1.extend_from_slice(v),
            Some(v) => raise(Code::ERRCODE_DATA_EXCEPTION, format!("a vector of {} dimensions for row {rid:?} of {}, expected {dim}", v.len(), corpus.sql)),
            None => push_embedding(r.datum(2), corpus.kind, &mut dim, &mut batch.1, &|| format!("embedding of row {rid:?} in {}", corpus.sql)),
        }
        if pusher.push_if_full(&mut batch) {
            reporter.report("k-nn search", ordinal, total);
        }
    });
    pusher.push(batch);
    reporter.report("k-nn search", ordinal, total);
    let runs = pusher.finish().finish();
    if let Some(p) = partitions {
        check_labels(p, &judged.labels, &doc_parts, &corpus.sql);
    }
    runs
}

/// Every label of a partitioned evaluation points to a doc of its query's partition (23514);
/// a doc no row holds is not an error (it is simply never retrieved).
fn check_labels(p: &Partitions, labels: &[LabelPart], doc_parts: &HashMap<String, Option<String>>, corpus_sql: &str) {
    for (query, query_part, doc) in labels {
        let Some(doc_part) = doc_parts.get(doc) else { continue };
        if doc_part.as_deref() != Some(query_part.as_str()) {
            let doc_in = doc_part.as_ref().map_or("NULL".to_string(), |v| format!("{v:?}"));
            raise_with(
                Code::ERRCODE_CHECK_VIOLATION,
                format!(
                    "a label crosses partitions: query {query:?} has {col} {query_part:?}, but doc {doc:?} has {col} {doc_in} in {corpus_sql}",
                    col = p.column.name
                ),
                None,
                Some(format!("With partition => '{}' every query ranks only the rows of its own partition.", p.column.name)),
            );
        }
    }
}

/// The k-NN pass on the workers of a Citus distributed table: each worker's top-k per query
/// (src/shard.rs), merged here with the same order (score descending, ties by key descending).
/// Partitioned: the workers rank each row for its partition's queries only, and send back the
/// partition value of every judged row, whose labels are then checked here.
fn knn_shards(corpus: &Corpus, judged: &Judged, k: usize, dist: Distance, reporter: &mut Reporter) -> Vec<Vec<(u64, f32)>> {
    let partitions = judged.partitions.as_ref().map(|p| TopKPartitions {
        column: p.column.name.clone(),
        values: p.values.clone(),
        query_parts: judged.query_parts.clone(),
    });
    let request = TopKRequest::to_bytes(&judged.vectors, k, dist, &judged.keys, partitions.as_ref());
    let mut doc_parts: HashMap<String, Option<String>> = HashMap::new();
    let e = crate::catalog::ext();
    let call = format!(
        "{}({{shards}}, {}, {}, {{request}})",
        crate::catalog::func(&e, "nudge_shard_topk"),
        quote_literal(&corpus.id.name),
        quote_literal(&corpus.emb.name)
    );
    let mut runs: Vec<Vec<(u64, f32)>> = vec![Vec::new(); judged.vectors.nrows()];
    let (mut workers, mut reply_bytes) = (0u64, 0usize);
    crate::citus::on_shards(&e, corpus.oid, &corpus.sql, &call, &request, |node, bytes| {
        reply_bytes += bytes.len();
        let reply = TopKRequest::parse_reply(&bytes).unwrap_or_else(|m| crate::citus::malformed(node, &corpus.sql, &m));
        let reply = reply.unwrap_or_else(|(code, message)| raise(code, message));
        if reply.runs.len() != runs.len() {
            crate::citus::malformed(node, &corpus.sql, "wrong number of queries");
        }
        match (reply.labelled_parts, &partitions) {
            (Some(found), Some(_)) => doc_parts.extend(found),
            (None, None) => {}
            _ => crate::citus::malformed(node, &corpus.sql, "partition values where none were asked for, or none where they were"),
        }
        for (run, list) in runs.iter_mut().zip(reply.runs) {
            run.extend(list);
            run.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
            run.truncate(k);
        }
        workers += 1;
        reporter.report("k-nn search on the workers", workers, None);
    });
    debug1!("nudge_evaluate: {workers} workers answered {reply_bytes} bytes for the shards of {}", corpus.sql);
    if let Some(p) = &judged.partitions {
        check_labels(p, &judged.labels, &doc_parts, &corpus.sql);
    }
    runs
}

/// Mean metrics over the judged queries.
fn score(runs: &[Vec<(u64, f32)>], judged: &Judged, k: usize) -> EvalRow {
    let (mut ndcg, mut recall, mut capped, mut mrr) = (0.0, 0.0, 0.0, 0.0);
    for m in per_query(runs, judged, k) {
        ndcg += m.ndcg;
        recall += m.recall;
        capped += m.capped_recall;
        mrr += m.mrr;
    }
    let n = judged.relevant.len() as f64;
    (judged.relevant.len() as i64, ndcg / n, recall / n, capped / n, mrr / n)
}

/// The mean of `metric` over the judged queries.
pub(crate) fn mean(metric: nudge_core::Metric, runs: &[Vec<(u64, f32)>], judged: &Judged) -> f64 {
    per_query(runs, judged, metric.k()).map(|m| metric.pick(&m)).sum::<f64>() / judged.relevant.len() as f64
}

/// The metrics of each judged query. Runs are best first, ties already in trec_eval's order
/// (by tie key); a judged id that several rows share counts at its best position only.
fn per_query<'a>(runs: &'a [Vec<(u64, f32)>], judged: &'a Judged, k: usize) -> impl Iterator<Item = nudge_core::QueryMetrics> + 'a {
    runs.iter().zip(&judged.relevant).map(move |(run, relevant)| {
        let mut seen = std::collections::HashSet::new();
        let ranked = run.iter().map(|p| p.0).filter(|&key| !TieKeys::is_judged(key) || seen.insert(key));
        nudge_core::metrics::evaluate_in_order(ranked, relevant, k)
    })
}
