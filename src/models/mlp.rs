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
    /// On the CPU, the same layers as plain arrays, run by [`host_forward`]: a tabular MLP is
    /// a few hundred multiply-adds per row, far less than the fixed cost of the dozen candle
    /// tensor operations (each allocating its result) of a batch. `None` on a GPU, and for
    /// GELU layers (candle's erf is kept so results do not depend on the device).
    host: Option<Vec<HostLayer>>,
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
        let host = if device.is_cpu() {
            host_layers(&layers).map_err(|e| err(e.to_string()))?
        } else {
            None
        };
        Ok(MlpRunner {
            layers,
            host,
            softmax: spec.output == MlpOutput::Softmax,
            device: device.clone(),
            inputs,
            outputs: width,
        })
    }

    /// Runs the staged batch of feature rows.
    pub fn forward(&self, st: &HostStaging) -> Result<BatchOutput, ModelError> {
        let features = &st.features[..st.rows * st.width];
        let data = match &self.host {
            Some(layers) => host_forward(layers, self.softmax, features, st.rows),
            None => self.candle_forward(features, st.rows, st.width)?,
        };
        Ok(BatchOutput { data, width: self.outputs, kind: OutputKind::Vector })
    }

    /// The layers as candle tensor operations (any device).
    fn candle_forward(
        &self,
        features: &[f32],
        rows: usize,
        width: usize,
    ) -> Result<Vec<f32>, ModelError> {
        let mut x = Tensor::from_slice(features, (rows, width), &self.device)?;
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
        Ok(x.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// One dense layer as plain arrays: `weight` is `[outputs][inputs]`, row-major.
struct HostLayer {
    weight: Vec<f32>,
    bias: Option<Vec<f32>>,
    inputs: usize,
    outputs: usize,
    activation: Activation,
}

/// The layers as arrays, or `None` if one has an activation the host path does not run.
fn host_layers(
    layers: &[(Linear, Activation)],
) -> Result<Option<Vec<HostLayer>>, candle_core::Error> {
    let mut out = Vec::with_capacity(layers.len());
    for (linear, act) in layers {
        if matches!(act, Activation::Gelu) {
            return Ok(None);
        }
        let (outputs, inputs) = linear.weight().dims2()?;
        out.push(HostLayer {
            weight: linear.weight().flatten_all()?.to_vec1::<f32>()?,
            bias: linear.bias().map(|b| b.to_vec1::<f32>()).transpose()?,
            inputs,
            outputs,
            activation: *act,
        });
    }
    Ok(Some(out))
}

/// Runs `rows` feature rows through `layers` (and a softmax over each output row).
fn host_forward(layers: &[HostLayer], softmax: bool, features: &[f32], rows: usize) -> Vec<f32> {
    let mut x = features.to_vec();
    let mut y = Vec::new();
    for l in layers {
        y.clear();
        y.resize(rows * l.outputs, 0.0);
        for (xr, yr) in x.chunks_exact(l.inputs).zip(y.chunks_exact_mut(l.outputs)) {
            for (o, (w, v)) in l.weight.chunks_exact(l.inputs).zip(yr.iter_mut()).enumerate() {
                let dot: f32 = w.iter().zip(xr).map(|(a, b)| a * b).sum();
                let z = dot + l.bias.as_ref().map_or(0.0, |b| b[o]);
                *v = match l.activation {
                    Activation::Relu => z.max(0.0),
                    Activation::Tanh => z.tanh(),
                    Activation::Sigmoid => 1.0 / (1.0 + (-z).exp()),
                    Activation::None | Activation::Gelu => z,
                };
            }
        }
        std::mem::swap(&mut x, &mut y);
    }
    if softmax {
        let width = layers.last().map_or(1, |l| l.outputs).max(1);
        for row in x.chunks_exact_mut(width) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for v in row.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            for v in row.iter_mut() {
                *v /= sum;
            }
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer of `outputs × inputs` with deterministic weights and a bias.
    fn layer(inputs: usize, outputs: usize, seed: usize, act: Activation) -> (Linear, Activation) {
        let v = |n: usize, k: usize| -> Vec<f32> {
            (0..n).map(|i| (((i + k) * 7919 % 97) as f32 - 48.0) / 60.0).collect()
        };
        let w = Tensor::from_vec(v(inputs * outputs, seed), (outputs, inputs), &Device::Cpu);
        let b = Tensor::from_vec(v(outputs, seed + 13), outputs, &Device::Cpu);
        (Linear::new(w.unwrap(), Some(b.unwrap())), act)
    }

    /// The host path gives what candle gives, for each activation it runs, with and without
    /// softmax.
    #[test]
    fn the_host_path_matches_candle() {
        let acts = [Activation::Relu, Activation::Tanh, Activation::Sigmoid, Activation::None];
        for (i, act) in acts.into_iter().enumerate() {
            for softmax in [true, false] {
                let layers = vec![
                    layer(8, 16, i, act),
                    layer(16, 5, i + 1, act),
                    layer(5, 3, i + 2, Activation::None),
                ];
                let host = host_layers(&layers).unwrap().expect("no GELU: the host path runs");
                let m = MlpRunner {
                    layers,
                    host: None,
                    softmax,
                    device: Device::Cpu,
                    inputs: 8,
                    outputs: 3,
                };
                let rows = 37;
                let x: Vec<f32> =
                    (0..rows * 8).map(|k| ((k * 7919 % 101) as f32 - 50.0) / 17.0).collect();
                let got = host_forward(&host, softmax, &x, rows);
                let want = m.candle_forward(&x, rows, 8).unwrap();
                assert_eq!(got.len(), want.len());
                for (a, b) in got.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{act:?} {softmax}: {a} vs {b}"
                    );
                }
            }
        }
        // GELU keeps candle (its erf), so results do not depend on the path.
        assert!(host_layers(&[layer(8, 3, 0, Activation::Gelu)]).unwrap().is_none());
    }
}
