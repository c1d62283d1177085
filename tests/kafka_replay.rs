//! `sluice replay` against a real broker and a running `sluice serve`: dead letters of one
//! class are sent back after the cause is fixed and answered, other classes stay where they
//! are, the replayed records are the originals (key, value, headers) with a replay count, and
//! the loop limit holds (a replayed request that fails again says so and is not replayed).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::{Consumed, TestBroker};
use common::kafka::{header, Record};
use common::serve::{mlp_repo, records, result_ids, setup_with, Serve};

const REPLAY_COUNT: &str = "sluice-replay-count";

/// Runs `sluice replay --config CONFIG ARGS...`; its stdout (the summary) on success.
fn replay(config: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("replay")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sluice replay {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Reads `topic` until it holds `n` records (or panics after 90 s).
fn read_n(b: &TestBroker, topic: &str, n: usize) -> Vec<Consumed> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = b.consume(topic, n, Duration::from_secs(3));
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "{topic}: {} of {n} records", got.len());
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn id_of(c: &Consumed) -> String {
    let v: serde_json::Value = serde_json::from_slice(&c.value).unwrap_or_default();
    v["id"].as_str().unwrap_or("").to_owned()
}

#[test]
fn dead_letters_of_one_class_are_replayed_after_a_fix_and_the_loop_limit_holds() {
    let b = TestBroker::start().expect("broker");
    let repo = mlp_repo();
    let s = setup_with(&b, &repo, "replay", 1, "    processing: {maxReplays: 1}\n");
    let mut serve = Serve::start(&s.config);

    // 5 good requests, 3 for a model that does not exist yet, 2 that do not parse.
    let mut input: Vec<Record> = records(0, 5);
    for i in 0..3 {
        input.push((
            Some(format!("later-key-{i}").into_bytes()),
            format!(r#"{{"id":"later-{i}","model":"later","input":[{i},1,2,3,4,5,6,7]}}"#)
                .into_bytes(),
            vec![("trace-id".into(), format!("t{i}").into_bytes())],
        ));
    }
    for i in 0..2 {
        input.push((None, format!(r#"{{"id":"bad-{i}", "model": "#).into_bytes(), vec![]));
    }
    b.produce(&s.input, &input, None).unwrap();
    let dead = read_n(&b, &s.dlq, 5);
    let class_of = |c: &Consumed| header(c, "sluice.error.class").unwrap_or("").to_owned();
    assert_eq!(dead.iter().filter(|d| class_of(d) == "unknown_model").count(), 3);
    assert_eq!(dead.iter().filter(|d| class_of(d) == "parse").count(), 2);
    assert_eq!(result_ids(&b, &s.output, 5, Duration::from_secs(60)).len(), 5);

    // The fix: the model now exists. A dry run first: it counts, it sends nothing.
    repo.add_mlp("later", "1", vec![4], 11);
    let dry = replay(&s.config, &["--class", "unknown_model", "--dry-run"]);
    assert!(
        dry.contains("read 5, matched 3, would replay 3, skipped by the limit (1 replays) 0"),
        "{dry}"
    );
    assert_eq!(
        b.consume(&s.input, usize::MAX, Duration::from_secs(3)).len(),
        10,
        "a dry run sends nothing"
    );
    // The time window is the dead letters' own time.
    let later = replay(&s.config, &["--dry-run", "--since", "2999-01-01T00:00:00Z"]);
    assert!(later.contains("read 5, matched 0, would replay 0"), "{later}");
    let earlier = replay(&s.config, &["--dry-run", "--until", "2999-01-01T00:00:00Z"]);
    assert!(earlier.contains("read 5, matched 5, would replay 5"), "{earlier}");

    let run = replay(&s.config, &["--class", "unknown_model"]);
    assert!(
        run.contains("read 5, matched 3, replayed 3, skipped by the limit (1 replays) 0"),
        "{run}"
    );
    let results = result_ids(&b, &s.output, 8, Duration::from_secs(90));
    for i in 0..3 {
        assert_eq!(results.get(&format!("later-{i}")), Some(&1), "{results:?}");
    }
    assert_eq!(results.len(), 8, "{results:?}");
    // What went back: the originals (key, value, their own header) with a replay count of 1,
    // none of Sluice's dead-letter headers, and no record of another class.
    let all_input = read_n(&b, &s.input, 13);
    let replayed: Vec<&Consumed> =
        all_input.iter().filter(|c| header(c, REPLAY_COUNT).is_some()).collect();
    assert_eq!(replayed.len(), 3, "only the unknown_model letters were replayed");
    for c in &replayed {
        let id = id_of(c);
        let i = id.strip_prefix("later-").expect("a later-* request");
        assert_eq!(header(c, REPLAY_COUNT), Some("1"));
        assert_eq!(header(c, "trace-id"), Some(format!("t{i}").as_str()));
        assert_eq!(c.key.as_deref(), Some(format!("later-key-{i}").as_bytes()));
        assert!(c.headers.iter().all(|(k, _)| !k.starts_with("sluice.")), "{:?}", c.headers);
    }

    // The parse failures are replayed too, and fail again: their new dead letters carry the
    // count and say that they will not be replayed again (maxReplays: 1).
    let run = replay(&s.config, &["--class", "parse"]);
    assert!(run.contains("read 5, matched 2, replayed 2"), "{run}");
    let dead = read_n(&b, &s.dlq, 7);
    let again: Vec<&Consumed> =
        dead.iter().filter(|d| header(d, REPLAY_COUNT) == Some("1")).collect();
    assert_eq!(again.len(), 2, "{dead:?}");
    for d in &again {
        assert_eq!(class_of(d), "parse");
        let reason = header(d, "sluice.error.reason").unwrap_or("");
        assert!(reason.starts_with("replayed 1 times, the limit"), "{reason}");
        assert!(reason.contains("not replayed again"), "{reason}");
    }
    // A run over the new dead letters skips and lists them and sends nothing.
    let from = again.iter().map(|d| d.offset).min().unwrap().to_string();
    let run = replay(&s.config, &["--class", "parse", "--partition", "0", "--from-offset", &from]);
    assert!(
        run.contains("read 2, matched 2, replayed 0, skipped by the limit (1 replays) 2"),
        "{run}"
    );
    assert!(run.contains("not replayed again: partition 0 offset"), "{run}");
    assert_eq!(b.consume(&s.input, usize::MAX, Duration::from_secs(3)).len(), 15);
    serve.terminate();
}

#[test]
fn bad_selections_are_refused_with_the_reason() {
    let b = TestBroker::start().expect("broker");
    let repo = mlp_repo();
    let s = setup_with(&b, &repo, "replay-args", 1, "");
    for (args, needle) in [
        (&["--class", "inferance"][..], "unknown error class \"inferance\""),
        (&["--from-offset", "3"], "need --partition"),
        (&["--partition", "7"], "has no partition 7"),
        (&["--since", "yesterday"], "--since \"yesterday\": expected an RFC 3339 time"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["replay", "--config"])
            .arg(&s.config)
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    }
}
