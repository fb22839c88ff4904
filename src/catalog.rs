//! nudge's own catalog (`nudge.fits`, `nudge.fit_backups`, `nudge.fit_staged`) and who may
//! write it.
//!
//! Security model. Every function of nudge runs with the caller's rights on the caller's
//! tables, under `search_path = pg_catalog, pg_temp` (the `#[search_path]` of every
//! `#[pg_extern]` that runs SQL), so no object another role created can stand in for what a
//! statement names. The catalog is different: user roles may only SELECT it (row-level
//! security hides vectors of tables they cannot read), and nudge writes it itself, here,
//! under the identity of the extension's owner, for the short statements that touch only
//! `nudge.*` (never a user table, never user code: a security-restricted operation). So a
//! fit, a backup or a staged row in the catalog is always one nudge recorded, and a backup
//! is always a value nudge read from the row itself: nobody can plant vectors for a later
//! revert or refit to write, or change a fit's status without running nudge's functions.
//!
//! Where the extension lives: `CREATE EXTENSION nudge SCHEMA s` puts its functions in `s`;
//! nudge calls its own functions through [`Ext::schema`], never through the search path.

use std::ffi::CStr;

use pgrx::prelude::*;
use pgrx::spi::quote_identifier;

use crate::error::{raise, raise_with, OrRaise, PgSqlErrorCode as Code};

/// The installed extension: its owner, schema (quoted) and catalog version.
pub struct Ext {
    pub owner: pg_sys::Oid,
    pub schema: String,
    pub version: String,
}

/// The installed nudge extension (55000 if this library runs without it).
pub fn ext() -> Ext {
    let row = Spi::connect(|c| {
        let t = c.select(
            "SELECT e.extowner, n.nspname::pg_catalog.text, e.extversion
               FROM pg_catalog.pg_extension AS e
               JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
              WHERE e.extname OPERATOR(pg_catalog.=) 'nudge'::pg_catalog.name",
            Some(1),
            &[],
        )?;
        if t.is_empty() {
            return Ok::<_, pgrx::spi::Error>(None);
        }
        let r = t.first();
        Ok(Some((r.get::<pg_sys::Oid>(1)?, r.get::<String>(2)?, r.get::<String>(3)?)))
    })
    .or_raise();
    match row {
        Some((Some(owner), Some(schema), Some(version))) => Ext { owner, schema: quote_identifier(&schema), version },
        _ => raise_with(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "extension \"nudge\" is not installed in this database",
            None,
            Some("CREATE EXTENSION nudge;".into()),
        ),
    }
}

/// The version of this library, which the installed catalog must match.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Refuse to run against a catalog of another version (after the library was replaced and
/// before `ALTER EXTENSION nudge UPDATE` ran); returns the extension.
pub fn current() -> Ext {
    let e = ext();
    if e.version != VERSION {
        raise_with(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the installed nudge catalog is version {}, this library is version {VERSION}", e.version),
            None,
            Some(format!("Run ALTER EXTENSION nudge UPDATE TO '{VERSION}'; (fits and backups are kept).")),
        );
    }
    e
}

/// `schema.function`: one of nudge's own functions, named through the extension's schema.
pub fn func(e: &Ext, name: &str) -> String {
    format!("{}.{}", e.schema, name)
}

/// Run `f` as the extension's owner, for statements on nudge's catalog only (tables no other
/// role can add triggers or rules to); switched back also when `f` raises (and by the
/// transaction's abort in any case). (Not a security-restricted operation: the catalog's
/// foreign keys are deferred triggers, which such an operation refuses to queue.)
pub fn as_owner<R>(e: &Ext, f: impl FnOnce() -> R) -> R {
    switched(e.owner, pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32, f)
}

/// Run `f` as the extension's owner for a call that Citus sends to the workers (the internal
/// shard functions are not executable by PUBLIC). The caller's rights on the table were checked
/// first (see `citus::on_shards`).
pub fn as_owner_on_workers<R>(e: &Ext, f: impl FnOnce() -> R) -> R {
    switched(e.owner, pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32, f)
}

fn switched<R>(user: pg_sys::Oid, flags: i32, f: impl FnOnce() -> R) -> R {
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: restores the identity saved below; cannot fail.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) };
        }
    }
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0i32);
    // SAFETY: plain reads and writes of the backend's current identity.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(user, saved_context | flags);
    }
    let _restore = Restore(saved_user, saved_context);
    f()
}

/// The calling role's name (`current_user`).
pub fn caller() -> String {
    // SAFETY: the current user exists for the whole call.
    unsafe { CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false)) }.to_string_lossy().into_owned()
}

