//! Kafka's record batch format (magic 2): the header layout and the stored batches
//! read back, the records inside a batch, and the compression codecs. Nothing here
//! knows about partitions, offsets assigned by the state machine or the object store.

pub mod batch;
pub mod compression;
pub mod records;

pub use batch::ProducerBatch;
