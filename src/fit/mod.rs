//! nudge_fit and nudge_refit: read labelled queries and the corpus, run NUDGE, write the
//! nudged vectors.
//!
//! A fit is a short sequence of phases, one module each, in one transaction (any error leaves
//! every table as it was):
//!  1. `config`: arguments checked, the core's configuration;
//!  2. `inputs`: the corpus and its columns resolved; a writing fit locks the table (online:
//!     against other fits and DDL only; strict: against every write);
//!  3. `labels`: queries and labels read and split (or kept whole for k folds); the moving
//!     records and their G;
//!  4. `pass`: one streaming pass over the corpus (static top-k per validation query, the
//!     moving records' vectors, the addresses of rows to write);
//!  5. gamma chosen on the moving records alone (on the held-out queries, or by the mean
//!     out-of-fold metric of k folds, `folds =>`) and the new vectors computed (core);
//!  6. `apply`: the rows to write, written where they still hold what the fit read (backing up
//!     what is overwritten; the others are counted as skipped);
//!  7. `record`: the fit's row in nudge.fits.
//!
//! The corpus pass and the write are the only phases with more than one form: on a Citus
//! distributed table the pass runs on the shards (`pushdown`) and rows are written by key. A refit starts from the original vectors
//! (`originals`): rows changed by earlier applied in-place fits of the same column are read
//! from their oldest backup, and rows no longer moved are written back to their originals.

mod apply;
mod config;
mod guard;
mod inputs;
mod labels;
mod originals;
pub(crate) mod partition;
mod pass;
mod pushdown;
mod record;
mod revert;
pub(crate) mod stage;

use nudge_core::gamma::{FitPass, Selection};
use nudge_core::kfold::KFoldPass;
use pgrx::prelude::*;
use crate::columns::RegClass;

use crate::citus::Placement;
use crate::error::{raise, OrRaise, PgSqlErrorCode as Code};
use crate::exec::{self, Reporter};
use config::{required, FitArgs, Split, UpdateFrom};

type FitRow = (
    name!(fit_id, i64),
    name!(method, String),
    name!(gamma, f64),
    name!(records_changed, i64),
    name!(validation_before, Option<f64>),
    name!(validation_after, Option<f64>),
    name!(seconds, f64),
    name!(rows_skipped, i64),
);

/// What a fit or refit returns: nudge_fit's row, and for nudge_refit also its status and the
/// guard's numbers.
struct Ran {
    row: FitRow,
    status: &'static str,
    guard: Option<guard::Verdict>,
}

/// Fine-tune the stored embeddings of `corpus` for the labelled `queries`. (The SQL function
/// `nudge_fit`; its C symbol is this signature's own, so that a catalog of an earlier version
/// reaches [`nudge_fit`] below.)
#[allow(clippy::too_many_arguments)]
#[pg_extern(name = "nudge_fit", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn nudge_fit_0_2(
    corpus: Option<RegClass>,
    embedding: Option<&str>,
    queries: Option<RegClass>,
    qrels: Option<RegClass>,
    id_column: default!(Option<&str>, "'id'"),
    method: default!(Option<&str>, "'nudge_n'"),
    validation_queries: default!(Option<RegClass>, "NULL"),
    validation_qrels: default!(Option<RegClass>, "NULL"),
    validation_fraction: default!(Option<f64>, "NULL"),
    seed: default!(Option<i32>, 0),
    metric: default!(Option<&str>, "'ndcg@10'"),
    gamma: default!(Option<f64>, "NULL"),
    target: default!(Option<&str>, "NULL"),
    dry_run: default!(Option<bool>, false),
    gamma_search: default!(Option<&str>, "'best'"),
    negative_rule: default!(Option<&str>, "'skip'"),
    folds: default!(Option<i32>, "NULL"),
    update_from: default!(Option<&str>, "NULL"),
    lock: default!(Option<&str>, "'rows'"),
    staged: default!(Option<bool>, false),
    partition: default!(Option<&str>, "NULL"),
    gamma_per_partition: default!(Option<bool>, false),
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
        name!(rows_skipped, i64),
    ),
