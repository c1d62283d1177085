//! A real Kafka-compatible broker for integration tests (README "Tests" describes it).
//!
//! `TestBroker::start()` uses the broker named by `SLUICE_TEST_BROKER` (`host:port[,host:port...]`;
//! CI starts one with `scripts/broker.sh start`, a developer may point it at Apache Kafka), or else
//! starts a fresh Tansu (binary from `scripts/broker.sh path`, memory storage) on a free port as a
//! child process that dies with the `TestBroker` (and with the test process, even on SIGKILL).
//! Its log goes to `$SLUICE_CACHE/broker/test-logs/tansu-PORT.log`, kept only if the test failed;
//! `SLUICE_TANSU_RUST_LOG` sets its log level (default `warn`).
//!
//! No async runtime: admin futures are driven by [`block_on`]; consumers are dropped on a helper
//! thread with a timeout ([`close_in_background`]) because `rd_kafka_destroy` can block forever.
//!
//! Include it with `#[path = "common/broker.rs"] mod broker;` or through `common::broker`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Environment variable naming an external broker (`host:port`, or a comma-separated list).
pub const BROKER_ENV: &str = "SLUICE_TEST_BROKER";
/// Optional: `tansu` or `kafka`, overrides the detection behind [`TestBroker::is_tansu`].
pub const BROKER_KIND_ENV: &str = "SLUICE_TEST_BROKER_KIND";
/// The cluster id our Tansu brokers run with (also Tansu's default), used to recognise Tansu.
pub const TANSU_CLUSTER_ID: &str = "tansu_cluster";

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs tansu ("$0" "$@") with its output in $SLUICE_TANSU_LOG, prints its pid, and kills it with
/// SIGKILL as soon as our stdin reaches EOF: when the `TestBroker` is dropped, and also when the test
/// process dies without running destructors. Exits with tansu's status if tansu exits first.
const WATCHDOG: &str = r#"
exec 3<&0
"$0" "$@" </dev/null >"$SLUICE_TANSU_LOG" 2>&1 3<&- &
pid=$!
echo "$pid"
exec 2>/dev/null # no "Killed" job report from `wait`
{ cat <&3 >/dev/null; kill -KILL "$pid" 2>/dev/null; } &
reader=$!
exec 3<&-
wait "$pid"
rc=$?
kill -KILL "$reader" 2>/dev/null
exit "$rc"
"#;

/// A Kafka-compatible broker for integration tests.
pub struct TestBroker {
    /// `bootstrap.servers` for clients.
    pub bootstrap: String,
    /// Further settings for every client the helpers make (`security.protocol`, the CA of a
    /// TLS front, ...).
    pub client_settings: Vec<(String, String)>,
    tansu: bool,
    child: Option<TansuChild>,
}

struct TansuChild {
    wrapper: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    port: u16,
    log: PathBuf,
}

/// One record read back by [`TestBroker::consume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Header values that were null come back empty.
    pub headers: Vec<(String, Vec<u8>)>,
    pub partition: i32,
    pub offset: i64,
}

