//! The configuration data model: one struct per YAML section, with the documented defaults.
//!
//! Rust fields are snake_case; serde renames them to the camelCase YAML keys. Every struct is
//! `#[serde(default)]`, so a partial document deserializes to the defaults for what it omits,
//! but [`Config::load`](super::Config::load) and friends are the intended entry points: they
//! add environment overrides, full-path error messages and validation.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::{BatchCaps, Limits};

/// The whole Sluice configuration (the root of `sluice.yaml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `kafka`: brokers, consumer group and topic names.
    pub kafka: KafkaConfig,
    /// `streaming`: the inference pipeline.
    pub streaming: StreamingConfig,
    /// `gpu`: CUDA devices (only used by builds with the `cuda` feature).
    pub gpu: GpuConfig,
    /// `control`: the HTTP control endpoint.
    pub control: ControlConfig,
    /// `log`: logging format and filter.
    pub log: LogConfig,
}

// ---------------------------------------------------------------------------------------------
// kafka
// ---------------------------------------------------------------------------------------------

/// `kafka`: how to reach the brokers and which topics to use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// `kafka.bootstrap`: broker addresses.
    pub bootstrap: KafkaBootstrap,
    /// `kafka.security`: TLS and SASL towards the brokers.
    pub security: KafkaSecurity,
    /// `kafka.consumer`: consumer-group settings.
    pub consumer: KafkaConsumer,
    /// `kafka.producer`: producer settings.
    pub producer: KafkaProducer,
    /// `kafka.topics`: topic names.
    pub topics: KafkaTopics,
    /// `kafka.properties`: further librdkafka properties for every client (consumer, producer,
    /// admin), applied over Sluice's own settings. Keys Sluice owns are refused
    /// ([`OWNED_PROPERTIES`]).
    pub properties: KafkaProperties,
}

/// librdkafka properties Sluice sets itself and `kafka.properties` may not override: the
/// delivery guarantees depend on them (offset commits, idempotence, transactions, isolation),
/// or they have their own configuration key (named after the `=`), which is where secrets are
/// kept out of logs.
pub const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "kafka.bootstrap.servers"),
    ("metadata.broker.list", "kafka.bootstrap.servers"),
    ("client.id", "set per client by Sluice"),
    ("group.id", "kafka.consumer.group"),
    ("group.instance.id", "at-least-once offset handling"),
    ("group.protocol", "the rebalance handling (eager assignment)"),
    ("partition.assignment.strategy", "the rebalance handling (eager assignment)"),
    ("auto.offset.reset", "a group without committed offsets starts at the earliest offset"),
    ("enable.auto.commit", "at-least-once offset handling"),
    ("enable.auto.offset.store", "at-least-once offset handling"),
    ("auto.commit.interval.ms", "kafka.consumer.commitIntervalMs"),
    ("isolation.level", "exactly-once reads (read_committed)"),
    ("enable.partition.eof", "the ingest loop"),
    ("session.timeout.ms", "kafka.consumer.sessionTimeoutMs"),
    ("heartbeat.interval.ms", "kafka.consumer.heartbeatIntervalMs"),
    ("max.poll.interval.ms", "kafka.consumer.revokeTimeoutMs"),
    ("fetch.wait.max.ms", "kafka.consumer.fetchWaitMaxMs"),
    ("receive.message.max.bytes", "streaming.inference.limits.maxRecordBytes"),
    ("message.max.bytes", "streaming.inference.limits.maxRecordBytes"),
    ("enable.idempotence", "at-least-once and exactly-once delivery"),
    ("acks", "at-least-once and exactly-once delivery (acks=all)"),
    ("request.required.acks", "at-least-once and exactly-once delivery (acks=all)"),
    ("transactional.id", "streaming.inference.processing.transactions.instanceId"),
    ("transaction.timeout.ms", "streaming.inference.processing.transactions.timeoutMs"),
    ("linger.ms", "kafka.producer.lingerMs"),
    ("queue.buffering.max.ms", "kafka.producer.lingerMs"),
    ("message.timeout.ms", "kafka.producer.deliveryTimeoutMs"),
    ("delivery.timeout.ms", "kafka.producer.deliveryTimeoutMs"),
    ("compression.type", "kafka.producer.compression"),
    ("compression.codec", "kafka.producer.compression"),
    ("security.protocol", "kafka.security.protocol"),
    ("ssl.ca.location", "kafka.security.ssl.caFile"),
    ("ssl.certificate.location", "kafka.security.ssl.certificateFile"),
    ("ssl.key.location", "kafka.security.ssl.keyFile"),
    ("ssl.key.password", "kafka.security.ssl.keyPassword / keyPasswordFile"),
    ("ssl.endpoint.identification.algorithm", "kafka.security.ssl.verifyHostname"),
    ("sasl.mechanism", "kafka.security.sasl.mechanism"),
    ("sasl.mechanisms", "kafka.security.sasl.mechanism"),
    ("sasl.username", "kafka.security.sasl.username"),
    ("sasl.password", "kafka.security.sasl.password / passwordFile"),
    ("sasl.oauthbearer.config", "kafka.security.sasl.oauthbearer"),
    (
        "sasl.oauthbearer.method",
        "kafka.security.sasl.oauthbearer (librdkafka's OIDC token fetch is not built in)",
    ),
    ("enable.sasl.oauthbearer.unsecure.jwt", "kafka.security.sasl.oauthbearer"),
];

