//! The corpus pass of a fit pushed down to the workers of a Citus distributed table.
//!
//! The coordinator sends every worker the same [`Request`] (the core's `ShardSpec`: evaluated
//! validation queries, k, moving keys; plus the key of every labelled id and the originals of
//! rows earlier fits changed) with the list of that worker's shards, and runs
//! `nudge_shard_pass` there through Citus. The worker scans its shards with the checks of the
//! local pass and answers one [`Reply`]: the core's `Partial` (per validation query its static
//! top-k, and the moving records' vectors), the labelled keys it holds, and the addresses of
//! the rows the fit may write. No other corpus vector leaves its worker. Errors travel back as
//! SQLSTATE + message, so the coordinator raises them as if the pass had run locally.
//!
//! `nudge_evaluate` pushes its k-NN down the same way (`nudge_shard_topk`: per query the
//! worker's top-k, merged on the coordinator; with `partition =>`, each judged row's partition
//! value too, for the coordinator's label check).
//!
//! Unlabelled rows get keys unique across the table: `n_labelled + (shard id << 32) + ordinal`.

use std::collections::HashMap;

use nudge_core::knn::{Distance, TopK, NO_PARTITION};
use nudge_core::partial::ShardPass;
use nudge_core::wire::{self, WorkerError};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// The messages (codec and limits in nudge-core's `wire` module, fuzzed there).
pub use nudge_core::wire::{Reply, Request};

use crate::columns;
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};
use crate::read::{self, push_embedding};

/// Run the pass over `shards` (the shards of one table on this worker). `dist_column` names
/// the distribution column when the rows to write are addressed by it (NULL: by id alone).
/// Returns a [`Reply`] or an error, encoded.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn nudge_shard_pass(
    shards: Option<Array<'_, pg_sys::Oid>>,
    id_column: Option<&str>,
    embedding: Option<&str>,
    dist_column: Option<&str>,
    request: Option<&[u8]>,
) -> Vec<u8> {
    const F: &str = "nudge_shard_pass";
    let shards = shard_oids(shards, F);
    let (id_column, embedding, request) = (required(id_column, F, "id_column"), required(embedding, F, "embedding"), required(request, F, "request"));
    catching(|| pass(&shards, id_column, embedding, dist_column, request).to_bytes())
}

/// A NULL where the function needs a value: 22004, naming the argument.
fn required<T>(arg: Option<T>, function: &str, name: &str) -> T {
    arg.unwrap_or_else(|| raise(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{function}: argument \"{name}\" must not be NULL")))
}

fn shard_oids(shards: Option<Array<'_, pg_sys::Oid>>, function: &str) -> Vec<pg_sys::Oid> {
    let shards = required(shards, function, "shards");
    let oids = shards.iter().map(|s| s.unwrap_or_else(|| raise(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("{function}: argument \"shards\" contains a NULL"))));
    oids.collect()
}

/// A request decoded, or its error raised: 22P03 if malformed, 54000 if above a limit of
/// nudge's (see nudge-core's `wire`).
fn decoded<T>(function: &str, r: nudge_core::Result<T>) -> T {
    r.unwrap_or_else(|e| raise(crate::error::code_of(&e), format!("{function}: {e}")))
}

/// `f`'s reply, or the error it raised encoded as a reply (SQLSTATE and message). `f` runs in
/// a subtransaction that an error rolls back (as a PL/pgSQL EXCEPTION block does), so
/// whatever it held is released before the reply goes out.
fn catching(f: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    use pgrx::pg_sys::panic::CaughtError;
    // SAFETY: the subtransaction pattern of PL/pgSQL's exception blocks, on this thread.
    let (cx, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    let restore = move || unsafe {
        pg_sys::MemoryContextSwitchTo(cx);
        pg_sys::CurrentResourceOwner = owner;
    };
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(cx);
    }
    PgTryBuilder::new(std::panic::AssertUnwindSafe(|| {
        let reply = f();
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        restore();
        reply
    }))
    .catch_others(|e| {
        unsafe {
            pg_sys::MemoryContextSwitchTo(cx);
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        restore();
        match e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => err_bytes(r.sql_error_code(), r.message()),
            CaughtError::RustPanic { ereport, .. } => err_bytes(ereport.sql_error_code(), ereport.message()),
        }
    })
    .execute()
}

