//! nudge_fit: read labelled queries and the corpus, run NUDGE, write the nudged vectors.
//!
//! Flow (one transaction, so any error leaves every table as it was):
//!  1. validate arguments; resolve tables and columns through the catalogs;
//!  2. when writing, LOCK the corpus IN SHARE ROW EXCLUSIVE MODE (readers go on; writers,
//!     including a concurrent nudge_fit on the same table, wait until we commit);
//!  3. read queries and labels; split train/validation (seeded, or the given tables);
//!  4. G = sum of training queries per relevant record (core);
//!  5. one streaming pass over the corpus: the core keeps the static top-k for every
//!     validation query and the vectors of the moving records; ids -> addresses kept
//!     only for rows that will be written;
//!  6. gamma chosen on the moving records alone (core); new vectors computed;
//!  7. record the fit in nudge.fits, then write (backing up what is overwritten).
//!
//! A refit starts from the original vectors: rows changed by earlier applied in-place
//! fits of the same column are read from their oldest backup, and rows no longer moved
//! are written back to their originals.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use ndarray::Array2;
use nudge_core::gamma::{FitConfig, FitPass, Selection};
use nudge_core::metrics::Metric;
use nudge_core::nudge::{Method, NegativeRule};
use pgrx::prelude::*;
use pgrx::PgRelation;

use crate::columns::{self, Column, VecKind};
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};
use crate::exec::{self, Reporter};
use crate::read::{self, push_embedding, Vectors};
use crate::write::{self, RowWrite};

type FitRow = (
    name!(fit_id, i64),
    name!(method, String),
    name!(gamma, f64),
    name!(records_changed, i64),
    name!(validation_before, Option<f64>),
    name!(validation_after, Option<f64>),
    name!(seconds, f64),
);

/// Fine-tune the stored embeddings of `corpus` for the labelled `queries`.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe)]
fn nudge_fit(
    corpus: Option<PgRelation>,
    embedding: Option<&str>,
    queries: Option<PgRelation>,
    qrels: Option<PgRelation>,
    id_column: default!(Option<&str>, "'id'"),
    method: default!(Option<&str>, "'nudge_n'"),
    validation_queries: default!(Option<PgRelation>, "NULL"),
    validation_qrels: default!(Option<PgRelation>, "NULL"),
    validation_fraction: default!(Option<f64>, 0.1),
    seed: default!(Option<i32>, 0),
    metric: default!(Option<&str>, "'ndcg@10'"),
    gamma: default!(Option<f64>, "NULL"),
    target: default!(Option<&str>, "NULL"),
    dry_run: default!(Option<bool>, false),
    gamma_search: default!(Option<&str>, "'best'"),
    negative_rule: default!(Option<&str>, "'skip'"),
) -> TableIterator<
    'static,
    (
        name!(fit_id, i64),
        name!(method, String),
        name!(gamma, f64),
        name!(records_changed, i64),
        name!(validation_before, Option<f64>),
        name!(validation_after, Option<f64>),
        name!(seconds, f64),
    ),
> {
    // Every argument but gamma, target and the validation tables is required: a NULL is an
    // error (the function cannot be STRICT, as those three default to NULL).
    let (corpus, queries, qrels) = (required(corpus, "corpus"), required(queries, "queries"), required(qrels, "qrels"));
    let args = FitArgs {
        corpus: corpus.oid(),
        embedding: required(embedding, "embedding"),
        queries: queries.oid(),
        qrels: qrels.oid(),
        id_column: required(id_column, "id_column"),
        method: required(method, "method"),
        validation: match (validation_queries, validation_qrels) {
            (Some(q), Some(r)) => Some((q.oid(), r.oid())),
            (None, None) => None,
            _ => raise(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                "validation_queries and validation_qrels must be given together",
            ),
        },
        validation_fraction: required(validation_fraction, "validation_fraction"),
        seed: required(seed, "seed"),
        metric: required(metric, "metric"),
        gamma,
        target,
        dry_run: required(dry_run, "dry_run"),
        gamma_search: required(gamma_search, "gamma_search"),
        negative_rule: required(negative_rule, "negative_rule"),
        refit_of: None,
    };
    drop((corpus, queries, qrels));
    TableIterator::once(run(&args))
}

