//! Original vectors of rows that earlier applied fits changed: a refit starts from them, and
//! rows no longer moved are written back to them.

use std::collections::HashMap;

use pgrx::prelude::*;

use crate::columns::{Column, VecKind};
use crate::error::OrRaise;
use crate::read::{self, push_embedding};

/// A row that applied in-place fits of this column changed: the digest of the value the
/// newest of them wrote, and the row's value before the oldest fit in the unbroken chain of
/// fits back from it (with its digest).
pub struct Original {
    pub written: i64,
    pub original: Vec<f32>,
    original_digest: i64,
}

/// By row id (text).
pub type Originals = HashMap<String, Original>;

/// Originals of rows that applied in-place fits of this column changed. Each fit backs up the
/// value it overwrote; walking a row's backups from the newest fit back, the chain goes on
/// while a fit overwrote exactly what the fit before it wrote. Where it breaks, the
/// application changed the row in between, and that value is the row's original.
pub fn read(corpus: pg_sys::Oid, emb: &Column) -> Originals {
    let mut out: Originals = HashMap::new();
    // (two simple queries rather than a join: most fits find no applied fit, and the first
    // one is all they plan)
    let fits = Spi::get_one_with_args::<Vec<i64>>(
        "SELECT array_agg(f.fit_id) FROM nudge.fits f
          WHERE f.corpus = $1::oid::regclass AND f.embedding = $2 AND f.embedding_type = $3
            AND f.target IS NULL AND f.status = 'applied'",
        &[corpus.into(), emb.name.clone().into(), emb.type_sql.clone().into()],
    )
    .or_raise()
    .unwrap_or_default();
    if fits.is_empty() {
        return out;
    }
    let sql = "SELECT b.row_id, COALESCE(b.original, CAST(b.original_double AS real[])), b.written,
                      COALESCE(public.nudge_digest(b.original), public.nudge_digest(b.original_double))
                 FROM nudge.fit_backups b
                WHERE b.fit_id = ANY($1) AND b.corpus = $2::oid::regclass
                ORDER BY b.row_id, b.fit_id DESC";
    let mut current: Option<(String, bool)> = None; // row id, chain unbroken
    read::for_each_batch(sql, &[fits.into(), corpus.into()], |b| {
        for row in 0..b.len() {
            let rid = b.text(row, 1).unwrap_or_default();
            let what = || format!("backup of row {rid:?}");
            let mut original = Vec::new();
            push_embedding(b.datum(row, 2), VecKind::Real, &mut 0, &mut original, &what);
            let (written, original_digest) = (b.int8(row, 3).unwrap_or_default(), b.int8(row, 4).unwrap_or_default());
            match &mut current {
                Some((id, unbroken)) if *id == rid => {
                    let o = out.get_mut(&rid).expect("newest backup of this row was kept");
                    if *unbroken && written == o.original_digest {
                        o.original = original;
                        o.original_digest = original_digest;
                    } else {
                        *unbroken = false;
                    }
                }
                _ => {
                    out.insert(rid.clone(), Original { written, original, original_digest });
                    current = Some((rid, true));
                }
            }
        }
    });
    out
}
