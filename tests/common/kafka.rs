//! Helpers for the pipeline tests against a real broker: per-test topics, a pipeline
//! configuration for them, and readers of the outcomes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use sluice::config::Config;
use sluice::models::{ModelCache, Repository};
use sluice::settings::Settings;

use super::broker::{Consumed, TestBroker};

/// A record to produce: key, value, headers.
pub type Record = (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

pub struct Topics {
    pub input: String,
    pub priority: String,
    pub output: String,
    pub dlq: String,
    pub metrics: String,
    pub group: String,
}

pub fn setup(b: &TestBroker, prefix: &str, input_partitions: i32) -> Topics {
    let p = TestBroker::unique(prefix);
    let t = Topics {
        input: format!("{p}-in"),
        priority: format!("{p}-prio"),
        output: format!("{p}-out"),
        dlq: format!("{p}-dlq"),
        metrics: format!("{p}-metrics"),
        group: format!("{p}-group"),
    };
    b.create_topic(&t.input, input_partitions).unwrap();
    for topic in [&t.priority, &t.output, &t.dlq, &t.metrics] {
        b.create_topic(topic, 1).unwrap();
    }
    t
}

pub fn config(b: &TestBroker, t: &Topics, repo: &std::path::Path) -> Config {
    // `SLUICE_LOG=sluice=debug cargo test ...` shows the pipeline's log of a failing test.
    if std::env::var_os("SLUICE_LOG").is_some() {
        sluice::telemetry::logging::init(false, "info");
    }
    let mut cfg = Config::default();
    cfg.kafka.bootstrap.servers = b.bootstrap.clone();
    cfg.kafka.consumer.group = t.group.clone();
    cfg.kafka.consumer.session_timeout_ms = 3000;
    cfg.kafka.consumer.heartbeat_interval_ms = 500;
    cfg.kafka.consumer.commit_interval_ms = 100;
    let s = &mut cfg.kafka.topics.streaming;
    s.input = t.input.clone();
    s.priority = t.priority.clone();
    s.output = t.output.clone();
    s.dlq = t.dlq.clone();
    s.metrics = t.metrics.clone();
    s.control = format!("{}-control", t.group);
    cfg.streaming.inference.model.repository = repo.to_path_buf();
    cfg.streaming.inference.metrics.reporting_interval_seconds = 1;
    cfg
}

pub fn cache_for(cfg: &Config) -> Arc<ModelCache> {
    let repo = Repository::open(&cfg.streaming.inference.model.repository).unwrap();
    Arc::new(ModelCache::new(repo, Settings::from_config(cfg).cache))
}

pub fn json(v: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

pub fn header<'a>(c: &'a Consumed, name: &str) -> Option<&'a str> {
    c.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// (topic, partition, offset) of the input an outcome belongs to.
pub fn source_of(c: &Consumed, is_dlq: bool) -> (String, i32, i64) {
    if is_dlq {
        (
            header(c, "sluice.source.topic").unwrap().to_string(),
            header(c, "sluice.source.partition").unwrap().parse().unwrap(),
            header(c, "sluice.source.offset").unwrap().parse().unwrap(),
        )
    } else {
        let v: serde_json::Value = serde_json::from_slice(&c.value).unwrap();
        (
            v["source"]["topic"].as_str().unwrap().to_string(),
            v["source"]["partition"].as_i64().unwrap() as i32,
            v["source"]["offset"].as_i64().unwrap(),
        )
    }
}

/// Reads outputs and dead letters until `n` outcomes in all (or the timeout).
pub fn outcomes(
    b: &TestBroker,
    t: &Topics,
    n: usize,
    timeout: Duration,
) -> (Vec<Consumed>, Vec<Consumed>) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let out = b.consume(&t.output, n, Duration::from_secs(2).min(left));
        let dlq = b.consume(&t.dlq, n.saturating_sub(out.len()), Duration::from_secs(2).min(left));
        if out.len() + dlq.len() >= n || Instant::now() >= deadline {
            return (out, dlq);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The group's committed offset per input partition.
pub fn committed(b: &TestBroker, t: &Topics, partitions: i32) -> Vec<i64> {
    let mut cfg = b.client_config();
    cfg.set("group.id", &t.group);
    let c: BaseConsumer = cfg.create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&t.input, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    let offs = (0..partitions)
        .map(|p| got.find_partition(&t.input, p).and_then(|e| e.offset().to_raw()).unwrap_or(-1))
        .collect();
    std::thread::spawn(move || drop(c));
    offs
}
