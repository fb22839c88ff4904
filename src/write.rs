//! Writing nudged vectors back.
//!
//! In place: the statement that overwrites a batch of rows returns their previous values, and
//! nudge records them in `nudge.fit_backups` (as the catalog's owner: user roles cannot write
//! it, see catalog.rs), so a backup exists for exactly the rows changed and always holds a
//! value the row had. Beside the previous value the backup keeps `nudge_digest` of the value as
//! stored (`written`), so that later fits and nudge_revert can tell a row the application
//! changed since from one still holding what the fit wrote. Previous values are kept as
//! `real[]` (exact for vector, halfvec and real[] columns; ~1.6 KB at 384 dimensions, so the
//! backup row stays inline in its page) or, for double precision[] columns, in
//! `original_double`.
//!
//! Every write is a compare-and-set: a row is written only if it still holds what the fit
//! read, so a row the application updated or deleted since keeps the application's change (the
//! fit counts it as skipped). On a plain table rows are addressed by (tableoid, ctid) captured
//! during the read: a ctid names one row version, and an UPDATE by ctid finds nothing once
//! another transaction's update or delete of that version committed (in READ COMMITTED,
//! EvalPlanQual re-checks the ctid on the new version, which has another one). The version
//! cannot be pruned and its slot reused meanwhile: the fit's statement snapshot holds back
//! the xmin horizon, and its lock keeps VACUUM out. Any update of the row counts, also one of
//! another column. A staged fit's rows are written in later transactions (fit/stage.rs), when
//! the slot may have been reused: there the row at that ctid must also have the id and the
//! embedding (digest) the fit read. Citus tables are addressed by key, so there the embedding itself is
//! compared: `nudge_digest` of its value as `real[]` against the digest of what the fit read;
//! on a hash-distributed table the rows are written shard by shard, each statement routed by
//! Citus to its one shard.
//!
//! Into a target column: every row not written with a nudged/original vector gets a copy
//! of the source column in one set-based UPDATE; the source column is never touched.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::catalog::{self, Ext};
use crate::citus::Placement;
use crate::columns::{Column, VecKind};
use crate::error::OrRaise;
use crate::exec::Reporter;

/// Where a row to write is.
#[derive(Clone)]
pub enum At {
    /// `(tableoid, ctid)`, captured by the pass under the fit's lock: plain tables.
    Tid { tableoid: pg_sys::Oid, tid: u64 },
    /// The id, and the distribution column's value (as text) when that is another column:
    /// Citus tables, whose shards each have their own ctids. Citus routes each row's write to
    /// its shard.
    Key { dist: Option<String> },
}

/// A row a fit may write: its id (text) and where it is.
#[derive(Clone)]
pub struct RowAddr {
    pub id: String,
    pub at: At,
}

/// One row to write and the vector to store.
pub struct RowWrite {
    pub addr: RowAddr,
    pub vector: Vec<f32>,
    /// `nudge_digest` of the embedding as the fit read it, as `real[]`: the compare-and-set of
    /// rows addressed by key.
    pub read: i64,
}

/// How the rows of a batch are found: the `input` relation (`unnest` of `$2`, `$3` (and `$5`,
/// the digests read, by key) with ordinality), and the condition joining row alias `t` to
/// input row `i`: the row version by ctid, or the row by key still holding what was read.
struct Addressing {
    input: &'static str,
    matches: String,
}

