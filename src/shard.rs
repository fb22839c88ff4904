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
//! worker's top-k, merged on the coordinator).
//!
//! Unlabelled rows get keys unique across the table: `n_labelled + (shard id << 32) + ordinal`.

use std::collections::HashMap;

use std::str::FromStr;

use nudge_core::knn::{Distance, TopK};
use nudge_core::partial::{Partial, ShardPass, ShardSpec};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use crate::columns;
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};
use crate::read::{self, push_embedding};

/// What every worker is asked.
pub struct Request {
    pub spec: ShardSpec,
    /// Key of every labelled doc id (keys `0..labelled.len()`).
    pub labelled: HashMap<String, u64>,
    /// Rows changed by earlier fits: id -> (digest of the value the last fit wrote, original).
    pub originals: HashMap<String, (i64, Vec<f32>)>,
    /// Whether to return the addresses (distribution column values) of rows to write.
    pub writing: bool,
}

/// What a worker answers.
pub struct Reply {
    pub partial: Partial,
    /// Labelled keys found in its shards.
    pub labelled_seen: Vec<u64>,
    /// Rows the fit may write: (key, id, distribution column value, started from an original).
    pub rows: Vec<(u64, String, Option<String>, bool)>,
}

/// Run the pass over `shards` (the shards of one table on this worker). `dist_column` names
/// the distribution column when the rows to write are addressed by it (NULL: by id alone).
/// Returns a [`Reply`] or an error, encoded.
#[pg_extern(volatile, parallel_unsafe)]
fn nudge_shard_pass(shards: Vec<pg_sys::Oid>, id_column: &str, embedding: &str, dist_column: Option<&str>, request: &[u8]) -> Vec<u8> {
    catching(|| ok_bytes(&pass(&shards, id_column, embedding, dist_column, request)))
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
/// first, every row keyed by its id as src/ties.rs says (judged ids from the request).
#[pg_extern(volatile, parallel_unsafe)]
fn nudge_shard_topk(shards: Vec<pg_sys::Oid>, id_column: &str, embedding: &str, request: &[u8]) -> Vec<u8> {
    catching(|| {
        let (mut topk, labelled) = TopKRequest::from_bytes(request)
            .unwrap_or_else(|m| raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("nudge_shard_topk: {m}")));
        let ties = crate::ties::TieKeys::new(labelled.keys());
        let dim = topk.dim();
        let mut batch = Batcher::new(dim);
        let mut push = |t: &mut TopK, keys: &[u64], v: ndarray::ArrayView2<f32>, h: &mut nudge_core::Hooks| t.push_batch(keys, v, h);
        for &shard in &shards {
            let rel = columns::relation(shard);
            let id = rel.column(id_column, "the id column");
            let (emb, kind) = rel.vector_column(embedding, "an embedding column");
            let mut ordinal = 0u64;
            read::for_each_row(&read::scan_sql(&id, &emb, &rel.sql, ""), |row| {
                let rid = row.text(1).unwrap_or_default();
                batch.keys.push(ties.key(&rid, ordinal));
                ordinal += 1;
                push_embedding(row.datum(2), kind, &mut dim.clone(), &mut batch.vectors, &|| format!("embedding of row {rid:?} in {}", rel.sql));
                batch.flush_if_full(&mut topk, &mut push);
            });
        }
        batch.flush(&mut topk, &mut push);
        let runs = topk.finish();
        let mut w = W(b"NDGR\x01O".to_vec());
        w.u64(runs.len() as u64);
        for run in runs {
            w.u64(run.len() as u64);
            for (key, score) in run {
                w.u64(key);
                w.0.extend_from_slice(&score.to_le_bytes());
            }
        }
        w.0
    })
}

/// nudge_evaluate's request to every shard: the judged queries, k, the distance, and the key
/// of every labelled id.
pub struct TopKRequest;

impl TopKRequest {
    pub fn to_bytes(queries: &ndarray::Array2<f32>, k: usize, distance: Distance, labelled: &HashMap<String, u64>) -> Vec<u8> {
        let mut w = W(b"NDGK\x01".to_vec());
        w.u64(k as u64);
        w.bytes(distance.to_string().as_bytes());
        w.u64(queries.ncols() as u64);
        w.f32s(&queries.iter().copied().collect::<Vec<_>>());
        w.u64(labelled.len() as u64);
        for (id, key) in labelled {
            w.bytes(id.as_bytes());
            w.u64(*key);
        }
        w.0
    }

