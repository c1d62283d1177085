//! Decode: turning a record's bytes into a validated [`Request`](crate::queue::Request), or a
//! failure with its class.
//!
//! **Architecture invariant:** a request is validated against its model before it is
//! queued; everything downstream may assume its shape is right.

pub mod decoder;
pub mod flatbuf;
pub mod json;

pub use decoder::{Decoder, Undecoded};