pub fn is_superuser() -> bool {
    // SAFETY: a catalog lookup of the current user.
    unsafe { pg_sys::superuser() }
}

/// Whether the current role has `mode` (pg_sys::ACL_SELECT, ACL_UPDATE) on table `rel`.
pub fn has_table_privilege(rel: pg_sys::Oid, mode: u32) -> bool {
    // SAFETY: an ACL check by OID; the relation was resolved before.
    unsafe { pg_sys::pg_class_aclcheck(rel, pg_sys::GetUserId(), mode as pg_sys::AclMode) == pg_sys::AclResult::ACLCHECK_OK }
}

/// Whether row-level security of `rel` applies to the current role.
pub fn rls_applies(rel: pg_sys::Oid) -> bool {
    // SAFETY: checks the relation's flags and the current role.
    unsafe { pg_sys::check_enable_rls(rel, pg_sys::InvalidOid, true) == pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 }
}

/// Whether the current role may read vectors of `rel` that nudge keeps (backups, staged rows):
/// it may SELECT the table and no row-level security of the table applies to it (those
/// vectors include rows a policy would hide). The SQL twin is `nudge.nudge_may_read_vectors`,
/// which the catalog's read policies use.
pub fn may_read_vectors(rel: pg_sys::Oid) -> bool {
    has_table_privilege(rel, pg_sys::ACL_SELECT) && !rls_applies(rel)
}

/// Refuse unless the current role may read vectors of `rel` kept in the catalog (42501).
pub fn require_read_vectors(rel: pg_sys::Oid, rel_sql: &str, what: &str) {
    if !may_read_vectors(rel) {
        raise_with(
            Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to read the {what} of {rel_sql}"),
            None,
            Some("nudge keeps vectors of the table in its catalog; reading them needs SELECT on every row of the table (no row-level security that applies to you).".into()),
        );
    }
}

/// The equality operator of type `typid` (its default btree or hash opclass's), written so
/// that it resolves to exactly that operator: `OPERATOR(schema.=)`.
pub fn eq_operator(typid: pg_sys::Oid) -> String {
    // SAFETY: a type cache lookup and syscache reads by OID.
    let op = unsafe { (*pg_sys::lookup_type_cache(typid, pg_sys::TYPECACHE_EQ_OPR as i32)).eq_opr };
    if op == pg_sys::InvalidOid {
        let name = unsafe { CStr::from_ptr(pg_sys::format_type_be(typid)) }.to_string_lossy().into_owned();
        raise(Code::ERRCODE_UNDEFINED_FUNCTION, format!("type {name} has no equality operator; nudge needs one to find rows by id"));
    }
    let row = Spi::get_two_with_args::<String, String>(
        "SELECT n.nspname::pg_catalog.text, o.oprname::pg_catalog.text
           FROM pg_catalog.pg_operator AS o
           JOIN pg_catalog.pg_namespace AS n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace
          WHERE o.oid OPERATOR(pg_catalog.=) $1",
        &[op.into()],
    )
    .or_raise();
    match row {
        (Some(schema), Some(name)) => format!("OPERATOR({}.{name})", quote_identifier(&schema)),
        _ => raise(Code::ERRCODE_UNDEFINED_FUNCTION, "the equality operator of the id column's type does not exist"),
    }
}

/// Whether an embedding type recorded in `nudge.fits` names the column type `now`. nudge 0.1.0
/// recorded the type as printed under the caller's search path (`vector(384)`); 0.2.0 under
/// its pinned one (`public.vector(384)`).
pub fn same_type(recorded: &str, now: &str) -> bool {
    recorded == now || now.split_once('.').is_some_and(|(_, unqualified)| unqualified == recorded)
}

/// The next fit id (drawn as the owner: the sequence is nudge's).
pub fn next_fit_id(e: &Ext) -> i64 {
    as_owner(e, || {
        Spi::get_one::<i64>("SELECT pg_catalog.nextval('nudge.fits_fit_id_seq'::pg_catalog.regclass)").or_raise()
    })
    .unwrap_or_else(|| raise(Code::ERRCODE_INTERNAL_ERROR, "nudge: nextval returned NULL"))
}

/// Lock fit `fit_id`'s row in `nudge.fits` (as the owner: callers may only read the catalog)
/// and return its status; None if there is no such fit. Two calls on one fit take turns.
pub fn lock_fit(e: &Ext, fit_id: i64) -> Option<String> {
    as_owner(e, || {
        Spi::get_one_with_args::<String>(
            "SELECT f.status FROM nudge.fits AS f WHERE f.fit_id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
            &[fit_id.into()],
        )
    })
    .or_raise()
}
