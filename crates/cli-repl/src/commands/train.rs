//! `resnet train`: the transfer-learning tutorial's loop, complete — data, model, optimizer and
//! schedule; per epoch a training pass and a validation pass; `best.safetensors` whenever the
//! validation accuracy improves, `last.safetensors` every epoch, `metrics.csv`, `curves.png`,
//! `run.json` and `class_indices.json`.
//!
//! Crash safety rests on two rules. Every file is written atomically (a temporary file, then a
//! rename), so each is always either its previous or its new complete version. And everything
//! `--resume` needs — weights, optimizer state, schedule position, the settings and the metrics
//! so far, and the position inside an unfinished epoch — lives in ONE file,
//! `checkpoint.safetensors`, so a kill between two writes cannot leave a resumable state whose
//! parts disagree. The other files are reports, rewritten from that state. Ctrl-C stops at the
//! next batch and checkpoints the position inside the epoch; `--save-every N` checkpoints every
//! N batches as well, so a killed run loses at most N batches of work.

use crate::error::{CliError, Result};
use crate::model_io::{meta, metadata_for};
use crate::plot::{curves_png, EpochPoint};
use data::{presets, DataError, Dataset, ImageFolder, Loader, LoaderConfig, Subset};
use nn::{CrossEntropyLoss, LrSchedule, Method, Module, ModuleExt, Optimizer, Scheduler, Var};
use resnet::{Arch, ResNet};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tensor::Tensor;

/// Every option of `resnet train`. The settings that shape the run (`--arch` to `--seed`) are
/// optional so that `--resume` can tell what was given: a resumed run takes the checkpoint's
/// settings, and a given one that differs is an error rather than a silently different run.
#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// An ImageFolder with train/ and val/ sub-folders, or one folder with --val-split
    /// (default: the built-in demo dataset, generated on first use).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// With --data: the share of each class held out for validation.
    #[arg(long)]
    pub val_split: Option<f64>,
    /// Architecture (resnet18 ... wide_resnet101_2) [default: resnet18].
    #[arg(long)]
    pub arch: Option<String>,
    /// Stem width, for reduced-width models [default: 64, torchvision's; the demo preset: 16].
    #[arg(long)]
    pub base_planes: Option<usize>,
    /// Pretrained weights (.pth or .safetensors); a head of another class count is re-initialised.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Train only the head.
    #[arg(long)]
    pub freeze_backbone: bool,
    /// Epochs [default: 10, the demo preset's 13, or the resumed run's].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per batch [default: 32; the demo preset: 64].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate (one-cycle: the peak) [default: 0.001; the demo preset: 0.01].
    #[arg(long)]
    pub lr: Option<f64>,
    /// adam, adamw or sgd [default: adam].
    #[arg(long)]
    pub optimizer: Option<String>,
    /// SGD momentum [default: 0.9].
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Weight decay [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// none, step, cosine or onecycle [default: cosine; the demo preset: onecycle].
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Training crop size [default: 224, or the demo preset's].
    #[arg(long)]
    pub image_size: Option<usize>,
    /// RandomResizedCrop's range of crop areas, as fractions of the picture: `MIN,MAX`
    /// [default: 0.08,1 as torchvision's, or the demo preset's].
    #[arg(long, value_parser = parse_crop_scale)]
    pub crop_scale: Option<(f64, f64)>,
    /// Validation and prediction: the shorter side is resized to this before the centre crop
    /// of --image-size [default: image-size * 256 / 224, as torchvision's 256 -> 224; on the
    /// demo, the image size itself, so the whole picture is seen].
    #[arg(long)]
    pub eval_resize: Option<usize>,
    /// Seeds the model, the shuffling and the augmentation [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Loader threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Device: `cpu`, or `wgpu` / `cuda` / `gpu` in a build with the GPU features.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Output folder (default: runs/train, or runs/train2, ... when that holds a run; or the
    /// --resume folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run saved in this folder (its settings are reused).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Also checkpoint every N batches inside an epoch (0: only at the end of each epoch).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// What a non-finite loss or gradient does: `stop` (naming the epoch and batch, keeping the
    /// last checkpoint) or `skip` (that batch makes no update; the count is reported).
    #[arg(long, default_value = "stop")]
    pub on_nonfinite: String,
    /// Skip images that cannot be decoded (with a warning) instead of stopping.
    #[arg(long)]
    pub skip_bad_images: bool,
    /// Where the demo dataset is generated (default: runs/demo-data).
    #[arg(long)]
    pub demo_dir: Option<PathBuf>,
    /// Fault injection for tests: make the loss of these batches NaN (`EPOCH:BATCH,...`, 1-based).
    #[arg(long, hide = true)]
    pub inject_nonfinite: Option<String>,
}

/// The settings that define a run: saved in the checkpoint, restored by `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Settings {
    data: Option<PathBuf>,
    val_split: Option<f64>,
    demo_dir: Option<PathBuf>,
    arch: String,
    base_planes: usize,
    freeze_backbone: bool,
    batch_size: usize,
    lr: f64,
    optimizer: String,
    momentum: f64,
    weight_decay: f64,
    scheduler: String,
    image_size: usize,
    seed: u64,
    /// Absent in checkpoints written before the flag existed: those runs keep the crop range
    /// they were started with ([`legacy_crop_scale`]).
    #[serde(default)]
    crop_scale: Option<(f64, f64)>,
    /// Absent in older checkpoints: torchvision's `image_size * 256 / 224`.
    #[serde(default)]
    eval_resize: Option<usize>,
}

/// Where the run stands: saved in the checkpoint (and, for people, as `run.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunState {
    /// The epochs the run is planned for.
    epochs: usize,
    /// Completed epochs.
    epoch: usize,
    #[serde(deserialize_with = "nan_if_null")]
    best_acc: f64,
    best_epoch: usize,
    scheduler_steps: usize,
    rows: Vec<Row>,
    /// How far the next epoch got before the run was stopped (absent at an epoch boundary).
    progress: Option<Progress>,
}

