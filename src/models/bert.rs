//! BERT-family encoders: sentence embeddings and sequence classification.
//!
//! On the CPU the encoder is [`PackedBert`] (padding-free, see `packed_bert/`); on other
//! devices it is candle's `BertModel` over the padded, masked batch. The heads (pooling, or
//! pooler + classifier + softmax) are the same for both.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};
use candle_transformers::models::bert::{BertModel, Config as BertConfig};

use super::packed_bert::{pool_packed, PackedBert, PackedConfig};
use super::spec::{ModelKind, ModelSpec, Pooling};
use super::ModelError;
use crate::core::HostStaging;
use crate::core::{BatchOutput, OutputKind};

/// What runs on top of the encoder.
enum Head {
    Embedding { pooling: Pooling, normalize: bool },
    Classifier { pooler: Option<Linear>, classifier: Linear, labels: Arc<[String]> },
}

/// Which encoder implementation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BertBackend {
    /// [`PackedBert`] on the CPU, candle's `BertModel` elsewhere.
    #[default]
    Auto,
    /// candle's `BertModel` (padded batch, attention mask) on any device.
    Candle,
    /// [`PackedBert`]; CPU only.
    Packed,
}

enum Encoder {
    Candle(BertModel),
    Packed(PackedBert),
}

/// A BERT encoder with its head, on one device.
pub struct BertRunner {
    encoder: Encoder,
    head: Head,
    device: Device,
    hidden: usize,
    /// Longest sequence the position embeddings allow.
    pub max_position: usize,
}

fn load_err(dir: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Spec { path: dir.to_path_buf(), reason: reason.to_string() }
}

impl BertRunner {
    /// Loads `config.json` and `model.safetensors` from `dir`, with the default encoder for
    /// `device`.
    pub fn load(dir: &Path, spec: &ModelSpec, device: &Device) -> Result<Self, ModelError> {
        Self::load_with(dir, spec, device, BertBackend::Auto)
    }

    /// Loads with a chosen encoder implementation.
    pub fn load_with(
        dir: &Path,
        spec: &ModelSpec,
        device: &Device,
        backend: BertBackend,
    ) -> Result<Self, ModelError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| ModelError::Io { path: cfg_path.clone(), source: e })?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| load_err(&cfg_path, e))?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(load_err(&weights, "missing model.safetensors"));
        }
        // SAFETY: the file is mapped read-only; Sluice never writes to model files while serving,
        // and operators replace a version by adding a new version directory.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
            .map_err(|e| load_err(&weights, e))?;
        let packed = match backend {
            BertBackend::Auto => device.is_cpu(),
            BertBackend::Candle => false,
            BertBackend::Packed if device.is_cpu() => true,
            BertBackend::Packed => {
                return Err(load_err(dir, "the packed BERT encoder runs on the CPU only"))
            }
        };
        let encoder = if packed {
            let model = PackedBert::load(
                &weights,
                PackedConfig::from_bert(&config),
                config.model_type.as_deref(),
            )
            .map_err(|e| load_err(&weights, e))?;
            Encoder::Packed(model)
        } else {
            Encoder::Candle(
                BertModel::load(vb.clone(), &config).map_err(|e| load_err(&weights, e))?,
            )
        };
        let hidden = config.hidden_size;
        let head = match spec.kind {
            ModelKind::BertEmbedding => {
                Head::Embedding { pooling: spec.pooling, normalize: spec.normalize.unwrap_or(true) }
            }
            ModelKind::BertClassifier => {
                let n = spec.labels.len();
                let classifier =
                    candle_nn::linear(hidden, n, vb.pp("classifier")).map_err(|e| {
                        load_err(&weights, format!("classifier head with {n} labels: {e}"))
                    })?;
                let prefix = config.model_type.clone().unwrap_or_else(|| "bert".into());
                let pooler =
                    candle_nn::linear(hidden, hidden, vb.pp(format!("{prefix}.pooler.dense")))
                        .or_else(|_| candle_nn::linear(hidden, hidden, vb.pp("pooler.dense")))
                        .ok();
                Head::Classifier { pooler, classifier, labels: spec.labels.clone().into() }
            }
            ModelKind::Mlp => return Err(load_err(dir, "not a BERT model")),
        };
        Ok(BertRunner {
            encoder,
            head,
            device: device.clone(),
            hidden,
            max_position: config.max_position_embeddings,
        })
    }

    /// Width of one output row.
    pub fn output_width(&self) -> usize {
        match &self.head {
            Head::Embedding { .. } => self.hidden,
            Head::Classifier { labels, .. } => labels.len(),
        }
    }

    /// Hidden size of the encoder.
    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// `(pooling, normalize)` of an embedding head; `None` for a classifier.
    pub fn embedding_head(&self) -> Option<(Pooling, bool)> {
        match &self.head {
            Head::Embedding { pooling, normalize } => Some((*pooling, *normalize)),
            Head::Classifier { .. } => None,
        }
    }

    /// `[rows, seq, hidden]` token states of candle's encoder for inputs already on the
    /// runner's device (a CUDA lane stages them there itself). Fails for the packed encoder.
    pub fn encode_states(
        &self,
        ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
    ) -> Result<Tensor, ModelError> {
        match &self.encoder {
            Encoder::Candle(model) => Ok(model.forward(ids, type_ids, Some(mask))?),
            Encoder::Packed(_) => Err(ModelError::Inference(
                "the packed encoder takes host staging, not device tensors".into(),
            )),
        }
    }

    /// Whether the padding-free encoder runs (it computes only the real tokens).
    pub fn is_packed(&self) -> bool {
        matches!(self.encoder, Encoder::Packed(_))
    }

    /// Runs the staged batch.
    pub fn forward(&self, st: &HostStaging) -> Result<BatchOutput, ModelError> {
        match &self.encoder {
            Encoder::Packed(model) => self.forward_packed(model, st),
            Encoder::Candle(model) => self.forward_candle(model, st),
        }
    }

    fn forward_packed(
        &self,
        model: &PackedBert,
        st: &HostStaging,
    ) -> Result<BatchOutput, ModelError> {
        let (rows, h) = (st.rows, self.hidden);
        let mut data = vec![0f32; rows * h];
        let (mean, normalize) = match &self.head {
            Head::Embedding { pooling, normalize } => {
                (matches!(pooling, Pooling::Mean), *normalize)
            }
            Head::Classifier { .. } => (false, false),
        };
        model
            .encode(st, |states, offsets| {
                pool_packed(states, offsets, h, mean, normalize, &mut data)
            })
            .map_err(|e| ModelError::Inference(e.0))?;
        match &self.head {
            Head::Embedding { .. } => {
                Ok(BatchOutput { data, width: h, kind: OutputKind::Embedding })
            }
            Head::Classifier { .. } => {
                let cls = Tensor::from_vec(data, (rows, h), &self.device)?;
                self.classify(cls)
            }
        }
    }

    fn forward_candle(
        &self,
        model: &BertModel,
        st: &HostStaging,
    ) -> Result<BatchOutput, ModelError> {
        let (rows, seq) = (st.rows, st.seq_len);
        let n = rows * seq;
        let ids = Tensor::from_slice(&st.ids[..n], (rows, seq), &self.device)?;
        let mask = Tensor::from_slice(&st.mask[..n], (rows, seq), &self.device)?;
        let type_ids = ids.zeros_like()?;
        let states = model.forward(&ids, &type_ids, Some(&mask))?;
        match &self.head {
            Head::Embedding { pooling, normalize } => {
                let flat = states.flatten_all()?.to_vec1::<f32>()?;
                let mut data = vec![0f32; rows * self.hidden];
                pool_rows(
                    &flat,
                    &st.row_tokens[..rows],
                    seq,
                    self.hidden,
                    *pooling,
                    *normalize,
                    &mut data,
                );
                Ok(BatchOutput { data, width: self.hidden, kind: OutputKind::Embedding })
            }
            Head::Classifier { .. } => self.classify(states.narrow(1, 0, 1)?.squeeze(1)?),
        }
    }

    /// Pooler (dense + tanh, when the checkpoint has one), classifier and softmax over the
    /// `[rows, hidden]` `[CLS]` states.
    fn classify(&self, cls: Tensor) -> Result<BatchOutput, ModelError> {
        // The [CLS] rows are a strided view of the token states; candle's CUDA matmul takes
        // only contiguous operands (the CPU one takes any), so the head gets a copy.
        let cls = cls.contiguous()?;
        match &self.head {
            Head::Embedding { .. } => Err(ModelError::Inference("not a classifier".into())),
            Head::Classifier { pooler, classifier, labels } => {
                let pooled = match pooler {
                    Some(p) => p.forward(&cls)?.tanh()?,
                    None => cls,
                };
                let logits = classifier.forward(&pooled)?;
                let scores = candle_nn::ops::softmax(&logits, D::Minus1)?;
                let data = scores.flatten_all()?.to_vec1::<f32>()?;
                Ok(BatchOutput {
                    data,
                    width: labels.len(),
                    kind: OutputKind::Classification(labels.clone()),
                })
            }
        }
    }
}