fn required<T>(value: Option<T>, name: &str) -> T {
    value.unwrap_or_else(|| {
        raise_with(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("argument \"{name}\" of nudge_fit must not be NULL"),
            None,
            Some("Leave an argument out to use its default.".into()),
        )
    })
}

/// Re-run a recorded fit with its parameters on the current labels. In place, it starts
/// from the original vectors (as every fit does) and is recorded as a new fit.
#[pg_extern(volatile, parallel_unsafe)]
fn nudge_refit(
    fit_id: i64,
    dry_run: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(fit_id, i64),
        name!(method, String),
        name!(gamma, f64),
        name!(records_changed, i64),
        name!(validation_before, Option<f64>),
        name!(validation_after, Option<f64>),
        name!(seconds, f64),
    ),
> {
    type Rec = (
        pg_sys::Oid,
        String,
        pg_sys::Oid,
        pg_sys::Oid,
        String,
        String,
        Option<pg_sys::Oid>,
        Option<pg_sys::Oid>,
        Option<f64>,
        Option<i32>,
        Option<String>,
        String,
        f64,
        Option<String>,
        String,
    );
    let rec: Option<Rec> = Spi::connect(|c| {
        let t = c.select(
            "SELECT corpus::oid, embedding, queries::oid, qrels::oid, id_column, method,
                    validation_queries::oid, validation_qrels::oid, validation_fraction, seed, metric,
                    gamma_search, gamma, target, negative_rule
               FROM nudge.fits WHERE fit_id = $1",
            Some(1),
            &[fit_id.into()],
        )?;
        if t.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let t = t.first();
        Ok(Some((
            t.get(1)?.unwrap(),
            t.get(2)?.unwrap(),
            t.get(3)?.unwrap(),
            t.get(4)?.unwrap(),
            t.get(5)?.unwrap(),
            t.get(6)?.unwrap(),
            t.get(7)?,
            t.get(8)?,
            t.get(9)?,
            t.get(10)?,
            t.get(11)?,
            t.get(12)?.unwrap(),
            t.get(13)?.unwrap(),
            t.get(14)?,
            t.get(15)?.unwrap(),
        )))
    })
    .or_raise();
    let Some(r) = rec else {
        raise(Code::ERRCODE_UNDEFINED_OBJECT, format!("fit {fit_id} does not exist"));
    };
    let gamma_search = if r.11 == "fixed" { "best" } else { r.11.as_str() };
    let metric = match r.11.as_str() {
        "reference" => "ndcg@10".to_string(),
        _ => r.10.clone().unwrap_or_else(|| "ndcg@10".into()),
    };
    let args = FitArgs {
        corpus: r.0,
        embedding: &r.1,
        queries: r.2,
        qrels: r.3,
        id_column: &r.4,
        method: &r.5,
        validation: r.6.zip(r.7),
        validation_fraction: r.8.unwrap_or(0.1),
        seed: r.9.unwrap_or(0),
        metric: &metric,
        gamma: (r.11 == "fixed").then_some(r.12),
        target: r.13.as_deref(),
        dry_run,
        gamma_search,
        negative_rule: &r.14,
        refit_of: Some(fit_id),
    };
    TableIterator::once(run(&args))
}

struct FitArgs<'a> {
    corpus: pg_sys::Oid,
    embedding: &'a str,
    queries: pg_sys::Oid,
    qrels: pg_sys::Oid,
    id_column: &'a str,
    method: &'a str,
    validation: Option<(pg_sys::Oid, pg_sys::Oid)>,
    validation_fraction: f64,
    seed: i32,
    metric: &'a str,
    gamma: Option<f64>,
    target: Option<&'a str>,
    dry_run: bool,
    gamma_search: &'a str,
    negative_rule: &'a str,
    refit_of: Option<i64>,
}

fn invalid(msg: String, hint: &str) -> ! {
    raise_with(Code::ERRCODE_INVALID_PARAMETER_VALUE, msg, None, Some(hint.to_string()))
}

