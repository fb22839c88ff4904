//! IR metrics with trec_eval / pytrec_eval definitions.
//!
//! * Relevant = grade > 0. Gain = the grade (linear), discount `1 / log2(rank + 1)`.
//! * NDCG@k: DCG of the top k over the ideal DCG@k of ALL judged records with grade > 0
//!   (sorted by grade), like trec_eval's `ndcg_cut.k`.
//! * Recall@k = relevant retrieved in the top k / all relevant. Capped recall@k (the NUDGE
//!   paper's "recall") = relevant retrieved in the top k / min(k, all relevant).
//! * MRR@k = 1 / rank of the first relevant record within the top k (0 if none).
//! * Top1 = 1 if the first record is relevant (= capped recall@1 = MRR@1 = NUDGE's top-1
//!   validation accuracy).
//! * Ranking: by score descending, ties broken by key DESCENDING (trec_eval's rule, which
//!   compares document ids; here the numeric key). NaN scores rank last. A key listed twice in
//!   a ranking counts once (its best position).
//! * A query without relevant records gets all zeros from [`evaluate`]; callers skip such
//!   queries when averaging (trec_eval does the same for queries without judgements).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::error::{invalid, NudgeError, Result};

/// A retrieval metric at a cut-off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Metric {
    Ndcg(usize),
    Recall(usize),
    CappedRecall(usize),
    Mrr(usize),
    Top1,
}

/// All per-query metrics at one cut-off.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QueryMetrics {
    pub ndcg: f64,
    pub recall: f64,
    pub capped_recall: f64,
    pub mrr: f64,
}

impl Metric {
    /// The cut-off (Top1: 1).
    pub fn k(&self) -> usize {
        match *self {
            Metric::Ndcg(k) | Metric::Recall(k) | Metric::CappedRecall(k) | Metric::Mrr(k) => k,
            Metric::Top1 => 1,
        }
    }

    /// Checks `k >= 1`.
    pub fn validate(&self) -> Result<()> {
        if self.k() == 0 {
            return Err(invalid("metric", "the cut-off k must be at least 1"));
        }
        Ok(())
    }

    /// This metric for one query (see [`evaluate`]).
    pub fn value(&self, ranked: &[(u64, f32)], relevant: &[(u64, f64)]) -> f64 {
        self.pick(&evaluate(ranked, relevant, self.k()))
    }

    /// This metric out of all the metrics of one query.
    pub fn pick(&self, m: &QueryMetrics) -> f64 {
        match self {
            Metric::Ndcg(_) => m.ndcg,
            Metric::Recall(_) => m.recall,
            Metric::CappedRecall(_) | Metric::Top1 => m.capped_recall,
            Metric::Mrr(_) => m.mrr,
        }
    }
}

impl FromStr for Metric {
    type Err = NudgeError;
    /// `ndcg@10`, `recall@5`, `capped_recall@10`, `mrr@10`, `top1` (case-insensitive; without
    /// `@k` the cut-off is 10; `top-1`/`top_1` also accepted).
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let bad = || {
            invalid(
                "metric",
                format!("unknown metric \"{s}\" (expected ndcg@k, recall@k, capped_recall@k, mrr@k or top1)"),
            )
        };
        if matches!(t.as_str(), "top1" | "top-1" | "top_1") {
            return Ok(Metric::Top1);
        }
        let (name, k) = match t.split_once('@') {
            Some((n, k)) => {
                let k: usize = k.trim().parse().map_err(|_| bad())?;
                if k == 0 {
                    return Err(invalid("metric", "the cut-off k must be at least 1"));
                }
                (n.trim().to_string(), k)
            }
            None => (t.clone(), 10),
        };
        match name.as_str() {
            "ndcg" => Ok(Metric::Ndcg(k)),
            "recall" => Ok(Metric::Recall(k)),
            "capped_recall" => Ok(Metric::CappedRecall(k)),
            "mrr" => Ok(Metric::Mrr(k)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Metric::Ndcg(k) => write!(f, "ndcg@{k}"),
            Metric::Recall(k) => write!(f, "recall@{k}"),
            Metric::CappedRecall(k) => write!(f, "capped_recall@{k}"),
            Metric::Mrr(k) => write!(f, "mrr@{k}"),
            Metric::Top1 => write!(f, "top1"),
        }
    }
}