fn addressing(e: &Ext, placement: &Placement, id: &Column, col: &Column, kind: VecKind, since: Since) -> Addressing {
    match placement {
        Placement::Local if since == Since::ThisTransaction => Addressing {
            input: "ROWS FROM (pg_catalog.unnest($2::pg_catalog.tid[]), pg_catalog.unnest($3::pg_catalog.oid[])) WITH ORDINALITY AS u(tid, toid, ord)",
            matches: "t.tableoid OPERATOR(pg_catalog.=) i.toid AND t.ctid OPERATOR(pg_catalog.=) i.tid".into(),
        },
        // A row version read by an earlier transaction: its slot may have been pruned and
        // reused since, so the id and the value are compared too.
        Placement::Local => Addressing {
            input: "ROWS FROM (pg_catalog.unnest($2::pg_catalog.tid[]), pg_catalog.unnest($3::pg_catalog.oid[]), pg_catalog.unnest($5::pg_catalog.int8[]), pg_catalog.unnest($6::pg_catalog.text[]))
                    WITH ORDINALITY AS u(tid, toid, digest, id, ord)",
            matches: format!(
                "t.tableoid OPERATOR(pg_catalog.=) i.toid AND t.ctid OPERATOR(pg_catalog.=) i.tid
                 AND t.{}::pg_catalog.text OPERATOR(pg_catalog.=) i.id AND {}",
                id.ident,
                unchanged(e, col, kind, "i.digest")
            ),
        },
        Placement::View => Addressing {
            input: "ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($5::pg_catalog.int8[]))
                    WITH ORDINALITY AS u(id, digest, ord)",
            matches: format!("{} AND {}", key_match(id, None, "i.id", ""), unchanged(e, col, kind, "i.digest")),
        },
        Placement::Citus { dist, shard_key, .. } => Addressing {
            input: "ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($5::pg_catalog.int8[]))
                    WITH ORDINALITY AS u(id, dist, digest, ord)",
            matches: format!(
                "{} AND {}{}",
                key_match(id, dist.as_ref(), "i.id", "i.dist"),
                unchanged(e, col, kind, "i.digest"),
                shard_key.as_ref().map_or(String::new(), |k| format!(" AND {}", in_shard(k, "$7")))
            ),
        },
    }
}

/// `t.key = ANY(CAST(<values> AS type[]))`, `values` a `text[]` of one shard's values of the
/// distribution column `key`: Citus prunes a statement with it to that shard (one task, sent
/// with its parameters to that shard's worker), where without it every shard gets a task.
pub(crate) fn in_shard(key: &Column, values: &str) -> String {
    format!("t.{} {} ANY(CAST({values} AS {}[]))", key.ident, catalog::eq_operator(key.typid), key.type_sql)
}

/// The distribution column's value of the row at `a` (as text): its own column, or the id.
fn shard_value(a: &RowAddr) -> &str {
    match &a.at {
        At::Key { dist: Some(d) } => d,
        _ => &a.id,
    }
}

/// `rows` in the batches [`write_in_place`] writes one statement each: of at most
/// [`write_batch`] rows, and on a hash-distributed Citus table all of one shard.
fn batches<'a>(rel: pg_sys::Oid, placement: &Placement, rows: &'a [RowWrite]) -> Vec<Vec<&'a RowWrite>> {
    let size = write_batch(placement);
    match placement {
        Placement::Citus { shard_key: Some(_), .. } => {
            let values: Vec<&str> = rows.iter().map(|r| shard_value(&r.addr)).collect();
            crate::citus::by_shard(rel, &values)
                .into_iter()
                .flat_map(|shard| shard.chunks(size).map(|c| c.iter().map(|&i| &rows[i]).collect()).collect::<Vec<_>>())
                .collect()
        }
        _ => rows.chunks(size).map(|c| c.iter().collect()).collect(),
    }
}

/// `nudge_digest` of row `t`'s `col` as `real[]` equals `read`: the row still holds what the
/// fit read (the pass reads every type as real).
pub(crate) fn unchanged(e: &Ext, col: &Column, kind: VecKind, read: &str) -> String {
    format!("{}({}) OPERATOR(pg_catalog.=) {read}", catalog::func(e, "nudge_digest"), as_real(&format!("t.{}", col.ident), kind))
}

/// A vector column's value as `real[]` (`double precision[]` stays as it is: its digest is
/// that of the same values as real).
fn as_real(value: &str, kind: VecKind) -> String {
    match kind {
        VecKind::Real | VecKind::Double => value.to_string(),
        _ => format!("CAST({value} AS pg_catalog.float4[])"),
    }
}

