//! Broker faults mid-stream, through a TCP fault proxy between Sluice and a real broker (the
//! broker advertises the proxy, so every connection goes through it): the broker is
//! unreachable for 10 s while records are in flight, then back. Sluice keeps running,
//! readiness goes to 503 and back to 200, liveness stays 200, every record gets its outcome,
//! and the committed offsets reach the end of every partition.
//!
//! Nothing here depends on timing to pass: waits poll with generous timeouts.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::broker::{free_port, TestBroker};
use common::faultproxy::FaultProxy;
use common::kafka::{config, json, setup, Record};
use common::TestRepo;
use sluice::control::{ControlOptions, ControlPlane};

fn status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    if s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return 0;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    String::from_utf8_lossy(&raw).split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn records(from: usize, to: usize) -> Vec<Record> {
    (from..to)
        .map(|i| (None, json(serde_json::json!({"id": format!("r{i}"), "model": "tabular", "input": [i as f64, 1, 2, 3, 4, 5, 6, 7]})), vec![]))
        .collect()
}

/// Distinct request ids among the results so far.
fn answered(b: &TestBroker, topic: &str) -> HashSet<String> {
    b.consume(topic, usize::MAX, Duration::from_secs(2))
        .iter()
        .filter_map(|c| {
            let v: serde_json::Value = serde_json::from_slice(&c.value).ok()?;
            v["id"].as_str().map(str::to_owned)
        })
        .collect()
}

#[test]
fn the_broker_unreachable_for_ten_seconds_mid_stream_loses_nothing() {
    let proxy_port = free_port().expect("a free port");
    let b = TestBroker::start_tansu_advertising(Some(proxy_port)).expect("broker");
    let upstream: SocketAddr = b.bootstrap.parse().expect("broker address");
    let proxy = FaultProxy::start(proxy_port, upstream).expect("proxy");
    let repo = TestRepo::new();
    let t = setup(&b, "faults", 2);
    let first = records(0, 3000);
    b.produce(&t.input, &first, None).unwrap();

    let mut cfg = config(&b, &t, &repo.path());
    cfg.kafka.bootstrap.servers = proxy.addr.to_string();
    cfg.control.listen = "127.0.0.1:0".parse().unwrap();
    let cp = ControlPlane::start(
        cfg.clone(),
        repo.cache.clone(),
        ControlOptions { autostart: true, lag_interval: Duration::from_secs(1) },
    )
    .expect("control plane");
    let addr = cp.local_addr();
    wait_for("ready", Duration::from_secs(120), || status(addr, "/health/ready") == 200);
    wait_for("the first results", Duration::from_secs(120), || {
        answered(&b, &t.output).len() >= 200
    });

    // Mid-stream: the broker is unreachable for 10 s.
    proxy.cut();
    let cut_at = Instant::now();
    wait_for("not ready while the broker is unreachable", Duration::from_secs(60), || {
        status(addr, "/health/ready") == 503
    });
    assert_eq!(status(addr, "/health/live"), 200, "liveness does not follow the broker");
    if let Some(left) = Duration::from_secs(10).checked_sub(cut_at.elapsed()) {
        std::thread::sleep(left);
    }
    proxy.restore();

    // Back: more records, and everything is answered.
    let second = records(3000, 4000);
    b.produce(&t.input, &second, None).unwrap();
    wait_for("ready again", Duration::from_secs(120), || status(addr, "/health/ready") == 200);
    let mut got = HashSet::new();
    wait_for("every record answered", Duration::from_secs(240), || {
        got = answered(&b, &t.output);
        got.len() >= 4000
    });
    assert_eq!(status(addr, "/health/live"), 200);
    let report = cp.shutdown();
    let missing: Vec<usize> = (0..4000).filter(|i| !got.contains(&format!("r{i}"))).collect();
    assert!(missing.is_empty(), "lost: {:?} ({report:?})", &missing[..missing.len().min(20)]);
    b.assert_committed_to_end(&t.group, &t.input);
    drop(proxy);
}
