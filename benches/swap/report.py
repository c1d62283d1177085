#!/usr/bin/env python3
"""swap.md from the JSON reports of benches/run-swap-bench.sh.

    benches/swap/report.py OUT_DIR RATE STEP AT

Two views of each swap, from `sluice loadgen`'s p99 per second of intended send time:
- against the baselines: the worst one-second p99 from the swap on (AT to the step's end)
  against the worst p99 of the two baseline steps over the same seconds. Every step starts on
  a fresh broker, so the same second of a baseline step is the swap step's fair comparison:
  this is the verdict (within 2x, no dead letter, nothing missing);
- within the step: the same worst p99 against the worst one-second p99 between the warm-up and
  the swap. The test broker slows as it fills, also within a step, so this ratio grows in the
  baseline steps too (they are listed for that reason).
"""
import json, os, platform, subprocess, sys

out, rate, step, at = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
d = json.load(open(os.path.join(out, "swap-steps.json")))
steps = d["sweep"]["steps"]
names = ["baseline", "serving 1 -> 2", "split {2: 50, 3: 50}", "canary to 1 (10/50/100 %)", "baseline again"]
baselines = [steps[0], steps[-1]]
cap = ""
capf = os.path.join(out, "swap-capacity.json")
if os.path.exists(capf):
    c = json.load(open(capf))["sweep"]
    cap = (f"capacity (highest sustained, p99 <= 100 ms): {c['max_sustained_rps']:.0f}/s "
           f"(first failed above: {c.get('min_failed_rps') or 0:.0f}/s); ")
cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"],
                     capture_output=True, text=True).stdout.strip()


def worst(s, lo, hi):
    v = [w["p99_ms"] for w in s.get("timeline", []) if lo <= w["start_s"] < hi and w["count"] > 0]
    return max(v) if v else float("nan")


def ratio(a, b):
    return a / b if b == b and b > 0 else float("nan")


lines = [
    "# Swaps under load (tabular demo model)", "",
    f"- **Machine:** {cpu or platform.processor()}, {os.cpu_count()} CPUs (shared by the load generator, the broker and Sluice); broker: {d.get('broker')}",
    f"- **Date:** {d.get('date')}; commit {d.get('commit')}",
    f"- **Command:** `benches/run-swap-bench.sh` (STEP={step}, swap {at} s into its step)",
    f"- **Load:** open loop (Poisson), {cap}swap steps at {rate:.0f}/s (half), 5% on the priority topic",
    "- **Latency:** end to end from each record's intended send time (HdrHistogram); one-second windows by intended send time",
    "- **Steps:** each on a fresh broker and a freshly started, primed `sluice serve`, its rollout state set to where the swap starts (benches/swap/action.sh)",
    f"- **Verdict:** no dead letter, nothing missing, and the worst one-second p99 from the swap on (second {at} to the step's end) within 2x the baselines' worst p99 over the same seconds",
    "",
    "| step | swap | offered/s | achieved/s | step p50 ms | step p99 ms | step p99.9 ms | step max ms | dead letters | missing | p99 from the swap on (worst 1 s) | baselines, same seconds | ratio | before the swap, same step | ratio | verdict |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
ok_all = True
for i, s in enumerate(steps):
    l = s["latency"]
    warm, end = int(s["warmup_s"]), int(s["duration_s"])
    after = worst(s, at, end)
    base = max(worst(b, at, end) for b in baselines)
    before = worst(s, warm, at)
    swap = 0 < i < len(steps) - 1
    r_base, r_before = ratio(after, base), ratio(after, before)
    ok = s["dead_letters"] == 0 and s["missing"] == 0 and (not swap or r_base <= 2.0)
    ok_all &= ok
    lines.append(
        f"| {i} | {names[i] if i < len(names) else '-'} | {s['offered_rps']:.0f} | {s['achieved_rps']:.0f} "
        f"| {l['p50_ms']:.1f} | {l['p99_ms']:.1f} | {l['p999_ms']:.1f} | {l['max_ms']:.1f} | {s['dead_letters']} "
        f"| {s['missing']} | {after:.1f} | {base:.1f} | {r_base:.2f} | {before:.1f} | {r_before:.2f} | {'pass' if ok else 'FAIL'} |")
n = int(steps[0]["duration_s"])
lines += [
    "", f"All swap steps within the bound: **{'yes' if ok_all else 'no'}**.", "",
    "Per-second p99 (ms), by second of intended send time (warm-up included; the swap starts at "
    f"second {at}):", "",
    "| step | " + " | ".join(str(k) for k in range(n)) + " |",
    "|---|" + "---|" * n,
]
for i, s in enumerate(steps):
    lines.append(f"| {i} | " + " | ".join(f"{w['p99_ms']:.0f}" for w in s.get("timeline", [])) + " |")
lines += ["", "Control-plane calls (swap-actions.log):", "", "```"]
lines += open(os.path.join(out, "swap-actions.log")).read().strip().splitlines()
lines += ["```", ""]
open(os.path.join(out, "swap.md"), "w").write("\n".join(lines))
print("\n".join(lines))
