//! Building a model from a weight file: the architecture and class count come from our own
//! files' metadata, or from `--arch` and the head's shape for foreign files.

use crate::error::{CliError, Result};
use resnet::{Arch, Init, Layout, ResNet, ResNetConfig, StateDict};
use std::path::Path;

pub use resnet::weights::{meta, metadata_for};

/// What the user said about the model on the command line.
#[derive(Debug, Clone, Default)]
pub struct ModelArgs {
    /// `--arch`.
    pub arch: Option<String>,
    /// `--num-classes`.
    pub num_classes: Option<usize>,
    /// `--base-planes` (reduced-width models).
    pub base_planes: Option<usize>,
}

/// The configuration a weight file needs: from `--arch` / `--num-classes` / `--base-planes`,
/// then our own files' metadata, then what the state dict's keys and shapes say (a foreign file
/// records no architecture, but its layout tells the ten torchvision ones apart).
pub fn config_for(weights: &Path, sd: &StateDict, args: &ModelArgs) -> Result<(Arch, ResNetConfig)> {
    let m = &sd.metadata;
    let inferred = Layout::of(sd).and_then(|l| l.config().map(|(arch, config)| (arch, config, l)));
    let arch = match args.arch.as_deref().or(m.get(meta::ARCH).map(String::as_str)) {
        Some(name) => {
            let arch = Arch::from_name(name)?;
            // Said in one line before any per-key details: which architecture the file holds.
            if let Ok((held, config, layout)) = &inferred {
                if *held != arch && args.base_planes.is_none_or(|b| b == config.base_planes) {
                    return Err(CliError::Usage(format!(
                        "{}: the file holds {held} weights ({layout}), not {arch}; drop --arch or pass --arch {held}",
                        weights.display()
                    )));
                }
            }
            arch
        }
        None => match &inferred {
            Ok((arch, _, _)) => *arch,
            Err(why) => {
                return Err(CliError::Usage(format!(
                    "{}: the file does not record its architecture, and its keys do not tell it ({why}); pass --arch (one of: {})",
                    weights.display(),
                    Arch::ALL.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
                )))
            }
        },
    };
    let num_classes = args
        .num_classes
        .or_else(|| m.get(meta::NUM_CLASSES).and_then(|v| v.parse().ok()))
        .or_else(|| sd.num_classes())
        .ok_or_else(|| {
            CliError::Usage(format!(
                "{}: no fc.weight to read the class count from; pass --num-classes",
                weights.display()
            ))
        })?;
    let mut config = arch.config(num_classes);
    let inferred_base = inferred.as_ref().ok().filter(|(held, _, _)| *held == arch).map(|(_, c, _)| c.base_planes);
    if let Some(b) =
        args.base_planes.or_else(|| m.get(meta::BASE_PLANES).and_then(|v| v.parse().ok())).or(inferred_base)
    {
        config.base_planes = b;
    }
    Ok((arch, config))
}

/// Reads a weight file and builds the model it fits, strictly loaded, in eval mode.
pub fn load_model(weights: &Path, args: &ModelArgs) -> Result<(ResNet, StateDict)> {
    let sd = resnet::read_weights(weights)?;
    let (arch, config) = config_for(weights, &sd, args)?;
    let model = config.build(Init::Zeros)?;
    resnet::load_strict(&model, &sd)
        .map_err(|e| CliError::Usage(format!("{}: the weights do not fit {arch}: {e}", weights.display())))?;
    nn::ModuleExt::eval(&model);
    Ok((model, sd))
}
