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

use crate::columns::{self, Column};

/// Where a corpus table's rows live.
pub enum Placement {
    /// A plain PostgreSQL table (also on a Citus coordinator): rows addressed by ctid.
    Local,
    /// A Citus table: rows addressed by id, and by the distribution column when it is not the
    /// id. `sharded`: a distributed table with shards on the workers (not a reference, local
    /// or single-shard table), whose corpus pass can run on the shards.
    Citus { dist: Option<Column>, sharded: bool },
}

/// The placement of table `rel` whose id column is `id`.
pub fn placement(rel: pg_sys::Oid, id: &Column) -> Placement {
    // SAFETY: a syscache lookup by name.
    if unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) } == pg_sys::InvalidOid {
        return Placement::Local; // (pg_dist_partition exists only with Citus)
    }
    let row = Spi::get_two_with_args::<bool, String>(
        "SELECT p.partmethod <> 'n', pg_catalog.column_to_column_name(p.logicalrelid, p.partkey)
           FROM pg_catalog.pg_dist_partition AS p WHERE p.logicalrelid = $1::oid::regclass",
        &[rel.into()],
    );
    match row {
        Ok((Some(sharded), column)) => Placement::Citus {
            dist: column
                .filter(|c| *c != id.name)
                .map(|c| columns::relation(rel).column(&c, "the distribution column")),
            sharded,
        },
        _ => Placement::Local,
    }
}
