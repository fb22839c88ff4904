//! The per-record gradient `G_i = sum of the training queries that have record i as relevant`,
//! built with one sparse group-by.

use ndarray::{Array2, ArrayView2};

use crate::error::{invalid, NudgeError, Result};

/// One relevance judgement: `query` is a row of the query matrix, `record` a labelled key,
/// `grade > 0` means relevant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Qrel {
    pub query: u32,
    pub record: u64,
    pub grade: f64,
}

/// The records that move: `keys` sorted ascending and unique, row `i` of `g` is `G` of `keys[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MovingSet {
    pub keys: Vec<u64>,
    pub g: Array2<f32>,
}

impl MovingSet {
    /// Number of moving records.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Row of `key` in `keys`/`g`.
    pub fn position(&self, key: u64) -> Option<usize> {
        self.keys.binary_search(&key).ok()
    }
}

/// `G_i` = sum of the raw training query vectors over the qrels rows with `grade > 0` whose
/// query is in `train` (row indices of `queries`). A (query, record) pair listed more than once
/// counts once. Sums are accumulated in f64 and stored as f32.
///
/// Errors: no training queries or no relevant judgement among them (`Empty`), a zero-dimensional
/// query matrix, a `train` index out of range or repeated, a qrel whose query is out of range or
/// whose record is not below `n_labelled` (`InvalidParameter`), NaN/Inf in a training query
/// (`NonFinite`, index = query row) or in a grade (`NonFinite`, what = "qrel grades", index =
/// qrel position).
pub fn gradients(
    queries: ArrayView2<f32>,
    qrels: &[Qrel],
    train: &[usize],
    n_labelled: u64,
) -> Result<MovingSet> {
    let (nq, dim) = queries.dim();
    if dim == 0 {
        return Err(invalid(
            "queries",
            "query vectors must have at least one dimension",
        ));
    }
    if train.is_empty() {
        return Err(NudgeError::Empty {
            what: "training queries".into(),
        });
    }
    let mut is_train = vec![false; nq];
    for &t in train {
        if t >= nq {
            return Err(invalid(
                "train",
                format!("query row {t} is out of range (there are {nq} queries)"),
            ));
        }
        if is_train[t] {
            return Err(invalid("train", format!("query row {t} is listed twice")));
        }
        is_train[t] = true;
    }
    for &t in train {
        if queries.row(t).iter().any(|x| !x.is_finite()) {
            return Err(NudgeError::NonFinite {
                what: "training queries".into(),
                index: t,
            });
        }
    }
    let mut pairs: Vec<(u64, u32)> = Vec::new();
    for (i, q) in qrels.iter().enumerate() {
        if (q.query as usize) >= nq {
            return Err(invalid(
                "qrels",
                format!(
                    "query row {} is out of range (there are {nq} queries)",
                    q.query
                ),
            ));
        }
        if q.record >= n_labelled {
            return Err(invalid(
                "qrels",
                format!(
                    "record key {} is not a labelled key (must be below {n_labelled})",
                    q.record
                ),
            ));
        }
        if !q.grade.is_finite() {
            return Err(NudgeError::NonFinite {
                what: "qrel grades".into(),
                index: i,
            });
        }
        if q.grade > 0.0 && is_train[q.query as usize] {
            pairs.push((q.record, q.query));
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    if pairs.is_empty() {
        return Err(NudgeError::Empty {
            what: "relevant judgements for the training queries".into(),
        });
    }
    let mut keys: Vec<u64> = pairs.iter().map(|p| p.0).collect();
    keys.dedup();
    let mut g = Array2::<f32>::zeros((keys.len(), dim));
    let mut acc = vec![0f64; dim];
    let mut start = 0;
    for (row, mut out) in g.outer_iter_mut().enumerate() {
        let key = keys[row];
        acc.iter_mut().for_each(|a| *a = 0.0);
        let mut end = start;
        while end < pairs.len() && pairs[end].0 == key {
            let q = queries.row(pairs[end].1 as usize);
            for (a, &x) in acc.iter_mut().zip(q.iter()) {
                *a += x as f64;
            }
            end += 1;
        }
        start = end;
        for (o, &a) in out.iter_mut().zip(acc.iter()) {
            *o = a as f32;
        }
    }
    Ok(MovingSet { keys, g })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn q(query: u32, record: u64, grade: f64) -> Qrel {
        Qrel {
            query,
            record,
            grade,
        }
    }

    #[test]
    fn group_by_sums_train_queries() {
        let queries = array![[1.0f32, 0.0], [0.0, 2.0], [3.0, 3.0], [100.0, 100.0]];
        let qrels = vec![
            q(0, 5, 1.0), // several records per query
            q(0, 2, 2.0),
            q(1, 5, 1.0), // several queries per record
            q(2, 5, 1.0),
            q(3, 2, 1.0), // query 3 not in train
            q(2, 9, 0.0), // not relevant
            q(1, 7, -1.0),
            q(0, 5, 1.0), // duplicate pair counts once
        ];
        let ms = gradients(queries.view(), &qrels, &[2, 0, 1], 10).unwrap();
        assert_eq!(ms.keys, vec![2, 5]);
        assert_eq!(ms.g, array![[1.0f32, 0.0], [4.0, 5.0]]);
        assert_eq!(ms.position(5), Some(1));
        assert_eq!(ms.position(9), None);
        // train subset
        let ms = gradients(queries.view(), &qrels, &[1, 3], 10).unwrap();
        assert_eq!(ms.keys, vec![2, 5]);
        assert_eq!(ms.g, array![[100.0f32, 100.0], [0.0, 2.0]]);
        // NaN in a non-training query is ignored
        let mut qn = queries.clone();
        qn[[3, 0]] = f32::NAN;
        assert!(gradients(qn.view(), &qrels, &[0], 10).is_ok());
        assert_eq!(
            gradients(qn.view(), &qrels, &[0, 3], 10),
            Err(NudgeError::NonFinite {
                what: "training queries".into(),
                index: 3
            })
        );
    }

    #[test]
    fn accumulates_in_f64() {
        let n = 1000;
        let mut queries = Array2::<f32>::zeros((n + 1, 1));
        queries[[0, 0]] = 1.0e8;
        for i in 1..=n {
            queries[[i, 0]] = 1.0;
        }
        let qrels: Vec<Qrel> = (0..=n as u32).map(|i| q(i, 0, 1.0)).collect();
        let train: Vec<usize> = (0..=n).collect();
        let ms = gradients(queries.view(), &qrels, &train, 1).unwrap();
        assert_eq!(ms.g[[0, 0]], (1.0e8f64 + n as f64) as f32);
    }

    #[test]
    fn rejects_bad_input() {
        let queries = array![[1.0f32, 0.0], [0.0, 2.0]];
        let ok = vec![q(0, 1, 1.0)];
        assert!(matches!(
            gradients(queries.view(), &ok, &[], 2),
            Err(NudgeError::Empty { .. })
        ));
        assert!(matches!(
            gradients(queries.view(), &ok, &[2], 2),
            Err(NudgeError::InvalidParameter { .. })
        ));
        assert!(matches!(
            gradients(queries.view(), &ok, &[0, 0], 2),
            Err(NudgeError::InvalidParameter { .. })
        ));
        assert!(matches!(
            gradients(queries.view(), &[q(5, 1, 1.0)], &[0], 2),
            Err(NudgeError::InvalidParameter { name: "qrels", .. })
        ));
        assert!(matches!(
            gradients(queries.view(), &[q(0, 2, 1.0)], &[0], 2),
            Err(NudgeError::InvalidParameter { name: "qrels", .. })
        ));
        assert_eq!(
            gradients(queries.view(), &[q(0, 1, 1.0), q(1, 1, f64::NAN)], &[0], 2),
            Err(NudgeError::NonFinite {
                what: "qrel grades".into(),
                index: 1
            })
        );
        assert!(matches!(
            gradients(queries.view(), &[q(1, 1, 1.0)], &[0], 2),
            Err(NudgeError::Empty { .. })
        ));
        assert!(matches!(
            gradients(queries.view(), &[q(0, 1, 0.0)], &[0], 2),
            Err(NudgeError::Empty { .. })
        ));
        let empty_dim = Array2::<f32>::zeros((2, 0));
        assert!(matches!(
            gradients(empty_dim.view(), &ok, &[0], 2),
            Err(NudgeError::InvalidParameter { .. })
        ));
        let mut inf = queries.clone();
        inf[[0, 1]] = f32::INFINITY;
        assert!(matches!(
            gradients(inf.view(), &ok, &[0], 2),
            Err(NudgeError::NonFinite { index: 0, .. })
        ));
    }
}
