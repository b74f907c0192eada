//! The produce path: validate batches, buffer them, flush segment objects, commit.

pub mod buffer;
pub mod validate;

pub use buffer::{ProduceError, WriteBuffer};
pub use validate::{BatchError, ValidatedBatches};
