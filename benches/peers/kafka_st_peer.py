#!/usr/bin/env python3
"""The hand-written peer for Sluice's open-loop latency bench: a Kafka consumer in Python
(confluent-kafka) that micro-batches requests and embeds them with sentence-transformers
(PyTorch, CPU). It is what a careful team writes without Sluice, held to the same contract
(the request, result and dead-letter records of README "Running against Kafka") and the same
client settings as Sluice against the Tansu broker.

Pipeline (two threads, at-least-once, inference overlapped with consuming and producing):

  consumer thread (main)          bounded buffer            inference thread
  poll() records, validate  --->  (4 x --batch-size   --->  cut a batch: --batch-size input
  them, register each offset      records, at least 64;     strings, or --max-wait-ms after its
  in its partition's tracker;     the consumer stops        first record arrived (a record that
  serve producer callbacks;       polling while it is full) does not fit starts the next batch;
  commit acked offsets async                                only a single list input longer than
  every --commit-interval-ms                                --batch-size makes a larger batch);
                                                            ONE model.encode(batch_size=len,
                                                            normalized); produce() one result per
                                                            good request / one dead letter per
                                                            bad one, with a delivery callback.

  - A bad record (over --max-record-bytes, invalid UTF-8 or JSON, wrong shape, unknown model)
    becomes a dead letter: original value, key and headers plus sluice.error.class /
    sluice.error.reason / sluice.source.* / sluice.attempts. It rides along with the next batch
    (it costs no encode row), so outcomes keep input order within a partition.
  - Commits: each partition keeps a contiguous-acked watermark: an offset counts once the
    broker acknowledged its outcome (result or dead letter), and the commit is the first
    offset not yet acknowledged (so never past a record whose outcome could still be lost).
    Commits are asynchronous every --commit-interval-ms (default 200) and synchronous on
    revocation and shutdown. There is no per-batch flush.
  - A result the broker refuses for its size becomes a `too_large` dead letter; a dead letter
    it refuses for size goes again with its value cut to 64 KiB; any other failed delivery is
    produced again (3 tries), then the peer stops with exit 1 without committing past it.
  - Revocation: consuming stops (we are inside poll()), every consumed record of the revoked
    partitions is finished and acknowledged, their watermarks are committed synchronously.
    A lost partition's records still in the buffer are dropped (they will be redelivered).
  - SIGTERM/SIGINT: stop consuming, finish every consumed record, flush, commit
    synchronously, leave the group, exit 0.

Result value: {"id", "model", "output": [[384 floats], ...], "batch_size": rows in the encode
call, "source": {"topic", "partition", "offset"}}; key = request key (or the id); the request's
headers are copied.

stdout: one line `ready` once the model is warmed up and the consumer has joined its group
(first partition assignment), so a harness can start sending then. stderr: a stats line every
5 s (records in, results out, dead letters, mean rows per encode, commits).

Missing topics (input, priority, output, DLQ) are created at start with --partitions
partitions, as Sluice does.

Usage (venv from benches/peers/requirements-kafka-peer.txt):

  ~/.cache/sluice/venv-st/bin/python benches/peers/kafka_st_peer.py \\
      --bootstrap 127.0.0.1:9092 --threads 2 --batch-size 32 --max-wait-ms 10
"""

import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from bench_common import MAX_SEQ_LEN, default_model_dir  # also sets the offline environment

MAX_ID_BYTES = 256
MAX_RECORD_BYTES = 1 << 20       # Sluice's default limits.maxRecordBytes
CUT_VALUE_BYTES = 64 * 1024      # a dead letter the broker refuses goes again with this much value
MAX_REASON_BYTES = 1024
STATS_EVERY_S = 5.0
POLL_S = 0.05                    # longest the consumer thread blocks in poll()
MAX_DELIVERY_TRIES = 3
REVOKE_TIMEOUT_S = 30.0