fn parse_config(a: &FitArgs) -> FitConfig {
    let method = Method::from_str(&a.method.to_ascii_lowercase())
        .unwrap_or_else(|_| invalid(format!("unknown method \"{}\"", a.method), "Use 'nudge_n' or 'nudge_m'."));
    let metric = Metric::from_str(&a.metric.to_ascii_lowercase()).unwrap_or_else(|_| {
        invalid(
            format!("unknown metric \"{}\"", a.metric),
            "Use ndcg@k, recall@k, capped_recall@k, mrr@k (k >= 1) or top1.",
        )
    });
    let negative_rule = match a.negative_rule.to_ascii_lowercase().as_str() {
        "skip" => NegativeRule::Skip,
        "move" => NegativeRule::Move,
        _ => invalid(format!("unknown negative_rule \"{}\"", a.negative_rule), "Use 'skip' or 'move'."),
    };
    let selection = match (a.gamma, a.gamma_search.to_ascii_lowercase().as_str()) {
        (Some(g), _) => {
            let max = if method == Method::NudgeN { 4.0 } else { f64::MAX };
            if !(g.is_finite() && g >= 0.0 && g <= max) {
                invalid(
                    format!("gamma must be a finite number >= 0{}, not {g}", if method == Method::NudgeN { " and <= 4" } else { "" }),
                    "Leave gamma NULL to choose it on validation queries.",
                );
            }
            Selection::Fixed(g)
        }
        (None, "best") => Selection::Best(metric),
        (None, "reference") => Selection::Parity,
        (None, _) => invalid(format!("unknown gamma_search \"{}\"", a.gamma_search), "Use 'best' or 'reference'."),
    };
    if a.validation.is_none() && !(a.validation_fraction > 0.0 && a.validation_fraction < 1.0) {
        invalid(
            format!("validation_fraction must be between 0 and 1 (exclusive), not {}", a.validation_fraction),
            "It is the share of queries held out to choose gamma.",
        );
    }
    if a.seed < 0 {
        invalid(format!("seed must be >= 0, not {}", a.seed), "Any non-negative integer works.");
    }
    FitConfig { method, selection, negative_rule }
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::NudgeM => "nudge_m",
        Method::NudgeN => "nudge_n",
    }
}

