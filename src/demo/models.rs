//! Generators for small, seeded models: the bundled demo models (`sluice demo`, `sluice
//! models gen-demo`), **not** production models. Tests and benches reach them through
//! `tests/common/testkit.rs`, which adds what only they need.
//!
//! Sluice loads models from a repository directory laid out as
//!
//! ```text
//! <repo>/<name>/model.toml              serving = "<version>"
//! <repo>/<name>/<version>/sluice.toml   kind and kind-specific settings
//! <repo>/<name>/<version>/...           weights (model.safetensors), config.json, tokenizer.json
//! ```
//!
//! The functions here write such directories without downloading anything. Every byte
//! they write is a function of the arguments (spec, labels, seed): writing twice with the
//! same seed produces byte-identical files, so generated models can be compared, cached
//! and used as golden inputs. The weights are random (BERT-style initialisation), so the
//! models compute finite, input-dependent but meaningless outputs.
//!
//! * [`write_bert_embedding`]: `kind = "bert-embedding"` (candle BERT + WordPiece tokenizer).
//! * [`write_bert_classifier`]: `kind = "bert-classifier"` (Hugging Face
//!   `BertForSequenceClassification` tensor names, `bert.` prefix, pooler and classifier).
//! * [`write_mlp`]: `kind = "mlp"` (tabular multi-layer perceptron).
//! * [`write_demo_repository`]: the default demo repository (`tiny-embed`,
//!   `tiny-sentiment`, `tabular`).
//! * [`SeededRng`]: the SplitMix64 generator behind all of it, usable by tests.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;
use serde_json::{json, Value};

/// Why a model could not be generated (a bad spec, or writing its files failed).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GenerateError(String);

macro_rules! from_error {
    ($($t:ty),*) => {$(
        impl From<$t> for GenerateError {
            fn from(e: $t) -> Self {
                GenerateError(e.to_string())
            }
        }
    )*};
}
from_error!(safetensors::SafeTensorError, toml::ser::Error, serde_json::Error, std::io::Error);

/// The generators' result type.
pub type Result<T, E = GenerateError> = std::result::Result<T, E>;

/// `ensure!(cond, "...")`: returns a [`GenerateError`] with the message when `cond` is false.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(GenerateError(format!($($msg)+)));
        }
    };
}

/// `bail!("...")`: returns a [`GenerateError`] with the message.
macro_rules! bail {
    ($($msg:tt)+) => {
        return Err(GenerateError(format!($($msg)+)))
    };
}

/// Adds what was being done to an error (or a missing value) as it becomes a
/// [`GenerateError`].
trait Context<T> {
    fn context(self, what: &str) -> Result<T>;
    fn with_context<F: FnOnce() -> String>(self, what: F) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| GenerateError(format!("{what}: {e}")))
    }
    fn with_context<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.map_err(|e| GenerateError(format!("{}: {e}", what())))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: &str) -> Result<T> {
        self.ok_or_else(|| GenerateError(what.to_owned()))
    }
    fn with_context<F: FnOnce() -> String>(self, what: F) -> Result<T> {
        self.ok_or_else(|| GenerateError(what()))
    }
}

// ---------------------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------------------

/// A small seeded pseudo-random generator (SplitMix64) usable by tests, demos and the
/// generators in this module.
///
/// The sequence is a pure function of the seed and identical on every platform, so data
/// derived from it is reproducible. It is not cryptographically secure.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// Creates a generator whose sequence is fully determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// Returns the next 64 uniformly distributed bits (SplitMix64 step).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a uniform `f32` in `[0, 1)` (24 bits of precision, never 1.0).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Returns a uniform `f64` in `[0, 1)` (53 bits of precision, never 1.0).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Returns a uniform `f32` in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }

    /// Returns an approximately normal sample with mean 0 and standard deviation `std`.
    ///
    /// Uses the sum of 12 uniforms minus 6 (Irwin–Hall), which has unit variance and is
    /// bounded by ±6 std, so it never produces extreme outliers.
    pub fn normal(&mut self, std: f32) -> f32 {
        let mut sum = 0.0f64;
        for _ in 0..12 {
            sum += self.next_f64();
        }
        ((sum - 6.0) * std as f64) as f32
    }

    /// Returns `n` samples of [`SeededRng::normal`] with standard deviation `std`.
    pub fn normal_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal(std)).collect()
    }

    /// Returns `n` uniform samples in `[lo, hi)`.
    pub fn uniform_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

