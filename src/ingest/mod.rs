//! Ingest: turning raw records into validated [`Request`]s (or dead letters).
//!
//! **Architecture invariant:** a request is validated against its model before it is
//! queued; everything downstream may assume its shape is right.

pub mod decode;
pub mod flatbuf;
pub mod json_input;
pub mod request;

pub use decode::{Decoder, Limits};
pub use request::{ContentType, Envelope, IdText, Priority, Request, Source};
