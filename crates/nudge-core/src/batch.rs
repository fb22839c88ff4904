//! Validation of one corpus batch of a pass against its moving keys (shared by the fit pass
//! and the shard pass).

use ndarray::ArrayView2;

use crate::error::{invalid, mismatch, NudgeError, Result};
use crate::exec::{install, Hooks};
use crate::knn::row_norms2;

/// Per-row `|d|^2`, (row, moving position) pairs, mask of moving rows.
pub(crate) type CheckedBatch = (Vec<f64>, Vec<(usize, usize)>, Vec<bool>);

/// Validates one corpus batch against the moving keys (`seen`: those already captured), as
/// [`FitPass::push_batch`](crate::FitPass::push_batch) documents. Returns per-row `|d|^2`, the (row, moving position) pairs
/// and the mask of moving rows (skipped by the static top-k).
pub(crate) fn check_batch(
    moving_keys: &[u64],
    seen: &[bool],
    dim: usize,
    keys: &[u64],
    vectors: ArrayView2<f32>,
    hooks: &mut Hooks,
) -> Result<CheckedBatch> {
    if keys.len() != vectors.nrows() {
        return Err(mismatch(
            "numbers of keys and corpus vectors",
            vectors.nrows(),
            keys.len(),
        ));
    }
    if vectors.ncols() != dim {
        return Err(mismatch("corpus vector dimensions", dim, vectors.ncols()));
    }
    hooks.check()?;
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(invalid(
            "keys",
            format!("key {} appears more than once", w[0]),
        ));
    }
    let norms2 =
        install(hooks.pool, || row_norms2(vectors)).map_err(|i| NudgeError::NonFinite {
            what: "corpus batch".into(),
            index: i,
        })?;
    let mut hits = Vec::new();
    let mut skip = vec![false; keys.len()];
    for (row, &key) in keys.iter().enumerate() {
        if let Ok(p) = moving_keys.binary_search(&key) {
            if seen[p] {
                return Err(invalid("keys", format!("key {key} appears more than once")));
            }
            if norms2[row] == 0.0 {
                return Err(NudgeError::ZeroVector {
                    what: "corpus batch".into(),
                    index: row,
                });
            }
            hits.push((row, p));
            skip[row] = true;
        }
    }
    Ok((norms2, hits, skip))
}
