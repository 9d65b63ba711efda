//! [`TrainConfig`]: what a run is, built in code. The fields above `epochs` define the run and
//! are saved in its checkpoint (a resume continues with them); the rest say how this process
//! runs it.

use crate::{config_err, Result};
use resnet::Arch;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tensor::Device;

/// Everything a training run needs. `TrainConfig::default()` is torchvision's recipe for a
/// folder of photos (ResNet-18 at full width, 224px crops, Adam at 1e-3 with a cosine schedule,
/// batch 32, 10 epochs); [`TrainConfig::demo`] is the built-in demo's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// An ImageFolder with `train/` and `val/` sub-folders, or one folder split by
    /// `val_split`; `None`: the demo dataset in `demo_dir` (see [`crate::demo::prepare`]).
    pub data: Option<PathBuf>,
    /// With one folder: the share of each class held out for validation (stratified, seeded).
    pub val_split: Option<f64>,
    /// Where the demo dataset lives (`None`: `runs/demo-data`).
    pub demo_dir: Option<PathBuf>,
    /// The architecture.
    #[serde(with = "arch_name")]
    pub arch: Arch,
    /// Stem width (torchvision's: 64); smaller values scale every stage down.
    pub base_planes: usize,
    /// Train only the head.
    pub freeze_backbone: bool,
    /// Images per batch.
    pub batch_size: usize,
    /// Learning rate (one-cycle: the peak).
    pub lr: f64,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// SGD's momentum.
    pub momentum: f64,
    /// Weight decay (L2 for Adam and SGD, decoupled for AdamW, as torch.optim).
    pub weight_decay: f64,
    /// The learning-rate schedule.
    pub scheduler: SchedulerKind,
    /// Training crop size; validation's centre crop too.
    pub image_size: usize,
    /// Seeds the model, the shuffling and the augmentation.
    pub seed: u64,
    /// RandomResizedCrop's range of crop areas. `None` only in checkpoints written before the
    /// setting existed: those runs keep the range they started with (0.35-1 on the demo,
    /// torchvision's 0.08-1 otherwise).
    #[serde(default)]
    pub crop_scale: Option<(f64, f64)>,
    /// Validation: the shorter side is resized to this before the centre crop (`None`:
    /// torchvision's `image_size * 256 / 224`).
    #[serde(default)]
    pub eval_resize: Option<usize>,
    /// Gradient accumulation: the optimizer steps once every this many batches, on the mean of
    /// their gradients (each batch's loss is divided by it, as in PyTorch's recipe), so batch
    /// `batch_size` x `accumulate` fits in the memory of `batch_size`. 1: no accumulation.
    #[serde(default = "one")]
    pub accumulate: usize,
    /// Data-parallel runs: batch norm over every process's batch together (SyncBatchNorm)
    /// instead of each process's own (DDP's default).
    #[serde(default)]
    pub sync_bn: bool,

    /// Epochs to train (a resumed run may be given more).
    #[serde(skip, default = "ten")]
    pub epochs: usize,
    /// Pretrained weights (`.pth` or `.safetensors`); a head of another class count is
    /// re-initialised.
    #[serde(skip)]
    pub weights: Option<PathBuf>,
    /// Loader threads.
    #[serde(skip, default = "two")]
    pub workers: usize,
    /// Where the model and the optimizer's state live.
    #[serde(skip)]
    pub device: Device,
    /// The run's folder.
    #[serde(skip, default = "default_out")]
    pub out: PathBuf,
    /// Also checkpoint every this many batches inside an epoch (0: at epoch ends only).
    #[serde(skip)]
    pub save_every: usize,
    /// What a non-finite loss or gradient does.
    #[serde(skip)]
    pub on_nonfinite: OnNonFinite,
    /// Skip images that cannot be decoded (each reported) instead of stopping.
    #[serde(skip)]
    pub skip_bad_images: bool,
    /// Also evaluate on the validation set every this many batches ([`crate::Event::Evaluated`];
    /// 0: at epoch ends only).
    #[serde(skip)]
    pub eval_every: usize,
    /// Stop when a validation metric has not improved for a number of epochs.
    #[serde(skip)]
    pub early_stopping: Option<EarlyStopping>,
    /// Data-parallel runs: the gradients are all-reduced in buckets of about this many MiB, each
    /// as soon as the backward pass has finished it (DDP's `bucket_cap_mb`).
    #[serde(skip, default = "bucket_cap_mb")]
    pub bucket_cap_mb: f64,
    /// Fault injection for tests: these 1-based (epoch, batch) pairs get a NaN loss.
    #[doc(hidden)]
    #[serde(skip)]
    pub inject_nonfinite: Vec<(usize, usize)>,
}

fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn ten() -> usize {
    10
}
fn bucket_cap_mb() -> f64 {
    crate::dist::BUCKET_CAP_MB
}
fn default_out() -> PathBuf {
    PathBuf::from("runs/train")
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            data: None,
            val_split: None,
            demo_dir: None,
            arch: Arch::Resnet18,
            base_planes: 64,
            freeze_backbone: false,
            batch_size: 32,
            lr: 1e-3,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            weight_decay: 0.0,
            scheduler: SchedulerKind::Cosine,
            image_size: 224,
            seed: 0,
            crop_scale: Some((0.08, 1.0)),
            eval_resize: None,
            accumulate: 1,
            sync_bn: false,
            epochs: ten(),
            weights: None,
            workers: two(),
            device: Device::Cpu,
            out: default_out(),
            save_every: 0,
            on_nonfinite: OnNonFinite::Stop,
            skip_bad_images: false,
            eval_every: 0,
            early_stopping: None,
            bucket_cap_mb: bucket_cap_mb(),
            inject_nonfinite: Vec::new(),
        }
    }
}

impl TrainConfig {
    /// The built-in demo's run: [`crate::demo::PRESET`] over the defaults, on the demo dataset.
    pub fn demo() -> TrainConfig {
        let p = &crate::demo::PRESET;
        TrainConfig {
            base_planes: p.base_planes,
            batch_size: p.batch_size,
            lr: p.lr,
            scheduler: p.scheduler,
            image_size: p.image_size,
            crop_scale: Some(p.crop_scale),
            eval_resize: Some(p.image_size),
            epochs: p.epochs,
            ..TrainConfig::default()
        }
    }

    /// The resize before validation's centre crop.
    pub fn eval_resize(&self) -> usize {
        self.eval_resize.unwrap_or(self.image_size * 256 / 224)
    }

    /// Refuses settings that cannot work, naming them.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(config_err("batch_size must be positive"));
        }
        if self.image_size < 8 {
            return Err(config_err("image_size must be at least 8"));
        }
        if self.accumulate == 0 {
            return Err(config_err("accumulate must be at least 1"));
        }
        if self.eval_resize() < self.image_size {
            return Err(config_err(format!(
                "eval_resize {} is smaller than the crop of image_size {}",
                self.eval_resize(),
                self.image_size
            )));
        }
        if let Some((lo, hi)) = self.crop_scale {
            if !(lo > 0.0 && lo <= hi && hi <= 1.0) {
                return Err(config_err(format!("crop_scale: expected 0 < MIN <= MAX <= 1, got {lo},{hi}")));
            }
        }
        if let Some(f) = self.val_split {
            if !(f > 0.0 && f < 1.0) {
                return Err(config_err(format!("val_split {f}: expected a share between 0 and 1")));
            }
        }
        if !(self.bucket_cap_mb > 0.0 && self.bucket_cap_mb.is_finite()) {
            return Err(config_err(format!("bucket_cap_mb {}: expected a positive size in MiB", self.bucket_cap_mb)));
        }
        if self.early_stopping.is_some_and(|e| e.patience == 0) {
            return Err(config_err("early stopping's patience must be at least 1 epoch"));
        }
        Ok(())
    }
}

/// The optimizer (torch.optim's rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum OptimizerKind {
    /// `torch.optim.Adam`.
    Adam,
    /// `torch.optim.AdamW`.
    AdamW,
    /// `torch.optim.SGD` with the config's momentum.
    Sgd,
}

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SchedulerKind {
    /// A constant rate.
    Constant,
    /// `StepLR` dividing the rate by 10 every third of the epochs.
    Step,
    /// `CosineAnnealingLR` over the epochs, to 0.
    Cosine,
    /// `OneCycleLR` peaking at the config's `lr`, stepped every optimizer step.
    OneCycle,
}

macro_rules! named {
    ($ty:ident, $what:literal, $($variant:ident => $name:literal),+) => {
        impl $ty {
            /// The name the CLI and the checkpoint use.
            pub fn name(self) -> &'static str {
                match self { $($ty::$variant => $name),+ }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<$ty, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($name => Ok($ty::$variant),)+
                    other => Err(format!(concat!($what, " {:?}: expected {}"), other, [$($name),+].join(", "))),
                }
            }
        }
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> std::result::Result<$ty, String> {
                s.parse()
            }
        }
        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.name().to_string()
            }
        }
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named!(OptimizerKind, "optimizer", Adam => "adam", AdamW => "adamw", Sgd => "sgd");
named!(SchedulerKind, "scheduler", Constant => "none", Step => "step", Cosine => "cosine", OneCycle => "onecycle");
named!(OnNonFinite, "on-nonfinite", Stop => "stop", Skip => "skip");
named!(Monitor, "monitor", ValLoss => "val_loss", ValAcc => "val_acc", ValTop5 => "val_top5");