/// Order "better first": score descending (NaN last), then key descending.
pub(crate) fn better_first(a: (f64, u64), b: (f64, u64)) -> Ordering {
    let sa = if a.0.is_nan() { f64::NEG_INFINITY } else { a.0 };
    let sb = if b.0.is_nan() { f64::NEG_INFINITY } else { b.0 };
    sb.partial_cmp(&sa)
        .unwrap_or(Ordering::Equal)
        .then(b.1.cmp(&a.1))
}

/// The judgements of one query, prepared for fast repeated scoring.
#[derive(Debug, Clone)]
pub(crate) struct Judged {
    /// Judged keys (sorted) and their gains (grade if > 0, else 0).
    keys: Vec<u64>,
    gains: Vec<f64>,
    /// Number of relevant records.
    pub n_rel: usize,
    /// `ideal_dcg[r]`: DCG of the ideal ranking cut at `r` (`r <= n_rel`).
    ideal_dcg: Vec<f64>,
}

/// `1 / log2(rank + 1)` for the 0-based `rank0` (a table for the first 1024 ranks).
pub(crate) fn discount(rank0: usize) -> f64 {
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| (0..1024).map(|r| 1.0 / ((r as f64) + 2.0).log2()).collect());
    match t.get(rank0) {
        Some(&d) => d,
        None => 1.0 / ((rank0 as f64) + 2.0).log2(),
    }
}

impl Judged {
    pub fn new(relevant: &[(u64, f64)]) -> Self {
        let mut v: Vec<(u64, f64)> = relevant
            .iter()
            .map(|&(k, g)| (k, if g > 0.0 && g.is_finite() { g } else { 0.0 }))
            .collect();
        // duplicates: keep the largest grade
        v.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then(b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal))
        });
        v.dedup_by_key(|p| p.0);
        let keys = v.iter().map(|p| p.0).collect();
        let mut gains: Vec<f64> = v.iter().map(|p| p.1).collect();
        let mut ideal: Vec<f64> = gains.iter().copied().filter(|&g| g > 0.0).collect();
        ideal.sort_by(|a, b| b.partial_cmp(a).unwrap_or(Ordering::Equal));
        let cumulative = |ideal: &[f64]| {
            let mut dcg = Vec::with_capacity(ideal.len() + 1);
            dcg.push(0.0);
            for (r, g) in ideal.iter().enumerate() {
                let last = dcg[r];
                dcg.push(last + g * discount(r));
            }
            dcg
        };
        let mut ideal_dcg = cumulative(&ideal);
        if !ideal_dcg.last().is_some_and(|d| d.is_finite()) {
            // grades so large that the DCG overflows: NDCG is a ratio, so scale every gain by
            // the largest (only then, so that ordinary grades give bit-identical values)
            let top = ideal[0];
            gains.iter_mut().for_each(|g| *g /= top);
            ideal.iter_mut().for_each(|g| *g /= top);
            ideal_dcg = cumulative(&ideal);
        }
        Judged {
            keys,
            gains,
            n_rel: ideal.len(),
            ideal_dcg,
        }
    }

    /// The relevant records `(key, gain)`, by key.
    pub fn relevant(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        self.keys
            .iter()
            .zip(&self.gains)
            .filter(|p| *p.1 > 0.0)
            .map(|(&k, &g)| (k, g))
    }

    #[inline]
    pub fn gain(&self, key: u64) -> f64 {
        match self.keys.binary_search(&key) {
            Ok(i) => self.gains[i],
            Err(_) => 0.0,
        }
    }

    /// All metrics at cut-off `k` for keys already in rank order (at most `k` are read; keys
    /// must be distinct).
    pub fn metrics_ranked(&self, ranked: impl IntoIterator<Item = u64>, k: usize) -> QueryMetrics {
        if self.n_rel == 0 || k == 0 {
            return QueryMetrics::default();
        }
        let mut dcg = 0.0;
        let mut hits = 0usize;
        let mut mrr = 0.0;
        for (r, key) in ranked.into_iter().take(k).enumerate() {
            let g = self.gain(key);
            if g > 0.0 {
                dcg += g * discount(r);
                hits += 1;
                if mrr == 0.0 {
                    mrr = 1.0 / (r as f64 + 1.0);
                }
            }
        }
        let idcg = self.ideal_dcg[k.min(self.n_rel)];
        QueryMetrics {
            ndcg: if idcg > 0.0 { dcg / idcg } else { 0.0 },
            recall: hits as f64 / self.n_rel as f64,
            capped_recall: hits as f64 / self.n_rel.min(k) as f64,
            mrr,
        }
    }

    /// One metric for keys in rank order.
    pub fn value_ranked(&self, metric: Metric, ranked: impl IntoIterator<Item = u64>) -> f64 {
        metric.pick(&self.metrics_ranked(ranked, metric.k()))
    }
}

