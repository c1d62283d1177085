//! Queue: the validated request, the two bounded lock-free rings and the per-lane batcher.

pub mod batcher;
pub mod request;
pub mod rings;

pub use batcher::{BatchPolicy, Batcher};
pub use request::Request;
pub use rings::Rings;
