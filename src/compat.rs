//! C symbols that the SQL of an earlier version binds and this library serves differently.
//!
//! Between installing a new nudge and `ALTER EXTENSION nudge UPDATE`, the old version's SQL
//! functions call into the new library. Where a function kept its symbol, its version check
//! answers 55000 (catalog.rs). Where the new version gave it another signature under a new
//! symbol, the old symbol stays here, so that the old SQL gets the same answer instead of
//! arguments read past its own.

use pgrx::prelude::*;

/// 0.1.0's `nudge_refit(bigint, boolean, text, boolean)`; 0.2.0's is
/// `nudge_refit_guarded_wrapper`.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_nudge_refit_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn nudge_refit_wrapper(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    crate::catalog::current();
    // The 0.2.0 catalog binds nudge_refit to the other symbol; reaching this is a mismatch.
    crate::error::raise(
        crate::error::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "nudge_refit is bound to a symbol of nudge 0.1.0; run ALTER EXTENSION nudge UPDATE",
    )
}