/// Whether a librdkafka property's value is secret by its name (a password, a secret, a
/// private key or a JAAS/OAuth configuration): such `kafka.properties` values are redacted
/// like the `kafka.security` secrets.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "key.pem", "sasl.jaas", "oauthbearer.config", "token"]
        .iter()
        .any(|s| k.contains(s))
}

/// A secret configuration value (a password). `Debug` never shows it;
/// [`Config::redacted`](super::Config::redacted) replaces it for display. Read it with
/// [`expose`](Self::expose), only to hand it to the client that needs it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `s`.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// `kafka.properties`: librdkafka property name to value (numbers and booleans are taken as
/// their text). `Debug` redacts the values of [secret-looking](is_secret_property) keys.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(
    #[serde(deserialize_with = "scalar_map::deserialize")] pub BTreeMap<String, String>,
);

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, if is_secret_property(k) { REDACTED } else { v.as_str() })),
            )
            .finish()
    }
}

/// `kafka.security`: how every client authenticates to the brokers and encrypts its
/// connections (librdkafka's `security.protocol`, `ssl.*` and `sasl.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSecurity {
    /// `protocol`: `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub protocol: SecurityProtocol,
    /// `ssl`: TLS settings (with `ssl` and `sasl_ssl`).
    pub ssl: KafkaSsl,
    /// `sasl`: SASL settings (with `sasl_plaintext` and `sasl_ssl`).
    pub sasl: KafkaSasl,
}

/// `kafka.security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// `plaintext`: no TLS, no authentication.
    #[default]
    Plaintext,
    /// `ssl`: TLS (with a client certificate for mutual TLS when one is given).
    Ssl,
    /// `sasl_plaintext`: SASL authentication without TLS.
    SaslPlaintext,
    /// `sasl_ssl`: SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether connections use TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether clients authenticate with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `kafka.security.ssl`. Files are read when a client is created (so a rotated certificate is
/// picked up at the next pipeline start); `keyPassword` may instead come from `keyPasswordFile`
/// or from `SLUICE_KAFKA_SECURITY_SSL_KEY_PASSWORD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSsl {
    /// `caFile`: PEM file of the CA certificate(s) to trust; none: the system's trust store.
    #[serde(rename = "caFile")]
    pub ca_file: Option<PathBuf>,
    /// `certificateFile`: PEM client certificate, for mutual TLS (with `keyFile`).
    #[serde(rename = "certificateFile")]
    pub certificate_file: Option<PathBuf>,
    /// `keyFile`: PEM private key of the client certificate.
    #[serde(rename = "keyFile")]
    pub key_file: Option<PathBuf>,
    /// `keyPassword`: the private key's password (secret).
    #[serde(rename = "keyPassword")]
    pub key_password: Option<Secret>,
    /// `keyPasswordFile`: a file holding the private key's password (one trailing newline is
    /// ignored).
    #[serde(rename = "keyPasswordFile")]
    pub key_password_file: Option<PathBuf>,
    /// `verifyHostname`: check that the broker's certificate names the host connected to.
    #[serde(rename = "verifyHostname")]
    pub verify_hostname: bool,
}

impl Default for KafkaSsl {
    fn default() -> Self {
        Self {
            ca_file: None,
            certificate_file: None,
            key_file: None,
            key_password: None,
            key_password_file: None,
            verify_hostname: true,
        }
    }
}

impl KafkaSsl {
    /// Whether any TLS setting is given.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some()
            || self.certificate_file.is_some()
            || self.key_file.is_some()
            || self.key_password.is_some()
            || self.key_password_file.is_some()
    }
}

/// `kafka.security.sasl`. The password may instead come from `passwordFile` or from
/// `SLUICE_KAFKA_SECURITY_SASL_PASSWORD`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSasl {
    /// `mechanism`: `PLAIN` (default), `SCRAM-SHA-256`, `SCRAM-SHA-512` or `OAUTHBEARER`.
    pub mechanism: SaslMechanism,
    /// `username` (PLAIN, SCRAM).
    pub username: Option<String>,
    /// `password` (PLAIN, SCRAM; secret).
    pub password: Option<Secret>,
    /// `passwordFile`: a file holding the password (one trailing newline is ignored).
    #[serde(rename = "passwordFile")]
    pub password_file: Option<PathBuf>,
    /// `oauthbearer` (OAUTHBEARER only).
    pub oauthbearer: KafkaOAuthBearer,
}

