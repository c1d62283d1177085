//! Zero-copy payloads: a Kafka message's value as `bytes::Bytes` without copying it.
//!
//! The `Bytes` owns the librdkafka message (and an `Arc` of the consumer that produced it),
//! so the payload stays valid wherever the request travels — rings, batcher, lane, DLQ —
//! and the only copy of its bytes is the one into the lane's staging buffer. The key is
//! shared the same way, and the message's bytes are counted while it lives.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Headers, Message};

use crate::core::{IngestStats, RecordHeaders};

/// Owns one consumed message, and counts its bytes in `held` while it lives. Field order
/// matters: the message is dropped before the consumer reference, so the client outlives
/// every message it handed out.
struct OwnedMessage<C: ConsumerContext + 'static> {
    msg: BorrowedMessage<'static>,
    held: Arc<IngestStats>,
    bytes: u64,
    _consumer: Arc<BaseConsumer<C>>,
}

impl<C: ConsumerContext + 'static> Drop for OwnedMessage<C> {
    fn drop(&mut self) {
        self.held.held_bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl<C: ConsumerContext + 'static> RecordHeaders for OwnedMessage<C> {
    fn visit(&self, f: &mut dyn FnMut(&str, &[u8])) {
        if let Some(hs) = self.msg.headers() {
            for h in hs.iter() {
                f(h.key, h.value.unwrap_or(&[]));
            }
        }
    }
}

/// The message's value, as a `Bytes` owner.
struct ValueOf<C: ConsumerContext + 'static>(Arc<OwnedMessage<C>>);
/// The message's key, as a `Bytes` owner.
struct KeyOf<C: ConsumerContext + 'static>(Arc<OwnedMessage<C>>);

impl<C: ConsumerContext + 'static> AsRef<[u8]> for ValueOf<C> {
    fn as_ref(&self) -> &[u8] {
        self.0.msg.payload().unwrap_or(&[])
    }
}

impl<C: ConsumerContext + 'static> AsRef<[u8]> for KeyOf<C> {
    fn as_ref(&self) -> &[u8] {
        self.0.msg.key().unwrap_or(&[])
    }
}

/// The key (if any) and value of `msg` (borrowed from `consumer`) as `Bytes`, without copying
/// either, and its headers when it has any (read only if the record becomes a dead letter):
/// all share the librdkafka message, which lives until the last of them is dropped. Its value
/// and key bytes count in `held.held_bytes` until then. (A record with neither key nor value
/// bytes keeps no headers: it can only be a `parse` dead letter.)
pub fn message_bytes<C: ConsumerContext + 'static>(
    consumer: &Arc<BaseConsumer<C>>,
    msg: BorrowedMessage<'_>,
    held: &Arc<IngestStats>,
) -> (Option<Bytes>, Bytes, Option<Arc<dyn RecordHeaders>>) {
    let value_len = msg.payload().map_or(0, <[u8]>::len);
    let key_len = msg.key().map(<[u8]>::len);
    if value_len == 0 && key_len.unwrap_or(0) == 0 {
        return (key_len.map(|_| Bytes::new()), Bytes::new(), None);
    }
    let has_headers = msg.headers().is_some_and(|h| h.count() > 0);
    let bytes = (value_len + key_len.unwrap_or(0)) as u64;
    held.held_bytes.fetch_add(bytes, Ordering::Relaxed);
    // SAFETY: a `BorrowedMessage` is tied to its consumer's lifetime only so that it cannot
    // outlive the client. `OwnedMessage` keeps that client alive through the `Arc` (dropped
    // after the message, by field order), which gives the same guarantee at run time.
    // librdkafka messages are safe to read and destroy from any thread (`BorrowedMessage`
    // is `Send + Sync`).
    let msg: BorrowedMessage<'static> =
        unsafe { std::mem::transmute::<BorrowedMessage<'_>, BorrowedMessage<'static>>(msg) };
    let owned =
        Arc::new(OwnedMessage { msg, held: held.clone(), bytes, _consumer: consumer.clone() });
    let key = key_len.map(|_| Bytes::from_owner(KeyOf(owned.clone())));
    let headers = has_headers.then(|| owned.clone() as Arc<dyn RecordHeaders>);
    (key, Bytes::from_owner(ValueOf(owned)), headers)
}
