//! `sluice demo` as a newcomer runs it: the load starts only once the pipeline holds its
//! partitions, and the closing summary accounts for every record produced.

use std::process::Command;

#[test]
fn the_demo_starts_its_load_when_ready_and_its_summary_counts_every_record() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["demo", "--seconds", "3", "--rate", "50", "--bad-percent", "5"])
        .env("SLUICE_CACHE", cache.path())
        .current_dir(cache.path())
        .output()
        .expect("sluice demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let ready = stdout.find("pipeline ready").unwrap_or_else(|| panic!("no ready line:\n{stdout}"));
    let first_tick = stdout.find("t=").unwrap_or_else(|| panic!("no live view:\n{stdout}"));
    assert!(ready < first_tick, "the load started before the pipeline was ready:\n{stdout}");

    // demo summary: produced N, results R, dead letters D, ...
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("demo summary:"))
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    let num = |after: &str| -> u64 {
        let rest = &summary[summary.find(after).expect(after) + after.len()..];
        rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect(after)
    };
    let (produced, results, dead) = (num("produced "), num("results "), num("dead letters "));
    assert!(produced > 0, "{summary}");
    assert_eq!(results + dead, produced, "the summary waited for every outcome: {summary}");
    assert!(dead > 0, "the deliberately bad records were dead-lettered: {summary}");
    assert!(!summary.contains("without an outcome"), "{summary}");
}
