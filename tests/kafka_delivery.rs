//! Delivery failures of outcomes (librdkafka's mock cluster injects produce errors): failed
//! deliveries are retried with backoff and then succeed; a record that can never be delivered
//! stops its partition's commits and is reported, never skipped.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestRepo;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, TopicPartitionList};
use sluice::config::Config;
use sluice::models::{ModelCache, Repository};
use sluice::pipeline::Pipeline;
use sluice::settings::Settings;

fn setup(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    repo: &TestRepo,
    max_attempts: u32,
) -> Config {
    let mut cfg = Config::default();
    cfg.kafka.bootstrap.servers = cluster.bootstrap_servers();
    cfg.kafka.consumer.group = "delivery-test".into();
    cfg.kafka.consumer.session_timeout_ms = 3000;
    cfg.kafka.consumer.heartbeat_interval_ms = 500;
    cfg.kafka.consumer.commit_interval_ms = 50;
    cfg.kafka.producer.max_attempts = max_attempts;
    cfg.streaming.inference.metrics.enabled = false;
    cfg.streaming.inference.model.repository = repo.path();
    let t = &cfg.kafka.topics.streaming;
    for name in [&t.input, &t.priority, &t.output, &t.dlq, &t.metrics] {
        cluster.create_topic(name, 1, 1).unwrap();
    }
    cfg
}

fn produce_inputs(cfg: &Config, n: usize) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.bootstrap.servers)
        .create()
        .unwrap();
    for i in 0..n {
        let v = format!(r#"{{"id":"r{i}","model":"tabular","input":[1,2,3,4,5,6,7,8]}}"#);
        p.send(BaseRecord::<(), _>::to(&cfg.kafka.topics.streaming.input).payload(&v)).unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

fn wait_for(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn committed_input_offset(cfg: &Config) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.bootstrap.servers)
        .set("group.id", &cfg.kafka.consumer.group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&cfg.kafka.topics.streaming.input, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
    let off = got.elements()[0].offset().to_raw().unwrap_or(-1);
    std::thread::spawn(move || drop(c));
    off
}

fn cache(cfg: &Config) -> Arc<ModelCache> {
    Arc::new(ModelCache::new(
        Repository::open(&cfg.streaming.inference.model.repository).unwrap(),
        Settings::from_config(cfg).cache,
    ))
}

#[test]
fn failed_deliveries_are_retried_and_then_committed() {
    let cluster = MockCluster::new(1).unwrap();
    let repo = TestRepo::new();
    let cfg = setup(&cluster, &repo, 5);
    produce_inputs(&cfg, 3);
    // The next two produce requests (the pipeline's first) fail with a non-retriable error:
    // librdkafka gives up at once and Sluice's own retry (with backoff) has to deliver.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 2],
    );
    let pipeline = Pipeline::start(&cfg, cache(&cfg)).unwrap();
    let stats = pipeline.emit_stats.clone();
    wait_for("3 deliveries", Duration::from_secs(60), || {
        stats.delivered.load(Ordering::Relaxed) >= 3
    });
    assert!(stats.delivery_retries.load(Ordering::Relaxed) >= 1, "the failed sends were retried");
    assert_eq!(stats.undeliverable.load(Ordering::Relaxed), 0);
    pipeline.stop();
    assert_eq!(committed_input_offset(&cfg), 3, "all three offsets committed after delivery");
}

#[test]
fn an_undeliverable_outcome_stops_its_partitions_commits() {
    let cluster = MockCluster::new(1).unwrap();
    let repo = TestRepo::new();
    let cfg = setup(&cluster, &repo, 2);
    produce_inputs(&cfg, 3);
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 1000],
    );
    let pipeline = Pipeline::start(&cfg, cache(&cfg)).unwrap();
    let stats = pipeline.emit_stats.clone();
    wait_for("3 undeliverable outcomes", Duration::from_secs(60), || {
        stats.undeliverable.load(Ordering::Relaxed) >= 3
    });
    let blocked = pipeline.source().tracker.lock().blocked();
    assert_eq!(blocked.len(), 1, "the input partition is blocked: {blocked:?}");
    assert_eq!(blocked[0].2, 0, "at the first undeliverable offset");
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    pipeline.stop();
    assert!(committed_input_offset(&cfg) <= 0, "nothing committed past an undeliverable outcome");
}