/// `t.id = CAST(<id> AS type) [AND t.dist = CAST(<dist> AS type)]`: the row by its key, in the
/// columns' own types (so Citus can route it and indexes apply), compared with each type's
/// own equality operator.
pub(crate) fn key_match(id: &Column, dist: Option<&Column>, id_expr: &str, dist_expr: &str) -> String {
    let mut s = format!("t.{} {} CAST({id_expr} AS {})", id.ident, catalog::eq_operator(id.typid), id.type_sql);
    if let Some(d) = dist {
        s += &format!(" AND t.{} {} CAST({dist_expr} AS {})", d.ident, catalog::eq_operator(d.typid), d.type_sql);
    }
    s
}

/// How a batch's vectors travel as the statement's `$1`: one flat `real[]`, or, to Citus
/// shards, the same floats as little-endian bytes (`bytea`) that [`nudge_floats`] decodes row
/// by row on the worker; the values overwritten come back as bytes too ([`nudge_bytes`]).
/// Citus sends a statement's parameters to the worker as text (a float printed in decimal,
/// parsed back there) and an array in binary element by element: with `real[]` both ways,
/// those conversions were most of a routed write (4,616 rows in 32 shard statements: ~1.1 s,
/// ~0.4 s as bytes; BENCHMARKS.md).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flat {
    Real,
    Bytes,
}

impl Flat {
    /// Bytes to the shards of a Citus table, `real[]` elsewhere (SPI passes datums as they are).
    pub(crate) fn of(placement: &Placement) -> Flat {
        match placement {
            Placement::Citus { .. } => Flat::Bytes,
            Placement::Local | Placement::View => Flat::Real,
        }
    }

    /// `values` (the batch's vectors, row after row) as `$1`.
    pub(crate) fn arg(self, values: &[f32]) -> DatumWithOid<'static> {
        match self {
            Flat::Real => real_array(values),
            Flat::Bytes => le_bytes(values).into(),
        }
    }

    /// The vector of input row `ord` (from 1) of dimension `dim` in `$1`, as `real[]` (SQL).
    pub(crate) fn row(self, e: &Ext, ord: &str, dim: &str) -> String {
        match self {
            // (a slice's lower bound is 1)
            Flat::Real => format!(
                "$1[(({ord} OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.*) {dim}) OPERATOR(pg_catalog.+) 1 : {ord} OPERATOR(pg_catalog.*) {dim}]"
            ),
            Flat::Bytes => format!(
                "{}(pg_catalog.substr($1, CAST(((({ord} OPERATOR(pg_catalog.-) 1) OPERATOR(pg_catalog.*) {dim}) OPERATOR(pg_catalog.*) 4) OPERATOR(pg_catalog.+) 1 AS pg_catalog.int4), {dim} OPERATOR(pg_catalog.*) 4))",
                catalog::func(e, "nudge_floats")
            ),
        }
    }
}

/// `nudge_floats(bytes)`: the `real[]` whose elements are `bytes` read as little-endian
/// float4s, four bytes each (how nudge sends vectors to Citus shards, see [`Flat`]).
#[pg_extern(immutable, strict, parallel_safe)]
fn nudge_floats(bytes: &[u8]) -> RealArray {
    use crate::error::{raise, PgSqlErrorCode as Code};
    if bytes.len() % 4 != 0 {
        raise(Code::ERRCODE_INVALID_BINARY_REPRESENTATION, format!("nudge_floats: {} bytes are not a whole number of float4 values (4 bytes each)", bytes.len()));
    }
    if bytes.len() / 4 > MAX_ARRAY {
        raise(Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED, format!("nudge_floats: {} values exceed the maximum array size ({MAX_ARRAY})", bytes.len() / 4));
    }
    RealArray(from_le_bytes(bytes).collect())
}

/// `values` as little-endian float4 bytes (what [`nudge_floats`] reads).
fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The floats of little-endian float4 bytes (what [`nudge_bytes`] writes); a partial last
/// value is ignored (callers check the length).
fn from_le_bytes(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// A `real[]` result built in one copy (pgrx's `Vec<f32>` appends element by element: 7 us
/// for 384 values, called for every row a routed write sends).
struct RealArray(Vec<f32>);

// SAFETY: returns the datum it builds, a real[].
unsafe impl pgrx::callconv::BoxRet for RealArray {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut pgrx::callconv::FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        // SAFETY: a fresh float4[] datum in the current (the call's) memory context.
        unsafe { fcinfo.return_raw_datum(real_array_datum(&self.0)) }
    }
}