/// A record for [`TestBroker::produce`]: key, value, headers.
pub type Record = (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

impl TestBroker {
    /// The broker of `SLUICE_TEST_BROKER` when set, else a fresh Tansu on a free port (killed on
    /// drop). `Err` says why no broker could be had; tests should fail with it, not skip.
    pub fn start() -> Result<TestBroker, String> {
        match std::env::var(BROKER_ENV) {
            Ok(addr) if !addr.trim().is_empty() => Self::external(addr.trim()),
            _ => Self::start_tansu(),
        }
    }

    /// Always starts a fresh Tansu, ignoring `SLUICE_TEST_BROKER` (for tests that need a broker of
    /// their own, e.g. to kill it).
    pub fn start_tansu() -> Result<TestBroker, String> {
        Self::start_tansu_advertising(None)
    }

    /// A fresh Tansu that tells clients to connect to `127.0.0.1:<advertised>` (a fault proxy
    /// in front of it, say) instead of its own port; `bootstrap` is still its own address.
    pub fn start_tansu_advertising(advertised: Option<u16>) -> Result<TestBroker, String> {
        let bin = tansu_binary()?;
        let mut last = String::new();
        // A free port can be taken by someone else before tansu binds it: try a few.
        for _ in 0..4 {
            match spawn_tansu(&bin, advertised) {
                Ok(child) => {
                    return Ok(TestBroker {
                        bootstrap: format!("127.0.0.1:{}", child.port),
                        client_settings: Vec::new(),
                        tansu: true,
                        child: Some(child),
                    })
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The broker at `addr` (one already running; nothing is started or stopped).
    pub fn external(addr: &str) -> Result<TestBroker, String> {
        let first = addr.split(',').next().unwrap_or(addr).trim();
        let deadline = Instant::now() + Duration::from_secs(10);
        let info = loop {
            match probe(first, Duration::from_secs(2)) {
                Ok(info) => break info,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!(
                        "{BROKER_ENV}={addr}: no Kafka broker answers at {first}: {e}"
                    ))
                }
                Err(_) => thread::sleep(Duration::from_millis(200)),
            }
        };
        let tansu = match std::env::var(BROKER_KIND_ENV).map(|k| k.to_ascii_lowercase()) {
            Ok(k) if k == "tansu" => true,
            Ok(k) if k == "kafka" => false,
            _ => info.cluster_id.as_deref().is_some_and(|id| id.starts_with("tansu")),
        };
        Ok(TestBroker {
            bootstrap: addr.to_string(),
            client_settings: Vec::new(),
            tansu,
            child: None,
        })
    }

    /// Whether the broker is Tansu (started here, or `SLUICE_TEST_BROKER` with a Tansu cluster id or
    /// `SLUICE_TEST_BROKER_KIND=tansu`).
    pub fn is_tansu(&self) -> bool {
        self.tansu
    }

    /// Whether a `read_committed` reader is known to hide aborted transactions on this broker.
    /// Tansu's is not (README "Tests"): tests of reader-side exactly-once print this reason
    /// and skip when `Some`.
    pub fn read_committed_gap(&self) -> Option<&'static str> {
        self.tansu.then_some(
            "Tansu: a read_committed consumer still sees records of aborted transactions",
        )
    }

    /// Whether this `TestBroker` started the broker process (false for `SLUICE_TEST_BROKER`).
    pub fn owns_process(&self) -> bool {
        self.child.is_some()
    }

    /// The broker's log file, when we started it.
    pub fn log_path(&self) -> Option<&Path> {
        self.child.as_ref().map(|c| c.log.as_path())
    }

    /// A unique topic/group name `prefix-<pid>-<time>-<n>` (tests may share one broker).
    pub fn unique(prefix: &str) -> String {
        static N: AtomicU64 = AtomicU64::new(0);
        let clean: String = prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .take(150)
            .collect();
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        format!(
            "{clean}-{}-{}-{}",
            std::process::id(),
            t % 10_000_000_000,
            N.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Settings the test broker needs (README "Tests"), for any client: bootstrap, IPv4, the group timings
    /// tests use (`session.timeout.ms=3000`, `heartbeat.interval.ms=500`) and `linger.ms=5`.
    /// Producer-only or consumer-only keys only draw a logged warning from the other kind; use
    /// [`producer_config`](Self::producer_config) / [`consumer_config`](Self::consumer_config) for a
    /// config without them.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = self.base_config();
        c.set("session.timeout.ms", "3000")
            .set("heartbeat.interval.ms", "500")
            .set("linger.ms", "5");
        c
    }

    /// Only what every client needs: `bootstrap.servers`, `broker.address.family=v4`.
    pub fn base_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("broker.address.family", "v4")
            .set("client.id", "sluice-test");
        for (k, v) in &self.client_settings {
            c.set(k, v);
        }
        c
    }

    /// For admin and metadata-only clients: librdkafka's producer-type handles ask the broker to
    /// auto-create topics they look up, and Tansu does; this one does not.
    fn metadata_config(&self) -> ClientConfig {
        let mut c = self.base_config();
        c.set("allow.auto.create.topics", "false");
        c
    }

    /// Producer settings: `linger.ms=5` (keep it >= 5 against Tansu), `acks=all`, records up
    /// to 8 MiB (tests of oversized requests).
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.base_config();
        c.set("linger.ms", "5").set("acks", "all").set("message.max.bytes", "8388608");
        c
    }

    /// Consumer settings for `group`: the test group timings, earliest start, no auto commit.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut c = self.base_config();
        c.set("group.id", group)
            .set("session.timeout.ms", "3000")
            .set("heartbeat.interval.ms", "500")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        c
    }

    /// Creates `name` with `partitions` partitions (replication 1) through the admin API and waits
    /// until metadata lists every partition with a leader. An existing topic with that partition
    /// count is fine; with another count it is an error.
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), String> {
        let admin: AdminClient<DefaultClientContext> =
            self.metadata_config().create().map_err(|e| format!("admin client: {e}"))?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on(admin.create_topics([&topic], &opts), ADMIN_TIMEOUT)
            .map_err(|e| format!("create topic {name}: {e}"))?
            .map_err(|e| format!("create topic {name}: {e}"))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => return Err(format!("create topic {t}: {code}")),
            }
        }
        let deadline = Instant::now() + ADMIN_TIMEOUT;
        loop {
            let seen = match admin.inner().fetch_metadata(Some(name), Duration::from_secs(2)) {
                Ok(md) => md.topics().iter().find(|t| t.name() == name).and_then(|t| {
                    let ready =
                        t.error().is_none() && t.partitions().iter().all(|p| p.leader() >= 0);
                    ready.then(|| t.partitions().len() as i32)
                }),
                Err(_) => None,
            };
            match seen {
                Some(n) if n == partitions => return Ok(()),
                Some(n) if n > 0 => {
                    return Err(format!(
                        "topic {name} exists with {n} partitions, wanted {partitions}"
                    ))
                }
                _ if Instant::now() >= deadline => {
                    return Err(format!(
                        "topic {name}: metadata did not show {partitions} partitions in time"
                    ))
                }
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Deletes topics (best effort: errors are returned, a missing topic is fine).
    pub fn delete_topics(&self, names: &[&str]) -> Result<(), String> {
        let admin: AdminClient<DefaultClientContext> =
            self.base_config().create().map_err(|e| format!("admin client: {e}"))?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = block_on(admin.delete_topics(names, &opts), ADMIN_TIMEOUT)?
            .map_err(|e| format!("delete topics: {e}"))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((t, code)) => return Err(format!("delete topic {t}: {code}")),
            }
        }
        Ok(())
    }

    /// Partition ids of `topic` from metadata (empty if it does not exist; looking does not create it).
    pub fn partitions(&self, topic: &str) -> Result<Vec<i32>, String> {
        let p: BaseProducer =
            self.metadata_config().create().map_err(|e| format!("client: {e}"))?;
        partitions_of(p.client(), topic, Duration::from_secs(5))
    }

    /// Produces `records` (to `partition`, or by key/sticky partitioner when `None`) and waits for
    /// every delivery; returns each record's (partition, offset) in input order.
    pub fn produce(
        &self,
        topic: &str,
        records: &[Record],
        partition: Option<i32>,
    ) -> Result<Vec<(i32, i64)>, String> {
        let ctx = DeliveryLog { results: Mutex::new(vec![None; records.len()]) };
        let producer: BaseProducer<DeliveryLog> = self
            .producer_config()
            .create_with_context(ctx)
            .map_err(|e| format!("producer: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, (key, value, headers)) in records.iter().enumerate() {
            let mut rec: BaseRecord<'_, [u8], [u8], usize> =
                BaseRecord::with_opaque_to(topic, i).payload(&value[..]);
            if let Some(k) = key {
                rec = rec.key(&k[..]);
            }
            if let Some(p) = partition {
                rec = rec.partition(p);
            }
            if !headers.is_empty() {
                let mut h = OwnedHeaders::new_with_capacity(headers.len());
                for (k, v) in headers {
                    h = h.insert(Header { key: k, value: Some(v) });
                }
                rec = rec.headers(h);
            }
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        if Instant::now() >= deadline {
                            return Err(format!("produce to {topic}: local queue stayed full"));
                        }
                        rec = back;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => return Err(format!("produce to {topic}: {e}")),
                }
            }
            producer.poll(Duration::ZERO);
        }
        producer
            .flush(deadline.saturating_duration_since(Instant::now()))
            .map_err(|e| format!("produce to {topic}: flush: {e}"))?;
        let results = std::mem::take(&mut *producer.context().results.lock().unwrap());
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|| Err(format!("record {i}: no delivery report"))))
            .collect()
    }

    /// Reads `topic` from the beginning of every partition (no group, nothing committed) with
    /// `isolation.level=read_committed` (librdkafka's default) until `n` records were read or
    /// `timeout` passed. Returns what it got, in arrival order.
    pub fn consume(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Consumed> {
        self.consume_with(topic, n, timeout, true)
            .unwrap_or_else(|e| panic!("consume {topic}: {e}"))
    }

    /// Like [`consume`](Self::consume), with the isolation level chosen and errors returned.
    pub fn consume_with(
        &self,
        topic: &str,
        n: usize,
        timeout: Duration,
        read_committed: bool,
    ) -> Result<Vec<Consumed>, String> {
        let deadline = Instant::now() + timeout;
        let mut cfg = self.base_config();
        // librdkafka refuses assign() without a group id; this group never commits.
        cfg.set("group.id", Self::unique("reader"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set(
                "isolation.level",
                if read_committed { "read_committed" } else { "read_uncommitted" },
            );
        let consumer: BaseConsumer = cfg.create().map_err(|e| format!("consumer: {e}"))?;
        let result = (|| {
            // The topic may not exist yet (someone else creates it): wait for its partitions. A
            // lookup of a missing topic can also time out; it stays missing until the deadline.
            let parts = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let lookup = left.clamp(Duration::from_millis(100), Duration::from_secs(2));
                let parts = partitions_of(consumer.client(), topic, lookup).unwrap_or_default();
                if !parts.is_empty() || Instant::now() >= deadline {
                    break parts;
                }
                thread::sleep(Duration::from_millis(50));
            };
            if parts.is_empty() {
                return Ok(Vec::new());
            }
            let mut tpl = TopicPartitionList::new();
            for p in &parts {
                tpl.add_partition_offset(topic, *p, Offset::Beginning)
                    .map_err(|e| e.to_string())?;
            }
            consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
            Ok(poll_records(&consumer, n, deadline))
        })();
        close_in_background(consumer, CLOSE_TIMEOUT);
        result
    }

    /// The offsets `group` has committed on `topic`, per partition (`None`: nothing committed).
    pub fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<i32, Option<i64>>, String> {
        let consumer: BaseConsumer =
            self.consumer_config(group).create().map_err(|e| format!("consumer: {e}"))?;
        let result = (|| {
            let mut tpl = TopicPartitionList::new();
            for p in partitions_of(consumer.client(), topic, Duration::from_secs(5))? {
                tpl.add_partition(topic, p);
            }
            let got = consumer
                .committed_offsets(tpl, Duration::from_secs(10))
                .map_err(|e| format!("offset fetch for group {group}: {e}"))?;
            Ok(got
                .elements_for_topic(topic)
                .iter()
                .map(|e| (e.partition(), e.offset().to_raw().filter(|o| *o >= 0)))
                .collect())
        })();
        close_in_background(consumer, CLOSE_TIMEOUT);
        result
    }

    /// Asserts that `group` has committed every partition of `topic` to its end offset.
    pub fn assert_committed_to_end(&self, group: &str, topic: &str) {
        let ends = self.end_offsets(topic).unwrap();
        let committed = self.committed_offsets(group, topic).unwrap();
        for (p, end) in ends {
            assert_eq!(
                committed.get(&p).copied().flatten(),
                Some(end),
                "partition {p} committed to its end"
            );
        }
    }

    /// End offsets (high watermarks: the offset the next record gets) of every partition of `topic`.
    ///
    /// Tansu answers ListOffsets(latest) with the base offset of the partition's last record batch
    /// plus one, not the end (`fetch_watermarks` reports 1 after one batch of 250 records), while
    /// the high watermark in its Fetch responses is right. So this reads from that answer minus
    /// one up to the end of the last batch; on Apache Kafka that finds the same end.
    pub fn end_offsets(&self, topic: &str) -> Result<BTreeMap<i32, i64>, String> {
        let mut cfg = self.base_config();
        cfg.set("group.id", Self::unique("sluice-test-end-offsets"))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_uncommitted")
            .set("fetch.wait.max.ms", "20");
        let consumer: BaseConsumer = cfg.create().map_err(|e| format!("consumer: {e}"))?;
        let result = (|| {
            let mut listed = BTreeMap::new();
            for part in partitions_of(consumer.client(), topic, Duration::from_secs(5))? {
                let (_, high) = consumer
                    .fetch_watermarks(topic, part, Duration::from_secs(5))
                    .map_err(|e| format!("watermarks {topic}/{part}: {e}"))?;
                listed.insert(part, high);
            }
            let mut tpl = TopicPartitionList::new();
            for (&part, &high) in &listed {
                if high > 0 {
                    tpl.add_partition_offset(topic, part, Offset::Offset(high - 1))
                        .map_err(|e| e.to_string())?;
                }
            }
            let mut ends = listed.clone();
            if tpl.count() == 0 {
                return Ok(ends);
            }
            consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
            // Each assigned partition yields at least its record at `high - 1` unless that offset
            // holds a transaction marker, and a fetch returns whole batches: stop once every
            // partition answered and things went quiet, or long after the last record.
            let want = tpl.count();
            let mut answered = std::collections::HashSet::new();
            let mut last_record: Option<Instant> = None;
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                match consumer.poll(Duration::from_millis(50)) {
                    Some(Ok(m)) => {
                        answered.insert(m.partition());
                        last_record = Some(Instant::now());
                        let e = ends.entry(m.partition()).or_insert(0);
                        *e = (*e).max(m.offset() + 1);
                    }
                    Some(Err(_)) => {}
                    None => {
                        let quiet = last_record.map(|t| t.elapsed());
                        match quiet {
                            Some(q)
                                if answered.len() == want && q >= Duration::from_millis(100) =>
                            {
                                break
                            }
                            Some(q) if q >= Duration::from_millis(700) => break,
                            _ => {}
                        }
                    }
                }
            }
            Ok(ends)
        })();
        close_in_background(consumer, CLOSE_TIMEOUT);
        result
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

impl TestBroker {
    /// Kills the broker process this `TestBroker` started (all its data is lost; clients see the
    /// broker go down). Returns false for an external broker, or when already killed.
    pub fn kill(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        drop(c.stdin.take()); // EOF: the watchdog kills tansu and exits
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match c.wrapper.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = Command::new("kill").arg("-KILL").arg(c.pid.to_string()).status();
                    let _ = c.wrapper.kill();
                    let _ = c.wrapper.wait();
                    break;
                }
            }
        }
        if thread::panicking() {
            eprintln!("test broker on port {} logged to {}", c.port, c.log.display());
        } else {
            let _ = std::fs::remove_file(&c.log);
        }
        true
    }
}

