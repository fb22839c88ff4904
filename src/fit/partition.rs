//! `partition => 'column'`: every query ranks only the corpus rows whose value of that column
//! is the query's own (as an application that filters every search by it does). The corpus
//! and the queries tables both carry the column; values are compared as text. Partitions are
//! numbered by their queries' values; a row of a value no query has ranks for none. A label
//! whose doc is in another partition than its query is an error.

use std::collections::HashMap;

use nudge_core::knn::NO_PARTITION;
use pgrx::prelude::pg_sys;

use nudge_core::gamma::{FitConfig, FitOutcome, FitPass, Selection};
use nudge_core::kfold::KFoldPass;

use super::config::{invalid, FitArgs};
use super::labels::{Labels, QuerySet};
use crate::columns::{self, Column};
use crate::error::{raise_with, OrRaise, PgSqlErrorCode as Code};

/// Fewest evaluated queries (summed over folds) for a partition's own gamma with
/// `gamma_per_partition => true`; fewer: the joint gamma.
pub const MIN_PARTITION_QUERIES: usize = 10;

/// `gamma_per_partition` needs `partition` and a search of gamma (22023).
pub fn check_args(a: &FitArgs, config: &FitConfig) {
    if !a.gamma_per_partition {
        return;
    }
    if a.partition.is_none() {
        invalid("gamma_per_partition needs partition".into(), "Name the partition column: partition => 'tenant_id'.");
    }
    if !matches!(config.selection, Selection::Best(_)) {
        invalid(
            "gamma_per_partition needs gamma_search => 'best' and no fixed gamma".into(),
            "Each partition's gamma is the best of its own curve on the joint search's grid.",
        );
    }
}

/// A held-out pass, partitioned by the validation queries' values (with `partition =>`), with
/// one gamma per partition when asked.
pub fn held_out(mut pass: FitPass, labels: &Labels, a: &FitArgs) -> FitPass {
    if let Some(ids) = super::labels::partition_ids(labels, &[&labels.validation]) {
        pass = pass.partitioned(ids).or_raise();
    }
    if a.gamma_per_partition {
        pass = pass.gamma_per_partition(MIN_PARTITION_QUERIES).or_raise();
    }
    pass
}

/// A k-fold pass (or a held-out split refitting on all labels) whose query rows are `sets`,
/// partitioned as [`held_out`].
pub fn kfold(mut pass: KFoldPass, labels: &Labels, sets: &[&QuerySet], a: &FitArgs) -> KFoldPass {
    if let Some(ids) = super::labels::partition_ids(labels, sets) {
        pass = pass.partitioned(ids).or_raise();
    }
    if a.gamma_per_partition {
        pass = pass.gamma_per_partition(MIN_PARTITION_QUERIES).or_raise();
    }
    pass
}

/// Reports how the partitions' gammas were chosen (a NOTICE), and returns them as recorded in
/// `nudge.fits.partition_gammas`: `{"value": {"gamma": g, "queries": n, "own": bool}, ...}`.
pub fn report_gammas(labels: &Labels, outcome: &FitOutcome) -> Option<String> {
    let p = labels.partitions.as_ref()?;
    if outcome.partition_gammas.is_empty() {
        return None;
    }
    let own = outcome.partition_gammas.iter().filter(|c| c.own).count();
    let joint = outcome.partition_gammas.len() - own;
    pgrx::notice!(
        "nudge_fit: gamma per partition: {own} of {} partitions chose their own gamma; {joint} with fewer than {MIN_PARTITION_QUERIES} evaluated queries use the joint gamma {:.4}",
        outcome.partition_gammas.len(),
        outcome.gamma
    );
    let map: serde_json::Map<String, serde_json::Value> = outcome
        .partition_gammas
        .iter()
        .map(|c| {
            let v = serde_json::json!({"gamma": c.gamma, "queries": c.queries, "own": c.own});
            (p.values[c.partition as usize].clone(), v)
        })
        .collect();
    Some(serde_json::Value::Object(map).to_string())
}

/// The partitions of a fit or an evaluation.
pub struct Partitions {
    /// The corpus column.
    pub column: Column,
    /// Partition values by id (the values the queries have, in first-seen order).
    pub values: Vec<String>,
    index: HashMap<String, u32>,
}

impl Partitions {
    /// The corpus's `name` column and the values of `sets`' queries.
    pub fn new(corpus: pg_sys::Oid, name: &str, sets: &[&[String]]) -> Partitions {
        let column = columns::relation(corpus).column(name, "the partition column");
        let mut p = Partitions { column, values: Vec::new(), index: HashMap::new() };
        for v in sets.iter().flat_map(|s| s.iter()) {
            if !p.index.contains_key(v) {
                p.index.insert(v.clone(), p.values.len() as u32);
                p.values.push(v.clone());
            }
        }
        p
    }

    /// The ids of partition values (each one a query's).
    pub fn ids(&self, values: &[String]) -> Vec<u32> {
        values.iter().map(|v| self.index[v]).collect()
    }

    /// A corpus row's id: [`NO_PARTITION`] for NULL or a value no query has.
    pub fn id_of(&self, value: Option<&str>) -> u32 {
        value.and_then(|v| self.index.get(v).copied()).unwrap_or(NO_PARTITION)
    }

    /// What a corpus scan selects after its other columns: the value as text.
    pub fn scan_column(&self) -> String {
        format!(", t.{}::pg_catalog.text", self.column.ident)
    }
}

/// Checks every label of `labels` (training and validation) after the pass: its doc's
/// partition (`doc_parts[key]`, the value its row had) must be its query's (23514 otherwise,
/// naming query, doc and both values).
pub fn check_labels(p: &Partitions, labels: &Labels, doc_parts: &[Option<String>], corpus_sql: &str) {
    for set in [&labels.train, &labels.validation] {
        check_set(p, labels, set, doc_parts, corpus_sql);
    }
}

fn check_set(p: &Partitions, labels: &Labels, set: &QuerySet, doc_parts: &[Option<String>], corpus_sql: &str) {
    for q in &set.qrels {
        let query_part = &set.parts[q.query as usize];
        let doc_part = doc_parts.get(q.record as usize).and_then(|d| d.as_deref());
        if doc_part == Some(query_part.as_str()) {
            continue;
        }
        let doc = labels.keys.iter().find(|(_, &k)| k == q.record).map(|(d, _)| d.as_str()).unwrap_or("?");
        let doc_in = match doc_part {
            Some(v) => format!("{v:?}"),
            None => "NULL".into(),
        };
        raise_with(
            Code::ERRCODE_CHECK_VIOLATION,
            format!(
                "a label crosses partitions: query {:?} has {col} {query_part:?}, but doc {doc:?} has {col} {doc_in} in {corpus_sql}",
                set.ids[q.query as usize],
                col = p.column.name
            ),
            None,
            Some(format!(
                "With partition => '{}' every query ranks only the rows of its own partition; a label must point to a doc of the same partition.",
                p.column.name
            )),
        );
    }
}