> {
    // Every argument but gamma, target and the validation tables is required: a NULL is an
    // error (the function cannot be STRICT, as those three default to NULL).
    let oid = |r: Option<RegClass>, name| required(r, name).0;
    let args = FitArgs {
        corpus: oid(corpus, "corpus"),
        embedding: required(embedding, "embedding"),
        queries: oid(queries, "queries"),
        qrels: oid(qrels, "qrels"),
        id_column: required(id_column, "id_column"),
        method: required(method, "method"),
        validation: config::validation_pair(validation_queries.map(|r| r.0), validation_qrels.map(|r| r.0)),
        validation_fraction,
        seed: required(seed, "seed"),
        metric: required(metric, "metric"),
        gamma,
        target,
        dry_run: required(dry_run, "dry_run"),
        gamma_search: required(gamma_search, "gamma_search"),
        negative_rule: required(negative_rule, "negative_rule"),
        folds,
        update_from,
        refit_of: None,
        lock: inputs::Lock::parse(required(lock, "lock")),
        staged: required(staged, "staged"),
        guard: None,
        partition,
        gamma_per_partition: required(gamma_per_partition, "gamma_per_partition"),
    };
    TableIterator::once(run(&args).row)
}

/// The entry point of 0.1.0's `nudge_fit` (its 20 arguments): until `ALTER EXTENSION nudge
/// UPDATE` a call answers 55000 saying so (nothing is read or written).
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn nudge_fit(
    _corpus: Option<RegClass>,
    _embedding: Option<&str>,
    _queries: Option<RegClass>,
    _qrels: Option<RegClass>,
    _id_column: Option<&str>,
    _method: Option<&str>,
    _validation_queries: Option<RegClass>,
    _validation_qrels: Option<RegClass>,
    _validation_fraction: Option<f64>,
    _seed: Option<i32>,
    _metric: Option<&str>,
    _gamma: Option<f64>,
    _target: Option<&str>,
    _dry_run: Option<bool>,
    _gamma_search: Option<&str>,
    _negative_rule: Option<&str>,
    _folds: Option<i32>,
    _update_from: Option<&str>,
    _lock: Option<&str>,
    _staged: Option<bool>,
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
        name!(rows_skipped, i64),
    ),
> {
    crate::catalog::current();
    raise(Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, "nudge_fit: this catalog's nudge_fit has another signature than the library's")
}

/// Re-run a recorded fit with its parameters on the current labels. In place, it starts
/// from the original vectors (as every fit does) and is recorded as a new fit. `lock` is the
/// call's own (not the recorded fit's), and so are `staged` and the guard: with
/// `guard_queries` / `guard_qrels` the refit is written (or staged) only if it scores at least
/// the current vectors' `guard_metric` minus `guard_tolerance` on those queries (guard.rs).
///
/// (Its C symbol is `nudge_refit_guarded_wrapper`: 0.1.0's SQL binds `nudge_refit_wrapper`,
/// with four arguments, and compat.rs keeps that symbol for the version check.)
#[allow(clippy::too_many_arguments)]
#[pg_extern(name = "nudge_refit", volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn nudge_refit_guarded(
    fit_id: Option<i64>,
    dry_run: default!(Option<bool>, false),
    lock: default!(Option<&str>, "'rows'"),
    staged: default!(Option<bool>, false),
    guard_queries: default!(Option<RegClass>, "NULL"),
    guard_qrels: default!(Option<RegClass>, "NULL"),
    guard_metric: default!(Option<&str>, "'ndcg@10'"),
    guard_tolerance: default!(Option<f64>, 0.0),
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
        name!(rows_skipped, i64),
        name!(status, String),
        name!(guard_before, Option<f64>),
        name!(guard_after, Option<f64>),
    ),