/// Drives `fut` to completion on this thread (parking between polls), or gives up after `timeout`.
pub fn block_on<F: Future>(fut: F, timeout: Duration) -> Result<F::Output, String> {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    let deadline = Instant::now() + timeout;
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return Ok(v);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("timed out after {timeout:?}"));
        }
        thread::park_timeout(left.min(Duration::from_millis(100)));
    }
}

/// Drops a Kafka client (typically a consumer) on a helper thread and waits up to `timeout` for
/// it: `rd_kafka_destroy` sometimes blocks forever (rust-rdkafka #509, librdkafka #4674). A client
/// that does not finish in time is leaked with its thread. Returns whether it finished.
pub fn close_in_background<T: Send + 'static>(client: T, timeout: Duration) -> bool {
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new().name("kafka-close".into()).spawn(move || {
        drop(client);
        let _ = tx.send(());
    });
    if spawned.is_err() {
        return false;
    }
    let done = rx.recv_timeout(timeout).is_ok();
    if !done {
        eprintln!("warning: a Kafka client did not close within {timeout:?}; leaking it");
    }
    done
}

/// Polls `consumer` until `n` records were read or `deadline` passed.
pub fn poll_records<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    n: usize,
    deadline: Instant,
) -> Vec<Consumed> {
    let mut out = Vec::with_capacity(n.min(4096));
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        if let Some(Ok(m)) = consumer.poll(left.min(Duration::from_millis(100))) {
            out.push(Consumed {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (h.key.to_string(), h.value.map(<[u8]>::to_vec).unwrap_or_default())
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                partition: m.partition(),
                offset: m.offset(),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// internals

type Delivery = Result<(i32, i64), String>;

struct DeliveryLog {
    results: Mutex<Vec<Option<Delivery>>>,
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, i: usize) {
        let r = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(format!("record {i}: {e}")),
        };
        if let Some(slot) = self.results.lock().unwrap().get_mut(i) {
            *slot = Some(r);
        }
    }
}

fn partitions_of<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, String> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("metadata for {topic}: {e}"))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cache_root() -> PathBuf {
    match std::env::var_os("SLUICE_CACHE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/sluice"),
    }
}

