//! Typed errors of the library. Every error knows its exit code: 2 when the user must fix an input,
//! a flag or the config; 1 when something failed at run time (disk full, a NaN loss, libtorch).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag or argument combination.
    #[error("{0}")]
    Usage(String),
    /// A config file or config value that cannot be used.
    #[error("config {origin}: {msg}")]
    Config { origin: String, msg: String },
    /// An input file or folder that is missing, unreadable or malformed.
    #[error("{}: {msg}", path.display())]
    Input { path: PathBuf, msg: String },
    /// A file-system failure while writing or reading what the tool manages. The io error is
    /// part of the message and deliberately not a `source`: `{:#}` would print it twice.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    /// A failure during computation (NaN loss, libtorch error, …).
    #[error("{0}")]
    Runtime(String),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The user stopped the run (Ctrl-C); the message says how to continue.
    #[error("{0}")]
    Interrupted(String),
    /// What the library was doing when `source` happened ("binarizing the maps in …"); shown
    /// as `msg: source`, with the exit code of `source`.
    #[error("{msg}")]
    Context {
        msg: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }
    pub fn config(origin: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config {
            origin: origin.into(),
            msg: msg.into(),
        }
    }
    pub fn input(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Input {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            err: source,
        }
    }
    pub fn runtime(msg: impl Into<String>) -> Self {
        Error::Runtime(msg.into())
    }

    /// 2 for what the user must fix (usage, config, inputs), 1 for run-time failures, 130 when
    /// interrupted (the shell's code for SIGINT).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Context { source, .. } => source.exit_code(),
            Error::Interrupted(_) => 130,
            Error::Usage(_) | Error::Config { .. } | Error::Input { .. } => 2,
            Error::Io { .. } | Error::Runtime(_) | Error::Torch(_) => 1,
        }
    }
}

/// The exit code of an error chain as it reaches `main`: the first typed error decides; anything
/// untyped is a run-time failure.
pub fn exit_code_of(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|e| e.downcast_ref::<Error>().map(Error::exit_code))
        .unwrap_or(1)
}

/// Adds the path to a raw io::Error.
/// `with_context` for the library's own errors: the typed error stays the source, so exit codes
/// and messages read as with `anyhow::Context` at the command edge.
pub trait ResultExt<T> {
    fn with_context<M: Into<String>>(self, msg: impl FnOnce() -> M) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn with_context<M: Into<String>>(self, msg: impl FnOnce() -> M) -> Result<T> {
        self.map_err(|e| Error::Context {
            msg: msg().into(),
            source: Box::new(e.into()),
        })
    }
}

pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_kind_of_error() {
        assert_eq!(Error::usage("x").exit_code(), 2);
        assert_eq!(Error::config("f", "x").exit_code(), 2);
        assert_eq!(Error::input("f", "x").exit_code(), 2);
        assert_eq!(Error::runtime("x").exit_code(), 1);
        let e = anyhow::Error::new(Error::input("a.png", "bad")).context("reading maps");
        assert_eq!(exit_code_of(&e), 2);
        assert_eq!(exit_code_of(&anyhow::anyhow!("plain")), 1);
        // the io error appears once in the one-line message
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = anyhow::Error::new(Error::io("/out/x", io)).context("writing");
        assert_eq!(format!("{e:#}"), "writing: /out/x: denied");
    }

    #[test]
    fn library_context_reads_and_exits_as_anyhow_context() {
        let r: Result<()> = Err(Error::input("a.png", "bad"));
        let e = anyhow::Error::new(r.with_context(|| "reading maps").unwrap_err());
        assert_eq!(format!("{e:#}"), "reading maps: a.png: bad");
        assert_eq!(exit_code_of(&e), 2);
        let r: Result<()> = Err(Error::runtime("boom"));
        let e = anyhow::Error::new(r.with_context(|| "outer").unwrap_err()).context("cmd");
        assert_eq!(format!("{e:#}"), "cmd: outer: boom");
        assert_eq!(exit_code_of(&e), 1);
    }
}
