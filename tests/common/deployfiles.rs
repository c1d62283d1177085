//! The files under `deploy/` as tests read them: the Grafana dashboard's queries and the
//! metric names the dashboard and the alerting rules use.

use std::path::{Path, PathBuf};

pub fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy").join(path)
}

pub fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(deploy("grafana/sluice-dashboard.json")).expect("dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard's panels, with Grafana's variables replaced by
/// values Prometheus accepts.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let d = dashboard();
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let expr = expr.replace("$__rate_interval", "1m").replace("$job", ".*");
            out.push((p["title"].as_str().unwrap_or_default().to_string(), expr));
        }
    }
    out
}

/// Names of the `sluice_*` metrics the dashboard and the alert rules query (histogram
/// series reduced to their family name).
pub fn queried_metric_names() -> std::collections::BTreeSet<String> {
    let rules = std::fs::read_to_string(deploy("prometheus/sluice-alerts.yml")).expect("rules");
    let mut text: String = dashboard_queries().into_iter().map(|(_, e)| e + "\n").collect();
    text.push_str(&rules);
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("sluice_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric());
        if before_ok {
            let name = &text[start..end];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(family.to_string());
        }
        i = end.max(start + 1);
    }
    names
}
