//! Topic administration: create missing topics at start-up, read partition counts.
//!
//! rdkafka's admin client returns futures; they are driven here by a minimal blocking
//! executor, so no async runtime is needed on this side of the process.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::client::{close_in_background, KafkaLayerError};

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

/// Partition count of each existing topic among `topics` (None when it does not exist).
pub fn partition_counts(
    cfg: &ClientConfig,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<Option<usize>>, KafkaLayerError> {
    let consumer: BaseConsumer = cfg.create()?;
    let md = consumer.fetch_metadata(None, timeout)?;
    let out = topics
        .iter()
        .map(|t| {
            md.topics()
                .iter()
                .find(|mt| mt.name() == *t && mt.error().is_none())
                .map(|mt| mt.partitions().len())
        })
        .collect();
    close_in_background(consumer);
    Ok(out)
}

/// Creates the topics of `topics` that do not exist yet, with `partitions` partitions each.
/// Returns the names it created.
pub fn ensure_topics(
    cfg: &ClientConfig,
    topics: &[&str],
    partitions: i32,
    timeout: Duration,
) -> Result<Vec<String>, KafkaLayerError> {
    let existing = partition_counts(cfg, topics, timeout)?;
    let missing: Vec<&str> =
        topics.iter().zip(existing).filter(|(_, n)| n.is_none()).map(|(t, _)| *t).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let admin: AdminClient<DefaultClientContext> = cfg.create()?;
    let new: Vec<NewTopic> =
        missing.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = block_on(admin.create_topics(new.iter(), &opts))?;
    let mut created = Vec::new();
    for r in results {
        match r {
            Ok(name) => created.push(name),
            Err((name, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists")
            }
            Err((name, code)) => {
                return Err(KafkaLayerError::Other(format!("creating topic {name}: {code}")))
            }
        }
    }
    Ok(created)
}
