//! Semantic checks on a deserialized [`Config`]: ranges, topic names, cross-field rules.

use super::types::{Config, KafkaSecurity, SaslMechanism, OWNED_PROPERTIES};

/// Longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME_LEN: usize = 249;
/// Smallest accepted `streaming.inference.limits.maxRecordBytes` (1 KiB).
pub const MIN_RECORD_BYTES: usize = 1024;
/// Largest accepted `streaming.inference.limits.maxRecordBytes` (256 MiB).
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

/// A failed check: the YAML path of the offending key and what is wrong with it.
pub(crate) type Violation = (String, String);

const INFERENCE: &str = "streaming.inference";

fn at_least(path: &str, value: u64, min: u64) -> Result<(), Violation> {
    if value < min {
        Err((path.to_owned(), format!("must be >= {min}, got {value}")))
    } else {
        Ok(())
    }
}

/// Why `name` is not a valid Kafka topic name, if it is not.
pub fn topic_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Some(format!(
            "topic name is {} characters long, the limit is {MAX_TOPIC_NAME_LEN}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some(format!("{name:?} is not a valid topic name"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return Some(format!(
            "invalid topic name {name:?}: character {bad:?} is not allowed (use A-Z, a-z, 0-9, '.', '_', '-')"
        ));
    }
    None
}