/// Pools `[rows, seq, hidden]` token states into `[rows, hidden]`: masked mean (the first
/// `row_tokens[r]` positions are real) or the `[CLS]` state, then optional L2 normalisation
/// (eps 1e-12, as `torch.nn.functional.normalize`). This is the CPU reference of the fused
/// CUDA kernel `kernels/pool_normalize.cu`.
pub fn pool_rows(
    states: &[f32],
    row_tokens: &[u32],
    seq: usize,
    hidden: usize,
    pooling: Pooling,
    normalize: bool,
    out: &mut [f32],
) {
    for (r, &n) in row_tokens.iter().enumerate() {
        let dst = &mut out[r * hidden..(r + 1) * hidden];
        let base = r * seq * hidden;
        match pooling {
            Pooling::Cls => dst.copy_from_slice(&states[base..base + hidden]),
            Pooling::Mean => {
                dst.fill(0.0);
                let n = (n as usize).min(seq).max(1);
                for t in 0..n {
                    let src = &states[base + t * hidden..base + (t + 1) * hidden];
                    for (d, s) in dst.iter_mut().zip(src) {
                        *d += *s;
                    }
                }
                let inv = 1.0 / n as f32;
                dst.iter_mut().for_each(|d| *d *= inv);
            }
        }
        if normalize {
            let norm = dst.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            dst.iter_mut().for_each(|d| *d /= norm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pool_ignores_padding_and_normalises() {
        // 2 rows, seq 3, hidden 2; row 0 has 2 real tokens, row 1 has 1.
        let states = [1.0, 0.0, 3.0, 0.0, 100.0, 100.0, 0.0, 2.0, 50.0, 50.0, 9.0, 9.0];
        let mut out = [0f32; 4];
        pool_rows(&states, &[2, 1], 3, 2, Pooling::Mean, false, &mut out);
        assert_eq!(out, [2.0, 0.0, 0.0, 2.0]);
        pool_rows(&states, &[2, 1], 3, 2, Pooling::Mean, true, &mut out);
        assert_eq!(out, [1.0, 0.0, 0.0, 1.0]);
        pool_rows(&states, &[2, 1], 3, 2, Pooling::Cls, false, &mut out);
        assert_eq!(out, [1.0, 0.0, 0.0, 2.0]);
    }
}
