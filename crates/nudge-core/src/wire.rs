//! The messages of a pass pushed down to the workers of a Citus distributed table, and the
//! limits every decoder enforces.
//!
//! The extension's `nudge_shard_pass` and `nudge_shard_topk` take a request as `bytea` and
//! answer a reply as `bytea`; the coordinator decodes the replies. The codec lives here, in
//! pure Rust, so it is tested and fuzzed without Postgres (the tests below, a mutational
//! harness in `examples/fuzz_wire.rs`, a libFuzzer target in `fuzz/`, all running
//! [`fuzzing::run_one`]); the extension only maps errors to SQLSTATEs
//! ([`NudgeError::Malformed`]: 22P03, [`NudgeError::TooLarge`]: 54000).
//!
//! Formats (little-endian; unmarked counts and lengths u64; text is a length and UTF-8 bytes;
//! `f32s` is a count and that many f32; every message starts with 4 magic bytes and version 2,
//! the top-k request version 3; a decoder refuses any other version, naming both):
//!
//! * [`Request`] (`nudge_shard_pass`): `"NDGQ" 2 len spec[len] nl {id:text key}*nl
//!   no {id:text written:i64 original:f32s}*no writing:0|1 partitioned:0|1 [column:text]`, the spec a
//!   [`ShardSpec`] (`"NDGS"`, see [`crate::partial`]).
//! * [`TopKRequest`] (`nudge_shard_topk`, version 3): `"NDGK" 3 k distance:text dim
//!   queries:f32s nl {id:text key}*nl partitioned:0|1 [column:text np {value:text}*np nq
//!   {part:u32}*nq]` (with `partition =>`: the column, the values, each query's value by id).
//! * Replies: `"NDGR" 2 'O' body` or `"NDGR" 2 'E' sqlstate message:text` (a worker's error:
//!   [`WorkerError`]). The body of a [`Reply`]: `len partial[len] ns key*ns nr {key id:text
//!   has_dist:0|1 [dist:text] from_original:0|1}*nr partitioned:0|1 [{has:0|1 [value:text]}*ns]`
//!   (the partition value of each labelled row), the partial a [`Partial`] (`"NDGP"`); of
//!   a top-k reply ([`TopKReply`]): `nq {len (key score:f32)*len}*nq partitioned:0|1 [nl
//!   {id:text has:0|1 [value:text]}*nl]` (the partition value of each judged row).
//!
//! Decoding never panics and allocates nothing before the size that drives the allocation was
//! checked against the bytes present and against a hard limit below; trailing bytes are an
//! error. Whatever a decoded message then makes nudge allocate ([`ShardPass::new`],
//! [`TopKRequest::into_top_k`], the heaps of the top-k) is bounded by those limits too.

use std::collections::HashMap;
use std::str::FromStr;

use ndarray::{Array2, ArrayView2};

use crate::error::{at_most, NudgeError, Result};
use crate::knn::{Distance, TopK, NO_PARTITION};
use crate::partial::{Partial, ShardSpec};

/// Largest vector dimension of a pass pushed down to the workers: pgvector's maximum for
/// `vector` and `halfvec`. (A local pass over a `real[]` column has no such limit.)
pub const MAX_DIM: usize = 16_000;
/// Largest `k` of a pushed-down top-k (the static top-k of a fit, `nudge_evaluate`'s k).
pub const MAX_K: usize = 1 << 20;
/// Most queries in one request (validation queries of a fit, judged queries of an evaluation).
pub const MAX_QUERIES: usize = 1 << 20;
/// Most top-k entries one request may ask for, queries x k: the heaps then hold at most 1 GiB
/// and the worst reply (12 bytes an entry) still fits in a `bytea` (1 GB).
pub const MAX_RESULT_ENTRIES: usize = 1 << 26;
/// Most records named in one message: labelled ids, moving keys, originals, reply rows.
pub const MAX_RECORDS: usize = 1 << 24;

const VERSION: u8 = 2;
/// The version of [`TopKRequest`]s (3 since they carry partitions): a worker of another nudge
/// refuses the request, naming both versions, in an error reply every version reads.
const TOPK_VERSION: u8 = 3;
const REQUEST_MAGIC: &[u8; 4] = b"NDGQ";
const TOPK_MAGIC: &[u8; 4] = b"NDGK";
const REPLY_MAGIC: &[u8; 4] = b"NDGR";

/// The bound on a top-k that a request may set up: `k`, the number of queries and their
/// product. Shared by every decoder of a spec or request and by [`crate::ShardPass::new`].
pub(crate) fn check_top_k(n_queries: usize, k: usize) -> Result<()> {
    at_most("k of a pushed-down top-k", k, MAX_K)?;
    at_most(
        "number of queries of a pushed-down pass",
        n_queries,
        MAX_QUERIES,
    )?;
    at_most(
        "top-k entries (queries x k) of a pushed-down pass",
        n_queries.saturating_mul(k),
        MAX_RESULT_ENTRIES,
    )
}

/// Vector dimension of a pushed-down pass.
pub(crate) fn check_dim(dim: usize) -> Result<()> {
    at_most("vector dimension of a pushed-down pass", dim, MAX_DIM)
}

// ---------------------------------------------------------------------------------------------
// Reader and writer.

pub(crate) struct Writer(pub Vec<u8>);

impl Writer {
    pub fn new(magic: &[u8; 4], cap: usize) -> Self {
        Self::with_version(magic, VERSION, cap)
    }
    pub fn with_version(magic: &[u8; 4], version: u8, cap: usize) -> Self {
        let mut v = Vec::with_capacity(5 + cap);
        v.extend_from_slice(magic);
        v.push(version);
        Writer(v)
    }
    pub fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    pub fn f32(&mut self, x: f32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    pub fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    pub fn f32s(&mut self, v: impl ExactSizeIterator<Item = f32>) {
        self.u64(v.len() as u64);
        v.for_each(|x| self.f32(x));
    }
}

/// Reads one message; every error is `Malformed { what, .. }` or `TooLarge`.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Checks the magic and the version.
    pub fn new(bytes: &'a [u8], magic: &[u8; 4], what: &'static str) -> Result<Self> {
        Self::with_version(bytes, magic, VERSION, what)
    }
    /// Checks the magic and that the version is `version`.
    pub fn with_version(
        bytes: &'a [u8],
        magic: &[u8; 4],
        version: u8,
        what: &'static str,
    ) -> Result<Self> {
        let mut r = Reader { rest: bytes, what };
        if r.take(4).ok() != Some(&magic[..]) {
            return Err(r.malformed(format!("not a {what} of nudge")));
        }
        match r.take(1)?[0] {
            v if v == version => Ok(r),
            v => Err(r.malformed(format!(
                "version {v} (this version of nudge reads version {version})"
            ))),
        }
    }
    pub fn malformed(&self, message: impl Into<String>) -> NudgeError {
        NudgeError::Malformed {
            what: self.what,
            message: message.into(),
        }
    }
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(self.malformed("truncated"));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }
    pub fn f32(&mut self) -> Result<f32> {
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A u64 that is a size (`usize::MAX` if it does not fit: any limit rejects it).
    pub fn size(&mut self) -> Result<usize> {
        Ok(usize::try_from(self.u64()?).unwrap_or(usize::MAX))
    }
    /// A u64 that must be 0 or 1.
    pub fn flag(&mut self) -> Result<bool> {
        match self.u64()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(self.malformed(format!("{v} where 0 or 1 belongs"))),
        }
    }
    /// Fails unless `n` items of at least `size` bytes each can still follow.
    pub fn need(&self, n: usize, size: usize) -> Result<()> {
        match n.checked_mul(size) {
            Some(b) if b <= self.rest.len() => Ok(()),
            _ => Err(self.malformed("truncated")),
        }
    }
    /// A count of items of at least `size` bytes each: at most `limit` (`TooLarge`, `what`),
    /// and that many items must still fit in what is left.
    pub fn count(&mut self, what: &str, limit: usize, size: usize) -> Result<usize> {
        let n = self.size()?;
        at_most(what, n, limit)?;
        self.need(n, size)?;
        Ok(n)
    }
    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.size()?;
        self.take(n)
    }
    pub fn text(&mut self) -> Result<String> {
        let b = self.bytes()?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(self.malformed("text is not valid UTF-8")),
        }
    }
    /// A vector of f32 of at most `limit` values.
    pub fn f32s(&mut self, what: &str, limit: usize) -> Result<Vec<f32>> {
        let n = self.count(what, limit, 4)?;
        Ok(self
            .take(4 * n)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    pub fn end(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.malformed("trailing bytes"))
        }
    }
}

