//! The control plane over real HTTP, against a running pipeline on a real broker (Tansu, or the
//! broker named by SLUICE_TEST_BROKER): the lifecycle under traffic (stop drains and commits,
//! restart resumes, nothing lost), health following the broker, token enforcement, model
//! management, `/metrics` parsed by a Prometheus text parser with counters matching what was
//! sent, and metrics-topic snapshots at the configured interval.
//!
//! Nothing here depends on timing to pass: waits poll with generous timeouts.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::{Consumed, Record, TestBroker};
use common::{wait_for, TestRepo};
use serde_json::{json, Value};
use sluice::config::Config;
use sluice::control::{ControlOptions, ControlPlane};

// ---------------------------------------------------------------------------------------------
// A plain HTTP/1.1 client (one request per connection)
// ---------------------------------------------------------------------------------------------

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) =
        text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {text}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Reply { status, headers, body: body.to_string() }
}

fn get(addr: SocketAddr, path: &str) -> Reply {
    http(addr, "GET", path, &[], b"")
}

fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &str) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http(addr, "POST", path, &headers, body.as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

struct Topics {
    input: String,
    output: String,
    dlq: String,
    metrics: String,
    group: String,
}

fn topic_names(prefix: &str) -> Topics {
    let p = TestBroker::unique(prefix);
    Topics {
        input: format!("{p}-in"),
        output: format!("{p}-out"),
        dlq: format!("{p}-dlq"),
        metrics: format!("{p}-metrics"),
        group: format!("{p}-group"),
    }
}

fn topics(b: &TestBroker, prefix: &str, input_partitions: i32) -> Topics {
    let t = topic_names(prefix);
    b.create_topic(&t.input, input_partitions).unwrap();
    for topic in [&t.input.replace("-in", "-prio"), &t.output, &t.dlq, &t.metrics] {
        b.create_topic(topic, 1).unwrap();
    }
    t
}

fn config(bootstrap: &str, t: &Topics, repo: &TestRepo) -> Config {
    let mut cfg = Config::default();
    cfg.kafka.bootstrap.servers = bootstrap.to_string();
    cfg.kafka.consumer.group = t.group.clone();
    cfg.kafka.consumer.session_timeout_ms = 3000;
    cfg.kafka.consumer.heartbeat_interval_ms = 500;
    cfg.kafka.consumer.commit_interval_ms = 100;
    let s = &mut cfg.kafka.topics.streaming;
    s.input = t.input.clone();
    s.priority = t.input.replace("-in", "-prio");
    s.output = t.output.clone();
    s.dlq = t.dlq.clone();
    s.metrics = t.metrics.clone();
    s.control = t.input.replace("-in", "-control");
    cfg.streaming.inference.model.repository = repo.path();
    cfg.streaming.inference.metrics.reporting_interval_seconds = 1;
    cfg.control.listen = "127.0.0.1:0".parse().unwrap();
    cfg
}

fn control(cfg: &Config, repo: &TestRepo, autostart: bool) -> ControlPlane {
    ControlPlane::start(
        cfg.clone(),
        repo.cache.clone(),
        ControlOptions { autostart, lag_interval: Duration::from_secs(1) },
    )
    .expect("control plane")
}

/// A repository with the demo models plus `slowish`: an MLP with three hidden layers of 1024,
/// a few milliseconds of real work per batch, so there is work in flight when the pipeline is
/// stopped.
fn slowish_repo() -> TestRepo {
    let repo = TestRepo::new();
    repo.add_mlp("slowish", "1", vec![1024, 1024, 1024], 5);
    repo
}

fn requests(model: &str, from: usize, to: usize) -> Vec<Record> {
    (from..to)
        .map(|i| {
            (
                None,
                format!(r#"{{"id":"r{i}","model":"{model}","input":[{i},0,0,0,0,0,0,1]}}"#)
                    .into_bytes(),
                vec![],
            )
        })
        .collect()
}

fn state(addr: SocketAddr) -> String {
    get(addr, "/batch-inference/streaming/status").json()["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn wait_running(addr: SocketAddr) {
    wait_for("state running", Duration::from_secs(120), || {
        let s = state(addr);
        assert_ne!(s, "failed", "{}", get(addr, "/batch-inference/streaming/status").body);
        (s == "running").then_some(())
    });
}

/// Request id of an outcome (result JSON, or the original request in a dead letter).
fn id_of(c: &Consumed) -> Option<String> {
    let v: Value = serde_json::from_slice(&c.value).ok()?;
    v["id"].as_str().map(str::to_string)
}

/// Counts per request id among results and dead letters, reading until `n` distinct ids.
fn outcome_ids(b: &TestBroker, t: &Topics, n: usize, timeout: Duration) -> HashMap<String, usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut count: HashMap<String, usize> = HashMap::new();
        for topic in [&t.output, &t.dlq] {
            for c in b.consume(topic, usize::MAX, Duration::from_secs(3)) {
                *count.entry(id_of(&c).unwrap_or_else(|| format!("?{}", c.offset))).or_default() +=
                    1;
            }
        }
        if count.len() >= n || Instant::now() >= deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn lifecycle_under_traffic_stop_drains_and_restart_resumes() {
    let b = TestBroker::start().expect("broker");
    let repo = slowish_repo();
    let t = topics(&b, "cp-life", 2);
    let mut cfg = config(&b.bootstrap, &t, &repo);
    // Small batches of a slow model: seconds of work for the first 1500 records.
    cfg.streaming.inference.batching.max_batch_rows = 8;
    let cp = control(&cfg, &repo, false);
    let addr = cp.local_addr();

    let s = get(addr, "/batch-inference/streaming/status");
    assert_eq!(s.status, 200);
    assert_eq!(s.json()["state"], "stopped", "{}", s.body);

    let r = post(addr, "/batch-inference/streaming/start", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed"], true);
    assert_eq!(r.json()["status"]["state"], "running");
    assert_eq!(r.json()["status"]["circuits"], json!([]), "no breaker has seen a failure");
    // Idempotent.
    let r = post(addr, "/batch-inference/streaming/start", None, "");
    assert_eq!((r.status, r.json()["changed"].clone()), (200, json!(false)), "{}", r.body);

    let n1 = 1500;
    b.produce(&t.input, &requests("slowish", 0, n1), None).unwrap();
    wait_for("some results", Duration::from_secs(120), || {
        let c = get(addr, "/batch-inference/streaming/status").json()["counters"]["results"]
            .as_u64()
            .unwrap_or(0);
        (c >= 100).then_some(())
    });

    // Stop under traffic: it answers after draining and committing.
    let r = post(addr, "/batch-inference/streaming/stop", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["changed"], true);
    assert_eq!(v["status"]["state"], "stopped");
    let report = &v["report"];
    let consumed = report["consumed"].as_u64().unwrap();
    assert!(consumed > 0);
    assert_eq!(
        consumed,
        report["results"].as_u64().unwrap() + report["dead_letters"].as_u64().unwrap(),
        "{report}"
    );
    assert_eq!(report["undeliverable"], 0);
    // Every consumed record's outcome is already on the broker, and its offset committed.
    let ids = outcome_ids(&b, &t, consumed as usize, Duration::from_secs(60));
    assert_eq!(ids.len() as u64, consumed, "outcomes on the broker right after stop");
    let committed: i64 =
        b.committed_offsets(&t.group, &t.input).unwrap().values().map(|o| o.unwrap_or(0)).sum();
    assert_eq!(committed as u64, consumed, "committed offsets cover exactly what was consumed");
    // Idempotent.
    let r = post(addr, "/batch-inference/streaming/stop", None, "");
    assert_eq!((r.status, r.json()["changed"].clone()), (200, json!(false)), "{}", r.body);
    assert_eq!(
        get(addr, "/batch-inference/streaming/status").json()["last_stop"]["consumed"],
        consumed
    );

    // Concurrent lifecycle calls do not race: they run one after the other, and three
    // concurrent starts start once.
    let calls: Vec<_> = ["start", "start", "start"]
        .into_iter()
        .map(|op| {
            std::thread::spawn(move || {
                post(addr, &format!("/batch-inference/streaming/{op}"), None, "")
            })
        })
        .collect();
    let replies: Vec<Reply> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    assert_eq!(
        get(addr, "/batch-inference/streaming/status").json()["generation"],
        2,
        "one start for three calls"
    );
    assert_eq!(replies.iter().filter(|r| r.json()["changed"] == true).count(), 1);

    // It resumes where it stopped (the rest of the first batch of records, then more).
    let n2 = 300;
    b.produce(&t.input, &requests("slowish", n1, n1 + n2), None).unwrap();
    let ids = outcome_ids(&b, &t, n1 + n2, Duration::from_secs(240));
    assert_eq!(ids.len(), n1 + n2, "every produced record has an outcome");

    // A restart under traffic drains too.
    let n3 = 500;
    b.produce(&t.input, &requests("slowish", n1 + n2, n1 + n2 + n3), None).unwrap();
    wait_for("the new records being served", Duration::from_secs(120), || {
        let c = get(addr, "/batch-inference/streaming/status").json()["counters"]["results"]
            .as_u64()
            .unwrap_or(0);
        (c >= 20).then_some(())
    });
    let r = post(addr, "/batch-inference/streaming/restart", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"]["state"], "running");
    let drained = &r.json()["report"];
    assert_eq!(
        drained["consumed"],
        drained["results"].as_u64().unwrap() + drained["dead_letters"].as_u64().unwrap(),
        "{drained}"
    );
    let n = n1 + n2 + n3;
    let ids = outcome_ids(&b, &t, n, Duration::from_secs(240));
    assert_eq!(ids.len(), n, "every produced record has an outcome");
    let dups: usize = ids.values().map(|c| c - 1).sum();
    assert_eq!(dups, 0, "graceful stops and restarts lose nothing and repeat nothing");

    let st = get(addr, "/batch-inference/streaming/status").json();
    assert_eq!(st["state"], "running");
    assert!(!st["assigned_partitions"].as_array().unwrap().is_empty(), "{st}");
    assert!(st["models_loaded"].as_array().unwrap().iter().any(|m| m["name"] == "slowish"), "{st}");
    wait_for("a lag sample", Duration::from_secs(60), || {
        let lag = get(addr, "/batch-inference/streaming/status").json()["lag"].clone();
        lag["total"].as_i64().map(|_| lag)
    });

    let report = cp.shutdown().expect("a running pipeline was drained");
    assert_eq!(report.undeliverable, 0);
    assert!(TcpStream::connect(addr).is_err(), "the listener is closed after shutdown");
}

/// A broker of this test's own, started and stopped with `scripts/broker.sh` on a fixed port so
/// that it can come back at the same address.
struct ScriptBroker {
    port: String,
}

impl ScriptBroker {
    fn start(port: Option<&str>) -> ScriptBroker {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker.sh");
        let mut cmd = Command::new(script);
        cmd.arg("start");
        if let Some(p) = port {
            cmd.arg(p);
        }
        let out = cmd.output().expect("run scripts/broker.sh");
        assert!(out.status.success(), "broker.sh start: {}", String::from_utf8_lossy(&out.stderr));
        let addr = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string();
        ScriptBroker { port: addr.rsplit(':').next().unwrap().to_string() }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn stop(&self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker.sh");
        let _ = Command::new(script).args(["stop", &self.port]).output();
    }
}

impl Drop for ScriptBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ready(addr: SocketAddr) -> (u16, Value) {
    let r = get(addr, "/health/ready");
    let v = r.json();
    (r.status, v)
}

#[test]
fn readiness_follows_the_broker_and_liveness_does_not() {
    // A broker of its own, to stop and bring back; the pipeline creates its topics.
    let broker = ScriptBroker::start(None);
    let repo = TestRepo::new();
    let t = topic_names("cp-health");
    let mut cfg = config(&broker.bootstrap(), &t, &repo);
    cfg.streaming.inference.metrics.enabled = false;
    let cp = control(&cfg, &repo, true);
    let addr = cp.local_addr();

    let (code, v) = wait_for("ready", Duration::from_secs(120), || {
        let (code, v) = ready(addr);
        (code == 200).then_some((code, v))
    });
    assert_eq!(code, 200);
    for check in ["kafka", "models", "pipeline"] {
        assert_eq!(v["checks"][check]["ok"], true, "{v}");
    }
    assert_eq!(get(addr, "/health/live").status, 200);
    assert_eq!(get(addr, "/batch-inference/streaming/health").status, 200);

    broker.stop();
    let v = wait_for("not ready once the broker is gone", Duration::from_secs(60), || {
        let (code, v) = ready(addr);
        (code == 503).then_some(v)
    });
    assert_eq!(v["checks"]["kafka"]["ok"], false, "{v}");
    assert!(v["failing"].as_array().unwrap().contains(&json!("kafka")), "{v}");
    assert_eq!(v["checks"]["models"]["ok"], true, "{v}");
    let live = get(addr, "/health/live");
    assert_eq!(live.status, 200, "liveness does not depend on the broker: {}", live.body);
    let h = get(addr, "/batch-inference/streaming/health");
    assert_eq!(h.status, 503);
    assert_eq!(h.json()["checks"]["kafka"]["ok"], false);

    // The broker comes back at the same address: ready again.
    let _again = ScriptBroker::start(Some(&broker.port));
    wait_for("ready again", Duration::from_secs(120), || (ready(addr).0 == 200).then_some(()));
    assert_eq!(state(addr), "running");
    cp.shutdown();
}

#[test]
fn mutating_calls_need_the_token_and_bodies_are_checked() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    let spec = common::testkit::MlpSpec::default();
    common::testkit::write_mlp(repo.dir.path(), "dual", "1", &spec, 1).unwrap();
    common::testkit::write_mlp(repo.dir.path(), "dual", "2", &spec, 2).unwrap();
    std::fs::write(repo.dir.path().join("dual/model.toml"), "serving = \"1\"\n").unwrap();
    let t = topics(&b, "cp-auth", 1);
    let mut cfg = config(&b.bootstrap, &t, &repo);
    cfg.control.token = Some("s3cret-token".into());
    let cp = control(&cfg, &repo, false);
    let addr = cp.local_addr();
    let tok = Some("s3cret-token");

    for path in [
        "/batch-inference/streaming/start",
        "/batch-inference/streaming/stop",
        "/batch-inference/streaming/restart",
        "/batch-inference/models/tabular/load",
        "/batch-inference/models/tabular/unload",
        "/batch-inference/models/dual/serving",
    ] {
        let r = post(addr, path, None, "");
        assert_eq!(r.status, 401, "{path} without a token: {}", r.body);
        assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")));
        let r = post(addr, path, Some("wrong-token!"), "");
        assert_eq!(r.status, 401, "{path} with a wrong token: {}", r.body);
        let r = post(addr, path, Some("s3cret-toke"), "");
        assert_eq!(r.status, 401, "{path} with a prefix of the token: {}", r.body);
    }
    assert_eq!(state(addr), "stopped", "nothing ran without the token");
    // Reads need no token.
    assert_eq!(get(addr, "/batch-inference/streaming/status").status, 200);
    assert_eq!(get(addr, "/batch-inference/streaming/metrics").status, 200);
    assert_eq!(get(addr, "/metrics").status, 200);
    assert_eq!(get(addr, "/health/live").status, 200);
    assert_eq!(get(addr, "/health/ready").status, 503, "not running: not ready");

    // With the token (the scheme is case-insensitive).
    let r = post(addr, "/batch-inference/streaming/start", tok, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"]["state"], "running");
    let r = http(
        addr,
        "POST",
        "/batch-inference/streaming/stop",
        &[("authorization", "bearer s3cret-token")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["status"]["state"], "stopped");

    // Bodies: bad JSON is 400 with a reason, too large is 413; wrong method 405, unknown 404.
    let r = post(addr, "/batch-inference/models/dual/serving", tok, "{\"version\": ");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("invalid JSON"), "{}", r.body);
    let r = post(addr, "/batch-inference/models/dual/serving", tok, "[1]");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post(addr, "/batch-inference/models/dual/serving", tok, "{\"version\": 2}");
    assert_eq!(r.status, 400, "{}", r.body);
    let big = format!("{{\"version\": \"{}\"}}", "9".repeat(70 * 1024));
    assert_eq!(post(addr, "/batch-inference/models/dual/serving", tok, &big).status, 413);
    let r = get(addr, "/batch-inference/streaming/stop");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    assert_eq!(get(addr, "/nope").status, 404);

    // Model management.
    let r = get(addr, "/batch-inference/models");
    assert_eq!(r.status, 200);
    let names: Vec<String> = r.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.contains(&"dual".to_string()) && names.contains(&"tabular".to_string()),
        "{names:?}"
    );
    let r = post(addr, "/batch-inference/models/tabular/load", tok, "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["loaded"]["version"], "1");
    let r = post(addr, "/batch-inference/models/tabular/unload", tok, "");
    assert_eq!((r.status, r.json()["unloaded"].clone()), (200, json!(1)), "{}", r.body);
    let r = post(addr, "/batch-inference/models/tabular/unload", tok, "");
    assert_eq!((r.status, r.json()["unloaded"].clone()), (200, json!(0)), "idempotent: {}", r.body);
    assert_eq!(post(addr, "/batch-inference/models/nosuch/load", tok, "").status, 404);
    assert_eq!(post(addr, "/batch-inference/models/..%2Fetc/load", tok, "").status, 400);
    assert_eq!(
        post(addr, "/batch-inference/models/dual/serving", tok, "{\"version\": \"7\"}").status,
        404
    );
    let r = post(addr, "/batch-inference/models/dual/serving", tok, "{\"version\": \"2\"}");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["serving"].clone(), r.json()["previous"].clone()),
        (json!("2"), json!("1"))
    );
    let models = get(addr, "/batch-inference/models").json();
    let dual =
        models["models"].as_array().unwrap().iter().find(|m| m["name"] == "dual").unwrap().clone();
    assert_eq!(dual["serving"], "2");
    assert!(
        dual["loaded_versions"].as_array().unwrap().contains(&json!("2")),
        "the new version is warm: {dual}"
    );
    drop(cp);
}

fn sample<'a>(
    scrape: &'a prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a prometheus_parse::Sample> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, name, labels).map(|s| &s.value) {
        Some(
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v),
        ) => *v,
        other => panic!("{name}{labels:?}: {other:?}"),
    }
}

fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text format")
}

