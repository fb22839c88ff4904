//! Typed errors. Every public function validates its input and reports problems here instead
//! of panicking. `Display` gives user-facing messages in the PostgreSQL style: lowercase, no
//! trailing period.

use std::fmt;

/// Everything that can go wrong in this crate.
#[derive(Debug, Clone, PartialEq)]
pub enum NudgeError {
    /// A parameter is out of range or malformed (`name` is the parameter's name).
    InvalidParameter { name: &'static str, message: String },
    /// Two things that must agree in size do not.
    DimensionMismatch {
        what: String,
        expected: usize,
        found: usize,
    },
    /// NaN or an infinity in row `index` (0-based) of `what`.
    NonFinite { what: String, index: usize },
    /// A vector that must be normalised (row `index` of `what`) is all zeros.
    ZeroVector { what: String, index: usize },
    /// Something that must not be empty is, e.g. "training queries".
    Empty { what: String },
    /// A key that should have been seen was not.
    UnknownRecord { what: String, key: u64 },
    /// `check_interrupts` asked to stop.
    Cancelled,
    /// A size (of an input, or of what it would make nudge allocate) is above a hard limit of
    /// nudge's (SQLSTATE 54000 in the extension).
    TooLarge {
        what: String,
        found: u64,
        limit: u64,
    },
    /// Bytes that do not decode as the message `what` (SQLSTATE 22P03 in the extension).
    Malformed { what: &'static str, message: String },
}

impl fmt::Display for NudgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NudgeError::InvalidParameter { name, message } => {
                write!(f, "invalid value for parameter \"{name}\": {message}")
            }
            NudgeError::DimensionMismatch {
                what,
                expected,
                found,
            } => {
                write!(f, "{what} do not match: expected {expected}, found {found}")
            }
            NudgeError::NonFinite { what, index } => {
                write!(f, "row {index} of {what} contains NaN or infinity")
            }
            NudgeError::ZeroVector { what, index } => {
                write!(
                    f,
                    "row {index} of {what} is a zero vector and cannot be normalized"
                )
            }
            NudgeError::Empty { what } => write!(f, "no {what}"),
            NudgeError::UnknownRecord { what, key } => {
                write!(f, "{what} with key {key} was not found")
            }
            NudgeError::Cancelled => write!(f, "operation cancelled"),
            NudgeError::TooLarge { what, found, limit } => {
                write!(f, "{what} ({found}) exceeds nudge's limit of {limit}")
            }
            NudgeError::Malformed { what, message } => write!(f, "malformed {what}: {message}"),
        }
    }
}

impl std::error::Error for NudgeError {}

/// Result with [`NudgeError`].
pub type Result<T> = std::result::Result<T, NudgeError>;

pub(crate) fn invalid(name: &'static str, message: impl Into<String>) -> NudgeError {
    NudgeError::InvalidParameter {
        name,
        message: message.into(),
    }
}

pub(crate) fn too_large(
    what: impl Into<String>,
    found: impl TryInto<u64>,
    limit: usize,
) -> NudgeError {
    NudgeError::TooLarge {
        what: what.into(),
        found: found.try_into().unwrap_or(u64::MAX),
        limit: limit as u64,
    }
}

/// Fails with [`NudgeError::TooLarge`] unless `found <= limit`.
pub(crate) fn at_most(what: &str, found: usize, limit: usize) -> Result<()> {
    if found <= limit {
        Ok(())
    } else {
        Err(too_large(what, found, limit))
    }
}

pub(crate) fn mismatch(what: &str, expected: usize, found: usize) -> NudgeError {
    NudgeError::DimensionMismatch {
        what: what.to_string(),
        expected,
        found,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_postgres_style() {
        let all = [
            invalid("k", "must be at least 1"),
            mismatch("vector dimensions", 3, 4),
            NudgeError::NonFinite {
                what: "corpus batch".into(),
                index: 2,
            },
            NudgeError::ZeroVector {
                what: "record vectors".into(),
                index: 0,
            },
            NudgeError::Empty {
                what: "training queries".into(),
            },
            NudgeError::UnknownRecord {
                what: "moving record".into(),
                key: 7,
            },
            NudgeError::Cancelled,
            too_large("vector dimension", 20000usize, 16000),
            NudgeError::Malformed {
                what: "shard spec",
                message: "truncated".into(),
            },
        ];
        let expected = [
            "invalid value for parameter \"k\": must be at least 1",
            "vector dimensions do not match: expected 3, found 4",
            "row 2 of corpus batch contains NaN or infinity",
            "row 0 of record vectors is a zero vector and cannot be normalized",
            "no training queries",
            "moving record with key 7 was not found",
            "operation cancelled",
            "vector dimension (20000) exceeds nudge's limit of 16000",
            "malformed shard spec: truncated",
        ];
        for (e, want) in all.iter().zip(expected) {
            let s = e.to_string();
            assert_eq!(s, want);
            assert!(!s.ends_with('.'));
            assert!(s.chars().next().unwrap().is_lowercase());
        }
    }
}
