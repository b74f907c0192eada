//! Background work: compaction of the tail into segments, log compaction (the cleaner), time and size retention,
//! garbage collection through the state machine, the orphan sweep, and the stats file.

pub mod cleaner;
pub mod compaction;
pub mod gc;
pub mod orphans;
pub mod retention;
pub mod stats;