/// One epoch's metrics. JSON has no NaN or infinity (serde_json writes `null`), and a diverged
/// model's validation loss can be either: `null` reads back as NaN.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Row {
    epoch: usize,
    #[serde(deserialize_with = "nan_if_null")]
    train_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    train_acc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    val_loss: f64,
    #[serde(deserialize_with = "nan_if_null")]
    val_acc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    lr: f64,
    #[serde(deserialize_with = "nan_if_null")]
    seconds: f64,
    #[serde(deserialize_with = "nan_if_null")]
    images_per_s: f64,
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// An epoch in progress: the next batch position and the sums so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Progress {
    next_batch: usize,
    loss_sum: f64,
    correct: usize,
    seen: usize,
    skipped_images: usize,
    skipped_batches: usize,
    /// The learning rate when the epoch began (the metrics row reports it).
    lr: f64,
    /// Seconds spent on this epoch's training before the stop.
    seconds: f64,
}

impl Progress {
    fn new(lr: f64) -> Progress {
        Progress {
            next_batch: 0,
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            skipped_images: 0,
            skipped_batches: 0,
            lr,
            seconds: 0.0,
        }
    }
}

/// The resume file's metadata keys and tensor-name prefixes.
mod checkpoint {
    pub const FILE: &str = "checkpoint.safetensors";
    pub const SETTINGS: &str = "train_settings";
    pub const STATE: &str = "train_state";
    pub const MODEL: &str = "model.";
    pub const OPTIMIZER: &str = "optimizer.";
}

/// Every file `resnet train` writes into its output folder.
const OUTPUT_FILES: [&str; 7] = [
    "class_indices.json",
    checkpoint::FILE,
    "best.safetensors",
    "last.safetensors",
    "metrics.csv",
    "curves.png",
    "run.json",
];

#[derive(Debug, Clone, Copy, PartialEq)]
enum OnNonFinite {
    Stop,
    Skip,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

fn data_err(e: DataError) -> CliError {
    usage(e.to_string())
}

/// The run's settings: the given options over the resumed run's (a conflict is an error) over
/// the defaults.
fn resolve_settings(args: &TrainArgs, saved: Option<&Settings>) -> Result<Settings> {
    fn pick<T: PartialEq + std::fmt::Debug + Clone>(
        flag: &str,
        given: Option<T>,
        saved: Option<T>,
        default: impl FnOnce() -> T,
    ) -> Result<T> {
        match (given, saved) {
            (Some(g), Some(s)) if g != s => Err(usage(format!(
                "--{flag} {g:?} differs from the resumed run's {s:?}; drop --{flag} to continue the run as it was \
                 started, or start a new run in another --out"
            ))),
            (Some(v), _) | (None, Some(v)) => Ok(v),
            (None, None) => Ok(default()),
        }
    }
    let s = saved.cloned();
    let data = pick("data", args.data.clone().map(Some), s.as_ref().map(|s| s.data.clone()), || None)?;
    let demo = data.is_none();
    Ok(Settings {
        val_split: pick("val-split", args.val_split.map(Some), s.as_ref().map(|s| s.val_split), || None)?,
        demo_dir: pick("demo-dir", args.demo_dir.clone().map(Some), s.as_ref().map(|s| s.demo_dir.clone()), || None)?,
        arch: pick("arch", args.arch.clone(), s.as_ref().map(|s| s.arch.clone()), || "resnet18".into())?,
        base_planes: pick("base-planes", args.base_planes, s.as_ref().map(|s| s.base_planes), || {
            if demo {
                DEMO.base_planes
            } else {
                64
            }
        })?,
        freeze_backbone: args.freeze_backbone || s.as_ref().is_some_and(|s| s.freeze_backbone),
        batch_size: pick("batch-size", args.batch_size, s.as_ref().map(|s| s.batch_size), || {
            if demo {
                DEMO.batch_size
            } else {
                32
            }
        })?,
        lr: pick("lr", args.lr, s.as_ref().map(|s| s.lr), || if demo { DEMO.lr } else { 1e-3 })?,
        optimizer: pick("optimizer", args.optimizer.clone(), s.as_ref().map(|s| s.optimizer.clone()), || {
            "adam".into()
        })?,
        momentum: pick("momentum", args.momentum, s.as_ref().map(|s| s.momentum), || 0.9)?,
        weight_decay: pick("weight-decay", args.weight_decay, s.as_ref().map(|s| s.weight_decay), || 0.0)?,
        scheduler: pick("scheduler", args.scheduler.clone(), s.as_ref().map(|s| s.scheduler.clone()), || {
            if demo { DEMO.scheduler } else { "cosine" }.into()
        })?,
        image_size: pick("image-size", args.image_size, s.as_ref().map(|s| s.image_size), || {
            if demo {
                DEMO.image_size
            } else {
                224
            }
        })?,
        seed: pick("seed", args.seed, s.as_ref().map(|s| s.seed), || 0)?,
        crop_scale: pick("crop-scale", args.crop_scale.map(Some), s.as_ref().map(|s| s.crop_scale), || {
            Some(if demo { DEMO.crop_scale } else { (0.08, 1.0) })
        })?,
        eval_resize: pick("eval-resize", args.eval_resize.map(Some), s.as_ref().map(|s| s.eval_resize), || {
            demo.then_some(args.image_size.unwrap_or(DEMO.image_size))
        })?,
        data,
    })
}

/// `MIN,MAX` with 0 < MIN <= MAX <= 1.
fn parse_crop_scale(text: &str) -> std::result::Result<(f64, f64), String> {
    let parts: Vec<&str> = text.split(',').map(str::trim).collect();
    let [lo, hi] = parts.as_slice() else {
        return Err(format!("expected MIN,MAX (e.g. 0.08,1), got {text:?}"));
    };
    let parse = |v: &str| v.parse::<f64>().map_err(|_| format!("{v:?} is not a number"));
    let (lo, hi) = (parse(lo)?, parse(hi)?);
    if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
        return Err(format!("expected 0 < MIN <= MAX <= 1, got {lo},{hi}"));
    }
    Ok((lo, hi))
}

