//! Index types of a compiled routing table (their own file, so the modules that keep state
//! about lanes and models need not import the table).

/// A lane's index in its table.
pub type LaneId = usize;
/// A model's (target's) index in its table.
pub type ModelId = usize;
