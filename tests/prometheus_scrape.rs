//! A real Prometheus server (Debian's `prometheus` package, which `.ci/run` installs) scrapes a
//! running `sluice serve` on loopback; the test reads the counters and the end-to-end
//! histogram back through Prometheus' HTTP API and checks them against what it sent. Without
//! the `prometheus` binary it prints why it skips.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::broker::TestBroker;
use common::serve::{mlp_repo, records, setup, Serve};
use common::wait_for;

fn free_port() -> u16 {
    common::broker::free_port().expect("a free port")
}

/// A Prometheus server, stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(bin: &PathBuf, target_port: u16) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: sluice\n    static_configs: [{{targets: [\"127.0.0.1:{target_port}\"]}}]\n"
            ),
        )
        .expect("write the config");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, _dir: dir }
    }

    /// The instant query's single value, if it has exactly one series.
    fn value(&self, query: &str) -> Option<f64> {
        let body = http_get(self.port, &format!("/api/v1/query?query={}", encode(query)))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The body of `GET path` on 127.0.0.1:`port`, for a 200 answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).ok()?;
    let (head, body) = reply.split_once("\r\n\r\n")?;
    // "HTTP/1.0 200 OK": the server answers in the request's version.
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_string())
}

#[test]
fn prometheus_scrapes_sluice_and_its_figures_match_what_was_sent() {
    let Some(bin) = common::find_tool("SLUICE_TEST_PROMETHEUS", "prometheus") else {
        println!("SKIPPED: no prometheus binary (Debian package `prometheus`, or SLUICE_TEST_PROMETHEUS)");
        return;
    };
    let b = TestBroker::start().expect("broker");
    let repo = mlp_repo();
    let s = setup(&b, &repo, "prom-scrape", 2);
    let control_port = free_port();
    let listen = format!("127.0.0.1:{control_port}");
    let mut sluice = Serve::start_with_env(&s.config, &[("SLUICE_CONTROL_LISTEN", &listen)]);
    let prom = Prometheus::start(&bin, control_port);

    let (good, bad) = (400usize, 25usize);
    let mut rs = records(0, good);
    rs.extend((0..bad).map(|i| (None, format!("{{\"id\":\"bad{i}\", ").into_bytes(), vec![])));
    b.produce(&s.input, &rs, None).expect("produce");

    // Prometheus has scraped the target ...
    wait_for("Prometheus to scrape Sluice", Duration::from_secs(120), || {
        prom.value(r#"up{job="sluice"}"#).filter(|v| *v == 1.0)
    });
    // ... and its latest scrape holds every outcome.
    let results = r#"sum(sluice_requests_total{job="sluice", outcome="result"})"#;
    let parse = r#"sum(sluice_requests_total{job="sluice", outcome="dead_letter", class="parse"})"#;
    wait_for("every outcome in Prometheus", Duration::from_secs(180), || {
        let r = prom.value(results)?;
        let d = prom.value(parse)?;
        (r as usize + d as usize >= good + bad).then_some(())
    });
    assert_eq!(prom.value(results), Some(good as f64), "results counted by Prometheus");
    assert_eq!(prom.value(parse), Some(bad as f64), "dead letters counted by Prometheus");
    assert_eq!(
        prom.value(r#"sum(sluice_records_consumed_total{job="sluice"})"#),
        Some((good + bad) as f64)
    );
    // One end-to-end latency per record, in the histogram as Prometheus stored it.
    let count = wait_for("the latency histogram", Duration::from_secs(30), || {
        prom.value(r#"sum(sluice_end_to_end_latency_seconds_count{job="sluice"})"#)
            .filter(|c| *c >= (good + bad) as f64)
    });
    assert_eq!(count, (good + bad) as f64);
    let inf = prom
        .value(r#"sum(sluice_end_to_end_latency_seconds_bucket{job="sluice", le="+Inf"})"#)
        .expect("the +Inf bucket");
    assert_eq!(inf, count, "+Inf bucket equals the count");
    // A quantile over what was stored is a latency: positive, finite, under the test's length.
    let p99 = prom
        .value(r#"histogram_quantile(0.99, sum by (le) (sluice_end_to_end_latency_seconds_bucket{job="sluice"}))"#)
        .expect("p99 from the stored histogram");
    assert!(p99 > 0.0 && p99 < 600.0, "p99 {p99} s");
    assert_eq!(
        prom.value(r#"sluice_pipeline_state{job="sluice", state="running"}"#),
        Some(1.0),
        "{}",
        sluice.log()
    );
    sluice.terminate();
}