#[test]
fn prometheus_counters_match_the_records_sent_and_snapshots_arrive_each_interval() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    let t = topics(&b, "cp-metrics", 2);
    let cfg = config(&b.bootstrap, &t, &repo);
    let cp = control(&cfg, &repo, true);
    let addr = cp.local_addr();
    wait_running(addr);

    let (good, bad_json, unknown) = (300usize, 20usize, 10usize);
    let mut records = requests("tabular", 0, good);
    records.extend(
        (0..bad_json).map(|i| (None, format!("{{\"id\": \"bad{i}\", ").into_bytes(), vec![])),
    );
    records.extend((0..unknown).map(|i| {
        (None, format!(r#"{{"id":"u{i}","model":"nosuch","input":[1]}}"#).into_bytes(), vec![])
    }));
    b.produce(&t.input, &records, None).unwrap();
    let total = good + bad_json + unknown;

    let s = wait_for("every record counted", Duration::from_secs(120), || {
        let s = scrape(addr);
        let done = value(&s, "sluice_requests_total", &[("outcome", "result")])
            + sluice::core::ErrorClass::ALL
                .iter()
                .map(|c| c.as_str())
                .map(|c| {
                    value(&s, "sluice_requests_total", &[("outcome", "dead_letter"), ("class", c)])
                })
                .sum::<f64>();
        (done as usize >= total).then_some(s)
    });
    assert_eq!(
        value(&s, "sluice_requests_total", &[("outcome", "result"), ("class", "none")]),
        good as f64
    );
    assert_eq!(
        value(&s, "sluice_requests_total", &[("outcome", "dead_letter"), ("class", "parse")]),
        bad_json as f64
    );
    assert_eq!(
        value(
            &s,
            "sluice_requests_total",
            &[("outcome", "dead_letter"), ("class", "unknown_model")]
        ),
        unknown as f64
    );
    assert_eq!(
        value(&s, "sluice_requests_total", &[("outcome", "dead_letter"), ("class", "inference")]),
        0.0
    );
    assert_eq!(value(&s, "sluice_records_consumed_total", &[]), total as f64);
    assert_eq!(value(&s, "sluice_pipeline_state", &[("state", "running")]), 1.0);
    assert_eq!(value(&s, "sluice_pipeline_state", &[("state", "stopped")]), 0.0);
    match &sample(&s, "sluice_end_to_end_latency_seconds", &[]).expect("latency histogram").value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).expect("+Inf bucket");
            assert_eq!(inf.count, total as f64, "one end-to-end latency per record");
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert!(value(&s, "sluice_batches_total", &[]) >= 1.0);
    assert!(value(&s, "sluice_model_loads_total", &[]) >= 1.0);
    assert!(value(&s, "sluice_model_cache_hits_total", &[]) >= 1.0);
    assert!(sample(&s, "sluice_lane_busy_seconds_total", &[("lane", "0")]).is_some());
    assert!(sample(&s, "sluice_ring_depth", &[("ring", "normal")]).is_some());
    // Every loaded version has its breaker's state, closed here.
    assert_eq!(value(&s, "sluice_circuit_state", &[]), 0.0);
    assert_eq!(value(&s, "sluice_circuit_parked_requests", &[]), 0.0);
    let s = wait_for("per-partition consumer lag", Duration::from_secs(60), || {
        let s = scrape(addr);
        sample(&s, "sluice_consumer_lag", &[("topic", t.input.as_str()), ("partition", "1")])
            .map(|_| ())?;
        Some(s)
    });
    // Every metric the Grafana dashboard and the alerting rules under deploy/ query is one
    // this instance exports.
    let exported: std::collections::BTreeSet<&str> =
        s.samples.iter().map(|x| x.metric.as_str()).collect();
    let missing: Vec<String> = common::deployfiles::queried_metric_names()
        .into_iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(missing.is_empty(), "deploy/ queries metrics Sluice does not export: {missing:?}");

    // The JSON view agrees.
    let m = get(addr, "/batch-inference/streaming/metrics").json();
    assert_eq!(m["totals"]["results"], good);
    assert_eq!(m["totals"]["consumed"], total);
    assert_eq!(m["errors_by_class"]["parse"], bad_json);
    assert_eq!(m["errors_by_class"]["unknown_model"], unknown);
    assert!(m["latency_ms"]["end_to_end"]["p99"].as_f64().is_some(), "{m}");
    assert!(m["latency_ms"]["queue"]["p50"].as_f64().is_some(), "{m}");
    assert!(m["cache"]["hit_rate"].as_f64().is_some_and(|r| r > 0.0), "{m}");
    assert!(m["throughput"]["consumed_per_second"].as_f64().is_some(), "{m}");

    // Metrics-topic snapshots every reportingIntervalSeconds (1 s): count them over a window.
    let count = || b.consume(&t.metrics, usize::MAX, Duration::from_secs(3)).len();
    let before = count();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let after_records = b.consume(&t.metrics, usize::MAX, Duration::from_secs(3));
    let elapsed = t0.elapsed().as_secs_f64();
    let arrived = after_records.len() - before;
    assert!(
        arrived >= 3 && (arrived as f64) <= elapsed + 6.0,
        "{arrived} snapshots in {elapsed:.1} s at a 1 s interval"
    );
    let last: Value = serde_json::from_slice(&after_records.last().unwrap().value).unwrap();
    assert_eq!(last["consumed"], total, "{last}");
    assert!(last["latency_ms"]["end_to_end"]["count"].as_u64().is_some(), "{last}");

    // The counters keep growing across a restart.
    let r = post(addr, "/batch-inference/streaming/restart", None, "");
    assert_eq!(r.status, 200, "{}", r.body);
    b.produce(&t.input, &requests("tabular", good, good + 50), None).unwrap();
    wait_for("counters after the restart", Duration::from_secs(120), || {
        let s = scrape(addr);
        (value(&s, "sluice_requests_total", &[("outcome", "result")]) >= (good + 50) as f64
            && value(&s, "sluice_records_consumed_total", &[]) >= (total + 50) as f64)
            .then_some(())
    });
    let s = scrape(addr);
    assert_eq!(value(&s, "sluice_pipeline_starts_total", &[]), 2.0);
    cp.shutdown();
}