> {
    crate::catalog::current();
    // (not STRICT, as the guard tables default to NULL: every other NULL is an error)
    use config::required_in as required;
    let fit_id = required(fit_id, "fit_id", "nudge_refit");
    let dry_run = required(dry_run, "dry_run", "nudge_refit");
    let staged = required(staged, "staged", "nudge_refit");
    let lock = inputs::Lock::parse(required(lock, "lock", "nudge_refit"));
    let guard = guard::parse(
        guard_queries.map(|r| r.0),
        guard_qrels.map(|r| r.0),
        required(guard_metric, "guard_metric", "nudge_refit"),
        required(guard_tolerance, "guard_tolerance", "nudge_refit"),
    );
    let Some(r) = Recorded::read(fit_id) else {
        raise(Code::ERRCODE_UNDEFINED_OBJECT, format!("fit {fit_id} does not exist"));
    };
    let fixed = r.gamma_search == "fixed";
    let metric = match r.gamma_search.as_str() {
        "reference" => "ndcg@10".to_string(),
        _ => r.metric.clone().unwrap_or_else(|| "ndcg@10".into()),
    };
    let args = FitArgs {
        corpus: r.corpus,
        embedding: &r.embedding,
        queries: r.queries,
        qrels: r.qrels,
        id_column: &r.id_column,
        method: &r.method,
        validation: r.validation_queries.zip(r.validation_qrels),
        validation_fraction: r.validation_fraction,
        seed: r.seed.unwrap_or(0),
        metric: &metric,
        gamma: fixed.then_some(r.gamma),
        target: r.target.as_deref(),
        dry_run,
        gamma_search: if fixed { "best" } else { &r.gamma_search },
        negative_rule: &r.negative_rule,
        folds: r.folds,
        update_from: r.update_from.as_deref(),
        refit_of: Some(fit_id),
        lock,
        staged,
        guard,
        partition: r.partition.as_deref(),
        gamma_per_partition: r.gamma_per_partition,
    };
    let ran = run(&args);
    let (a, b, c, d, e, f, g, h) = ran.row;
    let (before, after) = (ran.guard.map(|v| v.before), ran.guard.map(|v| v.after));
    TableIterator::once((a, b, c, d, e, f, g, h, ran.status.to_string(), before, after))
}

/// The parameters of a recorded fit (nudge_refit), and its state (nudge_apply_step).
struct Recorded {
    corpus: pg_sys::Oid,
    embedding: String,
    embedding_type: String,
    status: String,
    queries: pg_sys::Oid,
    qrels: pg_sys::Oid,
    id_column: String,
    method: String,
    validation_queries: Option<pg_sys::Oid>,
    validation_qrels: Option<pg_sys::Oid>,
    validation_fraction: Option<f64>,
    seed: Option<i32>,
    metric: Option<String>,
    gamma_search: String,
    gamma: f64,
    target: Option<String>,
    negative_rule: String,
    folds: Option<i32>,
    update_from: Option<String>,
    created_by: String,
    partition: Option<String>,
    gamma_per_partition: bool,
}

