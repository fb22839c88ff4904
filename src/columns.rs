//! Resolving user-named tables and columns through the catalogs.
//!
//! Tables arrive as `regclass` (resolved by Postgres); column names are looked up in the
//! system caches (what `pg_attribute` holds, without planning a catalog query: a SciFact fit
//! spent ~10% of its time planning those) and quoted with `quote_identifier` before they
//! appear in any generated statement. User text is never spliced into SQL.

use std::ffi::{CStr, CString};

use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

use crate::error::{raise, raise_with, PgSqlErrorCode as Code};

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
    /// `format_type(atttypid, atttypmod)` under nudge's search path (pg_catalog), e.g.
    /// `public.vector(384)`.
    pub type_sql: String,
    /// The column's type.
    pub typid: pg_sys::Oid,
    /// Set when the column holds embeddings in a supported type.
    pub kind: Option<VecKind>,
}

/// A relation, resolved; its columns are looked up on demand.
pub struct Relation {
    oid: pg_sys::Oid,
    /// The relation as Postgres prints a regclass: quoted, schema-qualified when needed.
    pub sql: String,
}

/// The relation with OID `rel`. A regclass of a dropped table is only a number: a fit
/// recorded before its table was dropped fails here with undefined_table.
pub fn relation(rel: pg_sys::Oid) -> Relation {
    // SAFETY: plain catalog lookups; regclassout takes one OID argument.
    let sql = unsafe {
        if pg_sys::get_rel_name(rel).is_null() {
            raise(Code::ERRCODE_UNDEFINED_TABLE, format!("relation with OID {} does not exist", rel.to_u32()));
        }
        pgrx::direct_function_call::<&CStr>(pg_sys::regclassout, &[rel.into_datum()])
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    Relation { oid: rel, sql }
}

/// The storage kind of type `typid` if it holds embeddings:
/// real[], double precision[], or pgvector's vector / halfvec (types of extension `vector`).
fn vec_kind(typid: pg_sys::Oid) -> Option<VecKind> {
    match typid {
        pg_sys::FLOAT4ARRAYOID => return Some(VecKind::Real),
        pg_sys::FLOAT8ARRAYOID => return Some(VecKind::Double),
        _ => {}
    }
    // SAFETY: catalog lookups by OID; format_type_extended returns a palloc'd C string.
    unsafe {
        let vector = pg_sys::get_extension_oid(c"vector".as_ptr(), true);
        if vector == pg_sys::InvalidOid || pg_sys::getExtensionOfObject(pg_sys::TypeRelationId, typid) != vector {
            return None;
        }
        let name = pg_sys::format_type_extended(typid, -1, pg_sys::FORMAT_TYPE_FORCE_QUALIFY as _);
        let name = CStr::from_ptr(name).to_string_lossy();
        // schema.vector / schema.halfvec (these type names never need quotes)
        match name.rsplit('.').next() {
            Some("vector") => Some(VecKind::Vector),
            Some("halfvec") => Some(VecKind::Halfvec),
            _ => None,
        }
    }
}

impl Relation {
    /// Look up a column by its exact name; `None` if the relation has no such (user) column.
    pub fn find(&self, name: &str) -> Option<Column> {
        let cname = CString::new(name).ok()?;
        // SAFETY: syscache lookups of this relation's attributes.
        let (typid, typmod) = unsafe {
            let attnum = pg_sys::get_attnum(self.oid, cname.as_ptr());
            if attnum <= 0 {
                return None; // no such column (or a system column)
            }
            let (mut typid, mut typmod, mut coll) = (pg_sys::InvalidOid, -1, pg_sys::InvalidOid);
            pg_sys::get_atttypetypmodcoll(self.oid, attnum, &mut typid, &mut typmod, &mut coll);
            (typid, typmod)
        };
        // format_type(atttypid, atttypmod), e.g. vector(384)
        let type_sql = unsafe { CStr::from_ptr(pg_sys::format_type_with_typemod(typid, typmod)) }.to_string_lossy().into_owned();
        Some(Column {
            rel_sql: self.sql.clone(),
            name: name.to_string(),
            ident: quote_identifier(name),
            type_sql,
            typid,
            kind: vec_kind(typid),
        })
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

/// A `regclass` argument, kept as its OID. (pgrx's `PgRelation` opens the relation while
/// reading the argument, so an OID that names no relation would fail with XX000 there;
/// [`relation`] refuses it with 42P01 instead.)
pub struct RegClass(pub pg_sys::Oid);

impl FromDatum for RegClass {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _typoid: pg_sys::Oid) -> Option<Self> {
        // SAFETY: a regclass datum is an OID.
        (!is_null).then(|| RegClass(unsafe { pg_sys::Oid::from_datum(datum, false) }.unwrap_or(pg_sys::InvalidOid)))
    }
}

// SAFETY: read through FromDatum above, as pgrx reads its own argument types.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for RegClass {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        unsafe { arg.unbox_arg_using_from_datum() }.unwrap_or(RegClass(pg_sys::InvalidOid))
    }

    unsafe fn unbox_nullable_arg(arg: pgrx::callconv::Arg<'_, 'fcx>) -> pgrx::nullable::Nullable<Self> {
        unsafe { arg.unbox_arg_using_from_datum() }.into()
    }
}

pgrx::impl_sql_translatable!(RegClass, "regclass");
