//! What every Kafka client of Sluice shares: the base, producer and consumer settings, the
//! instance name, the layer's error, and closing a client without hanging.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::Client;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use crate::config::{Config, DeliveryGuarantee, KafkaSecurity, Secret};

use super::oauth::{self, TokenSource};

/// Settings every client shares: brokers, IPv4 (Tansu and loopback tests; `kafka.properties`
/// may change it), client id, `kafka.security`, then `kafka.properties` (validation refused
/// the keys Sluice owns, so they cannot undo any of this). Fails when a secret or certificate
/// file named by `kafka.security` cannot be read.
pub fn base_client_config(cfg: &Config, client_id: &str) -> Result<ClientConfig, KafkaLayerError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.bootstrap.servers)
        .set("client.id", client_id)
        .set("broker.address.family", "v4")
        .set("socket.keepalive.enable", "true");
    apply_security(&mut c, &cfg.kafka.security)?;
    for (k, v) in &cfg.kafka.properties.0 {
        c.set(k.trim(), v);
    }
    Ok(c)
}

/// A client librdkafka made, whose native client can be given an OAUTHBEARER token.
pub trait MadeClient<C: ClientContext> {
    /// The native client.
    fn native(&self) -> &Client<C>;
}

impl<C: ConsumerContext> MadeClient<C> for BaseConsumer<C> {
    fn native(&self) -> &Client<C> {
        self.client()
    }
}

impl<C: ProducerContext> MadeClient<C> for BaseProducer<C> {
    fn native(&self) -> &Client<C> {
        self.client()
    }
}

impl<C: ClientContext> MadeClient<C> for AdminClient<C> {
    fn native(&self) -> &Client<C> {
        self.inner()
    }
}

/// Creates a client from `c` with `context`, and gives it its first OAUTHBEARER token when
/// `kafka.security` asks for one (see `kafka::oauth`). Every Kafka client of Sluice is made
/// here.
pub fn create<T, C>(c: &ClientConfig, context: C) -> Result<T, KafkaLayerError>
where
    C: ClientContext,
    T: FromClientConfigAndContext<C> + MadeClient<C>,
{
    let client = T::from_config_and_context(c, context)?;
    oauth::prime(client.native(), c).map_err(KafkaLayerError::Other)?;
    Ok(client)
}

/// `kafka.security` as librdkafka properties. Secrets are read here, from the configuration
/// or the files it names, and go only into the client's configuration (which librdkafka
/// never logs: it marks these properties sensitive).
fn apply_security(c: &mut ClientConfig, s: &KafkaSecurity) -> Result<(), KafkaLayerError> {
    const SEC: &str = "kafka.security";
    c.set("security.protocol", s.protocol.as_str());
    if s.protocol.uses_tls() {
        let ssl = &s.ssl;
        match &ssl.ca_file {
            Some(ca) => {
                c.set("ssl.ca.location", readable(ca, &format!("{SEC}.ssl.caFile"))?);
            }
            // The OpenSSL built into Sluice (vendored) does not know where this system keeps
            // its CA certificates: librdkafka's `probe` looks in the usual places
            // (/etc/ssl/certs, /etc/pki/tls, ...).
            None => {
                c.set("ssl.ca.location", "probe");
            }
        }
        if let (Some(cert), Some(key)) = (&ssl.certificate_file, &ssl.key_file) {
            c.set(
                "ssl.certificate.location",
                readable(cert, &format!("{SEC}.ssl.certificateFile"))?,
            )
            .set("ssl.key.location", readable(key, &format!("{SEC}.ssl.keyFile"))?);
        }
        if let Some(pw) = secret(
            &ssl.key_password,
            &ssl.key_password_file,
            &format!("{SEC}.ssl.keyPasswordFile"),
        )? {
            c.set("ssl.key.password", pw);
        }
        c.set(
            "ssl.endpoint.identification.algorithm",
            if ssl.verify_hostname { "https" } else { "none" },
        );
    }
    if let Some(source) = TokenSource::of(s.protocol, s.sasl.mechanism, &s.sasl.oauthbearer) {
        readable(&source.file, &format!("{SEC}.sasl.oauthbearer.tokenFile"))?;
        c.set("sasl.mechanism", s.sasl.mechanism.as_str())
            .set(oauth::CONFIG_KEY, source.encode().map_err(KafkaLayerError::Other)?);
        return Ok(());
    }
    if s.protocol.uses_sasl() {
        let sasl = &s.sasl;
        c.set("sasl.mechanism", sasl.mechanism.as_str());
        if let Some(u) = &sasl.username {
            c.set("sasl.username", u);
        }
        if let Some(pw) =
            secret(&sasl.password, &sasl.password_file, &format!("{SEC}.sasl.passwordFile"))?
        {
            c.set("sasl.password", pw);
        }
    }
    Ok(())
}