/// Checks everything serde cannot; the first violation wins, in document order.
pub(crate) fn check(c: &Config) -> Result<(), Violation> {
    let kafka = &c.kafka;
    if kafka.bootstrap.server_list().is_empty() {
        return Err(("kafka.bootstrap.servers".into(), "must list at least one broker".into()));
    }
    if kafka.consumer.group.trim().is_empty() {
        return Err(("kafka.consumer.group".into(), "must not be empty".into()));
    }
    let shadow = &kafka.topics.streaming.shadow;
    if let Some(problem) = topic_name_problem(shadow) {
        return Err(("kafka.topics.streaming.shadow".into(), problem));
    }
    if let Some((other, _)) = kafka.topics.streaming.all().iter().find(|(_, n)| n == shadow) {
        return Err((
            "kafka.topics.streaming.shadow".into(),
            format!("topic {shadow:?} is already used by kafka.topics.streaming.{other}"),
        ));
    }
    let control = &kafka.topics.streaming.control;
    if !control.is_empty() && control == shadow {
        return Err((
            "kafka.topics.streaming.control".into(),
            format!("topic {control:?} is already used by kafka.topics.streaming.shadow"),
        ));
    }
    if !control.is_empty() {
        if let Some(problem) = topic_name_problem(control) {
            return Err(("kafka.topics.streaming.control".into(), problem));
        }
        if let Some((other, _)) = kafka.topics.streaming.all().iter().find(|(_, n)| n == control) {
            return Err((
                "kafka.topics.streaming.control".into(),
                format!("topic {control:?} is already used by kafka.topics.streaming.{other}"),
            ));
        }
    }
    let topics = kafka.topics.streaming.all();
    for (i, (key, name)) in topics.iter().enumerate() {
        let path = format!("kafka.topics.streaming.{key}");
        if let Some(problem) = topic_name_problem(name) {
            return Err((path, problem));
        }
        if let Some((other, _)) = topics[..i].iter().find(|(_, n)| n == name) {
            return Err((
                path,
                format!("topic {name:?} is already used by kafka.topics.streaming.{other}; all five topics must be distinct"),
            ));
        }
    }

    at_least("kafka.consumer.maxHeldBytes", c.kafka.consumer.max_held_bytes, 1024 * 1024)?;
    let fw = c.kafka.consumer.fetch_wait_max_ms;
    if !(1..=5000).contains(&fw) {
        return Err((
            "kafka.consumer.fetchWaitMaxMs".into(),
            format!("must be between 1 and 5000, got {fw}"),
        ));
    }
    let dk = c.kafka.producer.dead_letter_key_bytes;
    if dk > 65_536 {
        return Err((
            "kafka.producer.deadLetterKeyBytes".into(),
            format!("must be between 0 and 65536, got {dk}"),
        ));
    }

    check_security(&c.kafka.security)?;
    for key in c.kafka.properties.0.keys() {
        let k = key.trim();
        if k.is_empty() {
            return Err(("kafka.properties".into(), "a property name is empty".into()));
        }
        if let Some((_, owner)) = OWNED_PROPERTIES.iter().find(|(p, _)| p.eq_ignore_ascii_case(k)) {
            return Err((
                format!("kafka.properties.{k}"),
                format!("is set by Sluice and may not be overridden ({owner})"),
            ));
        }
    }

    let inf = &c.streaming.inference;
    let b = &inf.batching;
    at_least(&format!("{INFERENCE}.processing.timeout"), inf.processing.timeout_secs, 1)?;
    at_least(
        &format!("{INFERENCE}.processing.drainTimeout"),
        inf.processing.drain_timeout_secs,
        1,
    )?;
    let tx = &inf.processing.transactions;
    if !(1..=60_000).contains(&tx.commit_interval_ms) {
        return Err((
            format!("{INFERENCE}.processing.transactions.commitIntervalMs"),
            format!("must be between 1 and 60000, got {}", tx.commit_interval_ms),
        ));
    }
    at_least(&format!("{INFERENCE}.processing.transactions.maxRecords"), tx.max_records as u64, 1)?;
    if tx.timeout_ms < 1000 || tx.timeout_ms < 2 * tx.commit_interval_ms {
        return Err((
            format!("{INFERENCE}.processing.transactions.timeoutMs"),
            format!(
                "must be at least 1000 and at least twice commitIntervalMs ({}), got {}",
                tx.commit_interval_ms, tx.timeout_ms
            ),
        ));
    }
    if let Some(bad) =
        tx.instance_id.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
    {
        return Err((
            format!("{INFERENCE}.processing.transactions.instanceId"),
            format!("may hold only letters, digits, '.', '_' and '-', got {bad:?}"),
        ));
    }
    let cb = &inf.processing.circuit_breaker;
    let cbk = format!("{INFERENCE}.processing.circuitBreaker");
    at_least(&format!("{cbk}.consecutiveFailures"), u64::from(cb.consecutive_failures), 1)?;
    if !(1..=100).contains(&cb.failure_rate_percent) {
        return Err((
            format!("{cbk}.failureRatePercent"),
            format!("must be between 1 and 100, got {}", cb.failure_rate_percent),
        ));
    }
    at_least(&format!("{cbk}.windowSeconds"), cb.window_seconds, 1)?;
    at_least(&format!("{cbk}.minBatches"), u64::from(cb.min_batches), 1)?;
    at_least(&format!("{cbk}.coolDownMs"), cb.cool_down_ms, 10)?;
    at_least(&format!("{cbk}.maxCoolDownMs"), cb.max_cool_down_ms, cb.cool_down_ms)?;
    at_least("gpu.laneFailureLimit", u64::from(c.gpu.lane_failure_limit), 1)?;
    at_least(&format!("{INFERENCE}.batching.maxBatchRows"), b.max_batch_rows as u64, 1)?;
    at_least(&format!("{INFERENCE}.batching.maxBatchTokens"), b.max_batch_tokens as u64, 2)?;
    at_least(&format!("{INFERENCE}.batching.ringCapacity"), b.ring_capacity as u64, 1)?;
    at_least(&format!("{INFERENCE}.batching.priorityBurst"), b.priority_burst as u64, 1)?;
    // 0 CPU lanes is allowed when GPU lanes take all the work.
    at_least(
        &format!("{INFERENCE}.lanes.cpu.count"),
        inf.lanes.cpu.count as u64,
        u64::from(c.gpu.devices.is_empty()),
    )?;

    let limits = &inf.limits;
    let rb = limits.max_record_bytes;
    if !(MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&rb) {
        return Err((
            format!("{INFERENCE}.limits.maxRecordBytes"),
            format!("must be between {MIN_RECORD_BYTES} (1 KiB) and {MAX_RECORD_BYTES} (256 MiB), got {rb}"),
        ));
    }
    at_least(
        &format!("{INFERENCE}.limits.maxItemsPerRequest"),
        limits.max_items_per_request as u64,
        1,
    )?;
    at_least(&format!("{INFERENCE}.limits.maxIdBytes"), limits.max_id_bytes as u64, 1)?;

    if inf.model.repository.as_os_str().is_empty() {
        return Err((format!("{INFERENCE}.model.repository"), "must not be empty".into()));
    }
    at_least(&format!("{INFERENCE}.model.cache.size"), inf.model.cache.size as u64, 1)?;
    at_least(
        &format!("{INFERENCE}.metrics.reportingIntervalSeconds"),
        inf.metrics.reporting_interval_seconds,
        1,
    )?;

    let gpu = &c.gpu;
    for (i, d) in gpu.devices.iter().enumerate() {
        if gpu.devices[..i].contains(d) {
            return Err(("gpu.devices".into(), format!("device {d} is listed twice")));
        }
    }
    at_least("gpu.streamsPerDevice", gpu.streams_per_device as u64, 1)?;
    let ro = &c.streaming.inference.model.rollout;
    let rk = format!("{INFERENCE}.model.rollout");
    at_least(&format!("{rk}.canaryMinRequests"), ro.canary_min_requests, 1)?;
    at_least(&format!("{rk}.canaryCheckIntervalMs"), ro.canary_check_interval_ms, 10)?;
    at_least(&format!("{rk}.shadowQueueBatches"), ro.shadow_queue_batches as u64, 1)?;

    if c.log.level.trim().is_empty() {
        return Err((
            "log.level".into(),
            "must be a non-empty EnvFilter directive such as \"info\"".into(),
        ));
    }
    Ok(())
}

