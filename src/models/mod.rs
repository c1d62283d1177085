//! Model repository, cache and the candle models themselves.

pub mod wordpiece;
