//! The `fluxrouter` commands, one file each, each with nothing but its own work and its
//! rendering (tables, prompts, stdout/stderr). They live in the binary, not the library: the
//! library stays free of terminal output, and programs that link it (tests, benches) never
//! carry a command line.

pub mod accounts;
pub mod check;
pub mod demo;
pub mod keys;
pub mod route;
pub mod serve;
pub mod simulate;
pub mod usage;

/// What a command returns: its error is printed as `fluxrouter: <error>`, exit status 1.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;