/// `path` as a string for librdkafka, after checking that it can be opened, so that a wrong
/// path is reported with its configuration key rather than as librdkafka's "ssl.ca.location
/// failed".
fn readable(path: &Path, key: &str) -> Result<String, KafkaLayerError> {
    std::fs::File::open(path).map_err(|e| {
        KafkaLayerError::Other(format!("{key}: cannot read {}: {e}", path.display()))
    })?;
    Ok(path.to_string_lossy().into_owned())
}

/// A secret given inline or in a file (its content, one trailing newline dropped). The error
/// names the file, never its content.
fn secret(
    inline: &Option<Secret>,
    file: &Option<PathBuf>,
    file_key: &str,
) -> Result<Option<String>, KafkaLayerError> {
    if let Some(s) = inline {
        return Ok(Some(s.expose().to_owned()));
    }
    let Some(path) = file else { return Ok(None) };
    let mut text = std::fs::read_to_string(path).map_err(|e| {
        KafkaLayerError::Other(format!("{file_key}: cannot read {}: {e}", path.display()))
    })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.is_empty() {
        return Err(KafkaLayerError::Other(format!("{file_key}: {} is empty", path.display())));
    }
    Ok(Some(text))
}

/// Bytes of Sluice's own headers a dead letter adds to the record it carries (class, a reason
/// of at most `MAX_REASON_BYTES` plus its note, source coordinates, original sizes), with room
/// to spare.
pub const DEAD_LETTER_OVERHEAD_BYTES: usize = 64 * 1024;

/// The largest record the consumer accepts in one fetch response (librdkafka's
/// `receive.message.max.bytes`): its default of 100 MB, or more when `maxRecordBytes` asks for
/// it. Any record the broker hands us is at most this large.
pub fn largest_consumed_record(cfg: &Config) -> usize {
    (cfg.streaming.inference.limits.max_record_bytes + 1024 * 1024).max(100_000_000)
}

/// The emit thread's producer settings: idempotent, `acks=all`, `linger.ms` from the config,
/// and a size limit that covers a dead letter carrying the largest record the consumer can be
/// handed, so that Sluice's own client never cuts one: only the broker's refusal does.
/// (`sluice loadgen passthrough` uses the same, so that it measures the same client.)
pub fn producer_config(cfg: &Config, client_id: &str) -> Result<ClientConfig, KafkaLayerError> {
    let mut c = base_client_config(cfg, client_id)?;
    // librdkafka's own default is 1,000,000 bytes; its ceiling is 1,000,000,000.
    let max_message =
        (largest_consumed_record(cfg) + DEAD_LETTER_OVERHEAD_BYTES).min(1_000_000_000);
    c.set("message.max.bytes", max_message.to_string())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", cfg.kafka.producer.linger_ms.to_string())
        .set("message.timeout.ms", cfg.kafka.producer.delivery_timeout_ms.to_string())
        .set("compression.type", cfg.kafka.producer.compression.as_str());
    if cfg.streaming.inference.processing.guarantee == DeliveryGuarantee::ExactlyOnce {
        let tx = &cfg.streaming.inference.processing.transactions;
        c.set("transactional.id", transactional_id(cfg))
            .set("transaction.timeout.ms", tx.timeout_ms.to_string());
    }
    Ok(c)
}

