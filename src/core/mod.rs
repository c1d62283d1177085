//! The vocabulary every stage shares: a record's envelope and source coordinates, the
//! outcome and failure with its error class, the host staging buffers, a batch's output,
//! the size limits, and the stage counters.
//!
//! **Architecture invariant:** this module imports nothing from the rest of Sluice. Model
//! code, the batcher, the decoders, the Kafka and JSONL threads and the control plane all
//! depend downward on it (the `tidy` test checks the layer order).

pub mod envelope;
pub mod limits;
pub mod outcome;
pub mod output;
pub mod staging;
pub mod stats;

pub use envelope::{
    now_epoch_ms, route_key, ContentType, Envelope, IdText, InputKind, Priority, RecordHeaders,
    Source, REPLAY_COUNT_HEADER,
};
pub use limits::{BatchCaps, Limits};
pub use outcome::{bounded_reason, panic_message, MAX_REASON_BYTES};
pub use outcome::{ErrorClass, Failure, InvalidInput, ModelId, Outcome, Timings, Verdict};
pub use output::{argmax, BatchOutput, OutputKind};
pub use staging::{HostStaging, PinnedBlock, StagingBuf};
pub use stats::{
    new_histogram, CacheStats, CounterReading, EmitStats, EngineStats, IngestStats, LaneMemory,
    LaneState,
};