// ---------------------------------------------------------------------------------------
// Specs
// ---------------------------------------------------------------------------------------

/// Shape of a generated BERT model (and of its `sluice.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct TinyBertSpec {
    /// How many of the built-in common English words go into the vocabulary
    /// (`None`: all of them). Specials, characters and suffixes are always included.
    pub vocab_words: Option<usize>,
    /// Hidden size; must be a multiple of `heads`.
    pub hidden: usize,
    /// Number of encoder layers.
    pub layers: usize,
    /// Number of attention heads.
    pub heads: usize,
    /// Feed-forward (intermediate) size.
    pub intermediate: usize,
    /// `max_position_embeddings`: rows of the position embedding table.
    pub max_position: usize,
    /// `max_seq_len` in `sluice.toml` (tokens incl. `[CLS]`/`[SEP]`); `<= max_position`.
    pub max_seq_len: usize,
    /// `pooling` for `bert-embedding`: `"mean"` or `"cls"` (ignored by the classifier).
    pub pooling: String,
    /// `normalize` for `bert-embedding` (ignored by the classifier).
    pub normalize: bool,
}

impl Default for TinyBertSpec {
    /// hidden 32, 2 layers, 2 heads, intermediate 64, 128 positions, max_seq_len 64,
    /// mean pooling, normalized, full vocabulary.
    fn default() -> Self {
        Self {
            vocab_words: None,
            hidden: 32,
            layers: 2,
            heads: 2,
            intermediate: 64,
            max_position: 128,
            max_seq_len: 64,
            pooling: "mean".to_string(),
            normalize: true,
        }
    }
}

impl TinyBertSpec {
    fn validate(&self) -> Result<()> {
        ensure!(self.hidden > 0, "hidden must be > 0");
        ensure!(self.layers > 0, "layers must be > 0");
        ensure!(self.heads > 0, "heads must be > 0");
        ensure!(
            self.hidden.is_multiple_of(self.heads),
            "hidden ({}) must be a multiple of heads ({})",
            self.hidden,
            self.heads
        );
        ensure!(self.intermediate > 0, "intermediate must be > 0");
        ensure!(self.max_seq_len >= 2, "max_seq_len must be >= 2 ([CLS] and [SEP])");
        ensure!(
            self.max_seq_len <= self.max_position,
            "max_seq_len ({}) must be <= max_position ({})",
            self.max_seq_len,
            self.max_position
        );
        ensure!(
            matches!(self.pooling.as_str(), "mean" | "cls"),
            "pooling must be \"mean\" or \"cls\", got {:?}",
            self.pooling
        );
        Ok(())
    }
}

/// Shape of a generated tabular MLP (`kind = "mlp"`).
#[derive(Debug, Clone, PartialEq)]
pub struct MlpSpec {
    /// Number of input features.
    pub inputs: usize,
    /// Sizes of the hidden layers (may be empty: a single linear layer).
    pub hidden: Vec<usize>,
    /// Number of outputs.
    pub outputs: usize,
    /// Activation after every hidden layer: `relu | gelu | tanh | sigmoid | none`.
    /// The last layer always has `activation = "none"`.
    pub activation: String,
    /// Writes `output = "softmax"` when true, `output = "raw"` otherwise.
    pub softmax: bool,
}

impl Default for MlpSpec {
    /// The demo shape: 8 inputs, one hidden layer of 16, 3 outputs, relu, softmax.
    fn default() -> Self {
        Self {
            inputs: 8,
            hidden: vec![16],
            outputs: 3,
            activation: "relu".to_string(),
            softmax: true,
        }
    }
}

const MLP_ACTIVATIONS: &[&str] = &["relu", "gelu", "tanh", "sigmoid", "none"];

// ---------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------

