//! Tests for the seeded generators (`sluice::demo::models`, as tests see them through
//! `tests/common/testkit.rs`): generated model directories are deterministic, load with
//! candle / tokenizers / toml, and have the documented layout.

#[path = "common/testkit.rs"]
mod testkit;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use tokenizers::Tokenizer;

use testkit::{
    set_serving, write_bert_classifier, write_bert_embedding, write_demo_repository, write_mlp,
    MlpSpec, SeededRng, SeededRngExt, TinyBertSpec,
};

const LABELS: [&str; 3] = ["negative", "neutral", "positive"];

/// All files under `dir`, relative path -> bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn read_toml(path: &Path) -> toml::Value {
    toml::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn load_config(dir: &Path) -> Config {
    serde_json::from_str(&fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// Encodes two sentences and pads / truncates them to 7 tokens: (ids, mask), each [2, 7].
fn batch_2x7(tokenizer: &Tokenizer) -> (Tensor, Tensor) {
    let sentences = ["The quick brown fox jumps over the lazy dog", "good service"];
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for s in sentences {
        let enc = tokenizer.encode(s, true).unwrap();
        let mut row: Vec<u32> = enc.get_ids().to_vec();
        let mut m = vec![1u32; row.len()];
        row.truncate(7);
        m.truncate(7);
        while row.len() < 7 {
            row.push(0);
            m.push(0);
        }
        ids.extend(row);
        mask.extend(m);
    }
    (
        Tensor::from_vec(ids, (2, 7), &Device::Cpu).unwrap(),
        Tensor::from_vec(mask, (2, 7), &Device::Cpu).unwrap(),
    )
}

fn assert_finite(t: &Tensor) {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| x.is_finite()), "non-finite values");
    assert!(v.iter().any(|x| *x != 0.0), "all zeros");
}

fn tensor_shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            (name, view.shape().to_vec())
        })
        .collect()
}

#[test]
fn same_seed_is_byte_identical_and_seeds_differ() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let spec = TinyBertSpec::default();
    let mlp = MlpSpec::default();
    for (repo, seed) in [(a.path(), 7u64), (b.path(), 7), (c.path(), 8)] {
        write_bert_embedding(repo, "emb", "1", &spec, seed).unwrap();
        write_bert_classifier(repo, "cls", "1", &spec, &LABELS, seed).unwrap();
        write_mlp(repo, "mlp", "1", &mlp, seed).unwrap();
    }
    let (sa, sb, sc) = (snapshot(a.path()), snapshot(b.path()), snapshot(c.path()));
    assert_eq!(sa.keys().collect::<Vec<_>>(), sb.keys().collect::<Vec<_>>());
    assert_eq!(sa, sb);
    for model in ["emb", "cls", "mlp"] {
        let key = format!("{model}/1/model.safetensors");
        assert_ne!(sa[&key], sc[&key], "{key} should depend on the seed");
    }
    // Rewriting in place is also identical (overwrite, no stale temp files).
    write_bert_embedding(a.path(), "emb", "1", &spec, 7).unwrap();
    write_mlp(a.path(), "mlp", "1", &mlp, 7).unwrap();
    assert_eq!(snapshot(a.path()), sb);

    // The demo repository is reproducible too.
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    write_demo_repository(d1.path()).unwrap();
    write_demo_repository(d2.path()).unwrap();
    write_demo_repository(d2.path()).unwrap();
    assert_eq!(snapshot(d1.path()), snapshot(d2.path()));
}

