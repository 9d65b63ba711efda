//! `resnet evaluate --weights W --data DIR`: scikit-learn's `classification_report` and a
//! confusion matrix for a trained model on a labelled ImageFolder — printed, and written as
//! `report.json` and `confusion.png` into `--out`.

use crate::error::{CliError, Result};
use crate::model_io::{load_model, meta, ModelArgs};
use std::path::PathBuf;

/// Every option of `resnet evaluate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvaluateArgs {
    /// Weights (.pth or .safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    /// An ImageFolder (class sub-folders), or a folder with train/ and val/ (val/ is used).
    #[arg(long)]
    pub data: PathBuf,
    /// Architecture (needed only for files that do not record it).
    #[arg(long)]
    pub arch: Option<String>,
    /// Where report.json and confusion.png go.
    #[arg(long, default_value = "runs/evaluate")]
    pub out: PathBuf,
    /// Images per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// The eval transform's resize (shorter side) [default: the weights' metadata, or 256].
    #[arg(long)]
    pub resize: Option<usize>,
    /// The eval transform's centre crop [default: the weights' metadata, or 224].
    #[arg(long)]
    pub crop: Option<usize>,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Runs `resnet evaluate`.
pub fn run(args: EvaluateArgs) -> Result<()> {
    let folder = if args.data.join("train").is_dir() && args.data.join("val").is_dir() {
        args.data.join("val")
    } else {
        args.data.clone()
    };
    let (model, sd) = load_model(&args.weights, &ModelArgs { arch: args.arch.clone(), ..Default::default() })?;
    let images = data::ImageFolder::new(&folder).map_err(|e| usage(e.to_string()))?;
    if let Some(names) = sd.metadata.get(meta::CLASSES).and_then(|j| serde_json::from_str::<Vec<String>>(j).ok()) {
        if names != images.classes() {
            return Err(usage(format!(
                "{} has the classes {:?}, but {} was trained on {:?}",
                folder.display(),
                images.classes(),
                args.weights.display(),
                names
            )));
        }
    }
    let parse_meta = |key: &str| sd.metadata.get(key).and_then(|v| v.parse::<usize>().ok());
    let resize = args.resize.or_else(|| parse_meta(meta::RESIZE)).unwrap_or(256);
    let crop = args.crop.or_else(|| parse_meta(meta::CROP)).unwrap_or(224);
    let report = train::evaluate_folder(&model, &folder, (resize, crop), args.batch_size, args.workers)
        .map_err(|e| usage(e.to_string()))?;
    print!("{}", report.table());
    report.write(&args.out).map_err(|e| usage(e.to_string()))?;
    println!("wrote {} and {}", args.out.join("report.json").display(), args.out.join("confusion.png").display());
    Ok(())
}