/// The special tokens, in id order: `[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Common English words in the generated vocabulary (lowercase, in vocabulary order).
#[rustfmt::skip]
const COMMON_WORDS: &[&str] = &[
    // function words
    "the", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "are", "as",
    "with", "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by",
    "but", "not", "what", "all", "were", "we", "when", "your", "can", "said", "there",
    "use", "an", "each", "which", "she", "do", "how", "their", "if", "will", "up", "other",
    "about", "out", "many", "then", "them", "these", "so", "some", "her", "would", "make",
    "like", "him", "into", "time", "has", "look", "two", "more", "write", "go", "see",
    "number", "no", "way", "could", "people", "my", "than", "first", "water", "been",
    "call", "who", "its", "now", "find", "long", "down", "day", "did", "get", "come",
    "made", "may", "part", "over", "new", "after", "very", "just", "me", "you", "he", "our",
    "us", "any", "only", "also", "here", "where", "why", "because", "before", "through",
    "under", "between", "again", "never", "always", "often", "still", "even", "most",
    "much", "such", "own", "same", "few", "every", "both", "while", "should", "must",
    "might", "does", "done", "being", "am", "too", "off", "well", "back", "there", "those",
    "yes", "ok",
    // nouns
    "year", "world", "life", "hand", "home", "house", "work", "school", "place", "thing",
    "man", "woman", "child", "family", "friend", "city", "country", "name", "word", "story",
    "book", "car", "road", "food", "money", "game", "music", "movie", "film", "show",
    "service", "product", "price", "order", "customer", "support", "team", "company",
    "data", "model", "system", "question", "answer", "problem", "idea", "fox", "dog", "cat",
    "bird", "tree", "sun", "night", "morning", "week", "month", "hour", "minute", "room",
    "door", "phone", "email", "app", "website", "quality", "experience", "delivery",
    "staff", "hotel", "restaurant", "coffee",
    // verbs
    "say", "know", "think", "take", "want", "give", "tell", "work", "feel", "try", "leave",
    "put", "mean", "keep", "let", "begin", "help", "talk", "turn", "start", "run", "move",
    "live", "believe", "bring", "happen", "buy", "pay", "send", "wait", "read", "play",
    "eat", "love", "hate", "like", "need", "recommend", "return", "jump", "walk", "open",
    "close", "stop", "arrive", "break", "fix", "expect",
    // adjectives and adverbs
    "good", "great", "best", "better", "bad", "worse", "worst", "terrible", "awful",
    "excellent", "amazing", "wonderful", "fantastic", "nice", "fine", "poor", "happy",
    "sad", "angry", "slow", "fast", "quick", "lazy", "brown", "red", "blue", "green",
    "black", "white", "big", "small", "little", "old", "young", "high", "low", "easy",
    "hard", "cheap", "expensive", "broken", "late", "early", "clean", "dirty", "friendly",
    "rude", "helpful", "useless", "boring", "interesting", "beautiful", "ugly", "right",
    "wrong", "true", "false", "really", "quite", "almost", "pretty", "totally",
    "absolutely", "ever", "never", "neutral", "positive", "negative",
];

/// Subword suffixes (already `##`-prefixed) in the generated vocabulary.
#[rustfmt::skip]
const SUFFIXES: &[&str] = &[
    "##s", "##es", "##ing", "##ed", "##ly", "##er", "##est", "##tion", "##ment", "##ness", "##ful",
    "##less", "##able", "##al", "##y", "##ers", "##ity",
];

/// Returns the generated WordPiece vocabulary in id order (index = token id).
///
/// Order: the [`SPECIAL_TOKENS`], letters `a`–`z`, digits, ASCII punctuation, `##`
/// letters and digits, common English words (the first `vocab_words` of them, or all),
/// then `##` suffixes. Duplicates are dropped (first occurrence wins).
pub fn bert_vocab(vocab_words: Option<usize>) -> Vec<String> {
    fn push(seen: &mut HashSet<String>, vocab: &mut Vec<String>, token: String) {
        if seen.insert(token.clone()) {
            vocab.push(token);
        }
    }
    let mut seen = HashSet::new();
    let mut vocab = Vec::new();
    for special in SPECIAL_TOKENS {
        push(&mut seen, &mut vocab, special.to_string());
    }
    let letters_digits: Vec<char> = ('a'..='z').chain('0'..='9').collect();
    for &c in &letters_digits {
        push(&mut seen, &mut vocab, c.to_string());
    }
    for c in (0x21u8..0x7f).map(char::from).filter(char::is_ascii_punctuation) {
        push(&mut seen, &mut vocab, c.to_string());
    }
    for &c in &letters_digits {
        push(&mut seen, &mut vocab, format!("##{c}"));
    }
    let mut words = 0usize;
    let limit = vocab_words.unwrap_or(usize::MAX);
    for word in COMMON_WORDS {
        if words >= limit {
            break;
        }
        if !seen.contains(*word) {
            words += 1;
        }
        push(&mut seen, &mut vocab, word.to_string());
    }
    for suffix in SUFFIXES {
        push(&mut seen, &mut vocab, suffix.to_string());
    }
    vocab
}

