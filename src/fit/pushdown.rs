//! Phase 4, distributed form: the corpus pass run on the workers of a Citus distributed table
//! (`nudge_shard_pass` on every worker over its shards, see `citus::on_shards`), the partial
//! results merged into the coordinator's pass. Same checks and same result as the local pass;
//! what reaches the coordinator is per worker the static top-k of each validation query and
//! the worker's moving records (see src/shard.rs).
//!
//! Citus runs the worker commands on connections of their own, outside the fit's transaction:
//! they read committed rows. The fit holds its lock on the table from before the pass (Citus
//! takes it on every node): strict, no write through the coordinator can come in between;
//! online, one can, and the write compares each row's embedding with what the pass read.

use std::collections::HashMap;

use pgrx::prelude::*;
use pgrx::spi::quote_literal;

use super::inputs::Corpus;
use super::labels::Labels;
use super::originals::Originals;
use super::pass::{Addresses, CorpusPass};
use crate::citus::{self, Placement};
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};
use crate::exec::Reporter;
use crate::shard::{self, Request};
use crate::write::{At, RowAddr};

pub fn pass<P: CorpusPass>(e: &crate::catalog::Ext, corpus: &Corpus, labels: &Labels, mut pass: P, originals: &Originals, reporter: &mut Reporter) -> (P, Addresses) {
    let mut spec = pass.shard_spec();
    if let Some(p) = &labels.partitions {
        spec.partition_values = p.values.clone();
    }
    let request = Request {
        spec,
        labelled: labels.keys.clone(),
        originals: originals.iter().map(|(id, o)| (id.clone(), (o.written, o.original.clone()))).collect(),
        writing: corpus.addressing,
        partition_column: labels.partitions.as_ref().map(|p| p.column.name.clone()),
    };
    let dist = match &corpus.placement {
        Placement::Citus { dist: Some(d), .. } => quote_literal(&d.name),
        _ => "NULL".into(),
    };
    let call = format!(
        "{}({{shards}}, {}, {}, {}, {{request}})",
        crate::catalog::func(e, "nudge_shard_pass"),
        quote_literal(&corpus.id.name),
        quote_literal(&corpus.emb.name),
        dist
    );
    let id_of: HashMap<u64, &str> = labels.keys.iter().map(|(d, k)| (*k, d.as_str())).collect();
    let mut seen = vec![false; labels.keys.len()];
    // a partitioned pass: each labelled row's partition value, for the label check
    let mut doc_parts: Vec<Option<String>> = vec![None; if labels.partitions.is_some() { labels.keys.len() } else { 0 }];
    let mut addresses = Addresses { moving: HashMap::new(), previously_moved: Vec::new() };
    let (mut workers, mut reply_bytes) = (0u64, 0u64);
    reporter.report("scanning corpus on the workers", 0, None);
    citus::on_shards(e, corpus.oid, &corpus.sql, &call, &request.to_bytes(), |node, bytes| {
        reply_bytes += bytes.len() as u64;
        let reply = shard::parse_reply(&bytes).unwrap_or_else(|m| citus::malformed(node, &corpus.sql, &m));
        let reply = reply.unwrap_or_else(|(code, message)| raise(code, message));
        if !doc_parts.is_empty() && reply.labelled_parts.len() != reply.labelled_seen.len() {
            citus::malformed(node, &corpus.sql, "labelled rows without their partitions");
        }
        let mut values = reply.labelled_parts.into_iter();
        for k in reply.labelled_seen {
            let Some(s) = seen.get_mut(k as usize) else { citus::malformed(node, &corpus.sql, "unknown labelled key") };
            if std::mem::replace(s, true) {
                duplicate(corpus, id_of.get(&k).copied().unwrap_or_default());
            }
            if let Some(slot) = doc_parts.get_mut(k as usize) {
                *slot = values.next().flatten();
            }
        }
        for (key, id, dist, from_original) in reply.rows {
            let addr = RowAddr { id, at: At::Key { dist } };
            if from_original {
                addresses.previously_moved.push((addr.clone(), key));
            }
            if pass.moving_keys().binary_search(&key).is_ok() {
                addresses.moving.insert(key, addr);
            }
        }
        pass.push_partial(reply.partial).or_raise();
        workers += 1;
        reporter.report("scanning corpus on the workers", workers, None);
    });
    debug1!("nudge_fit: {workers} workers answered {reply_bytes} bytes for the shards of {}", corpus.sql);
    if let Some(k) = seen.iter().position(|s| !s) {
        super::inputs::unknown_label(corpus, id_of[&(k as u64)], &labels.keys);
    }
    if let Some(p) = &labels.partitions {
        super::partition::check_labels(p, labels, &doc_parts, &corpus.sql);
    }
    (pass, addresses)
}

fn duplicate(corpus: &Corpus, id: &str) -> ! {
    raise_with(
        Code::ERRCODE_UNIQUE_VIOLATION,
        format!("id {id:?} appears more than once in column \"{}\" of {}", corpus.id.name, corpus.sql),
        None,
        Some("The id column must identify one row; labels cannot tell duplicates apart.".into()),
    )
}
