//! The built-in demo: six generated shapes, and the settings that make a ResNet-18 trained from
//! scratch learn them (>= 90% validation accuracy) in about three minutes on two cores. Each
//! setting is a [`crate::TrainConfig`] field a user's run can set too; only the defaults differ.
//!
//! Measured (the book's tutorial has the runs): torchvision's defaults on 900 pictures reach
//! about 40% in 10 epochs, and so does PyTorch with the same settings. What made it learn: many
//! distinct pictures rather than many epochs over few (the model underfits, it does not
//! overfit), which a quarter-width network can see at ~800 images/s instead of ~115; and a
//! one-cycle schedule peaking at a higher learning rate.

use crate::{Result, SchedulerKind, TrainError};
use std::path::{Path, PathBuf};

/// The demo's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DemoPreset {
    /// Training pictures per class.
    pub train_per_class: usize,
    /// Validation pictures per class.
    pub val_per_class: usize,
    /// Stem width: torchvision's ResNet-18 layout at a quarter of its width (16 stem channels,
    /// 0.7 M parameters), ample for six shapes and ~7x faster than full width.
    pub base_planes: usize,
    /// Crop size (the pictures are 64x64; 40 learned worse, 64 no better per epoch).
    pub image_size: usize,
    /// The shapes fill a third of the picture or less, so crops must keep most of it
    /// (torchvision's 8% crops usually cut the shape away).
    pub crop_scale: (f64, f64),
    /// Batch size (64 runs ~1.3x as many images/s as 32 at this width).
    pub batch_size: usize,
    /// The one-cycle schedule's peak.
    pub lr: f64,
    /// The schedule.
    pub scheduler: SchedulerKind,
    /// Epochs.
    pub epochs: usize,
}

/// The demo's settings (see the module docs for how they were chosen).
pub const PRESET: DemoPreset = DemoPreset {
    train_per_class: 1500,
    val_per_class: 100,
    base_planes: 16,
    image_size: 48,
    crop_scale: (0.8, 1.0),
    batch_size: 64,
    lr: 1e-2,
    scheduler: SchedulerKind::OneCycle,
    epochs: 13,
};

/// The crop range of a run whose checkpoint predates the `crop_scale` setting.
pub fn legacy_crop_scale(demo: bool) -> (f64, f64) {
    if demo {
        (0.35, 1.0)
    } else {
        (0.08, 1.0)
    }
}

/// The default folder of the demo dataset.
pub const DEFAULT_DIR: &str = "runs/demo-data";

/// Where the demo dataset of a run lives.
pub fn dir(demo_dir: Option<&Path>) -> PathBuf {
    demo_dir.map_or_else(|| PathBuf::from(DEFAULT_DIR), Path::to_path_buf)
}

/// The demo's pictures: enough of each shape that a ResNet-18 trained from scratch must learn
/// the shapes rather than memorise the pictures, few enough for a few minutes on 2 cores.
pub fn dataset_config() -> data::DemoConfig {
    data::DemoConfig {
        train_per_class: PRESET.train_per_class,
        val_per_class: PRESET.val_per_class,
        width: 64,
        height: 64,
        ..data::DemoConfig::default()
    }
}

/// What [`prepare`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// The folder already held this demo dataset.
    Reused,
    /// It was generated.
    Generated {
        /// Training pictures.
        train_images: usize,
        /// Validation pictures.
        val_images: usize,
        /// Whether a demo dataset of other settings (an older version's) was replaced.
        replaced: bool,
    },
}

/// Makes sure `demo_dir` (or the default folder) holds the demo dataset. The default folder is
/// this tool's own cache: a demo dataset an older version generated there is replaced. A folder
/// the user named is never deleted: anything else in it is an error.
pub fn prepare(demo_dir: Option<&Path>) -> Result<Prepared> {
    let folder = dir(demo_dir);
    let config = dataset_config();
    let mut replaced = false;
    let written = match data::write_demo_dataset(&folder, &config) {
        Err(_) if demo_dir.is_none() && data::is_demo_dataset(&folder) => {
            std::fs::remove_dir_all(&folder).map_err(|e| TrainError::Config(format!("{}: {e}", folder.display())))?;
            replaced = true;
            data::write_demo_dataset(&folder, &config)
        }
        other => other,
    }
    .map_err(|e| TrainError::Config(format!("demo dataset: {e}")))?;
    Ok(if written.reused {
        Prepared::Reused
    } else {
        Prepared::Generated { train_images: written.train_images, val_images: written.val_images, replaced }
    })
}
