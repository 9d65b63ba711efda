//! `resnet export --weights W [--arch A] [--num-classes N] [--batch dynamic|K] [--image-size S]
//! OUT.onnx`: the eval graph as ONNX (opset 17, batch norm folded), as `torch.onnx.export` writes
//! it, for ONNX Runtime, TensorRT, OpenVINO or a browser.

use crate::error::{CliError, Result};
use crate::model_io::{load_model, meta, ModelArgs};
use resnet::{OnnxBatch, OnnxInput};
use std::path::Path;

/// `dynamic` or a positive batch size.
pub fn parse_batch(text: &str) -> std::result::Result<OnnxBatch, String> {
    match text.trim() {
        "dynamic" => Ok(OnnxBatch::Dynamic),
        n => match n.parse::<usize>() {
            Ok(k) if k > 0 => Ok(OnnxBatch::Fixed(k)),
            _ => Err(format!("expected `dynamic` or a positive batch size, got {text:?}")),
        },
    }
}

/// Exports a weight file's model as ONNX. The input size is `--image-size`, else the crop the
/// file's metadata records (our own files), else 224.
pub fn run(weights: &Path, args: &ModelArgs, batch: OnnxBatch, image_size: Option<usize>, out: &Path) -> Result<()> {
    if out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() != Some("onnx") {
        return Err(CliError::Usage(format!("{}: the output must end in .onnx", out.display())));
    }
    let (model, sd) = load_model(weights, args)?;
    let size = image_size.or_else(|| sd.metadata.get(meta::CROP).and_then(|c| c.parse().ok())).unwrap_or(224);
    if size == 0 {
        return Err(CliError::Usage("--image-size must be positive".into()));
    }
    resnet::export_onnx(&model, OnnxInput { batch, size: Some((size, size)) }, out)?;
    let batch = match batch {
        OnnxBatch::Dynamic => "batch".to_string(),
        OnnxBatch::Fixed(n) => n.to_string(),
    };
    let output = if model.fc.is_some() { "logits" } else { "features" };
    println!(
        "wrote {}: input `input` [{batch}, 3, {size}, {size}] f32, output `{output}`, opset {}",
        out.display(),
        resnet::onnx::OPSET
    );
    Ok(())
}