/// `scripts/broker.sh path`, once per test binary.
fn tansu_binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = repo_root().join("scripts/broker.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("path")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "`scripts/broker.sh path` failed ({}): {}",
                out.status,
                stderr.trim()
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let path = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        if path.is_empty() || !Path::new(path).is_file() {
            return Err(format!(
                "`scripts/broker.sh path` printed no binary path ({:?}; {})",
                path,
                stderr.trim()
            ));
        }
        Ok(PathBuf::from(path))
    })
    .clone()
}

/// A port nobody listens on now (it may be taken by the time it is used).
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn spawn_tansu(bin: &Path, advertised: Option<u16>) -> Result<TansuChild, String> {
    let port = free_port()?;
    let log_dir = cache_root().join("broker/test-logs");
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    remove_old_logs(&log_dir);
    let log = log_dir.join(format!("tansu-{port}.log"));
    let url = format!("tcp://127.0.0.1:{port}");
    let advertised_url = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
    let mut wrapper = Command::new("bash")
        .arg("-c")
        .arg(WATCHDOG)
        .arg(bin)
        .args(["broker", "--cluster-id", TANSU_CLUSTER_ID, "--listener-url", &url])
        .args(["--advertised-listener-url", &advertised_url, "--storage-engine", "memory://tansu/"])
        .env("SLUICE_TANSU_LOG", &log)
        // An inherited RUST_LOG=debug makes tansu log thousands of lines per request.
        .env("RUST_LOG", std::env::var("SLUICE_TANSU_RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdin = wrapper.stdin.take();
    let mut pid_line = String::new();
    let mut stdout = wrapper.stdout.take().expect("piped stdout");
    let mut byte = [0u8; 1];
    while stdout.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
        pid_line.push(byte[0] as char);
    }
    let mut child = TansuChild { wrapper, stdin, pid: 0, port, log };
    child.pid = match pid_line.trim().parse() {
        Ok(p) => p,
        Err(_) => {
            drop(child.stdin.take());
            let _ = child.wrapper.kill();
            let _ = child.wrapper.wait();
            return Err(format!("tansu watchdog did not report a pid (got {pid_line:?})"));
        }
    };
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.wrapper.try_wait() {
            let tail = log_tail(&child.log);
            return Err(format!("tansu on port {port} exited during startup ({status}): {tail}"));
        }
        match probe(&addr, Duration::from_secs(1)) {
            Ok(_) => return Ok(child), // a dropped `child` would kill tansu: hand it over
            Err(e) if Instant::now() >= deadline => {
                let tail = log_tail(&child.log);
                drop(TestBroker {
                    bootstrap: addr,
                    client_settings: Vec::new(),
                    tansu: true,
                    child: Some(child),
                });
                return Err(format!(
                    "tansu on port {port} not ready in {READY_TIMEOUT:?}: {e}; log: {tail}"
                ));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Logs are kept only for failed tests; drop those older than a day.
fn remove_old_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(24 * 3600));
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// What a successful [`probe`] learned.
#[derive(Debug, Clone)]
pub struct ProbeInfo {
    pub brokers: Vec<(i32, String, i32)>,
    pub cluster_id: Option<String>,
}

/// Readiness check over a raw socket: ApiVersions v0, then Metadata (a non-flexible version the
/// broker supports, v4 when it can, no topics) listing at least one broker.
pub fn probe(addr: &str, timeout: Duration) -> Result<ProbeInfo, String> {
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("{addr}: no IPv4 address"))?;
    let mut s =
        TcpStream::connect_timeout(&sock, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).ok();

    let r = kafka_call(&mut s, 18, 0, &[], 1)?;
    let mut rd = Rd(&r);
    let err = rd.i16()?;
    if err != 0 {
        return Err(format!("ApiVersions error code {err}"));
    }
    let mut md_range = None;
    for _ in 0..rd.i32()?.max(0) {
        let (key, min, max) = (rd.i16()?, rd.i16()?, rd.i16()?);
        if key == 3 {
            md_range = Some((min, max));
        }
    }
    let (min, max) = md_range.ok_or("broker lists no Metadata API")?;
    let v = min.max(max.min(4));
    if v > max.min(8) {
        // Only flexible versions: the broker answered ApiVersions, call it ready.
        return Ok(ProbeInfo { brokers: Vec::new(), cluster_id: None });
    }
    let mut body = 0i32.to_be_bytes().to_vec(); // topics: none
    if v >= 4 {
        body.push(0); // allow_auto_topic_creation
    }
    if v >= 8 {
        body.extend([0, 0]); // include_*_authorized_operations
    }
    let r = kafka_call(&mut s, 3, v, &body, 2)?;
    let mut rd = Rd(&r);
    if v >= 3 {
        rd.i32()?; // throttle_time_ms
    }
    let mut brokers = Vec::new();
    for _ in 0..rd.i32()?.max(0) {
        let node = rd.i32()?;
        let host = rd.string()?.unwrap_or_default();
        let port = rd.i32()?;
        rd.string()?; // rack
        brokers.push((node, host, port));
    }
    let cluster_id = if v >= 2 { rd.string()? } else { None };
    if brokers.is_empty() {
        return Err("metadata lists no brokers".into());
    }
    Ok(ProbeInfo { brokers, cluster_id })
}

fn kafka_call(
    s: &mut TcpStream,
    api: i16,
    version: i16,
    body: &[u8],
    corr: i32,
) -> Result<Vec<u8>, String> {
    let client = b"sluice-test-probe";
    let mut msg = Vec::with_capacity(32 + body.len());
    msg.extend(api.to_be_bytes());
    msg.extend(version.to_be_bytes());
    msg.extend(corr.to_be_bytes());
    msg.extend((client.len() as i16).to_be_bytes());
    msg.extend(client);
    msg.extend(body);
    let mut frame = (msg.len() as i32).to_be_bytes().to_vec();
    frame.extend(msg);
    s.write_all(&frame).map_err(|e| format!("send: {e}"))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| format!("receive: {e}"))?;
    let len = i32::from_be_bytes(len);
    if !(4..=(64 << 20)).contains(&len) {
        return Err(format!("bad response size {len}"));
    }
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).map_err(|e| format!("receive: {e}"))?;
    let got = i32::from_be_bytes(data[..4].try_into().unwrap());
    if got != corr {
        return Err(format!("correlation id {got}, expected {corr}"));
    }
    data.drain(..4);
    Ok(data)
}

struct Rd<'a>(&'a [u8]);

impl Rd<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        if self.0.len() < n {
            return Err("short response".into());
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn string(&mut self) -> Result<Option<String>, String> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(None);
        }
        Ok(Some(String::from_utf8_lossy(self.take(n as usize)?).into_owned()))
    }
}
