//! Citus: how a corpus table is placed across nodes, decided once at the start of a fit.
//!
//! On a Citus coordinator a table may be distributed (sharded by a distribution column), a
//! reference table (a copy on every node), a Citus-managed local table, or a plain table.
//! Rows of a Citus table cannot be addressed by `(tableoid, ctid)`: each shard has its own,
//! shard OIDs repeat across workers, and Citus refuses ctid-addressed distributed updates. So
//! nudge addresses the rows it writes by their id, plus the distribution column's value when
//! that is another column (which also lets Citus route each write to its shard). Without the
//! `citus` extension every table is plain.

use pgrx::prelude::*;

use crate::catalog::Ext;
use crate::columns::{self, Column};
use crate::error::{raise, raise_with, PgSqlErrorCode as Code};
use crate::read;

/// Where a corpus table's rows live. (One per fit: the size of its variants does not matter.)
#[allow(clippy::large_enum_variant)]
pub enum Placement {
    /// A plain PostgreSQL table (also on a Citus coordinator): rows addressed by ctid.
    Local,
    /// A Citus table: rows addressed by id, and by the distribution column when it is not the
    /// id. `pushdown`: the corpus pass runs on the workers (see [`placement`]). `shard_key`:
    /// the distribution column of a hash-distributed table (the id or `dist`): rows are
    /// written shard by shard, each statement restricted to its shard's values of it, so that
    /// Citus routes it to that one shard ([`by_shard`]).
    Citus { dist: Option<Column>, pushdown: bool, shard_key: Option<Column> },
    /// An auto-updatable view of one table (a collection or tenant of a shared table): rows
    /// addressed by id, and written through the view, so PostgreSQL applies its WHERE clause,
    /// `security_barrier`, `WITH CHECK OPTION` and its owner's rights on the table, and rows
    /// the view does not show are never touched. (A view has no ctid.)
    View,
}

/// The placement of table `rel` whose id column is `id`. The pass of a distributed table
/// (with shards on the workers: not a reference, local or single-shard table) runs on the
/// workers when `nudge.citus_pushdown` is on, unless this transaction has already fitted or
/// reverted the table: the workers read committed rows, so then the rows are read here, where
/// the transaction's own writes are visible.
pub fn placement(rel: pg_sys::Oid, id: &Column) -> Placement {
    // SAFETY: a syscache lookup of a relation that exists.
    if unsafe { pg_sys::get_rel_relkind(rel) } as u8 == b'v' {
        return Placement::View;
    }
    // SAFETY: a syscache lookup by name.
    if unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) } == pg_sys::InvalidOid {
        return Placement::Local; // (pg_dist_partition exists only with Citus)
    }
    let row = Spi::get_three_with_args::<String, String, bool>(
        "SELECT p.partmethod::pg_catalog.text, pg_catalog.column_to_column_name(p.logicalrelid, p.partkey),
                p.partmethod OPERATOR(pg_catalog.<>) 'n'
           FROM pg_catalog.pg_dist_partition AS p WHERE p.logicalrelid::pg_catalog.oid OPERATOR(pg_catalog.=) $1",
        &[rel.into()],
    );
    match row {
        Ok((Some(method), column, Some(sharded))) => Placement::Citus {
            shard_key: column
                .as_ref()
                .filter(|_| method == "h")
                .map(|c| columns::relation(rel).column(c, "the distribution column")),
            dist: column
                .filter(|c| *c != id.name)
                .map(|c| columns::relation(rel).column(&c, "the distribution column")),
            // (the workers run the pass as nudge's owner: only for a caller who may read every
            // row; row-level security is Citus's to apply, on the coordinator's reads)
            pushdown: sharded
                && crate::guc::CITUS_PUSHDOWN.get()
                && crate::catalog::may_read_vectors(rel)
                && !fitted_in_this_transaction(rel),
        },
        _ => Placement::Local,
    }
}

