//! An in-process broker and two plain clients, for `sluice demo`: librdkafka's mock cluster,
//! a producer that waits while its queue is full, and a reader of a few topics. (The
//! pipeline's own clients are `source` and `sink`.)

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use super::client::{close_in_background, KafkaLayerError};

/// librdkafka's in-process mock cluster (one broker). Dropping it stops the broker.
pub struct LocalBroker {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
}

impl LocalBroker {
    /// Starts a one-broker cluster.
    pub fn start() -> Result<LocalBroker, KafkaLayerError> {
        Ok(LocalBroker { cluster: MockCluster::new(1)? })
    }

    /// Its bootstrap address.
    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// Creates `topic` with `partitions` partitions (the mock cluster has no CreateTopics
    /// handler, so clients cannot).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), KafkaLayerError> {
        Ok(self.cluster.create_topic(topic, partitions, 1)?)
    }
}

fn client(bootstrap: &str, extra: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("broker.address.family", "v4");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c
}

/// A plain producer (`linger.ms` 5).
pub struct PlainProducer {
    producer: BaseProducer,
}

impl PlainProducer {
    /// A producer to `bootstrap`.
    pub fn new(bootstrap: &str) -> Result<PlainProducer, KafkaLayerError> {
        Ok(PlainProducer { producer: client(bootstrap, &[("linger.ms", "5")]).create()? })
    }

    /// Queues one record, serving delivery reports while librdkafka's queue is full.
    pub fn send(&self, topic: &str, key: &[u8], value: &[u8]) {
        let mut rec = BaseRecord::to(topic).payload(value).key(key);
        loop {
            match self.producer.send(rec) {
                Ok(()) => return,
                Err((_, back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(5));
                }
            }
        }
    }

    /// Serves delivery reports.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Waits up to `timeout` for queued records to be delivered.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}

/// One record read by a [`TopicReader`].
pub struct ReadRecord {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Reads a few topics from their beginning (its own group, no commits).
pub struct TopicReader {
    consumer: Option<BaseConsumer>,
}

impl TopicReader {
    /// A reader of `topics` in consumer group `group`.
    pub fn new(bootstrap: &str, group: &str, topics: &[&str]) -> Result<Self, KafkaLayerError> {
        let consumer: BaseConsumer = client(
            bootstrap,
            &[
                ("group.id", group),
                ("auto.offset.reset", "earliest"),
                ("enable.auto.commit", "false"),
                ("fetch.wait.max.ms", "5"),
            ],
        )
        .create()?;
        consumer.subscribe(topics)?;
        Ok(TopicReader { consumer: Some(consumer) })
    }

    /// Polls until the group has assigned this reader its partitions (true), or `timeout`
    /// passes (false). Only for a reader whose topics are still empty: a record polled while
    /// waiting is dropped.
    pub fn wait_assigned(&self, timeout: Duration) -> bool {
        let Some(c) = self.consumer.as_ref() else { return false };
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if c.assignment().is_ok_and(|a| a.count() > 0) {
                return true;
            }
            let _ = c.poll(Duration::from_millis(50));
        }
        false
    }

    /// The next record, waiting up to `timeout`; errors are skipped.
    pub fn poll(&self, timeout: Duration) -> Option<ReadRecord> {
        let m = self.consumer.as_ref()?.poll(timeout)?.ok()?;
        Some(ReadRecord {
            topic: m.topic().to_string(),
            payload: m.payload().unwrap_or_default().to_vec(),
        })
    }
}

impl Drop for TopicReader {
    fn drop(&mut self) {
        if let Some(c) = self.consumer.take() {
            close_in_background(c);
        }
    }
}