/// The crop range of a run whose checkpoint predates `--crop-scale`.
fn legacy_crop_scale(demo: bool) -> (f64, f64) {
    if demo {
        (0.35, 1.0)
    } else {
        (0.08, 1.0)
    }
}

/// The train and validation datasets and their classes.
struct Datasets {
    train: Box<dyn Dataset>,
    val: Box<dyn Dataset>,
    classes: Vec<String>,
    /// Whether this is the built-in demo dataset.
    demo: bool,
}

fn datasets(s: &Settings) -> Result<Datasets> {
    let Some(root) = &s.data else {
        let dir = demo_dir(s);
        let demo = match data::write_demo_dataset(&dir, &demo_config()) {
            // The default folder is this tool's own cache: a demo dataset an older version
            // generated there (other sizes) is replaced rather than refused.
            Err(_) if s.demo_dir.is_none() && data::is_demo_dataset(&dir) => {
                println!("replacing the demo dataset in {} (generated with other settings)", dir.display());
                std::fs::remove_dir_all(&dir).map_err(|source| CliError::Io { path: dir.clone(), source })?;
                data::write_demo_dataset(&dir, &demo_config())
            }
            other => other,
        }
        .map_err(|e| usage(format!("demo dataset: {e}")))?;
        if !demo.reused {
            println!(
                "generated the demo dataset in {} ({} training, {} validation images)",
                dir.display(),
                demo.train_images,
                demo.val_images
            );
        }
        let train = ImageFolder::new(&demo.train).map_err(data_err)?;
        let val = ImageFolder::new(&demo.val).map_err(data_err)?;
        let classes = train.classes().to_vec();
        return Ok(Datasets { train: Box::new(train), val: Box::new(val), classes, demo: true });
    };
    let (train_dir, val_dir) = (root.join("train"), root.join("val"));
    if train_dir.is_dir() && val_dir.is_dir() {
        if s.val_split.is_some() {
            return Err(usage(format!("{} already has train/ and val/; drop --val-split", root.display())));
        }
        let train = ImageFolder::new(&train_dir).map_err(data_err)?;
        let val = ImageFolder::new(&val_dir).map_err(data_err)?;
        if train.classes() != val.classes() {
            return Err(usage(format!(
                "{}: train/ has classes {:?} but val/ has {:?}",
                root.display(),
                train.classes(),
                val.classes()
            )));
        }
        let classes = train.classes().to_vec();
        return Ok(Datasets { train: Box::new(train), val: Box::new(val), classes, demo: false });
    }
    let fraction = s.val_split.ok_or_else(|| {
        usage(format!("{}: no train/ and val/ sub-folders; pass --val-split (e.g. 0.2) to split it", root.display()))
    })?;
    let folder = ImageFolder::new(root).map_err(data_err)?;
    let split = data::split::split_indices(&folder.targets(), fraction, s.seed).map_err(data_err)?;
    if split.val.is_empty() || split.train.is_empty() {
        return Err(usage(format!(
            "{}: --val-split {fraction} leaves an empty train or validation set",
            root.display()
        )));
    }
    let classes = folder.classes().to_vec();
    let train = Subset::new(folder.clone(), split.train).map_err(data_err)?;
    let val = Subset::new(folder, split.val).map_err(data_err)?;
    Ok(Datasets { train: Box::new(train), val: Box::new(val), classes, demo: false })
}

/// Where the demo dataset lives: `--demo-dir`, or the tool's own default folder.
fn demo_dir(s: &Settings) -> PathBuf {
    s.demo_dir.clone().unwrap_or_else(|| PathBuf::from("runs/demo-data"))
}

/// What `resnet train` without `--data` runs: the built-in shapes, and the settings that make a
/// ResNet-18 trained from scratch learn them (>= 90% validation accuracy) in about three minutes
/// on two cores. Each setting is a flag a user's own run can pass too; only the defaults differ.
///
/// Measured (the book's tutorial has the runs): torchvision's defaults on 900 pictures reach
/// about 40% in 10 epochs, and so does PyTorch with the same settings. What made it learn:
/// many distinct pictures rather than many epochs over few (the model underfits, it does not
/// overfit), which a quarter-width network can see at ~800 images/s instead of ~115; and a
/// one-cycle schedule peaking at a higher learning rate.
struct DemoPreset {
    /// Training pictures per class.
    train_per_class: usize,
    /// Validation pictures per class.
    val_per_class: usize,
    /// `--base-planes`: torchvision's ResNet-18 layout at a quarter of its width (16 stem
    /// channels, 0.7 M parameters), ample for six shapes and ~7x faster than full width.
    base_planes: usize,
    /// `--image-size` (the pictures are 64x64; 40 learned worse, 64 no better per epoch).
    image_size: usize,
    /// `--crop-scale`: the shapes fill a third of the picture or less, so crops must keep most
    /// of it (torchvision's 8% crops usually cut the shape away).
    crop_scale: (f64, f64),
    /// `--batch-size` (64 runs ~1.3x as many images/s as 32 at this width).
    batch_size: usize,
    /// `--lr`: the one-cycle schedule's peak.
    lr: f64,
    /// `--scheduler`.
    scheduler: &'static str,
    /// `--epochs`.
    epochs: usize,
}

const DEMO: DemoPreset = DemoPreset {
    train_per_class: 1500,
    val_per_class: 100,
    base_planes: 16,
    image_size: 48,
    crop_scale: (0.8, 1.0),
    batch_size: 64,
    lr: 1e-2,
    scheduler: "onecycle",
    epochs: 13,
};

