//! Phase 4 of a fit: one streaming pass over the corpus. The core keeps the static top-k of
//! every validation query and the vectors of the moving records; rows are checked here (ids
//! unique, labels pointing at real rows, no zero vectors) so errors name the row; rows that
//! earlier fits changed enter the pass with their original vectors.

use std::collections::{HashMap, HashSet};

use nudge_core::gamma::FitPass;
use nudge_core::kfold::KFoldPass;
use nudge_core::partial::{Partial, ShardSpec};
use pgrx::prelude::*;

use super::inputs::Corpus;
use super::labels::Labels;
use super::originals::{Original, Originals};
use crate::error::{raise, raise_with, PgSqlErrorCode as Code};
use crate::exec::{self, Reporter};
use crate::citus::Placement;
use crate::read::{self, push_embedding, Row};
use crate::write::{At, RowAddr};

/// A corpus pass the scan feeds: one validation split (`FitPass`) or k folds (`KFoldPass`).
pub trait CorpusPass: Send + 'static {
    fn push(&mut self, keys: &[u64], vectors: ndarray::ArrayView2<f32>, parts: Option<&[u32]>) -> nudge_core::Result<()>;
    /// The records the fit may write, sorted.
    fn moving_keys(&self) -> &[u64];
    fn shard_spec(&self) -> ShardSpec;
    fn push_partial(&mut self, p: Partial) -> nudge_core::Result<()>;
}

impl CorpusPass for FitPass {
    fn push(&mut self, keys: &[u64], vectors: ndarray::ArrayView2<f32>, parts: Option<&[u32]>) -> nudge_core::Result<()> {
        self.push_batch_in(keys, vectors, parts, &mut nudge_core::Hooks::noop())
    }
    fn moving_keys(&self) -> &[u64] {
        FitPass::moving_keys(self)
    }
    fn shard_spec(&self) -> ShardSpec {
        FitPass::shard_spec(self)
    }
    fn push_partial(&mut self, p: Partial) -> nudge_core::Result<()> {
        FitPass::push_partial(self, p)
    }
}

impl CorpusPass for KFoldPass {
    fn push(&mut self, keys: &[u64], vectors: ndarray::ArrayView2<f32>, parts: Option<&[u32]>) -> nudge_core::Result<()> {
        self.push_batch_in(keys, vectors, parts, &mut nudge_core::Hooks::noop())
    }
    fn moving_keys(&self) -> &[u64] {
        self.labelled_keys()
    }
    fn shard_spec(&self) -> ShardSpec {
        KFoldPass::shard_spec(self)
    }
    fn push_partial(&mut self, p: Partial) -> nudge_core::Result<()> {
        KFoldPass::push_partial(self, p)
    }
}

/// Rows the fit may write, found by the pass (empty unless writing or guarded).
pub struct Addresses {
    /// Moving records' rows, by key.
    pub moving: HashMap<u64, RowAddr>,
    /// Rows that earlier fits changed, with their keys: written back to
    /// their originals unless this fit moves them.
    pub previously_moved: Vec<(RowAddr, u64)>,
}

/// The local pass: the backend's thread reads and decodes rows (only it may call Postgres)
/// while a pool worker pushes the previous batch through the maths (exec::Pusher).
pub fn local<P: CorpusPass>(corpus: &Corpus, labels: &Labels, pass: P, originals: &Originals, reporter: &mut Reporter) -> (P, Addresses) {
    let moving_keys: HashSet<u64> = pass.moving_keys().iter().copied().collect();
    let total = read::estimated_rows(corpus.oid);
    let mut rows = RowKeys::new(labels, corpus);
    let (mut moving, mut previously_moved) = (HashMap::new(), Vec::new());
    let mut dim = labels.dim;
    let partitions = labels.partitions.as_ref();
    let part_col = 3 + address_width(corpus) as i32;
    let extra = address_columns(corpus) + &partitions.map(|p| p.scan_column()).unwrap_or_default();
    let scan = read::scan_sql(&corpus.id, &corpus.emb, &corpus.sql, &extra);
    let pusher = exec::Pusher::start(pass, dim, |p: &mut P, keys, vectors, parts| p.push(keys, vectors, parts));
    let mut batch = pusher.empty_buffers();
    read::for_each_row(&scan, |row| {
        let (rid, key) = rows.key(row);
        if let Some(p) = partitions {
            let value = row.text(part_col);
            batch.2.push(p.id_of(value.as_deref()));
            rows.note_partition(key, value);
        }
        let buf = &mut batch.1;
        let what = || format!("embedding of row {rid:?} in {}", corpus.sql);
        push_embedding(row.datum(2), corpus.kind, &mut dim, buf, &what);
        let current = buf.len() - dim;
        // A row still holding what the last fit wrote starts from its original; a row
        // the application changed since starts from its new value.
        let holds_written = |o: &&Original| {
            o.original.len() == dim && o.written == read::digest_of(row.datum(2), corpus.kind, &buf[current..])
        };
        let from_original = originals.get(rid.as_str()).filter(holds_written);
        match from_original {
            Some(o) => {
                buf.truncate(current);
                buf.extend_from_slice(&o.original);
                if corpus.addressing {
                    previously_moved.push((address(corpus, row, rid.clone()), key));
                }
            }
            None if buf[current..].iter().all(|v| *v == 0.0) => raise_with(
                Code::ERRCODE_DATA_EXCEPTION,
                format!("{} is a zero vector", what()),
                None,
                Some("NUDGE normalises every record; give the row a real embedding or leave it out through a view.".into()),
            ),
            None => {}
        }
        if corpus.addressing && moving_keys.contains(&key) {
            moving.insert(key, address(corpus, row, rid));
        }
        batch.0.push(key);
        if pusher.push_if_full(&mut batch) {
            reporter.report("scanning corpus", rows.ordinal, total);
        }
    });
    pusher.push(batch);
    reporter.report("scanning corpus", rows.ordinal, total);
    let pass = pusher.finish();
    rows.check_all_labelled_seen();
    if let Some(p) = partitions {
        super::partition::check_labels(p, labels, &rows.doc_parts, &corpus.sql);
    }
    (pass, Addresses { moving, previously_moved })
}