impl KafkaSasl {
    /// Whether any SASL setting other than the mechanism is given.
    pub fn is_set(&self) -> bool {
        self.username.is_some()
            || self.password.is_some()
            || self.password_file.is_some()
            || self.oauthbearer.is_set()
    }
}

/// `kafka.security.sasl.oauthbearer`: where the bearer token comes from. The token is read
/// from `tokenFile` each time librdkafka asks for one (at the first connection, then at 80% of
/// the token's lifetime), so a file that another process keeps fresh (a Kubernetes projected
/// service-account token, an identity provider's sidecar) is followed without a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaOAuthBearer {
    /// `tokenFile`: a file holding the token (a JWT, or an opaque token with `principal`).
    #[serde(rename = "tokenFile")]
    pub token_file: Option<PathBuf>,
    /// `principal`: the Kafka principal the token stands for; null: the JWT's `sub` claim.
    pub principal: Option<String>,
}

impl KafkaOAuthBearer {
    /// Whether any OAUTHBEARER setting is given.
    pub fn is_set(&self) -> bool {
        self.token_file.is_some() || self.principal.is_some()
    }
}

/// `kafka.security.sasl.mechanism`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// `PLAIN`: username and password (use it over TLS only).
    #[default]
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// `OAUTHBEARER`: a bearer token read from `oauthbearer.tokenFile`.
    #[serde(rename = "OAUTHBEARER")]
    OAuthBearer,
}

impl SaslMechanism {
    /// The YAML (and librdkafka) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::OAuthBearer => "OAUTHBEARER",
        }
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `kafka.bootstrap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaBootstrap {
    /// `kafka.bootstrap.servers`: comma-separated `host:port` list of bootstrap brokers.
    pub servers: String,
}

impl Default for KafkaBootstrap {
    fn default() -> Self {
        Self { servers: "127.0.0.1:9092".to_owned() }
    }
}

impl KafkaBootstrap {
    /// The individual `host:port` entries of [`servers`](Self::servers), trimmed, empties dropped.
    pub fn server_list(&self) -> Vec<&str> {
        self.servers.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
    }
}

/// `kafka.consumer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConsumer {
    /// `kafka.consumer.group`: consumer group id. A group with no committed offsets starts at
    /// the earliest offset.
    pub group: String,
    /// `kafka.consumer.sessionTimeoutMs`: group session timeout; a member silent this long is
    /// removed and its partitions reassigned.
    #[serde(rename = "sessionTimeoutMs")]
    pub session_timeout_ms: u64,
    /// `kafka.consumer.heartbeatIntervalMs`: group heartbeat interval (< sessionTimeoutMs / 3).
    #[serde(rename = "heartbeatIntervalMs")]
    pub heartbeat_interval_ms: u64,
    /// `kafka.consumer.commitIntervalMs`: how often acknowledged offsets are committed.
    #[serde(rename = "commitIntervalMs")]
    pub commit_interval_ms: u64,
    /// `kafka.consumer.revokeTimeoutMs`: on partition revocation, how long in-flight work of
    /// those partitions may take to finish before the revocation goes ahead anyway.
    #[serde(rename = "revokeTimeoutMs")]
    pub revoke_timeout_ms: u64,
    /// `kafka.consumer.maxHeldBytes`: when the consumed records Sluice still holds (values and
    /// keys, queued or in flight, counted not copied) reach this many bytes, consumption
    /// pauses until they fall below it (>= 1 MiB).
    #[serde(rename = "maxHeldBytes")]
    pub max_held_bytes: u64,
    /// `kafka.consumer.fetchWaitMaxMs`: how long the broker may hold a fetch that finds no
    /// data (librdkafka's `fetch.wait.max.ms`, 1 ..= 5000). Apache Kafka answers as soon as
    /// data arrives, so there a larger value costs no latency and saves idle CPU; Tansu holds
    /// every empty fetch for the whole time, so the default stays short: 25 ms, which keeps
    /// an idle `sluice serve` under 1% of a core (benches/run-idle-cpu.sh).
    #[serde(rename = "fetchWaitMaxMs")]
    pub fetch_wait_max_ms: u64,
}

impl Default for KafkaConsumer {
    fn default() -> Self {
        Self {
            group: "sluice".to_owned(),
            session_timeout_ms: 10_000,
            heartbeat_interval_ms: 1_000,
            commit_interval_ms: 200,
            revoke_timeout_ms: 30_000,
            max_held_bytes: 256 * 1024 * 1024,
            fetch_wait_max_ms: 25,
        }
    }
}

