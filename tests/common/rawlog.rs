//! A raw reader of Kafka partition logs, for checking exactly-once delivery where the broker's
//! own `read_committed` readers cannot be trusted to hide aborted transactions (Tansu).
//!
//! [`read_topic`] reads every partition of a topic from its leader with plain Kafka requests
//! (ApiVersions, Metadata, Fetch with `isolation_level = READ_UNCOMMITTED`, ListOffsets only to
//! find the log start when offset 0 is gone), from the start of the log up to the high-water mark
//! of the first Fetch response (a snapshot: records written after it are not read). It sees what
//! librdkafka never hands to an application: the control batches (COMMIT/ABORT markers) that a
//! transaction coordinator writes into each partition. [`apply_markers`] then does what a
//! `read_committed` reader should: a transactional record counts once its producer's next marker
//! on that partition is a COMMIT, and is dropped if it is an ABORT; transactional records with no
//! marker yet belong to an open transaction (reported apart, not committed); records of
//! non-transactional batches always count.
//!
//! Only standard protocol is used, so it reads Apache Kafka the same way. Limits: no
//! compression codec (the test producers do not compress: such a batch is an error), record
//! batches v2 only, and a record's headers come back with duplicate keys merged (the decoder
//! keeps them in a map).
//!
//! Its unit tests (no broker needed) are in `tests/kafka_exactly_once.rs`, module
//! `raw_log_reader`, so that they run once and not in every test binary that includes `common`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;

/// The `client.id` of our requests (visible in broker logs).
pub const CLIENT_ID: &str = "sluice-test-rawlog";

/// Highest versions asked for (the broker may support fewer). Fetch stops at 12, the last
/// version that names topics (13 and up want topic ids).
const FETCH_MAX_VERSION: i16 = 12;
const METADATA_MAX_VERSION: i16 = 12;
const LIST_OFFSETS_MAX_VERSION: i16 = 7;

/// Kafka error codes we act on.
const OFFSET_OUT_OF_RANGE: i16 = 1;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const LEADER_NOT_AVAILABLE: i16 = 5;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// Control record types (the second i16 of a control record's key).
const CONTROL_ABORT: i16 = 0;
const CONTROL_COMMIT: i16 = 1;

/// Fetch sizes: start at 1 MiB per response, double when not even one batch fits.
const FETCH_BYTES: i32 = 1 << 20;
const FETCH_BYTES_MAX: i32 = 64 << 20;
/// Largest response frame accepted.
const MAX_FRAME: usize = 256 << 20;
/// Fixed part of a v2 record batch, up to and including the record count.
const BATCH_HEADER: usize = 61;

/// One record of a partition log, as read (the same fields as `broker::Consumed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// A null value comes back empty.
    pub value: Vec<u8>,
    /// Header values that were null come back empty.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// One decoded record batch: what [`apply_markers`] needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// -1 for a producer without one (neither idempotent nor transactional).
    pub producer_id: i64,
    pub transactional: bool,
    /// A control batch: its records are transaction markers, not data.
    pub control: bool,
    pub records: Vec<LogRecord>,
}

/// The transactional view of a topic's log (of one partition, for [`apply_markers`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicLog {
    pub topic: String,
    /// What a `read_committed` reader should see: records of non-transactional batches and of
    /// committed transactions, by (partition, offset).
    pub committed: Vec<LogRecord>,
    /// Records of transactions with no marker yet (open, or never finished), by (partition,
    /// offset). A `read_committed` reader stops before the first of them.
    pub open: Vec<LogRecord>,
    /// Records of aborted transactions.
    pub aborted: usize,
    pub commit_markers: usize,
    pub abort_markers: usize,
    /// Control records of other types (none are expected in a data topic); ignored.
    pub other_control: usize,
    /// The high-water mark each partition was read up to.
    pub end_offsets: BTreeMap<i32, i64>,
}

