//! Staged fits: compute now, write later in short transactions.
//!
//! An online fit (`lock => 'rows'`) writes all its rows in its own transaction, so a row it
//! wrote stays locked until it commits: an application UPDATE of such a row waits for the rest
//! of the write phase (seconds with an HNSW index). `nudge_fit(..., staged => true)` instead
//! keeps the rows to write in `nudge.fit_staged` (the vector, and where and what the row was
//! when the fit read it) and writes nothing; `CALL nudge_apply(fit_id)` then writes them batch
//! by batch, each batch committed on its own (`nudge_apply_step`), so a row lock lasts one
//! batch. Every write is still a compare-and-set against what the fit read (write.rs,
//! [`Since::EarlierTransaction`]) and backs up what it overwrites under the fit, so
//! `nudge_revert` undoes a staged fit at any point, also half-applied. The price is the
//! atomicity of the whole: until `nudge_apply` finishes, part of the fit is in the table (the
//! fit's status stays `staged`, its counters say how far it got), like an index that CREATE
//! INDEX CONCURRENTLY left invalid. While a fit of a column is staged, no other fit or revert
//! of that column starts (55006).

use pgrx::prelude::*;

use super::config::invalid;
use super::inputs::Corpus;
use crate::catalog::{self, Ext};
use crate::citus;
use crate::columns;
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};
use crate::exec::Reporter;
use crate::write::{self, At, RowAddr, RowWrite, Since};

/// The argument checks of a staged fit (22023, 0A000).
pub fn check_args(dry_run: bool, target: Option<&str>, lock: super::inputs::Lock) {
    if dry_run {
        invalid("staged => true writes later, dry_run => true never".into(), "Pass one of them.");
    }
    if target.is_some() {
        raise_with(
            Code::ERRCODE_FEATURE_NOT_SUPPORTED,
            "a staged fit writes in place: target columns are not supported",
            None,
            Some("A fit into a target column never touches the embedding column the application uses; run it unstaged.".into()),
        );
    }
    if lock == super::inputs::Lock::Table {
        invalid("staged => true is for tables the application keeps writing: not with lock => 'table'".into(), "Use lock => 'rows' or staged => false.");
    }
}

/// Refuse to fit or revert a column while a staged fit of it is not applied (55006).
pub fn refuse_while_staged(corpus: pg_sys::Oid, embedding: &str) {
    let staged = Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.min(f.fit_id) FROM nudge.fits AS f
          WHERE f.corpus::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND f.embedding OPERATOR(pg_catalog.=) $2
            AND f.status OPERATOR(pg_catalog.=) 'staged'",
        &[corpus.into(), embedding.into()],
    )
    .or_raise();
    if let Some(id) = staged {
        raise_with(
            Code::ERRCODE_OBJECT_IN_USE,
            format!("fit {id} of column \"{embedding}\" is staged and not applied yet"),
            None,
            Some(format!("CALL nudge_apply({id}) to finish it, or SELECT nudge_revert({id}) to drop it.")),
        );
    }
}

/// Keep `rows` in `nudge.fit_staged` under `fit_id` (written as the catalog's owner).
pub fn stage(e: &Ext, corpus: &Corpus, fit_id: i64, rows: &[RowWrite], reporter: &mut Reporter) {
    let sql = "INSERT INTO nudge.fit_staged (fit_id, corpus, row_id, row_tableoid, row_ctid, dist, read, vector)
               SELECT $1, $2, u.id, u.toid, u.tid, u.dist, u.read, $8[(u.ord - 1) * $9 + 1 : u.ord * $9]
                 FROM ROWS FROM (pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.oid[]), pg_catalog.unnest($5::pg_catalog.tid[]), pg_catalog.unnest($6::pg_catalog.text[]), pg_catalog.unnest($7::pg_catalog.int8[]))
                      WITH ORDINALITY AS u(id, toid, tid, dist, read, ord)";
    let total = rows.len() as u64;
    let mut done = 0u64;
    for chunk in rows.chunks(1024) {
        let dim = chunk[0].vector.len() as i32;
        let ids: Vec<String> = chunk.iter().map(|r| r.addr.id.clone()).collect();
        let (mut toids, mut tids, mut dists) = (Vec::new(), Vec::new(), Vec::new());
        for r in chunk {
            match &r.addr.at {
                At::Tid { tableoid, tid } => {
                    toids.push(Some(*tableoid));
                    tids.push(Some(write::tid_datum(*tid)));
                    dists.push(None);
                }
                At::Key { dist } => {
                    toids.push(None);
                    tids.push(None);
                    dists.push(dist.clone());
                }
            }
        }
        let read: Vec<i64> = chunk.iter().map(|r| r.read).collect();
        let vectors: Vec<f32> = chunk.iter().flat_map(|r| r.vector.iter().copied()).collect();
        catalog::as_owner(e, || Spi::run_with_args(
            sql,
            &[
                fit_id.into(),
                unsafe { pgrx::datum::DatumWithOid::new(corpus.oid, pg_sys::REGCLASSOID) },
                ids.into(),
                toids.into(),
                tids.into(),
                dists.into(),
                read.into(),
                write::real_array(&vectors),
                dim.into(),
            ],
        ))
        .or_raise();
        done += chunk.len() as u64;
        crate::exec::check_interrupts().ok();
        reporter.report("staging rows", done, Some(total));
    }
}