/// Builds the Hugging Face `tokenizer.json` document for a BERT WordPiece tokenizer over
/// `vocab` (index = id; must start with the [`SPECIAL_TOKENS`]).
///
/// Lowercasing BERT normalizer, BERT pre-tokenizer, `[CLS] $A [SEP]` template
/// (`[CLS] $A [SEP] $B:1 [SEP]:1` for pairs), WordPiece decoder, no padding or truncation.
pub fn bert_tokenizer_json(vocab: &[String]) -> Result<Value> {
    for (id, special) in SPECIAL_TOKENS.iter().enumerate() {
        ensure!(
            vocab.get(id).map(String::as_str) == Some(*special),
            "vocabulary must start with the special tokens; id {id} should be {special}"
        );
    }
    let id_of = |token: &str| vocab.iter().position(|t| t == token).unwrap() as u32;
    let added_tokens: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({
                "id": id,
                "content": content,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": true,
            })
        })
        .collect();
    let mut vocab_map = serde_json::Map::new();
    for (id, token) in vocab.iter().enumerate() {
        vocab_map.insert(token.clone(), json!(id));
    }
    let special =
        |content: &str| json!({ "id": content, "ids": [id_of(content)], "tokens": [content] });
    let piece =
        |token: &str, type_id: u32| json!({ "SpecialToken": { "id": token, "type_id": type_id } });
    let seq = |id: &str, type_id: u32| json!({ "Sequence": { "id": id, "type_id": type_id } });
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": {
            "type": "BertNormalizer",
            "clean_text": true,
            "handle_chinese_chars": true,
            "strip_accents": null,
            "lowercase": true,
        },
        "pre_tokenizer": { "type": "BertPreTokenizer" },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [piece("[CLS]", 0), seq("A", 0), piece("[SEP]", 0)],
            "pair": [piece("[CLS]", 0), seq("A", 0), piece("[SEP]", 0), seq("B", 1), piece("[SEP]", 1)],
            "special_tokens": {
                "[CLS]": special("[CLS]"),
                "[SEP]": special("[SEP]"),
            },
        },
        "decoder": { "type": "WordPiece", "prefix": "##", "cleanup": true },
        "model": {
            "type": "WordPiece",
            "unk_token": "[UNK]",
            "continuing_subword_prefix": "##",
            "max_input_chars_per_word": 100,
            "vocab": Value::Object(vocab_map),
        },
    }))
}

// ---------------------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------------------