impl TopicLog {
    /// A one-line account of the counts.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} committed, {} aborted, {} open records; {} commit and {} abort markers{}; ends {:?}",
            self.topic,
            self.committed.len(),
            self.aborted,
            self.open.len(),
            self.commit_markers,
            self.abort_markers,
            if self.other_control > 0 {
                format!(", {} other control records", self.other_control)
            } else {
                String::new()
            },
            self.end_offsets
        )
    }
}

/// Adds one partition's batches, in log order, to `log`: records of transactional batches wait
/// for their producer's next marker (COMMIT: into `committed`; ABORT: counted in `aborted`);
/// those still waiting at the end go to `open`. Fails on a control record whose key is not a
/// control key.
pub fn apply_markers(
    log: &mut TopicLog,
    batches: impl IntoIterator<Item = Batch>,
) -> Result<(), String> {
    let mut pending: HashMap<i64, Vec<LogRecord>> = HashMap::new();
    for batch in batches {
        if batch.control {
            for r in &batch.records {
                match control_type(r)? {
                    CONTROL_COMMIT => {
                        log.commit_markers += 1;
                        log.committed
                            .extend(pending.remove(&batch.producer_id).unwrap_or_default());
                    }
                    CONTROL_ABORT => {
                        log.abort_markers += 1;
                        log.aborted += pending.remove(&batch.producer_id).map_or(0, |p| p.len());
                    }
                    _ => log.other_control += 1,
                }
            }
        } else if batch.transactional {
            pending.entry(batch.producer_id).or_default().extend(batch.records);
        } else {
            log.committed.extend(batch.records);
        }
    }
    log.open.extend(pending.into_values().flatten());
    log.committed.sort_by_key(|r| (r.partition, r.offset));
    log.open.sort_by_key(|r| (r.partition, r.offset));
    Ok(())
}

/// The type of a control record: its key is (version: i16, type: i16).
fn control_type(r: &LogRecord) -> Result<i16, String> {
    match r.key.as_deref() {
        Some([_, _, a, b, ..]) => Ok(i16::from_be_bytes([*a, *b])),
        other => Err(format!(
            "control record at {}/{} has no control key: {:?}",
            r.partition, r.offset, other
        )),
    }
}

/// Reads every partition of `topic` through the brokers at `bootstrap` (`host:port`, or a
/// comma-separated list) and applies the transaction markers. Fails (with the reason) when the
/// topic does not exist, a leader cannot be reached, a response is malformed, or the read takes
/// longer than `timeout`.
pub fn read_topic(bootstrap: &str, topic: &str, timeout: Duration) -> Result<TopicLog, String> {
    let deadline = Instant::now() + timeout;
    let mut boot = connect_any(bootstrap, deadline)?;
    let (brokers, leaders) = partition_leaders(&mut boot, topic, deadline)?;
    let mut conns: HashMap<i32, Conn> = HashMap::new();
    let mut log = TopicLog { topic: topic.to_string(), ..TopicLog::default() };
    for (&partition, &leader) in &leaders {
        let conn = match conns.entry(leader) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let addr = brokers.get(&leader).ok_or_else(|| {
                    format!(
                        "{topic}/{partition}: leader {leader} is not among the brokers {brokers:?}"
                    )
                })?;
                let c = Conn::connect(addr, deadline).map_err(|e| {
                    format!("{topic}/{partition}: cannot reach its leader, broker {leader}: {e}")
                })?;
                v.insert(c)
            }
        };
        let (batches, end) = read_partition(conn, topic, partition, deadline)?;
        log.end_offsets.insert(partition, end);
        apply_markers(&mut log, batches)?;
    }
    Ok(log)
}