/// `kafka.producer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaProducer {
    /// `kafka.producer.lingerMs`: how long the producer waits to fill a request (>= 5 keeps
    /// brokers such as Tansu efficient; latency cost is this many milliseconds at most).
    #[serde(rename = "lingerMs")]
    pub linger_ms: u64,
    /// `kafka.producer.deliveryTimeoutMs`: librdkafka's own retry window for one send.
    #[serde(rename = "deliveryTimeoutMs")]
    pub delivery_timeout_ms: u64,
    /// `kafka.producer.maxAttempts`: sends of one outcome (each after the retry window above,
    /// with exponential backoff between them) before it is reported as undeliverable (an
    /// error log and `sluice_undeliverable_total`). It is still retried, every 10 s at most,
    /// until the broker takes it; its partition's commits wait for it.
    #[serde(rename = "maxAttempts")]
    pub max_attempts: u32,
    /// `kafka.producer.deadLetterKeyBytes`: when the broker refuses an outcome because of the
    /// record itself (its size, say), the dead letter sent in its place carries at most this
    /// many leading bytes of the request's key (0 ..= 65536).
    #[serde(rename = "deadLetterKeyBytes")]
    pub dead_letter_key_bytes: usize,
    /// `kafka.producer.compression`: the codec of the records Sluice produces (results, dead
    /// letters, metrics): `none` (default), `gzip`, `snappy`, `lz4` or `zstd`. Compressed
    /// input is read whatever this says.
    pub compression: Compression,
}

/// `kafka.producer.compression`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `none`.
    #[default]
    None,
    /// `gzip`.
    Gzip,
    /// `snappy`.
    Snappy,
    /// `lz4`.
    Lz4,
    /// `zstd`.
    Zstd,
}

impl Compression {
    /// Every codec, `none` first.
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    /// The YAML (and librdkafka `compression.type`) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for KafkaProducer {
    fn default() -> Self {
        Self {
            linger_ms: 5,
            delivery_timeout_ms: 30_000,
            max_attempts: 5,
            dead_letter_key_bytes: 1024,
            compression: Compression::None,
        }
    }
}

/// `kafka.topics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaTopics {
    /// `kafka.topics.streaming`: the topics of the streaming inference pipeline.
    pub streaming: StreamingTopics,
}

/// `kafka.topics.streaming`: the five topics of the streaming pipeline (all distinct).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingTopics {
    /// `input`: normal-priority inference requests.
    pub input: String,
    /// `output`: inference results.
    pub output: String,
    /// `priority`: high-priority inference requests (served before `input`).
    pub priority: String,
    /// `metrics`: periodic metrics reports.
    pub metrics: String,
    /// `dlq`: dead letters (undecodable, invalid, expired or failed requests).
    pub dlq: String,
    /// `control`: the compacted topic through which every instance shares the rollout state
    /// of each model (serving version, split, shadow, canary); empty: none (each instance
    /// keeps its own).
    pub control: String,
    /// `shadow`: results of shadow versions (best effort, never in a transaction).
    pub shadow: String,
}

impl Default for StreamingTopics {
    fn default() -> Self {
        Self {
            input: "realtime-inference-input".to_owned(),
            output: "realtime-inference-output".to_owned(),
            priority: "priority-inference".to_owned(),
            metrics: "realtime-metrics".to_owned(),
            dlq: "realtime-inference-dlq".to_owned(),
            control: "realtime-inference-control".to_owned(),
            shadow: "realtime-inference-shadow".to_owned(),
        }
    }
}

