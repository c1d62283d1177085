//! Real-cluster client features against the test broker: every compression codec both ways
//! (a compressed input topic is served, and Sluice's own output is compressed with the codec
//! it is told to use, as stored by the broker), and TLS end to end: Sluice (`sluice serve`)
//! behind a TLS terminator with mutual TLS and an encrypted client key, whose password never
//! shows in the log or in `sluice config check`; a wrong CA fails with a clear error.
//!
//! The TLS tests need `stunnel4` and `openssl` (tests/common/tls.rs); without them they print
//! why and skip. SASL is not tested against a server here: Tansu has no SASL (README
//! "Security and compression").

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::broker::TestBroker;
use common::kafka::{cache_for, config, json, outcomes, setup, Record};
use common::rawlog::stored_codecs;
use common::serve::{mlp_repo, records, result_ids, Serve};
use common::tls::{TlsFront, CLIENT_KEY_PASSWORD};
use common::TestRepo;
use sluice::config::Compression;
use sluice::pipeline::Pipeline;

/// The codec bits of a record batch's attributes, by librdkafka name.
fn codec_bits(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Gzip => 1,
        Compression::Snappy => 2,
        Compression::Lz4 => 3,
        Compression::Zstd => 4,
    }
}

/// Asserts that `topic` holds batches compressed with `codec` and no batch with another
/// codec. (librdkafka sends a batch that would not shrink uncompressed, so with a codec a
/// batch may also be plain; the records here compress well, so most are not.)
fn assert_stored_with(b: &TestBroker, topic: &str, codec: Compression) {
    let stored = stored_codecs(&b.bootstrap, topic, Duration::from_secs(20)).unwrap();
    let bits = codec_bits(codec);
    let seen: BTreeSet<u8> = stored.iter().map(|&(_, _, c)| c).collect();
    assert!(seen.contains(&bits), "{topic}: no batch stored with {codec} ({bits}): {stored:?}");
    assert!(
        seen.iter().all(|&c| c == bits || c == 0),
        "{topic}: batches with another codec than {codec}: {stored:?}"
    );
}

#[test]
fn every_codec_both_ways() {
    let mut b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    let n = 200usize;
    for codec in Compression::ALL {
        let t = setup(&b, &format!("codec-{codec}"), 1);
        // A producer that compresses with `codec` writes the requests (the unknown `pad` field
        // is ignored by Sluice and makes every batch worth compressing).
        let pad = "abcdefgh".repeat(32);
        let recs: Vec<Record> = (0..n)
            .map(|i| {
                let body =
                    json(serde_json::json!({"id": format!("{codec}-{i}"), "model": "tabular",
                    "input": [i as f64, 1, 2, 3, 4, 5, 6, 7], "pad": pad}));
                (Some(format!("k{i}").into_bytes()), body, vec![])
            })
            .collect();
        b.client_settings = vec![("compression.type".into(), codec.as_str().into())];
        b.produce(&t.input, &recs, None).unwrap();
        b.client_settings.clear();
        assert_stored_with(&b, &t.input, codec);

        // Sluice serves them and writes its results with the same codec.
        let mut cfg = config(&b, &t, &repo.path());
        cfg.kafka.producer.compression = codec;
        cfg.streaming.inference.metrics.enabled = false;
        let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");
        let (out, dlq) = outcomes(&b, &t, n, Duration::from_secs(120));
        let report = pipeline.stop();
        assert!(dlq.is_empty(), "{codec}: dead letters {:?}", dlq.first().map(|d| &d.headers));
        let ids: BTreeSet<String> = out
            .iter()
            .map(|c| {
                let v: serde_json::Value = serde_json::from_slice(&c.value).unwrap();
                v["id"].as_str().unwrap().to_owned()
            })
            .collect();
        let want: BTreeSet<String> = (0..n).map(|i| format!("{codec}-{i}")).collect();
        assert_eq!(ids, want, "{codec}: one result per request ({report:?})");
        assert_eq!(out.len(), n, "{codec}: no duplicates");
        assert_stored_with(&b, &t.output, codec);
    }
}