    fn from_bytes(b: &[u8]) -> Result<(TopK, HashMap<String, u64>), String> {
        let mut r = R(b);
        if r.take(5)? != b"NDGK\x01" {
            return Err("not a request of this version of nudge".into());
        }
        let k = r.u64()? as usize;
        let distance = Distance::from_str(&r.text()?).map_err(|_| "unknown distance".to_string())?;
        let dim = r.u64()? as usize;
        let flat = r.f32s()?;
        if dim == 0 || flat.len() % dim != 0 {
            return Err("query matrix does not match its dimension".into());
        }
        let queries = ndarray::Array2::from_shape_vec((flat.len() / dim, dim), flat).map_err(|e| e.to_string())?;
        let topk = TopK::new(queries, k, distance).map_err(|e| e.to_string())?;
        let mut labelled = HashMap::new();
        for _ in 0..r.len(16)? {
            let id = r.text()?;
            labelled.insert(id, r.u64()?);
        }
        Ok((topk, labelled))
    }

    /// A worker's top-k lists, or the error it raised.
    pub fn parse_reply(b: &[u8]) -> Result<Result<Vec<Vec<(u64, f32)>>, (PgSqlErrorCode, String)>, String> {
        let mut r = match reply_body(b)? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let mut runs = Vec::new();
        for _ in 0..r.len(8)? {
            let mut run = Vec::new();
            for _ in 0..r.len(12)? {
                let key = r.u64()?;
                run.push((key, f32::from_le_bytes(r.take(4)?.try_into().unwrap())));
            }
            runs.push(run);
        }
        Ok(Ok(runs))
    }
}

fn pass(shards: &[pg_sys::Oid], id_column: &str, embedding: &str, dist_column: Option<&str>, request: &[u8]) -> Reply {
    let req = Request::from_bytes(request).unwrap_or_else(|m| raise(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("nudge_shard_pass: {m}")));
    let n_labelled = req.labelled.len() as u64;
    let moving: std::collections::HashSet<u64> = req.spec.moving_keys.iter().copied().collect();
    let dim = req.spec.dim;
    let mut shard_pass = ShardPass::new(req.spec).or_raise();
    let mut batch = Batcher::new(dim);
    let (mut labelled_seen, mut rows) = (Vec::new(), Vec::new());
    let mut push = |p: &mut ShardPass, keys: &[u64], v: ndarray::ArrayView2<f32>, h: &mut nudge_core::Hooks| p.push_batch(keys, v, h);
    for &shard in shards {
        let rel = columns::relation(shard);
        let id = rel.column(id_column, "the id column");
        let (emb, kind) = rel.vector_column(embedding, "an embedding column");
        let dist = dist_column.map(|d| rel.column(d, "the distribution column"));
        let first_key = n_labelled + (shard_id(&rel.sql) << 32);
        let extra = dist.as_ref().filter(|_| req.writing).map(|d| format!(", t.{}::text", d.ident)).unwrap_or_default();
        let mut ordinal = 0u64;
        read::for_each_row(&read::scan_sql(&id, &emb, &rel.sql, &extra), |row| {
            let rid = row.text(1).unwrap_or_else(|| raise(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("column \"{}\" of {} is NULL in some row", id.name, rel.sql)));
            let key = match req.labelled.get(rid.as_str()) {
                Some(&k) => {
                    labelled_seen.push(k);
                    k
                }
                None => first_key + ordinal,
            };
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
                rows.push((key, rid, if extra.is_empty() { None } else { row.text(3) }, from_original.is_some()));
            }
            batch.keys.push(key);
            batch.flush_if_full(&mut shard_pass, &mut push);
        });
    }
    batch.flush(&mut shard_pass, &mut push);
    Reply { partial: shard_pass.finish(), labelled_seen, rows }
}

/// Rows of a shard scan gathered into batches for the core.
struct Batcher {
    keys: Vec<u64>,
    vectors: Vec<f32>,
    dim: usize,
    rows: usize,
}

impl Batcher {
    fn new(dim: usize) -> Self {
        Batcher { keys: Vec::new(), vectors: Vec::new(), dim, rows: crate::guc::BATCH_ROWS.get().max(1) as usize }
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
        crate::exec::with_hooks(&mut crate::exec::Reporter::new("nudge shard pass"), None, |h| push(state, &self.keys, view, h)).or_raise();
        self.keys.clear();
        self.vectors.clear();
    }
}

type PushFn<'a, T> = dyn FnMut(&mut T, &[u64], ndarray::ArrayView2<f32>, &mut nudge_core::Hooks) -> nudge_core::Result<()> + 'a;

/// The shard id Citus puts at the end of a shard's name (`docs_102008`).
fn shard_id(name: &str) -> u64 {
    let digits: String = name.trim_end_matches('"').chars().rev().take_while(|c| c.is_ascii_digit()).collect();
    digits.chars().rev().collect::<String>().parse::<u64>().ok().filter(|id| *id < 1 << 30).unwrap_or_else(|| {
        raise(Code::ERRCODE_WRONG_OBJECT_TYPE, format!("{name} is not a Citus shard (its name does not end in a shard id)"))
    })
}