impl StreamingTopics {
    /// `(YAML key, topic name)` for all five topics, in declaration order.
    pub fn all(&self) -> [(&'static str, &str); 5] {
        [
            ("input", &self.input),
            ("output", &self.output),
            ("priority", &self.priority),
            ("metrics", &self.metrics),
            ("dlq", &self.dlq),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// streaming
// ---------------------------------------------------------------------------------------------

/// `streaming`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingConfig {
    /// `streaming.inference`: the streaming inference pipeline.
    pub inference: StreamingInference,
}

/// `streaming.inference`: batching, delivery and model settings of the inference pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamingInference {
    /// `enabled`: run the streaming pipeline at all.
    pub enabled: bool,
    /// `trigger`: when a partially filled batch is dispatched.
    pub trigger: TriggerConfig,
    /// `watermark`: handling of late records.
    pub watermark: WatermarkConfig,
    /// `processing`: delivery guarantee, batch timeout and retries.
    pub processing: ProcessingConfig,
    /// `batching`: batch shape limits and ring sizes.
    pub batching: BatchingConfig,
    /// `lanes`: execution lanes.
    pub lanes: LanesConfig,
    /// `limits`: per-record input limits.
    pub limits: LimitsConfig,
    /// `model`: model repository and cache.
    pub model: ModelConfig,
    /// `metrics`: metrics reporting.
    pub metrics: MetricsConfig,
}

impl Default for StreamingInference {
    fn default() -> Self {
        Self {
            enabled: true,
            trigger: TriggerConfig::default(),
            watermark: WatermarkConfig::default(),
            processing: ProcessingConfig::default(),
            batching: BatchingConfig::default(),
            lanes: LanesConfig::default(),
            limits: LimitsConfig::default(),
            model: ModelConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl StreamingInference {
    /// `trigger.intervalMs` as a duration: how long an idle lane sleeps between looks at the
    /// rings when no new work wakes it. Batches never wait to fill.
    pub fn trigger_interval(&self) -> Duration {
        self.trigger.interval()
    }

    /// `watermark.delayThreshold`: a record whose Kafka timestamp is this far behind the wall
    /// clock when a lane dequeues it is late.
    pub fn delay_threshold(&self) -> Duration {
        self.watermark.delay_threshold
    }

    /// `processing.timeout` as a duration: the time limit for one batch.
    pub fn batch_timeout(&self) -> Duration {
        self.processing.timeout()
    }

    /// `model.cache.ttlMinutes` as a duration: idle time after which a cached model is evicted.
    pub fn ttl(&self) -> Duration {
        self.model.cache.ttl()
    }

    /// `metrics.reportingIntervalSeconds` as a duration.
    pub fn reporting_interval(&self) -> Duration {
        self.metrics.reporting_interval()
    }
}

/// `streaming.inference.trigger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TriggerConfig {
    /// `intervalMs`: how long an idle lane sleeps between looks at the rings when no new work
    /// wakes it, in milliseconds (batches never wait to fill).
    #[serde(rename = "intervalMs")]
    pub interval_ms: u64,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        Self { interval_ms: 500 }
    }
}

impl TriggerConfig {
    /// [`interval_ms`](Self::interval_ms) as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// `streaming.inference.watermark`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatermarkConfig {
    /// `delayThreshold`: how far a record's Kafka timestamp may be behind the wall clock when
    /// a lane dequeues it before it is late. A humantime string in YAML (`"2s"`, `"500ms"`).
    #[serde(rename = "delayThreshold", with = "humantime_string")]
    pub delay_threshold: Duration,
    /// `policy`: what to do with late records.
    pub policy: WatermarkPolicy,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        Self { delay_threshold: Duration::from_secs(2), policy: WatermarkPolicy::Process }
    }
}

/// `streaming.inference.watermark.policy`: what happens to late records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatermarkPolicy {
    /// `process`: late records are processed like any other.
    #[default]
    Process,
    /// `expire`: late records go to the dead-letter topic with reason `expired`.
    Expire,
}

impl WatermarkPolicy {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Expire => "expire",
        }
    }
}

impl fmt::Display for WatermarkPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `streaming.inference.processing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessingConfig {
    /// `guarantee`: delivery guarantee.
    pub guarantee: DeliveryGuarantee,
    /// `timeout`: time limit for one batch, in seconds: a lane computing one batch for longer
    /// is reported hung (liveness fails).
    #[serde(rename = "timeout")]
    pub timeout_secs: u64,
    /// `maxRetries`: retries of a failed batch before its records are dead-lettered.
    #[serde(rename = "maxRetries")]
    pub max_retries: u32,
    /// `drainTimeout`: how long a stop (`stop`, `restart`, SIGTERM) may drain, in seconds.
    /// Whatever is not settled by then (a broker that is gone, a hung model) is left
    /// uncommitted and processed again after the restart.
    #[serde(rename = "drainTimeout")]
    pub drain_timeout_secs: u64,
    /// `maxReplays`: how often `sluice replay` may send one dead letter back (the
    /// `sluice-replay-count` header counts it). A replayed request that fails again once it
    /// has been replayed this often is dead-lettered with a reason that says so, and `sluice
    /// replay` skips it from then on (README "Replaying dead letters").
    #[serde(rename = "maxReplays")]
    pub max_replays: u32,
    /// `transactions`: the Kafka transactions of `guarantee: exactly_once`.
    pub transactions: TransactionsConfig,
    /// `circuitBreaker`: stop computing a model version whose batches keep failing.
    #[serde(rename = "circuitBreaker")]
    pub circuit_breaker: CircuitBreakerConfig,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            guarantee: DeliveryGuarantee::AtLeastOnce,
            timeout_secs: 10,
            max_retries: 3,
            drain_timeout_secs: 30,
            max_replays: 3,
            transactions: TransactionsConfig::default(),
            circuit_breaker: CircuitBreakerConfig::default(),
        }
    }
}