/// Sends a GET and reads the status code, giving up after `limit`.
fn probe_status(addr: SocketAddr, path: &str, limit: Duration) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(limit)).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no status: {text}"))
}

#[test]
fn slow_clients_cannot_starve_the_probes_and_the_token_is_trimmed() {
    let repo = TestRepo::new();
    let t = topic_names("cp-hostile");
    // No pipeline is started: this is about the HTTP server alone.
    let mut cfg = config("127.0.0.1:1", &t, &repo);
    cfg.control.token = Some("  s3cret\n".into());
    let cp = control(&cfg, &repo, false);
    let addr = cp.local_addr();
    // 70 clients send the headers of an authorized POST .../stop and one byte of its body,
    // then wait: more than the general connection slots.
    let mut hostile: Vec<TcpStream> = (0..70)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(
                b"POST /batch-inference/streaming/stop HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 100\r\n\r\n{",
            )
            .unwrap();
            s
        })
        .collect();
    // The probes still answer, well before the hostile bodies time out (5 s).
    for path in ["/health/live", "/metrics"] {
        assert_eq!(probe_status(addr, path, Duration::from_secs(4)), Ok(200), "{path}");
    }
    // Each hostile request ends: 408 once its body is overdue, or 503 on a probes-only
    // connection; none of them ran the stop.
    let mut seen = HashMap::new();
    for s in hostile.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw);
        let code = text.split(' ').nth(1).unwrap_or("none").to_string();
        *seen.entry(code).or_insert(0) += 1;
    }
    assert!(seen.keys().all(|c| c == "408" || c == "503"), "hostile requests ended with {seen:?}");
    assert!(seen.get("408").copied().unwrap_or(0) >= 60, "{seen:?}");
    // The stored token is trimmed like the presented one: "s3cret" is accepted.
    let r = post(addr, "/batch-inference/streaming/stop", Some("s3cret"), "");
    assert_ne!(r.status, 401, "{}", r.body);
}

