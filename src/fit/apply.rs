//! Phase 6 of a fit: the rows to write (nudged records, and rows of earlier fits no longer
//! moved, back to their originals) and the write itself, in place or into a target column.

use std::collections::HashSet;

use nudge_core::gamma::FitOutcome;

use super::inputs::Corpus;
use super::originals::Originals;
use super::pass::Addresses;
use crate::exec::Reporter;
use crate::write::{self, RowAddr, RowWrite};

/// The rows to write and the number of records this fit changes.
pub fn rows_to_write(outcome: &FitOutcome, moving: &Addresses, originals: &Originals) -> (Vec<RowWrite>, i64) {
    let row = |a: &RowAddr, vector: Vec<f32>| RowWrite { addr: a.clone(), vector };
    let mut rows: Vec<RowWrite> = Vec::new();
    let mut changed_now: HashSet<u64> = HashSet::new();
    for (i, &k) in outcome.keys.iter().enumerate() {
        if outcome.changed[i] {
            changed_now.insert(k);
            if let Some(a) = moving.moving.get(&k) {
                rows.push(row(a, outcome.vectors.row(i).to_vec()));
            }
        }
    }
    for (a, key) in &moving.previously_moved {
        if !changed_now.contains(key) {
            let vector = originals.get(a.id.as_str()).map(|o| o.original.clone()).unwrap_or_default();
            rows.push(row(a, vector));
        }
    }
    (rows, changed_now.len() as i64)
}

/// Write `rows` (backing up what is overwritten under `fit_id`); returns the rows written.
pub fn write(corpus: &Corpus, fit_id: i64, rows: &[RowWrite], reporter: &mut Reporter) -> i64 {
    if !corpus.writing {
        return 0;
    }
    match &corpus.target {
        None => write::write_in_place(corpus.oid, &corpus.placement, &corpus.id, &corpus.emb, corpus.kind, fit_id, rows, reporter),
        Some(t) => write::write_target(&corpus.placement, &corpus.id, &corpus.emb, t, rows, reporter),
    };
    rows.len() as i64
}