#[test]
fn bert_embedding_loads_and_runs_in_candle() {
    let repo = tempfile::tempdir().unwrap();
    let spec = TinyBertSpec::default();
    let dir = write_bert_embedding(repo.path(), "tiny-embed", "1", &spec, 1).unwrap();
    assert_eq!(dir, repo.path().join("tiny-embed").join("1"));
    for f in ["sluice.toml", "config.json", "tokenizer.json", "model.safetensors"] {
        assert!(dir.join(f).is_file(), "missing {f}");
    }

    let doc = read_toml(&dir.join("sluice.toml"));
    assert_eq!(doc["kind"].as_str(), Some("bert-embedding"));
    assert_eq!(doc["max_seq_len"].as_integer(), Some(64));
    assert_eq!(doc["pooling"].as_str(), Some("mean"));
    assert_eq!(doc["normalize"].as_bool(), Some(true));

    let config = load_config(&dir);
    assert_eq!(config.hidden_size, 32);
    assert_eq!(config.max_position_embeddings, 128);
    assert!(doc["max_seq_len"].as_integer().unwrap() as usize <= config.max_position_embeddings);

    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.get_vocab_size(true), config.vocab_size);

    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = BertModel::load(vb, &config).unwrap();
    let (ids, mask) = batch_2x7(&tokenizer);
    let out = model.forward(&ids, &ids.zeros_like().unwrap(), Some(&mask)).unwrap();
    assert_eq!(out.dims(), &[2, 7, spec.hidden]);
    assert_finite(&out);
    // Different inputs give different outputs (not degenerate).
    let first: Vec<f32> = out.get(0).unwrap().get(1).unwrap().to_vec1().unwrap();
    let second: Vec<f32> = out.get(1).unwrap().get(1).unwrap().to_vec1().unwrap();
    assert_ne!(first, second);

    // model.toml was created with the version.
    let serving = read_toml(&repo.path().join("tiny-embed").join("model.toml"));
    assert_eq!(serving["serving"].as_str(), Some("1"));
}