/// `streaming.inference.processing.circuitBreaker`: one breaker per model version. It opens
/// when that version's batches keep failing after their retries; while it is open the
/// version's requests are not computed (they wait, or are dead-lettered as `circuit_open`),
/// and after a cool-down one probe batch decides whether it closes again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// `enabled`: whether breakers open at all (off: every failed batch is dead-lettered as
    /// `inference`, however many there are).
    pub enabled: bool,
    /// `consecutiveFailures`: failed batches of one version in a row that open its breaker
    /// (>= 1). A batch counts as failed when its retries are spent and none of its requests
    /// was computed; one that fails for a single bad request (the others computed) does not.
    #[serde(rename = "consecutiveFailures")]
    pub consecutive_failures: u32,
    /// `failureRatePercent`: ... or this share of failed batches, in percent (1 ..= 100),
    /// over the last `windowSeconds`, once the window holds `minBatches` batches.
    #[serde(rename = "failureRatePercent")]
    pub failure_rate_percent: u32,
    /// `windowSeconds`: the window of the failure rate (>= 1).
    #[serde(rename = "windowSeconds")]
    pub window_seconds: u64,
    /// `minBatches`: batches the window must hold before its rate is judged (>= 1).
    #[serde(rename = "minBatches")]
    pub min_batches: u32,
    /// `coolDownMs`: how long an open breaker waits before its probe batch (>= 10). It
    /// doubles after every failed probe, up to `maxCoolDownMs`.
    #[serde(rename = "coolDownMs")]
    pub cool_down_ms: u64,
    /// `maxCoolDownMs`: the longest cool-down (>= coolDownMs).
    #[serde(rename = "maxCoolDownMs")]
    pub max_cool_down_ms: u64,
    /// `whenOpen`: what happens to the requests of a version whose breaker is open.
    #[serde(rename = "whenOpen")]
    pub when_open: CircuitOpenPolicy,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            consecutive_failures: 5,
            failure_rate_percent: 50,
            window_seconds: 30,
            min_batches: 20,
            cool_down_ms: 1_000,
            max_cool_down_ms: 60_000,
            when_open: CircuitOpenPolicy::Wait,
        }
    }
}

/// `streaming.inference.processing.circuitBreaker.whenOpen`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitOpenPolicy {
    /// `wait`: the requests wait (uncommitted) until the breaker closes, and the partitions
    /// they came from are paused meanwhile.
    #[default]
    Wait,
    /// `dead_letter`: the requests are dead-lettered at once with class `circuit_open`.
    DeadLetter,
}

/// `streaming.inference.processing.transactions` (used with `guarantee: exactly_once`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransactionsConfig {
    /// `instanceId`: this instance's stable name within the consumer group; the producer's
    /// `transactional.id` is `sluice-<group>-<instanceId>`. It must stay the same when the
    /// instance comes back (a StatefulSet's ordinal, say), so that the new one fences its
    /// predecessor, and differ between instances running at once. Empty: the host name
    /// (stable for StatefulSet pods, not for Deployment pods).
    #[serde(rename = "instanceId")]
    pub instance_id: String,
    /// `commitIntervalMs`: a transaction is committed at most this long after it began
    /// (1 ..= 60000).
    #[serde(rename = "commitIntervalMs")]
    pub commit_interval_ms: u64,
    /// `maxRecords`: ... or once it holds this many outcomes, whichever comes first.
    #[serde(rename = "maxRecords")]
    pub max_records: usize,
    /// `timeoutMs`: librdkafka's `transaction.timeout.ms`: the broker aborts a transaction
    /// left open longer (a producer that died). Must exceed `commitIntervalMs` well.
    #[serde(rename = "timeoutMs")]
    pub timeout_ms: u64,
}

impl Default for TransactionsConfig {
    fn default() -> Self {
        Self {
            instance_id: String::new(),
            commit_interval_ms: 100,
            max_records: 10_000,
            timeout_ms: 60_000,
        }
    }
}

impl ProcessingConfig {
    /// [`timeout_secs`](Self::timeout_secs) as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// [`drain_timeout_secs`](Self::drain_timeout_secs) as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// `streaming.inference.processing.guarantee`: the delivery guarantee.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryGuarantee {
    /// `at_least_once`: offsets are committed after results are produced; a crash may repeat
    /// work.
    #[default]
    AtLeastOnce,
    /// `exactly_once`: results, dead letters and the input offsets they answer are committed
    /// together in one Kafka transaction (`processing.transactions`).
    ExactlyOnce,
}

impl DeliveryGuarantee {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AtLeastOnce => "at_least_once",
            Self::ExactlyOnce => "exactly_once",
        }
    }
}

