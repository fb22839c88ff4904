//! trec_eval's rule for exact score ties in nudge_evaluate: of two documents with the same
//! score, the one whose id is greater (byte-wise, as C's strcmp compares) ranks first.
//!
//! The core's top-k breaks ties by key, descending, so nudge_evaluate gives every corpus row a
//! key whose order is the order of the ids wherever a judged document takes part:
//!
//! * a judged document (one some qrels row names), rank `r` among the sorted judged ids:
//!   `(2r + 1) << 32`;
//! * any other row, with `b` judged ids below its id: `(2b) << 32 | (low 32 bits of its scan
//!   ordinal)`.
//!
//! A judged and an unjudged key then compare as their ids do, and two judged keys too. Two
//! unjudged rows may compare differently from their ids (or share a key); that never changes a
//! metric, which depends only on how many rows rank above each judged document. The same keys
//! are computed on Citus workers (src/shard.rs) from the judged ids of the request.

use std::collections::HashMap;

use crate::error::{raise, PgSqlErrorCode as Code};

/// The judged ids, sorted byte-wise.
pub struct TieKeys {
    sorted: Vec<String>,
}

impl TieKeys {
    pub fn new<'a>(ids: impl Iterator<Item = &'a String>) -> TieKeys {
        let mut sorted: Vec<String> = ids.cloned().collect();
        sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        sorted.dedup();
        if sorted.len() >= 1 << 31 {
            raise(Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED, format!("{} judged documents; nudge_evaluate takes fewer than 2^31", sorted.len()));
        }
        TieKeys { sorted }
    }

    /// Renumbers `keys` (judged id -> key, as [`crate::read::qrels_for`] assigned them) to tie
    /// keys; returns the new key of every old key (indexed by the old key).
    pub fn renumber(keys: &mut HashMap<String, u64>) -> (TieKeys, Vec<u64>) {
        let ties = TieKeys::new(keys.keys());
        let mut new_of = vec![0u64; keys.len()];
        for (id, key) in keys.iter_mut() {
            let k = ties.key(id, 0);
            new_of[*key as usize] = k;
            *key = k;
        }
        (ties, new_of)
    }

    /// The key of a row with id `id`, the `ordinal`-th of its scan.
    pub fn key(&self, id: &str, ordinal: u64) -> u64 {
        match self.sorted.binary_search_by(|s| s.as_bytes().cmp(id.as_bytes())) {
            Ok(r) => (2 * r as u64 + 1) << 32,
            Err(b) => ((2 * b as u64) << 32) | (ordinal & 0xffff_ffff),
        }
    }

    /// Whether `key` is a judged document's.
    pub fn is_judged(key: u64) -> bool {
        (key >> 32) & 1 == 1
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    #[pg_test]
    fn tie_keys_follow_the_ids() {
        let judged: Vec<String> = ["b", "d", "10", "9"].iter().map(|s| s.to_string()).collect();
        let t = TieKeys::new(judged.iter());
        // byte order: "10" < "9" < "b" < "d"
        let ids = ["0", "10", "11", "9", "a", "b", "c", "d", "e"];
        for (i, x) in ids.iter().enumerate() {
            for (j, y) in ids.iter().enumerate() {
                let (kx, ky) = (t.key(x, i as u64), t.key(y, j as u64));
                if judged.iter().any(|s| s == x) || judged.iter().any(|s| s == y) {
                    assert_eq!(kx.cmp(&ky), x.as_bytes().cmp(y.as_bytes()), "{x} vs {y}");
                }
            }
        }
        assert!(TieKeys::is_judged(t.key("9", 5)) && !TieKeys::is_judged(t.key("8", 5)));
    }
}