/// The main job's data: enough pictures of each shape that a ResNet-18 trained from scratch must
/// learn the shapes rather than memorise the pictures, small enough for a few minutes on 2 cores.
fn demo_config() -> data::DemoConfig {
    data::DemoConfig {
        train_per_class: DEMO.train_per_class,
        val_per_class: DEMO.val_per_class,
        width: 64,
        height: 64,
        ..data::DemoConfig::default()
    }
}

fn method(s: &Settings) -> Result<Method> {
    Ok(match s.optimizer.to_ascii_lowercase().as_str() {
        "adam" => Method::adam(),
        "adamw" => Method::adamw(),
        "sgd" => Method::sgd(s.momentum),
        other => return Err(usage(format!("--optimizer {other}: expected adam, adamw or sgd"))),
    })
}

/// The schedule, and whether it steps per batch (one-cycle) rather than per epoch.
fn schedule(s: &Settings, epochs: usize, steps_per_epoch: usize) -> Result<(LrSchedule, bool)> {
    Ok(match s.scheduler.to_ascii_lowercase().as_str() {
        "none" => (LrSchedule::Constant, false),
        "step" => (LrSchedule::Step { step_size: (epochs / 3).max(1), gamma: 0.1 }, false),
        "cosine" => (LrSchedule::Cosine { t_max: epochs.max(1), eta_min: 0.0 }, false),
        "onecycle" => (LrSchedule::one_cycle(s.lr, (epochs * steps_per_epoch).max(2)), true),
        other => return Err(usage(format!("--scheduler {other}: expected none, step, cosine or onecycle"))),
    })
}

fn on_nonfinite(args: &TrainArgs) -> Result<OnNonFinite> {
    match args.on_nonfinite.to_ascii_lowercase().as_str() {
        "stop" => Ok(OnNonFinite::Stop),
        "skip" => Ok(OnNonFinite::Skip),
        other => Err(usage(format!("--on-nonfinite {other}: expected stop or skip"))),
    }
}

/// `--inject-nonfinite 2:3,4:1` as 1-based (epoch, batch) pairs.
fn injected_faults(args: &TrainArgs) -> Result<Vec<(usize, usize)>> {
    let Some(spec) = &args.inject_nonfinite else { return Ok(Vec::new()) };
    spec.split(',')
        .map(|item| {
            item.split_once(':')
                .and_then(|(e, b)| Some((e.trim().parse().ok()?, b.trim().parse().ok()?)))
                .ok_or_else(|| usage(format!("--inject-nonfinite {spec}: expected EPOCH:BATCH,...")))
        })
        .collect()
}

fn metrics_csv(rows: &[Row]) -> String {
    let mut s = String::from("epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_s\n");
    for r in rows {
        s += &format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.8},{:.3},{:.2}\n",
            r.epoch, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.lr, r.seconds, r.images_per_s
        );
    }
    s
}

/// A data error during training. A bad image without `--skip-bad-images` stops the run; before
/// it does, every image of both sets is tried so that the message names each bad file at once.
fn data_failure(e: DataError, train: &Loader, val: &Loader, workers: usize) -> CliError {
    if !e.is_bad_image() {
        return data_err(e);
    }
    eprintln!("{e}\nlooking for other unreadable images ...");
    let mut bad = Vec::new();
    for loader in [train, val] {
        match data::find_bad_images(loader.dataset(), workers.max(1)) {
            Ok(found) => bad.extend(found.into_iter().map(|(_, e)| e)),
            Err(other) => return data_err(other),
        }
    }
    if bad.is_empty() {
        // It could be read on the second try (a file being written, say): name the first error.
        bad.push(e);
    }
    const SHOWN: usize = 50;
    let mut msg = format!("{} unreadable image(s); training stopped:\n", bad.len());
    for b in bad.iter().take(SHOWN) {
        msg += &format!("  {b}\n");
    }
    if bad.len() > SHOWN {
        msg += &format!("  ... and {} more\n", bad.len() - SHOWN);
    }
    msg += "fix or remove them, or pass --skip-bad-images to train on the rest";
    usage(msg)
}

/// Mean loss and accuracy of the model over a loader, in eval mode without recording; `None`
/// when Ctrl-C stopped it. Returns the images skipped as unreadable too.
fn evaluate(
    model: &ResNet,
    loader: &Loader,
    stop: &AtomicBool,
    train: &Loader,
    workers: usize,
) -> Result<Option<(f64, f64, usize)>> {
    model.eval();
    let _guard = nn::no_grad();
    let (mut loss_sum, mut correct, mut seen, mut skipped) = (0f64, 0usize, 0usize, 0usize);
    for batch in loader.iter_epoch(0) {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let batch = batch.map_err(|e| data_failure(e, train, loader, workers))?;
        skipped += batch.skipped.len();
        let logits = model.forward(&Var::constant(batch.images.to_device(model.device())?))?;
        let loss =
            CrossEntropyLoss { reduction: nn::Reduction::Sum, label_smoothing: 0.0 }.forward(&logits, &batch.labels)?;
        loss_sum += loss.value().item()? as f64;
        correct += (nn::accuracy(&logits.value(), &batch.labels)? * batch.labels.numel() as f64).round() as usize;
        seen += batch.labels.numel();
    }
    Ok(Some((loss_sum / seen.max(1) as f64, correct as f64 / seen.max(1) as f64, skipped)))
}