/// The codec of every stored data batch of `topic` (control batches left out), as the broker
/// hands them out: (partition, base offset, codec bits, see [`RawBatch::codec`]). One Fetch
/// per partition from offset 0; the batches are not decoded, so compressed ones are fine.
pub fn stored_codecs(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, i64, u8)>, String> {
    let deadline = Instant::now() + timeout;
    let mut boot = connect_any(bootstrap, deadline)?;
    let (brokers, leaders) = partition_leaders(&mut boot, topic, deadline)?;
    let mut out = Vec::new();
    for (&partition, leader) in &leaders {
        let addr = brokers.get(leader).ok_or_else(|| format!("{topic}: no broker {leader}"))?;
        let mut conn = Conn::connect(addr, deadline)?;
        let version = conn.version::<FetchRequest>(FETCH_MAX_VERSION)?;
        let request = FetchRequest::default()
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(FETCH_BYTES)
            .with_isolation_level(0)
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(FETCH_BYTES)])]);
        let response = conn.call(&request, version)?;
        let records = response
            .responses
            .into_iter()
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .and_then(|p| p.records)
            .unwrap_or_default();
        let (batches, _) = split_batches(&records)?;
        out.extend(
            batches.iter().filter(|b| !b.control).map(|b| (partition, b.base_offset, b.codec)),
        );
    }
    Ok(out)
}

/// The first broker of `bootstrap` that answers.
fn connect_any(bootstrap: &str, deadline: Instant) -> Result<Conn, String> {
    let mut errors = Vec::new();
    for addr in bootstrap.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match Conn::connect(addr, deadline) {
            Ok(c) => return Ok(c),
            Err(e) => errors.push(e),
        }
    }
    Err(format!("no broker of {bootstrap:?} answers: {}", errors.join("; ")))
}