# Client settings shared by both peers, as Sluice's (src/kafka/client.rs) against Tansu.
PRODUCER_CONF = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "none",
    # A dead letter carries the original value: accept whatever the consumer can be handed.
    "message.max.bytes": 100_000_000 + CUT_VALUE_BYTES,
}
CONSUMER_CONF = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
    "enable.partition.eof": False,
    "queued.max.messages.kbytes": 16384,
    # Tansu holds every empty fetch for the whole fetch.wait.max.ms (Apache Kafka answers as
    # soon as data arrives): keep it short, as Sluice does.
    "fetch.wait.max.ms": 25,
    "isolation.level": "read_committed",
}


def log(msg, who="kafka_st_peer"):
    print(f"{who}: {msg}", file=sys.stderr, flush=True)


class BadRequest(Exception):
    def __init__(self, klass, reason):
        super().__init__(reason)
        self.klass = klass
        self.reason = reason


def _utf8_ok(s):
    try:
        s.encode("utf-8")  # JSON escapes can smuggle in lone surrogates
        return True
    except UnicodeEncodeError:
        return False


def cut_reason(reason):
    b = reason.encode("utf-8", "replace")
    if len(b) <= MAX_REASON_BYTES:
        return b
    return b[:MAX_REASON_BYTES].decode("utf-8", "ignore").encode() + \
        f"… [reason cut to {MAX_REASON_BYTES} of {len(b)} bytes]".encode()


def parse_request(value, model_name, max_record_bytes=MAX_RECORD_BYTES):
    """Returns (id, model, [strings]) or raises BadRequest. Check order as Sluice's decoder."""
    if value is None:
        raise BadRequest("parse", "record has no value")
    if len(value) > max_record_bytes:
        raise BadRequest("too_large", f"record is {len(value)} bytes, the limit is {max_record_bytes}")
    try:
        text = value.decode("utf-8")  # strict: json.loads(bytes) would also guess UTF-16/32
    except UnicodeDecodeError as e:
        raise BadRequest("parse", f"invalid UTF-8: {e}")
    try:
        req = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise BadRequest("parse", f"invalid JSON: {e}")
    if not isinstance(req, dict):
        raise BadRequest("validation", "request must be a JSON object")
    if "id" not in req:
        raise BadRequest("validation", "missing field 'id'")
    rid = req["id"]
    if not isinstance(rid, str):
        raise BadRequest("validation", "'id' must be a string")
    if not _utf8_ok(rid):
        raise BadRequest("parse", "invalid JSON: 'id' holds a lone surrogate")
    if rid == "":
        raise BadRequest("validation", "'id' must not be empty")
    if len(rid.encode("utf-8")) > MAX_ID_BYTES:
        raise BadRequest("validation", f"'id' is {len(rid.encode('utf-8'))} bytes, at most {MAX_ID_BYTES} allowed")
    if "model" not in req:
        raise BadRequest("validation", "missing field 'model'")
    model = req["model"]
    if not isinstance(model, str):
        raise BadRequest("validation", "'model' must be a string")
    if model != model_name:
        raise BadRequest("unknown_model", f"unknown model '{model}' (this peer serves '{model_name}')")
    if "input" not in req:
        raise BadRequest("validation", "missing field 'input'")
    inp = req["input"]
    if isinstance(inp, str):
        texts = [inp]
    elif isinstance(inp, list):
        if not inp:
            raise BadRequest("validation", "input: empty array")
        if not all(isinstance(s, str) for s in inp):
            raise BadRequest("validation", "input: expected a string or an array of strings")
        texts = inp
    else:
        raise BadRequest("validation", "input: expected a string or an array of strings")
    if not all(_utf8_ok(s) for s in texts):
        raise BadRequest("parse", "invalid JSON: input holds a lone surrogate")
    return rid, model, texts


def dead_letter_headers(headers, klass, reason, topic, partition, offset):
    """The request's headers plus Sluice's dead-letter headers (Kafka Connect convention)."""
    return list(headers or []) + [
        ("sluice.error.class", klass.encode()),
        ("sluice.error.reason", cut_reason(reason)),
        ("sluice.source.topic", topic.encode()),
        ("sluice.source.partition", str(partition).encode()),
        ("sluice.source.offset", str(offset).encode()),
        ("sluice.attempts", b"1"),
    ]