/// The producer's `transactional.id` in `exactly_once` mode: `sluice-<group>-<instanceId>`,
/// the instance id defaulting to the host name. An instance that comes back under the same
/// id fences its predecessor (whose open transaction the broker aborts).
pub fn transactional_id(cfg: &Config) -> String {
    let id = &cfg.streaming.inference.processing.transactions.instance_id;
    let id = if id.is_empty() { host_name() } else { id.clone() };
    format!("sluice-{}-{id}", cfg.kafka.consumer.group)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// The ingest thread's consumer settings: the configured group, manual commits of stored
/// offsets only, `read_committed`, short fetch waits.
pub fn consumer_config(cfg: &Config, client_id: &str) -> Result<ClientConfig, KafkaLayerError> {
    let k = &cfg.kafka.consumer;
    let mut c = base_client_config(cfg, client_id)?;
    c.set("group.id", &k.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", k.heartbeat_interval_ms.to_string())
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "16384")
        .set("receive.message.max.bytes", largest_consumed_record(cfg).to_string())
        .set("fetch.wait.max.ms", k.fetch_wait_max_ms.to_string())
        // Also the group's rebalance timeout: how long a rebalance waits for a member that
        // does not rejoin (one whose process hangs, or whose close hung before it could
        // leave). librdkafka's 300 s would stall every other member that long; the ingest
        // thread polls every 200 ms at most, and a revocation blocks a poll for at most
        // revokeTimeoutMs (plus a transaction commit), so twice that, at least 60 s, is safe.
        .set("max.poll.interval.ms", max_poll_interval_ms(cfg).to_string())
        .set("isolation.level", "read_committed");
    Ok(c)
}

/// The consumer's `max.poll.interval.ms`: twice `kafka.consumer.revokeTimeoutMs`, at least
/// 60 s.
pub fn max_poll_interval_ms(cfg: &Config) -> u64 {
    cfg.kafka.consumer.revoke_timeout_ms.saturating_mul(2).max(60_000)
}

/// Errors from the Kafka layer.
#[derive(Debug, thiserror::Error)]
pub enum KafkaLayerError {
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("{0}")]
    Other(String),
}

/// This process's name towards the brokers: `sluice-<host>-<pid>` (client ids, metrics).
pub fn instance_name() -> String {
    format!("sluice-{}-{}", host_name(), std::process::id())
}

/// How long [`close_in_background`] waits for a client to close.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Runs `work` on a helper thread named `name` and waits up to `limit` for it: librdkafka
/// calls that talk to a broker which is gone (a destroy, a synchronous commit) may not return.
/// A thread that finished is joined; one still running at `limit` is left to end on its own
/// (the process exit ends it). Returns whether it finished; an error if it could not spawn.
pub fn run_bounded(
    name: &str,
    limit: Duration,
    work: impl FnOnce() + Send + 'static,
) -> std::io::Result<bool> {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let h = std::thread::Builder::new().name(name.into()).spawn(move || {
        work();
        let _ = tx.send(());
    })?;
    if rx.recv_timeout(limit).is_ok() {
        let _ = h.join();
        Ok(true)
    } else {
        Ok(false)
    }
}