// SAFETY: the SQL type of `Vec<f32>`, which this is.
unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for RealArray {
    const TYPE_IDENT: &'static str = <Vec<f32> as pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable>::TYPE_IDENT;
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin = <Vec<f32> as pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable>::TYPE_ORIGIN;
    const ARGUMENT_SQL: Result<pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef, pgrx::pgrx_sql_entity_graph::metadata::ArgumentError> =
        <Vec<f32> as pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable>::ARGUMENT_SQL;
    const RETURN_SQL: Result<pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef, pgrx::pgrx_sql_entity_graph::metadata::ReturnsError> =
        <Vec<f32> as pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable>::RETURN_SQL;
}

/// `nudge_bytes(values)`: the elements of `values` as little-endian float4 bytes, the inverse
/// of [`nudge_floats`] (how Citus shards return the values a write overwrote: an array of
/// floats in PostgreSQL's binary form costs a function call per element).
#[pg_extern(immutable, strict, parallel_safe)]
fn nudge_bytes(values: Array<'_, f32>) -> Vec<u8> {
    match values.as_slice() {
        Ok(v) => le_bytes(v),
        Err(_) => crate::error::raise(crate::error::PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "nudge_bytes: the array contains a NULL"),
    }
}

/// PostgreSQL's `MaxArraySize`: `MaxAllocSize` (1 GB - 1) over the size of a datum.
const MAX_ARRAY: usize = 0x3fff_ffff / std::mem::size_of::<pg_sys::Datum>();

/// The batch's addresses as the two array parameters `$2`, `$3` of [`addressing`].
fn address_args(rows: &[&RowWrite]) -> [DatumWithOid<'static>; 2] {
    match rows.first().map(|r| &r.addr.at) {
        Some(At::Key { .. }) => {
            let ids: Vec<String> = rows.iter().map(|r| r.addr.id.clone()).collect();
            let dists: Vec<Option<String>> = rows
                .iter()
                .map(|r| match &r.addr.at {
                    At::Key { dist } => dist.clone(),
                    At::Tid { .. } => None,
                })
                .collect();
            [ids.into(), dists.into()]
        }
        _ => {
            let (tids, toids): (Vec<pg_sys::ItemPointerData>, Vec<pg_sys::Oid>) = rows
                .iter()
                .map(|r| match r.addr.at {
                    At::Tid { tableoid, tid } => (tid_datum(tid), tableoid),
                    At::Key { .. } => (tid_datum(0), pg_sys::InvalidOid),
                })
                .unzip();
            [tids.into(), toids.into()]
        }
    }
}

pub(crate) fn tid_datum(tid: u64) -> pg_sys::ItemPointerData {
    let mut t = pg_sys::ItemPointerData::default();
    pgrx::itemptr::u64_to_item_pointer(tid, &mut t);
    t
}

/// The value of column `col` of row alias `t` as stored in the backup (`real[]`, or
/// `double precision[]` for those columns), and the backup column it goes to.
fn backup_expr(t: &str, col: &Column, kind: VecKind) -> (String, &'static str) {
    match kind {
        VecKind::Vector | VecKind::Halfvec => (format!("CAST({t}.{} AS pg_catalog.float4[])", col.ident), "original"),
        VecKind::Real => (format!("{t}.{}", col.ident), "original"),
        VecKind::Double => (format!("{t}.{}", col.ident), "original_double"),
    }
}

/// The previous value as the write statement returns it: as the backup keeps it, or from a
/// Citus shard, for `real[]` backups, as its bytes (`nudge_bytes`, see [`Flat`]).
fn returned_original(e: &Ext, t: &str, col: &Column, kind: VecKind, flat: Flat) -> String {
    let expr = backup_expr(t, col, kind).0;
    match (flat, kind) {
        (Flat::Bytes, VecKind::Vector | VecKind::Halfvec | VecKind::Real) => format!("{}({expr})", catalog::func(e, "nudge_bytes")),
        _ => expr,
    }
}

