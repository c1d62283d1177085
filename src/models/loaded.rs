//! A model version loaded on a device, ready to stage and run batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;

use super::bert::BertRunner;
use super::mlp::MlpRunner;
use super::spec::{ModelKind, ModelSpec};
use super::text::TextTokenizer;
use super::wordpiece::TokenScratch;
use super::ModelError;
use crate::core::{BatchOutput, HostStaging, ModelId};

/// What a model reads.
#[derive(Debug)]
pub enum ModelInput {
    /// Strings, tokenized and truncated to `max_seq_len` tokens.
    Text { tokenizer: TextTokenizer, max_seq_len: usize },
    /// Fixed-width feature vectors.
    Features { width: usize },
}

enum Runner {
    Bert(BertRunner),
    Mlp(MlpRunner),
}

/// One model version, loaded and warmed up.
pub struct LoadedModel {
    pub name: Arc<str>,
    pub version: Arc<str>,
    pub kind: ModelKind,
    pub dir: PathBuf,
    pub input: ModelInput,
    runner: Runner,
    /// Time to read weights and build the model.
    pub load_time: Duration,
    /// Time spent on warm-up batches.
    pub warmup_time: Duration,
    /// `[testing]` faults (fault-injection builds only; `None` otherwise).
    testing: Option<super::spec::TestingSpec>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadedModel({}/{} {})", self.name, self.version, self.kind.as_str())
    }
}

impl LoadedModel {
    /// Its name and version, as outcomes carry them.
    pub fn id(&self) -> ModelId {
        ModelId { name: self.name.clone(), version: self.version.clone() }
    }

    /// Loads the version directory `dir` (which holds `sluice.toml`) onto `device`, without warm-up.
    pub fn load(
        name: &str,
        version: &str,
        dir: &Path,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let started = Instant::now();
        let spec = ModelSpec::from_file(&dir.join("sluice.toml"))?;
        if let Some(t) = &spec.testing {
            std::thread::sleep(Duration::from_millis(t.load_delay_ms));
            if let Some(gate) = &t.load_gate {
                wait_for_gate(gate);
            }
        }
        let (input, runner) = match spec.kind {
            ModelKind::BertEmbedding | ModelKind::BertClassifier => {
                let bert = BertRunner::load(dir, &spec, device)?;
                let tokenizer = TextTokenizer::load(&dir.join("tokenizer.json"))?;
                let max_seq_len = spec.max_seq_len.unwrap_or(512).min(bert.max_position);
                (ModelInput::Text { tokenizer, max_seq_len }, Runner::Bert(bert))
            }
            ModelKind::Mlp => {
                let mlp = MlpRunner::load(dir, &spec, device)?;
                (ModelInput::Features { width: mlp.inputs }, Runner::Mlp(mlp))
            }
        };
        Ok(LoadedModel {
            name: name.into(),
            version: version.into(),
            kind: spec.kind,
            dir: dir.to_path_buf(),
            input,
            runner,
            load_time: started.elapsed(),
            warmup_time: Duration::ZERO,
            testing: spec.testing.clone(),
        })
    }

    /// Width of one output row.
    pub fn output_width(&self) -> usize {
        match &self.runner {
            Runner::Bert(b) => b.output_width(),
            Runner::Mlp(m) => m.outputs,
        }
    }

    /// The BERT runner of a text model (a CUDA lane drives its encoder on device tensors).
    pub fn bert(&self) -> Option<&BertRunner> {
        match &self.runner {
            Runner::Bert(b) => Some(b),
            Runner::Mlp(_) => None,
        }
    }

    /// Runs a staged batch.
    pub fn forward(&self, staging: &HostStaging) -> Result<BatchOutput, ModelError> {
        if staging.rows == 0 {
            return Err(ModelError::Inference("empty batch".into()));
        }
        if let Some(t) = &self.testing {
            injected_faults(t, staging)?;
        }
        self.compute(staging)
    }

    /// The model's computation, without `[testing]` faults (warm-up checks the model, not
    /// the faults a test injects into serving).
    fn compute(&self, staging: &HostStaging) -> Result<BatchOutput, ModelError> {
        match &self.runner {
            Runner::Bert(b) => b.forward(staging),
            Runner::Mlp(m) => m.forward(staging),
        }
    }

    /// Warms the model up with one synthetic batch per length bucket (text) or a few batch
    /// sizes (tabular), so the first real request does not pay for lazy initialisation, and
    /// checks the outputs are finite. Records the time taken in `warmup_time`.
    pub fn warm_up(&mut self, max_rows: usize) -> Result<(), ModelError> {
        let started = Instant::now();
        let mut st = HostStaging::default();
        let rows = max_rows.clamp(1, 8);
        match &self.input {
            ModelInput::Text { tokenizer, max_seq_len } => {
                let mut scratch = TokenScratch::default();
                let mut len = 8usize;
                loop {
                    let seq = len.min(*max_seq_len);
                    st.begin_text(rows, seq, tokenizer.pad_id());
                    // A repeated short word gives `seq` real tokens whatever the vocabulary.
                    let text = "a ".repeat(seq);
                    for r in 0..rows {
                        let n = tokenizer
                            .encode_into(&text, seq, &mut scratch, st.row_ids_mut(r))
                            .map_err(|e| ModelError::Inference(e.0))?;
                        st.set_row_len(r, n);
                    }
                    self.check_finite(&st)?;
                    if seq >= *max_seq_len {
                        break;
                    }
                    len *= 2;
                }
            }
            ModelInput::Features { width } => {
                for r in [1, rows] {
                    st.begin_features(r, *width);
                    st.features.iter_mut().enumerate().for_each(|(i, x)| *x = (i % 7) as f32 * 0.1);
                    self.check_finite(&st)?;
                }
            }
        }
        self.warmup_time = started.elapsed();
        Ok(())
    }

    fn check_finite(&self, st: &HostStaging) -> Result<(), ModelError> {
        let out = self.compute(st)?;
        if out.rows() != st.rows || out.data.iter().any(|x| !x.is_finite()) {
            return Err(ModelError::Load {
                name: self.name.to_string(),
                version: self.version.to_string(),
                reason: format!(
                    "warm-up produced {} rows for {} inputs or non-finite values",
                    out.rows(),
                    st.rows
                ),
            });
        }
        Ok(())
    }
}

/// Waits until `gate` exists, at most 10 minutes (`[testing]` faults only).
fn wait_for_gate(gate: &Path) {
    let until = Instant::now() + Duration::from_secs(600);
    while !gate.exists() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `[testing]` faults of a forward pass (models that have the table exist only in
/// builds with the `fault-injection` feature): a panic, or a hold until a gate file exists,
/// on a batch holding a row whose first feature is the marked value.
fn injected_faults(t: &super::spec::TestingSpec, staging: &HostStaging) -> Result<(), ModelError> {
    if let Some(flag) = &t.fail_while_exists {
        if flag.exists() {
            return Err(ModelError::Inference(format!(
                "[testing] fail_while_exists: {} exists",
                flag.display()
            )));
        }
    }
    let w = staging.width.max(1);
    let rows = || staging.features[..staging.rows * staging.width].chunks(w);
    if let Some(v) = t.panic_on_first_feature {
        if rows().any(|row| row[0] == v) {
            panic!("[testing] panic_on_first_feature = {v}: a row starts with it");
        }
    }
    if let (Some(v), Some(gate)) = (t.hold_on_first_feature, &t.hold_gate) {
        if rows().any(|row| row[0] == v) {
            wait_for_gate(gate);
        }
    }
    Ok(())
}