/// Sorts a ranking best first (score descending, NaN last, ties by key descending) and drops
/// repeated keys (keeping the best position).
pub(crate) fn sort_ranking(ranked: &[(u64, f32)]) -> Vec<u64> {
    let mut v: Vec<(f64, u64)> = ranked.iter().map(|&(k, s)| (s as f64, k)).collect();
    v.sort_by(|a, b| better_first(*a, *b));
    let mut seen = std::collections::HashSet::with_capacity(v.len());
    v.into_iter()
        .filter(|p| seen.insert(p.1))
        .map(|p| p.1)
        .collect()
}

/// NDCG@k, recall@k, capped recall@k and MRR@k of one query (definitions in the module doc).
/// `ranked` may be longer than `k` and in any order. `relevant`: the query's judged records
/// `(key, grade)`. No relevant record (or `k == 0`): all zeros.
pub fn evaluate(ranked: &[(u64, f32)], relevant: &[(u64, f64)], k: usize) -> QueryMetrics {
    let j = Judged::new(relevant);
    if j.n_rel == 0 || k == 0 {
        return QueryMetrics::default();
    }
    j.metrics_ranked(sort_ranking(ranked), k)
}

/// As [`evaluate`] for a ranking already in order, best first (nothing sorted, nothing
/// dropped: the caller has applied its own tie and duplicate rules).
pub fn evaluate_in_order(ranked: impl IntoIterator<Item = u64>, relevant: &[(u64, f64)], k: usize) -> QueryMetrics {
    let j = Judged::new(relevant);
    if j.n_rel == 0 || k == 0 {
        return QueryMetrics::default();
    }
    j.metrics_ranked(ranked, k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn parse_and_display() {
        assert_eq!("ndcg@10".parse::<Metric>().unwrap(), Metric::Ndcg(10));
        assert_eq!("NDCG".parse::<Metric>().unwrap(), Metric::Ndcg(10));
        assert_eq!(" recall@5 ".parse::<Metric>().unwrap(), Metric::Recall(5));
        assert_eq!(
            "capped_recall@100".parse::<Metric>().unwrap(),
            Metric::CappedRecall(100)
        );
        assert_eq!("mrr@3".parse::<Metric>().unwrap(), Metric::Mrr(3));
        assert_eq!("top1".parse::<Metric>().unwrap(), Metric::Top1);
        assert_eq!("Top-1".parse::<Metric>().unwrap(), Metric::Top1);
        for bad in ["ndcg@0", "ndcg@x", "map@10", "", "recall@-1", "top2"] {
            assert!(
                matches!(
                    bad.parse::<Metric>(),
                    Err(NudgeError::InvalidParameter { name: "metric", .. })
                ),
                "{bad}"
            );
        }
        for m in [
            Metric::Ndcg(10),
            Metric::Recall(5),
            Metric::CappedRecall(20),
            Metric::Mrr(10),
            Metric::Top1,
        ] {
            assert_eq!(m.to_string().parse::<Metric>().unwrap(), m);
        }
        assert_eq!(Metric::Top1.k(), 1);
        assert!(Metric::Ndcg(0).validate().is_err());
        assert!(Metric::Ndcg(1).validate().is_ok());
    }

    #[test]
    fn hand_computed_graded() {
        // ranking (best first): 10, 20, 30, 40, 50 ; grades 20 -> 2, 40 -> 1, 60 -> 3 (not retrieved)
        let ranked = [(30u64, 0.7f32), (10, 0.9), (50, 0.1), (20, 0.8), (40, 0.5)];
        let rel = [(20u64, 2.0), (40, 1.0), (60, 3.0), (10, 0.0)];
        let m = evaluate(&ranked, &rel, 5);
        let dcg = 2.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 3.0 + 2.0 / 3f64.log2() + 1.0 / 2.0;
        assert!(close(m.ndcg, dcg / idcg));
        assert!(close(m.recall, 2.0 / 3.0));
        assert!(close(m.capped_recall, 2.0 / 3.0));
        assert!(close(m.mrr, 0.5));
        // cut at 2
        let m = evaluate(&ranked, &rel, 2);
        assert!(close(
            m.ndcg,
            (2.0 / 3f64.log2()) / (3.0 + 2.0 / 3f64.log2())
        ));
        assert!(close(m.recall, 1.0 / 3.0));
        assert!(close(m.capped_recall, 1.0 / 2.0));
        assert!(close(m.mrr, 0.5));
        // cut at 1
        let m = evaluate(&ranked, &rel, 1);
        assert_eq!(m, QueryMetrics::default());
        assert_eq!(Metric::Top1.value(&ranked, &rel), 0.0);
        assert_eq!(Metric::Mrr(10).value(&ranked, &rel), 0.5);
        assert!(close(Metric::Ndcg(5).value(&ranked, &rel), dcg / idcg));
        assert!(close(
            Metric::CappedRecall(10).value(&ranked, &rel),
            2.0 / 3.0
        ));
        assert!(close(Metric::Recall(1).value(&ranked, &rel), 0.0));
    }

    #[test]
    fn capped_recall_differs_from_recall() {
        let ranked = [(1u64, 3.0f32), (2, 2.0), (3, 1.0)];
        let rel = [(1u64, 1.0), (2, 1.0), (7, 1.0), (8, 1.0)];
        let m = evaluate(&ranked, &rel, 2);
        assert!(close(m.recall, 0.5));
        assert!(close(m.capped_recall, 1.0));
        assert!(close(m.ndcg, 1.0));
        assert!(close(m.mrr, 1.0));
    }

    #[test]
    fn ties_broken_by_key_descending() {
        // all tied: order is 9, 5, 3
        let ranked = [(3u64, 1.0f32), (9, 1.0), (5, 1.0)];
        assert_eq!(Metric::Top1.value(&ranked, &[(9, 1.0)]), 1.0);
        assert_eq!(Metric::Top1.value(&ranked, &[(5, 1.0)]), 0.0);
        assert!(close(Metric::Mrr(3).value(&ranked, &[(3, 1.0)]), 1.0 / 3.0));
        // NaN ranks last, duplicates count once
        let ranked = [(1u64, f32::NAN), (2, 0.5), (2, 0.1), (3, 0.2)];
        assert_eq!(sort_ranking(&ranked), vec![2, 3, 1]);
        assert!(close(
            Metric::Mrr(10).value(&ranked, &[(1, 1.0)]),
            1.0 / 3.0
        ));
        assert!(close(
            Metric::Recall(2).value(&ranked, &[(2, 1.0), (1, 1.0)]),
            0.5
        ));
    }

    #[test]
    fn empty_and_degenerate() {
        assert_eq!(evaluate(&[(1, 1.0)], &[], 10), QueryMetrics::default());
        assert_eq!(
            evaluate(&[(1, 1.0)], &[(1, 0.0), (2, -1.0)], 10),
            QueryMetrics::default()
        );
        assert_eq!(
            evaluate(&[(1, 1.0)], &[(1, 1.0)], 0),
            QueryMetrics::default()
        );
        assert_eq!(evaluate(&[], &[(1, 1.0)], 10), QueryMetrics::default());
        assert_eq!(
            evaluate(&[(1, 1.0)], &[(1, f64::NAN)], 10),
            QueryMetrics::default()
        );
        // duplicate judgements keep the largest grade
        let m = evaluate(&[(1, 1.0), (2, 0.5)], &[(1, 1.0), (1, 3.0), (2, 3.0)], 2);
        assert!(close(m.ndcg, 1.0));
        let m = evaluate(&[(1, 1.0)], &[(1, 1.0)], 10);
        assert_eq!(
            m,
            QueryMetrics {
                ndcg: 1.0,
                recall: 1.0,
                capped_recall: 1.0,
                mrr: 1.0
            }
        );
    }
}
