//! The network as a burn module, and the conversions between it and artifact layers.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData, activation::relu};

use crate::artifact::DenseLayer;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Dense layers with ReLU between them; no hidden layers is linear/logistic regression.
#[derive(Module, Debug)]
pub struct Mlp {
    layers: Vec<Linear>,
}

impl Mlp {
    pub fn forward(&self, mut x: Tensor<2>) -> Tensor<2> {
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x);
            if i < last {
                x = relu(x);
            }
        }
        x
    }

    pub fn from_layers(layers: &[DenseLayer], device: &Device) -> Mlp {
        let layers = layers
            .iter()
            .map(|l| Linear {
                weight: Param::from_tensor(Tensor::from_data(TensorData::new(l.weights.clone(), [l.inputs, l.outputs]), device)),
                bias: Some(Param::from_tensor(Tensor::from_data(TensorData::new(l.bias.clone(), [l.outputs]), device))),
            })
            .collect();
        Mlp { layers }
    }

    pub fn to_layers(&self) -> Result<Vec<DenseLayer>> {
        self.layers
            .iter()
            .map(|l| {
                let [inputs, outputs] = l.weight.val().dims();
                let values = |t: TensorData| t.try_to_vec::<f32>().map_err(|e| Error::InvalidArtifact(format!("reading weights: {e:?}")));
                let bias = match &l.bias {
                    Some(b) => values(b.val().into_data())?,
                    None => vec![0.0; outputs],
                };
                Ok(DenseLayer { inputs, outputs, weights: values(l.weight.val().into_data())?, bias })
            })
            .collect()
    }
}

/// Initial weights for layer sizes `sizes[0] → … → sizes[n]`: uniform in `±1/sqrt(inputs)`
/// (the usual default for dense layers), drawn from the seeded generator.
pub fn initial_layers(sizes: &[usize], rng: &mut Rng) -> Vec<DenseLayer> {
    sizes
        .windows(2)
        .map(|w| {
            let (inputs, outputs) = (w[0], w[1]);
            let bound = 1.0 / (inputs.max(1) as f64).sqrt();
            let mut draw = |n: usize| (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect::<Vec<f32>>();
            let weights = draw(inputs * outputs);
            let bias = draw(outputs);
            DenseLayer { inputs, outputs, weights, bias }
        })
        .collect()
}