/// Brokers (node id to `host:port`) and each partition's leader, retried until every partition
/// has a leader or the deadline.
#[allow(clippy::type_complexity)]
fn partition_leaders(
    conn: &mut Conn,
    topic: &str,
    deadline: Instant,
) -> Result<(HashMap<i32, String>, BTreeMap<i32, i32>), String> {
    let version = conn.version::<MetadataRequest>(METADATA_MAX_VERSION)?;
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(topic_name(topic)))]))
        .with_allow_auto_topic_creation(false);
    loop {
        let md = conn.call(&request, version)?;
        let brokers: HashMap<i32, String> =
            md.brokers.iter().map(|b| (b.node_id.0, format!("{}:{}", &*b.host, b.port))).collect();
        let t = md
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| &*n.0 == topic))
            .ok_or_else(|| format!("metadata for {topic} does not list it"))?;
        let retriable = match t.error_code {
            0 => None,
            UNKNOWN_TOPIC_OR_PARTITION => return Err(format!("topic {topic} does not exist")),
            LEADER_NOT_AVAILABLE => Some(format!("topic {topic}: leader not available")),
            e => return Err(format!("metadata for {topic}: error code {e}")),
        };
        let no_leader: Vec<i32> = t
            .partitions
            .iter()
            .filter(|p| p.error_code != 0 || p.leader_id.0 < 0)
            .map(|p| p.partition_index)
            .collect();
        let problem = retriable.or_else(|| {
            (t.partitions.is_empty() || !no_leader.is_empty()).then(|| {
                format!(
                    "{topic}: partitions without a leader: {no_leader:?} (of {})",
                    t.partitions.len()
                )
            })
        });
        match problem {
            None => {
                let leaders =
                    t.partitions.iter().map(|p| (p.partition_index, p.leader_id.0)).collect();
                return Ok((brokers, leaders));
            }
            Some(p) if Instant::now() >= deadline => return Err(p),
            Some(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The batches of one partition from the start of its log up to the high-water mark of the
/// first Fetch response, and that mark.
fn read_partition(
    conn: &mut Conn,
    topic: &str,
    partition: i32,
    deadline: Instant,
) -> Result<(Vec<Batch>, i64), String> {
    let version = conn.version::<FetchRequest>(FETCH_MAX_VERSION)?;
    let mut next = 0i64;
    let mut end: Option<i64> = None;
    let mut max_bytes = FETCH_BYTES;
    let mut batches = Vec::new();
    let mut idle_rounds = 0;
    let mut looked_up_start = false;
    loop {
        if end.is_some_and(|e| next >= e) {
            return Ok((batches, end.unwrap_or(next)));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{topic}/{partition}: read only up to offset {next} of {end:?} in time"
            ));
        }
        let request = FetchRequest::default()
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(max_bytes)
            .with_isolation_level(0) // READ_UNCOMMITTED: markers and aborted records too
            .with_topics(vec![FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(partition)
                    .with_fetch_offset(next)
                    .with_partition_max_bytes(max_bytes)])]);
        let response = conn.call(&request, version)?;
        if response.error_code != 0 {
            return Err(format!("fetch {topic}/{partition}: error code {}", response.error_code));
        }
        let data = response
            .responses
            .into_iter()
            .filter(|t| &*t.topic.0 == topic)
            .flat_map(|t| t.partitions)
            .find(|p| p.partition_index == partition)
            .ok_or_else(|| {
                format!("fetch {topic}/{partition}: the response lacks the partition")
            })?;
        match data.error_code {
            0 => {}
            OFFSET_OUT_OF_RANGE if next == 0 && !looked_up_start => {
                // The log no longer starts at 0 (retention): read from where it starts.
                looked_up_start = true;
                next = log_start(conn, topic, partition)?;
                continue;
            }
            NOT_LEADER_OR_FOLLOWER => {
                return Err(format!(
                    "fetch {topic}/{partition} from {}: not the leader (any more)",
                    conn.addr
                ))
            }
            e => return Err(format!("fetch {topic}/{partition} at {next}: error code {e}")),
        }
        let end = *end.get_or_insert(data.high_watermark);
        let records = data.records.unwrap_or_default();
        let fetched = take_batches(&records, partition, next, end)
            .map_err(|e| format!("fetch {topic}/{partition} at {next}: {e}"))?;
        batches.extend(fetched.batches);
        if fetched.next > next {
            next = fetched.next;
            idle_rounds = 0;
            continue;
        }
        if next >= end {
            continue;
        }
        // No progress: the next batch is larger than we asked for (a broker that cuts it
        // instead of sending it whole: ask for more), or the broker had nothing yet.
        if fetched.truncated {
            max_bytes = max_bytes.saturating_mul(2).min(FETCH_BYTES_MAX);
        }
        idle_rounds += 1;
        if idle_rounds > 100 {
            return Err(format!(
                "fetch {topic}/{partition} at {next}: no progress in {idle_rounds} responses (high-water mark {end}, last response {} bytes)",
                records.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one Fetch response's records add to a partition read at `next` up to `end`.
#[derive(Debug)]
pub struct Fetched {
    /// The whole batches from `next` on, decoded, less records before `next` (a response may
    /// start with a batch that holds some) and records at or past `end`.
    pub batches: Vec<Batch>,
    /// The offset to fetch from next: after the last whole batch (`next` if none).
    pub next: i64,
    /// Whether the response ended in a cut batch (left for the next fetch).
    pub truncated: bool,
}

/// Splits and decodes a Fetch response's records ([`split_batches`], [`decode_batch`]).
pub fn take_batches(
    records: &Bytes,
    partition: i32,
    next: i64,
    end: i64,
) -> Result<Fetched, String> {
    let (found, truncated) = split_batches(records)?;
    let mut out = Fetched { batches: Vec::new(), next, truncated };
    for raw in found {
        if raw.last_offset < out.next {
            continue;
        }
        let mut batch = decode_batch(&raw, partition)
            .map_err(|e| format!("batch at {}: {e}", raw.base_offset))?;
        batch.records.retain(|r| r.offset >= out.next && r.offset < end);
        out.next = raw.last_offset + 1;
        out.batches.push(batch);
    }
    Ok(out)
}

/// The first offset of the partition's log (ListOffsets, timestamp -2: earliest).
fn log_start(conn: &mut Conn, topic: &str, partition: i32) -> Result<i64, String> {
    let version = conn.version::<ListOffsetsRequest>(LIST_OFFSETS_MAX_VERSION)?;
    let request = ListOffsetsRequest::default().with_replica_id((-1).into()).with_topics(vec![
        ListOffsetsTopic::default().with_name(topic_name(topic)).with_partitions(vec![
            ListOffsetsPartition::default().with_partition_index(partition).with_timestamp(-2),
        ]),
    ]);
    let response = conn.call(&request, version)?;
    let p = response
        .topics
        .iter()
        .filter(|t| &*t.name.0 == topic)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| format!("list offsets {topic}/{partition}: not in the response"))?;
    if p.error_code != 0 {
        return Err(format!("list offsets {topic}/{partition}: error code {}", p.error_code));
    }
    Ok(p.offset)
}

/// One whole v2 record batch from a Fetch response, undecoded.
#[derive(Debug, Clone)]
pub struct RawBatch {
    pub base_offset: i64,
    /// Offset of the batch's last record (base offset plus the last offset delta).
    pub last_offset: i64,
    pub producer_id: i64,
    pub transactional: bool,
    pub control: bool,
    /// The compression codec of its records (attributes bits 0-2: 0 none, 1 gzip, 2 snappy,
    /// 3 lz4, 4 zstd).
    pub codec: u8,
    /// The whole batch, from its base offset on.
    pub bytes: Bytes,
}

/// Splits a Fetch response's records into whole batches. A batch cut off at the end of the
/// response (brokers send at most the bytes asked for) is left out; the second value says
/// whether there was one. Fails on a malformed or non-v2 batch header.
pub fn split_batches(records: &Bytes) -> Result<(Vec<RawBatch>, bool), String> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let data = &records[..];
    while at < data.len() {
        let rest = &data[at..];
        if rest.len() < 12 {
            return Ok((out, true));
        }
        let base_offset = i64::from_be_bytes(be(rest, 0));
        let length = i32::from_be_bytes(be(rest, 8));
        if length < (BATCH_HEADER - 12) as i32 {
            return Err(format!("batch at {base_offset}: bad batch length {length}"));
        }
        let size = 12 + length as usize;
        if rest.len() < size {
            return Ok((out, true));
        }
        let magic = rest[16];
        if magic != 2 {
            return Err(format!(
                "batch at {base_offset}: message format v{magic} (only record batches v2 are read)"
            ));
        }
        let attributes = i16::from_be_bytes(be(rest, 21));
        let last_offset_delta = i32::from_be_bytes(be(rest, 23));
        out.push(RawBatch {
            base_offset,
            last_offset: base_offset + i64::from(last_offset_delta),
            producer_id: i64::from_be_bytes(be(rest, 43)),
            transactional: attributes & (1 << 4) != 0,
            control: attributes & (1 << 5) != 0,
            codec: (attributes & 0b111) as u8,
            bytes: records.slice(at..at + size),
        });
        at += size;
    }
    Ok((out, false))
}

/// `N` bytes of `data` from `at` (the caller checked the length).
fn be<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&data[at..at + N]);
    a
}