/// One step of `nudge_apply`: write up to `batch_rows` rows of staged fit `fit_id`
/// (compare-and-set; backups under the fit), drop them from `nudge.fit_staged`, count them in
/// `nudge.fits`; the fit becomes `applied` when none is left. Returns the rows still staged
/// (0: the fit is applied). The caller commits after each step. Only the role that staged the
/// fit (or a superuser) may apply it, and it needs UPDATE on the table.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
pub fn nudge_apply_step(fit_id: i64, batch_rows: i32) -> i64 {
    let e = catalog::current();
    if !(1..=MAX_BATCH_ROWS).contains(&batch_rows) {
        invalid(
            format!("batch_rows must be between 1 and {MAX_BATCH_ROWS}, got {batch_rows}"),
            "Rows per transaction: 256 is the default.",
        );
    }
    let Some(fit) = super::Recorded::read(fit_id) else {
        raise(Code::ERRCODE_UNDEFINED_OBJECT, format!("fit {fit_id} does not exist"));
    };
    if fit.status != "staged" {
        raise_with(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("fit {fit_id} is not staged (its status is {})", fit.status),
            None,
            Some("nudge_apply writes fits made with nudge_fit(..., staged => true).".into()),
        );
    }
    require_stager(fit_id, &fit.created_by, "apply");
    let (corpus, embedding) = (fit.corpus, fit.embedding);
    let rel = columns::relation(corpus);
    let id = rel.column(&fit.id_column, "the id column of the fit");
    let (emb, kind) = rel.vector_column(&embedding, "the embedding column of the fit");
    if !catalog::same_type(&fit.embedding_type, &emb.type_sql) {
        raise(
            Code::ERRCODE_DATATYPE_MISMATCH,
            format!("column \"{embedding}\" of {} changed type since fit {fit_id} was staged", rel.sql),
        );
    }
    if !catalog::has_table_privilege(corpus, pg_sys::ACL_UPDATE) {
        raise(Code::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied to apply fit {fit_id}: it needs UPDATE on table {}", rel.sql));
    }
    // The online fit's lock for this step (another fit, a revert or DDL waits), then the fit's
    // row, locked: two nudge_apply calls of one fit take turns, and see each other's progress.
    Spi::run(&format!("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE", rel.sql)).or_raise();
    if catalog::lock_fit(&e, fit_id).as_deref() != Some("staged") {
        return 0; // (applied or reverted by another session while this one waited)
    }
    let rows = read_batch(&e, fit_id, batch_rows);
    let placement = citus::placement(corpus, &id);
    let mut reporter = Reporter::new("nudge_apply");
    let written = write::write_in_place(&e, corpus, &placement, &id, &emb, kind, fit_id, &rows, Since::EarlierTransaction, &mut reporter);
    let ids: Vec<String> = rows.iter().map(|r| r.addr.id.clone()).collect();
    let skipped = rows.len() as i64 - written;
    let left = catalog::as_owner(&e, || {
        Spi::run_with_args(
            "DELETE FROM nudge.fit_staged AS s
              WHERE s.fit_id OPERATOR(pg_catalog.=) $1 AND s.row_id OPERATOR(pg_catalog.=) ANY($2)",
            &[fit_id.into(), ids.into()],
        )?;
        let left = Spi::get_one_with_args::<i64>(
            "SELECT pg_catalog.count(*) FROM nudge.fit_staged AS s WHERE s.fit_id OPERATOR(pg_catalog.=) $1",
            &[fit_id.into()],
        )?
        .unwrap_or(0);
        Spi::run_with_args(
            "UPDATE nudge.fits AS f
                SET rows_written = f.rows_written OPERATOR(pg_catalog.+) $2,
                    rows_skipped = f.rows_skipped OPERATOR(pg_catalog.+) $3,
                    status = CASE WHEN $4 OPERATOR(pg_catalog.=) 0 THEN 'applied' ELSE f.status END
              WHERE f.fit_id OPERATOR(pg_catalog.=) $1",
            &[fit_id.into(), written.into(), skipped.into(), left.into()],
        )?;
        Ok::<_, pgrx::spi::Error>(left)
    })
    .or_raise();
    left
}

/// Rows one `nudge_apply` step may write (its memory is about batch_rows x dimensions x 8 bytes).
const MAX_BATCH_ROWS: i32 = 100_000;

/// Only the role that staged fit `fit_id` (or a superuser) may apply or discard it (42501).
pub fn require_stager(fit_id: i64, created_by: &str, what: &str) {
    if created_by != catalog::caller() && !catalog::is_superuser() {
        raise_with(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to {what} fit {fit_id}: it was staged by role {created_by}"),
            None,
            Some("Only the role that staged a fit, or a superuser, can apply or revert it while it is staged.".into()),
        );
    }
}

/// The next `n` staged rows of the fit (in row id order).
fn read_batch(e: &Ext, fit_id: i64, n: i32) -> Vec<RowWrite> {
    catalog::as_owner(e, || Spi::connect(|c| {
        let t = c.select(
            "SELECT s.row_id, s.row_tableoid, s.row_ctid, s.dist, s.read, s.vector FROM nudge.fit_staged AS s
              WHERE s.fit_id OPERATOR(pg_catalog.=) $1 ORDER BY s.row_id LIMIT $2",
            None,
            &[fit_id.into(), i64::from(n).into()],
        )?;
        let mut rows = Vec::with_capacity(t.len());
        for r in t {
            let id: String = r.get(1)?.unwrap_or_default();
            let at = match (r.get::<pg_sys::Oid>(2)?, r.get::<pg_sys::ItemPointerData>(3)?) {
                (Some(tableoid), Some(tid)) => At::Tid { tableoid, tid: pgrx::itemptr::item_pointer_to_u64(tid) },
                _ => At::Key { dist: r.get(4)? },
            };
            let read: i64 = r.get(5)?.unwrap_or_default();
            let vector: Vec<f32> = r.get(6)?.unwrap_or_default();
            rows.push(RowWrite { addr: RowAddr { id, at }, vector, read });
        }
        Ok::<_, pgrx::spi::Error>(rows)
    }))
    .or_raise()
}
