//! Delivery failures of outcomes (librdkafka's mock cluster injects produce errors): failed
//! deliveries are retried with backoff and then succeed; an outcome the broker keeps refusing
//! holds its partition's commits, is reported, and is delivered once the broker takes it
//! again; an outcome refused because of the record itself (its size) is sent again as a cut
//! dead letter, so that it can never block its partition.

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
    for name in [&t.input, &t.priority, &t.output, &t.dlq, &t.metrics, &t.shadow] {
        cluster.create_topic(name, 1, 1).unwrap();
    }
    cfg
}

fn produce_inputs(cfg: &Config, n: usize) {
    produce_keyed(cfg, n, None);
}

fn request(i: usize) -> String {
    format!(r#"{{"id":"r{i}","model":"tabular","input":[1,2,3,4,5,6,7,8]}}"#)
}

fn produce_keyed(cfg: &Config, n: usize, key: Option<&[u8]>) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.bootstrap.servers)
        .create()
        .unwrap();
    for i in 0..n {
        let v = request(i);
        let mut r = BaseRecord::<[u8], _>::to(&cfg.kafka.topics.streaming.input).payload(&v);
        if let Some(k) = key {
            r = r.key(k);
        }
        p.send(r).unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

/// A record read back: key, value, headers.
struct Read {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Read {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Every record of partition 0 of `topic` (polling until `n` or 10 s of silence).
fn read_topic(cfg: &Config, topic: &str, n: usize) -> Vec<Read> {
    use rdkafka::message::{Headers, Message};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.bootstrap.servers)
        .set("group.id", "delivery-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let mut quiet_since = Instant::now();
    while out.len() < n && quiet_since.elapsed() < Duration::from_secs(10) {
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                quiet_since = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let v = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                (h.key.to_owned(), v.unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Read {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    std::thread::spawn(move || drop(c));
    out
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
fn an_undeliverable_outcome_holds_commits_until_the_broker_takes_it() {
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
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
    assert_eq!(pipeline.source().tracker.lock().take_commits(), vec![], "nothing committable");
    // The broker takes records again: the held outcomes go out without a restart.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    wait_for("3 deliveries after the broker recovered", Duration::from_secs(60), || {
        stats.delivered.load(Ordering::Relaxed) >= 3
    });
    pipeline.stop();
    assert_eq!(committed_input_offset(&cfg), 3, "committed to the end once delivered");
    assert_eq!(read_topic(&cfg, &cfg.kafka.topics.streaming.output, 3).len(), 3);
}

#[test]
fn a_result_refused_for_its_size_becomes_a_cut_dead_letter_and_commits_go_on() {
    let cluster = MockCluster::new(1).unwrap();
    let repo = TestRepo::new();
    let cfg = setup(&cluster, &repo, 5);
    let key: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    produce_keyed(&cfg, 1, Some(&key));
    // The broker refuses the result (as it would a result over its size limit).
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 1],
    );
    let pipeline = Pipeline::start(&cfg, cache(&cfg)).unwrap();
    let stats = pipeline.emit_stats.clone();
    wait_for("the cut dead letter's delivery", Duration::from_secs(60), || {
        stats.delivered.load(Ordering::Relaxed) >= 1
    });
    pipeline.stop();
    assert_eq!(stats.cut_outcomes.load(Ordering::Relaxed), 1);
    assert_eq!(committed_input_offset(&cfg), 1, "the refused result did not block the partition");
    assert!(read_topic(&cfg, &cfg.kafka.topics.streaming.output, 1).is_empty(), "no result");
    let dlq = read_topic(&cfg, &cfg.kafka.topics.streaming.dlq, 1);
    assert_eq!(dlq.len(), 1, "exactly one outcome for the record");
    let d = &dlq[0];
    assert_eq!(d.key.as_deref(), Some(&key[..1024]), "key cut to deadLetterKeyBytes");
    assert_eq!(d.value, request(0).into_bytes(), "the request, whole (it is under 64 KiB)");
    assert_eq!(d.header("sluice.error.class"), Some("too_large"));
    let reason = d.header("sluice.error.reason").unwrap_or_default();
    assert!(reason.contains("was refused"), "{reason}");
    assert!(reason.contains("1024 of 10000 key bytes"), "{reason}");
    assert_eq!(d.header("sluice.original.key.bytes"), Some("10000"));
    let fnv = format!("{:016x}", sluice::render::fnv1a64(&key));
    assert_eq!(d.header("sluice.original.key.fnv1a64"), Some(fnv.as_str()));
    assert_eq!(d.header("sluice.source.offset"), Some("0"));
}

#[test]
fn a_dead_letter_refused_twice_is_sent_as_headers_only() {
    let cluster = MockCluster::new(1).unwrap();
    let repo = TestRepo::new();
    let cfg = setup(&cluster, &repo, 5);
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &cfg.kafka.bootstrap.servers)
        .create()
        .unwrap();
    let bad = br#"{"id":"bad","model":"no-such-model","input":[1]}"#;
    p.send(BaseRecord::to(&cfg.kafka.topics.streaming.input).key(&b"k"[..]).payload(&bad[..]))
        .unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 2],
    );
    let pipeline = Pipeline::start(&cfg, cache(&cfg)).unwrap();
    let stats = pipeline.emit_stats.clone();
    wait_for("the bare dead letter's delivery", Duration::from_secs(60), || {
        stats.delivered.load(Ordering::Relaxed) >= 1
    });
    pipeline.stop();
    assert_eq!(stats.cut_outcomes.load(Ordering::Relaxed), 2, "whole → cut → headers only");
    assert_eq!(committed_input_offset(&cfg), 1);
    let dlq = read_topic(&cfg, &cfg.kafka.topics.streaming.dlq, 1);
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(d.key, None);
    assert!(d.value.is_empty());
    assert_eq!(d.header("sluice.error.class"), Some("unknown_model"));
    assert_eq!(d.header("sluice.original.key.bytes"), Some("1"));
    assert_eq!(d.header("sluice.original.value.bytes"), Some(bad.len().to_string().as_str()));
    let reason = d.header("sluice.error.reason").unwrap_or_default();
    assert!(reason.contains("no-such-model") && reason.contains("headers only"), "{reason}");
}

