//! nudge: fine-tune the embeddings stored in PostgreSQL for a known query workload.
//!
//! This crate is the Postgres glue only: SQL-facing functions, reading and writing tables,
//! errors, settings and progress. The maths (NUDGE-M/N, gamma selection, exact k-NN,
//! metrics) lives in `crates/nudge-core`, which never sees a Postgres type.
//!
//! Threading rule: only the backend's main thread calls Postgres. The core runs its
//! parallel sections on a private rayon pool whose threads block all signals and do pure
//! maths; interrupts and progress are callbacks the core invokes on the calling thread.

use pgrx::prelude::*;

mod catalog;
mod citus;
mod columns;
mod compat;
mod error;
mod evaluate;
mod exec;
mod fit;
mod guc;
mod read;
mod shard;
mod ties;
mod write;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../sql/apply.sql", name = "apply", requires = ["catalog", fit::stage::nudge_apply_step]);
extension_sql_file!("../sql/grants.sql", name = "grants", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
