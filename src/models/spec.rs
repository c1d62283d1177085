//! `sluice.toml`: what kind of model a version directory holds and how to run it.

use std::path::Path;

use serde::Deserialize;

use super::ModelError;

/// The model kinds Sluice can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// BERT-family encoder producing one pooled (optionally L2-normalised) vector per input.
    BertEmbedding,
    /// BERT encoder + pooler + classification head; outputs a label and softmax scores.
    BertClassifier,
    /// Dense layers over a fixed-width feature vector.
    Mlp,
}

impl ModelKind {
    /// The name used in `sluice.toml`, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::BertEmbedding => "bert-embedding",
            ModelKind::BertClassifier => "bert-classifier",
            ModelKind::Mlp => "mlp",
        }
    }
}

/// How token states are pooled into one vector per input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// Average over the tokens the attention mask keeps (sentence-transformers' default).
    #[default]
    Mean,
    /// The `[CLS]` token's state.
    Cls,
}

/// Activation after a dense layer of an `mlp` model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
    #[default]
    None,
}

/// What an `mlp` model does with its last layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MlpOutput {
    #[default]
    Raw,
    Softmax,
}

/// One dense layer of an `mlp` model: safetensors names of a `[out, in]` weight and `[out]` bias.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    pub weight: String,
    pub bias: Option<String>,
    #[serde(default)]
    pub activation: Activation,
}

/// The parsed `sluice.toml` of one model version.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub kind: ModelKind,
    /// BERT kinds: inputs are truncated to this many tokens, `[CLS]` and `[SEP]` included.
    pub max_seq_len: Option<usize>,
    #[serde(default)]
    pub pooling: Pooling,
    /// `bert-embedding`: L2-normalise the pooled vector (default true).
    pub normalize: Option<bool>,
    /// `bert-classifier`: one label per row of `classifier.weight`.
    #[serde(default)]
    pub labels: Vec<String>,
    /// `mlp`: width of the feature vector.
    pub inputs: Option<usize>,
    /// `mlp`: the dense layers, first to last.
    #[serde(default)]
    pub layers: Vec<LayerSpec>,
    /// `mlp`: raw output or softmax.
    #[serde(default)]
    pub output: MlpOutput,
    /// Test-only behaviour for the fault-injection tests; refused unless Sluice was built
    /// with the `fault-injection` feature.
    pub testing: Option<TestingSpec>,
}

/// `[testing]`: faults a test model injects (builds with the `fault-injection` feature only).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TestingSpec {
    /// Sleep this long while loading (a slow load).
    #[serde(default)]
    pub load_delay_ms: u64,
    /// `mlp`: panic on a batch holding a row whose first feature is exactly this value.
    pub panic_on_first_feature: Option<f32>,
    /// Wait while loading until this file exists (at most 10 minutes): a load the test
    /// holds open for as long as it needs.
    pub load_gate: Option<std::path::PathBuf>,
    /// `mlp`: a batch holding a row whose first feature is exactly this value waits inside
    /// the model until `hold_gate` exists (at most 10 minutes): a lane the test holds busy.
    pub hold_on_first_feature: Option<f32>,
    /// The file that releases held batches.
    pub hold_gate: Option<std::path::PathBuf>,
    /// Every batch fails (an inference error, as a device fault would) while this file
    /// exists: a version that breaks and recovers when the test says so.
    pub fail_while_exists: Option<std::path::PathBuf>,
}

impl ModelSpec {
    /// Reads and checks `sluice.toml`; errors name the file and the offending key.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Io { path: path.to_path_buf(), source: e })?;
        let spec: ModelSpec = toml::from_str(&text)
            .map_err(|e| ModelError::Spec { path: path.to_path_buf(), reason: e.to_string() })?;
        spec.check().map_err(|reason| ModelError::Spec { path: path.to_path_buf(), reason })?;
        Ok(spec)
    }

    fn check(&self) -> Result<(), String> {
        if self.testing.is_some() && !cfg!(feature = "fault-injection") {
            return Err("[testing]: test-only model behaviour; this build of Sluice does not have the fault-injection feature".into());
        }
        match self.kind {
            ModelKind::BertEmbedding | ModelKind::BertClassifier => {
                if let Some(n) = self.max_seq_len {
                    if n < 2 {
                        return Err(format!("max_seq_len: must be >= 2, got {n}"));
                    }
                }
                if self.kind == ModelKind::BertClassifier && self.labels.is_empty() {
                    return Err("labels: a bert-classifier needs at least one label".into());
                }
            }
            ModelKind::Mlp => {
                match self.inputs {
                    Some(0) | None => return Err("inputs: an mlp needs inputs >= 1".into()),
                    Some(_) => {}
                }
                if self.layers.is_empty() {
                    return Err("layers: an mlp needs at least one [[layers]] entry".into());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ModelSpec, String> {
        let spec: ModelSpec = toml::from_str(s).map_err(|e| e.to_string())?;
        spec.check()?;
        Ok(spec)
    }

    #[test]
    fn parses_each_kind() {
        let e = parse(
            "kind = \"bert-embedding\"\nmax_seq_len = 256\npooling = \"mean\"\nnormalize = true",
        )
        .unwrap();
        assert_eq!(e.kind, ModelKind::BertEmbedding);
        assert_eq!(e.max_seq_len, Some(256));
        let c = parse("kind = \"bert-classifier\"\nlabels = [\"a\", \"b\"]").unwrap();
        assert_eq!(c.labels, vec!["a", "b"]);
        let m = parse(
            "kind = \"mlp\"\ninputs = 4\noutput = \"softmax\"\n[[layers]]\nweight = \"w\"\nbias = \"b\"\nactivation = \"relu\"",
        )
        .unwrap();
        assert_eq!(m.layers[0].activation, Activation::Relu);
        assert_eq!(m.output, MlpOutput::Softmax);
    }

    #[test]
    fn rejects_bad_specs_with_the_key() {
        assert!(parse("kind = \"gpt\"").unwrap_err().contains("kind"));
        assert!(parse("kind = \"mlp\"\ninputs = 3").unwrap_err().contains("layers"));
        assert!(parse("kind = \"bert-classifier\"").unwrap_err().contains("labels"));
        assert!(parse("kind = \"bert-embedding\"\nmax_seq_len = 1")
            .unwrap_err()
            .contains("max_seq_len"));
        assert!(parse("kind = \"bert-embedding\"\nbogus = 1").unwrap_err().contains("bogus"));
    }
}
