//! nudge_revert(fit_id): put back the vectors an in-place fit overwrote.
//!
//! Fits of one column form a stack: each in-place fit backs up exactly the values it
//! overwrote, so only the newest applied fit of a column can be reverted (then the one before
//! it, and so on). Only rows still holding what the fit wrote are restored (compare-and-set by
//! digest, under either lock): a row the application changed or deleted since keeps its new
//! value. A staged fit is discarded: the rows nudge_apply wrote so far are restored and the
//! rest dropped; only the role that staged it (or a superuser) may do that.
//!
//! The backups are read as the catalog's owner, for a caller who may UPDATE the table and read
//! every row of it, and written back by the caller's own UPDATE, batch by batch (4,096 rows,
//! addressed by id: a revert may come in a later transaction than the fit, and on Citus). On a
//! hash-distributed Citus table a batch is split by shard, each statement routed to its shard
//! (see [`Route`]). On Citus reference and Citus-managed local tables, which refuse that join,
//! row by row.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use super::inputs::Lock;
use super::Recorded;
use crate::catalog::{self, Ext};
use crate::columns::{self, Column, VecKind};
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};
use crate::write::Flat;

/// Restore the vectors an in-place nudge_fit overwrote; returns the number of rows restored.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn nudge_revert(fit_id: i64, lock: default!(&str, "'rows'")) -> i64 {
    let e = catalog::current();
    let lock = Lock::parse(lock);
    let (f, rel) = revertible(fit_id);
    // Lock the table, then look at the state of its fits: a fit or revert of it that committed
    // while we waited is seen below, and none can start until we commit (both modes conflict
    // with both).
    Spi::run(&format!("LOCK TABLE {} IN {} MODE", rel.sql, lock.mode_sql())).or_raise();
    check_newest(&e, &f, fit_id);
    let (id, emb, kind) = columns_of(&f, &rel, fit_id);
    catalog::require_read_vectors(f.corpus, &rel.sql, &format!("backups of fit {fit_id}"));
    let method = citus_method(f.corpus);
    let one_by_one = method.as_deref() == Some("n");
    let route = Route::of(f.corpus, &rel.sql, &id);
    // (double precision[] backups are not real[]: as they are)
    let flat = if method.is_some() && kind != VecKind::Double { Flat::Bytes } else { Flat::Real };
    let sql = restore_sql(&e, &rel.sql, &id, &emb, kind, one_by_one, &route, flat);
    let (backups, restored) = restore(&e, fit_id, kind, &sql, one_by_one, &route, flat);
    mark_reverted(&e, fit_id);
    if restored < backups {
        notice!(
            "nudge: {} of {backups} backed-up rows of fit {fit_id} were changed or deleted since the fit and were left as they are",
            backups - restored
        );
    }
    restored
}