/// `nudge_digest(values)`: the digest `nudge.fit_backups.written` holds (see
/// `nudge_core::digest`). NULL elements digest as a value no float has.
#[pg_extern(immutable, strict, parallel_safe, name = "nudge_digest")]
fn nudge_digest_real(values: Array<'_, f32>) -> i64 {
    match values.as_slice() {
        Ok(v) => nudge_core::digest::digest_f32(v),
        Err(_) => nudge_core::digest::digest(values.iter().map(|v| v.map_or(NULL_ELEMENT, |x| x as f64))),
    }
}

/// `nudge_digest(values)` for double precision[]; equal to the real[] digest of the same values.
#[pg_extern(immutable, strict, parallel_safe, name = "nudge_digest")]
fn nudge_digest_double(values: Array<'_, f64>) -> i64 {
    match values.as_slice() {
        Ok(v) => nudge_core::digest::digest(v.iter().copied()),
        Err(_) => nudge_core::digest::digest(values.iter().map(|v| v.unwrap_or(NULL_ELEMENT))),
    }
}

/// A one-dimensional `real[]` holding `values`, built with one copy (pgrx's `Vec<f32>`
/// conversion appends element by element: ~1 ms for 256 x 384 values).
pub(crate) fn real_array(values: &[f32]) -> DatumWithOid<'static> {
    // SAFETY: a float4[] datum.
    unsafe { DatumWithOid::new(real_array_datum(values), pg_sys::FLOAT4ARRAYOID) }
}

fn real_array_datum(values: &[f32]) -> pg_sys::Datum {
    if values.is_empty() {
        // SAFETY: PostgreSQL's own empty array (no dimensions).
        return pg_sys::Datum::from(unsafe { pg_sys::construct_empty_array(pg_sys::FLOAT4OID) });
    }
    // ArrayType header (length, ndim, dataoffset = 0: no NULLs, element type), one dimension
    // and its lower bound: 24 bytes, already MAXALIGNed; then the elements.
    let size = 24 + 4 * values.len();
    // SAFETY: a fresh palloc'd buffer of `size` bytes, filled as the layout above.
    unsafe {
        let p = pg_sys::palloc0(size) as *mut u8;
        pgrx::set_varsize_4b(p as *mut pg_sys::varlena, size as i32);
        std::ptr::write_unaligned(p.add(4) as *mut i32, 1);
        std::ptr::write_unaligned(p.add(12) as *mut pg_sys::Oid, pg_sys::FLOAT4OID);
        std::ptr::write_unaligned(p.add(16) as *mut i32, values.len() as i32);
        std::ptr::write_unaligned(p.add(20) as *mut i32, 1);
        std::ptr::copy_nonoverlapping(values.as_ptr() as *const u8, p.add(24), 4 * values.len());
        pg_sys::Datum::from(p)
    }
}

/// Stand-in for a NULL element: a NaN payload no stored vector holds (nudge never writes NaN).
const NULL_ELEMENT: f64 = f64::from_bits(0x7FF8_0000_DEAD_0001);

/// When the rows to write were read: by this transaction (under the fit's lock, which keeps
/// VACUUM out), or by an earlier one (a staged fit, `nudge_apply`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Since {
    ThisTransaction,
    EarlierTransaction,
}