/// Degraded mode: a serving version that fails to load leaves the previous one serving; a
/// model repository that becomes unreadable (its mount lost) leaves the loaded versions
/// serving, and readiness stays green while they do, with the repository's error shown.
#[test]
fn a_failed_serving_switch_and_a_lost_repository_leave_the_loaded_models_serving() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    repo.add_mlp("dual", "1", vec![4], 11);
    repo.add_mlp("dual", "2", vec![4], 12);
    std::fs::write(repo.path().join("dual/2/model.safetensors"), b"broken weights").unwrap();
    let t = topics(&b, "cp-degraded", 1);
    let cfg = config(&b.bootstrap, &t, &repo);
    let cp = control(&cfg, &repo, true);
    let addr = cp.local_addr();
    wait_running(addr);
    let mut sent = requests("dual", 0, 50);
    b.produce(&t.input, &sent, None).unwrap();
    let seen = outcome_ids(&b, &t, 50, Duration::from_secs(120));
    assert_eq!(seen.len(), 50);

    // Version 2 does not load: the switch is refused and version 1 keeps serving.
    let r = post(addr, "/batch-inference/models/dual/serving", None, r#"{"version": "2"}"#);
    assert!(r.status >= 400, "a version that fails to load is not made serving: {}", r.body);
    let models = get(addr, "/batch-inference/models").json();
    let dual = models["models"].as_array().unwrap().iter().find(|m| m["name"] == "dual").cloned();
    assert_eq!(dual.unwrap()["serving"], "1", "the previous version still serves");

    // The repository disappears (a lost mount): the loaded version keeps serving.
    let moved = repo.path().with_extension("lost");
    std::fs::rename(repo.path(), &moved).unwrap();
    let more = requests("dual", 50, 100);
    b.produce(&t.input, &more, None).unwrap();
    sent.extend(more);
    let seen = outcome_ids(&b, &t, 100, Duration::from_secs(120));
    assert_eq!(seen.len(), 100, "every record has an outcome");
    let out = b.consume(&t.output, 100, Duration::from_secs(30));
    assert_eq!(out.len(), 100, "all of them results, served by the loaded version");
    let (status, body) = ready(addr);
    assert_eq!(status, 200, "ready while the loaded models serve: {body}");
    let models = &body["checks"]["models"];
    assert_eq!(models["detail"]["degraded"], true, "{body}");
    assert!(models["detail"]["error"].as_str().unwrap_or_default().contains("model repository"));

    // Back: nothing to do.
    std::fs::rename(&moved, repo.path()).unwrap();
    let (status, body) = ready(addr);
    assert_eq!(status, 200);
    assert!(body["checks"]["models"]["detail"]["degraded"].is_null(), "{body}");
    drop(cp);
}

