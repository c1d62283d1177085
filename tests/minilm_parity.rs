//! all-MiniLM-L6-v2 embeddings from Sluice agree with sentence-transformers.
//!
//! The reference (`tests/data/minilm_reference.jsonl`) was computed by
//! `scripts/reference_embeddings.py` with sentence-transformers on PyTorch; this test runs the
//! same sentences through Sluice's own path (validation, length-grouped batches with padding,
//! staging, candle BERT, masked mean pooling, L2 normalisation) and requires cosine ≥ 0.9999
//! for every sentence, and the same token count (truncation at 256).
//!
//! Needs `models/minilm/1` (`scripts/fetch-minilm.sh`); skips with a message when it is absent,
//! unless `SLUICE_TEST_REQUIRE_MINILM=1` (set by `.ci/run`) makes that a failure.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use sluice::core::BatchCaps;
use sluice::core::HostStaging;
use sluice::core::{Envelope, Limits, Priority, Source};
use sluice::decode::Decoder;
use sluice::execute::fill::{fill_batch, FillScratch};
use sluice::models::cache::CacheSettings;
use sluice::models::{ModelCache, Repository};
use sluice::queue::Request;

#[derive(serde::Deserialize)]
struct Reference {
    line: usize,
    text: String,
    tokens: u32,
    embedding: Vec<f32>,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn minilm_matches_sentence_transformers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let models = root.join("models");
    if !models.join("minilm/1/model.safetensors").is_file() {
        if std::env::var("SLUICE_TEST_REQUIRE_MINILM").as_deref() == Ok("1") {
            panic!("models/minilm/1 is missing; run scripts/fetch-minilm.sh");
        }
        eprintln!(
            "skipping: models/minilm/1 not found; run scripts/fetch-minilm.sh to enable this test"
        );
        return;
    }
    let refs: Vec<Reference> =
        std::fs::read_to_string(root.join("tests/data/minilm_reference.jsonl"))
            .expect("reference file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("reference line"))
            .collect();
    assert!(refs.len() >= 100, "at least 100 reference sentences");
    assert!(refs.iter().any(|r| r.tokens == 256), "some sentences are truncated at 256 tokens");

    let cache = Arc::new(ModelCache::new(
        Repository::open(&models).unwrap(),
        CacheSettings { capacity: 2, ttl: None, warmup_rows: 1 },
    ));
    let limits =
        Limits { caps: BatchCaps { max_rows: 16, max_tokens: 16 * 256 }, ..Limits::default() };
    let mut dec = Decoder::new(cache.clone(), limits, None);
    let requests: Vec<Request> = refs
        .iter()
        .map(|r| {
            let body =
                serde_json::json!({"id": r.line.to_string(), "model": "minilm", "input": r.text});
            let source = Source { topic: "ref".into(), partition: 0, offset: r.line as i64 };
            let env = Envelope::new(Bytes::from(body.to_string()), source, Priority::Normal);
            dec.decode(env).unwrap_or_else(|(_, f)| panic!("line {} rejected: {f:?}", r.line))
        })
        .collect();

    // Batches of 16 in file order: mixed lengths, so padding and masking are exercised.
    let model = cache.get("minilm", None).unwrap();
    let mut st = HostStaging::default();
    let mut scratch = FillScratch::default();
    let mut worst = (1.0f64, 0usize);
    for (chunk_i, chunk) in requests.chunks(16).enumerate() {
        fill_batch(&model, chunk, &mut st, &mut scratch).unwrap();
        let out = model.forward(&st).unwrap();
        for (k, req) in chunk.iter().enumerate() {
            let r = &refs[chunk_i * 16 + k];
            assert_eq!(req.max_tokens, r.tokens, "token count of line {}", r.line);
            assert_eq!(st.row_tokens[k], r.tokens);
            let c = cosine(out.row(k), &r.embedding);
            if c < worst.0 {
                worst = (c, r.line);
            }
            assert!(
                c >= 0.9999,
                "line {}: cosine {c} < 0.9999 ({:?})",
                r.line,
                &r.text[..r.text.len().min(60)]
            );
        }
    }
    println!("{} sentences, worst cosine {:.7} (line {})", refs.len(), worst.0, worst.1);
}
