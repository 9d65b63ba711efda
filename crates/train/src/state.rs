//! Where a run stands, and the one file that holds it: `checkpoint.safetensors` (the model's and
//! the optimizer's tensors, with the settings and the state as JSON metadata).

use crate::{Result, TrainConfig, TrainError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tensor::Tensor;

/// The checkpoint's metadata keys and tensor-name prefixes.
pub(crate) mod keys {
    pub const FILE: &str = "checkpoint.safetensors";
    pub const SETTINGS: &str = "train_settings";
    pub const STATE: &str = "train_state";
    pub const MODEL: &str = "model.";
    pub const OPTIMIZER: &str = "optimizer.";
}

/// Every file a run writes into its folder (`report.json` and `confusion.png` once it has
/// ended, when the caller asks for the per-class report).
pub const OUTPUT_FILES: [&str; 9] = [
    "class_indices.json",
    keys::FILE,
    "best.safetensors",
    "last.safetensors",
    "metrics.csv",
    "curves.png",
    "run.json",
    "report.json",
    "confusion.png",
];

/// Where the run stands: saved in the checkpoint (and, for people, as `run.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The epochs the run is planned for.
    pub epochs: usize,
    /// Completed epochs.
    pub epoch: usize,
    /// The best validation accuracy so far (-1 before the first epoch).
    #[serde(deserialize_with = "nan_if_null")]
    pub best_acc: f64,
    /// Its epoch.
    pub best_epoch: usize,
    /// The schedule's position.
    pub scheduler_steps: usize,
    /// One row per completed epoch.
    pub rows: Vec<EpochRow>,
    /// How far the next epoch got before the run was stopped (absent at an epoch boundary).
    pub progress: Option<Progress>,
    /// Early stopping: the best value of the watched metric, and the epochs since it.
    #[serde(default)]
    pub monitored_best: Option<f64>,
    /// Early stopping: completed epochs without improvement.
    #[serde(default)]
    pub stale_epochs: usize,
    /// The processes of a data-parallel run (1 without one): a run stopped inside an epoch
    /// resumes with as many.
    #[serde(default = "one")]
    pub world_size: usize,
}

fn one() -> usize {
    1
}

impl RunState {
    pub(crate) fn fresh(epochs: usize) -> RunState {
        RunState {
            epochs,
            epoch: 0,
            best_acc: -1.0,
            best_epoch: 0,
            scheduler_steps: 0,
            rows: Vec::new(),
            progress: None,
            monitored_best: None,
            stale_epochs: 0,
            world_size: 1,
        }
    }
}

/// One epoch's metrics: a line of `metrics.csv`. JSON has no NaN or infinity (serde_json writes
/// `null`), and a diverged model's validation loss can be either: `null` reads back as NaN.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss over the batches that made an update.
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Training accuracy (train-mode forward, augmented crops).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_acc: f64,
    /// Mean validation loss.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_loss: f64,
    /// Top-1 validation accuracy.
    #[serde(deserialize_with = "nan_if_null")]
    pub val_acc: f64,
    /// The learning rate when the epoch began.
    #[serde(deserialize_with = "nan_if_null")]
    pub lr: f64,
    /// Seconds for the epoch: training and validation.
    #[serde(deserialize_with = "nan_if_null")]
    pub seconds: f64,
    /// Training images per second.
    #[serde(deserialize_with = "nan_if_null")]
    pub images_per_s: f64,
    /// Top-5 validation accuracy (top-k with k = the class count when there are fewer than 5).
    /// Absent (NaN) in rows written before it was measured.
    #[serde(default = "nan", deserialize_with = "nan_if_null")]
    pub val_top5: f64,
}

fn nan() -> f64 {
    f64::NAN
}

fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// An epoch in progress: the next batch position and the sums so far.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The next batch's position in the epoch.
    pub next_batch: usize,
    /// Sum of the per-image losses of the batches that made an update.
    pub loss_sum: f64,
    /// Correct top-1 predictions among them.
    pub correct: usize,
    /// Images among them.
    pub seen: usize,
    /// Images skipped as unreadable.
    pub skipped_images: usize,
    /// Batches skipped as non-finite.
    pub skipped_batches: usize,
    /// The learning rate when the epoch began (the metrics row reports it).
    pub lr: f64,
    /// Seconds spent on this epoch's training before the stop.
    pub seconds: f64,
}

