//! Phase 7 of a fit: its row in `nudge.fits` (parameters, gamma, metrics, curve, status).

use nudge_core::gamma::{FitConfig, FitOutcome};
use pgrx::prelude::*;

use super::config::{method_name, selection_names, FitArgs, Split, UpdateFrom};
use super::labels::Labels;
use crate::catalog::{self, Ext};
use crate::error::OrRaise;

/// What a fit did, besides its arguments.
pub struct Done<'a> {
    pub fit_id: i64,
    pub config: &'a FitConfig,
    pub labels: &'a Labels,
    pub outcome: &'a FitOutcome,
    pub embedding_type: &'a str,
    /// Validation queries evaluated (all folds' together for k folds).
    pub n_validation: usize,
    pub split: Split,
    /// The fold count of a k-fold fit (the default resolved).
    pub folds: Option<i32>,
    pub update_from: UpdateFrom,
    pub records_changed: i64,
    pub written: &'a super::apply::Written,
    pub seconds: f64,
    /// applied, staged, dry_run or rejected (by the guard).
    pub status: &'a str,
    pub guard: Option<super::guard::Verdict>,
    /// With `gamma_per_partition`: each partition's gamma (JSON).
    pub partition_gammas: Option<&'a str>,
}

/// The fit's row, written as the extension's owner (user roles cannot write the catalog);
/// `created_by` is the calling role.
pub fn insert(e: &Ext, a: &FitArgs, d: &Done) {
    let curve = serde_json::to_string(&d.outcome.curve.iter().map(|(g, v)| [*g, *v]).collect::<Vec<_>>()).unwrap();
    let (gamma_search, metric_name) = selection_names(d.config, a.metric);
    let created_by = catalog::caller();
    catalog::as_owner(e, || Spi::run_with_args(
        "INSERT INTO nudge.fits (fit_id, corpus, id_column, embedding, embedding_type, target, queries, qrels,
             validation_queries, validation_qrels, validation_fraction, seed, method, metric, gamma_search,
             negative_rule, gamma, train_queries, validation_query_count, records_moving, records_changed,
             rows_written, validation_before, validation_after, curve, seconds, status, refit_of, folds,
             update_from, rows_skipped, lock, created_by, guard_queries, guard_qrels, guard_metric, guard_tolerance,
             guard_before, guard_after, partition, partition_gammas)
         VALUES ($26, $1::pg_catalog.regclass, $2, $3, $4, $5, $6::pg_catalog.regclass, $7::pg_catalog.regclass,
             $8::pg_catalog.regclass, $9::pg_catalog.regclass, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
             $21, $22, $23, $24::pg_catalog.jsonb, $27, $25, $28, $29, $30, $31, $32, $33::pg_catalog.name,
             $34::pg_catalog.regclass, $35::pg_catalog.regclass, $36, $37, $38, $39, $40, $41::pg_catalog.jsonb)",
        &[
            a.corpus.into(),
            a.id_column.into(),
            a.embedding.into(),
            d.embedding_type.into(),
            a.target.into(),
            a.queries.into(),
            a.qrels.into(),
            a.validation.map(|v| v.0).into(),
            a.validation.map(|v| v.1).into(),
            match d.split {
                Split::Fraction(f) => Some(f),
                _ => None,
            }
            .into(),
            a.validation.is_none().then_some(a.seed).into(),
            method_name(d.config.method).into(),
            Some(metric_name).into(),
            gamma_search.into(),
            a.negative_rule.to_ascii_lowercase().into(),
            d.outcome.gamma.into(),
            (d.labels.train.vectors.nrows() as i32).into(),
            (d.n_validation as i32).into(),
            (d.outcome.keys.len() as i64).into(),
            d.records_changed.into(),
            d.written.rows.into(),
            d.outcome.validation_before.into(),
            d.outcome.validation_after.into(),
            curve.into(),
            d.status.into(),
            d.fit_id.into(),
            d.seconds.into(),
            a.refit_of.into(),
            d.folds.into(),
            d.update_from.name().into(),
            d.written.skipped.into(),
            (!a.dry_run).then_some(a.lock.name()).into(),
            created_by.into(),
            a.guard.as_ref().map(|g| g.queries).into(),
            a.guard.as_ref().map(|g| g.qrels).into(),
            a.guard.as_ref().map(|g| g.metric_name.to_ascii_lowercase()).into(),
            a.guard.as_ref().map(|g| g.tolerance).into(),
            d.guard.map(|v| v.before).into(),
            d.guard.map(|v| v.after).into(),
            a.partition.into(),
            d.partition_gammas.into(),
        ],
    ))
    .or_raise();
}
