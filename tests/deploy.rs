//! The files under `deploy/` that tools can check offline: the Prometheus alerting rules are
//! valid (`promtool check rules`) and behave as their unit tests say on synthetic series,
//! firing where they must and staying quiet where they must not (`promtool test rules`).
//! `promtool` comes with Debian's `prometheus` package (`.ci/run` installs it); without it the
//! tests print why they skip.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::deployfiles::{dashboard, dashboard_queries, deploy, queried_metric_names};
use common::find_tool;

/// Runs `tool` with `args`: whether it succeeded, and its stdout and stderr.
fn run(tool: &Path, args: &[&Path]) -> (bool, String) {
    let out = Command::new(tool).args(args).output().expect("the tool runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs promtool with `args`; None (after printing why) where promtool is not installed.
fn run_promtool(args: &[&Path]) -> Option<(bool, String)> {
    let Some(tool) = find_tool("SLUICE_TEST_PROMTOOL", "promtool") else {
        println!(
            "SKIPPED: promtool not found (Debian package `prometheus`, or SLUICE_TEST_PROMTOOL)"
        );
        return None;
    };
    Some(run(&tool, args))
}

#[test]
fn alert_rules_are_valid() {
    let rules = deploy("prometheus/sluice-alerts.yml");
    let Some((ok, text)) = run_promtool(&[Path::new("check"), Path::new("rules"), &rules]) else {
        return;
    };
    assert!(ok, "promtool check rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
}

#[test]
fn alert_rules_fire_where_they_must_and_nowhere_else() {
    let tests = deploy("prometheus/sluice-alerts.test.yml");
    let Some((ok, text)) = run_promtool(&[Path::new("test"), Path::new("rules"), &tests]) else {
        return;
    };
    assert!(ok, "promtool test rules:\n{text}");
}

/// Every alert in the rules file has a test case, and names its README entry, which exists.
#[test]
fn every_alert_is_tested_and_documented() {
    let rules = std::fs::read_to_string(deploy("prometheus/sluice-alerts.yml")).expect("rules");
    let tests =
        std::fs::read_to_string(deploy("prometheus/sluice-alerts.test.yml")).expect("tests");
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README");
    let alerts: Vec<&str> =
        rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    assert!(alerts.len() >= 8, "alerts: {alerts:?}");
    for a in alerts {
        assert!(tests.contains(&format!("alertname: {a}")), "{a} has no test case");
        assert!(
            rules.contains(&format!("Running in production → Alerts → {a}\"")),
            "{a}'s runbook does not name its README entry"
        );
        assert!(readme.contains(&format!("- **{a}**")), "README has no entry for {a}");
    }
}

/// The fields Grafana needs to import the dashboard: title, uid, schema version, a Prometheus
/// data-source variable, and panels with ids, positions, types and queries.
#[test]
fn dashboard_has_what_grafana_needs() {
    let d = dashboard();
    assert_eq!(d["title"], "Sluice");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    assert!(vars.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));
    assert!(vars.iter().any(|v| v["name"] == "job"));
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = std::collections::HashSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("panel title");
        assert!(ids.insert(p["id"].as_u64().expect("panel id")), "duplicate id at {title}");
        assert!(p["type"].as_str().is_some(), "{title}: type");
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert!(t["refId"].as_str().is_some() && t["expr"].as_str().is_some(), "{title}");
        }
    }
    // What the issue asks the dashboard to show.
    let titles: Vec<String> =
        panels.iter().map(|p| p["title"].as_str().unwrap_or_default().to_lowercase()).collect();
    for want in [
        "throughput",
        "end-to-end",
        "queue vs inference",
        "batch",
        "dead letters",
        "lag",
        "cache",
        "lane",
        "pipeline state",
    ] {
        assert!(titles.iter().any(|t| t.contains(want)), "no panel for {want}: {titles:?}");
    }
}

/// Every panel query is valid PromQL: promtool checks them wrapped as recording rules.
#[test]
fn dashboard_queries_are_valid_promql() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries().into_iter().enumerate() {
        rules.push_str(&format!(
            "      # {title}\n      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("quoted")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-rules.yml");
    std::fs::write(&file, rules).expect("write");
    let Some((ok, text)) = run_promtool(&[Path::new("check"), Path::new("rules"), &file]) else {
        return;
    };
    assert!(ok, "promtool check rules (dashboard queries):\n{text}");
}

#[test]
fn queried_metrics_are_found() {
    let names = queried_metric_names();
    assert!(names.contains("sluice_end_to_end_latency_seconds"), "{names:?}");
    assert!(names.contains("sluice_requests_total"), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with("_bucket")), "{names:?}");
}