def result_value(rid, model, out, batch_rows, topic, partition, offset):
    return json.dumps({
        "id": rid, "model": model, "output": out, "batch_size": batch_rows,
        "source": {"topic": topic, "partition": partition, "offset": offset},
    }, separators=(",", ":")).encode()


def load_model(args, who):
    """Loads and warms up the sentence-transformers model on --threads torch threads."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(str(args.model_dir), device="cpu")
    model.max_seq_length = MAX_SEQ_LEN
    model.eval()
    warm = ["The quick brown fox jumps over the lazy dog near the river bank."] * args.batch_size
    t = time.perf_counter()
    for _ in range(2):
        model.encode(warm, batch_size=len(warm), normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False)
    log(f"model {args.model_dir} warmed up ({time.perf_counter() - t:.2f} s for 2 x {len(warm)}); torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}", who)
    return model


def encode(model, texts):
    return model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)


SIZE_REFUSALS = None  # KafkaError codes meaning "the broker refuses this record", set in main()


class Record:
    """A consumed record on its way: validated request (or BadRequest), its tracker, tries."""
    __slots__ = ("msg", "parsed", "arrived", "rows", "track", "tries")

    def __init__(self, msg, parsed, arrived, rows, track):
        self.msg = msg
        self.parsed = parsed
        self.arrived = arrived
        self.rows = rows
        self.track = track
        self.tries = 0


class PartitionTrack:
    """Offsets of one assigned partition whose outcome the broker has not acknowledged yet.
    `acked` is the next offset to commit: every consumed offset below it is acknowledged."""
    __slots__ = ("topic", "partition", "pending", "acked", "committed", "lost")

    def __init__(self, topic, partition):
        self.topic = topic
        self.partition = partition
        self.pending = collections.OrderedDict()  # offset -> acknowledged?, in consumption order
        self.acked = None
        self.committed = None
        self.lost = False

    def add(self, offset):
        self.pending[offset] = False

    def ack(self, offset):
        if offset not in self.pending:
            return
        self.pending[offset] = True
        while self.pending:
            first = next(iter(self.pending))
            if not self.pending[first]:
                break
            del self.pending[first]
            self.acked = first + 1


class Peer:
    def __init__(self, args, model, consumer, producer):
        self.args = args
        self.model = model
        self.consumer = consumer
        self.producer = producer
        self.lock = threading.Lock()          # tracks, retries, counters touched by callbacks
        self.cv = threading.Condition()       # the buffer between the two threads
        self.buffer = collections.deque()
        self.buffer_cap = max(4 * args.batch_size, 64)
        self.tracks = {}                      # (topic, partition) -> PartitionTrack
        self.retries = []                     # (Record, kind, message) to produce again
        self.stop = False                     # set by a signal or --max-records
        self.draining = False                 # consumer is done: the inference thread empties the buffer and exits
        self.ready = False
        self.fatal = None
        # stats
        self.n_in = self.n_out = self.n_dlq = 0
        self.n_batches = self.n_rows = 0
        self.n_commits = self.n_commit_fail = self.n_delivery_fail = 0

    def fail(self, why):
        if self.fatal is None:
            self.fatal = why
            log(why)
        self.stop = True

    # --- rebalance callbacks (run inside poll()/close() on the consumer thread) ---
    def on_assign(self, consumer, partitions):
        log(f"assigned {len(partitions)} partitions: "
            + ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))
        with self.lock:
            for p in partitions:
                self.tracks[(p.topic, p.partition)] = PartitionTrack(p.topic, p.partition)
        if not self.ready:
            self.ready = True
            print("ready", flush=True)

    def on_revoke(self, consumer, partitions):
        keys = [(p.topic, p.partition) for p in partitions]
        with self.lock:
            tracks = [self.tracks[k] for k in keys if k in self.tracks]
            n = sum(len(t.pending) for t in tracks)
        log(f"revoking {len(partitions)} partitions; finishing {n} consumed records first")
        self.finish(tracks, REVOKE_TIMEOUT_S)
        self.commit(tracks, asynchronous=False)
        with self.lock:
            for k in keys:
                self.tracks.pop(k, None)

    def on_lost(self, consumer, partitions):
        with self.lock:
            n = 0
            for p in partitions:
                t = self.tracks.pop((p.topic, p.partition), None)
                if t is not None:
                    t.lost = True
                    n += len(t.pending)
        log(f"lost {len(partitions)} partitions; dropping {n} unfinished records (they will be redelivered)")

    def on_commit(self, err, partitions):
        failed = [p for p in partitions or [] if p.error is not None]
        if err is None and not failed:
            return
        self.n_commit_fail += 1
        log(f"commit failed (retried at the next commit): {err or failed[0].error}")
        with self.lock:
            for p in failed or partitions or []:
                t = self.tracks.get((p.topic, p.partition))
                if t is not None:
                    t.committed = None

    # --- commits (consumer thread) ---
    def commit(self, tracks=None, asynchronous=True):
        from confluent_kafka import KafkaException, TopicPartition
        with self.lock:
            todo = [t for t in (self.tracks.values() if tracks is None else tracks)
                    if t.acked is not None and t.acked != t.committed and not t.lost]
            offsets = [TopicPartition(t.topic, t.partition, t.acked) for t in todo]
            marks = [t.acked for t in todo]
        if not offsets:
            return
        try:
            res = self.consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except KafkaException as e:
            self.n_commit_fail += 1
            log(f"commit failed (records will be redelivered or committed later): {e}")
            return
        if not asynchronous and any(p.error is not None for p in res or []):
            self.n_commit_fail += 1
            log(f"commit failed for {[f'{p.topic}[{p.partition}]: {p.error}' for p in res if p.error]}")
            return
        self.n_commits += 1
        with self.lock:
            for t, m in zip(todo, marks):
                t.committed = m

    def finish(self, tracks, timeout):
        """Waits until every consumed record of `tracks` has an acknowledged outcome (the
        inference thread keeps working meanwhile; we serve delivery callbacks and retries)."""
        end = time.monotonic() + timeout
        while self.fatal is None:
            with self.lock:
                left = sum(len(t.pending) for t in tracks if not t.lost)
            if not left:
                return True
            if time.monotonic() >= end:
                log(f"{left} records still unfinished after {timeout:.0f} s; committing what is acknowledged")
                return False
            self.producer.poll(0.01)
            self.run_retries()
        return False

    # --- producer side (inference thread, and the consumer thread for retries) ---
    def _produce(self, rec, kind, topic, value, key, headers):
        """produce() with a delivery callback; returns the KafkaException if the client refuses
        the record itself (e.g. MSG_SIZE_TOO_LARGE), None when queued."""
        from confluent_kafka import KafkaException

        def delivered(err, msg, rec=rec, kind=kind):
            self.on_delivery(rec, kind, err, msg)

        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
                return None
            except BufferError:
                self.producer.poll(0.05)  # local queue full: serve deliveries, retry
            except KafkaException as e:
                return e

    def dead_letter(self, rec, klass, reason, cut=False):
        m = rec.msg
        value = m.value()
        headers = dead_letter_headers(m.headers(), klass, reason, m.topic(), m.partition(), m.offset())
        if cut:
            n = len(value or b"")
            value = (value or b"")[:CUT_VALUE_BYTES]
            headers.append(("sluice.original.value.bytes", str(n).encode()))
        err = self._produce(rec, "dlq-cut" if cut else "dlq", self.args.dlq_topic, value, m.key(), headers)
        if err is not None:
            if not cut:
                self.dead_letter(rec, klass, f"{reason} [dead letter refused ({err}); value cut to "
                                 f"{CUT_VALUE_BYTES} bytes]", cut=True)
            else:
                self.fail(f"fatal: cannot produce the dead letter of {m.topic()}[{m.partition()}]@{m.offset()}: {err}")

    def on_delivery(self, rec, kind, err, msg):
        """Delivery report of an outcome (runs in whichever thread serves poll()/flush())."""
        if err is None:
            with self.lock:
                rec.track.ack(rec.msg.offset())
                if kind == "result":
                    self.n_out += 1
                else:
                    self.n_dlq += 1
            return
        self.n_delivery_fail += 1
        with self.lock:
            self.retries.append((rec, kind, err, msg))

    def run_retries(self):
        """Handles failed deliveries (consumer thread): a result refused for size becomes a
        too_large dead letter, a dead letter refused for size goes again cut; anything else is
        produced again up to MAX_DELIVERY_TRIES times, then the peer stops."""
        with self.lock:
            todo, self.retries = self.retries, []
        for rec, kind, err, msg in todo:
            if rec.track.lost:
                continue
            where = f"{rec.msg.topic()}[{rec.msg.partition()}]@{rec.msg.offset()}"
            if err.fatal():
                self.fail(f"fatal producer error delivering the outcome of {where}: {err}")
            elif err.code() in SIZE_REFUSALS and kind == "result":
                self.dead_letter(rec, "too_large", f"result refused by the broker: {err.str()}")
            elif err.code() in SIZE_REFUSALS and kind == "dlq":
                reason = dict(msg.headers() or []).get("sluice.error.reason", b"").decode("utf-8", "replace")
                klass = dict(msg.headers() or []).get("sluice.error.class", b"parse").decode()
                self.dead_letter(rec, klass, f"{reason} [dead letter refused by the broker ({err.str()}); "
                                 f"value cut to {CUT_VALUE_BYTES} bytes]", cut=True)
            elif rec.tries + 1 >= MAX_DELIVERY_TRIES:
                self.fail(f"delivery of the outcome of {where} failed {MAX_DELIVERY_TRIES} times: {err}")
            else:
                rec.tries += 1
                log(f"delivery of the outcome of {where} failed ({err}); producing it again")
                e = self._produce(rec, kind, msg.topic(), msg.value(), msg.key(), msg.headers())
                if e is not None:
                    self.fail(f"producing the outcome of {where} again failed: {e}")

    # --- inference thread ---
    def _take(self, timeout):
        """Next buffered record, waiting up to `timeout` s; None if none came (or draining)."""
        with self.cv:
            if not self.buffer and timeout > 0 and not self.draining:
                self.cv.wait(timeout)
            if not self.buffer:
                return None
            rec = self.buffer.popleft()
            self.cv.notify_all()  # room for the consumer
            return rec

    def infer_loop(self):
        a = self.args
        carry = None
        try:
            while self.fatal is None:
                first, carry = carry or self._take(0.1), None
                if first is None:
                    with self.cv:
                        if self.draining and not self.buffer:
                            return
                    continue
                batch, rows = [first], first.rows
                deadline = first.arrived + a.max_wait_ms / 1000.0
                while rows < a.batch_size:
                    rec = self._take(deadline - time.monotonic())
                    if rec is None:
                        break
                    if rows + rec.rows > a.batch_size and rec.rows:
                        carry = rec
                        break
                    batch.append(rec)
                    rows += rec.rows
                self.process_batch(batch)
        except Exception as e:  # never hang the consumer on a dead inference thread
            self.fail(f"inference thread died: {e!r}")

    def process_batch(self, batch):
        batch = [r for r in batch if not r.track.lost]
        good = [r for r in batch if not isinstance(r.parsed, BadRequest)]
        texts = [s for r in good for s in r.parsed[2]]
        embeddings = None
        if texts:
            try:
                embeddings = encode(self.model, texts)
                self.n_batches += 1
                self.n_rows += len(texts)
            except Exception as e:  # never crash on a batch: dead-letter its requests
                log(f"encode of {len(texts)} strings failed: {e!r}")
        row = 0
        for rec in batch:
            m = rec.msg
            if isinstance(rec.parsed, BadRequest):
                self.dead_letter(rec, rec.parsed.klass, rec.parsed.reason)
                continue
            rid, model, strs = rec.parsed
            if embeddings is None:
                self.dead_letter(rec, "inference", "encode failed")
                continue
            out = embeddings[row:row + len(strs)].tolist()
            row += len(strs)
            value = result_value(rid, model, out, len(texts), m.topic(), m.partition(), m.offset())
            key = m.key() if m.key() is not None else rid.encode("utf-8")
            err = self._produce(rec, "result", self.args.output_topic, value, key, m.headers())
            if err is not None:  # e.g. MSG_SIZE_TOO_LARGE
                log(f"producing the result of {rid!r} failed: {err!r}")
                self.dead_letter(rec, "too_large", f"result could not be produced: {err}")

    # --- consumer thread ---
    def ingest(self, msg, now):
        track = self.tracks.get((msg.topic(), msg.partition()))
        if track is None:  # not ours any more (a rebalance raced this poll)
            return
        try:
            parsed = parse_request(msg.value(), self.args.model_name, self.args.max_record_bytes)
            rows = len(parsed[2])
        except BadRequest as e:
            parsed, rows = e, 0
        with self.lock:
            track.add(msg.offset())
        self.n_in += 1
        with self.cv:
            self.buffer.append(Record(msg, parsed, now, rows, track))
            self.cv.notify_all()

    def stats(self, t0):
        el = time.monotonic() - t0
        mean = self.n_rows / self.n_batches if self.n_batches else 0.0
        log(f"stats t={el:.0f}s in={self.n_in} out={self.n_out} dlq={self.n_dlq} batches={self.n_batches} "
            f"mean_batch={mean:.1f} buffered={len(self.buffer)} commits={self.n_commits} "
            f"commit_fail={self.n_commit_fail} delivery_fail={self.n_delivery_fail}")

    def run(self):
        a = self.args
        infer = threading.Thread(target=self.infer_loop, name="inference", daemon=True)
        infer.start()
        t0 = time.monotonic()
        next_stats = t0 + STATS_EVERY_S
        next_commit = t0 + a.commit_interval_ms / 1000.0
        while not self.stop:
            now = time.monotonic()
            self.producer.poll(0)          # delivery callbacks: acks move the watermarks
            self.run_retries()
            if now >= next_commit:
                self.commit(asynchronous=True)
                next_commit = now + a.commit_interval_ms / 1000.0
            if now >= next_stats:
                self.stats(t0)
                next_stats = now + STATS_EVERY_S
            if a.max_records and self.n_in >= a.max_records:
                with self.lock:
                    busy = any(t.pending for t in self.tracks.values())
                if not busy:
                    log(f"handled {self.n_in} records (--max-records {a.max_records}); stopping")
                    break
                time.sleep(0.01)
                continue
            with self.cv:
                room = self.buffer_cap - len(self.buffer)
                if room <= 0:  # inference is behind: stop fetching until it takes some
                    self.cv.wait(POLL_S)
                    continue
            if a.max_records:
                room = min(room, a.max_records - self.n_in)
            # poll() returns as soon as one record is there; consume(timeout=0) then takes what
            # else is already fetched (consume() with a timeout would wait for num_messages).
            msg = self.consumer.poll(POLL_S)
            if msg is None:
                continue
            msgs = [msg] + (self.consumer.consume(num_messages=room - 1, timeout=0) if room > 1 else [])
            now = time.monotonic()
            for m in msgs:
                if m.error():
                    log(f"consumer error: {m.error()}")
                    continue
                self.ingest(m, now)
        # Graceful stop: what was consumed goes out, is acknowledged and committed before we
        # leave the group.
        with self.cv:
            self.draining = True
            self.cv.notify_all()
        with self.lock:
            tracks = list(self.tracks.values())
        self.finish(tracks, REVOKE_TIMEOUT_S)
        infer.join(5)
        self.commit(tracks, asynchronous=False)
        self.stats(t0)


def ensure_topics(conf, topics, partitions, who="kafka_st_peer"):
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient(conf)
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [t for t in dict.fromkeys(topics) if t not in existing]
    if not missing:
        return
    futs = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing],
                               operation_timeout=10)
    for t, f in futs.items():
        try:
            f.result()
            log(f"created topic {t} ({partitions} partitions)", who)
        except Exception as e:  # TOPIC_ALREADY_EXISTS from a racing creator is fine
            log(f"create topic {t}: {e}", who)


def common_args(description):
    """The CLI both peers share (benches/run-p99-bench.sh passes the same flags to either)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092", help="bootstrap.servers")
    ap.add_argument("--group", default="st-peer", help="consumer group id")
    ap.add_argument("--input-topic", default="realtime-inference-input")
    ap.add_argument("--priority-topic", default="priority-inference",
                    help="also consumed (no prioritisation); '' to not subscribe")
    ap.add_argument("--output-topic", default="realtime-inference-output")
    ap.add_argument("--dlq-topic", default="realtime-inference-dlq")
    ap.add_argument("--model-name", default="minilm", help="the 'model' value requests must carry")
    ap.add_argument("--model-dir", type=Path, default=default_model_dir(),
                    help="sentence-transformers model dir (with modules.json)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--batch-size", type=int, default=32, help="input strings per encode call (at most, "
                    "unless one list input alone is larger)")
    ap.add_argument("--max-wait-ms", type=float, default=10.0, help="longest a batch waits after its first record")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of topics created at start")
    ap.add_argument("--max-record-bytes", type=int, default=MAX_RECORD_BYTES,
                    help="larger record values are dead-lettered as too_large (Sluice's maxRecordBytes)")
    ap.add_argument("--max-records", type=int, default=0, help="exit after this many records handled (0: never)")
    return ap