/// `id -> key` pairs (labelled ids), unique ids.
fn read_ids(r: &mut Reader, what: &str) -> Result<HashMap<String, u64>> {
    let n = r.count(what, MAX_RECORDS, 16)?;
    let mut out = HashMap::with_capacity(n);
    for _ in 0..n {
        let id = r.text()?;
        let key = r.u64()?;
        if out.insert(id, key).is_some() {
            return Err(r.malformed("an id appears more than once"));
        }
    }
    Ok(out)
}

fn write_ids(w: &mut Writer, ids: &HashMap<String, u64>) {
    w.u64(ids.len() as u64);
    for (id, key) in ids {
        w.bytes(id.as_bytes());
        w.u64(*key);
    }
}

// ---------------------------------------------------------------------------------------------
// nudge_shard_pass.

/// What every worker is asked for its part of a fit's corpus pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub spec: ShardSpec,
    /// Key of every labelled doc id (keys `0..labelled.len()`, each once).
    pub labelled: HashMap<String, u64>,
    /// Rows changed by earlier fits: id -> (digest of the value the last fit wrote, original).
    pub originals: HashMap<String, (i64, Vec<f32>)>,
    /// Whether to return the addresses (distribution column values) of rows to write.
    pub writing: bool,
    /// A partitioned pass: the column whose values (as text) the spec's partition values
    /// name; the reply then carries every labelled row's value.
    pub partition_column: Option<String>,
}

impl Request {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(REQUEST_MAGIC, 0);
        w.bytes(&self.spec.to_bytes());
        write_ids(&mut w, &self.labelled);
        w.u64(self.originals.len() as u64);
        for (id, (written, original)) in &self.originals {
            w.bytes(id.as_bytes());
            w.u64(*written as u64);
            w.f32s(original.iter().copied());
        }
        w.u64(self.writing as u64);
        w.u64(self.partition_column.is_some() as u64);
        if let Some(c) = &self.partition_column {
            w.bytes(c.as_bytes());
        }
        w.0
    }

    /// Decodes and checks [`to_bytes`](Self::to_bytes) output; the spec as
    /// [`ShardSpec::from_bytes`] does.
    pub fn from_bytes(b: &[u8]) -> Result<Request> {
        let mut r = Reader::new(b, REQUEST_MAGIC, "shard pass request")?;
        let spec = ShardSpec::from_bytes(r.bytes()?)?;
        let labelled = read_ids(&mut r, "labelled ids of a shard pass request")?;
        let mut taken = vec![false; labelled.len()];
        for &key in labelled.values() {
            match taken.get_mut(key as usize) {
                Some(t) if !*t => *t = true,
                _ => {
                    return Err(r.malformed(format!(
                        "labelled key {key} is not one of 0..{} or appears twice",
                        labelled.len()
                    )))
                }
            }
        }
        let n = r.count("originals of a shard pass request", MAX_RECORDS, 24)?;
        let mut originals = HashMap::with_capacity(n);
        for _ in 0..n {
            let id = r.text()?;
            let written = r.u64()? as i64;
            let original = r.f32s("dimension of an original vector", MAX_DIM)?;
            if originals.insert(id, (written, original)).is_some() {
                return Err(r.malformed("an id appears more than once"));
            }
        }
        let writing = r.flag()?;
        let partition_column = if r.flag()? { Some(r.text()?) } else { None };
        if spec.query_parts.is_some() && partition_column.is_none() {
            return Err(r.malformed("query partitions without a partition column"));
        }
        r.end()?;
        Ok(Request {
            spec,
            labelled,
            originals,
            writing,
            partition_column,
        })
    }
}

/// A worker's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub partial: Partial,
    /// Labelled keys found in its shards.
    pub labelled_seen: Vec<u64>,
    /// Rows the fit may write: (key, id, distribution column value, started from an original).
    pub rows: Vec<(u64, String, Option<String>, bool)>,
    /// A partitioned pass: the partition value of each of `labelled_seen` (else empty).
    pub labelled_parts: Vec<Option<String>>,
}

