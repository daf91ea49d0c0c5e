//! The error of everything that is not an answer to a client: reading configuration, the
//! ledger and key stores, decoding what a provider sent, the simulator, the command line.
//!
//! Modelled on `pingora-error`: a [`Fault`] says what kind of thing went wrong (what a caller
//! may branch on), a context says what was being done, and the cause (any `std` error,
//! another [`Error`] included) is kept as the chain behind it. `Display` prints the whole
//! chain, `context: cause: its cause`, because that line is what an operator reads in a log or
//! on a terminal; [`std::error::Error::source`] walks the same chain for code.
//!
//! A client never sees this type: where a failure reaches a client the caller turns it into a
//! [`super::FluxError`] of the kind it means (a provider's garbled stream is a 502, a key that
//! is not there is a 404), and logs the chain.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

/// What kind of thing went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A value given to us is not acceptable (a name, a plan, a URL, a field of a file).
    Invalid,
    /// The thing named does not exist (a key, an account, a month).
    NotFound,
    /// It would clash with what exists (a name in use, a key revoked for good).
    Conflict,
    /// Bytes from a peer do not parse as what they must be (a provider's body or stream, a
    /// model file, a request the simulator was sent).
    Malformed,
    /// The operating system refused (a file, a socket, a process).
    Io,
    /// An embedded database failed (SQLite).
    Database,
    /// A service we depend on is unreachable or stopped (the shared ledger, a writer thread).
    Unavailable,
    /// A limit on size or count was passed.
    TooLarge,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Invalid => "invalid",
            Fault::NotFound => "not found",
            Fault::Conflict => "conflict",
            Fault::Malformed => "malformed",
            Fault::Io => "i/o",
            Fault::Database => "database",
            Fault::Unavailable => "unavailable",
            Fault::TooLarge => "too large",
        }
    }
}

type Cause = Box<dyn StdError + Send + Sync>;

/// A failure with its kind, what was being done, and what caused it.
pub struct Error {
    fault: Fault,
    context: Cow<'static, str>,
    cause: Option<Cause>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A failure with no cause behind it: `context` says all there is.
    pub fn new(fault: Fault, context: impl Into<Cow<'static, str>>) -> Self {
        Error {
            fault,
            context: context.into(),
            cause: None,
        }
    }

    /// The same failure, caused by `cause`.
    pub fn because(mut self, cause: impl Into<Cause>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    pub fn fault(&self) -> Fault {
        self.fault
    }

    /// What was being done (without the causes).
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The innermost cause, or this error when it has none.
    pub fn root_cause(&self) -> &(dyn StdError + 'static) {
        let mut at: &(dyn StdError + 'static) = self;
        while let Some(next) = at.source() {
            at = next;
        }
        at
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        let mut next = self
            .cause
            .as_deref()
            .map(|c| c as &(dyn StdError + 'static));
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            // An `Error` prints its own chain; stop so no cause is printed twice.
            if cause.is::<Error>() {
                break;
            }
            next = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({}: {self})", self.fault.as_str())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn StdError + 'static))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(Fault::Io, "i/o").because(e)
    }
}

/// SQLite's errors carry their own detail (constraint, busy, corrupt): the ledger's and the
/// key store's many small queries use `?` and say which file in an outer context.
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::new(Fault::Database, "SQLite").because(e)
    }
}

/// Attach what was being done to a failure, as `.context(..)` on any `Result`.
pub trait Context<T> {
    /// Wrap the failure as `fault` while doing `context`.
    fn context(self, fault: Fault, context: impl Into<Cow<'static, str>>) -> Result<T>;
    /// The same, with the context built only on failure.
    fn with_context<C: Into<Cow<'static, str>>>(
        self,
        fault: Fault,
        context: impl FnOnce() -> C,
    ) -> Result<T>;
}

impl<T, E: Into<Cause>> Context<T> for std::result::Result<T, E> {
    fn context(self, fault: Fault, context: impl Into<Cow<'static, str>>) -> Result<T> {
        self.map_err(|e| Error::new(fault, context).because(e))
    }

    fn with_context<C: Into<Cow<'static, str>>>(
        self,
        fault: Fault,
        context: impl FnOnce() -> C,
    ) -> Result<T> {
        self.map_err(|e| Error::new(fault, context()).because(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &str) -> Result<String> {
        std::fs::read_to_string(path).with_context(Fault::Io, || format!("reading {path}"))
    }

    #[test]
    fn the_chain_prints_once_from_context_to_root() {
        let inner = read("/nonexistent/flux").unwrap_err();
        assert_eq!(inner.fault(), Fault::Io);
        let outer: Result<()> = Err(inner).context(Fault::Invalid, "loading the keys file");
        let outer = outer.unwrap_err();
        let text = outer.to_string();
        assert!(
            text.starts_with("loading the keys file: reading /nonexistent/flux: "),
            "{text}"
        );
        assert_eq!(text.matches("reading").count(), 1, "{text}");
        assert_eq!(outer.fault(), Fault::Invalid);
        assert_eq!(outer.context(), "loading the keys file");
        // `source` walks the same chain down to the operating system's error.
        assert!(outer.source().unwrap().is::<Error>());
        assert!(outer.root_cause().is::<std::io::Error>());
    }

    #[test]
    fn an_error_without_a_cause_is_its_own_root() {
        let e = Error::new(Fault::NotFound, "no key named 'ci'");
        assert_eq!(e.to_string(), "no key named 'ci'");
        assert!(e.source().is_none());
        assert!(e.root_cause().is::<Error>());
    }
}