/// nudge_evaluate's k-NN over some shards of one worker: per query the top-k (key, score), best
/// first, every row keyed by its id as src/ties.rs says (judged ids from the request). A
/// partitioned request ranks each row only for the queries of its partition (its value of the
/// request's column, as text) and answers every judged row's value too.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn nudge_shard_topk(shards: Option<Array<'_, pg_sys::Oid>>, id_column: Option<&str>, embedding: Option<&str>, request: Option<&[u8]>) -> Vec<u8> {
    const F: &str = "nudge_shard_topk";
    let shards = shard_oids(shards, F);
    let (id_column, embedding, request) = (required(id_column, F, "id_column"), required(embedding, F, "embedding"), required(request, F, "request"));
    catching(|| wire::TopKRequest::reply_bytes(&shard_topk(&shards, id_column, embedding, request)))
}

fn shard_topk(shards: &[pg_sys::Oid], id_column: &str, embedding: &str, request: &[u8]) -> wire::TopKReply {
    const F: &str = "nudge_shard_topk";
    let request = decoded(F, wire::TopKRequest::from_bytes(request));
    let (mut topk, labelled, partitions) = decoded(F, request.into_top_k());
    let part_ids: Option<HashMap<String, u32>> = partitions.as_ref().map(|p| p.ids().into_iter().map(|(v, i)| (v.to_string(), i)).collect());
    let mut labelled_parts = partitions.as_ref().map(|_| Vec::new());
    let ties = crate::ties::TieKeys::new(labelled.keys());
    let dim = topk.dim();
    let mut batch = Batcher::new(dim);
    let mut push = |t: &mut TopK, keys: &[u64], v: ndarray::ArrayView2<f32>, parts: Option<&[u32]>, h: &mut nudge_core::Hooks| t.push_batch_in(keys, v, parts, h);
    for &shard in shards {
        let rel = columns::relation(shard);
        let id = rel.column(id_column, "the id column");
        let (emb, kind) = rel.vector_column(embedding, "an embedding column");
        let part = partitions.as_ref().map(|p| rel.column(&p.column, "the partition column"));
        let extra = part.as_ref().map(|c| format!(", t.{}::pg_catalog.text", c.ident)).unwrap_or_default();
        let mut ordinal = 0u64;
        read::for_each_row(&read::scan_sql(&id, &emb, &rel.sql, &extra), |row| {
            let rid = row.text(1).unwrap_or_default();
            if let (Some(ids), Some(found)) = (&part_ids, &mut labelled_parts) {
                let value = row.text(3);
                batch.parts.push(value.as_deref().and_then(|v| ids.get(v).copied()).unwrap_or(NO_PARTITION));
                if labelled.contains_key(rid.as_str()) {
                    found.push((rid.clone(), value));
                }
            }
            batch.keys.push(ties.key(&rid, ordinal));
            ordinal += 1;
            push_embedding(row.datum(2), kind, &mut dim.clone(), &mut batch.vectors, &|| format!("embedding of row {rid:?} in {}", rel.sql));
            batch.flush_if_full(&mut topk, &mut push);
        });
    }
    batch.flush(&mut topk, &mut push);
    wire::TopKReply { runs: topk.finish(), labelled_parts }
}

/// nudge_evaluate's request to every shard: the judged queries, k, the distance, the key of
/// every labelled id, and the partitions (the codec: nudge-core's `wire::TopKRequest`).
pub struct TopKRequest;

