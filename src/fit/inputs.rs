//! Phase 2 of a fit: the corpus table and its columns, resolved through the catalogs, and the
//! lock a writing fit holds until it commits (`lock =>`: rows or table).

use pgrx::prelude::*;

use super::config::{invalid, FitArgs};
use crate::citus::{self, Placement};
use crate::columns::{self, Column, VecKind};
use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};

/// The corpus side of a fit.
pub struct Corpus {
    pub oid: pg_sys::Oid,
    /// The table as Postgres prints it (quoted, schema-qualified when needed).
    pub sql: String,
    pub id: Column,
    pub emb: Column,
    pub kind: VecKind,
    /// The column to fill instead of overwriting `emb`.
    pub target: Option<Column>,
    /// Whether the fit writes (not a dry run).
    pub writing: bool,
    /// Whether the pass collects the addresses of the rows to write: when writing, and for a
    /// guard, which scores them (also in a dry run).
    pub addressing: bool,
    /// A plain table, or a Citus table (rows addressed by id and distribution column).
    pub placement: Placement,
}

/// How a writing fit (or a revert) locks the corpus until it commits (`lock =>`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    /// Online: SHARE UPDATE EXCLUSIVE. It conflicts with itself (another fit or revert of the
    /// table), with SHARE ROW EXCLUSIVE (a strict fit), DDL, VACUUM (plain, FULL; autovacuum
    /// gives way and retries later), ANALYZE and CREATE INDEX [CONCURRENTLY], but not with
    /// INSERT, UPDATE, DELETE or SELECT ... FOR UPDATE. Rows are then written compare-and-set:
    /// one the application changed or deleted after the fit read it keeps the application's
    /// change (write.rs).
    Rows,
    /// Strict: SHARE ROW EXCLUSIVE. Application writes wait for the whole fit.
    Table,
}

impl Lock {
    /// The `lock` argument: 'rows' or 'table' (22023 otherwise).
    pub fn parse(s: &str) -> Lock {
        match s.to_ascii_lowercase().as_str() {
            "rows" => Lock::Rows,
            "table" => Lock::Table,
            _ => invalid(
                format!("unknown lock \"{s}\""),
                "Use 'rows' (the default: the application's INSERT, UPDATE and DELETE go on meanwhile) or 'table' (they wait until it commits).",
            ),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Lock::Rows => "rows",
            Lock::Table => "table",
        }
    }

    pub fn mode_sql(self) -> &'static str {
        match self {
            Lock::Rows => "SHARE UPDATE EXCLUSIVE",
            Lock::Table => "SHARE ROW EXCLUSIVE",
        }
    }
}

/// Resolve the corpus, its id / embedding / target columns, and when writing check it is a
/// table and LOCK it in the mode of `a.lock` (see [`Lock`]); readers always go on.
pub fn resolve(a: &FitArgs) -> Corpus {
    let rel = columns::relation(a.corpus);
    if !crate::catalog::has_table_privilege(a.corpus, pg_sys::ACL_SELECT) {
        raise(Code::ERRCODE_INSUFFICIENT_PRIVILEGE, format!("permission denied for table {}", rel.sql));
    }
    let id = rel.column(a.id_column, "the id column that qrels.doc_id refers to");
    let (emb, kind) = rel.vector_column(a.embedding, "an embedding column");
    let target = a.target.map(|t| {
        let col = rel.column(t, "the target column");
        if col.name == emb.name {
            invalid(format!("target column \"{t}\" is the embedding column"), "Leave target NULL to write in place.");
        }
        if col.type_sql != emb.type_sql {
            raise(
                Code::ERRCODE_DATATYPE_MISMATCH,
                format!("target column \"{t}\" has type {}, but \"{}\" has type {}", col.type_sql, emb.name, emb.type_sql),
            );
        }
        col
    });
    let writing = !a.dry_run;
    let placement = citus::placement(a.corpus, &id);
    if writing {
        check_writable(a.corpus, &rel.sql, target.as_ref().unwrap_or(&emb));
        Spi::run(&format!("LOCK TABLE {} IN {} MODE", rel.sql, a.lock.mode_sql())).or_raise();
    }
    let addressing = writing || a.guard.is_some();
    Corpus { oid: a.corpus, sql: rel.sql, id, emb, kind, target, writing, addressing, placement }
}