/// The fit and its table, if the caller may revert it: an in-place fit that wrote (not a dry
/// run, not into a target column), of a table that exists and the caller may UPDATE; a staged
/// fit only by the role that staged it (or a superuser).
fn revertible(fit_id: i64) -> (Recorded, columns::Relation) {
    let Some(f) = Recorded::read(fit_id) else {
        raise(Code::ERRCODE_UNDEFINED_OBJECT, format!("fit {fit_id} does not exist"));
    };
    if f.status == "dry_run" {
        raise(Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("fit {fit_id} was a dry run and changed nothing"));
    }
    if f.status == "rejected" {
        raise(Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("fit {fit_id} was rejected by its guard and changed nothing"));
    }
    if let Some(target) = &f.target {
        raise_with(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("fit {fit_id} wrote column \"{target}\" and left the source column untouched"),
            None,
            Some(format!("The original vectors are still in \"{}\"; drop or overwrite the target column instead.", f.embedding)),
        );
    }
    // SAFETY: a syscache lookup by OID.
    if unsafe { pg_sys::get_rel_name(f.corpus) }.is_null() {
        raise(Code::ERRCODE_UNDEFINED_TABLE, format!("the table fit {fit_id} wrote (OID {}) no longer exists", f.corpus.to_u32()));
    }
    let rel = columns::relation(f.corpus);
    if !catalog::has_table_privilege(f.corpus, pg_sys::ACL_UPDATE) {
        raise(Code::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied to revert fit {fit_id}: it needs UPDATE on table {}", rel.sql));
    }
    if f.status == "staged" {
        super::stage::require_stager(fit_id, &f.created_by, "revert");
    }
    (f, rel)
}

/// Under the table's lock: the fit is not reverted yet, and no later fit of the same column is
/// applied or staged (fits of a column revert newest first).
fn check_newest(e: &Ext, f: &Recorded, fit_id: i64) {
    match catalog::lock_fit(e, fit_id).as_deref() {
        None => raise(Code::ERRCODE_UNDEFINED_OBJECT, format!("fit {fit_id} does not exist")),
        Some("reverted") => raise(Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE, format!("fit {fit_id} is already reverted")),
        _ => {}
    }
    let later = Spi::get_one_with_args::<i64>(
        "SELECT pg_catalog.max(g.fit_id) FROM nudge.fits AS g
          WHERE g.corpus::pg_catalog.oid OPERATOR(pg_catalog.=) $1 AND g.embedding OPERATOR(pg_catalog.=) $2
            AND g.target IS NULL AND g.status OPERATOR(pg_catalog.=) ANY ('{applied,staged}'::pg_catalog.text[])
            AND g.fit_id OPERATOR(pg_catalog.>) $3",
        &[f.corpus.into(), f.embedding.clone().into(), fit_id.into()],
    )
    .or_raise();
    if let Some(later) = later {
        raise_with(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("fit {fit_id} was followed by fit {later} on the same column"),
            None,
            Some(format!("Revert fit {later} first.")),
        );
    }
}

/// The fit's id and embedding columns as the table has them now (the embedding of the type the
/// fit recorded).
fn columns_of(f: &Recorded, rel: &columns::Relation, fit_id: i64) -> (Column, Column, VecKind) {
    let Some(emb) = rel.find(&f.embedding) else {
        raise(Code::ERRCODE_UNDEFINED_COLUMN, format!("column \"{}\" of relation {} does not exist", f.embedding, rel.sql));
    };
    let Some(kind) = emb.kind.filter(|_| catalog::same_type(&f.embedding_type, &emb.type_sql)) else {
        raise(
            Code::ERRCODE_DATATYPE_MISMATCH,
            format!("column \"{}\" of relation {} changed type from {} to {} since fit {fit_id}", f.embedding, rel.sql, f.embedding_type, emb.type_sql),
        );
    };
    let Some(id) = rel.find(&f.id_column) else {
        raise(Code::ERRCODE_UNDEFINED_COLUMN, format!("column \"{}\" of relation {} does not exist", f.id_column, rel.sql));
    };
    (id, emb, kind)
}

/// How a batch of backups is split by shard: on a hash-distributed Citus table each restoring
/// statement holds rows of one shard and names that shard's values of the distribution column
/// (write.rs, `in_shard`), so Citus sends it to that shard alone.
enum Route {
    /// Not hash-distributed: one statement per batch.
    Whole,
    /// Distributed by the id column: the ids are the values.
    ById { rel: pg_sys::Oid, key: Column },
    /// Distributed by another column, which the backups do not keep: its values are read by id
    /// (`sql`: `$1` the ids; each row's id and value as text).
    ByLookup { rel: pg_sys::Oid, key: Column, sql: String },
}

impl Route {
    fn of(rel: pg_sys::Oid, rel_sql: &str, id: &Column) -> Route {
        match crate::citus::placement(rel, id) {
            crate::citus::Placement::Citus { shard_key: Some(key), dist: None, .. } => Route::ById { rel, key },
            crate::citus::Placement::Citus { shard_key: Some(key), dist: Some(_), .. } => Route::ByLookup {
                rel,
                sql: format!(
                    "SELECT t.{id}::pg_catalog.text, t.{k}::pg_catalog.text FROM {rel_sql} AS t
                      WHERE t.{id} {eq} ANY(CAST($1 AS {ty}[]))",
                    id = id.ident,
                    k = key.ident,
                    eq = catalog::eq_operator(id.typid),
                    ty = id.type_sql,
                ),
                key,
            },
            _ => Route::Whole,
        }
    }

    fn key(&self) -> Option<&Column> {
        match self {
            Route::Whole => None,
            Route::ById { key, .. } | Route::ByLookup { key, .. } => Some(key),
        }
    }

    /// The statements of a batch of backups with ids `ids`: indexes into the batch, and the
    /// shard's values of the distribution column (none: the whole batch, unrouted).
    fn split(&self, ids: &[String]) -> Vec<(Vec<usize>, Vec<String>)> {
        let (rel, rows): (pg_sys::Oid, Vec<(usize, String)>) = match self {
            Route::Whole => return vec![((0..ids.len()).collect(), Vec::new())],
            Route::ById { rel, .. } => (*rel, ids.iter().cloned().enumerate().collect()),
            Route::ByLookup { rel, sql, .. } => {
                let at: std::collections::HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
                let mut rows = Vec::new();
                crate::read::for_each_batch(sql, &[ids.to_vec().into()], |b| {
                    for r in 0..b.len() {
                        if let (Some(id), Some(v)) = (b.text(r, 1), b.text(r, 2)) {
                            if let Some(&i) = at.get(id.as_str()) {
                                rows.push((i, v));
                            }
                        }
                    }
                });
                (*rel, rows)
            }
        };
        let values: Vec<&str> = rows.iter().map(|(_, v)| v.as_str()).collect();
        crate::citus::by_shard(rel, &values)
            .into_iter()
            .map(|shard| shard.into_iter().map(|j| (rows[j].0, rows[j].1.clone())).unzip())
            .collect()
    }
}

/// The UPDATE that writes backups back where the row still holds what the fit wrote: one row
/// per call (`$1` value, `$2` id, `$3` digest written), or a batch (`$1` flat values, `$2` ids,
/// `$3` digests, `$4` the dimension, and where routed `$5` the shard's values of the
/// distribution column).
#[allow(clippy::too_many_arguments)]
fn restore_sql(e: &Ext, rel_sql: &str, id: &Column, emb: &Column, kind: VecKind, one_by_one: bool, route: &Route, flat: Flat) -> String {
    let value = |v: &str| format!("CAST({v} AS {})", emb.type_sql);
    if one_by_one {
        format!(
            "UPDATE {rel_sql} AS t SET {col} = {v} WHERE {key} AND {same}",
            col = emb.ident,
            v = value("$1"),
            key = crate::write::key_match(id, None, "$2", ""),
            same = crate::write::unchanged(e, emb, kind, "$3"),
        )
    } else {
        format!(
            // (as in write.rs: on Citus one task when routed to a shard)
            "WITH b AS (SELECT u.id, u.w, {row} AS v
                          FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.int8[])) WITH ORDINALITY AS u(id, w, ord)),
                  upd AS (UPDATE {rel_sql} AS t SET {col} = {v} FROM b WHERE {key} AND {same}{shard} RETURNING 1)
             SELECT 1 FROM upd",
            row = flat.row(e, "u.ord", "$4"),
            col = emb.ident,
            v = value("b.v"),
            key = crate::write::key_match(id, None, "b.id", ""),
            same = crate::write::unchanged(e, emb, kind, "b.w"),
            shard = route.key().map_or(String::new(), |k| format!(" AND {}", crate::write::in_shard(k, "$5"))),
        )
    }
}