/// Whether this transaction has applied or reverted a fit of `rel`: its row in nudge.fits
/// carries this transaction's start time (`now()`). (A transaction id alone tells nothing
/// here: Citus assigns one to plain function calls on the coordinator.)
fn fitted_in_this_transaction(rel: pg_sys::Oid) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM nudge.fits AS f WHERE f.corpus::pg_catalog.oid OPERATOR(pg_catalog.=) $1
                          AND (f.created_at OPERATOR(pg_catalog.=) pg_catalog.now() AND f.status OPERATOR(pg_catalog.<>) ALL ('{dry_run,rejected}'::pg_catalog.text[])
                               OR f.reverted_at OPERATOR(pg_catalog.=) pg_catalog.now()))",
        &[rel.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(true)
}

/// The rows of hash-distributed table `rel` whose distribution column has the values `values`
/// (as text), grouped by shard: indexes into `values`, shard by shard in shard id order.
/// Citus's `get_shard_id_for_distribution_column` hashes each value as the table's
/// distribution does (it needs SELECT on the table, which every writer of nudge has).
pub fn by_shard(rel: pg_sys::Oid, values: &[&str]) -> Vec<Vec<usize>> {
    let mut shard_of: Vec<i64> = Vec::with_capacity(values.len());
    let values: Vec<&str> = values.to_vec();
    read::for_each_batch(
        "SELECT pg_catalog.get_shard_id_for_distribution_column($1::pg_catalog.regclass, u.v)
           FROM pg_catalog.unnest($2::pg_catalog.text[]) WITH ORDINALITY AS u(v, ord) ORDER BY u.ord",
        &[rel.into(), values.into()],
        |b| {
            for row in 0..b.len() {
                shard_of.push(b.datum(row, 1).and_then(|d| unsafe { i64::from_datum(d, false) }).unwrap_or_default());
            }
        },
    );
    let mut groups: std::collections::BTreeMap<i64, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, shard) in shard_of.into_iter().enumerate() {
        groups.entry(shard).or_default().push(i);
    }
    groups.into_values().collect()
}