impl fmt::Display for DeliveryGuarantee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `streaming.inference.batching`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    /// `maxBatchRows`: sequences (rows) per batch, >= 1.
    #[serde(rename = "maxBatchRows")]
    pub max_batch_rows: usize,
    /// `maxBatchTokens`: padded tokens per batch (longest sequence x rows), >= 2.
    #[serde(rename = "maxBatchTokens")]
    pub max_batch_tokens: usize,
    /// `ringCapacity`: capacity of each ring (priority, normal), >= 1.
    #[serde(rename = "ringCapacity")]
    pub ring_capacity: usize,
    /// `priorityBurst`: consecutive priority-only batches allowed while normal work waits, >= 1.
    #[serde(rename = "priorityBurst")]
    pub priority_burst: usize,
    /// `lengthGrouping`: group requests of similar length into a batch to reduce padding.
    #[serde(rename = "lengthGrouping")]
    pub length_grouping: bool,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        let caps = BatchCaps::default();
        Self {
            max_batch_rows: caps.max_rows,
            max_batch_tokens: caps.max_tokens,
            ring_capacity: 4096,
            priority_burst: 4,
            length_grouping: true,
        }
    }
}

/// `streaming.inference.lanes`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LanesConfig {
    /// `cpu`: CPU execution lanes.
    pub cpu: CpuLanesConfig,
}

/// `streaming.inference.lanes.cpu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpuLanesConfig {
    /// `count`: number of CPU lanes, >= 1 (0 allowed when there are GPU lanes). The lanes
    /// share one pool of intra-op threads as large as the machine has cores.
    pub count: usize,
}

impl Default for CpuLanesConfig {
    fn default() -> Self {
        Self { count: 1 }
    }
}

/// `streaming.inference.limits`: per-record input limits (violations are dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// `maxRecordBytes`: largest accepted Kafka record value, 1 KiB ..= 256 MiB.
    #[serde(rename = "maxRecordBytes")]
    pub max_record_bytes: usize,
    /// `maxItemsPerRequest`: most inputs in one request.
    #[serde(rename = "maxItemsPerRequest")]
    pub max_items_per_request: usize,
    /// `maxIdBytes`: longest request id, in bytes.
    #[serde(rename = "maxIdBytes")]
    pub max_id_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_record_bytes: l.max_record_bytes,
            max_items_per_request: l.max_items,
            max_id_bytes: l.max_id_bytes,
        }
    }
}

/// `streaming.inference.model`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// `repository`: directory holding the models (read only, unless `stateDirectory` is
    /// empty).
    pub repository: PathBuf,
    /// `stateDirectory`: where Sluice writes what it changes at run time (the serving version
    /// set through the control plane), so that the repository can be mounted read-only.
    /// Empty: beside the models, in the repository.
    #[serde(rename = "stateDirectory")]
    pub state_directory: PathBuf,
    /// `cache`: loaded-model cache.
    pub cache: ModelCacheConfig,
    /// `rollout`: shadow scoring and automatic canaries.
    pub rollout: RolloutConfig,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            repository: PathBuf::from("./models"),
            state_directory: PathBuf::new(),
            cache: ModelCacheConfig::default(),
            rollout: RolloutConfig::default(),
        }
    }
}

/// `streaming.inference.model.rollout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutConfig {
    /// `canaryMinRequests`: requests the canary version needs in a step before the step is
    /// judged (and before it may pass).
    #[serde(rename = "canaryMinRequests")]
    pub canary_min_requests: u64,
    /// `canaryCheckIntervalMs`: how often running canaries are judged.
    #[serde(rename = "canaryCheckIntervalMs")]
    pub canary_check_interval_ms: u64,
    /// `shadowQueueBatches`: batches waiting for their shadow computation at most; beyond,
    /// shadow work is dropped (and counted), never the primary's.
    #[serde(rename = "shadowQueueBatches")]
    pub shadow_queue_batches: usize,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self { canary_min_requests: 200, canary_check_interval_ms: 1000, shadow_queue_batches: 64 }
    }
}

impl ModelConfig {
    /// The state directory, `None` when it is empty (state goes beside the models).
    pub fn state_dir(&self) -> Option<PathBuf> {
        (!self.state_directory.as_os_str().is_empty()).then(|| self.state_directory.clone())
    }
}

/// `streaming.inference.model.cache`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelCacheConfig {
    /// `enabled`: keep loaded models in memory between uses.
    pub enabled: bool,
    /// `size`: most models kept loaded, >= 1.
    pub size: usize,
    /// `ttlMinutes`: evict a model unused for this many minutes.
    #[serde(rename = "ttlMinutes")]
    pub ttl_minutes: u64,
}

impl Default for ModelCacheConfig {
    fn default() -> Self {
        Self { enabled: true, size: 10, ttl_minutes: 30 }
    }
}

impl ModelCacheConfig {
    /// [`ttl_minutes`](Self::ttl_minutes) as a duration.
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_minutes.saturating_mul(60))
    }
}

