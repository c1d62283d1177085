#!/usr/bin/env python3
"""The Quix Streams peer for Sluice's open-loop latency bench: the same job as kafka_st_peer.py
(micro-batched sentence-transformers embeddings, PyTorch on CPU) written with Quix Streams
(PyPI `quixstreams`), the library a Python team would reach for. Same contract: the request,
result and dead-letter records of README "Running against Kafka", the `ready` line, the flags.

How it batches: a custom Quix **Sink** that batches between checkpoints. Quix has no
micro-batch operator. Its docs ("Creating a Custom Sink", "Performance considerations") make
the sink the place to batch for an external call: `add()` gets every processed record, the
application calls `flush()` when it commits a checkpoint, and "to adjust the number of messages
that are batched and written in one go" one sets the Application's `commit_every` (records)
and `commit_interval` (seconds), whichever comes first. So here commit_every = --batch-size and
commit_interval = --max-wait-ms, and `flush()` is the batch: ONE model.encode over the
checkpoint's requests (split in chunks of at most --batch-size strings if list inputs make it
larger), then one result or dead letter per record, produced and flushed before Quix commits
the checkpoint's offsets. The sink subclasses BaseSink rather than BatchingSink because
BatchingSink keeps one batch per topic-partition: one encode per partition (up to 8 here).

Why not a window: the docs also show `tumbling_count_window(n).collect()` to batch calls to an
external API, but Quix windows are grouped by message key (the load generator's keys are
unique per request, so every window would hold one record; group_by() to a constant key would
route every record through a repartition topic), a count window never closes on time (the
last records of a burst would wait for the next burst), a time window only closes when a newer
record advances the partition's event time, and windows keep RocksDB state with changelog
topics. None of that suits request/response inference.

What Quix decides (documented differences from kafka_st_peer.py):
  - Batches are cut when the checkpoint expires: --max-wait-ms after the previous checkpoint
    closed (not after the batch's first record), or at --batch-size records.
  - No overlap: the checkpoint runs on Quix's single processing thread: flush() encodes, the
    producer is flushed (every outcome acknowledged), then offsets are committed synchronously;
    nothing is consumed meanwhile (librdkafka still prefetches). That is Quix's at-least-once
    design, not a choice of this file.
  - --batch-size counts records per checkpoint (commit_every); the strings of one encode call
    are still capped at --batch-size.
  - A failed delivery raises SinkBackpressureError: Quix drops the checkpoint, seeks back to its
    first offsets and reprocesses it after 1 s (outcomes already delivered come again). A result
    the broker refuses for its size becomes a `too_large` dead letter, as in kafka_st_peer.py.
  - Dead letters keep the full contract (original value, key and headers + sluice.* headers):
    the sink produces them itself with a Quix Producer (Application.get_producer()).
  - The `ready` line comes from Application._on_assign (overridden: Quix has no public
    assignment hook).
  - Validation is the same function as kafka_st_peer.py's (imported), run as an sdf.apply().
  - OMP_WAIT_POLICY defaults to PASSIVE (see below): the encode runs on the main thread.

stdout: `ready` once the model is warmed up and the first partitions are assigned. stderr: Quix's
log plus a stats line every 5 s. SIGTERM/SIGINT: Quix stops its loop, commits the last
checkpoint (the sink flushes first), leaves the group; exit 0.

Usage (its own venv, from benches/peers/requirements-quix-peer.txt):

  ~/.cache/sluice/venv-quix/bin/python benches/peers/quix_st_peer.py \\
      --bootstrap 127.0.0.1:9092 --threads 2 --batch-size 32 --max-wait-ms 10
"""

import os
import shutil
import signal
import sys
import tempfile
import threading
import time

# The encode runs on Quix's processing (main) thread. With libgomp's default active wait, torch's
# OpenMP team there collapses as soon as anything else wants the CPU (the broker, the load
# generator, librdkafka's threads): on a shared 2-core box, p50 1.6 s instead of 58 ms at 20/s.
# Passive waiting is this peer's best setting (set OMP_WAIT_POLICY to override).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kafka_st_peer import (  # noqa: E402  (stdlib-only at import time)
    CONSUMER_CONF, CUT_VALUE_BYTES, PRODUCER_CONF, STATS_EVERY_S, BadRequest, check_args, common_args,
    dead_letter_headers, encode, load_model, parse_request, result_value,
)

WHO = "quix_st_peer"


def log(msg):
    print(f"{WHO}: {msg}", file=sys.stderr, flush=True)


