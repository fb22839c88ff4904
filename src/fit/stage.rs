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
        "SELECT min(fit_id) FROM nudge.fits WHERE corpus = $1::oid::regclass AND embedding = $2 AND status = 'staged'",
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

/// Keep `rows` in `nudge.fit_staged` under `fit_id`.
pub fn stage(corpus: &Corpus, fit_id: i64, rows: &[RowWrite], reporter: &mut Reporter) {
    let sql = "INSERT INTO nudge.fit_staged (fit_id, corpus, row_id, row_tableoid, row_ctid, dist, read, vector)
               SELECT $1, $2, u.id, u.toid, u.tid, u.dist, u.read, $8[(u.ord - 1) * $9 + 1 : u.ord * $9]
                 FROM unnest($3::text[], $4::oid[], $5::tid[], $6::text[], $7::int8[])
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
        Spi::run_with_args(
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
        )
        .or_raise();
        done += chunk.len() as u64;
        crate::exec::check_interrupts().ok();
        reporter.report("staging rows", done, Some(total));
    }
}

/// One step of `nudge_apply`: write up to `batch_rows` rows of staged fit `fit_id`
/// (compare-and-set; backups under the fit), drop them from `nudge.fit_staged`, count them in
/// `nudge.fits`; the fit becomes `applied` when none is left. Returns the rows still staged
/// (0: the fit is applied). The caller commits after each step.
#[pg_extern(volatile, parallel_unsafe)]
pub fn nudge_apply_step(fit_id: i64, batch_rows: i32) -> i64 {
    if batch_rows < 1 {
        invalid(format!("batch_rows must be at least 1, got {batch_rows}"), "Rows per transaction: 256 is the default.");
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
    let (corpus, embedding) = (fit.corpus, fit.embedding);
    let rel = columns::relation(corpus);
    let id = rel.column(&fit.id_column, "the id column of the fit");
    let (emb, kind) = rel.vector_column(&embedding, "the embedding column of the fit");
    if emb.type_sql != fit.embedding_type {
        raise(
            Code::ERRCODE_DATATYPE_MISMATCH,
            format!("column \"{embedding}\" of {} changed type since fit {fit_id} was staged", rel.sql),
        );
    }
    if !has_update(corpus) {
        raise(Code::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied to apply fit {fit_id}: it needs UPDATE on table {}", rel.sql));
    }
    // The online fit's lock for this step (another fit, a revert or DDL waits), then the fit's
    // row, locked: two nudge_apply calls of one fit take turns, and see each other's progress.
    Spi::run(&format!("LOCK TABLE {} IN SHARE UPDATE EXCLUSIVE MODE", rel.sql)).or_raise();
    let status = Spi::get_one_with_args::<String>("SELECT status FROM nudge.fits WHERE fit_id = $1 FOR UPDATE", &[fit_id.into()]).or_raise();
    if status.as_deref() != Some("staged") {
        return 0; // (applied or reverted by another session while this one waited)
    }
    let rows = read_batch(fit_id, batch_rows);
    let placement = citus::placement(corpus, &id);
    let mut reporter = Reporter::new("nudge_apply");
    let written = write::write_in_place(corpus, &placement, &id, &emb, kind, fit_id, &rows, Since::EarlierTransaction, &mut reporter);
    let ids: Vec<String> = rows.iter().map(|r| r.addr.id.clone()).collect();
    let skipped = rows.len() as i64 - written;
    Spi::run_with_args("DELETE FROM nudge.fit_staged WHERE fit_id = $1 AND row_id = ANY($2)", &[fit_id.into(), ids.into()]).or_raise();
    let left = Spi::get_one_with_args::<i64>("SELECT count(*) FROM nudge.fit_staged WHERE fit_id = $1", &[fit_id.into()])
        .or_raise()
        .unwrap_or(0);
    Spi::run_with_args(
        "UPDATE nudge.fits SET rows_written = rows_written + $2, rows_skipped = rows_skipped + $3,
                status = CASE WHEN $4 = 0 THEN 'applied' ELSE status END
          WHERE fit_id = $1",
        &[fit_id.into(), written.into(), skipped.into(), left.into()],
    )
    .or_raise();
    left
}

fn has_update(corpus: pg_sys::Oid) -> bool {
    Spi::get_one_with_args::<bool>("SELECT has_table_privilege($1::oid::regclass, 'UPDATE')", &[corpus.into()])
        .or_raise()
        .unwrap_or(false)
}

/// The next `n` staged rows of the fit (in row id order).
fn read_batch(fit_id: i64, n: i32) -> Vec<RowWrite> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT row_id, row_tableoid, row_ctid, dist, read, vector FROM nudge.fit_staged WHERE fit_id = $1 ORDER BY row_id LIMIT $2",
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
    })
    .or_raise()
}