/// Run `call` on every worker holding shards of distributed table `table`, once per worker with
/// the list of its shards, and hand each worker's answer to `each` (node, bytes). `call` is a
/// nudge function call returning bytea, with `{shards}` where the worker's shards go (an
/// `oid[]`) and `{request}` where the request bytes go.
///
/// Through Citus's `master_run_on_worker`: the workers run in parallel, each on a connection of
/// its own, outside the caller's transaction (they read committed rows). The request goes to
/// each worker once (not once per shard), and each answers one merged partial. Bytes travel as
/// base64 text both ways. (A request is megabytes, the validation queries: each command is
/// built in one buffer, as every copy of it on the way costs.)
///
/// The shard functions are internal (not executable by PUBLIC): the calls go to the workers as
/// the extension's owner, for a caller who may SELECT every row of the table (checked here).
pub fn on_shards(e: &Ext, table: pg_sys::Oid, table_sql: &str, call: &str, request: &[u8], mut each: impl FnMut(&str, Vec<u8>)) {
    crate::catalog::require_read_vectors(table, table_sql, "rows on the workers");
    check_workers();
    let (before, after) = call.split_once("{request}").unwrap_or((call, ""));
    let request = base64(request);
    let (mut names, mut ports, mut commands) = (Vec::<String>::new(), Vec::<i32>::new(), Vec::<String>::new());
    // one active placement per shard
    let shards = "SELECT n.nodename, n.nodeport,
                         pg_catalog.string_agg(pg_catalog.quote_literal(pg_catalog.concat(
                             -- (shard_name qualifies names outside public only; the workers
                             -- resolve them qualified, whatever their search_path)
                             CASE WHEN c.relnamespace OPERATOR(pg_catalog.=) 'public'::pg_catalog.regnamespace THEN 'public.' END,
                             pg_catalog.shard_name(s.logicalrelid, s.shardid))), ', ' ORDER BY s.shardid)
                    FROM pg_catalog.pg_dist_shard AS s
                    JOIN pg_catalog.pg_class AS c ON c.oid OPERATOR(pg_catalog.=) s.logicalrelid::pg_catalog.oid
                    JOIN LATERAL (SELECT p.groupid FROM pg_catalog.pg_dist_placement AS p
                                   WHERE p.shardid OPERATOR(pg_catalog.=) s.shardid AND p.shardstate OPERATOR(pg_catalog.=) 1
                                   ORDER BY p.groupid LIMIT 1) AS p ON true
                    JOIN pg_catalog.pg_dist_node AS n ON n.groupid OPERATOR(pg_catalog.=) p.groupid
                                                     AND n.noderole OPERATOR(pg_catalog.=) 'primary'
                   WHERE s.logicalrelid::pg_catalog.oid OPERATOR(pg_catalog.=) $1
                   GROUP BY n.nodename, n.nodeport";
    read::for_each_batch(shards, &[table.into()], |b| {
        for row in 0..b.len() {
            names.push(b.text(row, 1).unwrap_or_default());
            ports.push(b.datum(row, 2).and_then(|d| unsafe { i32::from_datum(d, false) }).unwrap_or_default());
            let list = format!("ARRAY[{}]::pg_catalog.regclass[]::pg_catalog.oid[]", b.text(row, 3).unwrap_or_default());
            let (before, after) = (before.replace("{shards}", &list), after.replace("{shards}", &list));
            let mut command = String::with_capacity(request.len() + before.len() + after.len() + 100);
            for part in ["SELECT pg_catalog.encode(", &before, "pg_catalog.decode('", &request, "', 'base64')", &after, ", 'base64')"] {
                command.push_str(part);
            }
            commands.push(command);
        }
    });
    let mut replies = Vec::new();
    // (the replies, megabytes of text, are collected in a tuplestore: in memory, not spilled
    // to a temporary file at the default work_mem of 4 MB)
    crate::guc::with_setting(c"work_mem", c"1GB", || crate::catalog::as_owner_on_workers(e, || read::for_each_batch(
        "SELECT pg_catalog.concat(node_name, ':', node_port), success, result FROM pg_catalog.master_run_on_worker($1, $2, $3, true)",
        &[names.into(), ports.into(), commands.into()],
        |b| {
            for row in 0..b.len() {
                let ok = b.datum(row, 2).and_then(|d| unsafe { bool::from_datum(d, false) }) == Some(true);
                replies.push((b.text(row, 1).unwrap_or_default(), ok, b.text(row, 3).unwrap_or_default()));
            }
        },
    )));
    for (node, ok, result) in replies {
        if !ok {
            raise_with(
                Code::ERRCODE_CONNECTION_FAILURE,
                format!("nudge could not run on the shards of {table_sql} on {node}: {result}"),
                None,
                Some("Check that every worker is up (or SET nudge.citus_pushdown = off).".into()),
            );
        }
        let bytes = unbase64(&result).unwrap_or_else(|m| malformed(&node, table_sql, &m));
        each(&node, bytes);
    }
}

/// Every worker must have this version of nudge: checked before a pass is pushed down, so a
/// worker without it (or with another) is named in a clear error instead of failing inside a
/// shard.
pub fn check_workers() {
    let mine = Spi::get_one::<String>("SELECT e.extversion FROM pg_catalog.pg_extension AS e WHERE e.extname OPERATOR(pg_catalog.=) 'nudge'::pg_catalog.name")
        .ok()
        .flatten()
        .unwrap_or_default();
    let sql = "SELECT pg_catalog.concat(nodename, ':', nodeport), success, result FROM pg_catalog.run_command_on_workers(
                 $$SELECT coalesce((SELECT e.extversion FROM pg_catalog.pg_extension AS e
                                     WHERE e.extname OPERATOR(pg_catalog.=) 'nudge'::pg_catalog.name), '')$$)";
    read::for_each_batch(sql, &[], |b| {
        for row in 0..b.len() {
            let (node, result) = (b.text(row, 1).unwrap_or_default(), b.text(row, 3).unwrap_or_default());
            if b.datum(row, 2).and_then(|d| unsafe { bool::from_datum(d, false) }) != Some(true) {
                raise(Code::ERRCODE_CONNECTION_FAILURE, format!("nudge could not reach Citus worker {node}: {result}"));
            }
            if result != mine {
                let has = if result.is_empty() { "does not have nudge".to_string() } else { format!("has nudge {result}") };
                raise_with(
                    Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("Citus worker {node} {has}; this coordinator has nudge {mine}"),
                    None,
                    Some("Install the same nudge on every node (its files on each server; CREATE EXTENSION nudge on the coordinator reaches the workers), or SET nudge.citus_pushdown = off.".into()),
                );
            }
        }
    });
}