/// Overwrite `col` in place for `rows` still holding what the fit read, backing up the
/// previous values under `fit_id`; returns the rows written.
#[allow(clippy::too_many_arguments)]
pub fn write_in_place(
    e: &Ext,
    rel: pg_sys::Oid,
    placement: &Placement,
    id: &Column,
    col: &Column,
    kind: VecKind,
    fit_id: i64,
    rows: &[RowWrite],
    since: Since,
    reporter: &mut Reporter,
) -> i64 {
    if rows.is_empty() {
        return 0;
    }
    let sql = in_place_sql(e, placement, id, col, kind, since);
    let flat = Flat::of(placement);
    let dim = rows[0].vector.len();
    let total = rows.len() as u64;
    let insert = Previous::insert_sql(kind);
    // The backups' table first, before any row is written (its lock is taken once per
    // transaction anyway): a fit that has to wait for it holds no row of the corpus meanwhile.
    catalog::as_owner(e, || Spi::run("LOCK TABLE nudge.fit_backups IN ROW EXCLUSIVE MODE")).or_raise();
    Spi::connect_mut(|client| {
        let (mut written, mut done) = (0i64, 0u64);
        let mut stmt = None;
        for chunk in batches(rel, placement, rows) {
            let chunk = chunk.as_slice();
            let vectors: Vec<f32> = chunk.iter().flat_map(|r| r.vector.iter().copied()).collect();
            let [at1, at2] = address_args(chunk);
            let read: Vec<i64> = chunk.iter().map(|r| r.read).collect();
            // (compared only for rows read by an earlier transaction)
            let ids: Vec<String> = match since {
                Since::EarlierTransaction => chunk.iter().map(|r| r.addr.id.clone()).collect(),
                Since::ThisTransaction => Vec::new(),
            };
            // (the shard's values of the distribution column, where routed)
            let shard: Vec<&str> = match placement {
                Placement::Citus { shard_key: Some(_), .. } => chunk.iter().map(|r| shard_value(&r.addr)).collect(),
                _ => Vec::new(),
            };
            let args: Vec<DatumWithOid> =
                vec![flat.arg(&vectors), at1, at2, (dim as i32).into(), read.into(), ids.into(), shard.into()];
            if stmt.is_none() {
                let types: Vec<pg_sys::PgOid> = args.iter().map(|a| pg_sys::PgOid::from(a.oid())).collect();
                stmt = Some(client.prepare_mut(sql.as_str(), &types).or_raise());
            }
            // The batch's UPDATE runs as the caller and returns what it overwrote; nudge
            // records that in the catalog as its owner.
            let table = client.update(stmt.as_ref().unwrap(), None, &args).or_raise();
            let previous = Previous::collect(table, kind, flat).or_raise();
            written += previous.ids.len() as i64;
            if !previous.ids.is_empty() {
                let args = previous.insert_args(rel, fit_id, kind, dim);
                catalog::as_owner(e, || client.update(insert.as_str(), None, &args).map(|_| ())).or_raise();
            }
            done += chunk.len() as u64;
            crate::exec::check_interrupts().ok();
            reporter.report("writing rows", done, Some(total));
        }
        written
    })
}

/// What a batch's UPDATE overwrote: row ids, previous values (flat) and the digests of the
/// values written.
struct Previous {
    ids: Vec<String>,
    real: Vec<f32>,
    double: Vec<f64>,
    written: Vec<i64>,
}

impl Previous {
    fn collect(table: pgrx::spi::SpiTupleTable, kind: VecKind, flat: Flat) -> Result<Previous, pgrx::spi::Error> {
        let mut p = Previous { ids: Vec::with_capacity(table.len()), real: Vec::new(), double: Vec::new(), written: Vec::with_capacity(table.len()) };
        for row in table {
            p.ids.push(row.get::<String>(1)?.unwrap_or_default());
            match (kind, flat) {
                (VecKind::Double, _) => p.double.extend(row.get::<Vec<f64>>(2)?.unwrap_or_default()),
                (_, Flat::Bytes) => {
                    p.real.extend(from_le_bytes(&row.get::<Vec<u8>>(2)?.unwrap_or_default()));
                }
                (_, Flat::Real) => p.real.extend(row.get::<Vec<f32>>(2)?.unwrap_or_default()),
            }
            p.written.push(row.get::<i64>(3)?.unwrap_or_default());
        }
        Ok(p)
    }

