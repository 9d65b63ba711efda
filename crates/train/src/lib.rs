//! # train
//!
//! Training a ResNet as a library: a [`TrainConfig`] built in code (everything `resnet train`
//! accepts), and a [`Trainer`] that owns the model, optimizer, schedule, loaders and device and
//! runs the loop — [`Trainer::step`] for one batch, [`Trainer::evaluate`] for the validation
//! set, [`Trainer::fit`] for the whole run with its checkpoints and reports. The `resnet train`
//! command, the benchmarks and `examples/train_folder.rs` all train through it.
//!
//! **What it is for.** The loop PyTorch users write by hand or get from Lightning: per epoch a
//! training pass and a validation pass (loss, top-1 and top-5 accuracy), gradient accumulation,
//! evaluation every N batches, early stopping on a metric with patience, a policy for
//! non-finite losses, and a run folder — `checkpoint.safetensors` (the one file a resume
//! reads, bit for bit), `best.safetensors`, `last.safetensors`, `metrics.csv`, `curves.png`,
//! `run.json`, `class_indices.json`.
//!
//! Under `mpirun` it trains data-parallel with DistributedDataParallel's rules
//! ([`Trainer::new_distributed`], [`dist`]: sharded epochs, averaged gradients, SyncBatchNorm on
//! request, validation over the whole set, rank 0 alone writing).
//!
//! **What it is not.** It prints nothing and draws no progress bars: it reports through
//! [`Event`]s, and its caller (the CLI's indicatif bars, a user's logger) decides what to show.
//! It parses no command line and installs no signal handler: [`Trainer::stop_handle`] is the
//! flag a Ctrl-C handler sets. Kernels, autograd and models are the crates below it.
//!
//! **Crash safety** rests on two rules. Every file is written atomically (a temporary file,
//! then a rename), so each is always either its previous or its new complete version. And
//! everything a resume needs — weights, optimizer state, schedule position, the settings and
//! the metrics so far, and the position inside an unfinished epoch — lives in ONE file, so a
//! kill between two writes cannot leave a resumable state whose parts disagree. The other files
//! are reports, rewritten from that state.
//!
//! ```no_run
//! use train::{TrainConfig, Trainer};
//! let config = TrainConfig { data: Some("photos".into()), out: "runs/photos".into(), epochs: 5, ..TrainConfig::default() };
//! let mut trainer = Trainer::new(config)?;
//! trainer.add_callback(|e: &train::Event| {
//!     if let train::Event::EpochEnd { row, .. } = e {
//!         println!("epoch {}: val acc {:.1}%", row.epoch, 100.0 * row.val_acc);
//!     }
//! });
//! trainer.fit()?;
//! # Ok::<(), train::TrainError>(())
//! ```
#![deny(missing_docs)]

mod config;
mod datasets;
pub mod demo;
pub mod dist;
mod event;
pub mod plot;
mod report;
mod state;
mod trainer;

pub use config::{EarlyStopping, Monitor, OnNonFinite, OptimizerKind, SchedulerKind, TrainConfig};
pub use event::{Callback, Event};
pub use report::{Averages, ClassMetrics, ClassReport};
pub use state::{metrics_csv, Checkpoint, EpochRow, Progress, RunState, METRICS_HEADER, OUTPUT_FILES};
pub use trainer::{evaluate_folder, EvalMetrics, FitOutcome, StepOutcome, Trainer};

use std::path::PathBuf;

/// Everything that can go wrong while training. Each names the file, the setting or the
/// batch involved; none leaves a file half-written.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A setting that cannot work (named, with what was expected).
    #[error("{0}")]
    Config(String),
    /// The data: a folder that is not an ImageFolder, an image that cannot be read, ...
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// Every unreadable image of both sets (with `skip_bad_images` off).
    #[error("{} unreadable image(s); training stopped:\n{}", .errors.len(), list_errors(.errors))]
    BadImages {
        /// The images that could not be read, each naming its file.
        errors: Vec<data::DataError>,
    },
    /// A model, weight-file or architecture problem.
    #[error(transparent)]
    Resnet(#[from] resnet::ResnetError),
    /// A layer, autograd or optimizer problem.
    #[error(transparent)]
    Nn(#[from] nn::NnError),
    /// A tensor kernel or tensor-file problem.
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    /// Pretrained weights that do not fit the architecture.
    #[error("{path}: the weights do not fit {arch}: {source}")]
    WeightsDoNotFit {
        /// The weight file.
        path: PathBuf,
        /// The architecture being trained.
        arch: String,
        /// What did not fit.
        source: Box<resnet::ResnetError>,
    },
    /// The output folder already holds a run (a new run would overwrite its checkpoint).
    #[error("{} already holds a run", .out.display())]
    HoldsRun {
        /// The output folder.
        out: PathBuf,
    },
    /// The output folder cannot be written: found before anything was trained.
    #[error("{source}")]
    Unwritable {
        /// The output folder.
        out: PathBuf,
        /// The failed write.
        source: Box<TrainError>,
    },
    /// A folder with no checkpoint to resume, or a checkpoint that cannot be read.
    #[error("{}: {msg}", .path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Writing an output file failed; the file keeps its previous version.
    #[error("saving {} failed: {source}\nits previous version is intact; the run can continue from the last saved checkpoint", .path.display())]
    Save {
        /// The file being written.
        path: PathBuf,
        /// The output folder (to resume from).
        out: PathBuf,
        /// The cause.
        source: Box<TrainError>,
    },
    /// A non-finite loss or gradient with [`OnNonFinite::Stop`].
    #[error("{what} in epoch {epoch}, batch {batch}; training stopped ({})", kept_note(.kept))]
    NonFinite {
        /// What became non-finite.
        what: String,
        /// 1-based epoch.
        epoch: usize,
        /// 1-based batch.
        batch: usize,
        /// The checkpoint that keeps the last good state, if one had been written.
        kept: Option<PathBuf>,
    },
}

fn list_errors(errors: &[data::DataError]) -> String {
    const SHOWN: usize = 50;
    let mut msg = String::new();
    for e in errors.iter().take(SHOWN) {
        msg += &format!("  {e}\n");
    }
    if errors.len() > SHOWN {
        msg += &format!("  ... and {} more\n", errors.len() - SHOWN);
    }
    msg.trim_end().to_string()
}

fn kept_note(kept: &Option<PathBuf>) -> String {
    match kept {
        Some(path) => format!("{} keeps the last good state", path.display()),
        None => "no checkpoint had been written yet".into(),
    }
}

/// `Result` with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn config_err(msg: impl Into<String>) -> TrainError {
    TrainError::Config(msg.into())
}
