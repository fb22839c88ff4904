//! Phase 1 of a fit: the arguments, checked and turned into the core's `FitConfig`.

use std::str::FromStr;

use nudge_core::gamma::{FitConfig, Selection};
use nudge_core::metrics::Metric;
use nudge_core::nudge::{Method, NegativeRule};
use pgrx::prelude::*;

use crate::error::{raise, raise_with, PgSqlErrorCode as Code};

/// What a fit was asked to do (from `nudge_fit`'s arguments or a recorded fit).
pub struct FitArgs<'a> {
    pub corpus: pg_sys::Oid,
    pub embedding: &'a str,
    pub queries: pg_sys::Oid,
    pub qrels: pg_sys::Oid,
    pub id_column: &'a str,
    pub method: &'a str,
    pub validation: Option<(pg_sys::Oid, pg_sys::Oid)>,
    /// NULL: k folds (or 10% held out where folds do not apply).
    pub validation_fraction: Option<f64>,
    pub seed: i32,
    pub metric: &'a str,
    pub gamma: Option<f64>,
    pub target: Option<&'a str>,
    pub dry_run: bool,
    pub gamma_search: &'a str,
    pub negative_rule: &'a str,
    /// Choose gamma by k-fold cross-validation over all labelled queries (no held-out split).
    pub folds: Option<i32>,
    /// The queries whose labels make the final update: `train` (the held-out queries only
    /// choose gamma) or `all`; NULL: `all` with folds, else `train`.
    pub update_from: Option<&'a str>,
    pub refit_of: Option<i64>,
    /// How a writing fit locks the corpus (online 'rows' or strict 'table').
    pub lock: super::inputs::Lock,
    /// Compute and keep the rows to write in `nudge.fit_staged`; `nudge_apply` writes them.
    pub staged: bool,
    /// A refit's guard: written or staged only if it does not score worse on these queries.
    pub guard: Option<super::guard::Guard<'a>>,
    // -- partitioned fits (partition =>)
    /// Every query ranks only the corpus rows with its value of this column.
    pub partition: Option<&'a str>,
    /// One gamma per partition (with enough labelled queries; the others the joint one).
    pub gamma_per_partition: bool,
}

/// Folds when neither validation tables, a validation fraction nor a fold count is given
/// (capped at the number of labelled queries): the best of 3, 5 and 10 folds, a held-out 10%
/// and a held-out 10% with the update from all labels on SciFact and 6 synthetic sets, NUDGE-N and NUDGE-M
/// (BENCHMARKS.md, "Choosing gamma").
pub const DEFAULT_FOLDS: usize = 10;
/// [`DEFAULT_FOLDS`], or as many as there are labelled queries (at least 2).
pub fn default_folds(labelled_queries: usize) -> usize {
    if labelled_queries < 2 {
        invalid(
            format!("choosing gamma needs at least 2 labelled queries, there are {labelled_queries}"),
            "Label more queries, or give a fixed gamma.",
        );
    }
    DEFAULT_FOLDS.min(labelled_queries)
}

/// The held-out share where folds do not apply (a fixed gamma, gamma_search => 'reference').
pub const DEFAULT_FRACTION: f64 = 0.1;

/// How the labelled queries are split to choose gamma.
#[derive(Clone, Copy, PartialEq)]
pub enum Split {
    /// validation_queries / validation_qrels.
    Tables,
    /// A seeded share of the queries held out.
    Fraction(f64),
    /// K folds (None: [`DEFAULT_FOLDS`], capped at the labelled queries).
    Folds(Option<usize>),
}

/// The split the arguments ask for (checked by [`parse_config`]).
pub fn split(a: &FitArgs, config: &FitConfig) -> Split {
    match (a.validation, a.validation_fraction, a.folds) {
        (Some(_), _, _) => Split::Tables,
        (None, Some(f), _) => Split::Fraction(f),
        (None, None, Some(k)) => Split::Folds(Some(k as usize)),
        (None, None, None) if matches!(config.selection, Selection::Best(_)) => Split::Folds(None),
        (None, None, None) => Split::Fraction(DEFAULT_FRACTION),
    }
}

/// Where the final update's G comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum UpdateFrom {
    Train,
    All,
}

impl UpdateFrom {
    pub fn name(self) -> &'static str {
        match self {
            UpdateFrom::Train => "train",
            UpdateFrom::All => "all",
        }
    }
}