    /// The INSERT of a batch's backups: `$1` the fit, `$2` the table, `$3` the previous values
    /// (flat), `$4` the dimension, `$5` the row ids, `$6` the digests written.
    fn insert_sql(kind: VecKind) -> String {
        let column = match kind {
            VecKind::Double => "original_double",
            _ => "original",
        };
        format!(
            "INSERT INTO nudge.fit_backups (fit_id, corpus, row_id, {column}, written)
             SELECT $1, $2, u.id, $3[(u.ord - 1) * $4 + 1 : u.ord * $4], u.w
               FROM ROWS FROM (pg_catalog.unnest($5::pg_catalog.text[]), pg_catalog.unnest($6::pg_catalog.int8[])) WITH ORDINALITY AS u(id, w, ord)"
        )
    }

    fn insert_args(self, rel: pg_sys::Oid, fit_id: i64, kind: VecKind, dim: usize) -> Vec<DatumWithOid<'static>> {
        let values = match kind {
            VecKind::Double => self.double.into(),
            _ => real_array(&self.real),
        };
        vec![
            fit_id.into(),
            // SAFETY: an OID is a valid regclass datum.
            unsafe { DatumWithOid::new(rel, pg_sys::REGCLASSOID) },
            values,
            (dim as i32).into(),
            self.ids.into(),
            self.written.into(),
        ]
    }
}

/// The statement [`write_in_place`] runs per batch: `$1` the batch's vectors (flat, see
/// [`Flat`]), `$2`/`$3` the addresses, `$4` the dimension, `$5` the digests read, `$6` the ids
/// (those two where [`addressing`] compares values), `$7` the shard's values of the
/// distribution column (on a hash-distributed table). It returns each written row's id, its
/// previous value (as the backup keeps it) and the digest of the value written.
fn in_place_sql(e: &Ext, placement: &Placement, id: &Column, col: &Column, kind: VecKind, since: Since) -> String {
    // One statement per batch of rows: the addresses come in as arrays, the vectors flat
    // and cut per row in the input, and a parameterized
    // TID scan (or, on Citus, the key) finds each row. (Measured against one statement per row:
    // no difference; the cost of a row is the update and its backup, BENCHMARKS.md.) On a
    // hash-distributed Citus table a batch holds rows of one shard and says so (`$7`, see
    // [`in_shard`]): Citus then sends the whole statement with its parameters to that shard as
    // one task. A statement Citus cannot prune goes to every shard, each task carrying the
    // whole batch (Citus inlines `input` with the parameters as constants).
    let Addressing { input, matches } = addressing(e, placement, id, col, kind, since);
    let digest = catalog::func(e, "nudge_digest");
    let flat = Flat::of(placement);
    let vector = flat.row(e, "u.ord", "$4");
    let set = format!(
        "UPDATE {rel} AS t SET {col} = CAST(i.v AS {ty}) FROM input AS i WHERE {matches}",
        rel = col.rel_sql,
        col = col.ident,
        ty = col.type_sql,
    );
    // PostgreSQL 18 returns the old and the new row from the UPDATE itself; before it, the
    // old values are read in a second scan of the same rows.
    #[cfg(feature = "pg18")]
    let sql = format!(
        "WITH input AS (SELECT u.*, {vector} AS v FROM {input}),
              upd AS ({set}
                      RETURNING old.{id}::pg_catalog.text AS row_id, {original} AS original, {digest}({written}) AS written)
         SELECT upd.row_id, upd.original, upd.written FROM upd",
        id = id.ident,
        original = returned_original(e, "old", col, kind, flat),
        written = backup_expr("new", col, kind).0,
    );
    #[cfg(not(feature = "pg18"))]
    let sql = format!(
        "WITH input AS (SELECT u.*, {vector} AS v FROM {input}),
              old AS (SELECT i.ord, t.{id}::pg_catalog.text AS row_id, {returned} AS original
                        FROM {rel} AS t JOIN input AS i ON {matches}),
              upd AS ({set}
                      RETURNING i.ord, {digest}({original}) AS written)
         SELECT old.row_id, old.original, upd.written
           FROM old JOIN upd ON old.ord OPERATOR(pg_catalog.=) upd.ord",
        id = id.ident,
        rel = col.rel_sql,
        original = backup_expr("t", col, kind).0,
        returned = returned_original(e, "t", col, kind, flat),
    );
    sql
}

