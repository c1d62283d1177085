//! The padding-free CPU encoder (`models/packed_bert.rs`) agrees with candle's `BertModel`
//! run on the padded, masked batch, and its kernels agree with plain references.
//!
//! - Kernels: the packed GEMM (every edge: rows not a multiple of 6, columns not a multiple
//!   of 16, K split into blocks) with each epilogue, `exp` and `erf`, on the AVX2 path and on
//!   the portable path, each asked for explicitly (the AVX2 half is skipped, with a
//!   message, only on a CPU without AVX2/FMA).
//! - Models: the generated `tiny-embed` (mean pooling, no tensor prefix) and
//!   `tiny-sentiment` (classifier, `bert.` prefix, pooler), plus a wider generated model with
//!   random LayerNorm parameters, tanh GELU, CLS pooling and K-blocked feed-forward, on
//!   batches whose rows have very different lengths: per-row cosine ≥ 0.99999 and a small
//!   max abs difference. MiniLM (`models/minilm/1`) too when present.

#[path = "common/testkit.rs"]
mod testkit;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sluice::core::HostStaging;
use sluice::models::bert::{BertBackend, BertRunner};
use sluice::models::packed_bert::kernels::{self, Act, Isa, PackedLinear, Store};
use sluice::models::packed_bert::{pool_packed, PackedBert, PackedConfig};
use sluice::models::spec::Pooling;
use sluice::models::ModelSpec;
use testkit::{write_bert_embedding, write_demo_repository, SeededRng, TinyBertSpec};

// ------------------------------------------------------------------ kernels

fn reference(a: &[f32], m: usize, k: usize, w: &[f32], b: &[f32], n: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b[j] as f64;
            for kk in 0..k {
                s += a[i * k + kk] as f64 * w[j * k + kk] as f64;
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SeededRng::new(seed);
    rng.normal_vec(n, 1.0)
}

/// erf in f64: Maclaurin series for |x| < 2, else 1 - erfc by its continued fraction.
fn erf64(x: f64) -> f64 {
    let z = x.abs();
    if z < 2.0 {
        let (mut sum, mut term, mut n) = (0.0, x, 0.0);
        while n < 200.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
            if term.abs() < 1e-18 {
                break;
            }
        }
        return 2.0 / std::f64::consts::PI.sqrt() * sum;
    }
    let mut t = z;
    for k in (1..=80).rev() {
        t = z + (k as f64 / 2.0) / t;
    }
    let erfc = (-z * z).exp() / std::f64::consts::PI.sqrt() / t;
    (1.0 - erfc).copysign(x)
}

/// The kernel sets to test: portable always, AVX2/FMA where the CPU has it.
fn isas() -> Vec<Isa> {
    match Isa::avx2_fma() {
        Some(avx2) => vec![avx2, Isa::PORTABLE],
        None => {
            eprintln!("this CPU lacks AVX2/FMA: the AVX2 half of this test is skipped");
            vec![Isa::PORTABLE]
        }
    }
}

#[test]
fn linear_kernel_matches_reference_on_every_edge() {
    // Every kernel set in parallel, and the detected one on a single thread too.
    let runs = isas().into_iter().map(|isa| (isa, true)).chain([(Isa::detect(), false)]);
    for (isa, par) in runs {
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 5, 3),
            (19, 384, 40),
            (200, 600, 17),
            (13, 37, 33),
            (97, 260, 64),
            (250, 1536, 48),
        ] {
            let a = data(m * k, 1);
            let w = data(n * k, 2);
            let b = data(n, 3);
            let pl = PackedLinear::new(&w, Some(&b), n, k);
            let want = reference(&a, m, k, &w, &b, n);
            let tol = |y: f64| 2e-6 * (k as f64).sqrt() * (1.0 + y.abs());
            let mut c = vec![f32::NAN; m * n];
            kernels::linear(&a, m, &pl, &mut c, Store::Set(Act::None), par, isa).unwrap();
            for (x, y) in c.iter().zip(&want) {
                assert!(
                    (*x as f64 - y).abs() <= tol(*y),
                    "{isa:?} par={par} m{m} k{k} n{n}: {x} vs {y}"
                );
            }
            let old = data(m * n, 4);
            let mut c = old.clone();
            kernels::linear(&a, m, &pl, &mut c, Store::Add, par, isa).unwrap();
            for ((x, y), o) in c.iter().zip(&want).zip(&old) {
                assert!(
                    (*x as f64 - (y + *o as f64)).abs() <= tol(*y),
                    "add: {isa:?} m{m} k{k} n{n}"
                );
            }
            let mut c = vec![0f32; m * n];
            kernels::linear(&a, m, &pl, &mut c, Store::Set(Act::GeluErf), par, isa).unwrap();
            for (x, y) in c.iter().zip(&want) {
                let g = 0.5 * y * (1.0 + erf64(y / 2f64.sqrt()));
                assert!(
                    (*x as f64 - g).abs() <= tol(*y),
                    "gelu: {isa:?} m{m} k{k} n{n}: {x} vs {g}"
                );
            }
        }
    }
}

