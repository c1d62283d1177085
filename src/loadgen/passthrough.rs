//! The passthrough baseline: consume → produce with Sluice's own client settings and no model.
//! What it reaches is the floor that the broker and the Kafka client impose on any pipeline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::consumer::close_in_background;
use crate::kafka::{admin, base_client_config, consumer_config, producer_config};

/// What a passthrough run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassthroughReport {
    pub forwarded: u64,
    pub commits: u64,
}

/// Forwards every record of the input and priority topics to the output topic (same key,
/// value and headers) until `stop` is set. Offsets are committed only after the forwarded
/// records are acknowledged (a flush every `commitIntervalMs`), as Sluice does. `on_ready`
/// runs once the consumer has its first partitions.
pub fn run(cfg: &Config, stop: &AtomicBool, mut on_ready: impl FnMut()) -> anyhow::Result<PassthroughReport> {
    let topics = &cfg.kafka.topics.streaming;
    let instance = format!("sluice-passthrough-{}", std::process::id());
    let all = [topics.input.as_str(), topics.priority.as_str(), topics.output.as_str()];
    admin::ensure_topics(&base_client_config(cfg, &format!("{instance}-admin")), &all, 1, Duration::from_secs(10)).context("creating topics")?;
    let producer: BaseProducer = producer_config(cfg, &format!("{instance}-producer")).create().context("creating the producer")?;
    let consumer: BaseConsumer = consumer_config(cfg, &format!("{instance}-consumer")).create().context("creating the consumer")?;
    consumer.subscribe(&[topics.priority.as_str(), topics.input.as_str()]).context("subscribing")?;
    let commit_every = Duration::from_millis(cfg.kafka.consumer.commit_interval_ms.max(1));
    let mut pending: HashMap<(String, i32), i64> = HashMap::new();
    let mut report = PassthroughReport::default();
    let mut last_commit = Instant::now();
    let mut ready = false;
    let commit = |pending: &mut HashMap<(String, i32), i64>, mode: CommitMode, report: &mut PassthroughReport| -> anyhow::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        producer.flush(Duration::from_secs(30)).context("waiting for acknowledgements")?;
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in pending.drain() {
            tpl.add_partition_offset(&t, p, Offset::Offset(o + 1))?;
        }
        consumer.commit(&tpl, mode).context("committing")?;
        report.commits += 1;
        Ok(())
    };
    while !stop.load(Ordering::SeqCst) {
        if !ready && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            ready = true;
            on_ready();
        }
        match consumer.poll(Duration::from_millis(10)) {
            Some(Ok(m)) => {
                let mut rec = BaseRecord::to(&topics.output).payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(h) = m.headers() {
                    rec = rec.headers(h.detach());
                }
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                            rec = back;
                            producer.poll(Duration::from_millis(1));
                        }
                        Err((e, _)) => return Err(e).context("forwarding a record"),
                    }
                }
                report.forwarded += 1;
                let e = pending.entry((m.topic().to_string(), m.partition())).or_insert(m.offset());
                *e = (*e).max(m.offset());
            }
            Some(Err(e)) => tracing::warn!(error = %e, "passthrough consumer"),
            None => {}
        }
        producer.poll(Duration::ZERO);
        if last_commit.elapsed() >= commit_every {
            commit(&mut pending, CommitMode::Async, &mut report)?;
            last_commit = Instant::now();
        }
    }
    commit(&mut pending, CommitMode::Sync, &mut report)?;
    close_in_background(consumer);
    Ok(report)
}
