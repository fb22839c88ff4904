//! Resolving user-named tables and columns through the catalogs.
//!
//! Tables arrive as `regclass` (resolved by Postgres); column names are looked up in
//! `pg_attribute` with bound parameters and quoted with `quote_identifier` before they
//! appear in any generated statement. User text is never spliced into SQL.

use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};

/// Storage type of an embedding column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VecKind {
    /// pgvector `vector`: float4 elements.
    Vector,
    /// pgvector `halfvec`: IEEE binary16 elements.
    Halfvec,
    /// `real[]`
    Real,
    /// `double precision[]`
    Double,
}

/// A column of a relation, resolved and quoted.
#[derive(Debug, Clone)]
pub struct Column {
    /// The relation as Postgres prints a regclass: quoted, schema-qualified when needed.
    pub rel_sql: String,
    /// The column name as the user gave it.
    pub name: String,
    /// The column name quoted for SQL.
    pub ident: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `vector(384)`.
    pub type_sql: String,
    /// Set when the column holds embeddings in a supported type.
    pub kind: Option<VecKind>,
}

pub fn relation_sql(rel: pg_sys::Oid) -> String {
    // (a regclass of a dropped table prints as its OID: look it up, so that a fit recorded
    // before its table was dropped fails here with undefined_table)
    Spi::get_one_with_args::<String>(
        "SELECT (SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class AS c WHERE c.oid = $1)",
        &[rel.into()],
    )
        .or_raise()
        .unwrap_or_else(|| raise(Code::ERRCODE_UNDEFINED_TABLE, format!("relation with OID {} does not exist", rel.to_u32())))
}

const COLUMN_SQL: &str = "
SELECT format_type(a.atttypid, a.atttypmod),
       CASE
         WHEN a.atttypid = 'real[]'::regtype THEN 'real[]'
         WHEN a.atttypid = 'double precision[]'::regtype THEN 'double precision[]'
         WHEN t.typname IN ('vector', 'halfvec') AND EXISTS (
              SELECT 1 FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
               WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid
                 AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
                 AND e.extname = 'vector')
           THEN t.typname::text
       END
  FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
 WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped";

/// Look up a column; `None` if the relation has no such column.
pub fn find_column(rel: pg_sys::Oid, rel_sql: &str, name: &str) -> Option<Column> {
    let (type_sql, kind) = match Spi::get_two_with_args::<String, String>(COLUMN_SQL, &[rel.into(), name.into()]) {
        Ok(v) => v,
        Err(pgrx::spi::Error::InvalidPosition) => return None,
        Err(e) => raise(Code::ERRCODE_INTERNAL_ERROR, format!("nudge: looking up column \"{name}\" failed: {e}")),
    };
    let type_sql = type_sql?;
    let kind = match kind.as_deref() {
        Some("vector") => Some(VecKind::Vector),
        Some("halfvec") => Some(VecKind::Halfvec),
        Some("real[]") => Some(VecKind::Real),
        Some("double precision[]") => Some(VecKind::Double),
        _ => None,
    };
    Some(Column { rel_sql: rel_sql.to_string(), name: name.to_string(), ident: quote_identifier(name), type_sql, kind })
}

/// A column that must exist.
pub fn column(rel: pg_sys::Oid, rel_sql: &str, name: &str, role: &str) -> Column {
    find_column(rel, rel_sql, name).unwrap_or_else(|| {
        raise_with(
            Code::ERRCODE_UNDEFINED_COLUMN,
            format!("column \"{name}\" of relation {rel_sql} does not exist"),
            None,
            Some(format!("nudge needs {role}; a view can rename columns of another shape.")),
        )
    })
}

/// A column that must hold embeddings: vector, halfvec, real[] or double precision[].
pub fn vector_column(rel: pg_sys::Oid, rel_sql: &str, name: &str, role: &str) -> (Column, VecKind) {
    let col = column(rel, rel_sql, name, role);
    match col.kind {
        Some(kind) => (col, kind),
        None => raise_with(
            Code::ERRCODE_DATATYPE_MISMATCH,
            format!("column \"{}\" of relation {} has type {}, not an embedding type", col.name, col.rel_sql, col.type_sql),
            None,
            Some("Embeddings must be real[], double precision[], or pgvector's vector or halfvec (halfvec needs pgvector 0.7.0 or later).".into()),
        ),
    }
}