/// A traffic split on a live stream (the real broker), two instances in one group: a split
/// set on one instance reaches the other through the control topic; requests without a
/// version go to the version their key picks, the same one for every record of a key on
/// either instance and the one `Split::pick` computes; the shares follow the weights; an
/// explicit version bypasses the split; a split naming a missing version is refused and the
/// previous split stays; the split survives a restart (it is stored in the state directory).
#[test]
fn a_traffic_split_routes_by_key_sticks_and_survives_a_restart() {
    use sluice::models::split::Split;
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    repo.add_mlp("dual", "1", vec![4], 21);
    repo.add_mlp("dual", "2", vec![4], 22);
    let t = topics(&b, "cp-split", 2);
    let cfg = config(&b.bootstrap, &t, &repo);
    // Two instances in one group, each with its own cache (as two processes would have).
    let cp = control(&cfg, &repo, true);
    let other_cache = common::kafka::cache_for(&cfg);
    let other = ControlPlane::start(
        cfg.clone(),
        other_cache,
        ControlOptions { autostart: true, lag_interval: Duration::from_secs(1) },
    )
    .expect("second instance");
    let addr = cp.local_addr();
    for a in [addr, other.local_addr()] {
        wait_running(a);
        wait_for("the control topic followed", Duration::from_secs(60), || {
            let s = get(a, "/batch-inference/streaming/status").json();
            (s["rollout"]["following"] == true).then_some(())
        });
    }

    let split = r#"{"split": {"1": 80, "2": 20}}"#;
    let r = post(addr, "/batch-inference/models/dual/traffic", None, split);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["split"], json!({"1": 80, "2": 20}));
    assert_eq!(r.json()["shared"], true);
    // The other instance applies it from the control topic.
    wait_for("the split on the other instance", Duration::from_secs(60), || {
        let models = get(other.local_addr(), "/batch-inference/models").json();
        let dual = models["models"].as_array()?.iter().find(|m| m["name"] == "dual")?.clone();
        (dual["split"] == json!({"1": 80, "2": 20})).then_some(())
    });
    let r = post(
        addr,
        "/batch-inference/models/dual/traffic",
        None,
        r#"{"split": {"1": 50, "9": 50}}"#,
    );
    assert_eq!(r.status, 404, "a missing version is refused: {}", r.body);
    let r = post(addr, "/batch-inference/models/dual/traffic", None, r#"{"split": {"1": -3}}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    let models = get(addr, "/batch-inference/models").json();
    let dual = models["models"].as_array().unwrap().iter().find(|m| m["name"] == "dual").cloned();
    assert_eq!(dual.unwrap()["split"], json!({"1": 80, "2": 20}), "the previous split stays");

    // 2,000 keyed records (4 per key) without a version, and 200 that name version 1.
    let keys: Vec<String> = (0..500).map(|i| format!("customer-{i}")).collect();
    let mut records: Vec<Record> = (0..2000)
        .map(|i| {
            let key = keys[i % keys.len()].clone().into_bytes();
            let v = format!(r#"{{"id":"s{i}","model":"dual","input":[{i},0,0,0,0,0,0,1]}}"#);
            (Some(key), v.into_bytes(), vec![])
        })
        .collect();
    records.extend((0..200).map(|i| {
        let key = keys[i].clone().into_bytes();
        let v =
            format!(r#"{{"id":"e{i}","model":"dual","version":"1","input":[{i},0,0,0,0,0,0,1]}}"#);
        (Some(key), v.into_bytes(), vec![])
    }));
    b.produce(&t.input, &records, None).unwrap();
    let out = b.consume(&t.output, records.len(), Duration::from_secs(180));
    assert_eq!(out.len(), records.len(), "every record has its result");
    let expected =
        Split::new(&[("1".to_string(), 80), ("2".to_string(), 20)].into_iter().collect()).unwrap();
    let mut per_key: HashMap<Vec<u8>, std::collections::BTreeSet<String>> = HashMap::new();
    let mut to_v2 = 0;
    for c in &out {
        let v: Value = serde_json::from_slice(&c.value).unwrap();
        let (id, version) = (v["id"].as_str().unwrap(), v["version"].as_str().unwrap());
        let key = c.key.clone().expect("keyed");
        if id.starts_with('e') {
            assert_eq!(version, "1", "an explicit version bypasses the split");
            continue;
        }
        assert_eq!(version, &**expected.pick(&key), "{id}: the version its key picks");
        to_v2 += usize::from(version == "2");
        per_key.entry(key).or_default().insert(version.to_string());
    }
    assert!(per_key.values().all(|v| v.len() == 1), "every key sticks to one version");
    // 20% of 500 keys (4 records each), ± 6 points: far outside a fair split's spread.
    assert!((280..=520).contains(&to_v2), "{to_v2} of 2000 records on version 2");
    drop(other);
    drop(cp);

    // A restart: a new cache over the same repository reads the split back.
    let cache = common::kafka::cache_for(&cfg);
    cache.get("dual", None).unwrap();
    assert_eq!(cache.split("dual").map(|s| s.to_map()), Some(expected.to_map()));
}

// ---------------------------------------------------------------------------------------------
// Model rollout: shadow scoring and the automatic canary
// ---------------------------------------------------------------------------------------------

/// `n` records for `model` with ids `{prefix}{i}`, keyed `k{i % keys}` (so a split routes
/// them by key), optionally naming a version.
fn keyed(
    model: &str,
    prefix: &str,
    range: std::ops::Range<usize>,
    version: Option<&str>,
) -> Vec<Record> {
    range
        .map(|i| {
            let v = version.map(|v| format!(r#","version":"{v}""#)).unwrap_or_default();
            let body = format!(
                r#"{{"id":"{prefix}{i}","model":"{model}"{v},"input":[{},0.5,0,0,0,0,0,1]}}"#,
                i % 97
            );
            (Some(format!("k{}", i % 250).into_bytes()), body.into_bytes(), vec![])
        })
        .collect()
}

fn model_view(addr: SocketAddr, name: &str) -> Value {
    let models = get(addr, "/batch-inference/models").json();
    models["models"].as_array().unwrap().iter().find(|m| m["name"] == name).cloned().unwrap()
}

/// Shadow scoring on the real broker: with `{"shadow": "2"}`, every request of the model still
/// gets exactly one result from version 1 on the output topic (nothing else there), and its
/// shadow record on the shadow topic carries the same id, both versions' outputs (the primary
/// one equal to the result's, the shadow one equal to what version 2 computes when asked
/// directly) and their agreement; the agreement and the per-version counts are in `/metrics`.
#[test]
fn a_shadow_version_scores_every_request_without_touching_the_primary_results() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    repo.add_mlp("shadowed", "1", vec![4], 31);
    repo.add_mlp("shadowed", "2", vec![4], 32);
    let t = topics(&b, "cp-shadow", 2);
    let mut cfg = config(&b.bootstrap, &t, &repo);
    let shadow_topic = t.input.replace("-in", "-shadow");
    b.create_topic(&shadow_topic, 1).unwrap();
    cfg.kafka.topics.streaming.shadow = shadow_topic.clone();
    // A queue that cannot fill here: every request must get its shadow result.
    cfg.streaming.inference.model.rollout.shadow_queue_batches = 100_000;
    let cp = control(&cfg, &repo, true);
    let addr = cp.local_addr();
    wait_running(addr);

    let r = post(addr, "/batch-inference/models/shadowed/traffic", None, r#"{"shadow": "2"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["shadow"], "2");
    assert_eq!(model_view(addr, "shadowed")["shadow"], "2");
    // The serving version cannot shadow itself.
    let r = post(addr, "/batch-inference/models/shadowed/traffic", None, r#"{"shadow": "1"}"#);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = post(addr, "/batch-inference/models/shadowed/traffic", None, r#"{"shadow": "9"}"#);
    assert_eq!(r.status, 404, "a missing version: {}", r.body);

    // 400 requests without a version, and 40 asking version 2 itself (not shadowed: the
    // shadow is their own version) with the inputs of the first 40.
    let n = 400;
    let mut records = keyed("shadowed", "s", 0..n, None);
    records.extend(keyed("shadowed", "d", 0..40, Some("2")));
    b.produce(&t.input, &records, None).unwrap();
    let out = b.consume(&t.output, records.len(), Duration::from_secs(180));
    assert_eq!(out.len(), records.len(), "one result per request");
    let results: HashMap<String, Value> = out
        .iter()
        .map(|c| {
            let v: Value = serde_json::from_slice(&c.value).unwrap();
            (v["id"].as_str().unwrap().to_string(), v)
        })
        .collect();
    assert_eq!(results.len(), records.len(), "no duplicates on the output topic");
    for (id, v) in &results {
        let want = if id.starts_with('s') { "1" } else { "2" };
        assert_eq!(v["version"], want, "{id}: the primary result is untouched by the shadow");
        assert!(v.get("shadow_version").is_none(), "no shadow record on the output topic");
    }
    assert!(b.consume(&t.dlq, usize::MAX, Duration::from_secs(2)).is_empty(), "no dead letters");

    let shadow = b.consume(&shadow_topic, n, Duration::from_secs(120));
    assert_eq!(shadow.len(), n, "a shadow result for every shadowed request");
    let mut differs = 0;
    let mut ids = std::collections::BTreeSet::new();
    for c in &shadow {
        let v: Value = serde_json::from_slice(&c.value).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        assert!(id.starts_with('s'), "only requests served by another version are shadowed: {id}");
        assert_eq!(
            (v["model"].as_str(), v["primary_version"].as_str()),
            (Some("shadowed"), Some("1"))
        );
        assert_eq!(v["shadow_version"], "2");
        assert_eq!(v["measure"], "mean_abs_diff");
        assert_eq!(v["primary"], results[&id]["output"], "{id}: the primary output as sent");
        let i: usize = id[1..].parse().unwrap();
        if i < 40 {
            assert_eq!(
                v["shadow"],
                results[&format!("d{i}")]["output"],
                "{id}: version 2's own output"
            );
        }
        let a = v["agreement"].as_f64().expect("an agreement");
        assert!(a >= 0.0 && a.is_finite());
        differs += usize::from(a > 0.0);
        assert_eq!(
            c.key.as_deref(),
            Some(format!("k{}", i % 250).as_bytes()),
            "keyed like the request"
        );
        ids.insert(id);
    }
    assert_eq!(ids.len(), n, "one shadow result per request");
    assert!(differs > 0, "different weights give different outputs");

    let s = scrape(addr);
    let labels =
        [("model", "shadowed"), ("primary", "1"), ("shadow", "2"), ("measure", "mean_abs_diff")];
    assert!(value(&s, "sluice_shadow_agreement", &labels) > 0.0);
    assert_eq!(value(&s, "sluice_shadow_compared_total", &labels[..3]), n as f64);
    assert_eq!(value(&s, "sluice_shadow_results_total", &[]), n as f64);
    assert_eq!(value(&s, "sluice_shadow_dropped_total", &[]), 0.0);
    let v1 = [("model", "shadowed"), ("version", "1"), ("outcome", "result")];
    assert_eq!(value(&s, "sluice_model_requests_total", &v1), n as f64, "per-version counts");
    let v2 = [("model", "shadowed"), ("version", "2"), ("outcome", "result")];
    assert_eq!(value(&s, "sluice_model_requests_total", &v2), 40.0);
    let status = get(addr, "/batch-inference/streaming/status").json();
    assert_eq!(status["rollout"]["shadow"]["results"], n);

    let r = post(addr, "/batch-inference/models/shadowed/traffic", None, r#"{"shadow": null}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(model_view(addr, "shadowed")["shadow"], Value::Null);
    drop(cp);
}

#[cfg(feature = "fault-injection")]
/// Sends rounds of 200 keyed requests until `done(model view)`, checking that each round's
/// records all get exactly one outcome; returns the ids seen per outcome so far.
fn rounds_until(
    b: &TestBroker,
    t: &Topics,
    addr: SocketAddr,
    sent: &mut usize,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    for _ in 0..60 {
        let records = keyed("canaried", "c", *sent..*sent + 200, None);
        b.produce(&t.input, &records, None).unwrap();
        *sent += 200;
        let seen = outcome_ids(b, t, *sent, Duration::from_secs(120));
        assert_eq!(seen.len(), *sent, "every record has its outcome");
        assert!(seen.values().all(|n| *n == 1), "and only one");
        let view = model_view(addr, "canaried");
        if done(&view) {
            return view;
        }
    }
    panic!("{what}: not reached after 12,000 records: {}", model_view(addr, "canaried"));
}

/// The automatic canary on the real broker, with the default circuit breaker (`whenOpen:
/// wait`): one to a healthy version moves through its steps and ends with that version serving
/// and no split (its steps and completion counted); one to a version that fails every batch
/// (an injected fault) rolls back to the traffic from before it (its error rate, or its open
/// circuit breaker, is the reason). Its failed requests are `inference` dead letters; the
/// requests parked behind its open breaker are routed to the version serving after the
/// rollback, so every record still gets exactly one outcome. The canary state is stored, so a
/// restart resumes it. (The latency rule is tested on synthetic histograms in
/// `control::canary`.)
#[cfg(feature = "fault-injection")]
#[test]
fn a_canary_completes_and_one_on_a_failing_version_rolls_back() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    repo.add_mlp("canaried", "1", vec![4], 41);
    repo.add_mlp("canaried", "2", vec![4], 42);
    repo.add_mlp("canaried", "3", vec![4], 43);
    let flag = repo.path().join("v3-broken");
    std::fs::write(&flag, b"").unwrap();
    {
        use std::io::Write;
        let path = repo.path().join("canaried").join("3").join("sluice.toml");
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        writeln!(f, "\n[testing]\nfail_while_exists = {:?}", flag.display().to_string()).unwrap();
    }
    let t = topics(&b, "cp-canary", 2);
    let mut cfg = config(&b.bootstrap, &t, &repo);
    // Version 3's first failed batch (at most maxBatchRows = 32 requests) opens its breaker,
    // well before it has the 100 requests the error-rate rule needs: the rollback comes from
    // the open breaker, with requests parked behind it.
    cfg.streaming.inference.model.rollout.canary_min_requests = 100;
    cfg.streaming.inference.model.rollout.canary_check_interval_ms = 50;
    cfg.streaming.inference.processing.max_retries = 0;
    cfg.streaming.inference.processing.circuit_breaker.consecutive_failures = 1;
    cfg.streaming.inference.batching.max_batch_rows = 32;
    let cp = control(&cfg, &repo, true);
    let addr = cp.local_addr();
    wait_running(addr);
    wait_for("the control topic followed", Duration::from_secs(60), || {
        let s = get(addr, "/batch-inference/streaming/status").json();
        (s["rollout"]["following"] == true).then_some(())
    });

    // Refusals: a bad plan, a missing version, the serving version, split and canary at once.
    for (body, code) in [
        (
            r#"{"canary": {"version": "2", "steps": [50, 60], "stepSeconds": 1, "maxErrorRate": 0.05, "maxP99Ratio": 2}}"#,
            400,
        ),
        (r#"{"canary": {"version": "2", "steps": [100]}}"#, 400),
        (
            r#"{"canary": {"version": "9", "steps": [100], "stepSeconds": 1, "maxErrorRate": 0.05, "maxP99Ratio": 2}}"#,
            404,
        ),
        (
            r#"{"canary": {"version": "1", "steps": [100], "stepSeconds": 1, "maxErrorRate": 0.05, "maxP99Ratio": 2}}"#,
            400,
        ),
        (r#"{"split": {"1": 1}, "canary": null}"#, 400),
    ] {
        let r = post(addr, "/batch-inference/models/canaried/traffic", None, body);
        assert_eq!(r.status, code, "{body}: {}", r.body);
    }

    // A healthy canary: 20% then 100%, a second per step; generous latency limit (the latency
    // rule is not what this test is about).
    let plan = r#"{"canary": {"version": "2", "steps": [20, 100], "stepSeconds": 1, "maxErrorRate": 0.05, "maxP99Ratio": 1000}}"#;
    let r = post(addr, "/batch-inference/models/canaried/traffic", None, plan);
    assert_eq!(r.status, 200, "{}", r.body);
    let c = &r.json()["canary"];
    assert_eq!((c["status"].as_str(), c["percent"].as_u64()), (Some("running"), Some(20)), "{c}");
    assert_eq!(r.json()["split"], json!({"1": 8000, "2": 2000}));
    let r = post(addr, "/batch-inference/models/canaried/serving", None, r#"{"version": "2"}"#);
    assert_eq!(r.status, 409, "no serving switch under a running canary: {}", r.body);
    let mut sent = 0;
    let view = rounds_until(&b, &t, addr, &mut sent, "the canary's completion", |v| {
        v["canary"]["status"] == "completed"
    });
    assert_eq!(view["serving"], "2");
    assert_eq!(view["split"], Value::Null);
    assert!(b.consume(&t.dlq, usize::MAX, Duration::from_secs(2)).is_empty(), "no dead letter");
    let s = scrape(addr);
    assert_eq!(value(&s, "sluice_canary_completions_total", &[]), 1.0);
    assert!(value(&s, "sluice_canary_steps_total", &[]) >= 1.0);
    let v2 = [("model", "canaried"), ("version", "2"), ("outcome", "result")];
    assert!(value(&s, "sluice_model_requests_total", &v2) > 0.0);

    // A canary to the failing version 3 rolls back.
    let plan = r#"{"canary": {"version": "3", "steps": [50, 100], "stepSeconds": 3600, "maxErrorRate": 0.05, "maxP99Ratio": 1000}}"#;
    let r = post(addr, "/batch-inference/models/canaried/traffic", None, plan);
    assert_eq!(r.status, 200, "{}", r.body);
    // Its progress is stored: a restarted instance (a new cache over the repository) has it.
    let restarted = common::kafka::cache_for(&cfg);
    let stored = restarted.rollout_state("canaried").unwrap();
    let stored_canary = stored.canary.expect("a stored canary");
    assert_eq!(stored_canary.plan.version, "3");
    assert_eq!(stored.split, Some([("2".to_string(), 5000), ("3".to_string(), 5000)].into()));
    let before = sent;
    let view = rounds_until(&b, &t, addr, &mut sent, "the rollback", |v| {
        v["canary"]["status"] == "rolled_back"
    });
    let reason = view["canary"]["reason"].as_str().unwrap();
    assert!(reason.contains("circuit breaker") && reason.contains("fail_while_exists"), "{reason}");
    assert_eq!(view["serving"], "2", "the serving version is unchanged");
    assert_eq!(view["split"], Value::Null, "back to the traffic before the canary");
    // No dead letter: version 3's failed batch opened its breaker and was parked with what
    // followed, and the rollback routed all of it to version 2.
    let dlq = b.consume(&t.dlq, usize::MAX, Duration::from_secs(3));
    assert!(dlq.is_empty(), "{} dead letters", dlq.len());
    let s = scrape(addr);
    assert_eq!(value(&s, "sluice_canary_rollbacks_total", &[]), 1.0);
    assert_eq!(value(&s, "sluice_circuit_parked_requests", &[]), 0.0, "nothing left parked");
    let rerouted = [("model", "canaried"), ("version", "2"), ("outcome", "result")];
    assert!(value(&s, "sluice_model_requests_total", &rerouted) > 0.0);
    // After the rollback every request is computed by version 2 again.
    let dead_before = dlq.len();
    let last = sent;
    let records = keyed("canaried", "c", sent..sent + 100, None);
    b.produce(&t.input, &records, None).unwrap();
    sent += 100;
    assert_eq!(outcome_ids(&b, &t, sent, Duration::from_secs(120)).len(), sent);
    let out = b.consume(&t.output, usize::MAX, Duration::from_secs(3));
    for c in &out {
        let v: Value = serde_json::from_slice(&c.value).unwrap();
        let i: usize = v["id"].as_str().unwrap()[1..].parse().unwrap();
        if i >= last {
            assert_eq!(v["version"], "2", "after the rollback");
        }
    }
    assert_eq!(b.consume(&t.dlq, usize::MAX, Duration::from_secs(2)).len(), dead_before);
    assert!(before < sent);
    drop(cp);
}

/// Swaps under a steady stream (the real broker): switching the serving version, changing the
/// split and running a canary to 100% while records keep arriving lose nothing and dead-letter
/// nothing: every record sent meanwhile gets exactly one result. (How much latency a swap
/// costs is measured by benches/run-swap-bench.sh, not asserted here.)
#[test]
fn swaps_under_a_steady_stream_lose_nothing_and_dead_letter_nothing() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();
    for (v, seed) in [("1", 51), ("2", 52), ("3", 53)] {
        repo.add_mlp("swapped", v, vec![4], seed);
    }
    repo.cache.repository().set_serving("swapped", "1").unwrap();
    let t = topics(&b, "cp-swaps", 2);
    let mut cfg = config(&b.bootstrap, &t, &repo);
    cfg.streaming.inference.model.rollout.canary_min_requests = 30;
    cfg.streaming.inference.model.rollout.canary_check_interval_ms = 50;
    let cp = control(&cfg, &repo, true);
    let addr = cp.local_addr();
    wait_running(addr);

    // A producer thread: 50 keyed records every 20 ms until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (stop, sent, input, bootstrap) =
            (stop.clone(), sent.clone(), t.input.clone(), b.bootstrap.clone());
        std::thread::spawn(move || {
            let b = TestBroker::external(&bootstrap).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let from = sent.load(Ordering::SeqCst);
                let records = keyed("swapped", "w", from..from + 50, None);
                b.produce(&input, &records, None).unwrap();
                sent.fetch_add(50, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let wait_sent = |n: usize| {
        wait_for("records sent", Duration::from_secs(120), || {
            (sent.load(Ordering::SeqCst) >= n).then_some(())
        })
    };
    wait_sent(500);
    let r = post(addr, "/batch-inference/models/swapped/serving", None, r#"{"version": "2"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_sent(sent.load(Ordering::SeqCst) + 500);
    let r = post(
        addr,
        "/batch-inference/models/swapped/traffic",
        None,
        r#"{"split": {"1": 50, "2": 50}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    wait_sent(sent.load(Ordering::SeqCst) + 500);
    let plan = r#"{"canary": {"version": "3", "steps": [25, 100], "stepSeconds": 1, "maxErrorRate": 0.01, "maxP99Ratio": 1000}}"#;
    let r = post(addr, "/batch-inference/models/swapped/traffic", None, plan);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for("the canary's completion", Duration::from_secs(300), || {
        (model_view(addr, "swapped")["canary"]["status"] == "completed").then_some(())
    });
    wait_sent(sent.load(Ordering::SeqCst) + 500);
    stop.store(true, Ordering::SeqCst);
    producer.join().unwrap();
    let n = sent.load(Ordering::SeqCst);

    let seen = outcome_ids(&b, &t, n, Duration::from_secs(300));
    assert_eq!(seen.len(), n, "every record sent during the swaps has its outcome");
    assert!(seen.values().all(|c| *c == 1), "exactly one each");
    assert!(b.consume(&t.dlq, usize::MAX, Duration::from_secs(2)).is_empty(), "no dead letter");
    let versions: std::collections::BTreeSet<String> = b
        .consume(&t.output, usize::MAX, Duration::from_secs(3))
        .iter()
        .map(|c| {
            serde_json::from_slice::<Value>(&c.value).unwrap()["version"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        versions.into_iter().collect::<Vec<_>>(),
        ["1", "2", "3"],
        "every version served a part"
    );
    assert_eq!(model_view(addr, "swapped")["serving"], "3");
    drop(cp);
}
