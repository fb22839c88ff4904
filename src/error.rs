//! Errors: every failure becomes an `ereport(ERROR)` with a specific SQLSTATE.
//!
//! Raising an ERROR aborts the caller's transaction, so nothing a failed call wrote
//! survives: the table is left exactly as it was.

use nudge_core::NudgeError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

pub use pgrx::PgSqlErrorCode;

/// Raise an ERROR with a SQLSTATE, a message and optional detail/hint.
pub fn raise(code: Code, message: impl Into<String>) -> ! {
    raise_with(code, message, None, None)
}

pub fn raise_with(code: Code, message: impl Into<String>, detail: Option<String>, hint: Option<String>) -> ! {
    let mut report = ErrorReport::new(code, message.into(), "nudge");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ereport(ERROR) returned")
}

/// SQLSTATE for each core error.
pub fn code_of(e: &NudgeError) -> Code {
    match e {
        NudgeError::InvalidParameter { .. } => Code::ERRCODE_INVALID_PARAMETER_VALUE,
        NudgeError::DimensionMismatch { .. } => Code::ERRCODE_DATA_EXCEPTION,
        NudgeError::NonFinite { .. } => Code::ERRCODE_DATA_EXCEPTION,
        NudgeError::ZeroVector { .. } => Code::ERRCODE_DATA_EXCEPTION,
        NudgeError::Empty { .. } => Code::ERRCODE_INVALID_PARAMETER_VALUE,
        NudgeError::UnknownRecord { .. } => Code::ERRCODE_FOREIGN_KEY_VIOLATION,
        NudgeError::Cancelled => Code::ERRCODE_QUERY_CANCELED,
        NudgeError::TooLarge { .. } => Code::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        NudgeError::Malformed { .. } => Code::ERRCODE_INVALID_BINARY_REPRESENTATION,
    }
}

/// Unwrap a core result or raise its error.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for nudge_core::Result<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(code_of(&e), e.to_string()),
        }
    }
}

impl<T> OrRaise<T> for Result<T, pgrx::spi::Error> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => raise(Code::ERRCODE_INTERNAL_ERROR, format!("nudge: SPI failed: {e}")),
        }
    }
}