impl Recorded {
    fn read(fit_id: i64) -> Option<Recorded> {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT corpus::oid, embedding, queries::oid, qrels::oid, id_column, method,
                        validation_queries::oid, validation_qrels::oid, validation_fraction, seed, metric,
                        gamma_search, gamma, target, negative_rule, folds, update_from, embedding_type, status,
                        created_by::pg_catalog.text, partition, partition_gammas IS NOT NULL
                   FROM nudge.fits WHERE fit_id OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[fit_id.into()],
            )?;
            if t.is_empty() {
                return Ok::<_, pgrx::spi::Error>(None);
            }
            let t = t.first();
            // (columns declared NOT NULL in sql/catalog.sql)
            Ok(Some(Recorded {
                corpus: t.get(1)?.unwrap(),
                embedding: t.get(2)?.unwrap(),
                queries: t.get(3)?.unwrap(),
                qrels: t.get(4)?.unwrap(),
                id_column: t.get(5)?.unwrap(),
                method: t.get(6)?.unwrap(),
                validation_queries: t.get(7)?,
                validation_qrels: t.get(8)?,
                validation_fraction: t.get(9)?,
                seed: t.get(10)?,
                metric: t.get(11)?,
                gamma_search: t.get(12)?.unwrap(),
                gamma: t.get(13)?.unwrap(),
                target: t.get(14)?,
                negative_rule: t.get(15)?.unwrap(),
                folds: t.get(16)?,
                update_from: t.get(17)?,
                embedding_type: t.get(18)?.unwrap(),
                status: t.get(19)?.unwrap(),
                created_by: t.get(20)?.unwrap(),
                partition: t.get(21)?,
                gamma_per_partition: t.get(22)?.unwrap_or(false),
            }))
        })
        .or_raise()
    }
}

/// The corpus pass: on the workers of a Citus distributed table, else read here.
fn corpus_pass<P: pass::CorpusPass>(
    ext: &crate::catalog::Ext,
    corpus: &inputs::Corpus,
    labels: &labels::Labels,
    pass: P,
    originals: &originals::Originals,
    reporter: &mut Reporter,
) -> (P, pass::Addresses) {
    match corpus.placement {
        Placement::Citus { pushdown: true, .. } => pushdown::pass(ext, corpus, labels, pass, originals, reporter),
        _ => pass::local(corpus, labels, pass, originals, reporter),
    }
}

/// A fit, phase by phase.
fn run(a: &FitArgs) -> Ran {
    let ext = crate::catalog::current();
    let mut reporter = Reporter::new("nudge_fit");
    let config = config::parse_config(a);
    let update_from = config::parse_update_from(a, &config);
    partition::check_args(a, &config);
    if a.staged {
        stage::check_args(a.dry_run, a.target, a.lock);
    }
    let corpus = inputs::resolve(a);
    if corpus.writing {
        stage::refuse_while_staged(a.corpus, &corpus.emb.name);
    }

    reporter.report("reading queries", 0, None);
    let split = config::split(a, &config);
    let held_out = !matches!(split, Split::Folds(_)) && !matches!(config.selection, Selection::Fixed(_));
    let labels = labels::read_and_split(a, split, held_out);
    if let Some(g) = &a.guard {
        guard::check_disjoint(g, a);
    }
    let originals = originals::read(&ext, a.corpus, &corpus.emb);

    let (outcome, addresses, n_validation, folds) = pass_and_gamma(a, &ext, &corpus, &labels, &originals, split, update_from, config, &mut reporter);
    let partition_gammas = partition::report_gammas(&labels, &outcome);
    let (rows, records_changed) = apply::rows_to_write(&outcome, &addresses, &originals);
    let verdict = a.guard.as_ref().map(|g| guard::judge(g, &corpus, a.partition, &rows, &mut reporter));
    let status = status_of(a, verdict);
    let fit_id = crate::catalog::next_fit_id(&ext);
    if let (Some(v), Some(g)) = (verdict, &a.guard) {
        guard::notice(fit_id, g, &v, status);
    }
    let written = write_or_stage(&ext, &corpus, fit_id, status, &rows, &mut reporter);
    let seconds = reporter.elapsed();
    record::insert(
        &ext,
        a,
        &record::Done {
            fit_id,
            config: &config,
            labels: &labels,
            outcome: &outcome,
            embedding_type: &corpus.emb.type_sql,
            n_validation,
            split,
            folds,
            update_from,
            records_changed,
            written: &written,
            seconds,
            status,
            guard: verdict,
            partition_gammas: partition_gammas.as_deref(),
        },
    );
    let method = config::method_name(config.method).to_string();
    let row = (fit_id, method, outcome.gamma, records_changed, outcome.validation_before, outcome.validation_after, seconds, written.skipped);
    Ran { row, status, guard: verdict }
}