#[test]
fn bert_classifier_loads_with_prefix_and_has_head() {
    let repo = tempfile::tempdir().unwrap();
    let spec =
        TinyBertSpec { layers: 1, hidden: 24, heads: 3, intermediate: 48, ..Default::default() };
    let dir = write_bert_classifier(repo.path(), "tiny-sentiment", "3", &spec, &LABELS, 2).unwrap();

    let doc = read_toml(&dir.join("sluice.toml"));
    assert_eq!(doc["kind"].as_str(), Some("bert-classifier"));
    assert_eq!(doc["max_seq_len"].as_integer(), Some(64));
    let labels: Vec<&str> =
        doc["labels"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(labels, LABELS);

    let shapes = tensor_shapes(&dir.join("model.safetensors"));
    let h = spec.hidden;
    assert_eq!(shapes["bert.pooler.dense.weight"], vec![h, h]);
    assert_eq!(shapes["bert.pooler.dense.bias"], vec![h]);
    assert_eq!(shapes["classifier.weight"], vec![LABELS.len(), h]);
    assert_eq!(shapes["classifier.bias"], vec![LABELS.len()]);
    assert!(shapes.contains_key("bert.embeddings.word_embeddings.weight"));
    assert!(shapes.contains_key("bert.encoder.layer.0.attention.self.query.weight"));
    assert!(!shapes.contains_key("embeddings.word_embeddings.weight"));
    assert!(shapes.keys().all(|k| k.starts_with("bert.") || k.starts_with("classifier.")));

    let config = load_config(&dir);
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = BertModel::load(vb.clone(), &config).unwrap();
    let (ids, mask) = batch_2x7(&tokenizer);
    let out = model.forward(&ids, &ids.zeros_like().unwrap(), Some(&mask)).unwrap();
    assert_eq!(out.dims(), &[2, 7, h]);
    assert_finite(&out);

    // Pooler + classifier as in BertForSequenceClassification.
    let pooler = candle_nn::linear(h, h, vb.pp("bert.pooler.dense")).unwrap();
    let classifier = candle_nn::linear(h, LABELS.len(), vb.pp("classifier")).unwrap();
    let cls = out.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let logits = classifier.forward(&pooler.forward(&cls).unwrap().tanh().unwrap()).unwrap();
    assert_eq!(logits.dims(), &[2, LABELS.len()]);
    assert_finite(&logits);
    let probs = candle_nn::ops::softmax(&logits, D::Minus1).unwrap();
    let rows: Vec<Vec<f32>> = probs.to_vec2().unwrap();
    let spread = rows[0].iter().zip(&rows[1]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(spread > 1e-3, "class probabilities barely depend on the input: {rows:?}");
    for row in rows {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }

    let serving = read_toml(&repo.path().join("tiny-sentiment").join("model.toml"));
    assert_eq!(serving["serving"].as_str(), Some("3"));
}

#[derive(Debug, Deserialize)]
struct MlpToml {
    kind: String,
    inputs: usize,
    #[serde(default)]
    output: Option<String>,
    layers: Vec<MlpLayer>,
}

#[derive(Debug, Deserialize)]
struct MlpLayer {
    weight: String,
    bias: String,
    activation: String,
}

#[test]
fn mlp_toml_matches_safetensors() {
    let repo = tempfile::tempdir().unwrap();
    let spec = MlpSpec {
        inputs: 5,
        hidden: vec![12, 6],
        outputs: 2,
        activation: "tanh".to_string(),
        softmax: false,
    };
    let dir = write_mlp(repo.path(), "tab", "2", &spec, 3).unwrap();
    let doc: MlpToml =
        toml::from_str(&fs::read_to_string(dir.join("sluice.toml")).unwrap()).unwrap();
    assert_eq!(doc.kind, "mlp");
    assert_eq!(doc.inputs, 5);
    assert_eq!(doc.output.as_deref().unwrap_or("raw"), "raw");
    assert_eq!(doc.layers.len(), 3);
    let acts: Vec<&str> = doc.layers.iter().map(|l| l.activation.as_str()).collect();
    assert_eq!(acts, ["tanh", "tanh", "none"]);

    let shapes = tensor_shapes(&dir.join("model.safetensors"));
    assert_eq!(shapes.len(), 2 * doc.layers.len());
    let mut width = doc.inputs;
    for layer in &doc.layers {
        let w = &shapes[&layer.weight];
        assert_eq!(w.len(), 2);
        assert_eq!(w[1], width, "{} input width", layer.weight);
        assert_eq!(shapes[&layer.bias], vec![w[0]]);
        width = w[0];
    }
    assert_eq!(width, spec.outputs);

    // Forward pass in plain candle: finite, input-dependent.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let mut rng = SeededRng::new(11);
    let mut x = Tensor::from_vec(rng.normal_vec(4 * 5, 1.0), (4, 5), &Device::Cpu).unwrap();
    let mut width = doc.inputs;
    for layer in &doc.layers {
        let out = shapes[&layer.weight][0];
        let w = vb.get((out, width), &layer.weight).unwrap();
        let b = vb.get(out, &layer.bias).unwrap();
        x = candle_nn::Linear::new(w, Some(b)).forward(&x).unwrap();
        if layer.activation == "tanh" {
            x = x.tanh().unwrap();
        }
        width = out;
    }
    assert_eq!(x.dims(), &[4, 2]);
    assert_finite(&x);
    let rows: Vec<Vec<f32>> = x.to_vec2().unwrap();
    assert_ne!(rows[0], rows[1]);
}

#[test]
fn demo_repository_layout() {
    let repo = tempfile::tempdir().unwrap();
    write_demo_repository(repo.path()).unwrap();
    let files: Vec<String> = snapshot(repo.path()).into_keys().collect();
    assert_eq!(
        files,
        [
            "tabular/1/model.safetensors",
            "tabular/1/sluice.toml",
            "tabular/model.toml",
            "tiny-embed/1/config.json",
            "tiny-embed/1/model.safetensors",
            "tiny-embed/1/sluice.toml",
            "tiny-embed/1/tokenizer.json",
            "tiny-embed/model.toml",
            "tiny-sentiment/1/config.json",
            "tiny-sentiment/1/model.safetensors",
            "tiny-sentiment/1/sluice.toml",
            "tiny-sentiment/1/tokenizer.json",
            "tiny-sentiment/model.toml",
        ]
    );
    for name in ["tiny-embed", "tiny-sentiment", "tabular"] {
        let doc = read_toml(&repo.path().join(name).join("model.toml"));
        assert_eq!(doc["serving"].as_str(), Some("1"), "{name}");
    }
    let tab: MlpToml =
        toml::from_str(&fs::read_to_string(repo.path().join("tabular/1/sluice.toml")).unwrap())
            .unwrap();
    assert_eq!(tab.inputs, 8);
    assert_eq!(tab.output.as_deref(), Some("softmax"));
    let shapes = tensor_shapes(&repo.path().join("tabular/1/model.safetensors"));
    assert_eq!(shapes["fc1.weight"], vec![16, 8]);
    assert_eq!(shapes["fc2.weight"], vec![3, 16]);
    let cls = read_toml(&repo.path().join("tiny-sentiment/1/sluice.toml"));
    assert_eq!(cls["labels"].as_array().unwrap().len(), 3);
}

#[test]
fn model_toml_is_kept_until_set_serving() {
    let repo = tempfile::tempdir().unwrap();
    let spec = MlpSpec::default();
    write_mlp(repo.path(), "m", "1", &spec, 1).unwrap();
    write_mlp(repo.path(), "m", "2", &spec, 2).unwrap();
    let model_toml = repo.path().join("m").join("model.toml");
    assert_eq!(read_toml(&model_toml)["serving"].as_str(), Some("1"));
    set_serving(repo.path(), "m", "2").unwrap();
    assert_eq!(read_toml(&model_toml)["serving"].as_str(), Some("2"));
    assert!(set_serving(repo.path(), "../escape", "1").is_err());
    assert!(write_mlp(repo.path(), "m", "", &spec, 1).is_err());
    let bad = MlpSpec { activation: "swish".into(), ..MlpSpec::default() };
    assert!(write_mlp(repo.path(), "m", "3", &bad, 1).is_err());
    assert!(write_bert_classifier(repo.path(), "c", "1", &TinyBertSpec::default(), &["a", "a"], 1)
        .is_err());
}

#[test]
fn tokenizer_knows_common_words() {
    let repo = tempfile::tempdir().unwrap();
    let dir = write_bert_embedding(repo.path(), "e", "1", &TinyBertSpec::default(), 1).unwrap();
    let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let enc = tokenizer.encode("The quick brown fox jumps over the lazy dog", true).unwrap();
    let tokens = enc.get_tokens();
    assert_eq!(tokens.first().map(String::as_str), Some("[CLS]"));
    assert_eq!(tokens.last().map(String::as_str), Some("[SEP]"));
    assert!(!tokens.iter().any(|t| t == "[UNK]"), "{tokens:?}");
    for word in ["the", "quick", "brown", "fox", "over", "lazy", "dog"] {
        assert!(tokens.iter().any(|t| t == word), "{word} not a whole token in {tokens:?}");
    }
    // "jumps" = "jump" + "##s"; special ids are fixed.
    assert!(tokens.windows(2).any(|w| w[0] == "jump" && w[1] == "##s"), "{tokens:?}");
    assert_eq!(enc.get_ids()[0], 2);
    assert_eq!(*enc.get_ids().last().unwrap(), 3);
    assert_eq!(tokenizer.token_to_id("[PAD]"), Some(0));
    assert_eq!(tokenizer.token_to_id("[UNK]"), Some(1));
    assert_eq!(tokenizer.token_to_id("[MASK]"), Some(4));

    // Unknown words fall back to characters, not [UNK]; punctuation is split off.
    let enc = tokenizer.encode("Zyxq, 42!", true).unwrap();
    assert!(!enc.get_tokens().iter().any(|t| t == "[UNK]"), "{:?}", enc.get_tokens());
    assert!(enc.get_tokens().iter().any(|t| t == ","));
    // Mostly known words for ordinary English.
    let enc = tokenizer
        .encode("I think the service was really good, but the delivery was slow.", false)
        .unwrap();
    let known = enc.get_tokens().iter().filter(|t| !t.starts_with("##")).count();
    assert!(known * 10 >= enc.get_tokens().len() * 8, "{:?}", enc.get_tokens());
    assert_eq!(
        tokenizer
            .decode(
                &[testkit::bert_vocab(None).iter().position(|t| t == "fox").unwrap() as u32],
                true
            )
            .unwrap(),
        "fox"
    );
}

#[test]
fn rng_below_stays_in_range() {
    let mut r = SeededRng::new(7);
    for _ in 0..10_000 {
        assert!(r.below(5) < 5);
    }
}
