//! What every Kafka client of Sluice shares: the base, producer and consumer settings, the
//! instance name, the layer's error, and closing a client without hanging.

use std::time::Duration;

use rdkafka::ClientConfig;

use crate::config::{Config, DeliveryGuarantee};

/// Settings every client shares: brokers, IPv4 (Tansu and loopback tests), client id.
pub fn base_client_config(cfg: &Config, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.bootstrap.servers)
        .set("client.id", client_id)
        .set("broker.address.family", "v4")
        .set("socket.keepalive.enable", "true");
    c
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
pub fn producer_config(cfg: &Config, client_id: &str) -> ClientConfig {
    let mut c = base_client_config(cfg, client_id);
    // librdkafka's own default is 1,000,000 bytes; its ceiling is 1,000,000,000.
    let max_message =
        (largest_consumed_record(cfg) + DEAD_LETTER_OVERHEAD_BYTES).min(1_000_000_000);
    c.set("message.max.bytes", max_message.to_string())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", cfg.kafka.producer.linger_ms.to_string())
        .set("message.timeout.ms", cfg.kafka.producer.delivery_timeout_ms.to_string())
        .set("compression.type", "none");
    if cfg.streaming.inference.processing.guarantee == DeliveryGuarantee::ExactlyOnce {
        let tx = &cfg.streaming.inference.processing.transactions;
        c.set("transactional.id", transactional_id(cfg))
            .set("transaction.timeout.ms", tx.timeout_ms.to_string());
    }
    c
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
pub fn consumer_config(cfg: &Config, client_id: &str) -> ClientConfig {
    let k = &cfg.kafka.consumer;
    let mut c = base_client_config(cfg, client_id);
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
    c
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