/// Phases 4 and 5: the corpus pass and the choice of gamma, on a held-out split (the update
/// from the training queries, or from all) or by k folds. Returns the outcome, the rows the
/// fit may write, the validation queries evaluated and the fold count.
#[allow(clippy::too_many_arguments)]
fn pass_and_gamma(
    a: &FitArgs,
    ext: &crate::catalog::Ext,
    corpus: &inputs::Corpus,
    labels: &labels::Labels,
    originals: &originals::Originals,
    split: Split,
    update_from: UpdateFrom,
    config: nudge_core::gamma::FitConfig,
    reporter: &mut Reporter,
) -> (nudge_core::gamma::FitOutcome, pass::Addresses, usize, Option<i32>) {
    match split {
        Split::Tables | Split::Fraction(_) if update_from == UpdateFrom::All => {
            let (queries, qrels, validation) = labels::train_then_validation(labels);
            let pass = KFoldPass::held_out(queries, qrels, labels.n_labelled(), validation, config).or_raise();
            let pass = partition::kfold(pass, labels, &[&labels.train, &labels.validation], a);
            let (pass, addresses) = corpus_pass(ext, corpus, labels, pass, originals, reporter);
            let held = exec::with_hooks(reporter, None, |hooks| pass.finish(hooks)).or_raise();
            (held.fit, addresses, held.fold_evaluated.iter().sum(), None)
        }
        Split::Tables | Split::Fraction(_) => {
            let moving = labels::moving_set(labels);
            let pass = FitPass::new(moving, labels.validation.vectors.clone(), labels.validation.qrels.clone(), config).or_raise();
            let pass = partition::held_out(pass, labels, a);
            let (pass, addresses) = corpus_pass(ext, corpus, labels, pass, originals, reporter);
            let outcome = exec::with_hooks(reporter, None, |hooks| pass.finish(hooks)).or_raise();
            (outcome, addresses, labels.validation.vectors.nrows(), None)
        }
        Split::Folds(k) => {
            let k = k.unwrap_or_else(|| config::default_folds(labels::labelled_queries(labels)));
            let (train, n) = (&labels.train, labels.n_labelled());
            let pass = KFoldPass::new(train.vectors.clone(), train.qrels.clone(), n, k, a.seed as u32, config).or_raise();
            let pass = partition::kfold(pass, labels, &[train], a);
            let (pass, addresses) = corpus_pass(ext, corpus, labels, pass, originals, reporter);
            let folded = exec::with_hooks(reporter, None, |hooks| pass.finish(hooks)).or_raise();
            (folded.fit, addresses, folded.fold_evaluated.iter().sum(), Some(k as i32))
        }
    }
}

/// What the fit is: a dry run, rejected by its guard, staged or applied.
fn status_of(a: &FitArgs, verdict: Option<guard::Verdict>) -> &'static str {
    match verdict {
        _ if a.dry_run => "dry_run",
        Some(v) if !v.accepted => "rejected",
        _ if a.staged => "staged",
        _ => "applied",
    }
}

/// Phase 6: write the rows (applied), keep them in nudge.fit_staged (staged), or nothing.
fn write_or_stage(
    ext: &crate::catalog::Ext,
    corpus: &inputs::Corpus,
    fit_id: i64,
    status: &str,
    rows: &[crate::write::RowWrite],
    reporter: &mut Reporter,
) -> apply::Written {
    match status {
        "applied" => apply::write(ext, corpus, fit_id, rows, reporter),
        "staged" => {
            stage::stage(ext, corpus, fit_id, rows, reporter);
            apply::Written { rows: 0, skipped: 0 }
        }
        _ => apply::Written { rows: 0, skipped: 0 },
    }
}