/// Queries of one role (train or validation) and their labels over record keys.
struct QuerySet {
    vectors: Array2<f32>,
    qrels: Vec<nudge_core::gradient::Qrel>,
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

fn select_rows(v: &Vectors, rows: &[usize]) -> Array2<f32> {
    let mut out = Array2::<f32>::zeros((rows.len(), v.dim));
    for (i, &r) in rows.iter().enumerate() {
        out.row_mut(i).assign(&ndarray::ArrayView1::from(v.row(r)));
    }
    out
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
    let qrels = set
        .qrels
        .into_iter()
        .filter(|q| renum[q.query as usize] != u32::MAX)
        .map(|q| nudge_core::gradient::Qrel { query: renum[q.query as usize], ..q })
        .collect();
    QuerySet { vectors, qrels }
}

fn run(a: &FitArgs) -> FitRow {
    let mut reporter = Reporter::new("nudge_fit");
    let config = parse_config(a);

    // Tables and columns.
    let corpus = columns::relation(a.corpus);
    let corpus_sql = corpus.sql.clone();
    let id = corpus.column(a.id_column, "the id column that qrels.doc_id refers to");
    let (emb, kind) = corpus.vector_column(a.embedding, "an embedding column");
    let target = a.target.map(|t| {
        let col = corpus.column(t, "the target column");
        if col.name == emb.name {
            invalid(format!("target column \"{t}\" is the embedding column"), "Leave target NULL to write in place.");
        }
        if col.type_sql != emb.type_sql {
            raise(
                Code::ERRCODE_DATATYPE_MISMATCH,
                format!("target column \"{t}\" has type {}, but \"{}\" has type {}", col.type_sql, emb.name, emb.type_sql),
            );
        }
        col
    });
    let writing = !a.dry_run;
    if writing {
        let relkind = Spi::get_one_with_args::<String>("SELECT relkind::text FROM pg_class WHERE oid = $1", &[a.corpus.into()])
            .or_raise()
            .unwrap_or_default();
        if !matches!(relkind.as_str(), "r" | "p") {
            raise_with(
                Code::ERRCODE_WRONG_OBJECT_TYPE,
                format!("cannot write nudged vectors into {corpus_sql}: it is not a table"),
                None,
                Some("Use dry_run => true to fit without writing, or pass the underlying table.".into()),
            );
        }
        Spi::run(&format!("LOCK TABLE {corpus_sql} IN SHARE ROW EXCLUSIVE MODE")).or_raise();
    }

    // Queries and labels.
    reporter.report("reading queries", 0, None);
    let queries_rel = columns::relation(a.queries);
    let qrels_rel = columns::relation(a.qrels);
    let (queries_sql, qrels_sql) = (queries_rel.sql.clone(), qrels_rel.sql.clone());
    let mut dim = 0usize;
    let q_all = read::read_queries(&queries_rel, &mut dim);
    let labels = read::read_qrels(&qrels_rel);
    let mut keys: HashMap<String, u64> = HashMap::new();
    let (train, validation) = match a.validation {
        Some((vq, vr)) => {
            let (vq_rel, vr_rel) = (columns::relation(vq), columns::relation(vr));
            let (vq_sql, vr_sql) = (vq_rel.sql.clone(), vr_rel.sql.clone());
            let q_val = read::read_queries(&vq_rel, &mut dim);
            let val_labels = read::read_qrels(&vr_rel);
            let train_index = index_ids(q_all.ids.iter(), &queries_sql);
            let train_qrels = read::qrels_for(&labels, &train_index, &mut keys, &qrels_sql, &queries_sql);
            let val_index = index_ids(q_val.ids.iter(), &vq_sql);
            let val_qrels = read::qrels_for(&val_labels, &val_index, &mut keys, &vr_sql, &vq_sql);
            (
                QuerySet { vectors: q_all.into_array(), qrels: train_qrels },
                QuerySet { vectors: q_val.into_array(), qrels: val_qrels },
            )
        }
        None => {
            let all_index = index_ids(q_all.ids.iter(), &queries_sql);
            if q_all.len() < 2 {
                raise(
                    Code::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("{queries_sql} has {} queries; a seeded split needs at least 2", q_all.len()),
                );
            }
            let (tr, va) = nudge_core::split::split(q_all.len(), a.validation_fraction, a.seed as u32).or_raise();
            // position of each original row within its part
            let mut part = vec![(false, 0u32); q_all.len()];
            for (i, &r) in tr.iter().enumerate() {
                part[r] = (true, i as u32);
            }
            for (i, &r) in va.iter().enumerate() {
                part[r] = (false, i as u32);
            }
            let all_qrels = read::qrels_for(&labels, &all_index, &mut keys, &qrels_sql, &queries_sql);
            let (mut tq, mut vq) = (Vec::new(), Vec::new());
            for q in all_qrels {
                let (is_train, pos) = part[q.query as usize];
                let q = nudge_core::gradient::Qrel { query: pos, ..q };
                if is_train { tq.push(q) } else { vq.push(q) }
            }
            (
                QuerySet { vectors: select_rows(&q_all, &tr), qrels: tq },
                QuerySet { vectors: select_rows(&q_all, &va), qrels: vq },
            )
        }
    };
    let validation = only_judged(validation);
    if validation.vectors.nrows() == 0 && !matches!(config.selection, Selection::Fixed(_)) {
        raise_with(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "no validation query has a relevant record",
            None,
            Some("Choosing gamma needs labelled validation queries; give more queries, a larger validation_fraction, or a fixed gamma.".into()),
        );
    }
    let n_labelled = keys.len() as u64;
    let train_rows: Vec<usize> = (0..train.vectors.nrows()).collect();
    if !train.qrels.iter().any(|q| q.grade > 0.0) {
        raise_with(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            "no training query has a relevant record",
            Some(format!("{} training queries, {} labels", train.vectors.nrows(), train.qrels.len())),
            Some("Check that qrels.query_id matches queries.id and that scores are > 0.".into()),
        );
    }
    let moving = nudge_core::gradient::gradients(train.vectors.view(), &train.qrels, &train_rows, n_labelled).or_raise();
    let moving_keys: HashSet<u64> = moving.keys.iter().copied().collect();
    let n_train = train.vectors.nrows();
    let n_val = validation.vectors.nrows();
    let pass = FitPass::new(moving, validation.vectors, validation.qrels, config).or_raise();

    // Originals of rows changed by earlier applied in-place fits of this column.
    let originals = read_originals(a.corpus, &emb);

    // The corpus pass.
    let key_of: HashMap<&str, u64> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let total = estimated_rows(a.corpus);
    let mut seen = vec![false; n_labelled as usize];
    let mut addr: HashMap<u64, (pg_sys::Oid, u64, String)> = HashMap::new(); // key -> (tableoid, ctid, id)
    let mut prev_moved: Vec<(pg_sys::Oid, u64, String, u64)> = Vec::new(); // rows to restore unless moved now
    let scan = scan_sql(&id, &emb, &corpus_sql, writing);
    let mut ordinal = 0u64;
    // The backend's thread reads and decodes the next batch (only it may call Postgres) while
    // a worker pushes the previous one through the maths (pusher); buffers go round.
    let pusher = exec::Pusher::start(pass, dim, |p: &mut FitPass, keys, vectors| {
        p.push_batch(keys, vectors, &mut nudge_core::Hooks::noop())
    });
    let (mut batch_keys, mut buf) = pusher.empty_buffers();
    read::for_each_row(&scan, |row| {
        let rid = row.text(1).unwrap_or_else(|| {
            raise(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("column \"{}\" of {corpus_sql} is NULL in some row", id.name))
        });
        let key = match key_of.get(rid.as_str()) {
            Some(&k) => {
                if std::mem::replace(&mut seen[k as usize], true) {
                    raise_with(
                        Code::ERRCODE_UNIQUE_VIOLATION,
                        format!("id {rid:?} appears more than once in column \"{}\" of {corpus_sql}", id.name),
                        None,
                        Some("The id column must identify one row; labels cannot tell duplicates apart.".into()),
                    );
                }
                k
            }
            None => n_labelled + ordinal,
        };
        ordinal += 1;
        let what = || format!("embedding of row {rid:?} in {corpus_sql}");
        push_embedding(row.datum(2), kind, &mut dim, &mut buf, &what);
        let current = buf.len() - dim;
        // A row still holding what the last fit wrote starts from its original; a row
        // the application changed since starts from its new value.
        let holds_written = |o: &&Original| {
            o.original.len() == dim && o.written == read::digest_of(row.datum(2), kind, &buf[current..])
        };
        match originals.get(rid.as_str()).filter(holds_written) {
            Some(o) => {
                buf.truncate(current);
                buf.extend_from_slice(&o.original);
                if writing {
                    let (toid, tid) = (row.datum(3), row.tid(4));
                    let toid = toid.map(|d| unsafe { pg_sys::Oid::from_datum(d, false) }.unwrap()).unwrap();
                    prev_moved.push((toid, tid.unwrap(), rid.clone(), key));
                }
            }
            None => {
                if buf[current..].iter().all(|v| *v == 0.0) {
                    raise_with(
                        Code::ERRCODE_DATA_EXCEPTION,
                        format!("{} is a zero vector", what()),
                        None,
                        Some("NUDGE normalises every record; give the row a real embedding or leave it out through a view.".into()),
                    );
                }
            }
        }
        if writing && moving_keys.contains(&key) {
            let toid = row.datum(3).map(|d| unsafe { pg_sys::Oid::from_datum(d, false) }.unwrap()).unwrap();
            addr.insert(key, (toid, row.tid(4).unwrap(), rid));
        }
        batch_keys.push(key);
        if pusher.push_if_full(&mut batch_keys, &mut buf) {
            reporter.report("scanning corpus", ordinal, total);
        }
    });
    pusher.push(batch_keys, buf);
    reporter.report("scanning corpus", ordinal, total);
    let pass = pusher.finish();
    if let Some(k) = seen.iter().position(|s| !s) {
        let doc = keys.iter().find(|(_, v)| **v == k as u64).map(|(d, _)| d.clone()).unwrap_or_default();
        raise_with(
            Code::ERRCODE_FOREIGN_KEY_VIOLATION,
            format!("a label points to doc_id {doc:?}, which is not in column \"{}\" of {corpus_sql}", id.name),
            None,
            Some("Every qrels.doc_id must match one corpus row's id.".into()),
        );
    }

    let outcome = exec::with_hooks(&mut reporter, None, |hooks| pass.finish(hooks)).or_raise();

    // Rows to write: nudged rows, and rows of earlier fits not nudged now (back to originals).
    let mut rows: Vec<RowWrite> = Vec::new();
    let mut changed_now: HashSet<u64> = HashSet::new();
    let mut records_changed = 0i64;
    for (i, &k) in outcome.keys.iter().enumerate() {
        if outcome.changed[i] {
            records_changed += 1;
            changed_now.insert(k);
            if let Some((toid, tid, rid)) = addr.get(&k) {
                rows.push(RowWrite { tableoid: *toid, tid: *tid, id: rid.clone(), vector: outcome.vectors.row(i).to_vec() });
            }
        }
    }
    for (toid, tid, rid, key) in prev_moved {
        if !changed_now.contains(&key) {
            let vector = originals.get(rid.as_str()).map(|o| o.original.clone()).unwrap_or_default();
            rows.push(RowWrite { tableoid: toid, tid, id: rid, vector });
        }
    }

    let curve = serde_json::to_string(&outcome.curve.iter().map(|(g, v)| [*g, *v]).collect::<Vec<_>>()).unwrap();
    let method = method_name(config.method).to_string();
    let gamma_search = match config.selection {
        Selection::Fixed(_) => "fixed",
        Selection::Parity => "reference",
        Selection::Best(_) => "best",
    };
    let metric_name = match config.selection {
        Selection::Fixed(_) | Selection::Best(_) => Some(a.metric.to_ascii_lowercase()),
        Selection::Parity => Some(if config.method == Method::NudgeN { "top1_accuracy" } else { "top1" }.to_string()),
    };
    let rows_written = if a.dry_run { 0 } else { rows.len() as i64 };
    let fit_id: i64 = Spi::get_one::<i64>("SELECT nextval('nudge.fits_fit_id_seq')").or_raise().expect("nextval");
    if !a.dry_run {
        match &target {
            None => write::write_in_place(a.corpus, &id, &emb, kind, fit_id, &rows, &mut reporter),
            Some(t) => write::write_target(&id, &emb, t, &rows, &mut reporter),
        };
    }
    let seconds = reporter.elapsed();
    Spi::run_with_args(
        "INSERT INTO nudge.fits (fit_id, corpus, id_column, embedding, embedding_type, target, queries, qrels,
             validation_queries, validation_qrels, validation_fraction, seed, method, metric, gamma_search,
             negative_rule, gamma, train_queries, validation_query_count, records_moving, records_changed,
             rows_written, validation_before, validation_after, curve, seconds, status, refit_of)
         VALUES ($26, $1::oid::regclass, $2, $3, $4, $5, $6::oid::regclass, $7::oid::regclass, $8::oid::regclass,
             $9::oid::regclass, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23,
             $24::jsonb, $27, $25, $28)",
        &[
            a.corpus.into(),
            a.id_column.into(),
            a.embedding.into(),
            emb.type_sql.clone().into(),
            a.target.into(),
            a.queries.into(),
            a.qrels.into(),
            a.validation.map(|v| v.0).into(),
            a.validation.map(|v| v.1).into(),
            a.validation.is_none().then_some(a.validation_fraction).into(),
            a.validation.is_none().then_some(a.seed).into(),
            method.clone().into(),
            metric_name.into(),
            gamma_search.into(),
            a.negative_rule.to_ascii_lowercase().into(),
            outcome.gamma.into(),
            (n_train as i32).into(),
            (n_val as i32).into(),
            (outcome.keys.len() as i64).into(),
            records_changed.into(),
            rows_written.into(),
            outcome.validation_before.into(),
            outcome.validation_after.into(),
            curve.into(),
            (if a.dry_run { "dry_run" } else { "applied" }).into(),
            fit_id.into(),
            seconds.into(),
            a.refit_of.into(),
        ],
    )
    .or_raise();
    (fit_id, method, outcome.gamma, records_changed, outcome.validation_before, outcome.validation_after, seconds)
}