fn manifest(name: &str) -> serde_yaml::Value {
    let text = std::fs::read_to_string(deploy(&format!("kubernetes/{name}"))).expect(name);
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The ConfigMap's configuration is one Sluice accepts, with each Deployment's environment
/// overrides on top, and the pods' shutdown fits the drain: the grace period covers the
/// pre-stop drain (`drainTimeout`) plus the final commit and closes, and the probes ask the
/// control plane's health endpoints on its port.
#[test]
fn kubernetes_manifests_match_sluice() {
    let cm = manifest("configmap.yaml");
    let yaml = cm["data"]["sluice.yaml"].as_str().expect("data.sluice.yaml");
    for file in ["deployment.yaml", "deployment-gpu.yaml", "statefulset-exactly-once.yaml"] {
        let d = manifest(file);
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let env: Vec<(String, String)> = c["env"]
            .as_sequence()
            .map(|e| {
                e.iter()
                    .map(|v| {
                        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                        (s("name"), s("value"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let cfg = sluice::config::Config::from_yaml_str_with_vars(yaml, env.clone())
            .unwrap_or_else(|e| panic!("{file}: the configuration is refused: {e}"));
        let drain = cfg.streaming.inference.processing.drain_timeout_secs;
        let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("grace period");
        assert!(grace >= drain + 20, "{file}: {grace} s of grace for a {drain} s drain");
        assert_eq!(cfg.control.listen.port(), 8086, "{file}");
        assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(8086), "{file}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/health/live"));
        assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/health/ready"));
        let pre_stop: Vec<&str> = c["lifecycle"]["preStop"]["exec"]["command"]
            .as_sequence()
            .expect("preStop command")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            pre_stop.iter().any(|a| a.ends_with("/batch-inference/streaming/stop")),
            "{file}: {pre_stop:?}"
        );
        let gpu = c["resources"]["limits"]["nvidia.com/gpu"].as_str().is_some();
        assert_eq!(gpu, !cfg.gpu.devices.is_empty(), "{file}: GPU limit and gpu.devices agree");
        // The models are mounted read-only; Sluice's state directory is a writable mount.
        let mounts = c["volumeMounts"].as_sequence().expect("volumeMounts");
        let mount = |path: &std::path::Path| {
            mounts.iter().find(|m| m["mountPath"].as_str() == path.to_str()).cloned()
        };
        let models = mount(&cfg.streaming.inference.model.repository).expect("models mount");
        assert_eq!(models["readOnly"].as_bool(), Some(true), "{file}: models read-only");
        let state = cfg.streaming.inference.model.state_dir().expect("a state directory");
        let state =
            mount(&state).unwrap_or_else(|| panic!("{file}: the state directory is not mounted"));
        assert_ne!(state["readOnly"].as_bool(), Some(true), "{file}: state writable");
        if file.starts_with("statefulset") {
            assert_eq!(cfg.streaming.inference.processing.guarantee.as_str(), "exactly_once");
            let id = c["env"]
                .as_sequence()
                .and_then(|e| {
                    e.iter().find(|v| {
                        v["name"].as_str()
                            == Some(
                                "SLUICE_STREAMING_INFERENCE_PROCESSING_TRANSACTIONS_INSTANCE_ID",
                            )
                    })
                })
                .expect("instanceId from the pod name");
            assert_eq!(id["valueFrom"]["fieldRef"]["fieldPath"].as_str(), Some("metadata.name"));
        }
    }
}

/// Schema validation of the Kubernetes manifests, offline, with PyPI's `kubernetes-validate`
/// (its bundled schemas; `.ci/run` installs it). KEDA's ScaledObject is a CRD without a
/// bundled schema: only its YAML is checked here.
#[test]
fn kubernetes_manifests_pass_schema_validation() {
    let tool = find_tool("SLUICE_TEST_KUBERNETES_VALIDATE", "kubernetes-validate");
    let _ = manifest("keda-scaledobject.yaml");
    let Some(tool) = tool else {
        println!(
            "SKIPPED: kubernetes-validate not found (PyPI, or SLUICE_TEST_KUBERNETES_VALIDATE)"
        );
        return;
    };
    let files: Vec<PathBuf> = [
        "configmap.yaml",
        "deployment.yaml",
        "deployment-gpu.yaml",
        "statefulset-exactly-once.yaml",
        "service.yaml",
        "pdb.yaml",
        "hpa.yaml",
    ]
    .iter()
    .map(|f| deploy(&format!("kubernetes/{f}")))
    .collect();
    let mut args: Vec<&Path> =
        ["--strict", "--kubernetes-version", "1.31.0"].iter().map(Path::new).collect();
    args.extend(files.iter().map(PathBuf::as_path));
    let (ok, text) = run(&tool, &args);
    assert!(ok, "kubernetes-validate:\n{text}");
}
