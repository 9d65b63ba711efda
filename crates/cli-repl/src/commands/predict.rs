//! `resnet predict`: the tutorial's batch prediction without its bugs — every image is
//! predicted (the last partial batch too), with the eval transform the weights were trained
//! with, and class names from `class_indices.json` or the weights' metadata. With `--cam DIR`,
//! also a Grad-CAM heatmap of the predicted class over each picture as the model saw it.

use crate::error::{CliError, Result};
use crate::model_io::{load_model, meta, ModelArgs};
use std::path::{Path, PathBuf};

/// Every option of `resnet predict`.
#[derive(Debug, Clone, clap::Args)]
pub struct PredictArgs {
    /// Weights (.pth or .safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    /// Architecture (needed for files that do not record it).
    #[arg(long)]
    pub arch: Option<String>,
    /// Classes of the head (default: from the file).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// class_indices.json (default: the names stored in the weights, else the indices).
    #[arg(long)]
    pub classes: Option<PathBuf>,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Show the K most likely classes.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// One JSON object per line (path, class, index, prob, topk, logits).
    #[arg(long)]
    pub json: bool,
    /// Override the eval transform's resize (shorter side).
    #[arg(long)]
    pub resize: Option<usize>,
    /// Override the eval transform's centre crop.
    #[arg(long)]
    pub crop: Option<usize>,
    /// Override the normalisation mean, as r,g,b.
    #[arg(long)]
    pub mean: Option<String>,
    /// Override the normalisation std, as r,g,b.
    #[arg(long)]
    pub std: Option<String>,
    /// Device: `cpu`, or `wgpu` / `cuda` / `gpu` in a build with the GPU features.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also write a Grad-CAM heatmap of the predicted class over each picture, as the model saw
    /// it (after resize and crop), to OUT_DIR/<file stem>.cam.png (a repeated stem gets -2, -3...).
    #[arg(long, value_name = "OUT_DIR")]
    pub cam: Option<PathBuf>,
    /// Images, or folders of images.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

fn triple(s: &str, what: &str) -> Result<[f32; 3]> {
    let v: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| usage(format!("{what} {s:?}: expected three numbers r,g,b")))?;
    v.try_into().map_err(|_| usage(format!("{what} {s:?}: expected three numbers r,g,b")))
}

/// Image files under `paths`: files as given, folders walked in sorted order.
fn collect_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| CliError::Io { path: dir.to_path_buf(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.file_name().and_then(|n| n.to_str()).is_some_and(data::folder::has_image_extension) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = out.len();
            walk(p, &mut out)?;
            if out.len() == before {
                return Err(usage(format!(
                    "{}: the folder holds no images (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp)",
                    p.display()
                )));
            }
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(CliError::Io {
                path: p.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            });
        }
    }
    Ok(out)
}

/// `dir/<stem>.cam.png` for each image; a stem met again (compared case-insensitively, for file
/// systems that fold case) gets `-2`, `-3`, ... until the name is new.
fn cam_paths(dir: &Path, images: &[PathBuf]) -> Vec<PathBuf> {
    let mut used = std::collections::HashSet::new();
    images
        .iter()
        .map(|p| {
            let stem = p.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
            let mut name = format!("{stem}.cam.png");
            let mut k = 2;
            while !used.insert(name.to_lowercase()) {
                name = format!("{stem}-{k}.cam.png");
                k += 1;
            }
            dir.join(name)
        })
        .collect()
}

