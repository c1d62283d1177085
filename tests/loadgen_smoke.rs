//! A short run of the load generator against the real broker: Sluice (in process, the demo
//! tabular model) and the passthrough baseline, each for two small steps, then the report
//! command over both. Checks bookkeeping, not speed: every record must come back exactly once.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::broker::TestBroker;
use common::kafka::{cache_for, config, setup, Topics};
use common::TestRepo;
use sluice::loadgen::report::{Machine, RunReport};
use sluice::loadgen::schedule::Arrival;
use sluice::loadgen::step::{StepSpec, Target};
use sluice::loadgen::sweep::{
    run_sweep, BrokerStepper, Criteria, RatePlan, SweepOutcome, SweepSpec,
};
use sluice::loadgen::workload::{Payload, Workload};
use sluice::pipeline::Pipeline;

fn target(b: &TestBroker, t: &Topics) -> Target {
    Target {
        bootstrap: b.bootstrap.clone(),
        input_topic: t.input.clone(),
        priority_topic: t.priority.clone(),
        output_topic: t.output.clone(),
        dlq_topic: t.dlq.clone(),
    }
}

/// Two steps and the half-rate step; `before_step` runs before each (as `--before-step` does).
fn sweep(target: &Target, hostile_share: f64, before_step: Option<&str>) -> SweepOutcome {
    let spec = SweepSpec {
        rates: RatePlan::List(vec![50.0, 100.0]),
        // Generous bounds: this checks bookkeeping, not speed, so no step should be judged on time.
        criteria: Criteria { p99_bound_ms: 60_000.0, min_achieved_ratio: 0.0 },
        patience: 2,
        bisect_to: None,
        min_measured: 0,
        half_step: true,
        step: StepSpec {
            rate: 0.0,
            arrival: Arrival::Poisson,
            duration: Duration::from_secs(2),
            warmup: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(60),
            workload: Workload {
                model: "tabular".into(),
                payload: Payload::Tabular { width: 8 },
                hostile_share,
                priority_share: 0.2,
                seed: 5,
            },
        },
    };
    let stop = AtomicBool::new(false);
    let mut stepper = BrokerStepper { target, stop: &stop, before_step, index: 0 };
    run_sweep(&mut stepper, &spec, &stop, |_| {}).expect("sweep runs")
}

fn check_every_record_came_back(o: &SweepOutcome, hostile_expected: bool) {
    assert_eq!(o.steps.len(), 2);
    assert!(o.half_step.is_some(), "a half-rate step follows the sweep");
    for s in o.steps.iter().chain(o.half_step.iter()) {
        assert!(s.sent > 0);
        assert_eq!(s.missing, 0, "every record came back: {s:?}");
        assert_eq!(s.duplicates, 0);
        assert_eq!(s.send_failed, 0);
        assert_eq!(s.results + s.dead_letters, s.sent, "{s:?}");
        if hostile_expected {
            assert_eq!(
                s.dead_letters, s.hostile_sent,
                "exactly the hostile records were dead-lettered"
            );
            assert_eq!(s.unexpected_dead_letters + s.unexpected_results, 0);
            assert!(s.mean_batch.is_some(), "Sluice's results say their batch size");
        }
        assert!(s.latency.count > 0 && s.latency.p50_ms > 0.0);
        assert_eq!(s.sustained, Some(true), "{}", s.verdict);
    }
    assert_eq!(o.max_sustained_rps, Some(100.0));
}

fn report(system: &str, o: SweepOutcome, b: &TestBroker) -> RunReport {
    RunReport {
        system: system.into(),
        broker: format!("test broker at {}", b.bootstrap),
        machine: Machine::detect(),
        commit: "test".into(),
        sweep: o,
        ..Default::default()
    }
}

#[test]
fn loadgen_against_sluice_and_passthrough_then_report() {
    let b = TestBroker::start().expect("broker");
    let repo = TestRepo::new();

    // Sluice, in process.
    let t = setup(&b, "lg-sluice", 2);
    let cfg = config(&b, &t, &repo.path());
    let pipeline = Pipeline::start(&cfg, cache_for(&cfg)).expect("pipeline starts");
    let hook_dir = tempfile::tempdir().unwrap();
    let hook_log = hook_dir.path().join("steps");
    let hook =
        format!("echo \"$SLUICE_LOADGEN_STEP $SLUICE_LOADGEN_RATE\" >> '{}'", hook_log.display());
    let sluice = sweep(&target(&b, &t), 0.1, Some(&hook));
    let stats = pipeline.stop();
    check_every_record_came_back(&sluice, true);
    assert!(stats.dead_letters > 0);
    // The before-step command ran before every step, the half-rate step too, with its rate.
    let steps = std::fs::read_to_string(&hook_log).expect("the before-step command ran");
    assert_eq!(steps, "0 50.000\n1 100.000\n2 50.000\n");
    let phases: Vec<&str> =
        sluice.steps.iter().chain(sluice.half_step.iter()).map(|s| s.phase.as_str()).collect();
    assert_eq!(phases, ["grid", "grid", "half"]);

    // The passthrough baseline, on its own topics, forwarding everything (hostile records too).
    let t2 = setup(&b, "lg-pass", 2);
    let cfg2 = config(&b, &t2, &repo.path());
    let stop = AtomicBool::new(false);
    let (pass, forwarded) = std::thread::scope(|s| {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let h = s.spawn(|| {
            sluice::loadgen::passthrough::run(&cfg2, &stop, move || {
                let _ = ready_tx.send(());
            })
        });
        ready_rx.recv_timeout(Duration::from_secs(60)).expect("passthrough joins its group");
        let o = sweep(&target(&b, &t2), 0.0, None);
        stop.store(true, Ordering::SeqCst);
        let r = h.join().expect("passthrough thread").expect("passthrough runs");
        (o, r.forwarded)
    });
    check_every_record_came_back(&pass, false);
    let sent: u64 = pass.steps.iter().chain(pass.half_step.iter()).map(|s| s.sent).sum();
    assert_eq!(forwarded, sent);

    // The report command over both runs.
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for r in [report("sluice", sluice, &b), report("passthrough", pass, &b)] {
        let p = dir.path().join(format!("{}.json", r.system));
        std::fs::write(&p, serde_json::to_vec(&r).unwrap()).unwrap();
        files.push(p);
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["loadgen", "report", "--name", "smoke", "--title", "Smoke"])
        .arg("--out-dir")
        .arg(dir.path())
        .args(&files)
        .output()
        .expect("sluice runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let md = std::fs::read_to_string(dir.path().join("smoke.md")).unwrap();
    assert!(md.contains("| sluice | 100 |") && md.contains("| passthrough | 100 |"), "{md}");
    for svg in ["smoke-latency.svg", "smoke-spectrum.svg"] {
        let body = std::fs::read_to_string(dir.path().join(svg)).unwrap();
        assert!(
            body.contains("<svg") && body.contains("sluice") && body.contains("passthrough"),
            "{svg}"
        );
    }
}
