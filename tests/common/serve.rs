//! `sluice serve` as a child process against a real broker (the process tests).

use std::collections::HashMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::broker::TestBroker;
use super::TestRepo;

/// A `sluice serve` process whose log is collected; killed when dropped.
pub struct Serve {
    pub child: Child,
    log: Arc<Mutex<String>>,
}

impl Serve {
    pub fn start(config: &std::path::Path) -> Serve {
        Self::start_with_env(config, &[])
    }

    /// [`start`](Self::start) with extra environment variables (configuration overrides).
    pub fn start_with_env(config: &std::path::Path, env: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--config"])
            .arg(config)
            .env("SLUICE_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice serve");
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Serve { child, log }
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill").args([sig, &self.child.id().to_string()]).status();
    }

    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Serve {
    /// SIGTERM, then asserts a clean exit within 60 s.
    pub fn terminate(&mut self) {
        self.signal("-TERM");
        let status = self.wait(Duration::from_secs(60));
        assert!(
            status.is_some_and(|st| st.success()),
            "exit after SIGTERM: {status:?}\n{}",
            self.log()
        );
    }
}

/// A second instance joins under load and leaves under load: `produce(n)` adds `n` records
/// while `joiner` waits for its partitions, then while it runs, and while it exits on
/// SIGTERM. Returns its log.
pub fn join_and_leave_under_load(mut joiner: Serve, produce: &mut dyn FnMut(usize)) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !joiner.log().contains("partitions assigned") {
        assert!(Instant::now() < deadline, "the joiner got no partitions:\n{}", joiner.log());
        produce(50);
        std::thread::sleep(Duration::from_millis(300));
    }
    produce(500);
    std::thread::sleep(Duration::from_secs(1));
    // It leaves while records keep coming.
    joiner.signal("-TERM");
    produce(500);
    let status = joiner.wait(Duration::from_secs(60)).expect("the joiner exits after SIGTERM");
    assert!(status.success(), "{}", joiner.log());
    produce(200);
    joiner.log()
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Topics, group and config file of one process test.
pub struct Setup {
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
    pub config: std::path::PathBuf,
}

/// Creates the five topics (the input with `partitions`) and writes a config for them.
pub fn setup(b: &TestBroker, repo: &TestRepo, prefix: &str, partitions: i32) -> Setup {
    setup_with(b, repo, prefix, partitions, "")
}

/// [`setup`], with `inference` (YAML lines, indented by 4) added under `streaming.inference`.
pub fn setup_with(
    b: &TestBroker,
    repo: &TestRepo,
    prefix: &str,
    partitions: i32,
    inference: &str,
) -> Setup {
    let p = TestBroker::unique(prefix);
    let names = ["in", "prio", "out", "dlq", "metrics"].map(|s| format!("{p}-{s}"));
    b.create_topic(&names[0], partitions).unwrap();
    for n in &names[1..] {
        b.create_topic(n, 1).unwrap();
    }
    let yaml = format!(
        "kafka:\n  bootstrap: {{servers: \"{}\"}}\n  consumer: {{group: {p}-group, sessionTimeoutMs: 3000, heartbeatIntervalMs: 500, commitIntervalMs: 100}}\n  topics:\n    streaming: {{input: {}, priority: {}, output: {}, dlq: {}, metrics: {}}}\nstreaming:\n  inference:\n    model: {{repository: \"{}\"}}\n{}control: {{listen: \"127.0.0.1:0\"}}\n",
        b.bootstrap,
        names[0],
        names[1],
        names[2],
        names[3],
        names[4],
        repo.path().display(),
        inference
    );
    let config = repo.path().join(format!("{p}.yaml"));
    std::fs::write(&config, yaml).unwrap();
    Setup {
        input: names[0].clone(),
        output: names[2].clone(),
        dlq: names[3].clone(),
        group: format!("{p}-group"),
        config,
    }
}

/// Requests `r<from>` .. `r<to>` for the `mlp` model.
pub fn records(from: usize, to: usize) -> Vec<super::kafka::Record> {
    (from..to)
        .map(|i| {
            (
                None,
                format!(r#"{{"id":"r{i}","model":"mlp","input":[{i},0,0,0,0,0,0,0]}}"#)
                    .into_bytes(),
                vec![],
            )
        })
        .collect()
}

/// Counts of each request id among the results, reading until `n` distinct ids are seen.
pub fn result_ids(
    b: &TestBroker,
    topic: &str,
    n: usize,
    timeout: Duration,
) -> HashMap<String, usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let got = b.consume(topic, usize::MAX, Duration::from_secs(3));
        let mut count: HashMap<String, usize> = HashMap::new();
        for c in got {
            let v: serde_json::Value = serde_json::from_slice(&c.value).unwrap();
            *count.entry(v["id"].as_str().unwrap().to_string()).or_default() += 1;
        }
        if count.len() >= n || Instant::now() >= deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The demo models plus `mlp`, the small MLP the records name.
pub fn mlp_repo() -> TestRepo {
    let repo = TestRepo::new();
    repo.add_mlp("mlp", "1", vec![4], 5);
    repo
}
