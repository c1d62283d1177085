//! Execute: lanes (one OS thread each), their executors, and filling a lane's staging buffer
//! from a batch of requests.
//!
//! **Architecture invariant:** only a lane thread runs a model on the hot path; a CUDA lane is
//! the only thread that touches its stream. The shadow thread (`shadow`) computes copies of
//! computed batches with a model's shadow version, off the hot path, on the CPU.

pub mod circuit;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod executor;
pub mod fill;
pub mod lane;
pub mod reference;
pub mod shadow;

pub use executor::{CpuExecutor, Executor};
pub use lane::{LaneSettings, LaneShared};
