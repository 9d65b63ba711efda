//! `resnet convert IN OUT`: between `.pth` and `.safetensors`, either way, chosen by OUT's
//! extension. Keys, shapes, dtypes and values are kept exactly.

use crate::error::{CliError, Result};
use std::path::Path;

/// Converts a weight file.
pub fn run(input: &Path, output: &Path) -> Result<()> {
    let sd = resnet::read_weights(input)?;
    match output.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("safetensors") => resnet::write_safetensors(output, &sd.entries, &sd.metadata)?,
        Some("pth" | "pt") => resnet::write_pth(output, &sd.entries)?,
        _ => return Err(CliError::Usage(format!("{}: the output must end in .safetensors or .pth", output.display()))),
    }
    println!("wrote {} tensors to {}", sd.entries.len(), output.display());
    Ok(())
}