/// Whether every gradient of the trainable parameters is finite.
fn gradients_finite(params: &[Var]) -> Result<bool> {
    if params.first().is_some_and(|p| p.value().device().is_gpu()) {
        // On a GPU: one reduction per gradient, summed there, one value read back. `0 * g`
        // is 0 for finite g and NaN for an infinity or NaN.
        let mut total: Option<tensor::Tensor> = None;
        for g in params.iter().filter_map(Var::grad) {
            let dims: Vec<usize> = (0..g.rank()).collect();
            let s = g.mul_scalar(0.0)?.sum(&dims, false)?;
            total = Some(match total {
                Some(t) => t.add(&s)?,
                None => s,
            });
        }
        return Ok(total.map_or(Ok(0.0), |t| t.item())?.is_finite());
    }
    for p in params {
        if let Some(g) = p.grad() {
            if !g.f32_data("gradient check")?.iter().all(|v| v.is_finite()) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The default output folder: `runs/train`, or the first of `runs/train2`, `runs/train3`, ...
/// that holds no run, so that running the main job twice keeps the first run's results.
fn default_out() -> PathBuf {
    let base = PathBuf::from("runs");
    (1..)
        .map(|i| if i == 1 { base.join("train") } else { base.join(format!("train{i}")) })
        .find(|d| !d.join(checkpoint::FILE).exists())
        .expect("an unbounded range")
}

/// Removes the temporary files that a killed run may have left beside our outputs (a write
/// is a temporary file renamed over its target; a kill before the rename leaves it behind).
fn remove_stale_temporaries(out: &Path) {
    let Ok(entries) = std::fs::read_dir(out) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let ours = OUTPUT_FILES.iter().any(|f| name.starts_with(&format!(".{f}.")) && name.ends_with(".tmp"));
        if ours {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What `--resume` reads back: the settings, the run state, the model and optimizer tensors.
struct Checkpoint {
    settings: Settings,
    state: RunState,
    model: Vec<(String, Tensor)>,
    optimizer: Vec<(String, Tensor)>,
}

fn read_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let path = dir.join(checkpoint::FILE);
    if !path.is_file() {
        return Err(usage(format!(
            "{}: no {} to resume from (is it the --out folder of a `resnet train` run?)",
            dir.display(),
            checkpoint::FILE
        )));
    }
    let sd = resnet::read_weights(&path)?;
    let bad = |what: &str| usage(format!("{}: {what} is missing or unreadable", path.display()));
    let settings: Settings = sd
        .metadata
        .get(checkpoint::SETTINGS)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| bad("the run's settings"))?;
    let state: RunState = sd
        .metadata
        .get(checkpoint::STATE)
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| bad("the run's state"))?;
    let (mut model, mut optimizer) = (Vec::new(), Vec::new());
    for (k, t) in sd.entries {
        if let Some(rest) = k.strip_prefix(checkpoint::MODEL) {
            model.push((rest.to_string(), t));
        } else if let Some(rest) = k.strip_prefix(checkpoint::OPTIMIZER) {
            optimizer.push((rest.to_string(), t));
        }
    }
    Ok(Checkpoint { settings, state, model, optimizer })
}

/// Everything one run needs while it trains.
struct Trainer<'a> {
    out: PathBuf,
    arch: Arch,
    settings: Settings,
    model: ResNet,
    opt: Optimizer,
    metadata: HashMap<String, String>,
    state: RunState,
    args: &'a TrainArgs,
}

impl Trainer<'_> {
    /// Writes `checkpoint.safetensors`: the one file `--resume` reads.
    fn save_checkpoint(&self) -> Result<()> {
        let mut entries: Vec<(String, Tensor)> =
            self.model.state_dict().into_iter().map(|(k, t)| (format!("{}{k}", checkpoint::MODEL), t)).collect();
        entries.extend(self.opt.state_dict().into_iter().map(|(k, t)| (format!("{}{k}", checkpoint::OPTIMIZER), t)));
        let mut meta = self.metadata.clone();
        meta.insert(checkpoint::SETTINGS.into(), serde_json::to_string(&self.settings).expect("settings serialise"));
        meta.insert(checkpoint::STATE.into(), serde_json::to_string(&self.state).expect("state serialises"));
        resnet::write_safetensors(self.out.join(checkpoint::FILE), &entries, &meta)
            .map_err(|e| self.save_failed(checkpoint::FILE, e.into()))
    }

    /// The end-of-epoch writes: the best weights when they improved, then the checkpoint, then
    /// the reports. A failure names the file; every file keeps its previous version.
    fn save_epoch(&self, improved: bool) -> Result<()> {
        if improved {
            resnet::write_safetensors(self.out.join("best.safetensors"), &self.model.state_dict(), &self.metadata)
                .map_err(|e| self.save_failed("best.safetensors", e.into()))?;
        }
        self.save_checkpoint()?;
        self.write_reports()
    }

    /// The files rewritten from the checkpoint's state: the last weights and the reports. A
    /// resumed run rewrites them first when a kill came between the checkpoint and them.
    fn write_reports(&self) -> Result<()> {
        resnet::write_safetensors(self.out.join("last.safetensors"), &self.model.state_dict(), &self.metadata)
            .map_err(|e| self.save_failed("last.safetensors", e.into()))?;
        self.write_report("metrics.csv", metrics_csv(&self.state.rows).into_bytes())?;
        let points: Vec<EpochPoint> = self
            .state
            .rows
            .iter()
            .map(|r| EpochPoint {
                epoch: r.epoch,
                train_loss: r.train_loss,
                train_acc: r.train_acc,
                val_loss: r.val_loss,
                val_acc: r.val_acc,
            })
            .collect();
        let png = curves_png(&points).map_err(|e| usage(format!("drawing curves.png: {e}")))?;
        self.write_report("curves.png", png)?;
        // Last: it names the state the files above belong to.
        self.write_report("run.json", self.summary().into_bytes())
    }

    /// `run.json`: the settings and state, for people.
    fn summary(&self) -> String {
        let summary = serde_json::json!({ "arch": self.arch.name(), "settings": self.settings, "state": self.state });
        serde_json::to_string_pretty(&summary).expect("serialises")
    }

    /// Whether the reports belong to the checkpoint's state (`run.json`, written after the
    /// others, matches it).
    fn reports_current(&self) -> bool {
        std::fs::read_to_string(self.out.join("run.json")).is_ok_and(|s| s == self.summary())
    }

    fn write_report(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        tensor::write_atomic(&self.out.join(name), &bytes).map_err(|e| self.save_failed(name, e.into()))
    }

    fn save_failed(&self, name: &str, e: CliError) -> CliError {
        usage(format!(
            "saving {} failed: {e}\nits previous version is intact; the run can continue from the last saved \
             checkpoint with --resume {}",
            self.out.join(name).display(),
            self.out.display()
        ))
    }
}