/// A shard's answer that this version of nudge cannot read.
pub fn malformed(node: &str, table_sql: &str, why: &str) -> ! {
    raise_with(
        Code::ERRCODE_PROTOCOL_VIOLATION,
        format!("{node} answered a malformed reply for the shards of {table_sql} ({why})"),
        None,
        Some("Install the same version of nudge on every node (ALTER EXTENSION nudge UPDATE).".into()),
    )
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// `bytes` in base64 (RFC 4648, padded, one line): what `pg_catalog.decode(.., 'base64')` reads.
fn base64(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = u32::from(c[0]) << 16 | u32::from(*c.get(1).unwrap_or(&0)) << 8 | u32::from(*c.get(2).unwrap_or(&0));
        out.extend([18, 12, 6, 0].map(|shift| BASE64[(n >> shift & 63) as usize]));
        if c.len() < 3 {
            let len = out.len();
            out[len - (3 - c.len())..].fill(b'=');
        }
    }
    // SAFETY: every byte pushed is ASCII.
    unsafe { String::from_utf8_unchecked(out) }
}

/// The bytes of base64 text as `pg_catalog.encode(.., 'base64')` writes it (with a line break
/// every 76 characters); `Err` if it is not base64.
fn unbase64(s: &str) -> Result<Vec<u8>, String> {
    const NOT: u8 = 0xff;
    const VALUE: [u8; 256] = {
        let mut t = [NOT; 256];
        let mut i = 0;
        while i < 64 {
            t[BASE64[i] as usize] = i as u8;
            i += 1;
        }
        t
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits, mut pad) = (0u32, 0u32, 0usize);
    for &c in s.as_bytes() {
        match c {
            b'\n' | b'\r' => continue,
            b'=' => pad += 1,
            _ if pad > 0 => return Err("data after padding".into()),
            _ => {
                let v = VALUE[c as usize];
                if v == NOT {
                    return Err("not base64".into());
                }
                acc = acc << 6 | u32::from(v);
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    out.push((acc >> bits) as u8);
                }
            }
        }
    }
    if pad > 2 || (bits + 6 * pad as u32) % 8 != 0 {
        return Err("truncated base64".into());
    }
    Ok(out)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// Our base64 against PostgreSQL's encode/decode, every length mod 3, all byte values.
    #[pg_test]
    fn base64_matches_postgres() {
        for len in [0usize, 1, 2, 3, 4, 5, 57, 58, 59, 1000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + len) as u8).collect();
            let ours = super::base64(&bytes);
            let theirs = Spi::get_one_with_args::<String>("SELECT pg_catalog.encode($1, 'base64')", &[bytes.clone().into()]).unwrap().unwrap();
            assert_eq!(super::unbase64(&theirs).unwrap(), bytes, "decoding PostgreSQL's base64 of {len} bytes");
            let back = Spi::get_one_with_args::<Vec<u8>>("SELECT pg_catalog.decode($1, 'base64')", &[ours.clone().into()]).unwrap().unwrap();
            assert_eq!(back, bytes, "PostgreSQL decoding our base64 of {len} bytes");
        }
        assert!(super::unbase64("QUJD!").is_err());
        assert!(super::unbase64("QQ=A").is_err());
        assert!(super::unbase64("QUJ").is_err());
    }
}