#[test]
fn exp_and_erf_are_accurate() {
    let mut x = -20.0f32;
    while x < 20.0 {
        let (e, want) = (kernels::exp_f(x) as f64, (x as f64).exp());
        assert!(((e - want) / want).abs() < 5e-7, "exp({x}) = {e}, want {want}");
        x += 0.013;
    }
    let mut x = -6.0f32;
    while x < 6.0 {
        let got = kernels::erf_f(x) as f64;
        assert!((got - erf64(x as f64)).abs() < 3e-7, "erf({x}) = {got}, want {}", erf64(x as f64));
        x += 0.0071;
    }
    assert!(kernels::exp_f(-200.0) < 1e-37 && kernels::exp_f(-200.0) >= 0.0);
    assert!(kernels::exp_f(200.0).is_finite());
    assert!((kernels::gelu_tanh(1.0) - 0.841_192).abs() < 1e-5);
}

// ------------------------------------------------------------------ models

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

/// A batch with rows of the given lengths: `[CLS]`-like id first, random ids, right-padded.
fn staging(lens: &[usize], vocab: u32, seed: u64) -> HostStaging {
    let seq = *lens.iter().max().unwrap();
    let mut st = HostStaging::default();
    st.begin_text(lens.len(), seq, 0);
    let mut rng = SeededRng::new(seed);
    for (r, &n) in lens.iter().enumerate() {
        let row = st.row_ids_mut(r);
        for (t, id) in row.iter_mut().take(n).enumerate() {
            *id = if t == 0 {
                101.min(vocab - 1)
            } else {
                1 + (rng.next_u64() % (vocab as u64 - 1)) as u32
            };
        }
        st.set_row_len(r, n);
    }
    st
}

fn vocab_size(dir: &Path) -> u32 {
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["vocab_size"].as_u64().unwrap() as u32
}

fn runners(dir: &Path) -> (BertRunner, BertRunner) {
    let spec = ModelSpec::from_file(&dir.join("sluice.toml")).unwrap();
    let packed = BertRunner::load_with(dir, &spec, &Device::Cpu, BertBackend::Packed).unwrap();
    let candle = BertRunner::load_with(dir, &spec, &Device::Cpu, BertBackend::Candle).unwrap();
    assert!(packed.is_packed() && !candle.is_packed());
    (packed, candle)
}

/// Runs both encoders on batches of mixed lengths; returns the worst (cosine, max abs diff).
fn compare(dir: &Path, batches: &[Vec<usize>]) -> (f64, f32) {
    let (packed, candle) = runners(dir);
    compare_with(dir, batches, &candle, |st| packed.forward(st).unwrap().data)
}

/// As [`compare`], with the packed side given as a function of the batch (its `rows × width`
/// output, row-major).
fn compare_with(
    dir: &Path,
    batches: &[Vec<usize>],
    candle: &BertRunner,
    packed: impl Fn(&HostStaging) -> Vec<f32>,
) -> (f64, f32) {
    let vocab = vocab_size(dir);
    let mut worst = (1.0f64, 0f32);
    for (i, lens) in batches.iter().enumerate() {
        let st = staging(lens, vocab, 7 + i as u64);
        let a = packed(&st);
        let b = candle.forward(&st).unwrap();
        assert_eq!(a.len(), b.rows() * b.width);
        let a_row = |r: usize| &a[r * b.width..(r + 1) * b.width];
        for (r, len) in lens.iter().enumerate() {
            let c = cosine(a_row(r), b.row(r));
            let d = a_row(r).iter().zip(b.row(r)).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(c >= 0.99999, "{}: batch {i} row {r} (len {len}): cosine {c}", dir.display());
            assert!(
                d <= 2e-4,
                "{}: batch {i} row {r} (len {len}): max abs diff {d}",
                dir.display()
            );
            worst = (worst.0.min(c), worst.1.max(d));
        }
    }
    worst
}

fn mixed_batches(max: usize) -> Vec<Vec<usize>> {
    vec![
        vec![max],
        vec![2],
        vec![2, max, 5, max / 2 + 1, 17, 3, max - 1, 9],
        (0..40).map(|i| 2 + (i * 37) % (max - 1)).collect(),
        vec![max; 3],
    ]
}

fn demo_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_demo_repository(dir.path()).unwrap();
    dir
}

#[test]
fn tiny_embed_packed_matches_candle() {
    let repo = demo_repo();
    let (c, d) = compare(&repo.path().join("tiny-embed/1"), &mixed_batches(64));
    println!("tiny-embed: worst cosine {c:.8}, max abs diff {d:.2e}");
}

#[test]
fn tiny_sentiment_packed_matches_candle() {
    let repo = demo_repo();
    let (c, d) = compare(&repo.path().join("tiny-sentiment/1"), &mixed_batches(64));
    println!("tiny-sentiment: worst cosine {c:.8}, max abs diff {d:.2e}");
}

