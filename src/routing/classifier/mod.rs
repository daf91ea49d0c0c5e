//! flux-auto's learned lane classifier: a deterministic linear model over hashed features of
//! the request, in-process, decided in microseconds. Hard rules (image input, the plan's
//! lanes) stay rules; the classifier chooses among the rest (see `RouteTable::route`).

pub mod cli;
pub mod eval;
pub mod features;
pub mod model;
pub mod train;

pub use features::Hashed;
pub use model::{choose, Choice, Classifier, Policy, Scores};
