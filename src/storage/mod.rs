//! Storage: the object store, the segment object format and the block cache.

pub mod budget;
pub mod cache;
pub mod segment;
pub mod store;

pub use cache::BlockCache;
pub use store::{ObjectStorage, ServerSideEncryption, StorageError};