impl Reply {
    /// The `'O'` reply.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = ok_writer();
        w.bytes(&self.partial.to_bytes());
        w.u64(self.labelled_seen.len() as u64);
        self.labelled_seen.iter().for_each(|k| w.u64(*k));
        w.u64(self.rows.len() as u64);
        for (key, id, dist, from_original) in &self.rows {
            w.u64(*key);
            w.bytes(id.as_bytes());
            w.u64(dist.is_some() as u64);
            if let Some(d) = dist {
                w.bytes(d.as_bytes());
            }
            w.u64(*from_original as u64);
        }
        w.u64(!self.labelled_parts.is_empty() as u64);
        for v in &self.labelled_parts {
            w.u64(v.is_some() as u64);
            if let Some(v) = v {
                w.bytes(v.as_bytes());
            }
        }
        w.0
    }

    /// A worker's reply: `Ok(Ok(reply))`, `Ok(Err(the error it raised))`, or `Err` if the bytes
    /// are not a reply.
    pub fn parse(b: &[u8]) -> Result<std::result::Result<Reply, WorkerError>> {
        let mut r = match reply_body(b)? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let partial = Partial::from_bytes(r.bytes()?)?;
        let n = r.count("labelled keys of a shard reply", MAX_RECORDS, 8)?;
        let labelled_seen: Vec<u64> = (0..n).map(|_| r.u64()).collect::<Result<_>>()?;
        let n = r.count("rows of a shard reply", MAX_RECORDS, 32)?;
        let mut rows = Vec::with_capacity(n);
        for _ in 0..n {
            let key = r.u64()?;
            let id = r.text()?;
            let dist = if r.flag()? { Some(r.text()?) } else { None };
            rows.push((key, id, dist, r.flag()?));
        }
        let labelled_parts = if r.flag()? {
            let n: usize = labelled_seen.len();
            if n == 0 {
                return Err(r.malformed("partition values without labelled keys"));
            }
            r.need(n, 8)?;
            (0..n)
                .map(|_| if r.flag()? { r.text().map(Some) } else { Ok(None) })
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        r.end()?;
        Ok(Ok(Reply {
            partial,
            labelled_seen,
            rows,
            labelled_parts,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// nudge_shard_topk.

/// Per query, the top-k `(key, score)` of a worker, best first.
pub type Runs = Vec<Vec<(u64, f32)>>;

/// nudge_evaluate's request to every worker: the judged queries, k, the distance, the
/// judged ids (with keys; the worker uses the ids), and with `partition =>` the partitions.
#[derive(Debug, Clone, PartialEq)]
pub struct TopKRequest {
    pub queries: Array2<f32>,
    pub k: usize,
    pub distance: Distance,
    pub labelled: HashMap<String, u64>,
    pub partitions: Option<TopKPartitions>,
}

/// A partitioned evaluation: each query ranks only the rows whose `column` value (as text) is
/// the query's own, `values[query_parts[q]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TopKPartitions {
    pub column: String,
    /// Partition values by id, unique.
    pub values: Vec<String>,
    /// Each query's partition id (an index into `values`).
    pub query_parts: Vec<u32>,
}

impl TopKPartitions {
    /// Partition value -> id, for a worker to map its rows' values (a value no query has:
    /// [`NO_PARTITION`]).
    pub fn ids(&self) -> HashMap<&str, u32> {
        self.values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_str(), i as u32))
            .collect()
    }

    /// Values unique, one partition per query, each naming a listed value.
    fn check(&self, n_queries: usize, r: &Reader) -> Result<()> {
        let mut v: Vec<&String> = self.values.iter().collect();
        v.sort_unstable();
        if v.windows(2).any(|w| w[0] == w[1]) {
            return Err(r.malformed("a partition value is listed twice"));
        }
        if self.query_parts.len() != n_queries {
            return Err(r.malformed("the query partitions do not match the queries"));
        }
        if self
            .query_parts
            .iter()
            .any(|&p| p as usize >= self.values.len())
        {
            return Err(r.malformed("a query partition is not a listed value"));
        }
        Ok(())
    }
}

/// A worker's answer to a [`TopKRequest`].
#[derive(Debug, Clone, PartialEq)]
pub struct TopKReply {
    /// Per query, the worker's top-k `(key, score)`, best first.
    pub runs: Runs,
    /// A partitioned request: every judged row the worker holds, its id and partition value
    /// (as text; `None` for NULL), for the coordinator to check that no label crosses
    /// partitions. `None` for an unpartitioned request.
    pub labelled_parts: Option<Vec<(String, Option<String>)>>,
}

impl TopKRequest {
    pub fn encode(
        queries: ArrayView2<f32>,
        k: usize,
        distance: Distance,
        labelled: &HashMap<String, u64>,
        partitions: Option<&TopKPartitions>,
    ) -> Vec<u8> {
        let mut w = Writer::with_version(TOPK_MAGIC, TOPK_VERSION, 32 + 4 * queries.len());
        w.u64(k as u64);
        w.bytes(distance.to_string().as_bytes());
        w.u64(queries.ncols() as u64);
        w.u64(queries.len() as u64);
        queries.iter().for_each(|&x| w.f32(x));
        write_ids(&mut w, labelled);
        w.u64(partitions.is_some() as u64);
        if let Some(p) = partitions {
            w.bytes(p.column.as_bytes());
            w.u64(p.values.len() as u64);
            p.values.iter().for_each(|v| w.bytes(v.as_bytes()));
            w.u64(p.query_parts.len() as u64);
            p.query_parts.iter().for_each(|&q| w.u32(q));
        }
        w.0
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        Self::encode(
            self.queries.view(),
            self.k,
            self.distance,
            &self.labelled,
            self.partitions.as_ref(),
        )
    }

    /// Decodes [`encode`](Self::encode) output: `k`, the dimension, the number of queries and
    /// of partitions within the limits, at least one query, partitions that name one listed
    /// value per query; the values are checked by [`into_top_k`](Self::into_top_k). A request
    /// of another version (another nudge) is `Malformed`, naming both versions.
    pub fn from_bytes(b: &[u8]) -> Result<TopKRequest> {
        let mut r = Reader::with_version(b, TOPK_MAGIC, TOPK_VERSION, "shard top-k request")?;
        let k = r.size()?;
        let distance =
            Distance::from_str(&r.text()?).map_err(|_| r.malformed("unknown distance"))?;
        let dim = r.size()?;
        check_dim(dim)?;
        if k == 0 || dim == 0 {
            return Err(r.malformed("k and the dimension must be at least 1"));
        }
        let nf = r.size()?;
        if nf == 0 || nf % dim != 0 {
            return Err(r.malformed("the queries do not match their dimension"));
        }
        let nq = nf / dim;
        check_top_k(nq, k)?;
        r.need(nf, 4)?;
        let flat: Vec<f32> = (0..nf).map(|_| r.f32()).collect::<Result<_>>()?;
        let queries =
            Array2::from_shape_vec((nq, dim), flat).map_err(|_| r.malformed("query shape"))?;
        let labelled = read_ids(&mut r, "judged ids of a shard top-k request")?;
        let partitions = if r.flag()? {
            Some(read_topk_partitions(&mut r, nq)?)
        } else {
            None
        };
        r.end()?;
        Ok(TopKRequest {
            queries,
            k,
            distance,
            labelled,
            partitions,
        })
    }

    /// The top-k to run (checks the queries: finite; `NonFinite` otherwise; partitioned when
    /// the request is), the judged ids, and the partitions.
    pub fn into_top_k(self) -> Result<(TopK, HashMap<String, u64>, Option<TopKPartitions>)> {
        check_dim(self.queries.ncols())?;
        check_top_k(self.queries.nrows(), self.k)?;
        let mut topk = TopK::new(self.queries, self.k, self.distance)?;
        if let Some(p) = &self.partitions {
            topk = topk.with_partitions(p.query_parts.clone())?;
        }
        Ok((topk, self.labelled, self.partitions))
    }

    /// The `'O'` reply: per query the worker's top-k `(key, score)`, best first; with a
    /// partitioned request, the partition value of every judged row the worker holds.
    pub fn reply_bytes(reply: &TopKReply) -> Vec<u8> {
        let mut w = ok_writer();
        w.u64(reply.runs.len() as u64);
        for run in &reply.runs {
            w.u64(run.len() as u64);
            for &(key, score) in run {
                w.u64(key);
                w.f32(score);
            }
        }
        w.u64(reply.labelled_parts.is_some() as u64);
        if let Some(parts) = &reply.labelled_parts {
            w.u64(parts.len() as u64);
            for (id, value) in parts {
                w.bytes(id.as_bytes());
                w.u64(value.is_some() as u64);
                if let Some(v) = value {
                    w.bytes(v.as_bytes());
                }
            }
        }
        w.0
    }

    /// A worker's reply, or the error it raised; `Err` if the bytes are not a reply.
    pub fn parse_reply(b: &[u8]) -> Result<std::result::Result<TopKReply, WorkerError>> {
        let mut r = match reply_body(b)? {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let nq = r.count("queries of a shard top-k reply", MAX_QUERIES, 8)?;
        let mut runs = Vec::with_capacity(nq);
        for _ in 0..nq {
            let len = r.count("k of a shard top-k reply", MAX_K, 12)?;
            let run = (0..len)
                .map(|_| Ok((r.u64()?, r.f32()?)))
                .collect::<Result<Vec<_>>>()?;
            runs.push(run);
        }
        let labelled_parts = if r.flag()? {
            let n = r.count("judged rows of a shard top-k reply", MAX_RECORDS, 16)?;
            let mut parts = Vec::with_capacity(n);
            for _ in 0..n {
                let id = r.text()?;
                let value = if r.flag()? { Some(r.text()?) } else { None };
                parts.push((id, value));
            }
            Some(parts)
        } else {
            None
        };
        r.end()?;
        Ok(Ok(TopKReply {
            runs,
            labelled_parts,
        }))
    }
}

/// The partitions of a top-k request of `nq` queries: `column:text np {value:text}*np nqp
/// {part:u32}*nqp`.
fn read_topk_partitions(r: &mut Reader, nq: usize) -> Result<TopKPartitions> {
    let column = r.text()?;
    let np = r.count(
        "number of partitions of a pushed-down top-k",
        MAX_QUERIES,
        8,
    )?;
    let values = (0..np).map(|_| r.text()).collect::<Result<Vec<_>>>()?;
    let nqp = r.count("query partitions of a pushed-down top-k", MAX_QUERIES, 4)?;
    let query_parts = (0..nqp).map(|_| r.u32()).collect::<Result<Vec<_>>>()?;
    let p = TopKPartitions {
        column,
        values,
        query_parts,
    };
    p.check(nq, r)?;
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// Replies and errors.

/// An error a worker raised: its SQLSTATE (packed as PostgreSQL's `MAKE_SQLSTATE` packs it,
/// the value of pgrx's `PgSqlErrorCode`) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerError {
    pub sqlstate: i32,
    pub message: String,
}

impl WorkerError {
    /// The `'E'` reply.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(REPLY_MAGIC, 14 + self.message.len());
        w.0.push(b'E');
        w.u64(self.sqlstate as u32 as u64);
        w.bytes(self.message.as_bytes());
        w.0
    }

    /// The five characters of the SQLSTATE (`None` if it is not one).
    pub fn sqlstate_text(&self) -> Option<String> {
        unpack_sqlstate(self.sqlstate)
    }
}

/// `MAKE_SQLSTATE` of five characters `0-9A-Z`.
pub fn pack_sqlstate(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 5
        || !b
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return None;
    }
    Some(
        b.iter()
            .enumerate()
            .map(|(i, &c)| (((c as i32) - ('0' as i32)) & 0x3f) << (6 * i))
            .sum(),
    )
}

/// The inverse of [`pack_sqlstate`].
pub fn unpack_sqlstate(code: i32) -> Option<String> {
    if !(0..1 << 30).contains(&code) {
        return None;
    }
    let s: String = (0..5)
        .map(|i| (((code >> (6 * i)) & 0x3f) as u8 + b'0') as char)
        .collect();
    (pack_sqlstate(&s) == Some(code)).then_some(s)
}

fn ok_writer() -> Writer {
    let mut w = Writer::new(REPLY_MAGIC, 64);
    w.0.push(b'O');
    w
}

/// The body of a worker's reply (`'O'`), or the error it carried instead (`'E'`).
fn reply_body(b: &[u8]) -> Result<std::result::Result<Reader<'_>, WorkerError>> {
    let mut r = Reader::new(b, REPLY_MAGIC, "shard reply")?;
    match r.u8()? {
        b'E' => {
            let code = r.u64()?;
            let sqlstate = i32::try_from(code)
                .ok()
                .filter(|&c| unpack_sqlstate(c).is_some())
                .ok_or_else(|| r.malformed(format!("{code} is not a SQLSTATE")))?;
            let message = r.text()?;
            r.end()?;
            Ok(Err(WorkerError { sqlstate, message }))
        }
        b'O' => Ok(Ok(r)),
        c => Err(r.malformed(format!("unknown reply kind {c}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Rng;
    use crate::{Hooks, ShardPass};

    fn spec(rng: &mut Rng, nq: usize, dim: usize, nm: usize) -> ShardSpec {
        ShardSpec {
            dim,
            k: (nq > 0).then_some(3),
            queries: rng.matrix(nq, dim),
            moving_keys: (0..nm as u64).map(|i| 2 * i + 1).collect(),
            query_parts: None,
            partition_values: Vec::new(),
        }
    }

    fn request(rng: &mut Rng) -> Request {
        Request {
            spec: spec(rng, 4, 5, 3),
            labelled: (0..6).map(|i| (format!("doc{i}"), i)).collect(),
            originals: [("doc9".to_string(), (-7i64, vec![0.5f32; 5]))].into(),
            writing: true,
            partition_column: None,
        }
    }

    fn malformed<T: std::fmt::Debug>(r: Result<T>) {
        assert!(matches!(r, Err(NudgeError::Malformed { .. })), "{r:?}");
    }

    fn too_large<T: std::fmt::Debug>(r: Result<T>) {
        assert!(matches!(r, Err(NudgeError::TooLarge { .. })), "{r:?}");
    }

    #[test]
    fn round_trips() {
        let mut rng = Rng::new(1);
        let req = request(&mut rng);
        assert_eq!(Request::from_bytes(&req.to_bytes()).unwrap(), req);
        let tk = TopKRequest {
            queries: rng.matrix(3, 4),
            k: 7,
            distance: Distance::L2,
            labelled: [("a".to_string(), 1u64 << 32)].into(),
            partitions: None,
        };
        assert_eq!(TopKRequest::from_bytes(&tk.to_bytes()).unwrap(), tk);
        let mut sp = ShardPass::new(req.spec.clone()).unwrap();
        sp.push_batch(&[1, 2, 9], rng.matrix(3, 5).view(), &mut Hooks::noop())
            .unwrap();
        let reply = Reply {
            partial: sp.finish(),
            labelled_seen: vec![0, 4],
            rows: vec![
                (1, "doc1".into(), Some("x".into()), false),
                (9, "doc9".into(), None, true),
            ],
            labelled_parts: Vec::new(),
        };
        assert_eq!(Reply::parse(&reply.to_bytes()).unwrap(), Ok(reply.clone()));
        // partitioned: the request names the column, the reply each labelled row's value
        let mut preq = req.clone();
        preq.spec.query_parts = Some(vec![0, 1, 0, 0]);
        preq.spec.partition_values = vec!["a".into(), "b".into()];
        preq.partition_column = Some("tenant id".into());
        assert_eq!(Request::from_bytes(&preq.to_bytes()).unwrap(), preq);
        let mut bad = preq.clone();
        bad.partition_column = None;
        malformed(Request::from_bytes(&bad.to_bytes()));
        let preply = Reply { labelled_parts: vec![Some("a".into()), None], ..reply.clone() };
        assert_eq!(Reply::parse(&preply.to_bytes()).unwrap(), Ok(preply));
        let bad = Reply { labelled_seen: vec![], labelled_parts: vec![None], ..reply };
        malformed(Reply::parse(&bad.to_bytes()));
        let runs = TopKReply {
            runs: vec![vec![(3u64, 0.5f32), (1, -0.25)], vec![]],
            labelled_parts: None,
        };
        assert_eq!(
            TopKRequest::parse_reply(&TopKRequest::reply_bytes(&runs)).unwrap(),
            Ok(runs)
        );
        let e = WorkerError {
            sqlstate: pack_sqlstate("54000").unwrap(),
            message: "too big".into(),
        };
        assert_eq!(Reply::parse(&e.to_bytes()).unwrap(), Err(e.clone()));
        assert_eq!(
            TopKRequest::parse_reply(&e.to_bytes()).unwrap(),
            Err(e.clone())
        );
        assert_eq!(e.sqlstate_text().as_deref(), Some("54000"));
    }

    #[test]
    fn sqlstates_pack_as_postgres_does() {
        // MAKE_SQLSTATE('2','2','P','0','3') and ('X','X','0','0','0') in PostgreSQL
        assert_eq!(
            pack_sqlstate("22P03"),
            Some(2 + (2 << 6) + (32 << 12) + (3 << 24))
        );
        assert_eq!(pack_sqlstate("XX000"), Some(40 + (40 << 6)));
        for s in ["00000", "54000", "22004", "57014", "ZZZZZ", "99999"] {
            assert_eq!(
                unpack_sqlstate(pack_sqlstate(s).unwrap()).as_deref(),
                Some(s)
            );
        }
        for s in ["2200", "22p03", "22 03", "220040"] {
            assert_eq!(pack_sqlstate(s), None);
        }
        for c in [-1, 1 << 30, 10, 63] {
            assert_eq!(unpack_sqlstate(c), None, "{c}");
        }
    }

    /// The request of issue 17: no queries and a huge dimension. Rejected before allocating,
    /// as TooLarge (54000), whether it comes as bytes or as a spec.
    #[test]
    fn huge_sizes_are_too_large_not_allocations() {
        let mut w = Writer::new(b"NDGS", 0);
        for v in [1u64 << 40, 0, 0, 0] {
            w.u64(v); // dim, k, nq, nm
        }
        let sb = w.0;
        too_large(ShardSpec::from_bytes(&sb));
        let mut w = Writer::new(REQUEST_MAGIC, 0);
        w.bytes(&sb);
        w.u64(0);
        w.u64(0);
        w.u64(0);
        too_large(Request::from_bytes(&w.0));
        let huge = ShardSpec {
            dim: 1 << 40,
            k: None,
            queries: Array2::zeros((0, 1 << 40)),
            moving_keys: vec![1, 2, 3],
            query_parts: None,
            partition_values: Vec::new(),
        };
        too_large(ShardPass::new(huge).map(|_| ()));
        let ok = ShardSpec {
            dim: MAX_DIM,
            k: None,
            queries: Array2::zeros((0, MAX_DIM)),
            moving_keys: vec![1, 2, 3],
            query_parts: None,
            partition_values: Vec::new(),
        };
        ShardPass::new(ok).unwrap();
        // k, queries x k
        let mut rng = Rng::new(2);
        let mut s = spec(&mut rng, 2, 3, 0);
        s.k = Some(MAX_K + 1);
        too_large(ShardSpec::from_bytes(&s.to_bytes()));
        s.k = Some(MAX_K);
        ShardSpec::from_bytes(&s.to_bytes()).unwrap();
        let s = spec(&mut rng, 65, 1, 0);
        let mut s = ShardSpec {
            k: Some(MAX_K),
            ..s
        };
        too_large(ShardPass::new(s.clone()).map(|_| ()));
        s.k = Some(MAX_RESULT_ENTRIES / 65);
        ShardPass::new(s).unwrap();
        // the same in a top-k request
        let q = rng.matrix(65, 1);
        let l = HashMap::new();
        too_large(TopKRequest::from_bytes(&TopKRequest::encode(
            q.view(),
            MAX_K,
            Distance::Cosine,
            &l,
            None,
        )));
        TopKRequest::from_bytes(&TopKRequest::encode(
            q.view(),
            MAX_RESULT_ENTRIES / 65,
            Distance::Cosine,
            &l,
            None,
        ))
        .unwrap()
        .into_top_k()
        .unwrap();
        let q = Array2::<f32>::zeros((1, MAX_DIM + 1));
        too_large(TopKRequest::from_bytes(&TopKRequest::encode(
            q.view(),
            1,
            Distance::Cosine,
            &l,
            None,
        )));
        // counts far beyond the bytes present
        for at in [5usize, 13, 21] {
            let mut b = TopKRequest::encode(rng.matrix(2, 2).view(), 3, Distance::L2, &l, None);
            b[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            assert!(TopKRequest::from_bytes(&b).is_err());
        }
    }

    #[test]
    fn malformed_requests() {
        let mut rng = Rng::new(3);
        let req = request(&mut rng);
        let b = req.to_bytes();
        for n in 0..b.len() {
            malformed(Request::from_bytes(&b[..n]));
        }
        let mut longer = b.clone();
        longer.push(0);
        malformed(Request::from_bytes(&longer));
        // writing flag not 0/1
        let mut bad = b.clone();
        *bad.last_mut().unwrap() = 2;
        malformed(Request::from_bytes(&bad));
        // labelled keys not 0..n
        for keys in [[0u64, 1, 7], [0, 1, 1]] {
            let mut r = req.clone();
            r.labelled = keys
                .iter()
                .enumerate()
                .map(|(i, &k)| (format!("d{i}"), k))
                .collect();
            malformed(Request::from_bytes(&r.to_bytes()));
        }
        // a version from elsewhere
        let mut v2 = b.clone();
        v2[4] = 3;
        malformed(Request::from_bytes(&v2));
        // a spec that does not validate
        let mut r = req.clone();
        r.spec.moving_keys = vec![3, 1];
        malformed(Request::from_bytes(&r.to_bytes()));
        // an error reply with a code that is not a SQLSTATE
        let mut e = WorkerError {
            sqlstate: 63,
            message: "x".into(),
        }
        .to_bytes();
        malformed(Reply::parse(&e));
        e[6..14].copy_from_slice(&(u32::MAX as u64).to_le_bytes());
        malformed(TopKRequest::parse_reply(&e));
    }

    fn partitioned_topk(rng: &mut Rng) -> TopKRequest {
        TopKRequest {
            queries: rng.matrix(3, 4),
            k: 2,
            distance: Distance::Cosine,
            labelled: [("d1".to_string(), 1u64 << 32), ("d2".to_string(), 3 << 32)].into(),
            partitions: Some(TopKPartitions {
                column: "tenant id".into(),
                values: vec!["a".into(), "".into(), "é".into()],
                query_parts: vec![2, 0, 2],
            }),
        }
    }

    /// A partitioned top-k request and its reply survive a round trip; the top-k a request sets
    /// up ranks a query only against rows of its own partition.
    #[test]
    fn partitioned_topk_round_trips() {
        let mut rng = Rng::new(11);
        let req = partitioned_topk(&mut rng);
        let b = req.to_bytes();
        assert_eq!(&b[..5], b"NDGK\x03");
        assert_eq!(TopKRequest::from_bytes(&b).unwrap(), req);
        let p = req.partitions.clone().unwrap();
        assert_eq!(p.ids(), [("a", 0u32), ("", 1), ("é", 2)].into());
        let (mut tk, labelled, parts) = req.clone().into_top_k().unwrap();
        assert_eq!((labelled, parts), (req.labelled.clone(), Some(p)));
        // every row in partition 0 (query 1's), one row in no partition
        let rows = rng.matrix(3, 4);
        tk.push_batch_in(
            &[7, 8, 9],
            rows.view(),
            Some(&[0, 0, NO_PARTITION]),
            &mut Hooks::noop(),
        )
        .unwrap();
        let runs = tk.finish();
        assert_eq!(runs.iter().map(|r| r.len()).collect::<Vec<_>>(), [0, 2, 0]);
        assert!(runs[1].iter().all(|(key, _)| *key == 7 || *key == 8));
        // an unpartitioned top-k refuses row partitions; a partitioned one needs them
        let (mut tk, ..) = req.into_top_k().unwrap();
        assert!(tk
            .push_batch(&[7, 8, 9], rows.view(), &mut Hooks::noop())
            .is_err());
        let reply = TopKReply {
            runs,
            labelled_parts: Some(vec![
                ("d1".into(), Some("a".into())),
                ("d2".into(), None),
                ("d1".into(), Some("".into())),
            ]),
        };
        assert_eq!(
            TopKRequest::parse_reply(&TopKRequest::reply_bytes(&reply)).unwrap(),
            Ok(reply.clone())
        );
        let empty = TopKReply {
            labelled_parts: Some(Vec::new()),
            ..reply
        };
        assert_eq!(
            TopKRequest::parse_reply(&TopKRequest::reply_bytes(&empty)).unwrap(),
            Ok(empty)
        );
    }

    /// Partitions that do not fit the queries, truncations anywhere, trailing bytes, a request
    /// of version 2 (a nudge without partitioned top-k), and counts beyond the bytes present or
    /// the limits: errors, before any allocation they size.
    #[test]
    fn malformed_partitioned_topk() {
        let mut rng = Rng::new(12);
        let req = partitioned_topk(&mut rng);
        let b = req.to_bytes();
        for n in 0..b.len() {
            malformed(TopKRequest::from_bytes(&b[..n]));
        }
        let mut longer = b.clone();
        longer.push(0);
        malformed(TopKRequest::from_bytes(&longer));
        let mut v2 = b.clone();
        v2[4] = 2;
        match TopKRequest::from_bytes(&v2) {
            Err(NudgeError::Malformed { message, .. }) => {
                assert!(
                    message.contains("version 2") && message.contains("reads version 3"),
                    "{message}"
                )
            }
            r => panic!("{r:?}"),
        }
        let edit = |f: &dyn Fn(&mut TopKPartitions)| {
            let mut r = req.clone();
            f(r.partitions.as_mut().unwrap());
            TopKRequest::from_bytes(&r.to_bytes())
        };
        malformed(edit(&|p| p.values[1] = "a".into()));
        malformed(edit(&|p| p.query_parts.pop().map(|_| ()).unwrap()));
        malformed(edit(&|p| p.query_parts.push(0)));
        malformed(edit(&|p| p.query_parts[0] = 3));
        malformed(edit(&|p| p.query_parts[0] = NO_PARTITION));
        malformed(edit(&|p| p.values.clear()));
        // the partitioned flag not 0/1
        let flag_at = TopKRequest {
            partitions: None,
            ..req.clone()
        }
        .to_bytes()
        .len()
            - 8;
        let mut bad = b.clone();
        bad[flag_at] = 2;
        malformed(TopKRequest::from_bytes(&bad));
        // counts of values and of query partitions: huge, or beyond the bytes present
        let col_end = flag_at + 8 + 8 + "tenant id".len();
        let parts_at = b.len() - 8 - 4 * 3;
        for (at, v) in [
            (col_end, u64::MAX),
            (col_end, 1 << 30),
            (parts_at, 1 << 40),
            (parts_at, 4),
        ] {
            let mut bad = b.clone();
            bad[at..at + 8].copy_from_slice(&v.to_le_bytes());
            assert!(TopKRequest::from_bytes(&bad).is_err(), "{at} {v}");
        }
        let mut bad = b.clone();
        bad[col_end..col_end + 8].copy_from_slice(&(MAX_QUERIES as u64 + 1).to_le_bytes());
        too_large(TopKRequest::from_bytes(&bad));
        // replies: truncated anywhere, a count of judged rows too large or beyond the bytes
        let reply = TopKReply {
            runs: vec![vec![(1, 0.5)], vec![], vec![]],
            labelled_parts: Some(vec![("d1".into(), Some("a".into()))]),
        };
        let rb = TopKRequest::reply_bytes(&reply);
        for n in 0..rb.len() {
            malformed(TopKRequest::parse_reply(&rb[..n]));
        }
        let n_at = TopKRequest::reply_bytes(&TopKReply {
            labelled_parts: None,
            ..reply.clone()
        })
        .len();
        for v in [u64::MAX, 2, MAX_RECORDS as u64 + 1] {
            let mut bad = rb.clone();
            bad[n_at..n_at + 8].copy_from_slice(&v.to_le_bytes());
            assert!(TopKRequest::parse_reply(&bad).is_err(), "{v}");
        }
        let mut bad = rb.clone();
        bad[n_at..n_at + 8].copy_from_slice(&(MAX_RECORDS as u64 + 1).to_le_bytes());
        too_large(TopKRequest::parse_reply(&bad));
        // a version-2 top-k reply body (no partitioned flag) is truncated
        let mut old = ok_writer();
        old.u64(0);
        malformed(TopKRequest::parse_reply(&old.0));
    }

    /// Random corruptions of valid messages: an error or a value, never a panic; a decoded
    /// value survives a round trip.
    #[test]
    fn corrupted_messages_never_panic() {
        let inputs = fuzzing::seeds();
        let mut rng = Rng::new(5);
        let mut n = 0;
        for _ in 0..20_000 {
            let b = fuzzing::mutate(&inputs, &mut || rng.next());
            fuzzing::run_one(&b);
            n += 1;
        }
        assert_eq!(n, 20_000);
    }
}

// ---------------------------------------------------------------------------------------------

/// Fuzzing support shared by the unit test, `examples/fuzz_wire.rs` and the cargo-fuzz target
/// in `fuzz/`: every decoder on one input, seed messages, and a mutator.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;
    use crate::{Hooks, ShardPass};

    /// Decodes `data` as every message of the shard path; runs what a decoded message sets up
    /// (the shard pass, the top-k) over a few rows, and checks round trips. Panics only on a bug.
    pub fn run_one(data: &[u8]) {
        if let Ok(spec) = ShardSpec::from_bytes(data) {
            assert_eq!(ShardSpec::from_bytes(&spec.to_bytes()).as_ref(), Ok(&spec));
            exercise_spec(spec);
        }
        if let Ok(p) = Partial::from_bytes(data) {
            assert_eq!(Partial::from_bytes(&p.to_bytes()).as_ref(), Ok(&p));
            let _ = p.clone().merge(p);
        }
        if let Ok(req) = Request::from_bytes(data) {
            let again = Request::from_bytes(&req.to_bytes()).expect("a request decodes again");
            assert!(same_request(&again, &req));
            exercise_spec(req.spec);
        }
        if let Ok(req) = TopKRequest::from_bytes(data) {
            let again = TopKRequest::from_bytes(&req.to_bytes()).expect("a request decodes again");
            let bits = |r: &TopKRequest| r.queries.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                (
                    again.queries.dim(),
                    bits(&again),
                    again.k,
                    again.distance,
                    &again.labelled,
                    &again.partitions
                ),
                (
                    req.queries.dim(),
                    bits(&req),
                    req.k,
                    req.distance,
                    &req.labelled,
                    &req.partitions
                )
            );
            if let Ok((mut tk, _, partitions)) = req.into_top_k() {
                let dim = tk.dim();
                let rows = small_rows(data, dim);
                let keys: Vec<u64> = (0..rows.nrows() as u64).collect();
                // rows of the first partition and of one no query has
                let parts: Option<Vec<u32>> = partitions
                    .as_ref()
                    .map(|_| (0..keys.len()).map(|i| [0, NO_PARTITION][i % 2]).collect());
                let _ = tk.push_batch_in(&keys, rows.view(), parts.as_deref(), &mut Hooks::noop());
                let reply = TopKReply {
                    runs: tk.finish(),
                    labelled_parts: partitions.map(|p| {
                        p.values
                            .into_iter()
                            .map(|v| ("doc".to_string(), Some(v)))
                            .collect()
                    }),
                };
                let bytes = TopKRequest::reply_bytes(&reply);
                assert!(matches!(TopKRequest::parse_reply(&bytes), Ok(Ok(_))));
            }
        }
        if let Ok(reply) = Reply::parse(data) {
            let again = match &reply {
                Ok(r) => r.to_bytes(),
                Err(e) => e.to_bytes(),
            };
            assert_eq!(Reply::parse(&again).as_ref(), Ok(&reply));
        }
        if let Ok(reply) = TopKRequest::parse_reply(data) {
            let again = match &reply {
                Ok(r) => TopKRequest::reply_bytes(r),
                Err(e) => e.to_bytes(),
            };
            // NaN scores compare unequal: compare the bytes
            assert_eq!(
                TopKRequest::parse_reply(&again).map(|r| r.map(|r| TopKRequest::reply_bytes(&r))),
                Ok(reply.map(|r| TopKRequest::reply_bytes(&r)))
            );
        }
    }

    /// Equal, NaN values of originals included (bit for bit).
    fn same_request(a: &Request, b: &Request) -> bool {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        a.spec == b.spec
            && a.labelled == b.labelled
            && a.writing == b.writing
            && a.partition_column == b.partition_column
            && a.originals.len() == b.originals.len()
            && a.originals.iter().all(|(id, (w, v))| {
                b.originals
                    .get(id)
                    .is_some_and(|(w2, v2)| w == w2 && bits(v) == bits(v2))
            })
    }

    /// A few rows of dimension `dim` made from the input's bytes (some zero, some not finite).
    fn small_rows(data: &[u8], dim: usize) -> Array2<f32> {
        let n = 1 + data.len() % 3;
        Array2::from_shape_fn((n, dim), |(i, j)| {
            let b = data
                .get((i * 31 + j) % data.len().max(1))
                .copied()
                .unwrap_or(1);
            match b {
                0 => 0.0,
                255 => f32::NAN,
                b => b as f32 - 100.0,
            }
        })
    }

    fn exercise_spec(spec: ShardSpec) {
        let Ok(mut sp) = ShardPass::new(spec.clone()) else {
            return;
        };
        // rows with a moving key, a static key, and a repeated batch
        let rows = small_rows(&spec.to_bytes(), spec.dim);
        let mut keys: Vec<u64> = spec
            .moving_keys
            .iter()
            .copied()
            .take(rows.nrows())
            .collect();
        while keys.len() < rows.nrows() {
            keys.push(u64::MAX - keys.len() as u64);
        }
        // rows of the first partition and of one no query has
        let parts: Option<Vec<u32>> = spec
            .query_parts
            .as_ref()
            .map(|_| (0..keys.len()).map(|i| [0, NO_PARTITION][i % 2]).collect());
        let parts = parts.as_deref();
        let _ = sp.push_batch_in(&keys, rows.view(), parts, &mut Hooks::noop());
        // again: the moving keys are now duplicates (an error), the static keys are new ones
        let n_moving = keys
            .iter()
            .filter(|k| spec.moving_keys.binary_search(k).is_ok())
            .count();
        keys.iter_mut().skip(n_moving).for_each(|k| *k -= 1 << 20);
        let _ = sp.push_batch_in(&keys, rows.view(), parts, &mut Hooks::noop());
        let p = sp.finish();
        let bytes = p.to_bytes();
        assert_eq!(Partial::from_bytes(&bytes).as_ref(), Ok(&p));
        let reply = Reply {
            partial: p,
            labelled_seen: vec![1],
            rows: vec![(1, "x".into(), None, false)],
            labelled_parts: if spec.query_parts.is_some() { vec![Some("tenant a".into())] } else { Vec::new() },
        };
        assert_eq!(Reply::parse(&reply.to_bytes()), Ok(Ok(reply)));
    }

    /// Valid messages of every kind, small, to start mutating from.
    pub fn seeds() -> Vec<Vec<u8>> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut unif = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut matrix = |r: usize, c: usize| Array2::from_shape_fn((r, c), |_| unif());
        let mut out = Vec::new();
        for (nq, dim, nm) in [(0, 1, 0), (1, 3, 2), (4, 5, 3), (2, 16, 0), (0, 7, 5)] {
            // (two partitions when there are several queries)
            let parted = nq >= 2;
            let spec = ShardSpec {
                dim,
                k: (nq > 0).then_some(1 + nq),
                queries: matrix(nq, dim),
                moving_keys: (0..nm as u64).map(|i| 3 * i).collect(),
                query_parts: parted.then(|| (0..nq as u32).map(|i| i % 2).collect()),
                partition_values: if parted {
                    vec!["tenant a".into(), "b".into()]
                } else {
                    Vec::new()
                },
            };
            out.push(spec.to_bytes());
            let req = Request {
                spec: spec.clone(),
                labelled: (0..(nm as u64 + 2)).map(|i| (format!("d{i}"), i)).collect(),
                originals: (0..nm.min(2))
                    .map(|i| {
                        (
                            format!("o{i}"),
                            (i as i64 - 1, matrix(1, dim).into_raw_vec_and_offset().0),
                        )
                    })
                    .collect(),
                writing: nm % 2 == 0,
                partition_column: parted.then(|| "tenant".into()),
            };
            out.push(req.to_bytes());
            let mut sp = ShardPass::new(spec.clone()).unwrap();
            let rows = matrix(4, dim);
            let keys: Vec<u64> = vec![0, 100, 101, 3];
            let parts = parted.then_some([0u32, 1, NO_PARTITION, 1]);
            let _ = sp.push_batch_in(&keys, rows.view(), parts.as_ref().map(|p| &p[..]), &mut Hooks::noop());
            let partial = sp.finish();
            out.push(partial.to_bytes());
            let reply = Reply {
                partial,
                labelled_seen: (0..nm as u64).collect(),
                rows: (0..nm as u64)
                    .map(|k| {
                        (
                            3 * k,
                            format!("d{k}"),
                            (k % 2 == 0).then(|| format!("{k}")),
                            k == 1,
                        )
                    })
                    .collect(),
                labelled_parts: if parted && nm > 0 {
                    (0..nm).map(|k| (k % 2 == 0).then(|| format!("t{k}"))).collect()
                } else {
                    Vec::new()
                },
            };
            out.push(reply.to_bytes());
            if nq > 0 {
                let d = [Distance::Cosine, Distance::L2, Distance::InnerProduct][dim % 3];
                let labelled = (0..nm as u64)
                    .map(|i| (format!("j{i}"), (2 * i + 1) << 32))
                    .collect();
                let partitions = parted.then(|| TopKPartitions {
                    column: "tenant".into(),
                    values: spec.partition_values.clone(),
                    query_parts: spec.query_parts.clone().unwrap_or_default(),
                });
                out.push(TopKRequest::encode(
                    spec.queries.view(),
                    2 + nm,
                    d,
                    &labelled,
                    partitions.as_ref(),
                ));
                let runs: Vec<Vec<(u64, f32)>> = (0..nq)
                    .map(|q| (0..q as u64).map(|i| (i, 1.0 - i as f32)).collect())
                    .collect();
                let labelled_parts = parted.then(|| {
                    (0..nm)
                        .map(|i| (format!("j{i}"), (i % 2 == 0).then(|| "b".to_string())))
                        .collect()
                });
                out.push(TopKRequest::reply_bytes(&TopKReply {
                    runs,
                    labelled_parts,
                }));
            }
        }
        out.push(
            WorkerError {
                sqlstate: pack_sqlstate("22P03").unwrap(),
                message: "bad".into(),
            }
            .to_bytes(),
        );
        out
    }

    /// Values a mutation writes over a u64 field.
    const INTERESTING: [u64; 16] = [
        0,
        1,
        2,
        3,
        7,
        8,
        255,
        MAX_DIM as u64,
        MAX_DIM as u64 + 1,
        MAX_K as u64 + 1,
        MAX_RECORDS as u64 + 1,
        1 << 31,
        1 << 32,
        1 << 40,
        1 << 63,
        u64::MAX,
    ];

    /// One mutation of a seed (or of two spliced): bit flips, byte writes, a u64 overwritten
    /// with a small/huge/boundary value at any offset, truncation, insertion, deletion,
    /// duplication of a range, splicing; or a nested message (a spec in a request, a partial in
    /// a reply) mutated and then wrapped correctly so the outer decoder accepts it.
    pub fn mutate(seeds: &[Vec<u8>], next: &mut dyn FnMut() -> u64) -> Vec<u8> {
        let mut below = |n: usize| (next() % n.max(1) as u64) as usize;
        let mut b = seeds[below(seeds.len())].clone();
        let rounds = 1 + below(4);
        for _ in 0..rounds {
            let len = b.len().max(1);
            match below(10) {
                0 => {
                    let i = below(len);
                    if let Some(x) = b.get_mut(i) {
                        *x ^= 1 << below(8);
                    }
                }
                1 => {
                    let i = below(len);
                    let v = below(256) as u8;
                    if let Some(x) = b.get_mut(i) {
                        *x = v;
                    }
                }
                2 | 3 => {
                    // size fields sit at 5 + 8j in most messages; also anywhere
                    let i = if below(2) == 0 {
                        5 + 8 * below(len / 8 + 1)
                    } else {
                        below(len)
                    };
                    let v = match below(3) {
                        0 => INTERESTING[below(INTERESTING.len())],
                        1 => below(64) as u64,
                        _ => (b.len() as u64)
                            .wrapping_add(below(9) as u64)
                            .wrapping_sub(4),
                    };
                    if i + 8 <= b.len() {
                        b[i..i + 8].copy_from_slice(&v.to_le_bytes());
                    }
                }
                4 => {
                    let n = below(len + 1);
                    b.truncate(n);
                }
                5 => {
                    let i = below(b.len() + 1);
                    let extra: Vec<u8> = (0..1 + below(16)).map(|_| below(256) as u8).collect();
                    b.splice(i..i, extra);
                }
                6 => {
                    if !b.is_empty() {
                        let i = below(b.len());
                        let j = (i + 1 + below(16)).min(b.len());
                        b.drain(i..j);
                    }
                }
                7 => {
                    if !b.is_empty() {
                        let i = below(b.len());
                        let j = (i + 1 + below(32)).min(b.len());
                        let part = b[i..j].to_vec();
                        let at = below(b.len() + 1);
                        b.splice(at..at, part);
                    }
                }
                8 => {
                    let other = &seeds[below(seeds.len())];
                    let i = below(b.len() + 1);
                    let j = below(other.len() + 1);
                    b.truncate(i);
                    b.extend_from_slice(&other[j..]);
                }
                _ => {
                    // wrap: the mutated bytes as the spec of a request or the partial of a reply
                    let mut w = if below(2) == 0 {
                        Writer::new(REQUEST_MAGIC, b.len() + 24)
                    } else {
                        ok_writer()
                    };
                    w.bytes(&b);
                    for _ in 0..below(4) {
                        w.u64(INTERESTING[below(4)]);
                    }
                    b = w.0;
                }
            }
        }
        b
    }
}
