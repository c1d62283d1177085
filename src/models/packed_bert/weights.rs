//! Loading the encoder from a safetensors checkpoint: names, shapes, Q/K/V fusion.

use std::path::Path;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use parking_lot::Mutex;

use super::kernels::Isa;
use super::{Layer, PackedBert, PackedConfig, PackedError, PackedLinear};

/// Reads tensors by name from a safetensors file, trying the name prefixes BERT checkpoints use.
struct Weights {
    st: MmapedSafetensors,
    prefix: String,
}

impl Weights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, PackedError> {
        let full = format!("{}{}", self.prefix, name);
        let t = self.st.load(&full, &Device::Cpu).map_err(|e| format!("tensor {full}: {e}"))?;
        if t.dims() != shape {
            return Err(format!("tensor {full}: shape {:?}, expected {:?}", t.dims(), shape).into());
        }
        t.to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| PackedError(format!("tensor {full}: {e}")))
    }

    /// A LayerNorm's (weight, bias), or the older (gamma, beta) names.
    fn layer_norm(&self, name: &str, h: usize) -> Result<(Vec<f32>, Vec<f32>), PackedError> {
        match (self.get(&format!("{name}.weight"), &[h]), self.get(&format!("{name}.bias"), &[h])) {
            (Ok(g), Ok(b)) => Ok((g, b)),
            (Err(e), _) | (_, Err(e)) => match (
                self.get(&format!("{name}.gamma"), &[h]),
                self.get(&format!("{name}.beta"), &[h]),
            ) {
                (Ok(g), Ok(b)) => Ok((g, b)),
                _ => Err(e),
            },
        }
    }

    fn linear(&self, name: &str, n: usize, k: usize) -> Result<(Vec<f32>, Vec<f32>), PackedError> {
        Ok((
            self.get(&format!("{name}.weight"), &[n, k])?,
            self.get(&format!("{name}.bias"), &[n])?,
        ))
    }
}

impl PackedBert {
    /// Loads the encoder from `model.safetensors` (candle `BertModel` tensor names, with or
    /// without a `bert.` / `<model_type>.` prefix).
    pub fn load(
        weights: &Path,
        config: PackedConfig,
        model_type: Option<&str>,
    ) -> Result<Self, PackedError> {
        let c = &config;
        if c.heads == 0 || !c.hidden.is_multiple_of(c.heads) {
            return Err(
                format!("hidden size {} is not a multiple of {} heads", c.hidden, c.heads).into()
            );
        }
        // SAFETY: mapped read-only; model files are never written while served.
        let st = unsafe { MmapedSafetensors::new(weights) }.map_err(|e| e.to_string())?;
        let probe = "embeddings.word_embeddings.weight";
        let mut prefixes = vec![String::new(), "bert.".to_string()];
        if let Some(t) = model_type {
            prefixes.push(format!("{t}."));
        }
        let prefix = prefixes
            .into_iter()
            .find(|p| st.get(&format!("{p}{probe}")).is_ok())
            .ok_or_else(|| format!("no {probe} (with or without a 'bert.' prefix)"))?;
        let w = Weights { st, prefix };
        let h = c.hidden;
        let word = w.get("embeddings.word_embeddings.weight", &[c.vocab, h])?;
        let position = w.get("embeddings.position_embeddings.weight", &[c.max_position, h])?;
        let tt = w
            .st
            .load(&format!("{}embeddings.token_type_embeddings.weight", w.prefix), &Device::Cpu)
            .map_err(|e| e.to_string())?;
        let types = tt.dims().first().copied().unwrap_or(0);
        let token_type = w.get("embeddings.token_type_embeddings.weight", &[types, h])?;
        if types == 0 {
            return Err(PackedError::from("empty token_type_embeddings"));
        }
        let token_type0 = token_type[..h].to_vec();
        let emb_ln = w.layer_norm("embeddings.LayerNorm", h)?;
        let scale = 1.0 / ((h / c.heads) as f32).sqrt();
        let mut layers = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let l = format!("encoder.layer.{i}.");
            // Q, K and V fused into one [3H, H] weight; Q pre-scaled by 1/√d.
            let mut wqkv = Vec::with_capacity(3 * h * h);
            let mut bqkv = Vec::with_capacity(3 * h);
            for (proj, s) in [("query", scale), ("key", 1.0), ("value", 1.0)] {
                let (wt, b) = w.linear(&format!("{l}attention.self.{proj}"), h, h)?;
                wqkv.extend(wt.iter().map(|x| x * s));
                bqkv.extend(b.iter().map(|x| x * s));
            }
            let (wo, bo) = w.linear(&format!("{l}attention.output.dense"), h, h)?;
            let (wi, bi) = w.linear(&format!("{l}intermediate.dense"), c.intermediate, h)?;
            let (wf, bf) = w.linear(&format!("{l}output.dense"), h, c.intermediate)?;
            layers.push(Layer {
                qkv: PackedLinear::new(&wqkv, Some(&bqkv), 3 * h, h),
                attn_out: PackedLinear::new(&wo, Some(&bo), h, h),
                ln1: w.layer_norm(&format!("{l}attention.output.LayerNorm"), h)?,
                ffn_in: PackedLinear::new(&wi, Some(&bi), c.intermediate, h),
                ffn_out: PackedLinear::new(&wf, Some(&bf), h, c.intermediate),
                ln2: w.layer_norm(&format!("{l}output.LayerNorm"), h)?,
            });
        }
        Ok(PackedBert {
            config,
            word,
            position,
            token_type0,
            emb_ln,
            layers,
            scratch: Mutex::new(Vec::new()),
            isa: Isa::detect(),
        })
    }
}
