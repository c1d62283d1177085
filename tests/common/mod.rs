//! Shared helpers for the integration tests: a generated model repository and request makers.
#![allow(dead_code)]

pub mod alloc;
pub mod broker;
pub mod deployfiles;
pub mod faultproxy;
pub mod kafka;
pub mod rawlog;
pub mod serve;
pub mod testkit;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use sluice::core::{Envelope, Limits, Priority, Source};
use sluice::decode::Decoder;
use sluice::models::cache::CacheSettings;
use sluice::models::{ModelCache, Repository};
use sluice::queue::Request;

/// A temporary repository with the demo models (`tiny-embed`, `tiny-sentiment`, `tabular`).
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub cache: Arc<ModelCache>,
}

impl TestRepo {
    pub fn new() -> Self {
        Self::with_settings(CacheSettings { capacity: 10, ttl: None, warmup_rows: 2 })
    }

    pub fn with_settings(settings: CacheSettings) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        testkit::write_demo_repository(dir.path()).expect("demo repository");
        let repo = Repository::open(dir.path()).expect("open repo");
        let cache = Arc::new(ModelCache::new(repo, settings));
        TestRepo { dir, cache }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Adds `name`/`version`: an MLP from 8 features to 2 raw outputs with relu hidden layers
    /// of the sizes in `hidden` (bigger layers make a genuinely slower model).
    pub fn add_mlp(&self, name: &str, version: &str, hidden: Vec<usize>, seed: u64) {
        let spec = testkit::MlpSpec {
            inputs: 8,
            hidden,
            outputs: 2,
            activation: "relu".into(),
            softmax: false,
        };
        testkit::write_mlp(self.dir.path(), name, version, &spec, seed).expect("write the MLP");
    }

    pub fn decoder(&self, limits: Limits) -> Decoder {
        Decoder::new(self.cache.clone(), limits, None)
    }
}

pub fn envelope(payload: impl Into<Bytes>, priority: Priority, offset: i64) -> Envelope {
    // One shared topic name, as the Kafka consumer has (no allocation per record).
    static TOPIC: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    let topic = TOPIC.get_or_init(|| "test".into()).clone();
    Envelope::new(payload.into(), Source { topic, partition: 0, offset }, priority)
}

/// Decodes a request that must be valid.
pub fn request(dec: &mut Decoder, json: &str, priority: Priority, offset: i64) -> Request {
    match dec.decode(envelope(json.to_string(), priority, offset)) {
        Ok(r) => r,
        Err((_, f)) => panic!("request {json} rejected: {f:?}"),
    }
}

/// A text request for `tiny-embed` whose input has about `words` words.
pub fn text_request(dec: &mut Decoder, id: &str, words: usize, priority: Priority) -> Request {
    let text = vec!["the"; words].join(" ");
    request(dec, &format!(r#"{{"id":"{id}","model":"tiny-embed","input":"{text}"}}"#), priority, 0)
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// An external tool the tests drive: the path in the environment variable `env_override` if
/// set (used as given), else `name` on the PATH; None when it is not there (the caller prints
/// why it skips).
pub fn find_tool(env_override: &str, name: &str) -> Option<PathBuf> {
    std::env::var_os(env_override).map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|p| p.is_file()))
    })
}
