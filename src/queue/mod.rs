//! Queue: the two bounded lock-free rings and the per-lane batcher.

pub mod batcher;
pub mod rings;

pub use batcher::{BatchPolicy, Batcher};
pub use rings::Rings;