/// Decodes the records of one batch (checking its CRC).
pub fn decode_batch(raw: &RawBatch, partition: i32) -> Result<Batch, String> {
    let mut bytes = raw.bytes.clone();
    let set = RecordBatchDecoder::decode(&mut bytes).map_err(|e| format!("{e:#}"))?;
    let records = set
        .records
        .into_iter()
        .map(|r| LogRecord {
            partition,
            offset: r.offset,
            key: r.key.map(|k| k.to_vec()),
            value: r.value.map(|v| v.to_vec()).unwrap_or_default(),
            headers: r
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.map(|v| v.to_vec()).unwrap_or_default()))
                .collect(),
        })
        .collect();
    Ok(Batch {
        producer_id: raw.producer_id,
        transactional: raw.transactional,
        control: raw.control,
        records,
    })
}

/// A request we send, with its API key and response type. (The crate's own `Request` trait
/// also wants requests to decode, which only its `broker` feature provides.)
trait Api: Encodable + HeaderVersion + Message {
    const KEY: ApiKey;
    type Response: Decodable + HeaderVersion + Message;
}

impl Api for ApiVersionsRequest {
    const KEY: ApiKey = ApiKey::ApiVersions;
    type Response = ApiVersionsResponse;
}

impl Api for MetadataRequest {
    const KEY: ApiKey = ApiKey::Metadata;
    type Response = MetadataResponse;
}

impl Api for FetchRequest {
    const KEY: ApiKey = ApiKey::Fetch;
    type Response = FetchResponse;
}

