//! Placeholder: the engine throughput benchmark (see benches/README.md).
fn main() {}
