//! Phase 6 of a fit: the rows to write (nudged records, and rows of earlier fits no longer
//! moved, back to their originals) and the write itself, in place or into a target column.
//! Each row is written only if it still holds what the fit read (write.rs): the others are
//! counted as skipped.

use std::collections::{HashMap, HashSet};

use nudge_core::gamma::FitOutcome;
use pgrx::prelude::*;

use super::inputs::Corpus;
use super::originals::Originals;
use super::pass::Addresses;
use crate::exec::Reporter;
use crate::write::{self, RowAddr, RowWrite};

/// The rows to write and the number of records this fit changes.
pub fn rows_to_write(outcome: &FitOutcome, moving: &Addresses, originals: &Originals) -> (Vec<RowWrite>, i64) {
    // A row that entered the pass with its original holds what the last fit wrote.
    let from_original: HashMap<u64, i64> = moving
        .previously_moved
        .iter()
        .map(|(a, key)| (*key, originals.get(a.id.as_str()).map_or(0, |o| o.written)))
        .collect();
    let row = |a: &RowAddr, vector: Vec<f32>, read: i64| RowWrite { addr: a.clone(), vector, read };
    let mut rows: Vec<RowWrite> = Vec::new();
    let mut changed_now: HashSet<u64> = HashSet::new();
    for (i, &k) in outcome.keys.iter().enumerate() {
        if outcome.changed[i] {
            changed_now.insert(k);
            if let Some(a) = moving.moving.get(&k) {
                let read = from_original.get(&k).copied().unwrap_or_else(|| {
                    nudge_core::digest::digest_f32(outcome.original.row(i).as_slice().expect("rows are contiguous"))
                });
                rows.push(row(a, outcome.vectors.row(i).to_vec(), read));
            }
        }
    }
    for (a, key) in &moving.previously_moved {
        if !changed_now.contains(key) {
            let vector = originals.get(a.id.as_str()).map(|o| o.original.clone()).unwrap_or_default();
            rows.push(row(a, vector, from_original[key]));
        }
    }
    (rows, changed_now.len() as i64)
}

/// Rows a write changed, and rows it left because the application changed them first.
pub struct Written {
    pub rows: i64,
    pub skipped: i64,
}

/// Write `rows` (backing up what is overwritten under `fit_id`).
pub fn write(e: &crate::catalog::Ext, corpus: &Corpus, fit_id: i64, rows: &[RowWrite], reporter: &mut Reporter) -> Written {
    if !corpus.writing {
        return Written { rows: 0, skipped: 0 };
    }
    let written = match &corpus.target {
        None => write::write_in_place(e, corpus.oid, &corpus.placement, &corpus.id, &corpus.emb, corpus.kind, fit_id, rows, write::Since::ThisTransaction, reporter),
        Some(t) => write::write_target(e, &corpus.placement, &corpus.id, &corpus.emb, corpus.kind, t, rows, reporter),
    };
    let skipped = rows.len() as i64 - written;
    if skipped > 0 {
        notice!(
            "nudge: {skipped} of {} rows to write were changed or deleted by the application during the fit and were left as they are",
            rows.len()
        );
    }
    Written { rows: written, skipped }
}
