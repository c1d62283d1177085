//! `sluice batch` end to end: a file mixing valid and invalid lines; every line gets exactly
//! one outcome, in the results file or the DLQ file, with the right class.

#[path = "common/testkit.rs"]
mod testkit;

use std::collections::BTreeMap;
use std::process::Command;

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad output line {l}: {e}")))
        .collect()
}

#[test]
fn every_line_has_exactly_one_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    testkit::write_demo_repository(&models).unwrap();

    let mut input: Vec<Vec<u8>> = Vec::new();
    let mut expect: BTreeMap<usize, &str> = BTreeMap::new(); // line → "ok" or DLQ class
    let mut push = |line: Vec<u8>, what: &'static str| {
        input.push(line);
        expect.insert(input.len(), what);
    };
    for i in 0..40 {
        push(
            format!(
                r#"{{"id":"e{i}","model":"tiny-embed","input":"the quick brown fox number {i}"}}"#
            )
            .into_bytes(),
            "ok",
        );
        push(
            format!(r#"{{"id":"d{i}","input":["default model", "two inputs {i}"]}}"#).into_bytes(),
            "ok",
        );
        push(
            format!(r#"{{"id":"s{i}","model":"tiny-sentiment","input":"what a day"}}"#)
                .into_bytes(),
            "ok",
        );
        push(format!(r#"{{"id":"t{i}","model":"tabular","input":[[{i},1,2,3,4,5,6,7],[0,0,0,0,0,0,0,0]]}}"#).into_bytes(), "ok");
    }
    push(b"{not json".to_vec(), "parse");
    push(b"\xff\xfe\xfd invalid utf-8".to_vec(), "parse");
    push(b"".to_vec(), "parse");
    push(br#"{"id":"nan","model":"tabular","input":[NaN,1,2,3,4,5,6,7]}"#.to_vec(), "parse");
    push(br#"{"id":"v1","model":"tabular","input":[1,2]}"#.to_vec(), "validation");
    push(br#"{"id":"v2","model":"tiny-embed","input":null}"#.to_vec(), "validation");
    push(br#"{"model":"tiny-embed","input":"no id"}"#.to_vec(), "validation");
    push(br#"{"id":"u1","model":"no-such-model","input":"x"}"#.to_vec(), "unknown_model");
    push(format!(r#"{{"id":"big","input":"{}"}}"#, "x ".repeat(600_000)).into_bytes(), "too_large");
    push(br#"{"id":"old","model":"tiny-embed","input":"x","deadline_ms":1}"#.to_vec(), "expired");
    push(
        br#"{"id":"after","model":"tiny-embed","input":"still served after all that"}"#.to_vec(),
        "ok",
    );
    let mut body = Vec::new();
    for l in &input {
        body.extend_from_slice(l);
        body.push(b'\n');
    }
    let in_path = dir.path().join("in.jsonl");
    std::fs::write(&in_path, &body).unwrap();
    let out_path = dir.path().join("out.jsonl");
    let dlq_path = dir.path().join("dlq.jsonl");

    let run = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["batch", "--models"])
        .arg(&models)
        .args(["--model", "tiny-embed", "--input"])
        .arg(&in_path)
        .arg("--output")
        .arg(&out_path)
        .arg("--dlq")
        .arg(&dlq_path)
        .args(["--no-progress", "--json"])
        .output()
        .unwrap();
    assert!(run.status.success(), "sluice batch failed: {}", String::from_utf8_lossy(&run.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&run.stdout).expect("JSON summary");
    assert_eq!(summary["lines"], input.len());

    let mut seen: BTreeMap<usize, String> = BTreeMap::new();
    for r in lines(&out_path) {
        let line = r["source"]["offset"].as_u64().unwrap() as usize;
        assert_eq!(r["source"]["topic"], "in.jsonl");
        assert!(seen.insert(line, "ok".into()).is_none(), "line {line} has two outcomes");
        let id = r["id"].as_str().unwrap();
        let req: serde_json::Value = serde_json::from_slice(&input[line - 1]).unwrap();
        assert_eq!(req["id"], id, "result carries its request's id");
        let output = r["output"].as_array().unwrap();
        match &id[..1] {
            "e" | "a" => {
                assert_eq!(output.len(), 1);
                let v: Vec<f64> =
                    output[0].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                assert_eq!(v.len(), 32);
                let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4, "embeddings are L2-normalised");
                assert_eq!(r["model"], "tiny-embed");
            }
            "d" => assert_eq!(output.len(), 2, "one output per input"),
            "s" => {
                let label = output[0]["label"].as_str().unwrap();
                assert!(["negative", "neutral", "positive"].contains(&label));
                let s: f64 = output[0]["scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .sum();
                assert!((s - 1.0).abs() < 1e-4);
            }
            "t" => {
                assert_eq!(output.len(), 2);
                assert_eq!(output[0].as_array().unwrap().len(), 3);
            }
            other => panic!("unexpected id prefix {other}"),
        }
        assert!(
            r["timing_us"]["total"].as_u64().unwrap() >= r["timing_us"]["infer"].as_u64().unwrap()
        );
        assert!(r["batch_size"].as_u64().unwrap() >= 1);
    }
    for d in lines(&dlq_path) {
        let line = d["source"]["offset"].as_u64().unwrap() as usize;
        assert!(
            seen.insert(line, d["error"]["class"].as_str().unwrap().to_string()).is_none(),
            "line {line} has two outcomes"
        );
        assert!(!d["error"]["reason"].as_str().unwrap().is_empty());
        // The original bytes come back unchanged (text or base64), except oversized lines.
        if d["error"]["class"] != "too_large" {
            let original = &input[line - 1];
            match (d.get("value"), d.get("value_base64")) {
                (Some(v), None) => assert_eq!(v.as_str().unwrap().as_bytes(), &original[..]),
                (None, Some(b)) => {
                    use base64::Engine as _;
                    assert_eq!(
                        base64::engine::general_purpose::STANDARD
                            .decode(b.as_str().unwrap())
                            .unwrap(),
                        *original
                    )
                }
                other => panic!("dead letter without its value: {other:?}"),
            }
        }
    }
    let expected: BTreeMap<usize, String> =
        expect.into_iter().map(|(k, v)| (k, v.to_string())).collect();
    assert_eq!(seen, expected, "every line has exactly one outcome of the expected kind");
}

#[test]
fn a_failed_output_write_ends_with_an_error_and_no_partial_line() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    testkit::write_demo_repository(&models).unwrap();
    // 20,000 tabular lines: their results are far over the 256 KiB file-size limit below.
    let body: String = (0..20_000)
        .map(|i| {
            format!("{{\"id\":\"t{i}\",\"model\":\"tabular\",\"input\":[{i},1,2,3,4,5,6,7]}}\n")
        })
        .collect();
    let in_path = dir.path().join("in.jsonl");
    std::fs::write(&in_path, body).unwrap();
    let out_path = dir.path().join("out.jsonl");
    let dlq_path = dir.path().join("dlq.jsonl");
    // RLIMIT_FSIZE of 256 KiB (512-byte blocks for dash, 1 KiB for bash: either is well below
    // the output) with SIGXFSZ ignored, so a write past it fails with EFBIG as a full disk
    // would.
    let script = format!(
        "trap '' XFSZ; ulimit -f 256; exec \"$0\" batch --models '{}' --model tabular --input '{}' --output '{}' --dlq '{}' --no-progress",
        models.display(),
        in_path.display(),
        out_path.display(),
        dlq_path.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script, env!("CARGO_BIN_EXE_sluice")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read stderr as it comes, so that a full pipe never blocks the process.
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    // No deadlock: it ends by itself (a generous bound; it takes about a second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("sluice batch did not end after its output write failed");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = reader.join().unwrap();
    assert!(!status.success(), "a failed write must not exit 0: {stderr}");
    assert!(stderr.contains("writing output"), "the error names what failed: {stderr}");
    let written = std::fs::read(&out_path).unwrap();
    assert!(written.len() < 20_000 * 40, "the limit did stop the output ({} bytes)", written.len());
    assert!(
        written.is_empty() || written.ends_with(b"\n"),
        "the output ends with a whole line ({} bytes)",
        written.len()
    );
    // What is there is whole result lines.
    for l in String::from_utf8(written).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["id"].as_str().unwrap().starts_with('t'));
    }
}
