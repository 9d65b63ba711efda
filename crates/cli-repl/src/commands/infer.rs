//! `resnet infer --arch A --weights W [--num-classes N] --input x.npy --output y.npy`: eval-mode
//! logits of an NCHW f32 batch, for comparing with numpy and PyTorch.

use crate::error::{CliError, Result};
use crate::model_io::{load_model, ModelArgs};
use std::path::Path;

/// Runs the model on a `.npy` batch and writes the logits as `.npy`.
pub fn run(weights: &Path, args: &ModelArgs, input: &Path, output: &Path, device: &str) -> Result<()> {
    let device = tensor::Device::parse(device)?;
    let x = tensor::read_npy(input)?;
    if x.rank() != 4 || x.shape()[1] != 3 || x.dtype() != tensor::DType::F32 {
        return Err(CliError::Usage(format!(
            "{}: expected an f32 array of shape [N, 3, H, W], got {} {:?}",
            input.display(),
            x.dtype(),
            x.shape()
        )));
    }
    let (model, _) = load_model(weights, args)?;
    nn::ModuleExt::to_device(&model, device)?;
    let y = resnet::FusedResNet::new(&model)?.forward(&x.to_device(device)?)?.to_device(tensor::Device::Cpu)?;
    tensor::write_npy(output, &y)?;
    println!("wrote logits {:?} to {}", y.shape(), output.display());
    Ok(())
}