impl TopKRequest {
    pub fn to_bytes(queries: &ndarray::Array2<f32>, k: usize, distance: Distance, labelled: &HashMap<String, u64>, partitions: Option<&wire::TopKPartitions>) -> Vec<u8> {
        wire::TopKRequest::encode(queries.view(), k, distance, labelled, partitions)
    }

    /// A worker's top-k lists (and judged rows' partition values), or the error it raised;
    /// `Err` if the bytes are not a reply.
    pub fn parse_reply(b: &[u8]) -> Result<Result<wire::TopKReply, (PgSqlErrorCode, String)>, String> {
        wire::TopKRequest::parse_reply(b).map(|r| r.map_err(raised)).map_err(|e| e.to_string())
    }
}

fn pass(shards: &[pg_sys::Oid], id_column: &str, embedding: &str, dist_column: Option<&str>, request: &[u8]) -> Reply {
    let req = decoded("nudge_shard_pass", Request::from_bytes(request));
    let n_labelled = req.labelled.len() as u64;
    let moving: std::collections::HashSet<u64> = req.spec.moving_keys.iter().copied().collect();
    let dim = req.spec.dim;
    // a partitioned pass: each row's partition id (by its value, as text); labelled rows' values
    let part_ids: Option<HashMap<String, u32>> = req.partition_column.as_ref().map(|_| {
        req.spec.partition_ids().into_iter().map(|(v, i)| (v.to_string(), i)).collect()
    });
    let with_ids = req.spec.query_parts.is_some();
    let mut shard_pass = ShardPass::new(req.spec).or_raise();
    let mut batch = Batcher::new(dim);
    let (mut labelled_seen, mut rows, mut labelled_parts) = (Vec::new(), Vec::new(), Vec::new());
    let mut push = |p: &mut ShardPass, keys: &[u64], v: ndarray::ArrayView2<f32>, parts: Option<&[u32]>, h: &mut nudge_core::Hooks| {
        p.push_batch_in(keys, v, parts, h)
    };
    for &shard in shards {
        let rel = columns::relation(shard);
        let id = rel.column(id_column, "the id column");
        let (emb, kind) = rel.vector_column(embedding, "an embedding column");
        let dist = dist_column.map(|d| rel.column(d, "the distribution column"));
        let first_key = n_labelled + (shard_id(&rel.sql) << 32);
        let extra = dist.as_ref().filter(|_| req.writing).map(|d| format!(", t.{}::text", d.ident)).unwrap_or_default();
        let part_col = 3 + i32::from(!extra.is_empty());
        let part = req.partition_column.as_ref().map(|c| rel.column(c, "the partition column"));
        let extra = extra + &part.as_ref().map(|c| format!(", t.{}::pg_catalog.text", c.ident)).unwrap_or_default();
        let mut ordinal = 0u64;
        read::for_each_row(&read::scan_sql(&id, &emb, &rel.sql, &extra), |row| {
            let rid = row.text(1).unwrap_or_else(|| raise(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("column \"{}\" of {} is NULL in some row", id.name, rel.sql)));
            let value = part.as_ref().and_then(|_| row.text(part_col));
            let key = match req.labelled.get(rid.as_str()) {
                Some(&k) => {
                    labelled_seen.push(k);
                    if part.is_some() {
                        labelled_parts.push(value.clone());
                    }
                    k
                }
                None => first_key + ordinal,
            };
            if let (Some(ids), true) = (&part_ids, with_ids) {
                batch.parts.push(value.as_deref().and_then(|v| ids.get(v).copied()).unwrap_or(nudge_core::knn::NO_PARTITION));
            }
            ordinal += 1;
            let what = || format!("embedding of row {rid:?} in {}", rel.sql);
            let buf = &mut batch.vectors;
            push_embedding(row.datum(2), kind, &mut dim.clone(), buf, &what);
            let current = buf.len() - dim;
            let from_original = req
                .originals
                .get(rid.as_str())
                .filter(|(written, original)| original.len() == dim && *written == read::digest_of(row.datum(2), kind, &buf[current..]));
            match from_original {
                Some((_, original)) => {
                    buf.truncate(current);
                    buf.extend_from_slice(original);
                }
                None if buf[current..].iter().all(|v| *v == 0.0) => raise_with(
                    Code::ERRCODE_DATA_EXCEPTION,
                    format!("{} is a zero vector", what()),
                    None,
                    Some("NUDGE normalises every record; give the row a real embedding or leave it out through a view.".into()),
                ),
                None => {}
            }
            if req.writing && (moving.contains(&key) || from_original.is_some()) {
                rows.push((key, rid, if part_col == 3 { None } else { row.text(3) }, from_original.is_some()));
            }
            batch.keys.push(key);
            batch.flush_if_full(&mut shard_pass, &mut push);
        });
    }
    batch.flush(&mut shard_pass, &mut push);
    Reply { partial: shard_pass.finish(), labelled_seen, rows, labelled_parts }
}

