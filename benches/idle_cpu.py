#!/usr/bin/env python3
"""CPU of `sluice serve` when it has nothing to do, and while it drains against a broker that
is gone (benches/run-idle-cpu.sh starts the broker and Sluice and calls this).

    benches/run-idle-cpu.sh [SECONDS]

1. idle: Sluice is subscribed, nothing arrives; CPU per thread over SECONDS (default 60),
   from /proc/PID/task/*/stat (user + system ticks);
2. broker gone: records flow at 500/s for 5 s, the broker is killed (SIGKILL) mid-stream, so
   outcomes are left undelivered; CPU over the next 10 s;
3. drain: SIGTERM; CPU from the signal until the process exits, and how long that took
   (bounded by streaming.inference.processing.drainTimeout plus the close waits).

Writes idle-cpu.json and prints a table. The targets (issue: no busy loops): idle under 1% of
a core, the drain against an unreachable broker under 5%.
"""
import json
import os
import signal
import sys
import time

from kafka import KafkaProducer

TCK = os.sysconf("SC_CLK_TCK")


def threads(pid):
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            st = open(f"/proc/{pid}/task/{t}/stat").read()
        except OSError:
            continue
        name = st[st.index("(") + 1 : st.rindex(")")]
        f = st[st.rindex(")") + 2 :].split()
        out[t] = (name, int(f[11]) + int(f[12]))
    return out


def process_ticks(pid):
    st = open(f"/proc/{pid}/stat").read()
    f = st[st.rindex(")") + 2 :].split()
    # utime, stime, and the reaped children's (none here)
    return int(f[11]) + int(f[12])


def per_thread(pid, seconds):
    a = threads(pid)
    t0 = time.time()
    time.sleep(seconds)
    b = threads(pid)
    dt = time.time() - t0
    rows = {}
    for t, (name, ticks) in b.items():
        used = (ticks - a.get(t, (name, ticks))[1]) / TCK / dt * 100
        # Threads of one kind (lanes, loaders, librdkafka brokers) summed under their name.
        key = name.rstrip("0123456789") if name.startswith(("sluice-lane-", "sluice-model-lo")) else name
        rows[key] = rows.get(key, 0.0) + used
    total = sum(rows.values())
    return total, dict(sorted(rows.items(), key=lambda kv: -kv[1])), dt


def main():
    addr, pid, broker_pid, out_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
    result = {}

    total, rows, dt = per_thread(pid, seconds)
    result["idle"] = {"percent_of_a_core": round(total, 3), "seconds": round(dt, 1), "threads": rows}
    print(f"idle: {total:.2f}% of a core over {dt:.0f} s")
    for name, used in list(rows.items())[:6]:
        print(f"  {used:6.2f}%  {name}")

    producer = KafkaProducer(bootstrap_servers=addr, linger_ms=5)
    t_end = time.time() + 5
    i = 0
    while time.time() < t_end:
        value = json.dumps({"id": f"r{i}", "model": "tabular", "input": [i, 1, 2, 3, 4, 5, 6, 7]})
        producer.send("idle-in", value.encode())
        i += 1
        time.sleep(1 / 500)
    producer.flush(10)
    os.kill(broker_pid, signal.SIGKILL)
    print(f"produced {i} records; broker killed")
    producer.close(timeout=0)

    total, rows, dt = per_thread(pid, 10)
    result["broker_gone"] = {"percent_of_a_core": round(total, 3), "seconds": round(dt, 1), "threads": rows}
    print(f"running, broker gone: {total:.2f}% of a core over {dt:.0f} s")

    before = process_ticks(pid)
    t0 = time.time()
    os.kill(pid, signal.SIGTERM)
    last = before
    while True:
        try:
            last = process_ticks(pid)
        except OSError:
            break
        if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z":
            break
        time.sleep(0.05)
    took = time.time() - t0
    used = (last - before) / TCK / max(took, 1e-9) * 100
    result["drain_broker_gone"] = {"percent_of_a_core": round(used, 3), "seconds_to_exit": round(took, 1)}
    print(f"drain with the broker gone: {used:.2f}% of a core, exited after {took:.1f} s")

    result["pass"] = result["idle"]["percent_of_a_core"] < 1.0 and used < 5.0
    with open(os.path.join(out_dir, "idle-cpu.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("pass" if result["pass"] else "FAIL")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
