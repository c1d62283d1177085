//! Zero-copy payloads: a Kafka message's value as `bytes::Bytes` without copying it.
//!
//! The `Bytes` owns the librdkafka message (and an `Arc` of the consumer that produced it),
//! so the payload stays valid wherever the request travels — rings, batcher, lane, DLQ —
//! and the only copy of its bytes is the one into the lane's staging buffer.

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Message};

/// Owns one consumed message. Field order matters: the message is dropped before the
/// consumer reference, so the client outlives every message it handed out.
struct OwnedPayload<C: ConsumerContext + 'static> {
    msg: BorrowedMessage<'static>,
    _consumer: Arc<BaseConsumer<C>>,
}

impl<C: ConsumerContext + 'static> AsRef<[u8]> for OwnedPayload<C> {
    fn as_ref(&self) -> &[u8] {
        self.msg.payload().unwrap_or(&[])
    }
}

/// Wraps `msg` (borrowed from `consumer`) as `Bytes` without copying its value.
pub fn payload_bytes<C: ConsumerContext + 'static>(
    consumer: &Arc<BaseConsumer<C>>,
    msg: BorrowedMessage<'_>,
) -> Bytes {
    if msg.payload().is_none_or(|p| p.is_empty()) {
        return Bytes::new();
    }
    // SAFETY: a `BorrowedMessage` is tied to its consumer's lifetime only so that it cannot
    // outlive the client. `OwnedPayload` keeps that client alive through the `Arc` (dropped
    // after the message, by field order), which gives the same guarantee at run time.
    // librdkafka messages are safe to read and destroy from any thread (`BorrowedMessage`
    // is `Send + Sync`).
    let msg: BorrowedMessage<'static> =
        unsafe { std::mem::transmute::<BorrowedMessage<'_>, BorrowedMessage<'static>>(msg) };
    Bytes::from_owner(OwnedPayload { msg, _consumer: consumer.clone() })
}