/// What a batch whose loss or gradient is not finite does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnNonFinite {
    /// Stop the run with [`crate::TrainError::NonFinite`]; the last checkpoint is kept.
    #[default]
    Stop,
    /// Make no update from it (nor from the batches accumulated with it), count it, go on.
    Skip,
}

/// A validation metric that early stopping watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitor {
    /// The mean validation loss (lower is better).
    ValLoss,
    /// Top-1 validation accuracy (higher is better).
    ValAcc,
    /// Top-5 validation accuracy (higher is better).
    ValTop5,
}

impl Monitor {
    /// Whether a larger value is an improvement.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Monitor::ValLoss)
    }
}

/// Lightning's `EarlyStopping(monitor, patience, min_delta)`: the run stops after `patience`
/// epochs in a row without the metric improving by more than `min_delta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    /// The metric.
    pub monitor: Monitor,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// The least change that counts as an improvement.
    pub min_delta: f64,
}

/// `arch` as its zoo name in the checkpoint's JSON (any spelling `Arch::from_name` takes reads
/// back, as older checkpoints stored what the user typed).
mod arch_name {
    use resnet::Arch;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(arch: &Arch, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(arch.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arch, D::Error> {
        let name = String::deserialize(d)?;
        Arch::from_name(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_any_case_and_round_trip() {
        assert_eq!("AdamW".parse::<OptimizerKind>(), Ok(OptimizerKind::AdamW));
        assert_eq!(" onecycle ".parse::<SchedulerKind>(), Ok(SchedulerKind::OneCycle));
        assert_eq!("none".parse::<SchedulerKind>(), Ok(SchedulerKind::Constant));
        let e = "rmsprop".parse::<OptimizerKind>().unwrap_err();
        assert_eq!(e, "optimizer \"rmsprop\": expected adam, adamw, sgd");
        for k in [OptimizerKind::Adam, OptimizerKind::AdamW, OptimizerKind::Sgd] {
            assert_eq!(k.name().parse::<OptimizerKind>(), Ok(k));
        }
    }

    #[test]
    fn the_saved_settings_read_back_and_older_ones_get_defaults() {
        let c = TrainConfig { arch: Arch::Resnext50_32x4d, optimizer: OptimizerKind::Sgd, ..TrainConfig::demo() };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"arch\":\"resnext50_32x4d\"") && json.contains("\"optimizer\":\"sgd\""), "{json}");
        assert!(!json.contains("epochs") && !json.contains("device"), "only the run's definition is saved: {json}");
        let back: TrainConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, TrainConfig { epochs: 10, ..c });
        // A checkpoint written before crop_scale, eval_resize and accumulate existed, by a version
        // that stored the names as typed.
        let old = r#"{"data":null,"val_split":null,"demo_dir":null,"arch":"ResNet-18","base_planes":16,
            "freeze_backbone":false,"batch_size":64,"lr":0.01,"optimizer":"Adam","momentum":0.9,
            "weight_decay":0.0,"scheduler":"onecycle","image_size":48,"seed":0}"#;
        let old: TrainConfig = serde_json::from_str(old).unwrap();
        assert_eq!(
            (old.arch, old.optimizer, old.crop_scale, old.eval_resize, old.accumulate),
            (Arch::Resnet18, OptimizerKind::Adam, None, None, 1)
        );
    }

    #[test]
    fn impossible_settings_are_named() {
        let bad = |c: TrainConfig| c.validate().unwrap_err().to_string();
        assert!(bad(TrainConfig { batch_size: 0, ..Default::default() }).contains("batch_size"));
        assert!(bad(TrainConfig { eval_resize: Some(100), ..Default::default() }).contains("eval_resize 100"));
        assert!(bad(TrainConfig { accumulate: 0, ..Default::default() }).contains("accumulate"));
        assert!(bad(TrainConfig { bucket_cap_mb: 0.0, ..Default::default() }).contains("bucket_cap_mb 0"));
        assert!(TrainConfig::default().validate().is_ok() && TrainConfig::demo().validate().is_ok());
    }
}
