#!/usr/bin/env python3
"""Soak run: `sluice serve` under steady load with 1% hostile records, sampled every 10 s.

    benches/run-soak.sh [MINUTES] [RATE]     # the wrapper: broker, models, sluice, this script

The wrapper starts a fresh Tansu, writes the demo models and a config, starts `sluice serve`,
and runs this script with the process id. This script:

- produces RATE records/s (default 150) to the input topic for MINUTES (default 10): 99%
  valid tabular requests, 1% hostile ones (bad JSON, invalid UTF-8, unknown model, wrong
  shapes, a 2 MiB record, a 1 MB key) cycling;
- every 10 s samples the sluice process's RSS, thread count and open file descriptors
  (/proc/PID/status, /proc/PID/fd);
- at the end waits for every record's outcome (results and dead letters, matched by id or by
  source offset) and checks that none is missing;
- writes soak.csv, soak.json (samples, verdict) and soak.png (RSS, threads, fds over time).

Pass: RSS after the first minute grows less than 5%, no thread or descriptor growth,
nothing missing. The rate must be one the test broker carries for the whole run (its memory
storage never frees and slows as it fills).
"""
import json
import os
import sys
import time

from kafka import KafkaConsumer, KafkaProducer


def proc_sample(pid):
    rss_kib = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kib, threads, fds


def hostile(i):
    kinds = [
        (None, b"{not json"),
        (None, b"\xff\xfe invalid utf-8"),
        (None, json.dumps({"id": f"h{i}", "model": "no-such-model", "input": [1]}).encode()),
        (None, json.dumps({"id": f"h{i}", "model": "tabular", "input": [1, 2]}).encode()),
        (None, json.dumps({"id": f"h{i}", "model": "tabular", "input": "x" * (2 << 20)}).encode()),
        (b"k" * 1_000_000, json.dumps({"id": f"h{i}", "model": "tabular", "input": [1] * 8}).encode()),
    ]
    return kinds[i % len(kinds)]


def main():
    bootstrap, pid, out_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    minutes = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    rate = float(sys.argv[5]) if len(sys.argv) > 5 else 150.0
    topic_in, topic_out, topic_dlq = "soak-in", "soak-out", "soak-dlq"
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_request_size=8 << 20)
    samples = []
    sent = 0
    start = time.time()
    next_sample = start
    end = start + minutes * 60
    while True:
        now = time.time()
        if now >= next_sample:
            rss, threads, fds = proc_sample(pid)
            samples.append({"t": round(now - start, 1), "rss_kib": rss, "threads": threads, "fds": fds, "sent": sent})
            print(f"t={now - start:6.0f}s sent={sent} rss={rss} KiB threads={threads} fds={fds}", flush=True)
            next_sample += 10
        if now >= end:
            break
        # Open loop: send what the schedule says is due, whatever the broker's pace.
        due = int((now - start) * rate)
        while sent < due:
            if sent % 100 == 99:
                key, value = hostile(sent // 100)  # every kind in turn
            else:
                key = None
                value = json.dumps({"id": f"r{sent}", "model": "tabular", "input": [sent % 97, 1, 2, 3, 4, 5, 6, 7]}).encode()
            producer.send(topic_in, key=key, value=value)
            sent += 1
        time.sleep(0.01)
    producer.flush()
    # Every record must get exactly one outcome: results by id, dead letters by source offset.
    consumer = KafkaConsumer(topic_out, topic_dlq, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             group_id=None, max_partition_fetch_bytes=16 << 20, fetch_max_bytes=64 << 20)
    outcomes = 0
    deadline = time.time() + 300
    while outcomes < sent and time.time() < deadline:
        for _tp, msgs in consumer.poll(timeout_ms=1000).items():
            outcomes += len(msgs)
    rss_after_1min = next((s["rss_kib"] for s in samples if s["t"] >= 60), samples[0]["rss_kib"])
    last = samples[-1]
    growth = (last["rss_kib"] - rss_after_1min) / max(rss_after_1min, 1)
    base_threads = next((s["threads"] for s in samples if s["t"] >= 60), samples[0]["threads"])
    base_fds = next((s["fds"] for s in samples if s["t"] >= 60), samples[0]["fds"])
    verdict = {
        "sent": sent,
        "outcomes": outcomes,
        # Not answered within 300 s of the end of the load: lost, or still in the backlog of
        # a broker that could not carry the rate (Sluice's log says how many it consumed).
        "missing": max(sent - outcomes, 0),
        "rss_growth_after_1min": round(growth, 4),
        "threads_first_after_1min": base_threads,
        "threads_last": last["threads"],
        "fds_first_after_1min": base_fds,
        "fds_last": last["fds"],
    }
    verdict["pass"] = (verdict["missing"] == 0 and growth < 0.05 and last["threads"] <= base_threads
                       and last["fds"] <= base_fds)
    with open(os.path.join(out_dir, "soak.json"), "w") as f:
        json.dump({"minutes": minutes, "rate": rate, "samples": samples, "verdict": verdict}, f, indent=1)
    with open(os.path.join(out_dir, "soak.csv"), "w") as f:
        f.write("t_s,rss_kib,threads,fds,sent\n")
        for s in samples:
            f.write(f"{s['t']},{s['rss_kib']},{s['threads']},{s['fds']},{s['sent']}\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
        t = [s["t"] for s in samples]
        ax[0].plot(t, [s["rss_kib"] / 1024 for s in samples]); ax[0].set_ylabel("RSS MiB")
        ax[1].plot(t, [s["threads"] for s in samples]); ax[1].set_ylabel("threads")
        ax[2].plot(t, [s["fds"] for s in samples]); ax[2].set_ylabel("open fds"); ax[2].set_xlabel("seconds")
        fig.suptitle(f"sluice soak: {rate:.0f} records/s, 1% hostile, {minutes:.0f} min")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "soak.png"), dpi=90)
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    print(json.dumps(verdict))
    return 0 if verdict["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