/// Runs `resnet train`.
pub fn run(args: TrainArgs) -> Result<()> {
    let device = tensor::Device::parse(&args.device)?;
    let policy = on_nonfinite(&args)?;
    let faults = injected_faults(&args)?;
    let resumed = match &args.resume {
        Some(dir) => {
            if args.weights.is_some() {
                return Err(usage("--weights starts a run; a resumed run continues from its checkpoint's weights"));
            }
            Some(read_checkpoint(dir)?)
        }
        None => None,
    };
    let settings = resolve_settings(&args, resumed.as_ref().map(|c| &c.settings))?;
    if settings.batch_size == 0 {
        return Err(usage("--batch-size must be positive"));
    }
    if settings.image_size < 8 {
        return Err(usage("--image-size must be at least 8"));
    }
    let out = match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => default_out(),
    };
    if resumed.is_none() && out.join(checkpoint::FILE).exists() {
        return Err(usage(format!(
            "{} already holds a run; continue it with --resume {}, or choose another --out",
            out.display(),
            out.display()
        )));
    }
    std::fs::create_dir_all(&out).map_err(|source| CliError::Io { path: out.clone(), source })?;
    remove_stale_temporaries(&out);
    // Checked before the data are read (or the demo generated): a typo fails at once.
    let arch = Arch::from_name(&settings.arch)?;
    let Datasets { train: train_ds, val: val_ds, classes, demo } = datasets(&settings)?;
    let image_size = settings.image_size;
    let mut config = arch.config(classes.len());
    config.base_planes = settings.base_planes;
    let mut model = config.build(resnet::Init::Torchvision(settings.seed))?;
    if let Some(w) = &args.weights {
        let sd = resnet::read_weights(w)?;
        if sd.num_classes().is_some_and(|n| n != classes.len()) {
            println!(
                "{}: the head has {} classes, the data {}: the head is re-initialised",
                w.display(),
                sd.num_classes().unwrap_or(0),
                classes.len()
            );
        }
        let report = resnet::load_pretrained(&model, &sd)
            .map_err(|e| usage(format!("{}: the weights do not fit {arch}: {e}", w.display())))?;
        if !report.mismatched.is_empty() || !report.missing.is_empty() {
            model.reset_head(classes.len(), settings.seed)?;
        }
    }
    if settings.freeze_backbone {
        model.freeze_backbone();
    }
    // The model lives on the device from here on: the optimizer's state is created there, and
    // a resumed checkpoint's tensors are loaded where their parameters are.
    model.to_device(device)?;
    let resize = settings.eval_resize.unwrap_or(image_size * 256 / 224);
    if resize < image_size {
        return Err(usage(format!("--eval-resize {resize} is smaller than the crop of --image-size {image_size}")));
    }
    let eval_meta: Vec<(&str, String)> = vec![
        (meta::CLASSES, serde_json::to_string(&classes).expect("strings serialise")),
        (meta::RESIZE, resize.to_string()),
        (meta::CROP, image_size.to_string()),
        (meta::MEAN, serde_json::to_string(&presets::IMAGENET_MEAN).expect("floats serialise")),
        (meta::STD, serde_json::to_string(&presets::IMAGENET_STD).expect("floats serialise")),
    ];
    let metadata: HashMap<String, String> = metadata_for(arch, &model.config, &eval_meta);
    // Written first, so that a folder that cannot be written to fails before any training.
    data::write_class_indices(out.join("class_indices.json"), &classes)
        .map_err(|e| usage(format!("{e}\nnothing was trained; choose a writable --out")))?;

    let loader_cfg = |shuffle: bool| {
        LoaderConfig::new(settings.batch_size)
            .shuffle(shuffle)
            .num_workers(args.workers)
            .seed(settings.seed)
            .skip_bad_images(args.skip_bad_images)
    };
    let scale = settings.crop_scale.unwrap_or_else(|| legacy_crop_scale(demo));
    let train_transform = presets::train(image_size, scale).map_err(data_err)?;
    let train_loader = Loader::new(train_ds, train_transform, loader_cfg(true)).map_err(data_err)?;
    let val_loader =
        Loader::new(val_ds, presets::imagenet_eval(resize, image_size).map_err(data_err)?, loader_cfg(false))
            .map_err(data_err)?;
    let steps_per_epoch = train_loader.len().max(1);
    let params = model.trainable_parameters();
    let mut opt = Optimizer::new(method(&settings)?, params.clone(), settings.lr, settings.weight_decay)?;
    let epochs =
        args.epochs.or(resumed.as_ref().map(|c| c.state.epochs)).unwrap_or(if demo { DEMO.epochs } else { 10 });
    let (sched_kind, per_batch) = schedule(&settings, epochs, steps_per_epoch)?;
    let mut sched = Scheduler::new(sched_kind, &mut opt)?;
    let mut state = RunState {
        epochs,
        epoch: 0,
        best_acc: -1.0,
        best_epoch: 0,
        scheduler_steps: 0,
        rows: Vec::new(),
        progress: None,
    };
    if let Some(ck) = resumed {
        let dir = args.resume.as_deref().unwrap_or(&out);
        model.load_state_dict(&ck.model, true).map_err(|e| {
            usage(format!("{}: the checkpoint's weights do not fit {arch}: {e}", dir.join(checkpoint::FILE).display()))
        })?;
        opt.load_state_dict(&ck.optimizer)?;
        state = ck.state;
        state.epochs = epochs;
        sched.set_steps(state.scheduler_steps, &mut opt);
        let within = state.progress.map(|p| format!(", batch {} of epoch {}", p.next_batch, state.epoch + 1));
        println!(
            "resuming {} after epoch {}{} (best validation accuracy {:.1}%)",
            dir.display(),
            state.epoch,
            within.unwrap_or_default(),
            100.0 * state.best_acc.max(0.0)
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while saving falls through to an immediate exit: every file is
        // written atomically, so even that leaves each one complete.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::Relaxed) {
                std::process::exit(130);
            }
        });
    }
    let mut t = Trainer { out, arch, settings, model, opt, metadata, state, args: &args };
    if t.state.epoch > 0 && t.state.progress.is_none() && !t.reports_current() {
        t.write_reports()?;
    }
    if t.state.epoch >= epochs {
        println!("the run already has {} epochs; nothing to do (raise --epochs to continue)", t.state.epoch);
        return Ok(());
    }
    let terminal = std::io::stderr().is_terminal();
    println!(
        "training {}{} on {} images of {} classes ({} for validation), {epochs} epochs, batch {}, {image_size}px",
        t.arch,
        if t.settings.base_planes == 64 {
            String::new()
        } else {
            format!(" at stem width {} (torchvision's: 64)", t.settings.base_planes)
        },
        train_loader.num_samples(),
        classes.len(),
        val_loader.num_samples(),
        t.settings.batch_size
    );
    for epoch in t.state.epoch + 1..=epochs {
        t.model.train();
        let mut p = t.state.progress.take().unwrap_or_else(|| Progress::new(t.opt.lr()));
        let started = Instant::now();
        let seconds_before = p.seconds;
        let bar = terminal.then(|| {
            let b = indicatif::ProgressBar::new(steps_per_epoch as u64);
            b.set_style(
                indicatif::ProgressStyle::with_template("epoch {prefix} {bar:30} {pos}/{len} [{elapsed}<{eta}] {msg}")
                    .expect("a valid template"),
            );
            b.set_prefix(format!("{epoch}/{epochs}"));
            b.set_position(p.next_batch as u64);
            b
        });
        let mut interrupted = false;
        for batch in train_loader.iter_epoch_from(epoch as u64, p.next_batch) {
            if stop.load(Ordering::Relaxed) {
                interrupted = true;
                break;
            }
            let batch = batch.map_err(|e| data_failure(e, &train_loader, &val_loader, t.args.workers))?;
            // The loader already warned about each one; the epoch line reports the count.
            p.skipped_images += batch.skipped.len();
            let n = batch.labels.numel();
            t.opt.zero_grad();
            let logits = t.model.forward(&Var::constant(batch.images.to_device(device)?))?;
            let loss = CrossEntropyLoss::default().forward(&logits, &batch.labels)?;
            let mut l = loss.value().item()? as f64;
            if faults.contains(&(epoch, batch.position + 1)) {
                l = f64::NAN;
            }
            let fault = if !l.is_finite() {
                Some(format!("the loss became {l}"))
            } else {
                loss.backward()?;
                (!gradients_finite(&params)?).then(|| "a gradient became non-finite".to_string())
            };
            match (fault, policy) {
                (Some(what), OnNonFinite::Stop) => {
                    if let Some(b) = &bar {
                        b.abandon();
                    }
                    let kept = if t.out.join(checkpoint::FILE).exists() {
                        format!("{} keeps the last good state", t.out.join(checkpoint::FILE).display())
                    } else {
                        "no checkpoint had been written yet".to_string()
                    };
                    return Err(usage(format!(
                        "{what} in epoch {epoch}, batch {}; training stopped ({kept}). Lower --lr, or pass \
                         --on-nonfinite skip to skip such batches",
                        batch.position + 1
                    )));
                }
                (Some(what), OnNonFinite::Skip) => {
                    eprintln!("warning: {what} in epoch {epoch}, batch {}: no update from it", batch.position + 1);
                    p.skipped_batches += 1;
                }
                (None, _) => {
                    t.opt.step()?;
                    p.loss_sum += l * n as f64;
                    p.correct += (nn::accuracy(&logits.value(), &batch.labels)? * n as f64).round() as usize;
                    p.seen += n;
                }
            }
            if per_batch {
                sched.step(&mut t.opt);
            }
            p.next_batch = batch.position + 1;
            if let Some(b) = &bar {
                b.set_position(p.next_batch as u64);
                b.set_message(format!(
                    "loss {:.4} {:.1} img/s",
                    p.loss_sum / p.seen.max(1) as f64,
                    p.seen as f64 / (seconds_before + started.elapsed().as_secs_f64()).max(1e-9)
                ));
            }
            if t.args.save_every > 0 && p.next_batch % t.args.save_every == 0 && p.next_batch < steps_per_epoch {
                t.state.scheduler_steps = sched.steps();
                t.state.progress = Some(Progress { seconds: seconds_before + started.elapsed().as_secs_f64(), ..p });
                t.save_checkpoint()?;
                t.state.progress = None;
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        p.seconds = seconds_before + started.elapsed().as_secs_f64();
        let evaluated =
            if interrupted { None } else { evaluate(&t.model, &val_loader, &stop, &train_loader, t.args.workers)? };
        let Some((val_loss, val_acc, val_skipped)) = evaluated else {
            t.state.scheduler_steps = sched.steps();
            t.state.progress = Some(p);
            t.save_checkpoint()?;
            println!(
                "interrupted in epoch {epoch} after batch {}: saved {} (continue with --resume {})",
                p.next_batch,
                t.out.join(checkpoint::FILE).display(),
                t.out.display()
            );
            return Ok(());
        };
        if !per_batch {
            sched.step(&mut t.opt);
        }
        let row = Row {
            epoch,
            train_loss: p.loss_sum / p.seen.max(1) as f64,
            train_acc: p.correct as f64 / p.seen.max(1) as f64,
            val_loss,
            val_acc,
            lr: p.lr,
            seconds: seconds_before + started.elapsed().as_secs_f64(),
            images_per_s: p.seen as f64 / p.seconds.max(1e-9),
        };
        t.state.rows.push(row);
        t.state.epoch = epoch;
        t.state.scheduler_steps = sched.steps();
        let improved = val_acc > t.state.best_acc;
        if improved {
            t.state.best_acc = val_acc;
            t.state.best_epoch = epoch;
        }
        t.save_epoch(improved)?;
        println!(
            "epoch {epoch}/{epochs}  train loss {:.4} acc {:.1}%  val loss {:.4} acc {:.1}%  lr {:.2e}  {:.1}s  {:.1} img/s",
            row.train_loss,
            100.0 * row.train_acc,
            row.val_loss,
            100.0 * row.val_acc,
            row.lr,
            row.seconds,
            row.images_per_s
        );
        if p.skipped_images + val_skipped > 0 {
            println!(
                "epoch {epoch}: skipped {} unreadable image(s) ({} in training, {val_skipped} in validation)",
                p.skipped_images + val_skipped,
                p.skipped_images
            );
        }
        if p.skipped_batches > 0 {
            println!("epoch {epoch}: skipped {} batch(es) with a non-finite loss or gradient", p.skipped_batches);
        }
    }
    println!(
        "best validation accuracy: {:.1}% (epoch {}); chance is {:.1}%; outputs in {}",
        100.0 * t.state.best_acc,
        t.state.best_epoch,
        100.0 / classes.len() as f64,
        t.out.display()
    );
    if demo {
        let val = demo_dir(&t.settings).join("val");
        println!(
            "try it on pictures it has not trained on: resnet predict --weights {} {}",
            t.out.join("best.safetensors").display(),
            val.join(&classes[0]).display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn settings(argv: &[&str]) -> Settings {
        let cli = Cli::try_parse_from(std::iter::once("train").chain(argv.iter().copied())).unwrap();
        resolve_settings(&cli.args, None).unwrap()
    }

    #[test]
    fn the_demo_has_its_preset_and_a_users_folder_has_torchvisions_defaults() {
        let demo = settings(&[]);
        assert_eq!(
            (demo.base_planes, demo.batch_size, demo.lr, demo.scheduler.as_str(), demo.image_size),
            (16, 64, 1e-2, "onecycle", 48)
        );
        assert_eq!((demo.crop_scale, demo.eval_resize), (Some((0.8, 1.0)), Some(48)));
        let own = settings(&["--data", "photos"]);
        assert_eq!(
            (own.base_planes, own.batch_size, own.lr, own.scheduler.as_str(), own.image_size),
            (64, 32, 1e-3, "cosine", 224)
        );
        assert_eq!((own.crop_scale, own.eval_resize), (Some((0.08, 1.0)), None));
        // Every preset value is a flag a user's run can pass.
        let asked =
            settings(&["--data", "photos", "--crop-scale", "0.5,0.9", "--eval-resize", "64", "--image-size", "56"]);
        assert_eq!((asked.crop_scale, asked.eval_resize, asked.image_size), (Some((0.5, 0.9)), Some(64), 56));
        let demo_small = settings(&["--image-size", "32"]);
        assert_eq!(demo_small.eval_resize, Some(32), "the demo sees the whole picture at any size");
    }

    #[test]
    fn crop_scales_are_checked() {
        assert_eq!(parse_crop_scale("0.08,1"), Ok((0.08, 1.0)));
        assert_eq!(parse_crop_scale(" 0.35 , 1.0 "), Ok((0.35, 1.0)));
        for bad in ["0.5", "0,1", "0.9,0.5", "0.5,1.5", "a,1", "0.1,0.2,0.3"] {
            assert!(parse_crop_scale(bad).is_err(), "{bad}");
        }
        assert!(Cli::try_parse_from(["train", "--crop-scale", "1,0.5"]).is_err());
    }

    /// A checkpoint written before --crop-scale / --eval-resize existed resumes with the
    /// behaviour it was started with.
    #[test]
    fn older_checkpoints_keep_their_crops() {
        let mut json = serde_json::to_value(settings(&[])).unwrap();
        let map = json.as_object_mut().unwrap();
        map.remove("crop_scale");
        map.remove("eval_resize");
        let old: Settings = serde_json::from_value(json).unwrap();
        assert_eq!((old.crop_scale, old.eval_resize), (None, None));
        let cli = Cli::try_parse_from(["train"]).unwrap();
        let resumed = resolve_settings(&cli.args, Some(&old)).unwrap();
        assert_eq!((resumed.crop_scale, resumed.eval_resize), (None, None));
        assert_eq!(legacy_crop_scale(true), (0.35, 1.0));
    }

    #[test]
    fn a_state_with_non_finite_metrics_reads_back() {
        let row = Row {
            epoch: 1,
            train_loss: 0.5,
            train_acc: 0.25,
            val_loss: f64::NAN,
            val_acc: 0.0,
            lr: 1e-3,
            seconds: 1.0,
            images_per_s: f64::INFINITY,
        };
        let state = RunState {
            epochs: 2,
            epoch: 1,
            best_acc: 0.0,
            best_epoch: 1,
            scheduler_steps: 1,
            rows: vec![row],
            progress: None,
        };
        let back: RunState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert!(back.rows[0].val_loss.is_nan() && back.rows[0].images_per_s.is_nan());
        assert_eq!((back.rows[0].train_loss, back.epoch, back.best_acc), (0.5, 1, 0.0));
    }
}