/// What the scan reads beside id and embedding to address the rows a writing fit writes:
/// `tableoid, ctid` on a plain table, the distribution column's value on a Citus table
/// distributed by another column than the id.
fn address_columns(corpus: &Corpus) -> String {
    match (&corpus.placement, corpus.addressing) {
        (_, false) | (Placement::Citus { dist: None, .. } | Placement::View, _) => String::new(),
        (Placement::Local, true) => ", t.tableoid, t.ctid".into(),
        (Placement::Citus { dist: Some(d), .. }, true) => format!(", t.{}::pg_catalog.text", d.ident),
    }
}

/// How many columns [`address_columns`] selects.
fn address_width(corpus: &Corpus) -> usize {
    match (&corpus.placement, corpus.addressing) {
        (_, false) | (Placement::Citus { dist: None, .. } | Placement::View, _) => 0,
        (Placement::Local, true) => 2,
        (Placement::Citus { dist: Some(_), .. }, true) => 1,
    }
}

/// The address of a row scanned with [`address_columns`] (from column 3 on).
fn address(corpus: &Corpus, row: &Row, id: String) -> RowAddr {
    let at = match &corpus.placement {
        Placement::Local => At::Tid {
            tableoid: row.datum(3).and_then(|d| unsafe { pg_sys::Oid::from_datum(d, false) }).expect("tableoid is never NULL"),
            tid: row.tid(4).expect("ctid is never NULL"),
        },
        Placement::Citus { dist, .. } => At::Key { dist: dist.as_ref().and_then(|_| row.text(3)) },
        Placement::View => At::Key { dist: None },
    };
    RowAddr { id, at }
}

/// Record keys of scanned rows: labelled ids have theirs (each must appear once), other rows
/// get the next free key.
struct RowKeys<'a> {
    labels: &'a Labels,
    corpus: &'a Corpus,
    seen: Vec<bool>,
    ordinal: u64,
    /// With `partition =>`: each labelled row's partition value.
    doc_parts: Vec<Option<String>>,
}

impl<'a> RowKeys<'a> {
    fn new(labels: &'a Labels, corpus: &'a Corpus) -> Self {
        let doc_parts = if labels.partitions.is_some() { vec![None; labels.keys.len()] } else { Vec::new() };
        RowKeys { labels, corpus, seen: vec![false; labels.keys.len()], ordinal: 0, doc_parts }
    }

    /// Keeps a labelled row's partition value (for the label check).
    fn note_partition(&mut self, key: u64, value: Option<String>) {
        if let Some(slot) = self.doc_parts.get_mut(key as usize) {
            *slot = value;
        }
    }

    /// The row's id (text, column 1) and key.
    fn key(&mut self, row: &Row) -> (String, u64) {
        let rid = row.text(1).unwrap_or_else(|| {
            raise(
                Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                format!("column \"{}\" of {} is NULL in some row", self.corpus.id.name, self.corpus.sql),
            )
        });
        let key = match self.labels.keys.get(rid.as_str()) {
            Some(&k) => {
                if std::mem::replace(&mut self.seen[k as usize], true) {
                    raise_with(
                        Code::ERRCODE_UNIQUE_VIOLATION,
                        format!("id {rid:?} appears more than once in column \"{}\" of {}", self.corpus.id.name, self.corpus.sql),
                        None,
                        Some("The id column must identify one row; labels cannot tell duplicates apart.".into()),
                    );
                }
                k
            }
            None => self.labels.n_labelled() + self.ordinal,
        };
        self.ordinal += 1;
        (rid, key)
    }

    /// Every labelled doc id must have been a row of the corpus.
    fn check_all_labelled_seen(&self) {
        if let Some(k) = self.seen.iter().position(|s| !s) {
            let doc = self.labels.keys.iter().find(|(_, v)| **v == k as u64).map(|(d, _)| d.clone()).unwrap_or_default();
            super::inputs::unknown_label(self.corpus, &doc, &self.labels.keys);
        }
    }
}