#[test]
fn a_failed_offset_commit_is_retried_while_the_partition_is_idle() {
    let cluster = MockCluster::new(1).unwrap();
    let repo = TestRepo::new();
    let cfg = setup(&cluster, &repo, 5);
    produce_inputs(&cfg, 3);
    // The pipeline's first commits fail; nothing more arrives afterwards, so only a retry of
    // the failed commit can move the group's offset.
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3],
    );
    let pipeline = Pipeline::start(&cfg, cache(&cfg)).unwrap();
    let stats = pipeline.emit_stats.clone();
    wait_for("3 deliveries", Duration::from_secs(60), || {
        stats.delivered.load(Ordering::Relaxed) >= 3
    });
    let ingest = pipeline.source().stats.clone();
    eprintln!(
        "DEBUG commits {} failures {} committed {}",
        ingest.commits.load(Ordering::Relaxed),
        ingest.commit_failures.load(Ordering::Relaxed),
        committed_input_offset(&cfg)
    );
    wait_for("a failed commit", Duration::from_secs(60), || {
        ingest.commit_failures.load(Ordering::Relaxed) >= 1
    });
    // Still running, idle: the failed commit is sent again and reaches the broker.
    wait_for("offset 3 committed while running", Duration::from_secs(60), || {
        committed_input_offset(&cfg) == 3
    });
    // The broker stores the offset a moment before the commit thread books its answer.
    let input = cfg.kafka.topics.streaming.input.clone();
    wait_for("the tracker books offset 3 as confirmed", Duration::from_secs(60), || {
        pipeline.source().tracker.lock().confirmed(&input, 0) == Some(3)
    });
    pipeline.stop();
}