/// A required argument of nudge_fit: NULL is an error.
pub fn required<T>(value: Option<T>, name: &str) -> T {
    required_in(value, name, "nudge_fit")
}

/// A required argument of function `func`: NULL is an error.
pub fn required_in<T>(value: Option<T>, name: &str, func: &str) -> T {
    value.unwrap_or_else(|| {
        raise_with(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("argument \"{name}\" of {func} must not be NULL"),
            None,
            Some("Leave an argument out to use its default.".into()),
        )
    })
}

/// Both validation tables or neither.
pub fn validation_pair(queries: Option<pg_sys::Oid>, qrels: Option<pg_sys::Oid>) -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    match (queries, qrels) {
        (Some(q), Some(r)) => Some((q, r)),
        (None, None) => None,
        _ => raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, "validation_queries and validation_qrels must be given together"),
    }
}

pub fn invalid(msg: String, hint: &str) -> ! {
    raise_with(Code::ERRCODE_INVALID_PARAMETER_VALUE, msg, None, Some(hint.to_string()))
}

/// `update_from`, checked against the rest of the arguments.
pub fn parse_update_from(a: &FitArgs, config: &FitConfig) -> UpdateFrom {
    let folds = matches!(split(a, config), Split::Folds(_));
    let u = match a.update_from.map(|u| u.to_ascii_lowercase()).as_deref() {
        None if folds => UpdateFrom::All,
        None => UpdateFrom::Train,
        Some("train") => UpdateFrom::Train,
        Some("all") => UpdateFrom::All,
        Some(other) => invalid(format!("unknown update_from \"{other}\""), "Use 'train' or 'all'."),
    };
    if folds && u == UpdateFrom::Train {
        invalid(
            "folds need update_from => 'all'".into(),
            "With folds every labelled query trains the final update; leave update_from out.",
        );
    }
    if u == UpdateFrom::All && !matches!(config.selection, Selection::Best(_)) {
        invalid(
            "update_from => 'all' needs gamma_search => 'best' and no fixed gamma".into(),
            "It refits on the labels that chose gamma; a fixed gamma chooses nothing.",
        );
    }
    u
}

pub fn parse_config(a: &FitArgs) -> FitConfig {
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
    if let Some(k) = a.folds {
        if a.validation.is_some() {
            invalid(
                "folds cannot be combined with validation_queries / validation_qrels".into(),
                "With folds, every labelled query is used both to choose gamma and to move records; leave the validation tables out.",
            );
        }
        if !matches!(selection, Selection::Best(_)) {
            invalid(
                "folds needs gamma_search => 'best' and no fixed gamma".into(),
                "Folds choose gamma by the mean out-of-fold metric.",
            );
        }
        if k < 2 {
            invalid(format!("folds must be at least 2, not {k}"), "Leave folds out for 10 (fewer if there are fewer labelled queries).");
        }
        if a.validation_fraction.is_some() {
            invalid(
                "folds cannot be combined with validation_fraction".into(),
                "Give folds to choose gamma by cross-validation, or validation_fraction to hold out a share of the queries.",
            );
        }
    }
    if let Some(f) = a.validation_fraction {
        if a.validation.is_some() {
            invalid(
                "validation_fraction cannot be combined with validation_queries / validation_qrels".into(),
                "The validation tables already say which queries choose gamma; leave validation_fraction out.",
            );
        }
        if !(f > 0.0 && f < 1.0) {
            invalid(
                format!("validation_fraction must be between 0 and 1 (exclusive), not {f}"),
                "It is the share of queries held out to choose gamma.",
            );
        }
    }
    if a.seed < 0 {
        invalid(format!("seed must be >= 0, not {}", a.seed), "Any non-negative integer works.");
    }
    FitConfig { method, selection, negative_rule }
}

pub fn method_name(m: Method) -> &'static str {
    match m {
        Method::NudgeM => "nudge_m",
        Method::NudgeN => "nudge_n",
    }
}

/// `nudge.fits.gamma_search` and `.metric` for a configuration.
pub fn selection_names(config: &FitConfig, metric: &str) -> (&'static str, String) {
    match config.selection {
        Selection::Fixed(_) => ("fixed", metric.to_ascii_lowercase()),
        Selection::Best(_) => ("best", metric.to_ascii_lowercase()),
        Selection::Parity => ("reference", if config.method == Method::NudgeN { "top1_accuracy" } else { "top1" }.to_string()),
    }
}