/// `SELECT id::text, embedding [, tableoid, ctid] FROM corpus`.
pub fn scan_sql(id: &Column, emb: &Column, rel_sql: &str, with_address: bool) -> String {
    format!(
        "SELECT t.{}::text, t.{}{} FROM {} AS t",
        id.ident,
        emb.ident,
        if with_address { ", t.tableoid, t.ctid" } else { "" },
        rel_sql
    )
}

/// Planner's row estimate, for progress only.
pub fn estimated_rows(rel: pg_sys::Oid) -> Option<u64> {
    Spi::get_one_with_args::<f32>("SELECT reltuples FROM pg_class WHERE oid = $1", &[rel.into()])
        .ok()
        .flatten()
        .filter(|r| *r > 0.0)
        .map(|r| r as u64)
}

/// A row that applied in-place fits of this column changed: the digest of the value the
/// newest of them wrote, and the row's value before the oldest fit in the unbroken chain of
/// fits back from it (with its digest).
struct Original {
    written: i64,
    original: Vec<f32>,
    original_digest: i64,
}

/// Originals of rows that applied in-place fits of this column changed. Each fit backs up the
/// value it overwrote; walking a row's backups from the newest fit back, the chain goes on
/// while a fit overwrote exactly what the fit before it wrote. Where it breaks, the
/// application changed the row in between, and that value is the row's original.
fn read_originals(corpus: pg_sys::Oid, emb: &Column) -> HashMap<String, Original> {
    let mut out: HashMap<String, Original> = HashMap::new();
    // (two simple queries rather than a join: most fits find no applied fit, and the first
    // one is all they plan)
    let fits = Spi::get_one_with_args::<Vec<i64>>(
        "SELECT array_agg(f.fit_id) FROM nudge.fits f
          WHERE f.corpus = $1::oid::regclass AND f.embedding = $2 AND f.embedding_type = $3
            AND f.target IS NULL AND f.status = 'applied'",
        &[corpus.into(), emb.name.clone().into(), emb.type_sql.clone().into()],
    )
    .or_raise()
    .unwrap_or_default();
    if fits.is_empty() {
        return out;
    }
    let sql = "SELECT b.row_id, COALESCE(b.original, CAST(b.original_double AS real[])), b.written,
                      COALESCE(public.nudge_digest(b.original), public.nudge_digest(b.original_double))
                 FROM nudge.fit_backups b
                WHERE b.fit_id = ANY($1) AND b.corpus = $2::oid::regclass
                ORDER BY b.row_id, b.fit_id DESC";
    let mut current: Option<(String, bool)> = None; // row id, chain unbroken
    read::for_each_batch(sql, &[fits.into(), corpus.into()], |b| {
        for row in 0..b.len() {
            let rid = b.text(row, 1).unwrap_or_default();
            let what = || format!("backup of row {rid:?}");
            let mut original = Vec::new();
            push_embedding(b.datum(row, 2), VecKind::Real, &mut 0, &mut original, &what);
            let (written, original_digest) = (b.int8(row, 3).unwrap_or_default(), b.int8(row, 4).unwrap_or_default());
            match &mut current {
                Some((id, unbroken)) if *id == rid => {
                    let o = out.get_mut(&rid).expect("newest backup of this row was kept");
                    if *unbroken && written == o.original_digest {
                        o.original = original;
                        o.original_digest = original_digest;
                    } else {
                        *unbroken = false;
                    }
                }
                _ => {
                    out.insert(rid.clone(), Original { written, original, original_digest });
                    current = Some((rid, true));
                }
            }
        }
    });
    out
}