/// Drops a client on a helper thread and waits up to [`CLOSE_WAIT`]: librdkafka's destroy can
/// hang (rust-rdkafka #509), on a broker that is gone for one. A hung close is logged and
/// abandoned; the process exit ends it.
pub fn close_in_background<T: Send + 'static>(client: T) {
    match run_bounded("sluice-kafka-close", CLOSE_WAIT, move || drop(client)) {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "closing a Kafka client did not finish within {} s; abandoning it",
            CLOSE_WAIT.as_secs()
        ),
        Err(e) => tracing::warn!(error = %e, "could not spawn the close thread"),
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::producer::BaseProducer;

    use super::*;
    use crate::config::{Compression, SaslMechanism, SecurityProtocol};

    fn get<'a>(c: &'a ClientConfig, key: &str) -> Option<&'a str> {
        c.get(key)
    }

    /// Builds `cfg`'s producer configuration and has librdkafka create a client from it: an
    /// unknown property, a value it refuses or a feature missing from the build fails here.
    fn created(cfg: &Config) -> ClientConfig {
        let c = producer_config(cfg, "t").unwrap();
        let p: Result<BaseProducer, _> = c.create();
        assert!(p.is_ok(), "librdkafka refused {:?}: {:?}", cfg.kafka.security, p.err());
        c
    }

    #[test]
    fn plaintext_by_default() {
        let c = created(&Config::default());
        assert_eq!(get(&c, "security.protocol"), Some("plaintext"));
        assert_eq!(get(&c, "compression.type"), Some("none"));
        assert_eq!(get(&c, "sasl.mechanism"), None);
        assert_eq!(get(&c, "ssl.ca.location"), None);
    }

    #[test]
    fn every_codec_is_built_in() {
        for codec in Compression::ALL {
            let mut cfg = Config::default();
            cfg.kafka.producer.compression = codec;
            assert_eq!(get(&created(&cfg), "compression.type"), Some(codec.as_str()));
        }
    }

    #[test]
    fn sasl_mechanisms_and_tls_are_built_in() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-a-file\n").unwrap();
        for mechanism in
            [SaslMechanism::Plain, SaslMechanism::ScramSha256, SaslMechanism::ScramSha512]
        {
            for protocol in [SecurityProtocol::SaslPlaintext, SecurityProtocol::SaslSsl] {
                let mut cfg = Config::default();
                let s = &mut cfg.kafka.security;
                s.protocol = protocol;
                s.sasl.mechanism = mechanism;
                s.sasl.username = Some("svc".into());
                s.sasl.password_file = Some(pw.clone());
                cfg.validate().unwrap();
                let c = created(&cfg);
                assert_eq!(get(&c, "security.protocol"), Some(protocol.as_str()));
                assert_eq!(get(&c, "sasl.mechanism"), Some(mechanism.as_str()));
                assert_eq!(get(&c, "sasl.username"), Some("svc"));
                // One trailing newline of the file is not part of the password.
                assert_eq!(get(&c, "sasl.password"), Some("from-a-file"));
            }
        }
    }

    fn jwt(claims: &str) -> String {
        use base64::Engine as _;
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.{}", e(r#"{"alg":"none"}"#), e(claims), e("sig"))
    }

    fn oauth_config(token_file: &Path) -> Config {
        let mut cfg = Config::default();
        let s = &mut cfg.kafka.security;
        s.protocol = SecurityProtocol::SaslSsl;
        s.sasl.mechanism = SaslMechanism::OAuthBearer;
        s.sasl.oauthbearer.token_file = Some(token_file.to_path_buf());
        cfg.validate().unwrap();
        cfg
    }

    #[test]
    fn oauthbearer_clients_are_created_with_their_first_token() {
        use crate::kafka::oauth::Plain;
        use rdkafka::admin::AdminClient;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        let cfg = oauth_config(&f);
        // The file is checked when the client configuration is made.
        let e = base_client_config(&cfg, "t").unwrap_err().to_string();
        assert!(e.contains("kafka.security.sasl.oauthbearer.tokenFile"), "{e}");

        std::fs::write(&f, jwt(r#"{"sub":"svc","exp":4000000000}"#)).unwrap();
        let c = base_client_config(&cfg, "t").unwrap();
        assert_eq!(get(&c, "sasl.mechanism"), Some("OAUTHBEARER"));
        assert_eq!(get(&c, "sasl.username"), None);
        let source = TokenSource::decode(get(&c, oauth::CONFIG_KEY).unwrap()).unwrap();
        assert_eq!(source.file, f);
        // librdkafka takes the token (rd_kafka_oauthbearer_set_token answers no error) for
        // every kind of client Sluice makes.
        let _: BaseConsumer<Plain> = create(&c, Plain).unwrap();
        let _: AdminClient<Plain> = create(&c, Plain).unwrap();
        let _: BaseProducer<Plain> = create(&producer_config(&cfg, "t").unwrap(), Plain).unwrap();

        // An expired token is not handed over: the error says so, without the token.
        let old = jwt(r#"{"sub":"svc","exp":1000}"#);
        std::fs::write(&f, &old).unwrap();
        let e = create::<BaseConsumer<Plain>, _>(&c, Plain).err().unwrap().to_string();
        assert!(e.contains("expired") && !e.contains(&old), "{e}");
    }

    /// librdkafka asks the client's context for a token through its refresh event, passing
    /// the configuration that names the file; the context's answer reads the file.
    #[test]
    fn librdkafka_asks_the_context_for_tokens() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct Counting(AtomicUsize, std::sync::Mutex<Option<String>>);
        impl ClientContext for Counting {
            const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;
            fn generate_oauth_token(
                &self,
                config: Option<&str>,
            ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
                self.0.fetch_add(1, Ordering::SeqCst);
                *self.1.lock().unwrap() = config.map(str::to_owned);
                oauth::token_for(config)
            }
        }
        impl ConsumerContext for Counting {}
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, jwt(r#"{"sub":"svc","exp":4000000000}"#)).unwrap();
        let mut c = base_client_config(&oauth_config(&f), "t").unwrap();
        c.set("bootstrap.servers", "127.0.0.1:1");
        // Not primed: the first token comes through the refresh event.
        let consumer: BaseConsumer<Counting> =
            c.create_with_context(Counting(AtomicUsize::new(0), Default::default())).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while consumer.context().0.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "librdkafka never asked for a token");
            let _ = consumer.poll(Duration::from_millis(100));
        }
        let asked = consumer.context().1.lock().unwrap().clone().unwrap();
        assert_eq!(TokenSource::decode(&asked).map(|s| s.file), Some(f));
        close_in_background(consumer);
    }

    #[test]
    fn tls_files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.kafka.security.protocol = SecurityProtocol::Ssl;
        cfg.kafka.security.ssl.ca_file = Some(dir.path().join("missing-ca.pem"));
        let e = base_client_config(&cfg, "t").unwrap_err().to_string();
        assert!(e.contains("kafka.security.ssl.caFile") && e.contains("missing-ca.pem"), "{e}");

        cfg.kafka.security.ssl.ca_file = None;
        cfg.kafka.security.ssl.verify_hostname = false;
        let c = created(&cfg);
        assert_eq!(get(&c, "ssl.endpoint.identification.algorithm"), Some("none"));
        assert_eq!(get(&c, "ssl.ca.location"), Some("probe"), "the system's trust store");

        let key_pw = dir.path().join("key-pw");
        std::fs::write(&key_pw, "").unwrap();
        cfg.kafka.security.ssl.key_password_file = Some(key_pw.clone());
        let e = base_client_config(&cfg, "t").unwrap_err().to_string();
        assert!(e.contains("keyPasswordFile") && e.contains("is empty"), "{e}");
        std::fs::write(&key_pw, "the-key-secret\r\n").unwrap();
        let c = base_client_config(&cfg, "t").unwrap();
        assert_eq!(get(&c, "ssl.key.password"), Some("the-key-secret"));
    }

    #[test]
    fn properties_go_to_every_client_over_the_defaults() {
        let mut cfg = Config::default();
        cfg.kafka.properties.0.insert("broker.address.family".into(), "any".into());
        cfg.kafka.properties.0.insert("socket.timeout.ms".into(), "12345".into());
        for c in [
            base_client_config(&cfg, "t").unwrap(),
            producer_config(&cfg, "t").unwrap(),
            consumer_config(&cfg, "t").unwrap(),
        ] {
            assert_eq!(get(&c, "broker.address.family"), Some("any"));
            assert_eq!(get(&c, "socket.timeout.ms"), Some("12345"));
        }
        // An unknown property is librdkafka's to refuse, by name, when the client is made.
        cfg.kafka.properties.0.insert("no.such.property".into(), "1".into());
        let p: Result<BaseProducer, _> = producer_config(&cfg, "t").unwrap().create();
        let e = p.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no.such.property"), "{e}");
    }
}
