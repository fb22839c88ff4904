//! Original vectors of rows that earlier applied fits changed: a refit starts from them, and
//! rows no longer moved are written back to them.

use std::collections::HashMap;

use pgrx::prelude::*;

use crate::catalog::{self, Ext};
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
pub fn read(e: &Ext, corpus: pg_sys::Oid, emb: &Column) -> Originals {
    let mut out: Originals = HashMap::new();
    // The catalog is read as its owner, for a caller who may read every row of the table
    // (backups include rows a row-level security policy would hide).
    // (two simple queries rather than a join: most fits find no applied fit, and the first
    // one is all they plan)
    let fits: Vec<i64> = catalog::as_owner(e, || {
        Spi::connect(|c| {
            let t = c.select(
                "SELECT f.fit_id, f.embedding_type FROM nudge.fits AS f
                  WHERE f.corpus::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND f.embedding OPERATOR(pg_catalog.=) $2
                    AND f.target IS NULL AND f.status OPERATOR(pg_catalog.=) 'applied'",
                None,
                &[corpus.into(), emb.name.clone().into()],
            )?;
            let mut fits = Vec::new();
            for r in t {
                if let (Some(id), Some(ty)) = (r.get::<i64>(1)?, r.get::<String>(2)?) {
                    if catalog::same_type(&ty, &emb.type_sql) {
                        fits.push(id);
                    }
                }
            }
            Ok::<_, pgrx::spi::Error>(fits)
        })
        .or_raise()
    });
    if fits.is_empty() {
        return out;
    }
    catalog::require_read_vectors(corpus, &emb.rel_sql, "backups of earlier fits");
    let digest = catalog::func(e, "nudge_digest");
    let sql = format!(
        "SELECT b.row_id, COALESCE(b.original, CAST(b.original_double AS pg_catalog.float4[])), b.written,
                COALESCE({digest}(b.original), {digest}(b.original_double))
           FROM nudge.fit_backups AS b
          WHERE b.fit_id OPERATOR(pg_catalog.=) ANY($1) AND b.corpus::pg_catalog.oid OPERATOR(pg_catalog.=) $2
          ORDER BY b.row_id, b.fit_id DESC"
    );
    let mut current: Option<(String, bool)> = None; // row id, chain unbroken
    catalog::as_owner(e, || read::for_each_batch(&sql, &[fits.into(), corpus.into()], |b| {
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
    }));
    out
}