/// Rows of a shard scan gathered into batches for the core.
struct Batcher {
    keys: Vec<u64>,
    vectors: Vec<f32>,
    /// Partition ids of a partitioned pass (else empty).
    parts: Vec<u32>,
    dim: usize,
    rows: usize,
}

impl Batcher {
    fn new(dim: usize) -> Self {
        Batcher { keys: Vec::new(), vectors: Vec::new(), parts: Vec::new(), dim, rows: crate::guc::BATCH_ROWS.get().max(1) as usize }
    }

    fn flush_if_full<T>(&mut self, state: &mut T, push: &mut PushFn<T>) {
        if self.keys.len() >= self.rows {
            self.flush(state, push);
        }
    }

    fn flush<T>(&mut self, state: &mut T, push: &mut PushFn<T>) {
        if self.keys.is_empty() {
            return;
        }
        let view = ndarray::ArrayView2::from_shape((self.keys.len(), self.dim), &self.vectors).expect("rows x dim");
        let parts = (!self.parts.is_empty()).then_some(&self.parts[..]);
        crate::exec::with_hooks(&mut crate::exec::Reporter::new("nudge shard pass"), None, |h| push(state, &self.keys, view, parts, h)).or_raise();
        self.keys.clear();
        self.vectors.clear();
        self.parts.clear();
    }
}

type PushFn<'a, T> = dyn FnMut(&mut T, &[u64], ndarray::ArrayView2<f32>, Option<&[u32]>, &mut nudge_core::Hooks) -> nudge_core::Result<()> + 'a;

/// The shard id Citus puts at the end of a shard's name (`docs_102008`).
fn shard_id(name: &str) -> u64 {
    let digits: String = name.trim_end_matches('"').chars().rev().take_while(|c| c.is_ascii_digit()).collect();
    digits.chars().rev().collect::<String>().parse::<u64>().ok().filter(|id| *id < 1 << 30).unwrap_or_else(|| {
        raise(Code::ERRCODE_WRONG_OBJECT_TYPE, format!("{name} is not a Citus shard (its name does not end in a shard id)"))
    })
}

// ---- replies (the codec: nudge-core's `wire`) ----

fn err_bytes(code: PgSqlErrorCode, message: &str) -> Vec<u8> {
    WorkerError { sqlstate: code as i32, message: message.to_string() }.to_bytes()
}

/// The SQLSTATE and message a worker raised.
fn raised(e: WorkerError) -> (PgSqlErrorCode, String) {
    (PgSqlErrorCode::from(e.sqlstate), e.message)
}

/// A worker's answer: its reply, or the error it raised (SQLSTATE, message); `Err` if the
/// bytes are not a reply.
pub fn parse_reply(b: &[u8]) -> Result<Result<Reply, (PgSqlErrorCode, String)>, String> {
    Reply::parse(b).map(|r| r.map_err(raised)).map_err(|e| e.to_string())
}