// ---- wire formats (little-endian; lengths u64) ----

struct W(Vec<u8>);
impl W {
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn f32s(&mut self, v: &[f32]) {
        self.u64(v.len() as u64);
        v.iter().for_each(|x| self.0.extend_from_slice(&x.to_le_bytes()));
    }
}

struct R<'a>(&'a [u8]);
impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.0.len() {
            return Err("truncated message".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len(&mut self, unit: usize) -> Result<usize, String> {
        let n = self.u64()? as usize;
        if n.saturating_mul(unit) > self.0.len() {
            return Err("truncated message".into());
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let n = self.len(1)?;
        self.take(n)
    }
    fn text(&mut self) -> Result<String, String> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "invalid UTF-8".to_string())
    }
    fn f32s(&mut self) -> Result<Vec<f32>, String> {
        let n = self.len(4)?;
        Ok(self.take(4 * n)?.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
    }
}

impl Request {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = W(b"NDGQ\x01".to_vec());
        w.bytes(&self.spec.to_bytes());
        w.u64(self.labelled.len() as u64);
        for (id, key) in &self.labelled {
            w.bytes(id.as_bytes());
            w.u64(*key);
        }
        w.u64(self.originals.len() as u64);
        for (id, (written, original)) in &self.originals {
            w.bytes(id.as_bytes());
            w.u64(*written as u64);
            w.f32s(original);
        }
        w.u64(self.writing as u64);
        w.0
    }

    fn from_bytes(b: &[u8]) -> Result<Request, String> {
        let mut r = R(b);
        if r.take(5)? != b"NDGQ\x01" {
            return Err("not a request of this version of nudge".into());
        }
        let spec = ShardSpec::from_bytes(r.bytes()?).map_err(|e| e.to_string())?;
        let mut labelled = HashMap::new();
        for _ in 0..r.len(16)? {
            let id = r.text()?;
            labelled.insert(id, r.u64()?);
        }
        let mut originals = HashMap::new();
        for _ in 0..r.len(24)? {
            let id = r.text()?;
            let written = r.u64()? as i64;
            originals.insert(id, (written, r.f32s()?));
        }
        let writing = r.u64()? != 0;
        Ok(Request { spec, labelled, originals, writing })
    }
}

fn ok_bytes(reply: &Reply) -> Vec<u8> {
    let mut w = W(b"NDGR\x01O".to_vec());
    w.bytes(&reply.partial.to_bytes());
    w.u64(reply.labelled_seen.len() as u64);
    reply.labelled_seen.iter().for_each(|k| w.u64(*k));
    w.u64(reply.rows.len() as u64);
    for (key, id, dist, from_original) in &reply.rows {
        w.u64(*key);
        w.bytes(id.as_bytes());
        w.u64(match dist {
            Some(_) => 1,
            None => 0,
        });
        if let Some(d) = dist {
            w.bytes(d.as_bytes());
        }
        w.u64(*from_original as u64);
    }
    w.0
}

fn err_bytes(code: PgSqlErrorCode, message: &str) -> Vec<u8> {
    let mut w = W(b"NDGR\x01E".to_vec());
    w.u64(code as i32 as u32 as u64);
    w.bytes(message.as_bytes());
    w.0
}

/// A worker's answer: its reply, or the error it raised (SQLSTATE, message).
pub fn parse_reply(b: &[u8]) -> Result<Result<Reply, (PgSqlErrorCode, String)>, String> {
    let mut r = match reply_body(b)? {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    let partial = Partial::from_bytes(r.bytes()?).map_err(|e| e.to_string())?;
    let labelled_seen = (0..r.len(8)?).map(|_| r.u64()).collect::<Result<_, _>>()?;
    let mut rows = Vec::new();
    for _ in 0..r.len(24)? {
        let key = r.u64()?;
        let id = r.text()?;
        let dist = if r.u64()? == 1 { Some(r.text()?) } else { None };
        rows.push((key, id, dist, r.u64()? != 0));
    }
    Ok(Ok(Reply { partial, labelled_seen, rows }))
}

/// The body of a worker's reply ("O"), or the error it carried instead ("E").
fn reply_body(b: &[u8]) -> Result<Result<R<'_>, (PgSqlErrorCode, String)>, String> {
    let mut r = R(b);
    if r.take(5)? != b"NDGR\x01" {
        return Err("not a reply of this version of nudge".into());
    }
    match r.take(1)? {
        b"E" => {
            let code = PgSqlErrorCode::from(r.u64()? as u32 as i32);
            Ok(Err((code, r.text()?)))
        }
        b"O" => Ok(Ok(r)),
        _ => Err("malformed reply".into()),
    }
}
