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

/// A relation and all its columns, read from the catalogs with one query.
pub struct Relation {
    /// The relation as Postgres prints a regclass: quoted, schema-qualified when needed.
    pub sql: String,
    columns: Vec<Column>,
}

/// The relation's name and every live column with its type, in one catalog query. A regclass
/// of a dropped table prints as its OID: looking it up in pg_class makes a fit recorded
/// before its table was dropped fail here with undefined_table.
const RELATION_SQL: &str = "
SELECT c.oid::pg_catalog.regclass::pg_catalog.text, a.attname::pg_catalog.text,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       CASE
         WHEN a.atttypid = 'real[]'::pg_catalog.regtype THEN 'real[]'
         WHEN a.atttypid = 'double precision[]'::pg_catalog.regtype THEN 'double precision[]'
         WHEN t.typname IN ('vector', 'halfvec') AND EXISTS (
              SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
               WHERE d.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND d.objid = t.oid
                 AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass AND d.deptype = 'e'
                 AND e.extname = 'vector')
           THEN t.typname::pg_catalog.text
       END
  FROM pg_catalog.pg_class c
  LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
 WHERE c.oid = $1";

pub fn relation(rel: pg_sys::Oid) -> Relation {
    let mut sql = None;
    let mut columns = Vec::new();
    Spi::connect(|client| {
        let rows = client.select(RELATION_SQL, None, &[rel.into()]).or_raise();
        for row in rows {
            let rel_sql: String = row.get(1).or_raise().unwrap_or_default();
            let name: Option<String> = row.get(2).or_raise();
            let type_sql: Option<String> = row.get(3).or_raise();
            let kind = match row.get::<String>(4).or_raise().as_deref() {
                Some("vector") => Some(VecKind::Vector),
                Some("halfvec") => Some(VecKind::Halfvec),
                Some("real[]") => Some(VecKind::Real),
                Some("double precision[]") => Some(VecKind::Double),
                _ => None,
            };
            if let (Some(name), Some(type_sql)) = (name, type_sql) {
                let ident = quote_identifier(&name);
                columns.push(Column { rel_sql: rel_sql.clone(), name, ident, type_sql, kind });
            }
            sql = Some(rel_sql);
        }
    });
    let sql = sql.unwrap_or_else(|| raise(Code::ERRCODE_UNDEFINED_TABLE, format!("relation with OID {} does not exist", rel.to_u32())));
    Relation { sql, columns }
}

impl Relation {
    /// Look up a column by its exact name; `None` if the relation has no such column.
    pub fn find(&self, name: &str) -> Option<Column> {
        self.columns.iter().find(|c| c.name == name).cloned()
    }

    /// A column that must exist.
    pub fn column(&self, name: &str, role: &str) -> Column {
        self.find(name).unwrap_or_else(|| {
            raise_with(
                Code::ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{name}\" of relation {} does not exist", self.sql),
                None,
                Some(format!("nudge needs {role}; a view can rename columns of another shape.")),
            )
        })
    }

    /// A column that must hold embeddings: vector, halfvec, real[] or double precision[].
    pub fn vector_column(&self, name: &str, role: &str) -> (Column, VecKind) {
        let col = self.column(name, role);
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
}