/// Named F32 tensors collected in generation order.
#[derive(Default)]
struct Tensors {
    items: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Tensors {
    fn add(&mut self, name: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        self.items.push((name.into(), shape, data));
    }

    fn normal(
        &mut self,
        rng: &mut SeededRng,
        name: impl Into<String>,
        shape: Vec<usize>,
        std: f32,
    ) {
        let n = shape.iter().product();
        self.add(name, shape, rng.normal_vec(n, std));
    }

    fn constant(&mut self, name: impl Into<String>, shape: Vec<usize>, value: f32) {
        let n = shape.iter().product();
        self.add(name, shape, vec![value; n]);
    }

    /// A Linear layer in PyTorch layout: weight `[out, in]` with std `1/sqrt(in)` (so
    /// activations keep their scale through the layer), bias `[out]` with std
    /// [`BERT_INIT_STD`].
    fn linear(&mut self, rng: &mut SeededRng, prefix: &str, inp: usize, out: usize) {
        self.normal(rng, format!("{prefix}.weight"), vec![out, inp], 1.0 / (inp as f32).sqrt());
        self.normal(rng, format!("{prefix}.bias"), vec![out], BERT_INIT_STD);
    }

    fn layer_norm(&mut self, prefix: &str, size: usize) {
        self.constant(format!("{prefix}.weight"), vec![size], 1.0);
        self.constant(format!("{prefix}.bias"), vec![size], 0.0);
    }

    /// Serializes to safetensors bytes (deterministic: safetensors orders tensors itself
    /// and the metadata has a single entry).
    fn to_safetensors(&self) -> Result<Vec<u8>> {
        let bytes: Vec<(&str, &[usize], Vec<u8>)> = self
            .items
            .iter()
            .map(|(name, shape, data)| {
                let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (name.as_str(), shape.as_slice(), raw)
            })
            .collect();
        let mut views = Vec::with_capacity(bytes.len());
        for (name, shape, raw) in &bytes {
            views.push((*name, TensorView::new(Dtype::F32, shape.to_vec(), raw)?));
        }
        let metadata = [("format".to_string(), "pt".to_string())].into_iter().collect();
        safetensors::serialize(views, Some(metadata)).context("serializing tensors")
    }
}

/// Standard deviation of embeddings and biases (BERT's `initializer_range`).
const BERT_INIT_STD: f32 = 0.02;

/// Adds the BERT embeddings and encoder tensors (candle `BertModel` names) under `prefix`.
fn bert_body(
    t: &mut Tensors,
    rng: &mut SeededRng,
    prefix: &str,
    spec: &TinyBertSpec,
    vocab_size: usize,
) {
    let h = spec.hidden;
    let p = |s: &str| format!("{prefix}{s}");
    t.normal(rng, p("embeddings.word_embeddings.weight"), vec![vocab_size, h], BERT_INIT_STD);
    t.normal(
        rng,
        p("embeddings.position_embeddings.weight"),
        vec![spec.max_position, h],
        BERT_INIT_STD,
    );
    t.normal(rng, p("embeddings.token_type_embeddings.weight"), vec![2, h], BERT_INIT_STD);
    t.layer_norm(&p("embeddings.LayerNorm"), h);
    for i in 0..spec.layers {
        let l = p(&format!("encoder.layer.{i}."));
        for proj in ["query", "key", "value"] {
            t.linear(rng, &format!("{l}attention.self.{proj}"), h, h);
        }
        t.linear(rng, &format!("{l}attention.output.dense"), h, h);
        t.layer_norm(&format!("{l}attention.output.LayerNorm"), h);
        t.linear(rng, &format!("{l}intermediate.dense"), h, spec.intermediate);
        t.linear(rng, &format!("{l}output.dense"), spec.intermediate, h);
        t.layer_norm(&format!("{l}output.LayerNorm"), h);
    }
}

/// `config.json` for candle's `bert::Config`.
fn bert_config_json(spec: &TinyBertSpec, vocab_size: usize, labels: Option<&[&str]>) -> Value {
    let mut config = json!({
        "model_type": "bert",
        "architectures": [if labels.is_some() { "BertForSequenceClassification" } else { "BertModel" }],
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "intermediate_size": spec.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": spec.max_position,
        "type_vocab_size": 2,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "use_cache": false,
        "classifier_dropout": null,
    });
    if let Some(labels) = labels {
        let id2label: BTreeMap<String, &str> =
            labels.iter().enumerate().map(|(i, l)| (i.to_string(), *l)).collect();
        let label2id: BTreeMap<&str, usize> =
            labels.iter().enumerate().map(|(i, l)| (*l, i)).collect();
        config["id2label"] = json!(id2label);
        config["label2id"] = json!(label2id);
    }
    config
}

// ---------------------------------------------------------------------------------------
// sluice.toml documents
// ---------------------------------------------------------------------------------------

#[derive(Serialize)]
struct BertEmbeddingToml<'a> {
    kind: &'a str,
    max_seq_len: usize,
    pooling: &'a str,
    normalize: bool,
}

#[derive(Serialize)]
struct BertClassifierToml<'a> {
    kind: &'a str,
    max_seq_len: usize,
    labels: &'a [&'a str],
}

#[derive(Serialize)]
struct MlpToml<'a> {
    kind: &'a str,
    inputs: usize,
    output: &'a str,
    layers: Vec<MlpLayerToml>,
}

#[derive(Serialize)]
struct MlpLayerToml {
    weight: String,
    bias: String,
    activation: String,
}

fn toml_doc<T: Serialize>(header: &str, doc: &T) -> Result<String> {
    Ok(format!("{header}{}", toml::to_string(doc)?))
}