/// The fit is reverted: its staged rows not written yet are dropped, its status recorded.
fn mark_reverted(e: &Ext, fit_id: i64) {
    catalog::as_owner(e, || {
        Spi::run_with_args("DELETE FROM nudge.fit_staged AS s WHERE s.fit_id OPERATOR(pg_catalog.=) $1", &[fit_id.into()])?;
        Spi::run_with_args(
            "UPDATE nudge.fits AS f SET status = 'reverted', reverted_at = pg_catalog.now() WHERE f.fit_id OPERATOR(pg_catalog.=) $1",
            &[fit_id.into()],
        )
    })
    .or_raise();
}

/// Backups read per batch (as the catalog's owner, in row id order).
const BATCH: i64 = 4096;

/// Write the backups of `fit_id` back with `sql`, batch by batch; (backups, rows restored).
fn restore(e: &Ext, fit_id: i64, kind: VecKind, sql: &str, one_by_one: bool, route: &Route, flat: Flat) -> (i64, i64) {
    let (mut backups, mut restored) = (0i64, 0i64);
    let mut after = String::new();
    loop {
        let batch = read_backups(e, fit_id, kind, &after);
        if batch.ids.is_empty() {
            break;
        }
        backups += batch.ids.len() as i64;
        after = batch.ids.last().cloned().unwrap_or_default();
        restored += Spi::connect_mut(|client| {
            if one_by_one {
                let mut n = 0i64;
                for (i, rid) in batch.ids.iter().enumerate() {
                    let value: DatumWithOid = match kind {
                        VecKind::Double => batch.double[i * batch.dim..(i + 1) * batch.dim].to_vec().into(),
                        _ => crate::write::real_array(&batch.real[i * batch.dim..(i + 1) * batch.dim]),
                    };
                    n += client.update(sql, None, &[value, rid.clone().into(), batch.written[i].into()])?.len() as i64;
                }
                Ok::<_, pgrx::spi::Error>(n)
            } else {
                let mut n = 0i64;
                for (rows, shard) in route.split(&batch.ids) {
                    let mut args = batch.args(&rows, kind, flat);
                    if route.key().is_some() {
                        args.push(shard.into());
                    }
                    n += client.update(sql, None, &args)?.len() as i64;
                }
                Ok(n)
            }
        })
        .or_raise();
        crate::exec::check_interrupts().ok();
    }
    (backups, restored)
}

