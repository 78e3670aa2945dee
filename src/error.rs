//! The one error type of the library's application side ([`crate::app`],
//! [`crate::support`], [`crate::demo`], the command bodies), and the exit
//! codes it maps to.
//!
//! Modeled on ripgrep's core: a struct with a [`ErrorKind`] that decides
//! the exit code, a message that names the file, run or step, and an
//! optional hint that says how to fix it. `main` prints an error once, at
//! the top, and exits with [`Error::exit_code`]. The pure core keeps its
//! own typed errors ([`crate::plan::PlanErrors`],
//! [`crate::engine::EngineError`], [`upshift_journal::JournalError`]);
//! they convert into this one at the application boundary.
//!
//! ```
//! use upshift::error::{Error, ErrorKind, code};
//! let e = Error::usage("no run 0193 in this journal").with_hint("`upshift runs` lists them");
//! assert_eq!(e.kind(), ErrorKind::Usage);
//! assert_eq!(e.exit_code(), code::USAGE);
//! assert_eq!(e.to_string(), "no run 0193 in this journal\n  `upshift runs` lists them");
//! ```

use std::fmt;

use upshift_journal::JournalError;

/// Exit codes (stable: scripts rely on them).
pub mod code {
    /// The run succeeded (or the command did what was asked).
    pub const OK: u8 = 0;
    /// The run failed, was aborted or was rolled back; or a journal error.
    pub const FAILED: u8 = 1;
    /// Bad usage or a plan error.
    pub const USAGE: u8 = 2;
    /// Paused, waiting for an operator.
    pub const PAUSED: u8 = 3;
    /// Interrupted (Ctrl-C, SIGTERM); resumable.
    pub const INTERRUPTED: u8 = 130;
}

/// What went wrong, as far as the exit code is concerned.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command was asked for something that cannot be (an unknown run
    /// or step, a decision that does not apply, a bad `--var`). Exit 2.
    Usage,
    /// The plan (or its site file) does not validate. Exit 2.
    Plan,
    /// The journal cannot be opened, read or written, or is damaged. Exit 1.
    Journal,
    /// Anything else that failed while doing what was asked (I/O, the
    /// engine stopped, a file that is not an export). Exit 1.
    Failed,
}

/// An error with the words an operator needs, and its exit code.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    hint: Option<String>,
}

/// Shorthand for results of the application side.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
            hint: None,
        }
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Usage, message)
    }

    /// A failure (exit 1).
    pub fn failed(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Failed, message)
    }

    /// Adds how to fix it; shown on its own indented line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Error {
        self.hint = Some(hint.into());
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What is wrong (without the hint).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How to fix it, if known.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ErrorKind::Usage | ErrorKind::Plan => code::USAGE,
            ErrorKind::Journal | ErrorKind::Failed => code::FAILED,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<JournalError> for Error {
    fn from(e: JournalError) -> Self {
        Error::new(ErrorKind::Journal, e.to_string())
    }
}

impl From<crate::plan::PlanErrors> for Error {
    fn from(e: crate::plan::PlanErrors) -> Self {
        Error::new(ErrorKind::Plan, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_the_documented_exit_codes() {
        assert_eq!(Error::usage("x").exit_code(), 2);
        assert_eq!(Error::new(ErrorKind::Plan, "x").exit_code(), 2);
        assert_eq!(Error::new(ErrorKind::Journal, "x").exit_code(), 1);
        assert_eq!(Error::failed("x").exit_code(), 1);
    }

    #[test]
    fn the_hint_is_an_indented_line_after_the_message() {
        assert_eq!(Error::failed("a").to_string(), "a");
        assert_eq!(Error::failed("a").with_hint("b").to_string(), "a\n  b");
    }
}
