//! nudge_evaluate: exact k-NN of labelled queries over the stored vectors, scored with
//! trec_eval's definitions (NDCG@k, recall@k, capped recall@k, MRR@k).
//!
//! The corpus is streamed once in batches through the core's fused GEMM + top-k; no
//! index is used, so the numbers are those of exact search. Queries without a relevant
//! label are skipped, as trec_eval does.

use std::collections::HashMap;
use std::str::FromStr;

use nudge_core::knn::{Distance, TopK};
use pgrx::prelude::*;
use pgrx::PgRelation;

use crate::columns;
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};
use crate::exec::{self, Reporter};
use crate::fit::{estimated_rows, scan_sql};
use crate::read::{self, push_embedding};

type EvalRow = (
    name!(queries, i64),
    name!(ndcg, f64),
    name!(recall, f64),
    name!(capped_recall, f64),
    name!(mrr, f64),
);

/// Score exact k-NN retrieval of `queries` over `corpus` against the labels in `qrels`.
#[pg_extern(stable, parallel_unsafe)]
fn nudge_evaluate(
    corpus: PgRelation,
    embedding: &str,
    queries: PgRelation,
    qrels: PgRelation,
    k: default!(i32, 10),
    id_column: default!(&str, "'id'"),
    distance: default!(&str, "'cosine'"),
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
    let (c, q, r) = (corpus.oid(), queries.oid(), qrels.oid());
    drop((corpus, queries, qrels));
    TableIterator::once(evaluate(c, embedding, q, r, k, id_column, distance))
}

fn evaluate(
    corpus: pg_sys::Oid,
    embedding: &str,
    queries: pg_sys::Oid,
    qrels: pg_sys::Oid,
    k: i32,
    id_column: &str,
    distance: &str,
) -> EvalRow {
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
    let mut reporter = Reporter::new("nudge_evaluate");
    let corpus_rel = columns::relation(corpus);
    let corpus_sql = corpus_rel.sql.clone();
    let id = corpus_rel.column(id_column, "the id column that qrels.doc_id refers to");
    let (emb, kind) = corpus_rel.vector_column(embedding, "an embedding column");
    let (queries_rel, qrels_rel) = (columns::relation(queries), columns::relation(qrels));
    let (queries_sql, qrels_sql) = (queries_rel.sql.clone(), qrels_rel.sql.clone());
    let mut dim = 0usize;
    let q = read::read_queries(&queries_rel, &mut dim);
    let labels = read::read_qrels(&qrels_rel);
    let mut index = HashMap::new();
    for (i, qid) in q.ids.iter().enumerate() {
        if index.insert(qid.as_str(), i as u32).is_some() {
            raise(Code::ERRCODE_UNIQUE_VIOLATION, format!("query id {qid:?} appears more than once in {queries_sql}"));
        }
    }
    let mut keys: HashMap<String, u64> = HashMap::new();
    let qrels = read::qrels_for(&labels, &index, &mut keys, &qrels_sql, &queries_sql);
    let n_labelled = keys.len() as u64;
    // relevant (key, grade) lists per query
    let mut relevant: Vec<Vec<(u64, f64)>> = vec![Vec::new(); q.len()];
    for r in &qrels {
        relevant[r.query as usize].push((r.record, r.grade));
    }
    let judged: Vec<usize> = (0..q.len()).filter(|&i| relevant[i].iter().any(|(_, g)| *g > 0.0)).collect();
    if judged.is_empty() {
        raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("no query in {queries_sql} has a relevant record in {qrels_sql}"));
    }
    let qv = q.into_array().select(ndarray::Axis(0), &judged);
    let topk = TopK::new(qv, k as usize, dist).or_raise();

    let key_of: HashMap<&str, u64> = keys.iter().map(|(d, k)| (d.as_str(), *k)).collect();
    let total = estimated_rows(corpus);
    let scan = scan_sql(&id, &emb, &corpus_sql, false);
    let mut ordinal = 0u64;
    // rows read and decoded here, the k-NN maths one batch behind on a worker (exec::Pusher)
    let pusher = exec::Pusher::start(topk, dim, |t: &mut TopK, keys, vectors| {
        t.push_batch(keys, vectors, &mut nudge_core::Hooks::noop())
    });
    let (mut batch_keys, mut buf) = pusher.empty_buffers();
    read::for_each_row(&scan, |r| {
        let rid = r.text(1).unwrap_or_default();
        batch_keys.push(key_of.get(rid.as_str()).copied().unwrap_or(n_labelled + ordinal));
        ordinal += 1;
        push_embedding(r.datum(2), kind, &mut dim, &mut buf, &|| format!("embedding of row {rid:?} in {corpus_sql}"));
        if pusher.push_if_full(&mut batch_keys, &mut buf) {
            reporter.report("k-nn search", ordinal, total);
        }
    });
    pusher.push(batch_keys, buf);
    reporter.report("k-nn search", ordinal, total);
    let topk = pusher.finish();
    let runs = topk.finish();
    let (mut ndcg, mut recall, mut capped, mut mrr) = (0.0, 0.0, 0.0, 0.0);
    for (run, &qi) in runs.iter().zip(&judged) {
        let m = nudge_core::metrics::evaluate(run, &relevant[qi], k as usize);
        ndcg += m.ndcg;
        recall += m.recall;
        capped += m.capped_recall;
        mrr += m.mrr;
    }
    let n = judged.len() as f64;
    (judged.len() as i64, ndcg / n, recall / n, capped / n, mrr / n)
}