/// A writing fit needs a table, or a view PostgreSQL can UPDATE the column through (an
/// auto-updatable view of one table, the column a plain column of it): 42809 otherwise.
pub fn check_writable(rel: pg_sys::Oid, rel_sql: &str, col: &Column) {
    // SAFETY: a syscache lookup of a relation that exists.
    let relkind = unsafe { pg_sys::get_rel_relkind(rel) } as u8;
    let writable = match relkind {
        b'r' | b'p' => true,
        b'v' => Spi::get_one_with_args::<bool>(
            "SELECT pg_catalog.pg_column_is_updatable($1::pg_catalog.regclass, a.attnum, false)
               FROM pg_catalog.pg_attribute AS a
              WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attname OPERATOR(pg_catalog.=) $2::pg_catalog.name",
            &[rel.into(), col.name.clone().into()],
        )
        .or_raise()
        .unwrap_or(false),
        _ => false,
    };
    if !writable {
        let what = if relkind == b'v' {
            format!("column \"{}\" cannot be updated through the view", col.name)
        } else {
            "it is not a table".to_string()
        };
        raise_with(
            Code::ERRCODE_WRONG_OBJECT_TYPE,
            format!("cannot write nudged vectors into {rel_sql}: {what}"),
            None,
            Some("Pass a table, or an auto-updatable view of one table (a plain column of it, no joins or aggregates); dry_run => true fits without writing.".into()),
        );
    }
}

/// A label points to `doc`, which no row's id column holds (23503). The hint names the
/// columns of the corpus that do hold every labelled id, if any (an application's table often
/// has its own integer id beside the document ids the labels use, e.g. LlamaIndex's `node_id`).
pub fn unknown_label(corpus: &Corpus, doc: &str, labelled: &std::collections::HashMap<String, u64>) -> ! {
    let ids: Vec<String> = labelled.keys().cloned().collect();
    let holders = columns_holding(corpus, &ids);
    let hint = match holders.as_slice() {
        [] => "Every qrels.doc_id must match one corpus row's id.".to_string(),
        [one] => format!("Column \"{one}\" holds every labelled doc_id: pass id_column => '{one}'."),
        many => format!(
            "Columns {} hold every labelled doc_id: pass one of them as id_column.",
            many.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(", ")
        ),
    };
    raise_with(
        Code::ERRCODE_FOREIGN_KEY_VIOLATION,
        format!("a label points to doc_id {doc:?}, which is not in column \"{}\" of {}", corpus.id.name, corpus.sql),
        None,
        Some(hint),
    )
}

/// The columns of the corpus (other than its id and embedding columns, of a type whose text
/// form an id can be: text, character types, integers, numeric, uuid) whose text values
/// include every one of `ids`. (Only on the error path: one scan per candidate column.)
fn columns_holding(corpus: &Corpus, ids: &[String]) -> Vec<String> {
    let candidates: Vec<String> = Spi::connect(|c| {
        let t = c.select(
            "SELECT a.attname::pg_catalog.text FROM pg_catalog.pg_attribute AS a
              WHERE a.attrelid OPERATOR(pg_catalog.=) $1 AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
                AND a.atttypid OPERATOR(pg_catalog.=) ANY ('{text,varchar,bpchar,name,int2,int4,int8,numeric,uuid}'::pg_catalog.regtype[]::pg_catalog.oid[])
                AND a.attname OPERATOR(pg_catalog.<>) ALL ($2::pg_catalog.name[])
              ORDER BY a.attnum",
            None,
            &[corpus.oid.into(), vec![corpus.id.name.clone(), corpus.emb.name.clone()].into()],
        )?;
        let mut out = Vec::new();
        for r in t {
            if let Some(n) = r.get::<String>(1)? {
                out.push(n);
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_default();
    let wanted = ids.len() as i64;
    candidates
        .into_iter()
        .filter(|name| {
            let sql = format!(
                "SELECT pg_catalog.count(DISTINCT t.{col}::pg_catalog.text) FROM {rel} AS t
                  WHERE t.{col}::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)",
                col = pgrx::spi::quote_identifier(name),
                rel = corpus.sql
            );
            Spi::get_one_with_args::<i64>(&sql, &[ids.to_vec().into()]).ok().flatten() == Some(wanted)
        })
        .collect()
}
