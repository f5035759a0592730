//! Case results and the assertion macros cases use (they return, never panic, so the suite
//! can run inside a wasm Worker where a panic would abort the isolate).

use std::fmt;

/// Why a case failed (or, with [`Failure::skip`], why it did not apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What was expected and what happened.
    pub message: String,
    /// The case does not apply to this backend; reported, not counted as a failure.
    pub skipped: bool,
}

impl Failure {
    /// A failure with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            skipped: false,
        }
    }

    /// The case does not apply to this backend (for example reopen on a non-durable one).
    pub fn skip(reason: impl Into<String>) -> Self {
        Self {
            message: reason.into(),
            skipped: true,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.skipped {
            write!(f, "skipped: {}", self.message)
        } else {
            f.write_str(&self.message)
        }
    }
}

impl From<chat_state_core::Error> for Failure {
    fn from(e: chat_state_core::Error) -> Self {
        Failure::new(format!("unexpected error: {e}"))
    }
}

/// The result of one case.
pub type CaseResult = Result<(), Failure>;

/// Fails the case with a formatted message unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::Failure::new(format!(
                "{} (line {}): {}", stringify!($cond), line!(), format!($($msg)+)
            )));
        }
    };
}

/// Fails the case unless `left == right`, showing both.
#[macro_export]
macro_rules! ensure_eq {
    ($left:expr, $right:expr, $($msg:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if l != r {
                    return Err($crate::Failure::new(format!(
                        "{} (line {}): expected {:?}, got {:?}",
                        format!($($msg)+), line!(), r, l
                    )));
                }
            }
        }
    };
}

/// Fails the case unless the result is an error of the given [`ErrorKind`](chat_state_core::ErrorKind).
#[macro_export]
macro_rules! ensure_err_kind {
    ($result:expr, $kind:expr, $($msg:tt)+) => {
        match $result {
            Ok(v) => {
                return Err($crate::Failure::new(format!(
                    "{} (line {}): expected a {:?} error, got Ok({:?})",
                    format!($($msg)+), line!(), $kind, v
                )));
            }
            Err(e) if e.kind() == $kind => {}
            Err(e) => {
                return Err($crate::Failure::new(format!(
                    "{} (line {}): expected a {:?} error, got {}",
                    format!($($msg)+), line!(), $kind, e
                )));
            }
        }
    };
}
