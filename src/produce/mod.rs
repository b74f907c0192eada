//! The produce path: validate batches, buffer them, flush segment objects, commit.

pub mod batch;
pub mod buffer;
pub mod records;

pub use batch::{BatchError, ValidatedBatches};
pub use buffer::{ProduceError, WriteBuffer};