fn header(kind: &str, seed: u64) -> String {
    format!("# Generated by sluice::demo::models ({kind}, seed {seed}): random weights, for tests and demos only.\n")
}

// ---------------------------------------------------------------------------------------
// Filesystem
// ---------------------------------------------------------------------------------------

fn check_component(what: &str, value: &str) -> Result<()> {
    ensure!(!value.is_empty(), "{what} must not be empty");
    ensure!(
        value != "." && value != ".." && !value.contains(['/', '\\']) && !value.contains('\0'),
        "{what} {value:?} must be a single path component"
    );
    Ok(())
}

/// Writes `bytes` to `path` via a temporary sibling and a rename, so readers never see a
/// half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name =
        path.file_name().with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

fn version_dir(repo: &Path, name: &str, version: &str) -> Result<PathBuf> {
    check_component("model name", name)?;
    check_component("version", version)?;
    let dir = repo.join(name).join(version);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Writes `model.toml` pointing at `version` unless the model already has one.
fn default_serving(repo: &Path, name: &str, version: &str) -> Result<()> {
    if !repo.join(name).join("model.toml").exists() {
        set_serving(repo, name, version)?;
    }
    Ok(())
}

fn write_bert_files(dir: &Path, tensors: &Tensors, config: &Value, vocab: &[String]) -> Result<()> {
    write_atomic(
        &dir.join("config.json"),
        format!("{}\n", serde_json::to_string_pretty(config)?).as_bytes(),
    )?;
    let tokenizer = bert_tokenizer_json(vocab)?;
    write_atomic(
        &dir.join("tokenizer.json"),
        format!("{}\n", serde_json::to_string_pretty(&tokenizer)?).as_bytes(),
    )?;
    write_atomic(&dir.join("model.safetensors"), &tensors.to_safetensors()?)
}

// ---------------------------------------------------------------------------------------
// Public generators
// ---------------------------------------------------------------------------------------

/// Writes a `bert-embedding` model to `<repo>/<name>/<version>/` and returns that
/// directory: `sluice.toml`, `config.json`, `tokenizer.json` and `model.safetensors`
/// (candle `BertModel` tensor names, no prefix, F32). Embeddings and biases are drawn with
/// std 0.02 (BERT's `initializer_range`), linear weights with std `1/sqrt(fan_in)` so that
/// attention actually mixes tokens and outputs depend on the whole input; LayerNorms are
/// weight 1, bias 0.
///
/// Existing files are overwritten; `<repo>/<name>/model.toml` is created with
/// `serving = "<version>"` if it does not exist yet. Byte-identical for equal arguments.
pub fn write_bert_embedding(
    repo: &Path,
    name: &str,
    version: &str,
    spec: &TinyBertSpec,
    seed: u64,
) -> Result<PathBuf> {
    spec.validate()?;
    let dir = version_dir(repo, name, version)?;
    let vocab = bert_vocab(spec.vocab_words);
    let mut rng = SeededRng::new(seed);
    let mut tensors = Tensors::default();
    bert_body(&mut tensors, &mut rng, "", spec, vocab.len());
    let config = bert_config_json(spec, vocab.len(), None);
    write_bert_files(&dir, &tensors, &config, &vocab)?;
    let doc = BertEmbeddingToml {
        kind: "bert-embedding",
        max_seq_len: spec.max_seq_len,
        pooling: &spec.pooling,
        normalize: spec.normalize,
    };
    write_atomic(
        &dir.join("sluice.toml"),
        toml_doc(&header("bert-embedding", seed), &doc)?.as_bytes(),
    )?;
    default_serving(repo, name, version)?;
    Ok(dir)
}

/// Writes a `bert-classifier` model to `<repo>/<name>/<version>/` and returns that
/// directory. Same files as [`write_bert_embedding`], but the BERT tensors are prefixed
/// with `bert.` (Hugging Face `BertForSequenceClassification` layout) and the file adds
/// `bert.pooler.dense.{weight [hidden, hidden], bias}` and
/// `classifier.{weight [labels, hidden], bias [labels]}`; `sluice.toml` lists `labels`
/// (one per row of `classifier.weight`) and `config.json` carries `id2label`/`label2id`.
///
/// Initialisation as in [`write_bert_embedding`] (the pooler and classifier are linear
/// layers too), so class probabilities visibly depend on the input. Labels must be
/// non-empty and unique.
pub fn write_bert_classifier(
    repo: &Path,
    name: &str,
    version: &str,
    spec: &TinyBertSpec,
    labels: &[&str],
    seed: u64,
) -> Result<PathBuf> {
    spec.validate()?;
    ensure!(!labels.is_empty(), "a classifier needs at least one label");
    let unique: HashSet<&str> = labels.iter().copied().collect();
    ensure!(unique.len() == labels.len(), "labels must be unique: {labels:?}");
    if let Some(empty) = labels.iter().position(|l| l.is_empty()) {
        bail!("label {empty} is empty");
    }
    let dir = version_dir(repo, name, version)?;
    let vocab = bert_vocab(spec.vocab_words);
    let mut rng = SeededRng::new(seed);
    let mut tensors = Tensors::default();
    bert_body(&mut tensors, &mut rng, "bert.", spec, vocab.len());
    tensors.linear(&mut rng, "bert.pooler.dense", spec.hidden, spec.hidden);
    tensors.linear(&mut rng, "classifier", spec.hidden, labels.len());
    let config = bert_config_json(spec, vocab.len(), Some(labels));
    write_bert_files(&dir, &tensors, &config, &vocab)?;
    let doc = BertClassifierToml { kind: "bert-classifier", max_seq_len: spec.max_seq_len, labels };
    write_atomic(
        &dir.join("sluice.toml"),
        toml_doc(&header("bert-classifier", seed), &doc)?.as_bytes(),
    )?;
    default_serving(repo, name, version)?;
    Ok(dir)
}

/// Writes an `mlp` (tabular) model to `<repo>/<name>/<version>/` and returns that
/// directory: `sluice.toml` (`inputs`, `output`, one `[[layers]]` table per layer) and
/// `model.safetensors` with `fc{i}.weight` `[out, in]` and `fc{i}.bias` `[out]`
/// (1-based `i`), initialised uniform in `±1/sqrt(in)` like PyTorch's `Linear`.
///
/// Hidden layers use `spec.activation`, the last layer `none`. `model.toml` is created
/// if missing. Byte-identical for equal arguments.
pub fn write_mlp(
    repo: &Path,
    name: &str,
    version: &str,
    spec: &MlpSpec,
    seed: u64,
) -> Result<PathBuf> {
    ensure!(spec.inputs > 0, "inputs must be > 0");
    ensure!(spec.outputs > 0, "outputs must be > 0");
    ensure!(spec.hidden.iter().all(|&h| h > 0), "hidden sizes must be > 0");
    ensure!(
        MLP_ACTIVATIONS.contains(&spec.activation.as_str()),
        "activation must be one of {MLP_ACTIVATIONS:?}, got {:?}",
        spec.activation
    );
    let dir = version_dir(repo, name, version)?;
    let mut rng = SeededRng::new(seed);
    let mut tensors = Tensors::default();
    let sizes: Vec<usize> = std::iter::once(spec.inputs)
        .chain(spec.hidden.iter().copied())
        .chain(std::iter::once(spec.outputs))
        .collect();
    let mut layers = Vec::new();
    for (i, pair) in sizes.windows(2).enumerate() {
        let (inp, out) = (pair[0], pair[1]);
        let bound = 1.0 / (inp as f32).sqrt();
        let (weight, bias) = (format!("fc{}.weight", i + 1), format!("fc{}.bias", i + 1));
        tensors.add(weight.clone(), vec![out, inp], rng.uniform_vec(out * inp, -bound, bound));
        tensors.add(bias.clone(), vec![out], rng.uniform_vec(out, -bound, bound));
        let last = i + 2 == sizes.len();
        layers.push(MlpLayerToml {
            weight,
            bias,
            activation: if last { "none".to_string() } else { spec.activation.clone() },
        });
    }
    write_atomic(&dir.join("model.safetensors"), &tensors.to_safetensors()?)?;
    let doc = MlpToml {
        kind: "mlp",
        inputs: spec.inputs,
        output: if spec.softmax { "softmax" } else { "raw" },
        layers,
    };
    write_atomic(&dir.join("sluice.toml"), toml_doc(&header("mlp", seed), &doc)?.as_bytes())?;
    default_serving(repo, name, version)?;
    Ok(dir)
}

/// Sets `<repo>/<name>/model.toml` to `serving = "<version>"` (creating `<repo>/<name>`
/// if needed, replacing any previous content atomically).
pub fn set_serving(repo: &Path, name: &str, version: &str) -> Result<()> {
    check_component("model name", name)?;
    check_component("version", version)?;
    let dir = repo.join(name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    #[derive(Serialize)]
    struct ModelToml<'a> {
        serving: &'a str,
    }
    write_atomic(
        &dir.join("model.toml"),
        toml::to_string(&ModelToml { serving: version })?.as_bytes(),
    )
}

/// Seed of the demo repository's `tiny-embed` model.
pub const DEMO_EMBED_SEED: u64 = 0x5EED_0001;
/// Seed of the demo repository's `tiny-sentiment` model.
pub const DEMO_SENTIMENT_SEED: u64 = 0x5EED_0002;
/// Seed of the demo repository's `tabular` model.
pub const DEMO_TABULAR_SEED: u64 = 0x5EED_0003;
/// Labels of the demo repository's `tiny-sentiment` model.
pub const DEMO_SENTIMENT_LABELS: [&str; 3] = ["negative", "neutral", "positive"];

/// Writes the default demo repository: `tiny-embed` (bert-embedding, version 1),
/// `tiny-sentiment` (bert-classifier, labels negative/neutral/positive, version 1),
/// `tabular` (mlp, 8 inputs, hidden `[16]`, 3 outputs, relu, softmax, version 1), each
/// with `model.toml` serving `"1"`. Idempotent (overwrites, byte-identical every time).
pub fn write_demo_repository(repo: &Path) -> Result<()> {
    let bert = TinyBertSpec::default();
    write_bert_embedding(repo, "tiny-embed", "1", &bert, DEMO_EMBED_SEED)?;
    set_serving(repo, "tiny-embed", "1")?;
    write_bert_classifier(
        repo,
        "tiny-sentiment",
        "1",
        &bert,
        &DEMO_SENTIMENT_LABELS,
        DEMO_SENTIMENT_SEED,
    )?;
    set_serving(repo, "tiny-sentiment", "1")?;
    write_mlp(repo, "tabular", "1", &MlpSpec::default(), DEMO_TABULAR_SEED)?;
    set_serving(repo, "tabular", "1")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_seed_dependent() {
        let a: Vec<u64> = {
            let mut r = SeededRng::new(42);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SeededRng::new(42);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = SeededRng::new(43);
            (0..8).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
        // SplitMix64 reference value for seed 0.
        assert_eq!(SeededRng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn rng_ranges_and_moments() {
        let mut r = SeededRng::new(7);
        for _ in 0..10_000 {
            let f = r.next_f32();
            assert!((0.0..1.0).contains(&f));
        }
        let n = 20_000;
        let xs = r.normal_vec(n, 0.02);
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.001, "mean {mean}");
        assert!((var.sqrt() - 0.02).abs() < 0.001, "std {}", var.sqrt());
    }

    #[test]
    fn vocab_layout() {
        let v = bert_vocab(None);
        assert_eq!(&v[..5], &SPECIAL_TOKENS.map(String::from));
        let unique: HashSet<&String> = v.iter().collect();
        assert_eq!(unique.len(), v.len());
        for t in ["a", "z", "0", "9", "!", "~", "##a", "##9", "the", "fox", "##ing", "##s"] {
            assert!(v.iter().any(|x| x == t), "missing {t}");
        }
        let words =
            v.iter().filter(|t| t.len() > 1 && !t.starts_with('[') && !t.starts_with("##")).count();
        assert!(words >= 300, "only {words} words");
        let small = bert_vocab(Some(10));
        assert_eq!(small.len(), v.len() - (words - 10));
        assert!(small.iter().any(|x| x == "the"));
    }

    #[test]
    fn spec_validation() {
        assert!(TinyBertSpec::default().validate().is_ok());
        let bad = TinyBertSpec { hidden: 30, heads: 4, ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = TinyBertSpec { max_seq_len: 200, ..Default::default() };
        assert!(bad.validate().is_err());
        let bad = TinyBertSpec { pooling: "max".into(), ..Default::default() };
        assert!(bad.validate().is_err());
        assert!(check_component("name", "../x").is_err());
        assert!(check_component("name", "").is_err());
        assert!(check_component("name", "tiny-embed").is_ok());
    }
}