/// `kafka.security`: the settings of the chosen protocol are complete, and none is given that
/// the protocol would ignore.
fn check_security(s: &KafkaSecurity) -> Result<(), Violation> {
    const SEC: &str = "kafka.security";
    let p = s.protocol;
    if !p.uses_tls() && s.ssl.is_set() {
        return Err((
            format!("{SEC}.ssl"),
            format!(
                "TLS settings are given but protocol is {p}: use ssl or sasl_ssl, or remove them"
            ),
        ));
    }
    if !p.uses_sasl() && s.sasl.is_set() {
        return Err((
            format!("{SEC}.sasl"),
            format!("SASL settings are given but protocol is {p}: use sasl_plaintext or sasl_ssl, or remove them"),
        ));
    }
    let ssl = &s.ssl;
    if ssl.certificate_file.is_some() != ssl.key_file.is_some() {
        return Err((
            format!("{SEC}.ssl.keyFile"),
            "certificateFile and keyFile go together (mutual TLS needs both)".into(),
        ));
    }
    if ssl.key_password.is_some() && ssl.key_password_file.is_some() {
        return Err((
            format!("{SEC}.ssl.keyPasswordFile"),
            "give keyPassword or keyPasswordFile, not both".into(),
        ));
    }
    if (ssl.key_password.is_some() || ssl.key_password_file.is_some()) && ssl.key_file.is_none() {
        return Err((format!("{SEC}.ssl.keyPassword"), "is set but there is no keyFile".into()));
    }
    if !p.uses_sasl() {
        return Ok(());
    }
    let sasl = &s.sasl;
    if sasl.password.is_some() && sasl.password_file.is_some() {
        return Err((
            format!("{SEC}.sasl.passwordFile"),
            "give password or passwordFile, not both".into(),
        ));
    }
    let m = sasl.mechanism;
    if m == SaslMechanism::OAuthBearer {
        if sasl.username.is_some() || sasl.password.is_some() || sasl.password_file.is_some() {
            return Err((
                format!("{SEC}.sasl.username"),
                "username and password are not used with mechanism OAUTHBEARER: remove them \
                 (the token names its principal)"
                    .into(),
            ));
        }
        if sasl.oauthbearer.token_file.is_none() {
            return Err((
                format!("{SEC}.sasl.oauthbearer.tokenFile"),
                "is required with mechanism OAUTHBEARER".into(),
            ));
        }
        if sasl.oauthbearer.principal.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return Err((
                format!("{SEC}.sasl.oauthbearer.principal"),
                "is empty: give a principal, or null to take the JWT's sub claim".into(),
            ));
        }
        return Ok(());
    }
    if sasl.oauthbearer.is_set() {
        return Err((
            format!("{SEC}.sasl.oauthbearer"),
            format!("is given but mechanism is {m}: use OAUTHBEARER, or remove it"),
        ));
    }
    if sasl.username.as_deref().is_none_or(|u| u.is_empty()) {
        return Err((format!("{SEC}.sasl.username"), format!("is required with mechanism {m}")));
    }
    if sasl.password.is_none() && sasl.password_file.is_none() {
        return Err((
            format!("{SEC}.sasl.password"),
            format!("is required with mechanism {m} (or passwordFile, or SLUICE_KAFKA_SECURITY_SASL_PASSWORD)"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(check(&Config::default()), Ok(()));
    }

    #[test]
    fn topic_names() {
        assert_eq!(topic_name_problem("realtime-inference.v1_x"), None);
        assert!(topic_name_problem("").unwrap().contains("empty"));
        assert!(topic_name_problem("a b").unwrap().contains("' '"));
        assert!(topic_name_problem("..").is_some());
        assert!(topic_name_problem(&"a".repeat(249)).is_none());
        assert!(topic_name_problem(&"a".repeat(250)).unwrap().contains("249"));
    }

    #[test]
    fn record_bytes_bounds() {
        let mut c = Config::default();
        for (v, ok) in
            [(1023, false), (1024, true), (MAX_RECORD_BYTES, true), (MAX_RECORD_BYTES + 1, false)]
        {
            c.streaming.inference.limits.max_record_bytes = v;
            assert_eq!(check(&c).is_ok(), ok, "{v}");
        }
    }

    #[test]
    fn duplicate_gpu_devices() {
        let mut c = Config::default();
        c.gpu.devices = vec![0, 1, 0];
        assert_eq!(check(&c).unwrap_err().0, "gpu.devices");
    }

    #[test]
    fn zero_cpu_lanes_only_with_gpu_lanes() {
        let mut c = Config::default();
        c.streaming.inference.lanes.cpu.count = 0;
        assert_eq!(check(&c).unwrap_err().0, "streaming.inference.lanes.cpu.count");
        c.gpu.devices = vec![0];
        assert!(check(&c).is_ok());
    }
}
