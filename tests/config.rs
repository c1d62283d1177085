//! Integration tests of `sluice::config`: defaults, files, environment overrides, errors.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice::config::{
    check_file, Compression, Config, ConfigError, DeliveryGuarantee, LogFormat, SaslMechanism,
    Secret, SecurityProtocol, WatermarkPolicy, REDACTED,
};

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sluice.example.yaml")
}

fn parse(yaml: &str) -> Result<Config, ConfigError> {
    Config::from_yaml_str(yaml, &|_| None)
}

fn parse_env(yaml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_yaml_str_with_vars(yaml, vars.iter().map(|&(k, v)| (k, v)))
}

/// The error message of a document that must be rejected.
fn err(yaml: &str) -> String {
    match parse(yaml) {
        Ok(c) => panic!("accepted:\n{yaml}\nas {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn env_err(yaml: &str, vars: &[(&str, &str)]) -> String {
    match parse_env(yaml, vars) {
        Ok(c) => panic!("accepted {vars:?} as {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_contains(message: &str, needles: &[&str]) {
    for n in needles {
        assert!(message.contains(n), "{message:?} does not contain {n:?}");
    }
}

fn temp_yaml(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.flush().unwrap();
    f
}

// ---------------------------------------------------------------------------------------------
// defaults and files
// ---------------------------------------------------------------------------------------------

#[test]
fn defaults_match_the_documented_values() {
    let c = Config::default();
    assert_eq!(c.kafka.bootstrap.servers, "127.0.0.1:9092");
    assert_eq!(c.kafka.consumer.group, "sluice");
    let t = &c.kafka.topics.streaming;
    assert_eq!(
        [&t.input, &t.output, &t.priority, &t.metrics, &t.dlq],
        [
            "realtime-inference-input",
            "realtime-inference-output",
            "priority-inference",
            "realtime-metrics",
            "realtime-inference-dlq"
        ]
    );
    let inf = &c.streaming.inference;
    assert!(inf.enabled);
    assert_eq!(inf.trigger.interval_ms, 500);
    assert_eq!(inf.trigger_interval(), Duration::from_millis(500));
    assert_eq!(inf.watermark.delay_threshold, Duration::from_secs(2));
    assert_eq!(inf.delay_threshold(), Duration::from_secs(2));
    assert_eq!(inf.watermark.policy, WatermarkPolicy::Process);
    assert_eq!(inf.processing.guarantee, DeliveryGuarantee::AtLeastOnce);
    assert_eq!(inf.processing.timeout_secs, 10);
    assert_eq!(inf.batch_timeout(), Duration::from_secs(10));
    assert_eq!(inf.processing.max_retries, 3);
    let b = &inf.batching;
    assert_eq!(
        (b.max_batch_rows, b.max_batch_tokens, b.ring_capacity, b.priority_burst),
        (64, 8192, 4096, 4)
    );
    assert!(b.length_grouping);
    assert_eq!(inf.lanes.cpu.count, 1);
    let l = &inf.limits;
    assert_eq!((l.max_record_bytes, l.max_items_per_request, l.max_id_bytes), (1048576, 64, 256));
    assert_eq!(inf.model.repository, PathBuf::from("./models"));
    assert!(inf.model.cache.enabled);
    assert_eq!(inf.model.cache.size, 10);
    assert_eq!(inf.model.cache.ttl_minutes, 30);
    assert_eq!(inf.ttl(), Duration::from_secs(1800));
    assert!(inf.metrics.enabled);
    assert_eq!(inf.metrics.reporting_interval_seconds, 30);
    assert!(c.gpu.devices.is_empty());
    assert_eq!(c.gpu.streams_per_device, 1);
    assert_eq!(c.control.listen.to_string(), "127.0.0.1:8086");
    assert_eq!(c.control.token, None);
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.log.level, "info");
    c.validate().unwrap();
}

#[test]
fn empty_document_is_the_defaults() {
    assert_eq!(parse("").unwrap(), Config::default());
    assert_eq!(parse("\n# only a comment\n").unwrap(), Config::default());
    assert_eq!(parse("{}").unwrap(), Config::default());
}

#[test]
fn empty_file_loads_as_the_defaults() {
    let f = temp_yaml("");
    assert_eq!(Config::load(Some(f.path())).unwrap(), Config::default());
}

#[test]
fn no_file_loads_as_the_defaults() {
    assert_eq!(Config::load(None).unwrap(), Config::default());
}

#[test]
fn example_file_is_exactly_the_defaults() {
    let text = std::fs::read_to_string(example_path()).unwrap();
    assert_eq!(parse(&text).unwrap(), Config::default());
    assert_eq!(Config::load(Some(&example_path())).unwrap(), Config::default());
}

#[test]
fn example_file_spells_out_every_key() {
    fn walk(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            serde_yaml::Value::Mapping(m) if !m.is_empty() => {
                for (k, child) in m {
                    let k = k.as_str().unwrap();
                    let p = if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
                    walk(child, &p, out);
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let text = std::fs::read_to_string(example_path()).unwrap();
    let mut in_example = Vec::new();
    walk(&serde_yaml::from_str(&text).unwrap(), "", &mut in_example);
    let all: Vec<String> = Config::env_keys().into_iter().map(|(_, path)| path).collect();
    assert_eq!(in_example, all);
    // ...and documents each one with a comment right above it.
    let lines: Vec<&str> = text.lines().collect();
    for path in &all {
        let key = path.rsplit('.').next().unwrap();
        let i = lines.iter().position(|l| l.trim_start().starts_with(&format!("{key}:"))).unwrap();
        assert!(lines[i - 1].trim_start().starts_with('#'), "{path} has no comment");
    }
}

#[test]
fn partial_file_keeps_other_defaults() {
    let c = parse(
        "streaming:\n  inference:\n    batching: {maxBatchRows: 8}\n    watermark: {delayThreshold: 500ms, policy: expire}\n",
    )
    .unwrap();
    let inf = &c.streaming.inference;
    assert_eq!(inf.batching.max_batch_rows, 8);
    assert_eq!(inf.batching.max_batch_tokens, 8192);
    assert_eq!(inf.delay_threshold(), Duration::from_millis(500));
    assert_eq!(inf.watermark.policy, WatermarkPolicy::Expire);
    assert_eq!(c.kafka, Config::default().kafka);
}

#[test]
fn durations_accept_humantime_strings() {
    let c = parse("streaming: {inference: {watermark: {delayThreshold: 1m 30s}}}").unwrap();
    assert_eq!(c.streaming.inference.delay_threshold(), Duration::from_secs(90));
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.yaml");
    let e = Config::load(Some(&path)).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert_contains(&e.to_string(), &["cannot read config file", &path.display().to_string()]);
}

#[test]
fn yaml_syntax_error_names_the_file() {
    let f = temp_yaml("kafka:\n  bootstrap: {servers: [\n");
    let e = Config::load(Some(f.path())).unwrap_err();
    assert_contains(&e.to_string(), &[&f.path().display().to_string(), "invalid YAML"]);
}

// ---------------------------------------------------------------------------------------------
// unknown keys and type errors
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_nested_key_with_typo_suggestion() {
    let e = err("streaming:\n  inference:\n    trigger:\n      intervalMS: 100\n");
    assert_eq!(
        e,
        "unknown key 'streaming.inference.trigger.intervalMS' (did you mean 'intervalMs'?)"
    );
    let e = err("streaming: {inference: {batching: {maxBachRows: 3}}}");
    assert_eq!(
        e,
        "unknown key 'streaming.inference.batching.maxBachRows' (did you mean 'maxBatchRows'?)"
    );
}

#[test]
fn unknown_key_without_a_close_match() {
    let e = err("kafka:\n  consumer:\n    group: g\n    autoOffsetReset: latest\n");
    assert_eq!(e, "unknown key 'kafka.consumer.autoOffsetReset'");
    assert_eq!(err("telemetry: {}"), "unknown key 'telemetry'");
    assert_eq!(err("kafak: {}"), "unknown key 'kafak' (did you mean 'kafka'?)");
}

#[test]
fn unknown_key_below_a_leaf_section_is_reported() {
    let e = err("streaming: {inference: {lanes: {gpu: {count: 1}}}}");
    assert_eq!(e, "unknown key 'streaming.inference.lanes.gpu'");
}

#[test]
fn bad_duration_names_the_key() {
    let e = err("streaming: {inference: {watermark: {delayThreshold: 2 parsecs}}}");
    assert_contains(
        &e,
        &["streaming.inference.watermark.delayThreshold: invalid duration \"2 parsecs\": "],
    );
    let e = err("streaming: {inference: {watermark: {delayThreshold: 2}}}");
    assert_contains(&e, &["streaming.inference.watermark.delayThreshold: invalid duration \"2\""]);
}

#[test]
fn bad_enum_values_name_the_key() {
    let e = err("streaming: {inference: {watermark: {policy: drop}}}");
    assert_contains(&e, &["streaming.inference.watermark.policy: ", "drop", "process", "expire"]);
    let e = err("streaming: {inference: {processing: {guarantee: at_most_once}}}");
    assert_contains(
        &e,
        &["streaming.inference.processing.guarantee: ", "at_most_once", "exactly_once"],
    );
    let e = err("log: {format: xml}");
    assert_contains(&e, &["log.format: ", "xml", "json"]);
}

#[test]
fn wrong_types_name_the_key() {
    let e = err("streaming: {inference: {batching: {maxBatchRows: abc}}}");
    assert_eq!(
        e,
        "streaming.inference.batching.maxBatchRows: expected an integer, got string \"abc\""
    );
    let e = err("streaming: {inference: {enabled: 3}}");
    assert_contains(&e, &["streaming.inference.enabled: expected a boolean"]);
    let e = err("gpu: {devices: 0}");
    assert_contains(&e, &["gpu.devices: expected a sequence, got integer `0`"]);
    let e = err("gpu: {devices: [0, x]}");
    assert_contains(&e, &["gpu.devices: ", "\"x\""]);
    let e = err("streaming: {inference: {batching: {maxBatchRows: -1}}}");
    assert_eq!(
        e,
        "streaming.inference.batching.maxBatchRows: invalid value: integer `-1`, expected a non-negative integer"
    );
    let e = err("streaming: {inference: {processing: {maxRetries: 5000000000}}}");
    assert_contains(&e, &["streaming.inference.processing.maxRetries: ", "5000000000"]);
    let e = err("kafka: {bootstrap: localhost}");
    assert_eq!(e, "kafka.bootstrap: expected a mapping, got string \"localhost\"");
    let e = err("control: {token: [a]}");
    assert_contains(&e, &["control.token: "]);
    assert_contains(&err("- a\n- b\n"), &["(root): expected a mapping"]);
}

#[test]
fn scalars_are_accepted_as_strings() {
    let c = parse("kafka: {consumer: {group: 42}}\ncontrol: {token: 12345}").unwrap();
    assert_eq!(c.kafka.consumer.group, "42");
    assert_eq!(c.control.token.as_deref(), Some("12345"));
}

// ---------------------------------------------------------------------------------------------
// validation
// ---------------------------------------------------------------------------------------------

#[test]
fn range_violations_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "streaming: {inference: {batching: {maxBatchRows: 0}}}",
            "streaming.inference.batching.maxBatchRows: must be >= 1, got 0",
        ),
        (
            "streaming: {inference: {batching: {maxBatchTokens: 1}}}",
            "streaming.inference.batching.maxBatchTokens: must be >= 2, got 1",
        ),
        (
            "streaming: {inference: {batching: {ringCapacity: 0}}}",
            "streaming.inference.batching.ringCapacity: must be >= 1, got 0",
        ),
        (
            "streaming: {inference: {batching: {priorityBurst: 0}}}",
            "streaming.inference.batching.priorityBurst: must be >= 1, got 0",
        ),
        (
            "streaming: {inference: {model: {cache: {size: 0}}}}",
            "streaming.inference.model.cache.size: must be >= 1, got 0",
        ),
        (
            "streaming: {inference: {metrics: {reportingIntervalSeconds: 0}}}",
            "streaming.inference.metrics.reportingIntervalSeconds: must be >= 1, got 0",
        ),
        (
            "streaming: {inference: {lanes: {cpu: {count: 0}}}}",
            "streaming.inference.lanes.cpu.count: must be >= 1, got 0",
        ),
        (
            "streaming: {inference: {processing: {timeout: 0}}}",
            "streaming.inference.processing.timeout: must be >= 1, got 0",
        ),
        ("gpu: {streamsPerDevice: 0}", "gpu.streamsPerDevice: must be >= 1, got 0"),
        ("gpu: {devices: [1, 1]}", "gpu.devices: device 1 is listed twice"),
    ];
    for (yaml, expected) in cases {
        assert_eq!(&err(yaml), expected, "for {yaml}");
    }
}

#[test]
fn max_record_bytes_bounds() {
    for bad in [0u64, 1023, 256 * 1024 * 1024 + 1] {
        let e = err(&format!("streaming: {{inference: {{limits: {{maxRecordBytes: {bad}}}}}}}"));
        assert_contains(
            &e,
            &[
                "streaming.inference.limits.maxRecordBytes: must be between 1024",
                &format!("got {bad}"),
            ],
        );
    }
    for good in [1024u64, 256 * 1024 * 1024] {
        parse(&format!("streaming: {{inference: {{limits: {{maxRecordBytes: {good}}}}}}}"))
            .unwrap();
    }
}

#[test]
fn topic_names_are_validated() {
    let e = err("kafka: {topics: {streaming: {output: ''}}}");
    assert_eq!(e, "kafka.topics.streaming.output: must not be empty");
    let e = err("kafka: {topics: {streaming: {dlq: 'dead letters'}}}");
    assert_contains(&e, &["kafka.topics.streaming.dlq: invalid topic name \"dead letters\""]);
    let long = "t".repeat(250);
    let e = err(&format!("kafka: {{topics: {{streaming: {{metrics: {long}}}}}}}"));
    assert_contains(&e, &["kafka.topics.streaming.metrics: ", "249"]);
    parse(&format!("kafka: {{topics: {{streaming: {{metrics: {}}}}}}}", "t".repeat(249))).unwrap();
}

#[test]
fn duplicate_topics_are_rejected() {
    let e = err("kafka: {topics: {streaming: {input: same, priority: same}}}");
    assert_eq!(
        e,
        "kafka.topics.streaming.priority: topic \"same\" is already used by \
         kafka.topics.streaming.input; all five topics must be distinct"
    );
}

#[test]
fn listen_must_be_a_socket_address() {
    let e = err("control: {listen: 'localhost:80'}");
    assert_contains(&e, &["control.listen: invalid socket address \"localhost:80\""]);
    let e = err("control: {listen: '127.0.0.1'}");
    assert_contains(&e, &["control.listen: "]);
    let c = parse("control: {listen: '[::1]:9000'}").unwrap();
    assert_eq!(c.control.listen.port(), 9000);
}

#[test]
fn other_validation_rules() {
    assert_eq!(err("log: {level: ''}").split(':').next(), Some("log.level"));
    assert_eq!(
        err("kafka: {bootstrap: {servers: ''}}").split(':').next(),
        Some("kafka.bootstrap.servers")
    );
    assert_eq!(err("kafka: {consumer: {group: ' '}}"), "kafka.consumer.group: must not be empty");
}

// ---------------------------------------------------------------------------------------------
// environment
// ---------------------------------------------------------------------------------------------

#[test]
fn env_overrides_nested_camel_case_key() {
    let c = parse_env(
        "streaming: {inference: {trigger: {intervalMs: 100}}}",
        &[
            ("SLUICE_STREAMING_INFERENCE_TRIGGER_INTERVAL_MS", "250"),
            ("SLUICE_STREAMING_INFERENCE_BATCHING_MAX_BATCH_ROWS", "16"),
            ("SLUICE_STREAMING_INFERENCE_WATERMARK_DELAY_THRESHOLD", "750ms"),
            ("SLUICE_STREAMING_INFERENCE_PROCESSING_GUARANTEE", "exactly_once"),
            ("SLUICE_STREAMING_INFERENCE_BATCHING_LENGTH_GROUPING", "false"),
            ("SLUICE_KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092"),
            ("SLUICE_LOG_FORMAT", "json"),
        ],
    )
    .unwrap();
    let inf = &c.streaming.inference;
    assert_eq!(inf.trigger_interval(), Duration::from_millis(250), "env wins over the file");
    assert_eq!(inf.batching.max_batch_rows, 16);
    assert_eq!(inf.delay_threshold(), Duration::from_millis(750));
    assert_eq!(inf.processing.guarantee, DeliveryGuarantee::ExactlyOnce);
    assert!(!inf.batching.length_grouping);
    assert_eq!(c.kafka.bootstrap.server_list(), ["broker-1:9092", "broker-2:9092"]);
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn env_overrides_null_key() {
    let c = parse_env("", &[("SLUICE_CONTROL_TOKEN", "s3cret")]).unwrap();
    assert_eq!(c.control.token.as_deref(), Some("s3cret"));
    let c = parse_env("", &[("SLUICE_CONTROL_TOKEN", "123")]).unwrap();
    assert_eq!(c.control.token.as_deref(), Some("123"));
    // A secret set empty is an error: it must not quietly turn authentication off.
    for empty in ["", "   "] {
        let e = parse_env("control: {token: from-file}", &[("SLUICE_CONTROL_TOKEN", empty)])
            .expect_err("an empty token is refused");
        let msg = e.to_string();
        assert!(msg.contains("SLUICE_CONTROL_TOKEN") && msg.contains("empty"), "{msg}");
    }
}

#[test]
fn env_overrides_list() {
    let c = parse_env("", &[("SLUICE_GPU_DEVICES", "[0,1]")]).unwrap();
    assert_eq!(c.gpu.devices, [0, 1]);
    let c = parse_env("gpu: {devices: [3]}", &[("SLUICE_GPU_DEVICES", "2, 5")]).unwrap();
    assert_eq!(c.gpu.devices, [2, 5]);
    let c = parse_env("gpu: {devices: [3]}", &[("SLUICE_GPU_DEVICES", "[]")]).unwrap();
    assert!(c.gpu.devices.is_empty());
    let e = env_err("", &[("SLUICE_GPU_DEVICES", "[a]")]);
    assert_contains(&e, &["SLUICE_GPU_DEVICES (gpu.devices): invalid value \"[a]\""]);
}

#[test]
fn env_through_a_lookup_function() {
    let env: HashMap<&str, &str> = [("SLUICE_GPU_STREAMS_PER_DEVICE", "4")].into();
    let c = Config::from_yaml_str("", &|k| env.get(k).map(|v| v.to_string())).unwrap();
    assert_eq!(c.gpu.streams_per_device, 4);
}

#[test]
fn env_invalid_value_names_variable_and_key() {
    let e = env_err("", &[("SLUICE_STREAMING_INFERENCE_BATCHING_MAX_BATCH_ROWS", "abc")]);
    assert_eq!(
        e,
        "SLUICE_STREAMING_INFERENCE_BATCHING_MAX_BATCH_ROWS \
         (streaming.inference.batching.maxBatchRows): invalid value \"abc\": expected an integer"
    );
    let e = env_err("", &[("SLUICE_STREAMING_INFERENCE_ENABLED", "maybe")]);
    assert_contains(
        &e,
        &["SLUICE_STREAMING_INFERENCE_ENABLED (streaming.inference.enabled): invalid value \"maybe\""],
    );
    let e = env_err("", &[("SLUICE_STREAMING_INFERENCE_WATERMARK_POLICY", "drop")]);
    assert_contains(
        &e,
        &["SLUICE_STREAMING_INFERENCE_WATERMARK_POLICY (streaming.inference.watermark.policy): invalid value \"drop\""],
    );
}

#[test]
fn env_validation_error_names_variable_and_key() {
    let e = env_err("", &[("SLUICE_STREAMING_INFERENCE_BATCHING_MAX_BATCH_ROWS", "0")]);
    assert_eq!(
        e,
        "SLUICE_STREAMING_INFERENCE_BATCHING_MAX_BATCH_ROWS \
         (streaming.inference.batching.maxBatchRows): must be >= 1, got 0"
    );
}

#[test]
fn unknown_sluice_env_var_is_an_error() {
    let e = env_err("", &[("SLUICE_KAFKA_BOOTSTRAP_SERVER", "x:1")]);
    assert_eq!(
        e,
        "unknown environment variable SLUICE_KAFKA_BOOTSTRAP_SERVER: it matches no configuration \
         key (did you mean SLUICE_KAFKA_BOOTSTRAP_SERVERS?)"
    );
    let e = env_err("", &[("SLUICE_FROBNICATE", "1")]);
    assert_contains(&e, &["unknown environment variable SLUICE_FROBNICATE"]);
}

#[test]
fn non_config_variables_are_ignored() {
    let c = parse_env(
        "",
        &[
            ("SLUICE_CONFIG", "/etc/sluice.yaml"),
            ("SLUICE_LOG", "debug"),
            ("SLUICE_CACHE", "/tmp/x"),
            ("SLUICE_TEST_MODEL", "tiny"),
            ("SLUICE_BENCH_ROWS", "9"),
            ("SLUICE_BROKERS", "a:1"),
            ("SLUICE_BROKER", "a:1"),
            ("PATH", "/bin"),
            ("sluice_lowercase", "1"),
        ],
    )
    .unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn env_keys_cover_the_spec_examples() {
    let keys: HashMap<String, String> = Config::env_keys().into_iter().collect();
    for (var, path) in [
        ("SLUICE_KAFKA_BOOTSTRAP_SERVERS", "kafka.bootstrap.servers"),
        (
            "SLUICE_STREAMING_INFERENCE_TRIGGER_INTERVAL_MS",
            "streaming.inference.trigger.intervalMs",
        ),
        ("SLUICE_CONTROL_TOKEN", "control.token"),
        ("SLUICE_GPU_DEVICES", "gpu.devices"),
        ("SLUICE_KAFKA_SECURITY_PROTOCOL", "kafka.security.protocol"),
        ("SLUICE_KAFKA_SECURITY_SASL_PASSWORD", "kafka.security.sasl.password"),
        ("SLUICE_KAFKA_SECURITY_SSL_KEY_PASSWORD", "kafka.security.ssl.keyPassword"),
        ("SLUICE_KAFKA_PROPERTIES", "kafka.properties"),
        ("SLUICE_KAFKA_PRODUCER_COMPRESSION", "kafka.producer.compression"),
        (
            "SLUICE_STREAMING_INFERENCE_PROCESSING_MAX_REPLAYS",
            "streaming.inference.processing.maxReplays",
        ),
    ] {
        assert_eq!(keys.get(var).map(String::as_str), Some(path));
    }
}

// ---------------------------------------------------------------------------------------------
// output
// ---------------------------------------------------------------------------------------------

fn non_default() -> Config {
    let mut c = Config::default();
    c.kafka.bootstrap.servers = "k1:9092,k2:9092".into();
    c.kafka.topics.streaming.dlq = "dead.letters".into();
    let inf = &mut c.streaming.inference;
    inf.enabled = false;
    inf.trigger.interval_ms = 5;
    inf.watermark.delay_threshold = Duration::from_millis(1500);
    inf.watermark.policy = WatermarkPolicy::Expire;
    inf.processing.guarantee = DeliveryGuarantee::ExactlyOnce;
    inf.batching.max_batch_rows = 7;
    inf.lanes.cpu.count = 3;
    inf.model.repository = "/srv/models".into();
    c.gpu.devices = vec![0, 2];
    c.control.listen = "[::1]:9999".parse().unwrap();
    c.control.token = Some("t0k3n".into());
    c.log.format = LogFormat::Json;
    c.log.level = "sluice=debug,warn".into();
    c
}

#[test]
fn to_yaml_round_trips() {
    for c in [Config::default(), non_default()] {
        let yaml = c.to_yaml();
        assert_eq!(parse(&yaml).unwrap(), c, "{yaml}");
        let f = temp_yaml(&yaml);
        assert_eq!(Config::load(Some(f.path())).unwrap(), c);
    }
}

#[test]
fn check_file_prints_the_effective_configuration() {
    let f = temp_yaml(
        "streaming: {inference: {batching: {maxBatchRows: 12}}}\ncontrol: {token: abc}\n",
    );
    let out = check_file(f.path()).unwrap();
    assert_contains(&out, &["maxBatchRows: 12", "maxBatchTokens: 8192", "token: <redacted>"]);
    assert!(!out.contains("abc"));
    let e = check_file(Path::new("/nonexistent/sluice.yaml")).unwrap_err();
    assert_contains(&e.to_string(), &["/nonexistent/sluice.yaml"]);
    let f = temp_yaml("log: {lvel: debug}\n");
    assert_eq!(
        check_file(f.path()).unwrap_err().to_string(),
        "unknown key 'log.lvel' (did you mean 'level'?)"
    );
}

#[test]
fn transaction_settings_are_checked() {
    let tx = |body: &str| {
        format!("streaming: {{inference: {{processing: {{guarantee: exactly_once, transactions: {{{body}}}}}}}}}")
    };
    let c = parse(&tx("instanceId: sluice-2, commitIntervalMs: 50, maxRecords: 500")).unwrap();
    let t = &c.streaming.inference.processing.transactions;
    assert_eq!(
        (t.instance_id.as_str(), t.commit_interval_ms, t.max_records),
        ("sluice-2", 50, 500)
    );
    assert_eq!(t.timeout_ms, 60_000, "default transaction.timeout.ms");
    assert_contains(
        &err(&tx("commitIntervalMs: 0")),
        &["streaming.inference.processing.transactions.commitIntervalMs", "between 1 and 60000"],
    );
    assert_contains(
        &err(&tx("commitIntervalMs: 1000, timeoutMs: 1500")),
        &["transactions.timeoutMs", "twice commitIntervalMs"],
    );
    assert_contains(&err(&tx("maxRecords: 0")), &["transactions.maxRecords"]);
    assert_contains(&err(&tx("instanceId: \"a/b\"")), &["transactions.instanceId", "'/'"]);
}

// ---------------------------------------------------------------------------------------------
// kafka.security, kafka.properties, kafka.producer.compression
// ---------------------------------------------------------------------------------------------

const SCRAM: &str = "kafka:\n  security:\n    protocol: sasl_ssl\n    ssl: {caFile: /etc/ca.pem}\n    sasl: {mechanism: SCRAM-SHA-512, username: svc, passwordFile: /run/secrets/kafka}\n";

#[test]
fn security_sections_parse() {
    let c = parse(SCRAM).unwrap();
    let s = &c.kafka.security;
    assert_eq!(s.protocol, SecurityProtocol::SaslSsl);
    assert_eq!(s.ssl.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert!(s.ssl.verify_hostname, "hostname verification is on by default");
    assert_eq!(s.sasl.mechanism, SaslMechanism::ScramSha512);
    assert_eq!(s.sasl.username.as_deref(), Some("svc"));
    assert_eq!(s.sasl.password_file.as_deref(), Some(Path::new("/run/secrets/kafka")));
    assert_eq!(Config::default().kafka.security.protocol, SecurityProtocol::Plaintext);

    // OAUTHBEARER: a token file, and optionally the principal (else the JWT's sub).
    let o = parse("kafka: {security: {protocol: sasl_ssl, sasl: {mechanism: OAUTHBEARER, oauthbearer: {tokenFile: /var/run/secrets/kafka/token}}}}").unwrap();
    let sasl = &o.kafka.security.sasl;
    assert_eq!(sasl.mechanism, SaslMechanism::OAuthBearer);
    assert_eq!(
        sasl.oauthbearer.token_file.as_deref(),
        Some(Path::new("/var/run/secrets/kafka/token"))
    );
    assert_eq!(sasl.oauthbearer.principal, None);

    let mtls = parse("kafka: {security: {protocol: ssl, ssl: {certificateFile: c.pem, keyFile: k.pem, keyPasswordFile: p.txt, verifyHostname: false}}}").unwrap();
    assert!(!mtls.kafka.security.ssl.verify_hostname);
}

#[test]
fn secrets_come_from_the_environment() {
    let c = parse_env(
        "kafka: {security: {protocol: sasl_plaintext, sasl: {username: svc}}}",
        &[("SLUICE_KAFKA_SECURITY_SASL_PASSWORD", "s3cr3t-from-env")],
    )
    .unwrap();
    assert_eq!(
        c.kafka.security.sasl.password.as_ref().map(Secret::expose),
        Some("s3cr3t-from-env")
    );
    // A number-looking secret stays the exact string.
    let c = parse_env(
        "kafka: {security: {protocol: sasl_plaintext, sasl: {username: svc}}}",
        &[("SLUICE_KAFKA_SECURITY_SASL_PASSWORD", "007")],
    )
    .unwrap();
    assert_eq!(c.kafka.security.sasl.password.as_ref().map(Secret::expose), Some("007"));
    // Set but empty is a mistake, not "no password".
    let e = env_err(
        "kafka: {security: {protocol: sasl_plaintext, sasl: {username: svc}}}",
        &[("SLUICE_KAFKA_SECURITY_SASL_PASSWORD", "")],
    );
    assert_contains(
        &e,
        &["kafka.security.sasl.password", "SLUICE_KAFKA_SECURITY_SASL_PASSWORD", "empty"],
    );
}

#[test]
fn incomplete_or_contradictory_security_is_refused() {
    for (yaml, needles) in [
        (
            "kafka: {security: {protocol: ssl, sasl: {username: u, password: p}}}",
            &["kafka.security.sasl", "protocol is ssl"][..],
        ),
        ("kafka: {security: {ssl: {caFile: ca.pem}}}", &["kafka.security.ssl", "protocol is plaintext"]),
        (
            "kafka: {security: {protocol: sasl_ssl, sasl: {password: p}}}",
            &["kafka.security.sasl.username", "required with mechanism PLAIN"],
        ),
        (
            "kafka: {security: {protocol: sasl_ssl, sasl: {mechanism: SCRAM-SHA-256, username: u}}}",
            &["kafka.security.sasl.password", "SCRAM-SHA-256"],
        ),
        (
            "kafka: {security: {protocol: sasl_ssl, sasl: {username: u, password: p, passwordFile: f}}}",
            &["kafka.security.sasl.passwordFile", "not both"],
        ),
        ("kafka: {security: {protocol: ssl, ssl: {certificateFile: c.pem}}}", &["kafka.security.ssl.keyFile", "go together"]),
        ("kafka: {security: {protocol: ssl, ssl: {keyPassword: x}}}", &["kafka.security.ssl.keyPassword", "no keyFile"]),
        ("kafka: {security: {protocol: tls}}", &["kafka.security.protocol", "tls"]),
        ("kafka: {security: {protocol: sasl_ssl, sasl: {mechanism: GSSAPI}}}", &["kafka.security.sasl.mechanism", "GSSAPI"]),
        (
            "kafka: {security: {protocol: sasl_ssl, sasl: {mechanism: OAUTHBEARER, username: u, password: p}}}",
            &["kafka.security.sasl.username", "not used with mechanism OAUTHBEARER"],
        ),
        (
            "kafka: {security: {protocol: sasl_ssl, sasl: {mechanism: OAUTHBEARER}}}",
            &["kafka.security.sasl.oauthbearer.tokenFile", "required"],
        ),
        (
            "kafka: {security: {protocol: sasl_ssl, sasl: {mechanism: OAUTHBEARER, oauthbearer: {tokenFile: t, principal: \"\"}}}}",
            &["kafka.security.sasl.oauthbearer.principal", "empty"],
        ),
        (
            "kafka: {security: {protocol: sasl_ssl, sasl: {username: u, password: p, oauthbearer: {tokenFile: t}}}}",
            &["kafka.security.sasl.oauthbearer", "mechanism is PLAIN"],
        ),
        (
            "kafka: {properties: {sasl.oauthbearer.method: oidc}}",
            &["sasl.oauthbearer.method", "OIDC token fetch is not built in"],
        ),
    ] {
        assert_contains(&err(yaml), needles);
    }
}

#[test]
fn properties_take_scalars_as_text() {
    let c = parse("kafka:\n  properties:\n    socket.timeout.ms: 30000\n    socket.nagle.disable: true\n    broker.address.family: any\n").unwrap();
    let p = &c.kafka.properties.0;
    assert_eq!(p.get("socket.timeout.ms").map(String::as_str), Some("30000"));
    assert_eq!(p.get("socket.nagle.disable").map(String::as_str), Some("true"));
    assert_eq!(p.get("broker.address.family").map(String::as_str), Some("any"));
    let env =
        parse_env("", &[("SLUICE_KAFKA_PROPERTIES", "{statistics.interval.ms: 5000}")]).unwrap();
    assert_eq!(
        env.kafka.properties.0.get("statistics.interval.ms").map(String::as_str),
        Some("5000")
    );
}

#[test]
fn properties_sluice_owns_are_refused() {
    for (key, owner) in [
        ("enable.auto.commit", "at-least-once"),
        ("Enable.Idempotence", "delivery"),
        ("transactional.id", "transactions.instanceId"),
        ("isolation.level", "read_committed"),
        ("compression.type", "kafka.producer.compression"),
        ("sasl.password", "kafka.security.sasl.password"),
        ("security.protocol", "kafka.security.protocol"),
        ("acks", "acks=all"),
        ("auto.offset.reset", "earliest"),
        ("partition.assignment.strategy", "rebalance"),
    ] {
        let e = err(&format!("kafka: {{properties: {{{key}: x}}}}"));
        assert_contains(&e, &[&format!("kafka.properties.{key}"), "set by Sluice", owner]);
    }
}

#[test]
fn compression_codecs() {
    assert_eq!(Config::default().kafka.producer.compression, Compression::None);
    for codec in Compression::ALL {
        let c =
            parse(&format!("kafka: {{producer: {{compression: {}}}}}", codec.as_str())).unwrap();
        assert_eq!(c.kafka.producer.compression, codec);
    }
    assert_contains(
        &err("kafka: {producer: {compression: brotli}}"),
        &["kafka.producer.compression", "brotli"],
    );
    assert_eq!(Config::default().streaming.inference.processing.max_replays, 3);
}

/// Every way a secret can be given stays out of `Debug`, `redacted()` and `sluice config
/// check`'s output.
#[test]
fn secrets_never_show() {
    const SECRETS: [&str; 4] = ["pw-sasl-1a2b", "pw-key-3c4d", "pw-jaas-5e6f", "pw-prop-7a8b"];
    let mut c = Config::default();
    c.kafka.security.protocol = SecurityProtocol::SaslSsl;
    c.kafka.security.sasl.username = Some("svc".into());
    c.kafka.security.sasl.password = Some(Secret::new(SECRETS[0]));
    c.kafka.security.ssl.key_password = Some(Secret::new(SECRETS[1]));
    c.kafka.properties.0.insert("sasl.oauthbearer.config".into(), SECRETS[2].into());
    c.kafka.properties.0.insert("ssl.keystore.password".into(), SECRETS[3].into());
    c.kafka.properties.0.insert("socket.timeout.ms".into(), "30000".into());
    let shown = [
        format!("{c:?}"),
        format!("{:?}", c.kafka),
        c.redacted().to_yaml(),
        format!("{:?}", c.redacted()),
    ];
    for text in &shown {
        for s in SECRETS {
            assert!(!text.contains(s), "{s} shows in\n{text}");
        }
    }
    assert!(shown[2].contains(REDACTED) && shown[2].contains("30000"), "{}", shown[2]);

    // `sluice config check`, with the password from the environment (as a deployment does).
    let f = temp_yaml(
        "kafka: {security: {protocol: sasl_ssl, sasl: {mechanism: SCRAM-SHA-256, username: svc}}}\n",
    );
    let var = "SLUICE_KAFKA_SECURITY_SASL_PASSWORD";
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["config", "check"])
        .arg(f.path())
        .env(var, SECRETS[0])
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(SECRETS[0]), "{text}");
    assert!(
        text.contains(&format!("password: {REDACTED}"))
            || text.contains(&format!("password: '{REDACTED}'")),
        "{text}"
    );
}
