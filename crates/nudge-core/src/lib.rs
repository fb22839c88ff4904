//! nudge-core: the NUDGE method (Zeighami et al., ICLR 2025), exact k-NN and IR metrics.
//!
//! Pure Rust with no Postgres dependency. The extension crate reads rows and hands this crate
//! plain arrays and callbacks; see `../../shared/NUDGE.md` (copied to docs/) for the maths.
//!
//! CONTRACT (written before the implementation; keep it true):
//!
//! * Records are identified by a `u64` key chosen by the caller. Keys `0..n_labelled` are the
//!   *labelled* records (those any qrels row points to); the caller maps its own ids to keys.
//!   Unlabelled records get any key >= `n_labelled` (e.g. `n_labelled + row ordinal`).
//! * Queries are rows of an `ndarray::Array2<f32>`; qrels are `Qrel { query, record, grade }`
//!   with `query` a row index and `record` a labelled key.
//! * Every long computation takes `&mut Hooks`: `check_interrupts` (may return
//!   `Err(NudgeError::Cancelled)` or never return, e.g. a Postgres longjmp translated to a
//!   panic by pgrx) and `progress`. Both are called ONLY on the caller's thread, between
//!   batches; worker threads (rayon, on the pool in `Hooks`) do pure math.
//! * No public function panics on bad input: every input is validated and reported as a
//!   typed `NudgeError`.

mod batch;
pub mod digest;
pub mod error;
pub mod exec;
pub mod gamma;
pub mod gradient;
pub mod half;
pub mod kfold;
pub mod knn;
mod la;
pub mod metrics;
pub mod nudge;
pub mod partial;
pub mod per_partition;
pub mod split;
pub mod wire;
#[cfg(test)]
pub(crate) mod testutil;
#[cfg(test)]
mod partition_tests;

pub use error::{NudgeError, Result};
pub use exec::{Hooks, Progress};
pub use gamma::{FitConfig, FitOutcome, FitPass, Selection};
pub use gradient::{gradients, MovingSet, Qrel};
pub use kfold::{FoldOutcome, KFoldPass};
pub use knn::{dot_rows, Distance, TopK};
pub use metrics::{evaluate, Metric, QueryMetrics};
pub use nudge::{apply, Method, NegativeRule};
pub use partial::{Partial, ShardPass, ShardSpec};
pub use split::{folds, permutation, split};
