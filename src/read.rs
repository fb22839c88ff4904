//! Reading embeddings, queries and labels out of tables.
//!
//! Embedding values are decoded straight from their datums (pgvector's `vector` /
//! `halfvec` varlena layout, or a one-dimensional float4/float8 array), after detoasting,
//! into one flat `f32` buffer per batch. Every value is checked here, so errors name the
//! row: NULLs, NaN/Inf, wrong dimensions, NULL array elements.
//!
//! nudge_fit and nudge_evaluate read the corpus row by row from the executor (`for_each_row`: a DestReceiver,
//! no copy of the tuples, a memory context reset after every row); other reads go through a
//! cursor in batches of `nudge.batch_rows` (`for_each_batch`), each batch's memory released
//! before the next. Either way memory stays bounded whatever the table size.

use std::collections::HashMap;

use ndarray::Array2;
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;

use crate::columns::{Column, Relation, VecKind};
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};
use crate::guc;

/// Vectors read from a table, row-major, with their ids.
pub struct Vectors {
    pub ids: Vec<String>,
    pub dim: usize,
    pub data: Vec<f32>,
    /// Each row's partition value (text), when read with one (else empty).
    pub parts: Vec<String>,
}

impl Vectors {
    pub fn new(dim: usize) -> Self {
        Vectors { ids: Vec::new(), dim, data: Vec::new(), parts: Vec::new() }
    }
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn into_array(self) -> Array2<f32> {
        let n = self.ids.len();
        Array2::from_shape_vec((n, self.dim), self.data).expect("rows x dim matches the buffer")
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}


/// Decode one non-NULL embedding datum, appending its elements to `out`.
/// Returns the number of elements, or an error message naming what is wrong.
///
/// # Safety
/// `datum` must be a valid datum of the column type `kind` describes.
unsafe fn decode(datum: pg_sys::Datum, kind: VecKind, out: &mut Vec<f32>) -> Result<usize, String> {
    let ptr = pg_sys::pg_detoast_datum(datum.cast_mut_ptr::<pg_sys::varlena>());
    let total = varsize_4b(ptr);
    let base = ptr as *const u8;
    match kind {
        VecKind::Vector | VecKind::Halfvec => {
            // struct { int32 vl_len_; int16 dim; int16 unused; elements[dim] }
            let dim = std::ptr::read_unaligned(base.add(4) as *const i16) as usize;
            let width = if kind == VecKind::Vector { 4 } else { 2 };
            if 8 + dim * width > total {
                return Err("is a corrupt vector value".into());
            }
            let data = base.add(8);
            if kind == VecKind::Vector {
                append_f32(out, data, dim);
            } else {
                out.reserve(dim);
                for i in 0..dim {
                    out.push(nudge_core::half::to_f32(std::ptr::read_unaligned(data.add(2 * i) as *const u16)));
                }
            }
            Ok(dim)
        }
        VecKind::Real | VecKind::Double => {
            // ArrayType: int32 vl_len_; int32 ndim; int32 dataoffset; Oid elemtype; dims[]; lbounds[]; [nulls]; data
            let ndim = std::ptr::read_unaligned(base.add(4) as *const i32);
            let dataoffset = std::ptr::read_unaligned(base.add(8) as *const i32);
            if ndim == 0 {
                return Ok(0);
            }
            if ndim != 1 {
                return Err(format!("is a {ndim}-dimensional array; embeddings must be one-dimensional"));
            }
            if dataoffset != 0 {
                return Err("contains NULL elements".into());
            }
            let n = std::ptr::read_unaligned(base.add(16) as *const i32) as usize;
            let header = 16 + 8; // one dim + one lbound, already MAXALIGNed (24 bytes)
            let width = if kind == VecKind::Real { 4 } else { 8 };
            if header + n * width > total {
                return Err("is a corrupt array value".into());
            }
            let data = base.add(header);
            if kind == VecKind::Real {
                append_f32(out, data, n);
                return Ok(n);
            }
            out.reserve(n);
            for i in 0..n {
                let d = std::ptr::read_unaligned(data.add(8 * i) as *const f64);
                if d.is_finite() && d.abs() > f32::MAX as f64 {
                    return Err(format!("has element {d:e} outside the range of real"));
                }
                out.push(d as f32);
            }
            Ok(n)
        }
    }
}

/// Append `n` native-endian f32 values starting at `src` (any alignment) with one copy.
///
/// # Safety
/// `src` must be valid for reading `4 * n` bytes.
unsafe fn append_f32(out: &mut Vec<f32>, src: *const u8, n: usize) {
    out.reserve(n);
    let len = out.len();
    std::ptr::copy_nonoverlapping(src, out.as_mut_ptr().add(len) as *mut u8, 4 * n);
    out.set_len(len + n);
}

unsafe fn varsize_4b(ptr: *const pg_sys::varlena) -> usize {
    (std::ptr::read_unaligned(ptr as *const u32) >> 2) as usize & 0x3FFF_FFFF
}

/// Append one embedding to `buf`, checking NULL, dimension and finiteness.
/// `dim` is fixed by the first vector read when it is 0.
pub fn push_embedding(
    datum: Option<pg_sys::Datum>,
    kind: VecKind,
    dim: &mut usize,
    buf: &mut Vec<f32>,
    what: &dyn Fn() -> String,
) {
    let Some(datum) = datum else {
        raise(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{} is NULL", what()));
    };
    let start = buf.len();
    let n = unsafe { decode(datum, kind, buf) }
        .unwrap_or_else(|msg| raise(Code::ERRCODE_DATA_EXCEPTION, format!("{} {msg}", what())));
    if n == 0 {
        raise(Code::ERRCODE_DATA_EXCEPTION, format!("{} is empty", what()));
    }
    if *dim == 0 {
        *dim = n;
    } else if n != *dim {
        raise_with(
            Code::ERRCODE_DATA_EXCEPTION,
            format!("{} has {n} dimensions, expected {}", what(), *dim),
            None,
            Some("All corpus rows and queries must have the same number of dimensions.".into()),
        );
    }
    // branch-free scan first (vectorises); look for the position only on failure
    if !buf[start..].iter().fold(true, |ok, v| ok & v.is_finite()) {
        let bad = buf[start..].iter().position(|v| !v.is_finite()).unwrap_or(0);
        raise(
            Code::ERRCODE_DATA_EXCEPTION,
            format!("{} has a non-finite element ({} at position {})", what(), buf[start + bad], bad + 1),
        );
    }
}

/// `nudge_digest` of an embedding value already decoded into `values`: for double precision[]
/// the digest is taken over the exact stored values, which `values` has rounded to f32.
pub fn digest_of(datum: Option<pg_sys::Datum>, kind: VecKind, values: &[f32]) -> i64 {
    match (kind, datum) {
        (VecKind::Double, Some(d)) => unsafe {
            let ptr = pg_sys::pg_detoast_datum(d.cast_mut_ptr::<pg_sys::varlena>()) as *const u8;
            // (a value that decoded without error: a one-dimensional array without NULLs)
            let data = ptr.add(24);
            nudge_core::digest::digest((0..values.len()).map(|i| std::ptr::read_unaligned(data.add(8 * i) as *const f64)))
        },
        _ => nudge_core::digest::digest_f32(values),
    }
}

/// One fetched batch of rows, read with `SPI_getbinval` (no per-row allocation).
pub struct Batch {
    table: *mut pg_sys::SPITupleTable,
    rows: usize,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Column `col` (1-based) of row `row`; `None` for NULL.
    pub fn datum(&self, row: usize, col: i32) -> Option<pg_sys::Datum> {
        debug_assert!(row < self.rows);
        let mut isnull = false;
        // SAFETY: `table` is the live SPI tuple table of this batch and `row` is in range.
        let d = unsafe {
            let t = &*self.table;
            pg_sys::SPI_getbinval(*t.vals.add(row), t.tupdesc, col, &mut isnull)
        };
        (!isnull).then_some(d)
    }

    pub fn text(&self, row: usize, col: i32) -> Option<String> {
        // SAFETY: the batch's tuple descriptor.
        expect_type(unsafe { (*self.table).tupdesc }, col, TEXT);
        self.datum(row, col).and_then(|d| unsafe { String::from_datum(d, false) })
    }

    pub fn int8(&self, row: usize, col: i32) -> Option<i64> {
        expect_type(unsafe { (*self.table).tupdesc }, col, &[pg_sys::INT8OID]);
        self.datum(row, col).and_then(|d| unsafe { i64::from_datum(d, false) })
    }

    pub fn float8(&self, row: usize, col: i32) -> Option<f64> {
        expect_type(unsafe { (*self.table).tupdesc }, col, &[pg_sys::FLOAT8OID]);
        self.datum(row, col).and_then(|d| unsafe { f64::from_datum(d, false) })
    }
}

/// Types whose datum is text (a varlena of characters): what `text()` may read.
const TEXT: &[pg_sys::Oid] = &[pg_sys::TEXTOID, pg_sys::VARCHAROID, pg_sys::BPCHAROID];

/// Column `col` (1-based) of a result with descriptor `tupdesc` must exist and be of one of the
/// types `want`. nudge's own queries cast what they read to the type they read it as; a column
/// that is not (a bug of nudge's) raises an error here, where converting its datum as another
/// type would misread memory (a `tid` read as text crashed the backend once).
fn expect_type(tupdesc: pg_sys::TupleDesc, col: i32, want: &[pg_sys::Oid]) {
    // SAFETY: a tuple descriptor the executor or SPI handed over; SPI_gettypeid checks `col`.
    let (natts, typid) = unsafe { ((*tupdesc).natts, if col >= 1 && col <= (*tupdesc).natts { pg_sys::SPI_gettypeid(tupdesc, col) } else { pg_sys::InvalidOid }) };
    if !want.contains(&typid) {
        raise(
            Code::ERRCODE_INTERNAL_ERROR,
            format!("nudge: column {col} of an internal query (of {natts}) has type {}, read as {}", u32::from(typid), u32::from(want[0])),
        );
    }
}

/// Run `f` with `cx` as the current memory context, and switch back also when `f` raises an
/// error: the caller deletes `cx` while unwinding, and a deleted context must never be current.
fn in_context<R>(cx: pg_sys::MemoryContext, f: impl FnOnce() -> R) -> R {
    // SAFETY: `cx` is a live context owned by the caller.
    let prev = unsafe { pg_sys::MemoryContextSwitchTo(cx) };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    unsafe { pg_sys::MemoryContextSwitchTo(prev) };
    result.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Run `query` through a cursor, handing each batch to `each` with the batch's memory
/// (tuples and detoasted values) freed afterwards. Everything runs on this thread.
pub fn for_each_batch(query: &str, args: &[pgrx::datum::DatumWithOid], mut each: impl FnMut(&Batch)) {
    let batch = guc::BATCH_ROWS.get().max(1) as i64;
    Spi::connect(|client| {
        let mut cursor = client.try_open_cursor(query, args).or_raise();
        let mut cx = PgMemoryContexts::new("nudge batch");
        loop {
            let rows = cursor.fetch(batch).or_raise().len();
            if rows == 0 {
                break;
            }
            // SAFETY: SPI_cursor_fetch just set SPI_tuptable to this batch's rows.
            let b = Batch { table: unsafe { pg_sys::SPI_tuptable }, rows };
            in_context(cx.value(), || each(&b));
            unsafe {
                pg_sys::SPI_freetuptable(b.table);
                pg_sys::SPI_tuptable = std::ptr::null_mut();
                cx.reset();
            }
        }
    })
}

/// One row as the executor produced it; valid only during the callback that receives it.
pub struct Row {
    slot: *mut pg_sys::TupleTableSlot,
}

impl Row {
    /// Column `col` (1-based); `None` for NULL.
    pub fn datum(&self, col: i32) -> Option<pg_sys::Datum> {
        // SAFETY: the slot's attributes were deformed up to its last column before the
        // callback (see `receive_row`), and `col` is checked against them.
        unsafe {
            let s = &*self.slot;
            if col < 1 || col > (*s.tts_tupleDescriptor).natts {
                raise(Code::ERRCODE_INTERNAL_ERROR, format!("nudge: column {col} of an internal query does not exist"));
            }
            let i = (col - 1) as usize;
            (!*s.tts_isnull.add(i)).then(|| *s.tts_values.add(i))
        }
    }

    pub fn text(&self, col: i32) -> Option<String> {
        // SAFETY: the slot's descriptor.
        expect_type(unsafe { (*self.slot).tts_tupleDescriptor }, col, TEXT);
        self.datum(col).and_then(|d| unsafe { String::from_datum(d, false) })
    }

    pub fn tid(&self, col: i32) -> Option<u64> {
        expect_type(unsafe { (*self.slot).tts_tupleDescriptor }, col, &[pg_sys::TIDOID]);
        self.datum(col)
            .and_then(|d| unsafe { pg_sys::ItemPointerData::from_datum(d, false) })
            .map(pgrx::itemptr::item_pointer_to_u64)
    }
}

/// A DestReceiver that hands each row to a Rust closure, in a memory context reset after
/// every row (detoasted copies never pile up).
#[repr(C)]
struct RowDest<'a> {
    base: pg_sys::DestReceiver,
    each: &'a mut dyn FnMut(&Row),
    cx: pg_sys::MemoryContext,
}

#[pg_guard]
unsafe extern "C-unwind" fn receive_row(slot: *mut pg_sys::TupleTableSlot, dest: *mut pg_sys::DestReceiver) -> bool {
    // SAFETY: `dest` is the `RowDest` that `for_each_row` passed to the executor.
    let d = &mut *(dest as *mut RowDest);
    let natts = (*(*slot).tts_tupleDescriptor).natts;
    if ((*slot).tts_nvalid as i32) < natts {
        pg_sys::slot_getsomeattrs_int(slot, natts);
    }
    in_context(d.cx, || (d.each)(&Row { slot }));
    pg_sys::MemoryContextReset(d.cx);
    true
}

// (these cannot fail, so they need no guard)
unsafe extern "C-unwind" fn dest_startup(_dest: *mut pg_sys::DestReceiver, _op: std::ffi::c_int, _desc: pg_sys::TupleDesc) {}

unsafe extern "C-unwind" fn dest_noop(_dest: *mut pg_sys::DestReceiver) {}

/// Run `query` (no parameters) and hand every row to `each` straight from the executor's slot:
/// no copy of the tuples into a result set, so memory stays at one row whatever the table size.
/// The caller batches rows itself. Everything runs on this thread.
pub fn for_each_row(query: &str, mut each: impl FnMut(&Row)) {
    let sql = std::ffi::CString::new(query).expect("generated SQL has no NUL");
    Spi::connect(|_client| {
        let cx = PgMemoryContexts::new("nudge row");
        let each: &mut dyn FnMut(&Row) = &mut each;
        let mut dest = RowDest {
            base: pg_sys::DestReceiver {
                receiveSlot: Some(receive_row),
                rStartup: Some(dest_startup),
                rShutdown: Some(dest_noop),
                rDestroy: Some(dest_noop),
                mydest: pg_sys::CommandDest::DestNone,
            },
            each,
            cx: cx.value(),
        };
        // SAFETY: SPI is connected; the plan and the receiver live until the call returns.
        unsafe {
            let plan = pg_sys::SPI_prepare(sql.as_ptr(), 0, std::ptr::null_mut());
            if plan.is_null() {
                raise(Code::ERRCODE_INTERNAL_ERROR, format!("nudge: SPI_prepare failed ({})", std::ptr::addr_of!(pg_sys::SPI_result).read()));
            }
            let options = pg_sys::SPIExecuteOptions {
                dest: &mut dest as *mut RowDest as *mut pg_sys::DestReceiver,
                ..Default::default()
            };
            let rc = pg_sys::SPI_execute_plan_extended(plan, &options);
            if rc < 0 {
                raise(Code::ERRCODE_INTERNAL_ERROR, format!("nudge: reading rows failed (SPI code {rc})"));
            }
            pg_sys::SPI_freeplan(plan);
        }
        drop(cx);
    })
}

/// Expression reading the text form of a key column.
pub fn text_expr(col: &Column) -> String {
    format!("{}::pg_catalog.text", col.ident)
}

/// Queries table: `id` and `embedding`, ordered by id so that the seeded split is
/// reproducible. Returns ids (as text) and vectors; with `partition`, also each query's value of that column (as text, read in the same
/// statement; a NULL is an error).
pub fn read_queries_in(rel: &Relation, dim: &mut usize, partition: Option<&str>) -> Vectors {
    let rel_sql = rel.sql.as_str();
    let id = rel.column("id", "a column \"id\" in the queries table");
    let (emb, kind) = rel.vector_column("embedding", "a column \"embedding\" in the queries table");
    let part = partition.map(|p| rel.column(p, "the partition column in the queries table too"));
    let part_sql = part.as_ref().map(|c| format!(", {}", text_expr(c))).unwrap_or_default();
    let sql = format!("SELECT {}, {}{part_sql} FROM {} ORDER BY {}", text_expr(&id), emb.ident, rel_sql, id.ident);
    let mut out = Vectors::new(0);
    for_each_batch(&sql, &[], |table| {
        for row in 0..table.len() {
            let qid = table.text(row, 1).unwrap_or_else(|| raise(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("a query id in {rel_sql} is NULL")));
            push_embedding(table.datum(row, 2), kind, dim, &mut out.data, &|| format!("embedding of query {qid:?} in {rel_sql}"));
            if let Some(c) = &part {
                let v = table.text(row, 3).unwrap_or_else(|| {
                    raise_with(
                        Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                        format!("query {qid:?} in {rel_sql} has no partition: column \"{}\" is NULL", c.name),
                        None,
                        Some("Every query must belong to one partition; give it a value or leave it out through a view.".into()),
                    )
                });
                out.parts.push(v);
            }
            out.ids.push(qid);
        }
    });
    out.dim = *dim;
    out
}

/// One relevance label.
pub struct Label {
    pub query: String,
    pub doc: String,
    pub grade: f64,
}

/// Labels table: `query_id`, `doc_id` and an optional numeric `score` (grade; NULL or
/// missing means 1). Grades <= 0 are kept (they mark judged non-relevant records).
pub fn read_qrels(rel: &Relation) -> Vec<Label> {
    let rel_sql = rel.sql.as_str();
    let q = rel.column("query_id", "a column \"query_id\" in the qrels table");
    let d = rel.column("doc_id", "a column \"doc_id\" in the qrels table");
    let score = rel
        .find("score")
        .map(|s| format!("COALESCE(CAST({} AS pg_catalog.float8), 1)", s.ident))
        .unwrap_or_else(|| "1::pg_catalog.float8".into());
    let sql = format!("SELECT {}, {}, {} FROM {}", text_expr(&q), text_expr(&d), score, rel_sql);
    let mut out = Vec::new();
    for_each_batch(&sql, &[], |table| {
        for row in 0..table.len() {
            let (query, doc, grade) = (table.text(row, 1), table.text(row, 2), table.float8(row, 3));
            let (Some(query), Some(doc)) = (query, doc) else {
                raise(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("a query_id or doc_id in {rel_sql} is NULL"));
            };
            let grade = grade.unwrap_or(1.0);
            if !grade.is_finite() {
                raise(Code::ERRCODE_DATA_EXCEPTION, format!("score of ({query:?}, {doc:?}) in {rel_sql} is not finite"));
            }
            out.push(Label { query, doc, grade });
        }
    });
    out
}

/// Relevance labels of a set of queries, as core `Qrel`s over dense record keys.
/// `keys` maps doc ids to keys and grows as new docs appear. Labels of queries not in
/// `queries` are an error (they point to an unknown query).
pub fn qrels_for(
    labels: &[Label],
    query_index: &HashMap<&str, u32>,
    keys: &mut HashMap<String, u64>,
    rel_sql: &str,
    queries_sql: &str,
) -> Vec<nudge_core::gradient::Qrel> {
    let mut out = Vec::with_capacity(labels.len());
    for l in labels {
        let Some(&q) = query_index.get(l.query.as_str()) else {
            raise_with(
                Code::ERRCODE_FOREIGN_KEY_VIOLATION,
                format!("{rel_sql} has a label for query {:?}, which is not in {queries_sql}", l.query),
                None,
                None,
            );
        };
        let next = keys.len() as u64;
        let key = *keys.entry(l.doc.clone()).or_insert(next);
        out.push(nudge_core::gradient::Qrel { query: q, record: key, grade: l.grade });
    }
    out
}

/// The corpus scan: `SELECT t.id::text, t.embedding <extra> FROM corpus AS t`.
pub fn scan_sql(id: &Column, emb: &Column, rel_sql: &str, extra: &str) -> String {
    format!("SELECT t.{}::pg_catalog.text, t.{}{extra} FROM {rel_sql} AS t", id.ident, emb.ident)
}

/// Planner's row estimate, for progress only.
pub fn estimated_rows(rel: pg_sys::Oid) -> Option<u64> {
    Spi::get_one_with_args::<f32>("SELECT c.reltuples FROM pg_catalog.pg_class AS c WHERE c.oid OPERATOR(pg_catalog.=) $1", &[rel.into()])
        .ok()
        .flatten()
        .filter(|r| *r > 0.0)
        .map(|r| r as u64)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// A column read as a type it does not have is an error, not a misread datum (a `tid` read
    /// as text once crashed the backend).
    #[pg_test(error = "nudge: column 1 of an internal query (of 2) has type 27, read as 25")]
    fn a_tid_read_as_text_is_an_error() {
        Spi::run("CREATE TABLE t_tid AS SELECT 1 AS x").unwrap();
        super::for_each_row("SELECT t.ctid, t.x::pg_catalog.text FROM t_tid AS t", |row| {
            row.text(1);
        });
    }

    #[pg_test(error = "nudge: column 1 of an internal query (of 1) has type 23, read as 20")]
    fn an_int4_read_as_int8_is_an_error() {
        super::for_each_batch("SELECT 1::pg_catalog.int4", &[], |b| {
            b.int8(0, 1);
        });
    }

    #[pg_test(error = "nudge: column 3 of an internal query does not exist")]
    fn a_column_past_the_end_is_an_error() {
        super::for_each_row("SELECT 1, 2", |row| {
            row.datum(3);
        });
    }

    /// What nudge's queries cast to text reads as before.
    #[pg_test]
    fn text_reads_text() {
        let mut got = Vec::new();
        super::for_each_row("SELECT 'a'::pg_catalog.text, 'b'::pg_catalog.varchar, NULL::pg_catalog.text", |row| {
            got.push((row.text(1), row.text(2), row.text(3)));
        });
        assert_eq!(got, vec![(Some("a".to_string()), Some("b".to_string()), None)]);
    }
}
