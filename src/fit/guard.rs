//! The guard of a refit (`nudge_refit(..., guard_queries =>, guard_qrels =>)`): before a refit
//! writes or stages anything, the vectors the application searches now and the refit's
//! candidate are both scored on guard queries that no fit trains on; the candidate is kept
//! only if its metric is at least the current one minus `guard_tolerance`. A rejected refit
//! writes nothing and is recorded as `rejected` with both numbers.
//!
//! The candidate is scored without writing it: one exact k-NN pass over the column as it
//! will be after the write (the rows to write scored with their new vectors, rounded as the
//! column will store them; a target fit's other rows with the source column, which the write
//! copies into the target), the current state with `nudge_evaluate`'s pass over the column
//! read (on the workers of a Citus table). Both use cosine, as gamma's validation does.

use std::collections::HashSet;
use std::str::FromStr;

use nudge_core::knn::Distance;
use nudge_core::metrics::Metric;
use pgrx::prelude::*;

use super::config::{invalid, FitArgs};
use super::inputs::Corpus;
use crate::columns::{self, VecKind};
use crate::error::{raise_with, PgSqlErrorCode as Code};
use crate::evaluate::{self, Overrides};
use crate::exec::Reporter;
use crate::read;
use crate::write::RowWrite;

/// The guard a refit was given.
pub struct Guard<'a> {
    pub queries: pg_sys::Oid,
    pub qrels: pg_sys::Oid,
    /// As given (recorded), and parsed.
    pub metric_name: &'a str,
    metric: Metric,
    pub tolerance: f64,
}

/// The guard's two numbers and its decision.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub before: f64,
    pub after: f64,
    pub accepted: bool,
}

/// The guard arguments, checked: both tables or neither (then no guard).
pub fn parse<'a>(queries: Option<pg_sys::Oid>, qrels: Option<pg_sys::Oid>, metric: &'a str, tolerance: f64) -> Option<Guard<'a>> {
    let (queries, qrels) = match (queries, qrels) {
        (Some(q), Some(r)) => (q, r),
        (None, None) => return None,
        _ => invalid("guard_queries and guard_qrels must be given together".into(), "Give both to guard the refit, or neither."),
    };
    let parsed = Metric::from_str(&metric.to_ascii_lowercase()).unwrap_or_else(|_| {
        invalid(format!("unknown guard_metric \"{metric}\""), "Use ndcg@k, recall@k, capped_recall@k, mrr@k (k >= 1) or top1.")
    });
    if parsed.validate().is_err() {
        invalid(format!("guard_metric \"{metric}\" has a cut-off below 1"), "Use a cut-off k >= 1, e.g. ndcg@10.");
    }
    if !tolerance.is_finite() {
        invalid(format!("guard_tolerance must be a finite number, not {tolerance}"), "It is how much the guard metric may drop (0: never).");
    }
    Some(Guard { queries, qrels, metric_name: metric, metric: parsed, tolerance })
}

/// The guard queries are none of the fit's labelled queries (by table, and by query id).
pub fn check_disjoint(g: &Guard, a: &FitArgs) {
    let mut fit_tables = vec![(a.queries, a.qrels)];
    fit_tables.extend(a.validation);
    let guard_ids = labelled_query_ids(g.qrels);
    for (q, r) in fit_tables {
        let shared = if q == g.queries { guard_ids.iter().min().cloned() } else { labelled_query_ids(r).intersection(&guard_ids).min().cloned() };
        if let Some(id) = shared {
            raise_with(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "guard query {id:?} is also a labelled query of the fit ({})",
                    columns::relation(q).sql
                ),
                None,
                Some("Guard queries must be queries no fit trains on: keep a fixed set of them apart from the labels.".into()),
            );
        }
    }
}

/// Query ids a qrels table labels.
fn labelled_query_ids(qrels: pg_sys::Oid) -> HashSet<String> {
    read::read_qrels(&columns::relation(qrels)).into_iter().map(|l| l.query).collect()
}

/// Score the current vectors and the candidate (`rows` written) on the guard queries (each
/// ranking only its partition's rows, as the fit's queries do, for a partitioned fit: the guard
/// queries carry the partition column too).
pub fn judge(g: &Guard, corpus: &Corpus, partition: Option<&str>, rows: &[RowWrite], reporter: &mut Reporter) -> Verdict {
    let id = corpus.id.name.as_str();
    let judged = evaluate::read_judged(corpus.oid, g.queries, g.qrels, partition);
    let k = g.metric.k();
    // now: what the application searches (the target column of a target fit)
    let searched = corpus.target.as_ref().unwrap_or(&corpus.emb);
    let now = evaluate::Corpus::resolve(corpus.oid, id, &searched.name);
    reporter.report("guard: scoring the current vectors", 0, None);
    let before = evaluate::mean(g.metric, &evaluate::knn(&now, &judged, k, Distance::Cosine, None, reporter), &judged);
    // after: the source column with the rows to write replaced
    let source = evaluate::Corpus::resolve(corpus.oid, id, &corpus.emb.name);
    let overrides: Overrides = rows.iter().map(|r| (r.addr.id.clone(), stored(&r.vector, corpus.kind))).collect();
    reporter.report("guard: scoring the candidate", 0, None);
    let after = evaluate::mean(g.metric, &evaluate::knn(&source, &judged, k, Distance::Cosine, Some(&overrides), reporter), &judged);
    Verdict { before, after, accepted: after >= before - g.tolerance }
}

/// A vector as a column of `kind` will hold it once written.
fn stored(v: &[f32], kind: VecKind) -> Vec<f32> {
    match kind {
        VecKind::Halfvec => v.iter().map(|&x| nudge_core::half::round(x)).collect(),
        VecKind::Vector | VecKind::Real | VecKind::Double => v.to_vec(),
    }
}

/// Say what the guard decided (a rejection is not an error: the refit is recorded).
pub fn notice(fit_id: i64, g: &Guard, v: &Verdict, status: &str) {
    let numbers = format!("{} {:.4} now, {:.4} after (tolerance {})", g.metric_name, v.before, v.after, g.tolerance);
    if status == "rejected" {
        notice!("nudge: refit {fit_id} rejected by its guard and not written: {numbers}");
    } else {
        notice!("nudge: refit {fit_id} passed its guard: {numbers}");
    }
}