/// `streaming.inference.metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `enabled`: publish metrics reports to the metrics topic.
    pub enabled: bool,
    /// `reportingIntervalSeconds`: seconds between reports, >= 1.
    #[serde(rename = "reportingIntervalSeconds")]
    pub reporting_interval_seconds: u64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true, reporting_interval_seconds: 30 }
    }
}

impl MetricsConfig {
    /// [`reporting_interval_seconds`](Self::reporting_interval_seconds) as a duration.
    pub fn reporting_interval(&self) -> Duration {
        Duration::from_secs(self.reporting_interval_seconds)
    }
}

// ---------------------------------------------------------------------------------------------
// gpu, control, log
// ---------------------------------------------------------------------------------------------

/// `gpu`: CUDA execution (needs a build with the `cuda` feature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpuConfig {
    /// `devices`: CUDA device ordinals to run lanes on; empty = no GPU lanes.
    pub devices: Vec<usize>,
    /// `streamsPerDevice`: lanes (CUDA streams) per device. Default 1: on an H200 (see
    /// `benches/results/gpu-2026-11-30/`) two or four streams on one device gave lower
    /// throughput and longer batches than one at every batch size.
    #[serde(rename = "streamsPerDevice")]
    pub streams_per_device: usize,
    /// `laneFailureLimit`: device faults in a row (sticky CUDA errors, a lost device) after
    /// which a GPU lane is taken out of service; its work goes to the remaining lanes (>= 1).
    #[serde(rename = "laneFailureLimit")]
    pub lane_failure_limit: u32,
    /// `cpuFallback`: a GPU lane taken out of service goes on as a CPU lane (same thread and
    /// index) instead of ending, so capacity degrades rather than disappears.
    #[serde(rename = "cpuFallback")]
    pub cpu_fallback: bool,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            devices: Vec::new(),
            streams_per_device: 1,
            lane_failure_limit: 3,
            cpu_fallback: false,
        }
    }
}

/// `control`: the HTTP control endpoint.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControlConfig {
    /// `listen`: socket address to listen on (`IP:PORT`).
    #[serde(with = "socket_addr_string")]
    pub listen: SocketAddr,
    /// `token`: when set, mutating calls need `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8086)), token: None }
    }
}

/// Debug output never shows the token.
impl fmt::Debug for ControlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .finish()
    }
}

/// What [`Config::redacted`](super::Config::redacted) and `Debug` show instead of secrets.
pub const REDACTED: &str = "<redacted>";

/// `log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `format`: log line format.
    pub format: LogFormat,
    /// `level`: a `tracing` EnvFilter directive, e.g. `info` or `sluice=debug,warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".to_owned() }
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `text`: human-readable lines.
    #[default]
    Text,
    /// `json`: one JSON object per line.
    Json,
}

impl LogFormat {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// serde helpers
// ---------------------------------------------------------------------------------------------

/// A [`Duration`] as a humantime string (`"2s"`, `"1m 30s"`, `"500ms"`).
mod humantime_string {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"2s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
                humantime::parse_duration(s.trim())
                    .map_err(|e| E::custom(format!("invalid duration {s:?}: {e}")))
            }
        }
        d.deserialize_str(V)
    }
}

/// A [`std::net::SocketAddr`] as an `IP:PORT` string.
mod socket_addr_string {
    use std::fmt;
    use std::net::SocketAddr;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SocketAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a socket address such as \"127.0.0.1:8086\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SocketAddr, E> {
                s.trim().parse().map_err(|_| {
                    E::custom(format!(
                        "invalid socket address {s:?}: expected IP:PORT such as \"127.0.0.1:8086\" or \"[::1]:8086\""
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A map of strings whose values may be written as YAML numbers or booleans (`linger: 5`).
mod scalar_map {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{self, MapAccess, Visitor};
    use serde::Deserializer;

    struct Text(String);

    impl<'de> serde::Deserialize<'de> for Text {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Text;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string, number or boolean")
                }
                fn visit_str<E: de::Error>(self, s: &str) -> Result<Text, E> {
                    Ok(Text(s.to_owned()))
                }
                fn visit_bool<E: de::Error>(self, b: bool) -> Result<Text, E> {
                    Ok(Text(b.to_string()))
                }
                fn visit_i64<E: de::Error>(self, n: i64) -> Result<Text, E> {
                    Ok(Text(n.to_string()))
                }
                fn visit_u64<E: de::Error>(self, n: u64) -> Result<Text, E> {
                    Ok(Text(n.to_string()))
                }
                fn visit_f64<E: de::Error>(self, n: f64) -> Result<Text, E> {
                    Ok(Text(n.to_string()))
                }
            }
            d.deserialize_any(V)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BTreeMap<String, String>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of librdkafka property names to values")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(BTreeMap::new())
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, Text(v))) = m.next_entry::<String, Text>()? {
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}