def main():
    ap = common_args(__doc__.split("\n\n")[0])
    args = ap.parse_args()
    check_args(args)

    def on_signal(signum, _frame):
        raise SystemExit(0)  # still starting up: nothing consumed yet (app.run() installs its own)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    model = load_model(args, WHO)

    import confluent_kafka
    import quixstreams
    from confluent_kafka import KafkaError
    from quixstreams import Application
    from quixstreams.models import TopicConfig
    from quixstreams.sinks import BaseSink, SinkBackpressureError

    size_refusals = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE}
    log(f"quixstreams {quixstreams.__version__}, confluent-kafka {confluent_kafka.__version__}, "
        f"librdkafka {confluent_kafka.libversion()[0]}")

    stats = {"in": 0, "out": 0, "dlq": 0, "batches": 0, "rows": 0, "checkpoints": 0, "delivery_fail": 0,
             "encode_s": 0.0, "flush_s": 0.0}

    class ReadyApp(Application):
        """Prints `ready` on the first partition assignment (Quix has no public hook for it)."""
        ready = False

        def _on_assign(self, consumer, topic_partitions):
            super()._on_assign(consumer, topic_partitions)
            log(f"assigned {len(topic_partitions)} partitions: "
                + ", ".join(f"{p.topic}[{p.partition}]" for p in topic_partitions))
            if not ReadyApp.ready:
                ReadyApp.ready = True
                print("ready", flush=True)

    class EmbeddingSink(BaseSink):
        """Collects the records of a checkpoint; flush() embeds them as one batch and produces
        one result or dead letter per record, acknowledged before Quix commits the offsets."""

        def __init__(self, producer):
            super().__init__()
            self.producer = producer
            self.items = []

        def setup(self):
            pass

        def add(self, value, key, timestamp, headers, topic, partition, offset):
            raw, parsed = value
            self.items.append((raw, parsed, key, headers, topic, partition, offset))

        def on_paused(self):
            self.items = []

        def _produce(self, topic, value, key, headers, kind, item, failures):
            def delivered(err, _msg, kind=kind, item=item):
                if err is None:
                    stats["out" if kind == "result" else "dlq"] += 1
                else:
                    failures.append((err, kind, item))
            self.producer.produce(topic=topic, value=value, key=key, headers=headers, on_delivery=delivered)

        def _dead_letter(self, item, klass, reason, failures, cut=False):
            raw, _, key, headers, topic, partition, offset = item
            h = dead_letter_headers(headers, klass, reason, topic, partition, offset)
            if cut:
                h.append(("sluice.original.value.bytes", str(len(raw or b"")).encode()))
                raw = (raw or b"")[:CUT_VALUE_BYTES]
            self._produce(args.dlq_topic, raw, key, h, "dlq-cut" if cut else "dlq", item, failures)

        def flush(self):
            items, self.items = self.items, []
            if not items:
                return
            stats["checkpoints"] += 1
            failures = []
            # Chunks of at most --batch-size strings, in order (only one list input longer
            # than --batch-size makes a larger chunk); a bad record costs no row.
            chunks, cur, rows = [], [], 0
            for it in items:
                n = 0 if isinstance(it[1], BadRequest) else len(it[1][2])
                if cur and n and rows + n > args.batch_size:
                    chunks.append(cur)
                    cur, rows = [], 0
                cur.append(it)
                rows += n
            chunks.append(cur)
            for chunk in chunks:
                good = [it for it in chunk if not isinstance(it[1], BadRequest)]
                texts = [s for it in good for s in it[1][2]]
                emb = None
                if texts:
                    try:
                        t = time.perf_counter()
                        emb = encode(model, texts)
                        stats["encode_s"] += time.perf_counter() - t
                        stats["batches"] += 1
                        stats["rows"] += len(texts)
                    except Exception as e:  # never crash on a batch: dead-letter its requests
                        log(f"encode of {len(texts)} strings failed: {e!r}")
                row = 0
                for it in chunk:
                    raw, parsed, key, headers, topic, partition, offset = it
                    if isinstance(parsed, BadRequest):
                        self._dead_letter(it, parsed.klass, parsed.reason, failures)
                        continue
                    rid, mname, strs = parsed
                    if emb is None:
                        self._dead_letter(it, "inference", "encode failed", failures)
                        continue
                    out = emb[row:row + len(strs)].tolist()
                    row += len(strs)
                    value = result_value(rid, mname, out, len(texts), topic, partition, offset)
                    try:
                        self._produce(args.output_topic, value, key if key is not None else rid.encode("utf-8"),
                                      headers, "result", it, failures)
                    except confluent_kafka.KafkaException as e:  # e.g. MSG_SIZE_TOO_LARGE
                        log(f"producing the result of {rid!r} failed: {e!r}")
                        self._dead_letter(it, "too_large", f"result could not be produced: {e}", failures)
            t = time.perf_counter()
            self.producer.flush()
            stats["flush_s"] += time.perf_counter() - t
            # Outcomes the broker refused for their size are replaced once; anything else
            # fails the checkpoint: Quix seeks back and processes it again.
            for _ in range(2):
                if not failures:
                    return
                todo, failures = failures, []
                stats["delivery_fail"] += len(todo)
                for err, kind, item in todo:
                    if err.code() in size_refusals and kind == "result":
                        self._dead_letter(item, "too_large", f"result refused by the broker: {err.str()}", failures)
                    elif err.code() in size_refusals and kind == "dlq":
                        p = item[1]
                        klass, reason = (p.klass, p.reason) if isinstance(p, BadRequest) else ("too_large", "")
                        self._dead_letter(item, klass, f"{reason} [dead letter refused by the broker "
                                          f"({err.str()}); value cut to {CUT_VALUE_BYTES} bytes]", failures, cut=True)
                    else:
                        log(f"delivery failed ({err}); the checkpoint will be processed again")
                        raise SinkBackpressureError(retry_after=1.0)
                self.producer.flush()
            if failures:
                log(f"delivery failed ({failures[0][0]}); the checkpoint will be processed again")
                raise SinkBackpressureError(retry_after=1.0)

    def validate(value):
        stats["in"] += 1
        try:
            return value, parse_request(value, args.model_name, args.max_record_bytes)
        except BadRequest as e:
            return value, e

    state_dir = tempfile.mkdtemp(prefix="quix-st-peer-state-")  # unused (stateless), kept out of the repo
    base = {"broker.address.family": "v4", "socket.keepalive.enable": True}
    # Quix manages group.id, auto commit, auto.offset.reset and offset storing itself.
    consumer_conf = {k: v for k, v in CONSUMER_CONF.items()
                     if k not in ("enable.auto.commit", "enable.auto.offset.store", "auto.offset.reset")}
    handled = [0]

    def on_processed(_topic, _partition, _offset):
        handled[0] += 1
        if args.max_records and handled[0] >= args.max_records:
            log(f"handled {handled[0]} records (--max-records {args.max_records}); stopping")
            app.stop()

    max_wait_s = args.max_wait_ms / 1000.0
    app = ReadyApp(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        commit_interval=max_wait_s,
        commit_every=args.batch_size,
        consumer_poll_timeout=max(0.001, max_wait_s),
        consumer_extra_config={**base, **consumer_conf},
        producer_extra_config={**base, **PRODUCER_CONF},
        state_dir=state_dir,
        use_changelog_topics=False,
        on_message_processed=on_processed,
        loglevel=os.environ.get("QUIX_PEER_LOGLEVEL", "INFO"),
    )
    tconf = TopicConfig(num_partitions=args.partitions, replication_factor=1)
    topics = [args.input_topic] + ([args.priority_topic] if args.priority_topic else [])
    for name in [args.output_topic, args.dlq_topic]:  # created at start, like the inputs
        app.topic(name, value_serializer="bytes", key_serializer="bytes", config=tconf)
    producer = app.get_producer()
    sink = EmbeddingSink(producer)
    for name in topics:
        t = app.topic(name, value_deserializer="bytes", key_deserializer="bytes", config=tconf)
        app.dataframe(t).apply(validate).sink(sink)

    t0 = time.monotonic()

    def stats_loop():
        while True:
            time.sleep(STATS_EVERY_S)
            mean = stats["rows"] / stats["batches"] if stats["batches"] else 0.0
            log(f"stats t={time.monotonic() - t0:.0f}s in={stats['in']} out={stats['out']} dlq={stats['dlq']} "
                f"batches={stats['batches']} mean_batch={mean:.1f} checkpoints={stats['checkpoints']} "
                f"encode_s={stats['encode_s']:.1f} flush_s={stats['flush_s']:.1f} delivery_fail={stats['delivery_fail']}")

    threading.Thread(target=stats_loop, name="stats", daemon=True).start()
    log(f"consuming {', '.join(topics)} as group {args.group} on {args.bootstrap}: checkpoint every "
        f"{args.batch_size} records or {args.max_wait_ms:g} ms")
    try:
        app.run()
        left = producer.flush(10)
        if left:
            log(f"{left} produced records still undelivered at exit")
            sys.exit(1)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
    log("stopped cleanly")


if __name__ == "__main__":
    main()