def check_args(args):
    if not (args.model_dir / "modules.json").is_file():
        sys.exit(f"error: {args.model_dir} is not a sentence-transformers model dir "
                 "(no modules.json); run scripts/fetch-minilm.sh first")
    if args.threads < 1 or args.batch_size < 1 or args.max_wait_ms < 0 or args.max_records < 0:
        sys.exit("error: --threads and --batch-size must be >= 1, --max-wait-ms and --max-records >= 0")


def main():
    ap = common_args(__doc__.split("\n\n")[0])
    ap.add_argument("--commit-interval-ms", type=float, default=200.0,
                    help="how often acknowledged offsets are committed (asynchronously)")
    args = ap.parse_args()
    check_args(args)

    peer_ref = []

    def on_signal(signum, _frame):
        log(f"signal {signum}: finishing the consumed records, then exiting")
        if peer_ref:
            peer_ref[0].stop = True
        else:
            raise SystemExit(0)  # still starting up: nothing consumed yet

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    model = load_model(args, "kafka_st_peer")
    import confluent_kafka
    from confluent_kafka import Consumer, KafkaError, Producer

    global SIZE_REFUSALS
    SIZE_REFUSALS = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
                     KafkaError.RECORD_LIST_TOO_LARGE}
    log(f"confluent-kafka {confluent_kafka.__version__}, librdkafka {confluent_kafka.libversion()[0]}")

    def on_error(err):
        log(f"kafka error: {err}")

    base = {"bootstrap.servers": args.bootstrap, "broker.address.family": "v4", "socket.keepalive.enable": True}
    topics = [args.input_topic] + ([args.priority_topic] if args.priority_topic else [])
    ensure_topics(base, topics + [args.output_topic, args.dlq_topic], args.partitions)

    producer = Producer({**base, **PRODUCER_CONF, "error_cb": on_error})
    peer = Peer(args, model, None, producer)
    consumer = Consumer({**base, **CONSUMER_CONF, "group.id": args.group, "error_cb": on_error,
                         "on_commit": peer.on_commit})
    peer.consumer = consumer
    peer_ref.append(peer)
    consumer.subscribe(topics, on_assign=peer.on_assign, on_revoke=peer.on_revoke, on_lost=peer.on_lost)
    log(f"subscribed to {', '.join(topics)} as group {args.group} on {args.bootstrap}")

    peer.run()

    # Leave the group (on_revoke runs with nothing pending). close() has been seen to hang
    # against Tansu in rare cases (librdkafka #4674): bound it.
    closer = threading.Thread(target=consumer.close, daemon=True)
    closer.start()
    closer.join(15)
    if closer.is_alive():
        log("consumer.close() did not return within 15 s; exiting anyway")
    left = producer.flush(10)
    if left:
        log(f"{left} produced records still undelivered at exit")
    if peer.fatal:
        log(peer.fatal)
        sys.stdout.flush()
        os._exit(1)
    log("stopped cleanly")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0) if closer.is_alive() else sys.exit(0)


if __name__ == "__main__":
    main()