/// One batch of a fit's backups.
struct Backups {
    ids: Vec<String>,
    real: Vec<f32>,
    double: Vec<f64>,
    written: Vec<i64>,
    dim: usize,
}

impl Backups {
    /// The batch statement's `$1`..`$4` for the backups `rows` (indexes).
    fn args(&self, rows: &[usize], kind: VecKind, flat: Flat) -> Vec<DatumWithOid<'static>> {
        let d = self.dim;
        let values: DatumWithOid = match kind {
            VecKind::Double => rows.iter().flat_map(|&i| self.double[i * d..(i + 1) * d].iter().copied()).collect::<Vec<f64>>().into(),
            _ => flat.arg(&rows.iter().flat_map(|&i| self.real[i * d..(i + 1) * d].iter().copied()).collect::<Vec<f32>>()),
        };
        let ids: Vec<String> = rows.iter().map(|&i| self.ids[i].clone()).collect();
        let written: Vec<i64> = rows.iter().map(|&i| self.written[i]).collect();
        vec![values, ids.into(), written.into(), (d as i32).into()]
    }
}

/// The next backups of `fit_id` after row id `after` (in row id order).
fn read_backups(e: &Ext, fit_id: i64, kind: VecKind, after: &str) -> Backups {
    let column = match kind {
        VecKind::Double => "b.original_double",
        _ => "b.original",
    };
    let sql = format!(
        "SELECT b.row_id, {column}, b.written FROM nudge.fit_backups AS b
          WHERE b.fit_id OPERATOR(pg_catalog.=) $1 AND b.row_id OPERATOR(pg_catalog.>) $2
          ORDER BY b.row_id LIMIT $3"
    );
    catalog::as_owner(e, || {
        Spi::connect(|c| {
            let t = c.select(&sql, None, &[fit_id.into(), after.into(), BATCH.into()])?;
            let mut b = Backups { ids: Vec::new(), real: Vec::new(), double: Vec::new(), written: Vec::new(), dim: 0 };
            for r in t {
                let n = match kind {
                    VecKind::Double => {
                        let v = r.get::<Vec<f64>>(2)?.unwrap_or_default();
                        b.double.extend_from_slice(&v);
                        v.len()
                    }
                    _ => {
                        let v = r.get::<Vec<f32>>(2)?.unwrap_or_default();
                        b.real.extend_from_slice(&v);
                        v.len()
                    }
                };
                if b.dim != 0 && n != b.dim {
                    raise(Code::ERRCODE_DATA_CORRUPTED, format!("the backups of fit {fit_id} have vectors of different sizes"));
                }
                b.dim = n;
                b.ids.push(r.get::<String>(1)?.unwrap_or_default());
                b.written.push(r.get::<i64>(3)?.unwrap_or_default());
            }
            Ok::<_, pgrx::spi::Error>(b)
        })
    })
    .or_raise()
}

/// Citus's partition method of `rel` (`h` hash, `n` reference or Citus-managed local, ...),
/// None for a plain table or without Citus.
fn citus_method(rel: pg_sys::Oid) -> Option<String> {
    // SAFETY: a syscache lookup by name.
    if unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) } == pg_sys::InvalidOid {
        return None;
    }
    Spi::get_one_with_args::<String>(
        "SELECT (SELECT p.partmethod::pg_catalog.text FROM pg_catalog.pg_dist_partition AS p
                  WHERE p.logicalrelid::pg_catalog.oid OPERATOR(pg_catalog.=) $1)",
        &[rel.into()],
    )
    .or_raise()
}
