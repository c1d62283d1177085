//! Execute: lanes (one OS thread each), their executors and staging buffers.
//!
//! **Architecture invariant:** only a lane thread runs a model; a CUDA lane is the only
//! thread that touches its stream.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod executor;
pub mod lane;
pub mod reference;
pub mod stage;
pub mod staging;

pub use executor::{CpuExecutor, Executor};
pub use lane::{LaneSettings, LaneShared};
pub use staging::{HostStaging, PinnedBlock, StagingBuf};