/// The packed encoder of the embedding model in `dir`, on the given kernels.
fn packed_encoder(dir: &Path, isa: Isa) -> PackedBert {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg: candle_transformers::models::bert::Config = serde_json::from_str(&text).unwrap();
    let model = PackedBert::load(
        &dir.join("model.safetensors"),
        PackedConfig::from_bert(&cfg),
        cfg.model_type.as_deref(),
    )
    .unwrap();
    model.with_isa(isa)
}

#[test]
fn every_kernel_set_matches_candle() {
    // Each kernel set is asked for explicitly, so both paths run in every test run.
    let repo = demo_repo();
    let dir = repo.path().join("tiny-embed/1");
    let (_, candle) = runners(&dir);
    let (pooling, normalize) = candle.embedding_head().expect("tiny-embed is an embedding model");
    let h = candle.hidden();
    for isa in isas() {
        let model = packed_encoder(&dir, isa);
        assert_eq!(model.isa(), isa);
        let forward = |st: &HostStaging| {
            let mut data = vec![0f32; st.rows * h];
            let mean = matches!(pooling, Pooling::Mean);
            model
                .encode(st, |states, offsets| {
                    pool_packed(states, offsets, h, mean, normalize, &mut data)
                })
                .unwrap();
            data
        };
        let (c, d) = compare_with(&dir, &mixed_batches(64), &candle, forward);
        println!("tiny-embed, {isa:?} kernels: worst cosine {c:.8}, max abs diff {d:.2e}");
    }
}

/// A wider model: 3 heads of 32, intermediate 640 (K-blocked), random LayerNorm parameters,
/// tanh GELU, CLS pooling without normalisation, sequences up to 200 tokens.
fn wide_model(root: &Path) -> PathBuf {
    let spec = TinyBertSpec {
        vocab_words: None,
        hidden: 96,
        layers: 2,
        heads: 3,
        intermediate: 640,
        max_position: 256,
        max_seq_len: 200,
        pooling: "cls".into(),
        normalize: false,
    };
    let dir = write_bert_embedding(root, "wide", "1", &spec, 99).unwrap();
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut rng = SeededRng::new(5);
    for (name, t) in tensors.iter_mut() {
        if name.contains("LayerNorm") {
            let n = t.elem_count();
            let noise: Vec<f32> = rng.normal_vec(n, 0.3);
            let base = if name.ends_with("weight") { 1.0 } else { 0.0 };
            *t = Tensor::from_vec(
                noise.iter().map(|x| base + x).collect::<Vec<_>>(),
                t.shape(),
                &Device::Cpu,
            )
            .unwrap();
        }
    }
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["hidden_act"] = "geluapproximate".into(); // candle's name for the tanh GELU
    cfg["layer_norm_eps"] = 1e-5.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    dir
}

#[test]
fn wide_model_with_layer_norm_params_matches_candle() {
    let root = tempfile::tempdir().unwrap();
    let dir = wide_model(root.path());
    let batches =
        vec![vec![200, 3, 120, 64, 7], (0..24).map(|i| 2 + (i * 53) % 199).collect(), vec![1]];
    let (c, d) = compare(&dir, &batches);
    println!("wide: worst cosine {c:.8}, max abs diff {d:.2e}");
}

#[test]
fn packed_output_does_not_depend_on_batch_composition() {
    // The same sentence alone and inside a batch of others gives the same embedding (no
    // padding, no cross-sequence leakage), whether the batch runs as one operation-split
    // pass (few tokens) or as parallel groups of sequences (many tokens).
    let repo = demo_repo();
    let dir = repo.path().join("tiny-embed/1");
    let (packed, _) = runners(&dir);
    let vocab = vocab_size(&dir);
    let small: Vec<usize> = vec![30, 5, 64, 12];
    let large: Vec<usize> = (0..40).map(|i| 2 + (i * 13) % 63).collect();
    for lens in [small, large] {
        let batch = staging(&lens, vocab, 3);
        let all = packed.forward(&batch).unwrap();
        for (r, &n) in lens.iter().enumerate() {
            let mut one = HostStaging::default();
            one.begin_text(1, n, 0);
            one.row_ids_mut(0)
                .copy_from_slice(&batch.ids[r * batch.seq_len..r * batch.seq_len + n]);
            one.set_row_len(0, n);
            let alone = packed.forward(&one).unwrap();
            let d = alone
                .row(0)
                .iter()
                .zip(all.row(r))
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-6, "batch of {} rows, row {r}: {d}", lens.len());
        }
    }
}

#[test]
fn minilm_packed_matches_candle() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/minilm/1");
    if !dir.join("model.safetensors").is_file() {
        eprintln!(
            "skipping: models/minilm/1 not found; run scripts/fetch-minilm.sh to enable this test"
        );
        return;
    }
    let batches =
        vec![vec![19, 3, 256, 40, 12, 17, 25, 2], (0..32).map(|i| 8 + (i * 7) % 30).collect()];
    let (c, d) = compare(&dir, &batches);
    println!("minilm: worst cosine {c:.8}, max abs diff {d:.2e}");
}