/// Rows written per statement by [`write_in_place`] (also the progress and interrupt
/// granularity). On Citus a statement is a network round trip to a worker: larger ones.
fn write_batch(placement: &Placement) -> usize {
    match placement {
        Placement::Local | Placement::View => 256,
        Placement::Citus { .. } => 4096,
    }
}

/// Fill `target` for every row: `rows` get their given vectors, all others a copy of `source`
/// (also rows to write that the application changed during the fit); returns the rows given
/// their vectors.
#[allow(clippy::too_many_arguments)]
pub fn write_target(
    e: &Ext,
    placement: &Placement,
    id: &Column,
    source: &Column,
    kind: VecKind,
    target: &Column,
    rows: &[RowWrite],
    reporter: &mut Reporter,
) -> i64 {
    // First the copy for all other rows (rows to write keep their ctid until written).
    let ids: Vec<String> = rows.iter().map(|r| r.addr.id.clone()).collect();
    reporter.report("copying the source column into the target", 0, None);
    copy_source(id, source, target, ids, false);
    let matches = match placement {
        Placement::Local => "t.tableoid OPERATOR(pg_catalog.=) $3 AND t.ctid OPERATOR(pg_catalog.=) $2".to_string(),
        Placement::Citus { dist, .. } => format!("{} AND {}", key_match(id, dist.as_ref(), "$2", "$3"), unchanged(e, source, kind, "$4")),
        Placement::View => format!("{} AND {}", key_match(id, None, "$2", ""), unchanged(e, source, kind, "$4")),
    };
    let sql = format!(
        "UPDATE {rel} AS t SET {tgt} = CAST($1 AS {ty}) WHERE {matches}",
        rel = source.rel_sql,
        tgt = target.ident,
        ty = target.type_sql,
    );
    let written = run_rows(&sql, rows, reporter, |r| {
        let [at1, at2] = match &r.addr.at {
            At::Tid { tableoid, tid } => [tid_datum(*tid).into(), (*tableoid).into()],
            At::Key { dist } => [r.addr.id.clone().into(), dist.clone().into()],
        };
        vec![r.vector.clone().into(), at1, at2, r.read.into()]
    });
    let skipped: Vec<String> = written.iter().zip(rows).filter(|(w, _)| !**w).map(|(_, r)| r.addr.id.clone()).collect();
    if !skipped.is_empty() {
        copy_source(id, source, target, skipped, true);
    }
    written.iter().filter(|w| **w).count() as i64
}

/// Copy `source` into `target` for the rows whose id is in `ids` (`among`) or not in it.
fn copy_source(id: &Column, source: &Column, target: &Column, ids: Vec<String>, among: bool) {
    let copy = format!(
        "UPDATE {rel} AS t SET {tgt} = t.{src} WHERE {not}(t.{id}::pg_catalog.text OPERATOR(pg_catalog.=) ANY($1))",
        rel = source.rel_sql,
        tgt = target.ident,
        src = source.ident,
        id = id.ident,
        not = if among { "" } else { "NOT " },
    );
    Spi::connect_mut(|client| client.update(copy.as_str(), None, &[ids.into()]).map(|_| ())).or_raise();
}

/// Execute a prepared statement once per row, checking interrupts and reporting progress;
/// whether it wrote each row.
fn run_rows<'a>(
    sql: &str,
    rows: &'a [RowWrite],
    reporter: &mut Reporter,
    args: impl Fn(&'a RowWrite) -> Vec<DatumWithOid<'a>>,
) -> Vec<bool> {
    if rows.is_empty() {
        return Vec::new();
    }
    let total = rows.len() as u64;
    Spi::connect_mut(|client| {
        let types: Vec<pg_sys::PgOid> = args(&rows[0]).iter().map(|a| pg_sys::PgOid::from(a.oid())).collect();
        let stmt = client.prepare_mut(sql, &types).or_raise();
        let mut written = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            written.push(client.update(&stmt, None, &args(r)).or_raise().len() > 0);
            if i % 256 == 255 || i + 1 == rows.len() {
                crate::exec::check_interrupts().ok();
                reporter.report("writing rows", i as u64 + 1, Some(total));
            }
        }
        written
    })
}