impl Progress {
    pub(crate) fn new(lr: f64) -> Progress {
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

    /// The mean training loss so far.
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.seen.max(1) as f64
    }

    /// The training accuracy so far.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
    }
}

/// The header of `metrics.csv`.
pub const METRICS_HEADER: &str = "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds,images_per_s";

/// `metrics.csv`: one line per epoch. Its columns are those of every earlier version (scripts
/// read them by position); top-5 accuracy is in `run.json`'s rows and the events.
pub fn metrics_csv(rows: &[EpochRow]) -> String {
    let mut s = format!("{METRICS_HEADER}\n");
    for r in rows {
        s += &format!(
            "{},{:.6},{:.6},{:.6},{:.6},{:.8},{:.3},{:.2}\n",
            r.epoch, r.train_loss, r.train_acc, r.val_loss, r.val_acc, r.lr, r.seconds, r.images_per_s
        );
    }
    s
}

/// What a resume reads back: the run's settings, its state, the model's and the optimizer's
/// tensors.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The file it was read from.
    pub path: PathBuf,
    /// The settings that define the run (the fields of [`TrainConfig`] that are saved; the
    /// others have their defaults).
    pub config: TrainConfig,
    /// Where the run stands.
    pub state: RunState,
    pub(crate) model: Vec<(String, Tensor)>,
    pub(crate) optimizer: Vec<(String, Tensor)>,
}

impl Checkpoint {
    /// The checkpoint's file name in a run folder.
    pub const FILE: &'static str = keys::FILE;

    /// Whether `dir` holds a run.
    pub fn exists_in(dir: &Path) -> bool {
        dir.join(keys::FILE).exists()
    }

    /// Reads the checkpoint of the run in `dir`.
    pub fn read(dir: &Path) -> Result<Checkpoint> {
        let path = dir.join(keys::FILE);
        let err = |msg: String| TrainError::Checkpoint { path: path.clone(), msg };
        if !path.is_file() {
            return Err(err(format!("no {} to resume from (is it the output folder of a training run?)", keys::FILE)));
        }
        let file = tensor::read_safetensors(&path)?;
        let missing = |what: &str| err(format!("{what} is missing or unreadable"));
        let config: TrainConfig = file
            .metadata
            .get(keys::SETTINGS)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| missing("the run's settings"))?;
        let state: RunState = file
            .metadata
            .get(keys::STATE)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| missing("the run's state"))?;
        let (mut model, mut optimizer) = (Vec::new(), Vec::new());
        for (k, t) in file.entries {
            if let Some(rest) = k.strip_prefix(keys::MODEL) {
                model.push((rest.to_string(), t));
            } else if let Some(rest) = k.strip_prefix(keys::OPTIMIZER) {
                optimizer.push((rest.to_string(), t));
            }
        }
        Ok(Checkpoint { path, config, state, model, optimizer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_with_non_finite_metrics_reads_back() {
        let row = EpochRow {
            epoch: 1,
            train_loss: 0.5,
            train_acc: 0.25,
            val_loss: f64::NAN,
            val_acc: 0.0,
            lr: 1e-3,
            seconds: 1.0,
            images_per_s: f64::INFINITY,
            val_top5: 0.5,
        };
        let state = RunState { rows: vec![row], epoch: 1, best_acc: 0.0, best_epoch: 1, ..RunState::fresh(2) };
        let back: RunState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert!(back.rows[0].val_loss.is_nan() && back.rows[0].images_per_s.is_nan());
        assert_eq!((back.rows[0].train_loss, back.epoch, back.best_acc, back.rows[0].val_top5), (0.5, 1, 0.0, 0.5));
    }

    #[test]
    fn rows_from_before_top5_read_back_without_it() {
        let old = r#"{"epoch":1,"train_loss":0.5,"train_acc":0.2,"val_loss":0.7,"val_acc":0.3,"lr":0.001,
            "seconds":2.0,"images_per_s":50.0}"#;
        let row: EpochRow = serde_json::from_str(old).unwrap();
        assert!(row.val_top5.is_nan());
        assert_eq!(
            metrics_csv(&[row]).lines().nth(1),
            Some("1,0.500000,0.200000,0.700000,0.300000,0.00100000,2.000,50.00")
        );
    }
}