impl Api for ListOffsetsRequest {
    const KEY: ApiKey = ApiKey::ListOffsets;
    type Response = ListOffsetsResponse;
}

fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// A blocking connection to one broker, with the API versions it supports.
struct Conn {
    addr: String,
    stream: TcpStream,
    next_correlation: i32,
    /// API key to (min, max) version.
    versions: HashMap<i16, (i16, i16)>,
}

impl Conn {
    /// Connects and asks for the API versions (ApiVersions v0: every broker answers it).
    fn connect(addr: &str, deadline: Instant) -> Result<Conn, String> {
        let sock = addr
            .to_socket_addrs()
            .map_err(|e| format!("{addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr}: no address"))?;
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .clamp(Duration::from_secs(1), Duration::from_secs(10));
        let stream = TcpStream::connect_timeout(&sock, timeout)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let io_timeout = Some(Duration::from_secs(15));
        stream.set_read_timeout(io_timeout).map_err(|e| format!("{addr}: {e}"))?;
        stream.set_write_timeout(io_timeout).map_err(|e| format!("{addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| format!("{addr}: {e}"))?;
        let mut conn =
            Conn { addr: addr.to_string(), stream, next_correlation: 1, versions: HashMap::new() };
        let r = conn.call(&ApiVersionsRequest::default(), 0)?;
        if r.error_code != 0 {
            return Err(format!("{addr}: ApiVersions error code {}", r.error_code));
        }
        conn.versions =
            r.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        Ok(conn)
    }

    /// The highest version of `R` that the broker, the `kafka-protocol` crate and `cap` allow.
    fn version<R: Api>(&self, cap: i16) -> Result<i16, String> {
        let (min, max) = *self
            .versions
            .get(&(R::KEY as i16))
            .ok_or_else(|| format!("{}: the broker does not offer API {:?}", self.addr, R::KEY))?;
        let lo = min.max(R::VERSIONS.min).max(R::Response::VERSIONS.min);
        let hi = max.min(R::VERSIONS.max).min(R::Response::VERSIONS.max).min(cap);
        if lo > hi {
            return Err(format!(
                "{}: no version of API {:?} that both sides speak (broker {min}-{max}, ours {}-{})",
                self.addr,
                R::KEY,
                R::VERSIONS.min,
                R::VERSIONS.max.min(cap)
            ));
        }
        Ok(hi)
    }

    /// Sends `request` (a size-prefixed frame: header with correlation id and client id, then
    /// the body) and reads its response.
    fn call<R: Api>(&mut self, request: &R, version: i16) -> Result<R::Response, String> {
        let api = R::KEY;
        let key = api as i16;
        let correlation = self.next_correlation;
        self.next_correlation = self.next_correlation.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(key)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut frame = vec![0u8; 4];
        header
            .encode(&mut frame, R::header_version(version))
            .map_err(|e| format!("encode header of {api:?} v{version}: {e:#}"))?;
        request
            .encode(&mut frame, version)
            .map_err(|e| format!("encode {api:?} v{version}: {e:#}"))?;
        let size = i32::try_from(frame.len() - 4)
            .map_err(|_| format!("{api:?} request of {} bytes", frame.len()))?;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        let addr = &self.addr;
        self.stream.write_all(&frame).map_err(|e| format!("send {api:?} to {addr}: {e}"))?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .map_err(|e| format!("receive {api:?} response from {addr}: {e}"))?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > MAX_FRAME {
            return Err(format!("{api:?} response from {addr}: bad frame size {size}"));
        }
        let mut body = vec![0u8; size as usize];
        self.stream
            .read_exact(&mut body)
            .map_err(|e| format!("receive {api:?} response from {addr}: {e}"))?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| format!("{api:?} v{version} response header from {addr}: {e:#}"))?;
        if header.correlation_id != correlation {
            return Err(format!(
                "{api:?} response from {addr}: correlation id {}, expected {correlation}",
                header.correlation_id
            ));
        }
        R::Response::decode(&mut body, version)
            .map_err(|e| format!("decode {api:?} v{version} response from {addr}: {e:#}"))
    }
}
