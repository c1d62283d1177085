//! Tabular models: dense layers and activations described in `sluice.toml`.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module};

use super::spec::{Activation, MlpOutput, ModelSpec};
use super::ModelError;
use crate::core::HostStaging;
use crate::core::{BatchOutput, OutputKind};

/// A multi-layer perceptron on one device.
pub struct MlpRunner {
    layers: Vec<(Linear, Activation)>,
    softmax: bool,
    device: Device,
    /// Feature width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
}

impl MlpRunner {
    /// Loads the layers named in `spec` from `dir/model.safetensors` and checks their shapes chain.
    pub fn load(dir: &Path, spec: &ModelSpec, device: &Device) -> Result<Self, ModelError> {
        let path = dir.join("model.safetensors");
        let err = |reason: String| ModelError::Spec { path: path.clone(), reason };
        let tensors =
            candle_core::safetensors::load(&path, device).map_err(|e| err(e.to_string()))?;
        let inputs = spec.inputs.unwrap_or(0);
        let mut width = inputs;
        let mut layers = Vec::with_capacity(spec.layers.len());
        for (i, l) in spec.layers.iter().enumerate() {
            let w = tensors
                .get(&l.weight)
                .ok_or_else(|| err(format!("layers[{i}]: no tensor '{}'", l.weight)))?;
            let w = w.to_dtype(DType::F32).map_err(|e| err(e.to_string()))?;
            let (out, inp) = w
                .dims2()
                .map_err(|_| err(format!("layers[{i}]: '{}' must be 2-D [out, in]", l.weight)))?;
            if inp != width {
                return Err(err(format!(
                    "layers[{i}]: '{}' expects {inp} inputs, previous layer gives {width}",
                    l.weight
                )));
            }
            let b = match &l.bias {
                Some(name) => {
                    let b = tensors
                        .get(name)
                        .ok_or_else(|| err(format!("layers[{i}]: no tensor '{name}'")))?;
                    let b = b.to_dtype(DType::F32).map_err(|e| err(e.to_string()))?;
                    if b.dims() != [out] {
                        return Err(err(format!(
                            "layers[{i}]: bias '{name}' must be [{out}], is {:?}",
                            b.dims()
                        )));
                    }
                    Some(b)
                }
                None => None,
            };
            layers.push((Linear::new(w, b), l.activation));
            width = out;
        }
        Ok(MlpRunner {
            layers,
            softmax: spec.output == MlpOutput::Softmax,
            device: device.clone(),
            inputs,
            outputs: width,
        })
    }

    /// Runs the staged batch of feature rows.
    pub fn forward(&self, st: &HostStaging) -> Result<BatchOutput, ModelError> {
        let mut x = Tensor::from_slice(
            &st.features[..st.rows * st.width],
            (st.rows, st.width),
            &self.device,
        )?;
        for (linear, act) in &self.layers {
            x = linear.forward(&x)?;
            x = match act {
                Activation::Relu => x.relu()?,
                Activation::Gelu => x.gelu_erf()?,
                Activation::Tanh => x.tanh()?,
                Activation::Sigmoid => candle_nn::ops::sigmoid(&x)?,
                Activation::None => x,
            };
        }
        if self.softmax {
            x = candle_nn::ops::softmax(&x, D::Minus1)?;
        }
        let data = x.flatten_all()?.to_vec1::<f32>()?;
        Ok(BatchOutput { data, width: self.outputs, kind: OutputKind::Vector })
    }
}