/// Runs `resnet predict`.
pub fn run(args: PredictArgs) -> Result<()> {
    let device = tensor::Device::parse(&args.device)?;
    if args.batch_size == 0 {
        return Err(usage("--batch-size must be positive"));
    }
    let images = collect_images(&args.paths)?;
    let margs = ModelArgs { arch: args.arch.clone(), num_classes: args.num_classes, base_planes: None };
    let (model, sd) = load_model(&args.weights, &margs)?;
    let num_classes = model.config.num_classes;
    let names: Vec<String> = match &args.classes {
        Some(p) => data::read_class_indices(p).map_err(|e| usage(e.to_string()))?,
        None => match sd.metadata.get(meta::CLASSES) {
            Some(j) => serde_json::from_str(j)
                .map_err(|_| usage(format!("{}: bad class list in the metadata", args.weights.display())))?,
            None => (0..num_classes).map(|i| i.to_string()).collect(),
        },
    };
    if names.len() != num_classes {
        return Err(usage(format!("{} class names for a head of {num_classes} classes", names.len())));
    }
    let k = args.top_k.unwrap_or(1);
    if k == 0 || k > num_classes {
        return Err(usage(format!("--top-k {k}: must be between 1 and {num_classes}")));
    }
    let m = &sd.metadata;
    let parse_meta = |key: &str| m.get(key).and_then(|v| v.parse::<usize>().ok());
    let resize = args.resize.or_else(|| parse_meta(meta::RESIZE)).unwrap_or(256);
    let crop = args.crop.or_else(|| parse_meta(meta::CROP)).unwrap_or(224);
    let meta_triple = |key: &str| m.get(key).and_then(|v| serde_json::from_str::<[f32; 3]>(v).ok());
    let mean = match &args.mean {
        Some(s) => triple(s, "--mean")?,
        None => meta_triple(meta::MEAN).unwrap_or(data::presets::IMAGENET_MEAN),
    };
    let std = match &args.std {
        Some(s) => triple(s, "--std")?,
        None => meta_triple(meta::STD).unwrap_or(data::presets::IMAGENET_STD),
    };
    let transform = data::presets::eval(resize, crop, &mean, &std).map_err(|e| usage(e.to_string()))?;
    nn::ModuleExt::to_device(&model, device)?;
    let fused = resnet::FusedResNet::new(&model)?;
    let cam_files = match &args.cam {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| CliError::Io { path: dir.clone(), source })?;
            cam_paths(dir, &images)
        }
        None => Vec::new(),
    };
    let mut failures = 0;
    for (c, chunk) in images.chunks(args.batch_size).enumerate() {
        let mut tensors = Vec::new();
        let mut paths = Vec::new();
        let mut views = Vec::new();
        let mut cam_outputs = Vec::new();
        for (j, p) in chunk.iter().enumerate() {
            let loaded = if args.cam.is_some() {
                data::presets::load_image_tensor_and_view(p, &transform).map(|(t, view)| (t, Some(view)))
            } else {
                data::presets::load_image_tensor(p, &transform).map(|t| (t, None))
            };
            match loaded {
                Ok((t, view)) => {
                    tensors.push(t);
                    paths.push(p);
                    views.extend(view);
                    cam_outputs.extend(cam_files.get(c * args.batch_size + j));
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    failures += 1;
                }
            }
        }
        if tensors.is_empty() {
            continue;
        }
        let batch = tensor::Tensor::stack(&tensors.iter().collect::<Vec<_>>(), 0)?.to_device(device)?;
        let logits = fused.forward(&batch)?;
        let probs = logits.softmax(1)?;
        let top = nn::topk(&probs, k)?;
        let logit_rows = logits.to_vec_f32()?;
        if args.cam.is_some() {
            // The predicted classes as printed (the fused pass's), explained by the plain model.
            let predicted: Vec<usize> = top.indices.iter().map(|row| row[0]).collect();
            let cam = resnet::grad_cam(&model, &batch, Some(&predicted))?;
            let maps = cam.heatmaps.to_vec_f32()?;
            let per_image = maps.len() / paths.len();
            for ((view, out), map) in views.iter().zip(&cam_outputs).zip(maps.chunks(per_image)) {
                let picture =
                    data::overlay_heatmap(view, map, 0.5).map_err(|e| usage(format!("{}: {e}", out.display())))?;
                picture.save(out).map_err(|e| usage(e.to_string()))?;
            }
        }
        for (i, path) in paths.iter().enumerate() {
            let (idx, p) = (&top.indices[i], &top.values[i]);
            let cam_note = cam_outputs.get(i).map(|out| format!("  cam: {}", out.display())).unwrap_or_default();
            if args.json {
                let topk: Vec<serde_json::Value> = idx
                    .iter()
                    .zip(p)
                    .map(|(&c, &pr)| serde_json::json!({"class": names[c], "index": c, "prob": pr}))
                    .collect();
                let mut line = serde_json::json!({
                    "path": path.display().to_string(), "class": names[idx[0]], "index": idx[0], "prob": p[0],
                    "topk": topk, "logits": &logit_rows[i * num_classes..(i + 1) * num_classes],
                });
                if let Some(out) = cam_outputs.get(i) {
                    line["cam"] = serde_json::Value::String(out.display().to_string());
                }
                println!("{line}");
            } else if k > 1 {
                let list: Vec<String> = idx.iter().zip(p).map(|(&c, &pr)| format!("{} {:.3}", names[c], pr)).collect();
                println!(
                    "image: {}  class: {}  prob: {:.3}  top{k}: {}{cam_note}",
                    path.display(),
                    names[idx[0]],
                    p[0],
                    list.join(", ")
                );
            } else {
                println!("image: {}  class: {}  prob: {:.3}{cam_note}", path.display(), names[idx[0]], p[0]);
            }
        }
    }
    if failures > 0 {
        return Err(usage(format!("{failures} image(s) could not be read (see above)")));
    }
    Ok(())
}
