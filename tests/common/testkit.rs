//! The seeded model generators as tests and benches use them: everything of
//! `sluice::demo::models` (tiny BERT embedding and classifier, MLP, tokenizer.json,
//! sluice.toml, [`SeededRng`]) plus what only tests and benches need.
//!
//! Integration tests with `mod common;` reach it as `common::testkit`; other test binaries and
//! benches include the file alone: `#[path = "common/testkit.rs"] mod testkit;` (from
//! `benches/`: `#[path = "../tests/common/testkit.rs"]`).
#![allow(dead_code, unused_imports)]

pub use sluice::demo::models::*;

/// Draws of [`SeededRng`] that only tests and benches use.
pub trait SeededRngExt {
    /// Returns a uniform integer in `0..n` (`n` must be non-zero).
    fn below(&mut self, n: u64) -> u64;
}

impl SeededRngExt for SeededRng {
    fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "SeededRng::below(0)");
        // Multiply-shift: negligible bias for the small ranges tests use.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}
