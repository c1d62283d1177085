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
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, ClientContext};

use super::client::{close_in_background, create, KafkaLayerError};
use super::oauth::Plain;

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

/// A client context that logs librdkafka's log lines and error events (as the default one
/// does) and keeps the last error's text for the caller's error.
#[derive(Default)]
struct ErrorRecorder {
    last: parking_lot::Mutex<Option<String>>,
}

impl ClientContext for ErrorRecorder {
    super::oauth::refresh_oauth_token!();

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "{fac} {log_message}");
                *self.last.lock() = Some(log_message.to_owned());
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac} {log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", error = %error, "{reason}");
        *self.last.lock() = Some(reason.to_owned());
    }
}

impl ConsumerContext for ErrorRecorder {}

/// Partition count of each existing topic among `topics` (None when it does not exist).
pub fn partition_counts(
    cfg: &ClientConfig,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<Option<usize>>, KafkaLayerError> {
    let consumer: BaseConsumer<ErrorRecorder> = create(cfg, ErrorRecorder::default())?;
    let md = match consumer.fetch_metadata(None, timeout) {
        Ok(md) => md,
        Err(e) => {
            // Why the brokers could not be reached (a TLS handshake, authentication, a
            // refused connection) arrives as error events on the client's queue: serve
            // them, so that the error says it rather than only "transport failure".
            for _ in 0..100 {
                if consumer.poll(Duration::ZERO).is_none() {
                    break;
                }
            }
            let last = consumer.context().last.lock().take();
            close_in_background(consumer);
            return Err(match last {
                Some(why) => {
                    KafkaLayerError::Other(format!("{e}; the last connection error: {why}"))
                }
                None => e.into(),
            });
        }
    };
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
    let admin: AdminClient<Plain> = create(cfg, Plain)?;
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