/// The YAML of a pipeline that reaches the broker through `front` with mutual TLS, the key
/// password left to the environment.
fn tls_yaml(
    front: &TlsFront,
    s: &common::serve::Setup,
    repo: &TestRepo,
    ca: &std::path::Path,
) -> String {
    let p = s.group.trim_end_matches("-group");
    format!(
        "kafka:\n  bootstrap: {{servers: \"{}\"}}\n  security:\n    protocol: ssl\n    ssl: {{caFile: \"{}\", certificateFile: \"{}\", keyFile: \"{}\"}}\n  consumer: {{group: {}, sessionTimeoutMs: 3000, heartbeatIntervalMs: 500, commitIntervalMs: 100}}\n  producer: {{compression: zstd}}\n  topics:\n    streaming: {{input: {}, priority: {p}-prio, output: {}, dlq: {}, metrics: {p}-metrics}}\nstreaming:\n  inference:\n    model: {{repository: \"{}\"}}\ncontrol: {{listen: \"127.0.0.1:0\"}}\n",
        front.broker.bootstrap,
        ca.display(),
        front.client_cert().display(),
        front.client_key().display(),
        s.group,
        s.input,
        s.output,
        s.dlq,
        repo.path().display()
    )
}

#[test]
fn records_flow_through_mutual_tls_and_the_key_password_never_shows() {
    let front = match TlsFront::start() {
        Ok(f) => f,
        Err(why) => {
            eprintln!("SKIP records_flow_through_mutual_tls: {why}");
            return;
        }
    };
    let b = &front.broker;
    let repo = mlp_repo();
    // The topics are made through TLS too: the broker advertises only the TLS port.
    let s = common::serve::setup(b, &repo, "tls", 1);
    let yaml = tls_yaml(&front, &s, &repo, &front.ca());
    std::fs::write(&s.config, &yaml).unwrap();
    let env = [("SLUICE_KAFKA_SECURITY_SSL_KEY_PASSWORD", CLIENT_KEY_PASSWORD)];

    // `config check` shows the effective configuration without the password.
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["config", "check"])
        .arg(&s.config)
        .envs(env)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{shown}{}", String::from_utf8_lossy(&check.stderr));
    assert!(shown.contains("keyPassword: <redacted>"), "{shown}");
    assert!(!shown.contains(CLIENT_KEY_PASSWORD), "{shown}");

    let mut serve = Serve::start_with_env(&s.config, &env);
    b.produce(&s.input, &records(0, 50), None).unwrap();
    let got = result_ids(b, &s.output, 50, Duration::from_secs(90));
    assert_eq!(got.len(), 50, "every request answered through TLS:\n{}", serve.log());
    assert!(got.values().all(|&c| c == 1), "{got:?}");
    serve.terminate();
    let log = serve.log();
    assert!(!log.contains(CLIENT_KEY_PASSWORD), "the key password is in the log:\n{log}");
    // The connections really went through the terminator, with a client certificate.
    let tls_log = front.log();
    assert!(tls_log.contains("accepted connection"), "stunnel log:\n{tls_log}");
    assert!(tls_log.contains("Certificate accepted"), "stunnel log:\n{tls_log}");
}

#[test]
fn a_wrong_ca_fails_with_a_clear_error_and_no_hang() {
    let front = match TlsFront::start() {
        Ok(f) => f,
        Err(why) => {
            eprintln!("SKIP a_wrong_ca_fails: {why}");
            return;
        }
    };
    let repo = mlp_repo();
    let s = common::serve::setup(&front.broker, &repo, "tls-wrong-ca", 1);
    std::fs::write(&s.config, tls_yaml(&front, &s, &repo, &front.wrong_ca())).unwrap();
    // `sluice serve` cannot start its pipeline: the failure's cause says why (librdkafka's
    // verdict on the broker's certificate), and it still stops cleanly on SIGTERM.
    let mut serve = Serve::start_with_env(
        &s.config,
        &[("SLUICE_KAFKA_SECURITY_SSL_KEY_PASSWORD", CLIENT_KEY_PASSWORD)],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !serve
        .log()
        .lines()
        .any(|l| l.contains("pipeline failed") && l.contains("certificate verify failed"))
    {
        assert!(Instant::now() < deadline, "no TLS error in the failure:\n{}", serve.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    serve.terminate();
    let log = serve.log();
    assert!(!log.contains(CLIENT_KEY_PASSWORD), "{log}");
    assert!(!log.contains("partitions assigned"), "it must not have connected:\n{log}");
}
