//! Emit: outcomes (results and dead letters) and how they are written.
//!
//! **Architecture invariant:** every record that enters Sluice leaves as exactly one
//! [`Outcome`], through one completion channel.

pub mod outcome;
pub mod render;

pub use outcome::{ErrorClass, Failure, Outcome, Timings, Verdict};
